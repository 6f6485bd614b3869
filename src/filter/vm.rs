//! What one wasm VM (one Envoy worker) knows and waits for: the provider's metadata and
//! signing keys (shared with the other workers through shared data), the requests paused
//! until something arrives, which request owns which IdP call, and the refreshes it makes.
//!
//! Borrow rule: a `Vm` borrow never spans a call into a `Stream`; work to hand to streams is
//! collected first, the borrow dropped, then the streams are called.

use super::host::{self, HostRandom, HostStore};
use super::stream::Stream;
use crate::config::Config;
use crate::metrics::Counter;
use crate::oidc::discovery::{discovery_url, Provider};
use crate::oidc::idp_request::IdpRequest;
use crate::oidc::jwks::Jwks;
use crate::refresh::{self, Outcome, RefreshId};
use crate::renew;
use crate::reply::Failure;
use crate::route::RefreshNeeded;
use crate::session::cache::SessionCache;
use crate::store::{namespace, stamped, unstamp, Cas, SharedStore};
use crate::url::AbsoluteUrl;
use proxy_wasm::types::LogLevel;
use std::cell::RefCell;
use std::collections::HashMap;
use std::mem;
use std::rc::{Rc, Weak};

/// Sessions kept opened per VM (each entry is about the cookie's size twice).
const SESSION_CACHE_SIZE: usize = 1024;
/// How often an idle tick reads what other workers fetched.
const SYNC_WHEN_IDLE_MS: u64 = 1_000;
/// A failed fetch is retried after this long.
const RETRY_AFTER_FAILURE_MS: u64 = 2_000;

/// A paused request and how to reach it.
#[derive(Clone)]
pub struct Owner {
    pub context_id: u32,
    pub stream: Weak<RefCell<Stream>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Provider,
    /// Signing keys fetched after the given time (a token named a `kid` we did not have).
    Keys {
        newer_than: u64,
    },
    /// The outcome of a refresh another request (maybe on another worker) is making.
    Refresh(RefreshId),
}

/// What a paused request is told when it is resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// What it waited for is here (or the keys were re-read): decide again.
    Ready,
    /// It will not come in time.
    Failed(Failure),
    /// The refresh it waited for, made by this VM: its outcome, first hand.
    Refreshed(Outcome),
}

struct Waiter {
    owner: Owner,
    need: Need,
    until_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Discovery,
    Keys,
}

struct InFlight {
    token: u32,
    what: Fetch,
    started_ms: u64,
}

pub struct Vm {
    pub config: Rc<Config>,
    ns: String,
    provider: Option<Rc<Provider>>,
    provider_cas: Option<Cas>,
    provider_at: u64,
    keys: Option<Rc<Jwks>>,
    keys_cas: Option<Cas>,
    keys_at: u64,
    keys_wanted: bool,
    fetching: Option<InFlight>,
    failed_at_ms: Option<u64>,
    waiters: Vec<Waiter>,
    /// When the tick last read the other workers' documents from shared data.
    synced_ms: u64,
    /// The clock as the last tick read it (0 before the first): what a request decides by.
    tick_ms: u64,
    callouts: HashMap<u32, Owner>,
    /// The shared queue that nudges the root context to send `refreshes_due` at once.
    queue: Option<u32>,
    /// Refreshes won by a request, not sent yet. They are sent from the root context, whose
    /// calls outlive any request: the IdP rotates the refresh token when it answers, so an
    /// answer lost with a request that left would leave the session with a spent token.
    refreshes_due: Vec<RefreshNeeded>,
    /// Refreshes sent, by call token.
    refreshing: HashMap<u32, RefreshNeeded>,
    /// Envoy's ids for our counters, in `Counter::ALL` order.
    counters: Vec<Option<u32>>,
    /// Opened sessions by sealed value: the authenticated path's shortcut.
    sessions: SessionCache,
}

/// The VM's state, shared by the root context and every request.
#[derive(Clone)]
pub struct VmHandle(Rc<RefCell<Vm>>);

