//! The filter's own access token for `client` prefixes: the client-credentials grant (RFC 6749
//! §4.4), one token per Envoy process shared by every worker, never in a cookie.
//!
//! One shared entry holds the token and whether a worker is fetching it; it is changed only by
//! compare-and-swap (it is created when the filter starts, as a missing key is written
//! unconditionally), so exactly one worker fetches at a time. A due token is still used while
//! the new one is fetched; only a missing or expired one makes requests wait.

use crate::config::Config;
use crate::oidc::discovery::Provider;
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::oidc::token::{self, TokenError, DEFAULT_ACCESS_TOKEN_LIFETIME_S};
use crate::secret::Secret;
use crate::store::{self, SharedStore};

/// A fetch older than this is abandoned (its worker died or its answer was lost); Envoy's
/// call timeout ends a real one sooner.
const FETCH_TTL_S: u64 = 30;
/// After a failed fetch, requests get 503 for this long before the next try.
const FAILED_TTL_S: u64 = 5;

/// The client-credentials request (client authentication as for every token call).
pub fn request(config: &Config, provider: &Provider) -> IdpRequest {
    let cc = &config.client_credentials;
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("grant_type", "client_credentials");
    if let Some(scope) = &cc.scope {
        body.append_pair("scope", scope);
    }
    body.extend_pairs(cc.resources.iter().map(|r| ("resource", r)));
    IdpRequest::client_post(
        &provider.token_endpoint,
        config.idp_authority_for(&provider.token_endpoint),
        body.finish(),
    )
}

/// A client token and when it is due for renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken {
    pub value: Secret,
    pub expires_at: u64,
    /// Renewed from here on (it is still used until `expires_at`).
    pub renew_at: u64,
}

impl ClientToken {
    pub fn usable(&self, now: u64) -> bool {
        now < self.expires_at
    }

    pub fn due(&self, now: u64) -> bool {
        now >= self.renew_at
    }
}

/// Reads the token endpoint's answer at `now`. Renewal starts `leeway` before expiry, or half
/// way through a shorter life. `dpop`: the grant carried a proof (the token must be bound).
pub fn parse(
    answer: &IdpAnswer,
    now: u64,
    leeway: u64,
    dpop: bool,
) -> Result<ClientToken, TokenError> {
    let response = token::parse_for(answer.status, &answer.body, dpop)?;
    let life = response
        .expires_in
        .unwrap_or(DEFAULT_ACCESS_TOKEN_LIFETIME_S);
    if life == 0 {
        return Err(TokenError::Malformed("expires_in is 0"));
    }
    Ok(ClientToken {
        value: response.access_token,
        expires_at: now.saturating_add(life),
        renew_at: now.saturating_add(life - leeway.min(life / 2)),
    })
}

/// The shared entry: the current token (if any), a fetch in flight, the last failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub token: Option<ClientToken>,
    fetching_since: Option<u64>,
    failed_at: Option<u64>,
}

