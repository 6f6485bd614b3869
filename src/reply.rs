//! Every answer the filter gives itself (redirects and errors), and the one place where a
//! failure becomes a status code and a message.

use crate::access_log::{AccessLog, Who};
use crate::bearer::BearerError;
use crate::metrics::Counter;
use crate::oidc::auth_params::BadForward;
use crate::oidc::callback::CallbackError;
use crate::oidc::id_token::IdTokenError;
use crate::oidc::par::ParError;
use crate::oidc::token::TokenError;
use serde_json::json;

/// Who asked: a browser navigation gets an HTML page, anything else JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Navigation,
    Api,
}

/// A complete local response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The stat this answer counts toward.
    pub counter: Option<Counter>,
    /// What the access log says of it (a failure's is its code).
    pub access_log: AccessLog,
}

impl Reply {
    pub fn redirect(location: &str) -> Reply {
        Reply {
            status: 302,
            headers: vec![
                ("location".into(), location.into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: String::new(),
            counter: None,
            access_log: AccessLog::default(),
        }
    }

    /// A JSON answer (the session endpoint, a logout by `fetch`).
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: body.to_string(),
            counter: None,
            access_log: AccessLog::default(),
        }
    }

    pub fn counting(mut self, counter: Counter) -> Reply {
        self.counter = Some(counter);
        self
    }

    /// The decision the access log shows (an [`crate::access_log::decision`] word).
    pub fn logged(mut self, decision: &'static str) -> Reply {
        self.access_log.decision = decision;
        self
    }

    /// Who the access log shows the answer was for.
    pub fn made_by(mut self, who: Who) -> Reply {
        self.access_log.who = Some(Box::new(who));
        self
    }

