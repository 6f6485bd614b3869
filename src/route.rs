//! The decision for every request: one pure function over the request's facts. The engine
//! carries the decision out (DESIGN.md, "What the filter does with a request").

use crate::config::Config;
use crate::csrf;
use crate::ctx::Ctx;
use crate::endpoints::{self, LogoutPlan};
use crate::login::{self, CodeExchange, LoginStart};
use crate::metrics::Counter;
use crate::oidc::discovery::Provider;
use crate::oidc::idp_request::IdpRequest;
use crate::oidc::{auth_params, challenge};
use crate::refresh::grant::refresh_request;
use crate::refresh::{Outcome, RefreshId};
use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::rules::{self, Verdict};
use crate::session::cache::SessionCache;
use crate::session::contents::Upkeep;
use crate::session::cookie::Jar;
use crate::session::{NoSession, Session};
use crate::url::{is_under, path_of, query_of, safe_return_to};

/// What to do with a request when its headers arrive.
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
    /// Revoke the refresh token (if the plan says so), then answer.
    Logout(Box<LogoutPlan>),
}

/// How a request ends once nothing more is awaited: it goes on (with these edits) or is
/// answered here. Every stage after a pause ends in one of these.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Upstream, untouched.
    PassThrough,
    Forward(Forward),
    Reply(Reply),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// `None` for a request that passes through unauthenticated.
    pub token_header: Option<(String, String)>,
    /// The `Cookie` header to send upstream with the token; `None` removes it. Without a
    /// token the header is left as it is.
    pub cookie: Option<Vec<u8>>,
    /// `Set-Cookie` headers for the response (a re-written session).
    pub set_cookies: Vec<String>,
    /// Other request headers to set (`Some`) or remove (`None`): claim headers, and any
    /// client-sent header of those names.
    pub extra: Vec<(String, Option<String>)>,
    /// With `upstream_step_up` on: how to answer the API's RFC 9470 challenge, if it sends one.
    pub step_up_watch: Option<StepUpWatch>,
}

/// What turning an API's step-up challenge into a login needs to know of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpWatch {
    /// Where the login comes back to: this request's path, if safe to return to.
    return_to: String,
    /// A page load (sent to log in) rather than an API call (told to).
    navigation: bool,
}

impl StepUpWatch {
    fn of(config: &Config, req: &Request) -> StepUpWatch {
        StepUpWatch {
            return_to: safe_return_to(req.path)
                .unwrap_or(&config.post_login_url)
                .to_string(),
            navigation: logs_in(req),
        }
    }
}

/// The API answered a forwarded request with 401 and `www_authenticate`: an RFC 9470 step-up
/// challenge naming acr_values or max_age becomes the same step-up as a rule's; anything else
/// goes to the client as it is (`None`).
pub fn upstream_challenge(
    config: &Config,
    watch: &StepUpWatch,
    www_authenticate: &str,
) -> Option<Reply> {
    let c = challenge::step_up_challenge(www_authenticate)?;
    // Neither: a new login could come back the same, and loop.
    if c.acr_values.is_none() && c.max_age.is_none() {
        return None;
    }
    Some(step_up(config, watch, c.acr_values.as_deref(), c.max_age))
}

#[derive(Debug)]
pub struct RefreshNeeded {
    pub id: RefreshId,
    pub session: Session,
    pub request: IdpRequest,
}

