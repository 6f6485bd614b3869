//! Compiled for tests only (`#[cfg(test)] mod tests;` in engine/mod.rs, this its submodule): it
//! may unwrap and panic.
//! The engine with a store (etcd, faked here as far as the filter uses it): the deny list and
//! back-channel logout across replicas, and one refresh per session across replicas.

use super::*;
use crate::engine::refresh_claim::READ_EVERY_MS;
use crate::session::contents::{Cold, ColdFields};
use std::collections::HashMap;

/// etcd's JSON gateway as far as the filter uses it: leases (run out when the test says),
/// puts, create-if-absent transactions, ranges.
#[derive(Default)]
struct FakeEtcd {
    kv: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// The lease each key was written under (0: none).
    lease_of: HashMap<Vec<u8>, u64>,
    leases: u64,
    /// With etcd's authentication on: the password, and the token it last gave.
    auth: Option<(String, Option<String>)>,
    /// Every create-if-absent finds the key there, and then gone (a store not to trust).
    vanishing: bool,
}

impl FakeEtcd {
    /// Status and body, as etcd's gateway would answer (with authentication on, a call needs the
    /// last token given: 401 otherwise).
    fn answer(&mut self, req: &IdpRequest) -> (u16, String) {
        let body: serde_json::Value = serde_json::from_str(req.body.as_deref().unwrap()).unwrap();
        if let Some((password, token)) = &mut self.auth {
            if req.path == "/v3/auth/authenticate" {
                if body["password"] != json!(password) {
                    return (400, json!({"error": "etcdserver: authentication failed, invalid user ID or password", "code": 3}).to_string());
                }
                let given = format!("tok.{}", self.leases + 100);
                *token = Some(given.clone());
                return (200, json!({"header": {}, "token": given}).to_string());
            }
            let sent = req.headers.iter().find(|(n, _)| *n == "authorization");
            if sent.map(|(_, v)| v) != token.as_ref() {
                return (
                    401,
                    json!({"error": "etcdserver: invalid auth token", "code": 16}).to_string(),
                );
            }
        }
        (200, self.answer_signed_in(req, &body))
    }

    fn answer_signed_in(&mut self, req: &IdpRequest, body: &serde_json::Value) -> String {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| STANDARD.decode(v.as_str().unwrap_or("")).unwrap();
        let lease = |v: &serde_json::Value| v["lease"].as_str().map_or(0, |l| l.parse().unwrap());
        match req.path.as_str() {
            "/v3/lease/grant" => {
                self.leases += 1;
                json!({"header": {}, "ID": self.leases.to_string(), "TTL": body["TTL"].to_string()})
                    .to_string()
            }
            "/v3/kv/put" => {
                self.put(b64(&body["key"]), b64(&body["value"]), lease(body));
                json!({"header": {}}).to_string()
            }
            "/v3/kv/txn" if self.vanishing => {
                json!({"header": {}, "responses": [{"response_range": {}}]}).to_string()
            }
            "/v3/kv/txn" => {
                let key = b64(&body["compare"][0]["key"]);
                if let Some(value) = self.kv.get(&key) {
                    let kv = json!({"key": STANDARD.encode(&key), "value": STANDARD.encode(value)});
                    return json!({"header": {}, "responses": [{"response_range": {"kvs": [kv]}}]})
                        .to_string();
                }
                for op in body["success"].as_array().unwrap() {
                    let put = &op["request_put"];
                    self.put(b64(&put["key"]), b64(&put["value"]), lease(put));
                }
                json!({"header": {}, "succeeded": true}).to_string()
            }
            "/v3/kv/range" => {
                let from = b64(&body["key"]);
                let kvs: Vec<_> = match body.get("range_end") {
                    Some(end) => self.kv.range(from..b64(end)).collect(),
                    None => self.kv.get_key_value(&from).into_iter().collect(),
                };
                let kvs: Vec<_> = kvs
                    .into_iter()
                    .map(|(k, v)| json!({"key": STANDARD.encode(k), "value": STANDARD.encode(v)}))
                    .collect();
                if kvs.is_empty() {
                    json!({"header": {}}).to_string()
                } else {
                    json!({"header": {}, "kvs": kvs, "count": kvs.len().to_string()}).to_string()
                }
            }
            other => panic!("the fake etcd has no {other}"),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, lease: u64) {
        self.lease_of.insert(key.clone(), lease);
        self.kv.insert(key, value);
    }

    /// The one key whose name contains `part`, and its value.
    fn entry(&self, part: &str) -> (Vec<u8>, Vec<u8>) {
        let found: Vec<_> = self
            .kv
            .iter()
            .filter(|(k, _)| String::from_utf8_lossy(k).contains(part))
            .collect();
        assert_eq!(found.len(), 1, "keys with {part}");
        (found[0].0.clone(), found[0].1.clone())
    }

    /// The lease of the key whose name contains `part` runs out: its keys are gone.
    fn lease_runs_out(&mut self, part: &str) {
        let lease = self.lease_of[&self.entry(part).0];
        assert_ne!(lease, 0, "{part} has no lease");
        let gone: Vec<Vec<u8>> = (self.lease_of.iter())
            .filter(|(_, l)| **l == lease)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.kv.remove(&key);
            self.lease_of.remove(&key);
        }
    }
}

