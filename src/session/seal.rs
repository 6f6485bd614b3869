//! Sealing cookie values with an AEAD and a key ring.
//!
//! Format: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, with the cookie's name as
//! associated data so a value cannot be moved into another cookie.
//!
//! XChaCha20-Poly1305: wasm has no AES instructions, and ChaCha20 in portable code is several
//! times faster than table-free software AES (see README, *Cookies*, "Sealing"). The
//! 192-bit nonce makes random nonces safe for any number of cookies under one key.
//! The keystream is computed four blocks at a time with wasm SIMD (`xchacha20`); the AEAD
//! construction around it is the `chacha20poly1305` crate's.

use super::xchacha20::XChaCha20Poly1305;
use crate::random::{Random, RandomUnavailable};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The cookie keys: the first seals, every one opens, so keys rotate without logging anyone out.
#[derive(Clone)]
pub struct KeyRing {
    keys: std::rc::Rc<Vec<Key>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        write!(f, "KeyRing{ids:?}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    NotBase64 { position: usize },
    WrongLength { position: usize, len: usize },
    Duplicate { position: usize },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => f.write_str("needs at least one key (32 random bytes, base64)"),
            KeyError::NotBase64 { position } => {
                write!(
                    f,
                    "key #{position} is not base64 (generate one with: openssl rand -base64 32)"
                )
            }
            KeyError::WrongLength { position, len } => write!(
                f,
                "key #{position} decodes to {len} bytes; it must be 32 (openssl rand -base64 32)"
            ),
            KeyError::Duplicate { position } => write!(f, "key #{position} repeats an earlier key"),
        }
    }
}

/// Why a sealed value did not open. All of them mean "no valid session" to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    Malformed,
    UnknownKey,
    Forged,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpenError::Malformed => "not a sealed value",
            OpenError::UnknownKey => "sealed with a key that is not configured",
            OpenError::Forged => "failed authentication (tampered, truncated or wrong cookie)",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    Random(RandomUnavailable),
    Cipher,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::Random(e) => e.fmt(f),
            SealError::Cipher => f.write_str("encryption failed"),
        }
    }
}

/// A short, stable id for a key that reveals nothing useful about it.
fn key_id(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"envoy-bff cookie key id\0")
        .chain_update(key)
        .finalize();
    URL_SAFE_NO_PAD.encode(digest.get(..6).unwrap_or_default())
}

fn decode_any_base64(s: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .ok()
}

