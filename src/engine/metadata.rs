//! The provider's metadata and signing keys as one VM knows them: when to fetch them, what
//! another worker already fetched (shared data), and when a failed fetch may be retried.

use super::host::{Host, Level};
use crate::config::Config;
use crate::ctx::Ctx;
use crate::oidc::discovery::{discovery_url, Provider};
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::oidc::jwks::Jwks;
use crate::random::Random;
use crate::store::{stamped, unstamp, Cas};
use crate::url::AbsoluteUrl;

/// A failed fetch is retried after this long.
pub const RETRY_AFTER_FAILURE_MS: u64 = 2_000;
/// How often an idle tick reads what other workers fetched.
pub const SYNC_WHEN_IDLE_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Discovery,
    Keys,
}

struct InFlight {
    token: u32,
    what: Fetch,
    started_ms: u64,
}

/// What a fetch's answer (or its failure to be sent) changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Installed and shared with the other workers.
    Installed(Fetch),
    /// It failed; retried after [`RETRY_AFTER_FAILURE_MS`].
    Failed(Fetch),
}

#[derive(Default)]
pub struct Metadata {
    pub provider: Option<Provider>,
    provider_cas: Option<Cas>,
    provider_at: u64,
    pub keys: Option<Jwks>,
    keys_cas: Option<Cas>,
    /// When the keys we hold were fetched (by any worker), unix seconds.
    pub keys_at: u64,
    /// A token named a `kid` we did not have: read the JWKS again.
    pub keys_wanted: bool,
    fetching: Option<InFlight>,
    failed_at_ms: Option<u64>,
    /// When shared data was last read.
    synced_ms: u64,
}

impl Metadata {
    pub fn new(config: &Config) -> Metadata {
        Metadata {
            // Without discovery the endpoints come from the configuration.
            provider: if config.discovery {
                None
            } else {
                Provider::from_config(config)
            },
            ..Metadata::default()
        }
    }

