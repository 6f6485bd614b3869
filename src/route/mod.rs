//! The decision for every request: one pure function over the request's facts. The engine
//! carries the decision out (DESIGN.md, "What the filter does with a request").

use crate::access_log::{decision, AccessLog, Who};
use crate::bearer;
use crate::config::Config;
use crate::csrf;
use crate::ctx::Ctx;
use crate::endpoints::{self, LogoutPlan};
use crate::login::{self, CodeExchange, LoginStart};
use crate::metrics::Counter;
use crate::oidc::discovery::Provider;
use crate::oidc::idp_request::IdpRequest;
use crate::oidc::{auth_params, challenge, dpop};
use crate::policy::Policy;
use crate::refresh::grant::refresh_request;
use crate::refresh::single_flight::Seen;
use crate::refresh::{Outcome, RefreshId};
use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::rules::{self, Verdict};
use crate::secret::Secret;
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
    /// Pause the request and push its login's authorization request (RFC 9126) first.
    PushAuthorization(Box<login::PushedLogin>),
    /// The provider's metadata is needed and not known yet: pause until it is (bounded).
    AwaitProvider,
    /// The access token is due: refresh it first (once per session across workers).
    Refresh(Box<RefreshNeeded>),
    /// Revoke the refresh token (if the plan says so), then answer.
    Logout(Box<LogoutPlan>),
    /// Forward with the filter's own client token (`client` and `session_or_client`
    /// prefixes), which the engine keeps: at once, or once it is fetched.
    ClientToken(Box<Forward>),
    /// The IdP's back-channel logout: the answer needs the request's body.
    ReadBody,
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

impl Settled {
    /// What the access log says of this request; nothing for a pass-through.
    pub fn access_log(&self) -> Option<&AccessLog> {
        match self {
            Settled::PassThrough => None,
            Settled::Forward(forward) => Some(&forward.access_log),
            Settled::Reply(reply) => Some(&reply.access_log),
        }
    }

    pub fn access_log_mut(&mut self) -> Option<&mut AccessLog> {
        match self {
            Settled::PassThrough => None,
            Settled::Forward(forward) => Some(&mut forward.access_log),
            Settled::Reply(reply) => Some(&mut reply.access_log),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// The token header to set; `None` leaves the request's own (a bearer client's, or
    /// none: an anonymous request's token header is in `extra` as removed).
    pub token_header: Option<(String, String)>,
    pub cookie: UpstreamCookie,
    /// `Set-Cookie` headers for the response (a re-written session).
    pub set_cookies: Vec<String>,
    /// Other request headers to set (`Some`) or remove (`None`): claim headers, and any
    /// client-sent header of those names.
    pub extra: Vec<(String, Option<String>)>,
    /// With `upstream_step_up` on: how to answer the API's RFC 9470 challenge, if it sends one.
    pub step_up_watch: Option<StepUpWatch>,
    /// The stat this request counts toward (none on the session path: it is the common case).
    pub counter: Option<Counter>,
    /// With DPoP: the proof the request needs, signed by the engine as it goes on.
    pub dpop: Option<Box<ProofFor>>,
    /// What the access log says of it.
    pub access_log: AccessLog,
}

/// What a DPoP proof for a forwarded request names (RFC 9449 §7.1).
#[derive(Debug, PartialEq, Eq)]
pub struct ProofFor {
    pub htm: String,
    pub htu: String,
    /// The access token the request carries (`ath`).
    pub token: Secret,
}

impl ProofFor {
    fn of(config: &Config, req: &Request, token: &Secret) -> Option<Box<ProofFor>> {
        config.dpop.as_ref()?;
        Some(Box::new(ProofFor {
            htm: req.method.to_string(),
            htu: dpop::htu(req.scheme, req.authority, req.path),
            token: token.clone(),
        }))
    }
}

impl Forward {
    /// The forward with this token header (in place of whatever edit of it there was).
    pub fn with_token(mut self, config: &Config, token: &Secret) -> Forward {
        let header = &config.upstream_token;
        self.extra.retain(|(name, _)| *name != header.name);
        self.token_header = Some((header.name.clone(), header.value(token)));
        if let Some(proof) = self.dpop.as_mut() {
            proof.token = token.clone();
        }
        self
    }
}

/// What becomes of the request's `Cookie` header.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamCookie {
    Untouched,
    /// Replaced: every cookie but the filter's own.
    Set(Vec<u8>),
    /// Removed: there were only the filter's own.
    Removed,
}

impl UpstreamCookie {
    /// The request's cookies without the filter's own.
    fn without_own(config: &Config, jar: &Jar) -> UpstreamCookie {
        match jar.without_own(&config.cookie.name) {
            Some(kept) => UpstreamCookie::Set(kept),
            None => UpstreamCookie::Removed,
        }
    }
}

/// What turning an API's step-up challenge into a login needs to know of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpWatch {
    /// Where the login comes back to: this request's path, if safe to return to.
    return_to: String,
    /// A page load (sent to log in) rather than an API call (told to).
    navigation: bool,
    /// Who the request was made as, for the access log (with `access_log` on).
    who: Option<Box<Who>>,
}

