//! DPoP proofs (RFC 9449): a JWT signed with the filter's DPoP key, sent with each request that
//! uses (or asks for) a DPoP-bound token, so that a token taken from a log or a proxy is
//! useless without the key. The same key on every replica: a bound token works on all of them.

use super::signing_key::{SignError, SigningKey};
use crate::random::{self, Random};
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map};
use sha2::{Digest, Sha256};

/// The header a proof travels in, and the one an IdP or API sends a nonce in (§8, §9).
pub const HEADER: &str = "dpop";
pub const NONCE_HEADER: &str = "dpop-nonce";
/// The `error` an IdP answers when it wants a nonce in the proof (§8).
pub const USE_NONCE: &str = "use_dpop_nonce";
/// A nonce is echoed back in a proof: only a short printable value is taken.
const MAX_NONCE_LEN: usize = 512;

/// `htu` (§4.2): the request's URI without its query and fragment.
pub fn htu(scheme: &str, authority: &str, path_and_query: &str) -> String {
    let path = path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or(path_and_query);
    format!("{scheme}://{authority}{path}")
}

/// `htu` for a call to an absolute URL.
pub fn htu_of(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Whether an IdP's answer asks for the proof to carry its nonce (§8: `400`, or `401` at a
/// resource, with `error` `use_dpop_nonce`).
pub fn asks_for_nonce(status: Option<u16>, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Error {
        error: Option<String>,
    }
    matches!(status, Some(400 | 401))
        && serde_json::from_slice::<Error>(body)
            .ok()
            .and_then(|e| e.error)
            .is_some_and(|e| e == USE_NONCE)
}

/// `ath` (§4.2): the base64url SHA-256 of the access token the request carries.
pub fn ath(access_token: &Secret) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.expose().as_bytes()))
}

/// A nonce as an IdP or API sent it, if it is one we may echo (§8.1: NQCHAR, printable).
pub fn usable_nonce(value: &str) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NONCE_LEN
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    ok.then_some(value)
}

/// A proof for one request: `htm` and `htu` name it, `ath` binds it to the access token it
/// carries (none at the token endpoint), `nonce` is the server's latest.
pub fn proof(
    key: &SigningKey,
    htm: &str,
    htu: &str,
    now: u64,
    nonce: Option<&str>,
    access_token: Option<&Secret>,
    rng: &mut dyn Random,
) -> Result<String, SignError> {
    let mut claims = Map::new();
    claims.insert("jti".into(), json!(random::token(rng, 16)?));
    claims.insert("htm".into(), json!(htm));
    claims.insert("htu".into(), json!(htu));
    claims.insert("iat".into(), json!(now));
    if let Some(nonce) = nonce {
        claims.insert("nonce".into(), json!(nonce));
    }
    if let Some(token) = access_token {
        claims.insert("ath".into(), json!(ath(token)));
    }
    let mut header = Map::new();
    header.insert("typ".into(), json!("dpop+jwt"));
    header.insert("jwk".into(), key.public_jwk());
    key.jwt(header, &serde_json::Value::Object(claims), false, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::jwks::{Alg, Jwks};
    use crate::oidc::jws;
    use crate::random::CountingRandom;

    const EC: &str = include_str!("../../tests/fixtures/keys/ec-p256.pem");
    const ED: &str = include_str!("../../tests/fixtures/keys/ed25519.pem");

    fn part(jwt: &str, i: usize) -> serde_json::Value {
        let b = URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn a_proof_has_exactly_what_rfc_9449_asks_and_verifies_with_its_own_jwk() {
        for (pem, alg) in [(EC, Alg::Es256), (ED, Alg::EdDsa)] {
            let key = SigningKey::parse(pem, Some("not-in-a-proof")).unwrap();
            let token = Secret::new("the-access-token");
            let jwt = proof(
                &key,
                "GET",
                &htu("https", "api.example", "/private/api/me?x=1#f"),
                1_800_000_000,
                Some("n-0S6_WzA2Mj"),
                Some(&token),
                &mut CountingRandom(3),
            )
            .unwrap();
            assert!(!jwt.contains('='));
            let header = part(&jwt, 0);
            assert_eq!(
                header,
                json!({"typ": "dpop+jwt", "alg": alg.as_str(), "jwk": key.public_jwk()})
            );
            let claims = part(&jwt, 1);
            let jti = claims["jti"].as_str().unwrap();
            assert_eq!(jti.len(), 22);
            assert_eq!(
                claims,
                json!({"jti": jti, "htm": "GET", "htu": "https://api.example/private/api/me",
                       "iat": 1_800_000_000u64, "nonce": "n-0S6_WzA2Mj",
                       "ath": ath(&token)})
            );
            // The key in the header verifies it (what a resource server does).
            let mut jwk = header["jwk"].clone();
            jwk["kid"] = json!("k");
            let jwks = Jwks::parse(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
            assert!(jws::verify(&jwt, &jwks, &[alg]).is_ok());
        }
    }

    #[test]
    fn ath_is_rfc_9449s_example() {
        // RFC 9449 §7.1: the access token Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU and its
        // hash in the example proof.
        let token = Secret::new("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU");
        assert_eq!(ath(&token), "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
    }

    #[test]
    fn a_nonce_challenge_is_recognised() {
        let body = br#"{"error":"use_dpop_nonce","error_description":"nonce is required"}"#;
        assert!(asks_for_nonce(Some(400), body));
        assert!(!asks_for_nonce(Some(200), body));
        assert!(!asks_for_nonce(
            Some(400),
            br#"{"error":"invalid_dpop_proof"}"#
        ));
        assert!(!asks_for_nonce(None, b""));
        assert_eq!(htu_of("https://idp/token?x=1"), "https://idp/token");
    }

    #[test]
    fn a_token_endpoint_proof_has_no_ath_and_nonces_are_checked() {
        let key = SigningKey::parse(EC, None).unwrap();
        let jwt = proof(
            &key,
            "POST",
            "https://idp/token",
            5,
            None,
            None,
            &mut CountingRandom(1),
        )
        .unwrap();
        let claims = part(&jwt, 1);
        assert!(claims.get("ath").is_none() && claims.get("nonce").is_none());
        assert_eq!(
            usable_nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v"),
            Some("eyJ7S_zG.eyJH0-Z.HX4w-7v")
        );
        for bad in ["", "a b", "a\"b", "a\nb", &"n".repeat(513)] {
            assert_eq!(usable_nonce(bad), None, "{bad:?}");
        }
    }
}
