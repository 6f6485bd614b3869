//! What the Envoy workers share: proxy-wasm shared data, seen through a small trait so that
//! the rules about it (key names, time stamps, compare-and-swap claims) are tested natively.

use crate::config::Config;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The compare-and-swap value of a shared entry; 0 never names an entry.
pub type Cas = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone wrote the entry since we read it.
    CasMismatch,
    /// The host refused for another reason.
    Failed,
}

/// Process-wide key/value data, as proxy-wasm shared data offers it.
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)>;
    /// `cas: Some(c)` writes only if the entry still has `c`. On a missing key the host
    /// writes unconditionally, so CAS protects only entries that already exist.
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError>;
}

/// A prefix that keeps two filter configurations in one Envoy (another IdP or client)
/// from reading each other's entries.
pub fn namespace(config: &Config) -> String {
    let digest = Sha256::new()
        .chain_update(config.issuer.as_bytes())
        .chain_update(b"\0")
        .chain_update(config.client_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(config.cookie.name.as_bytes())
        .finalize();
    format!(
        "bff.{}",
        URL_SAFE_NO_PAD.encode(digest.get(..9).unwrap_or_default())
    )
}

/// Creates `key` with `initial` unless it exists (when the filter starts): compare-and-swap
/// protects only entries that already exist, since the host writes a missing key
/// unconditionally. `initial` must not be empty: some hosts hand an empty value back as none.
pub fn create_if_missing(store: &dyn SharedStore, key: &str, initial: &[u8]) {
    if store.get(key).is_none() {
        let _ = store.set(key, initial, None);
    }
}

/// How often a compare-and-swap is tried again when another worker wrote in between.
const CAS_ATTEMPTS: usize = 16;

/// Read-modify-write of an existing entry by compare-and-swap, tried again while other workers
/// write in between: `change` gets the current value and returns the new one, or `None` to
/// leave it. True when written.
pub fn update(
    store: &dyn SharedStore,
    key: &str,
    mut change: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let Some((bytes, cas)) = store.get(key) else {
            return false;
        };
        let Some(new) = change(&bytes) else {
            return false;
        };
        match store.set(key, &new, Some(cas)) {
            Ok(()) => return true,
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return false,
        }
    }
    false
}

/// An entry with the time it was written: `<unix seconds>\n<body>`.
pub fn stamped(at: u64, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{at}\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// Splits a stamped entry; `None` if it is not one.
pub fn unstamp(entry: &[u8]) -> Option<(u64, &[u8])> {
    let newline = entry.iter().position(|b| *b == b'\n')?;
    let (head, rest) = entry.split_at(newline);
    let at = std::str::from_utf8(head).ok()?.parse().ok()?;
    Some((at, rest.get(1..).unwrap_or_default()))
}

/// An in-memory store with the host's semantics, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryStore {
    entries: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, Cas)>>,
    next_cas: std::cell::Cell<Cas>,
}

#[cfg(test)]
impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.entries.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        let mut entries = self.entries.borrow_mut();
        if let (Some((_, current)), Some(expected)) = (entries.get(key), cas) {
            if *current != expected {
                return Err(StoreError::CasMismatch);
            }
        }
        self.next_cas.set(self.next_cas.get() + 1);
        entries.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json};

    #[test]
    fn stamps_round_trip() {
        let e = stamped(1700000000, b"{\"a\":\n1}");
        assert_eq!(unstamp(&e), Some((1700000000, &b"{\"a\":\n1}"[..])));
        assert_eq!(unstamp(b"nonsense"), None);
        assert_eq!(unstamp(b"12x\nbody"), None);
        assert_eq!(unstamp(b"5\n"), Some((5, &b""[..])));
    }

    #[test]
    fn namespaces_differ_per_client() {
        let a = namespace(&config_from(minimal_json()));
        let mut v = minimal_json();
        v["client_id"] = serde_json::json!("other");
        assert_ne!(a, namespace(&config_from(v)));
        assert!(a.starts_with("bff.") && a.len() == 16);
    }

    #[test]
    fn memory_store_has_the_hosts_cas_rules() {
        let s = MemoryStore::default();
        assert_eq!(s.get("k"), None);
        s.set("k", b"1", Some(42)).unwrap(); // missing key: written whatever the cas
        let (_, cas) = s.get("k").unwrap();
        assert_eq!(
            s.set("k", b"2", Some(cas + 7)),
            Err(StoreError::CasMismatch)
        );
        s.set("k", b"2", Some(cas)).unwrap();
        assert_eq!(s.get("k").unwrap().0, b"2");
        assert_eq!(s.set("k", b"3", Some(cas)), Err(StoreError::CasMismatch));
        s.set("k", b"4", None).unwrap();
    }
}
