//! Arithmetic modulo P-256's prime p = 2^256 − 2^224 + 2^192 + 2^96 − 1, for ES256
//! verification (src/oidc/p256_key.rs): Montgomery multiplication on nine 29-bit limbs
//! (R = 2^261) summed in `i64` columns.
//!
//! Why this shape: wasm has a 64-bit multiply but no 64×64→128 one, which the `p256` crate's
//! 64-bit limbs need for every product. A product of two 29-bit limbs is below 2^58, so a
//! column of nine sums without overflow. And p ≡ −1 modulo 2^96: the multiple of p that
//! clears a column is the column's own low 29 bits, and adding it touches four columns by a
//! shift each (p's other terms), with no multiplication at all.
//! Nothing here is constant-time: ES256 verification handles only public values.
//!
//! Values are kept below 2^257 ("loose"): a product's limbs are in [0, 2^29) but for the top
//! one, a sum's, a difference's or a small multiple's within 2^25 of that range (see
//! [`fold`]); only
//! [`Fe::canonical`] gives the value below p, with every limb in range.

const BITS: u32 = 29;
const MASK: i64 = (1 << BITS) - 1;
const LIMBS: usize = 9;

/// p, in limbs.
const P: Fe = Fe([
    0x1fff_ffff,
    0x1fff_ffff,
    0x1fff_ffff,
    0x0000_01ff,
    0,
    0,
    0x0004_0000,
    0x1fe0_0000,
    0x00ff_ffff,
]);

/// A field element in Montgomery form (x·R mod p), loose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fe([i64; LIMBS]);

impl Fe {
    pub const ZERO: Fe = Fe([0; LIMBS]);
    /// 1, not in Montgomery form.
    pub const ONE_PLAIN: Fe = Fe([1, 0, 0, 0, 0, 0, 0, 0, 0]);

    /// The number from 32 big-endian bytes, as is (not in Montgomery form); `None` unless
    /// below p.
    pub fn plain_from_be(bytes: &[u8; 32]) -> Option<Fe> {
        let mut limbs = [0i64; LIMBS];
        let (mut acc, mut filled, mut at) = (0i64, 0u32, 0usize);
        for &b in bytes.iter().rev() {
            acc |= i64::from(b) << filled;
            filled += 8;
            if filled >= BITS {
                if let Some(limb) = limbs.get_mut(at) {
                    *limb = acc & MASK;
                }
                at += 1;
                acc >>= BITS;
                filled -= BITS;
            }
        }
        if let Some(limb) = limbs.get_mut(at) {
            *limb = acc;
        }
        let x = Fe(limbs);
        x.less_than(&P).then_some(x)
    }

    /// The number (below p) as 32 big-endian bytes.
    #[cfg(test)]
    pub fn plain_to_be(&self) -> [u8; 32] {
        let x = self.canonical();
        let mut out = [0u8; 32];
        let (mut acc, mut filled) = (0i64, 0u32);
        let mut limbs = x.0.iter();
        for byte in out.iter_mut().rev() {
            if filled < 8 {
                acc |= limbs.next().copied().unwrap_or(0) << filled;
                filled += BITS;
            }
            *byte = acc as u8;
            acc >>= 8;
            filled -= 8;
        }
        out
    }

    /// Into Montgomery form: x·R mod p.
    pub fn to_montgomery(self, r2: &Fe) -> Fe {
        self.mul(r2)
    }

    /// Out of Montgomery form: x·R⁻¹ mod p, canonical.
    #[cfg(test)]
    pub fn out_of_montgomery(&self) -> Fe {
        self.mul(&Fe::ONE_PLAIN).canonical()
    }

