//! Reading the `Cookie` request header and writing `Set-Cookie` response headers (RFC 6265).

use crate::config::{CookieSettings, SameSite};

/// The cookies of a request, split once. The session (and its chunks), the login
/// transactions and the header the upstream sees all come from this one pass: the session's
/// value is a kilobyte and more on every request. Read as bytes, as the client sent them:
/// names are compared byte for byte, sealed values are base64url, and the cookies of other
/// apps go upstream unchanged.
#[derive(Debug, Default)]
pub struct Jar<'a> {
    pairs: Vec<Pair<'a>>,
}

#[derive(Debug, Clone, Copy)]
struct Pair<'a> {
    /// The pair as sent, without surrounding whitespace (what goes upstream).
    raw: &'a [u8],
    /// `None` for a malformed pair (no `=`, or an empty name): kept for the upstream, never
    /// read. A browser may hold cookies of other apps on the same host, and none of them
    /// may break us.
    cookie: Option<(&'a [u8], &'a [u8])>,
}

impl<'a> Jar<'a> {
    /// Splits a `Cookie` header (every one the request carries, joined with `; `).
    pub fn parse(header: Option<&'a [u8]>) -> Jar<'a> {
        let Some(header) = header else {
            return Jar::default();
        };
        let pairs = split_pairs(header)
            .map(<[u8]>::trim_ascii)
            .filter(|raw| !raw.is_empty())
            .map(|raw| Pair {
                raw,
                cookie: name_and_value(raw),
            })
            .collect();
        Jar { pairs }
    }

    /// The `name=value` pairs, in order (malformed pairs skipped).
    pub fn cookies(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.pairs.iter().filter_map(|p| p.cookie)
    }

    /// The value of the first cookie called `name`.
    pub fn find(&self, name: &str) -> Option<&'a [u8]> {
        self.cookies()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The `Cookie` header the upstream should see: every cookie but the filter's own, or
    /// `None` when nothing is left (the header is then removed).
    pub fn without_own(&self, session_name: &str) -> Option<Vec<u8>> {
        let mut kept = Vec::new();
        for pair in &self.pairs {
            let name = pair.cookie.map_or(pair.raw, |(n, _)| n);
            if is_own(name, session_name) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair.raw);
        }
        (!kept.is_empty()).then_some(kept)
    }
}

/// A pair's name and value, trimmed; RFC 6265 §4.1.1 allows a value in double quotes.
fn name_and_value(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = raw.iter().position(|&b| b == b'=')?;
    let name = raw.get(..eq)?.trim_ascii();
    if name.is_empty() {
        return None;
    }
    let value = raw.get(eq + 1..)?.trim_ascii();
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    Some((name, value))
}

/// `header.split(|b| *b == b';')`, finding each `;` with the `memchr` crate (sixteen bytes at a
/// time with wasm SIMD): on wasm32 the standard library goes a byte at a time.
fn split_pairs(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b';', r) {
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

/// Whether a cookie belongs to the filter: the session cookie itself or `<name>.<anything>`
/// (login transactions and session chunks).
pub fn is_own(cookie_name: &[u8], session_name: &str) -> bool {
    match cookie_name.strip_prefix(session_name.as_bytes()) {
        Some(rest) => rest.is_empty() || rest.starts_with(b"."),
        None => false,
    }
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
pub(crate) mod tests {
    use super::*;

    fn settings() -> CookieSettings {
        CookieSettings {
            name: "__Host-bff-session".into(),
            same_site: SameSite::Lax,
            secure: true,
            transaction_max_age: 600,
        }
    }

    /// The cookies of a `Cookie` header given as text.
    pub(crate) fn jar(header: &str) -> Jar<'_> {
        Jar::parse(Some(header.as_bytes()))
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
            let h = h.as_bytes();
            assert_eq!(
                split_pairs(h).collect::<Vec<_>>(),
                h.split(|b| *b == b';').collect::<Vec<_>>(),
                "{h:?}"
            );
        }
    }

    #[test]
    fn parses_pairs_leniently() {
        let h = "a=1; b = 2 ;garbage; =x; c=\"3\"; d=; e=v=w";
        let got: Vec<_> = jar(h).cookies().collect();
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"1"),
            (b"b", b"2"),
            (b"c", b"3"),
            (b"d", b""),
            (b"e", b"v=w"),
        ];
        assert_eq!(got, want);
        assert_eq!(jar(h).find("b"), Some(&b"2"[..]));
        assert_eq!(jar(h).find("zz"), None);
        assert_eq!(Jar::parse(None).find("a"), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_as_sent() {
        let h = b"odd=caf\xe9; __Host-bff-session=v1.x.y; \xff=1";
        let j = Jar::parse(Some(h));
        assert_eq!(j.find("odd"), Some(&b"caf\xe9"[..]));
        assert_eq!(j.find("__Host-bff-session"), Some(&b"v1.x.y"[..]));
        assert_eq!(
            j.without_own("__Host-bff-session").as_deref(),
            Some(&b"odd=caf\xe9; \xff=1"[..])
        );
    }

    #[test]
    fn recognises_own_cookies() {
        let s = "__Host-bff-session";
        assert!(is_own(s.as_bytes(), s));
        assert!(is_own(b"__Host-bff-session.tx.abc", s));
        assert!(is_own(b"__Host-bff-session.1", s));
        assert!(!is_own(b"__Host-bff-sessionx", s));
        assert!(!is_own(b"other", s));
    }

    #[test]
    fn strips_own_cookies_only() {
        let s = "__Host-bff-session";
        let stripped = |h: &str| jar(h).without_own(s).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            stripped("theme=dark; __Host-bff-session=v1.x.y; __Host-bff-session.tx.ab=z; lang=en"),
            Some("theme=dark; lang=en".to_string())
        );
        assert_eq!(stripped("__Host-bff-session=v1.x.y"), None);
        assert_eq!(stripped(""), None);
        assert_eq!(stripped(" ; ;"), None);
        assert_eq!(stripped("junk; a=b"), Some("junk; a=b".to_string()));
        // A malformed pair named like ours is ours too.
        assert_eq!(stripped("__Host-bff-session; a=b"), Some("a=b".to_string()));
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
