//! envoy-bff: a proxy-wasm filter that makes Envoy the Backend-for-Frontend of a single-page
//! app — a confidential OpenID Connect client that keeps every token out of the browser.
//!
//! Everything outside `filter` is plain Rust with no host calls, tested natively; `filter`
//! is the thin proxy-wasm shell, compiled only for wasm.

pub mod access_log;
pub mod bearer;
pub mod byte_loops;
pub mod client_token;
pub mod config;
pub mod csrf;
pub mod ctx;
pub mod endpoints;
pub mod engine;
pub mod etcd;
pub mod header_map;
pub mod login;
pub mod metrics;
pub mod oidc;
pub mod policy;
pub mod random;
pub mod refresh;
pub mod reply;
pub mod request;
pub mod route;
pub mod rules;
pub mod secret;
pub mod session;
pub mod store;
#[cfg(test)]
mod test_pattern;
pub mod url;

#[cfg(target_arch = "wasm32")]
mod filter;
