//! The plugin configuration: the JSON in envoy.yaml, deserialized into a raw form, then
//! checked into a [`Config`] that later code can trust. Every problem is reported with the
//! name of its field, all at once, so one Envoy restart shows them all.

use crate::oidc::auth_params;
use crate::oidc::client_auth::{Audience, ClientAuth, TlsCertificate};
use crate::oidc::signing_key::SigningKey;
use crate::policy::{PathPolicy, Policies, Policy};
use crate::refresh::single_flight;
use crate::secret::Secret;
use crate::session::KeyRing;
use crate::url::AbsoluteUrl;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::time::Duration;

mod encryption;
pub use encryption::DEFAULT_ID_TOKEN_KEY_ENV;

pub const DEFAULT_PREFIX: &str = "/private";
pub const DEFAULT_COOKIE_NAME: &str = "__Host-bff-session";
pub const DEFAULT_CLIENT_SECRET_ENV: &str = "BFF_CLIENT_SECRET";
/// Where the filter's private key is read from (`private_key_jwt`), unless `client_key` says
/// otherwise.
pub const DEFAULT_CLIENT_KEY_ENV: &str = "BFF_CLIENT_KEY";
/// Where the DPoP key is read from, unless `dpop_key` says otherwise.
pub const DEFAULT_DPOP_KEY_ENV: &str = "BFF_DPOP_KEY";
/// Where the store user's password is read from, unless `store.password` says otherwise.
pub const DEFAULT_STORE_PASSWORD_ENV: &str = "BFF_STORE_PASSWORD";
pub const DEFAULT_COOKIE_KEYS_ENV: &str = "BFF_COOKIE_KEYS";
/// Envoy's `jwt_authn` `payload_in_metadata` name the filter reads by default.
pub const DEFAULT_JWT_PAYLOAD: &str = "jwt_payload";

/// Where a secret comes from: `{"env": "NAME"}` (production) or `{"value": "..."}` (demos).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    name: Option<String>,
    same_site: Option<String>,
    secure: Option<bool>,
    transaction_max_age_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamToken {
    header: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    max_lifetime_s: Option<u64>,
    inactivity_timeout_s: Option<u64>,
    refresh_leeway_s: Option<u64>,
    refresh_result_slots: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: Option<String>,
    discovery: Option<bool>,
    metadata_refresh_s: Option<u64>,
    jwks_min_refetch_s: Option<u64>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    pushed_authorization_request_endpoint: Option<String>,
    pushed_authorization_requests: Option<bool>,
    id_token_signing_algs: Option<Vec<String>>,
    idp_cluster: Option<String>,
    idp_mtls_cluster: Option<String>,
    idp_authority: Option<String>,
    idp_timeout_ms: Option<u64>,
    client_id: Option<String>,
    client_secret: Option<RawSecret>,
    client_auth: Option<String>,
    client_key: Option<RawSecret>,
    client_key_id: Option<String>,
    client_certificate: Option<RawSecret>,
    client_assertion_audience: Option<String>,
    jwks_path: Option<String>,
    id_token_encryption: Option<encryption::RawIdTokenEncryption>,
    dpop: Option<bool>,
    dpop_key: Option<RawSecret>,
    profile: Option<String>,
    redirect_uri: Option<String>,
    trust_forwarded_headers: Option<bool>,
    scopes: Option<Vec<String>>,
    auth_params: Option<BTreeMap<String, String>>,
    login_params: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    prefix: Option<String>,
    login_path: Option<String>,
    post_login_url: Option<String>,
    cookie: Option<RawCookie>,
    cookie_keys: Option<RawSecret>,
    upstream_token: Option<RawUpstreamToken>,
    session: Option<RawSession>,
    session_path: Option<String>,
    logout_path: Option<String>,
    backchannel_logout_path: Option<String>,
    post_logout_url: Option<String>,
    csrf: Option<RawCsrf>,
    rules: Option<Vec<RawRule>>,
    upstream_step_up: Option<bool>,
    access_log: Option<bool>,
    claim_headers: Option<BTreeMap<String, String>>,
    bypass: Option<Vec<String>>,
    policies: Option<Vec<RawPolicy>>,
    jwt_authn: Option<RawJwtAuthn>,
    client_credentials: Option<RawClientCredentials>,
    store: Option<RawStore>,
    metrics_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    cluster: Option<String>,
    prefix: Option<String>,
    timeout_ms: Option<u64>,
    sync_interval_ms: Option<u64>,
    username: Option<String>,
    password: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    prefix: String,
    policy: String,
    bearer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwtAuthn {
    payload_in_metadata: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientCredentials {
    scopes: Option<Vec<String>>,
    resources: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsrf {
    header: Option<String>,
    value: Option<String>,
    allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: String,
    #[serde(default)]
    require: BTreeMap<String, Requirement>,
    /// Step-up: the session's `acr` must be one of these.
    acr: Option<Vec<String>>,
    /// Step-up: the user must have authenticated (`auth_time`) at most this long ago.
    max_auth_age_s: Option<u64>,
}

/// What a claim must satisfy for an authorization rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Requirement {
    /// The claim equals this value (string, number or boolean).
    Equals(serde_json::Value),
    /// The claim equals one of these values.
    OneOf(Vec<serde_json::Value>),
    /// The claim is an array containing this value (e.g. `groups`), or a space-separated
    /// string containing it as a word (e.g. `scope`).
    Contains(serde_json::Value),
}

/// Claims a request under `prefix` must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub prefix: String,
    pub require: Vec<(String, Requirement)>,
    /// What a stronger or fresher login gives; unmet, it asks for one (a step-up) instead of
    /// refusing.
    pub step_up: StepUp,
}

/// A rule's step-up requirement (OIDC Core §3.1.2.1 `acr_values` and `max_age`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUp {
    /// The session's `acr` must be one of these (none: any).
    pub acr: Vec<String>,
    /// Seconds since `auth_time`, at most.
    pub max_auth_age: Option<u64>,
}

/// Cross-site request forgery defence for API calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csrf {
    /// Lowercase header name every non-navigation request must carry…
    pub header: String,
    /// …with exactly this value.
    pub value: String,
    /// Origins besides the app's own that may call (an SPA on another origin).
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// The session cookie's name; every cookie the filter owns is this name or starts with
    /// `name.` (login transactions: `name.tx.<flow>`).
    pub name: String,
    pub same_site: SameSite,
    pub secure: bool,
    pub transaction_max_age: u64,
}

/// Where the IdP redirects the browser back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectUri {
    /// Given whole in the configuration.
    Absolute(AbsoluteUrl),
    /// Only the path is configured; scheme and host come from each request (`:scheme` and
    /// `:authority`, or X-Forwarded-Proto/-Host when `trust_forwarded` is set).
    Path { path: String, trust_forwarded: bool },
}

impl RedirectUri {
    pub fn path(&self) -> &str {
        match self {
            RedirectUri::Absolute(url) => url.path(),
            RedirectUri::Path { path, .. } => path,
        }
    }
}

/// How the access token is put on the upstream request: `header: prefix<token>suffix`.
#[derive(Debug, Clone, Default)]
pub struct TokenHeader {
    pub name: String,
    prefix: String,
    suffix: String,
}

impl TokenHeader {
    pub fn value(&self, token: &Secret) -> String {
        // On every authenticated request: plain appends, not the formatting machinery.
        let token = token.expose();
        let mut v = String::with_capacity(self.prefix.len() + token.len() + self.suffix.len());
        v.push_str(&self.prefix);
        v.push_str(token);
        v.push_str(&self.suffix);
        v
    }
}

/// Endpoints fixed in the configuration; discovery fills in the others.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub authorization: Option<AbsoluteUrl>,
    pub token: Option<AbsoluteUrl>,
    pub jwks: Option<AbsoluteUrl>,
    pub end_session: Option<AbsoluteUrl>,
    pub revocation: Option<AbsoluteUrl>,
    /// RFC 9126's pushed authorization request endpoint.
    pub par: Option<AbsoluteUrl>,
    pub signing_algs: Option<Vec<String>>,
}

