//! Calls to the IdP leave through [`Engine::dispatch_idp`]: with the client's credentials
//! (signed as they leave: an assertion must be fresh) and, with DPoP, a proof carrying the
//! IdP's latest nonce. An answer asking for a nonce (`use_dpop_nonce`, RFC 9449 §8) sends the
//! call once more with it, under a new token its owner is moved to. Forwarded requests get
//! their proof as they go on ([`Engine::signed`]).

use super::{Call, Engine, Host};
use crate::oidc::dpop;
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::reply::{Client, Failure, Reply};
use crate::route::Settled;

/// A call sent with a DPoP proof, kept until its answer in case the IdP wants a nonce.
pub(super) struct Sent {
    request: IdpRequest,
    /// Sent again once already: a second challenge is the answer.
    again: bool,
}

impl Engine {
    /// Sends a call to the IdP; the token its answer will carry.
    pub(super) fn dispatch_idp(
        &mut self,
        request: &IdpRequest,
        host: &mut dyn Host,
    ) -> Result<u32, String> {
        self.send_idp(request, false, host)
    }

    fn send_idp(
        &mut self,
        request: &IdpRequest,
        again: bool,
        host: &mut dyn Host,
    ) -> Result<u32, String> {
        let config = &self.config;
        if !request.authenticate {
            return host.dispatch(&config.idp_cluster, request, config.idp_timeout);
        }
        let token_endpoint = match &self.meta.provider {
            Some(provider) => provider.token_endpoint.to_string(),
            None => String::new(),
        };
        let mut signed = request.clone();
        let now = host.now_ms() / 1000;
        let unsigned = |_| "cannot sign for the IdP (no random bytes)".to_string();
        config
            .client_auth
            .authenticate(
                &mut signed,
                &config.client_id,
                &config.issuer,
                &token_endpoint,
                now,
                host.rng(),
            )
            .map_err(unsigned)?;
        if let Some(key) = &config.dpop {
            let htu = dpop::htu_of(&request.url);
            let nonce = self.dpop_nonce.as_deref();
            let proof = dpop::proof(key, request.method, htu, now, nonce, None, host.rng())
                .map_err(unsigned)?;
            signed.headers.push((dpop::HEADER, proof));
        }
        // With mutual TLS, the cluster whose TLS presents the client certificate.
        let cluster = config
            .idp_mtls_cluster
            .as_ref()
            .unwrap_or(&config.idp_cluster);
        let token = host.dispatch(cluster, &signed, config.idp_timeout)?;
        if config.dpop.is_some() {
            let request = request.clone();
            self.with_proof.insert(token, Sent { request, again });
        }
        Ok(token)
    }

    /// Keeps the nonce an answer brings; sends the call once more when the IdP asked for it.
    /// True when the answer was taken that way (its owner now waits for the new call).
    pub(super) fn sent_again_with_nonce(
        &mut self,
        token: u32,
        answer: &IdpAnswer,
        host: &mut dyn Host,
    ) -> bool {
        let fresh = answer.dpop_nonce.as_deref().and_then(dpop::usable_nonce);
        if let Some(nonce) = fresh {
            self.dpop_nonce = Some(nonce.to_string());
        }
        let Some(sent) = self.with_proof.remove(&token) else {
            return false;
        };
        if sent.again || fresh.is_none() || !dpop::asks_for_nonce(answer.status, &answer.body) {
            return false;
        }
        let Ok(new) = self.send_idp(&sent.request, true, host) else {
            return false;
        };
        // The owner waits for the new call.
        if let Some(call) = self.calls.remove(&token) {
            if let Call::Stream(context_id) = &call {
                if let Some(paused) = self.calling.get_mut(context_id) {
                    paused.wait.set_token(new);
                }
            }
            self.calls.insert(new, call);
        }
        true
    }

    /// A forward that needs a DPoP proof gets it as it goes on (signed now, for this request).
    pub(super) fn signed(&self, settled: Settled, host: &mut dyn Host) -> Settled {
        let Settled::Forward(mut forward) = settled else {
            return settled;
        };
        let (Some(need), Some(key)) = (forward.dpop.take(), self.config.dpop.as_ref()) else {
            return Settled::Forward(forward);
        };
        let now = host.now_ms() / 1000;
        let token = Some(&need.token);
        match dpop::proof(key, &need.htm, &need.htu, now, None, token, host.rng()) {
            Ok(proof) => {
                forward.extra.push((dpop::HEADER.to_string(), Some(proof)));
                Settled::Forward(forward)
            }
            Err(_) => Settled::Reply(Reply::failure(
                Client::Api,
                &Failure::Internal("could not sign a DPoP proof"),
            )),
        }
    }
}
