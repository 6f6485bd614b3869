//! The endpoints the SPA calls: who is logged in (the session endpoint) and logout.

use crate::access_log::{decision, AccessLog, Who};
use crate::config::Config;
use crate::metrics::Counter;
use crate::oidc::client_auth::ClientAuth;
use crate::oidc::discovery::Provider;
use crate::oidc::idp_request::IdpRequest;
use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::session::deny::{DenyEntry, Ended};
use crate::session::{NoSession, Session};
use crate::url::query_of;
use serde_json::json;
use subtle::ConstantTimeEq;

/// `GET {jwks_path}`: the filter's public keys as a JWK Set (RFC 7517 §5), for IdPs that read
/// the client's `jwks_uri`: the signing key (`private_key_jwt`) and the encryption keys. Public by nature; cached a few minutes, so a rotated key is picked
/// up soon after the filter restarts with it.
pub fn client_jwks(config: &Config, method: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::failure(Client::Api, &Failure::MethodNotAllowed);
    }
    let mut keys: Vec<serde_json::Value> = match &config.client_auth {
        ClientAuth::PrivateKeyJwt { key, .. } => vec![key.published_jwk()],
        ClientAuth::SecretBasic(_) | ClientAuth::MutualTls(_) => Vec::new(),
    };
    // The keys the IdP encrypts ID tokens to (`use: enc`), every one while they rotate.
    if let Some(encryption) = &config.id_token_encryption {
        keys.extend(encryption.published.iter().cloned());
    }
    Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/jwk-set+json".into()),
            ("cache-control".into(), "public, max-age=300".into()),
        ],
        body: json!({ "keys": keys }).to_string(),
        counter: None,
        access_log: AccessLog::new(decision::JWKS, None),
    }
}

/// `GET {session_path}`: the user's claims and the session's times, never a token.
pub fn session_info(config: &Config, session: Result<Session, NoSession>) -> Reply {
    // A session whose second part does not open (see `Session::cold`) is no session here.
    let opened = session.and_then(|s| {
        let claims = s.cold(&config.keys, &config.cookie.name)?.claims();
        Ok((s, claims))
    });
    match opened {
        Ok((s, claims)) => {
            Reply::json(
                200,
                &json!({
                    "sub": s.subject,
                    // How and when the user logged in (for a step-up, OIDC Core §2): null when
                    // the IdP does not say.
                    "acr": claims.get("acr"),
                    "auth_time": claims.get("auth_time"),
                    "claims": claims,
                    "session_expires_at": s.ends_at(&config.session),
                    "access_token_expires_at": s.access_expires_at,
                    "logout_url": logout_url(config, &s),
                }),
            )
            .logged(decision::SESSION)
            .made_by(Who::of_session(&s))
        }
        Err(_) => Reply::failure(
            Client::Api,
            &Failure::Unauthenticated {
                login_url: config.login_path.clone(),
            },
        ),
    }
}

/// The link that logs this session out; only this session's pages know its `sid`.
pub fn logout_url(config: &Config, session: &Session) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("sid", &session.sid)
        .finish();
    format!("{}?{query}", config.logout_path)
}

/// A logout: revoke the refresh token at the IdP if it can, then answer.
#[derive(Debug)]
pub struct LogoutPlan {
    /// RFC 7009 revocation of the refresh token, when the IdP offers it.
    pub revoke: Option<IdpRequest>,
    /// Sent once the revocation answered (or failed): cookies cleared, off to the IdP.
    pub reply: Reply,
    /// The session ended, remembered so that a copy of its cookie stops working too.
    pub deny: Option<DenyEntry>,
}

