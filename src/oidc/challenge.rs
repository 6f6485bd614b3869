//! An API's step-up challenge (RFC 9470 §3): a `401` whose `WWW-Authenticate` says
//! `error="insufficient_user_authentication"`, with the `acr_values` and/or `max_age` the API
//! wants. Parsed from the header's challenges (RFC 9110 §11.6.1), for the Bearer and DPoP
//! schemes.

/// What the API asks of the login behind the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpChallenge {
    pub acr_values: Option<String>,
    pub max_age: Option<u64>,
}

/// The step-up challenge in a `WWW-Authenticate` value, if it holds one.
pub fn step_up_challenge(header: &str) -> Option<StepUpChallenge> {
    challenges(header)
        .into_iter()
        .filter(|c| {
            c.scheme.eq_ignore_ascii_case("bearer") || c.scheme.eq_ignore_ascii_case("dpop")
        })
        .find(|c| c.param("error") == Some("insufficient_user_authentication"))
        .map(|c| StepUpChallenge {
            acr_values: c
                .param("acr_values")
                .filter(|v| !v.is_empty() && !v.chars().any(char::is_control))
                .map(str::to_string),
            // §3: "it has to represent a non-negative integer".
            max_age: c.param("max_age").and_then(|v| {
                v.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse().ok())
                    .flatten()
            }),
        })
}

struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `scheme param=value, param="quoted", Other-Scheme ...` into challenges. A token
/// followed by `=` is a parameter; any other token starts a new challenge. Malformed input
/// ends the parse with what was read.
fn challenges(header: &str) -> Vec<Challenge> {
    let bytes = header.as_bytes();
    let mut out: Vec<Challenge> = Vec::new();
    let mut at = 0;
    let skip = |at: &mut usize, what: &[u8]| {
        while bytes.get(*at).is_some_and(|b| what.contains(b)) {
            *at += 1;
        }
    };
    loop {
        // Line breaks too: the RFC's figures fold the header for display.
        skip(&mut at, b" \t\r\n,");
        let start = at;
        while bytes.get(at).is_some_and(|b| is_tchar(*b)) {
            at += 1;
        }
        let Some(token) = header.get(start..at).filter(|t| !t.is_empty()) else {
            return out;
        };
        let mut peek = at;
        skip(&mut peek, b" \t\r\n");
        if bytes.get(peek) != Some(&b'=') {
            out.push(Challenge {
                scheme: token.to_string(),
                params: Vec::new(),
            });
            continue;
        }
        at = peek + 1;
        skip(&mut at, b" \t\r\n");
        let value = if bytes.get(at) == Some(&b'"') {
            let mut value = String::new();
            at += 1;
            loop {
                match bytes.get(at) {
                    Some(b'"') => {
                        at += 1;
                        break;
                    }
                    Some(b'\\') => {
                        if let Some(c) = header.get(at + 1..).and_then(|r| r.chars().next()) {
                            value.push(c);
                            at += 1 + c.len_utf8();
                        } else {
                            return out;
                        }
                    }
                    Some(_) => {
                        let Some(c) = header.get(at..).and_then(|r| r.chars().next()) else {
                            return out;
                        };
                        value.push(c);
                        at += c.len_utf8();
                    }
                    None => return out,
                }
            }
            value
        } else {
            let start = at;
            while bytes.get(at).is_some_and(|b| is_tchar(*b) || *b == b'/') {
                at += 1;
            }
            header.get(start..at).unwrap_or_default().to_string()
        };
        match out.last_mut() {
            Some(challenge) => challenge.params.push((token.to_string(), value)),
            // A parameter before any scheme: not a challenge.
            None => return out,
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9470_figure_2_asks_for_an_acr() {
        let header = "Bearer error=\"insufficient_user_authentication\",\n  \
                      error_description=\"A different authentication level is required\",\n  \
                      acr_values=\"myACR\"";
        assert_eq!(
            step_up_challenge(header),
            Some(StepUpChallenge {
                acr_values: Some("myACR".into()),
                max_age: None
            })
        );
    }

    #[test]
    fn rfc_9470_figure_3_asks_for_a_recent_login() {
        let header = "Bearer error=\"insufficient_user_authentication\",\n  \
                      error_description=\"More recent authentication is required\",\n  \
                      max_age=\"5\"";
        assert_eq!(
            step_up_challenge(header),
            Some(StepUpChallenge {
                acr_values: None,
                max_age: Some(5)
            })
        );
    }

    #[test]
    fn both_parameters_unquoted_max_age_and_other_schemes() {
        let header =
            "Basic realm=\"api\", DPoP algs=\"ES256\", error=insufficient_user_authentication, \
                      acr_values=\"urn:a urn:b\", max_age=300";
        assert_eq!(
            step_up_challenge(header),
            Some(StepUpChallenge {
                acr_values: Some("urn:a urn:b".into()),
                max_age: Some(300)
            })
        );
        // Case of the scheme and of parameter names does not matter (RFC 9110 §11.1, §5.6.6).
        assert!(step_up_challenge("bearer ERROR=\"insufficient_user_authentication\"").is_some());
    }

    #[test]
    fn anything_else_is_no_step_up_challenge() {
        for header in [
            "",
            "Bearer",
            "Bearer error=\"invalid_token\"",
            "Basic error=\"insufficient_user_authentication\"",
            "error=\"insufficient_user_authentication\"",
            "Bearer error=\"insufficient_user_authentication",
            "Bearer error=\"insufficient_user_\\",
        ] {
            assert_eq!(step_up_challenge(header), None, "{header:?}");
        }
        // A max_age that is not a non-negative integer is dropped, not guessed.
        let c = step_up_challenge(
            "Bearer error=\"insufficient_user_authentication\", max_age=\"-5\", acr_values=\"\"",
        )
        .unwrap();
        assert_eq!((c.acr_values, c.max_age), (None, None));
        // Escapes inside quoted strings.
        let c = step_up_challenge(
            "Bearer error=\"insufficient_user_authentication\", acr_values=\"a\\\"b\"",
        )
        .unwrap();
        assert_eq!(c.acr_values.as_deref(), Some("a\"b"));
    }
}
