//! OpenID Connect Back-Channel Logout 1.0 in the engine: the IdP posts a logout token; the
//! sessions it names go on the deny list (the process's, and with a store every replica's)
//! before the answer, so a `200` means it is recorded and a `503` that the IdP may retry.

use super::paused::{OwnCall, Paused};
use super::{Engine, Handled, Host, Level};
use crate::access_log::decision;
use crate::etcd::{self, Created};
use crate::metrics::Counter;
use crate::oidc::idp_request::IdpAnswer;
use crate::oidc::jwks::Alg;
use crate::oidc::logout_token::{self, LogoutOrder};
use crate::reply::{Client, Failure, Reply};
use crate::route::Settled;
use crate::session::deny::{self, DenyEntry, Ended};
use serde_json::json;

/// The largest logout request read (a logout token is a few KB).
pub const MAX_BODY: usize = 64 * 1024;

/// Where a back-channel logout with a store is.
pub enum Step {
    /// A lease for the entries and the `jti`.
    Lease(Box<Recorded>),
    /// The transaction: the `jti` created only if new, with the entries.
    Txn(Box<Recorded>),
}

/// A validated logout and what it ends.
pub struct Recorded {
    order: LogoutOrder,
    entries: Vec<DenyEntry>,
}

/// §2.8: `200` with `Cache-Control: no-store`; `400` with an OAuth-style error otherwise.
fn done() -> Settled {
    Settled::Reply(
        Reply::json(200, &json!({}))
            .counting(Counter::BackchannelLogouts)
            .logged(decision::BACKCHANNEL_LOGOUT),
    )
}

fn refused(why: &str) -> Settled {
    Settled::Reply(
        Reply::json(
            400,
            &json!({"error": "invalid_request", "error_description": why}),
        )
        .counting(Counter::BackchannelRefused)
        .logged(decision::BACKCHANNEL_REFUSED),
    )
}

fn unavailable() -> Settled {
    Settled::Reply(Reply::failure(Client::Api, &Failure::IdpUnavailable))
}

