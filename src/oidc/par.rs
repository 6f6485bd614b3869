//! Pushed authorization requests (RFC 9126): the authorization request's parameters go to
//! the IdP over the back channel, authenticated as the client; the browser is sent to the
//! authorization endpoint with only `client_id` and the `request_uri` the IdP answered.

use super::idp_request::{IdpAnswer, IdpRequest};
use crate::url::AbsoluteUrl;
use serde::Deserialize;
use std::fmt;

/// Why no `request_uri` came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParError {
    /// The IdP is to be pushed to, but announces no `pushed_authorization_request_endpoint`.
    NoEndpoint,
    /// No answer in time (Envoy's local 504).
    Unreachable,
    /// Reset with no complete answer (as `TokenError::Cut`).
    Cut,
    /// A 4xx with an OAuth error code (RFC 9126 §2.3).
    Refused {
        status: u16,
        error: String,
    },
    Failed {
        status: u16,
    },
    Malformed(&'static str),
}

impl fmt::Display for ParError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParError::NoEndpoint => f.write_str(
                "the identity provider announces no pushed_authorization_request_endpoint",
            ),
            ParError::Unreachable => {
                f.write_str("the pushed authorization request endpoint did not answer in time")
            }
            ParError::Cut => f.write_str(
                "the pushed authorization request endpoint's answer broke off (a reset, or an \
                 answer over the size limit)",
            ),
            ParError::Refused { status, error } => write!(
                f,
                "the identity provider refused the pushed authorization request ({status} {error})"
            ),
            ParError::Failed { status } => write!(
                f,
                "the pushed authorization request endpoint failed with status {status}"
            ),
            ParError::Malformed(what) => write!(
                f,
                "the pushed authorization request endpoint's answer is unusable: {what}"
            ),
        }
    }
}

/// The push: the authorization request's parameters (`form`), with the client's credentials
/// added when it is sent.
pub fn request(endpoint: &AbsoluteUrl, authority: &str, form: String) -> IdpRequest {
    IdpRequest::client_post(endpoint, authority, form)
}

#[derive(Deserialize)]
struct RawPushed {
    request_uri: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: Option<String>,
}

/// The `request_uri` of a pushed request (RFC 9126 §2.2: `201 Created`; `200` accepted too).
pub fn parse_response(answer: &IdpAnswer) -> Result<String, ParError> {
    let status = answer.status.ok_or(ParError::Cut)?;
    match status {
        200 | 201 => {}
        504 => return Err(ParError::Unreachable),
        400..=499 => {
            let error = serde_json::from_slice::<RawError>(&answer.body)
                .ok()
                .and_then(|e| e.error)
                // Shown to the user: an OAuth error code is a short token; anything else is not.
                .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or_else(|| "unknown_error".to_string());
            return Err(ParError::Refused { status, error });
        }
        _ => return Err(ParError::Failed { status }),
    }
    let pushed: RawPushed =
        serde_json::from_slice(&answer.body).map_err(|_| ParError::Malformed("not JSON"))?;
    let uri = pushed
        .request_uri
        .ok_or(ParError::Malformed("no request_uri"))?;
    // It goes into a URL the browser follows: a URI, not text (RFC 9126 §2.2).
    if uri.is_empty() || uri.len() > 2048 || !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParError::Malformed("request_uri is not a URI"));
    }
    Ok(uri)
}

/// Where the browser goes: the authorization endpoint with `client_id` and `request_uri` only
/// (RFC 9126 §4), keeping a query the endpoint itself carries.
pub fn authorization_url(endpoint: &AbsoluteUrl, client_id: &str, request_uri: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client_id)
        .append_pair("request_uri", request_uri)
        .finish();
    let joiner = if endpoint.path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{endpoint}{joiner}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_uri_is_read_and_the_browser_gets_nothing_else() {
        let answer = IdpAnswer::of(
            201,
            r#"{"request_uri":"urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c","expires_in":60}"#,
        );
        let uri = parse_response(&answer).unwrap();
        assert_eq!(
            uri,
            "urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c"
        );
        let endpoint = AbsoluteUrl::parse("https://idp.example/authorize?p=B2C_1").unwrap();
        assert_eq!(
            authorization_url(&endpoint, "my app", &uri),
            "https://idp.example/authorize?p=B2C_1&client_id=my+app&request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3A6esc_11ACC5bwc014ltc14eY22c"
        );
    }

    #[test]
    fn refusals_and_garbage_are_named() {
        let refused = IdpAnswer::of(
            400,
            r#"{"error":"invalid_request","error_description":"x"}"#,
        );
        assert_eq!(
            parse_response(&refused),
            Err(ParError::Refused {
                status: 400,
                error: "invalid_request".into()
            })
        );
        let odd = IdpAnswer::of(401, r#"{"error":"<script>alert(1)</script> and more"}"#);
        assert_eq!(
            parse_response(&odd),
            Err(ParError::Refused {
                status: 401,
                error: "unknown_error".into()
            })
        );
        assert_eq!(parse_response(&IdpAnswer::none()), Err(ParError::Cut));
        assert_eq!(
            parse_response(&IdpAnswer::of(504, "")),
            Err(ParError::Unreachable)
        );
        assert_eq!(
            parse_response(&IdpAnswer::of(500, "")),
            Err(ParError::Failed { status: 500 })
        );
        for body in [
            "",
            "[]",
            "{}",
            r#"{"request_uri": ""}"#,
            r#"{"request_uri": "a b"}"#,
        ] {
            assert!(
                matches!(
                    parse_response(&IdpAnswer::of(201, body)),
                    Err(ParError::Malformed(_))
                ),
                "{body}"
            );
        }
    }
}
