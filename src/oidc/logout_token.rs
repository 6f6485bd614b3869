//! OpenID Connect Back-Channel Logout 1.0: the logout token the IdP posts when a user's session
//! there ends, validated as §2.6 says. What to end (a session id or a user) is returned; the
//! caller records it.

use super::id_token::{as_secs, Audience};
use super::jwks::{Alg, Jwks};
use super::jws::{self, JwsError};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// The event a logout token must carry (§2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token older than this is refused; a `jti` is remembered at least this long, so a
/// replay is caught for as long as the token would otherwise be accepted.
pub const MAX_AGE_S: u64 = 600;

/// What a valid logout token ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutOrder {
    /// The IdP's session id (`sid`): the sessions that came from that IdP session.
    pub sid: Option<String>,
    /// The user (`sub`): every session of theirs issued before `issued_at`.
    pub sub: Option<String>,
    /// The token's `jti`, to refuse it a second time.
    pub jti: String,
    /// `iat`: sessions of `sub` created after this are not ended.
    pub issued_at: u64,
    /// Until when the `jti` must be remembered.
    pub remember_until: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutTokenError {
    Signature(JwsError),
    Malformed,
    WrongIssuer,
    WrongAudience,
    Expired,
    /// `iat` is missing, in the future, or older than [`MAX_AGE_S`].
    BadIssuedAt,
    NoJti,
    /// Neither `sid` nor `sub` (§2.4).
    NoSubjectOrSession,
    /// No `events` object with the back-channel logout member (§2.6 point 5).
    NoLogoutEvent,
    /// A `nonce` is there: it is an ID token or something else, not a logout token (§2.6 point 6).
    HasNonce,
    /// This `jti` was seen before.
    Replayed,
}

impl fmt::Display for LogoutTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let LogoutTokenError::Signature(e) = self {
            return write!(f, "logout token signature: {e}");
        }
        f.write_str(match self {
            LogoutTokenError::Signature(_) | LogoutTokenError::Malformed => {
                "the logout token is not a well-formed JWT"
            }
            LogoutTokenError::WrongIssuer => "the logout token's iss is not the configured issuer",
            LogoutTokenError::WrongAudience => {
                "the logout token is not meant for this client (aud)"
            }
            LogoutTokenError::Expired => "the logout token has expired",
            LogoutTokenError::BadIssuedAt => {
                "the logout token's iat is missing, in the future or too old"
            }
            LogoutTokenError::NoJti => "the logout token has no jti",
            LogoutTokenError::NoSubjectOrSession => "the logout token has neither sid nor sub",
            LogoutTokenError::NoLogoutEvent => "the logout token has no back-channel logout event",
            LogoutTokenError::HasNonce => "a logout token must not carry a nonce",
            LogoutTokenError::Replayed => "this logout token was already received (jti)",
        })
    }
}

impl LogoutTokenError {
    /// The token names a key the JWKS does not have: worth reading the JWKS again.
    pub fn is_unknown_key(&self) -> bool {
        matches!(self, LogoutTokenError::Signature(JwsError::UnknownKey))
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    iat: Option<f64>,
    jti: Option<String>,
    events: Option<Value>,
    nonce: Option<Value>,
}

/// What the token must be, beyond its signature.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub now: u64,
    pub leeway: u64,
}

