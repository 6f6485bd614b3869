//! The IdP's signing keys: a JWK Set (RFC 7517 §5) parsed once into ready-to-use public keys,
//! and the JWS algorithms this filter can check (RFC 7518 §3, RFC 8037 §3.1): RS256/384/512
//! and PS256/384/512 with RSA keys, ES256 with EC P-256 keys, EdDSA with Ed25519 keys.
//!
//! Only public-key signatures are supported: an ID token MACed with a shared secret (HS*) would
//! be keyed with the client secret, which we never use for that. ES384/ES512 (EC P-384/P-521)
//! are left out on purpose: their curve arithmetic would grow the wasm module a lot (P-384
//! alone by ~150 KB), they are rare for ID tokens, and OIDC Core §15.1 only requires RS256.

use super::p256_key::P256Key;
use super::rsa_key::RsaKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use std::fmt;

/// An asymmetric JWS algorithm this filter can verify (RFC 7518 §3.1, RFC 8037 §3.1). `none`
/// and `HS*` are deliberately not representable; neither are ES384 and ES512 (see the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    EdDsa,
}

impl Alg {
    /// Every algorithm this filter can verify, in the order we prefer them.
    pub const ALL: [Alg; 8] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::EdDsa,
    ];

    /// The algorithm named by a JWS header or a discovery document. Names are case-sensitive
    /// (RFC 7515 §4.1.1); anything else (`none`, `HS256`, `ES384`, `ES512`, ...) is `None`.
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The algorithms both announced by the IdP (`id_token_signing_alg_values_supported`,
    /// OIDC Discovery §3) and supported here: what `jws::verify` should be given as `allowed`.
    pub fn supported_among<S: AsRef<str>>(announced: &[S]) -> Vec<Alg> {
        let mut out: Vec<Alg> = Vec::new();
        for alg in announced
            .iter()
            .filter_map(|name| Alg::parse(name.as_ref()))
        {
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        out
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key, decoded and checked once when the set is parsed.
#[derive(Clone)]
pub(crate) enum KeyMaterial {
    /// With its Montgomery constants: computed here, once per key, not per token.
    Rsa(RsaKey),
    /// With its multiples for the verification pass, made here once.
    P256(P256Key),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl KeyMaterial {
    fn kty(&self) -> &'static str {
        match self {
            KeyMaterial::Rsa(_) => "RSA",
            KeyMaterial::P256(_) => "EC P-256",
            KeyMaterial::Ed25519(_) => "OKP Ed25519",
        }
    }
}

/// One usable signing key of the set.
#[derive(Clone)]
pub(crate) struct Jwk {
    pub(crate) kid: Option<String>,
    /// The key's own `alg` (RFC 7517 §4.4), when it names one.
    pub(crate) alg: Option<Alg>,
    pub(crate) material: KeyMaterial,
}

impl Jwk {
    /// Whether this key may check a signature made with `alg`: the key type and curve the
    /// algorithm is defined for (RFC 7518 §3.3–3.5, RFC 8037 §3.1), and the key's own `alg`
    /// if it has one (RFC 7517 §4.4).
    pub(crate) fn fits(&self, alg: Alg) -> bool {
        let kind_fits = matches!(
            (&self.material, alg),
            (
                KeyMaterial::Rsa(_),
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (KeyMaterial::P256(_), Alg::Es256)
                | (KeyMaterial::Ed25519(_), Alg::EdDsa)
        );
        kind_fits && self.alg.map_or(true, |own| own == alg)
    }
}

/// The IdP's signing keys. Keys this filter cannot use are left out, not refused: a set may
/// also hold encryption keys, or key types we do not support, next to the signing key.
#[derive(Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksError {
    NotJson,
    NoKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JwksError::NotJson => "the IdP's JWKS document is not JSON",
            JwksError::NoKeys => "the IdP's JWKS document is not an object with a \"keys\" array",
        })
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Key parameters are base64url without padding (RFC 7518 §6); a padded value is tolerated,
/// since it comes from the IdP, not from the token.
fn b64(value: Option<&String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(value?.trim_end_matches('=')).ok()
}

impl RawJwk {
    fn into_jwk(self) -> Option<Jwk> {
        // RFC 7517 §4.2–4.3: a key meant for encryption (or not for verifying) is not ours.
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        if self
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
        {
            return None;
        }
        // A key bound to an algorithm we cannot check (RSA-OAEP, ES384, HS256, ...) is unusable.
        let alg = match &self.alg {
            None => None,
            Some(name) => Some(Alg::parse(name)?),
        };
        let material = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => {
                KeyMaterial::Rsa(RsaKey::new(&b64(self.n.as_ref())?, &b64(self.e.as_ref())?)?)
            }
            ("EC", Some("P-256")) => {
                let (x, y) = coordinates(&self)?;
                KeyMaterial::P256(P256Key::new(&x, &y)?)
            }
            ("OKP", Some("Ed25519")) => {
                let x: [u8; 32] = b64(self.x.as_ref())?.try_into().ok()?;
                KeyMaterial::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&x).ok()?)
            }
            // Any other key type or curve (EC P-384 and P-521, Ed448, X25519, oct, ...).
            _ => return None,
        };
        Some(Jwk {
            kid: self.kid,
            alg,
            material,
        })
    }
}

