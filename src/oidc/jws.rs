//! Checking a compact JWS (RFC 7515 §7.1) against the IdP's keys: the ID token's signature
//! (OIDC Core §3.1.3.7 point 6). What the claims say is `id_token`'s business; this only
//! answers "did one of the IdP's keys sign these bytes, with an algorithm we accept?".

use crate::oidc::jwks::{Alg, Jwk, Jwks, KeyMaterial};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::fmt;

/// A JWS whose signature one of the IdP's keys made.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    pub alg: Alg,
    pub kid: Option<String>,
    /// The decoded payload: for an ID token, the claims' JSON.
    pub payload: Vec<u8>,
}

/// The claims are personal data: `Debug` shows their size, not their content.
impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("payload", &format_args!("[{} bytes]", self.payload.len()))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwsError {
    /// Not three base64url parts, or a header that is not a JSON object with a string `alg`
    /// (and, if present, a string `kid` and no `crit`).
    Malformed,
    /// `alg: none` or an HMAC (`HS*`): never accepted, whatever the IdP announces.
    UnsignedOrSymmetric,
    /// A public-key algorithm outside `allowed` (the name, made safe to log).
    AlgorithmNotAllowed(String),
    /// The header's `kid` is not in the set, or no key of the set fits the algorithm: the IdP
    /// may have rotated its keys, so the set is worth fetching again (rate-limited).
    UnknownKey,
    /// The key named by `kid` is of another type or curve, or bound to another `alg`.
    KeyDoesNotFit,
    BadSignature,
}

impl fmt::Display for JwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwsError::Malformed => f.write_str("the token is not a well-formed signed JWT"),
            JwsError::UnsignedOrSymmetric => f.write_str(
                "the token is unsigned (alg none) or MAC-signed (HS*); only the IdP's public-key signatures are accepted",
            ),
            JwsError::AlgorithmNotAllowed(alg) => write!(
                f,
                "the token is signed with {alg}, which the IdP does not announce in id_token_signing_alg_values_supported or this filter does not support"
            ),
            JwsError::UnknownKey => f.write_str(
                "no key in the IdP's JWKS matches the token's kid and algorithm (keys rotated?)",
            ),
            JwsError::KeyDoesNotFit => f.write_str(
                "the IdP key named by the token's kid does not fit its alg (key type, curve or the key's own alg)",
            ),
            JwsError::BadSignature => {
                f.write_str("the token's signature does not verify with the IdP's key")
            }
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the recipient must understand. We understand none (not
    /// even RFC 7797's unencoded payload), so any `crit` refuses the token.
    crit: Option<IgnoredAny>,
}

fn decode(part: &str) -> Result<Vec<u8>, JwsError> {
    // Strict: no padding, no standard-alphabet characters, no non-canonical trailing bits
    // (RFC 7515 §2), so one token has exactly one spelling.
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwsError::Malformed)
}

fn parse_header(json: &[u8]) -> Result<Header, JwsError> {
    // serde would also read a struct from a JSON array (`["RS256"]`); the header is an object
    // (RFC 7515 §4).
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(JwsError::Malformed);
    }
    // Deserializing into the struct (not a map) refuses duplicate member names, which
    // RFC 7515 §5.2 lets us do, so no two parsers can read different algs from one header.
    let header: Header = serde_json::from_slice(json).map_err(|_| JwsError::Malformed)?;
    if header.crit.is_some() {
        return Err(JwsError::Malformed);
    }
    Ok(header)
}

/// An attacker-chosen `alg`, reduced to something safe to put in a log line.
pub(crate) fn loggable(alg: &str) -> String {
    let mut out: String = alg
        .chars()
        .take(24)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_+.".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if alg.chars().count() > 24 {
        out.push('…');
    }
    out
}

fn accepted_alg(name: &str, allowed: &[Alg]) -> Result<Alg, JwsError> {
    let unsigned_or_mac = name.eq_ignore_ascii_case("none")
        || ["HS256", "HS384", "HS512"]
            .iter()
            .any(|hs| name.eq_ignore_ascii_case(hs));
    if unsigned_or_mac {
        return Err(JwsError::UnsignedOrSymmetric);
    }
    match Alg::parse(name) {
        Some(alg) if allowed.contains(&alg) => Ok(alg),
        _ => Err(JwsError::AlgorithmNotAllowed(loggable(name))),
    }
}

