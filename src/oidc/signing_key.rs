//! A private key of the filter's own, from the environment: for `private_key_jwt` client
//! assertions (RFC 7523 §2.2) and DPoP proofs (RFC 9449). PEM (PKCS#8, or SEC1 / PKCS#1) or a
//! JWK; ES256 (P-256), EdDSA (Ed25519) or PS256 (RSA, 2048 bits or more). Signs compact JWS
//! (RFC 7515) and publishes its public half as a JWK.

use crate::random::{Random, RandomUnavailable};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;

/// RSA keys shorter than this are refused (NIST SP 800-131A; FAPI 2.0 §5.4 asks 2048).
const MIN_RSA_BITS: usize = 2048;

enum Key {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
    Ps256(Box<rsa::RsaPrivateKey>),
}

/// A signing key and the `kid` it is published under.
pub struct SigningKey {
    key: Key,
    kid: String,
    /// The SHA-256 thumbprint of a certificate for the key (RFC 7515 §4.1.8), when one is given.
    x5t_s256: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({} {})", self.alg(), self.kid)
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &SigningKey) -> bool {
        self.kid == other.kid && self.public_jwk() == other.public_jwk()
    }
}

impl Eq for SigningKey {}

/// Why a key could not be read. Never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Neither a PEM private key nor a JWK with a private part.
    Unreadable,
    /// A key of a type or curve the filter cannot sign with.
    Unsupported(String),
    /// An RSA key shorter than 2048 bits.
    TooShort(usize),
    /// The certificate is not a PEM certificate.
    NotACertificate,
    /// The certificate is for another key.
    CertificateMismatch,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Unreadable => f.write_str(
                "is not a private key: give a PEM (PKCS#8 \"BEGIN PRIVATE KEY\", or SEC1 / PKCS#1) \
                 or a JWK with its private part (\"d\")",
            ),
            KeyError::Unsupported(what) => write!(
                f,
                "is a {what} key; use EC P-256 (ES256), Ed25519 (EdDSA) or RSA (PS256)"
            ),
            KeyError::TooShort(bits) => {
                write!(f, "is a {bits}-bit RSA key; it must have at least {MIN_RSA_BITS} bits")
            }
            KeyError::NotACertificate => {
                f.write_str("is not a PEM certificate (\"BEGIN CERTIFICATE\")")
            }
            KeyError::CertificateMismatch => {
                f.write_str("is a certificate for another key than the private key")
            }
        }
    }
}

/// Signing failed: no random bytes (PS256 salts and blinds), or the cipher refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignError;

impl From<RandomUnavailable> for SignError {
    fn from(_: RandomUnavailable) -> SignError {
        SignError
    }
}

#[derive(Deserialize)]
struct PrivateJwk {
    kty: Option<String>,
    crv: Option<String>,
    kid: Option<String>,
    d: Option<String>,
    n: Option<String>,
    e: Option<String>,
    p: Option<String>,
    q: Option<String>,
}