/// Decides what to do with a request, remembering opened sessions in `sessions` (the engine
/// keeps one per VM; `SessionCache::new(0)` remembers nothing).
pub fn decide(ctx: &mut Ctx, req: &Request, sessions: &mut SessionCache) -> Decision {
    let config = ctx.config;
    let provider = ctx.provider;
    let now = ctx.now;
    let path = path_of(req.path);
    // Only answers need to know; an authenticated call never asks.
    let client = || client_of(req);

    if path == config.callback_path() {
        let Some(provider) = provider else {
            return Decision::AwaitProvider;
        };
        return match login::callback(config, provider, req, client(), now) {
            Ok(exchange) => Decision::ExchangeCode(Box::new(exchange)),
            Err(reply) => Decision::Reply(reply),
        };
    }
    if !is_under(path, &config.prefix) || config.bypass.iter().any(|b| is_under(path, b)) {
        return pass_through(config, req);
    }
    if path == config.login_path {
        let start = match login_start(config, req.path) {
            Ok(start) => start,
            Err(f) => return Decision::Reply(Reply::failure(client(), &f)),
        };
        let Some(provider) = provider else {
            return Decision::AwaitProvider;
        };
        return Decision::Reply(login::start(ctx, provider, req, client(), start));
    }
    if let Err(failure) = csrf::check(config, req) {
        return Decision::Reply(Reply::failure(client(), &failure));
    }
    let jar = req.cookies();
    let session = sessions
        .open(&config.keys, &config.cookie.name, &jar)
        .and_then(|s| s.check(now, &config.session).map(|upkeep| (s, upkeep)));
    if path == config.session_path {
        return Decision::Reply(endpoints::session_info(
            config,
            session.map(|(s, _)| Session::clone(&s)),
        ));
    }
    if path == config.logout_path {
        if session.is_ok() && provider.is_none() {
            return Decision::AwaitProvider;
        }
        let session = session.map(|(s, _)| Session::clone(&s));
        return match endpoints::logout(config, provider, req, session) {
            Ok(plan) => Decision::Logout(Box::new(plan)),
            Err(failure) => Decision::Reply(Reply::failure(client(), &failure)),
        };
    }
    let settled = match session {
        Ok((session, Upkeep::None)) => forward(config, req, &jar, &session, Vec::new(), now),
        Ok((session, Upkeep::Rewrite)) => {
            let mut session = Session::clone(&session);
            session.last_seen = now;
            rewritten(ctx, req, &jar, session)
        }
        Ok((session, Upkeep::Refresh)) => {
            match (provider, session.refresh_token.as_ref()) {
                (Some(provider), Some(rt)) => match refresh_request(config, provider, &session) {
                    Some(request) => {
                        return Decision::Refresh(Box::new(RefreshNeeded {
                            id: RefreshId::of(rt),
                            session: Session::clone(&session),
                            request,
                        }))
                    }
                    None => forward(config, req, &jar, &session, Vec::new(), now),
                },
                // Metadata not known yet: use the token while it lasts.
                _ if now < session.access_expires_at => {
                    forward(config, req, &jar, &session, Vec::new(), now)
                }
                _ => return Decision::AwaitProvider,
            }
        }
        Err(reason) => match provider {
            Some(provider) => unauthenticated(ctx, provider, req, &jar, reason),
            // Only a login needs the metadata; an API call gets its 401 at once.
            None if logs_in(req) => return Decision::AwaitProvider,
            None => Settled::Reply(no_session(config, &jar, reason)),
        },
    };
    settled.into()
}

impl From<Settled> for Decision {
    fn from(settled: Settled) -> Decision {
        match settled {
            Settled::PassThrough => Decision::PassThrough,
            Settled::Forward(f) => Decision::Forward(f),
            Settled::Reply(r) => Decision::Reply(r),
        }
    }
}

/// Carries out a refresh's outcome for a request of that session.
pub fn after_refresh(
    ctx: &mut Ctx,
    provider: &Provider,
    req: &Request,
    session: &Session,
    outcome: &Outcome,
) -> Settled {
    let config = ctx.config;
    let jar = req.cookies();
    match outcome {
        Outcome::Renewed(sealed) => {
            match Session::open_sealed(&config.keys, &config.cookie.name, sealed.as_bytes()) {
                Ok(renewed) => rewritten(ctx, req, &jar, renewed),
                Err(reason) => unauthenticated(ctx, provider, req, &jar, reason),
            }
        }
        Outcome::Ended => unauthenticated(ctx, provider, req, &jar, NoSession::Expired),
        // The IdP is down: go on with the current token while it is valid.
        Outcome::Unavailable if ctx.now < session.access_expires_at => {
            forward(config, req, &jar, session, Vec::new(), ctx.now)
        }
        Outcome::Unavailable => {
            Settled::Reply(Reply::failure(client_of(req), &Failure::IdpUnavailable))
        }
    }
}

pub fn client_of(req: &Request) -> Client {
    if req.is_navigation() {
        Client::Navigation
    } else {
        Client::Api
    }
}

/// Whether a request without a session is sent to log in (rather than answered 401).
fn logs_in(req: &Request) -> bool {
    client_of(req) == Client::Navigation && req.is_get_or_head()
}

