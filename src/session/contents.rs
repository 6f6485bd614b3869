//! What the session cookie holds, and the rules of its life. Every API call opens it, so it
//! keeps only what the filter needs, and what few requests need ([`ColdFields`]) in a second
//! part that opens only when asked (sealed in the form of `wire`).

use super::chunks;
use super::cookie::{self, Jar};
use super::kept_id_token::KeptIdToken;
use super::seal::{KeyRing, Opened, SealError};
use super::wire;
use crate::config::{CookieSettings, SessionLifetime};
use crate::random::Random;
use crate::secret::Secret;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;
use std::rc::Rc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub access_token: Secret,
    /// Unix seconds when the access token expires.
    pub access_expires_at: u64,
    /// The ID token's `sub`.
    pub subject: String,
    /// Unix seconds when the user logged in: the absolute lifetime counts from here.
    pub created: u64,
    /// Unix seconds of the last time the cookie was written: the inactivity timeout counts
    /// from here, so it is exact to within the sliding step (see [`Session::check`]).
    pub last_seen: u64,
    /// A random id for this session, handed to the SPA for logout links (`?sid=`): a
    /// cross-site page cannot know it, so it cannot log the user out.
    pub sid: String,
    /// The IdP's session id (the ID token's `sid`, OIDC Back-Channel Logout 1.0 §2.1), when it
    /// sends one: a back-channel logout naming it ends this session.
    pub idp_sid: Option<String>,
    /// The refresh token and the ID token: the cookie's second part, opened when needed.
    pub cold: Cold,
}

/// What a request rarely needs: sealed in the cookie's second part (`wire`), so that opening
/// a session does not pay for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColdFields {
    pub refresh_token: Option<Secret>,
    /// The ID token, verified before it was sealed here: the user's claims (session
    /// endpoint, rules, claim headers) and `id_token_hint` at logout. Kept whole (as its
    /// parts' bytes: `kept_id_token`) rather than as claims plus token, which would double
    /// the cookie.
    pub id_token: Option<KeptIdToken>,
}

impl ColdFields {
    /// The user's claims, from the sealed ID token (protocol claims left out).
    pub fn claims(&self) -> serde_json::Map<String, serde_json::Value> {
        self.id_token
            .as_ref()
            .and_then(KeptIdToken::payload)
            .and_then(|json| serde_json::from_slice(&json).ok())
            .map(|all| user_claims(&all))
            .unwrap_or_default()
    }
}

/// A session's [`ColdFields`], open or still sealed.
#[derive(Clone, PartialEq, Eq)]
pub enum Cold {
    Open(ColdFields),
    /// In the second part of `cookie` (the whole sealed value, shared with the cache's key),
    /// opened at most once.
    Sealed {
        cookie: Rc<[u8]>,
        has_refresh_token: bool,
        opened: OnceCell<ColdFields>,
    },
}

impl Cold {
    pub fn sealed(cookie: Rc<[u8]>, has_refresh_token: bool) -> Cold {
        Cold::Sealed {
            cookie,
            has_refresh_token,
            opened: OnceCell::new(),
        }
    }
}

impl fmt::Debug for Cold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cold::Open(fields) => f.debug_tuple("Open").field(fields).finish(),
            Cold::Sealed { opened, .. } => f.debug_tuple("Sealed").field(&opened.get()).finish(),
        }
    }
}

/// Why a request has no usable session. The caller treats all of them alike (log in again);
/// the distinction is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    Absent,
    Unreadable,
    /// The access token expired and there is no refresh token.
    Expired,
    /// Past the absolute maximum lifetime.
    TooOld,
    /// No request within the inactivity timeout.
    Idle,
    /// Ended by a logout (this copy of the cookie outlived it) or the IdP's back-channel logout.
    LoggedOut,
}

/// What a readable session needs before the request goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upkeep {
    /// Nothing: forward as it is.
    None,
    /// Re-write the cookie to slide the inactivity window (or to re-seal with a new key).
    Rewrite,
    /// The access token expires within the leeway: refresh it first.
    Refresh,
}