    /// `a·b·R⁻¹ mod p`, loose. This and the other three operations are never inlined: the
    /// point formulas call them from some hundred places, and inlined they cost 32 KB of
    /// module for 7% fewer instructions per check (bench/README.md, (h)).
    #[inline(never)]
    pub fn mul(&self, b: &Fe) -> Fe {
        let (a, b) = (&self.0, &b.0);
        let mut t = [0i64; 2 * LIMBS];
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                if let Some(c) = t.get_mut(i + j) {
                    *c += x * y;
                }
            }
        }
        reduce(t)
    }

    /// `a²·R⁻¹ mod p`, loose: each cross product once, doubled.
    #[inline(never)]
    pub fn square(&self) -> Fe {
        let a = &self.0;
        let mut t = [0i64; 2 * LIMBS];
        for (i, &x) in a.iter().enumerate() {
            let x2 = 2 * x;
            for (j, &y) in a.iter().enumerate().skip(i + 1) {
                if let Some(c) = t.get_mut(i + j) {
                    *c += x2 * y;
                }
            }
            if let Some(c) = t.get_mut(2 * i) {
                *c += x * x;
            }
        }
        reduce(t)
    }

    #[inline(never)]
    pub fn add(&self, b: &Fe) -> Fe {
        let mut r = [0i64; LIMBS];
        for ((r, x), y) in r.iter_mut().zip(&self.0).zip(&b.0) {
            *r = x + y;
        }
        fold(r)
    }

    /// `a − b`, computed as `a − b + 4p` so that it stays positive.
    #[inline(never)]
    pub fn sub(&self, b: &Fe) -> Fe {
        let mut r = [0i64; LIMBS];
        for (((r, x), y), p) in r.iter_mut().zip(&self.0).zip(&b.0).zip(&P.0) {
            *r = x - y + 4 * p;
        }
        fold(r)
    }

    pub fn double(&self) -> Fe {
        self.add(self)
    }

    /// `k·a` for a small `k` (at most 8): one operation where the formulas would chain two
    /// or three sums.
    #[inline(never)]
    pub fn times(&self, k: i64) -> Fe {
        let mut r = self.0;
        for limb in r.iter_mut() {
            *limb *= k.clamp(0, 8);
        }
        fold(r)
    }

    /// The value below p.
    pub fn canonical(&self) -> Fe {
        let mut x = Fe(carried(self.0));
        while !x.less_than(&P) {
            let mut r = [0i64; LIMBS];
            for ((r, a), p) in r.iter_mut().zip(&x.0).zip(&P.0) {
                *r = a - p;
            }
            x = Fe(carried(r));
        }
        x
    }

    pub fn is_zero(&self) -> bool {
        self.canonical() == Fe::ZERO
    }

    /// Whether both are the same element.
    pub fn same(&self, other: &Fe) -> bool {
        self.canonical() == other.canonical()
    }

    /// For normalised limbs.
    fn less_than(&self, other: &Fe) -> bool {
        for (x, y) in self.0.iter().rev().zip(other.0.iter().rev()) {
            if x != y {
                return x < y;
            }
        }
        false
    }

    /// `x⁻¹` for `x ≠ 0`, both in Montgomery form: `x^(p−2)` (Fermat), about 380 products.
    /// Only when tables of points are made, never per check.
    pub fn invert(&self, one: &Fe) -> Fe {
        // p − 2, big-endian words.
        const E: [u64; 4] = [
            0xffff_ffff_0000_0001,
            0,
            0x0000_0000_ffff_ffff,
            0xffff_ffff_ffff_fffd,
        ];
        let mut acc = *one;
        for word in E {
            for bit in (0..64).rev() {
                acc = acc.square();
                if word >> bit & 1 == 1 {
                    acc = acc.mul(self);
                }
            }
        }
        acc
    }
}

/// `R² mod p`, for [`Fe::to_montgomery`]: 1 doubled modulo p 522 times (2·261). Once per VM.
pub fn r_squared() -> Fe {
    let mut x = Fe::ONE_PLAIN;
    for _ in 0..2 * LIMBS * BITS as usize {
        let mut r = x.0;
        for limb in r.iter_mut() {
            *limb *= 2;
        }
        x = Fe(carried(r)).canonical();
    }
    x
}

/// Montgomery reduction of a product's columns: `t·R⁻¹ mod p`, loose.
fn reduce(mut t: [i64; 2 * LIMBS]) -> Fe {
    for i in 0..LIMBS {
        let Some(&column) = t.get(i) else {
            break;
        };
        // Adding m·p·2^(29i), m the column's low bits, clears it (p ≡ −1 mod 2^29): −m here,
        // and p's 2^96, 2^192, −2^224 and 2^256 land 9, 18, 21 and 24 bits into columns
        // i + 3, i + 6, i + 7 and i + 8.
        let m = column & MASK;
        let carry = (column - m) >> BITS;
        if let Some([c1, _, c3, _, _, c6, c7, c8, ..]) = t.get_mut(i + 1..) {
            *c1 += carry;
            *c3 += m << 9;
            *c6 += m << 18;
            *c7 -= m << 21;
            *c8 += m << 24;
        }
    }
    let mut r = [0i64; LIMBS];
    for (r, t) in r.iter_mut().zip(t.iter().skip(LIMBS)) {
        *r = *t;
    }
    Fe(carried(r))
}

/// Limbs carried so that all but the top one are below 2^29 (value unchanged, signed
/// carries).
fn carried(mut r: [i64; LIMBS]) -> [i64; LIMBS] {
    let mut carry = 0i64;
    for limb in r.iter_mut() {
        let x = *limb + carry;
        *limb = x & MASK;
        carry = x >> BITS;
    }
    if let Some(top) = r.last_mut() {
        *top += carry << BITS;
    }
    r
}

