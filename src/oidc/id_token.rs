//! ID token validation (OIDC Core §3.1.3.7): the signature against the IdP's JWKS, then
//! the claims.

use super::discovery::Provider;
use super::jwe::JweError;
use super::jwks::{Alg, Jwks};
use super::jws::{self, JwsError};
use crate::ctx::Ctx;
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Allowed clock difference with the IdP when checking `exp` and `iat`.
pub const CLOCK_LEEWAY_S: u64 = 60;

/// What ties an ID token to this client's session.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// From a login: the `nonce` it sent (OIDC Core §3.1.3.7).
    Nonce(&'a str),
    /// From a refresh: the same user as before; no nonce to compare (§12.2).
    Subject(&'a str),
}

/// Validates an ID token from this IdP: signed with one of its keys (as this VM knows them) and
/// an algorithm it announces, issued to us, fresh, and bound to the login or the session. Used
/// by the login and by the refresh.
pub fn check(
    ctx: &Ctx,
    provider: &Provider,
    token: &str,
    binding: Binding,
) -> Result<IdTokenClaims, IdTokenError> {
    let keys = ctx
        .keys
        .ok_or(IdTokenError::Signature(JwsError::UnknownKey))?;
    let (nonce, subject) = match binding {
        Binding::Nonce(n) => (Some(n), None),
        Binding::Subject(s) => (None, Some(s)),
    };
    validate(
        token,
        keys,
        &Alg::supported_among(&provider.signing_algs),
        &Expectations {
            issuer: &ctx.config.issuer,
            client_id: &ctx.config.client_id,
            nonce,
            subject,
            now: ctx.now,
            leeway: CLOCK_LEEWAY_S,
        },
    )
}

/// The ID token as the IdP sent it, opened: with `id_token_encryption` the JWE is decrypted to
/// the signed token inside (OIDC Core §10.2; an unencrypted token is refused, since an IdP that
/// drops encryption is a downgrade), without it the token is the signed one. The caller checks
/// and keeps what this returns.
pub fn open<'a>(ctx: &Ctx, token: &'a str) -> Result<Cow<'a, str>, IdTokenError> {
    let Some(encryption) = &ctx.config.id_token_encryption else {
        return Ok(Cow::Borrowed(token));
    };
    let plaintext = encryption
        .decrypt(token)
        .map_err(IdTokenError::Encryption)?;
    String::from_utf8(plaintext)
        .map(Cow::Owned)
        .map_err(|_| IdTokenError::Malformed)
}

/// What the ID token must say to be accepted.
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The login's nonce; `None` for a token from a refresh, which carries none to compare
    /// (OIDC Core §12.2).
    pub nonce: Option<&'a str>,
    /// On refresh, the session's subject: the new token must name the same user (§12.2).
    pub subject: Option<&'a str>,
    pub now: u64,
    /// Allowed clock difference with the IdP, in seconds.
    pub leeway: u64,
}

/// The claims the filter keeps from a validated ID token.
#[derive(Debug, Clone, PartialEq)]
pub struct IdTokenClaims {
    pub subject: String,
    pub expires_at: u64,
    /// Every claim, for the session endpoint.
    pub all: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenError {
    Malformed,
    Signature(JwsError),
    /// `id_token_encryption` is set and the token did not decrypt (or was not encrypted).
    Encryption(JweError),
    WrongIssuer,
    WrongAudience,
    WrongAuthorizedParty,
    Expired,
    IssuedInFuture,
    NonceMismatch,
    NoSubject,
    SubjectChanged,
}

impl IdTokenError {
    /// The token names a key the JWKS does not have: worth reading the JWKS again.
    pub fn is_unknown_key(&self) -> bool {
        matches!(self, IdTokenError::Signature(JwsError::UnknownKey))
    }
}

impl fmt::Display for IdTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let IdTokenError::Signature(e) = self {
            return write!(f, "ID token signature: {e}");
        }
        if let IdTokenError::Encryption(e) = self {
            return write!(f, "ID token encryption: {e}");
        }
        f.write_str(match self {
            IdTokenError::Malformed | IdTokenError::Signature(_) | IdTokenError::Encryption(_) => {
                "the ID token is not a well-formed JWT"
            }
            IdTokenError::WrongIssuer => "the ID token's iss is not the configured issuer",
            IdTokenError::WrongAudience => "the ID token is not meant for this client (aud)",
            IdTokenError::WrongAuthorizedParty => "the ID token's azp is not this client",
            IdTokenError::Expired => "the ID token has expired",
            IdTokenError::IssuedInFuture => "the ID token was issued in the future (check clocks)",
            IdTokenError::NonceMismatch => "the ID token's nonce does not match this login",
            IdTokenError::NoSubject => "the ID token has no sub",
            IdTokenError::SubjectChanged => "the refreshed ID token names another user (sub)",
        })
    }
}

