//! The engine: everything one wasm VM (one Envoy worker) knows and waits for, in plain Rust
//! with no host calls (the sans-IO style of quinn-proto's `Connection`).
//!
//! **Events in** (each a method; the clock is read through [`Host::now_ms`]):
//! [`Engine::on_request_headers`], [`Engine::on_call_answer`] (an IdP answer with its call
//! token), [`Engine::on_tick`] (the timer, every [`TICK`]), [`Engine::on_queue_nudged`] (the
//! root context's queue), [`Engine::on_stream_gone`], [`Engine::on_upstream_challenge`] (the
//! API's 401 step-up challenge, read only where `upstream_step_up` asked for it),
//! [`Engine::on_request_body`] (a body the engine asked for with [`Handled::ReadBody`]).
//!
//! **Effects out**: the request in hand is answered by the return value ([`Handled`]: go on
//! upstream with these header edits, answer with this reply, or paused); requests paused
//! earlier come back as [`Resume`]s ([`Engine::take_resumes`]), which the shell carries out once
//! the engine has returned (Envoy may call back into the VM while a reply is sent). Host
//! services that answer at once (dispatch an IdP call and get its token, shared data read and
//! compare-and-swap, random bytes, count, log, nudge) go through the [`Host`] trait.
//!
//! **Where new work goes**: a new IdP call is built by the protocol code, dispatched through
//! [`Engine::dispatch_idp`] (which adds client credentials and DPoP proofs as it leaves, and
//! answers a nonce challenge) with its owner recorded in `calls`; a store call goes through
//! `dispatch_store` (signed in to etcd when it wants a user), and its answer parsed by the protocol code in
//! [`Engine::on_call_answer`] (a request's own call is an [`OwnCall`]). A new wait for what
//! arrives for everyone is a [`Wait`] variant with its wake-up rule in [`Wait::wakeup`]. Both are tested natively in `tests.rs` with a fake clock and store.

mod backchannel;
mod client_token;
mod host;
mod idp_calls;
mod metadata;
mod paused;
mod refresh_claim;
mod store_sign_in;
mod store_sync;
#[cfg(test)]
mod tests;

pub use backchannel::MAX_BODY;
pub use host::{Host, Level};
use metadata::{millis, Fetch, Fetched, Metadata, RETRY_AFTER_FAILURE_MS};
use paused::{Known, OwnCall, Paused, Wait, Wakeup};

use crate::access_log::AccessLog;
use crate::client_token::{self as client_token_slot, ClientToken};
use crate::config::Config;
use crate::header_map;
use crate::login::{self, Finish, PendingLogin};
use crate::metrics::Counter;
use crate::oidc::idp_request::IdpAnswer;
use crate::refresh::single_flight::{self as refresh, Claim};
use crate::refresh::{grant, Outcome, RefreshId};

use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::route::{self, client_of, Decision, RefreshNeeded, Settled, StepUpWatch};
use crate::session::cache::SessionCache;
use crate::session::deny;
use crate::session::Session;
use crate::store::namespace;
use std::collections::{HashMap, HashSet};
use std::mem;
use std::time::Duration;

/// How often the shell's timer calls [`Engine::on_tick`]: the granularity of waits and of
/// picking up what other workers fetched.
pub const TICK: Duration = Duration::from_millis(100);
/// Sessions kept opened per VM: each costs its sealed cookie and some 300 bytes, about 900 once
/// its second part is opened (1,385 and 2,006 bytes of the VM's memory for the bench's
/// 1,092-byte cookie, `bench/opencheck` `memory`), so 1.4 to 2.1 MB per worker. A miss costs
/// about a floor request more than a hit (bench/README.md, "The cost of a cache miss");
/// second-chance eviction keeps the users who are making requests.
const SESSION_CACHE_SIZE: usize = 1024;

/// What became of the request whose headers were just handed in.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Carry this out now.
    Settled(Settled),
    /// Held: it comes back as a [`Resume`].
    Paused,
    /// Held until the shell hands in the request's body ([`Engine::on_request_body`]).
    ReadBody,
}