impl Worker {
    /// Answers every store call in flight from `etcd` (or with no answer: `None`).
    fn store_answers(&mut self, etcd: Option<&mut FakeEtcd>) -> usize {
        let calls: Vec<(u32, IdpRequest)> = {
            let (store, rest): (Vec<_>, Vec<_>) = self
                .host
                .sent
                .drain(..)
                .partition(|(_, r)| r.path.starts_with("/v3/"));
            self.host.sent = rest;
            store
        };
        let n = calls.len();
        let mut etcd = etcd;
        for (token, req) in calls {
            let answer = match etcd.as_deref_mut() {
                Some(etcd) => {
                    let (status, body) = etcd.answer(&req);
                    IdpAnswer::of(status, &body)
                }
                None => IdpAnswer::none(),
            };
            self.engine.on_call_answer(token, answer, &mut self.host);
        }
        n
    }

    /// Sync rounds until no store call is left in flight.
    fn settle_store(&mut self, etcd: &mut FakeEtcd) {
        while self.store_answers(Some(etcd)) > 0 {}
    }
}

fn with_store() -> serde_json::Value {
    let mut v = minimal_json();
    v["store"] = json!({"cluster": "etcd", "prefix": "bff/"});
    v
}

/// Two Envoy processes (each its own shared data) with a store, one worker each, the same
/// clock and etcd; their first rounds done (nothing in the store yet).
fn two_replicas() -> (World, World, FakeEtcd, Worker, Worker) {
    let one = World::new();
    let two = World {
        clock: Rc::clone(&one.clock),
        store: Rc::new(MemoryStore::default()),
    };
    let mut etcd = FakeEtcd::default();
    let mut a = one.worker(with_store());
    let mut b = two.worker(with_store());
    a.learn_provider();
    b.learn_provider();
    a.settle_store(&mut etcd);
    b.settle_store(&mut etcd);
    (one, two, etcd, a, b)
}

#[test]
fn a_logout_reaches_other_replicas_through_the_store_and_waits_out_its_failures() {
    let (one, two, mut etcd, mut a, mut b) = two_replicas();
    let cookie = session_cookie_expiring_at(T0 + 3600);
    let call = || wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    // The store cannot be reached when the user logs out on replica one.
    let out = settled(a.request(1, logout_request(&cookie)));
    assert_eq!(reply(&out).status, 200);
    assert!(
        a.host.nudges > 0,
        "the entry is written at once, from the root context"
    );
    a.engine.on_queue_nudged(&mut a.host);
    assert_eq!(a.store_answers(None), 1, "its lease");
    assert_eq!(a.store_answers(None), 1, "tried once more at once");
    assert_eq!(a.store_answers(None), 0);
    one.advance_ms(1_000);
    a.tick();
    while a.store_answers(None) > 0 {}
    let failures = |w: &Worker| {
        w.host
            .counted
            .iter()
            .filter(|c| **c == Counter::StoreFailures)
            .count()
    };
    assert_eq!(
        failures(&a),
        3,
        "the lease twice, then the round's lease and range"
    );
    let logged = a.host.logs.iter().filter(|l| l.contains("the store"));
    assert_eq!(logged.count(), 1, "logged once a minute");
    // Replica two never heard of it; replica one refuses the cookie all the same.
    two.advance_ms(0);
    b.tick();
    b.settle_store(&mut etcd);
    assert_eq!(token_of(&settled(b.request(2, call()))), "Bearer fresh-at");
    assert_eq!(reply(&settled(a.request(3, call()))).status, 401);
    // The store is back: the next round writes the entry, and replica two reads it.
    one.advance_ms(1_000);
    a.tick();
    a.settle_store(&mut etcd);
    assert_eq!(etcd.kv.len(), 1, "{:?}", etcd.kv.keys());
    let (key, value) = etcd.kv.iter().next().unwrap();
    let key = String::from_utf8(key.clone()).unwrap();
    assert!(
        key.starts_with("bff/") && key.ends_with("/deny/s/sid-logout"),
        "{key}"
    );
    assert!(
        !String::from_utf8_lossy(value).contains("fresh-at"),
        "no token in the store"
    );
    b.tick();
    b.settle_store(&mut etcd);
    let r = settled(b.request(4, call()));
    assert_eq!(reply(&r).status, 401, "replica two learnt the logout");
    // Written once: later rounds only read.
    one.advance_ms(1_000);
    a.tick();
    assert_eq!(a.store_answers(Some(&mut etcd)), 1);
}