impl VmHandle {
    pub fn new(config: Rc<Config>) -> VmHandle {
        let provider = if config.discovery {
            None
        } else {
            Provider::from_config(&config).map(Rc::new)
        };
        VmHandle(Rc::new(RefCell::new(Vm {
            ns: namespace(&config),
            config,
            provider,
            provider_cas: None,
            provider_at: 0,
            keys: None,
            keys_cas: None,
            keys_at: 0,
            keys_wanted: false,
            fetching: None,
            failed_at_ms: None,
            waiters: Vec::new(),
            synced_ms: 0,
            tick_ms: 0,
            callouts: HashMap::new(),
            queue: None,
            refreshes_due: Vec::new(),
            refreshing: HashMap::new(),
            counters: Vec::new(),
            sessions: SessionCache::new(SESSION_CACHE_SIZE),
        })))
    }

    /// Declares the filter's counters (`<metrics_prefix>.<name>` in Envoy's stats).
    pub fn define_counters(&self) {
        let prefix = self.0.borrow().config.metrics_prefix.clone();
        let ids = Counter::ALL
            .iter()
            .map(|c| host::define_counter(&format!("{prefix}.{}", c.name())))
            .collect();
        self.0.borrow_mut().counters = ids;
    }

    pub fn count(&self, counter: Counter) {
        let id = self
            .0
            .borrow()
            .counters
            .get(counter.index())
            .copied()
            .flatten();
        if let Some(id) = id {
            host::increment(id);
        }
    }

    pub fn namespace(&self) -> String {
        self.0.borrow().ns.clone()
    }

    /// Creates the shared entries that must exist before requests arrive.
    pub fn prepare_shared(&self) {
        refresh::prepare(&HostStore, &self.namespace());
    }

    /// Runs `f` with the VM's session cache. `f` must not call back into the VM.
    pub fn with_sessions<T>(&self, f: impl FnOnce(&mut SessionCache) -> T) -> T {
        match self.0.try_borrow_mut() {
            Ok(mut vm) => f(&mut vm.sessions),
            // Cannot happen (no caller holds the VM), but never panic: work without the cache.
            Err(_) => f(&mut SessionCache::new(0)),
        }
    }

    pub fn config(&self) -> Rc<Config> {
        Rc::clone(&self.0.borrow().config)
    }

    pub fn provider(&self) -> Option<Rc<Provider>> {
        self.0.borrow().provider.clone()
    }

    /// Whether the last fetch from the IdP failed moments ago (a new request should not
    /// wait for the next attempt).
    pub fn recently_failed(&self) -> bool {
        let now_ms = host::now_ms();
        self.0
            .borrow()
            .failed_at_ms
            .is_some_and(|t| now_ms < t.saturating_add(RETRY_AFTER_FAILURE_MS))
    }

    pub fn keys(&self) -> Option<Rc<Jwks>> {
        self.0.borrow().keys.clone()
    }

    /// Asks for the JWKS to be read again because a token named an unknown key. False when
    /// it was read too recently (then the key really is unknown).
    pub fn want_fresh_keys(&self, now: u64) -> Option<Need> {
        let mut vm = self.0.borrow_mut();
        // Process-wide, since keys_at is shared: a token naming a stranger's kid cannot make
        // us hammer the IdP.
        if vm.keys.is_some() && now < vm.keys_at.saturating_add(vm.config.jwks_min_refetch) {
            return None;
        }
        vm.keys_wanted = true;
        Some(Need::Keys {
            newer_than: vm.keys_at,
        })
    }

    pub fn wait(&self, owner: Owner, need: Need) {
        let mut vm = self.0.borrow_mut();
        // Long enough for one retry after a failed fetch, then one more call.
        let bound = u64::try_from(vm.config.idp_timeout.as_millis()).unwrap_or(5_000)
            + RETRY_AFTER_FAILURE_MS
            + 1_000;
        vm.waiters.push(Waiter {
            owner,
            need,
            until_ms: host::now_ms().saturating_add(bound),
        });
    }

    /// The time in seconds for deciding a request, as of the last tick (at most a tick old,
    /// like nginx's cached time): saves a host call per request, and every limit the decision
    /// checks is whole seconds. The host's clock before the first tick.
    pub fn decision_time(&self) -> u64 {
        match self.0.borrow().tick_ms {
            0 => host::now(),
            ms => ms / 1000,
        }
    }

    pub fn set_queue(&self, queue: Option<u32>) {
        self.0.borrow_mut().queue = queue;
    }

