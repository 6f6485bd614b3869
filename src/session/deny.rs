//! Sessions ended before their cookie expires: by a logout (a copy of the cookie must stop
//! working too) or by the IdP's back-channel logout. The cookies are stateless, so what was
//! ended is remembered instead, until the sessions it covers would have ended anyway.
//!
//! Within one Envoy process the list lives in one shared-data entry, changed by
//! compare-and-swap; each VM keeps a copy ([`DenyList`]) that the request path looks up,
//! refreshed at its tick when the entry changed.

use super::Session;
use crate::store::{self, SharedStore};
use std::collections::{HashMap, HashSet};

/// Entries kept at most: a flood of logouts cannot grow shared memory without bound (the
/// oldest-ending go first).
pub const MAX_ENTRIES: usize = 50_000;

/// What an entry ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ended {
    /// One session, by the filter's own session id.
    Session(String),
    /// Every session of this IdP session (its `sid`).
    IdpSession(String),
    /// Every session of this user created (logged in) before `before`.
    Subject { sub: String, before: u64 },
}

/// An ended thing and how long to remember it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    pub ended: Ended,
    /// Unix seconds after which every session it covers has ended on its own.
    pub until: u64,
}

impl DenyEntry {
    /// One line: `<until> <kind> <before> <value>` (the value last: it may hold spaces). Also
    /// the entry's value in the store.
    pub fn encode(&self) -> String {
        let (kind, before, value) = match &self.ended {
            Ended::Session(v) => ("s", 0, v),
            Ended::IdpSession(v) => ("i", 0, v),
            Ended::Subject { sub, before } => ("u", *before, sub),
        };
        format!("{} {kind} {before} {value}", self.until)
    }

    pub fn decode(line: &str) -> Option<DenyEntry> {
        let mut parts = line.splitn(4, ' ');
        let until = parts.next()?.parse().ok()?;
        let kind = parts.next()?;
        let before = parts.next()?.parse().ok()?;
        let value = parts.next().filter(|v| !v.is_empty())?.to_string();
        let ended = match kind {
            "s" => Ended::Session(value),
            "i" => Ended::IdpSession(value),
            "u" => Ended::Subject { sub: value, before },
            _ => return None,
        };
        Some(DenyEntry { ended, until })
    }

    /// Its key under the store's deny prefix: one key per ended thing.
    pub fn store_key(&self) -> String {
        match &self.ended {
            Ended::Session(v) => format!("s/{v}"),
            Ended::IdpSession(v) => format!("i/{v}"),
            Ended::Subject { sub, .. } => format!("u/{sub}"),
        }
    }

    /// Values that could not be stored in one line are never entries.
    pub fn is_storable(&self) -> bool {
        let value = match &self.ended {
            Ended::Session(v) | Ended::IdpSession(v) | Ended::Subject { sub: v, .. } => v,
        };
        !value.is_empty() && value.len() <= 512 && !value.chars().any(char::is_control)
    }
}

/// A VM's copy of the list, as the request path asks it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DenyList {
    sessions: HashSet<String>,
    idp_sessions: HashSet<String>,
    /// User → sessions created before this are ended.
    subjects: HashMap<String, u64>,
}

impl DenyList {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.idp_sessions.is_empty() && self.subjects.is_empty()
    }

    pub fn add(&mut self, entry: &DenyEntry) {
        match &entry.ended {
            Ended::Session(v) => {
                self.sessions.insert(v.clone());
            }
            Ended::IdpSession(v) => {
                self.idp_sessions.insert(v.clone());
            }
            Ended::Subject { sub, before } => {
                let at = self.subjects.entry(sub.clone()).or_insert(0);
                *at = (*at).max(*before);
            }
        }
    }

    /// Whether `session` was ended.
    pub fn denies(&self, session: &Session) -> bool {
        self.sessions.contains(&session.sid)
            || session
                .idp_sid
                .as_ref()
                .is_some_and(|s| self.idp_sessions.contains(s))
            || self
                .subjects
                .get(&session.subject)
                .is_some_and(|before| session.created < *before)
    }

    fn of(entries: &[DenyEntry]) -> DenyList {
        let mut list = DenyList::default();
        for e in entries {
            list.add(e);
        }
        list
    }
}

fn key(ns: &str) -> String {
    format!("{ns}.deny")
}

/// Changed (written) with every change of the list: each VM reads this small entry at its tick,
/// and the list (up to [`MAX_ENTRIES`] lines) only when it changed.
fn version_key(ns: &str) -> String {
    format!("{ns}.deny.version")
}

