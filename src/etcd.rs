//! etcd's v3 JSON gateway (`POST /v3/...`, keys and values base64, 64-bit numbers as strings,
//! proto3 defaults left out), over `dispatch_http_call` through the Envoy cluster of the
//! members: the few calls the shared state needs, built and read with no I/O between.
//!
//! Why the JSON gateway rather than gRPC (`dispatch_grpc_call`): the filter already sends and
//! reads JSON over HTTP for the IdP, so the same call path, limits and tests serve; gRPC would
//! add protobuf encoding for five messages. Both go through an Envoy cluster, which does the
//! TLS or mTLS to the members.

use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

/// The largest store answer read; a bigger one is refused like a garbled one.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// Why a store call gave nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No answer, a timeout, no quorum (503/500 with gRPC codes 14 or 2): try again later.
    Unavailable,
    /// The lease named is gone (404, gRPC code 5).
    LeaseNotFound,
    /// The sign-in token is missing, expired or revoked (401, gRPC code 16): sign in again.
    Unauthenticated,
    /// The user may not do this (403), or the user name or password is wrong.
    Refused,
    /// An answer that is not the gateway's, or too large.
    Garbled,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreError::Unavailable => "unavailable or slow (no answer, or no quorum)",
            StoreError::LeaseNotFound => "a lease ran out before its key was written",
            StoreError::Unauthenticated => "its sign-in token ran out (signing in again)",
            StoreError::Refused => {
                "refused: a wrong store.username or password, etcd's authentication on without \
                 store.username, or a user without read-write permission on store.prefix"
            }
            StoreError::Garbled => "an answer that is not etcd's (or too large)",
        })
    }
}

fn post(path: &str, body: serde_json::Value) -> IdpRequest {
    IdpRequest {
        method: "POST",
        url: String::new(),
        path: path.to_string(),
        authority: "etcd".to_string(),
        headers: vec![("content-type", "application/json".to_string())],
        body: Some(body.to_string()),
        authenticate: false,
    }
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The key just after every key that starts with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from there on.
    vec![0]
}

/// Signs in as an etcd user: the answer's token goes in the `Authorization` header of the
/// calls that follow.
pub fn authenticate(username: &str, password: &str) -> IdpRequest {
    post(
        "/v3/auth/authenticate",
        json!({"name": username, "password": password}),
    )
}

/// The header a signed-in call carries.
pub fn signed_in(mut request: IdpRequest, token: &str) -> IdpRequest {
    request.headers.push(("authorization", token.to_string()));
    request
}

/// A lease of `ttl_s` seconds, for keys that must vanish on their own.
pub fn lease_grant(ttl_s: u64) -> IdpRequest {
    post("/v3/lease/grant", json!({ "TTL": ttl_s.max(1) }))
}

/// Writes `key` under `lease` (0: none).
pub fn put(key: &str, value: &[u8], lease: u64) -> IdpRequest {
    post("/v3/kv/put", put_body(key, value, lease))
}

/// `{"key", "value"[, "lease"]}`: a put, alone or in a transaction.
fn put_body(key: &str, value: &[u8], lease: u64) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    body.insert("key".into(), json!(b64(key.as_bytes())));
    body.insert("value".into(), json!(b64(value)));
    if lease != 0 {
        body.insert("lease".into(), json!(lease.to_string()));
    }
    serde_json::Value::Object(body)
}

/// Creates `key` only if it does not exist (its create revision is 0); otherwise reads it.
pub fn create_if_absent(key: &str, value: &[u8], lease: u64) -> IdpRequest {
    create_all_if_absent(key, value, &[], lease)
}

/// Creates `key`, and writes `others` with it in the same transaction, only if `key` does not
/// exist; otherwise reads `key` and writes nothing.
pub fn create_all_if_absent(
    key: &str,
    value: &[u8],
    others: &[(String, Vec<u8>)],
    lease: u64,
) -> IdpRequest {
    let k = b64(key.as_bytes());
    let mut puts = vec![json!({"request_put": put_body(key, value, lease)})];
    puts.extend(
        others
            .iter()
            .map(|(key, value)| json!({"request_put": put_body(key, value, lease)})),
    );
    post(
        "/v3/kv/txn",
        json!({
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": puts,
            "failure": [{"request_range": {"key": k}}],
        }),
    )
}

/// One key, with its value (none when it does not exist).
pub fn get(key: &str) -> IdpRequest {
    post("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
}

/// Every key under `prefix`, with its value.
pub fn range_prefix(prefix: &str) -> IdpRequest {
    post(
        "/v3/kv/range",
        json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))}),
    )
}

