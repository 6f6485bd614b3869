//! The login flow: start it (authorization request), take the callback, and finish it with
//! the token endpoint's answer.

use crate::access_log::{decision, Who};
use crate::config::{Config, RedirectUri};
use crate::ctx::Ctx;
use crate::metrics::Counter;
use crate::oidc::auth_params;
use crate::oidc::authorize::{authorization_params, authorization_url};
use crate::oidc::callback::{self, AuthorizationResponse};
use crate::oidc::discovery::Provider;
use crate::oidc::id_token::{self, Binding, IdTokenError};
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::oidc::jws::JwsError;
use crate::oidc::par;
use crate::oidc::token;
use crate::random;
use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::session::contents::{Cold, ColdFields};
use crate::session::cookie::{self, Jar};
use crate::session::kept_id_token::KeptIdToken;
use crate::session::{LoginTransaction, Session, TransactionError};
use crate::url::{query_of, AbsoluteUrl};

/// What a login is started with: where the browser returns afterwards, and the parameters the
/// SPA forwarded through the login endpoint (none for a login a page load started).
#[derive(Debug, Default)]
pub struct LoginStart {
    pub return_to: String,
    pub forwarded: Vec<(String, String)>,
}

/// A callback that checked out: the token request to send, and what to finish the login with.
#[derive(Debug)]
pub struct CodeExchange {
    pub request: IdpRequest,
    pub pending: PendingLogin,
}

/// A login paused while the token endpoint answers.
#[derive(Debug)]
pub struct PendingLogin {
    tx: LoginTransaction,
    tx_cookie: String,
    client: Client,
    /// The callback's cookies: a new session must delete chunks an old one left.
    cookie_header: Option<Vec<u8>>,
}

impl PendingLogin {
    pub fn client(&self) -> Client {
        self.client
    }
}

/// A started login: the redirect to the IdP at once, or first its authorization request pushed.
#[derive(Debug)]
pub enum Started {
    Redirect(Reply),
    Push(Box<PushedLogin>),
}

impl Started {
    /// Adds a `Set-Cookie` to the browser's answer (a dead session's deletion).
    pub fn with_cookie(self, set_cookie: String) -> Started {
        match self {
            Started::Redirect(reply) => Started::Redirect(reply.with_cookie(set_cookie)),
            Started::Push(mut pushed) => {
                pushed.cookies.push(set_cookie);
                Started::Push(pushed)
            }
        }
    }
}

/// A login whose authorization request is pushed first (RFC 9126): the call, and what the
/// browser gets once the IdP answers with a `request_uri` ([`pushed`]).
#[derive(Debug)]
pub struct PushedLogin {
    pub request: IdpRequest,
    authorization_endpoint: AbsoluteUrl,
    /// `Set-Cookie` values for the browser's answer: the transaction cookie first.
    cookies: Vec<String>,
    client: Client,
}

impl PushedLogin {
    pub fn client(&self) -> Client {
        self.client
    }
}

/// The browser's answer once the pushed request was answered: to the authorization endpoint
/// with `client_id` and `request_uri` only, or the failure (also returned for the log; the
/// transaction cookie is not set).
pub fn pushed(config: &Config, login: PushedLogin, answer: &IdpAnswer) -> (Reply, Option<Failure>) {
    match par::parse_response(answer) {
        Ok(request_uri) => {
            let location = par::authorization_url(
                &login.authorization_endpoint,
                &config.client_id,
                &request_uri,
            );
            let reply = login
                .cookies
                .into_iter()
                .fold(Reply::redirect(&location), Reply::with_cookie)
                .counting(Counter::LoginsStarted)
                .logged(decision::LOGIN_STARTED);
            (reply, None)
        }
        Err(e) => {
            let failure = Failure::PushedRequest(e);
            (Reply::failure(login.client, &failure), Some(failure))
        }
    }
}

