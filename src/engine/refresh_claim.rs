//! One refresh per session across replicas, through the store ([`crate::refresh::in_store`]).
//! The VM that won its process's claim (shared data) claims the refresh in the store too
//! before it calls the IdP:
//!
//! - a lease, then a transaction that creates the key only if it is absent;
//! - created: this replica refreshes, then puts the outcome on the key (under a lease as long
//!   as the outcome stands);
//! - found claimed: read the key every [`READ_EVERY_MS`] until the outcome is there, or the key
//!   is gone (its winner died and the lease ran out: claim again), or time is up (the waiting
//!   requests go on with the current token, as when the IdP cannot be reached).
//!
//! A store that cannot be reached, or whose claim cannot be read (garbage, or a value that does
//! not open), does not hold a refresh up: it goes on with the process's claim alone, as without
//! a store. Every store call is sent from the root context (the tick, the nudge, an answer).

use super::{Call, Engine, Host};
use crate::etcd::{self, Created, StoreError};
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::refresh::in_store::{self, Entry};
use crate::refresh::{Outcome, RefreshId};
use crate::route::RefreshNeeded;

/// How often a replica reads the claim of another that is refreshing.
pub const READ_EVERY_MS: u64 = 200;
/// Claims made for one refresh at most (a key that keeps vanishing is a store to stop trusting).
const MAX_CLAIMS: u8 = 3;

const ALONE: &str = "refreshes go on with each process's claim alone";
const WAIT: &str = "a refresh another replica claimed is read again";

/// A refresh on its way through the store.
pub(super) struct Claiming {
    needed: Box<RefreshNeeded>,
    step: Step,
    /// A call that found no member is sent once more at once (the cluster's next member).
    retried: bool,
    /// Readers give up at this time (ms).
    give_up_ms: u64,
    /// A reader's next read (ms).
    read_at_ms: u64,
    /// Claims made so far (the first, and one after each vanished key).
    claims: u8,
}

enum Step {
    Lease,
    Create { lease: u64 },
    Read,
}

/// A refresh's outcome on its way into the store: its lease, then its put.
pub(super) struct Publishing {
    key: String,
    value: Vec<u8>,
    ttl_s: u64,
    lease: Option<u64>,
    retried: bool,
}

impl Engine {
    /// A refresh this VM won in its process: claimed in the store first when there is one.
    pub(super) fn start_refresh(&mut self, needed: RefreshNeeded, host: &mut dyn Host) {
        if self.config.store.is_none() {
            return self.send_refresh(needed, false, host);
        }
        let claiming = Claiming {
            needed: Box::new(needed),
            step: Step::Lease,
            retried: false,
            give_up_ms: host.now_ms().saturating_add(self.store_wait_ms()),
            read_at_ms: 0,
            claims: 1,
        };
        self.claim_call(claiming, host);
    }

    /// How long a refresh may wait for another replica's claim: for its lease to run out,
    /// then for a claim and a refresh of our own.
    pub(super) fn store_wait_ms(&self) -> u64 {
        let Some(store) = self.config.store.as_ref() else {
            return 0;
        };
        let ttl_s = in_store::claim_ttl_s(self.config.idp_timeout, store.timeout);
        ttl_s
            .saturating_mul(1000)
            .saturating_add(super::millis(store.timeout).saturating_mul(2))
            .saturating_add(super::millis(self.config.idp_timeout))
    }

    fn store_key(&self, id: &RefreshId) -> Option<String> {
        let store = self.config.store.as_ref()?;
        Some(in_store::key(&store.prefix, &self.ns, id))
    }

    fn claim_request(&self, claiming: &Claiming, host: &mut dyn Host) -> Option<IdpRequest> {
        let store = self.config.store.as_ref()?;
        let key = self.store_key(&claiming.needed.id)?;
        Some(match claiming.step {
            Step::Lease => etcd::lease_grant(in_store::claim_ttl_s(
                self.config.idp_timeout,
                store.timeout,
            )),
            Step::Create { lease } => {
                let claimed = in_store::seal(
                    &self.config.keys,
                    &claiming.needed.id,
                    &Entry::Claimed,
                    host.rng(),
                )?;
                etcd::create_if_absent(&key, &claimed, lease)
            }
            Step::Read => etcd::get(&key),
        })
    }

    fn claim_call(&mut self, claiming: Claiming, host: &mut dyn Host) {
        let Some(request) = self.claim_request(&claiming, host) else {
            // No store, or no random bytes to seal the claim with.
            return self.send_refresh(*claiming.needed, false, host);
        };
        match self.dispatch_store(request, host) {
            Ok(token) => {
                self.calls
                    .insert(token, Call::StoreClaim(Box::new(claiming)));
            }
            Err(why) => self.claim_failed(claiming, &why, host),
        }
    }

    /// The store answered a claim's call.
    pub(super) fn claim_answered(
        &mut self,
        mut claiming: Claiming,
        answer: &IdpAnswer,
        host: &mut dyn Host,
    ) {
        let failed = match claiming.step {
            Step::Lease => match etcd::read_lease(answer) {
                Ok(lease) => {
                    claiming.step = Step::Create { lease };
                    claiming.retried = false;
                    return self.claim_call(claiming, host);
                }
                Err(e) => e,
            },
            Step::Create { .. } => match etcd::read_created(answer) {
                Ok(Created::Created) => return self.send_refresh(*claiming.needed, true, host),
                // Gone between the compare and the read (its lease ran out): claim again.
                Ok(Created::Exists(value)) if value.is_empty() => {
                    return self.claim_again(claiming, host)
                }
                Ok(Created::Exists(value)) => return self.found(claiming, &value, host),
                Err(e) => e,
            },
            Step::Read => match etcd::read_range(answer) {
                Ok(kvs) => match kvs.into_iter().next() {
                    Some((_, value)) => return self.found(claiming, &value, host),
                    None => return self.claim_again(claiming, host),
                },
                Err(e) => e,
            },
        };
        if failed == StoreError::Unavailable && !claiming.retried {
            claiming.retried = true;
            return self.claim_call(claiming, host);
        }
        self.claim_failed(claiming, &failed.to_string(), host);
    }

