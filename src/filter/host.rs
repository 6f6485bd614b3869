//! Every host call the filter makes, with host failures turned into values, and the engine's
//! [`Host`] made of them. The SDK's convenience methods unwrap, and its `get_map` panics on a
//! header value that is not UTF-8, which any client can send: so we read bytes and convert
//! lossily.

use crate::engine::{Host, Level};
use crate::header_map;
use crate::metrics::Counter;
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::random::{Random, RandomUnavailable};
use crate::reply::Reply;
use crate::store::{Cas, SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status, StreamType};
use std::time::{Duration, UNIX_EPOCH};

/// Largest IdP answer we read; a bigger one is cut and then fails to parse.
const MAX_IDP_BODY: usize = 256 * 1024;

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
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

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> Status;
    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_continue_stream(stream_type: StreamType) -> Status;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
}

/// The request's headers in the host's serialization, for [`crate::header_map::parse`]:
/// one buffer, where the SDK's reader would allocate a string per name and value (and panic
/// on a host error).
pub fn request_headers() -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it got from this module's `proxy_on_memory_allocate`
    // (the SDK's: a boxed `[u8]` of exactly `size` bytes) and its size; ownership passes to us.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

/// The request's body as Envoy buffered it (its first `size` bytes); empty if unreadable.
pub fn request_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Logs `what` could not be done, unless `status` is Ok (a host call out of the VM returns
/// a status; the SDK's wrappers panic on one they did not expect).
fn log_failure(status: Status, level: LogLevel, what: std::fmt::Arguments) {
    if status != Status::Ok {
        log(level, &format!("bff: could not {what}: {status:?}"));
    }
}

/// Writes `value` into the current request's filter state under `key` (Envoy stores it as
/// `wasm.<key>`, a mutable string that lives as long as the request's filter chain). The
/// SDK's `set_property` panics on any status but Ok (Envoy answers NotFound where there is no
/// stream), and builds the path in a new buffer: a one-part path is the key's bytes.
pub fn set_filter_state(key: &str, value: &str) {
    // SAFETY: both pointers and lengths describe live byte slices; the host only reads them.
    let status =
        unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    log_failure(
        status,
        LogLevel::Debug,
        format_args!("set filter state {key}"),
    );
}

/// Sets (`Some`) or removes (`None`) a request header. Straight to the ABI: the SDK's
/// `set_map_value_bytes` panics on any status but Ok (Envoy answers BadArgument where the map
/// is gone), and a panic ends the VM.
pub fn set_request_header(name: &str, value: Option<&[u8]>) {
    let map = MapType::HttpRequestHeaders;
    // SAFETY: both pointers and lengths describe live byte slices; the host only reads them.
    let status = unsafe {
        match value {
            Some(value) => proxy_replace_header_map_value(
                map,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            ),
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        }
    };
    log_failure(
        status,
        LogLevel::Error,
        format_args!("set request header {name}"),
    );
}

/// Answers the current request with `reply` instead of sending it upstream. Straight to the ABI,
/// as the header writes are (the SDK's `send_http_response` panics on any status but Ok).
pub fn send_reply(reply: &Reply) {
    let headers: Vec<(&str, &[u8])> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let headers = header_map::serialize(&headers);
    // No body: a null pointer, as the SDK passes.
    let body = match reply.body.as_bytes() {
        [] => std::ptr::null(),
        body => body.as_ptr(),
    };
    // SAFETY: every pointer and length describes a live byte slice (or null and 0); the host
    // only reads them.
    let status = unsafe {
        proxy_send_local_response(
            u32::from(reply.status),
            std::ptr::null(),
            0,
            body,
            reply.body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    log_failure(
        status,
        LogLevel::Error,
        format_args!("send the local reply"),
    );
}

pub fn dispatch(cluster: &str, request: &IdpRequest, timeout: Duration) -> Result<u32, Status> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", request.method),
        (":path", request.path.as_str()),
        (":authority", request.authority.as_str()),
    ];
    headers.extend(request.headers.iter().map(|(n, v)| (*n, v.as_str())));
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        request.body.as_deref().map(str::as_bytes),
        vec![],
        timeout,
    )
}

