//! Parameters of the authorization request beyond the filter's own: static ones from the
//! configuration (e.g. Auth0's `audience`), the ones an SPA forwards through the login endpoint
//! (OIDC Core §3.1.2.1: `prompt`, `login_hint`, `max_age`, `acr_values`, `ui_locales`, ...),
//! and RFC 8707 resource indicators.

use std::fmt;

/// Set by the filter itself (or a request object it never sends): never taken from the
/// configuration or from the SPA.
pub const OWNED: [&str; 11] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "request",
    "request_uri",
];

/// What the login endpoint forwards from its query unless configured otherwise.
pub const DEFAULT_FORWARDED: [&str; 5] = [
    "prompt",
    "login_hint",
    "max_age",
    "acr_values",
    "ui_locales",
];

/// The longest value forwarded or configured: parameters ride in a redirect URL, which
/// browsers and IdPs cap at a few kilobytes.
pub const MAX_VALUE_LEN: usize = 512;

/// The parameter named `resource` (RFC 8707 §2).
pub const RESOURCE: &str = "resource";

/// A name that can stand in a query as a parameter name the IdP reads.
pub fn is_parameter_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_control() || c == ' ')
}

pub fn is_owned(name: &str) -> bool {
    OWNED.contains(&name) || name.starts_with("code_challenge")
}

/// Why a parameter value cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadValue {
    TooLong,
    ControlCharacter,
    /// `max_age` is a number of seconds (OIDC Core §3.1.2.1).
    NotSeconds,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadValue::TooLong => "is longer than 512 bytes",
            BadValue::ControlCharacter => "contains a control character",
            BadValue::NotSeconds => "must be a whole number of seconds",
        })
    }
}

/// Checks a value for `name`.
pub fn check_value(name: &str, value: &str) -> Result<(), BadValue> {
    if value.len() > MAX_VALUE_LEN {
        return Err(BadValue::TooLong);
    }
    if value.chars().any(char::is_control) {
        return Err(BadValue::ControlCharacter);
    }
    if name == "max_age" && (value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit())) {
        return Err(BadValue::NotSeconds);
    }
    Ok(())
}

/// A forwarded parameter the login endpoint refuses (the answer is 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadForward {
    pub name: String,
    /// `None`: the parameter was repeated.
    pub why: Option<BadValue>,
}

impl fmt::Display for BadForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why {
            Some(why) => write!(f, "{} {why}", self.name),
            None => write!(f, "{} is given more than once", self.name),
        }
    }
}

/// The allowed parameters in the login endpoint's query, each at most once and checked;
/// others (and `return_to`, the filter's own) are not forwarded.
pub fn forwarded(query: &str, allowed: &[String]) -> Result<Vec<(String, String)>, BadForward> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if !allowed.iter().any(|a| *a == name) {
            continue;
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(BadForward {
                name: name.into_owned(),
                why: None,
            });
        }
        check_value(&name, &value).map_err(|why| BadForward {
            name: name.to_string(),
            why: Some(why),
        })?;
        out.push((name.into_owned(), value.into_owned()));
    }
    Ok(out)
}

/// The authorization request's parameters beyond the filter's own, each name once: the
/// configured ones, a forwarded one taking the place of a configured one of the same name (the
/// SPA asked for this login), then one `resource` per resource indicator.
pub fn extra<'a>(
    configured: &'a [(String, String)],
    forwarded: &'a [(String, String)],
    resources: &'a [String],
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = configured
        .iter()
        .filter(|(n, _)| !forwarded.iter().any(|(f, _)| f == n))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    out.extend(forwarded.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    out.extend(resources.iter().map(|r| (RESOURCE, r.as_str())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        DEFAULT_FORWARDED.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_filters_own_parameters_are_never_taken() {
        for name in [
            "client_id",
            "state",
            "nonce",
            "scope",
            "request_uri",
            "code_challenge_x",
        ] {
            assert!(is_owned(name), "{name}");
        }
        for name in ["audience", "prompt", "resource", "domain_hint"] {
            assert!(!is_owned(name), "{name}");
        }
    }

    #[test]
    fn forwards_the_allowed_parameters_decoded_once_each() {
        let got = forwarded(
            "return_to=%2Fapp&prompt=login&login_hint=alice%40example.com&state=forged&x=1",
            &allowed(),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("prompt".to_string(), "login".to_string()),
                ("login_hint".to_string(), "alice@example.com".to_string())
            ]
        );
        let twice = forwarded("prompt=login&prompt=none", &allowed()).unwrap_err();
        assert_eq!((twice.name.as_str(), twice.why), ("prompt", None));
    }

    #[test]
    fn refuses_control_characters_oversized_values_and_bad_max_age() {
        let bad = |q: &str| forwarded(q, &allowed()).unwrap_err().why;
        assert_eq!(bad("login_hint=a%0Db"), Some(BadValue::ControlCharacter));
        assert_eq!(
            bad(&format!("ui_locales={}", "a".repeat(513))),
            Some(BadValue::TooLong)
        );
        assert!(forwarded(&format!("ui_locales={}", "a".repeat(512)), &allowed()).is_ok());
        assert_eq!(bad("max_age=-1"), Some(BadValue::NotSeconds));
        assert_eq!(bad("max_age="), Some(BadValue::NotSeconds));
        assert!(forwarded("max_age=0", &allowed()).is_ok());
    }

    #[test]
    fn a_forwarded_parameter_replaces_a_configured_one_and_resources_come_last() {
        let configured = vec![
            ("audience".to_string(), "https://api".to_string()),
            ("prompt".to_string(), "login".to_string()),
        ];
        let forwarded = vec![("prompt".to_string(), "none".to_string())];
        let resources = vec!["https://api/a".to_string(), "https://api/b".to_string()];
        assert_eq!(
            extra(&configured, &forwarded, &resources),
            vec![
                ("audience", "https://api"),
                ("prompt", "none"),
                ("resource", "https://api/a"),
                ("resource", "https://api/b")
            ]
        );
    }
}
