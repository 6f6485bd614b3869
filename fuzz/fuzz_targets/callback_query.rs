//! Strings a client controls: the callback's query string (RFC 6749 §4.1.2), a `return_to`
//! value, URLs, the login endpoint's forwarded parameters; and one an API controls: its
//! `WWW-Authenticate` step-up challenge (RFC 9470).

#![no_main]

use envoy_bff::oidc::{auth_params, callback, challenge};
use envoy_bff::url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = callback::parse(Some(&s));
    let _ = url::safe_return_to(&s);
    let _ = url::AbsoluteUrl::parse(&s).map(|u| u.to_string());
    let _ = url::is_under(url::path_of(&s), "/private");
    let _ = url::query_of(&s);
    let allowed: Vec<String> = auth_params::DEFAULT_FORWARDED.iter().map(|s| s.to_string()).collect();
    let _ = auth_params::forwarded(&s, &allowed);
    let _ = challenge::step_up_challenge(&s);
});