    pub fn with_cookie(mut self, set_cookie: String) -> Reply {
        self.headers.push(("set-cookie".into(), set_cookie));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn cookies(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
    }

    /// Every request while the configuration was refused: fail closed, never pass.
    pub fn unconfigured() -> Reply {
        Reply::failure(
            Client::Api,
            &Failure::Internal("the bff filter is not configured"),
        )
    }

    /// A request that arrived while the VM's engine was busy (Envoy called back into the VM
    /// from inside the engine's own host call: never seen, but never a panic).
    pub fn engine_busy() -> Reply {
        Reply::failure(Client::Api, &Failure::Internal("request state busy"))
    }

    /// The answer for a failure, shaped for the client.
    pub fn failure(client: Client, failure: &Failure) -> Reply {
        let status = failure.status();
        let message = failure.message();
        let (content_type, body) = match client {
            Client::Api => {
                let mut body = json!({"error": failure.code(), "message": message});
                if let Failure::Unauthenticated { login_url }
                | Failure::StepUpRequired { login_url } = failure
                {
                    if let Some(fields) = body.as_object_mut() {
                        fields.insert("login".into(), json!(login_url));
                    }
                }
                ("application/json", body.to_string())
            }
            Client::Navigation => (
                "text/html; charset=utf-8",
                error_page(status, failure, &message),
            ),
        };
        let mut headers = vec![
            ("content-type".to_string(), content_type.to_string()),
            ("cache-control".to_string(), "no-store".to_string()),
        ];
        if status == 503 {
            headers.push(("retry-after".to_string(), "5".to_string()));
        }
        if let Some(challenge) = failure.www_authenticate() {
            headers.push(("www-authenticate".to_string(), challenge));
        }
        Reply {
            status,
            headers,
            body,
            counter: failure.counter(),
            access_log: AccessLog::new(failure.code(), None),
        }
    }
}

fn error_page(status: u16, failure: &Failure, message: &str) -> String {
    let retry = match failure {
        Failure::Unauthenticated { login_url } | Failure::StepUpRequired { login_url } => {
            login_url.as_str()
        }
        _ => "/",
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {code}</title></head>\
         <body><h1>Sign-in problem</h1><p>{msg}</p><p><a href=\"{href}\">Continue</a></p></body></html>\n",
        code = failure.code(),
        msg = html_escape(message),
        href = html_escape(retry),
    )
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Everything that can stop a request from going through. Messages never contain tokens,
/// codes or secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An API call without a valid session.
    Unauthenticated {
        login_url: String,
    },
    /// An API call whose session's login is too weak or too old for it (a rule's `acr` or
    /// `max_auth_age_s`): log in again at `login_url`.
    StepUpRequired {
        login_url: String,
    },
    /// `return_to` is not a same-origin relative path.
    UnsafeReturnTo,
    /// A parameter the login endpoint forwards is repeated, too long, or has a control character.
    BadLoginParameter(BadForward),
    /// The Host or X-Forwarded-Host header cannot form a redirect URI.
    BadHost,
    BadCallback(CallbackError),
    /// No login transaction for the callback's state: expired, used, or another browser's.
    LoginExpired,
    StateMismatch,
    /// RFC 9207: the callback's `iss` names another issuer (mix-up attack).
    IssuerMismatch,
    IdpRefused {
        error: String,
        description: Option<String>,
    },
    TokenExchange(TokenError),
    /// The pushed authorization request (RFC 9126) gave no `request_uri`.
    PushedRequest(ParError),
    /// `profile: "fapi2"` and the IdP's discovery lacks these.
    NotFapi2(String),
    NoIdToken,
    IdToken(IdTokenError),
    /// The login asked for `acr_values` and the ID token's `acr` is none of them.
    AcrNotMet,
    /// `dispatch_http_call` was refused (e.g. unknown cluster).
    IdpUnavailable,
    /// Randomness or sealing failed.
    Internal(&'static str),
    /// An API call without the CSRF header, or from an origin that may not call.
    Csrf,
    /// The session's claims do not satisfy an authorization rule.
    Forbidden,
    /// A logout link without this session's `sid` (perhaps from another site).
    LogoutForbidden,
    /// A bearer token on a prefix that takes bearer tokens, not verified or not usable.
    BearerRefused(BearerError),
    /// A bearer token (and no session) on a prefix that takes sessions only.
    BearerNotAccepted,
    /// The endpoint takes another method (the back-channel logout: `POST`).
    MethodNotAllowed,
    /// A bearer token whose login is too weak or too old for a rule (RFC 9470 §3).
    BearerStepUp {
        acr_values: Option<String>,
        max_age: Option<u64>,
    },
}

impl Failure {
    /// The stat a failure counts toward, where one does.
    pub fn counter(&self) -> Option<Counter> {
        match self {
            Failure::Unauthenticated { .. } => Some(Counter::Unauthenticated),
            Failure::StepUpRequired { .. } => Some(Counter::StepUps),
            Failure::Csrf => Some(Counter::CsrfRejected),
            Failure::Forbidden => Some(Counter::Forbidden),
            Failure::BearerRefused(_)
            | Failure::BearerNotAccepted
            | Failure::BearerStepUp { .. } => Some(Counter::BearerRefused),
            Failure::BadCallback(_)
            | Failure::LoginExpired
            | Failure::StateMismatch
            | Failure::IssuerMismatch
            | Failure::IdpRefused { .. }
            | Failure::TokenExchange(_)
            | Failure::NoIdToken
            | Failure::IdToken(_)
            | Failure::AcrNotMet => Some(Counter::CallbacksFailed),
            _ => None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Failure::Unauthenticated { .. }
            | Failure::StepUpRequired { .. }
            | Failure::IdpRefused { .. }
            | Failure::IdToken(_)
            | Failure::BearerRefused(_)
            | Failure::BearerNotAccepted
            | Failure::BearerStepUp { .. } => 401,
            Failure::MethodNotAllowed => 405,
            Failure::UnsafeReturnTo
            | Failure::BadLoginParameter(_)
            | Failure::BadHost
            | Failure::BadCallback(_)
            | Failure::LoginExpired
            | Failure::StateMismatch
            | Failure::IssuerMismatch => 400,
            Failure::TokenExchange(TokenError::Unreachable)
            | Failure::PushedRequest(ParError::Unreachable) => 504,
            Failure::TokenExchange(_)
            | Failure::NoIdToken
            | Failure::PushedRequest(_)
            | Failure::NotFapi2(_) => 502,
            Failure::IdpUnavailable => 503,
            Failure::Internal(_) => 500,
            Failure::Csrf | Failure::Forbidden | Failure::LogoutForbidden | Failure::AcrNotMet => {
                403
            }
        }
    }

    /// A stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Unauthenticated { .. } => "unauthenticated",
            Failure::StepUpRequired { .. } => "step_up_required",
            Failure::UnsafeReturnTo => "invalid_return_to",
            Failure::BadLoginParameter(_) => "invalid_login_parameter",
            Failure::BadHost => "invalid_host",
            Failure::BadCallback(_) => "invalid_callback",
            Failure::LoginExpired => "login_expired",
            Failure::StateMismatch => "state_mismatch",
            Failure::IssuerMismatch => "issuer_mismatch",
            Failure::IdpRefused { .. } => "login_refused",
            Failure::TokenExchange(TokenError::Unreachable)
            | Failure::PushedRequest(ParError::Unreachable) => "idp_timeout",
            Failure::PushedRequest(_) => "par_failed",
            Failure::NotFapi2(_) => "idp_not_fapi2",
            Failure::TokenExchange(_) | Failure::NoIdToken => "token_exchange_failed",
            Failure::IdToken(_) => "id_token_invalid",
            Failure::AcrNotMet => "insufficient_authentication",
            Failure::IdpUnavailable => "idp_unavailable",
            Failure::Internal(_) => "internal_error",
            Failure::Csrf => "csrf",
            Failure::Forbidden => "forbidden",
            Failure::LogoutForbidden => "logout_forbidden",
            // RFC 6750 §3.1 and RFC 9470 §3 error codes, as the WWW-Authenticate header says.
            Failure::BearerRefused(_) => "invalid_token",
            Failure::BearerNotAccepted => "bearer_not_accepted",
            Failure::MethodNotAllowed => "method_not_allowed",
            Failure::BearerStepUp { .. } => "insufficient_user_authentication",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Unauthenticated { .. } => "Log in first.".into(),
            Failure::StepUpRequired { .. } => {
                "This needs a stronger or more recent login; log in again.".into()
            }
            Failure::UnsafeReturnTo => "return_to must be a relative path on this site.".into(),
            Failure::BadLoginParameter(bad) => format!("The login parameter {bad}."),
            Failure::BadHost => "The request's host cannot be used for the login redirect.".into(),
            Failure::BadCallback(e) => format!("Invalid login callback: {e}."),
            Failure::LoginExpired => {
                "No login is in progress for this callback (it expired, was already used, or \
                 started in another browser). Start the login again."
                    .into()
            }
            Failure::StateMismatch => {
                "The login callback does not match the login in progress.".into()
            }
            Failure::IssuerMismatch => {
                "The login callback comes from another identity provider.".into()
            }
            Failure::IdpRefused { error, description } => match description {
                Some(d) if !d.is_empty() => {
                    format!("The identity provider refused the login: {error} ({d}).")
                }
                _ => format!("The identity provider refused the login: {error}."),
            },
            Failure::TokenExchange(e) => format!("Login could not be completed: {e}."),
            Failure::PushedRequest(e) => format!("Login could not be started: {e}."),
            Failure::NotFapi2(lacks) => format!(
                "Login could not be started: the identity provider's discovery lacks what FAPI 2.0 \
                 needs ({lacks})."
            ),
            Failure::NoIdToken => {
                "Login could not be completed: the token endpoint sent no ID token.".into()
            }
            Failure::IdToken(e) => format!("Login rejected: {e}."),
            Failure::AcrNotMet => "The identity provider did not log you in the way this needs \
                                   (the acr it reported is not one that was asked for)."
                .into(),
            Failure::IdpUnavailable => {
                "The identity provider cannot be reached; try again shortly.".into()
            }
            Failure::Internal(what) => format!("Internal error: {what}."),
            Failure::Csrf => "Cross-site request refused: API calls must come from the app \
                              (with its CSRF header, from an allowed origin)."
                .into(),
            Failure::Forbidden => "You are signed in but not allowed to see this.".into(),
            Failure::LogoutForbidden => {
                "This logout link is not for your session; use the app's logout button.".into()
            }
            Failure::BearerRefused(e) => format!("Bearer token refused: {}.", e.message()),
            Failure::BearerNotAccepted => "This path takes a session, not a bearer token.".into(),
            Failure::MethodNotAllowed => "This endpoint takes POST only.".into(),
            Failure::BearerStepUp { .. } => {
                "The bearer token's login is too weak or too old for this.".into()
            }
        }
    }

