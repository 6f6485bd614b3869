//! Authorization rules: per path prefix, claims the session must carry.

use crate::config::{Requirement, Rule};
use crate::url::is_under;
use serde_json::{Map, Value};

/// Whether every rule covering `path` is satisfied by `claims`.
pub fn allows(rules: &[Rule], path: &str, claims: &Map<String, Value>) -> bool {
    rules.iter().filter(|r| is_under(path, &r.prefix)).all(|r| {
        r.require
            .iter()
            .all(|(claim, req)| satisfied(claims.get(claim), req))
    })
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
    use serde_json::json;

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                prefix: "/private/admin".into(),
                require: vec![
                    ("groups".into(), Requirement::Contains(json!("admin"))),
                    ("email_verified".into(), Requirement::Equals(json!(true))),
                ],
            },
            Rule {
                prefix: "/private/admin/billing".into(),
                require: vec![(
                    "tier".into(),
                    Requirement::OneOf(vec![json!("gold"), json!("silver")]),
                )],
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
}