/// How long a session lives, from data inside the sealed cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLifetime {
    /// From login, whatever happens.
    pub max_lifetime: u64,
    /// Without a request.
    pub inactivity_timeout: u64,
    /// Refresh the access token this long before it expires.
    pub refresh_leeway: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub issuer: String,
    /// Read `{issuer}/.well-known/openid-configuration` (else `endpoints` must be complete).
    pub discovery: bool,
    /// How often discovery and the JWKS are read again.
    pub metadata_refresh: u64,
    /// An unknown `kid` makes the JWKS be read again at most this often.
    pub jwks_min_refetch: u64,
    pub endpoints: Endpoints,
    pub idp_cluster: String,
    /// With mutual-TLS client authentication: the cluster (presenting the client certificate)
    /// that calls which authenticate go through; by default `idp_cluster`.
    pub idp_mtls_cluster: Option<String>,
    /// `:authority` for calls to the IdP; by default each URL's own host.
    pub idp_authority: Option<String>,
    pub idp_timeout: Duration,
    pub client_id: String,
    /// How the filter authenticates at the token and revocation endpoints.
    pub client_auth: ClientAuth,
    /// RFC 9449: the key DPoP proofs are signed with; the session's tokens are bound to it.
    pub dpop: Option<Rc<SigningKey>>,
    /// `profile: "fapi2"`: PAR, private_key_jwt and DPoP together, and an IdP whose discovery
    /// lacks one of them (or the RFC 9207 `iss`, or S256) serves no login.
    pub fapi2: bool,
    pub redirect_uri: RedirectUri,
    /// Take scheme and host from X-Forwarded-Proto/-Host (behind a load balancer).
    pub trust_forwarded: bool,
    /// Space-separated, always with `openid` first.
    pub scope: String,
    /// Sent on every authorization request (e.g. Auth0's `audience`), never one the filter sets.
    pub auth_params: Vec<(String, String)>,
    /// What the login endpoint forwards from its query to the authorization request.
    pub login_params: Vec<String>,
    /// RFC 8707 resource indicators: on the authorization request, the code exchange and
    /// every refresh.
    pub resources: Vec<String>,
    /// RFC 9126: push every authorization request (otherwise only when the IdP requires it).
    pub pushed_authorization_requests: bool,
    pub prefix: String,
    pub login_path: String,
    pub post_login_url: String,
    pub cookie: CookieSettings,
    pub keys: KeyRing,
    pub upstream_token: TokenHeader,
    pub session: SessionLifetime,
    /// Slots of the shared ring where refresh outcomes wait for the session's other requests
    /// (`refresh::single_flight`).
    pub refresh_result_slots: u64,
    /// The session (user) endpoint.
    pub session_path: String,
    pub logout_path: String,
    /// Where the IdP posts logout tokens (OIDC Back-Channel Logout 1.0).
    pub backchannel_logout_path: String,
    /// Where the filter's public keys are served as a JWK Set (with `private_key_jwt` or
    /// `id_token_encryption`).
    pub jwks_path: Option<String>,
    /// Encrypted ID tokens: the registered alg/enc and the keys to decrypt with.
    pub id_token_encryption: Option<Rc<crate::oidc::jwe::IdTokenEncryption>>,
    /// Where the browser lands after logout (relative: made absolute like the redirect URI).
    pub post_logout_url: String,
    pub csrf: Csrf,
    pub rules: Vec<Rule>,
    /// Turn an API's RFC 9470 step-up challenge (401 `insufficient_user_authentication`) into
    /// a step-up login. Off by default: it reads every forwarded request's response status.
    pub upstream_step_up: bool,
    /// Leave each request's decision and identity in its filter state for Envoy's access log
    /// (`crate::access_log`). Off by default: a host call on every request, the authenticated
    /// path's included.
    pub access_log: bool,
    /// Claim → upstream header; incoming headers of these names are always removed.
    pub claim_headers: Vec<(String, String)>,
    /// Per-prefix policies (`bypass` entries are `none`).
    pub policies: Policies,
    /// The `payload_in_metadata` name of Envoy's `jwt_authn` filter, for bearer prefixes.
    pub jwt_payload: String,
    pub client_credentials: ClientCredentials,
    /// State shared by every replica (etcd); `None`: shared by one Envoy process's workers.
    pub store: Option<Store>,
    pub metrics_prefix: String,
}

/// The filter's own token for `client` prefixes (RFC 6749 §4.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCredentials {
    /// Space-separated; `None` asks for the client's default scopes.
    pub scope: Option<String>,
    /// RFC 8707 resource indicators (by default the top-level `resources`).
    pub resources: Vec<String>,
}

/// The etcd members every replica shares its little state through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// The Envoy cluster of the members (it does TLS or mTLS).
    pub cluster: String,
    /// Every key starts with this (then the configuration's namespace).
    pub prefix: String,
    pub timeout: Duration,
    /// How often each Envoy process reads the deny list.
    pub sync_interval_ms: u64,
    /// etcd's own authentication (user and password), when the cluster's client certificate
    /// is not the credential.
    pub auth: Option<StoreAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreAuth {
    pub username: String,
    pub password: Secret,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid bff filter configuration: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.problem)?;
        }
        Ok(())
    }
}

/// Collects problems while the raw config is checked.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            problem: problem.into(),
        });
    }

    fn required(&mut self, field: &str, value: Option<String>) -> String {
        match value {
            Some(v) if !v.trim().is_empty() => v,
            _ => {
                self.add(field, "is required");
                String::new()
            }
        }
    }

    fn url(&mut self, field: &str, value: &str) -> Option<AbsoluteUrl> {
        match AbsoluteUrl::parse(value) {
            Ok(url) => Some(url),
            Err(e) => {
                if !value.is_empty() {
                    self.add(field, e.to_string());
                }
                None
            }
        }
    }

    fn path(&mut self, field: &str, value: String) -> String {
        if !value.starts_with('/') || value.contains(['?', '#', ' ', '\\']) {
            self.add(
                field,
                "must be a path starting with '/' without query or fragment",
            );
        }
        value
    }

    /// A number with a default, which must lie in `range`.
    fn between(
        &mut self,
        field: &str,
        value: Option<u64>,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> u64 {
        let value = value.unwrap_or(default);
        if !range.contains(&value) {
            self.add(
                field,
                format!("must be between {} and {}", range.start(), range.end()),
            );
        }
        value
    }

    /// An IdP endpoint fixed in the configuration; `needed` when discovery will not supply it.
    fn endpoint(
        &mut self,
        field: &str,
        value: Option<String>,
        needed: bool,
    ) -> Option<AbsoluteUrl> {
        match value {
            Some(v) => self.url(field, &v).or_else(|| {
                if v.is_empty() {
                    self.add(field, "must not be empty");
                }
                None
            }),
            None => {
                if needed {
                    self.add(field, "is required when discovery is false");
                }
                None
            }
        }
    }

    fn under_prefix(&mut self, field: &str, path: &str, prefix: &str) {
        if !crate::url::is_under(path, prefix) {
            self.add(field, format!("must lie under the prefix {prefix}"));
        }
    }

    fn secret(
        &mut self,
        field: &str,
        raw: Option<RawSecret>,
        default_env: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Secret> {
        let raw = raw.unwrap_or(RawSecret {
            env: Some(default_env.to_string()),
            value: None,
        });
        match (raw.env, raw.value) {
            (Some(_), Some(_)) => {
                self.add(field, "give either \"env\" or \"value\", not both");
                None
            }
            (None, None) => {
                self.add(
                    field,
                    "give \"env\" (an environment variable name) or \"value\"",
                );
                None
            }
            (None, Some(value)) => Some(Secret::new(value)),
            (Some(name), None) => match env(&name) {
                Some(value) if !value.is_empty() => Some(Secret::new(value)),
                _ => {
                    self.add(
                        field,
                        format!(
                            "environment variable {name} is not set in the wasm VM \
                             (add it to vm_config.environment_variables)"
                        ),
                    );
                    None
                }
            },
        }
    }
}

/// Header names as Envoy stores them: lowercase tokens, no pseudo-headers.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// RFC 6265 cookie-name characters (an HTTP token).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Config {
    /// Parses and checks the plugin configuration. `env` reads the VM's environment.
    pub fn parse(
        json: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = serde_json::from_slice(json).map_err(|e| {
            ConfigErrors(vec![FieldError {
                field: "(json)".to_string(),
                problem: e.to_string(),
            }])
        })?;
        Self::check(raw, env)
    }

    fn check(
        mut raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        // Problems are reported in the order the sections are checked here.
        let mut p = Problems::default();
        let idp = raw.idp(&mut p, env);
        let prefix = check_prefix(&mut p, raw.prefix);
        let login_path = check_login_path(&mut p, raw.login_path, &prefix);
        let trust_forwarded = raw.trust_forwarded_headers.unwrap_or(false);
        let redirect_uri = check_redirect_uri(&mut p, raw.redirect_uri, &prefix, trust_forwarded);
        if redirect_uri.path() == login_path {
            p.add("redirect_uri", "must differ from login_path");
        }
        let scope = check_scopes(&mut p, raw.scopes);
        let auth_params = check_auth_params(&mut p, raw.auth_params);
        let login_params = check_login_params(&mut p, raw.login_params);
        let resources = check_resources(&mut p, raw.resources);
        let post_login_url = check_landing_url(&mut p, "post_login_url", raw.post_login_url);
        let cookie = raw.cookie.unwrap_or_default().check(&mut p);
        let keys = check_cookie_keys(&mut p, raw.cookie_keys, env);
        let (session_path, logout_path) =
            check_spa_paths(&mut p, raw.session_path, raw.logout_path, &prefix);
        let backchannel_logout_path = p.path(
            "backchannel_logout_path",
            raw.backchannel_logout_path
                .unwrap_or_else(|| format!("{prefix}/backchannel-logout")),
        );
        p.under_prefix("backchannel_logout_path", &backchannel_logout_path, &prefix);
        let id_token_encryption = encryption::check(&mut p, raw.id_token_encryption, env);
        let publishes_keys = matches!(&idp.client_auth, Some(ClientAuth::PrivateKeyJwt { .. }))
            || id_token_encryption.is_some();
        let jwks_path = match publishes_keys {
            true => {
                let path = p.path(
                    "jwks_path",
                    raw.jwks_path.unwrap_or_else(|| format!("{prefix}/jwks")),
                );
                p.under_prefix("jwks_path", &path, &prefix);
                Some(path)
            }
            false => {
                if raw.jwks_path.is_some() {
                    p.add(
                        "jwks_path",
                        "is served only with client_auth \"private_key_jwt\" or id_token_encryption",
                    );
                }
                None
            }
        };
        let post_logout_url = check_landing_url(&mut p, "post_logout_url", raw.post_logout_url);
        let csrf = raw.csrf.unwrap_or_default().check(&mut p);
        let rules = check_rules(&mut p, raw.rules, &prefix, &login_params);
        let upstream_step_up = raw.upstream_step_up.unwrap_or(false);
        for param in ["acr_values", "max_age"] {
            if upstream_step_up && !login_params.iter().any(|n| n == param) {
                p.add(
                    "upstream_step_up",
                    format!("needs {param:?} in login_params (a step-up logs in through the login endpoint)"),
                );
            }
        }
        let claim_headers = check_claim_headers(&mut p, raw.claim_headers);
        let mut own_paths = vec![
            ("login_path", login_path.as_str()),
            ("session_path", &session_path),
            ("logout_path", &logout_path),
            ("backchannel_logout_path", &backchannel_logout_path),
            ("redirect_uri", redirect_uri.path()),
        ];
        if let Some(path) = &jwks_path {
            own_paths.push(("jwks_path", path));
        }
        let policies = check_policies(&mut p, raw.bypass, raw.policies, &prefix, &own_paths);
        let jwt_payload = check_jwt_authn(&mut p, raw.jwt_authn.unwrap_or_default());
        let client_credentials = check_client_credentials(
            &mut p,
            raw.client_credentials.unwrap_or_default(),
            &resources,
        );
        let store = raw.store.map(|r| r.check(&mut p, env));
        let fapi2 = check_profile(
            &mut p,
            raw.profile.as_deref(),
            [
                (
                    "pushed_authorization_requests",
                    raw.pushed_authorization_requests,
                ),
                ("dpop", raw.dpop),
            ],
            &idp,
        );
        let dpop = check_dpop(
            &mut p,
            raw.dpop.or(fapi2.then_some(true)),
            raw.dpop_key,
            env,
        );
        let metrics_prefix = check_metrics_prefix(&mut p, raw.metrics_prefix);
        let upstream_token = match (raw.upstream_token, &dpop) {
            // RFC 9449 §7.1: a bound token goes in `Authorization: DPoP`, with its proof.
            (None, Some(_)) => TokenHeader {
                name: "authorization".to_string(),
                prefix: "DPoP ".to_string(),
                suffix: String::new(),
            },
            (Some(_), Some(_)) => {
                p.add(
                    "upstream_token",
                    "is Authorization: DPoP with \"dpop\": true (RFC 9449); remove it",
                );
                TokenHeader::default()
            }
            (raw, None) => raw.unwrap_or_default().check(&mut p),
        };
        let raw_session = raw.session.unwrap_or_default();
        let refresh_result_slots = raw_session.result_slots(&mut p);
        let session = raw_session.check(&mut p);

        match (idp.client_auth, keys) {
            (Some(client_auth), Some(keys)) if p.0.is_empty() => Ok(Config {
                issuer: idp.issuer,
                discovery: idp.discovery,
                metadata_refresh: idp.metadata_refresh,
                jwks_min_refetch: idp.jwks_min_refetch,
                endpoints: idp.endpoints,
                idp_cluster: idp.cluster,
                idp_mtls_cluster: idp.mtls_cluster,
                idp_authority: idp.authority,
                idp_timeout: idp.timeout,
                client_id: idp.client_id,
                client_auth,
                dpop,
                fapi2,
                redirect_uri,
                trust_forwarded,
                scope,
                auth_params,
                login_params,
                resources,
                pushed_authorization_requests: fapi2
                    || raw.pushed_authorization_requests.unwrap_or(false),
                prefix,
                login_path,
                post_login_url,
                cookie,
                keys,
                upstream_token,
                session,
                refresh_result_slots,
                session_path,
                logout_path,
                backchannel_logout_path,
                jwks_path,
                id_token_encryption,
                post_logout_url,
                csrf,
                rules,
                upstream_step_up,
                access_log: raw.access_log.unwrap_or(false),
                claim_headers,
                policies,
                jwt_payload,
                client_credentials,
                store,
                metrics_prefix,
            }),
            _ => Err(ConfigErrors(p.0)),
        }
    }

    /// The `:authority` for a call to `url` through the IdP cluster.
    pub fn idp_authority_for<'a>(&'a self, url: &'a AbsoluteUrl) -> &'a str {
        self.idp_authority.as_deref().unwrap_or(&url.authority)
    }

    /// The callback path the IdP redirects to.
    pub fn callback_path(&self) -> &str {
        self.redirect_uri.path()
    }
}