/// Sends an authenticated request upstream: the token, the claim headers, no filter cookie;
/// unless an authorization rule denies it or asks for a stronger or fresher login.
fn forward(
    config: &Config,
    req: &Request,
    jar: &Jar,
    session: &Session,
    set_cookies: Vec<String>,
    now: u64,
) -> Settled {
    let path = path_of(req.path);
    let needs_claims = !config.claim_headers.is_empty() || rules::applies(&config.rules, path);
    let claims = if needs_claims {
        session.claims()
    } else {
        Default::default()
    };
    let refused = match rules::check(&config.rules, path, &claims, now) {
        Verdict::Allowed => None,
        Verdict::Forbidden => Some(Reply::failure(client_of(req), &Failure::Forbidden)),
        Verdict::StepUp {
            acr_values,
            max_age,
        } => Some(step_up(
            config,
            &StepUpWatch::of(config, req),
            acr_values.as_deref(),
            max_age,
        )),
    };
    if let Some(reply) = refused {
        return Settled::Reply(set_cookies.into_iter().fold(reply, Reply::with_cookie));
    }
    let extra = config
        .claim_headers
        .iter()
        .map(|(claim, header)| (header.clone(), claims.get(claim).and_then(header_value)))
        .collect();
    Settled::Forward(Forward {
        token_header: Some((
            config.upstream_token.name.clone(),
            config.upstream_token.value(&session.access_token),
        )),
        cookie: jar.without_own(&config.cookie.name),
        set_cookies,
        extra,
        step_up_watch: config
            .upstream_step_up
            .then(|| StepUpWatch::of(config, req)),
    })
}

/// The session's login is too weak or too old for this path: a page load goes to the login
/// endpoint with what the rule asks for (and comes back here); an API call gets 401 with that
/// login URL for the SPA to follow.
fn step_up(
    config: &Config,
    watch: &StepUpWatch,
    acr_values: Option<&str>,
    max_age: Option<u64>,
) -> Reply {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("return_to", &watch.return_to);
    if let Some(acr) = acr_values {
        query.append_pair("acr_values", acr);
    }
    if let Some(age) = max_age {
        query.append_pair("max_age", &age.to_string());
    }
    let login_url = format!("{}?{}", config.login_path, query.finish());
    if watch.navigation {
        Reply::redirect(&login_url).counting(Counter::StepUps)
    } else {
        Reply::failure(Client::Api, &Failure::StepUpRequired { login_url })
    }
}

/// A claim as a header value: strings as they are, lists joined with commas, other values
/// as JSON; nothing that could not stand in a header.
fn header_value(claim: &serde_json::Value) -> Option<String> {
    let text = match claim {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        serde_json::Value::Null => return None,
        other => other.to_string(),
    };
    (!text.chars().any(|c| c.is_control()) && text.len() <= 4096).then_some(text)
}

/// A request the filter does not guard: untouched, but for identity headers a client sent
/// under the names the filter uses for claims (the upstream may trust those names).
fn pass_through(config: &Config, req: &Request) -> Decision {
    let forged: Vec<(String, Option<String>)> = config
        .claim_headers
        .iter()
        .filter(|(_, header)| req.header(header).is_some())
        .map(|(_, header)| (header.clone(), None))
        .collect();
    if forged.is_empty() {
        return Decision::PassThrough;
    }
    Decision::Forward(Forward {
        token_header: None,
        cookie: None,
        set_cookies: Vec::new(),
        extra: forged,
        step_up_watch: None,
    })
}

/// Forwards with the session re-written on the response (sealed with the current key).
fn rewritten(ctx: &mut Ctx, req: &Request, jar: &Jar, session: Session) -> Settled {
    let config = ctx.config;
    match session.write(&config.keys, &config.cookie, jar, ctx.rng) {
        Ok(cookies) => forward(config, req, jar, &session, cookies, ctx.now),
        // Could not seal: the current cookie still works, so forward without re-writing.
        Err(_) => forward(config, req, jar, &session, Vec::new(), ctx.now),
    }
}

/// No usable session: a navigation logs in (back to this page), anything else gets 401. A
/// session cookie that is there but dead is deleted on the way.
fn unauthenticated(
    ctx: &mut Ctx,
    provider: &Provider,
    req: &Request,
    jar: &Jar,
    reason: NoSession,
) -> Settled {
    let config = ctx.config;
    if !logs_in(req) {
        return Settled::Reply(no_session(config, jar, reason));
    }
    // Come back to this very page after login, if it is a path we can safely return to.
    let return_to = safe_return_to(req.path)
        .map(str::to_string)
        .unwrap_or_else(|_| config.post_login_url.clone());
    let start = LoginStart {
        return_to,
        forwarded: Vec::new(),
    };
    let reply = login::start(ctx, provider, req, Client::Navigation, start);
    Settled::Reply(dead_cookies_cleared(config, jar, reason, reply))
}

