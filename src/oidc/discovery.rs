//! The OpenID Provider's metadata (OpenID Connect Discovery 1.0), merged with whatever the
//! configuration fixes statically.

use crate::config::Config;
use crate::oidc::client_auth::{ClientAuth, TlsCertificate};
use crate::url::AbsoluteUrl;
use serde::Deserialize;
use std::fmt;

/// Where discovery lives, relative to the issuer (Discovery §4: the issuer with any trailing
/// slash removed, then `/.well-known/openid-configuration`).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// What the filter uses of the provider: endpoints and capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub authorization_endpoint: AbsoluteUrl,
    pub token_endpoint: AbsoluteUrl,
    pub jwks_uri: AbsoluteUrl,
    pub end_session_endpoint: Option<AbsoluteUrl>,
    pub revocation_endpoint: Option<AbsoluteUrl>,
    /// `id_token_signing_alg_values_supported`; RS256 when unknown (OIDC Core §3.1.3.7).
    pub signing_algs: Vec<String>,
    /// RFC 9207 §3: when announced, every authorization response must carry `iss`.
    pub iss_parameter_supported: bool,
    /// RFC 9126: where authorization requests are pushed, and whether the IdP takes no other.
    pub par_endpoint: Option<AbsoluteUrl>,
    pub par_required: bool,
    /// With `profile: "fapi2"`: what the metadata lacks for it (logins are refused, naming it).
    pub fapi2_lacks: Vec<&'static str>,
}

#[derive(Deserialize)]
struct RawMetadata {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    id_token_signing_alg_values_supported: Option<Vec<String>>,
    authorization_response_iss_parameter_supported: Option<bool>,
    pushed_authorization_request_endpoint: Option<String>,
    require_pushed_authorization_requests: Option<bool>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    code_challenge_methods_supported: Option<Vec<String>>,
    dpop_signing_alg_values_supported: Option<Vec<String>>,
    mtls_endpoint_aliases: Option<MtlsAliases>,
}

/// RFC 8705 §5: where a client that authenticates by mutual TLS sends its calls.
#[derive(Deserialize)]
struct MtlsAliases {
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    pushed_authorization_request_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    NotJson,
    /// Discovery §4.3: the document must name exactly the issuer we asked about.
    IssuerMismatch,
    Missing(&'static str),
    BadUrl(&'static str),
    Status(u16),
    Unreachable,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::NotJson => f.write_str("the discovery document is not a JSON object"),
            DiscoveryError::IssuerMismatch => {
                f.write_str("the discovery document names another issuer than the configured one")
            }
            DiscoveryError::Missing(field) => write!(f, "the discovery document has no {field}"),
            DiscoveryError::BadUrl(field) => {
                write!(
                    f,
                    "the discovery document's {field} is not an absolute http(s) URL"
                )
            }
            DiscoveryError::Status(s) => write!(f, "the discovery endpoint answered {s}"),
            DiscoveryError::Unreachable => f.write_str("the discovery endpoint did not answer"),
        }
    }
}

fn url(field: &'static str, value: Option<String>) -> Result<Option<AbsoluteUrl>, DiscoveryError> {
    value
        .map(|v| AbsoluteUrl::parse(&v).map_err(|_| DiscoveryError::BadUrl(field)))
        .transpose()
}

impl Provider {
    /// The provider from the configuration alone (`discovery: false`), when it names every
    /// endpoint the filter needs.
    pub fn from_config(config: &Config) -> Option<Provider> {
        let e = &config.endpoints;
        Some(Provider {
            authorization_endpoint: e.authorization.clone()?,
            token_endpoint: e.token.clone()?,
            jwks_uri: e.jwks.clone()?,
            end_session_endpoint: e.end_session.clone(),
            revocation_endpoint: e.revocation.clone(),
            signing_algs: e
                .signing_algs
                .clone()
                .unwrap_or_else(|| vec!["RS256".to_string()]),
            iss_parameter_supported: false,
            par_endpoint: e.par.clone(),
            par_required: false,
            fapi2_lacks: Vec::new(),
        })
    }