/// The keys that may have signed with `alg`: with a `kid`, only keys carrying it; without,
/// every key of the right type (RFC 7515 §4.1.4 makes `kid` optional; OIDC Core §10.1 says an
/// IdP with a single key may omit it).
fn candidates<'a>(jwks: &'a Jwks, alg: Alg, kid: Option<&str>) -> Result<Vec<&'a Jwk>, JwsError> {
    match kid {
        Some(kid) => {
            let named: Vec<&Jwk> = jwks
                .keys()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(JwsError::UnknownKey);
            }
            let fitting: Vec<&Jwk> = named.into_iter().filter(|k| k.fits(alg)).collect();
            if fitting.is_empty() {
                return Err(JwsError::KeyDoesNotFit);
            }
            Ok(fitting)
        }
        None => {
            let fitting: Vec<&Jwk> = jwks.keys().filter(|k| k.fits(alg)).collect();
            if fitting.is_empty() {
                return Err(JwsError::UnknownKey);
            }
            Ok(fitting)
        }
    }
}

fn signature_verifies(key: &Jwk, alg: Alg, input: &[u8], signature: &[u8]) -> bool {
    match (&key.material, alg) {
        // Length, range (s < n), padding and hash: src/oidc/rsa_key.rs.
        (KeyMaterial::Rsa(rsa), _) => rsa.verify(alg, input, signature),
        // JWS carries ECDSA signatures as R ‖ S, each the curve's size (RFC 7518 §3.4), not
        // DER: exactly 64 bytes, each half in [1, n − 1] (src/oidc/p256_key.rs).
        (KeyMaterial::P256(key), Alg::Es256) => key.verify(input, signature),
        // Strict verification: also refuses small-order keys and R (RFC 8032 §5.1.7 allows
        // either; honest signers pass both).
        (KeyMaterial::Ed25519(vk), Alg::EdDsa) => ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|sig| vk.verify_strict(input, &sig).is_ok()),
        _ => false,
    }
}

