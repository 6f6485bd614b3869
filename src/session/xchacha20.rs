//! The XChaCha20 keystream of the cookie AEAD, four blocks at a time with wasm SIMD.
//!
//! The `chacha20` crate has SIMD backends for x86 and ARM only: in wasm it runs its portable
//! code, one 32-bit word at a time, and that was two thirds of opening a session that is not
//! in the cache (bench/README.md, "The cost of a cache miss"). Here the same block function
//! runs on `v128` lanes: four blocks side by side (lane k of vector i is word i of block k),
//! and a lone block with its four rows in four vectors. Everything around it stays the crates':
//! the subkey is `chacha20::hchacha`, and `chacha20poly1305::ChaChaPoly1305` does Poly1305, the
//! one-time key, padding and the tag check. Without wasm SIMD (native builds and tests) the
//! blocks are computed one word at a time, as the crate does. Both are checked against the
//! `chacha20` crate and the Wycheproof XChaCha20-Poly1305 vectors (tests below; `scripts/test`
//! runs them natively and in V8).

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use chacha20::cipher::consts::{U1, U10};
use chacha20::cipher::consts::{U24, U32, U64};
use chacha20::cipher::generic_array::GenericArray;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use chacha20::cipher::{consts::U4, ParBlocks};
use chacha20::cipher::{
    Block, BlockSizeUser, IvSizeUser, KeyIvInit, KeySizeUser, ParBlocksSizeUser, StreamBackend,
    StreamCipherCore, StreamCipherCoreWrapper, StreamCipherSeekCore, StreamClosure,
};

/// "expand 32-byte k"
const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// XChaCha20 (draft-irtf-cfrg-xchacha-03): HChaCha20 turns the key and the nonce's first 16
/// bytes into a subkey; ChaCha20 (RFC 8439) runs with it, its nonce being four zero bytes and
/// the last 8 bytes of ours.
pub type XChaCha20 = StreamCipherCoreWrapper<XChaCha20Core>;

/// The cookie AEAD: `chacha20poly1305`'s construction over this keystream.
pub type XChaCha20Poly1305 = chacha20poly1305::ChaChaPoly1305<XChaCha20, U24>;

pub struct XChaCha20Core {
    /// ChaCha20's input block; word 12 is the block counter.
    state: [u32; 16],
}

impl KeySizeUser for XChaCha20Core {
    type KeySize = U32;
}

impl IvSizeUser for XChaCha20Core {
    type IvSize = U24;
}

impl BlockSizeUser for XChaCha20Core {
    type BlockSize = U64;
}

fn le_words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    for (w, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = c.try_into().map(u32::from_le_bytes).unwrap_or_default();
    }
    out
}

impl KeyIvInit for XChaCha20Core {
    fn new(key: &GenericArray<u8, U32>, iv: &GenericArray<u8, U24>) -> Self {
        let (head, tail) = iv.split_at(16);
        let [k0, k1, k2, k3, k4, k5, k6, k7] = subkey(key, head);
        let [c0, c1, c2, c3] = CONSTANTS;
        let [n0, n1] = le_words::<2>(tail);
        // Word 12 is the counter, from 0; word 13 the zero half of the padded nonce.
        let state = [c0, c1, c2, c3, k0, k1, k2, k3, k4, k5, k6, k7, 0, 0, n0, n1];
        XChaCha20Core { state }
    }
}

impl StreamCipherCore for XChaCha20Core {
    fn remaining_blocks(&self) -> Option<usize> {
        (u32::MAX - self.state[12]).try_into().ok()
    }

    fn process_with_backend(&mut self, f: impl StreamClosure<BlockSize = U64>) {
        f.call(&mut Backend(&mut self.state));
    }
}

impl StreamCipherSeekCore for XChaCha20Core {
    type Counter = u32;

    fn get_block_pos(&self) -> u32 {
        self.state[12]
    }

    fn set_block_pos(&mut self, pos: u32) {
        self.state[12] = pos;
    }
}

impl Drop for XChaCha20Core {
    fn drop(&mut self) {
        // The subkey: do not leave it in the VM's memory (as the crate's `zeroize` would).
        for w in self.state.iter_mut() {
            // SAFETY: a plain write to a valid, aligned `u32`; volatile so it is not elided.
            unsafe { core::ptr::write_volatile(w, 0) };
        }
    }
}

struct Backend<'a>(&'a mut [u32; 16]);

