//! One encrypted ID token's decryption, as the filter makes it (`jwe::decrypt`: header, base64,
//! the key management, the content decryption), repeated: built for wasm32-wasip1 and run in
//! Node's V8 under callgrind by bench/decryptions.py, which takes the instructions of `N`
//! decryptions minus those of none.
//!
//!   jwecheck <kid> <N> <token> <private key PEM>
//!
//! Exits 1 when the token does not decrypt (a bench of a failing decryption measures nothing).

use envoy_bff::oidc::jwe::{self, Accepted, ContentEncryption, DecryptionKey, KeyManagement};
use envoy_bff::oidc::signing_key::SigningKey;
use std::hint::black_box;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kid, n, token, pem] = args.as_slice() else {
        eprintln!("usage: jwecheck <kid> <N> <token> <pem>");
        return ExitCode::from(2);
    };
    let (Ok(n), Some(key)) = (
        n.parse::<u32>(),
        SigningKey::parse(pem, Some(kid))
            .ok()
            .and_then(|k| k.decryption_key()),
    ) else {
        eprintln!("jwecheck: bad N or key");
        return ExitCode::from(2);
    };
    let keys = [DecryptionKey {
        kid: Some(kid.clone()),
        key,
    }];
    let accepted = Accepted {
        algs: &KeyManagement::ALL,
        encs: &ContentEncryption::ALL,
    };
    // Once outside the count: the token must decrypt.
    if jwe::decrypt(token, &keys, &accepted).is_err() {
        eprintln!("jwecheck: the token does not decrypt");
        return ExitCode::from(1);
    }
    for _ in 0..n {
        black_box(jwe::decrypt(black_box(token), &keys, &accepted).is_ok());
    }
    ExitCode::SUCCESS
}