/// A new version for the readers (the host's compare-and-swap value moves with every write).
fn bump(store: &dyn SharedStore, ns: &str) {
    let _ = store.set(&version_key(ns), b"v", None);
}

/// Entries recorded here and not yet written to the store.
fn pending_key(ns: &str) -> String {
    format!("{ns}.deny.pending")
}

/// When the store was last read, by any worker of this process.
fn synced_key(ns: &str) -> String {
    format!("{ns}.deny.synced")
}

/// Logout tokens' `jti`s seen by this process (without a store), each until it expires.
fn jti_key(ns: &str) -> String {
    format!("{ns}.deny.jti")
}

/// Creates the shared entry if it does not exist yet (when the filter starts).
pub fn prepare(store: &dyn SharedStore, ns: &str) {
    for key in [
        key(ns),
        version_key(ns),
        pending_key(ns),
        synced_key(ns),
        jti_key(ns),
    ] {
        // Not empty: some hosts hand an empty value back as no value at all.
        store::create_if_missing(store, &key, b"#\n");
    }
}

fn parse(bytes: &[u8], now: u64) -> Vec<DenyEntry> {
    std::str::from_utf8(bytes)
        .unwrap_or("")
        .lines()
        .filter_map(DenyEntry::decode)
        .filter(|e| now < e.until)
        .collect()
}

fn serialize(entries: &[DenyEntry]) -> Vec<u8> {
    let mut out = String::from("#\n");
    for e in entries {
        out.push_str(&e.encode());
        out.push('\n');
    }
    out.into_bytes()
}

/// Adds entries to the process's list (dropping the expired ones); false if the host refused.
pub fn record(store: &dyn SharedStore, ns: &str, new: &[DenyEntry], now: u64) -> bool {
    let recorded = merge_into(store, &key(ns), new, now);
    bump(store, ns);
    recorded
}

/// Keeps entries for the store until [`written`] says they are there.
pub fn queue_for_store(store: &dyn SharedStore, ns: &str, new: &[DenyEntry], now: u64) -> bool {
    merge_into(store, &pending_key(ns), new, now)
}

/// The entries waiting for the store.
pub fn pending(store: &dyn SharedStore, ns: &str, now: u64) -> Vec<DenyEntry> {
    store
        .get(&pending_key(ns))
        .map(|(bytes, _)| parse(&bytes, now))
        .unwrap_or_default()
}

/// The store has `entry`: it no longer waits.
pub fn written(store: &dyn SharedStore, ns: &str, entry: &DenyEntry, now: u64) {
    store::update(store, &pending_key(ns), |bytes| {
        let mut entries = parse(bytes, now);
        entries.retain(|e| e != entry);
        Some(serialize(&entries))
    });
}

/// A sync round: the process's list gains what the store holds and what waits for it. Nothing
/// is dropped but what expired: the round's read may predate an entry recorded here since (a
/// logout's put, a back-channel logout's transaction), and entries only ever end by expiry.
/// Written by compare-and-swap, like every other change to the list.
pub fn merge_from_store(
    store: &dyn SharedStore,
    ns: &str,
    from_store: &[DenyEntry],
    now: u64,
) -> bool {
    let mut new = from_store.to_vec();
    new.extend(pending(store, ns, now));
    let mut unchanged = false;
    let written = store::update(store, &key(ns), |bytes| {
        let merged = merged(bytes, &new, now);
        // Unchanged: no new version, so no VM parses it again.
        unchanged = merged == bytes;
        (!unchanged).then_some(merged)
    });
    if written {
        bump(store, ns);
    }
    written || unchanged
}

/// Whether this worker reads the store for the process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Claimed: this worker reads it now.
    Now,
    /// Not before this time (ms): another worker did, or is about to.
    NotBefore(u64),
}

/// Claims this round of reading the store for the process: at most once per `interval_ms`
/// across its workers.
pub fn sync_due(store: &dyn SharedStore, ns: &str, now_ms: u64, interval_ms: u64) -> Sync {
    let key = synced_key(ns);
    let later = Sync::NotBefore(now_ms.saturating_add(interval_ms));
    let Some((bytes, cas)) = store.get(&key) else {
        return later;
    };
    let last: u64 = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let due = last.saturating_add(interval_ms);
    if now_ms < due {
        return Sync::NotBefore(due);
    }
    match store.set(&key, now_ms.to_string().as_bytes(), Some(cas)) {
        Ok(()) => Sync::Now,
        Err(_) => later,
    }
}