/// A P-256 key's `x` and `y`. Each must have the curve's full size (RFC 7518
/// §6.2.1.2–6.2.1.3), so a short `x` cannot borrow a byte from a long `y`.
fn coordinates(raw: &RawJwk) -> Option<([u8; 32], [u8; 32])> {
    let x = b64(raw.x.as_ref())?.try_into().ok()?;
    let y = b64(raw.y.as_ref())?.try_into().ok()?;
    Some((x, y))
}

impl Jwks {
    /// Parses the document served at the IdP's `jwks_uri`. Only a document that is not a JSON
    /// object with a `keys` array is an error; a key that is malformed, of an unsupported type
    /// or curve, too weak, or not for signatures is skipped.
    pub fn parse(json: &[u8]) -> Result<Jwks, JwksError> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|_| JwksError::NotJson)?;
        if !value.is_object() {
            return Err(JwksError::NoKeys);
        }
        let raw: RawSet = serde_json::from_value(value).map_err(|_| JwksError::NoKeys)?;
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<RawJwk>(k).ok()?.into_jwk())
            .collect();
        Ok(Jwks { keys })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a usable key carries this `kid`: when a token names a kid we do not know, the
    /// IdP has probably rotated its keys and the set should be fetched again.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Jwk> {
        self.keys.iter()
    }
}

