//! Opened sessions, remembered by their exact sealed bytes.
//!
//! Every API call carries the same cookie until it is re-written, and opening it (AEAD and
//! decoding) is most of the filter's work on the authenticated path. A sealed value opens to the
//! same session every time, so the result can be kept: a hit is a hash lookup. Lifetime and
//! expiry are still checked on every request against the clock, and a cookie that does not
//! open is never remembered (an attacker's garbage cannot fill the cache). A session's second
//! part (refresh token, ID token) is decrypted at most once per entry, when a request needs it.
//!
//! Full, it evicts by second chance (the CLOCK algorithm): the oldest entry goes unless it
//! was used since it was cached or last spared, so a user who keeps calling the API stays
//! while sessions seen once make room. A hit only sets a flag.

use super::contents::{NoSession, Session};
use super::cookie::Jar;
use super::deny::DenyList;
use super::seal::KeyRing;
use crate::byte_loops;
use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;

/// A sealed value as a map key: hashed on its head (version, key id and the random nonce,
/// which already tell sealings apart) so a lookup does not hash a kilobyte and more; equal
/// only when every byte is, so a value with a forged tail never finds a cached session.
#[derive(Clone)]
struct Sealed(Rc<[u8]>);

const HASHED_PREFIX: usize = 64;

/// What a lookup compares: a stored key, or the request's value borrowed as it is (so a
/// hit allocates nothing).
trait SealedValue {
    fn value(&self) -> &[u8];
}

impl SealedValue for Sealed {
    fn value(&self) -> &[u8] {
        &self.0
    }
}

impl SealedValue for &[u8] {
    fn value(&self) -> &[u8] {
        self
    }
}

impl Hash for dyn SealedValue + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let bytes = self.value();
        bytes.get(..HASHED_PREFIX).unwrap_or(bytes).hash(state);
    }
}

impl PartialEq for dyn SealedValue + '_ {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.value(), other.value());
        // The same bytes: eviction looks up a key the queue shares with the map, which would
        // otherwise compare a kilobyte with itself, twice.
        std::ptr::eq(a, b) || byte_loops::eq(a, b)
    }
}

impl Eq for dyn SealedValue + '_ {}

// A stored key hashes and compares as its value does, as `Borrow` requires.
impl Hash for Sealed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn SealedValue).hash(state);
    }
}

impl PartialEq for Sealed {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn SealedValue) == (other as &dyn SealedValue)
    }
}

impl Eq for Sealed {}

impl<'a> Borrow<dyn SealedValue + 'a> for Sealed {
    fn borrow(&self) -> &(dyn SealedValue + 'a) {
        self
    }
}

/// Hashes the head of a sealed value a word at a time (the Fx hash's step). No key
/// is needed against flooding: only values that opened (sealed by us, with a random nonce in
/// the head) are ever stored, and the cache is bounded.
#[derive(Default)]
struct HeadHasher(u64);

