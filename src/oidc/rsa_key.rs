//! RSA signature verification for ID tokens: RS256/384/512 (RSASSA-PKCS1-v1_5) and
//! PS256/384/512 (RSASSA-PSS), RFC 8017 §8.1.2 and §8.2.2 with RFC 7518 §3.3 and §3.5.
//!
//! Our own kernel rather than the `rsa` crate's: measured in V8, one RS256 check (2048 bits)
//! costs 0.98 M instructions here against 7.7 M with `rsa` 0.9 and 6.1 M with 0.10 (bench/run's
//! variant h; bench/README.md). The arithmetic (src/oidc/montgomery.rs) is wasm SIMD on 28-bit
//! limbs with Montgomery constants computed once per key when the JWKS is read, and nothing
//! constant-time: everything here is public (the key, the token, its signature), so the code
//! may branch on it. Never use it for a private-key operation.
//!
//! Tested against the Wycheproof vectors (`tests` below) and fuzzed against the `rsa` crate
//! (fuzz/fuzz_targets/rsa_verify.rs).

use super::jwks::Alg;
use super::montgomery::{strip_leading_zeros, Modulus};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Modulus sizes accepted, in bits (inclusive): RFC 7518 §3.3 requires at least 2048; the
/// ceiling bounds what one token can cost (the `rsa` crate's default is 4096, some IdPs use
/// more). A JWKS key outside them is left out of the set.
pub const MIN_BITS: usize = 2048;
pub const MAX_BITS: usize = 8192;

/// Public exponents accepted: odd, at least 3, below 2^33 (as the `rsa` crate bounds them).
const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// An RSA public key, with what Montgomery multiplication needs precomputed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsaKey {
    n: Modulus,
    e: u64,
    /// The modulus's size in bits.
    bits: usize,
}

impl RsaKey {
    /// The key from a JWK's `n` and `e` (big-endian, leading zeros allowed); `None` unless
    /// `n` is odd and of [`MIN_BITS`] to [`MAX_BITS`] bits and `e` odd, 3 to 2^33 − 1.
    pub fn new(n_be: &[u8], e_be: &[u8]) -> Option<RsaKey> {
        let e_be = strip_leading_zeros(e_be);
        if e_be.len() > 8 {
            return None;
        }
        let e = e_be.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        if !(3..=MAX_EXPONENT).contains(&e) || e & 1 == 0 {
            return None;
        }
        let n_be = strip_leading_zeros(n_be);
        let bits = n_be.len() * 8 - n_be.first()?.leading_zeros() as usize;
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return None;
        }
        Some(RsaKey {
            n: Modulus::new(n_be)?,
            e,
            bits,
        })
    }

    /// Whether `signature` is a valid `alg` signature of `input` (a JWS signing input).
    pub fn verify(&self, alg: Alg, input: &[u8], signature: &[u8]) -> bool {
        // RSAVP1 (§5.2.2) after §8.x.2 step 1: `None` unless the signature is `k` bytes and,
        // as an integer, below `n`.
        let Some(em) = self.n.pow(signature, self.e) else {
            return false;
        };
        match alg {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 => em == pkcs1v15_encoding(alg, input, self.n.k()),
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => pss_verifies(alg, input, &em, self.bits - 1),
            Alg::Es256 | Alg::EdDsa => false,
        }
    }
}

/// The hash of the concatenated `parts` with `alg`'s function (SHA-256/384/512).
fn hash(alg: Alg, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for part in parts {
            d.update(part);
        }
        d.finalize().to_vec()
    }
    match alg {
        Alg::Rs384 | Alg::Ps384 => run::<Sha384>(parts),
        Alg::Rs512 | Alg::Ps512 => run::<Sha512>(parts),
        _ => run::<Sha256>(parts),
    }
}

/// EMSA-PKCS1-v1_5-ENCODE (§9.2) of `input` into `k` bytes: `00 01 ff…ff 00 DigestInfo H`.
/// DigestInfo is the DER of note 1 (with the NULL parameters: a signature without them is
/// refused, as the `rsa` crate does).
fn pkcs1v15_encoding(alg: Alg, input: &[u8], k: usize) -> Vec<u8> {
    const SHA256: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    const SHA384: [u8; 19] = [
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ];
    const SHA512: [u8; 19] = [
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40,
    ];
    let prefix = match alg {
        Alg::Rs384 => &SHA384,
        Alg::Rs512 => &SHA512,
        _ => &SHA256,
    };
    let h = hash(alg, &[input]);
    // k ≥ 256 here, so the padding is far above the 8 bytes §9.2 step 3 asks.
    let padding = k.saturating_sub(prefix.len() + h.len() + 3);
    let mut em = Vec::with_capacity(k);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(2 + padding, 0xff);
    em.push(0x00);
    em.extend_from_slice(prefix);
    em.extend_from_slice(&h);
    em
}