    /// What a protocol step reads, with the provider and keys as this VM knows them.
    pub fn ctx<'a>(&'a self, config: &'a Config, now: u64, rng: &'a mut dyn Random) -> Ctx<'a> {
        Ctx {
            config,
            provider: self.provider.as_ref(),
            keys: self.keys.as_ref(),
            now,
            rng,
        }
    }

    /// Whether the last fetch failed moments ago (a new request should not wait for the next
    /// attempt).
    pub fn recently_failed(&self, now_ms: u64) -> bool {
        self.failed_at_ms
            .is_some_and(|t| now_ms < t.saturating_add(RETRY_AFTER_FAILURE_MS))
    }

    /// Asks for the JWKS to be read again because a token named an unknown key: the time the
    /// keys must be newer than, or `None` when they were read too recently (then the key
    /// really is unknown). Process-wide, since `keys_at` is shared: a token naming a
    /// stranger's kid cannot make us hammer the IdP.
    pub fn want_fresh_keys(&mut self, config: &Config, now: u64) -> Option<u64> {
        if self.keys.is_some() && now < self.keys_at.saturating_add(config.jwks_min_refetch) {
            return None;
        }
        self.keys_wanted = true;
        Some(self.keys_at)
    }

    /// Whether this tick should read shared data: every tick while something is missing or
    /// awaited, else once a second (reading copies both documents into the VM).
    pub fn sync_due(&self, config: &Config, now_ms: u64, waiting: bool) -> bool {
        waiting
            || self.keys_wanted
            || self.keys.is_none()
            || (config.discovery && self.provider.is_none())
            || now_ms >= self.synced_ms.saturating_add(SYNC_WHEN_IDLE_MS)
    }

    /// Takes what another worker fetched, when it is newer than what this VM has.
    pub fn sync(&mut self, config: &Config, ns: &str, host: &mut dyn Host) {
        self.synced_ms = host.now_ms();
        if config.discovery {
            if let Some((entry, cas)) = host.store().get(&shared_key(ns, Fetch::Discovery)) {
                if self.provider_cas != Some(cas) {
                    if let Some((at, body)) = unstamp(&entry) {
                        if let Ok(p) = Provider::from_discovery(config, Some(200), body) {
                            self.provider = Some(p);
                            self.provider_at = at;
                        }
                    }
                    self.provider_cas = Some(cas);
                }
            }
        }
        if let Some((entry, cas)) = host.store().get(&shared_key(ns, Fetch::Keys)) {
            if self.keys_cas != Some(cas) {
                if let Some((at, body)) = unstamp(&entry) {
                    if at > self.keys_at {
                        if let Ok(k) = Jwks::parse(body) {
                            self.keys = Some(k);
                            self.keys_at = at;
                            self.keys_wanted = false;
                        }
                    }
                }
                self.keys_cas = Some(cas);
            }
        }
    }

    /// The fetch in flight with this call token, if any (its answer is the VM's, not a
    /// request's).
    pub fn fetch_for(&self, token: u32) -> Option<Fetch> {
        self.fetching
            .as_ref()
            .filter(|f| f.token == token)
            .map(|f| f.what)
    }

    /// Starts a fetch if one is due: discovery first, then the keys. `Some` when a fetch
    /// could not even be sent (it counts as failed).
    pub fn fetch_if_due(&mut self, config: &Config, host: &mut dyn Host) -> Option<Fetched> {
        let now_ms = host.now_ms();
        let now = now_ms / 1000;
        if let Some(f) = &self.fetching {
            // The context that dispatched it may have gone, and its answer with it.
            let bound = millis(config.idp_timeout).saturating_add(1_000);
            if now_ms < f.started_ms.saturating_add(bound) {
                return None;
            }
            self.fetching = None;
        }
        if self.recently_failed(now_ms) {
            return None;
        }
        let refresh = config.metadata_refresh;
        let provider_due = config.discovery
            && (self.provider.is_none() || now >= self.provider_at.saturating_add(refresh));
        let (what, url) = if provider_due {
            (
                Fetch::Discovery,
                AbsoluteUrl::parse(&discovery_url(&config.issuer)).ok()?,
            )
        } else {
            let provider = self.provider.as_ref()?;
            let keys_due = self.keys.is_none()
                || self.keys_wanted
                || now >= self.keys_at.saturating_add(refresh);
            if !keys_due {
                return None;
            }
            (Fetch::Keys, provider.jwks_uri.clone())
        };
        let request = IdpRequest::get_json(&url, config.idp_authority_for(&url));
        match host.dispatch(&config.idp_cluster, &request, config.idp_timeout) {
            Ok(token) => {
                self.fetching = Some(InFlight {
                    token,
                    what,
                    started_ms: now_ms,
                });
                None
            }
            Err(why) => {
                host.log(
                    Level::Error,
                    &format!(
                        "bff: cannot call the IdP through cluster {}: {why}",
                        config.idp_cluster
                    ),
                );
                Some(self.failed(what, now_ms))
            }
        }
    }

    /// A fetch answered: install and share what it brought, or note the failure.
    pub fn fetched(
        &mut self,
        config: &Config,
        ns: &str,
        what: Fetch,
        answer: &IdpAnswer,
        host: &mut dyn Host,
    ) -> Fetched {
        self.fetching = None;
        let now_ms = host.now_ms();
        let now = now_ms / 1000;
        let result = match what {
            Fetch::Discovery => Provider::from_discovery(config, answer.status, &answer.body)
                .map(|p| {
                    if !p.fapi2_lacks.is_empty() {
                        host.log(
                            Level::Error,
                            &format!(
                                "bff: profile \"fapi2\": the IdP's discovery lacks {}; logins are refused",
                                p.fapi2_lacks.join(", ")
                            ),
                        );
                    }
                    self.provider = Some(p);
                    self.provider_at = now;
                })
                .map_err(|e| e.to_string()),
            Fetch::Keys => match answer.status {
                Some(200) => Jwks::parse(&answer.body)
                    .map(|k| {
                        self.keys = Some(k);
                        self.keys_at = now;
                        self.keys_wanted = false;
                    })
                    .map_err(|e| format!("the JWKS is unusable: {e}")),
                Some(s) => Err(format!("the JWKS endpoint answered {s}")),
                None => Err("the JWKS endpoint did not answer".to_string()),
            },
        };
        match result {
            Ok(()) => {
                self.failed_at_ms = None;
                let _ = host
                    .store()
                    .set(&shared_key(ns, what), &stamped(now, &answer.body), None);
                Fetched::Installed(what)
            }
            Err(why) => {
                host.log(Level::Warn, &format!("bff: {why}"));
                self.failed(what, now_ms)
            }
        }
    }

    fn failed(&mut self, what: Fetch, now_ms: u64) -> Fetched {
        self.failed_at_ms = Some(now_ms);
        if what == Fetch::Keys {
            // Whoever wanted fresh keys goes on with the ones we have.
            self.keys_wanted = false;
        }
        Fetched::Failed(what)
    }
}

fn shared_key(ns: &str, what: Fetch) -> String {
    match what {
        Fetch::Discovery => format!("{ns}.discovery"),
        Fetch::Keys => format!("{ns}.jwks"),
    }
}

pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
