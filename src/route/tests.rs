//! The decision, case by case (a `#[cfg(test)]` module of `route`).
use super::*;
use crate::config::tests::{config_from, minimal_json, KEY_A};
use crate::oidc::discovery::test_provider;
use crate::random::CountingRandom;
use crate::refresh::{Outcome, RefreshId};
use crate::secret::Secret;
use crate::session::contents::{Cold, ColdFields};
use crate::session::kept_id_token::KeptIdToken;
use crate::session::KeyRing;

pub fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

pub fn get(path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = headers(&[
        (":method", "GET"),
        (":path", path),
        (":scheme", "http"),
        (":authority", "app.local:8080"),
    ]);
    h.extend(headers(extra));
    h
}

pub const NAV: (&str, &str) = ("sec-fetch-mode", "navigate");
pub const API: (&str, &str) = ("sec-fetch-mode", "cors");
pub const CSRF: (&str, &str) = ("x-csrf", "1");

/// [`decide`] with this provider (or none yet), at `now`, without a session cache.
pub fn decide_at(
    config: &Config,
    provider: Option<&Provider>,
    req: &Request,
    now: u64,
    rng: &mut dyn crate::random::Random,
) -> Decision {
    let mut ctx = Ctx {
        config,
        provider,
        keys: None,
        now,
        rng,
    };
    decide(&mut ctx, req, None, &mut SessionCache::new(0))
}

pub fn decide_on(config: &Config, h: &[(String, String)], now: u64) -> Decision {
    let provider = test_provider();
    decide_at(
        config,
        Some(&provider),
        &Request::from_headers(h),
        now,
        &mut CountingRandom(3),
    )
}

pub fn session_cookie(expires_at: u64) -> String {
    let s = Session {
        access_token: Secret::new("the-access-token"),
        access_expires_at: expires_at,
        subject: "alice".into(),
        created: 900,
        last_seen: 900,
        sid: "sid-1".into(),
        idp_sid: None,
        cold: Cold::Open(ColdFields {
            refresh_token: None,
            id_token: None,
        }),
    };
    let k = KeyRing::from_base64_list(KEY_A).unwrap();
    format!(
        "__Host-bff-session={}",
        s.seal(&k, "__Host-bff-session", &mut CountingRandom(9))
            .unwrap()
    )
}

fn refreshable(expires_at: u64) -> Session {
    Session {
        access_token: Secret::new("old-token"),
        access_expires_at: expires_at,
        subject: "alice".into(),
        created: 900,
        last_seen: 900,
        sid: "sid-1".into(),
        idp_sid: None,
        cold: Cold::Open(ColdFields {
            refresh_token: Some(Secret::new("the-refresh-token")),
            id_token: None,
        }),
    }
}

fn cookie_of(s: &Session) -> String {
    let k = KeyRing::from_base64_list(KEY_A).unwrap();
    format!(
        "__Host-bff-session={}",
        s.seal(&k, "__Host-bff-session", &mut CountingRandom(9))
            .unwrap()
    )
}

#[test]
fn a_due_token_with_a_refresh_token_is_refreshed_first() {
    let c = config_from(minimal_json());
    let cookie = cookie_of(&refreshable(1030));
    let h = get("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    let Decision::Refresh(needed) = decide_on(&c, &h, 1000) else {
        panic!()
    };
    assert_eq!(needed.id, RefreshId::of(&Secret::new("the-refresh-token")));
    // In the ring the configuration sizes.
    let mut v = minimal_json();
    v["session"] = serde_json::json!({ "refresh_result_slots": 64 });
    let Decision::Refresh(small) = decide_on(&config_from(v), &h, 1000) else {
        panic!()
    };
    assert_eq!(
        small.id,
        RefreshId::of(&Secret::new("the-refresh-token")).in_ring(64)
    );
    assert_ne!(small.id, needed.id);
    assert_eq!(
        needed.request.body.as_deref(),
        Some("grant_type=refresh_token&refresh_token=the-refresh-token")
    );
    // Without metadata yet, the token is used while it lasts; after that, wait for it.
    let req = Request::from_headers(&h);
    assert!(matches!(
        decide_at(&c, None, &req, 1000, &mut CountingRandom(1)),
        Decision::Forward(_)
    ));
    assert!(matches!(
        decide_at(&c, None, &req, 1030, &mut CountingRandom(1)),
        Decision::AwaitProvider
    ));
}