    /// A request won the claim to refresh: the root context sends it (nudged through the
    /// queue, or at the next tick) and the request waits for the outcome like any other.
    pub fn start_refresh(&self, needed: RefreshNeeded) {
        let queue = {
            let mut vm = self.0.borrow_mut();
            vm.refreshes_due.push(needed);
            vm.queue
        };
        if let Some(queue) = queue {
            host::nudge(queue);
        }
    }

    /// Root context only (so that the SDK routes the answer to it): sends the refreshes due.
    pub fn send_refreshes(&self) {
        let due = mem::take(&mut self.0.borrow_mut().refreshes_due);
        if due.is_empty() {
            return;
        }
        let config = self.config();
        for needed in due {
            match host::dispatch(&config.idp_cluster, &needed.request, config.idp_timeout) {
                Ok(token) => {
                    self.0.borrow_mut().refreshing.insert(token, needed);
                }
                Err(status) => {
                    host::log(
                        LogLevel::Error,
                        &format!("bff: cannot call the token endpoint to refresh: {status:?}"),
                    );
                    self.refreshed(&needed.id, Outcome::Unavailable);
                }
            }
        }
    }

    /// The token endpoint answered a refresh, whether or not the request that won it is here.
    fn refresh_answered(&self, needed: &RefreshNeeded, num_headers: usize, body_size: usize) {
        let (status, body) = host::call_response(num_headers, body_size);
        let config = self.config();
        let outcome = match self.provider() {
            Some(provider) => renew::finish_refresh(
                &config,
                &provider,
                self.keys().as_deref(),
                &needed.session,
                status,
                &body,
                host::now(),
                &mut HostRandom,
            ),
            None => Outcome::Unavailable,
        };
        if outcome == Outcome::Ended {
            host::log(
                LogLevel::Info,
                "bff: the IdP refused a refresh; the session ends",
            );
        }
        self.count(match outcome {
            Outcome::Renewed(_) => Counter::RefreshesOk,
            _ => Counter::RefreshesFailed,
        });
        self.refreshed(&needed.id, outcome);
    }

    /// Publishes a refresh's outcome to every worker and hands it to this VM's waiters.
    fn refreshed(&self, id: &RefreshId, outcome: Outcome) {
        refresh::publish(&HostStore, &self.namespace(), id, &outcome, host::now());
        self.wake(None, Some((id, outcome)));
    }

    pub fn register_callout(&self, token: u32, owner: Owner) {
        self.0.borrow_mut().callouts.insert(token, owner);
    }

    /// An IdP answer arrived (in whichever context): metadata for the VM, or a request's own.
    pub fn deliver(&self, token: u32, num_headers: usize, body_size: usize) {
        let fetch = {
            let vm = self.0.borrow();
            vm.fetching
                .as_ref()
                .filter(|f| f.token == token)
                .map(|f| f.what)
        };
        if let Some(what) = fetch {
            let (status, body) = host::call_response(num_headers, body_size);
            self.fetched(what, status, &body);
            return;
        }
        let refreshing = self.0.borrow_mut().refreshing.remove(&token);
        if let Some(needed) = refreshing {
            self.refresh_answered(&needed, num_headers, body_size);
            return;
        }
        let owner = self.0.borrow_mut().callouts.remove(&token);
        match owner {
            Some(owner) => {
                if let Some(stream) = owner.stream.upgrade() {
                    if host::set_effective_context(owner.context_id) {
                        if let Ok(mut stream) = stream.try_borrow_mut() {
                            stream.on_call_response(token, num_headers, body_size);
                        };
                    }
                }
            }
            None => host::log(
                LogLevel::Debug,
                "bff: an IdP answer for a request that is gone",
            ),
        }
    }

    /// The root context's timer: pick up what other workers fetched, start what is due, and
    /// wake or time out paused requests.
    pub fn tick(&self) {
        // Reading shared data copies the discovery and JWKS documents into the VM: every tick
        // while something is missing or awaited, else once a second (what another worker
        // fetched is then picked up within a second).
        let now_ms = host::now_ms();
        self.0.borrow_mut().tick_ms = now_ms;
        let sync = {
            let vm = self.0.borrow();
            !vm.waiters.is_empty()
                || vm.keys_wanted
                || vm.keys.is_none()
                || (vm.config.discovery && vm.provider.is_none())
                || now_ms >= vm.synced_ms.saturating_add(SYNC_WHEN_IDLE_MS)
        };
        if sync {
            self.sync_from_shared();
            self.0.borrow_mut().synced_ms = now_ms;
        }
        self.send_refreshes();
        self.fetch_if_due();
        self.wake_waiters(None);
    }

