//! The token endpoint: building the request and reading the reply, with no I/O between, so
//! the wasm shell only dispatches (RFC 6749 §4.1.3–§5.2).

use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use std::fmt;

/// Access-token lifetime assumed when the token endpoint omits `expires_in` (RFC 6749 §5.1
/// only recommends it).
pub const DEFAULT_ACCESS_TOKEN_LIFETIME_S: u64 = 3600;

/// `client_secret_basic` (RFC 6749 §2.3.1): the id and the secret are each encoded with
/// `application/x-www-form-urlencoded` *before* being joined with ':' and base64-encoded with
/// padding. Skipping the encoding breaks secrets that contain ':' or '%'.
pub fn client_secret_basic(client_id: &str, secret: &Secret) -> String {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let pw: String = form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
    format!("Basic {}", STANDARD.encode(format!("{id}:{pw}")))
}

/// The form body of an authorization-code grant with the PKCE verifier (RFC 7636 §4.5) and
/// the resource indicators the authorization request named (RFC 8707 §2.2).
pub fn authorization_code_body(
    code: &Secret,
    redirect_uri: &str,
    verifier: &Secret,
    resources: &[String],
) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code.expose())
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("code_verifier", verifier.expose())
        .extend_pairs(resources.iter().map(|r| ("resource", r)))
        .finish()
}

/// The form body of a refresh-token grant (RFC 6749 §6), with the resource indicators again
/// (RFC 8707 §2.2: else an IdP may issue a token for no resource). No `scope`: the same scope
/// is granted again.
pub fn refresh_token_body(refresh_token: &Secret, resources: &[String]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh_token.expose())
        .extend_pairs(resources.iter().map(|r| ("resource", r)))
        .finish()
}

/// A successful token response (RFC 6749 §5.1, OIDC Core §3.1.3.3).
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: Secret,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct RawTokenError {
    error: Option<String>,
}

/// Why the token endpoint gave us nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No answer in time (Envoy's local 504 for a call past its timeout, or a gateway's).
    Unreachable,
    /// The call was reset with no complete answer: the connection broke mid-answer, or the
    /// answer passed Envoy's buffer limit for async calls (`http.async_response_buffer_limit`).
    Cut,
    /// A 4xx with an OAuth error code, e.g. `invalid_grant` (RFC 6749 §5.2).
    Refused { status: u16, error: String },
    /// A status outside 2xx/4xx.
    Failed { status: u16 },
    /// A 200 that is not a usable token response.
    Malformed(&'static str),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Unreachable => f.write_str("the token endpoint did not answer in time"),
            TokenError::Cut => f.write_str(
                "the token endpoint's answer broke off (a reset, or an answer over the size limit)",
            ),
            TokenError::Refused { status, error } => {
                write!(
                    f,
                    "the token endpoint refused the request ({status} {error})"
                )
            }
            TokenError::Failed { status } => {
                write!(f, "the token endpoint failed with status {status}")
            }
            TokenError::Malformed(what) => {
                write!(f, "the token endpoint's answer is unusable: {what}")
            }
        }
    }
}

/// Reads the token endpoint's reply to a request without a DPoP proof (a Bearer token).
pub fn parse_token_response(status: Option<u16>, body: &[u8]) -> Result<TokenResponse, TokenError> {
    parse_for(status, body, false)
}

