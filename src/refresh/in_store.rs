//! One refresh per session across replicas: what the store (etcd) holds for a refresh token.
//!
//! One key per refresh token's digest. The replica that creates it (a transaction that writes
//! only if the key is absent, under a lease a little longer than a refresh can take) refreshes
//! and then puts the outcome on the same key; the others read it until the outcome is there.
//! If the winner dies, its lease runs out, the key vanishes and the next reader claims it.
//!
//! Values are sealed with the cookie key, bound to their key: the store never holds a token
//! in clear, and a value forged or copied in the store does not open.

use super::single_flight::{Outcome, RefreshId};
use crate::random::Random;
use crate::session::KeyRing;
use std::time::Duration;

/// What the store says about one refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A replica is refreshing it.
    Claimed,
    /// Its outcome.
    Done(Outcome),
}

/// The store key of a refresh: `{prefix}{namespace}/refresh/{digest}`.
pub fn key(prefix: &str, ns: &str, id: &RefreshId) -> String {
    format!("{prefix}{ns}/refresh/{}", id.as_str())
}

/// Associated data: a value opens only under the refresh it was sealed for.
fn bound_to(id: &RefreshId) -> String {
    format!("envoy-bff refresh {}", id.as_str())
}

/// The value to write; `None` when no random nonce could be had.
pub fn seal(
    keys: &KeyRing,
    id: &RefreshId,
    entry: &Entry,
    rng: &mut dyn Random,
) -> Option<Vec<u8>> {
    let plain = match entry {
        Entry::Claimed => "claimed".to_string(),
        Entry::Done(outcome) => outcome.encode(),
    };
    keys.seal(&bound_to(id), plain.as_bytes(), rng)
        .ok()
        .map(String::into_bytes)
}

/// A value read from the store; `None` when it does not open (forged, garbled, moved from
/// another key, or sealed with a key this replica does not have).
pub fn open(keys: &KeyRing, id: &RefreshId, value: &[u8]) -> Option<Entry> {
    let plain = keys.open(&bound_to(id), value).ok()?;
    match std::str::from_utf8(&plain).ok()? {
        "claimed" => Some(Entry::Claimed),
        text => Outcome::decode(text).map(Entry::Done),
    }
}

/// The claim's lease, in whole seconds: the refresh (`idp_timeout`) and the outcome's lease and
/// put (a `store_timeout` each) must fit in it, or another replica could take over while the
/// winner is still at work; one second more for the clocks' rounding.
pub fn claim_ttl_s(idp_timeout: Duration, store_timeout: Duration) -> u64 {
    let ms = idp_timeout
        .saturating_add(store_timeout.saturating_mul(2))
        .as_millis();
    u64::try_from(ms.div_ceil(1000))
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{KEY_A, KEY_B};
    use crate::random::CountingRandom;
    use crate::secret::Secret;

    fn ring(keys: &str) -> KeyRing {
        KeyRing::from_base64_list(keys).unwrap()
    }

    #[test]
    fn entries_round_trip_sealed_and_bound_to_their_refresh() {
        let keys = ring(KEY_A);
        let mut rng = CountingRandom(1);
        let id = RefreshId::of(&Secret::new("rt-1"));
        for entry in [
            Entry::Claimed,
            Entry::Done(Outcome::Renewed("v1.k.c2VhbGVk".into())),
            Entry::Done(Outcome::Ended),
            Entry::Done(Outcome::Unavailable),
            Entry::Done(Outcome::Superseded {
                until: 1_800_000_100,
            }),
        ] {
            let value = seal(&keys, &id, &entry, &mut rng).unwrap();
            let text = String::from_utf8(value.clone()).unwrap();
            assert!(
                !text.contains("renewed") && !text.contains("claimed"),
                "{text}"
            );
            assert_eq!(open(&keys, &id, &value), Some(entry.clone()));
            // Moved to another refresh's key, or opened with another cookie key: nothing.
            let other = RefreshId::of(&Secret::new("rt-2"));
            assert_eq!(open(&keys, &other, &value), None);
            assert_eq!(open(&ring(KEY_B), &id, &value), None);
        }
        // A rotated ring (new key first) still opens what the old key sealed.
        let old = seal(&keys, &id, &Entry::Claimed, &mut rng).unwrap();
        let rotated = ring(&format!("{KEY_B},{KEY_A}"));
        assert_eq!(open(&rotated, &id, &old), Some(Entry::Claimed));
    }

    #[test]
    fn forged_and_garbled_values_do_not_open() {
        let keys = ring(KEY_A);
        let id = RefreshId::of(&Secret::new("rt-1"));
        let mut sealed = seal(
            &keys,
            &id,
            &Entry::Done(Outcome::Ended),
            &mut CountingRandom(3),
        )
        .unwrap();
        let last = sealed.len() - 2;
        sealed[last] = if sealed[last] == b'A' { b'B' } else { b'A' };
        for value in [
            &sealed[..],
            b"claimed",
            b"renewed v1.k.abc",
            b"",
            b"\xff\xfe",
            b"v1.x.",
        ] {
            assert_eq!(open(&keys, &id, value), None, "{value:?}");
        }
    }

    #[test]
    fn the_claim_outlives_a_refresh_and_its_publication() {
        let s = Duration::from_secs;
        assert_eq!(claim_ttl_s(s(5), Duration::from_millis(1500)), 9);
        assert_eq!(
            claim_ttl_s(Duration::from_millis(100), Duration::from_millis(100)),
            2
        );
        assert_eq!(
            key("bff/", "bff.ns", &RefreshId::of(&Secret::new("x")))
                .matches('/')
                .count(),
            3
        );
    }
}