    /// Reads the discovery endpoint's answer (`status` is `None` when the call failed); the
    /// configuration's static endpoints win over discovered ones.
    pub fn from_discovery(
        config: &Config,
        status: Option<u16>,
        body: &[u8],
    ) -> Result<Provider, DiscoveryError> {
        match status {
            None => return Err(DiscoveryError::Unreachable),
            Some(200) => {}
            Some(s) => return Err(DiscoveryError::Status(s)),
        }
        let mut raw: RawMetadata =
            serde_json::from_slice(body).map_err(|_| DiscoveryError::NotJson)?;
        if raw.issuer.as_deref() != Some(config.issuer.as_str()) {
            return Err(DiscoveryError::IssuerMismatch);
        }
        let e = &config.endpoints;
        let pick =
            |fixed: &Option<AbsoluteUrl>, field: &'static str, found: Option<String>| match fixed {
                Some(url) => Ok(Some(url.clone())),
                None => url(field, found),
            };
        if config.client_auth.is_mutual_tls() {
            use_mtls_aliases(&mut raw);
        }
        let fapi2_lacks = if config.fapi2 {
            fapi2_lacks(config, &raw, e.par.is_some())
        } else {
            Vec::new()
        };
        Ok(Provider {
            fapi2_lacks,
            authorization_endpoint: pick(
                &e.authorization,
                "authorization_endpoint",
                raw.authorization_endpoint,
            )?
            .ok_or(DiscoveryError::Missing("authorization_endpoint"))?,
            token_endpoint: pick(&e.token, "token_endpoint", raw.token_endpoint)?
                .ok_or(DiscoveryError::Missing("token_endpoint"))?,
            jwks_uri: pick(&e.jwks, "jwks_uri", raw.jwks_uri)?
                .ok_or(DiscoveryError::Missing("jwks_uri"))?,
            end_session_endpoint: pick(
                &e.end_session,
                "end_session_endpoint",
                raw.end_session_endpoint,
            )?,
            revocation_endpoint: pick(
                &e.revocation,
                "revocation_endpoint",
                raw.revocation_endpoint,
            )?,
            signing_algs: e
                .signing_algs
                .clone()
                .or(raw.id_token_signing_alg_values_supported)
                .unwrap_or_else(|| vec!["RS256".to_string()]),
            iss_parameter_supported: raw
                .authorization_response_iss_parameter_supported
                .unwrap_or(false),
            par_endpoint: pick(
                &e.par,
                "pushed_authorization_request_endpoint",
                raw.pushed_authorization_request_endpoint,
            )?,
            par_required: raw.require_pushed_authorization_requests.unwrap_or(false),
        })
    }
}

/// A client authenticating by mutual TLS uses the IdP's aliases where it announces them
/// (RFC 8705 §5): the main endpoints may not ask for a client certificate.
fn use_mtls_aliases(raw: &mut RawMetadata) {
    let Some(aliases) = raw.mtls_endpoint_aliases.take() else {
        return;
    };
    for (endpoint, alias) in [
        (&mut raw.token_endpoint, aliases.token_endpoint),
        (&mut raw.revocation_endpoint, aliases.revocation_endpoint),
        (
            &mut raw.pushed_authorization_request_endpoint,
            aliases.pushed_authorization_request_endpoint,
        ),
    ] {
        if alias.is_some() {
            *endpoint = alias;
        }
    }
}

/// What FAPI 2.0 (Security Profile §5.3) needs of the IdP's metadata and `raw` does not say.
fn fapi2_lacks(config: &Config, raw: &RawMetadata, par_configured: bool) -> Vec<&'static str> {
    let has = |list: &Option<Vec<String>>, value: &str| {
        list.as_ref().is_some_and(|l| l.iter().any(|v| v == value))
    };
    let mut lacks = Vec::new();
    if raw.pushed_authorization_request_endpoint.is_none() && !par_configured {
        lacks.push("pushed_authorization_request_endpoint");
    }
    if raw.authorization_response_iss_parameter_supported != Some(true) {
        lacks.push("authorization_response_iss_parameter_supported");
    }
    if !has(&raw.code_challenge_methods_supported, "S256") {
        lacks.push("code_challenge_methods_supported with S256");
    }
    if !has(
        &raw.token_endpoint_auth_methods_supported,
        config.client_auth.method(),
    ) {
        lacks.push(match config.client_auth {
            ClientAuth::MutualTls(TlsCertificate::Pki) => {
                "token_endpoint_auth_methods_supported with tls_client_auth"
            }
            ClientAuth::MutualTls(TlsCertificate::SelfSigned) => {
                "token_endpoint_auth_methods_supported with self_signed_tls_client_auth"
            }
            _ => "token_endpoint_auth_methods_supported with private_key_jwt",
        });
    }
    let dpop_alg = config.dpop.as_ref().map_or("", |k| k.alg());
    if !has(&raw.dpop_signing_alg_values_supported, dpop_alg) {
        lacks.push("dpop_signing_alg_values_supported with the DPoP key's algorithm");
    }
    lacks
}

