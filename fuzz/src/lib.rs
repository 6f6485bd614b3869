//! What the fuzz targets share: the filter configuration, the provider and the keys the seed
//! corpora were made with (fuzz/seeds.py), a deterministic random source, and the text form
//! of a request's headers.

use envoy_bff::config::Config;
use envoy_bff::oidc::discovery::Provider;
use envoy_bff::oidc::jwks::Jwks;
use envoy_bff::random::{Random, RandomUnavailable};

/// The test IdP of fuzz/seeds.py (its port is fixed there).
pub const ISSUER: &str = "http://127.0.0.1:9000";
pub const CLIENT_ID: &str = "bff";
pub const COOKIE_NAME: &str = "__Host-bff-session";
/// KEY_A of tests/harness/envoy.py (bytes 0..32), which sealed the seed cookies, then a
/// second key, so that opening also walks the key ring.
pub const COOKIE_KEYS: &str =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
/// The nonce of the seeds' direct logins (fuzz/seeds.py).
pub const NONCE: &str = "fuzz-nonce-QWxpY2UgaW4gd29uZGVybGFuZA";
/// 2096: after the `iat` of any seed ID token, before its `exp` (seeds.py makes them last
/// ~95 years), so the seeds pass every claim check.
pub const ID_TOKEN_NOW: u64 = 4_000_000_000;
/// The time of a request without an `@now` line.
pub const DEFAULT_NOW: u64 = 1_795_000_000;

/// The test IdP's discovery document and JWKS (public parts of tests/fixtures/keys).
pub const DISCOVERY_JSON: &[u8] = include_bytes!("../fixtures/discovery.json");
pub const JWKS_JSON: &[u8] = include_bytes!("../fixtures/jwks.json");

/// The filter configuration of the seeds' Envoy (fuzz/seeds.py, FILTER_EXTRAS), secrets
/// inline.
pub fn config_json() -> String {
    format!(
        r#"{{
  "issuer": "{ISSUER}",
  "idp_cluster": "idp",
  "client_id": "{CLIENT_ID}",
  "client_secret": {{"value": "bff-secret"}},
  "cookie_keys": {{"value": "{COOKIE_KEYS}"}},
  "scopes": ["openid", "profile", "email", "offline_access"],
  "claim_headers": {{"sub": "x-user-sub", "groups": "x-user-groups"}},
  "rules": [{{"prefix": "/private/admin", "require": {{"groups": {{"contains": "admin"}}}}}}],
  "bypass": ["/private/healthz"],
  "policies": [
    {{"prefix": "/private/public", "policy": "optional"}},
    {{"prefix": "/private/mobile", "policy": "session", "bearer": true}},
    {{"prefix": "/private/service", "policy": "client"}},
    {{"prefix": "/private/mixed", "policy": "session_or_client", "bearer": true}}
  ],
  "csrf": {{"allowed_origins": ["https://front.example.com"]}}
}}"#
    )
}

/// The environment `Config::parse` sees: the default secret variables are set.
pub fn env(name: &str) -> Option<String> {
    match name {
        "BFF_CLIENT_SECRET" => Some("bff-secret".to_string()),
        "BFF_COOKIE_KEYS" => Some(COOKIE_KEYS.to_string()),
        _ => None,
    }
}

/// The fixed configuration. A broken fixture is the harness's fault, not an input's: panic.
pub fn config() -> Config {
    match Config::parse(config_json().as_bytes(), &env) {
        Ok(c) => c,
        Err(e) => panic!("the fuzz configuration is invalid: {e}"),
    }
}

pub fn provider(config: &Config) -> Provider {
    match Provider::from_discovery(config, Some(200), DISCOVERY_JSON) {
        Ok(p) => p,
        Err(e) => panic!("fuzz/fixtures/discovery.json: {e}"),
    }
}

pub fn jwks() -> Jwks {
    match Jwks::parse(JWKS_JSON) {
        Ok(j) => j,
        Err(e) => panic!("fuzz/fixtures/jwks.json: {e}"),
    }
}

/// A deterministic random source (a counter), so that a crash reproduces.
pub struct CountingRandom(pub u8);

impl Random for CountingRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        for b in buf.iter_mut() {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
        Ok(())
    }
}

/// A request in the decide target's text form: one header per line, `name value` (split at
/// the first space; names lowercase as Envoy gives them), and optionally a line `@now N`
/// with the request's time in Unix seconds. Bytes that are not UTF-8 are replaced, as the
/// filter's shell does with header bytes.
pub fn parse_request(data: &[u8]) -> (Vec<(String, String)>, u64) {
    let text = String::from_utf8_lossy(data);
    let mut now = DEFAULT_NOW;
    let mut headers = Vec::new();
    for line in text.split('\n') {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        if name == "@now" {
            now = value.trim().parse().unwrap_or(DEFAULT_NOW);
        } else if !name.is_empty() {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    (headers, now)
}

/// Token responses of the test IdP (fuzz/seeds.py): a code exchange whose ID token carries the
/// nonce of alice's login through Envoy (so finishing her callback seed succeeds), and a
/// refresh for her (same `sub`).
pub const TOKEN_CODE_JSON: &[u8] = include_bytes!("../fixtures/token-code.json");
pub const TOKEN_REFRESH_JSON: &[u8] = include_bytes!("../fixtures/token-refresh.json");