    /// What the store holds for the refresh: its outcome (take it), another replica's claim
    /// (read again later), or a value that does not open (go on alone).
    fn found(&mut self, claiming: Claiming, value: &[u8], host: &mut dyn Host) {
        match in_store::open(&self.config.keys, &claiming.needed.id, value) {
            Some(Entry::Done(outcome)) => self.refreshed(&claiming.needed, outcome, host),
            Some(Entry::Claimed) => self.read_later(claiming, host),
            None => {
                self.store_failed(
                    "a refresh claim that does not open (forged, or sealed with another cookie key)",
                    ALONE,
                    host,
                );
                self.send_refresh(*claiming.needed, false, host);
            }
        }
    }

    /// A call that failed for good: a claim goes on alone; a reader reads again later (the
    /// replica that claimed is at work, and a second refresh would spend its token).
    fn claim_failed(&mut self, claiming: Claiming, why: &str, host: &mut dyn Host) {
        match claiming.step {
            Step::Read => {
                self.store_failed(why, WAIT, host);
                self.read_later(claiming, host);
            }
            Step::Lease | Step::Create { .. } => {
                self.store_failed(why, ALONE, host);
                self.send_refresh(*claiming.needed, false, host);
            }
        }
    }

    fn claim_again(&mut self, mut claiming: Claiming, host: &mut dyn Host) {
        if host.now_ms() >= claiming.give_up_ms {
            return self.refreshed(&claiming.needed, Outcome::Unavailable, host);
        }
        if claiming.claims >= MAX_CLAIMS {
            self.store_failed("a refresh claim that keeps vanishing", ALONE, host);
            return self.send_refresh(*claiming.needed, false, host);
        }
        claiming.claims += 1;
        claiming.step = Step::Lease;
        claiming.retried = false;
        self.claim_call(claiming, host);
    }

    fn read_later(&mut self, mut claiming: Claiming, host: &mut dyn Host) {
        let at = host.now_ms().saturating_add(READ_EVERY_MS);
        if at >= claiming.give_up_ms {
            // The waiting requests go on with the current token while it lasts.
            return self.refreshed(&claiming.needed, Outcome::Unavailable, host);
        }
        claiming.step = Step::Read;
        claiming.retried = false;
        claiming.read_at_ms = at;
        self.claims_read_later.push(claiming);
    }

    /// At a tick: read the claims whose time has come.
    pub(super) fn read_claims(&mut self, host: &mut dyn Host) {
        if self.claims_read_later.is_empty() {
            return;
        }
        let now_ms = host.now_ms();
        let (due, later) = std::mem::take(&mut self.claims_read_later)
            .into_iter()
            .partition(|c| c.read_at_ms <= now_ms);
        self.claims_read_later = later;
        for claiming in due {
            self.claim_call(claiming, host);
        }
    }

    /// The winner's outcome, for the other replicas (and this one's later requests).
    pub(super) fn publish_in_store(
        &mut self,
        id: &RefreshId,
        outcome: &Outcome,
        host: &mut dyn Host,
    ) {
        let Some(key) = self.store_key(id) else {
            return;
        };
        let entry = Entry::Done(outcome.clone());
        let Some(value) = in_store::seal(&self.config.keys, id, &entry, host.rng()) else {
            return;
        };
        let publishing = Publishing {
            key,
            value,
            ttl_s: outcome.lifetime(host.now_ms() / 1000),
            lease: None,
            retried: false,
        };
        self.publish_call(publishing, host);
    }

    fn publish_call(&mut self, publishing: Publishing, host: &mut dyn Host) {
        let request = match publishing.lease {
            None => etcd::lease_grant(publishing.ttl_s),
            Some(lease) => etcd::put(&publishing.key, &publishing.value, lease),
        };
        match self.dispatch_store(request, host) {
            Ok(token) => {
                self.calls
                    .insert(token, Call::StorePublish(Box::new(publishing)));
            }
            Err(why) => self.store_failed(&why, UNPUBLISHED, host),
        }
    }

    /// The store answered a publication's call.
    pub(super) fn publish_answered(
        &mut self,
        mut publishing: Publishing,
        answer: &IdpAnswer,
        host: &mut dyn Host,
    ) {
        let result = match publishing.lease {
            None => etcd::read_lease(answer).map(Some),
            Some(_) => etcd::read_done(answer).map(|()| None),
        };
        match result {
            Ok(Some(lease)) => {
                publishing.lease = Some(lease);
                publishing.retried = false;
                self.publish_call(publishing, host);
            }
            Ok(None) => {}
            Err(StoreError::Unavailable) if !publishing.retried => {
                publishing.retried = true;
                self.publish_call(publishing, host);
            }
            Err(e) => self.store_failed(&e.to_string(), UNPUBLISHED, host),
        }
    }
}

/// What follows a publication that failed.
const UNPUBLISHED: &str =
    "a refresh's outcome is not in the store; other replicas refresh again when its claim runs out";
