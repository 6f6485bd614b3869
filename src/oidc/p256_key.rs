//! ES256 signature verification for ID tokens (ECDSA on P-256 with SHA-256, RFC 7518 §3.4;
//! FIPS 186-5 §6.4.2).
//!
//! Our own kernel rather than the `p256` crate's: on wasm32, `p256` 0.13 works on 64-bit limbs
//! with 128-bit products, which wasm lacks, and is constant-time throughout, which checking
//! public values does not need; one check cost 17 M instructions in V8 against 3.7 M here
//! (bench/run's variant h; bench/README.md). The field is src/oidc/p256_field.rs (29-bit
//! limbs). u1·G + u2·Q is one pass from the top bit down over Jacobian points (doubling
//! "dbl-2001-b", 3M + 5S), adding affine multiples of G (6-bit windows, made once per VM) and
//! of Q (5-bit windows, made once per key when the JWKS is read) by "madd-2007-bl" (7M + 4S),
//! with the cases those formulas leave out handled apart: an accumulator at infinity, adding
//! a point to itself, to its negation. The tables are made with the complete formulas of
//! Renes, Costello and Batina (eprint 2015/1060, algorithm 4 for a = −3), which have no such
//! cases. Nothing is constant-time: the key, the token and its signature are public. Never
//! use it for signing.
//!
//! Tested against the Wycheproof vectors (`tests` below) and fuzzed against the `p256` crate
//! (fuzz/fuzz_targets/es256_verify.rs).

use super::p256_field::{r_squared, Fe};
use super::p256_scalar::Scalar;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// A point (X : Y : Z), x = X/Z and y = Y/Z, coordinates in Montgomery form; Z = 0 is the
/// point at infinity. How tables are made (complete formulas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Projective {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// A point other than infinity, as (x, y) in Montgomery form: what tables hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Affine {
    x: Fe,
    y: Fe,
}

/// A point (X : Y : Z), x = X/Z² and y = Y/Z³: the verification pass's accumulator.
#[derive(Clone, Copy, Debug)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// Window widths: G's table (made once per VM) is larger than a key's (made per key).
const G_WINDOW: usize = 6;
const Q_WINDOW: usize = 5;

/// The curve's constants, in Montgomery form.
struct Curve {
    r2: Fe,
    one: Fe,
    b: Fe,
    /// 1·G to 63·G.
    g: Vec<Affine>,
}

fn curve() -> &'static Curve {
    static CURVE: OnceLock<Curve> = OnceLock::new();
    CURVE.get_or_init(|| {
        let r2 = r_squared();
        let mont =
            |words: &[u64; 4]| Fe::plain_from_be(&be_bytes(words)).map(|x| x.to_montgomery(&r2));
        let one = Fe::ONE_PLAIN.to_montgomery(&r2);
        let b = mont(&B).unwrap_or_default();
        let g = Affine {
            x: mont(&GX).unwrap_or_default(),
            y: mont(&GY).unwrap_or_default(),
        };
        Curve {
            r2,
            one,
            b,
            g: multiples(&g, G_WINDOW, one, &b),
        }
    })
}

/// b of y² = x³ − 3x + b, and the generator (SEC 2 §2.4.2), as big-endian 64-bit words.
const B: [u64; 4] = [
    0x5ac6_35d8_aa3a_93e7,
    0xb3eb_bd55_7698_86bc,
    0x651d_06b0_cc53_b0f6,
    0x3bce_3c3e_27d2_604b,
];
const GX: [u64; 4] = [
    0x6b17_d1f2_e12c_4247,
    0xf8bc_e6e5_63a4_40f2,
    0x7703_7d81_2deb_33a0,
    0xf4a1_3945_d898_c296,
];
const GY: [u64; 4] = [
    0x4fe3_42e2_fe1a_7f9b,
    0x8ee7_eb4a_7c0f_9e16,
    0x2bce_3357_6b31_5ece,
    0xcbb6_4068_37bf_51f5,
];