/// Remembers a logout token's `jti` until `until`: true the first time, false for a replay (or
/// when the host refused: a token not remembered is not acted on).
pub fn first_sight(store: &dyn SharedStore, ns: &str, jti: &str, until: u64, now: u64) -> bool {
    if jti.is_empty() || jti.len() > 256 || jti.chars().any(|c| c.is_control() || c == ' ') {
        return false;
    }
    store::update(store, &jti_key(ns), |bytes| {
        let mut kept = String::from("#\n");
        for line in std::str::from_utf8(bytes).unwrap_or("").lines() {
            let Some((at, seen)) = line.split_once(' ') else {
                continue;
            };
            if at.parse::<u64>().is_ok_and(|at| now < at) {
                if seen == jti {
                    return None;
                }
                kept.push_str(line);
                kept.push('\n');
            }
        }
        kept.push_str(&format!("{until} {jti}\n"));
        Some(kept.into_bytes())
    })
}

/// Merges entries into the list under `key` (dropping the expired ones).
fn merge_into(store: &dyn SharedStore, key: &str, new: &[DenyEntry], now: u64) -> bool {
    store::update(store, key, |bytes| Some(merged(bytes, new, now)))
}

/// The list in `bytes` with `new` added (an entry replaces one for the same thing ending
/// sooner), without what expired, at most [`MAX_ENTRIES`] (the soonest-ending go first).
fn merged(bytes: &[u8], new: &[DenyEntry], now: u64) -> Vec<u8> {
    let mut entries = parse(bytes, now);
    for e in new.iter().filter(|e| e.is_storable() && now < e.until) {
        if !entries
            .iter()
            .any(|old| old.ended == e.ended && old.until >= e.until)
        {
            entries.retain(|old| old.ended != e.ended);
            entries.push(e.clone());
        }
    }
    if entries.len() > MAX_ENTRIES {
        entries.sort_by_key(|e| std::cmp::Reverse(e.until));
        entries.truncate(MAX_ENTRIES);
    }
    serialize(&entries)
}