impl Slot {
    fn encode(&self) -> Vec<u8> {
        let num = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut out = format!("{} {}", num(self.fetching_since), num(self.failed_at));
        if let Some(t) = &self.token {
            out.push_str(&format!(
                " {} {} {}",
                t.expires_at,
                t.renew_at,
                t.value.expose()
            ));
        }
        out.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Slot {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut parts = text.split(' ');
        let mut num = || parts.next().and_then(|p| p.parse::<u64>().ok());
        let (fetching_since, failed_at) = (num(), num());
        let (expires_at, renew_at) = (num(), num());
        let token = match (expires_at, renew_at, parts.next()) {
            (Some(expires_at), Some(renew_at), Some(v)) if !v.is_empty() => Some(ClientToken {
                value: Secret::new(v),
                expires_at,
                renew_at,
            }),
            _ => None,
        };
        Slot {
            token,
            fetching_since,
            failed_at,
        }
    }

    fn fetching(&self, now: u64) -> bool {
        self.fetching_since
            .is_some_and(|at| now < at.saturating_add(FETCH_TTL_S))
    }

    /// A fetch failed a moment ago and none is in flight: answer 503 rather than wait.
    pub fn recently_failed(&self, now: u64) -> bool {
        !self.fetching(now)
            && self
                .failed_at
                .is_some_and(|at| now < at.saturating_add(FAILED_TTL_S))
    }

    /// A token to use now, if there is one.
    pub fn usable(&self, now: u64) -> Option<&ClientToken> {
        self.token.as_ref().filter(|t| t.usable(now))
    }
}

fn key(ns: &str) -> String {
    format!("{ns}.client_token")
}

/// Creates the shared entry if it does not exist yet (when the filter starts).
pub fn prepare(store: &dyn SharedStore, ns: &str) {
    store::create_if_missing(store, &key(ns), &Slot::default().encode());
}

/// The shared entry as it is now.
pub fn read(store: &dyn SharedStore, ns: &str) -> Slot {
    store
        .get(&key(ns))
        .map(|(bytes, _)| Slot::decode(&bytes))
        .unwrap_or_default()
}

/// Tries to become the worker that fetches: true when this one must send the grant. False
/// when another fetch is in flight, the token is not due, or a recent failure stands.
pub fn claim(store: &dyn SharedStore, ns: &str, now: u64) -> bool {
    update(store, ns, |slot| {
        let needed = slot.token.as_ref().map_or(true, |t| t.due(now));
        if !needed || slot.fetching(now) || slot.recently_failed(now) {
            return None;
        }
        slot.fetching_since = Some(now);
        Some(())
    })
}

/// Publishes a fetch's result for every worker: the new token, or a failure (the old token
/// stays while it lasts).
pub fn publish(store: &dyn SharedStore, ns: &str, result: Option<&ClientToken>, now: u64) {
    let _ = update(store, ns, |slot| {
        slot.fetching_since = None;
        match result {
            Some(token) => {
                slot.token = Some(token.clone());
                slot.failed_at = None;
            }
            None => slot.failed_at = Some(now),
        }
        Some(())
    });
}

/// Applies `change` to the entry by compare-and-swap; `None` from `change` leaves it.
fn update(store: &dyn SharedStore, ns: &str, change: impl Fn(&mut Slot) -> Option<()>) -> bool {
    store::update(store, &key(ns), |bytes| {
        let mut slot = Slot::decode(bytes);
        change(&mut slot)?;
        Some(slot.encode())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json};
    use crate::oidc::discovery::test_provider;
    use crate::store::MemoryStore;

    fn answer(status: u16, body: &str) -> IdpAnswer {
        IdpAnswer::of(status, body)
    }

    #[test]
    fn the_grant_names_its_scope_and_resources_and_authenticates_the_client() {
        let mut v = minimal_json();
        v["client_credentials"] = serde_json::json!({"scopes": ["api:read", "api:write"], "resources": ["https://api.example/"]});
        let config = config_from(v);
        let req = request(&config, &test_provider());
        let body = req.body.unwrap_or_default();
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=api%3Aread+api%3Awrite&resource=https%3A%2F%2Fapi.example%2F"
        );
        assert!(
            req.authenticate,
            "the client's credentials go with it when sent"
        );
    }

    #[test]
    fn renewal_starts_before_expiry_and_half_way_through_a_short_life() {
        let t = parse(
            &answer(
                200,
                r#"{"access_token":"T","token_type":"Bearer","expires_in":600}"#,
            ),
            1000,
            60,
            false,
        )
        .unwrap();
        assert_eq!((t.expires_at, t.renew_at), (1600, 1540));
        let t = parse(
            &answer(
                200,
                r#"{"access_token":"T","token_type":"Bearer","expires_in":40}"#,
            ),
            1000,
            60,
            false,
        )
        .unwrap();
        assert_eq!((t.expires_at, t.renew_at), (1040, 1020));
        assert!(parse(
            &answer(400, r#"{"error":"unauthorized_client"}"#),
            1000,
            60,
            false
        )
        .is_err());
        assert!(parse(&answer(200, "garbage"), 1000, 60, false).is_err());
    }

    #[test]
    fn one_worker_fetches_and_a_due_token_is_renewed_once() {
        let store = MemoryStore::default();
        prepare(&store, "ns");
        assert!(claim(&store, "ns", 100), "the first claims");
        assert!(!claim(&store, "ns", 100), "a second waits for it");
        let token = ClientToken {
            value: Secret::new("T1"),
            expires_at: 200,
            renew_at: 180,
        };
        publish(&store, "ns", Some(&token), 101);
        assert_eq!(read(&store, "ns").usable(150), Some(&token));
        assert!(!claim(&store, "ns", 150), "not due yet");
        assert!(claim(&store, "ns", 185), "due: one renews");
        assert!(!claim(&store, "ns", 185), "once");
        assert_eq!(
            read(&store, "ns").usable(186),
            Some(&token),
            "the old one still serves"
        );
        // The renewer died: its claim lapses.
        assert!(claim(&store, "ns", 185 + FETCH_TTL_S));
    }

    #[test]
    fn a_failure_stands_briefly_and_keeps_the_old_token() {
        let store = MemoryStore::default();
        prepare(&store, "ns");
        assert!(claim(&store, "ns", 100));
        publish(&store, "ns", None, 100);
        let slot = read(&store, "ns");
        assert!(slot.recently_failed(101) && slot.usable(101).is_none());
        assert!(!claim(&store, "ns", 101));
        assert!(claim(&store, "ns", 100 + FAILED_TTL_S));
    }

    #[test]
    fn a_garbled_entry_reads_as_no_token() {
        for garbage in ["", "x y z", "- - 1 2", "- - a b T", "5 - 10 9 "] {
            assert_eq!(Slot::decode(garbage.as_bytes()).token, None, "{garbage:?}");
        }
    }
}