/// A paused request's end: make `context_id` the current context, then carry out `settled`
/// (a forward or pass-through also resumes the request).
#[derive(Debug, PartialEq, Eq)]
pub struct Resume {
    pub context_id: u32,
    pub settled: Settled,
}

/// Who an IdP call in flight belongs to (the VM's metadata fetches are in [`Metadata`]).
enum Call {
    /// A refresh this VM sends for any request of the session; `in_store`: claimed in the
    /// store too, so its outcome goes there.
    Refresh {
        needed: Box<RefreshNeeded>,
        in_store: bool,
    },
    /// A paused request's own call.
    Stream(u32),
    /// The client-credentials grant for the filter's own token.
    ClientToken,
    /// A call to the store (etcd) for the deny list.
    Store(store_sync::StoreCall),
    /// A refresh's claim in the store.
    StoreClaim(Box<refresh_claim::Claiming>),
    /// A refresh's outcome on its way into the store.
    StorePublish(Box<refresh_claim::Publishing>),
    /// Signing in to the store (etcd's authentication).
    StoreSignIn,
}

pub struct Engine {
    config: Config,
    /// Prefix of this configuration's shared-data keys.
    ns: String,
    meta: Metadata,
    /// Requests waiting for what arrives for everyone, by context id.
    waiting: HashMap<u32, Paused<Wait>>,
    /// Requests whose body the shell is reading for us.
    reading: HashSet<u32>,
    /// Requests waiting for their own call's answer, by context id.
    calling: HashMap<u32, Paused<OwnCall>>,
    calls: HashMap<u32, Call>,
    /// Refreshes won by a request, not sent yet. They are sent from the root context, whose
    /// calls outlive any request: the IdP rotates the refresh token when it answers, so an
    /// answer lost with a request that left would leave the session with a spent token.
    refreshes_due: Vec<RefreshNeeded>,
    /// Refreshes another replica claimed in the store, read again at their time.
    claims_read_later: Vec<refresh_claim::Claiming>,
    /// The clock as the last tick read it (0 before the first): what a request decides by.
    tick_ms: u64,
    /// This VM's copy of the client token (the shared entry is the truth).
    client_token: Option<ClientToken>,
    /// This VM won the claim to fetch the client token and has not sent the grant yet.
    client_token_due: bool,
    /// Opened sessions by sealed value: the authenticated path's shortcut; and the sessions
    /// ended before their cookies (the process's deny list, as of `deny_version`).
    sessions: SessionCache,
    deny_version: Option<u32>,
    /// DPoP: the IdP's latest nonce, and the calls sent with a proof (to send once more with
    /// a nonce when the IdP asks for one).
    dpop_nonce: Option<String>,
    with_proof: HashMap<u32, idp_calls::Sent>,
    /// When a store failure was last logged (0: never).
    store_logged_ms: u64,
    /// This VM does not look for a store round before this time (ms).
    next_sync_ms: u64,
    sign_in: store_sign_in::SignIn,
    resumes: Vec<Resume>,
}

