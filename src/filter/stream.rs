//! One request's state machine over the pure decision: it may pause for the provider's
//! metadata, for the token endpoint, or for fresh signing keys, and is resumed from the
//! callback that brings what it waited for.

use super::host::HostStore;
use super::host::{self, HostRandom};
use super::vm::{Need, Owner, VmHandle, Wakeup};
use crate::header_map;
use crate::login::{self, Finish, PendingLogin};
use crate::refresh::{self, Claim, Outcome, RefreshId};
use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::route::{self, Decision, Forward, RefreshNeeded};
use crate::session::Session;
use proxy_wasm::types::{Action, LogLevel};
use std::cell::RefCell;
use std::mem;
use std::rc::{Rc, Weak};

/// What a request is waiting for. Taken out, fed what arrived, and put back or dropped.
enum State {
    Idle,
    AwaitingProvider,
    ExchangingCode {
        token_id: u32,
        pending: PendingLogin,
    },
    AwaitingKeys {
        pending: PendingLogin,
        status: Option<u16>,
        body: Vec<u8>,
    },
    /// The session's token is being refreshed (by the VM, for this request or another one,
    /// or by another worker): wait for the outcome.
    AwaitingRefresh {
        id: RefreshId,
        session: Session,
    },
    /// Logging out: the refresh token is being revoked; then this reply.
    Revoking {
        token_id: u32,
        reply: Reply,
    },
}

/// Whether the request went on (upstream) or was answered or paused.
enum Step {
    Continue,
    Stop,
}

pub struct Stream {
    context_id: u32,
    me: Weak<RefCell<Stream>>,
    vm: VmHandle,
    /// The request's headers as the host serialized them, read in place when deciding.
    headers: Vec<u8>,
    state: State,
    /// `Set-Cookie` values for the upstream's response; outside the stream's own cell
    /// because the response callback must never borrow the stream.
    pub response_cookies: Rc<RefCell<Vec<String>>>,
}

impl Stream {
    pub fn new(context_id: u32, vm: VmHandle) -> Rc<RefCell<Stream>> {
        Rc::new_cyclic(|me| {
            RefCell::new(Stream {
                context_id,
                me: me.clone(),
                vm,
                headers: Vec::new(),
                state: State::Idle,
                response_cookies: Rc::new(RefCell::new(Vec::new())),
            })
        })
    }

    fn owner(&self) -> Owner {
        Owner {
            context_id: self.context_id,
            stream: self.me.clone(),
        }
    }

    fn client(&self) -> Client {
        if Request::from_wire(&header_map::parse(&self.headers)).is_navigation() {
            Client::Navigation
        } else {
            Client::Api
        }
    }

    pub fn on_request_headers(&mut self) -> Action {
        self.headers = host::request_headers();
        match self.decide() {
            Step::Continue => Action::Continue,
            Step::Stop => Action::Pause,
        }
    }