/// The process's list as of now, with the entry's version: `None` when it has not changed since
/// `seen` (the version this VM last read).
pub fn load(
    store: &dyn SharedStore,
    ns: &str,
    seen: Option<u32>,
    now: u64,
) -> Option<(DenyList, u32)> {
    let (_, version) = store.get(&version_key(ns))?;
    if seen == Some(version) {
        return None;
    }
    let (bytes, _) = store.get(&key(ns))?;
    Some((DenyList::of(&parse(&bytes, now)), version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::session::contents::{Cold, ColdFields};
    use crate::store::MemoryStore;

    fn session(sid: &str, idp_sid: Option<&str>, sub: &str, created: u64) -> Session {
        Session {
            access_token: Secret::new("at"),
            access_expires_at: 2000,
            subject: sub.into(),
            created,
            last_seen: created,
            sid: sid.into(),
            idp_sid: idp_sid.map(str::to_string),
            cold: Cold::Open(ColdFields {
                refresh_token: None,
                id_token: None,
            }),
        }
    }

    fn entry(ended: Ended, until: u64) -> DenyEntry {
        DenyEntry { ended, until }
    }

    #[test]
    fn each_kind_ends_what_it_names() {
        let store = MemoryStore::default();
        prepare(&store, "ns");
        let entries = [
            entry(Ended::Session("s-1".into()), 2000),
            entry(Ended::IdpSession("idp-9".into()), 2000),
            entry(
                Ended::Subject {
                    sub: "bob the builder".into(),
                    before: 1500,
                },
                2000,
            ),
        ];
        assert!(record(&store, "ns", &entries, 1000));
        let (list, version) = load(&store, "ns", None, 1000).unwrap();
        assert!(list.denies(&session("s-1", None, "alice", 900)));
        assert!(!list.denies(&session("s-2", None, "alice", 900)));
        assert!(list.denies(&session("s-3", Some("idp-9"), "carol", 900)));
        assert!(list.denies(&session("s-4", None, "bob the builder", 1400)));
        assert!(
            !list.denies(&session("s-5", None, "bob the builder", 1600)),
            "a login after the logout stands"
        );
        assert_eq!(load(&store, "ns", Some(version), 1000), None, "unchanged");
        // Expired entries are dropped on the next write and never read back.
        assert!(record(
            &store,
            "ns",
            &[entry(Ended::Session("s-9".into()), 3000)],
            2500
        ));
        let (list, _) = load(&store, "ns", None, 2500).unwrap();
        assert!(!list.denies(&session("s-1", None, "alice", 900)));
        assert!(list.denies(&session("s-9", None, "x", 900)));
    }

    #[test]
    fn what_waits_for_the_store_stays_in_the_list_until_the_store_has_it() {
        let store = MemoryStore::default();
        prepare(&store, "ns");
        let local = entry(Ended::Session("s-local".into()), 2000);
        let remote = entry(Ended::IdpSession("idp-remote".into()), 2000);
        assert!(queue_for_store(
            &store,
            "ns",
            std::slice::from_ref(&local),
            1000
        ));
        // A sync round: the store has another replica's entry, not ours yet.
        assert!(merge_from_store(
            &store,
            "ns",
            std::slice::from_ref(&remote),
            1000
        ));
        let (list, v1) = load(&store, "ns", None, 1000).unwrap();
        assert!(list.denies(&session("s-local", None, "a", 900)));
        assert!(list.denies(&session("x", Some("idp-remote"), "a", 900)));
        // The same again: no new version for the VMs to parse.
        assert!(merge_from_store(
            &store,
            "ns",
            std::slice::from_ref(&remote),
            1000
        ));
        assert_eq!(load(&store, "ns", Some(v1), 1000), None);
        // Written: no longer pending, and the store's list has it.
        written(&store, "ns", &local, 1000);
        assert!(pending(&store, "ns", 1000).is_empty());
        assert!(merge_from_store(
            &store,
            "ns",
            &[remote.clone(), local.clone()],
            1000
        ));
        let (list, _) = load(&store, "ns", None, 1000).unwrap();
        assert!(list.denies(&session("s-local", None, "a", 900)));
        // A round whose read predates an entry recorded here since (a back-channel logout's
        // transaction, then the list) does not drop it: entries end only by expiry.
        let fresh = entry(Ended::IdpSession("idp-fresh".into()), 2000);
        assert!(record(&store, "ns", std::slice::from_ref(&fresh), 1000));
        assert!(merge_from_store(&store, "ns", &[remote, local], 1000));
        let (list, _) = load(&store, "ns", None, 1000).unwrap();
        assert!(list.denies(&session("x", Some("idp-fresh"), "a", 900)));
        // Expired ones go.
        assert!(merge_from_store(&store, "ns", &[], 2000));
        let (list, _) = load(&store, "ns", None, 2000).unwrap();
        assert!(!list.denies(&session("x", Some("idp-fresh"), "a", 900)));
    }

    #[test]
    fn a_jti_is_taken_once_until_it_expires() {
        let store = MemoryStore::default();
        prepare(&store, "ns");
        assert!(first_sight(&store, "ns", "j-1", 2000, 1000));
        assert!(!first_sight(&store, "ns", "j-1", 2000, 1500), "a replay");
        assert!(first_sight(&store, "ns", "j-2", 2000, 1500));
        assert!(
            first_sight(&store, "ns", "j-1", 3000, 2000),
            "forgotten once expired"
        );
        assert!(!first_sight(&store, "ns", "bad jti", 3000, 2000));
    }

    #[test]
    fn one_worker_reads_the_store_per_interval() {
        let store = MemoryStore::default();
        prepare(&store, "ns");
        assert_eq!(sync_due(&store, "ns", 10_000, 1000), Sync::Now);
        assert_eq!(
            sync_due(&store, "ns", 10_500, 1000),
            Sync::NotBefore(11_000),
            "another worker, too early: it looks again when the round is due"
        );
        assert_eq!(sync_due(&store, "ns", 11_000, 1000), Sync::Now);
    }

    #[test]
    fn garbage_and_unstorable_values_are_not_entries() {
        let store = MemoryStore::default();
        prepare(&store, "ns");
        let bad = entry(Ended::Session("a\nb".into()), 2000);
        assert!(record(&store, "ns", &[bad], 1000));
        let (list, _) = load(&store, "ns", None, 1000).unwrap();
        assert!(list.is_empty());
        for garbage in ["", "x", "1 s 0", "9999 q 0 v", "nope s 0 v", "9999 u x v"] {
            assert_eq!(DenyEntry::decode(garbage), None, "{garbage:?}");
        }
    }
}
