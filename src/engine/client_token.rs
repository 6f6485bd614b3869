//! The filter's own client token in the engine: requests that need it, the grant this VM
//! sends when it won the shared claim, and its answer (the shared entry's rules are in
//! `crate::client_token`).

use super::paused::{Paused, Wait};
use super::{client_of_wire, Call, Engine, Host, Level};
use crate::access_log::decision;
use crate::client_token::{self, ClientToken};
use crate::metrics::Counter;
use crate::oidc::idp_request::IdpAnswer;
use crate::reply::{Failure, Reply};
use crate::route::{Forward, Settled};
use crate::secret::Secret;

/// The client token as a request finds it.
enum ClientTokenNow {
    Ready(Secret),
    /// Being fetched (or about to be): wait.
    Pending,
    /// The last fetch failed a moment ago: answer 503.
    Failed,
}

impl Engine {
    /// Forwards with the client token, or waits for it until `until_ms`.
    pub(super) fn with_client_token(
        &mut self,
        context_id: u32,
        headers: Vec<u8>,
        forward: Box<Forward>,
        until_ms: u64,
        host: &mut dyn Host,
    ) -> Option<Settled> {
        match self.client_token_now(host) {
            ClientTokenNow::Ready(value) => {
                let mut forward = forward.with_token(&self.config, &value);
                forward.counter = Some(Counter::ClientToken);
                forward.access_log.decision = decision::CLIENT_TOKEN;
                Some(Settled::Forward(forward))
            }
            ClientTokenNow::Failed => Some(Settled::Reply(Reply::failure(
                client_of_wire(&headers),
                &Failure::IdpUnavailable,
            ))),
            ClientTokenNow::Pending => {
                self.waiting.insert(
                    context_id,
                    Paused {
                        headers,
                        wait: Wait::ClientToken { forward, until_ms },
                    },
                );
                None
            }
        }
    }

    /// The client token to use now; claims the fetch for this VM when one is needed and no
    /// worker is at it.
    fn client_token_now(&mut self, host: &mut dyn Host) -> ClientTokenNow {
        let now = host.now_ms() / 1000;
        if let Some(t) = &self.client_token {
            if !t.due(now) {
                return ClientTokenNow::Ready(t.value.clone());
            }
        }
        let slot = client_token::read(host.store(), &self.ns);
        let usable = slot.usable(now).cloned();
        if usable.as_ref().map_or(true, |t| t.due(now))
            && !self.client_token_due
            && client_token::claim(host.store(), &self.ns, now)
        {
            self.client_token_due = true;
            host.nudge();
        }
        match usable {
            Some(t) => {
                let value = t.value.clone();
                self.client_token = Some(t);
                ClientTokenNow::Ready(value)
            }
            None if slot.recently_failed(now) => ClientTokenNow::Failed,
            None => ClientTokenNow::Pending,
        }
    }

    /// Sends the client-credentials grant this VM claimed (once the provider is known).
    pub(super) fn send_client_token_grant(&mut self, host: &mut dyn Host) {
        if !self.client_token_due {
            return;
        }
        let Some(provider) = self.meta.provider.as_ref() else {
            return;
        };
        self.client_token_due = false;
        let request = client_token::request(&self.config, provider);
        match self.dispatch_idp(&request, host) {
            Ok(token) => {
                self.calls.insert(token, Call::ClientToken);
            }
            Err(why) => {
                host.log(
                    Level::Error,
                    &format!("bff: cannot call the token endpoint for the client token: {why}"),
                );
                self.client_token_fetched(None, host);
            }
        }
    }

    /// The token endpoint answered the client-credentials grant.
    pub(super) fn client_token_answered(&mut self, answer: &IdpAnswer, host: &mut dyn Host) {
        let now = host.now_ms() / 1000;
        match client_token::parse(
            answer,
            now,
            self.config.session.refresh_leeway,
            self.config.dpop.is_some(),
        ) {
            Ok(token) => self.client_token_fetched(Some(token), host),
            Err(e) => {
                // TokenError carries no token or secret.
                host.log(
                    Level::Warn,
                    &format!("bff: the client-credentials grant failed: {e}"),
                );
                self.client_token_fetched(None, host);
            }
        }
    }

    /// Publishes a client-token fetch's result to every worker and serves this VM's waiters.
    fn client_token_fetched(&mut self, token: Option<ClientToken>, host: &mut dyn Host) {
        let now = host.now_ms() / 1000;
        client_token::publish(host.store(), &self.ns, token.as_ref(), now);
        host.count(match token {
            Some(_) => Counter::ClientTokensFetched,
            None => Counter::ClientTokenFailures,
        });
        if token.is_some() {
            self.client_token = token;
        }
        self.wake(None, None, host);
    }
}
