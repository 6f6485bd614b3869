//! A compact JWS as the token endpoint may return it → signature (JWKS: the fixture keys)
//! and claims (OIDC Core §3.1.3.7).

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envoy_bff::oidc::id_token::{check_claims, validate, Expectations};
use envoy_bff::oidc::jwks::{Alg, Jwks};
use envoy_bff::oidc::jws;
use envoy_bff_fuzz::{jwks, CLIENT_ID, ID_TOKEN_NOW, ISSUER, NONCE};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static JWKS: Jwks = jwks();
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let login = Expectations {
        issuer: ISSUER,
        client_id: CLIENT_ID,
        nonce: Some(NONCE),
        subject: None,
        now: ID_TOKEN_NOW,
        leeway: 60,
    };
    JWKS.with(|keys| {
        let _ = validate(&token, keys, &[Alg::Rs256, Alg::Es256, Alg::EdDsa], &login);
        let _ = jws::verify(&token, keys, &Alg::ALL);
    });
    // The claim checks behind the signature, which mutated tokens rarely pass: on the
    // payload directly, as a refresh would check it.
    if let Some(payload) = token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
    {
        let refresh = Expectations {
            nonce: None,
            subject: Some("alice-sub-0001"),
            ..login
        };
        let _ = check_claims(&payload, &refresh);
    }
});
