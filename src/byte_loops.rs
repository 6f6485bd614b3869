//! Byte loops for the cookie header: a kilobyte and more on every request. On wasm32 the
//! standard library does these a byte at a time (slice equality is the C library's `memcmp`)
//! or a `usize`, four bytes, at a time (`is_ascii`); the module is built with wasm SIMD
//! (.cargo/config.toml), which does sixteen. (Finding a byte is the `memchr` crate's.)

const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The eight bytes of a chunk from `chunks_exact(8)` as one word.
pub fn word(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]))
}

pub fn is_ascii(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let high = (&mut words).fold(0, |acc, w| acc | word(w));
    high & HIGH_BITS == 0 && words.remainder().is_ascii()
}

/// `a == b`, sixteen bytes at a time with wasm SIMD. Every byte is compared (no early exit):
/// the values compared are nearly always equal (a session cache hit).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    use core::arch::wasm32::{u64x2_splat, v128_any_true, v128_load, v128_or, v128_xor};
    if a.len() != b.len() {
        return false;
    }
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tails_equal = ca.remainder() == cb.remainder();
    let mut diff = u64x2_splat(0);
    for (x, y) in ca.zip(cb) {
        // SAFETY: each chunk is 16 readable bytes, and `v128_load` needs no alignment.
        let (x, y) = unsafe { (v128_load(x.as_ptr().cast()), v128_load(y.as_ptr().cast())) };
        diff = v128_or(diff, v128_xor(x, y));
    }
    tails_equal && !v128_any_true(diff)
}

/// `a == b`, eight bytes at a time (a build without wasm SIMD).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    wa.remainder() == wb.remainder() && wa.zip(wb).all(|(x, y)| word(x) == word(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to a few SIMD blocks, the byte at every position, and bytes around
    /// it that could fool a borrow or a lane mask (0x00, 0x01, 0x80, 0xff, needle ± 1).
    fn cases() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for len in 0..72 {
            for fill in [b'a', 0x00, 0x01, 0x3a, 0x3c, 0x80, 0xff] {
                out.push(vec![fill; len]);
                for at in 0..len {
                    let mut v = vec![fill; len];
                    v[at] = b';';
                    out.push(v.clone());
                    if at + 1 < len {
                        v[at + 1] = b';';
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn is_ascii_is_std() {
        for v in cases() {
            assert_eq!(is_ascii(&v), v.is_ascii(), "{v:?}");
        }
    }

    #[test]
    fn eq_is_equality() {
        let v: Vec<u8> = (0..=255).cycle().take(300).collect();
        for len in 0..72 {
            let a = &v[..len];
            assert!(eq(a, a));
            let copy = a.to_vec(); // equal bytes elsewhere in memory
            assert!(eq(a, &copy));
            assert!(!eq(a, &v[..len + 1]));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!eq(a, &b), "{len} {i}");
                b[i] ^= 0x81;
                assert!(!eq(a, &b), "{len} {i}");
            }
        }
    }
}