    /// The `WWW-Authenticate` challenge of a bearer failure (RFC 6750 §3, RFC 9470 §3).
    fn www_authenticate(&self) -> Option<String> {
        match self {
            Failure::BearerRefused(_) => Some("Bearer error=\"invalid_token\"".into()),
            Failure::BearerStepUp {
                acr_values,
                max_age,
            } => {
                let mut c = "Bearer error=\"insufficient_user_authentication\"".to_string();
                if let Some(acr) = acr_values {
                    c.push_str(&format!(", acr_values=\"{acr}\""));
                }
                if let Some(age) = max_age {
                    c.push_str(&format!(", max_age={age}"));
                }
                Some(c)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_failures_are_json() {
        let r = Reply::failure(
            Client::Api,
            &Failure::Unauthenticated {
                login_url: "/private/login".into(),
            },
        );
        assert_eq!(r.status, 401);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"], "unauthenticated");
        assert_eq!(v["login"], "/private/login");
    }

    #[test]
    fn navigation_failures_are_escaped_html() {
        let r = Reply::failure(
            Client::Navigation,
            &Failure::IdpRefused {
                error: "access_denied".into(),
                description: Some("<script>alert(1)</script>".into()),
            },
        );
        assert_eq!(r.status, 401);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.body.contains("access_denied"));
        assert!(r.body.contains("&lt;script&gt;"));
        assert!(!r.body.contains("<script>"));
    }

    #[test]
    fn statuses() {
        assert_eq!(
            Failure::TokenExchange(TokenError::Unreachable).status(),
            504
        );
        assert_eq!(
            Failure::TokenExchange(TokenError::Failed { status: 500 }).status(),
            502
        );
        assert_eq!(Failure::LoginExpired.status(), 400);
        let r = Reply::failure(Client::Api, &Failure::IdpUnavailable);
        assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    }
}
