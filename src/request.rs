//! The facts about an incoming request that the decision needs, taken from its headers once.

use crate::header_map::{Headers, WireHeader};
use crate::session::cookie::Jar;
use std::borrow::Cow;

#[derive(Debug, Default, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `:path`, with the query.
    pub path: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// Every `Cookie` header joined (HTTP/2 may send one per cookie), as bytes.
    cookie: Option<Cow<'a, [u8]>>,
    pub accept: Option<&'a str>,
    pub sec_fetch_mode: Option<&'a str>,
    pub x_requested_with: Option<&'a str>,
    pub forwarded_proto: Option<&'a str>,
    pub forwarded_host: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// Every header, for the configurable ones (CSRF header, claim headers).
    all: All<'a>,
}

/// Where [`Request::header`] looks: owned pairs (tests, fuzzing) or the host's buffer.
#[derive(Debug, Clone, Copy)]
enum All<'a> {
    Owned(&'a [(String, String)]),
    Wire(&'a [WireHeader<'a>]),
}

impl Default for All<'_> {
    fn default() -> Self {
        All::Owned(&[])
    }
}

impl<'a> Request<'a> {
    /// Picks the facts out of Envoy's header list (names arrive lowercase).
    pub fn from_headers(headers: &'a [(String, String)]) -> Request<'a> {
        let mut r = Request::from_pairs(
            All::Owned(headers),
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        );
        r.cookie = joined(
            headers
                .iter()
                .filter(|(n, _)| n == "cookie")
                .map(|(_, v)| v.as_bytes()),
        );
        r
    }

    /// [`Request::from_headers`] over headers borrowed from the host's buffer.
    pub fn from_wire(headers: &'a Headers<'a>) -> Request<'a> {
        let mut r = Request::from_pairs(
            All::Wire(&headers.pairs),
            headers.pairs.iter().map(|(n, v)| (*n, v.as_ref())),
        );
        r.cookie = joined(headers.cookies.iter().copied());
        r
    }

    /// The facts in every header but `Cookie`.
    fn from_pairs(all: All<'a>, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Request<'a> {
        let mut r = Request {
            all,
            ..Request::default()
        };
        for (name, v) in pairs {
            match name {
                ":method" => r.method = v,
                ":path" => r.path = v,
                ":scheme" => r.scheme = v,
                ":authority" => r.authority = v,
                "accept" => r.accept = Some(v),
                "sec-fetch-mode" => r.sec_fetch_mode = Some(v),
                "x-requested-with" => r.x_requested_with = Some(v),
                "x-forwarded-proto" => r.forwarded_proto = Some(v),
                "x-forwarded-host" => r.forwarded_host = Some(v),
                "origin" => r.origin = Some(v),
                _ => {}
            }
        }
        r
    }

    /// The first header called `name` (lowercase), but `Cookie` (see [`Request::cookies`]).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        if name == "cookie" {
            return None; // the host's buffer holds it apart, as bytes
        }
        match self.all {
            All::Owned(list) => list
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            All::Wire(list) => list
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_ref()),
        }
    }

    /// The `Cookie` header as sent (every one joined with `; `).
    pub fn cookie_header(&self) -> Option<&[u8]> {
        self.cookie.as_deref()
    }

    /// The request's cookies, split: one pass over the header, so take it once per request.
    pub fn cookies(&self) -> Jar<'_> {
        Jar::parse(self.cookie_header())
    }

    /// A top-level browser navigation, which may be redirected to the IdP. Browsers send
    /// `Sec-Fetch-Mode` on every request, and it is exact; older clients fall back to
    /// `Accept: text/html` without `X-Requested-With` (what jQuery-era XHR sets).
    pub fn is_navigation(&self) -> bool {
        if let Some(mode) = self.sec_fetch_mode {
            return mode.eq_ignore_ascii_case("navigate");
        }
        self.x_requested_with.is_none() && self.accept.is_some_and(|a| a.contains("text/html"))
    }

    pub fn is_get_or_head(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }

    /// `scheme://host` the browser used: `:scheme` and `:authority`, or the load balancer's
    /// X-Forwarded-Proto/-Host when `trust_forwarded` (a client can send those too, so only
    /// when configured). `None` for a scheme or host that cannot stand in a URL.
    pub fn browser_origin(&self, trust_forwarded: bool) -> Option<String> {
        let (scheme, host) = if trust_forwarded {
            (
                first(self.forwarded_proto).unwrap_or(self.scheme),
                first(self.forwarded_host).unwrap_or(self.authority),
            )
        } else {
            (self.scheme, self.authority)
        };
        let scheme_ok = matches!(scheme, "http" | "https");
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
        (scheme_ok && host_ok).then(|| format!("{scheme}://{host}"))
    }
}

/// The first value of a comma-separated header (the client-facing proxy's).
fn first(v: Option<&str>) -> Option<&str> {
    v.and_then(|v| v.split(',').next()).map(str::trim)
}

/// One `Cookie` header from several (RFC 6265 §5.4: joined with `; `), borrowed when there
/// is only one.
fn joined<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<Cow<'a, [u8]>> {
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut all = [first, second].join(&b"; "[..]);
    for value in values {
        all.extend_from_slice(b"; ");
        all.extend_from_slice(value);
    }
    Some(Cow::Owned(all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn joins_cookie_headers() {
        let h = headers(&[(":path", "/x"), ("cookie", "a=1"), ("cookie", "b=2")]);
        let r = Request::from_headers(&h);
        assert_eq!(r.path, "/x");
        assert_eq!(r.cookie_header(), Some(&b"a=1; b=2"[..]));
        assert_eq!(r.cookies().find("b"), Some(&b"2"[..]));
        let three = headers(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        let r = Request::from_headers(&three);
        assert_eq!(r.cookie_header(), Some(&b"a=1; b=2; c=3"[..]));
        assert_eq!(r.header("cookie"), None, "as from the host's buffer");
        let one = headers(&[("cookie", "a=1")]);
        assert!(matches!(
            Request::from_headers(&one).cookie,
            Some(Cow::Borrowed(b"a=1"))
        ));
        assert_eq!(Request::from_headers(&[]).cookie_header(), None);
    }

    #[test]
    fn reads_the_host_buffer_with_its_cookies_as_bytes() {
        let wire = crate::header_map::serialize(&[
            (":path", b"/p"),
            ("cookie", b"a=caf\xe9"),
            ("accept", b"text/html"),
            ("cookie", b"b=2"),
        ]);
        let headers = crate::header_map::parse(&wire);
        let r = Request::from_wire(&headers);
        assert_eq!((r.path, r.accept), ("/p", Some("text/html")));
        assert_eq!(r.cookie_header(), Some(&b"a=caf\xe9; b=2"[..]));
        assert_eq!(r.header("accept"), Some("text/html"));
        assert_eq!(r.header("cookie"), None);
    }

    #[test]
    fn tells_navigations_from_api_calls() {
        let nav = |list: &[(&str, &str)]| Request::from_headers(&headers(list)).is_navigation();
        assert!(nav(&[("sec-fetch-mode", "navigate"), ("accept", "*/*")]));
        assert!(!nav(&[("sec-fetch-mode", "cors"), ("accept", "text/html")]));
        assert!(nav(&[("accept", "text/html,application/xhtml+xml")]));
        assert!(!nav(&[
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest")
        ]));
        assert!(!nav(&[("accept", "application/json")]));
        assert!(!nav(&[]));
    }
}