/// Lists the keys (type, kid, alg), for a log line; public keys, but no need to print them.
impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| {
                format!(
                    "{} kid={} alg={}",
                    k.material.kty(),
                    k.kid.as_deref().unwrap_or("-"),
                    k.alg.map_or("-", Alg::as_str)
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // RFC 7517 Appendix A.1: an EC P-256 encryption key and an RSA signing key.
    const RFC7517_A1: &str = r#"{"keys":
       [
         {"kty":"EC",
          "crv":"P-256",
          "x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
          "y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
          "use":"enc",
          "kid":"1"},

         {"kty":"RSA",
          "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
          "e":"AQAB",
          "alg":"RS256",
          "kid":"2011-04-29"}
       ]
     }"#;

    #[test]
    fn algorithm_names_are_exact() {
        for alg in Alg::ALL {
            assert_eq!(Alg::parse(alg.as_str()), Some(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
        for name in [
            "none", "None", "HS256", "HS384", "HS512", "rs256", "ES384", "ES512", "", "EdDsa",
        ] {
            assert_eq!(Alg::parse(name), None, "{name}");
        }
    }

    #[test]
    fn supported_among_keeps_the_announced_ones_we_can_check() {
        assert_eq!(
            Alg::supported_among(&["RS256", "HS256", "none", "ES384", "ES256", "RS256", "ES512"]),
            vec![Alg::Rs256, Alg::Es256]
        );
        assert!(Alg::supported_among::<&str>(&[]).is_empty());
    }

    #[test]
    fn rfc7517_a1_keeps_the_signing_key_and_skips_the_encryption_key() {
        let set = Jwks::parse(RFC7517_A1.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.has_kid("2011-04-29"));
        assert!(!set.has_kid("1"));
        assert_eq!(format!("{set:?}"), r#"["RSA kid=2011-04-29 alg=RS256"]"#);
        // The EC key is a valid point: it was skipped for its "use" alone.
        let mut doc: serde_json::Value = serde_json::from_str(RFC7517_A1).unwrap();
        doc["keys"][0].as_object_mut().unwrap().remove("use");
        let set = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.has_kid("1"));
    }

    fn rsa_jwk() -> serde_json::Value {
        let set: serde_json::Value = serde_json::from_str(RFC7517_A1).unwrap();
        set["keys"][1].clone()
    }

    fn ec_jwk() -> serde_json::Value {
        // RFC 7515 A.3's P-256 key, public part.
        json!({"kty": "EC", "crv": "P-256",
               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    fn p384_jwk() -> serde_json::Value {
        // A valid P-384 public key: the curve's base point G (SEC 2 §2.5.1).
        json!({"kty": "EC", "crv": "P-384",
               "x": "qofKIr6LBTeOscce8yCtdG4dO2KLp5uYWfdB4IJUKjhVAvJdv1UpbDpUXjhydgq3",
               "y": "NhfeSpYmLG9dnpi_kpLcKfj0Hb0omhR86doxE7XwuMAKYLHOHX6BnXpDHXyQ6g5f"})
    }

    fn okp_jwk() -> serde_json::Value {
        // RFC 8037 A.2's Ed25519 key, public part.
        json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
    }

    fn count(keys: Vec<serde_json::Value>) -> usize {
        Jwks::parse(json!({ "keys": keys }).to_string().as_bytes())
            .unwrap()
            .len()
    }

    #[test]
    fn keys_of_every_supported_type_without_alg_or_use() {
        let set = Jwks::parse(
            json!({"keys": [rsa_jwk(), ec_jwk(), okp_jwk()]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
        let kinds: Vec<_> = set.keys().map(|k| k.material.kty()).collect();
        assert_eq!(kinds, ["RSA", "EC P-256", "OKP Ed25519"]);
    }

    #[test]
    fn unusable_keys_are_skipped_not_refused() {
        let with = |base: serde_json::Value, k: &str, v: serde_json::Value| {
            let mut key = base;
            key[k] = v;
            key
        };
        let without = |base: serde_json::Value, k: &str| {
            let mut key = base;
            key.as_object_mut().unwrap().remove(k);
            key
        };
        let skipped = vec![
            json!("not an object"),
            json!({"kid": "no kty"}),
            json!({"kty": "oct", "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}),
            with(rsa_jwk(), "use", json!("enc")),
            with(rsa_jwk(), "key_ops", json!(["encrypt"])),
            with(rsa_jwk(), "alg", json!("RSA-OAEP")),
            with(rsa_jwk(), "alg", json!("HS256")),
            with(rsa_jwk(), "kid", json!(7)),
            without(rsa_jwk(), "n"),
            with(rsa_jwk(), "n", json!("not base64!")),
            with(rsa_jwk(), "e", json!("")),
            // A 1024-bit modulus: below RFC 7518 §3.3's minimum.
            with(rsa_jwk(), "n", json!(URL_SAFE_NO_PAD.encode([0xc5u8; 128]))),
            p384_jwk(),
            with(p384_jwk(), "alg", json!("ES384")),
            with(rsa_jwk(), "alg", json!("ES384")),
            with(ec_jwk(), "crv", json!("P-521")),
            with(ec_jwk(), "crv", json!("secp256k1")),
            without(ec_jwk(), "crv"),
            without(ec_jwk(), "y"),
            // A coordinate one byte short (and the other one long) is not a point.
            with(ec_jwk(), "x", json!(URL_SAFE_NO_PAD.encode([7u8; 31]))),
            // A point that is not on the curve.
            with(ec_jwk(), "y", json!(URL_SAFE_NO_PAD.encode([1u8; 32]))),
            with(okp_jwk(), "crv", json!("Ed448")),
            with(okp_jwk(), "crv", json!("X25519")),
            with(okp_jwk(), "x", json!(URL_SAFE_NO_PAD.encode([1u8; 31]))),
        ];
        for key in skipped {
            assert_eq!(count(vec![key.clone()]), 0, "{key}");
        }
        let kept = vec![
            with(rsa_jwk(), "use", json!("sig")),
            with(rsa_jwk(), "key_ops", json!(["verify"])),
            without(rsa_jwk(), "alg"),
            with(rsa_jwk(), "alg", json!("PS256")),
            // Padded base64url from a sloppy IdP is tolerated.
            with(
                okp_jwk(),
                "x",
                json!("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
            ),
            with(ec_jwk(), "alg", json!("ES256")),
            with(
                ec_jwk(),
                "d",
                json!("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"),
            ),
        ];
        for key in kept {
            assert_eq!(count(vec![key.clone()]), 1, "{key}");
        }
    }

    #[test]
    fn a_p384_key_is_skipped_like_any_unsupported_key() {
        // A valid P-384 point, with or without a kid, "alg": "ES384" and "use": "sig".
        let mut labelled = p384_jwk();
        labelled["kid"] = json!("p384");
        labelled["alg"] = json!("ES384");
        labelled["use"] = json!("sig");
        for p384 in [p384_jwk(), labelled] {
            let set =
                Jwks::parse(json!({"keys": [p384, rsa_jwk()]}).to_string().as_bytes()).unwrap();
            assert_eq!(set.len(), 1);
            assert!(!set.has_kid("p384"));
            assert_eq!(format!("{set:?}"), r#"["RSA kid=2011-04-29 alg=RS256"]"#);
        }
    }

    #[test]
    fn only_a_document_without_a_keys_array_is_an_error() {
        assert_eq!(Jwks::parse(b"").unwrap_err(), JwksError::NotJson);
        assert_eq!(Jwks::parse(b"{\"keys\":").unwrap_err(), JwksError::NotJson);
        for doc in ["[]", "{}", "{\"keys\": {}}", "{\"keys\": null}", "\"keys\""] {
            assert_eq!(
                Jwks::parse(doc.as_bytes()).unwrap_err(),
                JwksError::NoKeys,
                "{doc}"
            );
        }
        let empty = Jwks::parse(b"{\"keys\": []}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(format!("{empty:?}"), "[]");
        assert!(JwksError::NoKeys.to_string().contains("keys"));
    }

    #[test]
    fn a_key_fits_its_algorithm_family_and_its_own_alg() {
        let set = Jwks::parse(
            json!({"keys": [rsa_jwk(), ec_jwk(), okp_jwk()]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let fitting = |alg: Alg| -> Vec<&'static str> {
            set.keys()
                .filter(|k| k.fits(alg))
                .map(|k| k.material.kty())
                .collect()
        };
        // The RSA key says "alg": "RS256", so it does not fit PS256 even though it could.
        assert_eq!(fitting(Alg::Rs256), ["RSA"]);
        assert!(fitting(Alg::Ps256).is_empty());
        assert!(fitting(Alg::Rs512).is_empty());
        assert_eq!(fitting(Alg::Es256), ["EC P-256"]);
        assert_eq!(fitting(Alg::EdDsa), ["OKP Ed25519"]);
    }
}
