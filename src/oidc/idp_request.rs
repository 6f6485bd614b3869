//! A request to the IdP, built by the protocol code and sent by the shell.

use crate::url::AbsoluteUrl;

/// An HTTP request to the IdP, ready for `dispatch_http_call`.
#[derive(Debug, Clone)]
pub struct IdpRequest {
    pub method: &'static str,
    /// The absolute URL (DPoP's `htu` is made from it); empty for the store's calls.
    pub url: String,
    pub path: String,
    pub authority: String,
    /// Regular headers; the shell adds the pseudo-headers.
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
    /// The client's credentials go with it, added when it is sent
    /// ([`super::client_auth::ClientAuth::authenticate`]): token and revocation endpoints.
    pub authenticate: bool,
}

impl IdpRequest {
    /// A `GET` for a JSON document (discovery, JWKS).
    pub fn get_json(url: &AbsoluteUrl, authority: &str) -> IdpRequest {
        IdpRequest {
            method: "GET",
            url: url.to_string(),
            path: url.path_and_query.clone(),
            authority: authority.to_string(),
            headers: vec![("accept", "application/json".to_string())],
            body: None,
            authenticate: false,
        }
    }

    /// A form `POST` with the client's credentials (token, revocation endpoints).
    pub fn client_post(url: &AbsoluteUrl, authority: &str, form: String) -> IdpRequest {
        IdpRequest {
            method: "POST",
            url: url.to_string(),
            path: url.path_and_query.clone(),
            authority: authority.to_string(),
            headers: vec![
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("accept", "application/json".to_string()),
            ],
            body: Some(form),
            authenticate: true,
        }
    }
}

/// The IdP's answer to an [`IdpRequest`]: its status (`None` when the call failed, timed out or
/// could not be sent) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpAnswer {
    pub status: Option<u16>,
    pub body: Vec<u8>,
    /// A `DPoP-Nonce` header (RFC 9449 §8): the nonce the IdP wants in the next proof.
    pub dpop_nonce: Option<String>,
}

impl IdpAnswer {
    /// An answer with this status and body (tests across the crate).
    #[cfg(test)]
    pub fn of(status: u16, body: &str) -> IdpAnswer {
        IdpAnswer {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            dpop_nonce: None,
        }
    }

    /// The call never got an answer.
    pub fn none() -> IdpAnswer {
        IdpAnswer {
            status: None,
            body: Vec::new(),
            dpop_nonce: None,
        }
    }
}
