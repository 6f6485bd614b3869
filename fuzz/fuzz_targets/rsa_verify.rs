//! The RSA verification kernel (src/oidc/rsa_key.rs) against the `rsa` crate as a reference:
//! for every input both must agree, for each of RS256/384/512 and PS256/384/512, on signatures
//! made from the input (a real signature with bits flipped, or the input's own bytes) and on
//! messages made from it. The key is the tests' 2048-bit fixture; its real signatures are made
//! once.

#![no_main]

use envoy_bff::oidc::jwks::Alg;
use envoy_bff::oidc::rsa_key::RsaKey;
use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::{pkcs1v15, pss, BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::sync::OnceLock;

const ALGS: [Alg; 6] = [Alg::Rs256, Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512];
const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

struct Fixture {
    reference: RsaPublicKey,
    kernel: RsaKey,
    /// A valid signature of MESSAGE per algorithm of ALGS.
    signatures: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pem = include_str!("../../tests/fixtures/keys/rsa-2048.pem");
        let private = RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
        let reference = private.to_public_key();
        let kernel =
            RsaKey::new(&reference.n().to_bytes_be(), &reference.e().to_bytes_be()).unwrap();
        let mut rng = rand_core::OsRng;
        let p = private.clone();
        let signatures = vec![
            pkcs1v15::SigningKey::<Sha256>::new(p.clone()).sign(MESSAGE).to_vec(),
            pkcs1v15::SigningKey::<Sha384>::new(p.clone()).sign(MESSAGE).to_vec(),
            pkcs1v15::SigningKey::<Sha512>::new(p.clone()).sign(MESSAGE).to_vec(),
            pss::BlindedSigningKey::<Sha256>::new(p.clone()).sign_with_rng(&mut rng, MESSAGE).to_vec(),
            pss::BlindedSigningKey::<Sha384>::new(p.clone()).sign_with_rng(&mut rng, MESSAGE).to_vec(),
            pss::BlindedSigningKey::<Sha512>::new(p).sign_with_rng(&mut rng, MESSAGE).to_vec(),
        ];
        Fixture { reference, kernel, signatures }
    })
}

/// What jws.rs checked before the kernel: length, s < n, then the crate's verification.
fn reference_verifies(key: &RsaPublicKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    if signature.len() != key.size() || BigUint::from_bytes_be(signature) >= *key.n() {
        return false;
    }
    match alg {
        Alg::Rs256 => key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message), signature),
        Alg::Rs384 => key.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(message), signature),
        Alg::Rs512 => key.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(message), signature),
        Alg::Ps256 => key.verify(Pss::new::<Sha256>(), &Sha256::digest(message), signature),
        Alg::Ps384 => key.verify(Pss::new::<Sha384>(), &Sha384::digest(message), signature),
        _ => key.verify(Pss::new::<Sha512>(), &Sha512::digest(message), signature),
    }
    .is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let which = usize::from(selector) % ALGS.len();
    let alg = ALGS[which];
    let valid = &f.signatures[which];
    let (message, signature): (&[u8], Vec<u8>) = match selector / 64 {
        // The real signature with the input XORed over it (from its start).
        0 => {
            let mut s = valid.clone();
            s.iter_mut().zip(rest).for_each(|(b, x)| *b ^= x);
            (MESSAGE, s)
        }
        // The input itself as a signature.
        1 => (MESSAGE, rest.to_vec()),
        // The real signature over another message.
        2 => (rest, valid.clone()),
        // The real signature with the input XORed over its end.
        _ => {
            let mut s = valid.clone();
            s.iter_mut().rev().zip(rest).for_each(|(b, x)| *b ^= x);
            (MESSAGE, s)
        }
    };
    let expected = reference_verifies(&f.reference, alg, message, &signature);
    assert_eq!(f.kernel.verify(alg, message, &signature), expected, "{alg:?}");
});