/// `{logout_path}`: `GET` with this session's `sid` (a link or button in the SPA), or `POST`
/// with the CSRF header (already checked) from a script, which gets the IdP's logout URL as
/// JSON instead of a redirect it could not follow.
pub fn logout(
    config: &Config,
    provider: Option<&Provider>,
    req: &Request,
    session: Result<Session, NoSession>,
) -> Result<LogoutPlan, Failure> {
    let clear = Session::clear_all(&config.cookie, &req.cookies());
    let landing = post_logout_url(config, req)?;
    let session = match session {
        Ok(s) => s,
        // Nothing to end: make sure no cookie is left and go where a logout goes.
        Err(_) => {
            return Ok(LogoutPlan {
                revoke: None,
                reply: with_cookies(Reply::redirect(&landing).logged(decision::LOGOUT), clear),
                deny: None,
            })
        }
    };
    let by_script = req.method == "POST";
    if !by_script && !sid_matches(req, &session) {
        return Err(Failure::LogoutForbidden);
    }
    // A second part that does not open (see `Session::cold`): no revocation and no hint,
    // the logout goes on.
    let cold = session.cold(&config.keys, &config.cookie.name).ok();
    let revoke = provider.and_then(|p| {
        let endpoint = p.revocation_endpoint.as_ref()?;
        let token = cold?.refresh_token.as_ref()?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token.expose())
            .append_pair("token_type_hint", "refresh_token")
            .finish();
        Some(IdpRequest::client_post(
            endpoint,
            config.idp_authority_for(endpoint),
            form,
        ))
    });
    let target = match provider.and_then(|p| p.end_session_endpoint.as_ref()) {
        Some(end_session) => {
            // RP-Initiated Logout 1.0 §2: the hint names the session, client_id lets IdPs
            // that need it honour post_logout_redirect_uri.
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(hint) = cold.and_then(|c| c.id_token.as_ref()) {
                q.append_pair("id_token_hint", hint.compact().expose());
            }
            q.append_pair("post_logout_redirect_uri", &landing);
            q.append_pair("client_id", &config.client_id);
            let joiner = if end_session.path_and_query.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{end_session}{joiner}{}", q.finish())
        }
        None => landing,
    };
    let reply = if by_script {
        Reply::json(200, &json!({"redirect": target}))
    } else {
        Reply::redirect(&target)
    };
    Ok(LogoutPlan {
        revoke,
        reply: with_cookies(
            reply
                .counting(Counter::Logouts)
                .logged(decision::LOGOUT)
                .made_by(Who::of_session(&session)),
            clear,
        ),
        deny: Some(DenyEntry {
            ended: Ended::Session(session.sid.clone()),
            until: session.ends_at(&config.session),
        }),
    })
}

fn with_cookies(reply: Reply, cookies: Vec<String>) -> Reply {
    cookies.into_iter().fold(reply, Reply::with_cookie)
}

fn sid_matches(req: &Request, session: &Session) -> bool {
    let given = form_urlencoded::parse(query_of(req.path).unwrap_or("").as_bytes())
        .find(|(k, _)| k == "sid")
        .map(|(_, v)| v.into_owned());
    match given {
        Some(sid) if !session.sid.is_empty() => {
            bool::from(sid.as_bytes().ct_eq(session.sid.as_bytes()))
        }
        _ => false,
    }
}