    /// Runs the decision and carries it out.
    fn decide(&mut self) -> Step {
        let config = self.vm.config();
        let provider = self.vm.provider();
        let headers = header_map::parse(&self.headers);
        let request = Request::from_wire(&headers);
        let now = self.vm.decision_time();
        let decision = self.vm.with_sessions(|sessions| {
            route::decide_with(
                &config,
                provider.as_deref(),
                &request,
                now,
                &mut HostRandom,
                sessions,
            )
        });
        match decision {
            Decision::PassThrough => Step::Continue,
            Decision::Forward(forward) => {
                self.apply_forward(forward);
                Step::Continue
            }
            Decision::Refresh(needed) => self.refresh(*needed),
            Decision::Logout(plan) => {
                let plan = *plan;
                let dispatched = plan.revoke.as_ref().and_then(|revoke| {
                    host::dispatch(&config.idp_cluster, revoke, config.idp_timeout).ok()
                });
                match dispatched {
                    Some(token_id) => {
                        self.vm.register_callout(token_id, self.owner());
                        self.state = State::Revoking {
                            token_id,
                            reply: plan.reply,
                        };
                    }
                    // No revocation endpoint, or it cannot be called: log out anyway.
                    None => self.send(&plan.reply),
                }
                Step::Stop
            }
            Decision::Reply(reply) => {
                self.send(&reply);
                Step::Stop
            }
            Decision::ExchangeCode(exchange) => {
                let exchange = *exchange;
                match host::dispatch(&config.idp_cluster, &exchange.request, config.idp_timeout) {
                    Ok(token_id) => {
                        self.vm.register_callout(token_id, self.owner());
                        self.state = State::ExchangingCode {
                            token_id,
                            pending: exchange.pending,
                        };
                    }
                    Err(status) => {
                        host::log(
                            LogLevel::Error,
                            &format!(
                                "bff: cannot call the token endpoint through cluster {}: {status:?}",
                                config.idp_cluster
                            ),
                        );
                        self.send(&Reply::failure(self.client(), &Failure::IdpUnavailable));
                    }
                }
                Step::Stop
            }
            Decision::AwaitProvider => {
                if matches!(self.state, State::AwaitingProvider) {
                    // Woken as ready, yet still none: give up rather than loop.
                    self.send(&Reply::failure(self.client(), &Failure::IdpUnavailable));
                    return Step::Stop;
                }
                self.vm.fetch_if_due();
                if self.vm.recently_failed() {
                    self.send(&Reply::failure(self.client(), &Failure::IdpUnavailable));
                    return Step::Stop;
                }
                self.state = State::AwaitingProvider;
                self.vm.wait(self.owner(), Need::Provider);
                Step::Stop
            }
        }
    }

    /// Answers the request locally, counting the answer.
    fn send(&self, reply: &Reply) {
        if let Some(counter) = reply.counter {
            self.vm.count(counter);
        }
        host::send_reply(reply);
    }

    fn apply_forward(&mut self, forward: Forward) {
        if let Some((name, value)) = &forward.token_header {
            host::set_request_header(name, Some(value.as_bytes()));
            host::set_request_header("cookie", forward.cookie.as_deref());
        }
        for (name, value) in &forward.extra {
            host::set_request_header(name, value.as_deref().map(str::as_bytes));
        }
        if let Ok(mut cookies) = self.response_cookies.try_borrow_mut() {
            *cookies = forward.set_cookies;
        }
    }

    /// Carries out a decision made after a pause: the request continues or is answered.
    fn carry_out(&mut self, decision: Decision) {
        match decision {
            Decision::Forward(forward) => {
                self.apply_forward(forward);
                host::resume_request();
            }
            Decision::Reply(reply) => self.send(&reply),
            Decision::PassThrough => host::resume_request(),
            _ => self.send(&Reply::failure(self.client(), &Failure::IdpUnavailable)),
        }
    }

    /// The token is due: use a refresh's outcome, or wait for it (after starting it, when this
    /// request won the claim).
    fn refresh(&mut self, needed: RefreshNeeded) -> Step {
        let ns = self.vm.namespace();
        match refresh::claim(&HostStore, &ns, &needed.id, host::now()) {
            Claim::Done(outcome) => self.after_refresh(&needed.session, &outcome, false),
            claim => {
                let id = needed.id.clone();
                let session = needed.session.clone();
                if claim == Claim::Won {
                    self.vm.start_refresh(needed);
                }
                self.vm.wait(self.owner(), Need::Refresh(id.clone()));
                self.state = State::AwaitingRefresh { id, session };
                Step::Stop
            }
        }
    }

    /// Acts on a refresh outcome; `resumed` when the request was paused meanwhile.
    fn after_refresh(&mut self, session: &Session, outcome: &Outcome, resumed: bool) -> Step {
        let config = self.vm.config();
        let provider = self.vm.provider();
        let headers = header_map::parse(&self.headers);
        let request = Request::from_wire(&headers);
        let decision = route::after_refresh(
            &config,
            provider.as_deref(),
            &request,
            session,
            outcome,
            host::now(),
            &mut HostRandom,
        );
        if resumed {
            self.carry_out(decision);
            return Step::Stop;
        }
        match decision {
            Decision::Forward(forward) => {
                self.apply_forward(forward);
                Step::Continue
            }
            Decision::Reply(reply) => {
                self.send(&reply);
                Step::Stop
            }
            _ => {
                self.send(&Reply::failure(self.client(), &Failure::IdpUnavailable));
                Step::Stop
            }
        }
    }

