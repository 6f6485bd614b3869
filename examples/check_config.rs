//! Checks a bff filter configuration the way the filter checks it when Envoy starts, without
//! Envoy: the JSON of `configuration.value` in an envoy.yaml, or of an Istio `pluginConfig`.
//!
//! ```sh
//! cargo run --quiet --example check_config -- config.json
//! cargo run --quiet --example check_config < config.json
//! ```
//!
//! Prints `ok` and exits 0, or prints every problem (`field: problem`, one a line) and exits 1;
//! a file it cannot read exits 2. The secrets themselves are not needed: every environment
//! variable the configuration reads (`{"env": "NAME"}`, by default `BFF_CLIENT_SECRET` and
//! `BFF_COOKIE_KEYS`) is answered with a placeholder that is a valid value for either (a
//! base64 32-byte key), a name ending in `_KEY` (`BFF_CLIENT_KEY`, `BFF_DPOP_KEY`: a private
//! key) with a test Ed25519 key, and the names read are listed on stderr, so they can be
//! compared with what `vm_config.environment_variables` (or the WasmPlugin's `vmConfig.env`)
//! provides.

use envoy_bff::config::Config;
use std::cell::RefCell;
use std::io::Read;
use std::process::ExitCode;

/// 32 bytes (0, 1, …, 31), base64: a well-formed cookie key, and as good a client secret as any.
const PLACEHOLDER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A private key (the tests' published one, protecting nothing) for `private_key_jwt`'s and
/// DPoP's keys.
const PLACEHOLDER_KEY: &str = include_str!("../tests/fixtures/keys/ed25519.pem");

fn read_input(path: Option<&str>) -> std::io::Result<Vec<u8>> {
    match path {
        Some(path) if path != "-" => std::fs::read(path),
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes)?;
            Ok(bytes)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() > 1 || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: check_config [FILE.json]   (no file, or -: read standard input)");
        return ExitCode::from(2);
    }
    let path = args.first().map(String::as_str);
    let json = match read_input(path) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("check_config: cannot read {}: {e}", path.unwrap_or("stdin"));
            return ExitCode::from(2);
        }
    };

    let read = RefCell::new(Vec::<String>::new());
    let env = |name: &str| {
        read.borrow_mut().push(name.to_string());
        let value = if name.ends_with("_KEY") {
            PLACEHOLDER_KEY
        } else {
            PLACEHOLDER
        };
        Some(value.to_string())
    };
    let result = Config::parse(&json, &env);
    let names = read.into_inner();
    if !names.is_empty() {
        eprintln!("environment: {}", names.join(" "));
    }
    match result {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{}: {}", e.field, e.problem);
            }
            ExitCode::FAILURE
        }
    }
}