fn be_bytes(words: &[u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// An EC P-256 public key, with its multiples for the verification pass made once.
#[derive(Clone)]
pub struct P256Key {
    /// 1·Q to 31·Q.
    q: Vec<Affine>,
}

impl std::fmt::Debug for P256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P256Key")
    }
}

impl P256Key {
    /// The key from a JWK's `x` and `y`; `None` unless both are below p and the point is on
    /// the curve (P-256's order is prime: any such point is a valid public key).
    pub fn new(x: &[u8; 32], y: &[u8; 32]) -> Option<P256Key> {
        let c = curve();
        let x = Fe::plain_from_be(x)?.to_montgomery(&c.r2);
        let y = Fe::plain_from_be(y)?.to_montgomery(&c.r2);
        let x3_minus_3x_plus_b = x.square().mul(&x).sub(&x.times(3)).add(&c.b);
        if !y.square().same(&x3_minus_3x_plus_b) {
            return None;
        }
        Some(P256Key {
            q: multiples(&Affine { x, y }, Q_WINDOW, c.one, &c.b),
        })
    }

    /// Whether `signature` (R ‖ S, 32 bytes each: RFC 7518 §3.4) is an ES256 signature of
    /// `input`.
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        let Some((r, s)) = signature.split_at_checked(32) else {
            return false;
        };
        let (Ok(r), Ok(s)) = (<&[u8; 32]>::try_from(r), <&[u8; 32]>::try_from(s)) else {
            return false;
        };
        let (r, s) = (Scalar::from_be(r), Scalar::from_be(s));
        if !r.in_range() || !s.in_range() {
            return false;
        }
        let e = Scalar::from_be(&Sha256::digest(input).into()).reduced();
        let w = s.invert();
        let (u1, u2) = (e.mul_mod_n(&w), r.mul_mod_n(&w));
        let c = curve();
        let Some(point) = two_multiples(c, &u1, &self.q, &u2) else {
            return false;
        };
        // x mod n = r, without an inversion: X = x·Z², and x is r or (when below p) r + n.
        let zz = point.z.square();
        let matches = |x: Scalar| {
            Fe::plain_from_be(&x.to_be())
                .is_some_and(|x| x.to_montgomery(&c.r2).mul(&zz).same(&point.x))
        };
        matches(r) || r.plus_n().is_some_and(matches)
    }
}

/// `u1·G + u2·Q` from the top bit down, each scalar's fixed windows added where they begin;
/// `None` for the point at infinity.
fn two_multiples(c: &Curve, u1: &Scalar, q: &[Affine], u2: &Scalar) -> Option<Jacobian> {
    let mut acc: Option<Jacobian> = None;
    for at in (0..256).rev() {
        acc = acc.map(|p| double(&p));
        for (table, u, width) in [(c.g.as_slice(), u1, G_WINDOW), (q, u2, Q_WINDOW)] {
            if at % width != 0 {
                continue;
            }
            let digit = u.window(at, width);
            if let Some(point) = digit.checked_sub(1).and_then(|i| table.get(i)) {
                acc = add_affine(acc.as_ref(), point);
            }
        }
    }
    acc
}

/// 1·P to (2^width − 1)·P, affine: by complete additions, then one inversion for them all
/// (Montgomery's trick).
fn multiples(p: &Affine, width: usize, one: Fe, b: &Fe) -> Vec<Affine> {
    let count = (1 << width) - 1;
    let p = Projective {
        x: p.x,
        y: p.y,
        z: one,
    };
    let mut points = Vec::with_capacity(count);
    let mut next = p;
    for _ in 0..count {
        points.push(next);
        next = add(&next, &p, b);
    }
    // k·P is never infinity for k < n, so no Z is zero.
    let mut prefix = Vec::with_capacity(count);
    let mut running = one;
    for point in &points {
        prefix.push(running);
        running = running.mul(&point.z);
    }
    let mut inverse = running.invert(&one);
    let mut out = vec![Affine::default(); count];
    for ((slot, point), before) in out.iter_mut().zip(&points).zip(&prefix).rev() {
        let z_inv = inverse.mul(before);
        inverse = inverse.mul(&point.z);
        *slot = Affine {
            x: point.x.mul(&z_inv),
            y: point.y.mul(&z_inv),
        };
    }
    out
}

