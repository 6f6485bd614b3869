//! Reading the `Cookie` request header and writing `Set-Cookie` response headers (RFC 6265).

use crate::config::{CookieSettings, SameSite};
use crate::words;

/// The `name=value` pairs of a `Cookie` header, in order. Malformed pairs are skipped: a
/// browser may hold cookies of other apps on the same host, and none of them may break us.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    split_pairs(header).filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        let value = value.trim();
        // RFC 6265 §4.1.1 allows a value in double quotes.
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name, value))
    })
}

/// `header.split(';')`, finding each `;` eight bytes at a time: the session's value is a
/// kilobyte and more, and this runs more than once per request.
fn split_pairs(header: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let r = rest?;
        // `;` is ASCII, so both sides of it are char boundaries.
        match words::find(r.as_bytes(), b';') {
            Some(at) => {
                rest = r.get(at + 1..);
                r.get(..at)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The value of the first cookie called `name`.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    pairs(header).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Whether a cookie belongs to the filter: the session cookie itself or `<name>.<anything>`
/// (login transactions and, later, session chunks).
pub fn is_own(cookie_name: &str, session_name: &str) -> bool {
    match cookie_name.strip_prefix(session_name) {
        Some(rest) => rest.is_empty() || rest.starts_with('.'),
        None => false,
    }
}

/// The `Cookie` header the upstream should see: every cookie but the filter's own, or `None`
/// when nothing is left (the header is then removed).
pub fn without_own(header: &str, session_name: &str) -> Option<String> {
    let mut kept = String::new();
    for pair in split_pairs(header).map(str::trim) {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n.trim());
        if pair.is_empty() || is_own(name, session_name) {
            continue;
        }
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    (!kept.is_empty()).then_some(kept)
}

/// A `Set-Cookie` header value with the filter's attributes:
/// `Path=/; HttpOnly; Secure; SameSite=…` (the `__Host-` prefix requires `Path=/` and `Secure`).
pub fn set_cookie(
    settings: &CookieSettings,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> String {
    set_cookie_with(name, value, max_age, settings.secure, settings.same_site)
}

/// Deletes a cookie set by [`set_cookie`].
pub fn delete_cookie(settings: &CookieSettings, name: &str) -> String {
    set_cookie_with(name, "", Some(0), settings.secure, settings.same_site)
}

fn set_cookie_with(
    name: &str,
    value: &str,
    max_age: Option<u64>,
    secure: bool,
    same_site: SameSite,
) -> String {
    let mut out = format!("{name}={value}; Path=/");
    if let Some(age) = max_age {
        out.push_str(&format!("; Max-Age={age}"));
    }
    out.push_str("; HttpOnly");
    if secure {
        out.push_str("; Secure");
    }
    out.push_str("; SameSite=");
    out.push_str(same_site.as_str());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CookieSettings {
        CookieSettings {
            name: "__Host-bff-session".into(),
            same_site: SameSite::Lax,
            secure: true,
            transaction_max_age: 600,
        }
    }

    #[test]
    fn splits_like_split() {
        for h in [
            "",
            ";",
            ";;",
            "a",
            "a;",
            ";a",
            "a=1; b=2",
            "a=1;b=2;",
            " ; x=\u{e9};y",
            "a=1234567;b",
        ] {
            assert_eq!(
                split_pairs(h).collect::<Vec<_>>(),
                h.split(';').collect::<Vec<_>>(),
                "{h:?}"
            );
        }
    }

    #[test]
    fn parses_pairs_leniently() {
        let h = "a=1; b = 2 ;garbage; =x; c=\"3\"; d=; e=v=w";
        let got: Vec<_> = pairs(h).collect();
        assert_eq!(
            got,
            vec![("a", "1"), ("b", "2"), ("c", "3"), ("d", ""), ("e", "v=w")]
        );
        assert_eq!(find(h, "b"), Some("2"));
        assert_eq!(find(h, "zz"), None);
    }

    #[test]
    fn recognises_own_cookies() {
        let s = "__Host-bff-session";
        assert!(is_own(s, s));
        assert!(is_own("__Host-bff-session.tx.abc", s));
        assert!(is_own("__Host-bff-session.1", s));
        assert!(!is_own("__Host-bff-sessionx", s));
        assert!(!is_own("other", s));
    }

    #[test]
    fn strips_own_cookies_only() {
        let s = "__Host-bff-session";
        assert_eq!(
            without_own(
                "theme=dark; __Host-bff-session=v1.x.y; __Host-bff-session.tx.ab=z; lang=en",
                s
            ),
            Some("theme=dark; lang=en".to_string())
        );
        assert_eq!(without_own("__Host-bff-session=v1.x.y", s), None);
        assert_eq!(without_own("", s), None);
        assert_eq!(without_own("junk; a=b", s), Some("junk; a=b".to_string()));
    }

    #[test]
    fn builds_secure_cookies() {
        assert_eq!(
            set_cookie(&settings(), "__Host-bff-session", "v", None),
            "__Host-bff-session=v; Path=/; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(
            set_cookie(&settings(), "n", "v", Some(600)),
            "n=v; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(
            delete_cookie(&settings(), "n"),
            "n=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
        );
        let mut strict = settings();
        strict.same_site = SameSite::Strict;
        strict.secure = false;
        assert_eq!(
            set_cookie(&strict, "n", "v", None),
            "n=v; Path=/; HttpOnly; SameSite=Strict"
        );
    }
}
