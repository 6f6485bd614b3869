//! Opening a session cookie in V8, part by part: a wasm32-wasip1 command that repeats one part
//! `N` times on a session shaped like bench variant (d)'s (an ID token of ~0.75 KB, opaque access
//! and refresh tokens: a 1.3 KB cookie). Run it under callgrind in Node (as bench/sigcheck is)
//! with N and with 0, and divide the difference by N:
//!
//!   cargo build --release --target wasm32-wasip1      (from bench/opencheck; SIMD as the filter)
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null node \
//!     --disable-warning=ExperimentalWarning --no-liftoff --no-wasm-lazy-compilation \
//!     ../sigcheck/run.mjs target/wasm32-wasip1/release/opencheck.wasm <part> <N>
//!
//! Parts: `base64` (the cookie body), `keystream` (XChaCha20 over the ciphertext), `poly1305`
//! (the tag over it), `open` (`Session::open_sealed`: both parts decrypted and decoded), `first`
//! (`Session::open_first`: the tag over both, the first part alone decrypted and decoded), `miss` (the session
//! cache with 1,024 entries, 2,048 sessions in turn: every open misses), `hit` (one session
//! again and again), `seal` (sealing the session, as a login or refresh does), `keep` (the ID
//! token taken into the session: `KeptIdToken::new`), `none` (the loop alone: the baseline). 20,000 repetitions put the
//! difference well above the run-to-run noise of Node's start (~1 M instructions).

use chacha20::cipher::{KeyIvInit, StreamCipher};
use envoy_bff::random::{Random, RandomUnavailable};
use envoy_bff::secret::Secret;
use envoy_bff::session::cache::SessionCache;
use envoy_bff::session::contents::{Cold, ColdFields};
use envoy_bff::session::kept_id_token::KeptIdToken;
use envoy_bff::session::cookie::Jar;
use envoy_bff::session::xchacha20::XChaCha20;
use envoy_bff::session::{KeyRing, Session};
use poly1305::universal_hash::KeyInit;
use std::hint::black_box;
use std::process::ExitCode;
use std::rc::Rc;

const NAME: &str = "__Host-bff-session";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// xorshift: fresh nonces without a host (the sessions need only differ).
struct XorShift(u64);

impl Random for XorShift {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        for b in buf.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
        Ok(())
    }
}

fn session() -> Session {
    let claims = r#"{"iss":"http://127.0.0.1:9000","sub":"alice-sub-0001","aud":"bff","exp":4102444800,"iat":1800000000,"nonce":"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn","at_hash":"hhhhhhhhhhhhhhhhhhhhhh","sid":"ssssssssssssssssssssssssssssssssssss","auth_time":1800000000,"email":"alice@example.com"}"#;
    let payload = base64_simd::URL_SAFE_NO_PAD.encode_to_string(claims);
    let id_token = format!("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJKV1QifQ.{payload}.{}", "S".repeat(341) + "A");
    Session {
        access_token: Secret::new("A".repeat(43)),
        access_expires_at: 4_102_444_800,
        subject: "alice-sub-0001".into(),
        created: 1_800_000_000,
        last_seen: 1_800_000_000,
        sid: "x".repeat(22),
        idp_sid: Some("s".repeat(36)),
        cold: Cold::Open(ColdFields {
            refresh_token: Some(Secret::new("R".repeat(43))),
            id_token: Some(KeptIdToken::new(&id_token)),
        }),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [part, n] = args.as_slice() else {
        eprintln!("usage: opencheck <part> <N>");
        return ExitCode::from(2);
    };
    let (Ok(n), Ok(keys)) = (n.parse::<usize>(), KeyRing::from_base64_list(KEY)) else {
        eprintln!("opencheck: bad N");
        return ExitCode::from(2);
    };
    let s = session();
    let Cold::Open(cold) = &s.cold else {
        return ExitCode::from(1);
    };
    let Some(id_token) = cold.id_token.as_ref().map(|t| t.compact().expose().to_string()) else {
        return ExitCode::from(1);
    };
    let mut rng = XorShift(88_172_645_463_325_252);
    let sealed: Vec<String> = (0..2048)
        .filter_map(|_| s.seal(&keys, NAME, &mut rng).ok())
        .collect();
    let headers: Vec<String> = sealed.iter().map(|v| format!("{NAME}={v}")).collect();
    let Some(body) = sealed.first().and_then(|v| v.rsplit('.').next()) else {
        return ExitCode::from(1);
    };
    let Ok(blob) = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(body) else {
        return ExitCode::from(1);
    };
    let mut cache = SessionCache::new(1024);
    let mut buf = Vec::new();
    for i in 0..n {
        let header = headers[i % headers.len()].as_bytes();
        match part.as_str() {
            "base64" => {
                black_box(base64_simd::URL_SAFE_NO_PAD.decode_to_vec(black_box(body)).is_ok());
            }
            "keystream" => {
                let mut c = XChaCha20::new(&[7; 32].into(), &[1; 24].into());
                let mut b = blob.clone();
                c.apply_keystream(&mut b);
                black_box(&b);
            }
            "poly1305" => {
                let p = poly1305::Poly1305::new(&[7; 32].into());
                black_box(p.compute_unpadded(black_box(&blob)));
            }
            "open" => {
                let value = sealed[i % sealed.len()].as_bytes();
                black_box(Session::open_sealed(&keys, NAME, black_box(value)).is_ok());
            }
            "first" => {
                let value = sealed[i % sealed.len()].as_bytes();
                black_box(Session::open_first(&keys, NAME, Rc::from(black_box(value)), &mut buf).is_ok());
            }
            "miss" => {
                black_box(cache.open(&keys, NAME, &Jar::parse(Some(header)), || false).is_ok());
            }
            "hit" => {
                let first = headers[0].as_bytes();
                black_box(cache.open(&keys, NAME, &Jar::parse(Some(first)), || false).is_ok());
            }
            "seal" => {
                black_box(s.seal(&keys, NAME, &mut rng).is_ok());
            }
            "keep" => {
                black_box(KeptIdToken::new(black_box(&id_token)));
            }
            "none" => {
                black_box(header.len());
            }
            _ => {
                eprintln!("opencheck: no part {part}");
                return ExitCode::from(2);
            }
        }
    }
    eprintln!("{part} x {n}: cookie of {} bytes", sealed[0].len());
    ExitCode::SUCCESS
}
