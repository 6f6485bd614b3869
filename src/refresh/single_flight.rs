//! One refresh per session across all Envoy workers.
//!
//! Requests carrying the same session may arrive together on several workers when its access
//! token falls due. Sending the refresh token twice can trip the IdP's reuse detection and
//! end the user's session, so exactly one request refreshes and the others use its result:
//!
//! - a claim list in one shared entry, changed only by compare-and-swap, says which
//!   refreshes are in flight (the entry is created when the filter starts, because the host
//!   writes a *missing* key unconditionally, so only an existing entry gives mutual exclusion);
//! - the winner publishes the outcome in a result slot (a fixed ring of slots keeps shared
//!   memory bounded; full, the result among the probes that ends first gives way) and then
//!   drops its claim. A slot is two entries: a head of a few dozen bytes (when, whose, what)
//!   and, for a renewed session, a body with its sealed value. A lookup reads up to eight
//!   heads, of other sessions' results mostly (with many users the ring is full of live ones),
//!   up to the first slot never written, and a body only when the head is its own: each read
//!   is a copy out of the host, and a renewed session is a kilobyte. The winner's claim looked
//!   the slots up already, so its publish writes where that look saw room (or what it saw end
//!   first) without reading them all again;
//! - the others poll the slot until the outcome appears or their wait runs out.

use crate::secret::Secret;
use crate::store::{self, stamped, unstamp, SharedStore, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// A claim older than this is abandoned (its worker died or its call never returned).
const CLAIM_TTL_S: u64 = 30;
/// How long a renewed or ended session answers for requests still carrying the old cookie.
const RESULT_TTL_S: u64 = 120;
/// How long "IdP unreachable" stands before the next request tries again.
const UNAVAILABLE_TTL_S: u64 = 5;
/// Result slots unless `session.refresh_result_slots` says otherwise: shared memory stays
/// bounded however many sessions refresh (shared data has no deletion, so a used slot keeps
/// its last result: for a renewed session its head and a body as big as the cookie, some 6 MB
/// over the ring for a 1.1 KB cookie). With every slot live, each publish evicts the result
/// of eight that ends first, so a result stays about the slots over the refresh rate: 4,096
/// keep each one at least two seconds at 330 refreshes a second (issue 16's 100,000 users on
/// 5-minute tokens; see the test below), long enough for the requests a browser had in
/// flight with the old cookie. 512, evicting the home slot's, lost results within a publish
/// or two from about 50 a second on.
pub const DEFAULT_SLOTS: u64 = 4096;
const CAS_ATTEMPTS: usize = 16;

/// Names one refresh: a digest of the refresh token (never the token itself), and the size of
/// the ring its outcome goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshId(String, u64);

impl RefreshId {
    /// The digest as text (URL-safe base64): safe in a shared-data or store key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn of(refresh_token: &Secret) -> RefreshId {
        let digest = Sha256::new()
            .chain_update(b"envoy-bff refresh\0")
            .chain_update(refresh_token.expose().as_bytes())
            .finalize();
        RefreshId(
            URL_SAFE_NO_PAD.encode(digest.get(..18).unwrap_or_default()),
            DEFAULT_SLOTS,
        )
    }

    /// The same refresh, its outcome in a ring of `slots` (at least one).
    pub fn in_ring(self, slots: u64) -> RefreshId {
        RefreshId(self.0, slots.max(1))
    }

    fn slot(&self) -> u64 {
        self.0
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
            % self.1
    }
}

/// The outcome every request of the session acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new session, sealed as the cookie value (unchunked).
    Renewed(String),
    /// The IdP refused the refresh token (`invalid_grant`): log in again.
    Ended,
    /// The IdP could not be reached: go on with the current token while it lasts.
    Unavailable,
    /// `invalid_grant` while the access token was still valid: another replica rotated the
    /// refresh token first (a lost race, issue 18). Go on with the current token until `until`
    /// (its expiry), without touching the cookie; then the session ends.
    Superseded { until: u64 },
}

impl Outcome {
    /// One line of text (the sealed session is URL-safe base64 and dots).
    pub fn encode(&self) -> String {
        match self {
            Outcome::Renewed(sealed) => format!("renewed {sealed}"),
            Outcome::Ended => "ended".to_string(),
            Outcome::Unavailable => "unavailable".to_string(),
            Outcome::Superseded { until } => format!("superseded {until}"),
        }
    }

    pub fn decode(s: &str) -> Option<Outcome> {
        match s.split_once(' ') {
            Some(("renewed", sealed)) => Some(Outcome::Renewed(sealed.to_string())),
            Some(("superseded", until)) => Some(Outcome::Superseded {
                until: until.parse().ok()?,
            }),
            None if s == "ended" => Some(Outcome::Ended),
            None if s == "unavailable" => Some(Outcome::Unavailable),
            _ => None,
        }
    }