    /// Starts a fetch now if one is due (called when a request starts waiting, so it need not
    /// wait for the next tick).
    pub fn fetch_if_due(&self) {
        let now_ms = host::now_ms();
        let now = now_ms / 1000;
        let request = {
            let mut vm = self.0.borrow_mut();
            if let Some(f) = &vm.fetching {
                // The context that dispatched it may have gone, and its answer with it.
                let bound =
                    u64::try_from(vm.config.idp_timeout.as_millis()).unwrap_or(5_000) + 1_000;
                if now_ms < f.started_ms.saturating_add(bound) {
                    return;
                }
                vm.fetching = None;
            }
            if vm
                .failed_at_ms
                .is_some_and(|t| now_ms < t.saturating_add(RETRY_AFTER_FAILURE_MS))
            {
                return;
            }
            let refresh = vm.config.metadata_refresh;
            let provider_due = vm.config.discovery
                && (vm.provider.is_none() || now >= vm.provider_at.saturating_add(refresh));
            if provider_due {
                let url = AbsoluteUrl::parse(&discovery_url(&vm.config.issuer)).ok();
                url.map(|u| (Fetch::Discovery, u))
            } else if let Some(provider) = vm.provider.clone() {
                let keys_due = vm.keys.is_none()
                    || vm.keys_wanted
                    || now >= vm.keys_at.saturating_add(refresh);
                keys_due.then(|| (Fetch::Keys, provider.jwks_uri.clone()))
            } else {
                None
            }
        };
        let Some((what, url)) = request else { return };
        let config = self.config();
        let request = IdpRequest::get_json(&url, config.idp_authority_for(&url));
        match host::dispatch(&config.idp_cluster, &request, config.idp_timeout) {
            Ok(token) => {
                self.0.borrow_mut().fetching = Some(InFlight {
                    token,
                    what,
                    started_ms: now_ms,
                });
            }
            Err(status) => {
                host::log(
                    LogLevel::Error,
                    &format!(
                        "bff: cannot call the IdP through cluster {}: {status:?}",
                        config.idp_cluster
                    ),
                );
                self.failed(what);
            }
        }
    }

    fn fetched(&self, what: Fetch, status: Option<u16>, body: &[u8]) {
        let now = host::now();
        let config = self.config();
        let result = match what {
            Fetch::Discovery => Provider::from_discovery(&config, status, body)
                .map(|p| self.install_provider(p, now))
                .map_err(|e| e.to_string()),
            Fetch::Keys => match status {
                Some(200) => Jwks::parse(body)
                    .map(|k| self.install_keys(k, now))
                    .map_err(|e| format!("the JWKS is unusable: {e}")),
                Some(s) => Err(format!("the JWKS endpoint answered {s}")),
                None => Err("the JWKS endpoint did not answer".to_string()),
            },
        };
        {
            let mut vm = self.0.borrow_mut();
            vm.fetching = None;
            if result.is_ok() {
                vm.failed_at_ms = None;
                if what == Fetch::Keys {
                    vm.keys_wanted = false;
                }
            }
        }
        match result {
            Ok(()) => {
                let shared_key = self.shared_key(what);
                let _ = HostStore.set(&shared_key, &stamped(now, body), None);
                // Keys follow discovery at once rather than at the next tick.
                if what == Fetch::Discovery {
                    self.fetch_if_due();
                }
                self.wake_waiters(None);
            }
            Err(why) => {
                host::log(LogLevel::Warn, &format!("bff: {why}"));
                self.failed(what);
            }
        }
    }

    fn failed(&self, what: Fetch) {
        self.0.borrow_mut().failed_at_ms = Some(host::now_ms());
        if what == Fetch::Discovery {
            self.wake_waiters(Some(Failure::IdpUnavailable));
        } else {
            self.0.borrow_mut().keys_wanted = false;
            self.wake_waiters(None);
        }
    }

    fn shared_key(&self, what: Fetch) -> String {
        let ns = &self.0.borrow().ns;
        match what {
            Fetch::Discovery => format!("{ns}.discovery"),
            Fetch::Keys => format!("{ns}.jwks"),
        }
    }