/// `aud`: one string or a list (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Every audience named (none when the claim is absent).
    pub(super) fn list(aud: Option<Audience>) -> Vec<String> {
        match aud {
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(list)) => list,
            None => vec![],
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    azp: Option<String>,
    exp: Option<f64>,
    iat: Option<f64>,
    nonce: Option<String>,
}

/// A NumericDate claim as whole seconds; `None` if absent, negative or not finite.
pub(super) fn as_secs(v: Option<f64>) -> Option<u64> {
    v.filter(|n| n.is_finite() && *n >= 0.0).map(|n| n as u64)
}

/// Checks a compact-serialized ID token: signed by one of the IdP's keys with an algorithm
/// it announces, then the claims.
pub fn validate(
    token: &str,
    keys: &Jwks,
    allowed: &[Alg],
    expect: &Expectations,
) -> Result<IdTokenClaims, IdTokenError> {
    let verified = jws::verify(token, keys, allowed).map_err(IdTokenError::Signature)?;
    check_claims(&verified.payload, expect)
}

/// The claim checks, on the verified payload.
pub fn check_claims(payload: &[u8], expect: &Expectations) -> Result<IdTokenClaims, IdTokenError> {
    let all: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).map_err(|_| IdTokenError::Malformed)?;
    let claims: Claims = serde_json::from_value(serde_json::Value::Object(all.clone()))
        .map_err(|_| IdTokenError::Malformed)?;

    if claims.iss.as_deref() != Some(expect.issuer) {
        return Err(IdTokenError::WrongIssuer);
    }
    let audiences = Audience::list(claims.aud);
    if !audiences.iter().any(|a| a == expect.client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    // OIDC Core §3.1.3.7 points 4–5: with several audiences, azp must name us.
    if let Some(azp) = &claims.azp {
        if azp != expect.client_id {
            return Err(IdTokenError::WrongAuthorizedParty);
        }
    } else if audiences.len() > 1 {
        return Err(IdTokenError::WrongAuthorizedParty);
    }
    let exp = as_secs(claims.exp).ok_or(IdTokenError::Malformed)?;
    if expect.now >= exp.saturating_add(expect.leeway) {
        return Err(IdTokenError::Expired);
    }
    if let Some(iat) = claims.iat {
        let iat = as_secs(Some(iat)).ok_or(IdTokenError::Malformed)?;
        if iat > expect.now.saturating_add(expect.leeway) {
            return Err(IdTokenError::IssuedInFuture);
        }
    }
    if let Some(nonce) = expect.nonce {
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(IdTokenError::NonceMismatch);
        }
    }
    let subject = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or(IdTokenError::NoSubject)?;
    if expect.subject.is_some_and(|s| s != subject) {
        return Err(IdTokenError::SubjectChanged);
    }
    Ok(IdTokenClaims {
        subject,
        expires_at: exp,
        all,
    })
}

/// Signs test ID tokens with the fixture RSA key (tests/fixtures/keys), for tests across
/// the crate.
#[cfg(test)]
pub mod test_signer {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    use rsa::{Pkcs1v15Sign, RsaPrivateKey};
    use sha2::{Digest, Sha256};

    fn key() -> RsaPrivateKey {
        RsaPrivateKey::from_pkcs8_pem(include_str!("../../tests/fixtures/keys/rsa-2048.pem"))
            .unwrap()
    }