fn unb64(field: Option<&String>) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD
        .decode(field.ok_or(KeyError::Unreadable)?)
        .map_err(|_| KeyError::Unreadable)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// Reads a key; `kid` names it, or else the JWK's own `kid`, or else its RFC 7638
    /// thumbprint.
    pub fn parse(text: &str, kid: Option<&str>) -> Result<SigningKey, KeyError> {
        let text = text.trim();
        let (key, own_kid) = if text.starts_with('{') {
            Self::from_jwk(text)?
        } else {
            (Self::from_pem(text)?, None)
        };
        let mut parsed = SigningKey {
            key,
            kid: String::new(),
            x5t_s256: None,
        };
        parsed.kid = match kid.map(str::to_string).or(own_kid) {
            Some(kid) => kid,
            None => parsed.thumbprint(),
        };
        Ok(parsed)
    }

    /// Binds a certificate of the key (PEM): its SHA-256 thumbprint goes into every JWT's
    /// header and the published JWK as `x5t#S256`, as Microsoft Entra ID's certificate
    /// credentials want.
    pub fn with_certificate(mut self, pem: &str) -> Result<SigningKey, KeyError> {
        let (label, der) = p256::pkcs8::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|_| KeyError::NotACertificate)?;
        if label != "CERTIFICATE" {
            return Err(KeyError::NotACertificate);
        }
        // DER is canonical and a certificate holds its SubjectPublicKeyInfo as it is: the key
        // is the certificate's exactly when its SPKI is found in it (no X.509 parser needed).
        let spki = self.public_key_der().ok_or(KeyError::CertificateMismatch)?;
        if !der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(KeyError::CertificateMismatch);
        }
        self.x5t_s256 = Some(b64(&Sha256::digest(&der)));
        Ok(self)
    }

    /// The public key as a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7).
    fn public_key_der(&self) -> Option<Vec<u8>> {
        use p256::pkcs8::EncodePublicKey;
        let document = match &self.key {
            Key::Es256(k) => k.verifying_key().to_public_key_der(),
            Key::EdDsa(k) => k.verifying_key().to_public_key_der(),
            Key::Ps256(k) => k.to_public_key().to_public_key_der(),
        };
        document.ok().map(|d| d.as_bytes().to_vec())
    }

    fn from_pem(pem: &str) -> Result<Key, KeyError> {
        use p256::pkcs8::DecodePrivateKey;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            return Ok(Key::Es256(k.into()));
        }
        if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(Key::Es256(k.into()));
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Key::EdDsa(k));
        }
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem));
        if let Ok(k) = rsa {
            return Self::rsa(k);
        }
        if pem.contains("BEGIN") && pem.contains("PRIVATE KEY") {
            return Err(KeyError::Unsupported("PEM private".to_string()));
        }
        Err(KeyError::Unreadable)
    }

    fn rsa(key: rsa::RsaPrivateKey) -> Result<Key, KeyError> {
        let bits = key.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::TooShort(bits));
        }
        Ok(Key::Ps256(Box::new(key)))
    }

    fn from_jwk(json: &str) -> Result<(Key, Option<String>), KeyError> {
        let jwk: PrivateJwk = serde_json::from_str(json).map_err(|_| KeyError::Unreadable)?;
        let key = match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
            (Some("EC"), Some("P-256")) => {
                let d = unb64(jwk.d.as_ref())?;
                let secret = p256::SecretKey::from_slice(&d).map_err(|_| KeyError::Unreadable)?;
                Key::Es256(secret.into())
            }
            (Some("OKP"), Some("Ed25519")) => {
                let d: [u8; 32] = unb64(jwk.d.as_ref())?
                    .try_into()
                    .map_err(|_| KeyError::Unreadable)?;
                Key::EdDsa(ed25519_dalek::SigningKey::from_bytes(&d))
            }
            (Some("RSA"), _) => {
                let int = |f: Option<&String>| unb64(f).map(|b| rsa::BigUint::from_bytes_be(&b));
                let (n, e, d) = (
                    int(jwk.n.as_ref())?,
                    int(jwk.e.as_ref())?,
                    int(jwk.d.as_ref())?,
                );
                let primes = match (jwk.p.as_ref(), jwk.q.as_ref()) {
                    (Some(p), Some(q)) => vec![int(Some(p))?, int(Some(q))?],
                    _ => Vec::new(),
                };
                let key = rsa::RsaPrivateKey::from_components(n, e, d, primes)
                    .map_err(|_| KeyError::Unreadable)?;
                key.validate().map_err(|_| KeyError::Unreadable)?;
                Self::rsa(key)?
            }
            (kty, crv) => {
                return Err(KeyError::Unsupported(format!(
                    "{} {}",
                    kty.unwrap_or("(no kty)"),
                    crv.unwrap_or("")
                )))
            }
        };
        Ok((key, jwk.kid))
    }

    /// The JWS `alg` it signs with.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::EdDsa(_) => "EdDSA",
            Key::Ps256(_) => "PS256",
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key's required members (RFC 7638 §3.2), in lexicographic order.
    fn public_members(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match &self.key {
            Key::Es256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                m.insert("crv".into(), json!("P-256"));
                m.insert("kty".into(), json!("EC"));
                m.insert(
                    "x".into(),
                    json!(b64(point.x().map_or(&[][..], |x| &x[..]))),
                );
                m.insert(
                    "y".into(),
                    json!(b64(point.y().map_or(&[][..], |y| &y[..]))),
                );
            }
            Key::EdDsa(k) => {
                m.insert("crv".into(), json!("Ed25519"));
                m.insert("kty".into(), json!("OKP"));
                m.insert("x".into(), json!(b64(k.verifying_key().as_bytes())));
            }
            Key::Ps256(k) => {
                m.insert("e".into(), json!(b64(&k.e().to_bytes_be())));
                m.insert("kty".into(), json!("RSA"));
                m.insert("n".into(), json!(b64(&k.n().to_bytes_be())));
            }
        }
        m
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> String {
        thumbprint_of(self.public_members())
    }

    /// The public key as a JWK: bare (for a DPoP proof's header), or with `kid`, `alg` and
    /// `use` (for the client's JWK Set).
    pub fn public_jwk(&self) -> Value {
        Value::Object(self.public_members())
    }

    /// The same key for decrypting JWE (RSA-OAEP with an RSA key, ECDH-ES with a P-256 one);
    /// `None` for Ed25519, which JWE's algorithms here do not use.
    pub fn decryption_key(&self) -> Option<crate::oidc::jwe::PrivateKey> {
        use crate::oidc::jwe::PrivateKey;
        match &self.key {
            Key::Es256(k) => Some(PrivateKey::P256(p256::SecretKey::from(
                k.as_nonzero_scalar(),
            ))),
            Key::Ps256(k) => Some(PrivateKey::Rsa(k.clone())),
            Key::EdDsa(_) => None,
        }
    }

    /// The public key as published in the client's JWK Set for encryption to it (`use`
    /// `enc`, the JWE `alg` the IdP is to use).
    pub fn published_enc_jwk(&self, alg: &str) -> Value {
        let mut m = self.public_members();
        m.insert("kid".into(), json!(self.kid));
        m.insert("alg".into(), json!(alg));
        m.insert("use".into(), json!("enc"));
        Value::Object(m)
    }

    pub fn published_jwk(&self) -> Value {
        let mut m = self.public_members();
        m.insert("kid".into(), json!(self.kid));
        m.insert("alg".into(), json!(self.alg()));
        m.insert("use".into(), json!("sig"));
        if let Some(x5t) = &self.x5t_s256 {
            m.insert("x5t#S256".into(), json!(x5t));
        }
        Value::Object(m)
    }

    fn sign(&self, message: &[u8], rng: &mut dyn Random) -> Result<Vec<u8>, SignError> {
        use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
        Ok(match &self.key {
            // Deterministic (RFC 6979): no random bytes needed.
            Key::Es256(k) => {
                let signature: p256::ecdsa::Signature =
                    k.try_sign(message).map_err(|_| SignError)?;
                signature.to_bytes().to_vec()
            }
            Key::EdDsa(k) => k
                .try_sign(message)
                .map_err(|_| SignError)?
                .to_bytes()
                .to_vec(),
            Key::Ps256(k) => {
                let signer = rsa::pss::BlindedSigningKey::<Sha256>::new(k.as_ref().clone());
                let mut rng = RngAdapter {
                    inner: rng,
                    failed: false,
                };
                let signature = signer
                    .try_sign_with_rng(&mut rng, message)
                    .map_err(|_| SignError)?;
                if rng.failed {
                    return Err(SignError);
                }
                signature.to_vec()
            }
        })
    }

    /// A compact JWS of `claims`, with `header` plus `alg` (and `kid` when `with_kid`).
    pub fn jwt(
        &self,
        mut header: Map<String, Value>,
        claims: &Value,
        with_kid: bool,
        rng: &mut dyn Random,
    ) -> Result<String, SignError> {
        header.insert("alg".into(), json!(self.alg()));
        if with_kid {
            header.insert("kid".into(), json!(self.kid));
            if let Some(x5t) = &self.x5t_s256 {
                header.insert("x5t#S256".into(), json!(x5t));
            }
        }
        let signing_input = format!(
            "{}.{}",
            b64(Value::Object(header).to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.sign(signing_input.as_bytes(), rng)?;
        Ok(format!("{signing_input}.{}", b64(&signature)))
    }
}

/// RFC 7638 §3: SHA-256 of the required members, in lexicographic order, without whitespace
/// (serde_json's map keeps its keys sorted).
fn thumbprint_of(required: Map<String, Value>) -> String {
    b64(&Sha256::digest(
        Value::Object(required).to_string().as_bytes(),
    ))
}

/// Our random source as `rand_core` wants it (RSA-PSS salts and blinding). A failure cannot
/// be returned from `fill_bytes`: it is remembered and the signature thrown away.
struct RngAdapter<'a> {
    inner: &'a mut dyn Random,
    failed: bool,
}