#[test]
fn what_a_refresh_outcome_means_for_a_request() {
    let c = config_from(minimal_json());
    let p = test_provider();
    let old = refreshable(1030);
    let h = get("/private/api", &[API, CSRF, ("cookie", &cookie_of(&old))]);
    let req = Request::from_headers(&h);
    let after = |outcome: &Outcome, now: u64| {
        let mut ctx = Ctx {
            config: &c,
            provider: Some(&p),
            keys: None,
            now,
            rng: &mut CountingRandom(2),
        };
        after_refresh(&mut ctx, &p, &req, &old, outcome)
    };
    let mut renewed = refreshable(1300);
    renewed.access_token = Secret::new("new-token");
    let k = KeyRing::from_base64_list(KEY_A).unwrap();
    let sealed = renewed
        .seal(&k, "__Host-bff-session", &mut CountingRandom(4))
        .unwrap();
    let Decision::Forward(f) = after(&Outcome::Renewed(sealed), 1000) else {
        panic!()
    };
    assert_eq!(f.token_header.as_ref().unwrap().1, "Bearer new-token");
    assert_eq!(
        f.set_cookies.len(),
        1,
        "the new session goes to the browser"
    );
    // The IdP is down: the old token while it lasts, then 503.
    let Decision::Forward(f) = after(&Outcome::Unavailable, 1000) else {
        panic!()
    };
    assert_eq!(
        (
            f.token_header.as_ref().unwrap().1.as_str(),
            f.set_cookies.len()
        ),
        ("Bearer old-token", 0)
    );
    assert_eq!(reply(after(&Outcome::Unavailable, 1030)).status, 503);
    // Refused: the session ends and its cookie goes.
    let r = reply(after(&Outcome::Ended, 1000));
    assert_eq!(r.status, 401);
    assert!(r
        .cookies()
        .any(|c| c.starts_with("__Host-bff-session=;") && c.contains("Max-Age=0")));
    // Another replica won the race: the old token, the cookie untouched, until it expires.
    let lost = Outcome::Superseded { until: 1030 };
    let Decision::Forward(f) = after(&lost, 1029) else {
        panic!()
    };
    assert_eq!(f.token_header.as_ref().unwrap().1, "Bearer old-token");
    assert!(f.set_cookies.is_empty(), "no deletion, no re-seal");
    let r = reply(after(&lost, 1030));
    assert_eq!(r.status, 401);
    assert!(r.cookies().any(|c| c.contains("Max-Age=0")));
}

#[test]
fn a_dead_session_cookie_is_deleted_on_the_way() {
    let c = config_from(minimal_json());
    let r = reply(decide_on(
        &c,
        &get(
            "/private/api",
            &[API, CSRF, ("cookie", &session_cookie(999))],
        ),
        1000,
    ));
    assert_eq!(r.status, 401);
    assert!(r.cookies().any(|c| c.contains("Max-Age=0")));
    let r = reply(decide_on(&c, &get("/private/api", &[API, CSRF]), 1000));
    assert_eq!(r.cookies().count(), 0, "no cookie, nothing to delete");
}

