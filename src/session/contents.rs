//! What the session cookie holds. Every API call opens it, so it keeps only what the filter
//! needs, under one-letter names.

use super::cookie;
use super::seal::{KeyRing, SealError};
use crate::random::Random;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "a")]
    pub access_token: Secret,
    /// Unix seconds when the access token expires.
    #[serde(rename = "x")]
    pub access_expires_at: u64,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
    /// The ID token's `sub`.
    #[serde(rename = "s")]
    pub subject: String,
    /// Unix seconds when the user logged in.
    #[serde(rename = "c")]
    pub created: u64,
}

/// Why a request has no usable session. The caller treats all of them alike (log in again);
/// the distinction is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    Absent,
    Unreadable,
    Expired,
}

impl Session {
    pub fn seal(
        &self,
        keys: &KeyRing,
        name: &str,
        rng: &mut dyn Random,
    ) -> Result<String, SealError> {
        let json = serde_json::to_vec(self).map_err(|_| SealError::Cipher)?;
        keys.seal(name, &json, rng)
    }

    /// The session in the request's cookies, if it opens and its access token is still valid.
    pub fn from_cookies(
        keys: &KeyRing,
        name: &str,
        cookie_header: Option<&str>,
        now: u64,
    ) -> Result<Session, NoSession> {
        let sealed = cookie_header
            .and_then(|h| cookie::find(h, name))
            .filter(|v| !v.is_empty())
            .ok_or(NoSession::Absent)?;
        let json = keys.open(name, sealed).map_err(|_| NoSession::Unreadable)?;
        let session: Session = serde_json::from_slice(&json).map_err(|_| NoSession::Unreadable)?;
        if now >= session.access_expires_at {
            return Err(NoSession::Expired);
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{KEY_A, KEY_B};
    use crate::random::CountingRandom;

    const N: &str = "__Host-bff-session";

    fn session() -> Session {
        Session {
            access_token: Secret::new("at-123"),
            access_expires_at: 2000,
            refresh_token: None,
            subject: "alice".into(),
            created: 1000,
        }
    }

    #[test]
    fn round_trip_via_cookie_header() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let sealed = session().seal(&k, N, &mut CountingRandom(0)).unwrap();
        let header = format!("a=b; {N}={sealed}");
        assert_eq!(
            Session::from_cookies(&k, N, Some(&header), 1500).unwrap(),
            session()
        );
        assert!(!sealed.contains("at-123"));
    }

    #[test]
    fn anything_wrong_means_no_session() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let sealed = session().seal(&k, N, &mut CountingRandom(0)).unwrap();
        let ok = format!("{N}={sealed}");
        assert_eq!(
            Session::from_cookies(&k, N, None, 1500),
            Err(NoSession::Absent)
        );
        assert_eq!(
            Session::from_cookies(&k, N, Some("x=y"), 1500),
            Err(NoSession::Absent)
        );
        assert_eq!(
            Session::from_cookies(&k, N, Some(&format!("{N}=")), 1500),
            Err(NoSession::Absent)
        );
        assert_eq!(
            Session::from_cookies(&k, N, Some(&ok), 2000),
            Err(NoSession::Expired)
        );
        let other = KeyRing::from_base64_list(KEY_B).unwrap();
        assert_eq!(
            Session::from_cookies(&other, N, Some(&ok), 1500),
            Err(NoSession::Unreadable)
        );
        // Sealed correctly but not a session (e.g. a transaction's JSON).
        let not_session = k.seal(N, b"{\"s\":\"x\"}", &mut CountingRandom(0)).unwrap();
        assert_eq!(
            Session::from_cookies(&k, N, Some(&format!("{N}={not_session}")), 1500),
            Err(NoSession::Unreadable)
        );
    }
}