/// Complete addition for a = −3 (Renes–Costello–Batina, algorithm 4).
fn add(p: &Projective, q: &Projective, b: &Fe) -> Projective {
    let xx = p.x.mul(&q.x);
    let yy = p.y.mul(&q.y);
    let zz = p.z.mul(&q.z);
    let xy_pairs = p.x.add(&p.y).mul(&q.x.add(&q.y)).sub(&xx.add(&yy));
    let yz_pairs = p.y.add(&p.z).mul(&q.y.add(&q.z)).sub(&yy.add(&zz));
    let xz_pairs = p.x.add(&p.z).mul(&q.x.add(&q.z)).sub(&xx.add(&zz));

    let bzz_part = xz_pairs.sub(&b.mul(&zz));
    let bzz3_part = bzz_part.times(3);
    let yy_m_bzz3 = yy.sub(&bzz3_part);
    let yy_p_bzz3 = yy.add(&bzz3_part);

    let zz3 = zz.times(3);
    let bxz_part = b.mul(&xz_pairs).sub(&zz3.add(&xx));
    let bxz3_part = bxz_part.times(3);
    let xx3_m_zz3 = xx.times(3).sub(&zz3);

    Projective {
        x: yy_p_bzz3.mul(&xy_pairs).sub(&yz_pairs.mul(&bxz3_part)),
        y: yy_p_bzz3.mul(&yy_m_bzz3).add(&xx3_m_zz3.mul(&bxz3_part)),
        z: yy_m_bzz3.mul(&yz_pairs).add(&xy_pairs.mul(&xx3_m_zz3)),
    }
}

/// Doubling for a = −3 ("dbl-2001-b" in the Explicit-Formulas Database: 3M + 5S). P-256 has
/// no point of order 2, so the double of a point is never infinity.
fn double(p: &Jacobian) -> Jacobian {
    let delta = p.z.square();
    let gamma = p.y.square();
    let beta = p.x.mul(&gamma);
    let alpha = p.x.sub(&delta).mul(&p.x.add(&delta)).times(3);
    let beta4 = beta.times(4);
    let x = alpha.square().sub(&beta.times(8));
    let z = p.y.add(&p.z).square().sub(&gamma.add(&delta));
    let y = alpha.mul(&beta4.sub(&x)).sub(&gamma.square().times(8));
    Jacobian { x, y, z }
}

