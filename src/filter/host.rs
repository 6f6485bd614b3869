//! Every host call the filter makes, with host failures turned into values. The SDK's
//! convenience methods unwrap, and its `get_map` panics on a header value that is not UTF-8,
//! which any client can send: so we read bytes and convert lossily.

use crate::oidc::token::IdpRequest;
use crate::random::{Random, RandomUnavailable};
use crate::reply::Reply;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// Largest IdP answer we read; a bigger one is cut and then fails to parse.
const MAX_IDP_BODY: usize = 256 * 1024;

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

pub fn now() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lossy_map(map: MapType) -> Vec<(String, String)> {
    hostcalls::get_map_bytes(map)
        .map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn request_headers() -> Vec<(String, String)> {
    lossy_map(MapType::HttpRequestHeaders)
}

/// Sets (`Some`) or removes (`None`) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        log(
            LogLevel::Error,
            &format!("bff: could not set request header {name}: {status:?}"),
        );
    }
}

pub fn send_reply(reply: &Reply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = (!reply.body.is_empty()).then_some(reply.body.as_bytes());
    if let Err(status) = hostcalls::send_http_response(u32::from(reply.status), headers, body) {
        log(
            LogLevel::Error,
            &format!("bff: could not send the local reply: {status:?}"),
        );
    }
}

pub fn dispatch(cluster: &str, request: &IdpRequest, timeout: Duration) -> Result<u32, Status> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", "POST"),
        (":path", request.path.as_str()),
        (":authority", request.authority.as_str()),
    ];
    headers.extend(request.headers.iter().map(|(n, v)| (*n, v.as_str())));
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        Some(request.body.as_bytes()),
        vec![],
        timeout,
    )
}

/// The answer to a dispatched call: its status (`None` when the call failed or timed out)
/// and body.
pub fn call_response(num_headers: usize, body_size: usize) -> (Option<u16>, Vec<u8>) {
    if num_headers == 0 {
        return (None, Vec::new());
    }
    let status = lossy_map(MapType::HttpCallResponseHeaders)
        .into_iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| v.parse::<u16>().ok());
    let body = hostcalls::get_buffer(
        BufferType::HttpCallResponseBody,
        0,
        body_size.min(MAX_IDP_BODY),
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    (status, body)
}

/// Randomness from the host (WASI `random_get`, which Envoy backs with its own CSPRNG).
pub struct HostRandom;

impl Random for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        getrandom::getrandom(buf).map_err(|_| RandomUnavailable)
    }
}
