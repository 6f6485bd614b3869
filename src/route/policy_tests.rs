//! Per-prefix policies and bearer clients, decided (a `#[cfg(test)]` module of `route`).

use super::tests::{decide_on, get, session_cookie, API, CSRF, NAV};
use super::*;
use crate::bearer::tests::serialize;
use crate::config::tests::{config_from, minimal_json};
use crate::oidc::discovery::test_provider;
use crate::random::CountingRandom;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

const NOW: u64 = 1000;

fn config() -> Config {
    let mut v = minimal_json();
    v["policies"] = json!([
        {"prefix": "/private/public", "policy": "optional"},
        {"prefix": "/private/public/admin", "policy": "optional"},
        {"prefix": "/private/service", "policy": "client"},
        {"prefix": "/private/mixed", "policy": "session_or_client"},
        {"prefix": "/private/assets", "policy": "none"},
        {"prefix": "/private/mobile", "policy": "session", "bearer": true},
    ]);
    v["claim_headers"] = json!({"sub": "x-user", "groups": "x-groups"});
    v["rules"] = json!([
        {"prefix": "/private/public/admin", "require": {"groups": {"contains": "admin"}}},
        {"prefix": "/private/mobile/admin", "require": {"groups": {"contains": "admin"}}},
        {"prefix": "/private/mobile/mfa", "acr": ["urn:mfa"]},
    ]);
    v["login_params"] = json!(["acr_values"]);
    config_from(v)
}

fn forward(d: Decision) -> Forward {
    match d {
        Decision::Forward(f) => f,
        other => panic!("not a forward: {other:?}"),
    }
}

fn reply(d: Decision) -> Reply {
    match d {
        Decision::Reply(r) => r,
        other => panic!("not a reply: {other:?}"),
    }
}

fn removed(f: &Forward, header: &str) -> bool {
    f.extra.iter().any(|(n, v)| n == header && v.is_none())
}

fn set(f: &Forward, header: &str) -> Option<String> {
    f.extra
        .iter()
        .find(|(n, _)| n == header)
        .and_then(|(_, v)| v.clone())
}