/// Verifies a compact JWS with the set's keys and returns its payload.
///
/// `allowed` is the IdP's `id_token_signing_alg_values_supported` intersected with what this
/// filter supports ([`Alg::supported_among`]). On [`JwsError::UnknownKey`] the caller may
/// fetch the JWKS again and retry once. A token without `kid` whose signature matches none of
/// the fitting keys is [`JwsError::BadSignature`], even if the set is stale.
pub fn verify(compact: &str, jwks: &Jwks, allowed: &[Alg]) -> Result<Verified, JwsError> {
    let mut parts = compact.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed);
    };
    let header = parse_header(&decode(header_b64)?)?;
    let payload = decode(payload_b64)?;
    let signature = decode(signature_b64)?;

    let alg = accepted_alg(&header.alg, allowed)?;
    let keys = candidates(jwks, alg, header.kid.as_deref())?;

    // The signing input is the first two parts exactly as received (RFC 7515 §5.2 step 8).
    let signing_input = compact
        .as_bytes()
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(JwsError::Malformed)?;
    if !keys
        .iter()
        .any(|key| signature_verifies(key, alg, signing_input, &signature))
    {
        return Err(JwsError::BadSignature);
    }
    Ok(Verified {
        alg,
        kid: header.kid,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::rand_core::OsRng;
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;
    use rsa::BigUint;
    use rsa::RsaPrivateKey;
    use serde_json::json;
    use sha2::{Sha256, Sha384, Sha512};

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The test-only keys in tests/fixtures/keys (made with openssl, see the README there).
    struct Keys {
        rsa: RsaPrivateKey,
        p256: p256::ecdsa::SigningKey,
        ed25519: ed25519_dalek::SigningKey,
    }

    fn keys() -> Keys {
        Keys {
            rsa: RsaPrivateKey::from_pkcs8_pem(include_str!(
                "../../tests/fixtures/keys/rsa-2048.pem"
            ))
            .unwrap(),
            p256: p256::ecdsa::SigningKey::from_pkcs8_pem(include_str!(
                "../../tests/fixtures/keys/ec-p256.pem"
            ))
            .unwrap(),
            ed25519: ed25519_dalek::SigningKey::from_pkcs8_pem(include_str!(
                "../../tests/fixtures/keys/ed25519.pem"
            ))
            .unwrap(),
        }
    }

    impl Keys {
        fn rsa_jwk(&self) -> serde_json::Value {
            let public = self.rsa.to_public_key();
            json!({"kty": "RSA", "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be())})
        }

        fn p256_jwk(&self) -> serde_json::Value {
            let point = self.p256.verifying_key().to_encoded_point(false);
            json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
        }

        fn ed25519_jwk(&self) -> serde_json::Value {
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.ed25519.verifying_key().to_bytes())})
        }

        /// The key's signature over `input` with `alg`, as JWS carries it.
        fn sign(&self, alg: Alg, input: &[u8]) -> Vec<u8> {
            use rsa::{pkcs1v15, pss};
            let rsa = self.rsa.clone();
            match alg {
                Alg::Rs256 => pkcs1v15::SigningKey::<Sha256>::new(rsa)
                    .sign(input)
                    .to_vec(),
                Alg::Rs384 => pkcs1v15::SigningKey::<Sha384>::new(rsa)
                    .sign(input)
                    .to_vec(),
                Alg::Rs512 => pkcs1v15::SigningKey::<Sha512>::new(rsa)
                    .sign(input)
                    .to_vec(),
                Alg::Ps256 => pss::BlindedSigningKey::<Sha256>::new(rsa)
                    .sign_with_rng(&mut OsRng, input)
                    .to_vec(),
                Alg::Ps384 => pss::BlindedSigningKey::<Sha384>::new(rsa)
                    .sign_with_rng(&mut OsRng, input)
                    .to_vec(),
                Alg::Ps512 => pss::BlindedSigningKey::<Sha512>::new(rsa)
                    .sign_with_rng(&mut OsRng, input)
                    .to_vec(),
                Alg::Es256 => {
                    let sig: p256::ecdsa::Signature = self.p256.sign(input);
                    sig.to_bytes().to_vec()
                }
                Alg::EdDsa => self.ed25519.sign(input).to_bytes().to_vec(),
            }
        }
    }

    fn kid_of(alg: Alg) -> &'static str {
        match alg {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => "rsa",
            Alg::Es256 => "p256",
            Alg::EdDsa => "ed",
        }
    }

    fn with(mut jwk: serde_json::Value, members: serde_json::Value) -> serde_json::Value {
        for (k, v) in members.as_object().unwrap() {
            jwk[k] = v.clone();
        }
        jwk
    }

    // RFC 7520 §3.4: Bilbo's RSA key (public part), which signs RFC 7520 §4.1 and §4.2.
    const BILBO_N: &str = "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw";
    const BILBO_KID: &str = "bilbo.baggins@hobbiton.example";

    // RFC 7515 §A.3.1: the ES256 example's P-256 key (public part).
    fn rfc7515_a3_jwk() -> serde_json::Value {
        json!({"kty": "EC", "crv": "P-256",
               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    // A P-384 public key (the curve's base point G, SEC 2 §2.5.1): a valid key of a curve this
    // filter does not support, so skipped.
    fn p384_jwk() -> serde_json::Value {
        json!({"kty": "EC", "crv": "P-384",
               "x": "qofKIr6LBTeOscce8yCtdG4dO2KLp5uYWfdB4IJUKjhVAvJdv1UpbDpUXjhydgq3",
               "y": "NhfeSpYmLG9dnpi_kpLcKfj0Hb0omhR86doxE7XwuMAKYLHOHX6BnXpDHXyQ6g5f"})
    }

    /// Every fixture key under its kid, an RS256-only alias of the RSA key, Bilbo's key and
    /// the RFC 7515 A.3 key (to sign under the wrong kid), and keys that must be skipped.
    fn key_set(k: &Keys) -> Jwks {
        let doc = json!({"keys": [
            with(k.rsa_jwk(), json!({"kid": "rsa", "use": "sig"})),
            with(k.rsa_jwk(), json!({"kid": "rsa-rs256-only", "alg": "RS256"})),
            with(k.p256_jwk(), json!({"kid": "p256", "alg": "ES256"})),
            with(k.ed25519_jwk(), json!({"kid": "ed", "alg": "EdDSA", "use": "sig"})),
            {"kty": "RSA", "kid": BILBO_KID, "use": "sig", "n": BILBO_N, "e": "AQAB"},
            with(rfc7515_a3_jwk(), json!({"kid": "a3"})),
            with(k.rsa_jwk(), json!({"kid": "enc", "use": "enc"})),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            with(p384_jwk(), json!({"kid": "p384"})),
        ]});
        let set = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 6);
        set
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "https://idp.example", "sub": "alice", "aud": "bff", "nonce": "n-1", "exp": 2000000000})
    }

    /// A compact JWS over `header` and `payload`, signed by `signer`'s key for `sign_as`.
    fn token_with(k: &Keys, header: serde_json::Value, payload: &[u8], sign_as: Alg) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(payload));
        let signature = k.sign(sign_as, input.as_bytes());
        format!("{input}.{}", b64(signature))
    }

    fn token(k: &Keys, alg: Alg, kid: Option<&str>) -> String {
        let header = match kid {
            Some(kid) => json!({"alg": alg.as_str(), "typ": "JWT", "kid": kid}),
            None => json!({"alg": alg.as_str()}),
        };
        token_with(k, header, claims().to_string().as_bytes(), alg)
    }

    #[test]
    fn every_algorithm_verifies_with_and_without_kid() {
        let k = keys();
        let set = key_set(&k);
        for alg in Alg::ALL {
            let v = verify(&token(&k, alg, Some(kid_of(alg))), &set, &Alg::ALL)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(v.alg, alg);
            assert_eq!(v.kid.as_deref(), Some(kid_of(alg)));
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&v.payload).unwrap(),
                claims()
            );
            // Without kid every fitting key is tried (for RS256 that includes Bilbo's key).
            let v = verify(&token(&k, alg, None), &set, &Alg::ALL)
                .unwrap_or_else(|e| panic!("{alg} without kid: {e}"));
            assert_eq!((v.alg, v.kid), (alg, None));
        }
        // The RS256-only entry of the RSA key accepts RS256 under its own kid.
        assert!(verify(
            &token(&k, Alg::Rs256, Some("rsa-rs256-only")),
            &set,
            &Alg::ALL
        )
        .is_ok());
    }

    #[test]
    fn a_mixed_set_whose_keys_have_no_alg_nor_use() {
        let k = keys();
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0"},
            k.ed25519_jwk(),
            with(k.rsa_jwk(), json!({"kid": "r1"})),
            k.p256_jwk(),
            p384_jwk(),
        ]});
        let set = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 3);
        for alg in Alg::ALL {
            assert!(
                verify(&token(&k, alg, None), &set, &Alg::ALL).is_ok(),
                "{alg}"
            );
        }
        assert!(verify(&token(&k, Alg::Ps512, Some("r1")), &set, &Alg::ALL).is_ok());
        // Two keys share a kid: the one that fits the algorithm is used.
        let doc = json!({"keys": [
            with(k.rsa_jwk(), json!({"kid": "same"})),
            with(k.ed25519_jwk(), json!({"kid": "same"})),
        ]});
        let set = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        assert!(verify(&token(&k, Alg::EdDsa, Some("same")), &set, &Alg::ALL).is_ok());
        assert!(verify(&token(&k, Alg::Rs256, Some("same")), &set, &Alg::ALL).is_ok());
        assert_eq!(
            verify(&token(&k, Alg::Es256, Some("same")), &set, &Alg::ALL),
            Err(JwsError::KeyDoesNotFit)
        );
    }

    // The payload of RFC 7515 A.1–A.3, CRLFs included.
    const JOE: &[u8] =
        b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
    // The payload of RFC 7520 §4: a sentence from The Fellowship of the Ring.
    const FELLOWSHIP: &str = "SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4";

    fn one_key(jwk: serde_json::Value) -> Jwks {
        let set = Jwks::parse(json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        set
    }

    #[test]
    fn rfc7515_a2_rs256() {
        let set = one_key(json!({"kty": "RSA", "e": "AQAB",
            "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"}));
        let jws = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        let v = verify(jws, &set, &[Alg::Rs256]).unwrap();
        assert_eq!(v.payload, JOE);
        // The same signature does not pass as PSS under the same key.
        let as_ps256 = jws.replacen("eyJhbGciOiJSUzI1NiJ9", &b64("{\"alg\":\"PS256\"}"), 1);
        assert_eq!(
            verify(&as_ps256, &set, &Alg::ALL),
            Err(JwsError::BadSignature)
        );
    }

    #[test]
    fn rfc7515_a3_es256() {
        let set = one_key(rfc7515_a3_jwk());
        let jws = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        let v = verify(jws, &set, &[Alg::Es256]).unwrap();
        assert_eq!(v.payload, JOE);
        assert_eq!(
            format!("{v:?}"),
            "Verified { alg: Es256, kid: None, payload: [70 bytes] }"
        );
    }

    #[test]
    fn rfc8037_a4_ed25519() {
        let set = one_key(
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        );
        let jws = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        assert_eq!(
            verify(jws, &set, &[Alg::EdDsa]).unwrap().payload,
            b"Example of Ed25519 signing"
        );
    }

    #[test]
    fn rfc7520_4_1_rs256_and_4_2_ps384_with_kid() {
        let set = one_key(
            json!({"kty": "RSA", "kid": BILBO_KID, "use": "sig", "n": BILBO_N, "e": "AQAB"}),
        );
        let rs256 = format!(
            "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9.{FELLOWSHIP}.MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg"
        );
        let ps384 = format!(
            "eyJhbGciOiJQUzM4NCIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9.{FELLOWSHIP}.cu22eBqkYDKgIlTpzDXGvaFfz6WGoz7fUDcfT0kkOy42miAh2qyBzk1xEsnk2IpN6-tPid6VrklHkqsGqDqHCdP6O8TTB5dDDItllVo6_1OLPpcbUrhiUSMxbbXUvdvWXzg-UD8biiReQFlfz28zGWVsdiNAUf8ZnyPEgVFn442ZdNqiVJRmBqrYRXe8P_ijQ7p8Vdz0TTrxUeT3lm8d9shnr2lfJT8ImUjvAA2Xez2Mlp8cBE5awDzT0qI0n6uiP1aCN_2_jLAeQTlqRHtfa64QQSUmFAAjVKPbByi7xho0uTOcbH510a6GYmJUAfmWjwZ6oD4ifKo8DYM-X72Eaw"
        );
        for (jws, alg) in [(rs256, Alg::Rs256), (ps384, Alg::Ps384)] {
            let v = verify(&jws, &set, &Alg::ALL).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!((v.alg, v.kid.as_deref()), (alg, Some(BILBO_KID)));
            assert!(String::from_utf8(v.payload)
                .unwrap()
                .starts_with("It\u{2019}s a dangerous business, Frodo"));
        }
    }

    fn hmac(alg: &str, key: &[u8], input: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &[u8]) -> Vec<u8> {
            let mut m = <M as Mac>::new_from_slice(key).unwrap();
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }
        match alg {
            "HS384" => mac::<Hmac<Sha384>>(key, input),
            "HS512" => mac::<Hmac<Sha512>>(key, input),
            _ => mac::<Hmac<Sha256>>(key, input),
        }
    }

    /// The classic confusion (CVE-2015-9235 and kin): HS256 keyed with the RSA public key,
    /// which the attacker knows.
    fn hmac_token(alg: &str, key: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": alg, "kid": "rsa"}).to_string()),
            b64(claims().to_string())
        );
        format!("{input}.{}", b64(hmac(alg, key, input.as_bytes())))
    }

    /// `token` with its `index`th part (0 header, 1 payload, 2 signature) decoded, changed and
    /// re-encoded.
    fn tamper(token: &str, index: usize, change: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut bytes = URL_SAFE_NO_PAD.decode(&parts[index]).unwrap();
        change(&mut bytes);
        parts[index] = b64(bytes);
        parts.join(".")
    }

    #[test]
    fn a_table_of_bad_tokens() {
        let k = keys();
        let set = key_set(&k);
        let rs256 = token(&k, Alg::Rs256, Some("rsa"));
        let es256 = token(&k, Alg::Es256, Some("p256"));
        let eddsa = token(&k, Alg::EdDsa, Some("ed"));
        let public_pem = k
            .rsa
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let n_bytes = k.rsa.to_public_key().n().to_bytes_be();
        let claims_b64 = b64(claims().to_string());
        let der_es256 = {
            let input = es256.rsplit_once('.').unwrap().0;
            let sig: p256::ecdsa::Signature = k.p256.sign(input.as_bytes());
            format!("{input}.{}", b64(sig.to_der().as_bytes()))
        };
        let header = |h: &str| format!("{}.{claims_b64}.{}", b64(h), b64([1u8; 256]));

        use JwsError::*;
        let cases: Vec<(&str, String, JwsError)> = vec![
            (
                "alg none",
                format!("{}.{claims_b64}.", b64(r#"{"alg":"none"}"#)),
                UnsignedOrSymmetric,
            ),
            (
                "alg None with kid",
                header(r#"{"alg":"None","kid":"rsa"}"#),
                UnsignedOrSymmetric,
            ),
            (
                "HS256 keyed with the RSA key's PEM",
                hmac_token("HS256", public_pem.as_bytes()),
                UnsignedOrSymmetric,
            ),
            (
                "HS256 keyed with the RSA key's n",
                hmac_token("HS256", &n_bytes),
                UnsignedOrSymmetric,
            ),
            (
                "HS384 keyed with the RSA key's PEM",
                hmac_token("HS384", public_pem.as_bytes()),
                UnsignedOrSymmetric,
            ),
            (
                "HS512 keyed with the RSA key's n",
                hmac_token("HS512", &n_bytes),
                UnsignedOrSymmetric,
            ),
            (
                "kid not in the set",
                token(&k, Alg::Rs256, Some("rotated-away")),
                UnknownKey,
            ),
            (
                "kid of a skipped encryption key",
                token(&k, Alg::Rs256, Some("enc")),
                UnknownKey,
            ),
            (
                "kid of a skipped oct key",
                token(&k, Alg::Rs256, Some("hmac")),
                UnknownKey,
            ),
            (
                "kid of an EC key, RS256 header",
                token(&k, Alg::Rs256, Some("p256")),
                KeyDoesNotFit,
            ),
            (
                "kid of a skipped P-384 key",
                token(&k, Alg::Es256, Some("p384")),
                UnknownKey,
            ),
            (
                "kid of a P-256 key without alg, EdDSA header",
                token(&k, Alg::EdDsa, Some("a3")),
                KeyDoesNotFit,
            ),
            (
                "kid of an RS256-only key, PS256 header",
                token(&k, Alg::Ps256, Some("rsa-rs256-only")),
                KeyDoesNotFit,
            ),
            (
                "RSA signature under another RSA key's kid",
                token(&k, Alg::Rs256, Some(BILBO_KID)),
                BadSignature,
            ),
            (
                "P-256 signature under another P-256 key's kid",
                token(&k, Alg::Es256, Some("a3")),
                BadSignature,
            ),
            (
                "flipped signature byte, RS256",
                tamper(&rs256, 2, |s| s[17] ^= 1),
                BadSignature,
            ),
            (
                "flipped signature byte, ES256",
                tamper(&es256, 2, |s| s[40] ^= 0x80),
                BadSignature,
            ),
            (
                "flipped signature byte, EdDSA",
                tamper(&eddsa, 2, |s| s[3] ^= 4),
                BadSignature,
            ),
            (
                "flipped payload byte, RS256",
                tamper(&rs256, 1, |p| p[10] ^= 1),
                BadSignature,
            ),
            (
                "flipped payload byte, EdDSA",
                tamper(&eddsa, 1, |p| p[20] ^= 2),
                BadSignature,
            ),
            (
                "changed header (typ)",
                tamper(&rs256, 0, |h| {
                    *h = String::from_utf8(h.clone())
                        .unwrap()
                        .replace("JWT", "JWS")
                        .into_bytes()
                }),
                BadSignature,
            ),
            (
                "truncated signature, RS256",
                tamper(&rs256, 2, |s| {
                    s.pop();
                }),
                BadSignature,
            ),
            (
                "truncated signature, ES256",
                tamper(&es256, 2, |s| {
                    s.pop();
                }),
                BadSignature,
            ),
            (
                "signature with a byte added, EdDSA",
                tamper(&eddsa, 2, |s| s.push(0)),
                BadSignature,
            ),
            ("ES256 signature in DER", der_es256, BadSignature),
            (
                "empty signature",
                format!("{}.", rs256.rsplit_once('.').unwrap().0),
                BadSignature,
            ),
            (
                "all-zero RSA signature",
                tamper(&rs256, 2, |s| s.fill(0)),
                BadSignature,
            ),
            (
                "all-ones RSA signature (above n)",
                tamper(&rs256, 2, |s| s.fill(0xff)),
                BadSignature,
            ),
            ("extra dot segment", format!("{rs256}.e30"), Malformed),
            ("trailing dot", format!("{rs256}."), Malformed),
            (
                "two parts",
                rs256.rsplit_once('.').unwrap().0.to_string(),
                Malformed,
            ),
            ("one part", "e30".into(), Malformed),
            ("empty", String::new(), Malformed),
            (
                "non-base64 header",
                rs256.replacen("eyJ", "ey!", 1),
                Malformed,
            ),
            (
                "non-base64 payload",
                rs256.replacen(&claims_b64, "not*base64", 1),
                Malformed,
            ),
            ("padded signature", format!("{rs256}="), Malformed),
            (
                "standard-alphabet signature",
                format!("{}.+/AA", rs256.rsplit_once('.').unwrap().0),
                Malformed,
            ),
            ("whitespace around", format!(" {rs256}"), Malformed),
            ("header not JSON", header("RS256"), Malformed),
            ("header a JSON array", header(r#"["RS256"]"#), Malformed),
            ("header without alg", header(r#"{"kid":"rsa"}"#), Malformed),
            (
                "header alg not a string",
                header(r#"{"alg":256}"#),
                Malformed,
            ),
            (
                "header kid not a string",
                header(r#"{"alg":"RS256","kid":1}"#),
                Malformed,
            ),
            (
                "header alg twice",
                header(r#"{"alg":"RS256","alg":"none"}"#),
                Malformed,
            ),
            (
                "header with crit",
                header(r#"{"alg":"RS256","crit":["b64"],"b64":false}"#),
                Malformed,
            ),
            (
                "unsupported ES384, kid of the P-256 key",
                header(r#"{"alg":"ES384","kid":"p256"}"#),
                AlgorithmNotAllowed("ES384".into()),
            ),
            (
                "unsupported ES384, kid of the skipped P-384 key",
                header(r#"{"alg":"ES384","kid":"p384"}"#),
                AlgorithmNotAllowed("ES384".into()),
            ),
            (
                "unsupported ES512",
                header(r#"{"alg":"ES512"}"#),
                AlgorithmNotAllowed("ES512".into()),
            ),
            (
                "alg in the wrong case",
                header(r#"{"alg":"rs256"}"#),
                AlgorithmNotAllowed("rs256".into()),
            ),
        ];
        for (what, token, want) in cases {
            assert_eq!(verify(&token, &set, &Alg::ALL), Err(want), "{what}");
        }
    }

    #[test]
    fn only_allowed_algorithms_are_accepted() {
        let k = keys();
        let set = key_set(&k);
        let rs256 = token(&k, Alg::Rs256, Some("rsa"));
        assert_eq!(
            verify(&rs256, &set, &[Alg::Es256, Alg::Ps256]),
            Err(JwsError::AlgorithmNotAllowed("RS256".into()))
        );
        assert_eq!(
            verify(&rs256, &set, &[]),
            Err(JwsError::AlgorithmNotAllowed("RS256".into()))
        );
        assert!(verify(&rs256, &set, &[Alg::Rs256]).is_ok());
        // ES384 is no longer supported: refused even when the IdP announces it.
        let es384 = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"ES384","kid":"p384"}"#),
            b64(claims().to_string()),
            b64([1u8; 96])
        );
        let announced = Alg::supported_among(&["ES384", "RS256"]);
        assert_eq!(announced, [Alg::Rs256]);
        assert_eq!(
            verify(&es384, &set, &announced),
            Err(JwsError::AlgorithmNotAllowed("ES384".into()))
        );
        // The algorithm is judged before the key: an unknown kid with a refused alg is refused.
        assert_eq!(
            verify(&token(&k, Alg::EdDsa, Some("nope")), &set, &[Alg::Rs256]),
            Err(JwsError::AlgorithmNotAllowed("EdDSA".into()))
        );
    }

    #[test]
    fn without_kid_no_fitting_key_is_unknown_and_a_wrong_signature_is_bad() {
        let k = keys();
        let only_ec = one_key(k.p256_jwk());
        assert_eq!(
            verify(&token(&k, Alg::Rs256, None), &only_ec, &Alg::ALL),
            Err(JwsError::UnknownKey)
        );
        assert_eq!(
            verify(&token(&k, Alg::Rs256, None), &Jwks::default(), &Alg::ALL),
            Err(JwsError::UnknownKey)
        );
        let other_ec = one_key(rfc7515_a3_jwk());
        assert_eq!(
            verify(&token(&k, Alg::Es256, None), &other_ec, &Alg::ALL),
            Err(JwsError::BadSignature)
        );
    }

    #[test]
    fn pss_needs_the_hash_length_salt() {
        use rsa::pss::BlindedSigningKey;
        let k = keys();
        let set = key_set(&k);
        let input = format!("{}.{}", b64(r#"{"alg":"PS256","kid":"rsa"}"#), b64("{}"));
        for (salt, ok) in [(32, true), (20, false), (0, false), (64, false)] {
            let sig = BlindedSigningKey::<Sha256>::new_with_salt_len(k.rsa.clone(), salt)
                .sign_with_rng(&mut OsRng, input.as_bytes())
                .to_vec();
            let jws = format!("{input}.{}", b64(sig));
            assert_eq!(verify(&jws, &set, &Alg::ALL).is_ok(), ok, "salt {salt}");
        }
    }

    #[test]
    fn an_rsa_signature_plus_the_modulus_is_refused() {
        // s and s + n give the same s^e mod n; RFC 8017 §5.2.2 wants s < n. Found by trying
        // salts until s + n still fits in the modulus' length.
        let k = keys();
        let set = key_set(&k);
        let n = k.rsa.to_public_key().n().clone();
        let size = k.rsa.to_public_key().size();
        for _ in 0..200 {
            let jws = token(&k, Alg::Ps256, Some("rsa"));
            assert!(verify(&jws, &set, &Alg::ALL).is_ok());
            let too_big = tamper(&jws, 2, |s| {
                let bigger = (BigUint::from_bytes_be(s) + &n).to_bytes_be();
                *s = bigger;
            });
            let sig_len = URL_SAFE_NO_PAD
                .decode(too_big.rsplit_once('.').unwrap().1)
                .unwrap()
                .len();
            if sig_len == size {
                assert_eq!(
                    verify(&too_big, &set, &Alg::ALL),
                    Err(JwsError::BadSignature)
                );
                return;
            }
        }
        panic!("no PS256 signature with s + n < 2^2048 in 200 tries");
    }

    #[test]
    fn messages_name_the_problem_never_the_token() {
        let k = keys();
        let rs256 = token(&k, Alg::Rs256, Some("rsa"));
        let errors = [
            JwsError::Malformed,
            JwsError::UnsignedOrSymmetric,
            JwsError::AlgorithmNotAllowed("RS256".into()),
            JwsError::UnknownKey,
            JwsError::KeyDoesNotFit,
            JwsError::BadSignature,
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains("eyJ"), "{text}");
            assert!(!rs256.split('.').any(|part| text.contains(part)));
        }
        // An attacker-chosen alg is cut short and cleaned before it can reach a log line.
        let set = key_set(&k);
        let evil = format!(
            "{}.e30.AA",
            b64(r#"{"alg":"RS256\n[info] login ok for admin; \u001b[2J and much more text"}"#)
        );
        let Err(JwsError::AlgorithmNotAllowed(shown)) = verify(&evil, &set, &Alg::ALL) else {
            panic!("expected AlgorithmNotAllowed");
        };
        assert_eq!(shown, "RS256??info??login?ok?fo…");
    }
}