    fn ttl(&self) -> u64 {
        match self {
            Outcome::Unavailable => UNAVAILABLE_TTL_S,
            _ => RESULT_TTL_S,
        }
    }

    /// How long, from `now`, the outcome is to be acted on (at least a second).
    pub fn lifetime(&self, now: u64) -> u64 {
        match self {
            Outcome::Superseded { until } => until.saturating_sub(now).max(1),
            _ => self.ttl(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request refreshes; it must `publish` afterwards, handing it what the claim saw.
    Won(Seen),
    /// Another request is refreshing: wait for its outcome.
    Taken,
    /// A recent outcome exists: use it.
    Done(Outcome),
}

/// The result slots as a claim's lookup saw them, for `publish` to write without searching
/// again (each head read is a copy out of the host: with the ring full of live results, the
/// search read eight heads the lookup had just read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seen {
    /// Not looked at: `publish` searches.
    #[default]
    Unknown,
    /// This probe was the first free, stale or ours.
    Free(u64),
    /// Every probe held another session's live result; the one in `probe` ends first, at
    /// `ends`.
    Full { probe: u64, ends: u64 },
}

fn claims_key(ns: &str) -> String {
    format!("{ns}.refresh.claims")
}

/// Slots tried after the home slot when it holds another session's live result.
const PROBES: u64 = 8;

fn slot_key(ns: &str, id: &RefreshId, probe: u64) -> String {
    format!("{ns}.refresh.{}", (id.slot() + probe) % id.1)
}

/// What a slot's head says: the outcome, or that a renewed session lies in the slot's body.
#[derive(Debug)]
enum Head {
    Outcome(Outcome),
    Renewed,
}

const RENEWED: &str = "renewed";

impl Head {
    fn of(outcome: &Outcome) -> String {
        match outcome {
            Outcome::Renewed(_) => RENEWED.to_string(),
            other => other.encode(),
        }
    }

    /// A head, or a whole outcome (a renewed session included: what the slot's one entry held
    /// before heads and bodies, still read while such entries live).
    fn decode(s: &str) -> Option<Head> {
        if s == RENEWED {
            return Some(Head::Renewed);
        }
        Outcome::decode(s).map(Head::Outcome)
    }

    fn ttl(&self) -> u64 {
        match self {
            Head::Outcome(outcome) => outcome.ttl(),
            Head::Renewed => RESULT_TTL_S,
        }
    }
}

/// Where a slot's renewed session lies.
fn body_key(slot_key: &str) -> String {
    format!("{slot_key}.body")
}

/// What a slot's head says, read by one session at one time.
struct SlotHead {
    /// The result is the reading session's.
    mine: bool,
    head: Head,
    /// When the result stops being acted on.
    ends: u64,
    /// `ends` is still ahead.
    live: bool,
}

impl SlotHead {
    /// Whether `publish` may write the reading session's result here: another session's
    /// live result must stay (while there is room elsewhere).
    fn may_take(&self) -> bool {
        self.mine || !self.live
    }
}

/// A slot's head, as `id` reads it at `now`.
fn read_slot(store: &dyn SharedStore, key: &str, id: &RefreshId, now: u64) -> Option<SlotHead> {
    store
        .get(key)
        .and_then(|(entry, _)| parse_slot(&entry, id, now))
}

/// A slot's entry as `id` reads it at `now` (`None`: not a head this module reads).
fn parse_slot(entry: &[u8], id: &RefreshId, now: u64) -> Option<SlotHead> {
    let (at, body) = unstamp(entry)?;
    let (owner, head) = std::str::from_utf8(body).ok()?.split_once('\n')?;
    let head = Head::decode(head)?;
    let ends = match head {
        // Remembered for the rest of the access token's life.
        Head::Outcome(Outcome::Superseded { until }) => until,
        _ => at.saturating_add(head.ttl()),
    };
    Some(SlotHead {
        mine: owner == id.0,
        head,
        ends,
        live: now < ends,
    })
}

/// Where `publish` may write, from the heads of the probes in order: the first free, stale
/// or own slot, else the one whose result ends first. With the ring full of live results
/// (from some 35 refreshes a second on, with 4,096 slots), that evicts the oldest of eight
/// rather than whichever result sits in the home slot, maybe one published a moment ago that
/// requests still carrying its old cookie are about to look for.
#[derive(Default)]
struct Survey {
    free: Option<u64>,
    /// `(ends, probe)` of the live result that ends first.
    soonest: Option<(u64, u64)>,
}

impl Survey {
    /// Notes a probe's head (`None`: an empty slot); true once a slot to take is known.
    fn note(&mut self, probe: u64, slot: Option<&SlotHead>) -> bool {
        if self.free.is_none() {
            match slot {
                Some(s) if !s.may_take() => {
                    if self.soonest.map_or(true, |(ends, _)| s.ends < ends) {
                        self.soonest = Some((s.ends, probe));
                    }
                }
                _ => self.free = Some(probe),
            }
        }
        self.free.is_some()
    }

    fn seen(&self) -> Seen {
        match (self.free, self.soonest) {
            (Some(probe), _) => Seen::Free(probe),
            (None, Some((ends, probe))) => Seen::Full { probe, ends },
            (None, None) => Seen::Unknown,
        }
    }
}

/// The renewed session in a slot's body, if the body is `id`'s (another session's result may
/// have taken the slot since its head was read).
fn read_body(store: &dyn SharedStore, key: &str, id: &RefreshId) -> Option<Outcome> {
    let (entry, _) = store.get(&body_key(key))?;
    let (owner, sealed) = std::str::from_utf8(&entry).ok()?.split_once('\n')?;
    (owner == id.0).then(|| Outcome::Renewed(sealed.to_string()))
}

/// Creates the claim list if it does not exist yet. Called when the filter starts (Envoy
/// configures the main thread's VM before any worker takes traffic).
pub fn prepare(store: &dyn SharedStore, ns: &str) {
    // Not empty: some hosts hand an empty value back as no value at all.
    store::create_if_missing(store, &claims_key(ns), b"#\n");
}

/// The outcome published for `id`, if it is recent enough to act on.
pub fn lookup(store: &dyn SharedStore, ns: &str, id: &RefreshId, now: u64) -> Option<Outcome> {
    look(store, ns, id, now).ok()
}

/// The outcome published for `id`, or what the probes looked like for publishing one.
fn look(store: &dyn SharedStore, ns: &str, id: &RefreshId, now: u64) -> Result<Outcome, Seen> {
    let mut survey = Survey::default();
    for probe in 0..PROBES {
        let key = slot_key(ns, id, probe);
        let Some((entry, _)) = store.get(&key) else {
            // Never written: publish takes the first usable probe and nothing deletes a slot,
            // so nothing of `id`'s lies further on (while the ring keeps its size).
            survey.note(probe, None);
            break;
        };
        let slot = parse_slot(&entry, id, now);
        survey.note(probe, slot.as_ref());
        let Some(SlotHead {
            mine: true,
            live: true,
            head,
            ..
        }) = slot
        else {
            continue;
        };
        let found = match head {
            Head::Outcome(outcome) => Some(outcome),
            Head::Renewed => read_body(store, &key, id),
        };
        if let Some(outcome) = found {
            return Ok(outcome);
        }
    }
    Err(survey.seen())
}

/// Live claims: `(id, claimed at)` per line.
fn parse_claims(value: &[u8], now: u64) -> Vec<(String, u64)> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (id, at) = l.split_once(' ')?;
            Some((id.to_string(), at.parse::<u64>().ok()?))
        })
        .filter(|(_, at)| now < at.saturating_add(CLAIM_TTL_S))
        .collect()
}