/// The identity-provider fields of [`Config`], checked as one section.
struct Idp {
    issuer: String,
    discovery: bool,
    metadata_refresh: u64,
    jwks_min_refetch: u64,
    endpoints: Endpoints,
    cluster: String,
    mtls_cluster: Option<String>,
    authority: Option<String>,
    timeout: Duration,
    client_id: String,
    client_auth: Option<ClientAuth>,
}

impl RawConfig {
    /// Checks the identity-provider fields. They are taken out of `self`, not moved, so that
    /// `Config::check` can still move the other sections out afterwards.
    fn idp(&mut self, p: &mut Problems, env: &dyn Fn(&str) -> Option<String>) -> Idp {
        let issuer = p.required("issuer", self.issuer.take());
        if !issuer.is_empty() {
            p.url("issuer", &issuer);
        }
        let discovery = self.discovery.unwrap_or(true);
        let endpoints = self.endpoints(p, discovery);
        let jwks_min_refetch =
            p.between("jwks_min_refetch_s", self.jwks_min_refetch_s, 60, 1..=3600);
        let metadata_refresh = p.between(
            "metadata_refresh_s",
            self.metadata_refresh_s,
            3600,
            60..=86_400,
        );
        let cluster = p.required("idp_cluster", self.idp_cluster.take());
        let timeout_ms = p.between("idp_timeout_ms", self.idp_timeout_ms, 5000, 100..=60_000);
        let client_id = p.required("client_id", self.client_id.take());
        let client_auth = self.client_auth(p, env);
        let mtls_cluster = self.idp_mtls_cluster.take();
        if mtls_cluster.is_some() && !client_auth.as_ref().is_some_and(ClientAuth::is_mutual_tls) {
            p.add(
                "idp_mtls_cluster",
                "is used only with client_auth \"tls_client_auth\" or \"self_signed_tls_client_auth\"",
            );
        }
        Idp {
            issuer,
            discovery,
            metadata_refresh,
            jwks_min_refetch,
            endpoints,
            cluster,
            mtls_cluster,
            authority: self.idp_authority.take(),
            timeout: Duration::from_millis(timeout_ms),
            client_id,
            client_auth,
        }
    }

