//! The ES256 verification kernel (src/oidc/p256_key.rs) against the `p256` crate as a
//! reference: for every input both must agree, on signatures made from the input (a real
//! signature with bits flipped, the input's own bytes, the input signed by the crate) and on
//! public keys made from it (mostly off the curve: both must refuse them). The key is the
//! tests' P-256 fixture.

#![no_main]

use envoy_bff::oidc::p256_key::P256Key;
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;
use std::sync::OnceLock;

const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

struct Fixture {
    signer: SigningKey,
    kernel: P256Key,
    /// A valid signature of MESSAGE, R ‖ S.
    signature: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pem = include_str!("../../tests/fixtures/keys/ec-p256.pem");
        let signer = SigningKey::from_pkcs8_pem(pem).unwrap();
        let point = signer.verifying_key().to_encoded_point(false);
        let kernel = P256Key::new(
            point.x().unwrap().as_slice().try_into().unwrap(),
            point.y().unwrap().as_slice().try_into().unwrap(),
        )
        .unwrap();
        let signature: Signature = signer.sign(MESSAGE);
        Fixture { signer, kernel, signature: signature.to_bytes().to_vec() }
    })
}

/// What jws.rs checked before the kernel: 64 bytes, r and s in [1, n − 1], then the crate.
fn reference_verifies(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    Signature::from_slice(signature).is_ok_and(|sig| key.verify(message, &sig).is_ok())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let reference = f.signer.verifying_key();
    match selector % 6 {
        // The real signature with the input XORed over it, from its start or its end.
        0 | 1 => {
            let mut s = f.signature.clone();
            if selector % 6 == 0 {
                s.iter_mut().zip(rest).for_each(|(b, x)| *b ^= x);
            } else {
                s.iter_mut().rev().zip(rest).for_each(|(b, x)| *b ^= x);
            }
            let expected = reference_verifies(reference, MESSAGE, &s);
            assert_eq!(f.kernel.verify(MESSAGE, &s), expected);
        }
        // The input itself as a signature.
        2 => {
            let expected = reference_verifies(reference, MESSAGE, rest);
            assert_eq!(f.kernel.verify(MESSAGE, rest), expected);
        }
        // The real signature over another message.
        3 => {
            let expected = reference_verifies(reference, rest, &f.signature);
            assert_eq!(f.kernel.verify(rest, &f.signature), expected);
        }
        // The input signed by the crate: must verify.
        4 => {
            let signature: Signature = f.signer.sign(rest);
            assert!(f.kernel.verify(rest, &signature.to_bytes()));
        }
        // A public key from the input: both take it or both refuse it, and then agree.
        _ => {
            let mut xy = [0u8; 64];
            xy.iter_mut().zip(rest).for_each(|(b, x)| *b = *x);
            let (x, y) = xy.split_at(32);
            let mut sec1 = vec![0x04];
            sec1.extend_from_slice(&xy);
            let theirs = VerifyingKey::from_sec1_bytes(&sec1).ok();
            let ours = P256Key::new(x.try_into().unwrap(), y.try_into().unwrap());
            assert_eq!(ours.is_some(), theirs.is_some());
            if let (Some(ours), Some(theirs)) = (ours, theirs) {
                let sig = rest.get(64..).unwrap_or_default();
                assert_eq!(ours.verify(MESSAGE, sig), reference_verifies(&theirs, MESSAGE, sig));
            }
        }
    }
});
