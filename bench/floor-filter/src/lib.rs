//! The floor filter: per request it reads the `cookie` header (the header envoy-bff reads
//! its session from) and sets `x-floor` to its length. Everything a wasm filter pays beyond
//! this (the VM calls per stream, one header crossing each way) is the filter's own work.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Floor) });
}}

struct Floor;

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let len = self
            .get_http_request_header_bytes("cookie")
            .map_or(0, |v| v.len());
        self.set_http_request_header("x-floor", Some(&len.to_string()));
        Action::Continue
    }
}
