//! The Cookie header as any client may send it → the session (chunks joined) and the login
//! transaction. Input: the `state` the callback would carry, a newline, the Cookie header (and,
//! as raw bytes, a differential check of `words`).

#![no_main]

use envoy_bff::config::Config;
use envoy_bff::session::{cookie, KeyRing, LoginTransaction, Session};
use envoy_bff::words;
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
    assert_eq!(words::find(data, b';'), data.iter().position(|&b| b == b';'));
    assert_eq!(words::is_ascii(data), data.is_ascii());
    if let (Some(x), Some(y)) = (data.get(1..), data.get(..data.len().saturating_sub(1))) {
        assert_eq!(words::eq(x, y), x == y);
    }
    let text = String::from_utf8_lossy(data);
    let (state, header) = text.split_once('\n').unwrap_or(("", &text));
    FIXED.with(|(keys, config)| {
        let name = config.cookie.name.as_str();
        if let Ok(session) = Session::open(keys, name, Some(header)) {
            let _ = session.claims();
            let _ = session.ends_at(&config.session);
            for now in [
                session.last_seen,
                session.last_seen.saturating_add(1000),
                session.access_expires_at,
                u64::MAX,
            ] {
                let _ = session.check(now, &config.session);
            }
            let _ = session.write(keys, &config.cookie, Some(header), &mut CountingRandom(7));
        }
        let _ = Session::clear_all(&config.cookie, Some(header));
        let _ = cookie::without_own(header, name);
        let max_age = config.cookie.transaction_max_age;
        let _ = LoginTransaction::open(keys, name, Some(header), state, DEFAULT_NOW, max_age);
        // No time limit: whatever opens goes all the way.
        let _ = LoginTransaction::open(keys, name, Some(header), state, u64::MAX, u64::MAX);
    });
});