impl KeyRing {
    /// Keys separated by commas or white space, each 32 bytes in base64 (standard or url-safe).
    pub fn from_base64_list(list: &str) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, item) in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let position = i + 1;
            let bytes = decode_any_base64(item).ok_or(KeyError::NotBase64 { position })?;
            if bytes.len() != KEY_LEN {
                return Err(KeyError::WrongLength {
                    position,
                    len: bytes.len(),
                });
            }
            let id = key_id(&bytes);
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::Duplicate { position });
            }
            let cipher =
                XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| KeyError::WrongLength {
                    position,
                    len: bytes.len(),
                })?;
            keys.push(Key { id, cipher });
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(KeyRing {
            keys: std::rc::Rc::new(keys),
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Seals `plaintext` for the cookie called `name` with the first key.
    pub fn seal(
        &self,
        name: &str,
        plaintext: &[u8],
        rng: &mut dyn Random,
    ) -> Result<String, SealError> {
        let key = self.keys.first().ok_or(SealError::Cipher)?;
        // nonce ‖ plaintext, encrypted where it lies, then the tag: one buffer, as `open` reads it.
        let mut blob = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.resize(NONCE_LEN, 0);
        rng.fill(&mut blob).map_err(SealError::Random)?;
        blob.extend_from_slice(plaintext);
        let (nonce, message) = blob.split_at_mut(NONCE_LEN);
        let tag = key
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), name.as_bytes(), message)
            .map_err(|_| SealError::Cipher)?;
        blob.extend_from_slice(&tag);
        Ok(format!(
            "{VERSION}.{}.{}",
            key.id,
            base64_simd::URL_SAFE_NO_PAD.encode_to_string(blob)
        ))
    }

    /// Opens a value sealed for the cookie called `name` by any key of the ring.
    /// Bytes, as the cookie came: a value that is not base64url is simply malformed.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut parts = sealed.splitn(3, |&b| b == b'.');
        let (Some(version), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Malformed);
        };
        if version != VERSION.as_bytes() {
            return Err(OpenError::Malformed);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == kid)
            .ok_or(OpenError::UnknownKey)?;
        let mut blob = base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(body)
            .map_err(|_| OpenError::Malformed)?;
        let len = blob.len();
        if len < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        // Opened where it lies: no second copy of the ciphertext.
        let (nonce, rest) = blob.split_at_mut(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at_mut(len - NONCE_LEN - TAG_LEN);
        key.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                name.as_bytes(),
                ciphertext,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Forged)?;
        blob.copy_within(NONCE_LEN..len - TAG_LEN, 0);
        blob.truncate(len - NONCE_LEN - TAG_LEN);
        Ok(blob)
    }

    /// Whether `sealed` was made with the sealing key (false means: re-seal when next written).
    pub fn is_current(&self, sealed: &str) -> bool {
        let kid = sealed.split('.').nth(1);
        self.keys
            .first()
            .map(|k| Some(k.id.as_str()) == kid)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{KEY_A, KEY_B};
    use crate::random::{BrokenRandom, CountingRandom};

    fn ring(list: &str) -> KeyRing {
        KeyRing::from_base64_list(list).unwrap()
    }

    #[test]
    fn round_trip() {
        let r = ring(KEY_A);
        let sealed = r.seal("c", b"hello", &mut CountingRandom(0)).unwrap();
        assert!(sealed.starts_with("v1."));
        assert_eq!(r.open("c", sealed.as_bytes()).unwrap(), b"hello");
        assert!(r.is_current(&sealed));
    }

    #[test]
    fn fresh_nonce_each_time() {
        let r = ring(KEY_A);
        let mut rng = CountingRandom(0);
        assert_ne!(
            r.seal("c", b"x", &mut rng).unwrap(),
            r.seal("c", b"x", &mut rng).unwrap()
        );
    }

    #[test]
    fn bound_to_the_cookie_name() {
        let r = ring(KEY_A);
        let sealed = r.seal("session", b"x", &mut CountingRandom(0)).unwrap();
        assert_eq!(r.open("other", sealed.as_bytes()), Err(OpenError::Forged));
    }

    #[test]
    fn tampering_is_detected_at_every_position() {
        let r = ring(KEY_A);
        let sealed = r
            .seal("c", b"some session data", &mut CountingRandom(0))
            .unwrap();
        let body_start = sealed.rfind('.').unwrap() + 1;
        for i in body_start..sealed.len() {
            let mut bytes = sealed.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(r.open("c", tampered.as_bytes()).is_err(), "position {i}");
        }
    }

    #[test]
    fn truncated_and_garbage_values_are_refused() {
        let r = ring(KEY_A);
        let sealed = r.seal("c", b"data", &mut CountingRandom(0)).unwrap();
        for cut in [0, 1, 3, 10, sealed.len() / 2, sealed.len() - 1] {
            assert!(
                r.open("c", &sealed.as_bytes()[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for garbage in [
            "",
            "v1",
            "v1..",
            "v2.x.y",
            "v1.zzzzzzzz.!!!",
            "\u{0}\u{ff}",
            "v1.a.b.c",
        ] {
            assert!(r.open("c", garbage.as_bytes()).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn only_canonical_unpadded_base64url_opens() {
        let r = ring(KEY_A);
        // 24 + 4 + 16 = 44 bytes: 59 characters, the last with two spare (zero) bits.
        let sealed = r.seal("c", b"data", &mut CountingRandom(0)).unwrap();
        assert!(r.open("c", sealed.as_bytes()).is_ok());
        assert!(r.open("c", format!("{sealed}=").as_bytes()).is_err());
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bytes = sealed.into_bytes();
        let last = bytes.last_mut().unwrap();
        let value = alphabet.iter().position(|c| c == last).unwrap();
        assert_eq!(value & 3, 0, "the spare bits are zero");
        *last = alphabet[value | 1];
        assert_eq!(r.open("c", &bytes), Err(OpenError::Malformed));
    }

    #[test]
    fn a_foreign_key_cannot_open() {
        let sealed = ring(KEY_A).seal("c", b"x", &mut CountingRandom(0)).unwrap();
        assert_eq!(
            ring(KEY_B).open("c", sealed.as_bytes()),
            Err(OpenError::UnknownKey)
        );
        // Same id but different key material cannot happen; a forged id with our key id fails auth.
        let kid = sealed.split('.').nth(1).unwrap();
        let other = ring(KEY_B).seal("c", b"x", &mut CountingRandom(0)).unwrap();
        let spliced = format!("v1.{kid}.{}", other.rsplit('.').next().unwrap());
        assert_eq!(
            ring(KEY_A).open("c", spliced.as_bytes()),
            Err(OpenError::Forged)
        );
    }

    #[test]
    fn rotation_old_keys_still_open() {
        let old = ring(KEY_A).seal("c", b"x", &mut CountingRandom(0)).unwrap();
        let rotated = ring(&format!("{KEY_B},{KEY_A}"));
        assert_eq!(rotated.open("c", old.as_bytes()).unwrap(), b"x");
        assert!(!rotated.is_current(&old));
        let new = rotated.seal("c", b"x", &mut CountingRandom(0)).unwrap();
        assert!(rotated.is_current(&new));
    }

    #[test]
    fn bad_key_lists_are_explained() {
        assert_eq!(
            KeyRing::from_base64_list(" , ").unwrap_err(),
            KeyError::Empty
        );
        assert_eq!(
            KeyRing::from_base64_list("c2hvcnQ=").unwrap_err(),
            KeyError::WrongLength {
                position: 1,
                len: 5
            }
        );
        assert_eq!(
            KeyRing::from_base64_list(&format!("{KEY_A} ***")).unwrap_err(),
            KeyError::NotBase64 { position: 2 }
        );
        assert_eq!(
            KeyRing::from_base64_list(&format!("{KEY_A},{KEY_A}")).unwrap_err(),
            KeyError::Duplicate { position: 2 }
        );
    }

    #[test]
    fn no_randomness_no_seal() {
        let r = ring(KEY_A);
        assert!(matches!(
            r.seal("c", b"x", &mut BrokenRandom),
            Err(SealError::Random(_))
        ));
    }
}
