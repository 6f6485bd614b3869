//! The authorization response on the redirect URI (RFC 6749 §4.1.2, RFC 9207).

use crate::secret::Secret;
use std::fmt;

#[derive(Debug, PartialEq, Eq)]
pub enum AuthorizationResponse {
    Code {
        code: Secret,
        state: String,
        /// RFC 9207: the issuer identifier, when the IdP sends it.
        iss: Option<String>,
    },
    /// RFC 6749 §4.1.2.1: the IdP refused (e.g. `access_denied`).
    Error {
        error: String,
        description: Option<String>,
        state: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackError {
    MissingState,
    MissingCode,
    /// A parameter given twice: RFC 6749 §3.1 forbids it, and picking one invites confusion.
    Repeated(&'static str),
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackError::MissingState => f.write_str("the callback has no state parameter"),
            CallbackError::MissingCode => f.write_str("the callback has neither code nor error"),
            CallbackError::Repeated(p) => write!(f, "the callback repeats the {p} parameter"),
        }
    }
}

const KNOWN: [&str; 6] = [
    "code",
    "state",
    "iss",
    "error",
    "error_description",
    "session_state",
];

/// Parses the callback's query string.
pub fn parse(query: Option<&str>) -> Result<AuthorizationResponse, CallbackError> {
    let mut values: [Option<String>; 6] = Default::default();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if let Some(i) = KNOWN.iter().position(|k| *k == name) {
            let slot = values.get_mut(i).ok_or(CallbackError::MissingCode)?;
            if slot.is_some() {
                return Err(CallbackError::Repeated(
                    KNOWN.get(i).copied().unwrap_or("?"),
                ));
            }
            *slot = Some(value.into_owned());
        }
    }
    let [code, state, iss, error, description, _session_state] = values;
    let state = state.filter(|s| !s.is_empty());
    if let Some(error) = error {
        return Ok(AuthorizationResponse::Error {
            error: printable(&error, 64),
            description: description.map(|d| printable(&d, 200)),
            state,
        });
    }
    let state = state.ok_or(CallbackError::MissingState)?;
    let code = code
        .filter(|c| !c.is_empty())
        .ok_or(CallbackError::MissingCode)?;
    Ok(AuthorizationResponse::Code {
        code: Secret::new(code),
        state,
        iss,
    })
}

/// Keeps text from the query fit to show: printable ASCII only, bounded.
/// (RFC 6749 §4.1.2.1 restricts error and error_description to %x20-7E anyway.)
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c))
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_state_and_iss() {
        let r = parse(Some("code=abc%2Bd&state=xyz&iss=http%3A%2F%2Fidp")).unwrap();
        assert_eq!(
            r,
            AuthorizationResponse::Code {
                code: Secret::new("abc+d"),
                state: "xyz".into(),
                iss: Some("http://idp".into())
            }
        );
    }

    #[test]
    fn idp_errors_are_reported_with_safe_text() {
        let r = parse(Some(
            "error=access_denied&error_description=User%20said%20%3Cno%3E%0A&state=s",
        ))
        .unwrap();
        assert_eq!(
            r,
            AuthorizationResponse::Error {
                error: "access_denied".into(),
                description: Some("User said <no>".into()),
                state: Some("s".into())
            }
        );
    }

    #[test]
    fn rejections() {
        assert_eq!(parse(None), Err(CallbackError::MissingState));
        assert_eq!(parse(Some("code=a")), Err(CallbackError::MissingState));
        assert_eq!(parse(Some("state=s")), Err(CallbackError::MissingCode));
        assert_eq!(
            parse(Some("state=s&code=")),
            Err(CallbackError::MissingCode)
        );
        assert_eq!(
            parse(Some("state=a&state=b&code=c")),
            Err(CallbackError::Repeated("state"))
        );
        assert_eq!(
            parse(Some("state=a&code=b&code=c")),
            Err(CallbackError::Repeated("code"))
        );
        assert_eq!(
            parse(Some("%ff%fe=%00&&&=")),
            Err(CallbackError::MissingState)
        );
    }
}