/// `p + q` for an affine `q` ("madd-2007-bl": 7M + 4S), with the cases those formulas leave
/// out: `p` at infinity, `p = q` (a doubling) and `p = −q` (infinity).
fn add_affine(p: Option<&Jacobian>, q: &Affine) -> Option<Jacobian> {
    let Some(p) = p else {
        return Some(Jacobian {
            x: q.x,
            y: q.y,
            z: curve().one,
        });
    };
    let z1z1 = p.z.square();
    let u2 = q.x.mul(&z1z1);
    let s2 = q.y.mul(&p.z).mul(&z1z1);
    let h = u2.sub(&p.x);
    let r = s2.sub(&p.y).double();
    if h.is_zero() {
        return match r.is_zero() {
            true => Some(double(p)),
            false => None,
        };
    }
    let hh = h.square();
    let i = hh.times(4);
    let j = h.mul(&i);
    let v = p.x.mul(&i);
    let x = r.square().sub(&j).sub(&v.double());
    let y = r.mul(&v.sub(&x)).sub(&p.y.mul(&j).double());
    let z = p.z.add(&h).square().sub(&z1z1).sub(&hh);
    Some(Jacobian { x, y, z })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{Signature, SigningKey};

    fn key_of(signer: &SigningKey) -> P256Key {
        let point = signer.verifying_key().to_encoded_point(false);
        P256Key::new(
            point.x().unwrap().as_slice().try_into().unwrap(),
            point.y().unwrap().as_slice().try_into().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn verifies_the_crates_signatures_and_refuses_altered_ones() {
        let mut seed = 0;
        for round in 0..20u8 {
            seed += 1;
            let secret = crate::test_pattern::bytes(seed, 32);
            let Ok(signer) = SigningKey::from_slice(&secret) else {
                continue;
            };
            let key = key_of(&signer);
            let message = format!("eyJhbGciOiJFUzI1NiJ9.{round}");
            let sig: Signature = signer.sign(message.as_bytes());
            let bytes = sig.to_bytes();
            assert!(key.verify(message.as_bytes(), &bytes), "{round}");
            // Normalised to low S or not, both verify (ECDSA has no malleability rule).
            let (r, s) = sig.split_scalars();
            let high = Signature::from_scalars(r, -*s).unwrap();
            assert!(key.verify(message.as_bytes(), &high.to_bytes()));
            assert!(!key.verify(b"another message", &bytes));
            for at in [0, 31, 32, 63] {
                let mut bad = bytes.to_vec();
                bad[at] ^= 1;
                assert!(!key.verify(message.as_bytes(), &bad), "{round} {at}");
            }
            assert!(!key.verify(message.as_bytes(), &bytes[..63]));
            assert!(!key.verify(message.as_bytes(), &[bytes.as_slice(), &[0]].concat()));
        }
    }

    #[test]
    fn refuses_points_off_the_curve_and_coordinates_not_below_p() {
        let (gx, mut gy) = (be_bytes(&GX), be_bytes(&GY));
        assert!(P256Key::new(&gx, &gy).is_some());
        gy[31] ^= 1;
        assert!(P256Key::new(&gx, &gy).is_none());
        assert!(P256Key::new(&[0xff; 32], &be_bytes(&GY)).is_none());
        assert!(P256Key::new(&[0; 32], &[0; 32]).is_none());
    }

    #[test]
    fn wycheproof_ecdsa_p256_sha256() {
        use wycheproof::ecdsa::{TestName, TestSet};
        use wycheproof::TestResult;
        let mut counts = [0usize; 2];
        // The P1363 set as JWS carries it (R ‖ S); the DER set's signatures too, where they
        // parse, as R ‖ S (its edge cases are more numerous).
        let p1363 = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).unwrap();
        let der = TestSet::load(TestName::EcdsaSecp256r1Sha256).unwrap();
        for (group, is_der) in p1363
            .test_groups
            .into_iter()
            .map(|g| (g, false))
            .chain(der.test_groups.into_iter().map(|g| (g, true)))
        {
            let (x, y) = (&group.key.affine_x, &group.key.affine_y);
            let fixed = |v: &[u8]| -> Option<[u8; 32]> {
                // Wycheproof's integers may carry a sign byte or be short.
                let v = crate::oidc::montgomery::strip_leading_zeros(v);
                let mut out = [0u8; 32];
                out.get_mut(32usize.checked_sub(v.len())?..)?
                    .copy_from_slice(v);
                Some(out)
            };
            let key = fixed(x)
                .zip(fixed(y))
                .and_then(|(x, y)| P256Key::new(&x, &y));
            for t in &group.tests {
                let sig = match is_der {
                    false => t.sig.to_vec(),
                    true => match Signature::from_der(&t.sig) {
                        Ok(sig) => sig.to_bytes().to_vec(),
                        Err(_) => continue,
                    },
                };
                let got = key.as_ref().is_some_and(|k| k.verify(&t.msg, &sig));
                match t.result {
                    TestResult::Valid => {
                        assert!(got, "tc {} should verify: {}", t.tc_id, t.comment);
                        counts[0] += 1;
                    }
                    TestResult::Invalid => {
                        assert!(!got, "tc {} should not verify: {}", t.tc_id, t.comment);
                        counts[1] += 1;
                    }
                    TestResult::Acceptable => {}
                }
            }
        }
        // The set holds the edge cases of the Shamir pass, point duplication, r and s at the
        // range's ends and x coordinates above n.
        assert!(counts[0] > 300 && counts[1] > 100, "{counts:?}");
    }
}
