//! The decision for every request: one pure function over the request's facts. The wasm
//! shell only carries the decision out (DESIGN.md, "What the filter does with a request").

use crate::config::Config;
use crate::login::{self, PendingLogin};
use crate::oidc::discovery::Provider;
use crate::oidc::idp_request::IdpRequest;
use crate::random::Random;
use crate::refresh::{Outcome, RefreshId};
use crate::renew::refresh_request;
use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::session::contents::Upkeep;
use crate::session::{cookie, NoSession, Session};
use crate::url::{is_under, path_of, query_of, safe_return_to};

#[derive(Debug)]
pub enum Decision {
    /// Not ours: leave the request exactly as it is.
    PassThrough,
    /// Authenticated: send upstream with the token and without the filter's cookies.
    Forward(Forward),
    /// Answer locally (redirect or error).
    Reply(Reply),
    /// Pause the request and exchange the code at the token endpoint.
    ExchangeCode(Box<CodeExchange>),
    /// The provider's metadata is needed and not known yet: pause until it is (bounded).
    AwaitProvider,
    /// The access token is due: refresh it first (once per session across workers).
    Refresh(Box<RefreshNeeded>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    pub token_header: (String, String),
    /// The `Cookie` header to send upstream; `None` removes it.
    pub cookie: Option<String>,
    /// `Set-Cookie` headers for the response (a re-written session).
    pub set_cookies: Vec<String>,
}

#[derive(Debug)]
pub struct RefreshNeeded {
    pub id: RefreshId,
    pub session: Session,
    pub request: IdpRequest,
}

#[derive(Debug)]
pub struct CodeExchange {
    pub request: IdpRequest,
    pub pending: PendingLogin,
}

pub fn decide(
    config: &Config,
    provider: Option<&Provider>,
    req: &Request,
    now: u64,
    rng: &mut dyn Random,
) -> Decision {
    let path = path_of(req.path);
    let client = if req.is_navigation() {
        Client::Navigation
    } else {
        Client::Api
    };

    if path == config.callback_path() {
        let Some(provider) = provider else {
            return Decision::AwaitProvider;
        };
        return match login::callback(config, provider, req, client, now) {
            Ok(exchange) => Decision::ExchangeCode(Box::new(exchange)),
            Err(reply) => Decision::Reply(reply),
        };
    }
    if !is_under(path, &config.prefix) {
        return Decision::PassThrough;
    }
    if path == config.login_path {
        let return_to = match login_return_to(config, req.path) {
            Ok(r) => r,
            Err(f) => return Decision::Reply(Reply::failure(client, &f)),
        };
        let Some(provider) = provider else {
            return Decision::AwaitProvider;
        };
        return Decision::Reply(login::start(
            config, provider, req, client, return_to, now, rng,
        ));
    }
    let session = Session::open(&config.keys, &config.cookie.name, req.cookie_header())
        .and_then(|s| s.check(now, &config.session).map(|upkeep| (s, upkeep)));
    match session {
        Ok((session, Upkeep::None)) => {
            Decision::Forward(forward(config, req, &session, Vec::new()))
        }
        Ok((mut session, Upkeep::Rewrite)) => {
            session.last_seen = now;
            rewritten(config, req, session, rng)
        }
        Ok((session, Upkeep::Refresh)) => {
            match (provider, session.refresh_token.as_ref()) {
                (Some(provider), Some(rt)) => match refresh_request(config, provider, &session) {
                    Some(request) => Decision::Refresh(Box::new(RefreshNeeded {
                        id: RefreshId::of(rt),
                        session,
                        request,
                    })),
                    None => Decision::Forward(forward(config, req, &session, Vec::new())),
                },
                // Metadata not known yet: use the token while it lasts.
                _ if now < session.access_expires_at => {
                    Decision::Forward(forward(config, req, &session, Vec::new()))
                }
                _ => Decision::AwaitProvider,
            }
        }
        Err(reason) => unauthenticated(config, provider, req, reason, now, rng),
    }
}

/// Carries out a refresh's outcome for a request of that session.
pub fn after_refresh(
    config: &Config,
    provider: Option<&Provider>,
    req: &Request,
    session: &Session,
    outcome: &Outcome,
    now: u64,
    rng: &mut dyn Random,
) -> Decision {
    match outcome {
        Outcome::Renewed(sealed) => {
            let cookie = format!("{}={sealed}", config.cookie.name);
            match Session::open(&config.keys, &config.cookie.name, Some(&cookie)) {
                Ok(renewed) => rewritten(config, req, renewed, rng),
                Err(reason) => unauthenticated(config, provider, req, reason, now, rng),
            }
        }
        Outcome::Ended => unauthenticated(config, provider, req, NoSession::Expired, now, rng),
        // The IdP is down: go on with the current token while it is valid.
        Outcome::Unavailable if now < session.access_expires_at => {
            Decision::Forward(forward(config, req, session, Vec::new()))
        }
        Outcome::Unavailable => {
            Decision::Reply(Reply::failure(client_of(req), &Failure::IdpUnavailable))
        }
    }
}

fn client_of(req: &Request) -> Client {
    if req.is_navigation() {
        Client::Navigation
    } else {
        Client::Api
    }
}

fn forward(config: &Config, req: &Request, session: &Session, set_cookies: Vec<String>) -> Forward {
    Forward {
        token_header: (
            config.upstream_token.name.clone(),
            config.upstream_token.value(&session.access_token),
        ),
        cookie: req
            .cookie_header()
            .and_then(|h| cookie::without_own(h, &config.cookie.name)),
        set_cookies,
    }
}

/// Forwards with the session re-written on the response (sealed with the current key).
fn rewritten(config: &Config, req: &Request, session: Session, rng: &mut dyn Random) -> Decision {
    match session.write(&config.keys, &config.cookie, req.cookie_header(), rng) {
        Ok(cookies) => Decision::Forward(forward(config, req, &session, cookies)),
        // Could not seal: the current cookie still works, so forward without re-writing.
        Err(_) => Decision::Forward(forward(config, req, &session, Vec::new())),
    }
}

/// No usable session: a navigation logs in (back to this page), anything else gets 401. A
/// session cookie that is there but dead is deleted on the way.
fn unauthenticated(
    config: &Config,
    provider: Option<&Provider>,
    req: &Request,
    reason: NoSession,
    now: u64,
    rng: &mut dyn Random,
) -> Decision {
    let client = client_of(req);
    let reply = if client == Client::Navigation && req.is_get_or_head() {
        let Some(provider) = provider else {
            return Decision::AwaitProvider;
        };
        // Come back to this very page after login, if it is a path we can safely return to.
        let return_to = safe_return_to(req.path)
            .map(str::to_string)
            .unwrap_or_else(|_| config.post_login_url.clone());
        login::start(config, provider, req, client, return_to, now, rng)
    } else {
        Reply::failure(
            Client::Api,
            &Failure::Unauthenticated {
                login_url: config.login_path.clone(),
            },
        )
    };
    let reply = match reason {
        NoSession::Absent => reply,
        _ => Session::clear(&config.cookie, req.cookie_header())
            .into_iter()
            .fold(reply, Reply::with_cookie),
    };
    Decision::Reply(reply)
}

/// `?return_to=` on the login endpoint: a checked relative path, or the configured default.
fn login_return_to(config: &Config, path_and_query: &str) -> Result<String, Failure> {
    let mut found = None;
    for (name, value) in form_urlencoded::parse(query_of(path_and_query).unwrap_or("").as_bytes()) {
        if name == "return_to" {
            if found.is_some() {
                return Err(Failure::UnsafeReturnTo);
            }
            found = Some(value.into_owned());
        }
    }
    match found {
        None => Ok(config.post_login_url.clone()),
        Some(r) => safe_return_to(&r)
            .map(str::to_string)
            .map_err(|_| Failure::UnsafeReturnTo),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json, KEY_A};
    use crate::oidc::discovery::test_provider;
    use crate::random::CountingRandom;
    use crate::refresh::{Outcome, RefreshId};
    use crate::secret::Secret;
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

    fn decide_on(config: &Config, h: &[(String, String)], now: u64) -> Decision {
        let provider = test_provider();
        decide(
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
            refresh_token: None,
            subject: "alice".into(),
            created: 900,
            last_seen: 900,
            claims: Default::default(),
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
            refresh_token: Some(Secret::new("the-refresh-token")),
            subject: "alice".into(),
            created: 900,
            last_seen: 900,
            claims: Default::default(),
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
        let h = get("/private/api", &[API, ("cookie", &cookie)]);
        let Decision::Refresh(needed) = decide_on(&c, &h, 1000) else {
            panic!()
        };
        assert_eq!(needed.id, RefreshId::of(&Secret::new("the-refresh-token")));
        assert_eq!(
            needed.request.body.as_deref(),
            Some("grant_type=refresh_token&refresh_token=the-refresh-token")
        );
        // Without metadata yet, the token is used while it lasts; after that, wait for it.
        let req = Request::from_headers(&h);
        assert!(matches!(
            decide(&c, None, &req, 1000, &mut CountingRandom(1)),
            Decision::Forward(_)
        ));
        assert!(matches!(
            decide(&c, None, &req, 1030, &mut CountingRandom(1)),
            Decision::AwaitProvider
        ));
    }

    #[test]
    fn what_a_refresh_outcome_means_for_a_request() {
        let c = config_from(minimal_json());
        let p = test_provider();
        let old = refreshable(1030);
        let h = get("/private/api", &[API, ("cookie", &cookie_of(&old))]);
        let req = Request::from_headers(&h);
        let after = |outcome: &Outcome, now: u64| {
            after_refresh(
                &c,
                Some(&p),
                &req,
                &old,
                outcome,
                now,
                &mut CountingRandom(2),
            )
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
        assert_eq!(f.token_header.1, "Bearer new-token");
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
            (f.token_header.1.as_str(), f.set_cookies.len()),
            ("Bearer old-token", 0)
        );
        assert_eq!(reply(after(&Outcome::Unavailable, 1030)).status, 503);
        // Refused: the session ends and its cookie goes.
        let r = reply(after(&Outcome::Ended, 1000));
        assert_eq!(r.status, 401);
        assert!(r
            .cookies()
            .any(|c| c.starts_with("__Host-bff-session=;") && c.contains("Max-Age=0")));
    }

    #[test]
    fn a_dead_session_cookie_is_deleted_on_the_way() {
        let c = config_from(minimal_json());
        let r = reply(decide_on(
            &c,
            &get("/private/api", &[API, ("cookie", &session_cookie(999))]),
            1000,
        ));
        assert_eq!(r.status, 401);
        assert!(r.cookies().any(|c| c.contains("Max-Age=0")));
        let r = reply(decide_on(&c, &get("/private/api", &[API]), 1000));
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
            &get("/private/api/items?x=1", &[API, ("cookie", &cookies)]),
            1000,
        );
        let Decision::Forward(f) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            f.token_header,
            ("authorization".into(), "Bearer the-access-token".into())
        );
        assert_eq!(f.cookie.as_deref(), Some("theme=dark"));

        let d = decide_on(
            &c,
            &get("/private", &[API, ("cookie", &session_cookie(2000))]),
            1000,
        );
        let Decision::Forward(f) = d else {
            panic!("{d:?}")
        };
        assert_eq!(f.cookie, None);
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
                &get("/private/api", &[API, ("cookie", cookie)]),
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
        // Expired token, navigation by POST: still 401, never a redirect.
        let mut h = get("/private/form", &[NAV, ("cookie", &session_cookie(999))]);
        h[0].1 = "POST".into();
        assert_eq!(reply(decide_on(&c, &h, 1000)).status, 401);
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
        let tx: serde_json::Value = serde_json::from_slice(&k.open(name, value).unwrap()).unwrap();
        assert_eq!(tx["r"], "/private/page?tab=2");
        assert_eq!(tx["u"], "http://app.local:8080/private/callback");
    }

    #[test]
    fn only_what_needs_the_provider_waits_for_it() {
        let c = config_from(minimal_json());
        let without = |h: &[(String, String)]| {
            decide(
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
            without(&get("/private/api", &[API, ("cookie", &cookie)])),
            Decision::Forward(_)
        ));
        assert!(
            matches!(without(&get("/private/api", &[API])), Decision::Reply(r) if r.status == 401)
        );
        assert!(matches!(
            without(&get("/elsewhere", &[NAV])),
            Decision::PassThrough
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
        let default = reply(decide_on(&c, &get("/private/login", &[API]), 0));
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
}
