//! What the access log is told of each request: the decision it ended with, and who, for every
//! kind of ending, paused ones included. Never a token.
//!
//! Test code only (`#[cfg(test)] mod tests;` in engine/mod.rs): its unwraps and panics are
//! assertions and never reach the module.

use super::*;
use crate::access_log::decision;

/// (decision, sub, sid) as the shell would write them; `None` for a pass-through.
fn logged(settled: &Settled) -> Option<(&str, Option<&str>, Option<&str>)> {
    let log = settled.access_log()?;
    let who = log.who.as_deref();
    Some((
        log.decision,
        who.map(|w| w.sub.as_str()),
        who.and_then(|w| w.sid.as_deref()),
    ))
}

/// The value written for a request, for the never-a-token check.
fn written(settled: &Settled) -> String {
    settled
        .access_log()
        .and_then(|log| log.value())
        .unwrap_or_default()
}

/// `config` with the access log on.
fn logging(mut config: serde_json::Value) -> serde_json::Value {
    config["access_log"] = json!(true);
    config
}

#[test]
fn a_login_then_an_api_call_name_the_user_and_the_session() {
    let world = World::new();
    let mut w = world.worker(logging(minimal_json()));
    w.learn_provider();
    let (callback, nonce) = callback_request(&mut w);
    // The login's start (made by callback_request) is logged as such: nobody known yet.
    let start = settled(w.request(7, wire("/private/login", &[NAV])));
    assert_eq!(logged(&start), Some((decision::LOGIN_STARTED, None, None)));

    // The callback pauses for the token endpoint; its resumed answer names the new session.
    assert_eq!(w.request(1, callback), Handled::Paused);
    let resumes = w.answer(
        "/token",
        Some(200),
        &token_response(&id_token("test-rsa", &nonce)),
    );
    let done = &resumes[0].settled;
    let (word, sub, sid) = logged(done).unwrap();
    assert_eq!((word, sub), (decision::CALLBACK_OK, Some("alice")));
    let sid = sid.expect("the new session's sid").to_string();
    assert_eq!(sid.len(), 22, "16 random bytes, base64url");
    assert!(!written(done).contains("AT"), "{}", written(done));

    // The browser's next API call: authenticated, as alice, in that session.
    let cookie: String = reply(done)
        .cookies()
        .filter(|c| c.starts_with("__Host-bff-session="))
        .map(|c| c.split(';').next().unwrap().to_string())
        .collect();
    let call = settled(w.request(2, wire("/private/api", &[API, CSRF, ("cookie", &cookie)])));
    assert_eq!(token_of(&call), "Bearer AT");
    assert_eq!(
        logged(&call),
        Some((decision::AUTHENTICATED, Some("alice"), Some(sid.as_str())))
    );
    let line = written(&call);
    assert_eq!(line, format!("authenticated alice {sid}"));
}

#[test]
fn a_request_that_waited_for_a_refresh_is_logged_as_refreshed() {
    let world = World::new();
    let mut a = world.worker(logging(minimal_json()));
    let mut b = world.worker(logging(minimal_json()));
    a.learn_provider();
    b.tick();
    let cookie = due_session_cookie();
    let call = || wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(a.request(1, call()), Handled::Paused);
    assert_eq!(b.request(1, call()), Handled::Paused);
    a.engine.on_queue_nudged(&mut a.host);
    let resumes = a.answer("/token", Some(200), REFRESHED);
    assert_eq!(
        logged(&resumes[0].settled),
        Some((decision::REFRESHED, Some("alice"), Some("sid-1")))
    );
    // The other worker's request took the outcome from shared data: refreshed too.
    world.advance_ms(100);
    let resumes = b.tick();
    assert_eq!(
        logged(&resumes[0].settled),
        Some((decision::REFRESHED, Some("alice"), Some("sid-1")))
    );
    let line = written(&resumes[0].settled);
    assert!(
        !line.contains("new-at") && !line.contains("new-rt"),
        "{line}"
    );
    // Its next request carries the new cookie: plain authenticated.
    let Settled::Forward(f) = &resumes[0].settled else {
        panic!()
    };
    let renewed = f.set_cookies[0].split(';').next().unwrap().to_string();
    let next = settled(b.request(2, wire("/private/api", &[API, CSRF, ("cookie", &renewed)])));
    assert_eq!(
        logged(&next),
        Some((decision::AUTHENTICATED, Some("alice"), Some("sid-1")))
    );
}