#[derive(Deserialize)]
struct Kv {
    key: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct LeaseGrant {
    #[serde(rename = "ID")]
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TxnOp {
    response_range: Option<RangeResponse>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnOp>,
}

#[derive(Deserialize)]
struct Authenticated {
    token: Option<String>,
}

#[derive(Deserialize)]
struct GatewayError {
    code: Option<i64>,
}

/// The answer's JSON body, or why there is none.
fn body(answer: &IdpAnswer) -> Result<&[u8], StoreError> {
    if answer.body.len() > MAX_ANSWER {
        return Err(StoreError::Garbled);
    }
    let code = || {
        serde_json::from_slice::<GatewayError>(&answer.body)
            .ok()
            .and_then(|e| e.code)
    };
    match answer.status {
        Some(200) => Ok(&answer.body),
        Some(404) if code() == Some(5) => Err(StoreError::LeaseNotFound),
        // A wrong user name or password, or no user name where etcd wants one.
        Some(400) if code() == Some(3) => Err(StoreError::Refused),
        Some(401) => Err(StoreError::Unauthenticated),
        Some(403) => Err(StoreError::Refused),
        None | Some(500..=599) => Err(StoreError::Unavailable),
        Some(_) => Err(StoreError::Garbled),
    }
}

/// The gateway answers JSON objects with a `header` (the cluster's id and revision): anything
/// else is not etcd's, whatever its status (a misrouted cluster must not empty the deny list).
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) if v.get("header").is_some_and(serde_json::Value::is_object) => {
            serde_json::from_value(v).map_err(|_| StoreError::Garbled)
        }
        _ => Err(StoreError::Garbled),
    }
}

fn decode(field: Option<&str>) -> Result<Vec<u8>, StoreError> {
    STANDARD
        .decode(field.unwrap_or(""))
        .map_err(|_| StoreError::Garbled)
}

/// A granted lease's id.
pub fn read_lease(answer: &IdpAnswer) -> Result<u64, StoreError> {
    let grant: LeaseGrant = parse(body(answer)?)?;
    let id = match grant.id {
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    id.filter(|id| *id != 0).ok_or(StoreError::Garbled)
}

/// A sign-in's token.
pub fn read_token(answer: &IdpAnswer) -> Result<String, StoreError> {
    let signed: Authenticated = parse(body(answer)?)?;
    // Sent back in a header: a token Envoy could not send as one is no token.
    signed
        .token
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(StoreError::Garbled)
}

/// A put's (or delete's) answer: done or not.
pub fn read_done(answer: &IdpAnswer) -> Result<(), StoreError> {
    let _: serde_json::Map<String, serde_json::Value> = parse(body(answer)?)?;
    Ok(())
}

/// What [`create_if_absent`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key is ours now.
    Created,
    /// It was there, with this value.
    Exists(Vec<u8>),
}

pub fn read_created(answer: &IdpAnswer) -> Result<Created, StoreError> {
    let txn: TxnResponse = parse(body(answer)?)?;
    if txn.succeeded {
        return Ok(Created::Created);
    }
    let existing = txn
        .responses
        .into_iter()
        .next()
        .and_then(|op| op.response_range)
        .and_then(|range| range.kvs.into_iter().next());
    match existing {
        Some(kv) => Ok(Created::Exists(decode(kv.value.as_deref())?)),
        // Deleted (its lease ran out) between the compare and the read.
        None => Ok(Created::Exists(Vec::new())),
    }
}

