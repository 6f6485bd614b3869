//! A whole request → the filter's decision, with the provider's metadata known and not yet
//! known; a code exchange or a refresh it asks for is finished with the test IdP's real token
//! responses. Input: headers in the text form of `envoy_bff_fuzz::parse_request`; the value of
//! an `x-fuzz-jwt-payload` header stands for what jwt_authn left in the metadata (bytes the
//! host serializes, checked against a bearer token the client sends).

#![no_main]

use envoy_bff::config::Config;
use envoy_bff::ctx::Ctx;
use envoy_bff::header_map;
use envoy_bff::login;
use envoy_bff::oidc::discovery::Provider;
use envoy_bff::oidc::idp_request::IdpAnswer;
use envoy_bff::oidc::jwks::Jwks;
use envoy_bff::refresh::Outcome;
use envoy_bff::refresh::grant;
use envoy_bff::request::Request;
use envoy_bff::route::{after_refresh, decide, Decision};
use envoy_bff::session::cache::SessionCache;
use envoy_bff::url::safe_return_to;
use envoy_bff_fuzz::{
    config, jwks, parse_request, provider, CountingRandom, TOKEN_CODE_JSON, TOKEN_REFRESH_JSON,
};
use libfuzzer_sys::fuzz_target;

struct Fixed {
    config: Config,
    provider: Provider,
    jwks: Jwks,
}

thread_local! {
    static FIXED: Fixed = {
        let config = config();
        let provider = provider(&config);
        Fixed { config, provider, jwks: jwks() }
    };
}

fuzz_target!(|data: &[u8]| {
    // The same bytes as a host header buffer: read in place without a panic.
    let _ = header_map::parse(data);
    let (headers, now) = parse_request(data);
    // The headers through the host's encoding and back, as the wasm shell reads them.
    let list: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let wire = header_map::serialize(&list);
    let read = header_map::parse(&wire);
    let (cookies, others): (Vec<_>, Vec<_>) = headers.iter().partition(|(n, _)| n == "cookie");
    assert_eq!(read.pairs.len(), others.len());
    for ((n, v), (rn, rv)) in others.iter().zip(&read.pairs) {
        // A name that is not ASCII (never one the filter looks for) reads as empty.
        let name = if n.is_ascii() { n.as_str() } else { "" };
        assert_eq!((name, v.as_str()), (*rn, rv.as_ref()));
    }
    let cookies: Vec<&[u8]> = cookies.iter().map(|(_, v)| v.as_bytes()).collect();
    assert_eq!(read.cookies, cookies);
    let req = Request::from_headers(&headers);
    assert_eq!(
        Request::from_wire(&read).cookie_header(),
        req.cookie_header()
    );
    let rng = &mut CountingRandom(1);
    FIXED.with(|f| {
        let provider = &f.provider;
        let answer = |body: &[u8]| IdpAnswer {
            status: Some(200),
            body: body.to_vec(),
            dpop_nonce: None,
        };
        let mut ctx = Ctx {
            config: &f.config,
            provider: Some(provider),
            keys: Some(&f.jwks),
            now,
            rng,
        };
        let verified = req.header("x-fuzz-jwt-payload").map(str::as_bytes);
        match decide(&mut ctx, &req, verified, &mut SessionCache::new(0)) {
            Decision::ExchangeCode(exchange) => {
                let _ = login::finish(&mut ctx, provider, &exchange.pending, &answer(TOKEN_CODE_JSON));
            }
            Decision::Refresh(needed) => {
                let renewed = grant::finish_refresh(
                    &mut ctx,
                    provider,
                    &needed.session,
                    &answer(TOKEN_REFRESH_JSON),
                );
                for outcome in [renewed, Outcome::Ended, Outcome::Unavailable] {
                    let _ = after_refresh(&mut ctx, provider, &req, &needed.session, &outcome);
                }
            }
            _ => {}
        }
        ctx.provider = None;
        let _ = decide(&mut ctx, &req, verified, &mut SessionCache::new(0));
    });
    let _ = safe_return_to(req.path);
});
