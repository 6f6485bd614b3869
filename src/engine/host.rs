//! What the engine asks of its host: the services that answer at once (the clock, random
//! bytes, shared data, sending an IdP call and getting its token) and the fire-and-forget ones
//! (count, log, nudge). The wasm shell implements it with proxy-wasm host calls; the tests with
//! a fake clock and an in-memory store.

use crate::metrics::Counter;
use crate::oidc::idp_request::IdpRequest;
use crate::random::Random;
use crate::store::SharedStore;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

pub trait Host {
    /// Unix time in milliseconds. Read only where a decision needs it (a request is decided
    /// by the last tick's time).
    fn now_ms(&self) -> u64;
    fn rng(&mut self) -> &mut dyn Random;
    /// Data shared by every worker of this Envoy process.
    fn store(&self) -> &dyn SharedStore;
    /// Sends `request` through `cluster`; the call token its answer will carry, or why it
    /// could not be sent. The answer comes back as [`super::Engine::on_call_answer`].
    fn dispatch(
        &mut self,
        cluster: &str,
        request: &IdpRequest,
        timeout: Duration,
    ) -> Result<u32, String>;
    fn count(&mut self, counter: Counter);
    /// Messages never carry a token, code or secret.
    fn log(&mut self, level: Level, message: &str);
    /// Asks for [`super::Engine::on_queue_nudged`] soon, from the root context (whose calls
    /// outlive any request). False when that failed: the next tick does it.
    fn nudge(&mut self) -> bool;
    /// The payload Envoy's `jwt_authn` verified for the current request, stored under `name`
    /// (`payload_in_metadata`), in the host's serialization; `None` when there is none or it
    /// cannot be read.
    fn jwt_payload(&mut self, name: &str) -> Option<Vec<u8>>;
}