/// A range's keys and values (keys as text; a key that is not UTF-8 is not one of ours).
pub fn read_range(answer: &IdpAnswer) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let range: RangeResponse = parse(body(answer)?)?;
    let mut out = Vec::with_capacity(range.kvs.len());
    for kv in range.kvs {
        let key = decode(kv.key.as_deref())?;
        let Ok(key) = String::from_utf8(key) else {
            continue;
        };
        out.push((key, decode(kv.value.as_deref())?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> IdpAnswer {
        IdpAnswer::of(status, body)
    }

    fn json_of(req: &IdpRequest) -> serde_json::Value {
        serde_json::from_str(req.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn requests_are_what_the_gateway_takes() {
        // As captured against etcd 3.4.23's gateway.
        let txn = create_if_absent("bff/k1", b"v1", 6971187622265763081);
        assert_eq!((txn.method, txn.path.as_str()), ("POST", "/v3/kv/txn"));
        assert_eq!(
            json_of(&txn),
            json!({"compare":[{"key":"YmZmL2sx","target":"CREATE","result":"EQUAL","create_revision":"0"}],
                   "success":[{"request_put":{"key":"YmZmL2sx","value":"djE=","lease":"6971187622265763081"}}],
                   "failure":[{"request_range":{"key":"YmZmL2sx"}}]})
        );
        assert_eq!(
            json_of(&range_prefix("bff/p/")),
            json!({"key":"YmZmL3Av","range_end":"YmZmL3Aw"})
        );
        assert_eq!(json_of(&lease_grant(10)), json!({"TTL": 10}));
        assert_eq!(json_of(&get("bff/k1")), json!({"key":"YmZmL2sx"}));
        assert_eq!(
            json_of(&put("bff/p/a", b"A", 0)),
            json!({"key":"YmZmL3AvYQ==","value":"QQ=="})
        );
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn answers_are_read_as_the_gateway_writes_them() {
        let grant = answer(
            200,
            r#"{"header":{"revision":"2"},"ID":"6971187622265763081","TTL":"10"}"#,
        );
        assert_eq!(read_lease(&grant), Ok(6971187622265763081));
        let created = answer(
            200,
            r#"{"header":{},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}}]}"#,
        );
        assert_eq!(read_created(&created), Ok(Created::Created));
        // On failure `succeeded` is absent, not false.
        let exists = answer(
            200,
            r#"{"header":{},"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"YmZmL2sx","create_revision":"2","mod_revision":"2","version":"1","value":"djE=","lease":"1"}],"count":"1"}}]}"#,
        );
        assert_eq!(read_created(&exists), Ok(Created::Exists(b"v1".to_vec())));
        let range = answer(
            200,
            r#"{"header":{},"kvs":[{"key":"YmZmL3AvYQ==","value":"QQ=="},{"key":"YmZmL3AvYg=="}],"count":"2"}"#,
        );
        assert_eq!(
            read_range(&range),
            Ok(vec![
                ("bff/p/a".to_string(), b"A".to_vec()),
                ("bff/p/b".to_string(), Vec::new())
            ])
        );
        // No results: neither kvs nor count.
        assert_eq!(read_range(&answer(200, r#"{"header":{}}"#)), Ok(vec![]));
        assert_eq!(read_done(&answer(200, r#"{"header":{}}"#)), Ok(()));
        // As etcd 3.4's gateway answers a sign-in, a wrong password, and a stale token.
        let signed = answer(
            200,
            r#"{"header":{"cluster_id":"1","revision":"5"},"token":"hvNbnLdYrRrUnvPn.17"}"#,
        );
        assert_eq!(read_token(&signed), Ok("hvNbnLdYrRrUnvPn.17".to_string()));
        let wrong = answer(
            400,
            r#"{"error":"etcdserver: authentication failed, invalid user ID or password","code":3,"message":"etcdserver: authentication failed, invalid user ID or password"}"#,
        );
        assert_eq!(read_token(&wrong), Err(StoreError::Refused));
        let stale = answer(
            401,
            r#"{"error":"etcdserver: invalid auth token","code":16}"#,
        );
        assert_eq!(read_range(&stale), Err(StoreError::Unauthenticated));
        assert_eq!(
            read_done(&answer(
                403,
                r#"{"error":"etcdserver: permission denied","code":7}"#
            )),
            Err(StoreError::Refused)
        );
        for garbage in [
            r#"{"header":{}}"#,
            r#"{"header":{},"token":"a\nb"}"#,
            r#"{"token":"x"}"#,
        ] {
            assert_eq!(
                read_token(&answer(200, garbage)),
                Err(StoreError::Garbled),
                "{garbage}"
            );
        }
        let sign_in = authenticate("bff", "pw");
        assert_eq!(json_of(&sign_in), json!({"name": "bff", "password": "pw"}));
        assert_eq!(sign_in.path, "/v3/auth/authenticate");
        let get = signed_in(get("k"), "tok.1");
        assert!(get
            .headers
            .contains(&("authorization", "tok.1".to_string())));
    }

    #[test]
    fn failures_and_garbage_are_named() {
        for (status, body) in [
            (
                503,
                r#"{"error":"etcdserver: request timed out","code":14}"#,
            ),
            (500, r#"{"error":"context deadline exceeded","code":2}"#),
            (504, "upstream request timeout"),
        ] {
            assert_eq!(
                read_range(&answer(status, body)),
                Err(StoreError::Unavailable)
            );
        }
        assert_eq!(read_range(&IdpAnswer::none()), Err(StoreError::Unavailable));
        assert_eq!(
            read_done(&answer(
                404,
                r#"{"error":"etcdserver: requested lease not found","code":5}"#
            )),
            Err(StoreError::LeaseNotFound)
        );
        for garbage in [
            "",
            "[]",
            "{\"kvs\": 3}",
            "{\"header\":{},\"kvs\":[{\"key\":\"%%%\"}]}",
            // Another server's JSON: no header.
            "{\"method\":\"POST\",\"path\":\"/v3/kv/range\"}",
        ] {
            assert_eq!(
                read_range(&answer(200, garbage)),
                Err(StoreError::Garbled),
                "{garbage}"
            );
        }
        assert_eq!(
            read_lease(&answer(200, r#"{"ID":"0"}"#)),
            Err(StoreError::Garbled)
        );
        assert_eq!(read_range(&answer(302, "")), Err(StoreError::Garbled));
        let huge = IdpAnswer {
            status: Some(200),
            body: vec![b' '; MAX_ANSWER + 1],
            dpop_nonce: None,
        };
        assert_eq!(read_range(&huge), Err(StoreError::Garbled));
    }
}