impl BlockSizeUser for Backend<'_> {
    type BlockSize = U64;
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl ParBlocksSizeUser for Backend<'_> {
    type ParBlocksSize = U4;
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
impl ParBlocksSizeUser for Backend<'_> {
    type ParBlocksSize = U1;
}

impl StreamBackend for Backend<'_> {
    fn gen_ks_block(&mut self, block: &mut Block<Self>) {
        one_block(self.0, block);
        self.0[12] = self.0[12].wrapping_add(1);
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn gen_par_ks_blocks(&mut self, blocks: &mut ParBlocks<Self>) {
        simd::four_blocks(self.0, blocks);
        self.0[12] = self.0[12].wrapping_add(4);
    }
}

/// The quarter round, on words or (in `simd`) on lanes of four.
macro_rules! quarter_round {
    ($add:path, $xor:path, $rotl:path, $a:expr, $b:expr, $c:expr, $d:expr) => {
        *$a = $add(*$a, *$b);
        *$d = $rotl(16, $xor(*$d, *$a));
        *$c = $add(*$c, *$d);
        *$b = $rotl(12, $xor(*$b, *$c));
        *$a = $add(*$a, *$b);
        *$d = $rotl(8, $xor(*$d, *$a));
        *$c = $add(*$c, *$d);
        *$b = $rotl(7, $xor(*$b, *$c));
    };
}

/// ChaCha20's 20 rounds over sixteen words or lanes, given the quarter round on them.
macro_rules! twenty_rounds {
    ($x:expr, $quarter:ident) => {
        for _ in 0..10 {
            let [x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15] = &mut $x;
            $quarter(x0, x4, x8, x12);
            $quarter(x1, x5, x9, x13);
            $quarter(x2, x6, x10, x14);
            $quarter(x3, x7, x11, x15);
            $quarter(x0, x5, x10, x15);
            $quarter(x1, x6, x11, x12);
            $quarter(x2, x7, x8, x13);
            $quarter(x3, x4, x9, x14);
        }
    };
}