/// Carried, and what lies at 2^256 and above folded back (2^256 ≡ 2^224 − 2^192 − 2^96 + 1
/// mod p): below 2^257 after, for any sum or difference of two loose values or a loose value
/// times 8 at most. The fold is not carried again: it moves four limbs by less than 2^25 (the
/// part folded is below 16), which a
/// product's columns absorb (nine products of limbs below 2^29 + 2^24 stay far below 2^63)
/// and the next sum's carry settles.
fn fold(r: [i64; LIMBS]) -> Fe {
    let mut r = carried(r);
    // Bit 256 is bit 24 of the top limb (8·29 = 232).
    if let Some([c0, _, _, c3, _, _, c6, c7, top]) = r.get_mut(..) {
        let h = *top >> 24;
        *top &= (1 << 24) - 1;
        *c0 += h;
        *c3 -= h << 9;
        *c6 -= h << 18;
        *c7 += h << 21;
    }
    Fe(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::BigUint;

    fn big(x: &Fe) -> BigUint {
        BigUint::from_bytes_be(&x.plain_to_be())
    }

    fn p_big() -> BigUint {
        BigUint::from_bytes_be(&hex(
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        ))
    }

    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fe(bytes: &[u8]) -> Fe {
        Fe::plain_from_be(bytes.try_into().unwrap()).unwrap()
    }

    #[test]
    fn the_prime_in_limbs_is_p() {
        let mut limbs = BigUint::default();
        for (i, &l) in P.0.iter().enumerate() {
            limbs += BigUint::from(l as u64) << (29 * i);
        }
        assert_eq!(limbs, p_big());
        assert!(Fe::plain_from_be(&p_big().to_bytes_be().try_into().unwrap()).is_none());
    }

    #[test]
    fn arithmetic_agrees_with_big_integers() {
        let p = p_big();
        let r = BigUint::from(1u8) << 261;
        let r_inv = r.modpow(&(&p - 2u8), &p);
        let r2 = r_squared();
        assert_eq!(big(&r2), (&r * &r) % &p);
        let mut next = crate::test_pattern::numbers(5);
        let mut value = |edge: u64| -> Vec<u8> {
            let mut b = [0u8; 32];
            match edge % 5 {
                // p − 1, p − 2, ...: the largest values.
                0 => {
                    let v = &p - BigUint::from(1 + next() % 3);
                    return v.to_bytes_be();
                }
                1 => b[31] = (next() % 3) as u8,
                _ => b.iter_mut().for_each(|x| *x = next() as u8),
            }
            (BigUint::from_bytes_be(&b) % &p).to_bytes_be()
        };
        for round in 0..3000u64 {
            let pad = |v: Vec<u8>| {
                let mut b = vec![0; 32 - v.len()];
                b.extend(v);
                b
            };
            let (x, y) = (pad(value(round)), pad(value(round / 5)));
            let (a, b) = (fe(&x), fe(&y));
            let (ab, bb) = (BigUint::from_bytes_be(&x), BigUint::from_bytes_be(&y));
            assert_eq!(big(&a.mul(&b)), &ab * &bb * &r_inv % &p, "mul {round}");
            assert_eq!(big(&a.square()), &ab * &ab * &r_inv % &p, "square {round}");
            assert_eq!(big(&a.add(&b)), (&ab + &bb) % &p, "add {round}");
            assert_eq!(big(&a.sub(&b)), (&ab + &p - &bb) % &p, "sub {round}");
            for k in [3u8, 4, 8] {
                assert_eq!(
                    big(&a.sub(&b).times(k.into())),
                    (&ab + &p - &bb) * k % &p,
                    "times {k}"
                );
            }
            // Loose values in a chain, as the point formulas make them.
            let chain = a
                .add(&b)
                .add(&a)
                .sub(&b.double())
                .double()
                .mul(&a.sub(&b).add(&b));
            let want = ((&ab + &bb + &ab + &p + &p - &bb * 2u8) * 2u8) % &p * &ab * &r_inv % &p;
            assert_eq!(big(&chain), want, "chain {round}");
            let m = a.to_montgomery(&r2);
            assert_eq!(m.out_of_montgomery(), a.canonical());
            if round % 50 == 1 && !a.is_zero() {
                let one = Fe::ONE_PLAIN.to_montgomery(&r2);
                assert_eq!(
                    big(&m.invert(&one).out_of_montgomery()),
                    ab.modpow(&(&p - 2u8), &p)
                );
            }
        }
    }
}
