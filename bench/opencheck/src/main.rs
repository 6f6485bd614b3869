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
//!
//! `memory` is not a loop to time but a count: the heap a full session cache holds per entry,
//! in the module's own (wasm32) memory, after `N` distinct sessions (1,024 fills it; up to
//! 2,048 differ) were opened into a cache of 1,024 as a plain API call opens them (second part
//! sealed), as a claim route does (both parts), and sealed then opened by a later request (the
//! session endpoint, logout, refresh). Run it without valgrind:
//!
//!   node --disable-warning=ExperimentalWarning ../sigcheck/run.mjs \
//!     target/wasm32-wasip1/release/opencheck.wasm memory 1024
//!
//! It counts through the global allocator below, which every part goes through (the
//! instruction figures in bench/README.md were measured before it was added): two counter
//! updates (plain loads, adds and stores in wasm32 without threads) per allocation,
//! reallocation and free. A miss makes 17 of those, some 150 instructions of ~27,000 (about
//! the run-to-run noise of the method); a hit 2.

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
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator (wasi-libc's dlmalloc in the module), counting what is live: the bytes
/// asked for (allocated less freed) and the allocations. The allocator's own overhead per
/// allocation (its header, rounding up to its alignment) is not included: count it from the
/// allocations.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Wrapping: a shrink subtracts.
            LIVE_BYTES.fetch_add(new_size.wrapping_sub(layout.size()), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes and allocations now.
fn live() -> (usize, usize) {
    (LIVE_BYTES.load(Relaxed), LIVE_ALLOCATIONS.load(Relaxed))
}

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
    if part == "memory" {
        return memory(&keys, &headers, n);
    }
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

/// The `memory` part: what a cache of 1,024 holds per entry once `n` of `headers` were opened
/// into it, for each way a miss can open a session.
fn memory(keys: &KeyRing, headers: &[String], n: usize) -> ExitCode {
    if n == 0 {
        eprintln!("opencheck: memory needs N > 0");
        return ExitCode::from(2);
    }
    let cases: [(&str, bool, bool); 3] = [
        ("second part sealed (a plain API call)", false, false),
        ("both parts opened on the miss (a claim route)", true, false),
        ("second part opened by a later request", false, true),
    ];
    for (what, whole, later) in cases {
        let before = live();
        let mut cache = SessionCache::new(1024);
        for i in 0..n {
            let jar = Jar::parse(Some(headers[i % headers.len()].as_bytes()));
            let Ok(session) = cache.open(keys, NAME, &jar, || whole) else {
                eprintln!("opencheck: a session did not open");
                return ExitCode::from(1);
            };
            if later && session.cold(keys, NAME).is_err() {
                eprintln!("opencheck: a second part did not open");
                return ExitCode::from(1);
            }
        }
        let after = live();
        let entries = cache.len();
        drop(cache);
        if live() != before {
            eprintln!("opencheck: the cache did not give back what it held");
            return ExitCode::from(1);
        }
        let bytes = after.0.wrapping_sub(before.0);
        let allocations = after.1.wrapping_sub(before.1);
        println!(
            "{what}: {entries} entries after {n} opens hold {bytes} bytes in {allocations} \
             allocations: {} bytes, {:.2} allocations per entry",
            bytes / entries,
            allocations as f64 / entries as f64,
        );
    }
    println!(
        "cookie value of {} bytes; size_of::<Session>() = {}",
        headers[0].len() - NAME.len() - 1,
        std::mem::size_of::<Session>()
    );
    ExitCode::SUCCESS
}
