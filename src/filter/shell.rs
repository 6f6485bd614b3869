//! What the root context and every request context share: the VM's engine, and the carrying
//! out of what it decides. No decision is made here.

use super::host::{self, HostRandom, HostStore, WasmHost};
use crate::access_log::{self, AccessLog};
use crate::engine::{Engine, Resume};
use crate::oidc::idp_request::IdpAnswer;
use crate::reply::Reply;
use crate::route::{Forward, Settled, StepUpWatch, UpstreamCookie};
use std::cell::RefCell;
use std::mem;

/// What to do when a forwarded request's response headers come.
#[derive(Default)]
pub struct ResponseWork {
    /// `Set-Cookie` values (a re-written session).
    pub set_cookies: Vec<String>,
    /// Check the response for the API's step-up challenge.
    pub step_up_watch: Option<StepUpWatch>,
}

/// An event that arrived while the engine was busy (Envoy called back into the VM while the
/// engine made a host call): handed in as soon as it is free.
enum Deferred {
    Answer(u32, IdpAnswer),
    Gone(u32),
}

pub struct Shell {
    engine: RefCell<Engine>,
    counters: Vec<Option<u32>>,
    queue: Option<u32>,
    deferred: RefCell<Vec<Deferred>>,
    /// What a forwarded request's response needs, by context id; outside the engine because
    /// Envoy may ask for it while a resumed request is being carried out.
    responses: RefCell<Vec<(u32, ResponseWork)>>,
}

impl Shell {
    pub fn new(engine: Engine, counters: Vec<Option<u32>>, queue: Option<u32>) -> Shell {
        Shell {
            engine: RefCell::new(engine),
            counters,
            queue,
            deferred: RefCell::new(Vec::new()),
            responses: RefCell::new(Vec::new()),
        }
    }

    /// Runs `f` on the engine, then carries out the resumes it left; `None` when the engine
    /// is busy (a re-entrant call from Envoy). `current`: the request whose callback this is,
    /// made the effective context again after other requests were resumed.
    pub fn run<R>(
        &self,
        current: Option<u32>,
        f: impl FnOnce(&mut Engine, &mut WasmHost) -> R,
    ) -> Option<R> {
        let (result, resumes) = {
            let mut engine = self.engine.try_borrow_mut().ok()?;
            let mut host = self.host();
            let result = f(&mut engine, &mut host);
            (result, engine.take_resumes())
        };
        let mut switched = !resumes.is_empty();
        self.carry_out_resumes(resumes);
        switched |= self.run_deferred();
        if let (true, Some(current)) = (switched, current) {
            host::set_effective_context(current);
        }
        Some(result)
    }

    fn host(&self) -> WasmHost<'_> {
        WasmHost {
            counters: &self.counters,
            queue: self.queue,
            rng: HostRandom,
            store: HostStore,
        }
    }

    /// An IdP answer, in whichever context it arrived.
    pub fn call_answered(&self, token: u32, answer: IdpAnswer) {
        self.run_or_defer(Deferred::Answer(token, answer));
    }

    /// A request that had paused is gone.
    pub fn stream_gone(&self, context_id: u32) {
        self.run_or_defer(Deferred::Gone(context_id));
    }

    fn run_or_defer(&self, event: Deferred) {
        let mut event = Some(event);
        let ran = self.run(None, |engine, host| match event.take() {
            Some(Deferred::Answer(token, answer)) => engine.on_call_answer(token, answer, host),
            Some(Deferred::Gone(id)) => engine.on_stream_gone(id),
            None => {}
        });
        if ran.is_none() {
            if let (Some(event), Ok(mut deferred)) = (event, self.deferred.try_borrow_mut()) {
                deferred.push(event);
            }
        }
    }

    /// Hands in what was deferred; true if there was anything.
    fn run_deferred(&self) -> bool {
        let events = match self.deferred.try_borrow_mut() {
            Ok(mut deferred) if !deferred.is_empty() => mem::take(&mut *deferred),
            _ => return false,
        };
        for event in events {
            self.run_or_defer(event);
        }
        true
    }

    /// Carries out a settled request in the current context; true when it goes upstream.
    pub fn apply(&self, context_id: u32, settled: Settled) -> bool {
        if let Some(log) = settled.access_log() {
            record(log);
        }
        match settled {
            Settled::PassThrough => true,
            Settled::Forward(forward) => {
                self.apply_forward(context_id, forward);
                true
            }
            Settled::Reply(reply) => {
                host::send_reply(&reply);
                false
            }
        }
    }

    fn apply_forward(&self, context_id: u32, forward: Forward) {
        if let Some((name, value)) = &forward.token_header {
            host::set_request_header(name, Some(value.as_bytes()));
        }
        match &forward.cookie {
            UpstreamCookie::Untouched => {}
            UpstreamCookie::Set(kept) => host::set_request_header("cookie", Some(kept)),
            UpstreamCookie::Removed => host::set_request_header("cookie", None),
        }
        for (name, value) in &forward.extra {
            host::set_request_header(name, value.as_deref().map(str::as_bytes));
        }
        if !forward.set_cookies.is_empty() || forward.step_up_watch.is_some() {
            if let Ok(mut responses) = self.responses.try_borrow_mut() {
                let work = ResponseWork {
                    set_cookies: forward.set_cookies,
                    step_up_watch: forward.step_up_watch,
                };
                responses.push((context_id, work));
            }
        }
    }

    fn carry_out_resumes(&self, resumes: Vec<Resume>) {
        for Resume {
            context_id,
            settled,
        } in resumes
        {
            // The request may have gone meanwhile.
            if host::set_effective_context(context_id) && self.apply(context_id, settled) {
                host::resume_request();
            }
        }
    }

    /// Forgets a request's response work (it ended before its response).
    pub fn drop_response_work(&self, context_id: u32) {
        if let Ok(mut responses) = self.responses.try_borrow_mut() {
            if !responses.is_empty() {
                responses.retain(|(id, _)| *id != context_id);
            }
        }
    }

    /// What this request's response needs, once.
    pub fn take_response_work(&self, context_id: u32) -> Option<ResponseWork> {
        let mut responses = self.responses.try_borrow_mut().ok()?;
        if responses.is_empty() {
            return None;
        }
        let at = responses.iter().position(|(id, _)| *id == context_id)?;
        Some(responses.swap_remove(at).1)
    }
}

/// Writes what the access log is to say of the current request into its filter state (the
/// engine left it empty unless `access_log` is on).
pub fn record(log: &AccessLog) {
    if let Some(value) = log.value() {
        host::set_filter_state(access_log::KEY, &value);
    }
}

/// Answers the current request with the engine's `reply`, its access-log entry written first
/// (the shell's own answers, `engine_busy` and `unconfigured`, write none: no configuration
/// says to).
pub fn send_reply(reply: &Reply) {
    record(&reply.access_log);
    host::send_reply(reply);
}
