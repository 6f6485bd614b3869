//! A request to the IdP, built by the protocol code and sent by the shell.

use super::token::client_secret_basic;
use crate::secret::Secret;
use crate::url::AbsoluteUrl;

/// An HTTP request to the IdP, ready for `dispatch_http_call`.
#[derive(Debug)]
pub struct IdpRequest {
    pub method: &'static str,
    pub path: String,
    pub authority: String,
    /// Regular headers; the shell adds the pseudo-headers.
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

impl IdpRequest {
    /// A `GET` for a JSON document (discovery, JWKS).
    pub fn get_json(url: &AbsoluteUrl, authority: &str) -> IdpRequest {
        IdpRequest {
            method: "GET",
            path: url.path_and_query.clone(),
            authority: authority.to_string(),
            headers: vec![("accept", "application/json".to_string())],
            body: None,
        }
    }

    /// A form `POST` authenticated with `client_secret_basic` (token, revocation endpoints).
    pub fn client_post(
        url: &AbsoluteUrl,
        authority: &str,
        client_id: &str,
        secret: &Secret,
        form: String,
    ) -> IdpRequest {
        IdpRequest {
            method: "POST",
            path: url.path_and_query.clone(),
            authority: authority.to_string(),
            headers: vec![
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("accept", "application/json".to_string()),
                ("authorization", client_secret_basic(client_id, secret)),
            ],
            body: Some(form),
        }
    }
}

/// The IdP's answer to an [`IdpRequest`]: its status (`None` when the call failed, timed out or
/// could not be sent) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpAnswer {
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

impl IdpAnswer {
    /// An answer with this status and body (tests across the crate).
    #[cfg(test)]
    pub fn of(status: u16, body: &str) -> IdpAnswer {
        IdpAnswer {
            status: Some(status),
            body: body.as_bytes().to_vec(),
        }
    }

    /// The call never got an answer.
    pub fn none() -> IdpAnswer {
        IdpAnswer {
            status: None,
            body: Vec::new(),
        }
    }
}
