//! The per-request context: a small state machine over the pure decision.

use super::host::{self, HostRandom};
use crate::config::Config;
use crate::login::{self, PendingLogin};
use crate::reply::{Client, Failure, Reply};
use crate::request::Request;
use crate::route::{self, Decision};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use std::rc::Rc;

/// What a request is waiting for. Taken out, fed the reply, and put back (or dropped).
enum Flow {
    Idle,
    ExchangingCode {
        token_id: u32,
        pending: PendingLogin,
    },
}

pub struct BffHttp {
    config: Rc<Config>,
    flow: Flow,
}

impl BffHttp {
    pub fn new(config: Rc<Config>) -> Self {
        BffHttp {
            config,
            flow: Flow::Idle,
        }
    }
}

impl HttpContext for BffHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        let request = Request::from_headers(&headers);
        match route::decide(&self.config, &request, host::now(), &mut HostRandom) {
            Decision::PassThrough => Action::Continue,
            Decision::Forward(forward) => {
                let (name, value) = &forward.token_header;
                host::set_request_header(name, Some(value));
                host::set_request_header("cookie", forward.cookie.as_deref());
                Action::Continue
            }
            Decision::Reply(reply) => {
                host::send_reply(&reply);
                Action::Pause
            }
            Decision::ExchangeCode(exchange) => {
                let exchange = *exchange;
                match host::dispatch(
                    &self.config.idp_cluster,
                    &exchange.request,
                    self.config.idp_timeout,
                ) {
                    Ok(token_id) => {
                        self.flow = Flow::ExchangingCode {
                            token_id,
                            pending: exchange.pending,
                        };
                    }
                    Err(status) => {
                        host::log(
                            LogLevel::Error,
                            &format!(
                                "bff: cannot call the token endpoint through cluster {}: {status:?}",
                                self.config.idp_cluster
                            ),
                        );
                        let client = if request.is_navigation() {
                            Client::Navigation
                        } else {
                            Client::Api
                        };
                        host::send_reply(&Reply::failure(client, &Failure::IdpUnavailable));
                    }
                }
                Action::Pause
            }
        }
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
        let Flow::ExchangingCode {
            token_id: expected,
            pending,
        } = std::mem::replace(&mut self.flow, Flow::Idle)
        else {
            host::log(
                LogLevel::Warn,
                "bff: an IdP answer arrived for a request that was not waiting",
            );
            return;
        };
        if token_id != expected {
            host::log(
                LogLevel::Warn,
                "bff: ignored an IdP answer with an unexpected call id",
            );
            self.flow = Flow::ExchangingCode {
                token_id: expected,
                pending,
            };
            return;
        }
        let (status, body) = host::call_response(num_headers, body_size);
        let (reply, failure) = login::finish(
            &self.config,
            pending,
            status,
            &body,
            host::now(),
            &mut HostRandom,
        );
        if let Some(failure) = failure {
            // Failure messages are written to carry no token, code or secret.
            host::log(
                LogLevel::Warn,
                &format!(
                    "bff: login failed ({}): {}",
                    failure.code(),
                    failure.message()
                ),
            );
        }
        host::send_reply(&reply);
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