/// The API's 401 without a session.
fn no_session(config: &Config, jar: &Jar, reason: NoSession) -> Reply {
    let reply = Reply::failure(
        Client::Api,
        &Failure::Unauthenticated {
            login_url: config.login_path.clone(),
        },
    );
    dead_cookies_cleared(config, jar, reason, reply)
}

/// A session cookie that was sent but is dead goes with the reply.
fn dead_cookies_cleared(config: &Config, jar: &Jar, reason: NoSession, reply: Reply) -> Reply {
    match reason {
        NoSession::Absent => reply,
        _ => Session::clear(&config.cookie, jar)
            .into_iter()
            .fold(reply, Reply::with_cookie),
    }
}

/// The login endpoint's query: `return_to` (a checked relative path, or the configured
/// default) and the parameters it forwards to the IdP.
fn login_start(config: &Config, path_and_query: &str) -> Result<LoginStart, Failure> {
    let query = query_of(path_and_query).unwrap_or("");
    let forwarded =
        auth_params::forwarded(query, &config.login_params).map_err(Failure::BadLoginParameter)?;
    Ok(LoginStart {
        return_to: login_return_to(config, query)?,
        forwarded,
    })
}

/// `?return_to=` on the login endpoint: a checked relative path, or the configured default.
fn login_return_to(config: &Config, query: &str) -> Result<String, Failure> {
    let mut found = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
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
        decide(&mut ctx, req, &mut SessionCache::new(0))
    }

    fn decide_on(config: &Config, h: &[(String, String)], now: u64) -> Decision {
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
            refresh_token: None,
            subject: "alice".into(),
            created: 900,
            last_seen: 900,
            id_token: None,
            sid: "sid-1".into(),
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
            id_token: None,
            sid: "sid-1".into(),
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
            Decision::from(after_refresh(&mut ctx, &p, &req, &old, outcome))
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
        assert_eq!(f.cookie.as_deref(), Some(&b"theme=dark"[..]));

        let d = decide_on(
            &c,
            &get("/private", &[API, CSRF, ("cookie", &session_cookie(2000))]),
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
        s.id_token = Some(Secret::new(crate::oidc::id_token::test_signer::sign(
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
        s.id_token = Some(Secret::new(crate::oidc::id_token::test_signer::sign(
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
            Some("/private/login?return_to=%2Fprivate%2Frefund%3Fid%3D7&acr_values=urn%3Aexample%3Amfa")
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
}

/// The authenticated path as the wasm shell runs it (the host's header buffer read in place,
/// the decision with a warm session cache), in a loop for callgrind on the native build:
/// `N=3000 valgrind --tool=callgrind target/release/deps/envoy_bff-<hash> --ignored
/// hot_path_loop` (build with `CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=1
/// cargo test --release --no-run` for symbols); two values of N give the cost per request.
#[cfg(test)]
mod hotpath_profile {
    use super::tests::*;
    use super::*;
    use crate::config::tests::{config_from, minimal_json};
    use crate::oidc::discovery::test_provider;
    use crate::random::CountingRandom;

    #[test]
    #[ignore]
    fn hot_path_loop() {
        let c = config_from(minimal_json());
        let provider = test_provider();
        let cookie = session_cookie(2000);
        let owned = get(
            "/private/bench",
            &[
                API,
                CSRF,
                ("accept", "application/json"),
                ("cookie", &cookie),
                ("user-agent", "wrk"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "0123456789abcdef0123456789abcdef"),
            ],
        );
        let list: Vec<(&str, &[u8])> = owned
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let raw = crate::header_map::serialize(&list);
        let mut cache = SessionCache::new(1024);
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let mut forwarded = 0;
        for _ in 0..n {
            let pairs = crate::header_map::parse(&raw);
            let req = Request::from_wire(&pairs);
            let mut ctx = Ctx {
                config: &c,
                provider: Some(&provider),
                keys: None,
                now: 1000,
                rng: &mut CountingRandom(3),
            };
            let d = decide(&mut ctx, &req, &mut cache);
            if matches!(d, Decision::Forward(_)) {
                forwarded += 1;
            }
        }
        assert_eq!(forwarded, n);
    }
}