impl StepUpWatch {
    fn of(config: &Config, req: &Request, who: Option<&Who>) -> StepUpWatch {
        StepUpWatch {
            return_to: safe_return_to(req.path)
                .unwrap_or(&config.post_login_url)
                .to_string(),
            navigation: logs_in(req),
            who: who.cloned().map(Box::new),
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
    let reply = step_up(config, watch, c.acr_values.as_deref(), c.max_age);
    Some(match watch.who.as_deref() {
        Some(who) => reply.made_by(who.clone()),
        None => reply,
    })
}

#[derive(Debug)]
pub struct RefreshNeeded {
    pub id: RefreshId,
    pub session: Session,
    pub request: IdpRequest,
    /// Where the claim saw room for the outcome (set by the engine when its claim wins).
    pub seen: Seen,
}

/// The bearer token a request is to be authenticated by: on a prefix that takes bearer
/// tokens, `Authorization: Bearer` and no session cookie (a cookie means a browser: its
/// session decides, whatever else the request carries).
pub fn bearer_token<'r>(config: &Config, req: &Request<'r>) -> Option<&'r str> {
    if !config.policies.take_bearer() {
        return None;
    }
    let path = path_of(req.path);
    if !is_under(path, &config.prefix) || !config.policies.for_path(path).bearer {
        return None;
    }
    // The filter's own endpoints are the browser's, whatever the request carries.
    let endpoints = [
        config.login_path.as_str(),
        &config.session_path,
        &config.logout_path,
        &config.backchannel_logout_path,
        config.callback_path(),
    ];
    if endpoints.contains(&path) || config.jwks_path.as_deref() == Some(path) {
        return None;
    }
    let token = bearer::token_of(req.header("authorization")?)?;
    let jar = req.cookies();
    Session::sealed_in(&config.cookie.name, &jar)
        .is_err()
        .then_some(token)
}