    /// The JWKS holding the fixture key under kid `test-rsa`.
    pub fn jwks_json() -> String {
        let public = key().to_public_key();
        serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "test-rsa",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }]})
        .to_string()
    }

    pub fn jwks() -> super::Jwks {
        super::Jwks::parse(jwks_json().as_bytes()).unwrap()
    }

    /// An RS256 token with these claims, signed by the fixture key (kid `test-rsa`).
    pub fn sign(claims: &serde_json::Value) -> String {
        sign_with_header(
            &serde_json::json!({"alg": "RS256", "kid": "test-rsa"}),
            claims,
        )
    }

    pub fn sign_with_header(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let digest = Sha256::digest(input.as_bytes());
        let sig = key().sign(Pkcs1v15Sign::new::<Sha256>(), &digest).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn expect() -> Expectations<'static> {
        Expectations {
            issuer: "https://idp",
            client_id: "bff",
            nonce: Some("n-1"),
            subject: None,
            now: 1000,
            leeway: 60,
        }
    }

    fn good() -> serde_json::Value {
        json!({"iss": "https://idp", "sub": "alice", "aud": "bff", "exp": 1300, "iat": 990, "nonce": "n-1", "email": "a@x"})
    }

    fn token(claims: serde_json::Value) -> String {
        test_signer::sign(&claims)
    }

    fn check(t: &str, e: &Expectations) -> Result<IdTokenClaims, IdTokenError> {
        validate(t, &test_signer::jwks(), &[Alg::Rs256], e)
    }

    #[test]
    fn accepts_a_good_token() {
        let c = check(&token(good()), &expect()).unwrap();
        assert_eq!(c.subject, "alice");
        assert_eq!(c.expires_at, 1300);
        assert_eq!(c.all.get("email"), Some(&json!("a@x")));
        let mut multi = good();
        multi["aud"] = json!(["bff", "api"]);
        multi["azp"] = json!("bff");
        assert!(check(&token(multi), &expect()).is_ok());
    }

    #[test]
    fn the_signature_comes_first() {
        let t = token(good());
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        let forged = format!("{head}.{}", String::from_utf8(sig).unwrap());
        assert_eq!(
            check(&forged, &expect()),
            Err(IdTokenError::Signature(JwsError::BadSignature))
        );
        let other_kid =
            test_signer::sign_with_header(&json!({"alg": "RS256", "kid": "rotated"}), &good());
        let err = check(&other_kid, &expect()).unwrap_err();
        assert!(err.is_unknown_key(), "{err:?}");
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good().to_string())
        );
        assert_eq!(
            check(&none, &expect()),
            Err(IdTokenError::Signature(JwsError::UnsignedOrSymmetric))
        );
        assert!(matches!(
            validate(&t, &test_signer::jwks(), &[Alg::Es256], &expect()),
            Err(IdTokenError::Signature(JwsError::AlgorithmNotAllowed(_)))
        ));
    }

    #[test]
    fn a_table_of_bad_claims() {
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good();
            c[k] = v;
            token(c)
        };
        let without = |k: &str| {
            let mut c = good();
            c.as_object_mut().unwrap().remove(k);
            token(c)
        };
        let cases: Vec<(String, IdTokenError)> = vec![
            ("x".into(), IdTokenError::Signature(JwsError::Malformed)),
            (
                "a.b.c.d".into(),
                IdTokenError::Signature(JwsError::Malformed),
            ),
            (
                with("iss", json!("https://evil")),
                IdTokenError::WrongIssuer,
            ),
            (without("iss"), IdTokenError::WrongIssuer),
            (with("aud", json!("other")), IdTokenError::WrongAudience),
            (
                with("aud", json!(["other", "x"])),
                IdTokenError::WrongAudience,
            ),
            (
                with("aud", json!(["bff", "api"])),
                IdTokenError::WrongAuthorizedParty,
            ),
            (
                with("azp", json!("other")),
                IdTokenError::WrongAuthorizedParty,
            ),
            (with("exp", json!(940)), IdTokenError::Expired),
            (without("exp"), IdTokenError::Malformed),
            (with("exp", json!("soon")), IdTokenError::Malformed),
            (with("iat", json!(1061)), IdTokenError::IssuedInFuture),
            (with("nonce", json!("n-2")), IdTokenError::NonceMismatch),
            (without("nonce"), IdTokenError::NonceMismatch),
            (without("sub"), IdTokenError::NoSubject),
        ];
        for (t, want) in cases {
            assert_eq!(check(&t, &expect()), Err(want), "{t}");
        }
    }

    #[test]
    fn refreshed_tokens_need_no_nonce_but_the_same_user() {
        let refreshed = Expectations {
            nonce: None,
            subject: Some("alice"),
            ..expect()
        };
        let mut c = good();
        c.as_object_mut().unwrap().remove("nonce");
        assert!(check(&token(c.clone()), &refreshed).is_ok());
        c["sub"] = json!("mallory");
        assert_eq!(
            check(&token(c), &refreshed),
            Err(IdTokenError::SubjectChanged)
        );
    }

    #[test]
    fn clock_skew_edges() {
        let mut c = good();
        c["exp"] = json!(941); // now 1000, leeway 60: 1000 < 1001 still valid
        assert!(check(&token(c.clone()), &expect()).is_ok());
        c["exp"] = json!(940);
        assert_eq!(check(&token(c), &expect()), Err(IdTokenError::Expired));
        let mut c = good();
        c["iat"] = json!(1060);
        assert!(check(&token(c), &expect()).is_ok());
    }
}
