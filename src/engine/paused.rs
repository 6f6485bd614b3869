//! The requests a VM holds paused, and what each waits for.

use crate::login::PendingLogin;
use crate::oidc::idp_request::IdpAnswer;
use crate::refresh::{Outcome, RefreshId};
use crate::reply::{Failure, Reply};
use crate::route::Forward;
use crate::session::Session;

/// A paused request: its headers as the host gave them (to decide again, or to shape an
/// answer), and what it waits for.
pub struct Paused<W> {
    pub headers: Vec<u8>,
    pub wait: W,
}

/// What a request waits for that arrives for everyone (or not in time).
pub enum Wait {
    /// The provider's metadata, until `until_ms`.
    Provider { until_ms: u64 },
    /// Signing keys fetched after `newer_than`: the ID token in `answer` named a `kid` we
    /// did not have. Until `until_ms`, then the login finishes with the keys there are.
    Keys {
        newer_than: u64,
        until_ms: u64,
        pending: PendingLogin,
        answer: IdpAnswer,
    },
    /// The outcome of a refresh of this session, made by this VM or another worker.
    Refresh {
        id: RefreshId,
        session: Session,
        until_ms: u64,
    },
    /// The filter's own client token, fetched by this VM or another worker; then `forward`
    /// with it. Looked for at every wake-up (a shared-data read), until `until_ms`.
    ClientToken {
        forward: Box<Forward>,
        until_ms: u64,
    },
}

/// A request's own IdP call, which only its answer ends (Envoy's timeout bounds it).
pub enum OwnCall {
    /// The code exchange at the token endpoint.
    CodeExchange { token: u32, pending: PendingLogin },
    /// The revocation at logout; then `reply`.
    Revocation { token: u32, reply: Reply },
    /// A login's pushed authorization request (RFC 9126).
    Push {
        token: u32,
        login: Box<crate::login::PushedLogin>,
    },
    /// A back-channel logout's store call (with a store configured).
    Backchannel {
        token: u32,
        step: super::backchannel::Step,
    },
}

impl OwnCall {
    /// The call was sent once more (a DPoP nonce): its answer comes with `token`.
    pub fn set_token(&mut self, new: u32) {
        match self {
            OwnCall::CodeExchange { token, .. }
            | OwnCall::Revocation { token, .. }
            | OwnCall::Push { token, .. }
            | OwnCall::Backchannel { token, .. } => *token = new,
        }
    }

    pub fn token(&self) -> u32 {
        match self {
            OwnCall::CodeExchange { token, .. }
            | OwnCall::Revocation { token, .. }
            | OwnCall::Push { token, .. }
            | OwnCall::Backchannel { token, .. } => *token,
        }
    }
}

/// What a waiting request is told when it is resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// What it waited for is here (or the keys were re-read, or will not be): go on.
    Ready,
    /// It will not come in time.
    Failed(Failure),
    /// The refresh it waited for, made by this VM: its outcome, first hand.
    Refreshed(Outcome),
}

/// What the VM knows when it looks at its waiters.
pub struct Known<'a> {
    pub has_provider: bool,
    pub keys_at: u64,
    pub keys_wanted: bool,
    /// The provider's fetch just failed: waiters for it are told so.
    pub provider_failed: Option<&'a Failure>,
    /// A refresh this VM just finished.
    pub refreshed: Option<(&'a RefreshId, &'a Outcome)>,
    /// Whether another worker published the outcome of this refresh.
    pub published: &'a dyn Fn(&RefreshId) -> bool,
    pub now_ms: u64,
}

impl Wait {
    /// Whether to resume now, and with what; `None` keeps waiting.
    pub fn wakeup(&self, k: &Known) -> Option<Wakeup> {
        let (met, until_ms) = match self {
            Wait::Provider { until_ms } => {
                if k.has_provider {
                    return Some(Wakeup::Ready);
                }
                if let Some(failure) = k.provider_failed {
                    return Some(Wakeup::Failed(failure.clone()));
                }
                (false, *until_ms)
            }
            Wait::Keys {
                newer_than,
                until_ms,
                ..
            } => (k.keys_at > *newer_than || !k.keys_wanted, *until_ms),
            Wait::Refresh { id, until_ms, .. } => {
                if let Some((done, outcome)) = k.refreshed {
                    if done == id {
                        return Some(Wakeup::Refreshed(outcome.clone()));
                    }
                }
                ((k.published)(id), *until_ms)
            }
            // Polled: the engine looks again (and fetches if it may) at every wake-up.
            Wait::ClientToken { until_ms, .. } => (k.now_ms < *until_ms, *until_ms),
        };
        if met {
            return Some(Wakeup::Ready);
        }
        (k.now_ms >= until_ms).then_some(match self {
            // Late keys: finish with the ones there are.
            Wait::Keys { .. } => Wakeup::Ready,
            _ => Wakeup::Failed(Failure::IdpUnavailable),
        })
    }
}
