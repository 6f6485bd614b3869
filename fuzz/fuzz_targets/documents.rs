//! The JSON documents the filter reads: token responses, JWKS and discovery from the IdP, and
//! its own configuration; what Envoy's jwt_authn leaves in the metadata (the host's
//! serialization of a JSON payload), checked against a bearer token; and what the store (etcd)
//! answers and holds: its gateway's answers, deny entries, sealed refresh claims.

#![no_main]

use envoy_bff::bearer;
use envoy_bff::client_token;
use envoy_bff::config::Config;
use envoy_bff::etcd;
use envoy_bff::refresh::{in_store, RefreshId};
use envoy_bff::secret::Secret;
use envoy_bff::session::deny::DenyEntry;
use envoy_bff::oidc::idp_request::IdpAnswer;
use envoy_bff::oidc::discovery::Provider;
use envoy_bff::oidc::jwks::Jwks;
use envoy_bff::oidc::token::parse_token_response;
use envoy_bff_fuzz::{config, env, DISCOVERY_JSON};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static CONFIG: Config = config();
}

/// A JWT whose payload is {"sub":"a","exp":2000,"g":["x",1,true],"o":{"k":"v"}}.
const BEARER: &str = "e30.eyJzdWIiOiJhIiwiZXhwIjoyMDAwLCJnIjpbIngiLDEsdHJ1ZV0sIm8iOnsiayI6InYifX0.c2ln";

fuzz_target!(|data: &[u8]| {
    for status in [Some(200), Some(400), Some(401), Some(302), Some(503), None] {
        let _ = parse_token_response(status, data);
        let answer = IdpAnswer {
            status,
            body: data.to_vec(),
            dpop_nonce: None,
        };
        let _ = client_token::parse(&answer, 1000, 60, false);
        let _ = client_token::parse(&answer, 1000, 60, true);
        let _ = etcd::read_range(&answer);
        let _ = etcd::read_created(&answer);
        let _ = etcd::read_lease(&answer);
        let _ = etcd::read_token(&answer);
        let _ = etcd::read_done(&answer);
    }
    let _ = DenyEntry::decode(&String::from_utf8_lossy(data));
    let _ = bearer::verified_claims(BEARER, Some(data), 1000);
    let _ = bearer::verified_claims(&String::from_utf8_lossy(data), Some(data), 1000);
    if let Ok(jwks) = Jwks::parse(data) {
        let _ = (jwks.len(), jwks.has_kid("fuzz-rsa"), format!("{jwks:?}"));
    }
    CONFIG.with(|config| {
        let _ = Provider::from_discovery(config, Some(200), data);
        let _ = in_store::open(&config.keys, &RefreshId::of(&Secret::new("rt")), data);
    });
    if let Ok(parsed) = Config::parse(data, &env) {
        let _ = Provider::from_config(&parsed);
        let _ = Provider::from_discovery(&parsed, Some(200), DISCOVERY_JSON);
    }
});
