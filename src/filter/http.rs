//! The per-request context Envoy sees: hands the request to the engine and carries out the
//! answer.

use super::host;
use super::shell::{self, Shell};
use crate::engine::{Handled, MAX_BODY};
use crate::reply::Reply;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct BffHttp {
    context_id: u32,
    shell: Rc<Shell>,
    /// The engine holds this request (so it must hear when the request goes).
    paused: bool,
    /// The engine waits for this request's body.
    reading_body: bool,
}

impl BffHttp {
    pub fn new(context_id: u32, shell: Rc<Shell>) -> Self {
        BffHttp {
            context_id,
            shell,
            paused: false,
            reading_body: false,
        }
    }

    /// Hands the request's body to the engine and carries out its answer.
    fn hand_body(&mut self, body: Vec<u8>) -> Action {
        let id = self.context_id;
        match self.shell.run(Some(id), |engine, host| {
            engine.on_request_body(id, &body, host)
        }) {
            Some(Handled::Settled(settled)) => {
                if self.shell.apply(id, settled) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Some(Handled::Paused) => Action::Pause,
            Some(Handled::ReadBody) | None => {
                host::send_reply(&Reply::engine_busy());
                Action::Pause
            }
        }
    }
}

impl HttpContext for BffHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        let id = self.context_id;
        match self.shell.run(Some(id), |engine, host| {
            engine.on_request_headers(id, headers, host)
        }) {
            Some(Handled::Settled(settled)) => {
                if self.shell.apply(id, settled) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Some(Handled::Paused) => {
                self.paused = true;
                Action::Pause
            }
            Some(Handled::ReadBody) => {
                // The engine holds the request until its body is handed in.
                self.paused = true;
                if end_of_stream {
                    return self.hand_body(Vec::new());
                }
                self.reading_body = true;
                // Envoy calls a body callback only after the headers went on (a paused
                // stream's body waits unseen); the body is then held and answered here, and
                // the router's upstream request for the headers, if any, is reset.
                Action::Continue
            }
            None => {
                host::send_reply(&Reply::engine_busy());
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.reading_body {
            return Action::Continue;
        }
        if !end_of_stream {
            // Envoy buffers it (up to its own buffer limit, past which it answers 413).
            return Action::Pause;
        }
        self.reading_body = false;
        // One byte past the engine's limit is enough for it to refuse a body too large.
        self.hand_body(host::request_body(body_size.min(MAX_BODY + 1)))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(work) = self.shell.take_response_work(self.context_id) else {
            return Action::Continue;
        };
        if let Some(watch) = &work.step_up_watch {
            if host::response_header(":status").as_deref() == Some("401") {
                let challenge = host::response_header("www-authenticate").unwrap_or_default();
                let id = self.context_id;
                let reply = self.shell.run(Some(id), |engine, host| {
                    engine.on_upstream_challenge(watch, &challenge, host)
                });
                if let Some(Some(reply)) = reply {
                    // The API's answer is replaced (Envoy sends it in place of the upstream's),
                    // and so is what the access log says.
                    let reply = work.set_cookies.into_iter().fold(reply, Reply::with_cookie);
                    shell::send_reply(&reply);
                    return Action::Pause;
                }
            }
        }
        for cookie in work.set_cookies {
            host::add_response_header("set-cookie", &cookie);
        }
        Action::Continue
    }
}

impl Context for BffHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.shell
            .call_answered(token_id, host::call_answer(num_headers, body_size));
    }
}

impl Drop for BffHttp {
    fn drop(&mut self) {
        // Envoy deletes the context when the request is over (or the client left).
        self.shell.drop_response_work(self.context_id);
        if self.paused {
            self.shell.stream_gone(self.context_id);
        }
    }
}

/// Stands in when the configuration was refused: every request gets a 503, never a pass.
pub struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        host::send_reply(&Reply::unconfigured());
        Action::Pause
    }
}
