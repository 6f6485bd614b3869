//! The deny list across replicas, through the store (etcd): at most once per
//! `store.sync_interval_ms` one worker of each Envoy process writes the entries recorded here
//! (each under a lease that ends with the sessions it covers) and reads every replica's, then
//! shares the result with the other workers through shared data. A logout's entry is also
//! written at once. The request path never waits for the store: it reads the VM's copy.

use super::{Call, Engine, Host, Level};
use crate::etcd::{self, StoreError};
use crate::metrics::Counter;
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::session::deny::{self, DenyEntry};

/// Entries written per round, at most (the rest wait for the next).
const WRITES_PER_ROUND: usize = 64;
/// A store failure is logged at most this often (it is counted every time).
const LOG_EVERY_MS: u64 = 60_000;
/// What holds while the deny list's store calls fail: what waits for the store is written
/// when it answers again.
const DENY_LIST_HOLDS: &str = "the last deny list holds, logouts wait to be written";
/// Leases outlive the sessions they cover by this much (clock differences between replicas).
const LEASE_MARGIN_S: u64 = 60;

/// A store call in flight, and what it is for.
pub(super) struct StoreCall {
    what: What,
    /// A call that found no member is sent once more at once: the cluster's next member
    /// answers it (a dead member stays in the rotation until Envoy's health check sees it).
    retried: bool,
}

enum What {
    /// A lease for this entry; then its put.
    Lease(DenyEntry),
    Put {
        entry: DenyEntry,
        lease: u64,
    },
    /// Every replica's entries.
    Range,
}

impl Engine {
    /// The store's keys for the deny list of this configuration.
    fn deny_prefix(&self) -> Option<String> {
        let store = self.config.store.as_ref()?;
        Some(format!("{}{}/deny/", store.prefix, self.ns))
    }

    /// At a tick: this process's round, if it is due and this VM claims it.
    pub(super) fn sync_store(&mut self, host: &mut dyn Host) {
        let Some(store) = self.config.store.as_ref() else {
            return;
        };
        // Nothing to do until signed in (the tick signs in; what waits is kept).
        if !self.store_signed_in() {
            return;
        }
        // Shared data is read only when this VM's last look says a round may be due.
        let now_ms = host.now_ms();
        if now_ms < self.next_sync_ms {
            return;
        }
        match deny::sync_due(host.store(), &self.ns, now_ms, store.sync_interval_ms) {
            deny::Sync::NotBefore(at) => {
                self.next_sync_ms = at;
                return;
            }
            deny::Sync::Now => self.next_sync_ms = now_ms + store.sync_interval_ms,
        }
        self.write_pending(host);
        self.store_call(What::Range, false, host);
    }

    /// Writes what waits for the store: at a round, and at once after a logout (so that the
    /// other replicas' next rounds find it).
    pub(super) fn write_pending(&mut self, host: &mut dyn Host) {
        if self.config.store.is_none() || !self.store_signed_in() {
            return;
        }
        let now = host.now_ms() / 1000;
        for entry in deny::pending(host.store(), &self.ns, now)
            .into_iter()
            .take(WRITES_PER_ROUND)
        {
            self.store_call(What::Lease(entry), false, host);
        }
    }

    fn request(&self, what: &What, now: u64) -> Option<IdpRequest> {
        let prefix = self.deny_prefix()?;
        Some(match what {
            What::Lease(entry) => {
                etcd::lease_grant(entry.until.saturating_sub(now) + LEASE_MARGIN_S)
            }
            What::Put { entry, lease } => etcd::put(
                &format!("{prefix}{}", entry.store_key()),
                entry.encode().as_bytes(),
                *lease,
            ),
            What::Range => etcd::range_prefix(&prefix),
        })
    }

    fn store_call(&mut self, what: What, retried: bool, host: &mut dyn Host) {
        let Some(request) = self.request(&what, host.now_ms() / 1000) else {
            return;
        };
        match self.dispatch_store(request, host) {
            Ok(token) => {
                self.calls
                    .insert(token, Call::Store(StoreCall { what, retried }));
            }
            Err(why) => self.store_failed(&why, DENY_LIST_HOLDS, host),
        }
    }

    /// The store answered a call.
    pub(super) fn store_answered(
        &mut self,
        call: StoreCall,
        answer: &IdpAnswer,
        host: &mut dyn Host,
    ) {
        let now = host.now_ms() / 1000;
        let result = match call.what {
            What::Lease(entry) => match etcd::read_lease(answer) {
                Ok(lease) => {
                    self.store_call(What::Put { entry, lease }, false, host);
                    Ok(())
                }
                Err(e) => Err((e, What::Lease(entry))),
            },
            What::Put { entry, lease } => match etcd::read_done(answer) {
                Ok(()) => {
                    deny::written(host.store(), &self.ns, &entry, now);
                    Ok(())
                }
                Err(e) => Err((e, What::Put { entry, lease })),
            },
            What::Range => match etcd::read_range(answer) {
                Ok(kvs) => {
                    let entries: Vec<DenyEntry> = kvs
                        .iter()
                        .filter_map(|(_, v)| DenyEntry::decode(std::str::from_utf8(v).ok()?))
                        .collect();
                    deny::merge_from_store(host.store(), &self.ns, &entries, now);
                    self.load_deny_list(host);
                    Ok(())
                }
                Err(e) => Err((e, What::Range)),
            },
        };
        let Err((e, what)) = result else {
            return;
        };
        if e == StoreError::Unavailable && !call.retried {
            self.store_call(what, true, host);
            return;
        }
        self.store_failed(&e.to_string(), DENY_LIST_HOLDS, host);
    }

    /// Counted every time, logged at most once a minute, with what holds `meanwhile`.
    pub(super) fn store_failed(&mut self, why: &str, meanwhile: &str, host: &mut dyn Host) {
        host.count(Counter::StoreFailures);
        let now_ms = host.now_ms();
        if self.store_logged_ms == 0 || now_ms >= self.store_logged_ms + LOG_EVERY_MS {
            self.store_logged_ms = now_ms;
            host.log(Level::Warn, &format!("bff: the store: {why}; {meanwhile}"));
        }
    }
}