/// Where the IdP sends the browser after logout: absolute, as RP-Initiated Logout requires.
fn post_logout_url(config: &Config, req: &Request) -> Result<String, Failure> {
    if config.post_logout_url.starts_with('/') {
        Ok(format!(
            "{}{}",
            req.browser_origin(config.trust_forwarded)
                .ok_or(Failure::BadHost)?,
            config.post_logout_url
        ))
    } else {
        Ok(config.post_logout_url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json};
    use crate::oidc::discovery::test_provider;
    use crate::oidc::id_token::test_signer;
    use crate::route::tests::{get, NAV};
    use crate::secret::Secret;
    use crate::session::contents::{Cold, ColdFields};
    use crate::session::kept_id_token::KeptIdToken;
    use crate::url::AbsoluteUrl;

    /// The session's ID token as the IdP sent it (the test signer is deterministic).
    fn id_token() -> String {
        test_signer::sign(&json!({"sub": "alice", "name": "Alice", "nonce": "n"}))
    }

    fn session() -> Session {
        Session {
            access_token: Secret::new("AT"),
            access_expires_at: 2000,
            subject: "alice".into(),
            created: 1000,
            last_seen: 1500,
            sid: "the-sid".into(),
            idp_sid: None,
            cold: Cold::Open(ColdFields {
                refresh_token: Some(Secret::new("RT")),
                id_token: Some(KeptIdToken::new(&id_token())),
            }),
        }
    }

    #[test]
    fn the_session_endpoint_tells_who_but_no_token() {
        let c = config_from(minimal_json());
        let r = session_info(&c, Ok(session()));
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["sub"], "alice");
        assert_eq!(v["claims"], json!({"sub": "alice", "name": "Alice"}));
        assert_eq!(v["session_expires_at"], 1500 + 3600);
        assert_eq!(v["access_token_expires_at"], 2000);
        assert_eq!(v["logout_url"], "/private/logout?sid=the-sid");
        assert!(!r.body.contains("AT\"") && !r.body.contains("RT") && !r.body.contains("eyJ"));
        assert_eq!(session_info(&c, Err(NoSession::Absent)).status, 401);
    }

    #[test]
    fn logout_with_the_sid_revokes_and_goes_to_the_idp() {
        let c = config_from(minimal_json());
        let mut p = test_provider();
        p.revocation_endpoint =
            Some(AbsoluteUrl::parse("http://127.0.0.1:9000/token/revocation").unwrap());
        let h = get(
            "/private/logout?sid=the-sid",
            &[
                NAV,
                (
                    "cookie",
                    "__Host-bff-session=x; __Host-bff-session.1=y; __Host-bff-session.tx.q=z",
                ),
            ],
        );
        let plan = logout(&c, Some(&p), &Request::from_headers(&h), Ok(session())).unwrap();
        let revoke = plan.revoke.unwrap();
        assert_eq!(revoke.path, "/token/revocation");
        assert_eq!(
            revoke.body.as_deref(),
            Some("token=RT&token_type_hint=refresh_token")
        );
        let r = plan.reply;
        assert_eq!(r.status, 302);
        let location = r.header("location").unwrap();
        // The hint is the token byte for byte (the session keeps it as its parts' bytes).
        let hint = format!(
            "http://127.0.0.1:9000/session/end?id_token_hint={}&",
            id_token()
        );
        assert!(location.starts_with(&hint), "{location}");
        assert!(location
            .contains("&post_logout_redirect_uri=http%3A%2F%2Fapp.local%3A8080%2F&client_id=bff"));
        let cleared: Vec<&str> = r.cookies().collect();
        assert_eq!(cleared.len(), 3, "session, chunk and login transaction");
        assert!(cleared.iter().all(|c| c.contains("Max-Age=0")));
        assert_eq!(r.counter, Some(Counter::Logouts));
    }

    #[test]
    fn logout_cannot_be_triggered_cross_site() {
        let c = config_from(minimal_json());
        for path in [
            "/private/logout",
            "/private/logout?sid=guess",
            "/private/logout?sid=",
        ] {
            let h = get(path, &[NAV]);
            assert_eq!(
                logout(
                    &c,
                    Some(&test_provider()),
                    &Request::from_headers(&h),
                    Ok(session())
                )
                .unwrap_err(),
                Failure::LogoutForbidden,
                "{path}"
            );
        }
    }

    #[test]
    fn logout_without_a_session_or_an_end_session_endpoint() {
        let c = config_from(minimal_json());
        let h = get("/private/logout", &[NAV]);
        let plan = logout(&c, None, &Request::from_headers(&h), Err(NoSession::Absent)).unwrap();
        assert!(plan.revoke.is_none());
        assert_eq!(
            plan.reply.header("location"),
            Some("http://app.local:8080/")
        );
        let mut p = test_provider();
        p.end_session_endpoint = None;
        let h = get("/private/logout?sid=the-sid", &[NAV]);
        let plan = logout(&c, Some(&p), &Request::from_headers(&h), Ok(session())).unwrap();
        assert!(plan.revoke.is_none(), "no revocation endpoint");
        assert_eq!(
            plan.reply.header("location"),
            Some("http://app.local:8080/")
        );
    }

    #[test]
    fn a_script_logs_out_by_post_and_gets_json() {
        let c = config_from(minimal_json());
        let mut h = get("/private/logout", &[("x-csrf", "1")]);
        h[0].1 = "POST".into();
        let plan = logout(
            &c,
            Some(&test_provider()),
            &Request::from_headers(&h),
            Ok(session()),
        )
        .unwrap();
        assert_eq!(plan.reply.status, 200);
        let v: serde_json::Value = serde_json::from_str(&plan.reply.body).unwrap();
        assert!(v["redirect"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:9000/session/end?"));
    }
}
