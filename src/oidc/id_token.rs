//! ID token claim checks (OIDC Core §3.1.3.7). The signature is checked against the IdP's
//! JWKS in a later step; here the token has just arrived over the back channel from the
//! token endpoint we called (OIDC Core §3.1.3.7 point 6 allows TLS to stand in for it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use std::fmt;

/// What the ID token must say to be accepted.
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenError {
    Malformed,
    UnsignedAlgorithm,
    WrongIssuer,
    WrongAudience,
    WrongAuthorizedParty,
    Expired,
    IssuedInFuture,
    NonceMismatch,
    NoSubject,
}

impl fmt::Display for IdTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdTokenError::Malformed => "the ID token is not a well-formed JWT",
            IdTokenError::UnsignedAlgorithm => "the ID token is unsigned (alg none)",
            IdTokenError::WrongIssuer => "the ID token's iss is not the configured issuer",
            IdTokenError::WrongAudience => "the ID token is not meant for this client (aud)",
            IdTokenError::WrongAuthorizedParty => "the ID token's azp is not this client",
            IdTokenError::Expired => "the ID token has expired",
            IdTokenError::IssuedInFuture => "the ID token was issued in the future (check clocks)",
            IdTokenError::NonceMismatch => "the ID token's nonce does not match this login",
            IdTokenError::NoSubject => "the ID token has no sub",
        })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
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

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, IdTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| IdTokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| IdTokenError::Malformed)
}

fn as_secs(v: Option<f64>) -> Option<u64> {
    v.filter(|n| n.is_finite() && *n >= 0.0).map(|n| n as u64)
}

/// Checks the claims of a compact-serialized ID token.
pub fn validate(token: &str, expect: &Expectations) -> Result<IdTokenClaims, IdTokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenError::Malformed);
    };
    let header: Header = decode_part(header)?;
    match header.alg.as_deref() {
        None => return Err(IdTokenError::Malformed),
        Some(alg) if alg.eq_ignore_ascii_case("none") => {
            return Err(IdTokenError::UnsignedAlgorithm)
        }
        Some(_) => {}
    }
    let all: serde_json::Map<String, serde_json::Value> = decode_part(payload)?;
    let claims: Claims = serde_json::from_value(serde_json::Value::Object(all.clone()))
        .map_err(|_| IdTokenError::Malformed)?;

    if claims.iss.as_deref() != Some(expect.issuer) {
        return Err(IdTokenError::WrongIssuer);
    }
    let audiences = match claims.aud {
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(list)) => list,
        None => vec![],
    };
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
    if claims.nonce.as_deref() != Some(expect.nonce) {
        return Err(IdTokenError::NonceMismatch);
    }
    let subject = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or(IdTokenError::NoSubject)?;
    Ok(IdTokenClaims {
        subject,
        expires_at: exp,
        all,
    })
}

/// Builds an unsigned-looking JWT from JSON parts, for tests across the crate.
#[cfg(test)]
pub fn jwt_for_test(header: serde_json::Value, claims: serde_json::Value) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expect() -> Expectations<'static> {
        Expectations {
            issuer: "https://idp",
            client_id: "bff",
            nonce: "n-1",
            now: 1000,
            leeway: 60,
        }
    }

    fn good() -> serde_json::Value {
        json!({"iss": "https://idp", "sub": "alice", "aud": "bff", "exp": 1300, "iat": 990, "nonce": "n-1", "email": "a@x"})
    }

    fn token(claims: serde_json::Value) -> String {
        jwt_for_test(json!({"alg": "RS256", "kid": "k"}), claims)
    }

    #[test]
    fn accepts_a_good_token() {
        let c = validate(&token(good()), &expect()).unwrap();
        assert_eq!(c.subject, "alice");
        assert_eq!(c.expires_at, 1300);
        assert_eq!(c.all.get("email"), Some(&json!("a@x")));
        let mut multi = good();
        multi["aud"] = json!(["bff", "api"]);
        multi["azp"] = json!("bff");
        assert!(validate(&token(multi), &expect()).is_ok());
    }

    #[test]
    fn a_table_of_bad_tokens() {
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
            ("x".into(), IdTokenError::Malformed),
            ("a.b".into(), IdTokenError::Malformed),
            ("a.b.c.d".into(), IdTokenError::Malformed),
            ("!!.!!.!!".into(), IdTokenError::Malformed),
            (
                jwt_for_test(json!({"alg": "none"}), good()),
                IdTokenError::UnsignedAlgorithm,
            ),
            (
                jwt_for_test(json!({"typ": "JWT"}), good()),
                IdTokenError::Malformed,
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
            assert_eq!(validate(&t, &expect()), Err(want), "{t}");
        }
    }

    #[test]
    fn clock_skew_edges() {
        let mut c = good();
        c["exp"] = json!(941); // now 1000, leeway 60: 1000 < 1001 still valid
        assert!(validate(&token(c.clone()), &expect()).is_ok());
        c["exp"] = json!(940);
        assert_eq!(validate(&token(c), &expect()), Err(IdTokenError::Expired));
        let mut c = good();
        c["iat"] = json!(1060);
        assert!(validate(&token(c), &expect()).is_ok());
    }
}