fn reply(d: Decision) -> Reply {
    match d {
        Decision::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn outside_the_prefix_passes_through_untouched() {
    let c = config_from(minimal_json());
    for p in ["/", "/index.html", "/privateer", "/public/private"] {
        let d = decide_on(&c, &get(p, &[("cookie", &session_cookie(99))]), 0);
        assert!(matches!(d, Decision::PassThrough), "{p}");
    }
}

#[test]
fn a_valid_session_forwards_with_the_token_and_without_our_cookies() {
    let c = config_from(minimal_json());
    let cookies = format!(
        "theme=dark; {}; __Host-bff-session.tx.abc=zzz",
        session_cookie(2000)
    );
    let d = decide_on(
        &c,
        &get("/private/api/items?x=1", &[API, CSRF, ("cookie", &cookies)]),
        1000,
    );
    let Decision::Forward(f) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        f.token_header,
        Some(("authorization".into(), "Bearer the-access-token".into()))
    );
    assert_eq!(f.cookie, UpstreamCookie::Set(b"theme=dark".to_vec()));

    let d = decide_on(
        &c,
        &get("/private", &[API, CSRF, ("cookie", &session_cookie(2000))]),
        1000,
    );
    let Decision::Forward(f) = d else {
        panic!("{d:?}")
    };
    assert_eq!(f.cookie, UpstreamCookie::Removed);
}

#[test]
fn api_call_without_session_gets_401_json() {
    let c = config_from(minimal_json());
    for cookie in [
        "",
        "__Host-bff-session=garbage",
        "__Host-bff-session=v1.abc.def",
    ] {
        let r = reply(decide_on(
            &c,
            &get("/private/api", &[API, CSRF, ("cookie", cookie)]),
            1000,
        ));
        assert_eq!(r.status, 401);
        assert!(
            r.body.contains("\"login\":\"/private/login\""),
            "{}",
            r.body
        );
        assert_eq!(r.header("location"), None);
    }
    // Expired token, navigation by POST (with the header): still 401, never a redirect.
    let mut h = get(
        "/private/form",
        &[NAV, CSRF, ("cookie", &session_cookie(999))],
    );
    h[0].1 = "POST".into();
    assert_eq!(reply(decide_on(&c, &h, 1000)).status, 401);
    // Without the CSRF header an API call is refused before anything else.
    let r = reply(decide_on(
        &c,
        &get("/private/api", &[API, ("cookie", &session_cookie(2000))]),
        1000,
    ));
    assert_eq!(
        (r.status, r.counter),
        (403, Some(crate::metrics::Counter::CsrfRejected))
    );
}

#[test]
fn navigation_without_session_starts_login_back_to_the_page() {
    let c = config_from(minimal_json());
    let r = reply(decide_on(&c, &get("/private/page?tab=2", &[NAV]), 1000));
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with("http://127.0.0.1:9000/auth?"),
        "{location}"
    );
    let tx_cookie = r.cookies().next().unwrap();
    assert!(
        tx_cookie.starts_with("__Host-bff-session.tx."),
        "{tx_cookie}"
    );
    assert!(tx_cookie.contains("Max-Age=600; HttpOnly; Secure; SameSite=Lax"));
    // The transaction holds the page to return to.
    let (name, value) = tx_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap();
    let k = KeyRing::from_base64_list(KEY_A).unwrap();
    let tx: serde_json::Value =
        serde_json::from_slice(&k.open(name, value.as_bytes()).unwrap()).unwrap();
    assert_eq!(tx["r"], "/private/page?tab=2");
    assert_eq!(tx["u"], "http://app.local:8080/private/callback");
}

#[test]
fn only_what_needs_the_provider_waits_for_it() {
    let c = config_from(minimal_json());
    let without = |h: &[(String, String)]| {
        decide_at(
            &c,
            None,
            &Request::from_headers(h),
            1000,
            &mut CountingRandom(3),
        )
    };
    assert!(matches!(
        without(&get("/private/login", &[NAV])),
        Decision::AwaitProvider
    ));
    assert!(matches!(
        without(&get("/private/page", &[NAV])),
        Decision::AwaitProvider
    ));
    assert!(matches!(
        without(&get("/private/callback?code=a&state=b", &[NAV])),
        Decision::AwaitProvider
    ));
    // A valid session, an API call without one, and paths outside the prefix never wait.
    let cookie = session_cookie(2000);
    assert!(matches!(
        without(&get("/private/api", &[API, CSRF, ("cookie", &cookie)])),
        Decision::Forward(_)
    ));
    assert!(
        matches!(without(&get("/private/api", &[API, CSRF])), Decision::Reply(r) if r.status == 401)
    );
    assert!(matches!(
        without(&get("/elsewhere", &[NAV])),
        Decision::PassThrough
    ));
}

#[test]
fn claims_go_upstream_as_headers_and_rules_decide() {
    let mut v = minimal_json();
    v["claim_headers"] = serde_json::json!({"sub": "x-user-sub", "groups": "x-user-groups", "missing": "x-user-missing"});
    v["rules"] = serde_json::json!([{"prefix": "/private/admin", "require": {"groups": {"contains": "admin"}}}]);
    v["bypass"] = serde_json::json!(["/private/healthz"]);
    let c = config_from(v);
    let mut s = refreshable(5000);
    s.cold_mut().id_token = Some(KeptIdToken::new(&crate::oidc::id_token::test_signer::sign(
        &serde_json::json!({"sub": "alice", "groups": ["staff", "beta"]}),
    )));
    let cookie = cookie_of(&s);
    let h = get(
        "/private/api",
        &[API, CSRF, ("cookie", &cookie), ("x-user-sub", "mallory")],
    );
    let Decision::Forward(f) = decide_on(&c, &h, 1000) else {
        panic!()
    };
    assert_eq!(
        f.extra,
        vec![
            ("x-user-groups".to_string(), Some("staff,beta".to_string())),
            ("x-user-missing".to_string(), None),
            ("x-user-sub".to_string(), Some("alice".to_string())),
        ]
    );
    let r = reply(decide_on(
        &c,
        &get("/private/admin/x", &[API, CSRF, ("cookie", &cookie)]),
        1000,
    ));
    assert_eq!(
        (r.status, r.counter),
        (403, Some(crate::metrics::Counter::Forbidden))
    );
    // Outside the prefix and on bypass paths: untouched, but a forged identity header goes.
    assert!(matches!(
        decide_on(&c, &get("/public", &[NAV]), 1000),
        Decision::PassThrough
    ));
    let Decision::Forward(f) = decide_on(
        &c,
        &get("/private/healthz", &[("x-user-sub", "mallory")]),
        1000,
    ) else {
        panic!()
    };
    assert_eq!(
        (f.token_header, f.extra),
        (None, vec![("x-user-sub".to_string(), None)])
    );
}

