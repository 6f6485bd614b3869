//! Sealing cookie values with an AEAD and a key ring.
//!
//! Format: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, with the cookie's name as
//! associated data so a value cannot be moved into another cookie.
//!
//! A pair (the session cookie): `v2.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, one AEAD
//! over `len(first) as u16 LE ‖ first ‖ second`. Opening checks the tag over all of it, as
//! always, but may decrypt the first part alone (`open_first`, through `aead`): a request that
//! needs only that part pays no keystream for the rest.
//!
//! XChaCha20-Poly1305: wasm has no AES instructions, and ChaCha20 in portable code is several
//! times faster than table-free software AES (see README, *Cookies*, "Sealing"). The
//! 192-bit nonce makes random nonces safe for any number of cookies under one key.
//! The keystream is computed four blocks at a time with wasm SIMD (`xchacha20`); the AEAD
//! construction around it is the `chacha20poly1305` crate's.

use super::aead::Verified;
use super::xchacha20::XChaCha20Poly1305;
use crate::random::{Random, RandomUnavailable};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;

const VERSION: &str = "v1";
const PAIR_VERSION: &str = "v2";
/// A pair's first part's length (u16, little-endian), before it: a cookie of ten chunks is
/// far shorter than 64 KiB.
const LEN_LEN: usize = 2;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    /// The key itself, for `aead` (opening a pair's first part).
    bytes: [u8; KEY_LEN],
}

impl Drop for Key {
    fn drop(&mut self) {
        for b in self.bytes.iter_mut() {
            // SAFETY: a plain write to a valid byte; volatile so it is not elided.
            unsafe { core::ptr::write_volatile(b, 0) };
        }
    }
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
    /// The session's second part, still sealed, did not open (so it cannot be sealed anew).
    Unopened,
}

/// What the first part of a sealed value gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// A value sealed whole (`v1`): all of it.
    Whole(Vec<u8>),
    /// A pair (`v2`): its first plaintext, in the caller's buffer; `open_pair` gives both.
    First(&'a [u8]),
}

/// Both plaintexts of an opened pair, where they lie.
#[derive(Debug, PartialEq, Eq)]
pub struct Pair {
    plain: Vec<u8>,
    /// Where the first part ends (after the length before it).
    end: usize,
}

impl Pair {
    pub fn first(&self) -> &[u8] {
        self.plain.get(LEN_LEN..self.end).unwrap_or_default()
    }

    pub fn second(&self) -> &[u8] {
        self.plain.get(self.end..).unwrap_or_default()
    }
}

/// A sealed value's version, key id and body.
struct Parts<'a> {
    version: &'a [u8],
    kid: &'a [u8],
    body: &'a [u8],
}

fn parts(sealed: &[u8]) -> Result<Parts<'_>, OpenError> {
    let mut parts = sealed.splitn(3, |&b| b == b'.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(version), Some(kid), Some(body)) => Ok(Parts { version, kid, body }),
        _ => Err(OpenError::Malformed),
    }
}

/// Where a pair's first part ends in its plaintext, from the length before it.
fn first_end(len: Option<&[u8]>) -> Result<usize, OpenError> {
    let len = len
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(OpenError::Malformed)?;
    Ok(LEN_LEN + usize::from(len))
}

fn decode_body(body: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut blob = Vec::new();
    decode_body_into(body, &mut blob)?;
    Ok(blob)
}

