//! The JSON documents the filter reads: token responses, JWKS and discovery from the IdP, and
//! its own configuration.

#![no_main]

use envoy_bff::config::Config;
use envoy_bff::oidc::discovery::Provider;
use envoy_bff::oidc::jwks::Jwks;
use envoy_bff::oidc::token::parse_token_response;
use envoy_bff_fuzz::{config, env, DISCOVERY_JSON};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static CONFIG: Config = config();
}

fuzz_target!(|data: &[u8]| {
    for status in [Some(200), Some(400), Some(401), Some(302), Some(503), None] {
        let _ = parse_token_response(status, data);
    }
    if let Ok(jwks) = Jwks::parse(data) {
        let _ = (jwks.len(), jwks.has_kid("fuzz-rsa"), format!("{jwks:?}"));
    }
    CONFIG.with(|config| {
        let _ = Provider::from_discovery(config, Some(200), data);
    });
    if let Ok(parsed) = Config::parse(data, &env) {
        let _ = Provider::from_config(&parsed);
        let _ = Provider::from_discovery(&parsed, Some(200), DISCOVERY_JSON);
    }
});