impl Engine {
    /// The body of a request that asked for it ([`Handled::ReadBody`]).
    pub fn on_request_body(
        &mut self,
        context_id: u32,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Handled {
        if !self.reading.remove(&context_id) {
            return Handled::Settled(Settled::PassThrough);
        }
        match self.backchannel_logout(context_id, body, host) {
            Some(settled) => {
                super::count(host, &settled);
                Handled::Settled(self.logged(settled))
            }
            None => Handled::Paused,
        }
    }

    fn backchannel_logout(
        &mut self,
        context_id: u32,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Option<Settled> {
        if body.len() > MAX_BODY {
            return Some(refused("the request is too large"));
        }
        let mut tokens = form_urlencoded::parse(body).filter(|(k, _)| k == "logout_token");
        let (Some((_, token)), None) = (tokens.next(), tokens.next()) else {
            return Some(refused("the request must carry one logout_token"));
        };
        let (Some(provider), Some(keys)) = (self.meta.provider.as_ref(), self.meta.keys.as_ref())
        else {
            self.fetch_if_due(host);
            return Some(unavailable());
        };
        let now = host.now_ms() / 1000;
        let expected = logout_token::Expected {
            issuer: &self.config.issuer,
            client_id: &self.config.client_id,
            now,
            leeway: crate::oidc::id_token::CLOCK_LEEWAY_S,
        };
        let allowed = Alg::supported_among(&provider.signing_algs);
        let order = match logout_token::validate(&token, keys, &allowed, &expected) {
            Ok(order) => order,
            Err(e) if e.is_unknown_key() => {
                // Keys rotated: read them again; the IdP's retry finds them.
                if self.meta.want_fresh_keys(&self.config, now).is_some() {
                    self.fetch_if_due(host);
                }
                return Some(unavailable());
            }
            Err(e) => {
                host.log(
                    Level::Info,
                    &format!("bff: back-channel logout refused: {e}"),
                );
                return Some(refused(&e.to_string()));
            }
        };
        let until = now.saturating_add(self.config.session.max_lifetime);
        // §2.7: with a `sid`, that IdP session; with only a `sub`, every session of the user.
        let ended = match (&order.sid, &order.sub) {
            (Some(sid), _) => Ended::IdpSession(sid.clone()),
            (None, Some(sub)) => Ended::Subject {
                sub: sub.clone(),
                before: order.issued_at.saturating_add(1),
            },
            (None, None) => return Some(refused("the logout token has neither sid nor sub")),
        };
        let entries = vec![DenyEntry { ended, until }];
        if self.config.store.is_none() {
            // Recorded first, so that a host refusing to record leaves the jti unused for the
            // IdP's retry; recording a replay again changes nothing.
            let recorded = self.record_here(&entries, host);
            let ok = matches!(&recorded, Settled::Reply(r) if r.status == 200);
            let jti = &order.jti;
            if ok && !deny::first_sight(host.store(), &self.ns, jti, order.remember_until, now) {
                return Some(refused("this logout token was already received (jti)"));
            }
            return Some(recorded);
        }
        let recorded = Box::new(Recorded { order, entries });
        let ttl = until.saturating_sub(now) + 60;
        self.backchannel_call(
            context_id,
            etcd::lease_grant(ttl),
            Step::Lease(recorded),
            host,
        )
    }

    /// Records the entries in this process's list (this VM at once, the others at their tick).
    fn record_here(&mut self, entries: &[DenyEntry], host: &mut dyn Host) -> Settled {
        let now = host.now_ms() / 1000;
        if !deny::record(host.store(), &self.ns, entries, now) {
            return unavailable();
        }
        for e in entries {
            self.sessions.denied.add(e);
        }
        done()
    }

    fn backchannel_call(
        &mut self,
        context_id: u32,
        request: crate::oidc::idp_request::IdpRequest,
        step: Step,
        host: &mut dyn Host,
    ) -> Option<Settled> {
        match self.dispatch_store(request, host) {
            Ok(token) => {
                self.calls.insert(token, super::Call::Stream(context_id));
                self.calling.insert(
                    context_id,
                    Paused {
                        headers: Vec::new(),
                        wait: OwnCall::Backchannel { token, step },
                    },
                );
                None
            }
            Err(_) => {
                host.count(Counter::StoreFailures);
                Some(unavailable())
            }
        }
    }

    /// The store answered a back-channel logout's call.
    pub(super) fn backchannel_answered(
        &mut self,
        context_id: u32,
        step: Step,
        answer: &IdpAnswer,
        host: &mut dyn Host,
    ) -> Option<Settled> {
        let prefix = self
            .config
            .store
            .as_ref()
            .map(|s| format!("{}{}/", s.prefix, self.ns))?;
        match step {
            Step::Lease(recorded) => {
                let Ok(lease) = etcd::read_lease(answer) else {
                    host.count(Counter::StoreFailures);
                    return Some(unavailable());
                };
                let jti_key = format!("{prefix}jti/{}", recorded.order.jti);
                let others: Vec<(String, Vec<u8>)> = recorded
                    .entries
                    .iter()
                    .map(|e| {
                        (
                            format!("{prefix}deny/{}", e.store_key()),
                            e.encode().into_bytes(),
                        )
                    })
                    .collect();
                let txn = etcd::create_all_if_absent(&jti_key, b"1", &others, lease);
                self.backchannel_call(context_id, txn, Step::Txn(recorded), host)
            }
            Step::Txn(recorded) => match etcd::read_created(answer) {
                Ok(Created::Created) => Some(self.record_here(&recorded.entries, host)),
                Ok(Created::Exists(_)) => {
                    Some(refused("this logout token was already received (jti)"))
                }
                Err(_) => {
                    host.count(Counter::StoreFailures);
                    Some(unavailable())
                }
            },
        }
    }
}
