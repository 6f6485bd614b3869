//! Per-path policy: what a request under a prefix needs to go upstream (Duende.BFF's token
//! types per API, mod_auth_openidc's `OIDCUnAuthAction`). The longest matching prefix wins;
//! the protected prefix itself is `session` unless configured otherwise.

use crate::url::is_under;

/// What a request under a prefix needs, and which token goes upstream with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A session: the user's token; without one a page load logs in, an API call gets 401.
    Session,
    /// The user's token if there is a session; without one the request goes on anonymously
    /// (identity and token headers removed, so the upstream can tell).
    Optional,
    /// The filter's own token from the client-credentials grant (RFC 6749 §4.4), whoever calls.
    Client,
    /// The user's token if there is a session, else the filter's own.
    SessionOrClient,
    /// Not guarded: passed through untouched (the old `bypass`).
    None,
}

impl Policy {
    pub const NAMES: &'static str = "session, optional, client, session_or_client, none";

    pub fn parse(name: &str) -> Option<Policy> {
        Some(match name {
            "session" => Policy::Session,
            "optional" => Policy::Optional,
            "client" => Policy::Client,
            "session_or_client" => Policy::SessionOrClient,
            "none" | "bypass" => Policy::None,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Session => "session",
            Policy::Optional => "optional",
            Policy::Client => "client",
            Policy::SessionOrClient => "session_or_client",
            Policy::None => "none",
        }
    }

    /// Whether a session is used when there is one (and so its cookie is checked).
    pub fn uses_session(self) -> bool {
        matches!(
            self,
            Policy::Session | Policy::Optional | Policy::SessionOrClient
        )
    }

    /// Whether the filter's own client token may be needed.
    pub fn uses_client_token(self) -> bool {
        matches!(self, Policy::Client | Policy::SessionOrClient)
    }
}

/// The policy for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPolicy {
    /// Without a trailing slash.
    pub prefix: String,
    pub policy: Policy,
    /// A request with `Authorization: Bearer` and no session cookie is taken as verified by
    /// Envoy's `jwt_authn` (its payload in dynamic metadata) instead of needing a session.
    pub bearer: bool,
}

/// What applies to a request's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub policy: Policy,
    pub bearer: bool,
}

/// Every configured prefix, longest first, so the first match is the most specific.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    list: Vec<PathPolicy>,
    /// Whether any prefix takes bearer tokens: without one, no request is looked at for a
    /// bearer token (a measured ~200 instructions per request, twice, on the session path).
    bearer: bool,
}

impl Policies {
    pub fn new(list: Vec<PathPolicy>) -> Policies {
        // Longest first (equal lengths cannot both match a path). An insertion rather than
        // `slice::sort`: a sort of `PathPolicy` adds ~6 KB of wasm, for a handful of prefixes.
        let mut sorted: Vec<PathPolicy> = Vec::with_capacity(list.len());
        for p in list {
            let at = sorted
                .iter()
                .position(|q| q.prefix.len() < p.prefix.len())
                .unwrap_or(sorted.len());
            sorted.insert(at, p);
        }
        Policies {
            bearer: sorted.iter().any(|p| p.bearer),
            list: sorted,
        }
    }

    /// Whether any prefix takes bearer tokens.
    pub fn take_bearer(&self) -> bool {
        self.bearer
    }

    /// The policy for `path` (a path under the protected prefix): the longest matching
    /// prefix's, else `session`.
    pub fn for_path(&self, path: &str) -> Applied {
        self.list.iter().find(|p| is_under(path, &p.prefix)).map_or(
            Applied {
                policy: Policy::Session,
                bearer: false,
            },
            |p| Applied {
                policy: p.policy,
                bearer: p.bearer,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(prefix: &str, policy: Policy, bearer: bool) -> PathPolicy {
        PathPolicy {
            prefix: prefix.into(),
            policy,
            bearer,
        }
    }

    #[test]
    fn the_longest_prefix_wins_whatever_the_order() {
        let policies = Policies::new(vec![
            p("/private/api", Policy::Optional, false),
            p("/private/api/service", Policy::Client, false),
            p("/private/api/mobile", Policy::Session, true),
        ]);
        let at = |path| policies.for_path(path);
        assert_eq!(at("/private/api/service/x").policy, Policy::Client);
        assert_eq!(at("/private/api/mobile").policy, Policy::Session);
        assert!(at("/private/api/mobile/me").bearer);
        assert_eq!(at("/private/api/other").policy, Policy::Optional);
        // A prefix matches whole segments only.
        assert_eq!(at("/private/api/services").policy, Policy::Optional);
        assert_eq!(
            at("/private/page"),
            Applied {
                policy: Policy::Session,
                bearer: false
            }
        );
    }

    #[test]
    fn names_parse_back_and_bypass_is_an_alias_of_none() {
        for policy in [
            Policy::Session,
            Policy::Optional,
            Policy::Client,
            Policy::SessionOrClient,
            Policy::None,
        ] {
            assert_eq!(Policy::parse(policy.name()), Some(policy));
            assert!(Policy::NAMES.contains(policy.name()));
        }
        assert_eq!(Policy::parse("bypass"), Some(Policy::None));
        assert_eq!(Policy::parse("Session"), None);
    }
}