fn render_claims(claims: &[(String, u64)]) -> Vec<u8> {
    claims
        .iter()
        .map(|(id, at)| format!("{id} {at}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Tries to become the one request that refreshes `id`.
pub fn claim(store: &dyn SharedStore, ns: &str, id: &RefreshId, now: u64) -> Claim {
    for _ in 0..CAS_ATTEMPTS {
        let Some((value, cas)) = store.get(&claims_key(ns)) else {
            // The list is missing (it should not be): without it there is no safe claim.
            prepare(store, ns);
            continue;
        };
        // Looked up after the list is read: an outcome published before that is found here,
        // and one published since was followed by its claim's release, a change of the list
        // that fails our compare-and-swap below. So a claim that succeeds needs no second look.
        let seen = match look(store, ns, id, now) {
            Ok(outcome) => return Claim::Done(outcome),
            Err(seen) => seen,
        };
        let mut claims = parse_claims(&value, now);
        if claims.iter().any(|(c, _)| *c == id.0) {
            return Claim::Taken;
        }
        claims.push((id.0.clone(), now));
        match store.set(&claims_key(ns), &render_claims(&claims), Some(cas)) {
            Ok(()) => return Claim::Won(seen),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => break,
        }
    }
    Claim::Taken
}

/// Publishes the winner's outcome, then drops its claim. `seen`: what its claim saw.
pub fn publish(
    store: &dyn SharedStore,
    ns: &str,
    id: &RefreshId,
    outcome: &Outcome,
    seen: Seen,
    now: u64,
) {
    // The first slot that is free, stale or ours: another session's live result must not be
    // overwritten (its old cookies would refresh again with a rotated token). With every
    // probe taken, the result that ends first gives way (`Survey`). The claim's look is taken
    // as it was (the refresh came between; results live for minutes) except that the slot it
    // chose is read again: another session may have published there since (with the ring
    // full, sessions whose probes overlap pick the same oldest result), and then the search
    // runs as if nothing had been seen.
    let search = || {
        let mut survey = Survey::default();
        for probe in 0..PROBES {
            let slot = read_slot(store, &slot_key(ns, id, probe), id, now);
            if survey.note(probe, slot.as_ref()) {
                break;
            }
        }
        match survey.seen() {
            Seen::Free(probe) | Seen::Full { probe, .. } => probe,
            Seen::Unknown => 0,
        }
    };
    let still = |probe: u64, ends: Option<u64>| {
        read_slot(store, &slot_key(ns, id, probe), id, now)
            .map_or(true, |s| s.may_take() || ends.is_some_and(|e| s.ends <= e))
    };
    let probe = match seen {
        Seen::Free(probe) if still(probe, None) => probe,
        Seen::Full { probe, ends } if still(probe, Some(ends)) => probe,
        _ => search(),
    };
    let free = slot_key(ns, id, probe);
    // The body first: a request that reads the new head finds the body it names.
    if let Outcome::Renewed(sealed) = outcome {
        let body = format!("{}\n{sealed}", id.0);
        let _ = store.set(&body_key(&free), body.as_bytes(), None);
    }
    let head = format!("{}\n{}", id.0, Head::of(outcome));
    let _ = store.set(&free, &stamped(now, head.as_bytes()), None);
    release(store, ns, id, now);
}

fn release(store: &dyn SharedStore, ns: &str, id: &RefreshId, now: u64) {
    for _ in 0..CAS_ATTEMPTS {
        let Some((value, cas)) = store.get(&claims_key(ns)) else {
            return;
        };
        let claims: Vec<(String, u64)> = parse_claims(&value, now)
            .into_iter()
            .filter(|(c, _)| *c != id.0)
            .collect();
        match store.set(&claims_key(ns), &render_claims(&claims), Some(cas)) {
            Err(StoreError::CasMismatch) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_race_is_remembered_until_the_access_token_expires() {
        let store = crate::store::MemoryStore::default();
        prepare(&store, "ns");
        let id = RefreshId::of(&Secret::new("rotated-away"));
        let lost = Outcome::Superseded { until: 1300 };
        publish(&store, "ns", &id, &lost, Seen::Unknown, 1000);
        assert_eq!(lookup(&store, "ns", &id, 1299), Some(lost.clone()));
        assert_eq!(lookup(&store, "ns", &id, 1300), None);
        assert_eq!(claim(&store, "ns", &id, 1200), Claim::Done(lost));
    }
    use crate::store::{Cas, MemoryStore};
    use std::cell::Cell;

    const NS: &str = "bff.test";

    fn id(s: &str) -> RefreshId {
        RefreshId::of(&Secret::new(s))
    }

    #[test]
    fn ids_are_digests() {
        let a = id("refresh-token-1");
        assert_eq!(a, id("refresh-token-1"));
        assert_ne!(a, id("refresh-token-2"));
        assert!(!a.0.contains("refresh"));
    }

    #[test]
    fn exactly_one_wins_then_everyone_gets_the_outcome() {
        let store = MemoryStore::default();
        prepare(&store, NS);
        let rt = id("rt");
        assert_eq!(claim(&store, NS, &rt, 100), Claim::Won(Seen::Free(0)));
        for _ in 0..19 {
            assert_eq!(claim(&store, NS, &rt, 100), Claim::Taken);
        }
        // Another session refreshes independently.
        assert_eq!(
            claim(&store, NS, &id("other"), 100),
            Claim::Won(Seen::Free(0))
        );
        publish(
            &store,
            NS,
            &rt,
            &Outcome::Renewed("v1.k.sealed".into()),
            Seen::Unknown,
            101,
        );
        assert_eq!(
            lookup(&store, NS, &rt, 102),
            Some(Outcome::Renewed("v1.k.sealed".into()))
        );
        assert_eq!(
            claim(&store, NS, &rt, 102),
            Claim::Done(Outcome::Renewed("v1.k.sealed".into()))
        );
        // Results age out; "unavailable" quickly, so the next request tries again.
        assert_eq!(lookup(&store, NS, &rt, 101 + RESULT_TTL_S), None);
        publish(&store, NS, &rt, &Outcome::Unavailable, Seen::Unknown, 200);
        assert_eq!(
            claim(&store, NS, &rt, 201),
            Claim::Done(Outcome::Unavailable)
        );
        assert_eq!(
            claim(&store, NS, &rt, 200 + UNAVAILABLE_TTL_S),
            Claim::Won(Seen::Free(0))
        );
    }

    #[test]
    fn an_abandoned_claim_expires() {
        let store = MemoryStore::default();
        prepare(&store, NS);
        assert_eq!(claim(&store, NS, &id("rt"), 100), Claim::Won(Seen::Free(0)));
        assert_eq!(
            claim(&store, NS, &id("rt"), 100 + CLAIM_TTL_S - 1),
            Claim::Taken
        );
        assert_eq!(
            claim(&store, NS, &id("rt"), 100 + CLAIM_TTL_S),
            Claim::Won(Seen::Free(0))
        );
    }

    /// A store whose compare-and-swap loses a race on purpose: another worker writes the
    /// claim list between our read and our write, the first `races` times.
    struct RacingStore {
        inner: MemoryStore,
        races: Cell<usize>,
    }

    impl SharedStore for RacingStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            if let Some((mut v, c)) = self.inner.get(key).filter(|_| self.races.get() > 0) {
                self.races.set(self.races.get() - 1);
                // The other worker claims the same refresh first.
                v.extend_from_slice(format!("{} 100\n", id("rt").0).as_bytes());
                self.inner.set(key, &v, Some(c)).unwrap();
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn losing_the_compare_and_swap_means_waiting() {
        let store = RacingStore {
            inner: MemoryStore::default(),
            races: Cell::new(1),
        };
        prepare(&store, NS);
        assert_eq!(claim(&store, NS, &id("rt"), 100), Claim::Taken);
    }

    #[test]
    fn a_slot_shared_by_two_sessions_answers_only_its_owner() {
        let store = MemoryStore::default();
        let a = id("a");
        // Find another id landing in the same slot.
        let b = (0..10_000)
            .map(|i| id(&format!("b{i}")))
            .find(|b| b.slot() == a.slot())
            .unwrap();
        publish(&store, NS, &a, &Outcome::Ended, Seen::Unknown, 100);
        assert_eq!(lookup(&store, NS, &b, 100), None);
        assert_eq!(lookup(&store, NS, &a, 100), Some(Outcome::Ended));
        // The second session's result goes to the next slot: both stand.
        publish(
            &store,
            NS,
            &b,
            &Outcome::Renewed("v1.b".into()),
            Seen::Unknown,
            101,
        );
        assert_eq!(lookup(&store, NS, &a, 101), Some(Outcome::Ended));
        assert_eq!(
            lookup(&store, NS, &b, 101),
            Some(Outcome::Renewed("v1.b".into()))
        );
    }

    /// A store that counts the bytes its reads hand back: what a host copies into the VM.
    #[derive(Default)]
    struct CountingStore {
        inner: MemoryStore,
        bytes_read: Cell<usize>,
        reads: Cell<usize>,
    }

    impl SharedStore for CountingStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
            self.reads.set(self.reads.get() + 1);
            let got = self.inner.get(key);
            let n = got.as_ref().map_or(0, |(v, _)| v.len());
            self.bytes_read.set(self.bytes_read.get() + n);
            got
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_lookup_reads_the_heads_and_only_its_own_body() {
        let store = CountingStore::default();
        let mine = id("mine");
        // Eight other sessions' renewed results in the probes of `mine`'s home slot.
        let others = sharing_home(&mine, PROBES as usize);
        let sealed = |o: &RefreshId| Outcome::Renewed(format!("v2.k.{}{}", o.0, "A".repeat(1000)));
        for o in &others {
            publish(&store, NS, o, &sealed(o), Seen::Unknown, 100);
        }
        for o in &others {
            assert_eq!(lookup(&store, NS, o, 101), Some(sealed(o)));
        }
        store.bytes_read.set(0);
        assert_eq!(lookup(&store, NS, &mine, 101), None);
        let heads = store.bytes_read.get();
        assert!(heads < 8 * 64, "{heads} bytes read for eight heads");
        // With every probe live (all ending together), the first gives way; its body is mine.
        publish(&store, NS, &mine, &sealed(&mine), Seen::Unknown, 102);
        store.bytes_read.set(0);
        assert_eq!(lookup(&store, NS, &mine, 103), Some(sealed(&mine)));
        assert!(store.bytes_read.get() < 64 + 1100);
        assert_eq!(lookup(&store, NS, &others[0], 103), None);
        assert_eq!(
            lookup(&store, NS, &others[1], 103),
            Some(sealed(&others[1]))
        );
    }

    /// `n` ids whose home slot is `home`'s.
    fn sharing_home(home: &RefreshId, n: usize) -> Vec<RefreshId> {
        let others: Vec<RefreshId> = (0..100_000)
            .map(|i| id(&format!("o{i}")))
            .filter(|o| o.slot() == home.slot())
            .take(n)
            .collect();
        assert_eq!(others.len(), n);
        others
    }

    #[test]
    fn a_won_claim_tells_publish_where_to_write() {
        let store = CountingStore::default();
        prepare(&store, NS);
        let mine = id("mine");
        let others = sharing_home(&mine, PROBES as usize);
        // Probes 0, 1 and 2 hold results; at `now`, the one in probe 0 is stale.
        publish(&store, NS, &others[0], &Outcome::Ended, Seen::Unknown, 10);
        publish(&store, NS, &others[1], &Outcome::Ended, Seen::Unknown, 100);
        publish(&store, NS, &others[2], &Outcome::Ended, Seen::Unknown, 100);
        let now = 10 + RESULT_TTL_S;
        assert_eq!(
            claim(&store, NS, &others[3], 100),
            Claim::Won(Seen::Free(3))
        );
        assert_eq!(claim(&store, NS, &mine, now), Claim::Won(Seen::Free(0)));
        // Publishing where the claim saw room reads that head again and no other: then the
        // claim list, to release the claim.
        store.reads.set(0);
        publish(&store, NS, &mine, &Outcome::Ended, Seen::Free(0), now);
        assert_eq!(store.reads.get(), 1 + 1);
        assert_eq!(lookup(&store, NS, &mine, now), Some(Outcome::Ended));
        assert_eq!(lookup(&store, NS, &others[1], now), Some(Outcome::Ended));
    }

    #[test]
    fn a_slot_seen_free_but_taken_since_is_not_overwritten() {
        let store = MemoryStore::default();
        prepare(&store, NS);
        let mine = id("mine");
        let other = sharing_home(&mine, 1).remove(0);
        assert_eq!(claim(&store, NS, &mine, 100), Claim::Won(Seen::Free(0)));
        // Another session's refresh finishes first, in the same home slot.
        publish(&store, NS, &other, &Outcome::Ended, Seen::Unknown, 101);
        publish(&store, NS, &mine, &Outcome::Unavailable, Seen::Free(0), 102);
        assert_eq!(lookup(&store, NS, &other, 102), Some(Outcome::Ended));
        assert_eq!(lookup(&store, NS, &mine, 102), Some(Outcome::Unavailable));
    }

    #[test]
    fn with_every_probe_live_publish_reads_one_head_again_not_eight() {
        let store = CountingStore::default();
        prepare(&store, NS);
        let mine = id("mine");
        let others = sharing_home(&mine, PROBES as usize);
        for o in &others {
            publish(&store, NS, o, &Outcome::Ended, Seen::Unknown, 100);
        }
        let seen = match claim(&store, NS, &mine, 101) {
            Claim::Won(seen) => seen,
            other => panic!("{other:?}"),
        };
        // All end together: the first of them.
        let ends = 100 + RESULT_TTL_S;
        assert_eq!(seen, Seen::Full { probe: 0, ends });
        store.reads.set(0);
        publish(&store, NS, &mine, &Outcome::Ended, seen, 102);
        // The head it chose, read again, then the claim list (to release the claim).
        assert_eq!(store.reads.get(), 2);
        assert_eq!(lookup(&store, NS, &mine, 102), Some(Outcome::Ended));
        assert_eq!(lookup(&store, NS, &others[0], 102), None);
        assert_eq!(lookup(&store, NS, &others[1], 102), Some(Outcome::Ended));
    }

    #[test]
    fn two_refreshes_that_chose_the_same_oldest_result_do_not_overwrite_each_other() {
        let store = MemoryStore::default();
        prepare(&store, NS);
        let (a, b) = {
            let mut two = sharing_home(&id("home"), PROBES as usize + 2).split_off(PROBES as usize);
            (two.remove(0), two.remove(0))
        };
        let others = sharing_home(&id("home"), PROBES as usize);
        for (o, at) in others.iter().zip(100..) {
            publish(&store, NS, o, &Outcome::Ended, Seen::Unknown, at);
        }
        // Both claim while every probe is live: both see probe 0's result end first.
        let claimed = |rt: &RefreshId| match claim(&store, NS, rt, 110) {
            Claim::Won(seen) => seen,
            other => panic!("{other:?}"),
        };
        let (seen_a, seen_b) = (claimed(&a), claimed(&b));
        let first = Seen::Full {
            probe: 0,
            ends: 100 + RESULT_TTL_S,
        };
        assert_eq!((seen_a, seen_b), (first, first));
        publish(&store, NS, &a, &Outcome::Ended, seen_a, 111);
        // Probe 0 is a's now: b's publish finds it taken since and evicts the next oldest.
        publish(&store, NS, &b, &Outcome::Unavailable, seen_b, 112);
        assert_eq!(lookup(&store, NS, &a, 112), Some(Outcome::Ended));
        assert_eq!(lookup(&store, NS, &b, 112), Some(Outcome::Unavailable));
        assert_eq!(lookup(&store, NS, &others[1], 112), None);
        assert!(others[2..]
            .iter()
            .all(|o| lookup(&store, NS, o, 112).is_some()));
    }

    #[test]
    fn with_every_probe_live_the_result_ending_first_gives_way() {
        let store = CountingStore::default();
        prepare(&store, NS);
        let mine = id("mine");
        let others = sharing_home(&mine, PROBES as usize);
        // Published in probe order; the one in probe 5 is the oldest, the home slot's newest.
        for (o, at) in others.iter().zip([107, 106, 105, 104, 103, 100, 102, 101]) {
            publish(&store, NS, o, &Outcome::Ended, Seen::Unknown, at);
        }
        let seen = match claim(&store, NS, &mine, 108) {
            Claim::Won(seen) => seen,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            seen,
            Seen::Full {
                probe: 5,
                ends: 100 + RESULT_TTL_S
            }
        );
        store.reads.set(0);
        publish(&store, NS, &mine, &Outcome::Ended, seen, 108);
        // That head again and the claim list: no search.
        assert_eq!(store.reads.get(), 2);
        let found = |o: &RefreshId| lookup(&store, NS, o, 108).is_some();
        assert!(found(&mine));
        assert!(!found(&others[5]));
        assert!(others.iter().enumerate().all(|(i, o)| i == 5 || found(o)));
        // Publish's own search, without a claim's look, picks the same: probe 7 now ends first
        // (101 + the result's life), then a lost race remembered until 104 ends before it.
        let late = sharing_home(&mine, PROBES as usize + 2);
        let (a, b) = (&late[8], &late[9]);
        publish(&store, NS, a, &Outcome::Ended, Seen::Unknown, 109);
        assert!(!found(&others[7]) && lookup(&store, NS, a, 109).is_some());
        let lost = Outcome::Superseded { until: 150 };
        store
            .set(
                &slot_key(NS, &mine, 2),
                &stamped(
                    105,
                    format!("{}\n{}", others[2].0, lost.encode()).as_bytes(),
                ),
                None,
            )
            .unwrap();
        publish(&store, NS, b, &Outcome::Ended, Seen::Unknown, 110);
        assert_eq!(lookup(&store, NS, &others[2], 110), None);
        assert!(lookup(&store, NS, b, 110).is_some());
    }

    #[test]
    fn at_issue_16s_refresh_rate_every_result_is_there_two_seconds_later() {
        // 330 refreshes a second (100,000 users on 5-minute tokens), each published a tenth of
        // a second after its claim (the IdP's answer), so 33 are in flight at any time: the
        // ring is full of live results after some 4,000 of them, and then each publish evicts
        // one.
        let store = MemoryStore::default();
        prepare(&store, NS);
        let rate = 330;
        let in_flight = 33;
        let ids: Vec<RefreshId> = (0..3 * DEFAULT_SLOTS)
            .map(|i| id(&format!("s{i}")))
            .collect();
        let mut claimed = std::collections::VecDeque::new();
        for (i, rt) in ids.iter().enumerate() {
            let now = 1000 + i as u64 / rate;
            match claim(&store, NS, rt, now) {
                Claim::Won(seen) => claimed.push_back((rt, seen)),
                other => panic!("{other:?}"),
            }
            if claimed.len() > in_flight {
                let (done, seen) = claimed.pop_front().unwrap();
                publish(&store, NS, done, &Outcome::Ended, seen, now);
            }
            let two_seconds = 2 * rate as usize + in_flight;
            if let Some(earlier) = i.checked_sub(two_seconds).and_then(|j| ids.get(j)) {
                assert_eq!(
                    lookup(&store, NS, earlier, now),
                    Some(Outcome::Ended),
                    "publish {i}"
                );
            }
        }
    }

    #[test]
    fn a_ring_of_any_size_wraps_around() {
        let store = MemoryStore::default();
        prepare(&store, NS);
        // Sixteen sessions in a ring of eight: the probes wrap past its end, and once every
        // slot is live, each publish evicts the oldest (the first eight, in turn).
        let ids: Vec<RefreshId> = (0..16).map(|i| id(&format!("w{i}")).in_ring(8)).collect();
        for (i, rt) in ids.iter().enumerate() {
            let now = 100 + i as u64;
            let Claim::Won(seen) = claim(&store, NS, rt, now) else {
                panic!("{i}")
            };
            publish(&store, NS, rt, &Outcome::Ended, seen, now);
        }
        let found = |rt: &RefreshId| lookup(&store, NS, rt, 116).is_some();
        assert!(ids[..8].iter().all(|rt| !found(rt)));
        assert!(ids[8..].iter().all(found));
        let slot = |k: u64| store.get(&format!("{NS}.refresh.{k}")).is_some();
        assert!((0..8).all(slot) && !slot(8));
    }

    /// A store where another worker, holding the claim, publishes its outcome and releases
    /// the claim between our read of the list and our compare-and-swap on it, once.
    struct FinishingStore {
        inner: CountingStore,
        finish: Cell<bool>,
    }

    impl SharedStore for FinishingStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            if key == claims_key(NS) && self.finish.replace(false) {
                let other = Outcome::Renewed("v2.k.theirs".into());
                publish(&self.inner, NS, &id("rt"), &other, Seen::Unknown, 100);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn an_outcome_published_while_claiming_is_found_and_a_won_claim_looks_once() {
        let store = FinishingStore {
            inner: CountingStore::default(),
            finish: Cell::new(true),
        };
        prepare(&store, NS);
        assert_eq!(
            claim(&store, NS, &id("rt"), 100),
            Claim::Done(Outcome::Renewed("v2.k.theirs".into()))
        );
        // Uncontended: the list once, each probe's head once (every probe written, with stale
        // results), no second look after winning.
        let other = id("other");
        for o in sharing_home(&other, PROBES as usize) {
            publish(&store.inner, NS, &o, &Outcome::Ended, Seen::Unknown, 100);
        }
        store.inner.reads.set(0);
        let now = 100 + RESULT_TTL_S;
        assert_eq!(claim(&store, NS, &other, now), Claim::Won(Seen::Free(0)));
        assert_eq!(store.inner.reads.get(), 1 + PROBES as usize);
    }

    #[test]
    fn a_lookup_stops_at_the_first_slot_never_written() {
        let store = CountingStore::default();
        prepare(&store, NS);
        let mine = id("mine");
        let others = sharing_home(&mine, 2);
        for o in &others {
            publish(&store, NS, o, &Outcome::Ended, Seen::Unknown, 100);
        }
        // Probes 0 and 1 hold the others' results, probe 2 was never written: three reads.
        store.reads.set(0);
        assert_eq!(lookup(&store, NS, &mine, 101), None);
        assert_eq!(store.reads.get(), 3);
        // So does a claim's look (after the list), and it saw probe 2 free.
        store.reads.set(0);
        assert_eq!(claim(&store, NS, &mine, 101), Claim::Won(Seen::Free(2)));
        assert_eq!(store.reads.get(), 1 + 3);
        publish(&store, NS, &mine, &Outcome::Ended, Seen::Free(2), 102);
        store.reads.set(0);
        assert_eq!(lookup(&store, NS, &mine, 102), Some(Outcome::Ended));
        assert_eq!(store.reads.get(), 3);
        // Once stale, the slots are still there: a later session's lookup reads past them.
        let late = sharing_home(&mine, 3).remove(2);
        let later = 100 + RESULT_TTL_S + 5;
        store.reads.set(0);
        assert_eq!(lookup(&store, NS, &late, later), None);
        assert_eq!(store.reads.get(), 4);
    }

    #[test]
    fn a_body_that_is_not_the_heads_owners_is_not_read_as_theirs() {
        let store = MemoryStore::default();
        let (a, b) = (id("a"), id("b"));
        let key = slot_key(NS, &a, 0);
        store
            .set(
                &key,
                &stamped(100, format!("{}\nrenewed", a.0).as_bytes()),
                None,
            )
            .unwrap();
        store
            .set(&body_key(&key), format!("{}\nv2.k.b", b.0).as_bytes(), None)
            .unwrap();
        assert_eq!(lookup(&store, NS, &a, 101), None);
        // A head without its body at all: nothing either.
        store.set(&body_key(&key), b"", None).unwrap();
        assert_eq!(lookup(&store, NS, &a, 101), None);
    }

    #[test]
    fn a_slot_written_whole_by_an_earlier_module_still_reads() {
        let store = MemoryStore::default();
        let a = id("a");
        let whole = format!("{}\nrenewed v2.k.sealed", a.0);
        store
            .set(&slot_key(NS, &a, 0), &stamped(100, whole.as_bytes()), None)
            .unwrap();
        assert_eq!(
            lookup(&store, NS, &a, 101),
            Some(Outcome::Renewed("v2.k.sealed".into()))
        );
        assert_eq!(lookup(&store, NS, &a, 100 + RESULT_TTL_S), None);
    }

    #[test]
    fn garbage_in_shared_data_is_ignored() {
        let store = MemoryStore::default();
        store
            .set(&claims_key(NS), b"\xff\xfe not claims\nx y z\n", None)
            .unwrap();
        let rt = id("rt");
        store.set(&slot_key(NS, &rt, 0), b"garbage", None).unwrap();
        assert_eq!(lookup(&store, NS, &rt, 100), None);
        assert_eq!(claim(&store, NS, &rt, 100), Claim::Won(Seen::Free(0)));
    }
}
