//! Deterministic test data (the tests have no `rand`): xorshift64 from a seed.

/// A stream of pseudo-random `u64`s, the same for the same seed.
pub fn numbers(seed: u64) -> impl FnMut() -> u64 {
    // Never zero (xorshift's fixed point), and seeds 0, 1, 2... far apart.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// `n` pseudo-random bytes, the same for the same seed.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut next = numbers(seed);
    (0..n).map(|_| next() as u8).collect()
}