/// EMSA-PSS-VERIFY (§9.1.2) of `input` against the `k`-byte `em` that RSAVP1 gave, for a
/// modulus of `em_bits + 1` bits; MGF1 with the same hash and a salt as long as the hash
/// (RFC 7518 §3.5).
fn pss_verifies(alg: Alg, input: &[u8], em: &[u8], em_bits: usize) -> bool {
    let m_hash = hash(alg, &[input]);
    let h_len = m_hash.len();
    let s_len = h_len;
    let em_len = em_bits.div_ceil(8);
    // The integer is below 2^em_bits only if the bytes above em_len are zero (one byte when
    // the modulus's size is a multiple of 8 plus 1).
    let Some((above, em)) = em.split_at_checked(em.len() - em_len) else {
        return false;
    };
    if above.iter().any(|&b| b != 0) || em_len < h_len + s_len + 2 {
        return false;
    }
    let Some((&last, rest)) = em.split_last() else {
        return false;
    };
    if last != 0xbc {
        return false;
    }
    let (masked_db, h) = rest.split_at(em_len - h_len - 1);
    // The 8·em_len − em_bits leftmost bits of maskedDB must be zero (step 6).
    let unused = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> unused;
    if masked_db.first().is_some_and(|&b| b & !top_mask != 0) {
        return false;
    }
    let mut db = mgf1(alg, h, masked_db.len());
    for (d, m) in db.iter_mut().zip(masked_db) {
        *d ^= m;
    }
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    // DB = PS (zeros) ‖ 0x01 ‖ salt (steps 10–11).
    let ps_len = em_len - h_len - s_len - 2;
    let (ps, rest) = db.split_at(ps_len);
    let Some((&one, salt)) = rest.split_first() else {
        return false;
    };
    if ps.iter().any(|&b| b != 0) || one != 0x01 {
        return false;
    }
    hash(alg, &[&[0u8; 8], &m_hash, salt]) == h
}

/// MGF1 (RFC 8017 Appendix B.2.1) of `seed`, `len` bytes.
fn mgf1(alg: Alg, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut counter = 0u32;
    while out.len() < len {
        out.extend_from_slice(&hash(alg, &[seed, &counter.to_be_bytes()]));
        counter += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- Wycheproof ----------------------------------------------------------------------

    use wycheproof::{HashFunction, TestResult};

    fn rs_alg(hash: HashFunction) -> Option<Alg> {
        match hash {
            HashFunction::Sha2_256 => Some(Alg::Rs256),
            HashFunction::Sha2_384 => Some(Alg::Rs384),
            HashFunction::Sha2_512 => Some(Alg::Rs512),
            _ => None,
        }
    }

    /// Keys of this size are checked natively only: unoptimised wasm in V8 takes minutes
    /// over the 8192-bit sets (the same code; the native run covers them).
    fn too_slow_here(bits: usize) -> bool {
        cfg!(target_arch = "wasm32") && bits > 4096
    }

    /// Checks one vector; true when it was a valid signature (and verified).
    fn check(
        key: &RsaKey,
        alg: Alg,
        msg: &[u8],
        sig: &[u8],
        result: TestResult,
        id: usize,
    ) -> bool {
        let verified = key.verify(alg, msg, sig);
        match result {
            TestResult::Valid => assert!(verified, "{alg:?} #{id}: a valid signature refused"),
            TestResult::Invalid => assert!(!verified, "{alg:?} #{id}: an invalid one accepted"),
            // "May reasonably fail for policy reasons": either is right.
            TestResult::Acceptable => {}
        }
        verified && result == TestResult::Valid
    }

    #[test]
    fn wycheproof_rsassa_pkcs1_v1_5() {
        use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
        let mut valid = 0;
        for name in TestName::all() {
            let set = TestSet::load(name).unwrap();
            for group in set.test_groups {
                let Some(alg) = rs_alg(group.hash) else {
                    continue;
                };
                if too_slow_here(group.key_size) {
                    continue;
                }
                let key = RsaKey::new(&group.key.n, &group.key.e).unwrap();
                for t in &group.tests {
                    valid += usize::from(check(&key, alg, &t.msg, &t.sig, t.result, t.tc_id));
                }
            }
        }
        // 2048 to 4096 (natively 8192) bits with SHA-256/384/512.
        assert!(valid > 50, "{valid}");
    }

    #[test]
    fn wycheproof_rsassa_pss() {
        use wycheproof::rsa_pss_verify::{TestName, TestSet};
        use wycheproof::Mgf;
        let (mut valid, mut other_salts) = (0, 0);
        for name in TestName::all() {
            let set = TestSet::load(name).unwrap();
            for group in set.test_groups {
                let Some(alg) = rs_alg(group.hash).map(|a| match a {
                    Alg::Rs384 => Alg::Ps384,
                    Alg::Rs512 => Alg::Ps512,
                    _ => Alg::Ps256,
                }) else {
                    continue;
                };
                if too_slow_here(group.key_size) {
                    continue;
                }
                let Some(key) = RsaKey::new(&group.key.n, &group.key.e) else {
                    assert!(group.key_size < MIN_BITS, "{name:?}");
                    continue;
                };
                let h_len = hash(alg, &[]).len();
                let jws_shaped = group.mgf == Mgf::Mgf1
                    && group.mgf_hash == Some(group.hash)
                    && group.salt_size == h_len;
                for t in &group.tests {
                    if jws_shaped {
                        valid += usize::from(check(&key, alg, &t.msg, &t.sig, t.result, t.tc_id));
                    } else if t.result == TestResult::Valid {
                        // RFC 7518 §3.5 fixes MGF1 with the same hash and the hash's length
                        // of salt: a signature valid under other parameters is refused.
                        assert!(!key.verify(alg, &t.msg, &t.sig), "{name:?} #{}", t.tc_id);
                        other_salts += 1;
                    }
                }
            }
        }
        assert!(valid > 20 && other_salts > 20, "{valid} {other_salts}");
    }
}