/// Reads the token endpoint's reply. `status` is `None` when the call failed or timed out.
/// `dpop`: the request carried a proof, and the token must be bound to it (`token_type`
/// DPoP, RFC 9449 §5): an IdP that answers with a Bearer token did not bind it.
pub fn parse_for(
    status: Option<u16>,
    body: &[u8],
    dpop: bool,
) -> Result<TokenResponse, TokenError> {
    let status = status.ok_or(TokenError::Cut)?;
    match status {
        200 => {}
        // Envoy answers a call that timed out with a local 504, and a gateway in front of the
        // IdP means the same by it.
        504 => return Err(TokenError::Unreachable),
        400..=499 => {
            let error = serde_json::from_slice::<RawTokenError>(body)
                .ok()
                .and_then(|e| e.error)
                .map(|e| {
                    e.chars()
                        .filter(|c| c.is_ascii_graphic())
                        .take(64)
                        .collect()
                })
                .unwrap_or_else(|| "no error code".to_string());
            return Err(TokenError::Refused { status, error });
        }
        _ => return Err(TokenError::Failed { status }),
    }
    let raw: RawTokenResponse =
        serde_json::from_slice(body).map_err(|_| TokenError::Malformed("not a JSON object"))?;
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Malformed("no access_token"))?;
    // Header values cannot carry control characters; a token with them would be refused
    // by Envoy when injected, so refuse it here with a clear message instead.
    if access_token
        .bytes()
        .any(|b| b.is_ascii_control() || !b.is_ascii())
    {
        return Err(TokenError::Malformed(
            "access_token has characters not allowed in a header",
        ));
    }
    match (raw.token_type.as_deref(), dpop) {
        (Some(t), false) if t.eq_ignore_ascii_case("bearer") => {}
        (Some(t), true) if t.eq_ignore_ascii_case("dpop") => {}
        (_, false) => return Err(TokenError::Malformed("token_type is not Bearer")),
        (_, true) => return Err(TokenError::Malformed(
            "token_type is not DPoP: the identity provider did not bind the token to the DPoP key",
        )),
    }
    let expires_in = match raw.expires_in {
        None | Some(serde_json::Value::Null) => None,
        // Some IdPs send the number as a string.
        Some(serde_json::Value::String(s)) => Some(
            s.parse::<u64>()
                .map_err(|_| TokenError::Malformed("expires_in is not a number"))?,
        ),
        Some(v) => Some(
            v.as_u64()
                .ok_or(TokenError::Malformed("expires_in is not a number"))?,
        ),
    };
    Ok(TokenResponse {
        access_token: Secret::new(access_token),
        expires_in,
        refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
        id_token: raw.id_token.filter(|t| !t.is_empty()).map(Secret::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6749_2_3_1_encodes_before_base64() {
        // "s3cr:t/with%chars+" form-encoded is "s3cr%3At%2Fwith%25chars%2B".
        let h = client_secret_basic("my client", &Secret::new("s3cr:t/with%chars+"));
        let decoded =
            String::from_utf8(STANDARD.decode(h.strip_prefix("Basic ").unwrap()).unwrap()).unwrap();
        assert_eq!(decoded, "my+client:s3cr%3At%2Fwith%25chars%2B");
        // Standard alphabet with padding, not url-safe or unpadded.
        assert_eq!(client_secret_basic("a", &Secret::new("b")), "Basic YTpi");
        assert_eq!(
            client_secret_basic("ab", &Secret::new("c")),
            "Basic YWI6Yw=="
        );
    }

    #[test]
    fn code_grant_body() {
        let body =
            authorization_code_body(&Secret::new("c+1"), "https://a/cb", &Secret::new("v"), &[]);
        assert_eq!(
            body,
            "grant_type=authorization_code&code=c%2B1&redirect_uri=https%3A%2F%2Fa%2Fcb&code_verifier=v"
        );
        // RFC 8707 §2.2: the resources again, one parameter each.
        let with = authorization_code_body(
            &Secret::new("c"),
            "https://a/cb",
            &Secret::new("v"),
            &["https://api/x".into(), "urn:y".into()],
        );
        assert!(with.ends_with("&code_verifier=v&resource=https%3A%2F%2Fapi%2Fx&resource=urn%3Ay"));
    }

    #[test]
    fn refresh_grant_body() {
        assert_eq!(
            refresh_token_body(&Secret::new("r/t+1"), &[]),
            "grant_type=refresh_token&refresh_token=r%2Ft%2B1"
        );
        assert_eq!(
            refresh_token_body(&Secret::new("rt"), &["https://api/x".into()]),
            "grant_type=refresh_token&refresh_token=rt&resource=https%3A%2F%2Fapi%2Fx"
        );
    }

    #[test]
    fn parses_a_good_response() {
        let r = parse_token_response(
            Some(200),
            br#"{"access_token":"at","token_type":"bearer","expires_in":300,"refresh_token":"rt","id_token":"x.y.z","scope":"openid"}"#,
        )
        .unwrap();
        assert_eq!(r.access_token.expose(), "at");
        assert_eq!(r.expires_in, Some(300));
        assert_eq!(r.refresh_token.unwrap().expose(), "rt");
        assert_eq!(r.id_token.unwrap().expose(), "x.y.z");
        let r = parse_token_response(
            Some(200),
            br#"{"access_token":"at","token_type":"Bearer","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Some(60));
        assert!(r.id_token.is_none());
    }

    #[test]
    fn every_failure_is_a_value() {
        assert_eq!(
            parse_token_response(None, b"").unwrap_err(),
            TokenError::Cut
        );
        assert_eq!(
            parse_token_response(Some(504), b"upstream request timeout").unwrap_err(),
            TokenError::Unreachable
        );
        assert_eq!(
            parse_token_response(
                Some(400),
                br#"{"error":"invalid_grant","error_description":"x"}"#
            )
            .unwrap_err(),
            TokenError::Refused {
                status: 400,
                error: "invalid_grant".into()
            }
        );
        assert_eq!(
            parse_token_response(Some(401), b"<html>").unwrap_err(),
            TokenError::Refused {
                status: 401,
                error: "no error code".into()
            }
        );
        assert_eq!(
            parse_token_response(Some(500), b"").unwrap_err(),
            TokenError::Failed { status: 500 }
        );
        assert_eq!(
            parse_token_response(Some(302), b"").unwrap_err(),
            TokenError::Failed { status: 302 }
        );
        for (body, what) in [
            (&b"garbage"[..], "not a JSON object"),
            (b"[]", "not a JSON object"),
            (br#"{"token_type":"Bearer"}"#, "no access_token"),
            (br#"{"access_token":"a"}"#, "token_type is not Bearer"),
            (
                br#"{"access_token":"a","token_type":"mac"}"#,
                "token_type is not Bearer",
            ),
            (
                br#"{"access_token":"a\r\nx: y","token_type":"Bearer"}"#,
                "access_token has characters not allowed in a header",
            ),
            (
                br#"{"access_token":"a","token_type":"Bearer","expires_in":-1}"#,
                "expires_in is not a number",
            ),
            (
                br#"{"access_token":"a","token_type":"Bearer","expires_in":"soon"}"#,
                "expires_in is not a number",
            ),
        ] {
            assert_eq!(
                parse_token_response(Some(200), body).unwrap_err(),
                TokenError::Malformed(what)
            );
        }
    }
}
