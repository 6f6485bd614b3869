//! Byte loops eight bytes at a time, for the cookie header: a kilobyte and more on every
//! request, read several times. On wasm32 the standard library does these a byte at a time
//! (slice equality is the C library's `memcmp`) or a `usize`, four bytes, at a time (`memchr`
//! behind `str::split`, `from_utf8`).

const ONES: u64 = 0x0101_0101_0101_0101;
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

/// `a == b`.
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    wa.remainder() == wb.remainder() && wa.zip(wb).all(|(x, y)| word(x) == word(y))
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: u8) -> Option<usize> {
    let pattern = ONES.wrapping_mul(u64::from(needle));
    let mut words = haystack.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        // A zero byte in `x` is a match. The lowest flagged byte is always a true zero (a
        // borrow only flags bytes above one), and little-endian puts the first byte lowest.
        let x = word(w) ^ pattern;
        let zeros = x.wrapping_sub(ONES) & !x & HIGH_BITS;
        if zeros != 0 {
            return Some(at + (zeros.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter().position(|&b| b == needle).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to a few words, the byte at every position, and bytes around it
    /// that could fool a borrow (0x00, 0x01, 0x80, 0xff, needle ± 1).
    fn cases() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for len in 0..40 {
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
    fn find_is_position() {
        for v in cases() {
            assert_eq!(find(&v, b';'), v.iter().position(|&b| b == b';'), "{v:?}");
            assert_eq!(find(&v, 0), v.iter().position(|&b| b == 0), "{v:?}");
            assert_eq!(find(&v, 0xff), v.iter().position(|&b| b == 0xff), "{v:?}");
        }
    }

    #[test]
    fn is_ascii_is_std() {
        for v in cases() {
            assert_eq!(is_ascii(&v), v.is_ascii(), "{v:?}");
        }
    }

    #[test]
    fn eq_is_equality() {
        let v: Vec<u8> = (0..=255).collect();
        for len in 0..40 {
            let a = &v[..len];
            assert!(eq(a, a));
            assert!(!eq(a, &v[..len + 1]));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!eq(a, &b), "{len} {i}");
            }
        }
    }
}