impl Engine {
    /// A VM's engine; creates the shared entries that must exist before requests arrive.
    pub fn new(config: Config, host: &mut dyn Host) -> Engine {
        let ns = namespace(&config);
        refresh::prepare(host.store(), &ns);
        client_token_slot::prepare(host.store(), &ns);
        deny::prepare(host.store(), &ns);
        Engine {
            meta: Metadata::new(&config),
            config,
            ns,
            waiting: HashMap::new(),
            reading: HashSet::new(),
            calling: HashMap::new(),
            calls: HashMap::new(),
            refreshes_due: Vec::new(),
            claims_read_later: Vec::new(),
            tick_ms: 0,
            client_token: None,
            client_token_due: false,
            sessions: SessionCache::new(SESSION_CACHE_SIZE),
            deny_version: None,
            dpop_nonce: None,
            with_proof: HashMap::new(),
            store_logged_ms: 0,
            next_sync_ms: 0,
            sign_in: Default::default(),
            resumes: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The shared-data namespace of this configuration.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The ends of requests paused earlier, for the shell to carry out.
    pub fn take_resumes(&mut self) -> Vec<Resume> {
        mem::take(&mut self.resumes)
    }

    /// A request's headers, in the host's serialization ([`header_map::parse`]).
    pub fn on_request_headers(
        &mut self,
        context_id: u32,
        headers: Vec<u8>,
        host: &mut dyn Host,
    ) -> Handled {
        // The time as of the last tick (at most a tick old, like nginx's cached time): saves
        // a host call per request, and every limit the decision checks is whole seconds.
        let now = match self.tick_ms {
            0 => host.now_ms(),
            ms => ms,
        } / 1000;
        let decision = self.decide(&headers, now, true, host);
        if matches!(decision, Decision::ReadBody) {
            self.reading.insert(context_id);
            return Handled::ReadBody;
        }
        match self.carry_out(context_id, headers, decision, false, host) {
            Some(settled) => {
                let settled = self.signed(settled, host);
                count(host, &settled);
                Handled::Settled(self.logged(settled))
            }
            None => Handled::Paused,
        }
    }

    /// An answer to a call this engine dispatched (`status: None` when it failed or timed
    /// out). An answer nobody waits for any more is dropped.
    pub fn on_call_answer(&mut self, token: u32, answer: IdpAnswer, host: &mut dyn Host) {
        if let Some(what) = self.meta.fetch_for(token) {
            let fetched = self
                .meta
                .fetched(&self.config, &self.ns, what, &answer, host);
            if fetched == Fetched::Installed(Fetch::Discovery) {
                // Keys follow discovery at once rather than at the next tick.
                self.fetch_if_due(host);
            }
            self.after_fetch(fetched, host);
            return;
        }
        if self.sent_again_with_nonce(token, &answer, host) {
            return;
        }
        let call = self.calls.remove(&token);
        if answer.status == Some(401) && self.is_store_call(call.as_ref()) {
            self.signed_out();
        }
        match call {
            Some(Call::Refresh { needed, in_store }) => {
                self.refresh_answered(&needed, in_store, &answer, host)
            }
            Some(Call::Stream(context_id)) => self.stream_answered(context_id, token, answer, host),
            Some(Call::ClientToken) => self.client_token_answered(&answer, host),
            Some(Call::Store(what)) => self.store_answered(what, &answer, host),
            Some(Call::StoreClaim(claiming)) => self.claim_answered(*claiming, &answer, host),
            Some(Call::StorePublish(publishing)) => {
                self.publish_answered(*publishing, &answer, host)
            }
            Some(Call::StoreSignIn) => self.sign_in_answered(&answer, host),
            None => host.log(
                Level::Debug,
                "bff: an IdP answer for a request that is gone",
            ),
        }
    }

    /// Whether `call` went to the store (a back-channel logout's own calls do).
    fn is_store_call(&self, call: Option<&Call>) -> bool {
        match call {
            Some(Call::Store(_) | Call::StoreClaim(_) | Call::StorePublish(_)) => true,
            Some(Call::Stream(context_id)) => self
                .calling
                .get(context_id)
                .is_some_and(|p| matches!(p.wait, OwnCall::Backchannel { .. })),
            _ => false,
        }
    }

    /// The timer: pick up what other workers fetched, send what is due, and wake or time
    /// out paused requests.
    pub fn on_tick(&mut self, host: &mut dyn Host) {
        let now_ms = host.now_ms();
        self.tick_ms = now_ms;
        if self
            .meta
            .sync_due(&self.config, now_ms, !self.waiting.is_empty())
        {
            self.meta.sync(&self.config, &self.ns, host);
        }
        self.sign_in(host);
        self.send_refreshes(host);
        self.read_claims(host);
        self.fetch_if_due(host);
        self.sync_store(host);
        self.load_deny_list(host);
        self.wake(None, None, host);
    }

    /// Takes the process's deny list when it changed (a logout on another worker).
    pub(super) fn load_deny_list(&mut self, host: &mut dyn Host) {
        let now = host.now_ms() / 1000;
        if let Some((list, version)) = deny::load(host.store(), &self.ns, self.deny_version, now) {
            self.sessions.denied = list;
            self.deny_version = Some(version);
        }
    }

    /// The root context's queue was nudged: send the refreshes requests won, and write the
    /// logouts that wait for the store.
    pub fn on_queue_nudged(&mut self, host: &mut dyn Host) {
        self.send_refreshes(host);
        self.write_pending(host);
    }

    /// The API answered a forwarded request 401 with `www_authenticate` (asked for when the
    /// forward carried a [`StepUpWatch`]): the reply that replaces the API's, for an RFC 9470
    /// step-up challenge; `None` lets the API's answer through.
    pub fn on_upstream_challenge(
        &mut self,
        watch: &StepUpWatch,
        www_authenticate: &str,
        host: &mut dyn Host,
    ) -> Option<Reply> {
        let mut reply = route::upstream_challenge(&self.config, watch, www_authenticate)?;
        if let Some(counter) = reply.counter {
            host.count(counter);
        }
        if !self.config.access_log {
            reply.access_log = AccessLog::default();
        }
        Some(reply)
    }

    /// Envoy dropped the request (client gone, or done): forget it and its calls.
    pub fn on_stream_gone(&mut self, context_id: u32) {
        self.waiting.remove(&context_id);
        self.reading.remove(&context_id);
        if let Some(paused) = self.calling.remove(&context_id) {
            self.calls.remove(&paused.wait.token());
            self.with_proof.remove(&paused.wait.token());
        }
    }

    /// The decision for a request with these headers. `arriving`: the request is the host's
    /// current one (not one woken later), so its `jwt_authn` metadata can be read.
    fn decide(
        &mut self,
        headers: &[u8],
        now: u64,
        arriving: bool,
        host: &mut dyn Host,
    ) -> Decision {
        let parsed = header_map::parse(headers);
        let req = Request::from_wire(&parsed);
        // Only a bearer client's request needs it (one host call); it never waits, so it is
        // always decided on arrival.
        let verified = match arriving && route::bearer_token(&self.config, &req).is_some() {
            true => host.jwt_payload(&self.config.jwt_payload),
            false => None,
        };
        let mut ctx = self.meta.ctx(&self.config, now, host.rng());
        route::decide(&mut ctx, &req, verified.as_deref(), &mut self.sessions)
    }

    /// Carries out a decision: `Some` when the request is settled, `None` when it waits.
    /// `provider_awaited`: the request was woken because the provider arrived.
    fn carry_out(
        &mut self,
        context_id: u32,
        headers: Vec<u8>,
        decision: Decision,
        provider_awaited: bool,
        host: &mut dyn Host,
    ) -> Option<Settled> {
        let unavailable = |headers: &[u8]| {
            Settled::Reply(Reply::failure(
                client_of_wire(headers),
                &Failure::IdpUnavailable,
            ))
        };
        match decision {
            Decision::PassThrough => Some(Settled::PassThrough),
            // Only ever decided on arrival (on_request_headers takes it there).
            Decision::ReadBody => Some(unavailable(&headers)),
            Decision::Forward(forward) => Some(Settled::Forward(forward)),
            Decision::Reply(reply) => Some(Settled::Reply(reply)),
            Decision::ExchangeCode(exchange) => match self.dispatch_idp(&exchange.request, host) {
                Ok(token) => {
                    self.own_call(
                        context_id,
                        headers,
                        OwnCall::CodeExchange {
                            token,
                            pending: exchange.pending,
                        },
                    );
                    None
                }
                Err(why) => {
                    host.log(
                        Level::Error,
                        &format!(
                            "bff: cannot call the token endpoint through cluster {}: {why}",
                            self.config.idp_cluster
                        ),
                    );
                    Some(Settled::Reply(Reply::failure(
                        exchange.pending.client(),
                        &Failure::IdpUnavailable,
                    )))
                }
            },
            Decision::PushAuthorization(login) => match self.dispatch_idp(&login.request, host) {
                Ok(token) => {
                    self.own_call(context_id, headers, OwnCall::Push { token, login });
                    None
                }
                Err(why) => {
                    host.log(
                        Level::Error,
                        &format!("bff: cannot push the authorization request: {why}"),
                    );
                    Some(Settled::Reply(Reply::failure(
                        login.client(),
                        &Failure::IdpUnavailable,
                    )))
                }
            },
            Decision::AwaitProvider => {
                if provider_awaited {
                    // Woken as ready, yet still none: give up rather than loop.
                    return Some(unavailable(&headers));
                }
                self.fetch_if_due(host);
                if self.meta.recently_failed(host.now_ms()) {
                    // This VM's own fetch failed moments ago, but another worker may have
                    // fetched since and this VM's tick not yet read it.
                    self.meta.sync(&self.config, &self.ns, host);
                    if self.meta.provider.is_none() {
                        return Some(unavailable(&headers));
                    }
                    let decision = self.decide(&headers, host.now_ms() / 1000, false, host);
                    return self.carry_out(context_id, headers, decision, true, host);
                }
                let until_ms = self.wait_bound(host);
                self.waiting.insert(
                    context_id,
                    Paused {
                        headers,
                        wait: Wait::Provider { until_ms },
                    },
                );
                None
            }
            Decision::ClientToken(forward) => {
                let until_ms = self.wait_bound(host);
                self.with_client_token(context_id, headers, forward, until_ms, host)
            }
            Decision::Refresh(needed) => {
                let claim =
                    refresh::claim(host.store(), &self.ns, &needed.id, host.now_ms() / 1000);
                if let Claim::Done(outcome) = claim {
                    let decision = self.after_refresh(&headers, &needed.session, &outcome, host);
                    return self.carry_out(context_id, headers, decision, provider_awaited, host);
                }
                let (id, session) = (needed.id.clone(), needed.session.clone());
                if let Claim::Won(seen) = claim {
                    self.refreshes_due.push(RefreshNeeded { seen, ..*needed });
                    host.nudge();
                }
                let until_ms = self.wait_bound(host);
                self.waiting.insert(
                    context_id,
                    Paused {
                        headers,
                        wait: Wait::Refresh {
                            id,
                            session,
                            until_ms,
                        },
                    },
                );
                None
            }
            Decision::Logout(plan) => {
                let plan = *plan;
                if let Some(entry) = &plan.deny {
                    // This VM at once; the others at their next tick.
                    self.sessions.denied.add(entry);
                    let now = host.now_ms() / 1000;
                    let entries = [entry.clone()];
                    // With a store, kept here until it is written there (by the next round).
                    let queued = self.config.store.is_none()
                        || deny::queue_for_store(host.store(), &self.ns, &entries, now);
                    if queued && self.config.store.is_some() {
                        // Written from the root context (its calls outlive this request).
                        host.nudge();
                    }
                    if !deny::record(host.store(), &self.ns, &entries, now) || !queued {
                        host.log(
                            Level::Error,
                            "bff: could not record a logout in shared data; other workers may accept a copy of its cookie",
                        );
                    }
                }
                let dispatched = match &plan.revoke {
                    Some(revoke) => self.dispatch_idp(revoke, host).ok(),
                    None => None,
                };
                match dispatched {
                    Some(token) => {
                        self.own_call(
                            context_id,
                            headers,
                            OwnCall::Revocation {
                                token,
                                reply: plan.reply,
                            },
                        );
                        None
                    }
                    // No revocation endpoint, or it cannot be called: log out anyway.
                    None => Some(Settled::Reply(plan.reply)),
                }
            }
        }
    }

    /// Pauses a request on a call of its own.
    fn own_call(&mut self, context_id: u32, headers: Vec<u8>, call: OwnCall) {
        self.calls.insert(call.token(), Call::Stream(context_id));
        self.calling.insert(
            context_id,
            Paused {
                headers,
                wait: call,
            },
        );
    }

    /// How long a request waits for the provider, keys or a refresh: long enough for one
    /// retry after a failed fetch, then one more call (with a store, and for another
    /// replica's refresh claim).
    fn wait_bound(&self, host: &dyn Host) -> u64 {
        host.now_ms()
            .saturating_add(millis(self.config.idp_timeout))
            .saturating_add(RETRY_AFTER_FAILURE_MS + 1_000)
            .saturating_add(self.store_wait_ms())
    }

    fn fetch_if_due(&mut self, host: &mut dyn Host) {
        if let Some(failed) = self.meta.fetch_if_due(&self.config, host) {
            self.after_fetch(failed, host);
        }
    }

    /// Wakes whoever a fetch's result concerns.
    fn after_fetch(&mut self, fetched: Fetched, host: &mut dyn Host) {
        let failure =
            (fetched == Fetched::Failed(Fetch::Discovery)).then_some(Failure::IdpUnavailable);
        self.wake(failure.as_ref(), None, host);
    }

    /// A paused request's own call answered.
    fn stream_answered(
        &mut self,
        context_id: u32,
        token: u32,
        answer: IdpAnswer,
        host: &mut dyn Host,
    ) {
        let Some(Paused { headers, wait }) = self.calling.remove(&context_id) else {
            return;
        };
        if wait.token() != token {
            host.log(
                Level::Warn,
                "bff: ignored an IdP answer this request was not waiting for",
            );
            self.calling.insert(context_id, Paused { headers, wait });
            return;
        }
        let settled = match wait {
            OwnCall::CodeExchange { pending, .. } => {
                self.finish_login(context_id, headers, pending, answer, true, host)
            }
            // RFC 7009 §2.2: the answer says nothing we act on; log out either way.
            OwnCall::Revocation { reply, .. } => Some(Settled::Reply(reply)),
            OwnCall::Push { login, .. } => {
                let (reply, failure) = login::pushed(&self.config, *login, &answer);
                if let Some(failure) = failure {
                    log_login_failure(host, &failure);
                }
                Some(Settled::Reply(reply))
            }
            OwnCall::Backchannel { step, .. } => {
                self.backchannel_answered(context_id, step, &answer, host)
            }
        };
        if let Some(settled) = settled {
            self.resume(context_id, settled, host);
        }
    }

    /// Finishes a login with the token endpoint's answer; may pause once more to read the
    /// JWKS again when the ID token names a key we do not have.
    fn finish_login(
        &mut self,
        context_id: u32,
        headers: Vec<u8>,
        pending: PendingLogin,
        answer: IdpAnswer,
        may_refetch: bool,
        host: &mut dyn Host,
    ) -> Option<Settled> {
        let now = host.now_ms() / 1000;
        let finish = match self.meta.provider.as_ref() {
            Some(provider) => {
                let mut ctx = self.meta.ctx(&self.config, now, host.rng());
                login::finish(&mut ctx, provider, &pending, &answer)
            }
            None => Finish::Done(
                login::failed(&self.config, &pending, &Failure::IdpUnavailable),
                Some(Failure::IdpUnavailable),
            ),
        };
        match finish {
            Finish::UnknownKey if may_refetch => {
                match self.meta.want_fresh_keys(&self.config, now) {
                    Some(newer_than) => {
                        let until_ms = self.wait_bound(host);
                        self.waiting.insert(
                            context_id,
                            Paused {
                                headers,
                                wait: Wait::Keys {
                                    newer_than,
                                    until_ms,
                                    pending,
                                    answer,
                                },
                            },
                        );
                        self.fetch_if_due(host);
                        None
                    }
                    None => self.finish_login(context_id, headers, pending, answer, false, host),
                }
            }
            Finish::UnknownKey => {
                let failure = login::unknown_key_failure(self.meta.keys.is_some());
                log_login_failure(host, &failure);
                Some(Settled::Reply(login::failed(
                    &self.config,
                    &pending,
                    &failure,
                )))
            }
            Finish::Done(reply, failure) => {
                if let Some(failure) = failure {
                    log_login_failure(host, &failure);
                }
                Some(Settled::Reply(reply))
            }
        }
    }

    /// Sends the refreshes requests won (through the store's claim when there is one) and the
    /// client-token grant, from the root context, so the answers come to it.
    fn send_refreshes(&mut self, host: &mut dyn Host) {
        self.send_client_token_grant(host);
        for needed in mem::take(&mut self.refreshes_due) {
            self.start_refresh(needed, host);
        }
    }

    /// Sends a refresh to the IdP; `in_store`: it was claimed in the store.
    fn send_refresh(&mut self, needed: RefreshNeeded, in_store: bool, host: &mut dyn Host) {
        match self.dispatch_idp(&needed.request, host) {
            Ok(token) => {
                let needed = Box::new(needed);
                self.calls.insert(token, Call::Refresh { needed, in_store });
            }
            Err(why) => {
                host.log(
                    Level::Error,
                    &format!("bff: cannot call the token endpoint to refresh: {why}"),
                );
                self.refreshed_by_us(&needed, in_store, Outcome::Unavailable, host);
            }
        }
    }

    /// The token endpoint answered a refresh, whether or not the request that won it is here.
    fn refresh_answered(
        &mut self,
        needed: &RefreshNeeded,
        in_store: bool,
        answer: &IdpAnswer,
        host: &mut dyn Host,
    ) {
        let outcome = match self.meta.provider.as_ref() {
            Some(provider) => {
                let mut ctx = self
                    .meta
                    .ctx(&self.config, host.now_ms() / 1000, host.rng());
                grant::finish_refresh(&mut ctx, provider, &needed.session, answer)
            }
            None => Outcome::Unavailable,
        };
        if outcome == Outcome::Ended {
            host.log(
                Level::Info,
                "bff: the IdP refused a refresh; the session ends",
            );
        }
        host.count(match outcome {
            Outcome::Renewed(_) => Counter::RefreshesOk,
            Outcome::Superseded { .. } => Counter::RefreshesSuperseded,
            _ => Counter::RefreshesFailed,
        });
        self.refreshed_by_us(needed, in_store, outcome, host);
    }

    /// The outcome of a refresh this VM sent: for the other replicas too when it claimed it
    /// in the store.
    fn refreshed_by_us(
        &mut self,
        needed: &RefreshNeeded,
        in_store: bool,
        outcome: Outcome,
        host: &mut dyn Host,
    ) {
        if in_store {
            self.publish_in_store(&needed.id, &outcome, host);
        }
        self.refreshed(needed, outcome, host);
    }

    /// Publishes a refresh's outcome to every worker and hands it to this VM's waiters.
    fn refreshed(&mut self, needed: &RefreshNeeded, outcome: Outcome, host: &mut dyn Host) {
        let (id, now) = (&needed.id, host.now_ms() / 1000);
        refresh::publish(host.store(), &self.ns, id, &outcome, needed.seen, now);
        self.wake(None, Some((id, &outcome)), host);
    }

    /// Resumes every waiter whose need is met or whose time is up (with `provider_failed`,
    /// every waiter for the provider; with `refreshed`, the waiters for that refresh get its
    /// outcome first hand).
    fn wake(
        &mut self,
        provider_failed: Option<&Failure>,
        refreshed: Option<(&RefreshId, &Outcome)>,
        host: &mut dyn Host,
    ) {
        if self.waiting.is_empty() {
            return;
        }
        let now_ms = host.now_ms();
        let woken: Vec<(u32, Wakeup)> = {
            let store = host.store();
            let ns = &self.ns;
            let published =
                |id: &RefreshId| refresh::lookup(store, ns, id, now_ms / 1000).is_some();
            let known = Known {
                has_provider: self.meta.provider.is_some(),
                keys_at: self.meta.keys_at,
                keys_wanted: self.meta.keys_wanted,
                provider_failed,
                refreshed,
                published: &published,
                now_ms,
            };
            self.waiting
                .iter()
                .filter_map(|(id, p)| p.wait.wakeup(&known).map(|w| (*id, w)))
                .collect()
        };
        for (context_id, wakeup) in woken {
            let Some(Paused { headers, wait }) = self.waiting.remove(&context_id) else {
                continue;
            };
            if let Some(settled) = self.woken(context_id, headers, wait, wakeup, host) {
                self.resume(context_id, settled, host);
            }
        }
    }

    /// A waiting request's wait is over.
    fn woken(
        &mut self,
        context_id: u32,
        headers: Vec<u8>,
        wait: Wait,
        wakeup: Wakeup,
        host: &mut dyn Host,
    ) -> Option<Settled> {
        match (wait, wakeup) {
            (Wait::Provider { .. }, Wakeup::Failed(failure)) => Some(Settled::Reply(
                Reply::failure(client_of_wire(&headers), &failure),
            )),
            (Wait::Provider { .. }, _) => {
                let decision = self.decide(&headers, host.now_ms() / 1000, false, host);
                self.carry_out(context_id, headers, decision, true, host)
            }
            (Wait::ClientToken { .. }, Wakeup::Failed(failure)) => Some(Settled::Reply(
                Reply::failure(client_of_wire(&headers), &failure),
            )),
            (Wait::ClientToken { forward, until_ms }, _) => {
                self.with_client_token(context_id, headers, forward, until_ms, host)
            }
            (
                Wait::Keys {
                    pending, answer, ..
                },
                _,
            ) => self.finish_login(context_id, headers, pending, answer, false, host),
            (Wait::Refresh { id, session, .. }, wakeup) => {
                let outcome = match wakeup {
                    Wakeup::Refreshed(outcome) => outcome,
                    Wakeup::Ready => {
                        refresh::lookup(host.store(), &self.ns, &id, host.now_ms() / 1000)
                            .unwrap_or(Outcome::Unavailable)
                    }
                    Wakeup::Failed(_) => Outcome::Unavailable,
                };
                let decision = self.after_refresh(&headers, &session, &outcome, host);
                self.carry_out(context_id, headers, decision, false, host)
            }
        }
    }

    /// What a refresh's outcome means for one request of the session.
    fn after_refresh(
        &mut self,
        headers: &[u8],
        session: &Session,
        outcome: &Outcome,
        host: &mut dyn Host,
    ) -> Decision {
        let parsed = header_map::parse(headers);
        let req = Request::from_wire(&parsed);
        let Some(provider) = self.meta.provider.as_ref() else {
            // A refresh is only decided with the provider known; it is never forgotten.
            return Decision::Reply(Reply::failure(client_of(&req), &Failure::IdpUnavailable));
        };
        let mut ctx = self
            .meta
            .ctx(&self.config, host.now_ms() / 1000, host.rng());
        route::after_refresh(&mut ctx, provider, &req, session, outcome)
    }

    fn resume(&mut self, context_id: u32, settled: Settled, host: &mut dyn Host) {
        let settled = self.signed(settled, host);
        count(host, &settled);
        let settled = self.logged(settled);
        self.resumes.push(Resume {
            context_id,
            settled,
        });
    }

    /// The settled request with what the access log is to say of it: nothing unless
    /// `access_log` is on.
    fn logged(&self, mut settled: Settled) -> Settled {
        if !self.config.access_log {
            if let Some(log) = settled.access_log_mut() {
                *log = AccessLog::default();
            }
        }
        settled
    }
}

/// Counts a request toward its stat: every settled request passes here once.
fn count(host: &mut dyn Host, settled: &Settled) {
    let counter = match settled {
        Settled::Reply(reply) => reply.counter,
        Settled::Forward(forward) => forward.counter,
        Settled::PassThrough => None,
    };
    if let Some(counter) = counter {
        host.count(counter);
    }
}

/// Whether the request whose headers these are is a navigation (for the shape of an error).
fn client_of_wire(headers: &[u8]) -> Client {
    client_of(&Request::from_wire(&header_map::parse(headers)))
}

fn log_login_failure(host: &mut dyn Host, failure: &Failure) {
    // Failure messages are written to carry no token, code or secret.
    host.log(
        Level::Warn,
        &format!(
            "bff: login failed ({}): {}",
            failure.code(),
            failure.message()
        ),
    );
}
