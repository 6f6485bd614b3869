//! Cross-site request forgery defence for the API behind the filter, as
//! draft-ietf-oauth-browser-based-apps asks of a BFF: every request a script makes must carry
//! a custom header (a cross-site page cannot add one without a CORS preflight, which the app
//! does not grant), and a request that names its `Origin` must come from the app.

use crate::config::Config;
use crate::reply::Failure;
use crate::request::Request;

/// Checks a request under the protected prefix (not the login callback).
pub fn check(config: &Config, req: &Request) -> Result<(), Failure> {
    if let Some(origin) = req.origin {
        if !origin_allowed(config, req, origin) {
            return Err(Failure::Csrf);
        }
    }
    // Navigations are top-level page loads (a link, the address bar): they cannot carry the
    // header and need not. Anything else, and any unsafe method, must.
    let needs_header = !req.is_navigation() || !req.is_get_or_head();
    if needs_header && req.header(&config.csrf.header) != Some(config.csrf.value.as_str()) {
        return Err(Failure::Csrf);
    }
    Ok(())
}

fn origin_allowed(config: &Config, req: &Request, origin: &str) -> bool {
    if config.csrf.allowed_origins.iter().any(|o| o == origin) {
        return true;
    }
    if req
        .browser_origin(config.trust_forwarded)
        .is_some_and(|own| own == origin)
    {
        return true;
    }
    // The origin of an absolute redirect URI is the app's too.
    match &config.redirect_uri {
        crate::config::RedirectUri::Absolute(url) => {
            origin == format!("{}://{}", url.scheme, url.authority)
        }
        crate::config::RedirectUri::Path { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json};
    use crate::route::tests::{get, headers, API, NAV};

    fn verdict(config: &Config, h: &[(String, String)]) -> Result<(), Failure> {
        check(config, &Request::from_headers(h))
    }

    #[test]
    fn api_calls_need_the_header() {
        let c = config_from(minimal_json());
        assert_eq!(
            verdict(&c, &get("/private/api", &[API])),
            Err(Failure::Csrf)
        );
        assert_eq!(
            verdict(&c, &get("/private/api", &[API, ("x-csrf", "0")])),
            Err(Failure::Csrf)
        );
        assert_eq!(
            verdict(&c, &get("/private/api", &[API, ("x-csrf", "1")])),
            Ok(())
        );
        assert_eq!(
            verdict(&c, &get("/private/page", &[NAV])),
            Ok(()),
            "a page load"
        );
        let mut post = get("/private/form", &[NAV]);
        post[0].1 = "POST".into();
        assert_eq!(
            verdict(&c, &post),
            Err(Failure::Csrf),
            "a cross-site form post"
        );
    }

    #[test]
    fn origins_must_be_the_apps_or_allowed() {
        let c = config_from(minimal_json());
        let with = |origin: &str| get("/private/api", &[API, ("x-csrf", "1"), ("origin", origin)]);
        assert_eq!(verdict(&c, &with("http://app.local:8080")), Ok(()));
        assert_eq!(
            verdict(&c, &with("https://evil.example")),
            Err(Failure::Csrf)
        );
        assert_eq!(verdict(&c, &with("null")), Err(Failure::Csrf));
        let mut v = minimal_json();
        v["csrf"] = serde_json::json!({"allowed_origins": ["https://front.example.com"], "header": "X-Requested-By", "value": "spa"});
        let c = config_from(v);
        let h = get(
            "/private/api",
            &[
                API,
                ("x-requested-by", "spa"),
                ("origin", "https://front.example.com"),
            ],
        );
        assert_eq!(verdict(&c, &h), Ok(()));
        let h = get(
            "/private/api",
            &[
                API,
                ("x-csrf", "1"),
                ("origin", "https://front.example.com"),
            ],
        );
        assert_eq!(
            verdict(&c, &h),
            Err(Failure::Csrf),
            "the configured header, not the default"
        );
        let _ = headers(&[]);
    }
}
