//! `s^e mod n` for RSA's public-key operation, by Montgomery multiplication on 28-bit limbs
//! summed in 64-bit accumulators.
//!
//! Why 28 bits: a product of two limbs is below 2^56, so 256 of them add up in a `u64` without
//! overflow. A Montgomery product then adds whole rows (`x·v[j]` into `t[i + j]` for every `j`)
//! with no carry between neighbours; carries are settled once per column, as the reduction
//! clears it. With wasm SIMD a row is four products per two `i64x2.extmul_*_i32x4_u`, and a
//! pass adds up to four rows (two of `a·b` and the two of `m·n` that clear the same columns),
//! so the accumulators are loaded and stored once per four rows: about 1.8 x fewer
//! instructions per RS256 check in V8 than 32-bit limbs with a carry per product
//! (bench/run's variant h; bench/README.md). Nothing here is constant-time: everything is
//! public (key, token, signature). Never use it for a private-key operation.
//!
//! Numbers are little-endian vectors of `l` 28-bit limbs in `u32`s (`l` a multiple of four,
//! R = 2^(28·l)), kept with [`FRONT`] zeros below and [`BACK`] above, so that a pass can read
//! each row's vector shifted by its row's offset.

/// Bits per limb.
const BITS: u32 = 28;
const MASK: u64 = (1 << BITS) - 1;

/// Zero limbs below a number: row `r` of a pass reads its vector from `r` limbs lower.
const FRONT: usize = 3;
/// Zero limbs above: a pass spans `l + 4` columns.
const BACK: usize = 5;

/// Accumulator budget, in units of 2^56 (the bound of one limb product): a column holds at
/// most 255 of them below 2^64; a few are kept for the carries and the settled residue.
const BUDGET: u32 = 250;

/// An odd modulus with its Montgomery constants, computed once (when the JWKS is read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Modulus {
    /// The modulus, padded.
    n: Vec<u32>,
    /// Limbs: R = 2^(28·l).
    l: usize,
    /// `-n⁻¹ mod 2^28`: a column's low limb times it is the multiple of `n` that clears it.
    n0_inv: u32,
    /// `R² mod n`, padded: a Montgomery product with it enters Montgomery form.
    rr: Vec<u32>,
    /// Bytes of the modulus, big-endian (`k` in RFC 8017).
    k: usize,
}

impl Modulus {
    /// The modulus from its big-endian bytes (leading zeros allowed); `None` unless odd and
    /// above 1.
    pub fn new(n_be: &[u8]) -> Option<Modulus> {
        let n_be = strip_leading_zeros(n_be);
        let bits = (n_be.len() * 8).checked_sub(n_be.first()?.leading_zeros() as usize)?;
        let l = bits.div_ceil(BITS as usize).next_multiple_of(4);
        let n = limbs_from_be(n_be, l)?;
        let n0 = *n.first()?;
        if n0 & 1 == 0 || bits < 2 {
            return None;
        }
        Some(Modulus {
            n0_inv: neg_inverse_mod_2_28(n0),
            rr: padded(&r_squared_mod(&n, bits)),
            n: padded(&n),
            l,
            k: n_be.len(),
        })
    }

    /// The modulus's size in bytes.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `s^e mod n` as `k` big-endian bytes, for `e ≥ 1` and `s` given as `k` big-endian bytes;
    /// `None` unless `s < n`.
    pub fn pow(&self, s_be: &[u8], e: u64) -> Option<Vec<u8>> {
        if s_be.len() != self.k || e == 0 {
            return None;
        }
        let s = padded(&limbs_from_be(s_be, self.l)?);
        if !less_than(self.digits(&s), self.digits(&self.n)) {
            return None;
        }
        let mut work = Work {
            t: vec![0; 2 * self.l + 4],
            units: 0,
        };
        let mut s_mont = vec![0; s.len()];
        self.product(&mut work, &mut s_mont, &s, &self.rr);
        let mut acc = s_mont.clone();
        let mut next = vec![0; s.len()];
        // Left to right in Montgomery form. When e is odd (RSA's always is) the last product,
        // by the plain `s`, multiplies and leaves Montgomery form at once
        // (`s^(e−1)·R · s · R⁻¹ = s^e`); otherwise a product by 1 leaves it.
        let mut montgomery_form = true;
        for i in (0..63 - e.leading_zeros()).rev() {
            self.square(&mut work, &mut next, &acc);
            std::mem::swap(&mut acc, &mut next);
            if e >> i & 1 == 1 {
                montgomery_form = i > 0;
                self.product(&mut work, &mut next, &acc, if i > 0 { &s_mont } else { &s });
                std::mem::swap(&mut acc, &mut next);
            }
        }
        if montgomery_form {
            let mut one = vec![0; s.len()];
            if let Some(low) = one.get_mut(FRONT) {
                *low = 1;
            }
            self.product(&mut work, &mut next, &acc, &one);
            std::mem::swap(&mut acc, &mut next);
        }
        Some(limbs_to_be(self.digits(&acc), self.k))
    }