/// Decodes into `buf`, its old contents dropped and its room kept.
fn decode_body_into(body: &[u8], buf: &mut Vec<u8>) -> Result<(), OpenError> {
    buf.clear();
    base64_simd::URL_SAFE_NO_PAD
        .decode_append(body, buf)
        .map(|_| ())
        .map_err(|_| OpenError::Malformed)
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::Random(e) => e.fmt(f),
            SealError::Cipher => f.write_str("encryption failed"),
            SealError::Unopened => f.write_str("the session's second part did not open"),
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
            let bytes: [u8; KEY_LEN] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::WrongLength {
                        position,
                        len: bytes.len(),
                    })?;
            keys.push(Key { id, cipher, bytes });
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
        let body = Self::seal_body(key, name, plaintext, rng)?;
        Ok(format!("{VERSION}.{}.{body}", key.id))
    }

    /// Seals two plaintexts as a pair for the cookie called `name` with the first key: the
    /// first opens alone (`open_first`), both together (`open_pair`).
    pub fn seal_pair(
        &self,
        name: &str,
        first: &[u8],
        second: &[u8],
        rng: &mut dyn Random,
    ) -> Result<String, SealError> {
        let key = self.keys.first().ok_or(SealError::Cipher)?;
        let len = u16::try_from(first.len()).map_err(|_| SealError::Cipher)?;
        let mut plaintext = Vec::with_capacity(LEN_LEN + first.len() + second.len());
        plaintext.extend_from_slice(&len.to_le_bytes());
        plaintext.extend_from_slice(first);
        plaintext.extend_from_slice(second);
        let body = Self::seal_body(key, name, &plaintext, rng)?;
        Ok(format!("{PAIR_VERSION}.{}.{body}", key.id))
    }

    /// base64url(nonce ‖ ciphertext ‖ tag) under a fresh random nonce.
    fn seal_body(
        key: &Key,
        name: &str,
        plaintext: &[u8],
        rng: &mut dyn Random,
    ) -> Result<String, SealError> {
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
        Ok(base64_simd::URL_SAFE_NO_PAD.encode_to_string(blob))
    }

    fn key(&self, kid: &[u8]) -> Result<&Key, OpenError> {
        self.keys
            .iter()
            .find(|k| k.id.as_bytes() == kid)
            .ok_or(OpenError::UnknownKey)
    }

    /// Opens a value sealed for the cookie called `name` by any key of the ring.
    /// Bytes, as the cookie came: a value that is not base64url is simply malformed.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let Parts { version, kid, body } = parts(sealed)?;
        if version != VERSION.as_bytes() {
            return Err(OpenError::Malformed);
        }
        Self::open_body(self.key(kid)?, name, body)
    }

    /// Opens base64url(nonce ‖ ciphertext ‖ tag) where it lies: no second copy.
    fn open_body(key: &Key, name: &str, body: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut blob = decode_body(body)?;
        let len = blob.len();
        if len < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
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

    /// Opens a value sealed whole (`seal`), or the first part of a pair (`seal_pair`): the
    /// tag is checked over the whole pair, the rest is not decrypted. A pair is decoded into
    /// `buf` (its old contents dropped, its room kept), where the first plaintext is left: a
    /// cache miss then allocates nothing for it.
    pub fn open_first<'a>(
        &self,
        name: &str,
        sealed: &[u8],
        buf: &'a mut Vec<u8>,
    ) -> Result<Opened<'a>, OpenError> {
        let Parts { version, kid, body } = parts(sealed)?;
        if version == VERSION.as_bytes() {
            return Self::open_body(self.key(kid)?, name, body).map(Opened::Whole);
        }
        if version != PAIR_VERSION.as_bytes() {
            return Err(OpenError::Malformed);
        }
        let key = self.key(kid)?;
        decode_body_into(body, buf)?;
        let (nonce, rest) = buf
            .split_at_mut_checked(NONCE_LEN)
            .ok_or(OpenError::Malformed)?;
        let at = rest
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(OpenError::Malformed)?;
        let (ciphertext, tag) = rest.split_at_mut(at);
        let (Ok(nonce), Ok(tag)) = (
            <&[u8; NONCE_LEN]>::try_from(&*nonce),
            <&[u8; TAG_LEN]>::try_from(&*tag),
        ) else {
            return Err(OpenError::Malformed);
        };
        let mut plain = Verified::check(&key.bytes, nonce, name.as_bytes(), ciphertext, tag)
            .map_err(|_| OpenError::Forged)?;
        let end = first_end(plain.up_to(LEN_LEN))?;
        let first = plain.into_prefix(end).ok_or(OpenError::Malformed)?;
        Ok(Opened::First(first.get(LEN_LEN..).unwrap_or_default()))
    }

    /// Opens both parts of a pair.
    pub fn open_pair(&self, name: &str, sealed: &[u8]) -> Result<Pair, OpenError> {
        let Parts { version, kid, body } = parts(sealed)?;
        if version != PAIR_VERSION.as_bytes() {
            return Err(OpenError::Malformed);
        }
        let plain = Self::open_body(self.key(kid)?, name, body)?;
        let end = first_end(plain.get(..LEN_LEN))?;
        if end > plain.len() {
            return Err(OpenError::Malformed);
        }
        Ok(Pair { plain, end })
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
    fn a_pair_opens_part_by_part() {
        let r = ring(KEY_A);
        let sealed = r
            .seal_pair("c", b"first", b"second", &mut CountingRandom(0))
            .unwrap();
        assert!(sealed.starts_with("v2."));
        assert_eq!(
            r.open_first("c", sealed.as_bytes(), &mut Vec::new()),
            Ok(Opened::First(&b"first"[..]))
        );
        let pair = r.open_pair("c", sealed.as_bytes()).unwrap();
        assert_eq!(
            (pair.first(), pair.second()),
            (&b"first"[..], &b"second"[..])
        );
        assert!(r.is_current(&sealed));
        // One AEAD over both and a two-byte length: 24 + 2 + 16 bytes besides the parts.
        let empty = r.seal_pair("c", b"", b"", &mut CountingRandom(0)).unwrap();
        assert_eq!(empty.len(), "v2.".len() + 8 + 1 + 56);
        // A first part too long for the length is not sealed.
        assert_eq!(
            r.seal_pair("c", &vec![0; 65_536], b"", &mut CountingRandom(0)),
            Err(SealError::Cipher)
        );
        assert_eq!(
            r.open_first("c", empty.as_bytes(), &mut Vec::new()),
            Ok(Opened::First(&[][..]))
        );
        let pair = r.open_pair("c", empty.as_bytes()).unwrap();
        assert_eq!((pair.first(), pair.second()), (&b""[..], &b""[..]));
        // Sealed whole, a value opens whole; it has no second part.
        let whole = r.seal("c", b"all", &mut CountingRandom(0)).unwrap();
        assert_eq!(
            r.open_first("c", whole.as_bytes(), &mut Vec::new()),
            Ok(Opened::Whole(b"all".to_vec()))
        );
        assert_eq!(
            r.open_pair("c", whole.as_bytes()),
            Err(OpenError::Malformed)
        );
        assert_eq!(r.open("c", sealed.as_bytes()), Err(OpenError::Malformed));
        // Bound to the name and the key, as a value sealed whole.
        assert_eq!(
            r.open_first("other", sealed.as_bytes(), &mut Vec::new()),
            Err(OpenError::Forged)
        );
        assert_eq!(
            r.open_pair("other", sealed.as_bytes()),
            Err(OpenError::Forged)
        );
        assert_eq!(
            ring(KEY_B).open_first("c", sealed.as_bytes(), &mut Vec::new()),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn tampering_a_pair_anywhere_fails_both_openings() {
        let r = ring(KEY_A);
        let sealed = r
            .seal_pair("c", b"first part", b"second part", &mut CountingRandom(0))
            .unwrap();
        let body_start = sealed.rfind('.').unwrap() + 1;
        for i in body_start..sealed.len() {
            let mut bytes = sealed.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            assert!(
                r.open_first("c", &bytes, &mut Vec::new()).is_err(),
                "position {i}"
            );
            assert!(r.open_pair("c", &bytes).is_err(), "position {i}");
        }
        for cut in 0..sealed.len() {
            let cut_value = &sealed.as_bytes()[..cut];
            assert!(
                r.open_first("c", cut_value, &mut Vec::new()).is_err(),
                "cut at {cut}"
            );
            assert!(r.open_pair("c", cut_value).is_err(), "cut at {cut}");
        }
        for garbage in ["v2", "v2..", "v2.x.y", "v2.a.b.c", "v3.a.b"] {
            assert!(
                r.open_first("c", garbage.as_bytes(), &mut Vec::new())
                    .is_err(),
                "{garbage}"
            );
            assert!(r.open_pair("c", garbage.as_bytes()).is_err(), "{garbage}");
        }
    }

    #[test]
    fn a_length_past_the_end_is_malformed() {
        // A value sealed by us whose length says more than there is: only a bug could make
        // one, but it must not open (nor read past the plaintext).
        let r = ring(KEY_A);
        let key = r.keys.first().unwrap();
        for len in [3u16, 100, u16::MAX] {
            let mut plaintext = len.to_le_bytes().to_vec();
            plaintext.extend_from_slice(b"ab");
            let body = KeyRing::seal_body(key, "c", &plaintext, &mut CountingRandom(0)).unwrap();
            let sealed = format!("v2.{}.{body}", key.id);
            assert_eq!(
                r.open_first("c", sealed.as_bytes(), &mut Vec::new()),
                Err(OpenError::Malformed)
            );
            assert_eq!(
                r.open_pair("c", sealed.as_bytes()),
                Err(OpenError::Malformed)
            );
        }
        let body = KeyRing::seal_body(key, "c", b"abc", &mut CountingRandom(0)).unwrap();
        let short = format!("v2.{}.{body}", key.id);
        assert_eq!(
            r.open_first("c", short.as_bytes(), &mut Vec::new()),
            Err(OpenError::Malformed)
        );
        assert_eq!(
            r.open_pair("c", short.as_bytes()),
            Err(OpenError::Malformed)
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