    /// An IdP answer for this request.
    pub fn on_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize) {
        match mem::replace(&mut self.state, State::Idle) {
            State::ExchangingCode {
                token_id: expected,
                pending,
            } if expected == token_id => {
                let (status, body) = host::call_response(num_headers, body_size);
                self.finish_login(pending, status, body, true);
            }
            State::Revoking {
                token_id: expected,
                reply,
            } if expected == token_id => {
                // RFC 7009 §2.2: the answer says nothing we act on; log out either way.
                self.send(&reply);
            }
            other => {
                host::log(
                    LogLevel::Warn,
                    "bff: ignored an IdP answer this request was not waiting for",
                );
                self.state = other;
            }
        }
    }

    fn finish_login(
        &mut self,
        pending: PendingLogin,
        status: Option<u16>,
        body: Vec<u8>,
        may_refetch: bool,
    ) {
        let config = self.vm.config();
        let provider = self.vm.provider();
        let keys = self.vm.keys();
        let now = host::now();
        let outcome = match provider.as_deref() {
            Some(provider) => login::finish(
                &config,
                provider,
                keys.as_deref(),
                &pending,
                status,
                &body,
                now,
                &mut HostRandom,
            ),
            None => Finish::Done(
                Reply::failure(pending.client(), &Failure::IdpUnavailable),
                Some(Failure::IdpUnavailable),
            ),
        };
        match outcome {
            Finish::UnknownKey if may_refetch => match self.vm.want_fresh_keys(now) {
                Some(need) => {
                    self.state = State::AwaitingKeys {
                        pending,
                        status,
                        body,
                    };
                    self.vm.wait(self.owner(), need);
                    self.vm.fetch_if_due();
                }
                None => self.finish_login(pending, status, body, false),
            },
            Finish::UnknownKey => {
                let failure = login::unknown_key_failure(keys.is_some());
                self.reply_failed_login(&pending, &failure);
            }
            Finish::Done(reply, failure) => {
                if let Some(failure) = failure {
                    log_login_failure(&failure);
                }
                self.send(&reply);
            }
        }
    }

    fn reply_failed_login(&mut self, pending: &PendingLogin, failure: &Failure) {
        log_login_failure(failure);
        let config = self.vm.config();
        self.send(&login::failed(&config, pending, failure));
    }

    /// Resumed by the VM: what this request waited for has arrived, or will not.
    pub fn wake(&mut self, wakeup: Wakeup) {
        match (mem::replace(&mut self.state, State::Idle), wakeup) {
            (State::AwaitingProvider, Wakeup::Ready) => {
                self.state = State::AwaitingProvider;
                if let Step::Continue = self.decide() {
                    host::resume_request();
                }
            }
            (State::AwaitingProvider, Wakeup::Failed(failure)) => {
                self.send(&Reply::failure(self.client(), &failure));
            }
            (
                State::AwaitingKeys {
                    pending,
                    status,
                    body,
                },
                _,
            ) => {
                self.finish_login(pending, status, body, false);
            }
            (State::AwaitingRefresh { id, session }, wakeup) => {
                let outcome = match wakeup {
                    Wakeup::Refreshed(outcome) => outcome,
                    Wakeup::Ready => {
                        refresh::lookup(&HostStore, &self.vm.namespace(), &id, host::now())
                            .unwrap_or(Outcome::Unavailable)
                    }
                    Wakeup::Failed(_) => Outcome::Unavailable,
                };
                self.after_refresh(&session, &outcome, true);
            }
            (other, _) => self.state = other,
        }
    }
}

fn log_login_failure(failure: &Failure) {
    // Failure messages are written to carry no token, code or secret.
    host::log(
        LogLevel::Warn,
        &format!(
            "bff: login failed ({}): {}",
            failure.code(),
            failure.message()
        ),
    );
}
