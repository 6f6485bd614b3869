//! Integers modulo P-256's group order n, for ES256 verification (src/oidc/p256_key.rs):
//! only what a check needs (s⁻¹, e·s⁻¹, r·s⁻¹), by the binary methods on eight 32-bit words.
//! A few tens of thousands of instructions per check against about two million for the
//! points, so plain and short wins. Not constant-time: the values are public.

use super::montgomery::less_than;

/// n, little-endian words.
const N: Scalar = Scalar([
    0xfc63_2551,
    0xf3b9_cac2,
    0xa717_9e84,
    0xbce6_faad,
    0xffff_ffff,
    0xffff_ffff,
    0x0000_0000,
    0xffff_ffff,
]);

/// A 256-bit number, little-endian 32-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scalar([u32; 8]);

impl Scalar {
    pub fn from_be(bytes: &[u8; 32]) -> Scalar {
        let mut words = [0u32; 8];
        for (word, chunk) in words.iter_mut().zip(bytes.rchunks_exact(4)) {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            *word = u32::from_be_bytes(b);
        }
        Scalar(words)
    }

    pub fn to_be(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, word) in out.rchunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// Whether it lies in [1, n − 1], as r and s must (FIPS 186-5 §6.4.2 step 1).
    pub fn in_range(&self) -> bool {
        !self.is_zero() && self.less_than(&N)
    }

    /// The value modulo n, for any 256-bit value (2^256 < 2n: one subtraction at most).
    pub fn reduced(self) -> Scalar {
        if self.less_than(&N) {
            self
        } else {
            self.sub(&N).0
        }
    }

    /// `self + n`, when it fits in 256 bits.
    pub fn plus_n(&self) -> Option<Scalar> {
        let (sum, carry) = self.add(&N);
        (!carry).then_some(sum)
    }

    /// `x⁻¹ mod n` for `x` in [1, n − 1] (binary extended Euclid; n is prime).
    pub fn invert(&self) -> Scalar {
        let (mut u, mut v) = (*self, N);
        let one = Scalar([1, 0, 0, 0, 0, 0, 0, 0]);
        let (mut x1, mut x2) = (one, Scalar::default());
        while u != one && v != one {
            if u.is_zero() || v.is_zero() {
                // Only for x = 0, which callers refuse first.
                return Scalar::default();
            }
            while u.is_even() {
                u = u.half(false);
                x1 = x1.half_mod_n();
            }
            while v.is_even() {
                v = v.half(false);
                x2 = x2.half_mod_n();
            }
            if u.less_than(&v) {
                v = v.sub(&u).0;
                x2 = x2.sub_mod_n(&x1);
            } else {
                u = u.sub(&v).0;
                x1 = x1.sub_mod_n(&x2);
            }
        }
        if u == one {
            x1
        } else {
            x2
        }
    }

    /// `a·b mod n` for `a, b < n`, by doubling and adding from `a`'s top bit.
    pub fn mul_mod_n(&self, b: &Scalar) -> Scalar {
        let mut acc = Scalar::default();
        for i in (0..256).rev() {
            acc = acc.add_mod_n(&acc);
            if self.bit(i) {
                acc = acc.add_mod_n(b);
            }
        }
        acc
    }

    fn bit(&self, i: usize) -> bool {
        self.0.get(i / 32).is_some_and(|w| w >> (i % 32) & 1 == 1)
    }

    /// Bits `at` to `at + width − 1` (`width` ≤ 32; bits above 255 are zero).
    pub fn window(&self, at: usize, width: usize) -> usize {
        let word = |i: usize| u64::from(self.0.get(i).copied().unwrap_or(0));
        let two = word(at / 32) | word(at / 32 + 1) << 32;
        ((two >> (at % 32)) & ((1 << width) - 1)) as usize
    }

    fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    fn is_even(&self) -> bool {
        self.0.first().is_some_and(|w| w & 1 == 0)
    }

    fn less_than(&self, other: &Scalar) -> bool {
        less_than(&self.0, &other.0)
    }

    /// `self + other` and the carry out.
    fn add(&self, other: &Scalar) -> (Scalar, bool) {
        let mut out = Scalar::default();
        let mut carry = 0u64;
        for ((o, &x), &y) in out.0.iter_mut().zip(&self.0).zip(&other.0) {
            let s = u64::from(x) + u64::from(y) + carry;
            *o = s as u32;
            carry = s >> 32;
        }
        (out, carry != 0)
    }

    /// `self − other` and the borrow out.
    fn sub(&self, other: &Scalar) -> (Scalar, bool) {
        let mut out = Scalar::default();
        let mut borrow = 0u64;
        for ((o, &x), &y) in out.0.iter_mut().zip(&self.0).zip(&other.0) {
            let d = u64::from(x).wrapping_sub(u64::from(y)).wrapping_sub(borrow);
            *o = d as u32;
            borrow = d >> 63;
        }
        (out, borrow != 0)
    }

    /// `self >> 1`, with `top` shifted in as bit 255.
    fn half(&self, top: bool) -> Scalar {
        let mut out = Scalar::default();
        let mut carry = u32::from(top);
        for (o, &x) in out.0.iter_mut().zip(&self.0).rev() {
            *o = (x >> 1) | (carry << 31);
            carry = x & 1;
        }
        out
    }

    /// `self / 2 mod n` for `self < n`: halved as is when even, else `(self + n) / 2`.
    fn half_mod_n(&self) -> Scalar {
        if self.is_even() {
            self.half(false)
        } else {
            let (sum, carry) = self.add(&N);
            sum.half(carry)
        }
    }

    fn add_mod_n(&self, other: &Scalar) -> Scalar {
        let (sum, carry) = self.add(other);
        if carry || !sum.less_than(&N) {
            sum.sub(&N).0
        } else {
            sum
        }
    }

    fn sub_mod_n(&self, other: &Scalar) -> Scalar {
        let (diff, borrow) = self.sub(other);
        if borrow {
            diff.add(&N).0
        } else {
            diff
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::BigUint;

    fn big(x: &Scalar) -> BigUint {
        BigUint::from_bytes_be(&x.to_be())
    }

    #[test]
    fn agrees_with_big_integers() {
        let n = big(&N);
        assert_eq!(
            n.to_str_radix(16),
            "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"
        );
        let mut next = crate::test_pattern::numbers(9);
        let mut scalar = |i: u64| {
            let mut b = [0u8; 32];
            match i % 4 {
                0 => {
                    return Scalar::from_be(
                        &(&n - BigUint::from(1 + next() % 2))
                            .to_bytes_be()
                            .try_into()
                            .unwrap(),
                    )
                }
                1 => b[31] = 1 + (next() % 3) as u8,
                _ => b.iter_mut().for_each(|x| *x = next() as u8),
            }
            Scalar::from_be(&b)
        };
        for round in 0..400u64 {
            let (a, b) = (scalar(round).reduced(), scalar(round / 4).reduced());
            let (ab, bb) = (big(&a), big(&b));
            assert_eq!(big(&a.mul_mod_n(&b)), &ab * &bb % &n, "mul {round}");
            if a.in_range() {
                let inv = a.invert();
                assert_eq!(big(&inv), ab.modpow(&(&n - 2u8), &n), "inverse {round}");
            }
        }
        let all_ones = Scalar([u32::MAX; 8]);
        assert_eq!(big(&all_ones.reduced()), big(&all_ones) % &n);
        assert!(!N.in_range() && !Scalar::default().in_range());
        assert_eq!(Scalar::from_be(&N.to_be()), N);
    }
}
