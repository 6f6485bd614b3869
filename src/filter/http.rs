//! The per-request context Envoy sees: a thin handle on the request's `Stream`.

use super::host;
use super::stream::Stream;
use super::vm::VmHandle;
use crate::reply::{Client, Failure, Reply};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

pub struct BffHttp {
    vm: VmHandle,
    stream: Rc<RefCell<Stream>>,
    response_cookies: Rc<RefCell<Vec<String>>>,
}

impl BffHttp {
    pub fn new(context_id: u32, vm: VmHandle) -> Self {
        let stream = Stream::new(context_id, vm.clone());
        let response_cookies = stream
            .try_borrow()
            .map(|s| Rc::clone(&s.response_cookies))
            .unwrap_or_default();
        BffHttp {
            vm,
            stream,
            response_cookies,
        }
    }
}

impl HttpContext for BffHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.stream.try_borrow_mut() {
            Ok(mut stream) => stream.on_request_headers(),
            Err(_) => {
                host::send_reply(&Reply::failure(
                    Client::Api,
                    &Failure::Internal("request state busy"),
                ));
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only the cookie list is borrowed here: this may run while the stream is borrowed
        // (a local reply or a resumed request can reach the response synchronously).
        if let Ok(cookies) = self.response_cookies.try_borrow() {
            for cookie in cookies.iter() {
                host::add_response_header("set-cookie", cookie);
            }
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
        self.vm.deliver(token_id, num_headers, body_size);
    }
}

/// Stands in when the configuration was refused: every request gets a 503, never a pass.
pub struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        host::send_reply(&Reply::failure(
            Client::Api,
            &Failure::Internal("the bff filter is not configured"),
        ));
        Action::Pause
    }
}