impl rsa::rand_core::RngCore for RngAdapter<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.inner.fill(dest).is_err() {
            self.failed = true;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for RngAdapter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::jwks::{Alg, Jwks};
    use crate::oidc::jws;
    use crate::random::{BrokenRandom, CountingRandom};
    use rsa::traits::PrivateKeyParts;

    const EC: &str = include_str!("../../tests/fixtures/keys/ec-p256.pem");
    const ED: &str = include_str!("../../tests/fixtures/keys/ed25519.pem");
    const RSA: &str = include_str!("../../tests/fixtures/keys/rsa-2048.pem");

    fn jwks_of(key: &SigningKey) -> Jwks {
        Jwks::parse(
            json!({"keys": [key.published_jwk()]})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn each_key_type_signs_what_the_verifier_accepts() {
        for (pem, alg) in [(EC, Alg::Es256), (ED, Alg::EdDsa), (RSA, Alg::Ps256)] {
            let key = SigningKey::parse(pem, Some("k1")).unwrap();
            assert_eq!(key.alg(), alg.as_str());
            let claims = json!({"iss": "bff", "n": 1});
            let jwt = key
                .jwt(Map::new(), &claims, true, &mut CountingRandom(5))
                .unwrap();
            assert!(!jwt.contains('=') && !jwt.contains('+') && !jwt.contains('/'));
            let verified = jws::verify(&jwt, &jwks_of(&key), &[alg]).unwrap();
            assert_eq!(verified.kid.as_deref(), Some("k1"), "{jwt}");
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(jwt.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(header, json!({"alg": alg.as_str(), "kid": "k1"}));
            // Tampered: refused.
            let forged = format!("{}x", &jwt[..jwt.len() - 1]);
            assert!(jws::verify(&forged, &jwks_of(&key), &[alg]).is_err());
            // The JWK form of the same key signs the same way and has the same public half.
            let jwk_key = SigningKey::parse(&private_jwk(&key), None).unwrap();
            assert_eq!(jwk_key.public_jwk(), key.public_jwk());
            assert_eq!(jwk_key.kid(), key.thumbprint(), "no kid: the thumbprint");
        }
    }

    /// The key's private JWK, as a user would paste it (from the PEM, through the crates).
    fn private_jwk(key: &SigningKey) -> String {
        let mut m = key.public_members();
        match &key.key {
            Key::Es256(k) => m.insert("d".into(), json!(b64(&k.to_bytes()))),
            Key::EdDsa(k) => m.insert("d".into(), json!(b64(k.as_bytes()))),
            Key::Ps256(k) => {
                m.insert("d".into(), json!(b64(&k.d().to_bytes_be())));
                m.insert("p".into(), json!(b64(&k.primes()[0].to_bytes_be())));
                m.insert("q".into(), json!(b64(&k.primes()[1].to_bytes_be())))
            }
        };
        Value::Object(m).to_string()
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let mut m = Map::new();
        m.insert("n".into(), json!(n));
        m.insert("kty".into(), json!("RSA"));
        m.insert("e".into(), json!("AQAB"));
        assert_eq!(
            thumbprint_of(m),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn bad_keys_are_named_without_being_quoted() {
        for (text, expected) in [
            ("", KeyError::Unreadable),
            ("not a key", KeyError::Unreadable),
            (
                "{\"kty\": \"EC\", \"crv\": \"P-256\"}",
                KeyError::Unreadable,
            ),
            (
                "{\"kty\": \"EC\", \"crv\": \"P-384\", \"d\": \"AA\"}",
                KeyError::Unsupported("EC P-384".into()),
            ),
            (
                "{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}",
                KeyError::Unsupported("oct ".into()),
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                KeyError::Unsupported("PEM private".into()),
            ),
        ] {
            let e = SigningKey::parse(text, None).unwrap_err();
            assert_eq!(e, expected, "{text}");
            assert!(!e.to_string().contains("AAAA"));
        }
        // An RSA key below 2048 bits (a JWK of a 1024-bit key made for this test).
        let small = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let jwk = json!({"kty": "RSA", "n": b64(&small.n().to_bytes_be()),
                         "e": b64(&small.e().to_bytes_be()), "d": b64(&small.d().to_bytes_be())});
        assert_eq!(
            SigningKey::parse(&jwk.to_string(), None).unwrap_err(),
            KeyError::TooShort(1024)
        );
    }

    #[test]
    fn a_failed_random_source_fails_a_ps256_signature() {
        let key = SigningKey::parse(RSA, None).unwrap();
        assert_eq!(
            key.jwt(Map::new(), &json!({}), false, &mut BrokenRandom),
            Err(SignError)
        );
        // ES256 and EdDSA need no random bytes.
        let key = SigningKey::parse(EC, None).unwrap();
        assert!(key
            .jwt(Map::new(), &json!({}), false, &mut BrokenRandom)
            .is_ok());
    }

    #[test]
    fn a_certificate_of_the_key_is_named_by_its_sha_256_thumbprint() {
        let cert = include_str!("../../tests/fixtures/keys/rsa-2048.crt");
        let key = SigningKey::parse(RSA, Some("k")).unwrap();
        let key = key.with_certificate(cert).unwrap();
        // The thumbprint is of the certificate's DER: the PEM's base64 body, decoded.
        let body: String = cert.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let expected = b64(&Sha256::digest(&der));
        let jwt = key
            .jwt(Map::new(), &json!({}), true, &mut CountingRandom(1))
            .unwrap();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(jwt.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            json!({"alg": "PS256", "kid": "k", "x5t#S256": expected})
        );
        assert_eq!(key.published_jwk()["x5t#S256"], json!(expected));
        // Another key's certificate, or no certificate at all, is refused.
        let ec_cert = include_str!("../../tests/fixtures/keys/ec-p256.crt");
        let again = SigningKey::parse(RSA, None).unwrap();
        assert_eq!(
            again.with_certificate(ec_cert).unwrap_err(),
            KeyError::CertificateMismatch
        );
        let ec = SigningKey::parse(EC, None).unwrap();
        assert!(ec.with_certificate(ec_cert).is_ok());
        for not_a_cert in [
            RSA,
            "",
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----",
        ] {
            let key = SigningKey::parse(ED, None).unwrap();
            assert_eq!(
                key.with_certificate(not_a_cert).unwrap_err(),
                KeyError::NotACertificate
            );
        }
        // A DPoP proof (no kid) does not name the certificate.
        let key = SigningKey::parse(RSA, None)
            .unwrap()
            .with_certificate(cert)
            .unwrap();
        let proof = key
            .jwt(Map::new(), &json!({}), false, &mut CountingRandom(1))
            .unwrap();
        assert!(!proof.starts_with(&b64(br#"{"alg":"PS256","x5t"#)));
    }
}