/// Makes later host calls in this callback act on another context (a paused request
/// resumed from the root context's timer or an IdP answer). False if it is gone.
pub fn set_effective_context(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

pub fn resume_request() {
    // SAFETY: no pointers; the SDK's `resume_http_request` panics on any status but Ok.
    let status = unsafe { proxy_continue_stream(StreamType::HttpRequest) };
    log_failure(status, LogLevel::Error, format_args!("resume a request"));
}

/// A response header's value (lossy UTF-8), if there is one.
pub fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

pub fn add_response_header(name: &str, value: &str) {
    // SAFETY: as in `set_request_header` (and the SDK's `add_map_value` panics the same way).
    let status = unsafe {
        proxy_add_header_map_value(
            MapType::HttpResponseHeaders,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    log_failure(
        status,
        LogLevel::Error,
        format_args!("add response header {name}"),
    );
}

pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
}

/// Registers a shared queue this VM's root context is told about (`on_queue_ready`) when
/// anything is put in it; `None` if the host refuses. Names are per Envoy process: a second
/// registration of one name takes the queue over, so each VM picks its own.
pub fn register_queue(name: &str) -> Option<u32> {
    hostcalls::register_shared_queue(name).ok()
}

/// Puts a one-byte message in the queue: a nudge for the root context (not empty: an empty
/// message may come back as "no message" and stop [`drain`] early). False if it failed.
pub fn nudge(queue: u32) -> bool {
    hostcalls::enqueue_shared_queue(queue, Some(b"!")).is_ok()
}

/// Takes every message out of the queue (they carry nothing but the nudge).
pub fn drain(queue: u32) {
    while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue) {}
}

/// Declares a counter in Envoy's stats; `None` if the host refuses.
pub fn define_counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, name).ok()
}

/// proxy-wasm shared data: one store for every worker of the Envoy process.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        // An empty value comes back as no bytes but a CAS: the entry exists.
        match hostcalls::get_shared_data(key) {
            Ok((value, Some(cas))) => Some((value.unwrap_or_default(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => StoreError::CasMismatch,
            _ => StoreError::Failed,
        })
    }
}

/// The answer to a dispatched call, read in its callback (the host's buffers last only as
/// long as that).
pub fn call_answer(num_headers: usize, body_size: usize) -> IdpAnswer {
    if num_headers == 0 {
        return IdpAnswer::none();
    }
    let headers = lossy_map(MapType::HttpCallResponseHeaders);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let status = header(":status").and_then(|v| v.parse::<u16>().ok());
    let dpop_nonce = header(crate::oidc::dpop::NONCE_HEADER).map(str::to_string);
    let body = hostcalls::get_buffer(
        BufferType::HttpCallResponseBody,
        0,
        body_size.min(MAX_IDP_BODY),
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    IdpAnswer {
        status,
        body,
        dpop_nonce,
    }
}

/// Randomness from the host (WASI `random_get`, which Envoy backs with its own CSPRNG).
pub struct HostRandom;

impl Random for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        getrandom::getrandom(buf).map_err(|_| RandomUnavailable)
    }
}

/// The engine's host: this VM's proxy-wasm host calls.
pub struct WasmHost<'a> {
    /// Envoy's ids for our counters, in `Counter::ALL` order.
    pub counters: &'a [Option<u32>],
    /// This VM's queue, which nudges its root context.
    pub queue: Option<u32>,
    pub rng: HostRandom,
    pub store: HostStore,
}

impl Host for WasmHost<'_> {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn rng(&mut self) -> &mut dyn Random {
        &mut self.rng
    }

    fn store(&self) -> &dyn SharedStore {
        &self.store
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        request: &IdpRequest,
        timeout: Duration,
    ) -> Result<u32, String> {
        dispatch(cluster, request, timeout).map_err(|status| format!("{status:?}"))
    }

    fn count(&mut self, counter: Counter) {
        if let Some(Some(id)) = self.counters.get(counter.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        log(level, message);
    }

    fn nudge(&mut self) -> bool {
        self.queue.is_some_and(nudge)
    }

    fn jwt_payload(&mut self, name: &str) -> Option<Vec<u8>> {
        jwt_payload(name)
    }
}

/// What Envoy's `jwt_authn` stored under `name` for the current request (its dynamic
/// metadata); `None` when absent or unreadable (a payload with a `null` claim cannot be
/// serialized by the host).
pub fn jwt_payload(name: &str) -> Option<Vec<u8>> {
    let path = vec![
        "metadata",
        "filter_metadata",
        "envoy.filters.http.jwt_authn",
        name,
    ];
    hostcalls::get_property(path).ok().flatten()
}
