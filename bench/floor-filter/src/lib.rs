//! The floor filter: per request it reads the `cookie` header (the header envoy-bff reads
//! its session from) and sets `x-floor` to its length. Everything a wasm filter pays beyond
//! this (the VM calls per stream, one header crossing each way) is the filter's own work.
//!
//! With the `io` feature (`bench/run --floor-io`) it does instead the host I/O that envoy-bff
//! cannot skip on an authenticated request, and nothing else: read `:path` and `cookie`, read
//! the clock, set `authorization`, remove `cookie`. What envoy-bff adds beyond that is its own
//! logic; what this adds over the plain floor is the price of the job through proxy-wasm.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Floor) });
}}

struct Floor;

impl Context for Floor {}

#[cfg(not(feature = "io"))]
impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let len = self
            .get_http_request_header_bytes("cookie")
            .map_or(0, |v| v.len());
        self.set_http_request_header("x-floor", Some(&len.to_string()));
        Action::Continue
    }
}

#[cfg(feature = "io")]
impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self
            .get_http_request_header_bytes(":path")
            .map_or(0, |v| v.len());
        let cookie = self
            .get_http_request_header_bytes("cookie")
            .map_or(0, |v| v.len());
        let _now = self.get_current_time();
        // As long as the test IdP's opaque access tokens (43 characters).
        let token = format!("Bearer floor-{path:0>19}-{cookie:0>19}");
        self.set_http_request_header("authorization", Some(&token));
        self.set_http_request_header("cookie", None);
        Action::Continue
    }
}