    /// The limbs of a padded number.
    fn digits<'a>(&self, x: &'a [u32]) -> &'a [u32] {
        x.get(FRONT..FRONT + self.l).unwrap_or_default()
    }

    /// `out = a·b·R⁻¹ mod n` for `a, b < n` (all padded). Each pass adds two rows of `a·b`
    /// and the two rows of `m·n` that clear the same two columns, `m` found first from the
    /// columns as the pass will leave them.
    fn product(&self, work: &mut Work, out: &mut [u32], a: &[u32], b: &[u32]) {
        let limb = |v: &[u32], i: usize| v.get(FRONT + i).copied().map_or(0, u64::from);
        for g in (0..self.l).step_by(2) {
            work.spend(4);
            let [x0, x1] =
                [a.get(FRONT + g), a.get(FRONT + g + 1)].map(|x| x.copied().unwrap_or(0));
            let [w0, w1] = [x0, x1].map(u64::from);
            let rows_of_ab = [w0 * limb(b, 0), w0 * limb(b, 1) + w1 * limb(b, 0)];
            let [m0, m1] = self.multiples(&work.t, g, rows_of_ab);
            let n = self.n.as_slice();
            self.add_rows(work, g, [x0, x1, m0, m1], [(b, 0), (b, 1), (n, 0), (n, 1)]);
            work.carry_up(g..g + 2);
        }
        self.finish(work, out);
    }

    /// `out = a²·R⁻¹ mod n` for `a < n` (padded). First the square: each cross product
    /// `a_i·a_j` (i < j) once, as `a_i·2a_j`, two rows per pass, then the squares on the
    /// diagonal: about half the limb products of `a·a`. Then the reduction, four rows of
    /// `m·n` per pass.
    fn square(&self, work: &mut Work, out: &mut [u32], a: &[u32]) {
        let doubled: Vec<u32> = a.iter().map(|&x| 2 * x).collect();
        let l = self.l;
        for i in (0..l).step_by(2) {
            work.spend(4);
            let [x0, x1] =
                [a.get(FRONT + i), a.get(FRONT + i + 1)].map(|x| x.copied().unwrap_or(0));
            // Row i from column 2i + 1: a_i·2a_(i+1+j); row i + 1 from 2i + 3, read from
            // column 2i + 1 (j − 2), so it adds a_(i+1)·2a_i and a_(i+1)·2a_(i+1) too: taken
            // off after. The last product, a_(i+1)·2a_(l−1), is at j = l − i − 1.
            let width = (l - i).next_multiple_of(4);
            let rows = [i + 1, i].map(|from| {
                doubled
                    .get(FRONT + from..FRONT + from + width)
                    .unwrap_or_default()
            });
            if let Some(t) = work.t.get_mut(2 * i + 1..2 * i + 1 + width) {
                mac_rows(t, [x0, x1], rows);
            }
            let extra =
                |j: usize| u64::from(x1) * doubled.get(FRONT + i + j).copied().map_or(0, u64::from);
            if let Some([t0, t1]) = work.t.get_mut(2 * i + 1..2 * i + 3) {
                *t0 = t0.wrapping_sub(extra(0));
                *t1 = t1.wrapping_sub(extra(1));
            }
        }
        work.spend(1);
        for (i, &ai) in a.iter().skip(FRONT).take(l).enumerate() {
            if let Some(t) = work.t.get_mut(2 * i) {
                *t += u64::from(ai) * u64::from(ai);
            }
        }
        for g in (0..l).step_by(4) {
            work.spend(4);
            let m = self.multiples(&work.t, g, [0; 4]);
            let n = self.n.as_slice();
            self.add_rows(work, g, m, [(n, 0), (n, 1), (n, 2), (n, 3)]);
            work.carry_up(g..g + 4);
        }
        self.finish(work, out);
    }

    /// The multiples `m` of `n` whose rows, added from column `g` on (row `c` at `g + c`),
    /// clear columns `g` to `g + C − 1`, where the same pass adds `extra[c]` to column
    /// `g + c`.
    fn multiples<const C: usize>(&self, t: &[u64], g: usize, extra: [u64; C]) -> [u32; C] {
        let n = self.digits(&self.n);
        let n0 = n.first().copied().map_or(0, u64::from);
        let mut m = [0u32; C];
        let mut carry = 0u64;
        for (c, extra) in extra.into_iter().enumerate() {
            let mut column = t.get(g + c).copied().unwrap_or(0) + carry + extra;
            let lower_rows = n.get(1..=c).unwrap_or_default().iter().rev();
            for (&mr, &nj) in m.iter().zip(lower_rows) {
                column += u64::from(mr) * u64::from(nj);
            }
            let mc = (column as u32).wrapping_mul(self.n0_inv) & MASK as u32;
            if let Some(slot) = m.get_mut(c) {
                *slot = mc;
            }
            carry = (column + u64::from(mc) * n0) >> BITS;
        }
        m
    }

    /// One pass of four rows from column `g`: row `r` adds `xs[r]` times the number
    /// `rows[r].0`, from column `g + rows[r].1` on.
    fn add_rows(&self, work: &mut Work, g: usize, xs: [u32; 4], rows: [(&[u32], usize); 4]) {
        let rows = rows.map(|(v, shift)| v.get(FRONT - shift..).unwrap_or_default());
        if let Some(t) = work.t.get_mut(g..g + self.l + 4) {
            mac_rows(t, xs, rows);
        }
    }

    /// After the last pass the upper half is the product times R⁻¹, below 2n: settled into
    /// `out`, less `n` if need be. Leaves the accumulators zero.
    fn finish(&self, work: &mut Work, out: &mut [u32]) {
        let l = self.l;
        let n = self.digits(&self.n);
        let digits = out.get_mut(FRONT..FRONT + l).unwrap_or_default();
        let upper = work.t.get_mut(l..).unwrap_or_default();
        let (upper, above) = upper.split_at_mut(l.min(upper.len()));
        // Zeroed as read: a separate fill would be a `memory.fill`, a call out of wasm in V8.
        let mut carry = 0u64;
        for (o, t) in digits.iter_mut().zip(upper.iter_mut()) {
            let x = *t + carry;
            *o = (x & MASK) as u32;
            carry = x >> BITS;
            *t = 0;
        }
        // Columns 2l and up: zero, but for a bit a settling of the carries may have moved there.
        for t in above.iter_mut() {
            carry |= *t;
            *t = 0;
        }
        work.units = 0;
        if carry != 0 || !less_than(digits, n) {
            sub_in_place(digits, n);
        }
    }
}