#[test]
fn a_refused_refresh_ends_the_session_and_the_call_gets_its_401() {
    let world = World::new();
    let mut w = world.worker(logging(minimal_json()));
    w.learn_provider();
    // The token has expired: a refused refresh cannot go on with it.
    world.advance_ms(40_000);
    w.tick();
    let cookie = due_session_cookie();
    let call = wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(w.request(1, call), Handled::Paused);
    w.engine.on_queue_nudged(&mut w.host);
    let resumes = w.answer("/token", Some(400), r#"{"error": "invalid_grant"}"#);
    assert_eq!(
        logged(&resumes[0].settled),
        Some(("unauthenticated", None, None))
    );
}

#[test]
fn answers_without_a_session_carry_their_decision_and_nobody() {
    let world = World::new();
    let mut w = world.worker(logging(minimal_json()));
    w.learn_provider();
    let cases: [(Vec<u8>, &str); 6] = [
        (wire("/private/api", &[API, CSRF]), "unauthenticated"),
        (wire("/private/api", &[API]), "csrf"),
        (wire("/private/page", &[NAV]), decision::LOGIN_STARTED),
        (wire("/private/session", &[API, CSRF]), "unauthenticated"),
        (wire("/private/logout", &[NAV]), decision::LOGOUT),
        (
            wire("/private/callback?code=c&state=nope", &[NAV]),
            "login_expired",
        ),
    ];
    for (i, (request, word)) in cases.into_iter().enumerate() {
        let s = settled(w.request(i as u32 + 1, request));
        assert_eq!(logged(&s), Some((word, None, None)), "case {i}");
    }
    // Outside the prefix: the filter leaves the request, and the log, alone.
    let s = settled(w.request(9, wire("/public/app.js", &[])));
    assert_eq!(s, Settled::PassThrough);
    assert_eq!(logged(&s), None);
}

#[test]
fn answers_to_a_session_name_it() {
    let world = World::new();
    let mut rules = minimal_json();
    rules["rules"] =
        json!([{"prefix": "/private/admin", "require": {"groups": {"contains": "admin"}}}]);
    let mut w = world.worker(logging(rules));
    w.learn_provider();
    let cookie = session_cookie_expiring_at(T0 + 3600);
    let alice = Some((Some("alice"), Some("sid-logout")));
    let cases = [
        (
            wire("/private/session", &[API, CSRF, ("cookie", &cookie)]),
            decision::SESSION,
        ),
        (
            wire("/private/admin/x", &[API, CSRF, ("cookie", &cookie)]),
            "forbidden",
        ),
        (logout_request(&cookie), decision::LOGOUT),
    ];
    for (i, (request, word)) in cases.into_iter().enumerate() {
        let s = settled(w.request(i as u32 + 1, request));
        let (got, sub, sid) = logged(&s).unwrap();
        assert_eq!((got, Some((sub, sid))), (word, alice), "case {i}");
    }
}

#[test]
fn mixed_traffic_is_logged_by_how_it_went_on() {
    let world = World::new();
    let mut config = client_prefix_config();
    config["policies"] = json!([
        {"prefix": "/private/service", "policy": "client"},
        {"prefix": "/private/public", "policy": "optional"},
    ]);
    let mut w = world.worker(logging(config));
    w.learn_provider();
    let anonymous = settled(w.request(1, wire("/private/public/news", &[API])));
    assert_eq!(logged(&anonymous), Some((decision::ANONYMOUS, None, None)));

    assert_eq!(
        w.request(2, wire("/private/service/report", &[API])),
        Handled::Paused
    );
    w.engine.on_queue_nudged(&mut w.host);
    let resumes = w.answer("/token", Some(200), CLIENT_TOKEN);
    assert_eq!(
        logged(&resumes[0].settled),
        Some((decision::CLIENT_TOKEN, None, None))
    );
    assert!(!written(&resumes[0].settled).contains("app-token"));
}

#[test]
fn without_the_setting_nothing_is_written() {
    let world = World::new();
    let mut w = world.worker(minimal_json());
    w.learn_provider();
    let cookie = session_cookie_expiring_at(T0 + 3600);
    for (i, request) in [
        wire("/private/api", &[API, CSRF, ("cookie", &cookie)]),
        wire("/private/api", &[API, CSRF]),
        wire("/private/page", &[NAV]),
        logout_request(&cookie),
    ]
    .into_iter()
    .enumerate()
    {
        let s = settled(w.request(i as u32 + 1, request));
        assert_eq!(s.access_log(), Some(&AccessLog::default()), "case {i}");
        assert_eq!(written(&s), "");
    }
    // The same call with it on (another process: this one saw the logout) names alice.
    let mut on = World::new().worker(logging(minimal_json()));
    on.learn_provider();
    let s = settled(on.request(1, wire("/private/api", &[API, CSRF, ("cookie", &cookie)])));
    assert_eq!(written(&s), "authenticated alice sid-logout");
}

#[test]
fn the_apis_step_up_challenge_replaces_the_entry_and_keeps_who() {
    let world = World::new();
    let mut config = minimal_json();
    config["upstream_step_up"] = json!(true);
    let challenge = "Bearer error=\"insufficient_user_authentication\", acr_values=\"mfa\"";
    let cookie = session_cookie_expiring_at(T0 + 3600);
    for (on, page, expected) in [
        (true, true, Some("step_up alice sid-logout")),
        (true, false, Some("step_up_required alice sid-logout")),
        (false, true, None),
    ] {
        let mut w = world.worker(if on {
            logging(config.clone())
        } else {
            config.clone()
        });
        w.tick();
        let how = if page { NAV } else { API };
        let Settled::Forward(f) = settled(w.request(
            1,
            wire("/private/reports", &[how, CSRF, ("cookie", &cookie)]),
        )) else {
            panic!()
        };
        let watch = f.step_up_watch.expect("watched");
        let reply = w
            .engine
            .on_upstream_challenge(&watch, challenge, &mut w.host)
            .expect("a step-up");
        assert_eq!(reply.access_log.value().as_deref(), expected, "{on} {page}");
    }
}

#[test]
fn a_refused_back_channel_logout_is_logged_only_with_the_setting() {
    for (on, expected) in [(true, Some("backchannel_refused - -")), (false, None)] {
        let config = minimal_json();
        let mut w = World::new().worker(if on { logging(config) } else { config });
        w.learn_provider();
        let headers = header_map::serialize(&[
            (":method", b"POST".as_slice()),
            (":path", b"/private/backchannel-logout"),
            (":scheme", b"http"),
            (":authority", b"app.local:8080"),
            ("content-type", b"application/x-www-form-urlencoded"),
        ]);
        assert_eq!(w.request(1, headers), Handled::ReadBody);
        let s = settled(
            w.engine
                .on_request_body(1, b"logout_token=not-a-jwt", &mut w.host),
        );
        assert_eq!(reply(&s).status, 400);
        assert_eq!(s.access_log().and_then(|l| l.value()).as_deref(), expected);
    }
}