    fn install_provider(&self, provider: Provider, at: u64) {
        let mut vm = self.0.borrow_mut();
        vm.provider = Some(Rc::new(provider));
        vm.provider_at = at;
    }

    fn install_keys(&self, keys: Jwks, at: u64) {
        let mut vm = self.0.borrow_mut();
        vm.keys = Some(Rc::new(keys));
        vm.keys_at = at;
    }

    /// Takes what another worker fetched, when it is newer than what this VM has.
    fn sync_from_shared(&self) {
        let config = self.config();
        if config.discovery {
            let key = self.shared_key(Fetch::Discovery);
            if let Some((entry, cas)) = HostStore.get(&key) {
                if self.0.borrow().provider_cas != Some(cas) {
                    if let Some((at, body)) = unstamp(&entry) {
                        if let Ok(p) = Provider::from_discovery(&config, Some(200), body) {
                            self.install_provider(p, at);
                        }
                    }
                    self.0.borrow_mut().provider_cas = Some(cas);
                }
            }
        }
        let key = self.shared_key(Fetch::Keys);
        if let Some((entry, cas)) = HostStore.get(&key) {
            if self.0.borrow().keys_cas != Some(cas) {
                if let Some((at, body)) = unstamp(&entry) {
                    if at > self.0.borrow().keys_at {
                        if let Ok(k) = Jwks::parse(body) {
                            self.install_keys(k, at);
                            self.0.borrow_mut().keys_wanted = false;
                        }
                    }
                }
                self.0.borrow_mut().keys_cas = Some(cas);
            }
        }
    }

    /// Resumes every waiter whose need is met, whose time is up, or (with `failure`) every
    /// waiter for the provider.
    fn wake_waiters(&self, failure: Option<Failure>) {
        self.wake(failure, None);
    }

    /// [`Self::wake_waiters`], also handing a refresh's outcome to the waiters for it.
    fn wake(&self, failure: Option<Failure>, refreshed: Option<(&RefreshId, Outcome)>) {
        let now_ms = host::now_ms();
        let woken: Vec<(Owner, Need, Wakeup)> = {
            let mut vm = self.0.borrow_mut();
            let has_provider = vm.provider.is_some();
            let keys_at = vm.keys_at;
            let keys_wanted = vm.keys_wanted;
            let ns = vm.ns.clone();
            let now = now_ms / 1000;
            let mut woken = Vec::new();
            vm.waiters.retain(|w| {
                let wakeup = match &w.need {
                    Need::Provider if has_provider => Some(Wakeup::Ready),
                    Need::Provider => failure.clone().map(Wakeup::Failed),
                    Need::Keys { newer_than } if keys_at > *newer_than || !keys_wanted => {
                        Some(Wakeup::Ready)
                    }
                    Need::Keys { .. } => None,
                    Need::Refresh(id) => match &refreshed {
                        Some((done, outcome)) if *done == id => {
                            Some(Wakeup::Refreshed(outcome.clone()))
                        }
                        _ => refresh::lookup(&HostStore, &ns, id, now).map(|_| Wakeup::Ready),
                    },
                };
                let wakeup = wakeup.or_else(|| {
                    (now_ms >= w.until_ms).then_some(match w.need {
                        Need::Provider | Need::Refresh(_) => {
                            Wakeup::Failed(Failure::IdpUnavailable)
                        }
                        Need::Keys { .. } => Wakeup::Ready,
                    })
                });
                match wakeup {
                    Some(wakeup) => {
                        woken.push((w.owner.clone(), w.need.clone(), wakeup));
                        false
                    }
                    None => w.owner.stream.strong_count() > 0,
                }
            });
            woken
        };
        for (owner, need, wakeup) in woken {
            let Some(stream) = owner.stream.upgrade() else {
                continue;
            };
            if !host::set_effective_context(owner.context_id) {
                continue;
            }
            let busy = match stream.try_borrow_mut() {
                Ok(mut stream) => {
                    stream.wake(wakeup);
                    false
                }
                Err(_) => true,
            };
            if busy {
                // Busy: this runs inside that very request's callback (its own fetch failed
                // at once). The next tick wakes it.
                self.0.borrow_mut().waiters.push(Waiter {
                    need,
                    owner: owner.clone(),
                    until_ms: now_ms,
                });
            }
        }
    }
}
