//! One ID token's signature check, as the filter makes it (`jws::verify`: header, base64,
//! hash, signature), repeated: built for wasm32-wasip1 and run in Node's V8 under callgrind by
//! bench/run, which takes the instructions of `N` checks minus those of none.
//!
//!   sigcheck <alg> <N> <token> <jwks>
//!
//! Exits 1 when the token does not verify (a bench of a failing check measures nothing).

use envoy_bff::oidc::jwks::{Alg, Jwks};
use envoy_bff::oidc::jws;
use std::hint::black_box;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [alg, n, token, jwks] = args.as_slice() else {
        eprintln!("usage: sigcheck <alg> <N> <token> <jwks>");
        return ExitCode::from(2);
    };
    let (Some(alg), Ok(n), Ok(jwks)) = (
        Alg::parse(alg),
        n.parse::<u32>(),
        Jwks::parse(jwks.as_bytes()),
    ) else {
        eprintln!("sigcheck: bad alg, N or JWKS");
        return ExitCode::from(2);
    };
    // Once outside the count: the token must verify.
    if jws::verify(token, &jwks, &[alg]).is_err() {
        eprintln!("sigcheck: the token does not verify");
        return ExitCode::from(1);
    }
    for _ in 0..n {
        black_box(jws::verify(black_box(token), &jwks, &[alg]).is_ok());
    }
    ExitCode::SUCCESS
}