/// HChaCha20 of the key and the nonce's first 16 bytes, as words: the crate's.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn subkey(key: &GenericArray<u8, U32>, nonce_head: &[u8]) -> [u32; 8] {
    let subkey = chacha20::hchacha::<U10>(key, GenericArray::from_slice(nonce_head));
    le_words::<8>(&subkey)
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn one_block(state: &[u32; 16], out: &mut Block<Backend<'_>>) {
    fn xor(a: u32, b: u32) -> u32 {
        a ^ b
    }
    fn rotl(n: u32, x: u32) -> u32 {
        x.rotate_left(n)
    }
    #[inline(always)]
    fn quarter(a: &mut u32, b: &mut u32, c: &mut u32, d: &mut u32) {
        quarter_round!(u32::wrapping_add, xor, rotl, a, b, c, d);
    }
    let mut x = *state;
    twenty_rounds!(x, quarter);
    for ((o, w), s) in out.chunks_exact_mut(4).zip(x).zip(state) {
        o.copy_from_slice(&w.wrapping_add(*s).to_le_bytes());
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use simd::{one_block, subkey};

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::{Backend, Block, GenericArray, ParBlocks, U32};
    use core::arch::wasm32::*;

    /// Rotations by whole bytes are one byte shuffle; the others shift twice and or.
    #[inline(always)]
    fn rotl(n: u32, x: v128) -> v128 {
        match n {
            16 => i8x16_shuffle::<2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13>(x, x),
            8 => i8x16_shuffle::<3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14>(x, x),
            _ => v128_or(u32x4_shl(x, n), u32x4_shr(x, 32 - n)),
        }
    }

    #[inline(always)]
    fn quarter(a: &mut v128, b: &mut v128, c: &mut v128, d: &mut v128) {
        quarter_round!(u32x4_add, v128_xor, rotl, a, b, c, d);
    }

    fn store(out: &mut [u8], v: v128) {
        for (o, lane) in out
            .chunks_exact_mut(8)
            .zip([i64x2_extract_lane::<0>(v), i64x2_extract_lane::<1>(v)])
        {
            o.copy_from_slice(&lane.to_le_bytes());
        }
    }

    /// The 20 rounds of one block, its rows in four vectors: a column round, then a diagonal
    /// round with the rows turned so the diagonals line up as columns (and back).
    fn rounds_by_rows([mut a, mut b, mut c, mut d]: [v128; 4]) -> [v128; 4] {
        for _ in 0..10 {
            quarter(&mut a, &mut b, &mut c, &mut d);
            b = i32x4_shuffle::<1, 2, 3, 0>(b, b);
            c = i32x4_shuffle::<2, 3, 0, 1>(c, c);
            d = i32x4_shuffle::<3, 0, 1, 2>(d, d);
            quarter(&mut a, &mut b, &mut c, &mut d);
            b = i32x4_shuffle::<3, 0, 1, 2>(b, b);
            c = i32x4_shuffle::<2, 3, 0, 1>(c, c);
            d = i32x4_shuffle::<1, 2, 3, 0>(d, d);
        }
        [a, b, c, d]
    }

    pub(super) fn one_block(state: &[u32; 16], out: &mut Block<Backend<'_>>) {
        let [s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15] = *state;
        let s = [
            u32x4(s0, s1, s2, s3),
            u32x4(s4, s5, s6, s7),
            u32x4(s8, s9, s10, s11),
            u32x4(s12, s13, s14, s15),
        ];
        for ((o, row), s) in out.chunks_exact_mut(16).zip(rounds_by_rows(s)).zip(s) {
            store(o, u32x4_add(row, s));
        }
    }

    /// HChaCha20: the 20 rounds over the constants, the key and the nonce's first 16 bytes,
    /// without the final addition; the subkey is the first and the last row.
    pub(super) fn subkey(key: &GenericArray<u8, U32>, nonce_head: &[u8]) -> [u32; 8] {
        let [c0, c1, c2, c3] = super::CONSTANTS;
        let [k0, k1, k2, k3, k4, k5, k6, k7] = super::le_words::<8>(key);
        let [n0, n1, n2, n3] = super::le_words::<4>(nonce_head);
        let [a, _, _, d] = rounds_by_rows([
            u32x4(c0, c1, c2, c3),
            u32x4(k0, k1, k2, k3),
            u32x4(k4, k5, k6, k7),
            u32x4(n0, n1, n2, n3),
        ]);
        let lane = |v: v128, i: usize| match i {
            0 => u32x4_extract_lane::<0>(v),
            1 => u32x4_extract_lane::<1>(v),
            2 => u32x4_extract_lane::<2>(v),
            _ => u32x4_extract_lane::<3>(v),
        };
        std::array::from_fn(|i| if i < 4 { lane(a, i) } else { lane(d, i - 4) })
    }

    /// Four consecutive blocks: lane k of `x[i]` is word i of block k.
    pub(super) fn four_blocks(state: &[u32; 16], out: &mut ParBlocks<Backend<'_>>) {
        #[allow(clippy::redundant_closure)] // a target-feature fn is not a closure
        let mut s = state.map(|w| u32x4_splat(w));
        let [.., counter, _, _, _] = &mut s;
        *counter = u32x4_add(*counter, u32x4(0, 1, 2, 3));
        let mut x = s;
        twenty_rounds!(x, quarter);
        for (xi, si) in x.iter_mut().zip(s) {
            *xi = u32x4_add(*xi, si);
        }
        // Words 4j..4j+3 of the four blocks, transposed: then block k's 16 bytes are one vector.
        for (j, words) in x.chunks_exact(4).enumerate() {
            let &[a, b, c, d] = words else { continue };
            let ab_lo = i32x4_shuffle::<0, 4, 1, 5>(a, b);
            let ab_hi = i32x4_shuffle::<2, 6, 3, 7>(a, b);
            let cd_lo = i32x4_shuffle::<0, 4, 1, 5>(c, d);
            let cd_hi = i32x4_shuffle::<2, 6, 3, 7>(c, d);
            let rows = [
                i64x2_shuffle::<0, 2>(ab_lo, cd_lo),
                i64x2_shuffle::<1, 3>(ab_lo, cd_lo),
                i64x2_shuffle::<0, 2>(ab_hi, cd_hi),
                i64x2_shuffle::<1, 3>(ab_hi, cd_hi),
            ];
            for (block, row) in out.iter_mut().zip(rows) {
                if let Some(o) = block.chunks_exact_mut(16).nth(j) {
                    store(o, row);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pattern::bytes;
    use chacha20::cipher::consts::U10;
    use chacha20::cipher::{StreamCipher, StreamCipherSeek};
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};

    #[test]
    fn the_keystream_is_the_crates_for_every_length_and_offset() {
        for seed in 0..12u64 {
            let key = bytes(seed, 32);
            let nonce = bytes(seed + 100, 24);
            for len in [
                0, 1, 15, 63, 64, 65, 127, 128, 255, 256, 257, 300, 1027, 1500,
            ] {
                let msg = bytes(seed + 200, len);
                let mut ours = msg.clone();
                let mut theirs = msg.clone();
                let start = (seed * 37) % 200;
                let mut a = XChaCha20::new(key[..].into(), nonce[..].into());
                let mut b = chacha20::XChaCha20::new(key[..].into(), nonce[..].into());
                a.seek(start);
                b.seek(start);
                // In two pieces, so both the lone-block and the four-block paths start mid-way.
                let cut = len / 3;
                a.apply_keystream(&mut ours[..cut]);
                a.apply_keystream(&mut ours[cut..]);
                b.apply_keystream(&mut theirs);
                assert_eq!(ours, theirs, "seed {seed}, length {len}, from byte {start}");
            }
        }
    }

    #[test]
    fn the_subkey_is_the_crates_hchacha20() {
        for seed in 0..20u64 {
            let key = bytes(seed, 32);
            let nonce = bytes(seed + 50, 16);
            let theirs = chacha20::hchacha::<U10>(key[..].into(), nonce[..].into());
            assert_eq!(
                subkey(key[..].into(), &nonce),
                le_words::<8>(&theirs),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn the_counter_runs_out_where_the_crates_does() {
        let key = [7u8; 32];
        let nonce = [9u8; 24];
        let mut a = XChaCha20::new(&key.into(), &nonce.into());
        let mut b = chacha20::XChaCha20::new(&key.into(), &nonce.into());
        let last = u64::from(u32::MAX) * 64 - 100;
        a.seek(last);
        b.seek(last);
        let mut x = [1u8; 100];
        let mut y = [1u8; 100];
        assert!(a.try_apply_keystream(&mut x).is_ok());
        assert!(b.try_apply_keystream(&mut y).is_ok());
        assert_eq!(x, y);
        assert_eq!(
            a.try_apply_keystream(&mut [0u8; 1]).is_err(),
            b.try_apply_keystream(&mut [0u8; 1]).is_err()
        );
    }

    /// draft-irtf-cfrg-xchacha-03, A.3.1: the AEAD example.
    #[test]
    fn the_drafts_aead_example() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce = hex("404142434445464748494a4b4c4d4e4f5051525354555657");
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let expected = hex(concat!(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
            "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
            "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
            "21f9664c97637da9768812f615c68b13b52e",
            "c0875924c1c7987947deafd8780acf49"
        ));
        let aead = XChaCha20Poly1305::new_from_slice(&key).unwrap();
        let sealed = aead
            .encrypt(
                nonce[..].into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(sealed, expected);
        let opened = aead
            .decrypt(
                nonce[..].into(),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(opened, plaintext);
    }

    #[test]
    fn wycheproof_xchacha20_poly1305() {
        use wycheproof::aead::{TestName, TestSet};
        use wycheproof::TestResult;
        let set = TestSet::load(TestName::XChaCha20Poly1305).unwrap();
        let mut checked = 0;
        for group in &set.test_groups {
            if group.key_size != 256 || group.nonce_size != 192 || group.tag_size != 128 {
                continue;
            }
            for t in &group.tests {
                let Ok(aead) = XChaCha20Poly1305::new_from_slice(&t.key) else {
                    assert_eq!(t.result, TestResult::Invalid, "tc {}", t.tc_id);
                    continue;
                };
                let mut sealed = t.ct.to_vec();
                sealed.extend_from_slice(&t.tag);
                let opened = aead.decrypt(
                    t.nonce[..].into(),
                    Payload {
                        msg: &sealed,
                        aad: &t.aad,
                    },
                );
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        assert_eq!(opened.as_deref(), Ok(&t.pt[..]), "tc {}", t.tc_id);
                        let again = aead
                            .encrypt(
                                t.nonce[..].into(),
                                Payload {
                                    msg: &t.pt,
                                    aad: &t.aad,
                                },
                            )
                            .unwrap();
                        assert_eq!(again, sealed, "tc {}", t.tc_id);
                    }
                    TestResult::Invalid => assert!(opened.is_err(), "tc {}", t.tc_id),
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} vectors checked");
    }
}