/// The accumulators of one product, and how much of their headroom is used.
struct Work {
    t: Vec<u64>,
    units: u32,
}

impl Work {
    /// Columns the pass has cleared (multiples of 2^28) carried up into the next.
    fn carry_up(&mut self, columns: std::ops::Range<usize>) {
        for c in columns {
            if let Some([cleared, above, ..]) = self.t.get_mut(c..) {
                *above += *cleared >> BITS;
                *cleared = 0;
            }
        }
    }

    /// Makes room for `units` more products in every column: when the budget would run out,
    /// settles the carries (every column below 2^28 after; the value is unchanged).
    fn spend(&mut self, units: u32) {
        if self.units + units > BUDGET {
            let mut carry = 0u64;
            for t in self.t.iter_mut() {
                let x = *t + carry;
                *t = x & MASK;
                carry = x >> BITS;
            }
            self.units = 1;
        }
        self.units += units;
    }
}

/// `t[j] += Σ xs[r]·rows[r][j]`, four columns at a time; every row at least as long as `t`,
/// whose length is a multiple of four.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn mac_rows<const R: usize>(t: &mut [u64], xs: [u32; R], rows: [&[u32]; R]) {
    use core::arch::wasm32::*;
    if t.len() % 4 != 0 || rows.iter().any(|row| row.len() < t.len()) {
        return;
    }
    let xs = xs.map(|x| u32x4_splat(x));
    for (k, t4) in t.chunks_exact_mut(4).enumerate() {
        // SAFETY: `t4` is four u64s (two v128s) and every row holds `t.len()` u32s, so limbs
        // 4k to 4k + 3 of each (one v128) are in it; wasm loads and stores need no alignment.
        unsafe {
            let low_ptr = t4.as_mut_ptr().cast::<v128>();
            let high_ptr = low_ptr.add(1);
            let (mut low, mut high) = (v128_load(low_ptr), v128_load(high_ptr));
            for (x, row) in xs.iter().zip(rows) {
                let v = v128_load(row.as_ptr().add(4 * k).cast());
                // A fresh load each turn: seeing the loop-invariant splat, LLVM would widen it
                // once outside the loop and multiply with `i64x2.mul`, which V8 lowers to a
                // dozen x86 instructions instead of the one `pmuludq` of an extmul.
                let x = core::ptr::read_volatile(x);
                low = u64x2_add(low, u64x2_extmul_low_u32x4(v, x));
                high = u64x2_add(high, u64x2_extmul_high_u32x4(v, x));
            }
            v128_store(low_ptr, low);
            v128_store(high_ptr, high);
        }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn mac_rows<const R: usize>(t: &mut [u64], xs: [u32; R], rows: [&[u32]; R]) {
    for (x, row) in xs.into_iter().zip(rows) {
        for (t, &v) in t.iter_mut().zip(row) {
            *t += u64::from(x) * u64::from(v);
        }
    }
}

/// The number with [`FRONT`] and [`BACK`] zero limbs around it.
fn padded(limbs: &[u32]) -> Vec<u32> {
    let mut out = vec![0; FRONT];
    out.extend_from_slice(limbs);
    out.resize(FRONT + limbs.len() + BACK, 0);
    out
}

/// `a < b`, for numbers of the same width (little-endian words).
pub(super) fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` modulo 2^(28·len) (callers subtract only where the true result is not negative,
/// counting a carry held outside `a`).
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u32;
    for (x, &y) in a.iter_mut().zip(b) {
        let d = x.wrapping_sub(y).wrapping_sub(borrow);
        *x = d & MASK as u32;
        borrow = d >> 31;
    }
}

/// `-x⁻¹ mod 2^28` for odd `x`, by Newton's iteration (each step doubles the correct low
/// bits; `x` itself is right to 3 bits, as odd squares are 1 mod 8).
fn neg_inverse_mod_2_28(x: u32) -> u32 {
    let mut y = x;
    for _ in 0..4 {
        y = y.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(y)));
    }
    y.wrapping_neg() & MASK as u32
}

/// `R² mod n` (R = 2^(28·l), `l` the limbs of `n`) for a modulus of `bits` bits: from
/// 2^(bits−1) < n, doubled modulo n up to 2^(56·l). A few thousand shift-and-subtracts, once
/// per key.
fn r_squared_mod(n: &[u32], bits: usize) -> Vec<u32> {
    let mut x = vec![0u32; n.len()];
    let top = bits - 1;
    if let Some(limb) = x.get_mut(top / BITS as usize) {
        *limb = 1 << (top % BITS as usize);
    }
    for _ in top..2 * BITS as usize * n.len() {
        let mut carry = 0u32;
        for limb in x.iter_mut() {
            let doubled = (*limb << 1) | carry;
            *limb = doubled & MASK as u32;
            carry = doubled >> BITS;
        }
        if carry != 0 || !less_than(&x, n) {
            sub_in_place(&mut x, n);
        }
    }
    x
}

/// The number as `width` limbs; `None` if it needs more.
fn limbs_from_be(bytes: &[u8], width: usize) -> Option<Vec<u32>> {
    let mut limbs = Vec::with_capacity(width);
    let (mut acc, mut filled) = (0u64, 0u32);
    for &b in bytes.iter().rev() {
        acc |= u64::from(b) << filled;
        filled += 8;
        if filled >= BITS {
            limbs.push((acc & MASK) as u32);
            acc >>= BITS;
            filled -= BITS;
        }
    }
    if filled > 0 {
        limbs.push(acc as u32);
    }
    while limbs.len() > width {
        if limbs.pop() != Some(0) {
            return None;
        }
    }
    limbs.resize(width, 0);
    Some(limbs)
}

/// The number (below a `k`-byte modulus) as exactly `k` big-endian bytes.
fn limbs_to_be(limbs: &[u32], k: usize) -> Vec<u8> {
    let mut out = vec![0u8; k];
    let (mut acc, mut filled) = (0u64, 0u32);
    let mut limbs = limbs.iter();
    for byte in out.iter_mut().rev() {
        if filled < 8 {
            acc |= u64::from(limbs.next().copied().unwrap_or(0)) << filled;
            filled += BITS;
        }
        *byte = acc as u8;
        acc >>= 8;
        filled -= 8;
    }
    out
}

/// The big-endian number without its leading zero bytes.
pub(super) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `base^e mod n` the slow way, on u128s (moduli below 2^64).
    fn reference(base: u64, e: u64, n: u64) -> u64 {
        let (mut result, mut b, mut e) = (1u128 % n as u128, base as u128 % n as u128, e);
        while e > 0 {
            if e & 1 == 1 {
                result = result * b % n as u128;
            }
            b = b * b % n as u128;
            e >>= 1;
        }
        result as u64
    }

    #[test]
    fn small_moduli_agree_with_u128_arithmetic() {
        let mut next = crate::test_pattern::numbers(1);
        for _ in 0..2000 {
            let bits = 2 + next() % 63;
            let n = (next() >> (64 - bits)) | 1 | (1 << (bits - 1));
            let s = next() % n;
            let e = match next() % 4 {
                0 => 65537,
                1 => 3,
                2 => 1,
                _ => next() >> 31,
            }
            .max(1);
            let m = Modulus::new(&n.to_be_bytes()).unwrap();
            let s_be = &s.to_be_bytes()[8 - m.k()..];
            let got = m.pow(s_be, e).unwrap();
            let mut want = [0u8; 8];
            want.copy_from_slice(&[vec![0; 8 - m.k()], got].concat());
            assert_eq!(
                u64::from_be_bytes(want),
                reference(s, e, n),
                "{s}^{e} mod {n}"
            );
        }
    }

    /// Against the `rsa` crate's big integers, at RSA sizes: a multiple of 28 bits and not,
    /// 8 bits over a multiple of 4 limbs, and past the accumulators' budget (settled midway).
    #[test]
    fn rsa_sizes_agree_with_the_rsa_crate() {
        use rsa::BigUint;
        let mut seed = 0;
        let mut bytes = |len: usize| {
            seed += 1;
            crate::test_pattern::bytes(seed, len)
        };
        for bits in [2048, 2052, 2136, 3072, 4100] {
            for round in 0..3 {
                let k = bits / 8 + usize::from(bits % 8 != 0);
                let mut n = bytes(k);
                n[0] = (n[0] | 0x80) >> ((8 - bits % 8) % 8);
                n[k - 1] |= 1;
                let m = Modulus::new(&n).unwrap();
                let n_big = BigUint::from_bytes_be(&n);
                let s_big = BigUint::from_bytes_be(&bytes(k)) % &n_big;
                let mut s = s_big.to_bytes_be();
                s.splice(0..0, vec![0; k - s.len()]);
                let e = [65537u64, 3, 0x1_2345_6789][round];
                let want = s_big.modpow(&BigUint::from(e), &n_big).to_bytes_be();
                let got = m.pow(&s, e).unwrap();
                assert_eq!(
                    BigUint::from_bytes_be(&got),
                    BigUint::from_bytes_be(&want),
                    "{bits}"
                );
                assert_eq!(got.len(), k);
            }
        }
    }

    #[test]
    fn refuses_what_is_not_a_modulus_or_below_it() {
        assert!(Modulus::new(&[0, 0]).is_none());
        assert!(Modulus::new(&[1]).is_none());
        assert!(Modulus::new(&[0x10, 0x00]).is_none());
        let m = Modulus::new(&[0, 0xc1, 0x01]).unwrap();
        assert_eq!(m.k(), 2);
        assert!(m.pow(&[0xc1, 0x01], 3).is_none(), "s = n");
        assert!(m.pow(&[0xff, 0xff], 3).is_none(), "s > n");
        assert!(m.pow(&[0xc1], 3).is_none(), "not k bytes");
        assert_eq!(m.pow(&[0xc1, 0x00], 1).unwrap(), [0xc1, 0x00]);
        assert_eq!(m.pow(&[0, 0], 65537).unwrap(), [0, 0]);
    }

    #[test]
    fn limbs_round_trip() {
        let be: Vec<u8> = (1..=13).collect();
        let limbs = limbs_from_be(&be, 4).unwrap();
        assert!(limbs.iter().all(|&l| u64::from(l) <= MASK));
        assert_eq!(limbs_to_be(&limbs, 13), be);
        assert!(limbs_from_be(&be, 3).is_none());
        for x in [1u32, 3, 0x0fff_ffff, 0x0234_5679, 0x0800_0001] {
            assert_eq!(
                x.wrapping_mul(neg_inverse_mod_2_28(x)) & MASK as u32,
                MASK as u32
            );
        }
    }
}
