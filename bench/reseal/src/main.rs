//! Seals one session again `N` times with the filter's own code, for bench/run's variant (g):
//! each copy has a fresh nonce, so its sealed bytes differ and no session cache can answer it
//! from another's entry; each opens to the same session (the same size and contents as a real
//! login's), as many users' sessions of one shape would.
//!
//!   reseal <cookie name> <base64 cookie key> <N> < sealed-value  > N sealed values, a line each

use envoy_bff::random::{Random, RandomUnavailable};
use envoy_bff::session::contents::Session;
use envoy_bff::session::seal::KeyRing;
use std::io::{Read, Write};
use std::process::ExitCode;

struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        getrandom::getrandom(buf).map_err(|_| RandomUnavailable)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, key, n] = args.as_slice() else {
        eprintln!("usage: reseal <cookie name> <base64 cookie key> <N> < sealed-value");
        return ExitCode::from(2);
    };
    let (Ok(keys), Ok(n)) = (KeyRing::from_base64_list(key), n.parse::<usize>()) else {
        eprintln!("reseal: a bad key or N");
        return ExitCode::from(2);
    };
    let mut sealed = String::new();
    if std::io::stdin().read_to_string(&mut sealed).is_err() {
        return ExitCode::from(2);
    }
    let Ok(session) = Session::open_sealed(&keys, name, sealed.trim().as_bytes()) else {
        eprintln!("reseal: the value does not open with that key");
        return ExitCode::from(1);
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..n {
        let Ok(value) = session.seal(&keys, name, &mut OsRandom) else {
            eprintln!("reseal: sealing failed");
            return ExitCode::from(1);
        };
        if writeln!(out, "{value}").is_err() {
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
