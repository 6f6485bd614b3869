//! Every store call leaves through [`Engine::dispatch_store`]: signed in when etcd's own
//! authentication is on (`store.username`). Each VM signs in at its first tick and again when
//! etcd says its token ran out; until then a store call fails at once, and each caller's
//! fallback holds (the deny list waits, a refresh goes on with its process's claim, a
//! back-channel logout answers 503 for the IdP to retry).

use super::{Call, Engine, Host};
use crate::etcd;
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};

/// A refused or failed sign-in is tried again after this long.
const SIGN_IN_RETRY_MS: u64 = 5_000;

const WAIT: &str = "store calls wait for a sign-in";

/// This VM's sign-in with the store.
#[derive(Default)]
pub(super) struct SignIn {
    /// The token etcd gave (a credential: never logged).
    token: Option<String>,
    in_flight: bool,
    /// No sign-in before this time (ms), after a failed one.
    not_before_ms: u64,
}

impl Engine {
    /// Sends a call to the store; the call token its answer will carry.
    pub(super) fn dispatch_store(
        &mut self,
        request: IdpRequest,
        host: &mut dyn Host,
    ) -> Result<u32, String> {
        let Some(store) = self.config.store.as_ref() else {
            return Err("no store is configured".to_string());
        };
        let (cluster, timeout) = (store.cluster.clone(), store.timeout);
        let request = match (&store.auth, &self.sign_in.token) {
            (None, _) => request,
            (Some(_), Some(token)) => etcd::signed_in(request, token),
            (Some(_), None) => {
                self.sign_in(host);
                return Err("not signed in to the store yet".to_string());
            }
        };
        host.dispatch(&cluster, &request, timeout)
            .map_err(|why| format!("cannot call cluster {cluster}: {why}"))
    }

    /// Whether store calls can go out now (signed in, or no sign-in needed).
    pub(super) fn store_signed_in(&self) -> bool {
        let wants_user = self.config.store.as_ref().is_some_and(|s| s.auth.is_some());
        !wants_user || self.sign_in.token.is_some()
    }

    /// Signs in when etcd wants a user and this VM has no token (at a tick, or when a call
    /// needs one).
    pub(super) fn sign_in(&mut self, host: &mut dyn Host) {
        let Some(store) = self.config.store.as_ref() else {
            return;
        };
        let Some(auth) = store.auth.as_ref() else {
            return;
        };
        let now_ms = host.now_ms();
        let s = &self.sign_in;
        if s.token.is_some() || s.in_flight || now_ms < s.not_before_ms {
            return;
        }
        let request = etcd::authenticate(&auth.username, auth.password.expose());
        match host.dispatch(&store.cluster, &request, store.timeout) {
            Ok(token) => {
                self.sign_in.in_flight = true;
                self.calls.insert(token, Call::StoreSignIn);
            }
            Err(why) => {
                self.sign_in.not_before_ms = now_ms + SIGN_IN_RETRY_MS;
                let why = format!("cannot call cluster {}: {why}", store.cluster);
                self.store_failed(&why, WAIT, host);
            }
        }
    }

    pub(super) fn sign_in_answered(&mut self, answer: &IdpAnswer, host: &mut dyn Host) {
        self.sign_in.in_flight = false;
        match etcd::read_token(answer) {
            Ok(token) => self.sign_in.token = Some(token),
            Err(e) => {
                self.sign_in.not_before_ms = host.now_ms() + SIGN_IN_RETRY_MS;
                self.store_failed(&format!("sign-in {e}"), WAIT, host);
            }
        }
    }

    /// A store call was answered 401: the token ran out (or etcd restarted without it).
    pub(super) fn signed_out(&mut self) {
        self.sign_in.token = None;
    }
}
