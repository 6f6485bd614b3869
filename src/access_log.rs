//! What Envoy's access log (and a tracer) learns of a request from the filter: the decision it
//! ended with and, where someone is known, who: the session's `sub` and `sid`, or a bearer
//! token's `sub`. Never a token, a cookie or a secret. With `access_log` on, the shell writes
//! it into the request's filter state (README, "Access logs"); everything here is host-free.

use crate::session::Session;
use std::fmt::Write;

/// The filter-state key as the filter names it: Envoy stores it as `wasm.bff`, which is what
/// `%FILTER_STATE(wasm.bff:PLAIN)%` prints. One key, not one per field: each costs a host
/// call of about 3.4 K instructions on every request (README, "Access logs").
pub const KEY: &str = "bff";

/// The decisions that are not failures (a failure's decision is its `error` code, as in the
/// README's *Errors* table: `unauthenticated`, `csrf`, `forbidden`, ...).
pub mod decision {
    /// A session's request went upstream with its token.
    pub const AUTHENTICATED: &str = "authenticated";
    /// The same with the session's new token: the request waited for the refresh (or took the
    /// one another request had just made), and the renewed cookie goes back with it. A refresh
    /// that failed while the old token still works goes on as `authenticated`.
    pub const REFRESHED: &str = "refreshed";
    /// Went upstream without a user (`optional` and `session_or_client` prefixes).
    pub const ANONYMOUS: &str = "anonymous";
    /// Went upstream with the filter's own client token.
    pub const CLIENT_TOKEN: &str = "client_token";
    /// A bearer client's request went upstream (its token verified by `jwt_authn`).
    pub const BEARER: &str = "bearer";
    /// Sent to the IdP to log in (the login endpoint, or a page load without a session).
    pub const LOGIN_STARTED: &str = "login_started";
    /// A page load sent to log in again for a stronger or fresher login.
    pub const STEP_UP: &str = "step_up";
    /// The login callback set a session.
    pub const CALLBACK_OK: &str = "callback_ok";
    /// The session endpoint answered with the session.
    pub const SESSION: &str = "session";
    pub const LOGOUT: &str = "logout";
    /// The filter's public key (`jwks_path`).
    pub const JWKS: &str = "jwks";
    pub const BACKCHANNEL_LOGOUT: &str = "backchannel_logout";
    pub const BACKCHANNEL_REFUSED: &str = "backchannel_refused";
}

/// The longest `sub` or `sid` written (OIDC Core §2 bounds `sub` at 255 ASCII characters); a
/// longer one is cut and ends in `...`.
pub const MAX_VALUE: usize = 255;

/// What a settled request tells the access log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLog {
    /// One of [`decision`]'s words or a failure's `error` code; empty: nothing is written (a
    /// request the filter passed untouched).
    pub decision: &'static str,
    /// Boxed: every forward and reply carries an `AccessLog`, most without anyone.
    pub who: Option<Box<Who>>,
}

/// Someone the request was made as, in the form written to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub sub: String,
    /// The session's id (not the IdP's); none for a bearer client.
    pub sid: Option<String>,
}

impl Who {
    pub fn of_session(session: &Session) -> Who {
        Who {
            sub: log_safe(&session.subject),
            sid: (!session.sid.is_empty()).then(|| log_safe(&session.sid)),
        }
    }

    pub fn of_bearer(sub: &str) -> Who {
        Who {
            sub: log_safe(sub),
            sid: None,
        }
    }
}

impl AccessLog {
    pub fn new(decision: &'static str, who: Option<Who>) -> AccessLog {
        AccessLog {
            decision,
            who: who.map(Box::new),
        }
    }

    /// The value written under [`KEY`]: `<decision> <sub> <sid>`, `-` for one not known (no
    /// field holds a space: they are [`log_safe`]). `None` for an empty decision.
    pub fn value(&self) -> Option<String> {
        if self.decision.is_empty() {
            return None;
        }
        let who = self.who.as_deref();
        let known = |v: &str| !v.is_empty();
        let sub = who.map(|w| w.sub.as_str()).filter(|v| known(v));
        let sid = who.and_then(|w| w.sid.as_deref()).filter(|v| known(v));
        let fields = [self.decision, sub.unwrap_or("-"), sid.unwrap_or("-")];
        let mut out = String::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
        for field in fields {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(field);
        }
        Some(out)
    }
}

/// `value` as it may stand in a log line: visible ASCII kept as it is (but `%`, `"` and `\`),
/// every other byte (a space, a control character, UTF-8) percent-encoded; at most
/// [`MAX_VALUE`] bytes. A well-formed `sub` passes unchanged.
pub fn log_safe(value: &str) -> String {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b'"' | b'\\');
    if value == "-" {
        // What the log prints for "none".
        return "%2D".to_string();
    }
    if value.len() <= MAX_VALUE && value.bytes().all(plain) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len().min(MAX_VALUE));
    for b in value.bytes() {
        let width = if plain(b) { 1 } else { 3 };
        if out.len() + width > MAX_VALUE - 3 {
            out.push_str("...");
            break;
        }
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usual_sub_passes_unchanged() {
        for sub in [
            "alice",
            "248289761001",
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "a@b.example",
        ] {
            assert_eq!(log_safe(sub), sub);
        }
    }

    #[test]
    fn what_could_break_a_log_line_is_percent_encoded() {
        assert_eq!(log_safe("a b"), "a%20b");
        assert_eq!(log_safe("x\nforged line"), "x%0Aforged%20line");
        assert_eq!(log_safe("\u{1b}[31m"), "%1B[31m");
        assert_eq!(log_safe("q\"uote\\"), "q%22uote%5C");
        assert_eq!(log_safe("100%"), "100%25");
        assert_eq!(log_safe("é"), "%C3%A9");
        assert_eq!(log_safe("tab\there\r"), "tab%09here%0D");
    }

    #[test]
    fn a_long_value_is_cut_and_says_so() {
        let exact = "s".repeat(MAX_VALUE);
        assert_eq!(log_safe(&exact), exact);
        let long = log_safe(&"s".repeat(MAX_VALUE + 1));
        assert_eq!(long.len(), MAX_VALUE);
        assert!(long.ends_with("..."));
        // Cut between escapes, never inside one.
        let escaped = log_safe(&"\n".repeat(200));
        assert!(
            escaped.len() <= MAX_VALUE && escaped.ends_with("%0A..."),
            "{escaped}"
        );
        assert!(escaped.trim_end_matches("...").len() % 3 == 0);
    }

    #[test]
    fn the_value_is_the_decision_then_who() {
        let log = AccessLog::new(
            decision::AUTHENTICATED,
            Some(Who {
                sub: "alice".into(),
                sid: Some("s1".into()),
            }),
        );
        assert_eq!(log.value().as_deref(), Some("authenticated alice s1"));
        let bearer = AccessLog::new(decision::BEARER, Some(Who::of_bearer("svc a")));
        assert_eq!(bearer.value().as_deref(), Some("bearer svc%20a -"));
        assert_eq!(
            AccessLog::new("unauthenticated", None).value().as_deref(),
            Some("unauthenticated - -")
        );
        assert_eq!(AccessLog::default().value(), None);
        let nameless = Who {
            sub: String::new(),
            sid: None,
        };
        let odd = AccessLog::new(decision::SESSION, Some(nameless));
        assert_eq!(
            odd.value().as_deref(),
            Some("session - -"),
            "always three fields"
        );
    }
}