/// Validates a logout token (§2.6 points 2–6; the `jti` replay check of point 7 is the
/// caller's, who knows what was seen). Signed by one of the IdP's keys with an algorithm it
/// announces, as an ID token is.
pub fn validate(
    token: &str,
    keys: &Jwks,
    allowed: &[Alg],
    expect: &Expected,
) -> Result<LogoutOrder, LogoutTokenError> {
    let verified = jws::verify(token, keys, allowed).map_err(LogoutTokenError::Signature)?;
    let claims: Claims =
        serde_json::from_slice(&verified.payload).map_err(|_| LogoutTokenError::Malformed)?;
    if claims.iss.as_deref() != Some(expect.issuer) {
        return Err(LogoutTokenError::WrongIssuer);
    }
    let audiences = Audience::list(claims.aud);
    if !audiences.iter().any(|a| a == expect.client_id) {
        return Err(LogoutTokenError::WrongAudience);
    }
    let iat = as_secs(claims.iat).ok_or(LogoutTokenError::BadIssuedAt)?;
    if iat > expect.now.saturating_add(expect.leeway) || expect.now > iat.saturating_add(MAX_AGE_S)
    {
        return Err(LogoutTokenError::BadIssuedAt);
    }
    // `exp` is required by the final specification, absent in its drafts: checked if there.
    if let Some(exp) = claims.exp {
        let exp = as_secs(Some(exp)).ok_or(LogoutTokenError::Malformed)?;
        if expect.now >= exp.saturating_add(expect.leeway) {
            return Err(LogoutTokenError::Expired);
        }
    }
    if claims.nonce.is_some() {
        return Err(LogoutTokenError::HasNonce);
    }
    let has_event = claims
        .events
        .as_ref()
        .and_then(Value::as_object)
        .and_then(|events| events.get(EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err(LogoutTokenError::NoLogoutEvent);
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty())
        .ok_or(LogoutTokenError::NoJti)?;
    let sid = claims.sid.filter(|s| !s.is_empty());
    let sub = claims.sub.filter(|s| !s.is_empty());
    if sid.is_none() && sub.is_none() {
        return Err(LogoutTokenError::NoSubjectOrSession);
    }
    Ok(LogoutOrder {
        sid,
        sub,
        jti,
        issued_at: iat,
        remember_until: iat.saturating_add(MAX_AGE_S + expect.leeway),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::id_token::test_signer;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn expect() -> Expected<'static> {
        Expected {
            issuer: "https://idp.test",
            client_id: "bff",
            now: NOW,
            leeway: 60,
        }
    }

    fn good() -> Value {
        json!({"iss": "https://idp.test", "aud": "bff", "iat": NOW - 5, "exp": NOW + 120,
               "jti": "j-1", "sid": "idp-sid-1", "sub": "alice",
               "events": {EVENT: {}}})
    }

    fn check(claims: &Value) -> Result<LogoutOrder, LogoutTokenError> {
        validate(
            &test_signer::sign(claims),
            &test_signer::jwks(),
            &[Alg::Rs256],
            &expect(),
        )
    }

    #[test]
    fn a_valid_token_says_what_to_end() {
        let order = check(&good()).unwrap();
        assert_eq!(order.sid.as_deref(), Some("idp-sid-1"));
        assert_eq!(order.sub.as_deref(), Some("alice"));
        assert_eq!((order.jti.as_str(), order.issued_at), ("j-1", NOW - 5));
        assert!(order.remember_until >= NOW + MAX_AGE_S - 5);
        // Either of sid and sub is enough; aud may be a list; no exp (a draft-era IdP).
        let mut only_sub = good();
        let o = only_sub.as_object_mut().unwrap();
        o.remove("sid");
        o.remove("exp");
        o.insert("aud".into(), json!(["other", "bff"]));
        assert_eq!(check(&only_sub).unwrap().sid, None);
    }

    type Change = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;

    #[test]
    fn every_rule_of_section_2_6_refuses() {
        let cases: Vec<(Change, LogoutTokenError)> = vec![
            (
                Box::new(|c| {
                    c.insert("iss".into(), json!("https://evil"));
                }),
                LogoutTokenError::WrongIssuer,
            ),
            (
                Box::new(|c| {
                    c.insert("aud".into(), json!("other"));
                }),
                LogoutTokenError::WrongAudience,
            ),
            (
                Box::new(|c| {
                    c.remove("iat");
                }),
                LogoutTokenError::BadIssuedAt,
            ),
            (
                Box::new(|c| {
                    c.insert("iat".into(), json!(NOW + 600));
                }),
                LogoutTokenError::BadIssuedAt,
            ),
            (
                Box::new(|c| {
                    c.insert("iat".into(), json!(NOW - MAX_AGE_S - 1));
                }),
                LogoutTokenError::BadIssuedAt,
            ),
            (
                Box::new(|c| {
                    c.insert("exp".into(), json!(NOW - 61));
                }),
                LogoutTokenError::Expired,
            ),
            (
                Box::new(|c| {
                    c.insert("nonce".into(), json!("n"));
                }),
                LogoutTokenError::HasNonce,
            ),
            (
                Box::new(|c| {
                    c.remove("events");
                }),
                LogoutTokenError::NoLogoutEvent,
            ),
            (
                Box::new(|c| {
                    c.insert("events".into(), json!([EVENT]));
                }),
                LogoutTokenError::NoLogoutEvent,
            ),
            (
                Box::new(|c| {
                    c.insert("events".into(), json!({EVENT: "yes"}));
                }),
                LogoutTokenError::NoLogoutEvent,
            ),
            (
                Box::new(|c| {
                    c.remove("jti");
                }),
                LogoutTokenError::NoJti,
            ),
            (
                Box::new(|c| {
                    c.remove("sid");
                    c.remove("sub");
                }),
                LogoutTokenError::NoSubjectOrSession,
            ),
        ];
        for (i, (change, want)) in cases.iter().enumerate() {
            let mut claims = good();
            change(claims.as_object_mut().unwrap());
            assert_eq!(check(&claims), Err(want.clone()), "case {i}");
        }
    }

    #[test]
    fn unsigned_and_foreign_tokens_are_refused() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let payload = URL_SAFE_NO_PAD.encode(good().to_string());
        let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        let err = validate(&none, &test_signer::jwks(), &[Alg::Rs256], &expect()).unwrap_err();
        assert!(matches!(err, LogoutTokenError::Signature(_)), "{err:?}");
        // The signature of a good token over other claims.
        let signed = test_signer::sign(&good());
        let mut parts: Vec<&str> = signed.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(json!({"sub": "bob"}).to_string());
        parts[1] = &forged;
        let err = validate(
            &parts.join("."),
            &test_signer::jwks(),
            &[Alg::Rs256],
            &expect(),
        );
        assert_eq!(
            err,
            Err(LogoutTokenError::Signature(JwsError::BadSignature))
        );
    }
}
