//! Authorization rules: per path prefix, claims the session must carry, and the strength
//! (`acr`) or freshness (`auth_time`) of the login behind it (step-up).

use crate::config::{Requirement, Rule};
use crate::url::is_under;
use serde_json::{Map, Value};

/// What the rules covering a path say of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// A claim requirement fails: no login will change that.
    Forbidden,
    /// Only the login's strength or age falls short: log in again with these (OIDC Core
    /// §3.1.2.1).
    StepUp {
        acr_values: Option<String>,
        max_age: Option<u64>,
    },
}

/// Checks every rule covering `path` against the session's `claims` at `now` (unix seconds).
pub fn check(rules: &[Rule], path: &str, claims: &Map<String, Value>, now: u64) -> Verdict {
    let covering = || rules.iter().filter(|r| is_under(path, &r.prefix));
    let claims_ok = covering().all(|r| {
        r.require
            .iter()
            .all(|(claim, req)| satisfied(claims.get(claim), req))
    });
    if !claims_ok {
        return Verdict::Forbidden;
    }
    let acr = claims.get("acr").and_then(Value::as_str);
    let auth_time = claims.get("auth_time").and_then(Value::as_u64);
    let (mut acr_values, mut max_age) = (None, None::<u64>);
    let mut best_prefix = 0;
    for r in covering() {
        let step = &r.step_up;
        if !step.acr.is_empty() && !acr.is_some_and(|a| step.acr.iter().any(|v| v == a)) {
            // The most specific rule names the login to ask for.
            if acr_values.is_none() || r.prefix.len() > best_prefix {
                acr_values = Some(step.acr.join(" "));
                best_prefix = r.prefix.len();
            }
        }
        if let Some(limit) = step.max_auth_age {
            let fresh = auth_time.is_some_and(|t| now.saturating_sub(t) <= limit);
            if !fresh {
                // A login fresh enough for the strictest rule satisfies them all.
                max_age = Some(max_age.map_or(limit, |m| m.min(limit)));
            }
        }
    }
    if acr_values.is_none() && max_age.is_none() {
        Verdict::Allowed
    } else {
        Verdict::StepUp {
            acr_values,
            max_age,
        }
    }
}

/// Whether any rule covers `path` (then the claims are needed).
pub fn applies(rules: &[Rule], path: &str) -> bool {
    rules.iter().any(|r| is_under(path, &r.prefix))
}

fn satisfied(claim: Option<&Value>, req: &Requirement) -> bool {
    let Some(claim) = claim else {
        return false;
    };
    match req {
        Requirement::Equals(v) => claim == v,
        Requirement::OneOf(vs) => vs.contains(claim),
        Requirement::Contains(v) => match claim {
            Value::Array(items) => items.contains(v),
            // A space-separated list such as `scope` or `roles` in some IdPs.
            Value::String(words) => v.as_str().is_some_and(|w| words.split(' ').any(|x| x == w)),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StepUp;
    use serde_json::json;

    fn allows(rules: &[Rule], path: &str, claims: &Map<String, Value>) -> bool {
        check(rules, path, claims, 0) == Verdict::Allowed
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                prefix: "/private/admin".into(),
                require: vec![
                    ("groups".into(), Requirement::Contains(json!("admin"))),
                    ("email_verified".into(), Requirement::Equals(json!(true))),
                ],
                step_up: StepUp::default(),
            },
            Rule {
                prefix: "/private/admin/billing".into(),
                require: vec![(
                    "tier".into(),
                    Requirement::OneOf(vec![json!("gold"), json!("silver")]),
                )],
                step_up: StepUp::default(),
            },
        ]
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rules_allow_and_deny() {
        let r = rules();
        let admin =
            claims(json!({"groups": ["staff", "admin"], "email_verified": true, "tier": "gold"}));
        let staff = claims(json!({"groups": ["staff"], "email_verified": true}));
        assert!(allows(&r, "/private/admin/users", &admin));
        assert!(allows(&r, "/private/admin/billing/x", &admin));
        assert!(!allows(&r, "/private/admin", &staff));
        assert!(allows(&r, "/private/other", &staff), "no rule covers it");
        assert!(
            !allows(&r, "/private/administrator", &admin) || !applies(&r, "/private/administrator")
        );
        let mut silver = admin.clone();
        silver.insert("tier".into(), json!("bronze"));
        assert!(
            !allows(&r, "/private/admin/billing", &silver),
            "every covering rule must pass"
        );
        assert!(
            !allows(&r, "/private/admin", &claims(json!({}))),
            "a missing claim fails"
        );
        let unverified = claims(json!({"groups": ["admin"], "email_verified": "true"}));
        assert!(!allows(&r, "/private/admin", &unverified), "types matter");
    }

    #[test]
    fn contains_reads_space_separated_strings() {
        let r = vec![Rule {
            prefix: "/private".into(),
            require: vec![("scope".into(), Requirement::Contains(json!("write")))],
            step_up: StepUp::default(),
        }];
        assert!(allows(
            &r,
            "/private/x",
            &claims(json!({"scope": "read write"}))
        ));
        assert!(!allows(
            &r,
            "/private/x",
            &claims(json!({"scope": "read writer"}))
        ));
    }

    fn step_up_rules() -> Vec<Rule> {
        vec![
            Rule {
                prefix: "/private/orders".into(),
                require: vec![("groups".into(), Requirement::Contains(json!("staff")))],
                step_up: StepUp {
                    acr: vec![],
                    max_auth_age: Some(600),
                },
            },
            Rule {
                prefix: "/private/orders/refund".into(),
                require: vec![],
                step_up: StepUp {
                    acr: vec!["urn:example:mfa".into(), "urn:example:hw".into()],
                    max_auth_age: Some(60),
                },
            },
        ]
    }

    #[test]
    fn a_login_too_weak_or_too_old_asks_for_a_step_up() {
        let r = step_up_rules();
        let now = 10_000;
        let session = |acr: &str, auth_time: u64| {
            claims(json!({"groups": ["staff"], "acr": acr, "auth_time": auth_time}))
        };
        let pwd_recent = session("urn:example:pwd", now - 30);
        assert_eq!(
            check(&r, "/private/orders", &pwd_recent, now),
            Verdict::Allowed
        );
        assert_eq!(
            check(&r, "/private/orders/refund", &pwd_recent, now),
            Verdict::StepUp {
                acr_values: Some("urn:example:mfa urn:example:hw".into()),
                max_age: None
            }
        );
        let mfa_old = session("urn:example:mfa", now - 700);
        assert_eq!(
            check(&r, "/private/orders/refund/7", &mfa_old, now),
            Verdict::StepUp {
                acr_values: None,
                max_age: Some(60)
            },
            "the strictest age of the covering rules"
        );
        assert_eq!(
            check(
                &r,
                "/private/orders/refund",
                &session("urn:example:hw", now - 5),
                now
            ),
            Verdict::Allowed
        );
        // No acr or auth_time at all: both asked for.
        assert_eq!(
            check(
                &r,
                "/private/orders/refund",
                &claims(json!({"groups": ["staff"]})),
                now
            ),
            Verdict::StepUp {
                acr_values: Some("urn:example:mfa urn:example:hw".into()),
                max_age: Some(60)
            }
        );
        // A claim requirement that fails is no step-up: no login changes the groups.
        let outsider = claims(json!({"groups": ["guest"], "acr": "urn:example:pwd"}));
        assert_eq!(
            check(&r, "/private/orders/refund", &outsider, now),
            Verdict::Forbidden
        );
    }
}
