//! The Cookie header as any client may send it → the session (chunks joined), the login
//! transaction and the header that goes upstream. Input: the `state` the callback would
//! carry, a newline, the Cookie header as bytes (and, all of it, a differential check of
//! `byte_loops`, and the session's plaintext form, which no forged cookie reaches: `wire`).

#![no_main]

use envoy_bff::config::Config;
use envoy_bff::secret::Secret;
use envoy_bff::session::cache::SessionCache;
use envoy_bff::session::contents::{Cold, ColdFields};
use envoy_bff::session::cookie::{self, Jar};
use envoy_bff::session::{wire, KeyRing, LoginTransaction, Session};
use std::rc::Rc;
use envoy_bff::byte_loops;
use envoy_bff_fuzz::{config, CountingRandom, COOKIE_KEYS, DEFAULT_NOW};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static FIXED: (KeyRing, Config) = (
        KeyRing::from_base64_list(COOKIE_KEYS).unwrap_or_else(|e| panic!("COOKIE_KEYS: {e}")),
        config(),
    );
}

fuzz_target!(|data: &[u8]| {
    // The eight-bytes-at-a-time loops the cookie goes through agree with the standard library.
    assert_eq!(byte_loops::is_ascii(data), data.is_ascii());
    if let (Some(x), Some(y)) = (data.get(1..), data.get(..data.len().saturating_sub(1))) {
        assert_eq!(byte_loops::eq(x, y), x == y);
    }
    // Whatever decodes as a session's plaintext (sealed whole before, or either part of a
    // pair) encodes back, as a pair, to the same session.
    let cookie: Rc<[u8]> = Rc::from(&b"v2.k.a.b"[..]);
    if let Some(s) = wire::decode(data) {
        let Cold::Open(cold) = &s.cold else {
            panic!("a session sealed whole has its cold fields open")
        };
        let (hot, second) = wire::encode_pair(&s, cold).unwrap_or_else(|| panic!("encode"));
        let again = wire::decode_hot(&hot, Rc::clone(&cookie)).unwrap_or_else(|| panic!("hot"));
        assert_eq!(again.has_refresh_token(), cold.refresh_token.is_some());
        assert_eq!(Session { cold: s.cold.clone(), ..again }, s);
        assert_eq!(wire::decode_cold(&second).as_ref(), Some(cold));
    }
    if let Some(s) = wire::decode_hot(data, Rc::clone(&cookie)) {
        let cold = ColdFields {
            refresh_token: s.has_refresh_token().then(|| Secret::new("rt")),
            id_token: None,
        };
        let (hot, _) = wire::encode_pair(&s, &cold).unwrap_or_else(|| panic!("encode"));
        assert_eq!(wire::decode_hot(&hot, Rc::clone(&cookie)), Some(s));
    }
    if let Some(cold) = wire::decode_cold(data) {
        let s = Session {
            cold: Cold::Open(cold.clone()),
            ..wire::decode_hot(&[3, 0, 0, 0, 0, 0, 0, 0, 0], Rc::clone(&cookie))
                .unwrap_or_else(|| panic!("the smallest first part"))
        };
        let (_, second) = wire::encode_pair(&s, &cold).unwrap_or_else(|| panic!("encode"));
        assert_eq!(wire::decode_cold(&second), Some(cold));
    }
    // The state is text; the Cookie header is bytes, as the host hands it over.
    let (state, header) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (
            data.get(..at).unwrap_or_default(),
            data.get(at + 1..).unwrap_or_default(),
        ),
        None => (&[][..], data),
    };
    let state = String::from_utf8_lossy(state);
    let jar = Jar::parse(Some(header));
    FIXED.with(|(keys, config)| {
        let name = config.cookie.name.as_str();
        // Opened as the request path does (the second part only when asked), then whole.
        if let Ok(session) = SessionCache::new(4).open(keys, name, &jar, || false) {
            let _ = session.check(DEFAULT_NOW, &config.session);
            if let Ok(cold) = session.cold(keys, name) {
                let _ = cold.claims();
            }
            let _ = session.write(keys, &config.cookie, &jar, &mut CountingRandom(7));
        }
        if let Ok(session) = Session::open(keys, name, &jar) {
            let Ok(cold) = session.cold(keys, name) else {
                panic!("a session opened whole has its cold fields")
            };
            let _ = cold.claims();
            let _ = session.ends_at(&config.session);
            for now in [
                session.last_seen,
                session.last_seen.saturating_add(1000),
                session.access_expires_at,
                u64::MAX,
            ] {
                let _ = session.check(now, &config.session);
            }
            let _ = session.write(keys, &config.cookie, &jar, &mut CountingRandom(7));
        }
        let _ = Session::clear_all(&config.cookie, &jar);
        // What goes upstream: none of ours, every other pair as sent, and the same cookies
        // when read again.
        let kept = jar.without_own(name);
        let again = Jar::parse(kept.as_deref());
        assert!(again.cookies().all(|(n, _)| !cookie::is_own(n, name)));
        assert!(again
            .cookies()
            .eq(jar.cookies().filter(|(n, _)| !cookie::is_own(n, name))));
        let max_age = config.cookie.transaction_max_age;
        let _ = LoginTransaction::open(keys, name, &jar, &state, DEFAULT_NOW, max_age);
        // No time limit: whatever opens goes all the way.
        let _ = LoginTransaction::open(keys, name, &jar, &state, u64::MAX, u64::MAX);
    });
});
