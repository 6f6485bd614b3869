//! The authorization request (OIDC Core §3.1.2.1, RFC 7636 §4.3).

use crate::session::LoginTransaction;
use crate::url::AbsoluteUrl;

/// The URL the browser is sent to, carrying state, nonce and the S256 code challenge, then
/// `extra` ([`super::auth_params::extra`]).
pub fn authorization_url(
    endpoint: &AbsoluteUrl,
    client_id: &str,
    scope: &str,
    tx: &LoginTransaction,
    extra: &[(&str, &str)],
) -> String {
    let query = authorization_params(client_id, scope, tx, extra);
    // An endpoint may carry its own query (e.g. a tenant or policy parameter): keep it.
    let joiner = if endpoint.path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{endpoint}{joiner}{query}")
}

/// The authorization request's parameters, form-encoded: the browser's query, or the body
/// of a pushed authorization request (RFC 9126 §2.1).
pub fn authorization_params(
    client_id: &str,
    scope: &str,
    tx: &LoginTransaction,
    extra: &[(&str, &str)],
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &tx.redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", &tx.state)
        .append_pair("nonce", &tx.nonce)
        .append_pair("code_challenge", &tx.verifier.challenge())
        .append_pair("code_challenge_method", "S256")
        .extend_pairs(extra);
    query.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::CountingRandom;

    #[test]
    fn carries_every_parameter_encoded() {
        let tx = LoginTransaction::begin(
            &mut CountingRandom(0),
            "/".into(),
            "https://app.example/private/callback".into(),
            0,
        )
        .unwrap();
        let endpoint = AbsoluteUrl::parse("https://idp.example/authorize?p=B2C_1").unwrap();
        let url = authorization_url(
            &endpoint,
            "my app",
            "openid email",
            &tx,
            &[
                ("audience", "https://api.example/"),
                ("resource", "urn:a b"),
            ],
        );
        let (base, query) = url.split_once("?").unwrap();
        assert_eq!(base, "https://idp.example/authorize");
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("p"), Some("B2C_1"));
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("client_id"), Some("my app"));
        assert_eq!(
            get("redirect_uri"),
            Some("https://app.example/private/callback")
        );
        assert_eq!(get("scope"), Some("openid email"));
        assert_eq!(get("state"), Some(tx.state.as_str()));
        assert_eq!(get("nonce"), Some(tx.nonce.as_str()));
        assert_eq!(
            get("code_challenge"),
            Some(tx.verifier.challenge().as_str())
        );
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert!(query.contains("redirect_uri=https%3A%2F%2Fapp.example%2Fprivate%2Fcallback"));
        assert!(query.ends_with("&audience=https%3A%2F%2Fapi.example%2F&resource=urn%3Aa+b"));
    }
}
