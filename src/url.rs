//! The little URL handling the filter needs: split a configured absolute http(s) URL, and
//! decide whether a user-supplied return path stays on our origin.
//!
//! A full URL parser (the `url` crate) would pull IDNA tables into the wasm module for no
//! gain: configured URLs are trusted, and user input is only ever accepted as a relative path.

use std::fmt;

/// An absolute `http` or `https` URL from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteUrl {
    pub scheme: String,
    /// `host[:port]`, as sent in `:authority`.
    pub authority: String,
    /// Starts with `/`; includes any query.
    pub path_and_query: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    NotHttp,
    NoHost,
    BadCharacter,
    HasFragment,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::NotHttp => "must be an absolute URL starting with http:// or https://",
            UrlError::NoHost => "has no host",
            UrlError::BadCharacter => "contains spaces, control characters, '\\' or userinfo",
            UrlError::HasFragment => "must not contain a fragment (#)",
        })
    }
}

impl AbsoluteUrl {
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("https://") {
            ("https", rest)
        } else if let Some(rest) = s.strip_prefix("http://") {
            ("http", rest)
        } else {
            return Err(UrlError::NotHttp);
        };
        if s.chars().any(|c| c.is_control() || c == ' ' || c == '\\') {
            return Err(UrlError::BadCharacter);
        }
        if s.contains('#') {
            return Err(UrlError::HasFragment);
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        if authority.is_empty() {
            return Err(UrlError::NoHost);
        }
        if authority.contains('@') {
            return Err(UrlError::BadCharacter);
        }
        let path_and_query = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        Ok(AbsoluteUrl {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            path_and_query,
        })
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        path_of(&self.path_and_query)
    }
}

impl fmt::Display for AbsoluteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme, self.authority, self.path_and_query
        )
    }
}

/// The path of a `:path` value (everything before `?`).
pub fn path_of(path_and_query: &str) -> &str {
    match path_and_query.split_once('?') {
        Some((path, _)) => path,
        None => path_and_query,
    }
}

/// The query of a `:path` value, if any.
pub fn query_of(path_and_query: &str) -> Option<&str> {
    path_and_query.split_once('?').map(|(_, q)| q)
}

/// Whether `path` equals `prefix` or lies below it at a segment boundary:
/// `/private` covers `/private` and `/private/x`, not `/privateer`.
pub fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Why a `return_to` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsafeReturnTo;

const MAX_RETURN_TO: usize = 2048;

/// Accepts only a same-origin relative path such as `/app/page?x=1`.
///
/// Browsers treat `//host`, `/\host` and `\/host` as other origins, strip tabs and newlines
/// before parsing, and some servers decode once more, so we refuse any of those shapes both
/// as given and after percent-decoding (repeatedly, to catch double encoding).
pub fn safe_return_to(candidate: &str) -> Result<&str, UnsafeReturnTo> {
    // A raw space cannot stand in a Location header; an encoded one (%20) is fine.
    if candidate.len() > MAX_RETURN_TO || candidate.contains(' ') {
        return Err(UnsafeReturnTo);
    }
    let mut current = candidate.to_string();
    // Three rounds of decoding catch double and triple encoding; anything still encoded after
    // that is refused outright.
    for _ in 0..3 {
        if !is_plain_relative_path(&current) {
            return Err(UnsafeReturnTo);
        }
        let decoded = percent_decode(&current);
        if decoded == current {
            return Ok(candidate);
        }
        current = decoded;
    }
    Err(UnsafeReturnTo)
}

fn is_plain_relative_path(s: &str) -> bool {
    let mut chars = s.chars();
    if chars.next() != Some('/') {
        return false;
    }
    if matches!(chars.next(), Some('/') | Some('\\')) {
        return false;
    }
    !s.chars()
        .any(|c| c.is_control() || c == '\\' || !c.is_ascii())
}

/// Lossy percent-decoding for inspection only: bytes that are not valid UTF-8 become U+FFFD,
/// which `is_plain_relative_path` then refuses as non-ASCII.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_absolute_urls() {
        let u = AbsoluteUrl::parse("https://idp.example.com:8443/oauth2/token?x=1").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.authority, "idp.example.com:8443");
        assert_eq!(u.path_and_query, "/oauth2/token?x=1");
        assert_eq!(u.path(), "/oauth2/token");
        assert_eq!(
            u.to_string(),
            "https://idp.example.com:8443/oauth2/token?x=1"
        );
        let bare = AbsoluteUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(bare.path_and_query, "/");
    }

    #[test]
    fn refuses_odd_urls() {
        assert_eq!(AbsoluteUrl::parse("ftp://x/"), Err(UrlError::NotHttp));
        assert_eq!(AbsoluteUrl::parse("/relative"), Err(UrlError::NotHttp));
        assert_eq!(AbsoluteUrl::parse("https:///x"), Err(UrlError::NoHost));
        assert_eq!(
            AbsoluteUrl::parse("https://a b/"),
            Err(UrlError::BadCharacter)
        );
        assert_eq!(
            AbsoluteUrl::parse("https://u:p@h/"),
            Err(UrlError::BadCharacter)
        );
        assert_eq!(
            AbsoluteUrl::parse("https://h/#f"),
            Err(UrlError::HasFragment)
        );
    }

    #[test]
    fn prefix_matches_at_segment_boundaries() {
        assert!(is_under("/private", "/private"));
        assert!(is_under("/private/", "/private"));
        assert!(is_under("/private/api/x", "/private/"));
        assert!(!is_under("/privateer", "/private"));
        assert!(!is_under("/public/private", "/private"));
        assert!(is_under("/anything", "/"));
    }

    #[test]
    fn return_to_accepts_same_origin_paths() {
        for ok in [
            "/",
            "/app",
            "/app/page?x=1&y=%2Fz",
            "/a%20b",
            "/private/data#frag",
        ] {
            assert_eq!(safe_return_to(ok), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn return_to_refuses_other_origins_and_tricks() {
        for bad in [
            "",
            "app",
            "//evil.example",
            "/\\evil.example",
            "\\/evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "/%2Fevil.example",
            "/%5Cevil.example",
            "%2F%2Fevil.example",
            "/%252Fevil.example",
            "/%25252F%25252Fevil",
            "/ok\r\nSet-Cookie: x=y",
            "/ok%0d%0aSet-Cookie:x",
            "/\tevil",
            "/%09/evil.example",
            "/caf\u{e9}",
            "/%ff",
        ] {
            assert_eq!(safe_return_to(bad), Err(UnsafeReturnTo), "{bad:?}");
        }
        assert!(safe_return_to(&format!("/{}", "a".repeat(MAX_RETURN_TO))).is_err());
    }
}