#[test]
fn a_sessions_second_part_is_opened_only_for_what_needs_it() {
    let mut v = minimal_json();
    v["rules"] =
        serde_json::json!([{"prefix": "/private/admin", "require": {"name": {"equals": "Alice"}}}]);
    let c = config_from(v);
    let provider = test_provider();
    let keys = KeyRing::from_base64_list(KEY_A).unwrap();
    let run = |cookie: &str, path: &str, now: u64, cache: &mut SessionCache| {
        let h = get(path, &[API, CSRF, ("cookie", cookie)]);
        let mut rng = CountingRandom(3);
        let mut ctx = Ctx {
            config: &c,
            provider: Some(&provider),
            keys: None,
            now,
            rng: &mut rng,
        };
        decide(&mut ctx, &Request::from_headers(&h), None, cache)
    };
    let mut s = refreshable(5000);
    s.cold_mut().id_token = Some(KeptIdToken::new(&crate::oidc::id_token::test_signer::sign(
        &serde_json::json!({"sub": "alice", "name": "Alice"}),
    )));
    let good = cookie_of(&s);
    let still_sealed = |cache: &mut SessionCache| {
        let session = cache
            .open(
                &keys,
                "__Host-bff-session",
                &Jar::parse(Some(good.as_bytes())),
                || false,
            )
            .unwrap();
        match &session.cold {
            Cold::Sealed { opened, .. } => opened.get().is_none(),
            Cold::Open(_) => false,
        }
    };
    // An API call forwards with what the first part holds: the second stays sealed.
    let mut cache = SessionCache::new(4);
    let Decision::Forward(f) = run(&good, "/private/api", 1000, &mut cache) else {
        panic!()
    };
    assert_eq!(
        f.token_header,
        Some(("authorization".into(), "Bearer old-token".into()))
    );
    assert!(still_sealed(&mut cache));
    // A rule on the claims opens it (once: the cached session keeps it open).
    assert!(matches!(
        run(&good, "/private/admin/x", 1000, &mut cache),
        Decision::Forward(_)
    ));
    assert!(!still_sealed(&mut cache));

    // The tag covers both parts: tampered anywhere, the value is no session at all.
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for (path, now) in [
        ("/private/api", 1000),
        ("/private/admin/x", 1000),
        ("/private/session", 1000),
        ("/private/api", 4990),
    ] {
        let r = reply(run(&tampered, path, now, &mut SessionCache::new(4)));
        assert_eq!(r.status, 401, "{path} at {now}");
    }
}

/// The authorization request's query parameters, in order.
fn authorize_params(r: &Reply) -> Vec<(String, String)> {
    let location = r.header("location").unwrap();
    form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
        .into_owned()
        .collect()
}