/// How a login ends once the token endpoint has answered.
#[derive(Debug)]
pub enum Finish {
    /// The session (or the failure, also returned for the log) and the reply.
    Done(Reply, Option<Failure>),
    /// The ID token names a signing key we do not have: read the JWKS again, then retry.
    UnknownKey,
}

/// Starts the authorization-code flow: a new transaction cookie and a redirect to the IdP, its
/// authorization request pushed first when the IdP requires it or the configuration says so.
pub fn start(
    ctx: &mut Ctx,
    provider: &Provider,
    req: &Request,
    client: Client,
    start: LoginStart,
) -> Started {
    match try_start(ctx, provider, req, client, start) {
        Ok(started) => started,
        Err(failure) => Started::Redirect(Reply::failure(client, &failure)),
    }
}

fn try_start(
    ctx: &mut Ctx,
    provider: &Provider,
    req: &Request,
    client: Client,
    start: LoginStart,
) -> Result<Started, Failure> {
    let (config, now, rng) = (ctx.config, ctx.now, &mut *ctx.rng);
    if !provider.fapi2_lacks.is_empty() {
        return Err(Failure::NotFapi2(provider.fapi2_lacks.join(", ")));
    }
    let push = config.pushed_authorization_requests || provider.par_required;
    let par_endpoint = match (push, &provider.par_endpoint) {
        (false, _) => None,
        (true, Some(endpoint)) => Some(endpoint),
        (true, None) => return Err(Failure::PushedRequest(par::ParError::NoEndpoint)),
    };
    let redirect_uri = redirect_uri(config, req)?;
    let mut tx = LoginTransaction::begin(rng, start.return_to, redirect_uri, now)
        .map_err(|_| Failure::Internal("no randomness for the login"))?;
    let forwarded = |name: &str| {
        start
            .forwarded
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    tx.silent = forwarded("prompt").is_some_and(|p| p.split(' ').any(|p| p == "none"));
    tx.acr_values = forwarded("acr_values").map(str::to_string);
    let (name, value) = tx
        .seal(&config.keys, &config.cookie.name, rng)
        .map_err(|_| Failure::Internal("could not seal the login transaction"))?;
    let extra = auth_params::extra(&config.auth_params, &start.forwarded, &config.resources);
    let tx_cookie = cookie::set_cookie(
        &config.cookie,
        &name,
        &value,
        Some(config.cookie.transaction_max_age),
    );
    if let Some(endpoint) = par_endpoint {
        let form = authorization_params(&config.client_id, &config.scope, &tx, &extra);
        return Ok(Started::Push(Box::new(PushedLogin {
            request: par::request(endpoint, config.idp_authority_for(endpoint), form),
            authorization_endpoint: provider.authorization_endpoint.clone(),
            cookies: vec![tx_cookie],
            client,
        })));
    }
    let location = authorization_url(
        &provider.authorization_endpoint,
        &config.client_id,
        &config.scope,
        &tx,
        &extra,
    );
    Ok(Started::Redirect(
        Reply::redirect(&location)
            .counting(Counter::LoginsStarted)
            .logged(decision::LOGIN_STARTED)
            .with_cookie(tx_cookie),
    ))
}

/// The absolute redirect URI for this request.
fn redirect_uri(config: &Config, req: &Request) -> Result<String, Failure> {
    match &config.redirect_uri {
        RedirectUri::Absolute(url) => Ok(url.to_string()),
        RedirectUri::Path { path, .. } => {
            let origin = req
                .browser_origin(config.trust_forwarded)
                .ok_or(Failure::BadHost)?;
            Ok(format!("{origin}{path}"))
        }
    }
}

/// Takes the IdP's redirect back: checks it against the transaction cookie and builds the
/// token request. Any failure is already a reply (and deletes a transaction cookie it found).
pub fn callback(
    config: &Config,
    provider: &Provider,
    req: &Request,
    client: Client,
    now: u64,
) -> Result<CodeExchange, Reply> {
    let response = callback::parse(query_of(req.path))
        .map_err(|e| Reply::failure(client, &Failure::BadCallback(e)))?;
    let cookies = req.cookies();
    let open = |state: &str| {
        LoginTransaction::open(
            &config.keys,
            &config.cookie.name,
            &cookies,
            state,
            now,
            config.cookie.transaction_max_age,
        )
    };
    let forget = |reply: Reply, state: &str| {
        // The transaction is single-use: whatever happened, drop its cookie.
        let name = LoginTransaction::cookie_name(&config.cookie.name, state);
        if cookies.find(&name).is_some() {
            reply.with_cookie(cookie::delete_cookie(&config.cookie, &name))
        } else {
            reply
        }
    };
    match response {
        AuthorizationResponse::Error {
            error,
            description,
            state,
        } => {
            // A silent login (prompt=none) that the IdP could not complete goes back to the
            // SPA with the IdP's error code (OIDC Core §3.1.2.6: login_required, ...).
            if let Some(tx) = state.as_deref().and_then(|s| open(s).ok()) {
                if tx.silent {
                    let back = with_query_param(&tx.return_to, "login_error", &error);
                    let logged = Failure::IdpRefused {
                        error,
                        description: None,
                    }
                    .code();
                    let reply = Reply::redirect(&back)
                        .counting(Counter::CallbacksFailed)
                        .logged(logged);
                    return Err(forget(reply, &tx.state));
                }
            }
            let reply = Reply::failure(client, &Failure::IdpRefused { error, description });
            Err(match state {
                Some(s) => forget(reply, &s),
                None => reply,
            })
        }
        AuthorizationResponse::Code { code, state, iss } => {
            let tx = open(&state).map_err(|e| {
                let failure = match e {
                    TransactionError::StateMismatch => Failure::StateMismatch,
                    TransactionError::Missing
                    | TransactionError::Invalid
                    | TransactionError::Expired => Failure::LoginExpired,
                };
                forget(Reply::failure(client, &failure), &state)
            })?;
            // RFC 9207 §2.4: when the IdP names itself, it must be the one we started with;
            // when it announces that it always does, a response without `iss` is refused.
            let iss_ok = match iss.as_deref() {
                Some(i) => i == config.issuer,
                None => !provider.iss_parameter_supported,
            };
            if !iss_ok {
                return Err(forget(
                    Reply::failure(client, &Failure::IssuerMismatch),
                    &state,
                ));
            }
            let request = IdpRequest::client_post(
                &provider.token_endpoint,
                config.idp_authority_for(&provider.token_endpoint),
                token::authorization_code_body(
                    &code,
                    &tx.redirect_uri,
                    tx.verifier.secret(),
                    &config.resources,
                ),
            );
            Ok(CodeExchange {
                request,
                pending: PendingLogin {
                    tx_cookie: LoginTransaction::cookie_name(&config.cookie.name, &state),
                    tx,
                    client,
                    cookie_header: req.cookie_header().map(<[u8]>::to_vec),
                },
            })
        }
    }
}

/// `url` with `name=value` added to its query (`value` form-encoded).
fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let joiner = if base.contains('?') { '&' } else { '?' };
    let pair = form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .finish();
    match fragment {
        Some(f) => format!("{base}{joiner}{pair}#{f}"),
        None => format!("{base}{joiner}{pair}"),
    }
}