fn error_of(r: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn optional_goes_on_with_the_session_or_anonymously() {
    let c = config();
    let cookie = session_cookie(2000);
    let with = forward(decide_on(
        &c,
        &get("/private/public/x", &[API, CSRF, ("cookie", &cookie)]),
        NOW,
    ));
    assert_eq!(
        with.token_header,
        Some(("authorization".into(), "Bearer the-access-token".into()))
    );
    // No session and no CSRF header: anonymous, with whatever identity the client claimed gone.
    let without = forward(decide_on(
        &c,
        &get(
            "/private/public/x",
            &[
                API,
                ("x-user", "admin"),
                ("authorization", "Bearer forged"),
                ("cookie", "theme=dark"),
            ],
        ),
        NOW,
    ));
    assert_eq!(without.token_header, None);
    assert!(removed(&without, "x-user") && removed(&without, "authorization"));
    assert_eq!(without.cookie, UpstreamCookie::Set(b"theme=dark".to_vec()));
    assert_eq!(without.counter, Some(Counter::Anonymous));
    // A page load is not sent to log in either.
    let nav = forward(decide_on(&c, &get("/private/public/page", &[NAV]), NOW));
    assert_eq!(nav.token_header, None);
    // A dead session cookie goes on anonymously and is deleted on the response.
    let dead = forward(decide_on(
        &c,
        &get(
            "/private/public/x",
            &[API, CSRF, ("cookie", "__Host-bff-session=garbage")],
        ),
        NOW,
    ));
    assert_eq!(dead.token_header, None);
    assert!(dead
        .set_cookies
        .iter()
        .any(|c| c.starts_with("__Host-bff-session=;")));
    assert_eq!(dead.cookie, UpstreamCookie::Removed);
}

#[test]
fn a_session_cookie_still_needs_the_csrf_header_where_a_session_is_optional() {
    let c = config();
    let cookie = session_cookie(2000);
    let r = reply(decide_on(
        &c,
        &get("/private/public/x", &[API, ("cookie", &cookie)]),
        NOW,
    ));
    assert_eq!((r.status, error_of(&r).as_str()), (403, "csrf"));
}

#[test]
fn rules_are_never_served_anonymously() {
    let c = config();
    let r = reply(decide_on(&c, &get("/private/public/admin/x", &[API]), NOW));
    assert_eq!((r.status, error_of(&r).as_str()), (401, "unauthenticated"));
}

#[test]
fn client_prefixes_take_the_filters_own_token_whoever_calls() {
    let c = config();
    let cookie = session_cookie(2000);
    for h in [
        get("/private/service/x", &[API]),
        // A session is not used here: the call is the application's, not the user's.
        get(
            "/private/service/x",
            &[API, CSRF, ("cookie", &cookie), ("x-user", "eve")],
        ),
    ] {
        let Decision::ClientToken(f) = decide_on(&c, &h, NOW) else {
            panic!("not a client-token forward")
        };
        assert_eq!(f.token_header, None, "the engine sets it");
        assert!(removed(&f, "x-user"));
        assert_ne!(f.cookie, UpstreamCookie::Untouched);
    }
}

#[test]
fn session_or_client_prefers_the_users_token() {
    let c = config();
    let cookie = session_cookie(2000);
    let f = forward(decide_on(
        &c,
        &get("/private/mixed/x", &[API, CSRF, ("cookie", &cookie)]),
        NOW,
    ));
    assert_eq!(
        f.token_header,
        Some(("authorization".into(), "Bearer the-access-token".into()))
    );
    assert!(matches!(
        decide_on(&c, &get("/private/mixed/x", &[API]), NOW),
        Decision::ClientToken(_)
    ));
}

#[test]
fn none_passes_through() {
    let c = config();
    assert!(matches!(
        decide_on(&c, &get("/private/assets/app.js", &[NAV]), NOW),
        Decision::PassThrough
    ));
}

fn jwt(payload: &serde_json::Value) -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

fn bearer_payload() -> serde_json::Value {
    json!({"iss": "https://idp.test", "sub": "app-7", "exp": 2000, "groups": ["reader"]})
}

/// The decision for a request as the engine makes it: with what `jwt_authn` verified.
fn decide_bearer(c: &Config, h: &[(String, String)], verified: Option<&[u8]>) -> Decision {
    let provider = test_provider();
    let req = Request::from_headers(h);
    let mut rng = CountingRandom(3);
    let mut ctx = Ctx {
        config: c,
        provider: Some(&provider),
        keys: None,
        now: NOW,
        rng: &mut rng,
    };
    decide(&mut ctx, &req, verified, &mut SessionCache::new(0))
}

#[test]
fn a_verified_bearer_token_goes_through_with_claim_headers() {
    let c = config();
    let p = bearer_payload();
    let auth = format!("Bearer {}", jwt(&p));
    let h = get(
        "/private/mobile/me",
        &[("authorization", &auth), ("x-user", "admin")],
    );
    assert_eq!(
        bearer_token(&c, &Request::from_headers(&h)),
        Some(&auth[7..])
    );
    let f = forward(decide_bearer(&c, &h, Some(&serialize(&p))));
    assert_eq!(f.token_header, None, "the token goes upstream as it came");
    assert_eq!(set(&f, "x-user").as_deref(), Some("app-7"));
    assert_eq!(set(&f, "x-groups").as_deref(), Some("reader"));
    assert_eq!(f.counter, Some(Counter::BearerOk));
}

#[test]
fn a_bearer_clients_sub_goes_to_the_access_log_made_safe() {
    let mut c = config();
    c.access_log = true;
    let mut p = bearer_payload();
    p["sub"] = json!("svc 7/é");
    let auth = format!("Bearer {}", jwt(&p));
    let h = get("/private/mobile/me", &[("authorization", &auth)]);
    let f = forward(decide_bearer(&c, &h, Some(&serialize(&p))));
    assert_eq!(
        f.access_log,
        AccessLog::new(decision::BEARER, Some(Who::of_bearer("svc 7/é")))
    );
    assert_eq!(
        f.access_log.value().as_deref(),
        Some("bearer svc%207/%C3%A9 -")
    );
    // A token that was not verified: refused, and logged as such, with nobody.
    let r = reply(decide_bearer(&c, &h, None));
    assert_eq!(r.access_log, AccessLog::new("invalid_token", None));
}

#[test]
fn bearer_tokens_jwt_authn_did_not_verify_are_refused() {
    let c = config();
    let p = bearer_payload();
    let auth = format!("Bearer {}", jwt(&p));
    let h = get("/private/mobile/me", &[("authorization", &auth)]);
    let r = reply(decide_bearer(&c, &h, None));
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_token"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    // Another token's verified payload (say, one in a query parameter) does not vouch for it.
    let mut other = p.clone();
    other["sub"] = json!("someone-else");
    let r = reply(decide_bearer(&c, &h, Some(&serialize(&other))));
    assert_eq!(error_of(&r), "invalid_token");
}

#[test]
fn with_a_session_cookie_the_bearer_token_is_not_used() {
    let c = config();
    let p = bearer_payload();
    let auth = format!("Bearer {}", jwt(&p));
    let verified = serialize(&p);
    // A dead cookie and a verified bearer: still the session's rules (401), not the bearer's.
    let h = get(
        "/private/mobile/me",
        &[
            API,
            CSRF,
            ("authorization", &auth),
            ("cookie", "__Host-bff-session=x"),
        ],
    );
    assert_eq!(bearer_token(&c, &Request::from_headers(&h)), None);
    let r = reply(decide_bearer(&c, &h, Some(&verified)));
    assert_eq!(error_of(&r), "unauthenticated");
    // A live session: its token replaces the bearer's.
    let cookie = session_cookie(2000);
    let h = get(
        "/private/mobile/me",
        &[API, CSRF, ("authorization", &auth), ("cookie", &cookie)],
    );
    let f = forward(decide_bearer(&c, &h, Some(&verified)));
    assert_eq!(
        f.token_header,
        Some(("authorization".into(), "Bearer the-access-token".into()))
    );
}

#[test]
fn the_filters_endpoints_never_take_a_bearer_token() {
    let mut v = minimal_json();
    v["policies"] = json!([{"prefix": "/private", "policy": "session", "bearer": true}]);
    let c = config_from(v);
    let auth = format!("Bearer {}", jwt(&bearer_payload()));
    for path in [
        "/private/session",
        "/private/logout",
        "/private/login",
        "/private/callback",
    ] {
        let h = get(path, &[API, CSRF, ("authorization", &auth)]);
        assert_eq!(bearer_token(&c, &Request::from_headers(&h)), None, "{path}");
    }
    let h = get("/private/session", &[API, CSRF, ("authorization", &auth)]);
    let r = reply(decide_bearer(&c, &h, Some(&serialize(&bearer_payload()))));
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (401, "unauthenticated"),
        "the session endpoint answers for sessions only"
    );
}

#[test]
fn a_session_only_prefix_says_it_takes_no_bearer_tokens() {
    let c = config();
    let auth = format!("Bearer {}", jwt(&bearer_payload()));
    let h = get("/private/api", &[API, CSRF, ("authorization", &auth)]);
    assert_eq!(bearer_token(&c, &Request::from_headers(&h)), None);
    let r = reply(decide_bearer(&c, &h, None));
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (401, "bearer_not_accepted")
    );
}

#[test]
fn rules_apply_to_bearer_claims() {
    let c = config();
    let p = bearer_payload();
    let auth = format!("Bearer {}", jwt(&p));
    let verified = serialize(&p);
    let at =
        |path: &str| decide_bearer(&c, &get(path, &[("authorization", &auth)]), Some(&verified));
    let r = reply(at("/private/mobile/admin"));
    assert_eq!((r.status, error_of(&r).as_str()), (403, "forbidden"));
    let r = reply(at("/private/mobile/mfa"));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"insufficient_user_authentication\", acr_values=\"urn:mfa\"")
    );
}