#[test]
fn a_garbled_store_changes_nothing() {
    let world = World::new();
    let mut a = world.worker(with_store());
    a.learn_provider();
    let cookie = session_cookie_expiring_at(T0 + 3600);
    let calls: Vec<(u32, IdpRequest)> = a.host.sent.drain(..).collect();
    assert_eq!(calls.len(), 1, "the first round's range");
    for (token, _) in calls {
        let garbage = IdpAnswer {
            status: Some(200),
            body: b"{\"kvs\": [{\"key\": \"!!\", \"value\": 7}]}".to_vec(),
            dpop_nonce: None,
        };
        a.engine.on_call_answer(token, garbage, &mut a.host);
    }
    assert!(a.host.counted.contains(&Counter::StoreFailures));
    let call = wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(token_of(&settled(a.request(1, call))), "Bearer fresh-at");
}

fn logout_token(claims: serde_json::Value) -> String {
    test_signer::sign(&claims)
}

fn backchannel(w: &mut Worker, id: u32, body: &str) -> Reply {
    let headers = header_map::serialize(&[
        (":method", b"POST".as_slice()),
        (":path", b"/private/backchannel-logout"),
        (":scheme", b"http"),
        (":authority", b"app.local:8080"),
        ("content-type", b"application/x-www-form-urlencoded"),
    ]);
    assert_eq!(w.request(id, headers), Handled::ReadBody);
    match w.engine.on_request_body(id, body.as_bytes(), &mut w.host) {
        Handled::Settled(Settled::Reply(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_back_channel_logout_ends_the_sessions_of_that_idp_session_once() {
    let world = World::new();
    let mut w = world.worker(minimal_json());
    w.learn_provider();
    let s = Session {
        access_token: Secret::new("fresh-at"),
        access_expires_at: T0 + 3600,
        subject: "alice".into(),
        created: T0 - 100,
        last_seen: T0 - 10,
        sid: "ours".into(),
        idp_sid: Some("idp-session-1".into()),
        cold: Cold::Open(ColdFields {
            refresh_token: None,
            id_token: None,
        }),
    };
    let keys = KeyRing::from_base64_list(KEY_A).unwrap();
    let cookie = format!(
        "__Host-bff-session={}",
        s.seal(&keys, "__Host-bff-session", &mut CountingRandom(5))
            .unwrap()
    );
    let call = || wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(token_of(&settled(w.request(1, call()))), "Bearer fresh-at");
    let claims = json!({"iss": ISSUER, "aud": "bff", "iat": T0, "exp": T0 + 120, "jti": "j-1",
                        "sid": "idp-session-1", "sub": "alice",
                        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let body = format!("logout_token={}", logout_token(claims.clone()));
    let r = backchannel(&mut w, 2, &body);
    assert_eq!(
        (r.status, r.header("cache-control")),
        (200, Some("no-store"))
    );
    let r = settled(w.request(3, call()));
    assert_eq!(
        reply(&r).status,
        401,
        "the session of that IdP session ended"
    );
    // The same token again: a replay.
    let r = backchannel(&mut w, 4, &body);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("already received"), "{}", r.body);
    // Not a logout token: an ID token (nonce, no events), an empty form.
    let mut id_token = claims.clone();
    id_token["jti"] = json!("j-2");
    id_token["nonce"] = json!("n");
    let r = backchannel(
        &mut w,
        5,
        &format!("logout_token={}", logout_token(id_token)),
    );
    assert_eq!(r.status, 400);
    assert_eq!(backchannel(&mut w, 6, "").status, 400);
    assert_eq!(
        w.host
            .counted
            .iter()
            .filter(|c| **c == Counter::BackchannelRefused)
            .count(),
        3
    );
    // Only POST.
    let get = wire("/private/backchannel-logout", &[]);
    assert_eq!(reply(&settled(w.request(7, get))).status, 405);
}

#[test]
fn with_a_store_a_back_channel_logout_is_recorded_for_every_replica_before_its_200() {
    let (_one, two, mut etcd, mut a, mut b) = two_replicas();
    let claims = json!({"iss": ISSUER, "aud": "bff", "iat": T0, "jti": "j-9", "sub": "alice",
                        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let body = format!("logout_token={}", logout_token(claims));
    let post = |id: u32, w: &mut Worker| {
        let headers = header_map::serialize(&[
            (":method", b"POST".as_slice()),
            (":path", b"/private/backchannel-logout"),
            (":scheme", b"http"),
            (":authority", b"app.local:8080"),
        ]);
        assert_eq!(w.request(id, headers), Handled::ReadBody);
        w.engine.on_request_body(id, body.as_bytes(), &mut w.host)
    };
    // The store is down: 503, so that the IdP may try again; nothing recorded.
    assert_eq!(post(1, &mut a), Handled::Paused);
    a.store_answers(None);
    let resumes = a.engine.take_resumes();
    assert_eq!(reply(&resumes[0].settled).status, 503);
    // Up again: lease, then one transaction with the jti and the entry; then 200.
    assert_eq!(post(2, &mut a), Handled::Paused);
    a.settle_store(&mut etcd);
    let resumes = a.engine.take_resumes();
    assert_eq!(reply(&resumes[0].settled).status, 200);
    let keys: Vec<String> = etcd
        .kv
        .keys()
        .map(|k| String::from_utf8_lossy(k).into())
        .collect();
    assert!(keys.iter().any(|k| k.ends_with("/jti/j-9")), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.ends_with("/deny/u/alice")),
        "{keys:?}"
    );
    // Replica two: the same token is a replay there too, and its next round ends alice's
    // sessions from before the token.
    assert_eq!(post(3, &mut b), Handled::Paused);
    b.settle_store(&mut etcd);
    let resumes = b.engine.take_resumes();
    assert_eq!(reply(&resumes[0].settled).status, 400);
    two.advance_ms(1_000);
    b.tick();
    b.settle_store(&mut etcd);
    let cookie = session_cookie_expiring_at(T0 + 3600);
    let r = settled(b.request(4, wire("/private/api", &[API, CSRF, ("cookie", &cookie)])));
    assert_eq!(reply(&r).status, 401);
}

/// A due session's API call on each replica, its process claim won and sent on (the nudge).
fn due_calls_on(replicas: &mut [&mut Worker], cookie: &str) {
    for w in replicas.iter_mut() {
        let call = wire("/private/api", &[API, CSRF, ("cookie", cookie)]);
        assert_eq!(w.request(1, call), Handled::Paused);
        w.engine.on_queue_nudged(&mut w.host);
    }
}

fn token_calls_in_flight(w: &Worker) -> usize {
    w.host
        .sent
        .iter()
        .filter(|(_, r)| r.path == "/token")
        .count()
}

#[test]
fn with_a_store_one_replica_refreshes_and_the_others_take_its_outcome() {
    let (one, _two, mut etcd, mut a, mut b) = two_replicas();
    let cookie = due_session_cookie();
    due_calls_on(&mut [&mut a, &mut b], &cookie);
    assert_eq!(
        token_calls_in_flight(&a) + token_calls_in_flight(&b),
        0,
        "the store first"
    );
    // Both get a lease; A's transaction reaches etcd first and creates the claim.
    a.store_answers(Some(&mut etcd));
    b.store_answers(Some(&mut etcd));
    a.store_answers(Some(&mut etcd));
    b.store_answers(Some(&mut etcd));
    assert_eq!((token_calls_in_flight(&a), b.calls_to("/token")), (1, 0));
    let resumes = a.answer("/token", Some(200), REFRESHED);
    assert_eq!(token_of(&resumes[0].settled), "Bearer new-at");
    a.settle_store(&mut etcd);
    // The outcome is in the store, sealed: no token in clear.
    let (_, stored) = etcd.entry("/refresh/");
    let text = String::from_utf8_lossy(&stored);
    assert!(text.starts_with("v1.") && !text.contains("new-at") && !text.contains("rt"));
    // B reads it at its next read and goes on with the renewed session.
    one.advance_ms(READ_EVERY_MS);
    b.tick();
    b.store_answers(Some(&mut etcd));
    let resumes = b.engine.take_resumes();
    assert_eq!(resumes.len(), 1);
    let Settled::Forward(f) = &resumes[0].settled else {
        panic!("{:?}", resumes[0].settled)
    };
    assert_eq!(f.token_header.as_ref().unwrap().1, "Bearer new-at");
    assert_eq!(
        f.set_cookies.len(),
        1,
        "the renewed session goes to the browser"
    );
    assert_eq!(
        a.calls_to("/token") + b.calls_to("/token"),
        1,
        "one grant in all"
    );
    // A later request with the old cookie on B is answered from B's process at once.
    let later = wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(token_of(&settled(b.request(2, later))), "Bearer new-at");
}

/// A due session on two replicas: A claims the refresh in the store and sends it (unanswered),
/// B finds A's claim and waits.
fn a_refreshes_and_b_waits() -> (World, FakeEtcd, Worker, Worker) {
    let (one, _two, mut etcd, mut a, mut b) = two_replicas();
    due_calls_on(&mut [&mut a, &mut b], &due_session_cookie());
    a.store_answers(Some(&mut etcd));
    a.store_answers(Some(&mut etcd));
    assert_eq!(token_calls_in_flight(&a), 1, "A won the claim");
    b.store_answers(Some(&mut etcd));
    b.store_answers(Some(&mut etcd));
    assert_eq!(b.calls_to("/token"), 0, "B waits");
    (one, etcd, a, b)
}

#[test]
fn when_the_replica_that_claimed_a_refresh_dies_another_takes_over_after_its_lease() {
    let (one, mut etcd, _a, mut b) = a_refreshes_and_b_waits();
    // A died mid-refresh.
    // B reads the claim while A's lease lasts...
    for _ in 0..3 {
        one.advance_ms(READ_EVERY_MS);
        b.tick();
        b.store_answers(Some(&mut etcd));
        assert_eq!(b.calls_to("/token"), 0);
    }
    // ...and once it has run out, claims the refresh and sends it.
    etcd.lease_runs_out("/refresh/");
    one.advance_ms(READ_EVERY_MS);
    b.tick();
    b.settle_store(&mut etcd);
    assert_eq!(token_calls_in_flight(&b), 1);
    let resumes = b.answer("/token", Some(200), REFRESHED);
    assert_eq!(token_of(&resumes[0].settled), "Bearer new-at");
    b.settle_store(&mut etcd);
    assert_eq!(b.calls_to("/token"), 1);
}

#[test]
fn a_store_that_cannot_be_reached_or_read_does_not_hold_a_refresh_up() {
    // Unreachable: the lease call fails twice (the retry included), the refresh goes on alone.
    let (_one, _two, mut etcd, mut a, mut b) = two_replicas();
    let cookie = due_session_cookie();
    due_calls_on(&mut [&mut a], &cookie);
    assert_eq!(a.store_answers(None), 1);
    assert_eq!(a.store_answers(None), 1, "tried once more");
    assert_eq!(token_calls_in_flight(&a), 1);
    assert!(a.host.counted.contains(&Counter::StoreFailures));
    assert!(a
        .host
        .logs
        .iter()
        .any(|l| l.contains("each process's claim alone")));
    let resumes = a.answer("/token", Some(200), REFRESHED);
    assert_eq!(token_of(&resumes[0].settled), "Bearer new-at");
    assert_eq!(
        a.store_answers(Some(&mut etcd)),
        0,
        "a refresh not claimed is not published"
    );

    // Forged: a value in the store that does not open is not taken for an outcome.
    let forged = in_store_key_of(&b, "old-rt");
    etcd.put(forged.into_bytes(), b"renewed v1.k.forged".to_vec(), 0);
    due_calls_on(&mut [&mut b], &cookie);
    b.store_answers(Some(&mut etcd));
    b.store_answers(Some(&mut etcd));
    assert_eq!(token_calls_in_flight(&b), 1, "refreshes alone");
    let resumes = b.answer("/token", Some(200), REFRESHED);
    assert_eq!(token_of(&resumes[0].settled), "Bearer new-at");
}

fn in_store_key_of(w: &Worker, refresh_token: &str) -> String {
    let id = RefreshId::of(&Secret::new(refresh_token));
    crate::refresh::in_store::key("bff/", w.engine.namespace(), &id)
}

#[test]
fn a_replica_waiting_for_a_claim_that_never_ends_goes_on_with_the_current_token() {
    let (one, mut etcd, _a, mut b) = a_refreshes_and_b_waits();
    // A's claim stays (its lease is renewed, say); B reads it until it gives up.
    let mut resumes = Vec::new();
    for _ in 0..1000 {
        one.advance_ms(READ_EVERY_MS);
        resumes.extend(b.tick());
        b.store_answers(Some(&mut etcd));
        resumes.extend(b.engine.take_resumes());
        if !resumes.is_empty() {
            break;
        }
    }
    assert_eq!(resumes.len(), 1);
    assert_eq!(token_of(&resumes[0].settled), "Bearer old-at");
    let waited = one.clock.get() - T0 * 1000;
    assert!(waited <= b.engine.store_wait_ms() + 200, "{waited} ms");
    assert_eq!(b.calls_to("/token"), 0, "never a second grant");
}

#[test]
fn with_etcd_authentication_each_vm_signs_in_and_again_when_its_token_runs_out() {
    let world = World::new();
    let mut config = with_store();
    config["store"]["username"] = json!("bff");
    config["store"]["password"] = json!({"value": "right"});
    let mut etcd = FakeEtcd {
        auth: Some(("right".into(), None)),
        ..FakeEtcd::default()
    };
    let mut a = world.worker(config.clone());
    a.learn_provider();
    assert_eq!(
        a.calls_to("/v3/auth/authenticate"),
        1,
        "signed in at the first tick"
    );
    a.settle_store(&mut etcd);
    // A logout's entry goes out signed in, and is written.
    let cookie = session_cookie_expiring_at(T0 + 3600);
    assert_eq!(
        reply(&settled(a.request(1, logout_request(&cookie)))).status,
        200
    );
    a.engine.on_queue_nudged(&mut a.host);
    a.settle_store(&mut etcd);
    assert_eq!(etcd.kv.len(), 1);
    // etcd forgets the token (it ran out): the next round's call is refused, the VM signs in
    // again at its next tick, and the round after that goes through.
    etcd.auth = Some(("right".into(), Some("tok.other".into())));
    world.advance_ms(1_000);
    a.tick();
    a.settle_store(&mut etcd);
    assert_eq!(a.calls_to("/v3/auth/authenticate"), 1);
    world.advance_ms(100);
    a.tick();
    assert_eq!(a.calls_to("/v3/auth/authenticate"), 2);
    a.settle_store(&mut etcd);
    let refused_before = a.host.counted.len();
    world.advance_ms(1_000);
    a.tick();
    a.settle_store(&mut etcd);
    assert_eq!(
        a.host.counted.len(),
        refused_before,
        "no failure once signed in again"
    );

    // A wrong password: refused, said in the log, tried again only after a while; the request
    // path never waits for it.
    let mut config = with_store();
    config["store"]["username"] = json!("bff");
    config["store"]["password"] = json!({"value": "wrong"});
    let mut b = World::new().worker(config);
    b.learn_provider();
    b.settle_store(&mut etcd);
    assert!(
        b.host
            .logs
            .iter()
            .any(|l| l.contains("wrong store.username or password")),
        "{:?}",
        b.host.logs
    );
    assert!(b
        .host
        .logs
        .iter()
        .all(|l| !l.contains("wrong\"") && !l.contains("right")));
    b.tick();
    assert_eq!(b.calls_to("/v3/auth/authenticate"), 1, "not again at once");
    let call = wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(token_of(&settled(b.request(2, call))), "Bearer fresh-at");
}

#[test]
fn a_claim_that_keeps_vanishing_is_given_up_for_the_process_claim_alone() {
    let (_one, _two, mut etcd, mut a, _b) = two_replicas();
    etcd.vanishing = true;
    due_calls_on(&mut [&mut a], &due_session_cookie());
    let mut rounds = 0;
    while token_calls_in_flight(&a) == 0 {
        assert!(a.store_answers(Some(&mut etcd)) > 0, "stuck");
        rounds += 1;
    }
    assert_eq!(
        rounds, 6,
        "three claims (a lease and a transaction each), then alone"
    );
    assert!(a.host.logs.iter().any(|l| l.contains("keeps vanishing")));
}