/// Finishes the login with the token endpoint's answer: a session cookie and a redirect to
/// where the user was going.
pub fn finish(
    ctx: &mut Ctx,
    provider: &Provider,
    pending: &PendingLogin,
    answer: &IdpAnswer,
) -> Finish {
    match try_finish(ctx, provider, pending, answer) {
        Ok((session_cookies, who)) => {
            let mut reply = Reply::redirect(&pending.tx.return_to)
                .counting(Counter::CallbacksOk)
                .logged(decision::CALLBACK_OK)
                .made_by(who)
                .with_cookie(cookie::delete_cookie(
                    &ctx.config.cookie,
                    &pending.tx_cookie,
                ));
            for c in session_cookies {
                reply = reply.with_cookie(c);
            }
            Finish::Done(reply, None)
        }
        Err(Failure::IdToken(e)) if e.is_unknown_key() => Finish::UnknownKey,
        Err(failure) => Finish::Done(failed(ctx.config, pending, &failure), Some(failure)),
    }
}

/// The reply for a login that failed: the error, and the transaction cookie dropped.
pub fn failed(config: &Config, pending: &PendingLogin, failure: &Failure) -> Reply {
    Reply::failure(pending.client, failure)
        .with_cookie(cookie::delete_cookie(&config.cookie, &pending.tx_cookie))
}