impl Hasher for HeadHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(byte_loops::word(word));
        }
        for &b in words.remainder() {
            self.add(u64::from(b));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl HeadHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

struct Entry {
    session: Rc<Session>,
    /// Used since it was cached or last spared by eviction.
    used: Cell<bool>,
}

pub struct SessionCache {
    /// Sessions ended before their cookie: an opened session they name is no session.
    pub denied: DenyList,
    capacity: usize,
    entries: HashMap<Sealed, Entry, BuildHasherDefault<HeadHasher>>,
    /// Insertion order, for eviction (oldest first; a spared entry goes to the back).
    order: VecDeque<Sealed>,
    /// Where a miss decodes the cookie: kept, so that a miss does not allocate for it.
    scratch: Vec<u8>,
}

impl SessionCache {
    /// A cache of at most `capacity` sessions; 0 disables it.
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache {
            denied: DenyList::default(),
            capacity,
            entries: HashMap::default(),
            order: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn unless_denied(&self, session: &Rc<Session>) -> Result<Rc<Session>, NoSession> {
        // One branch on the common path: the list is usually empty.
        if !self.denied.is_empty() && self.denied.denies(session) {
            return Err(NoSession::LoggedOut);
        }
        Ok(Rc::clone(session))
    }

    /// The session in the request's cookies, from the cache or opened (and then remembered),
    /// unless a logout ended it. Opened, its second part is decrypted too when `whole()` says
    /// the request will need it (one pass instead of two); asked only on a miss.
    pub fn open(
        &mut self,
        keys: &KeyRing,
        name: &str,
        jar: &Jar,
        whole: impl FnOnce() -> bool,
    ) -> Result<Rc<Session>, NoSession> {
        let sealed = Session::sealed_in(name, jar)?;
        let value: &[u8] = &sealed;
        if let Some(entry) = self.entries.get(&value as &dyn SealedValue) {
            entry.used.set(true);
            return self.unless_denied(&entry.session);
        }
        let sealed: Rc<[u8]> = Rc::from(value);
        let session = Rc::new(if whole() {
            Session::open_sealed(keys, name, &sealed)?
        } else {
            Session::open_first(keys, name, Rc::clone(&sealed), &mut self.scratch)?
        });
        if !self.denied.is_empty() && self.denied.denies(&session) {
            return Err(NoSession::LoggedOut);
        }
        if self.capacity > 0 {
            if self.entries.len() >= self.capacity {
                self.evict_one();
            }
            let key = Sealed(sealed);
            self.order.push_back(key.clone());
            let entry = Entry {
                session: Rc::clone(&session),
                used: Cell::new(false),
            };
            self.entries.insert(key, entry);
        }
        Ok(session)
    }

    /// Removes the oldest entry not used since it was cached or last spared; the used ones
    /// it passes lose their flag and go to the back. Ends within one round of the queue.
    fn evict_one(&mut self) {
        while let Some(oldest) = self.order.pop_front() {
            match self.entries.get(&oldest) {
                Some(entry) if entry.used.replace(false) => self.order.push_back(oldest),
                _ => {
                    self.entries.remove(&oldest);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::KEY_A;
    use crate::random::CountingRandom;
    use crate::secret::Secret;
    use crate::session::contents::{Cold, ColdFields};
    use crate::session::cookie::tests::jar;

    const N: &str = "__Host-bff-session";

    fn cookie(subject: &str, keys: &KeyRing) -> String {
        let s = Session {
            access_token: Secret::new("at"),
            access_expires_at: 2000,
            subject: subject.into(),
            created: 1000,
            last_seen: 1000,
            sid: "s".into(),
            idp_sid: None,
            cold: Cold::Open(ColdFields {
                refresh_token: None,
                id_token: None,
            }),
        };
        format!(
            "{N}={}",
            s.seal(keys, N, &mut CountingRandom(subject.len() as u8))
                .unwrap()
        )
    }

    #[test]
    fn a_hit_returns_the_same_session_without_opening_again() {
        let keys = KeyRing::from_base64_list(KEY_A).unwrap();
        let mut cache = SessionCache::new(2);
        let a = cookie("alice", &keys);
        let first = cache.open(&keys, N, &jar(&a), || false).unwrap();
        let second = cache.open(&keys, N, &jar(&a), || false).unwrap();
        assert!(Rc::ptr_eq(&first, &second));
        assert_eq!(first.subject, "alice");
    }

    /// The sealed values the cache holds, sorted.
    fn kept(cache: &SessionCache) -> Vec<String> {
        let mut values: Vec<String> = cache
            .order
            .iter()
            .filter(|k| cache.entries.contains_key(*k))
            .map(|k| String::from_utf8_lossy(&k.0).into_owned())
            .collect();
        values.sort();
        values
    }

    /// The cookies' sealed values, sorted as `kept` sorts them.
    fn values_of(cookies: &[&String]) -> Vec<String> {
        let mut values: Vec<String> = cookies
            .iter()
            .map(|c| c.split_once('=').unwrap().1.to_string())
            .collect();
        values.sort();
        values
    }

    #[test]
    fn eviction_spares_the_sessions_in_use() {
        let keys = KeyRing::from_base64_list(KEY_A).unwrap();
        let mut cache = SessionCache::new(3);
        let [a, b, c, d, e] = ["a", "bb", "ccc", "dddd", "eeeee"].map(|w| cookie(w, &keys));
        for x in [&a, &b, &c] {
            cache.open(&keys, N, &jar(x), || false).unwrap();
        }
        let first_a = cache.open(&keys, N, &jar(&a), || false).unwrap(); // a is in use
        cache.open(&keys, N, &jar(&d), || false).unwrap(); // full: a is spared, b (the next oldest) goes
        assert_eq!(cache.len(), 3);
        assert!(Rc::ptr_eq(
            &first_a,
            &cache.open(&keys, N, &jar(&a), || false).unwrap()
        ));
        cache.open(&keys, N, &jar(&e), || false).unwrap(); // c goes (a was used again, but c is older)
        assert!(Rc::ptr_eq(
            &first_a,
            &cache.open(&keys, N, &jar(&a), || false).unwrap()
        ));
        assert_eq!(kept(&cache), values_of(&[&a, &d, &e]), "b and c went");
        // When every entry is in use, one round clears the flags and the oldest goes.
        let mut all_used = SessionCache::new(2);
        for x in [&a, &b, &a, &b, &c] {
            all_used.open(&keys, N, &jar(x), || false).unwrap();
        }
        assert_eq!(kept(&all_used), values_of(&[&b, &c]));
        assert_eq!(all_used.len(), 2);
    }

    #[test]
    fn the_second_part_is_opened_with_the_first_only_when_asked() {
        let keys = KeyRing::from_base64_list(KEY_A).unwrap();
        let a = cookie("alice", &keys);
        let mut cache = SessionCache::new(2);
        let lazy = cache.open(&keys, N, &jar(&a), || false).unwrap();
        assert!(matches!(&lazy.cold, Cold::Sealed { opened, .. } if opened.get().is_none()));
        let mut cache = SessionCache::new(2);
        let whole = cache.open(&keys, N, &jar(&a), || true).unwrap();
        assert!(matches!(&whole.cold, Cold::Open(_)));
        assert_eq!(whole.cold(&keys, N), lazy.cold(&keys, N));
        // A hit does not ask.
        let hit = cache
            .open(&keys, N, &jar(&a), || panic!("asked on a hit"))
            .unwrap();
        assert!(Rc::ptr_eq(&hit, &whole));
    }

    #[test]
    fn a_forged_tail_never_hits() {
        let keys = KeyRing::from_base64_list(KEY_A).unwrap();
        let mut cache = SessionCache::new(4);
        let good = cookie("alice", &keys);
        cache.open(&keys, N, &jar(&good), || false).unwrap();
        // Same head (and so the same hash), another tail: must be opened, and fail.
        let mut forged = good.clone();
        forged.pop();
        forged.push(if good.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(
            cache.open(&keys, N, &jar(&forged), || false).unwrap_err(),
            NoSession::Unreadable
        );
    }

    #[test]
    fn bounded_and_never_fed_by_garbage() {
        let keys = KeyRing::from_base64_list(KEY_A).unwrap();
        let mut cache = SessionCache::new(2);
        for who in ["a", "bb", "ccc"] {
            cache
                .open(&keys, N, &jar(&cookie(who, &keys)), || false)
                .unwrap();
        }
        assert_eq!(cache.len(), 2, "the oldest went");
        for junk in [
            "__Host-bff-session=garbage",
            "__Host-bff-session=v1.x.y",
            "x=y",
        ] {
            assert!(cache.open(&keys, N, &jar(junk), || false).is_err());
        }
        assert_eq!(cache.len(), 2);
        let mut off = SessionCache::new(0);
        off.open(&keys, N, &jar(&cookie("a", &keys)), || false)
            .unwrap();
        assert!(off.is_empty());
    }
}