/// Decides what to do with a request, remembering opened sessions in `sessions` (the engine
/// keeps one per VM; `SessionCache::new(0)` remembers nothing). `verified_bearer`: what
/// `jwt_authn` left in the metadata, read by the engine when [`bearer_token`] finds a token.
pub fn decide(
    ctx: &mut Ctx,
    req: &Request,
    verified_bearer: Option<&[u8]>,
    sessions: &mut SessionCache,
) -> Decision {
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
    if !is_under(path, &config.prefix) {
        return pass_through(config, req);
    }
    let policy = config.policies.for_path(path).policy;
    if policy == Policy::None {
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
        return login::start(ctx, provider, req, client(), start).into();
    }
    // The IdP's server-to-server call: no cookie, no CSRF header; the logout token in the
    // form body authenticates it (OIDC Back-Channel Logout 1.0 §2.5).
    if path == config.backchannel_logout_path {
        if req.method != "POST" {
            return Decision::Reply(Reply::failure(Client::Api, &Failure::MethodNotAllowed));
        }
        return Decision::ReadBody;
    }
    // The filter's public key, for IdPs that read the client's `jwks_uri` (private_key_jwt).
    if config.jwks_path.as_deref() == Some(path) {
        return Decision::Reply(endpoints::client_jwks(config, req.method));
    }
    if let Some(token) = bearer_token(config, req) {
        return bearer_forward(config, req, token, verified_bearer, now).into();
    }
    let jar = req.cookies();
    if policy == Policy::Client {
        let mut forward = anonymous(config, &jar, NoSession::Absent);
        forward.dpop = ProofFor::of(config, req, &Secret::new(""));
        return Decision::ClientToken(Box::new(forward));
    }
    // A session cookie is what cross-site requests abuse: without one (where a session is
    // optional) there is nothing to protect.
    let cookie_sent =
        policy == Policy::Session || Session::sealed_in(&config.cookie.name, &jar).is_ok();
    if cookie_sent {
        if let Err(failure) = csrf::check(config, req) {
            return Decision::Reply(Reply::failure(client(), &failure));
        }
    }
    // What needs the session's second part (its claims, the ID token, the refresh token)
    // decrypts it with the first when the session is not in the cache.
    let whole =
        || needs_claims(config, path) || path == config.session_path || path == config.logout_path;
    let session = sessions
        .open(&config.keys, &config.cookie.name, &jar, whole)
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
            let refresh_token = match session.cold(&config.keys, &config.cookie.name) {
                Ok(cold) => cold.refresh_token.as_ref(),
                Err(reason) => return no_usable_session(ctx, provider, req, &jar, reason),
            };
            match (provider, refresh_token) {
                (Some(provider), Some(rt)) => match refresh_request(config, provider, &session) {
                    Some(request) => {
                        return Decision::Refresh(Box::new(RefreshNeeded {
                            id: RefreshId::of(rt).in_ring(config.refresh_result_slots),
                            session: Session::clone(&session),
                            request,
                            seen: Seen::Unknown,
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
        Err(reason) => return no_usable_session(ctx, provider, req, &jar, reason),
    };
    settled.into()
}

/// No session, or a dead one: on `optional` and `session_or_client` prefixes the request goes
/// on without a user; elsewhere a navigation logs in and an API call gets 401.
fn no_usable_session(
    ctx: &mut Ctx,
    provider: Option<&Provider>,
    req: &Request,
    jar: &Jar,
    reason: NoSession,
) -> Decision {
    let config = ctx.config;
    let path = path_of(req.path);
    let policy = config.policies.for_path(path).policy;
    // Rules need an identity: a path they cover is never served anonymously.
    if policy != Policy::Session && !rules::applies(&config.rules, path) {
        let forward = anonymous(config, jar, reason);
        return match policy {
            Policy::SessionOrClient => {
                let mut forward = forward;
                // Its token, and the proof's `ath`, come with the client token.
                forward.dpop = ProofFor::of(config, req, &Secret::new(""));
                Decision::ClientToken(Box::new(forward))
            }
            _ => Decision::Forward(forward),
        };
    }
    match provider {
        Some(provider) => unauthenticated(ctx, provider, req, jar, reason),
        // Only a login needs the metadata; an API call gets its 401 at once.
        None if logs_in(req) => Decision::AwaitProvider,
        None => Decision::Reply(no_session(config, req, jar, reason)),
    }
}

/// A bearer client's request: the claims `jwt_authn` verified go through the same rules and
/// claim headers as a session's; the token goes upstream as it came.
fn bearer_forward(
    config: &Config,
    req: &Request,
    token: &str,
    verified: Option<&[u8]>,
    now: u64,
) -> Settled {
    let path = path_of(req.path);
    let refused = |failure: Failure| Settled::Reply(Reply::failure(Client::Api, &failure));
    let claims = match bearer::verified_claims(token, verified, now) {
        Ok(claims) => claims,
        Err(e) => return refused(Failure::BearerRefused(e)),
    };
    match rules::check(&config.rules, path, &claims, now) {
        Verdict::Allowed => {}
        Verdict::Forbidden => return refused(Failure::Forbidden),
        // No login to send a bearer client to: say what it lacks (RFC 9470 §3).
        Verdict::StepUp {
            acr_values,
            max_age,
        } => {
            return refused(Failure::BearerStepUp {
                acr_values,
                max_age,
            })
        }
    }
    let token_header = &config.upstream_token.name;
    Settled::Forward(Forward {
        token_header: (token_header != "authorization").then(|| {
            (
                token_header.clone(),
                config.upstream_token.value(&Secret::new(token)),
            )
        }),
        cookie: UpstreamCookie::without_own(config, &req.cookies()),
        set_cookies: Vec::new(),
        extra: claim_header_edits(config, &claims),
        step_up_watch: None,
        counter: Some(Counter::BearerOk),
        dpop: None,
        access_log: AccessLog::new(
            decision::BEARER,
            claims
                .get("sub")
                .and_then(|s| s.as_str())
                .filter(|_| config.access_log)
                .map(Who::of_bearer),
        ),
    })
}

/// A request that goes on without a user (`optional`, or the client token's forward): no
/// token or identity header of the client's, no filter cookie; a dead session cookie is
/// deleted on the response.
fn anonymous(config: &Config, jar: &Jar, reason: NoSession) -> Forward {
    let mut extra: Vec<(String, Option<String>)> = config
        .claim_headers
        .iter()
        .map(|(_, header)| (header.clone(), None))
        .collect();
    extra.push((config.upstream_token.name.clone(), None));
    let set_cookies = match reason {
        NoSession::Absent => Vec::new(),
        _ => Session::clear(&config.cookie, jar),
    };
    Forward {
        token_header: None,
        cookie: UpstreamCookie::without_own(config, jar),
        set_cookies,
        extra,
        step_up_watch: None,
        counter: Some(Counter::Anonymous),
        dpop: None,
        access_log: AccessLog::new(decision::ANONYMOUS, None),
    }
}

/// Claim headers from `claims`: set where the claim is there, removed where not (a client
/// may have sent one).
fn claim_header_edits(
    config: &Config,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Vec<(String, Option<String>)> {
    config
        .claim_headers
        .iter()
        .map(|(claim, header)| (header.clone(), claims.get(claim).and_then(header_value)))
        .collect()
}

impl From<login::Started> for Decision {
    fn from(started: login::Started) -> Decision {
        match started {
            login::Started::Redirect(reply) => Decision::Reply(reply),
            login::Started::Push(pushed) => Decision::PushAuthorization(pushed),
        }
    }
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
) -> Decision {
    let config = ctx.config;
    let jar = req.cookies();
    match outcome {
        Outcome::Renewed(sealed) => {
            match Session::open_sealed(&config.keys, &config.cookie.name, sealed.as_bytes()) {
                Ok(renewed) => match rewritten(ctx, req, &jar, renewed) {
                    Settled::Forward(mut forward) => {
                        forward.access_log.decision = decision::REFRESHED;
                        Decision::Forward(forward)
                    }
                    other => other.into(),
                },
                Err(reason) => no_usable_session(ctx, Some(provider), req, &jar, reason),
            }
        }
        Outcome::Ended => no_usable_session(ctx, Some(provider), req, &jar, NoSession::Expired),
        // Lost the race: the current token, the cookie as it is.
        Outcome::Superseded { until } if ctx.now < *until => {
            forward(config, req, &jar, session, Vec::new(), ctx.now).into()
        }
        Outcome::Superseded { .. } => {
            no_usable_session(ctx, Some(provider), req, &jar, NoSession::Expired)
        }
        // The IdP is down: go on with the current token while it is valid.
        Outcome::Unavailable if ctx.now < session.access_expires_at => {
            forward(config, req, &jar, session, Vec::new(), ctx.now).into()
        }
        Outcome::Unavailable => {
            Decision::Reply(Reply::failure(client_of(req), &Failure::IdpUnavailable))
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

/// Whether a request on `path` goes by the user's claims (claim headers, or a rule over it).
fn needs_claims(config: &Config, path: &str) -> bool {
    !config.claim_headers.is_empty() || rules::applies(&config.rules, path)
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
    // Only built when it is written: the authenticated path pays nothing for it otherwise.
    let who = config.access_log.then(|| Who::of_session(session));
    let claims = if needs_claims(config, path) {
        match session.cold(&config.keys, &config.cookie.name) {
            Ok(cold) => cold.claims(),
            // The second part did not open (see `Session::cold`): no claims to go by.
            Err(_) => {
                let login_url = config.login_path.clone();
                let failure = Failure::Unauthenticated { login_url };
                return Settled::Reply(Reply::failure(client_of(req), &failure));
            }
        }
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
            &StepUpWatch::of(config, req, who.as_ref()),
            acr_values.as_deref(),
            max_age,
        )),
    };
    if let Some(reply) = refused {
        let reply = match who {
            Some(who) => reply.made_by(who),
            None => reply,
        };
        return Settled::Reply(set_cookies.into_iter().fold(reply, Reply::with_cookie));
    }
    Settled::Forward(Forward {
        token_header: Some((
            config.upstream_token.name.clone(),
            config.upstream_token.value(&session.access_token),
        )),
        cookie: UpstreamCookie::without_own(config, jar),
        set_cookies,
        extra: claim_header_edits(config, &claims),
        step_up_watch: config
            .upstream_step_up
            .then(|| StepUpWatch::of(config, req, who.as_ref())),
        counter: None,
        dpop: ProofFor::of(config, req, &session.access_token),
        access_log: AccessLog::new(decision::AUTHENTICATED, who),
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
        Reply::redirect(&login_url)
            .counting(Counter::StepUps)
            .logged(decision::STEP_UP)
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
        cookie: UpstreamCookie::Untouched,
        set_cookies: Vec::new(),
        extra: forged,
        step_up_watch: None,
        counter: None,
        dpop: None,
        // Not the filter's request: nothing in the access log, as for a plain pass-through.
        access_log: AccessLog::default(),
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
) -> Decision {
    let config = ctx.config;
    if !logs_in(req) {
        return Decision::Reply(no_session(config, req, jar, reason));
    }
    // Come back to this very page after login, if it is a path we can safely return to.
    let return_to = safe_return_to(req.path)
        .map(str::to_string)
        .unwrap_or_else(|_| config.post_login_url.clone());
    let start = LoginStart {
        return_to,
        forwarded: Vec::new(),
    };
    let started = login::start(ctx, provider, req, Client::Navigation, start);
    let cleared = match reason {
        NoSession::Absent => Vec::new(),
        _ => Session::clear(&config.cookie, jar),
    };
    cleared
        .into_iter()
        .fold(started, login::Started::with_cookie)
        .into()
}

/// The API's 401 without a session (saying so to a bearer client the prefix does not take).
fn no_session(config: &Config, req: &Request, jar: &Jar, reason: NoSession) -> Reply {
    let bearer_sent = reason == NoSession::Absent
        && req
            .header("authorization")
            .and_then(bearer::token_of)
            .is_some();
    let failure = if bearer_sent {
        Failure::BearerNotAccepted
    } else {
        Failure::Unauthenticated {
            login_url: config.login_path.clone(),
        }
    };
    let reply = Reply::failure(Client::Api, &failure);
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
mod policy_tests;
#[cfg(test)]
pub(crate) mod tests;

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
            let d = decide(&mut ctx, &req, None, &mut cache);
            if matches!(d, Decision::Forward(_)) {
                forwarded += 1;
            }
        }
        assert_eq!(forwarded, n);
    }
}