/// The failure when the ID token's key stays unknown: with keys in hand the token really is
/// signed by a stranger; without any, the IdP's JWKS could not be read.
pub fn unknown_key_failure(have_keys: bool) -> Failure {
    if have_keys {
        Failure::IdToken(IdTokenError::Signature(JwsError::UnknownKey))
    } else {
        Failure::IdpUnavailable
    }
}

fn try_finish(
    ctx: &mut Ctx,
    provider: &Provider,
    pending: &PendingLogin,
    answer: &IdpAnswer,
) -> Result<(Vec<String>, Who), Failure> {
    let config = ctx.config;
    let now = ctx.now;
    let tokens = token::parse_for(answer.status, &answer.body, config.dpop.is_some())
        .map_err(Failure::TokenExchange)?;
    let id_token = tokens.id_token.as_ref().ok_or(Failure::NoIdToken)?;
    let id_token = id_token::open(ctx, id_token.expose()).map_err(Failure::IdToken)?;
    let claims = id_token::check(ctx, provider, &id_token, Binding::Nonce(&pending.tx.nonce))
        .map_err(Failure::IdToken)?;
    if let Some(asked) = &pending.tx.acr_values {
        let acr = claims.all.get("acr").and_then(|a| a.as_str());
        if !acr.is_some_and(|acr| asked.split(' ').any(|v| v == acr)) {
            return Err(Failure::AcrNotMet);
        }
    }
    let session = Session {
        access_token: tokens.access_token,
        access_expires_at: now.saturating_add(
            tokens
                .expires_in
                .unwrap_or(token::DEFAULT_ACCESS_TOKEN_LIFETIME_S),
        ),
        subject: claims.subject,
        created: now,
        last_seen: now,
        sid: random::token(ctx.rng, 16)
            .map_err(|_| Failure::Internal("no randomness for the session"))?,
        idp_sid: claims
            .all
            .get("sid")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        cold: Cold::Open(ColdFields {
            refresh_token: tokens.refresh_token,
            id_token: Some(KeptIdToken::new(&id_token)),
        }),
    };
    let cookies = session
        .write(
            &config.keys,
            &config.cookie,
            &Jar::parse(pending.cookie_header.as_deref()),
            ctx.rng,
        )
        .map_err(|_| Failure::Internal("could not seal the session"))?;
    Ok((cookies, Who::of_session(&session)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json};
    use crate::oidc::discovery::test_provider;
    use crate::oidc::id_token::test_signer;
    use crate::random::CountingRandom;
    use crate::route::tests::decide_at;
    use crate::route::tests::{get, NAV};
    use crate::route::Decision;
    use crate::session::KeyRing;
    use serde_json::json;

    /// Starts a login and returns (state, nonce, cookie header carrying the transaction).
    fn started(config: &Config) -> (String, String, String) {
        started_at(config, "/private/login?return_to=/app")
    }

    /// Starts a login at `path` and returns (state, nonce, cookie header with the transaction).
    fn started_at(config: &Config, path: &str) -> (String, String, String) {
        let h = get(path, &[NAV]);
        let Decision::Reply(r) = decide_at(
            config,
            Some(&test_provider()),
            &Request::from_headers(&h),
            1000,
            &mut CountingRandom(5),
        ) else {
            panic!()
        };
        let location = r.header("location").unwrap();
        let q: Vec<(String, String)> =
            form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
                .into_owned()
                .collect();
        let get_q = |k: &str| q.iter().find(|(n, _)| n == k).unwrap().1.clone();
        let set_cookie = r.cookies().next().unwrap();
        let pair = set_cookie.split(';').next().unwrap().to_string();
        (get_q("state"), get_q("nonce"), pair)
    }

    const ISS: &str = "http%3A%2F%2F127.0.0.1%3A9000";

    fn callback_at(config: &Config, query: &str, cookie: &str) -> Result<CodeExchange, Reply> {
        let h = get(
            &format!("/private/callback?{query}"),
            &[NAV, ("cookie", cookie)],
        );
        callback(
            config,
            &test_provider(),
            &Request::from_headers(&h),
            Client::Navigation,
            1010,
        )
    }

    fn id_token(nonce: &str) -> String {
        test_signer::sign(
            &json!({"iss": "http://127.0.0.1:9000", "aud": "bff", "sub": "alice", "exp": 5000, "iat": 1000, "nonce": nonce, "name": "Alice"}),
        )
    }

    /// [`finish`] at 1010 with the test provider and these keys.
    fn finish_at(
        c: &Config,
        keys: Option<&crate::oidc::jwks::Jwks>,
        pending: &PendingLogin,
        status: Option<u16>,
        body: &[u8],
    ) -> Finish {
        let provider = test_provider();
        let mut ctx = Ctx {
            config: c,
            provider: Some(&provider),
            keys,
            now: 1010,
            rng: &mut CountingRandom(1),
        };
        let answer = IdpAnswer {
            status,
            body: body.to_vec(),
            dpop_nonce: None,
        };
        finish(&mut ctx, &provider, pending, &answer)
    }

    fn finish_with(
        c: &Config,
        pending: &PendingLogin,
        status: Option<u16>,
        body: &[u8],
    ) -> (Reply, Option<Failure>) {
        let keys = test_signer::jwks();
        match finish_at(c, Some(&keys), pending, status, body) {
            Finish::Done(reply, failure) => (reply, failure),
            Finish::UnknownKey => panic!("unknown key"),
        }
    }

    #[test]
    fn the_whole_flow() {
        let c = config_from(minimal_json());
        let (state, nonce, cookie) = started(&c);
        let exchange = callback_at(
            &c,
            &format!("code=the-code&state={state}&iss=http%3A%2F%2F127.0.0.1%3A9000"),
            &cookie,
        )
        .unwrap();
        assert_eq!(exchange.request.path, "/token");
        assert_eq!(exchange.request.authority, "127.0.0.1:9000");
        assert!(exchange.request.body.as_deref().unwrap_or("").starts_with("grant_type=authorization_code&code=the-code&redirect_uri=http%3A%2F%2Fapp.local%3A8080%2Fprivate%2Fcallback&code_verifier="));
        assert!(exchange.request.authenticate);

        let body = json!({"access_token": "AT", "token_type": "Bearer", "expires_in": 300, "id_token": id_token(&nonce)});
        let (r, failure) = finish_with(
            &c,
            &exchange.pending,
            Some(200),
            body.to_string().as_bytes(),
        );
        assert_eq!(failure, None);
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some("/app"));
        let cookies: Vec<&str> = r.cookies().collect();
        assert!(
            cookies[0].starts_with("__Host-bff-session.tx.") && cookies[0].contains("Max-Age=0")
        );
        assert!(cookies[1].starts_with("__Host-bff-session=v2."));
        assert!(cookies[1].ends_with("; Path=/; HttpOnly; Secure; SameSite=Lax"));
        let header = cookies[1].split(';').next().unwrap();
        let keys = KeyRing::from_base64_list(crate::config::tests::KEY_A).unwrap();
        let s = Session::open(
            &keys,
            "__Host-bff-session",
            &Jar::parse(Some(header.as_bytes())),
        )
        .unwrap();
        assert_eq!(s.access_token.expose(), "AT");
        assert_eq!(s.access_expires_at, 1310);
        assert_eq!(s.subject, "alice");
        assert_eq!((s.created, s.last_seen), (1010, 1010));
        assert_eq!(s.opened().claims().get("name"), Some(&json!("Alice")));
        assert_eq!(s.opened().claims().get("nonce"), None);
        assert_eq!(s.sid.len(), 22);
    }

    fn encrypting_config() -> Config {
        let mut v = minimal_json();
        v["id_token_encryption"] = json!({
            "alg": "RSA-OAEP-256", "enc": "A256GCM",
            "keys": [{"value": include_str!("../tests/fixtures/keys/rsa-2048.pem"), "kid": "enc-1"}]
        });
        config_from(v)
    }

    fn encrypted(token: &str, kid: &str) -> String {
        use rsa::pkcs8::DecodePrivateKey;
        let key =
            rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("../tests/fixtures/keys/rsa-2048.pem"))
                .unwrap();
        crate::oidc::jwe::test_encrypt::rsa_oaep_256_a256gcm(token, &key.to_public_key(), kid)
    }

    #[test]
    fn an_encrypted_id_token_is_decrypted_checked_and_kept_as_the_signed_token() {
        let c = encrypting_config();
        let (state, nonce, cookie) = started(&c);
        let exchange =
            callback_at(&c, &format!("code=x&state={state}&iss={ISS}"), &cookie).unwrap();
        let signed = id_token(&nonce);
        let body = json!({"access_token": "AT", "token_type": "Bearer",
                          "id_token": encrypted(&signed, "enc-1")});
        let (r, failure) = finish_with(
            &c,
            &exchange.pending,
            Some(200),
            body.to_string().as_bytes(),
        );
        assert_eq!(failure, None);
        assert_eq!(r.status, 302);
        let header = r
            .cookies()
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let s = Session::open(
            &c.keys,
            "__Host-bff-session",
            &Jar::parse(Some(header.as_bytes())),
        )
        .unwrap();
        assert_eq!(s.opened().claims().get("name"), Some(&json!("Alice")));
        assert_eq!(
            s.opened().id_token.as_ref().unwrap().compact().expose(),
            signed
        );
    }

    #[test]
    fn with_encryption_configured_a_plain_or_foreign_id_token_is_refused() {
        use crate::oidc::jwe::JweError;
        let c = encrypting_config();
        for (token, why) in [
            (None, JweError::NotEncrypted),
            (Some("someone-else"), JweError::UnknownKey),
        ] {
            let (state, nonce, cookie) = started(&c);
            let exchange =
                callback_at(&c, &format!("code=x&state={state}&iss={ISS}"), &cookie).unwrap();
            let id_token = match token {
                None => id_token(&nonce),
                Some(kid) => encrypted(&id_token(&nonce), kid),
            };
            let body = json!({"access_token": "AT", "token_type": "Bearer", "id_token": id_token});
            let (r, failure) = finish_with(
                &c,
                &exchange.pending,
                Some(200),
                body.to_string().as_bytes(),
            );
            assert_eq!(
                failure,
                Some(Failure::IdToken(IdTokenError::Encryption(why)))
            );
            assert_eq!(r.status, 401);
            assert!(r.body.contains("id_token_invalid"), "{}", r.body);
        }
    }

    #[test]
    fn a_silent_login_the_idp_cannot_complete_goes_back_to_the_spa() {
        let c = config_from(minimal_json());
        let (state, _, cookie) =
            started_at(&c, "/private/login?return_to=%2Fapp%3Ftab%3D2&prompt=none");
        let back = callback_at(
            &c,
            &format!("error=login_required&error_description=x&state={state}"),
            &cookie,
        )
        .err()
        .unwrap();
        assert_eq!(back.status, 302);
        assert_eq!(
            back.header("location"),
            Some("/app?tab=2&login_error=login_required")
        );
        assert!(back
            .cookies()
            .any(|c| c.contains(".tx.") && c.contains("Max-Age=0")));
        assert_eq!(back.counter, Some(Counter::CallbacksFailed));
        // A login that was not silent gets the error page, as before.
        let (state, _, cookie) = started(&c);
        let refused = callback_at(&c, &format!("error=login_required&state={state}"), &cookie)
            .err()
            .unwrap();
        assert_eq!(refused.status, 401);
        // Without its transaction cookie a forged "silent" error cannot redirect anywhere.
        let (state, _, _) = started_at(&c, "/private/login?prompt=none");
        let forged = callback_at(&c, &format!("error=login_required&state={state}"), "")
            .err()
            .unwrap();
        assert_eq!(forged.status, 401);
    }

    #[test]
    fn a_login_that_asked_for_an_acr_fails_without_it() {
        let c = config_from(minimal_json());
        let token_with = |nonce: &str, acr: &str| {
            let t = test_signer::sign(&json!({"iss": "http://127.0.0.1:9000", "aud": "bff",
                "sub": "alice", "exp": 5000, "iat": 1000, "nonce": nonce, "acr": acr}));
            json!({"access_token": "AT", "token_type": "Bearer", "id_token": t}).to_string()
        };
        for (acr, status) in [("urn:example:pwd", 403), ("urn:example:hw", 302)] {
            let (state, nonce, cookie) = started_at(
                &c,
                "/private/login?acr_values=urn%3Aexample%3Amfa+urn%3Aexample%3Ahw",
            );
            let exchange =
                callback_at(&c, &format!("code=x&state={state}&iss={ISS}"), &cookie).unwrap();
            let body = token_with(&nonce, acr);
            let (r, failure) = finish_with(&c, &exchange.pending, Some(200), body.as_bytes());
            assert_eq!(r.status, status, "{acr}");
            if status == 403 {
                assert_eq!(failure, Some(Failure::AcrNotMet));
                assert!(r.cookies().all(|c| !c.starts_with("__Host-bff-session=")));
            }
        }
    }

    #[test]
    fn query_parameters_are_added_before_the_fragment() {
        assert_eq!(with_query_param("/a", "e", "x y"), "/a?e=x+y");
        assert_eq!(with_query_param("/a?b=1#f", "e", "x"), "/a?b=1&e=x#f");
    }

    #[test]
    fn callback_rejections() {
        let c = config_from(minimal_json());
        let (state, _, cookie) = started(&c);
        let status = |q: &str, ck: &str| callback_at(&c, q, ck).err().map(|r| r.status);
        assert_eq!(
            status(&format!("code=x&state={state}"), ""),
            Some(400),
            "no transaction cookie"
        );
        assert_eq!(
            status("code=x&state=forged", &cookie),
            Some(400),
            "forged state"
        );
        assert_eq!(
            status(&format!("state={state}"), &cookie),
            Some(400),
            "no code"
        );
        assert_eq!(
            status(
                &format!("code=x&state={state}&iss=http%3A%2F%2Fevil"),
                &cookie
            ),
            Some(400),
            "mix-up"
        );
        assert_eq!(
            status(&format!("code=x&state={state}"), &cookie),
            Some(400),
            "no iss although the IdP announces it (RFC 9207)"
        );
        let denied = callback_at(&c, &format!("error=access_denied&state={state}"), &cookie)
            .err()
            .unwrap();
        assert_eq!(denied.status, 401);
        assert!(denied.body.contains("access_denied"));
        assert!(
            denied
                .cookies()
                .any(|c| c.contains(".tx.") && c.contains("Max-Age=0")),
            "transaction dropped"
        );
    }

    #[test]
    fn token_endpoint_failures() {
        let c = config_from(minimal_json());
        let cases: Vec<(Option<u16>, String, u16)> = vec![
            // Reset with no answer (e.g. over Envoy's async buffer limit), and Envoy's timeout.
            (None, String::new(), 502),
            (Some(504), "upstream request timeout".into(), 504),
            (Some(500), "oops".into(), 502),
            (Some(400), r#"{"error":"invalid_grant"}"#.into(), 502),
            (Some(200), "garbage".into(), 502),
            (Some(200), json!({"access_token": "AT", "token_type": "Bearer"}).to_string(), 502),
            (Some(200), json!({"access_token": "AT", "token_type": "Bearer", "id_token": id_token("wrong")}).to_string(), 401),
        ];
        for (status, body, want) in cases {
            let (state, _, cookie) = started(&c);
            let exchange =
                callback_at(&c, &format!("code=x&state={state}&iss={ISS}"), &cookie).unwrap();
            let (r, failure) = finish_with(&c, &exchange.pending, status, body.as_bytes());
            assert_eq!(r.status, want, "{status:?} {body}");
            assert_eq!(failure.map(|f| f.status()), Some(want));
            assert!(!r.body.contains("AT"), "no token in errors");
            assert!(
                r.cookies().all(|c| !c.starts_with("__Host-bff-session=")),
                "no session"
            );
        }
    }

    #[test]
    fn an_unknown_signing_key_asks_for_fresh_keys() {
        let c = config_from(minimal_json());
        let (state, nonce, cookie) = started(&c);
        let exchange =
            callback_at(&c, &format!("code=x&state={state}&iss={ISS}"), &cookie).unwrap();
        let rotated = test_signer::sign_with_header(
            &json!({"alg": "RS256", "kid": "next-key"}),
            &json!({"iss": "http://127.0.0.1:9000", "aud": "bff", "sub": "alice", "exp": 5000, "nonce": nonce}),
        );
        let body =
            json!({"access_token": "AT", "token_type": "Bearer", "id_token": rotated}).to_string();
        let keys = test_signer::jwks();
        let outcome = finish_at(
            &c,
            Some(&keys),
            &exchange.pending,
            Some(200),
            body.as_bytes(),
        );
        assert!(matches!(outcome, Finish::UnknownKey));
        let outcome = finish_at(&c, None, &exchange.pending, Some(200), body.as_bytes());
        assert!(matches!(outcome, Finish::UnknownKey), "no keys yet");
        assert_eq!(unknown_key_failure(true).status(), 401);
        assert_eq!(unknown_key_failure(false).status(), 503);
    }

    #[test]
    fn forwarded_headers_only_when_trusted() {
        let h = get(
            "/private/login",
            &[
                NAV,
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example.com, lb"),
            ],
        );
        let req = Request::from_headers(&h);
        let c = config_from(minimal_json());
        assert_eq!(
            redirect_uri(&c, &req).unwrap(),
            "http://app.local:8080/private/callback"
        );
        let mut v = minimal_json();
        v["trust_forwarded_headers"] = json!(true);
        let c = config_from(v);
        assert_eq!(
            redirect_uri(&c, &req).unwrap(),
            "https://app.example.com/private/callback"
        );
        let h = get("/private/login", &[NAV, ("x-forwarded-host", "evil/\"><")]);
        assert_eq!(
            redirect_uri(&c, &Request::from_headers(&h)),
            Err(Failure::BadHost)
        );
        let mut v = minimal_json();
        v["redirect_uri"] = json!("https://bff.example.com/private/callback");
        assert_eq!(
            redirect_uri(&config_from(v), &req).unwrap(),
            "https://bff.example.com/private/callback"
        );
    }
}