    /// `client_auth` and the credential it takes: the client secret, or the filter's key.
    fn client_auth(
        &mut self,
        p: &mut Problems,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ClientAuth> {
        let audience = match self.client_assertion_audience.take().as_deref() {
            None | Some("issuer") => Audience::Issuer,
            Some("token_endpoint") => Audience::TokenEndpoint,
            Some(other) => {
                p.add(
                    "client_assertion_audience",
                    format!("{other:?} is not \"issuer\" or \"token_endpoint\""),
                );
                Audience::Issuer
            }
        };
        // FAPI 2.0 takes a key or a client certificate (the IdP cluster's TLS, see README).
        let default = match self.profile.as_deref() {
            Some("fapi2") => "private_key_jwt",
            _ => "client_secret_basic",
        };
        let method = self.client_auth.take();
        let method = method.as_deref().unwrap_or(default);
        let takes_key = method == "private_key_jwt";
        for (field, given) in [
            ("client_key", self.client_key.is_some()),
            ("client_key_id", self.client_key_id.is_some()),
            ("client_certificate", self.client_certificate.is_some()),
        ] {
            if given && !takes_key {
                p.add(field, "is used only with client_auth \"private_key_jwt\"");
            }
        }
        if method != "client_secret_basic" && self.client_secret.is_some() {
            p.add(
                "client_secret",
                format!("is not used with client_auth {method:?} (remove it)"),
            );
        }
        match method {
            "client_secret_basic" => {
                let secret = self.client_secret.take();
                p.secret("client_secret", secret, DEFAULT_CLIENT_SECRET_ENV, env)
                    .map(ClientAuth::SecretBasic)
            }
            "private_key_jwt" => {
                let key = self.client_key.take();
                let text = p.secret("client_key", key, DEFAULT_CLIENT_KEY_ENV, env)?;
                let key = SigningKey::parse(text.expose(), self.client_key_id.as_deref())
                    .map_err(|e| p.add("client_key", e.to_string()))
                    .ok()?;
                let key = match self.client_certificate.take() {
                    // A certificate is public, but read like the key (it may sit next to it).
                    Some(raw) => {
                        let pem = p.secret("client_certificate", Some(raw), "", env)?;
                        key.with_certificate(pem.expose())
                            .map_err(|e| p.add("client_certificate", e.to_string()))
                            .ok()?
                    }
                    None => key,
                };
                Some(ClientAuth::PrivateKeyJwt {
                    key: Rc::new(key),
                    audience,
                })
            }
            "tls_client_auth" => Some(ClientAuth::MutualTls(TlsCertificate::Pki)),
            "self_signed_tls_client_auth" => {
                Some(ClientAuth::MutualTls(TlsCertificate::SelfSigned))
            }
            other => {
                p.add(
                    "client_auth",
                    format!(
                        "{other:?} is not \"client_secret_basic\", \"private_key_jwt\", \
                         \"tls_client_auth\" or \"self_signed_tls_client_auth\""
                    ),
                );
                None
            }
        }
    }

    /// The endpoints fixed in the configuration; without discovery the ones every login
    /// needs must all be given.
    fn endpoints(&mut self, p: &mut Problems, discovery: bool) -> Endpoints {
        let needed = !discovery;
        let endpoints = Endpoints {
            authorization: p.endpoint(
                "authorization_endpoint",
                self.authorization_endpoint.take(),
                needed,
            ),
            token: p.endpoint("token_endpoint", self.token_endpoint.take(), needed),
            jwks: p.endpoint("jwks_uri", self.jwks_uri.take(), needed),
            end_session: p.endpoint(
                "end_session_endpoint",
                self.end_session_endpoint.take(),
                false,
            ),
            revocation: p.endpoint(
                "revocation_endpoint",
                self.revocation_endpoint.take(),
                false,
            ),
            par: p.endpoint(
                "pushed_authorization_request_endpoint",
                self.pushed_authorization_request_endpoint.take(),
                false,
            ),
            signing_algs: self.id_token_signing_algs.take(),
        };
        if endpoints
            .signing_algs
            .as_ref()
            .is_some_and(|a| a.is_empty())
        {
            p.add("id_token_signing_algs", "must name at least one algorithm");
        }
        endpoints
    }
}

/// `prefix`: the protected path prefix, kept without a trailing slash (unless it is `/`).
fn check_prefix(p: &mut Problems, raw: Option<String>) -> String {
    let prefix = p.path("prefix", raw.unwrap_or_else(|| DEFAULT_PREFIX.to_string()));
    if prefix.len() > 1 {
        prefix.trim_end_matches('/').to_string()
    } else {
        prefix
    }
}

fn check_login_path(p: &mut Problems, raw: Option<String>, prefix: &str) -> String {
    let login_path = p.path(
        "login_path",
        raw.unwrap_or_else(|| format!("{prefix}/login")),
    );
    p.under_prefix("login_path", &login_path, prefix);
    login_path
}

/// `redirect_uri`: an absolute URL without a query, or just a path.
fn check_redirect_uri(
    p: &mut Problems,
    raw: Option<String>,
    prefix: &str,
    trust_forwarded: bool,
) -> RedirectUri {
    let redirect = raw.unwrap_or_else(|| format!("{prefix}/callback"));
    if redirect.starts_with('/') {
        return RedirectUri::Path {
            path: p.path("redirect_uri", redirect),
            trust_forwarded,
        };
    }
    match p.url("redirect_uri", &redirect) {
        Some(url) => {
            if url.path_and_query.contains('?') {
                p.add("redirect_uri", "must not have a query");
            }
            RedirectUri::Absolute(url)
        }
        None => RedirectUri::Path {
            path: String::new(),
            trust_forwarded,
        },
    }
}

/// `scopes`, as the space-separated `scope` parameter: `openid` first, each scope once.
fn check_scopes(p: &mut Problems, raw: Option<Vec<String>>) -> String {
    let mut scopes = vec!["openid".to_string()];
    for s in raw.unwrap_or_else(|| vec!["profile".into(), "email".into()]) {
        if s.is_empty() || s.contains([' ', '"', '\\']) || !s.is_ascii() {
            p.add(
                "scopes",
                format!("{s:?} is not a valid scope token (RFC 6749 §3.3)"),
            );
        } else if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    scopes.join(" ")
}

/// Static authorization parameters: none the filter sets itself, each value sendable.
fn check_auth_params(
    p: &mut Problems,
    raw: Option<BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in raw.unwrap_or_default() {
        let field = format!("auth_params.{name}");
        if !auth_params::is_parameter_name(&name) {
            p.add("auth_params", format!("{name:?} is not a parameter name"));
        } else if auth_params::is_owned(&name) {
            p.add(&field, "is set by the filter itself");
        } else if let Err(why) = auth_params::check_value(&name, &value) {
            p.add(&field, why.to_string());
        }
        out.push((name, value));
    }
    out
}

/// The parameters the login endpoint forwards: by default OIDC's login hints
/// ([`auth_params::DEFAULT_FORWARDED`]), never one the filter sets itself.
fn check_login_params(p: &mut Problems, raw: Option<Vec<String>>) -> Vec<String> {
    let names = raw.unwrap_or_else(|| {
        auth_params::DEFAULT_FORWARDED
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    for name in &names {
        if auth_params::is_owned(name) || name == "return_to" {
            p.add(
                "login_params",
                format!("{name:?} is set by the filter itself"),
            );
        } else if !auth_params::is_parameter_name(name) {
            p.add("login_params", format!("{name:?} is not a parameter name"));
        }
    }
    names
}

/// RFC 8707 §2: each resource an absolute URI without a fragment.
fn check_resources(p: &mut Problems, raw: Option<Vec<String>>) -> Vec<String> {
    check_resources_at(p, "resources", raw.unwrap_or_default())
}

fn check_resources_at(p: &mut Problems, field: &str, resources: Vec<String>) -> Vec<String> {
    for r in &resources {
        let scheme_ok = r.split_once(':').is_some_and(|(scheme, rest)| {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        });
        if !scheme_ok || r.contains('#') || r.chars().any(|c| c.is_control() || c == ' ') {
            p.add(
                field,
                format!("{r:?} is not an absolute URI without a fragment (RFC 8707 §2)"),
            );
        }
    }
    resources
}

/// Where the browser lands after login or logout: a local path or an absolute URL.
fn check_landing_url(p: &mut Problems, field: &str, raw: Option<String>) -> String {
    let url = raw.unwrap_or_else(|| "/".to_string());
    if !url.starts_with('/') {
        p.url(field, &url);
    }
    url
}

impl RawCookie {
    fn check(self, p: &mut Problems) -> CookieSettings {
        let name = self.name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string());
        if !is_cookie_name(&name) {
            p.add(
                "cookie.name",
                "must be a valid cookie name (letters, digits, -_.!#$%&'*+^`|~)",
            );
        }
        let secure = self.secure.unwrap_or(true);
        if !secure && (name.starts_with("__Host-") || name.starts_with("__Secure-")) {
            p.add(
                "cookie.secure",
                "must be true for a __Host- or __Secure- cookie name",
            );
        }
        let same_site = match self.same_site.as_deref().unwrap_or("Lax") {
            s if s.eq_ignore_ascii_case("lax") => SameSite::Lax,
            s if s.eq_ignore_ascii_case("strict") => SameSite::Strict,
            _ => {
                // None would let other sites send the session along; the login callback
                // needs Lax at least, and Strict breaks it (see README).
                p.add("cookie.same_site", "must be \"Lax\" or \"Strict\"");
                SameSite::Lax
            }
        };
        let transaction_max_age = p.between(
            "cookie.transaction_max_age_s",
            self.transaction_max_age_s,
            600,
            30..=3600,
        );
        CookieSettings {
            name,
            same_site,
            secure,
            transaction_max_age,
        }
    }
}

fn check_cookie_keys(
    p: &mut Problems,
    raw: Option<RawSecret>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<KeyRing> {
    let secret = p.secret("cookie_keys", raw, DEFAULT_COOKIE_KEYS_ENV, env)?;
    match KeyRing::from_base64_list(secret.expose()) {
        Ok(ring) => Some(ring),
        Err(e) => {
            p.add("cookie_keys", e.to_string());
            None
        }
    }
}

/// `session_path` and `logout_path`: the SPA's endpoints, both under the prefix.
fn check_spa_paths(
    p: &mut Problems,
    session: Option<String>,
    logout: Option<String>,
    prefix: &str,
) -> (String, String) {
    let session_path = p.path(
        "session_path",
        session.unwrap_or_else(|| format!("{prefix}/session")),
    );
    let logout_path = p.path(
        "logout_path",
        logout.unwrap_or_else(|| format!("{prefix}/logout")),
    );
    p.under_prefix("session_path", &session_path, prefix);
    p.under_prefix("logout_path", &logout_path, prefix);
    (session_path, logout_path)
}

impl RawCsrf {
    fn check(self, p: &mut Problems) -> Csrf {
        let csrf = Csrf {
            header: self
                .header
                .unwrap_or_else(|| "x-csrf".to_string())
                .to_ascii_lowercase(),
            value: self.value.unwrap_or_else(|| "1".to_string()),
            allowed_origins: self.allowed_origins.unwrap_or_default(),
        };
        if !is_header_name(&csrf.header) {
            p.add(
                "csrf.header",
                "must be a header name (letters, digits, '-', '_')",
            );
        }
        if csrf.value.is_empty() || csrf.value.chars().any(|c| c.is_control()) {
            p.add("csrf.value", "must be a non-empty header value");
        }
        for origin in &csrf.allowed_origins {
            match AbsoluteUrl::parse(origin) {
                Ok(u) if u.path_and_query == "/" && !origin.ends_with('/') => {}
                _ => p.add(
                    "csrf.allowed_origins",
                    format!("{origin:?} is not an origin like https://app.example.com (no path, no trailing slash)"),
                ),
            }
        }
        csrf
    }
}

/// Rules, each under the prefix and asking for something. A step-up is a login through the
/// login endpoint, so the parameters it needs must be ones the endpoint forwards.
fn check_rules(
    p: &mut Problems,
    raw: Option<Vec<RawRule>>,
    prefix: &str,
    login_params: &[String],
) -> Vec<Rule> {
    let mut rules = Vec::new();
    let forwards = |name: &str| login_params.iter().any(|n| n == name);
    for (i, r) in raw.unwrap_or_default().into_iter().enumerate() {
        if !r.prefix.starts_with('/') || !crate::url::is_under(&r.prefix, prefix) {
            p.add(
                &format!("rules[{i}].prefix"),
                format!("must be a path under the prefix {prefix}"),
            );
        }
        let step_up = StepUp {
            acr: r.acr.unwrap_or_default(),
            max_auth_age: r.max_auth_age_s,
        };
        if r.require.is_empty() && step_up == StepUp::default() {
            p.add(
                &format!("rules[{i}].require"),
                "must name at least one claim",
            );
        }
        for acr in &step_up.acr {
            if let Err(why) = auth_params::check_value("acr_values", acr) {
                p.add(&format!("rules[{i}].acr"), format!("{acr:?} {why}"));
            } else if acr.is_empty() || acr.contains(' ') {
                p.add(
                    &format!("rules[{i}].acr"),
                    format!("{acr:?} is not an acr value"),
                );
            }
        }
        if !step_up.acr.is_empty() && !forwards("acr_values") {
            p.add(
                &format!("rules[{i}].acr"),
                "needs \"acr_values\" in login_params (a step-up logs in through the login endpoint)",
            );
        }
        if step_up.max_auth_age.is_some() && !forwards("max_age") {
            p.add(
                &format!("rules[{i}].max_auth_age_s"),
                "needs \"max_age\" in login_params (a step-up logs in through the login endpoint)",
            );
        }
        rules.push(Rule {
            prefix: r.prefix.trim_end_matches('/').to_string(),
            require: r.require.into_iter().collect(),
            step_up,
        });
    }
    rules
}

fn check_claim_headers(
    p: &mut Problems,
    raw: Option<BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let mut claim_headers = Vec::new();
    for (claim, header) in raw.unwrap_or_default() {
        let header = header.to_ascii_lowercase();
        if !is_header_name(&header)
            || matches!(
                header.as_str(),
                "cookie" | "host" | "authorization" | "content-length" | "transfer-encoding"
            )
        {
            p.add("claim_headers", format!("{header:?} cannot carry a claim"));
        }
        claim_headers.push((claim, header));
    }
    claim_headers
}

/// `policies` and `bypass` (entries of policy `none`): paths under the prefix, each prefix
/// once, and the filter's own endpoints left to a policy that handles sessions.
fn check_policies(
    p: &mut Problems,
    bypass: Option<Vec<String>>,
    raw: Option<Vec<RawPolicy>>,
    prefix: &str,
    own_paths: &[(&str, &str)],
) -> Policies {
    let mut list: Vec<(String, PathPolicy)> = Vec::new();
    for path in bypass.unwrap_or_default() {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            p.add(
                "bypass",
                format!("{path:?} must be a path starting with '/'"),
            );
        }
        let entry = PathPolicy {
            prefix: path.trim_end_matches('/').to_string(),
            policy: Policy::None,
            bearer: false,
        };
        list.push(("bypass".to_string(), entry));
    }
    for (i, r) in raw.unwrap_or_default().into_iter().enumerate() {
        let field = format!("policies[{i}]");
        if !r.prefix.starts_with('/')
            || r.prefix.contains(['?', '#'])
            || !crate::url::is_under(&r.prefix, prefix)
        {
            p.add(
                &format!("{field}.prefix"),
                format!("must be a path under the prefix {prefix}"),
            );
        }
        let policy = Policy::parse(&r.policy).unwrap_or_else(|| {
            p.add(
                &format!("{field}.policy"),
                format!("{:?} is not one of {}", r.policy, Policy::NAMES),
            );
            Policy::Session
        });
        let bearer = r.bearer.unwrap_or(false);
        if bearer && !policy.uses_session() {
            p.add(
                &format!("{field}.bearer"),
                format!("does not apply to policy {}", policy.name()),
            );
        }
        let entry = PathPolicy {
            prefix: r.prefix.trim_end_matches('/').to_string(),
            policy,
            bearer,
        };
        list.push((field, entry));
    }
    for (i, (field, entry)) in list.iter().enumerate() {
        if let Some((other, _)) = list.iter().take(i).find(|(_, e)| e.prefix == entry.prefix) {
            p.add(field, format!("prefix {} is also in {other}", entry.prefix));
        }
    }
    let policies = Policies::new(list.iter().map(|(_, e)| e.clone()).collect());
    for (own, path) in own_paths {
        if !crate::url::is_under(path, prefix) {
            continue;
        }
        let applied = policies.for_path(path);
        if !applied.policy.uses_session() {
            let field = list
                .iter()
                .filter(|(_, e)| crate::url::is_under(path, &e.prefix))
                .max_by_key(|(_, e)| e.prefix.len())
                .map_or("policies", |(f, _)| f.as_str());
            p.add(
                field,
                format!(
                    "must not cover {own} ({path}): the filter's endpoints need a policy with sessions"
                ),
            );
        }
    }
    policies
}

/// `jwt_authn.payload_in_metadata`: the name Envoy's `jwt_authn` stores the verified payload
/// under (its provider's `payload_in_metadata`).
fn check_jwt_authn(p: &mut Problems, raw: RawJwtAuthn) -> String {
    let name = raw
        .payload_in_metadata
        .unwrap_or_else(|| DEFAULT_JWT_PAYLOAD.to_string());
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        p.add(
            "jwt_authn.payload_in_metadata",
            "must be a metadata key name",
        );
    }
    name
}

/// `profile`: only `"fapi2"` (FAPI 2.0 Security Profile), whose parts may not be switched off.
fn check_profile(
    p: &mut Problems,
    profile: Option<&str>,
    switches: [(&str, Option<bool>); 2],
    idp: &Idp,
) -> bool {
    match profile {
        None => false,
        Some("fapi2") => {
            if matches!(idp.client_auth, Some(ClientAuth::SecretBasic(_))) {
                p.add(
                    "client_auth",
                    "must be \"private_key_jwt\", \"tls_client_auth\" or \
                     \"self_signed_tls_client_auth\" with profile \"fapi2\" (FAPI 2.0 §5.3.3.4)",
                );
            }
            for (field, on) in switches {
                if on == Some(false) {
                    p.add(field, "cannot be false with profile \"fapi2\"");
                }
            }
            if !idp.discovery && idp.endpoints.par.is_none() {
                p.add(
                    "pushed_authorization_request_endpoint",
                    "is required with profile \"fapi2\" and discovery off",
                );
            }
            true
        }
        Some(other) => {
            p.add("profile", format!("{other:?} is not \"fapi2\""));
            false
        }
    }
}

/// `dpop` and its key (the same on every replica: a bound token works on all of them).
fn check_dpop(
    p: &mut Problems,
    on: Option<bool>,
    key: Option<RawSecret>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Rc<SigningKey>> {
    if on != Some(true) {
        if key.is_some() {
            p.add("dpop_key", "is used only with \"dpop\": true");
        }
        return None;
    }
    let text = p.secret("dpop_key", key, DEFAULT_DPOP_KEY_ENV, env)?;
    match SigningKey::parse(text.expose(), None) {
        Ok(key) => Some(Rc::new(key)),
        Err(e) => {
            p.add("dpop_key", e.to_string());
            None
        }
    }
}

impl RawStore {
    fn check(self, p: &mut Problems, env: &dyn Fn(&str) -> Option<String>) -> Store {
        let cluster = p.required("store.cluster", self.cluster);
        let prefix = self.prefix.unwrap_or_else(|| "envoy-bff/".to_string());
        if prefix.is_empty() || prefix.chars().any(|c| c.is_control()) {
            p.add(
                "store.prefix",
                "must be a key prefix without control characters",
            );
        }
        // Below etcd's own request timeout (~6-7 s without quorum), so a call ends here first.
        let timeout = p.between("store.timeout_ms", self.timeout_ms, 1500, 100..=5000);
        let sync_interval_ms = p.between(
            "store.sync_interval_ms",
            self.sync_interval_ms,
            1000,
            100..=1000,
        );
        let auth = match (self.username, self.password) {
            (Some(username), password) => {
                if username.is_empty() || username.chars().any(|c| c.is_control()) {
                    p.add("store.username", "must be an etcd user name");
                }
                let password =
                    p.secret("store.password", password, DEFAULT_STORE_PASSWORD_ENV, env);
                password.map(|password| StoreAuth { username, password })
            }
            (None, Some(_)) => {
                p.add("store.password", "needs store.username");
                None
            }
            (None, None) => None,
        };
        Store {
            cluster,
            prefix,
            timeout: Duration::from_millis(timeout),
            sync_interval_ms,
            auth,
        }
    }
}

fn check_client_credentials(
    p: &mut Problems,
    raw: RawClientCredentials,
    resources: &[String],
) -> ClientCredentials {
    let scopes = raw.scopes.unwrap_or_default();
    for s in &scopes {
        if s.is_empty() || s.contains(' ') || s.chars().any(|c| c.is_control()) {
            p.add("client_credentials.scopes", format!("{s:?} is not a scope"));
        }
    }
    let resources = match raw.resources {
        Some(list) => check_resources_at(p, "client_credentials.resources", list),
        None => resources.to_vec(),
    };
    ClientCredentials {
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        resources,
    }
}

fn check_metrics_prefix(p: &mut Problems, raw: Option<String>) -> String {
    let metrics_prefix = raw.unwrap_or_else(|| "bff".to_string());
    if metrics_prefix.is_empty()
        || !metrics_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.".contains(&b))
    {
        p.add("metrics_prefix", "must be letters, digits, '_' or '.'");
    }
    metrics_prefix
}

impl RawUpstreamToken {
    fn check(self, p: &mut Problems) -> TokenHeader {
        let name = self
            .header
            .unwrap_or_else(|| "authorization".to_string())
            .to_ascii_lowercase();
        if !is_header_name(&name) {
            p.add(
                "upstream_token.header",
                "must be a header name (letters, digits, '-', '_')",
            );
        }
        if matches!(
            name.as_str(),
            "cookie" | "host" | "content-length" | "transfer-encoding"
        ) {
            p.add(
                "upstream_token.header",
                format!("{name} cannot carry the token"),
            );
        }
        let format = self.format.unwrap_or_else(|| "Bearer {token}".to_string());
        let (prefix, suffix) = match format.split_once("{token}") {
            Some((a, b)) if !b.contains("{token}") => (a.to_string(), b.to_string()),
            _ => {
                p.add("upstream_token.format", "must contain {token} exactly once");
                (String::new(), String::new())
            }
        };
        if format.chars().any(|c| c.is_control()) {
            p.add(
                "upstream_token.format",
                "must not contain control characters",
            );
        }
        TokenHeader {
            name,
            prefix,
            suffix,
        }
    }
}

impl RawSession {
    fn result_slots(&self, p: &mut Problems) -> u64 {
        let slots = self
            .refresh_result_slots
            .unwrap_or(single_flight::DEFAULT_SLOTS);
        if !(64..=65_536).contains(&slots) {
            p.add(
                "session.refresh_result_slots",
                "must be between 64 and 65536",
            );
        }
        slots
    }

    fn check(self, p: &mut Problems) -> SessionLifetime {
        let session = SessionLifetime {
            max_lifetime: self.max_lifetime_s.unwrap_or(8 * 3600),
            inactivity_timeout: self.inactivity_timeout_s.unwrap_or(3600),
            refresh_leeway: self.refresh_leeway_s.unwrap_or(60),
        };
        if !(60..=30 * 86_400).contains(&session.max_lifetime) {
            p.add(
                "session.max_lifetime_s",
                "must be between 60 and 2592000 (30 days)",
            );
        }
        if !(60..=session.max_lifetime.max(60)).contains(&session.inactivity_timeout) {
            p.add(
                "session.inactivity_timeout_s",
                "must be between 60 and session.max_lifetime_s",
            );
        }
        if session.refresh_leeway > 86_400 {
            p.add("session.refresh_leeway_s", "must be at most 86400");
        }
        session
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    pub const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    pub fn minimal_json() -> serde_json::Value {
        serde_json::json!({
            "issuer": "http://127.0.0.1:9000",
            "authorization_endpoint": "http://127.0.0.1:9000/auth",
            "token_endpoint": "http://127.0.0.1:9000/token",
            "idp_cluster": "idp",
            "client_id": "bff",
            "client_secret": {"value": "s3cret"},
            "cookie_keys": {"value": KEY_A},
        })
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    pub fn config_from(v: serde_json::Value) -> Config {
        Config::parse(v.to_string().as_bytes(), &no_env).unwrap()
    }

    fn errors_of(v: serde_json::Value) -> Vec<FieldError> {
        Config::parse(v.to_string().as_bytes(), &no_env)
            .unwrap_err()
            .0
    }

    /// The problems `v` has, as start-up prints them.
    fn error_text(v: &serde_json::Value, env: &dyn Fn(&str) -> Option<String>) -> String {
        Config::parse(v.to_string().as_bytes(), env)
            .unwrap_err()
            .to_string()
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn defaults_are_secure() {
        let c = config_from(minimal_json());
        assert_eq!(c.prefix, "/private");
        assert_eq!(c.login_path, "/private/login");
        assert_eq!(c.callback_path(), "/private/callback");
        assert_eq!(c.post_login_url, "/");
        assert_eq!(c.scope, "openid profile email");
        assert_eq!(c.cookie.name, "__Host-bff-session");
        assert!(c.cookie.secure);
        assert_eq!(c.cookie.same_site, SameSite::Lax);
        assert_eq!(c.upstream_token.name, "authorization");
        assert_eq!(c.upstream_token.value(&Secret::new("t")), "Bearer t");
        assert!(c.discovery);
        assert_eq!(c.metadata_refresh, 3600);
        assert_eq!(
            c.endpoints.token.as_ref().unwrap().authority,
            "127.0.0.1:9000"
        );
        assert_eq!(
            c.idp_authority_for(c.endpoints.token.as_ref().unwrap()),
            "127.0.0.1:9000"
        );
        assert_eq!(
            c.session,
            SessionLifetime {
                max_lifetime: 8 * 3600,
                inactivity_timeout: 3600,
                refresh_leeway: 60
            }
        );
        assert_eq!(c.idp_timeout, Duration::from_secs(5));
    }

    #[test]
    fn secrets_come_from_the_environment_by_default() {
        let mut v = minimal_json();
        let o = v.as_object_mut().unwrap();
        o.remove("client_secret");
        o.remove("cookie_keys");
        let env = |name: &str| match name {
            "BFF_CLIENT_SECRET" => Some("from-env".to_string()),
            "BFF_COOKIE_KEYS" => Some(format!("{KEY_B}, {KEY_A}")),
            _ => None,
        };
        let c = Config::parse(v.to_string().as_bytes(), &env).unwrap();
        assert_eq!(
            c.client_auth,
            ClientAuth::SecretBasic(Secret::new("from-env"))
        );
        assert_eq!(c.keys.len(), 2);

        let errs = Config::parse(v.to_string().as_bytes(), &no_env).unwrap_err();
        let text = errs.to_string();
        assert!(text.contains("client_secret: environment variable BFF_CLIENT_SECRET is not set"));
        assert!(text.contains("cookie_keys: environment variable BFF_COOKIE_KEYS is not set"));
    }

    pub fn private_key_jwt_json() -> serde_json::Value {
        let mut v = minimal_json();
        let o = v.as_object_mut().unwrap();
        o.remove("client_secret");
        o.insert("client_auth".into(), serde_json::json!("private_key_jwt"));
        let pem = include_str!("../tests/fixtures/keys/ec-p256.pem");
        o.insert("client_key".into(), serde_json::json!({ "value": pem }));
        o.insert("client_key_id".into(), serde_json::json!("bff-1"));
        v
    }

    #[test]
    fn id_token_encryption_takes_keys_of_its_alg_and_publishes_them() {
        let rsa = include_str!("../tests/fixtures/keys/rsa-2048.pem");
        let ec = include_str!("../tests/fixtures/keys/ec-p256.pem");
        let ed = include_str!("../tests/fixtures/keys/ed25519.pem");
        let mut v = minimal_json();
        v["id_token_encryption"] = serde_json::json!({
            "alg": "RSA-OAEP-256",
            "keys": [{"value": rsa, "kid": "enc-1"}]
        });
        let c = config_from(v);
        let e = c.id_token_encryption.as_ref().unwrap();
        // enc defaults as in OIDC Dynamic Client Registration §2.
        assert_eq!(
            (e.alg.name(), e.enc.name()),
            ("RSA-OAEP-256", "A128CBC-HS256")
        );
        assert_eq!(c.jwks_path.as_deref(), Some("/private/jwks"));
        let served = crate::endpoints::client_jwks(&c, "GET");
        let jwks: serde_json::Value = serde_json::from_str(&served.body).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(
            (&key["kid"], &key["use"], &key["alg"], &key["kty"]),
            (
                &serde_json::json!("enc-1"),
                &serde_json::json!("enc"),
                &serde_json::json!("RSA-OAEP-256"),
                &serde_json::json!("RSA")
            )
        );
        assert!(key.get("d").is_none() && key.get("p").is_none(), "{key}");
        // Problems, each named by its field.
        let mut v = minimal_json();
        v["id_token_encryption"] = serde_json::json!({"enc": "A192GCM", "keys": [
            {"value": ed}, {"value": ec, "kid": "a"}, {"value": ec, "kid": "a"}]});
        let text = error_text(&v, &no_env);
        for expected in [
            "id_token_encryption.alg: is required",
            "id_token_encryption.enc: \"A192GCM\" is not one of A128GCM, A256GCM, A128CBC-HS256",
            "id_token_encryption.keys[0]: is an Ed25519 key",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        let mut v = minimal_json();
        v["id_token_encryption"] = serde_json::json!({"alg": "RSA-OAEP", "keys": [
            {"value": ec, "kid": "a"}, {"value": rsa, "kid": "b"}, {"value": rsa, "kid": "b"}]});
        let text = error_text(&v, &no_env);
        for expected in [
            "id_token_encryption.keys[0]: does not serve alg RSA-OAEP",
            "id_token_encryption.keys[2]: has the kid \"b\" of another key",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let mut v = minimal_json();
        v["id_token_encryption"] = serde_json::json!({"alg": "ECDH-ES"});
        let text = error_text(&v, &no_env);
        assert!(
            text.contains(
                "id_token_encryption.keys[0]: environment variable BFF_ID_TOKEN_KEY is not set"
            ),
            "{text}"
        );
    }

    #[test]
    fn private_key_jwt_takes_a_key_and_serves_it() {
        let c = config_from(private_key_jwt_json());
        let ClientAuth::PrivateKeyJwt { key, audience } = &c.client_auth else {
            panic!("{:?}", c.client_auth)
        };
        assert_eq!(
            (key.alg(), key.kid(), *audience),
            ("ES256", "bff-1", Audience::Issuer)
        );
        assert_eq!(c.jwks_path.as_deref(), Some("/private/jwks"));
        assert_eq!(config_from(minimal_json()).jwks_path, None);
        // From the environment by default; problems named by field, never quoting the key.
        let mut v = private_key_jwt_json();
        v.as_object_mut().unwrap().remove("client_key");
        v["client_secret"] = serde_json::json!({"value": "s"});
        v["client_assertion_audience"] = serde_json::json!("everyone");
        let text = error_text(&v, &no_env);
        for expected in [
            "client_key: environment variable BFF_CLIENT_KEY is not set",
            "client_secret: is not used with client_auth \"private_key_jwt\"",
            "client_assertion_audience: \"everyone\" is not",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        // A certificate for the key is taken; one for another key is named.
        let mut v = private_key_jwt_json();
        let cert = include_str!("../tests/fixtures/keys/ec-p256.crt");
        v["client_certificate"] = serde_json::json!({ "value": cert });
        let c = config_from(v.clone());
        let ClientAuth::PrivateKeyJwt { key, .. } = &c.client_auth else {
            panic!("{:?}", c.client_auth)
        };
        assert!(key.published_jwk().get("x5t#S256").is_some());
        v["client_certificate"] = serde_json::json!({"env": "BFF_CLIENT_CERT"});
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("client_certificate: environment variable BFF_CLIENT_CERT is not set"),
            "{text}"
        );
        v["client_certificate"] =
            serde_json::json!({ "value": include_str!("../tests/fixtures/keys/rsa-2048.crt") });
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("client_certificate: is a certificate for another key"),
            "{text}"
        );
        let mut v = private_key_jwt_json();
        v["client_key"] = serde_json::json!({"value": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"});
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("client_key: is a PEM private key") && !text.contains("MIIB"),
            "{text}"
        );
        let mut v = minimal_json();
        v["client_auth"] = serde_json::json!("client_secret_jwt");
        v["jwks_path"] = serde_json::json!("/private/keys");
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("client_auth: \"client_secret_jwt\" is not"),
            "{text}"
        );
        let mut v = minimal_json();
        v["jwks_path"] = serde_json::json!("/private/keys");
        v["client_certificate"] = serde_json::json!({"env": "BFF_CLIENT_CERT"});
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("client_certificate: is used only with client_auth \"private_key_jwt\""),
            "{text}"
        );
        assert!(
            text.contains("jwks_path: is served only with client_auth"),
            "{text}"
        );
    }

    #[test]
    fn the_fapi2_profile_turns_its_parts_on_and_refuses_them_off() {
        let mut v = minimal_json();
        v.as_object_mut().unwrap().remove("client_secret");
        v["profile"] = serde_json::json!("fapi2");
        let ec = include_str!("../tests/fixtures/keys/ec-p256.pem").to_string();
        let ed = include_str!("../tests/fixtures/keys/ed25519.pem").to_string();
        let env = move |name: &str| match name {
            "BFF_CLIENT_KEY" => Some(ec.clone()),
            "BFF_DPOP_KEY" => Some(ed.clone()),
            _ => None,
        };
        let c = Config::parse(v.to_string().as_bytes(), &env).unwrap();
        assert!(c.fapi2 && c.pushed_authorization_requests);
        assert_eq!(c.client_auth.method(), "private_key_jwt");
        assert_eq!(c.dpop.as_ref().unwrap().alg(), "EdDSA");
        let mut off = v.clone();
        off["client_auth"] = serde_json::json!("client_secret_basic");
        off["client_secret"] = serde_json::json!({"value": "s"});
        off["dpop"] = serde_json::json!(false);
        off["pushed_authorization_requests"] = serde_json::json!(false);
        off["discovery"] = serde_json::json!(false);
        off["jwks_uri"] = serde_json::json!("http://127.0.0.1:9000/jwks");
        let text = error_text(&off, &env);
        for expected in [
            "client_auth: must be \"private_key_jwt\", \"tls_client_auth\" or \"self_signed_tls_client_auth\" with profile \"fapi2\"",
            "dpop: cannot be false",
            "pushed_authorization_requests: cannot be false",
            "pushed_authorization_request_endpoint: is required with profile \"fapi2\"",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        v["profile"] = serde_json::json!("fapi1");
        let text = error_text(&v, &env);
        assert!(
            text.contains("profile: \"fapi1\" is not \"fapi2\""),
            "{text}"
        );
    }

    #[test]
    fn mutual_tls_takes_no_secret_and_may_have_its_own_cluster() {
        let mut v = minimal_json();
        v.as_object_mut().unwrap().remove("client_secret");
        v["client_auth"] = serde_json::json!("tls_client_auth");
        v["idp_mtls_cluster"] = serde_json::json!("idp_mtls");
        let c = config_from(v.clone());
        assert_eq!(c.client_auth.method(), "tls_client_auth");
        assert_eq!(c.idp_mtls_cluster.as_deref(), Some("idp_mtls"));
        assert_eq!(c.idp_cluster, "idp");
        v["client_auth"] = serde_json::json!("self_signed_tls_client_auth");
        assert_eq!(
            config_from(v.clone()).client_auth.method(),
            "self_signed_tls_client_auth"
        );
        // FAPI 2.0 takes it in place of a key (the DPoP key is still needed).
        let mut fapi = v.clone();
        fapi["profile"] = serde_json::json!("fapi2");
        let ed = include_str!("../tests/fixtures/keys/ed25519.pem").to_string();
        let env = move |name: &str| (name == "BFF_DPOP_KEY").then(|| ed.clone());
        let c = Config::parse(fapi.to_string().as_bytes(), &env).unwrap();
        assert!(c.fapi2 && c.client_auth.is_mutual_tls());
        // A secret or a key beside it is a mistake, and so is the cluster without it.
        v["client_secret"] = serde_json::json!({"value": "s"});
        v["client_key_id"] = serde_json::json!("k");
        let text = error_text(&v, &no_env);
        for expected in [
            "client_secret: is not used with client_auth \"self_signed_tls_client_auth\"",
            "client_key_id: is used only with client_auth \"private_key_jwt\"",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        let mut v = minimal_json();
        v["idp_mtls_cluster"] = serde_json::json!("idp_mtls");
        assert_eq!(fields(&errors_of(v)), ["idp_mtls_cluster"]);
    }

    #[test]
    fn dpop_takes_its_key_and_fixes_the_upstream_header() {
        let mut v = minimal_json();
        v["dpop"] = serde_json::json!(true);
        let pem = include_str!("../tests/fixtures/keys/ed25519.pem").to_string();
        let env = move |name: &str| (name == "BFF_DPOP_KEY").then(|| pem.clone());
        let c = Config::parse(v.to_string().as_bytes(), &env).unwrap();
        assert_eq!(c.dpop.as_ref().unwrap().alg(), "EdDSA");
        assert_eq!(c.upstream_token.name, "authorization");
        assert_eq!(c.upstream_token.value(&Secret::new("t")), "DPoP t");
        assert!(config_from(minimal_json()).dpop.is_none());
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("dpop_key: environment variable BFF_DPOP_KEY is not set"),
            "{text}"
        );
        v["upstream_token"] = serde_json::json!({"header": "x-token"});
        let text = error_text(&v, &env);
        assert!(
            text.contains("upstream_token: is Authorization: DPoP"),
            "{text}"
        );
        let mut v = minimal_json();
        v["dpop_key"] = serde_json::json!({"value": "x"});
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("dpop_key: is used only with \"dpop\": true"),
            "{text}"
        );
    }

    #[test]
    fn a_store_user_takes_its_password_from_the_environment() {
        let mut v = minimal_json();
        v["store"] = serde_json::json!({"cluster": "etcd", "username": "bff"});
        let env = |name: &str| (name == "BFF_STORE_PASSWORD").then(|| "pw".to_string());
        let c = Config::parse(v.to_string().as_bytes(), &env).unwrap();
        let auth = c.store.unwrap().auth.unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.expose()),
            ("bff", "pw")
        );
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("store.password: environment variable BFF_STORE_PASSWORD is not set"),
            "{text}"
        );
        v["store"] = serde_json::json!({"cluster": "etcd", "password": {"env": "X"}});
        let text = error_text(&v, &no_env);
        assert!(
            text.contains("store.password: needs store.username"),
            "{text}"
        );
        v["store"] = serde_json::json!({"cluster": "etcd"});
        assert_eq!(config_from(v).store.unwrap().auth, None);
    }

    #[test]
    fn the_seeds_header_format_is_expressible() {
        let mut v = minimal_json();
        v["upstream_token"] =
            serde_json::json!({"header": "oidc_access_token", "format": "{token}"});
        let c = config_from(v);
        assert_eq!(c.upstream_token.name, "oidc_access_token");
        assert_eq!(c.upstream_token.value(&Secret::new("abc")), "abc");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let v = serde_json::json!({
            "issuer": "not a url",
            "authorization_endpoint": "ftp://x",
            "idp_timeout_ms": 5,
            "client_secret": {"env": "A", "value": "b"},
            "cookie_keys": {"value": "c2hvcnQ="},
            "prefix": "private",
            "scopes": ["bad scope"],
            "cookie": {"name": "__Host-x", "secure": false, "same_site": "None"},
            "upstream_token": {"header": "Bad Header", "format": "Bearer"},
            "post_login_url": "javascript:alert(1)",
        });
        let errs = errors_of(v);
        let f = fields(&errs);
        for expected in [
            "issuer",
            "authorization_endpoint",
            "idp_cluster",
            "idp_timeout_ms",
            "client_id",
            "client_secret",
            "cookie_keys",
            "prefix",
            "scopes",
            "cookie.secure",
            "cookie.same_site",
            "upstream_token.header",
            "upstream_token.format",
            "post_login_url",
        ] {
            assert!(f.contains(&expected), "{expected} missing from {f:?}");
        }
    }

    #[test]
    fn key_material_never_appears_in_errors() {
        let mut v = minimal_json();
        v["cookie_keys"] = serde_json::json!({"value": "dG9vLXNob3J0LXNlY3JldA=="});
        let text = error_text(&v, &no_env);
        assert!(text.contains("cookie_keys"));
        assert!(!text.contains("dG9vLXNob3J0LXNlY3JldA"));
    }

    #[test]
    fn unknown_fields_and_bad_json_are_named() {
        let mut v = minimal_json();
        v["isuer"] = serde_json::json!("x");
        let text = error_text(&v, &no_env);
        assert!(text.contains("unknown field `isuer`"), "{text}");
        let text = Config::parse(b"{", &no_env).unwrap_err().to_string();
        assert!(text.contains("(json)"), "{text}");
    }

    #[test]
    fn redirect_uri_may_be_absolute_or_a_path() {
        let mut v = minimal_json();
        v["redirect_uri"] = serde_json::json!("https://app.example.com/private/cb");
        let c = config_from(v);
        assert_eq!(c.callback_path(), "/private/cb");
        assert!(matches!(c.redirect_uri, RedirectUri::Absolute(_)));

        let mut v = minimal_json();
        v["redirect_uri"] = serde_json::json!("/auth/callback");
        v["trust_forwarded_headers"] = serde_json::json!(true);
        let c = config_from(v);
        assert_eq!(
            c.redirect_uri,
            RedirectUri::Path {
                path: "/auth/callback".into(),
                trust_forwarded: true
            }
        );
    }

    #[test]
    fn discovery_can_be_turned_off_only_with_every_endpoint() {
        let mut v = minimal_json();
        v["discovery"] = serde_json::json!(false);
        let errs = errors_of(v.clone());
        assert_eq!(fields(&errs), vec!["jwks_uri"]);
        assert_eq!(errs[0].problem, "is required when discovery is false");
        v["jwks_uri"] = serde_json::json!("http://127.0.0.1:9000/jwks");
        let c = config_from(v);
        assert!(!c.discovery);
    }

    #[test]
    fn only_the_issuer_is_needed_with_discovery() {
        let mut v = minimal_json();
        let o = v.as_object_mut().unwrap();
        o.remove("authorization_endpoint");
        o.remove("token_endpoint");
        let c = config_from(v);
        assert!(c.endpoints.token.is_none() && c.endpoints.authorization.is_none());
    }

    #[test]
    fn session_lifetimes_are_checked() {
        let mut v = minimal_json();
        v["session"] = serde_json::json!({"max_lifetime_s": 600, "inactivity_timeout_s": 900, "refresh_leeway_s": 100000});
        let errs = errors_of(v);
        assert_eq!(
            fields(&errs),
            vec!["session.inactivity_timeout_s", "session.refresh_leeway_s"]
        );
        assert_eq!(config_from(minimal_json()).refresh_result_slots, 4096);
        for (slots, ok) in [(63, false), (64, true), (65_536, true), (65_537, false)] {
            let mut v = minimal_json();
            v["session"] = serde_json::json!({ "refresh_result_slots": slots });
            if ok {
                assert_eq!(config_from(v).refresh_result_slots, slots);
            } else {
                assert_eq!(fields(&errors_of(v)), vec!["session.refresh_result_slots"]);
            }
        }
    }

    #[test]
    fn spa_settings_have_safe_defaults_and_are_checked() {
        let c = config_from(minimal_json());
        assert_eq!(
            (c.session_path.as_str(), c.logout_path.as_str()),
            ("/private/session", "/private/logout")
        );
        assert_eq!(c.post_logout_url, "/");
        assert_eq!(
            c.csrf,
            Csrf {
                header: "x-csrf".into(),
                value: "1".into(),
                allowed_origins: vec![]
            }
        );
        assert!(
            c.rules.is_empty() && c.claim_headers.is_empty() && c.policies == Policies::default()
        );
        assert_eq!(c.metrics_prefix, "bff");

        let mut v = minimal_json();
        v["rules"] = serde_json::json!([
            {"prefix": "/private/admin", "require": {"groups": {"contains": "admin"}, "email_verified": {"equals": true}}},
            {"prefix": "/public", "require": {}}
        ]);
        v["csrf"] = serde_json::json!({"allowed_origins": ["https://app.example.com", "https://x.example/path"]});
        v["claim_headers"] = serde_json::json!({"sub": "X-User-Sub", "email": "Cookie"});
        v["bypass"] = serde_json::json!(["/private/healthz", "/private"]);
        v["metrics_prefix"] = serde_json::json!("bad prefix");
        let errs = errors_of(v);
        assert_eq!(
            fields(&errs),
            vec![
                "csrf.allowed_origins",
                "rules[1].prefix",
                "rules[1].require",
                "claim_headers",
                "bypass",
                "bypass",
                "bypass",
                "bypass",
                "bypass",
                "metrics_prefix"
            ]
        );
        let mut v = minimal_json();
        v["rules"] = serde_json::json!([{"prefix": "/private/admin", "require": {"groups": {"contains": "admin"}, "tier": {"one_of": ["gold", 2]}}}]);
        v["claim_headers"] = serde_json::json!({"sub": "X-User-Sub"});
        let c = config_from(v);
        assert_eq!(c.rules[0].require.len(), 2);
        assert_eq!(
            c.claim_headers,
            vec![("sub".to_string(), "x-user-sub".to_string())]
        );
        let mut v = minimal_json();
        v["rules"] =
            serde_json::json!([{"prefix": "/private/a", "require": {"g": {"matches": "x"}}}]);
        assert!(Config::parse(v.to_string().as_bytes(), &no_env)
            .unwrap_err()
            .to_string()
            .contains("unknown variant `matches`"));
    }

    #[test]
    fn openid_is_always_requested_once() {
        let mut v = minimal_json();
        v["scopes"] = serde_json::json!(["email", "openid", "offline_access"]);
        assert_eq!(config_from(v).scope, "openid email offline_access");
    }

    #[test]
    fn authorization_parameters_the_filter_owns_are_refused_by_name() {
        let mut v = minimal_json();
        v["auth_params"] = serde_json::json!({
            "audience": "https://api.example.com", "state": "x", "redirect_uri": "y",
            "code_challenge_method": "plain", "ui_locales": "de\u{7}"
        });
        v["login_params"] = serde_json::json!(["prompt", "nonce", "return_to"]);
        v["resources"] = serde_json::json!(["https://api.example.com/", "api", "https://a/#f"]);
        let errors = errors_of(v);
        assert_eq!(
            fields(&errors),
            vec![
                "auth_params.code_challenge_method",
                "auth_params.redirect_uri",
                "auth_params.state",
                "auth_params.ui_locales",
                "login_params",
                "login_params",
                "resources",
                "resources",
            ]
        );
        assert!(errors[0].problem.contains("set by the filter"));
        assert!(errors[3].problem.contains("control character"));
    }

    #[test]
    fn authorization_parameters_default_to_the_login_hints() {
        let c = config_from(minimal_json());
        assert!(c.auth_params.is_empty() && c.resources.is_empty());
        assert_eq!(
            c.login_params,
            [
                "prompt",
                "login_hint",
                "max_age",
                "acr_values",
                "ui_locales"
            ]
        );
        let mut v = minimal_json();
        v["auth_params"] = serde_json::json!({"audience": "https://api.example.com"});
        v["resources"] = serde_json::json!(["https://api.example.com/", "urn:example:api"]);
        v["login_params"] = serde_json::json!(["domain_hint"]);
        let c = config_from(v);
        assert_eq!(
            c.auth_params,
            vec![(
                "audience".to_string(),
                "https://api.example.com".to_string()
            )]
        );
        assert_eq!(c.resources.len(), 2);
        assert_eq!(c.login_params, ["domain_hint"]);
    }

    #[test]
    fn policies_are_checked_with_their_fields() {
        let mut v = minimal_json();
        v["bypass"] = serde_json::json!(["/private/healthz"]);
        v["policies"] = serde_json::json!([
            {"prefix": "/private/public", "policy": "optional"},
            {"prefix": "/elsewhere", "policy": "optional"},
            {"prefix": "/private/x", "policy": "sesion"},
            {"prefix": "/private/svc", "policy": "client", "bearer": true},
            {"prefix": "/private/healthz/", "policy": "none"},
            {"prefix": "/private", "policy": "client"},
        ]);
        v["client_credentials"] = serde_json::json!({"scopes": ["a b"], "resources": ["nope"]});
        v["jwt_authn"] = serde_json::json!({"payload_in_metadata": ""});
        let errs = errors_of(v);
        assert_eq!(
            fields(&errs),
            vec![
                "policies[1].prefix",
                "policies[2].policy",
                "policies[3].bearer",
                "policies[4]",
                "policies[5]",
                "policies[5]",
                "policies[5]",
                "policies[5]",
                "policies[5]",
                "jwt_authn.payload_in_metadata",
                "client_credentials.scopes",
                "client_credentials.resources",
            ]
        );
        assert!(errs[1].problem.contains("session, optional, client"));
        assert!(errs[3].problem.contains("also in bypass"));
        assert!(errs[4].problem.contains("login_path"));

        // The endpoints may sit under a prefix of another policy if a longer one gives them
        // sessions back.
        let mut v = minimal_json();
        v["policies"] = serde_json::json!([
            {"prefix": "/private", "policy": "optional", "bearer": true},
            {"prefix": "/private/api/service", "policy": "client"},
            {"prefix": "/private/static", "policy": "bypass"},
        ]);
        v["resources"] = serde_json::json!(["https://api.example/"]);
        let c = config_from(v);
        assert_eq!(
            c.policies.for_path("/private/login").policy,
            Policy::Optional
        );
        assert_eq!(
            c.policies.for_path("/private/api/service/x").policy,
            Policy::Client
        );
        assert_eq!(
            c.policies.for_path("/private/static/a.js").policy,
            Policy::None
        );
        assert_eq!(c.jwt_payload, "jwt_payload");
        assert_eq!(
            c.client_credentials,
            ClientCredentials {
                scope: None,
                resources: vec!["https://api.example/".into()]
            },
            "the top-level resources by default"
        );
    }

    #[test]
    fn step_up_rules_need_the_login_endpoint_to_forward_their_parameters() {
        let mut v = minimal_json();
        v["rules"] = serde_json::json!([
            {"prefix": "/private/refund", "acr": ["urn:example:mfa"]},
            {"prefix": "/private/admin", "max_auth_age_s": 60},
            {"prefix": "/private/empty"},
            {"prefix": "/private/bad", "acr": ["two words"]}
        ]);
        v["login_params"] = serde_json::json!(["prompt"]);
        let errors = errors_of(v.clone());
        assert_eq!(
            fields(&errors),
            vec![
                "rules[0].acr",
                "rules[1].max_auth_age_s",
                "rules[2].require",
                "rules[3].acr",
                "rules[3].acr"
            ]
        );
        v["login_params"] = serde_json::json!(["acr_values", "max_age"]);
        v["rules"] = serde_json::json!([
            {"prefix": "/private/refund", "acr": ["urn:example:mfa"], "max_auth_age_s": 60}
        ]);
        let rule = &config_from(v).rules[0];
        assert_eq!(rule.step_up.acr, ["urn:example:mfa"]);
        assert_eq!(rule.step_up.max_auth_age, Some(60));
    }
}