/// Claims that are protocol plumbing, not facts about the user.
const PROTOCOL_CLAIMS: [&str; 11] = [
    "iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "s_hash", "azp", "jti",
];

/// The claims worth keeping from an ID token.
pub fn user_claims(
    all: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    all.iter()
        .filter(|(k, _)| !PROTOCOL_CLAIMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Session {
    /// When the session ends at the latest, if no request slides it.
    pub fn ends_at(&self, lifetime: &SessionLifetime) -> u64 {
        self.created
            .saturating_add(lifetime.max_lifetime)
            .min(self.last_seen.saturating_add(lifetime.inactivity_timeout))
    }

    /// Reads the session from the request's cookies (joining chunks).
    pub fn open(keys: &KeyRing, name: &str, jar: &Jar) -> Result<Session, NoSession> {
        Self::open_sealed(keys, name, &Self::sealed_in(name, jar)?)
    }

    /// The sealed session the request's cookies carry, joined from its chunks.
    pub fn sealed_in<'a>(name: &str, jar: &Jar<'a>) -> Result<Cow<'a, [u8]>, NoSession> {
        chunks::join(name, jar)
            .filter(|v| !v.is_empty())
            .ok_or(NoSession::Absent)
    }

    /// Opens a sealed value (already joined from its chunks), both parts.
    pub fn open_sealed(keys: &KeyRing, name: &str, sealed: &[u8]) -> Result<Session, NoSession> {
        match keys.open_pair(name, sealed) {
            Ok(pair) => wire::decode_pair(pair.first(), pair.second()),
            // Sealed whole, before pairs (or not sealed by us at all).
            Err(_) => keys.open(name, sealed).ok().and_then(|p| wire::decode(&p)),
        }
        .ok_or(NoSession::Unreadable)
    }

    /// Opens what every request needs of a sealed value: the second part of a pair stays
    /// sealed (in `sealed`) until [`Session::cold`] is asked for it. `buf` is room to decode
    /// into (see [`KeyRing::open_first`]).
    pub fn open_first(
        keys: &KeyRing,
        name: &str,
        sealed: Rc<[u8]>,
        buf: &mut Vec<u8>,
    ) -> Result<Session, NoSession> {
        match keys.open_first(name, &sealed, buf) {
            Ok(Opened::Whole(plain)) => wire::decode(&plain),
            Ok(Opened::First(plain)) => wire::decode_hot(plain, sealed),
            Err(_) => None,
        }
        .ok_or(NoSession::Unreadable)
    }

    /// The refresh token and the ID token, decrypted from the cookie's second part at the
    /// first call. Unreadable if the cookie does not open with `keys` (the opening of its
    /// first part checked the tag over both, so only another key ring can fail here).
    pub fn cold(&self, keys: &KeyRing, name: &str) -> Result<&ColdFields, NoSession> {
        match &self.cold {
            Cold::Open(fields) => Ok(fields),
            Cold::Sealed { cookie, opened, .. } => {
                if let Some(fields) = opened.get() {
                    return Ok(fields);
                }
                let fields = keys
                    .open_pair(name, cookie)
                    .ok()
                    .and_then(|pair| wire::decode_cold(pair.second()))
                    .ok_or(NoSession::Unreadable)?;
                Ok(opened.get_or_init(|| fields))
            }
        }
    }

    /// Whether the session holds a refresh token (known without opening its second part).
    pub fn has_refresh_token(&self) -> bool {
        match &self.cold {
            Cold::Open(fields) => fields.refresh_token.is_some(),
            Cold::Sealed {
                has_refresh_token, ..
            } => *has_refresh_token,
        }
    }

    /// The opened cold fields of a test's session.
    #[cfg(test)]
    pub fn opened(&self) -> &ColdFields {
        match &self.cold {
            Cold::Open(fields) => fields,
            Cold::Sealed { opened, .. } => opened.get().expect("a second part not opened"),
        }
    }

    /// The open cold fields of a session made in a test.
    #[cfg(test)]
    pub fn cold_mut(&mut self) -> &mut ColdFields {
        match &mut self.cold {
            Cold::Open(fields) => fields,
            Cold::Sealed { .. } => panic!("a test session with its second part sealed"),
        }
    }

    /// Whether the session is still alive at `now`, and what it needs.
    ///
    /// The inactivity window slides only when a quarter of it has passed since the cookie
    /// was last written (at least a minute, at most half the window), so a busy SPA does not
    /// get a new cookie on every call; an idle session therefore ends between 3/4 (1/2 for
    /// windows under four minutes) and all of the timeout after its last request.
    pub fn check(&self, now: u64, lifetime: &SessionLifetime) -> Result<Upkeep, NoSession> {
        if now >= self.created.saturating_add(lifetime.max_lifetime) {
            return Err(NoSession::TooOld);
        }
        if now >= self.last_seen.saturating_add(lifetime.inactivity_timeout) {
            return Err(NoSession::Idle);
        }
        if now.saturating_add(lifetime.refresh_leeway) >= self.access_expires_at {
            if self.has_refresh_token() {
                return Ok(Upkeep::Refresh);
            }
            // Without a refresh token the access token is used up, then the session ends.
            if now >= self.access_expires_at {
                return Err(NoSession::Expired);
            }
        }
        // At most half the window: with the minimum one (60 s), a step of a minute would never
        // slide it before it ran out, and an active session would end as an idle one.
        let step = (lifetime.inactivity_timeout / 4)
            .max(60)
            .min(lifetime.inactivity_timeout / 2);
        if now >= self.last_seen.saturating_add(step) {
            return Ok(Upkeep::Rewrite);
        }
        Ok(Upkeep::None)
    }

    /// The session sealed as a pair (its second part opened first if it is still sealed).
    pub fn seal(
        &self,
        keys: &KeyRing,
        name: &str,
        rng: &mut dyn Random,
    ) -> Result<String, SealError> {
        let cold = self.cold(keys, name).map_err(|_| SealError::Unopened)?;
        let (hot, cold) = wire::encode_pair(self, cold).ok_or(SealError::Cipher)?;
        keys.seal_pair(name, &hot, &cold, rng)
    }

    /// The `Set-Cookie` headers that store this session (in chunks when large) and delete
    /// chunks a bigger earlier session left in the request's cookies.
    pub fn write(
        &self,
        keys: &KeyRing,
        settings: &CookieSettings,
        jar: &Jar,
        rng: &mut dyn Random,
    ) -> Result<Vec<String>, SealError> {
        let sealed = self.seal(keys, &settings.name, rng)?;
        let pairs = chunks::split(&settings.name, &sealed);
        let stale = chunks::stale(&settings.name, jar, pairs.len());
        let mut out: Vec<String> = pairs
            .iter()
            .map(|(n, v)| cookie::set_cookie(settings, n, v, None))
            .collect();
        out.extend(stale.iter().map(|n| cookie::delete_cookie(settings, n)));
        Ok(out)
    }

    /// The `Set-Cookie` headers that delete this session, chunks included.
    pub fn clear(settings: &CookieSettings, jar: &Jar) -> Vec<String> {
        let mut out = vec![cookie::delete_cookie(settings, &settings.name)];
        out.extend(
            chunks::stale(&settings.name, jar, 1)
                .iter()
                .map(|n| cookie::delete_cookie(settings, n)),
        );
        out
    }

    /// The `Set-Cookie` headers that delete every cookie of the filter the request carries:
    /// the session, its chunks and unfinished login transactions (logout).
    pub fn clear_all(settings: &CookieSettings, jar: &Jar) -> Vec<String> {
        let mut out = Self::clear(settings, jar);
        let tx_prefix = format!("{}.tx.", settings.name);
        out.extend(
            jar.cookies()
                .filter_map(|(n, _)| std::str::from_utf8(n).ok())
                .filter(|n| n.starts_with(&tx_prefix))
                .map(|n| cookie::delete_cookie(settings, n)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{KEY_A, KEY_B};
    use crate::config::SameSite;
    use crate::random::CountingRandom;
    use crate::session::cookie::tests::jar;
    use serde_json::json;

    const N: &str = "__Host-bff-session";

    fn session() -> Session {
        Session {
            access_token: Secret::new("at-123"),
            access_expires_at: 2000,
            subject: "alice".into(),
            created: 1000,
            last_seen: 1000,
            sid: "sid-1".into(),
            idp_sid: None,
            cold: Cold::Open(ColdFields {
                refresh_token: None,
                id_token: None,
            }),
        }
    }

    fn settings() -> CookieSettings {
        CookieSettings {
            name: N.into(),
            same_site: SameSite::Lax,
            secure: true,
            transaction_max_age: 600,
        }
    }

    fn lifetime() -> SessionLifetime {
        SessionLifetime {
            max_lifetime: 8 * 3600,
            inactivity_timeout: 3600,
            refresh_leeway: 60,
        }
    }

    fn header_of(set_cookies: &[String]) -> String {
        set_cookies
            .iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .map(|c| c.split(';').next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[test]
    fn round_trip_via_cookie_header() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let cookies = session()
            .write(&k, &settings(), &Jar::default(), &mut CountingRandom(0))
            .unwrap();
        assert_eq!(cookies.len(), 1);
        let header = format!("a=b; {}", header_of(&cookies));
        assert_eq!(Session::open(&k, N, &jar(&header)).unwrap(), session());
        assert!(!header.contains("at-123"));
    }

    #[test]
    fn a_big_session_is_chunked_and_joined() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let mut s = session();
        let groups: Vec<String> = (0..400).map(|i| format!("team-{i}-readers")).collect();
        s.cold_mut().id_token = Some(KeptIdToken::new(&crate::oidc::id_token::test_signer::sign(
            &json!({"sub": "alice", "groups": groups}),
        )));
        let cookies = s
            .write(&k, &settings(), &Jar::default(), &mut CountingRandom(0))
            .unwrap();
        assert!(cookies.len() >= 3, "{}", cookies.len());
        assert!(cookies.iter().all(|c| c.len() < 4096));
        let header = header_of(&cookies);
        assert_eq!(Session::open(&k, N, &jar(&header)).unwrap(), s);
        // Writing a small session over it deletes the stale chunks.
        let small = session()
            .write(&k, &settings(), &jar(&header), &mut CountingRandom(0))
            .unwrap();
        assert_eq!(small.len(), cookies.len());
        assert!(small[1..].iter().all(|c| c.contains("Max-Age=0")));
        let cleared = Session::clear(&settings(), &jar(&header));
        assert_eq!(cleared.len(), cookies.len());
        let with_tx = format!("{header}; {N}.tx.abc=1; other=2");
        let all = Session::clear_all(&settings(), &jar(&with_tx));
        assert_eq!(all.len(), cookies.len() + 1);
        assert!(all.last().unwrap().starts_with(&format!("{N}.tx.abc=;")));
    }

    #[test]
    fn anything_wrong_means_no_session() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let sealed = session().seal(&k, N, &mut CountingRandom(0)).unwrap();
        let ok = format!("{N}={sealed}");
        assert_eq!(
            Session::open(&k, N, &Jar::default()),
            Err(NoSession::Absent)
        );
        assert_eq!(Session::open(&k, N, &jar("x=y")), Err(NoSession::Absent));
        assert_eq!(
            Session::open(&k, N, &jar(&format!("{N}="))),
            Err(NoSession::Absent)
        );
        let other = KeyRing::from_base64_list(KEY_B).unwrap();
        assert_eq!(
            Session::open(&other, N, &jar(&ok)),
            Err(NoSession::Unreadable)
        );
        let not_session = k.seal(N, b"{\"s\":\"x\"}", &mut CountingRandom(0)).unwrap();
        assert_eq!(
            Session::open(&k, N, &jar(&format!("{N}={not_session}"))),
            Err(NoSession::Unreadable)
        );
    }

    /// `s` with a refresh token and an ID token, as a login leaves it.
    fn with_tokens(mut s: Session) -> Session {
        s.cold_mut().refresh_token = Some(Secret::new("rt-secret"));
        s.cold_mut().id_token = Some(KeptIdToken::new(&crate::oidc::id_token::test_signer::sign(
            &json!({"sub": "alice", "name": "Alice"}),
        )));
        s
    }

    #[test]
    fn the_first_part_opens_without_the_second() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let s = with_tokens(session());
        let sealed: Rc<[u8]> = Rc::from(s.seal(&k, N, &mut CountingRandom(0)).unwrap().as_bytes());
        let first = Session::open_first(&k, N, Rc::clone(&sealed), &mut Vec::new()).unwrap();
        let Cold::Sealed { opened, .. } = &first.cold else {
            panic!("a pair's second part stays sealed")
        };
        assert!(opened.get().is_none());
        assert!(first.has_refresh_token());
        assert_eq!(first.check(1001, &lifetime()), Ok(Upkeep::None));
        assert_eq!(
            Session {
                cold: s.cold.clone(),
                ..first.clone()
            },
            s
        );
        // Asked for, the second part opens once and stays open.
        assert_eq!(first.cold(&k, N), Ok(s.opened()));
        assert_eq!(opened.get(), Some(s.opened()));
        assert_eq!(Session::open_sealed(&k, N, &sealed), Ok(s.clone()));
        // The first part holds no token but the access token.
        let mut buf = Vec::new();
        let Ok(Opened::First(plain)) = k.open_first(N, &sealed, &mut buf) else {
            panic!("a pair")
        };
        assert!(!plain.windows(9).any(|w| w == b"rt-secret"));
        assert!(plain.windows(6).any(|w| w == b"at-123"));
    }

    #[test]
    fn a_second_part_that_does_not_open_is_no_session_where_it_is_needed() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let other = KeyRing::from_base64_list(KEY_B).unwrap();
        let s = with_tokens(session());
        let sealed = s.seal(&k, N, &mut CountingRandom(0)).unwrap();
        let first =
            Session::open_first(&k, N, Rc::from(sealed.as_bytes()), &mut Vec::new()).unwrap();
        // Asked with another ring (nothing else can make a first part open and its pair not).
        assert_eq!(first.cold(&other, N), Err(NoSession::Unreadable));
        assert_eq!(
            first.seal(&other, N, &mut CountingRandom(1)),
            Err(SealError::Unopened)
        );
        assert!(first.has_refresh_token(), "known from the first part");
    }

    #[test]
    fn a_session_sealed_whole_before_still_opens_and_is_written_as_a_pair() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let s = with_tokens(session());
        let plain = wire::encode(&s, s.opened()).unwrap();
        let whole = k.seal(N, &plain, &mut CountingRandom(0)).unwrap();
        assert!(whole.starts_with("v1."));
        let first =
            Session::open_first(&k, N, Rc::from(whole.as_bytes()), &mut Vec::new()).unwrap();
        assert_eq!(first, s, "opened whole at once");
        let header = header_of(
            &first
                .write(&k, &settings(), &Jar::default(), &mut CountingRandom(1))
                .unwrap(),
        );
        assert!(header.starts_with(&format!("{N}=v2.")));
        assert_eq!(Session::open(&k, N, &jar(&header)), Ok(s));
    }

    #[test]
    fn a_rewrite_seals_both_parts_anew() {
        let k = KeyRing::from_base64_list(KEY_A).unwrap();
        let s = with_tokens(session());
        let sealed = s.seal(&k, N, &mut CountingRandom(0)).unwrap();
        let mut first =
            Session::open_first(&k, N, Rc::from(sealed.as_bytes()), &mut Vec::new()).unwrap();
        first.last_seen = 1500;
        let again = first.seal(&k, N, &mut CountingRandom(1)).unwrap();
        assert_ne!(
            again.rsplit_once('.').unwrap().1,
            sealed.rsplit_once('.').unwrap().1
        );
        let reopened = Session::open_sealed(&k, N, again.as_bytes()).unwrap();
        assert_eq!(reopened.last_seen, 1500);
        assert_eq!(reopened.opened(), s.opened());
    }

    #[test]
    fn lifetime_rules() {
        let l = lifetime();
        let mut s = session(); // created 1000, last seen 1000, token until 2000, no refresh token
        assert_eq!(s.check(1001, &l), Ok(Upkeep::None));
        assert_eq!(s.check(1000 + 899, &l), Ok(Upkeep::None));
        assert_eq!(
            s.check(1850, &l),
            Ok(Upkeep::None),
            "due, no refresh token: use it up"
        );
        assert_eq!(
            s.check(1950, &l),
            Ok(Upkeep::Rewrite),
            "…and still slide the window"
        );
        assert_eq!(s.check(2000, &l), Err(NoSession::Expired));
        s.access_expires_at = 100_000;
        assert_eq!(
            s.check(1000 + 900, &l),
            Ok(Upkeep::Rewrite),
            "a quarter of the window"
        );
        assert_eq!(s.check(1000 + 3600, &l), Err(NoSession::Idle));
        s.last_seen = 1000 + 8 * 3600 - 10;
        assert_eq!(s.check(1000 + 8 * 3600, &l), Err(NoSession::TooOld));
        s.last_seen = 1000;
        s.cold_mut().refresh_token = Some(Secret::new("rt"));
        s.access_expires_at = 1100;
        assert_eq!(s.check(1039, &l), Ok(Upkeep::None));
        assert_eq!(s.check(1040, &l), Ok(Upkeep::Refresh), "within the leeway");
        assert_eq!(
            s.check(1200, &l),
            Ok(Upkeep::Refresh),
            "expired but refreshable"
        );
    }

    #[test]
    fn the_shortest_inactivity_window_slides_before_it_runs_out() {
        let l = SessionLifetime {
            max_lifetime: 3600,
            inactivity_timeout: 60,
            refresh_leeway: 0,
        };
        let mut s = session(); // created and last seen at 1000
        s.access_expires_at = 100_000;
        assert_eq!(s.check(1029, &l), Ok(Upkeep::None));
        assert_eq!(s.check(1030, &l), Ok(Upkeep::Rewrite), "half the window");
        assert_eq!(s.check(1060, &l), Err(NoSession::Idle));
        // A two-minute window slides after a minute, as before.
        let l = SessionLifetime {
            inactivity_timeout: 120,
            ..l
        };
        assert_eq!(s.check(1059, &l), Ok(Upkeep::None));
        assert_eq!(s.check(1060, &l), Ok(Upkeep::Rewrite));
    }

    #[test]
    fn claims_come_from_the_sealed_id_token() {
        let mut s = session();
        assert!(s.opened().claims().is_empty());
        s.cold_mut().id_token = Some(KeptIdToken::new(&crate::oidc::id_token::test_signer::sign(
            &json!({"iss": "x", "nonce": "n", "sub": "alice", "email": "a@x"}),
        )));
        assert_eq!(
            serde_json::Value::Object(s.opened().claims()),
            json!({"sub": "alice", "email": "a@x"})
        );
        assert_eq!(s.ends_at(&lifetime()), 1000 + 3600);
    }

    #[test]
    fn protocol_claims_are_dropped() {
        let all = json!({"iss": "x", "aud": "y", "exp": 1, "nonce": "n", "sub": "a", "email": "a@x", "groups": ["g"]});
        let kept = user_claims(all.as_object().unwrap());
        assert_eq!(
            serde_json::Value::Object(kept),
            json!({"sub": "a", "email": "a@x", "groups": ["g"]})
        );
    }
}