/// The test IdP's metadata, as discovery would give it.
#[cfg(test)]
pub fn test_provider() -> Provider {
    let u = |s: &str| AbsoluteUrl::parse(s).unwrap();
    Provider {
        authorization_endpoint: u("http://127.0.0.1:9000/auth"),
        token_endpoint: u("http://127.0.0.1:9000/token"),
        jwks_uri: u("http://127.0.0.1:9000/jwks"),
        end_session_endpoint: Some(u("http://127.0.0.1:9000/session/end")),
        revocation_endpoint: None,
        signing_algs: vec!["RS256".into()],
        iss_parameter_supported: true,
        par_endpoint: Some(u("http://127.0.0.1:9000/request")),
        par_required: false,
        fapi2_lacks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json};
    use serde_json::json;

    fn doc() -> serde_json::Value {
        json!({
            "issuer": "http://127.0.0.1:9000",
            "authorization_endpoint": "http://127.0.0.1:9000/auth",
            "token_endpoint": "http://127.0.0.1:9000/token",
            "jwks_uri": "http://127.0.0.1:9000/jwks",
            "end_session_endpoint": "http://127.0.0.1:9000/session/end",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "authorization_response_iss_parameter_supported": true
        })
    }

    fn discovery_only() -> Config {
        let mut v = minimal_json();
        let o = v.as_object_mut().unwrap();
        o.remove("authorization_endpoint");
        o.remove("token_endpoint");
        config_from(v)
    }

    #[test]
    fn under_fapi2_what_the_metadata_lacks_is_named() {
        let mut v = crate::config::tests::private_key_jwt_json();
        let o = v.as_object_mut().unwrap();
        o.remove("authorization_endpoint");
        o.remove("token_endpoint");
        o.insert("profile".into(), json!("fapi2"));
        o.insert(
            "dpop_key".into(),
            json!({"value": include_str!("../../tests/fixtures/keys/ed25519.pem")}),
        );
        let config = config_from(v);
        let mut full = doc();
        full["pushed_authorization_request_endpoint"] = json!("http://127.0.0.1:9000/request");
        full["code_challenge_methods_supported"] = json!(["S256"]);
        full["token_endpoint_auth_methods_supported"] =
            json!(["client_secret_basic", "private_key_jwt"]);
        full["dpop_signing_alg_values_supported"] = json!(["ES256", "EdDSA"]);
        let p = Provider::from_discovery(&config, Some(200), full.to_string().as_bytes()).unwrap();
        assert!(p.fapi2_lacks.is_empty(), "{:?}", p.fapi2_lacks);
        let p = Provider::from_discovery(&config, Some(200), doc().to_string().as_bytes()).unwrap();
        assert_eq!(
            p.fapi2_lacks,
            vec![
                "pushed_authorization_request_endpoint",
                "code_challenge_methods_supported with S256",
                "token_endpoint_auth_methods_supported with private_key_jwt",
                "dpop_signing_alg_values_supported with the DPoP key's algorithm",
            ]
        );
        // Without the profile nothing is asked.
        let p =
            Provider::from_discovery(&discovery_only(), Some(200), doc().to_string().as_bytes());
        assert!(p.unwrap().fapi2_lacks.is_empty());
    }

    #[test]
    fn a_mutual_tls_client_uses_the_aliases_and_no_other_client_does() {
        let mut v = minimal_json();
        let o = v.as_object_mut().unwrap();
        o.remove("authorization_endpoint");
        o.remove("token_endpoint");
        o.remove("client_secret");
        o.insert("client_auth".into(), json!("tls_client_auth"));
        let mtls = config_from(v);
        let mut d = doc();
        d["revocation_endpoint"] = json!("http://127.0.0.1:9000/revoke");
        d["pushed_authorization_request_endpoint"] = json!("http://127.0.0.1:9000/request");
        d["mtls_endpoint_aliases"] = json!({
            "token_endpoint": "https://mtls.example/token",
            "pushed_authorization_request_endpoint": "https://mtls.example/par",
            "userinfo_endpoint": "https://mtls.example/me",
        });
        let body = d.to_string();
        let p = Provider::from_discovery(&mtls, Some(200), body.as_bytes()).unwrap();
        assert_eq!(p.token_endpoint.to_string(), "https://mtls.example/token");
        assert_eq!(
            p.par_endpoint.unwrap().to_string(),
            "https://mtls.example/par"
        );
        // No alias: the main endpoint.
        assert_eq!(
            p.revocation_endpoint.unwrap().to_string(),
            "http://127.0.0.1:9000/revoke"
        );
        assert_eq!(p.authorization_endpoint.path(), "/auth");
        let p = Provider::from_discovery(&discovery_only(), Some(200), body.as_bytes()).unwrap();
        assert_eq!(p.token_endpoint.to_string(), "http://127.0.0.1:9000/token");
        d["mtls_endpoint_aliases"] = json!({"token_endpoint": "not a url"});
        let bad = Provider::from_discovery(&mtls, Some(200), d.to_string().as_bytes());
        assert_eq!(bad.unwrap_err(), DiscoveryError::BadUrl("token_endpoint"));
    }

    #[test]
    fn the_url_follows_the_issuer() {
        assert_eq!(
            discovery_url("https://a/tenant/"),
            "https://a/tenant/.well-known/openid-configuration"
        );
    }

    #[test]
    fn reads_a_discovery_document() {
        let p =
            Provider::from_discovery(&discovery_only(), Some(200), doc().to_string().as_bytes())
                .unwrap();
        assert_eq!(p.token_endpoint.to_string(), "http://127.0.0.1:9000/token");
        assert_eq!(p.jwks_uri.path(), "/jwks");
        assert_eq!(p.end_session_endpoint.unwrap().path(), "/session/end");
        assert_eq!(p.revocation_endpoint, None);
        assert_eq!(p.signing_algs, vec!["RS256", "ES256"]);
        assert!(p.iss_parameter_supported);
    }

    #[test]
    fn static_endpoints_win() {
        let mut v = minimal_json();
        v["token_endpoint"] = json!("https://fixed.example/token");
        let p = Provider::from_discovery(&config_from(v), Some(200), doc().to_string().as_bytes())
            .unwrap();
        assert_eq!(p.token_endpoint.to_string(), "https://fixed.example/token");
        assert_eq!(
            p.authorization_endpoint.to_string(),
            "http://127.0.0.1:9000/auth"
        );
    }

    #[test]
    fn rejections() {
        let c = discovery_only();
        let with = |k: &str, v: serde_json::Value| {
            let mut d = doc();
            d[k] = v;
            Provider::from_discovery(&c, Some(200), d.to_string().as_bytes())
        };
        assert_eq!(
            with("issuer", json!("http://127.0.0.1:9000/")),
            Err(DiscoveryError::IssuerMismatch)
        );
        assert_eq!(
            with("issuer", json!("https://evil")),
            Err(DiscoveryError::IssuerMismatch)
        );
        assert_eq!(
            with("token_endpoint", json!(null)),
            Err(DiscoveryError::Missing("token_endpoint"))
        );
        assert_eq!(
            with("jwks_uri", json!("/jwks")),
            Err(DiscoveryError::BadUrl("jwks_uri"))
        );
        assert_eq!(with("jwks_uri", json!(5)), Err(DiscoveryError::NotJson));
        assert_eq!(
            Provider::from_discovery(&c, Some(200), b"<html>"),
            Err(DiscoveryError::NotJson)
        );
        assert_eq!(
            Provider::from_discovery(&c, Some(503), b""),
            Err(DiscoveryError::Status(503))
        );
        assert_eq!(
            Provider::from_discovery(&c, None, b""),
            Err(DiscoveryError::Unreachable)
        );
    }

    #[test]
    fn static_mode_needs_every_endpoint() {
        let mut v = minimal_json();
        v["discovery"] = json!(false);
        v["jwks_uri"] = json!("http://127.0.0.1:9000/jwks");
        let p = Provider::from_config(&config_from(v)).unwrap();
        assert_eq!(p.signing_algs, vec!["RS256"]);
        assert!(!p.iss_parameter_supported);
    }
}
