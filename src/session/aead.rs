//! Opening the start of a sealed value only: the cookie AEAD (XChaCha20-Poly1305, RFC 8439
//! §2.8 over XChaCha20) checks its tag over the whole ciphertext, as always, then decrypts
//! only as many bytes as the caller asks for. The keystream is most of opening a session
//! that is not in the cache and Poly1305 the rest (bench/README.md, "The cost of a cache
//! miss"): a request that needs only the session's first part skips the keystream over the
//! rest. Sealing, and opening a whole value, stay `chacha20poly1305`'s construction over our
//! keystream (`xchacha20`); the tests below check that this one agrees with it.

use super::xchacha20::XChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::Poly1305;
use subtle::ConstantTimeEq;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// The tag does not match (or the message is too long for one nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forged;

/// A ciphertext whose tag matched, decrypted a piece at a time from its first byte on.
pub struct Verified<'a> {
    cipher: XChaCha20,
    ciphertext: &'a mut [u8],
    /// Bytes decrypted so far (the front of `ciphertext`).
    done: usize,
}

impl<'a> Verified<'a> {
    /// Checks `tag` over `ciphertext` in constant time; nothing is decrypted yet.
    pub fn check(
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &'a mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<Verified<'a>, Forged> {
        let mut cipher = XChaCha20::new(key.into(), nonce.into());
        // The MAC's one-time key: the first 32 bytes of block 0 (§2.6); the message from block 1.
        let mut mac_key = [0u8; 32];
        cipher
            .try_apply_keystream(&mut mac_key)
            .map_err(|_| Forged)?;
        cipher.try_seek(64u64).map_err(|_| Forged)?;
        let mut mac = Poly1305::new(&mac_key.into());
        wipe(&mut mac_key);
        mac.update_padded(aad);
        mac.update_padded(ciphertext);
        let mut lengths = [0u8; 16];
        let (aad_len, text_len) = lengths.split_at_mut(8);
        aad_len.copy_from_slice(&(aad.len() as u64).to_le_bytes());
        text_len.copy_from_slice(&(ciphertext.len() as u64).to_le_bytes());
        mac.update(&[lengths.into()]);
        if !bool::from(mac.finalize().as_slice().ct_eq(tag)) {
            return Err(Forged);
        }
        Ok(Verified {
            cipher,
            ciphertext,
            done: 0,
        })
    }

    /// The plaintext up to byte `end` (decrypting what is not yet); `None` past the end.
    pub fn up_to(&mut self, end: usize) -> Option<&[u8]> {
        if end > self.done {
            let more = self.ciphertext.get_mut(self.done..end)?;
            self.cipher.try_apply_keystream(more).ok()?;
            self.done = end;
        }
        self.ciphertext.get(..end)
    }

    /// The plaintext up to byte `end`, for as long as the ciphertext's buffer lives.
    pub fn into_prefix(mut self, end: usize) -> Option<&'a [u8]> {
        self.up_to(end)?;
        let ciphertext: &'a [u8] = self.ciphertext;
        ciphertext.get(..end)
    }
}

fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: a plain write to a valid byte; volatile so it is not elided.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::xchacha20::XChaCha20Poly1305;
    use crate::test_pattern::bytes;
    use chacha20poly1305::aead::AeadInPlace;
    use chacha20poly1305::{Tag, XNonce};

    fn seal(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], pt: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let aead = XChaCha20Poly1305::new(key.into());
        let mut ct = pt.to_vec();
        let tag = aead
            .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut ct)
            .unwrap();
        (ct, tag.into())
    }

    fn crate_opens(
        key: &[u8; 32],
        nonce: &[u8; 24],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8; 16],
    ) -> bool {
        let mut buf = ct.to_vec();
        XChaCha20Poly1305::new(key.into())
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                aad,
                &mut buf,
                Tag::from_slice(tag),
            )
            .is_ok()
    }

    #[test]
    fn agrees_with_the_crate_piece_by_piece() {
        let key: [u8; 32] = bytes(1, 32).try_into().unwrap();
        let nonce: [u8; 24] = bytes(2, 24).try_into().unwrap();
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 200, 255, 256, 257, 1083, 2100] {
            let pt = bytes(3, len);
            for aad in [&b""[..], b"__Host-bff-session", &bytes(4, 33)] {
                let (mut ct, tag) = seal(&key, &nonce, aad, &pt);
                let mut v = Verified::check(&key, &nonce, aad, &mut ct, &tag).unwrap();
                // In uneven pieces, each continuing where the last stopped.
                for end in [0, 3, 3, 10, 64, 65, 130, 191, 192, 193, 256, len / 2, len] {
                    if end <= len {
                        assert_eq!(v.up_to(end).unwrap(), &pt[..end], "{len} to {end}");
                    }
                }
                assert_eq!(v.up_to(len + 1), None);
                assert_eq!(v.up_to(len).unwrap(), &pt[..]);
            }
        }
    }

    #[test]
    fn refuses_what_the_crate_refuses() {
        let key: [u8; 32] = bytes(5, 32).try_into().unwrap();
        let nonce: [u8; 24] = bytes(6, 24).try_into().unwrap();
        let aad = b"__Host-bff-session";
        let pt = bytes(7, 100);
        let (ct, tag) = seal(&key, &nonce, aad, &pt);
        let check = |k: &[u8; 32], n: &[u8; 24], a: &[u8], c: &[u8], t: &[u8; 16]| {
            let mut buf = c.to_vec();
            let ours = Verified::check(k, n, a, &mut buf, t).is_ok();
            assert_eq!(ours, crate_opens(k, n, a, c, t));
            ours
        };
        assert!(check(&key, &nonce, aad, &ct, &tag));
        for bit in 0..ct.len() * 8 {
            let mut c = ct.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(!check(&key, &nonce, aad, &c, &tag), "ciphertext bit {bit}");
        }
        for bit in 0..128 {
            let mut t = tag;
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(!check(&key, &nonce, aad, &ct, &t), "tag bit {bit}");
        }
        let mut n = nonce;
        n[23] ^= 1;
        assert!(!check(&key, &n, aad, &ct, &tag));
        let mut k = key;
        k[0] ^= 1;
        assert!(!check(&k, &nonce, aad, &ct, &tag));
        assert!(!check(&key, &nonce, b"other", &ct, &tag));
        assert!(!check(&key, &nonce, aad, &ct[..99], &tag));
        // Left as it came when refused: nothing decrypted.
        let mut c = ct.clone();
        c[0] ^= 1;
        let before = c.clone();
        assert!(Verified::check(&key, &nonce, aad, &mut c, &tag).is_err());
        assert_eq!(c, before);
    }
}