#[test]
fn the_login_endpoint_forwards_allowed_parameters_once_each() {
    let mut v = minimal_json();
    v["auth_params"] =
        serde_json::json!({"audience": "https://api.example.com", "prompt": "login"});
    v["resources"] = serde_json::json!(["https://api.example.com/"]);
    let c = config_from(v);
    let path = "/private/login?return_to=%2Fapp&prompt=none&login_hint=alice&state=forged&scope=admin&audience=evil&domain_hint=x";
    let r = reply(decide_on(&c, &get(path, &[NAV]), 1000));
    assert_eq!(r.status, 302);
    let params = authorize_params(&r);
    let count = |k: &str| params.iter().filter(|(n, _)| n == k).count();
    let value = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    for name in [
        "state",
        "scope",
        "prompt",
        "audience",
        "login_hint",
        "resource",
        "nonce",
    ] {
        assert_eq!(count(name), 1, "{name} once");
    }
    assert_eq!(
        value("prompt"),
        Some("none"),
        "the SPA's replaces the configured one"
    );
    assert_eq!(
        value("audience"),
        Some("https://api.example.com"),
        "not the SPA's"
    );
    assert_eq!(value("login_hint"), Some("alice"));
    assert_eq!(value("resource"), Some("https://api.example.com/"));
    assert_eq!(value("scope"), Some("openid profile email"));
    assert_ne!(value("state"), Some("forged"));
    assert_eq!(count("domain_hint"), 0, "not allow-listed");
    // A navigation that starts a login forwards nothing from the page's own query.
    let r = reply(decide_on(
        &c,
        &get("/private/page?prompt=none", &[NAV]),
        1000,
    ));
    assert_eq!(
        authorize_params(&r)
            .iter()
            .filter(|(n, _)| n == "prompt")
            .count(),
        1
    );
    assert_eq!(
        authorize_params(&r)
            .iter()
            .find(|(n, _)| n == "prompt")
            .map(|(_, v)| v.as_str()),
        Some("login")
    );
}

#[test]
fn the_login_endpoint_refuses_malformed_forwarded_parameters() {
    let c = config_from(minimal_json());
    for query in [
        "login_hint=a%0Ab",
        "prompt=login&prompt=none",
        "max_age=soon",
        &format!("ui_locales={}", "x".repeat(600)),
    ] {
        let r = reply(decide_on(
            &c,
            &get(&format!("/private/login?{query}"), &[API]),
            1000,
        ));
        assert_eq!(r.status, 400, "{query}");
        assert!(r.body.contains("invalid_login_parameter"), "{query}");
        assert!(!r.body.contains("xxxx"), "no value echoed");
    }
}

#[test]
fn a_rule_wanting_a_stronger_login_asks_for_a_step_up() {
    let mut v = minimal_json();
    v["rules"] = serde_json::json!([{"prefix": "/private/refund", "acr": ["urn:example:mfa"], "max_auth_age_s": 300}]);
    let c = config_from(v);
    let mut s = refreshable(5000);
    s.cold_mut().id_token = Some(KeptIdToken::new(&crate::oidc::id_token::test_signer::sign(
        &serde_json::json!({"sub": "alice", "acr": "urn:example:pwd", "auth_time": 900}),
    )));
    let cookie = cookie_of(&s);
    let nav = reply(decide_on(
        &c,
        &get("/private/refund?id=7", &[NAV, ("cookie", &cookie)]),
        1000,
    ));
    assert_eq!(nav.status, 302);
    assert_eq!(
        nav.header("location"),
        Some(
            "/private/login?return_to=%2Fprivate%2Frefund%3Fid%3D7&acr_values=urn%3Aexample%3Amfa"
        )
    );
    let api = reply(decide_on(
        &c,
        &get("/private/refund", &[API, CSRF, ("cookie", &cookie)]),
        1300,
    ));
    assert_eq!(api.status, 401);
    let body: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(body["error"], "step_up_required");
    assert_eq!(
        body["login"],
        "/private/login?return_to=%2Fprivate%2Frefund&acr_values=urn%3Aexample%3Amfa&max_age=300"
    );
    assert!(matches!(
        decide_on(
            &c,
            &get("/private/other", &[API, CSRF, ("cookie", &cookie)]),
            1000
        ),
        Decision::Forward(_)
    ));
}

#[test]
fn login_endpoint_checks_return_to() {
    let c = config_from(minimal_json());
    let ok = reply(decide_on(
        &c,
        &get("/private/login?return_to=%2Fapp%3Fa%3D1", &[NAV]),
        0,
    ));
    assert_eq!(ok.status, 302);
    let default = reply(decide_on(&c, &get("/private/login", &[API, CSRF]), 0));
    assert_eq!(default.status, 302);
    for bad in [
        "//evil.example",
        "%2F%2Fevil.example",
        "/%5Cevil",
        "https://evil.example",
        "/ok%0d%0aSet-Cookie:x=1",
        "/a&return_to=/b",
    ] {
        let r = reply(decide_on(
            &c,
            &get(&format!("/private/login?return_to={bad}"), &[NAV]),
            0,
        ));
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.cookies().next().is_none());
    }
}
