//! Compiled for tests only (`#[cfg(test)] mod tests;` in mod.rs): it may unwrap and panic.
//! The engine driven natively: a fake clock, a fake IdP that answers when the test says so, and
//! an in-memory shared store (two engines on one store stand for two Envoy workers).

use super::*;
use crate::config::tests::{config_from, minimal_json, KEY_A};
use crate::oidc::id_token::test_signer;
use crate::oidc::idp_request::IdpRequest;
use crate::random::CountingRandom;
use crate::secret::Secret;
use crate::session::contents::{Cold, ColdFields};
use crate::session::KeyRing;
use crate::store::MemoryStore;
use serde_json::json;
use std::cell::Cell;
use std::rc::Rc;

mod access_log;
mod replicas;

const ISSUER: &str = "http://127.0.0.1:9000";
/// The fake clock's start: unix seconds.
const T0: u64 = 1_800_000_000;

struct FakeHost {
    now_ms: Rc<Cell<u64>>,
    store: Rc<MemoryStore>,
    rng: CountingRandom,
    next_token: u32,
    /// Calls sent and not answered yet: (token, request).
    sent: Vec<(u32, IdpRequest)>,
    /// Every path this host ever sent a call to.
    history: Vec<String>,
    /// The cluster each of them went through.
    clusters: Vec<String>,
    refuse_dispatch: bool,
    counted: Vec<Counter>,
    logs: Vec<String>,
    nudges: usize,
    /// What `jwt_authn` left for the current request.
    jwt_payload: Option<Vec<u8>>,
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }
    fn rng(&mut self) -> &mut dyn crate::random::Random {
        &mut self.rng
    }
    fn store(&self) -> &dyn crate::store::SharedStore {
        &*self.store
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        request: &IdpRequest,
        _: Duration,
    ) -> Result<u32, String> {
        assert!(["idp", "idp_mtls", "etcd"].contains(&cluster), "{cluster}");
        if self.refuse_dispatch {
            return Err("BadArgument".into());
        }
        self.next_token += 1;
        self.history.push(request.path.clone());
        self.clusters.push(cluster.to_string());
        self.sent.push((self.next_token, request.clone()));
        Ok(self.next_token)
    }
    fn count(&mut self, counter: Counter) {
        self.counted.push(counter);
    }
    fn log(&mut self, _: Level, message: &str) {
        self.logs.push(message.to_string());
    }
    fn nudge(&mut self) -> bool {
        self.nudges += 1;
        true
    }
    fn jwt_payload(&mut self, _: &str) -> Option<Vec<u8>> {
        self.jwt_payload.clone()
    }
}

/// One worker: an engine and its host. Several share a clock and a store.
struct Worker {
    engine: Engine,
    host: FakeHost,
}

struct World {
    clock: Rc<Cell<u64>>,
    store: Rc<MemoryStore>,
}

impl World {
    fn new() -> World {
        World {
            clock: Rc::new(Cell::new(T0 * 1000)),
            store: Rc::new(MemoryStore::default()),
        }
    }

    fn worker(&self, config: serde_json::Value) -> Worker {
        let mut host = FakeHost {
            now_ms: Rc::clone(&self.clock),
            store: Rc::clone(&self.store),
            rng: CountingRandom(7),
            next_token: 0,
            sent: Vec::new(),
            history: Vec::new(),
            clusters: Vec::new(),
            refuse_dispatch: false,
            counted: Vec::new(),
            logs: Vec::new(),
            nudges: 0,
            jwt_payload: None,
        };
        let engine = Engine::new(config_from(config), &mut host);
        Worker { engine, host }
    }

    fn advance_ms(&self, ms: u64) {
        self.clock.set(self.clock.get() + ms);
    }
}

impl Worker {
    fn request(&mut self, id: u32, headers: Vec<u8>) -> Handled {
        self.engine.on_request_headers(id, headers, &mut self.host)
    }

    fn tick(&mut self) -> Vec<Resume> {
        self.engine.on_tick(&mut self.host);
        self.engine.take_resumes()
    }

    /// The call in flight to `path`, taken off the list.
    fn call_to(&mut self, path: &str) -> (u32, IdpRequest) {
        let at = self
            .host
            .sent
            .iter()
            .position(|(_, r)| r.path == path)
            .unwrap_or_else(|| panic!("no call to {path} in {:?}", self.host.history));
        self.host.sent.remove(at)
    }

    fn answer(&mut self, path: &str, status: Option<u16>, body: &str) -> Vec<Resume> {
        let (token, _) = self.call_to(path);
        self.engine.on_call_answer(
            token,
            IdpAnswer {
                status,
                body: body.as_bytes().to_vec(),
                dpop_nonce: None,
            },
            &mut self.host,
        );
        self.engine.take_resumes()
    }

    fn calls_to(&self, path: &str) -> usize {
        self.host.history.iter().filter(|p| *p == path).count()
    }

    /// Discovery and the JWKS, answered as the IdP would.
    fn learn_provider(&mut self) {
        self.tick();
        self.answer("/.well-known/openid-configuration", Some(200), &discovery());
        self.answer("/jwks", Some(200), &test_signer::jwks_json());
    }
}

fn discovery() -> String {
    json!({
        "issuer": ISSUER,
        "authorization_endpoint": format!("{ISSUER}/auth"),
        "token_endpoint": format!("{ISSUER}/token"),
        "jwks_uri": format!("{ISSUER}/jwks"),
        "id_token_signing_alg_values_supported": ["RS256"],
        "authorization_response_iss_parameter_supported": true
    })
    .to_string()
}

fn wire(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut pairs: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":path", path.as_bytes()),
        (":scheme", b"http"),
        (":authority", b"app.local:8080"),
    ];
    pairs.extend(extra.iter().map(|(n, v)| (*n, v.as_bytes())));
    header_map::serialize(&pairs)
}

const NAV: (&str, &str) = ("sec-fetch-mode", "navigate");
const API: (&str, &str) = ("sec-fetch-mode", "cors");
const CSRF: (&str, &str) = ("x-csrf", "1");

fn reply(settled: &Settled) -> &Reply {
    match settled {
        Settled::Reply(r) => r,
        other => panic!("not a reply: {other:?}"),
    }
}

fn settled(handled: Handled) -> Settled {
    match handled {
        Handled::Settled(s) => s,
        Handled::Paused => panic!("paused"),
        Handled::ReadBody => panic!("waits for the body"),
    }
}

fn token_of(settled: &Settled) -> &str {
    match settled {
        Settled::Forward(f) => f
            .token_header
            .as_ref()
            .map(|(_, v)| v.as_str())
            .unwrap_or(""),
        other => panic!("not forwarded: {other:?}"),
    }
}

/// A session cookie whose access token is due (expires in 30 s, inside the 60 s leeway).
fn due_session_cookie() -> String {
    let s = Session {
        access_token: Secret::new("old-at"),
        access_expires_at: T0 + 30,
        subject: "alice".into(),
        created: T0 - 100,
        last_seen: T0 - 10,
        sid: "sid-1".into(),
        idp_sid: None,
        cold: Cold::Open(ColdFields {
            refresh_token: Some(Secret::new("old-rt")),
            id_token: None,
        }),
    };
    let keys = KeyRing::from_base64_list(KEY_A).unwrap();
    let sealed = s
        .seal(&keys, "__Host-bff-session", &mut CountingRandom(9))
        .unwrap();
    format!("__Host-bff-session={sealed}")
}

const REFRESHED: &str = r#"{"access_token": "new-at", "token_type": "Bearer", "expires_in": 300, "refresh_token": "new-rt"}"#;

#[test]
fn discovery_fails_then_recovers_on_the_retry_schedule() {
    let world = World::new();
    let mut w = world.worker(minimal_json_with_discovery());
    // A login before anything is known waits for discovery, which is sent at once.
    assert_eq!(
        w.request(1, wire("/private/login", &[NAV])),
        Handled::Paused
    );
    assert_eq!(w.calls_to("/.well-known/openid-configuration"), 1);
    let resumes = w.answer("/.well-known/openid-configuration", Some(500), "oops");
    assert_eq!(resumes.len(), 1);
    assert_eq!(resumes[0].context_id, 1);
    let r = reply(&resumes[0].settled);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    // Within the retry delay a new login is refused at once, without a new call.
    world.advance_ms(1_000);
    w.tick();
    let r = settled(w.request(2, wire("/private/login", &[NAV])));
    assert_eq!(reply(&r).status, 503);
    assert_eq!(w.calls_to("/.well-known/openid-configuration"), 1);
    // After it, the tick tries again; discovery brings the keys right after.
    world.advance_ms(1_100);
    w.tick();
    assert_eq!(w.calls_to("/.well-known/openid-configuration"), 2);
    w.answer("/.well-known/openid-configuration", Some(200), &discovery());
    assert_eq!(
        w.calls_to("/jwks"),
        1,
        "keys follow discovery without a tick"
    );
    w.answer("/jwks", Some(200), &test_signer::jwks_json());
    let r = settled(w.request(3, wire("/private/login", &[NAV])));
    assert_eq!(reply(&r).status, 302);
    assert!(reply(&r).header("location").unwrap().starts_with(ISSUER));
}

fn minimal_json_with_discovery() -> serde_json::Value {
    let mut v = minimal_json();
    let o = v.as_object_mut().unwrap();
    o.remove("authorization_endpoint");
    o.remove("token_endpoint");
    v
}

#[test]
fn a_paused_login_times_out_with_503_and_retry_after() {
    let world = World::new();
    let mut w = world.worker(minimal_json_with_discovery());
    w.tick();
    assert_eq!(
        w.request(1, wire("/private/login", &[NAV])),
        Handled::Paused
    );
    // The IdP never answers (Envoy's own timeout would; the wait is bounded regardless).
    let mut resumes = Vec::new();
    for _ in 0..79 {
        world.advance_ms(100);
        resumes.extend(w.tick());
    }
    assert!(resumes.is_empty(), "still within idp_timeout + retry + 1 s");
    world.advance_ms(200);
    resumes.extend(w.tick());
    assert_eq!(resumes.len(), 1);
    let r = reply(&resumes[0].settled);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
}

/// Starts a login on `w` and comes back with the callback's headers and the login's nonce.
fn callback_request(w: &mut Worker) -> (Vec<u8>, String) {
    let r = settled(w.request(100, wire("/private/login?return_to=/app", &[NAV])));
    let r = reply(&r);
    let location = r.header("location").unwrap().to_string();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    let q = |k: &str| query.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let tx_cookie = r
        .cookies()
        .next()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let path = format!(
        "/private/callback?code=c0de&state={}&iss=http%3A%2F%2F127.0.0.1%3A9000",
        q("state")
    );
    (wire(&path, &[NAV, ("cookie", &tx_cookie)]), q("nonce"))
}

fn token_response(id_token: &str) -> String {
    json!({"access_token": "AT", "token_type": "Bearer", "expires_in": 300, "id_token": id_token})
        .to_string()
}

fn id_token(kid: &str, nonce: &str) -> String {
    test_signer::sign_with_header(
        &json!({"alg": "RS256", "kid": kid}),
        &json!({"iss": ISSUER, "aud": "bff", "sub": "alice", "exp": T0 + 600, "iat": T0, "nonce": nonce}),
    )
}

#[test]
fn an_unknown_kid_causes_one_jwks_read_and_is_rate_limited() {
    let world = World::new();
    let mut w = world.worker(minimal_json_with_discovery());
    w.learn_provider();
    world.advance_ms(61_000);
    w.tick();
    // The IdP rotated its key: the ID token names one the VM has not read.
    let (callback, nonce) = callback_request(&mut w);
    assert_eq!(w.request(1, callback), Handled::Paused);
    let resumes = w.answer(
        "/token",
        Some(200),
        &token_response(&id_token("next-key", &nonce)),
    );
    assert!(resumes.is_empty(), "waits for the keys");
    assert_eq!(w.calls_to("/jwks"), 2, "one re-read");
    let rotated = test_signer::jwks_json().replace("test-rsa", "next-key");
    let resumes = w.answer("/jwks", Some(200), &rotated);
    assert_eq!(resumes.len(), 1);
    let r = reply(&resumes[0].settled);
    assert_eq!((r.status, r.header("location")), (302, Some("/app")));
    assert!(w.host.counted.contains(&Counter::CallbacksOk));

    // A token naming a stranger's kid right after: no second read within jwks_min_refetch.
    let (callback, nonce) = callback_request(&mut w);
    assert_eq!(w.request(2, callback), Handled::Paused);
    let resumes = w.answer(
        "/token",
        Some(200),
        &token_response(&id_token("stranger", &nonce)),
    );
    assert_eq!(w.calls_to("/jwks"), 2, "rate-limited");
    assert_eq!(resumes.len(), 1);
    let r = reply(&resumes[0].settled);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("id_token_invalid"));
}

#[test]
fn one_refresh_per_session_across_two_workers() {
    let world = World::new();
    let mut a = world.worker(minimal_json());
    let mut b = world.worker(minimal_json());
    a.learn_provider();
    b.tick();
    let cookie = due_session_cookie();
    let call = || wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    // Both workers see the due token; A wins the claim, B waits for A's outcome.
    assert_eq!(a.request(1, call()), Handled::Paused);
    assert_eq!(a.host.nudges, 1);
    assert_eq!(b.request(1, call()), Handled::Paused);
    assert_eq!(a.request(2, call()), Handled::Paused);
    assert!(
        a.host.sent.is_empty(),
        "sent from the root context, once nudged"
    );
    a.engine.on_queue_nudged(&mut a.host);
    let resumes = a.answer("/token", Some(200), REFRESHED);
    assert_eq!(a.calls_to("/token") + b.calls_to("/token"), 1, "one grant");
    assert_eq!(resumes.len(), 2, "both of A's requests");
    for r in &resumes {
        assert_eq!(token_of(&r.settled), "Bearer new-at");
    }
    // B picks the outcome up at its next tick.
    world.advance_ms(100);
    let resumes = b.tick();
    assert_eq!(resumes.len(), 1);
    let Settled::Forward(f) = &resumes[0].settled else {
        panic!()
    };
    assert_eq!(f.token_header.as_ref().unwrap().1, "Bearer new-at");
    assert_eq!(
        f.set_cookies.len(),
        1,
        "the renewed session goes to the browser"
    );
    assert_eq!(a.host.counted, vec![Counter::RefreshesOk]);
}

#[test]
fn a_refresh_whose_request_left_still_renews_the_session() {
    let world = World::new();
    let mut w = world.worker(minimal_json());
    w.learn_provider();
    let cookie = due_session_cookie();
    let call = || wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(w.request(1, call()), Handled::Paused);
    w.engine.on_stream_gone(1);
    // The tick sends it even without a nudge; the answer has nobody waiting.
    world.advance_ms(100);
    w.tick();
    let resumes = w.answer("/token", Some(200), REFRESHED);
    assert!(resumes.is_empty());
    // The next request with the old cookie gets the new tokens at once.
    let s = settled(w.request(2, call()));
    assert_eq!(token_of(&s), "Bearer new-at");
    assert_eq!(w.calls_to("/token"), 1);
}

#[test]
fn late_and_unexpected_answers_are_ignored() {
    let world = World::new();
    let mut w = world.worker(minimal_json_with_discovery());
    w.learn_provider();
    // An answer with a token nobody sent.
    w.engine.on_call_answer(999, IdpAnswer::none(), &mut w.host);
    assert!(w.engine.take_resumes().is_empty());
    // A code exchange whose browser left before the IdP answered.
    let (callback, nonce) = callback_request(&mut w);
    assert_eq!(w.request(5, callback), Handled::Paused);
    w.engine.on_stream_gone(5);
    let resumes = w.answer(
        "/token",
        Some(200),
        &token_response(&id_token("test-rsa", &nonce)),
    );
    assert!(resumes.is_empty());
    assert!(!w.host.counted.contains(&Counter::CallbacksOk));
    // A request paused on its own call ignores an answer for another call.
    let (callback, _) = callback_request(&mut w);
    assert_eq!(w.request(6, callback), Handled::Paused);
    let (token, _) = w.call_to("/token");
    w.engine
        .on_call_answer(token + 1, IdpAnswer::none(), &mut w.host);
    assert!(w.engine.take_resumes().is_empty());
    w.engine
        .on_call_answer(token, IdpAnswer::none(), &mut w.host);
    let resumes = w.engine.take_resumes();
    assert_eq!(
        reply(&resumes[0].settled).status,
        502,
        "its own answer: reset without an answer"
    );
}

#[test]
fn a_worker_uses_what_another_fetched() {
    let world = World::new();
    let mut a = world.worker(minimal_json_with_discovery());
    let mut b = world.worker(minimal_json_with_discovery());
    a.learn_provider();
    // B's tick reads A's documents from shared data: no call of its own.
    b.tick();
    let r = settled(b.request(1, wire("/private/login", &[NAV])));
    assert_eq!(reply(&r).status, 302);
    assert!(b.host.history.is_empty(), "{:?}", b.host.history);
    // Later re-reads are shared too: after metadata_refresh_s, A reads again and B follows.
    world.advance_ms(3_600_000);
    a.tick();
    assert_eq!(a.calls_to("/.well-known/openid-configuration"), 2);
    a.answer("/.well-known/openid-configuration", Some(200), &discovery());
    a.answer("/jwks", Some(200), &test_signer::jwks_json());
    world.advance_ms(1_000);
    b.tick();
    assert!(b.host.history.is_empty(), "{:?}", b.host.history);
}

#[test]
fn a_worker_whose_fetch_just_failed_takes_what_another_fetched_since() {
    // Seen in CI: after the IdP came back, one worker had discovery while the other, its own
    // fetch failed under two seconds before and its tick not yet run, refused logins.
    let world = World::new();
    let mut a = world.worker(minimal_json_with_discovery());
    let mut b = world.worker(minimal_json_with_discovery());
    b.tick();
    b.answer("/.well-known/openid-configuration", None, "");
    world.advance_ms(500);
    a.learn_provider();
    let r = settled(b.request(1, wire("/private/login", &[NAV])));
    assert_eq!(reply(&r).status, 302, "{:?}", reply(&r).body);
    assert_eq!(b.calls_to("/.well-known/openid-configuration"), 1);
}

#[test]
fn an_idp_that_cannot_be_called_fails_fast() {
    let world = World::new();
    let mut w = world.worker(minimal_json_with_discovery());
    w.host.refuse_dispatch = true;
    w.tick();
    let r = settled(w.request(1, wire("/private/login", &[NAV])));
    assert_eq!(reply(&r).status, 503);
    assert!(w
        .host
        .logs
        .iter()
        .any(|l| l.contains("cannot call the IdP")));
    // An API call needs no provider to be told it has no session.
    let r = settled(w.request(2, wire("/private/api", &[API, CSRF])));
    assert_eq!(reply(&r).status, 401);
    assert_eq!(w.host.counted, vec![Counter::Unauthenticated]);
}

fn client_prefix_config() -> serde_json::Value {
    let mut v = minimal_json();
    v["policies"] = json!([{"prefix": "/private/service", "policy": "client"}]);
    v["client_credentials"] = json!({"scopes": ["api:read"]});
    v
}

const CLIENT_TOKEN: &str =
    r#"{"access_token": "app-token-1", "token_type": "Bearer", "expires_in": 600}"#;

#[test]
fn one_client_token_grant_serves_every_worker_and_a_due_token_is_renewed_once() {
    let world = World::new();
    let mut a = world.worker(client_prefix_config());
    let mut b = world.worker(client_prefix_config());
    a.learn_provider();
    b.tick();
    let call = || wire("/private/service/report", &[API]);
    // Twenty requests over two workers before any token exists: all wait, one grant.
    for id in 1..=10 {
        assert_eq!(a.request(id, call()), Handled::Paused);
        assert_eq!(b.request(id, call()), Handled::Paused);
    }
    a.engine.on_queue_nudged(&mut a.host);
    b.engine.on_queue_nudged(&mut b.host);
    assert_eq!(a.calls_to("/token") + b.calls_to("/token"), 1, "one grant");
    let (winner, loser) = if a.calls_to("/token") == 1 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let grant = &winner.host.sent.last().unwrap().1;
    assert_eq!(
        grant.body.as_deref(),
        Some("grant_type=client_credentials&scope=api%3Aread")
    );
    let resumes = winner.answer("/token", Some(200), CLIENT_TOKEN);
    assert_eq!(resumes.len(), 10);
    world.advance_ms(100);
    let resumes2 = loser.tick();
    assert_eq!(
        resumes2.len(),
        10,
        "the other worker picks it up at its tick"
    );
    for r in resumes.iter().chain(&resumes2) {
        assert_eq!(token_of(&r.settled), "Bearer app-token-1");
        let Settled::Forward(f) = &r.settled else {
            panic!()
        };
        assert!(
            f.extra.iter().all(|(name, _)| name != "authorization"),
            "no later edit takes the token off: {:?}",
            f.extra
        );
    }
    // Later requests are served at once from the VM's copy.
    let s = settled(loser.request(50, call()));
    assert_eq!(token_of(&s), "Bearer app-token-1");
    // Inside the renewal window (leeway 60 s before expiry): served with the old token, and
    // one worker renews it.
    world.advance_ms(545_000);
    for id in 60..65 {
        assert_eq!(
            token_of(&settled(a.request(id, call()))),
            "Bearer app-token-1"
        );
        assert_eq!(
            token_of(&settled(b.request(id, call()))),
            "Bearer app-token-1"
        );
    }
    a.engine.on_queue_nudged(&mut a.host);
    b.engine.on_queue_nudged(&mut b.host);
    assert_eq!(
        a.calls_to("/token") + b.calls_to("/token"),
        2,
        "renewed once"
    );
    let renewer = if a.host.sent.is_empty() {
        &mut b
    } else {
        &mut a
    };
    renewer.answer(
        "/token",
        Some(200),
        &CLIENT_TOKEN.replace("app-token-1", "app-token-2"),
    );
    assert_eq!(
        token_of(&settled(a.request(70, call()))),
        "Bearer app-token-2"
    );
    assert_eq!(
        token_of(&settled(b.request(70, call()))),
        "Bearer app-token-2"
    );
    let fetched = |w: &Worker| {
        w.host
            .counted
            .iter()
            .filter(|c| **c == Counter::ClientTokensFetched)
            .count()
    };
    assert_eq!(fetched(&a) + fetched(&b), 2);
    let logs = a
        .host
        .logs
        .iter()
        .chain(&b.host.logs)
        .cloned()
        .collect::<String>();
    assert!(!logs.contains("app-token"), "{logs}");
}

#[test]
fn a_refused_client_token_grant_answers_503_and_is_retried_later() {
    let world = World::new();
    let mut w = world.worker(client_prefix_config());
    w.learn_provider();
    let call = || wire("/private/service/report", &[API]);
    assert_eq!(w.request(1, call()), Handled::Paused);
    w.engine.on_queue_nudged(&mut w.host);
    let resumes = w.answer("/token", Some(400), r#"{"error": "unauthorized_client"}"#);
    assert_eq!(resumes.len(), 1);
    let r = reply(&resumes[0].settled);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    assert!(w
        .host
        .logs
        .iter()
        .any(|l| l.contains("unauthorized_client")));
    // Within the back-off: 503 at once, no new grant.
    let r = settled(w.request(2, call()));
    assert_eq!(reply(&r).status, 503);
    assert_eq!(w.calls_to("/token"), 1);
    // After it, the next request tries again.
    world.advance_ms(5_000);
    assert_eq!(w.request(3, call()), Handled::Paused);
    w.engine.on_queue_nudged(&mut w.host);
    assert_eq!(w.calls_to("/token"), 2);
}

fn session_cookie_expiring_at(access_expires_at: u64) -> String {
    let s = Session {
        access_token: Secret::new("fresh-at"),
        access_expires_at,
        subject: "alice".into(),
        created: T0 - 100,
        last_seen: T0 - 10,
        sid: "sid-logout".into(),
        idp_sid: None,
        cold: Cold::Open(ColdFields {
            refresh_token: Some(Secret::new("rt")),
            id_token: None,
        }),
    };
    let keys = KeyRing::from_base64_list(KEY_A).unwrap();
    let sealed = s
        .seal(&keys, "__Host-bff-session", &mut CountingRandom(5))
        .unwrap();
    format!("__Host-bff-session={sealed}")
}

#[test]
fn a_logout_on_one_worker_ends_every_copy_of_the_cookie_by_the_next_tick() {
    let world = World::new();
    let mut a = world.worker(minimal_json());
    let mut b = world.worker(minimal_json());
    a.learn_provider();
    b.tick();
    let cookie = session_cookie_expiring_at(T0 + 3600);
    let call = || wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(token_of(&settled(b.request(1, call()))), "Bearer fresh-at");
    // The user logs out through worker A (no revocation endpoint: answered at once).
    let out = settled(a.request(2, logout_request(&cookie)));
    assert_eq!(reply(&out).status, 200, "{:?}", reply(&out).body);
    // A copy of the cookie: refused by A at once, by B from its next tick on.
    let r = settled(a.request(3, call()));
    assert_eq!(reply(&r).status, 401);
    assert!(reply(&r)
        .cookies()
        .any(|c| c.starts_with("__Host-bff-session=;")));
    world.advance_ms(100);
    b.tick();
    let r = settled(b.request(4, call()));
    assert_eq!(reply(&r).status, 401, "B learnt it from shared data");
    // Another session is not affected.
    let other = due_session_cookie();
    let other_call = wire("/private/api", &[API, CSRF, ("cookie", &other)]);
    assert_eq!(
        b.request(5, other_call),
        Handled::Paused,
        "refreshing, not refused"
    );
}

fn logout_request(cookie: &str) -> Vec<u8> {
    header_map::serialize(&[
        (":method", b"POST".as_slice()),
        (":path", b"/private/logout"),
        (":scheme", b"http"),
        (":authority", b"app.local:8080"),
        ("sec-fetch-mode", b"cors"),
        ("x-csrf", b"1"),
        ("cookie", cookie.as_bytes()),
    ])
}

/// A call's form body, by parameter name.
fn form_of(request: &IdpRequest) -> HashMap<String, String> {
    form_urlencoded::parse(request.body.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

#[test]
fn calls_to_the_token_endpoint_carry_the_clients_credentials_made_when_sent() {
    let cookie = due_session_cookie();
    let call = || wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    // The client secret, in the Basic header.
    let world = World::new();
    let mut w = world.worker(minimal_json());
    w.learn_provider();
    assert_eq!(w.request(1, call()), Handled::Paused);
    w.engine.on_queue_nudged(&mut w.host);
    let (_, sent) = w.call_to("/token");
    assert!(sent
        .headers
        .iter()
        .any(|(n, v)| *n == "authorization" && v.starts_with("Basic ")));
    // A key: an assertion in the form, signed at the time the call leaves.
    let world = World::new();
    let mut w = world.worker(crate::config::tests::private_key_jwt_json());
    w.learn_provider();
    assert_eq!(w.request(1, call()), Handled::Paused);
    world.advance_ms(7_000);
    w.engine.on_queue_nudged(&mut w.host);
    let (_, sent) = w.call_to("/token");
    assert!(sent.headers.iter().all(|(n, _)| *n != "authorization"));
    let form = form_of(&sent);
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["client_id"], "bff");
    let payload = form["client_assertion"].split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["iat"],
        json!(T0 + 7),
        "made when sent, not when decided"
    );
    assert_eq!(claims["aud"], json!(ISSUER));
    // Its public key is served for the IdP to read.
    let jwks = reply(&settled(w.request(2, wire("/private/jwks", &[])))).clone();
    assert_eq!(jwks.status, 200);
    let keys: serde_json::Value = serde_json::from_str(&jwks.body).unwrap();
    assert_eq!(keys["keys"][0]["kid"], "bff-1");
    assert!(keys["keys"][0].get("d").is_none(), "never the private part");
}

#[test]
fn a_mutual_tls_client_names_itself_and_authenticates_through_its_own_cluster() {
    let cookie = due_session_cookie();
    let mut v = minimal_json();
    v.as_object_mut().unwrap().remove("client_secret");
    v["client_auth"] = json!("tls_client_auth");
    v["idp_mtls_cluster"] = json!("idp_mtls");
    let world = World::new();
    let mut w = world.worker(v);
    w.learn_provider();
    let call = wire("/private/api", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(w.request(1, call), Handled::Paused);
    w.engine.on_queue_nudged(&mut w.host);
    let (_, sent) = w.call_to("/token");
    assert!(sent.headers.iter().all(|(n, _)| *n != "authorization"));
    let form = form_of(&sent);
    assert_eq!(form["client_id"], "bff");
    assert!(!form.contains_key("client_assertion"));
    // Discovery and the JWKS through the main cluster; the grant through the certificate's.
    let through: Vec<(&str, &str)> = w
        .host
        .history
        .iter()
        .zip(&w.host.clusters)
        .map(|(path, cluster)| (path.as_str(), cluster.as_str()))
        .collect();
    assert_eq!(
        through,
        [
            ("/.well-known/openid-configuration", "idp"),
            ("/jwks", "idp"),
            ("/token", "idp_mtls")
        ]
    );
}

#[test]
fn an_idp_that_requires_pushed_requests_gets_them_and_the_browser_only_a_request_uri() {
    let world = World::new();
    let mut w = world.worker(minimal_json());
    w.tick();
    let mut doc: serde_json::Value = serde_json::from_str(&discovery()).unwrap();
    doc["pushed_authorization_request_endpoint"] = json!(format!("{ISSUER}/request"));
    doc["require_pushed_authorization_requests"] = json!(true);
    w.answer(
        "/.well-known/openid-configuration",
        Some(200),
        &doc.to_string(),
    );
    w.answer("/jwks", Some(200), &test_signer::jwks_json());
    let login = || wire("/private/login?return_to=/app", &[NAV]);
    assert_eq!(w.request(1, login()), Handled::Paused);
    let (token, pushed) = w.call_to("/request");
    assert!(pushed
        .headers
        .iter()
        .any(|(n, v)| *n == "authorization" && v.starts_with("Basic ")));
    let form: HashMap<String, String> =
        form_urlencoded::parse(pushed.body.as_deref().unwrap().as_bytes())
            .into_owned()
            .collect();
    for name in [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
    ] {
        assert!(form.contains_key(name), "{name} is pushed");
    }
    w.host.sent.push((token, pushed));
    let resumes = w.answer(
        "/request",
        Some(201),
        r#"{"request_uri":"urn:ietf:params:oauth:request_uri:abc","expires_in":60}"#,
    );
    let r = reply(&resumes[0].settled);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://127.0.0.1:9000/auth?client_id=bff&request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3Aabc")
    );
    assert_eq!(r.cookies().count(), 1, "the login's transaction cookie");
    assert!(w.host.counted.contains(&Counter::LoginsStarted));
    // Refused: the documented failure, no transaction cookie, the VM goes on.
    assert_eq!(w.request(2, login()), Handled::Paused);
    let resumes = w.answer("/request", Some(400), r#"{"error":"invalid_request"}"#);
    let r = reply(&resumes[0].settled);
    assert_eq!((r.status, r.cookies().count()), (502, 0));
    assert!(
        r.body.contains("par_failed") || r.body.contains("could not be started"),
        "{}",
        r.body
    );
    assert!(w
        .host
        .logs
        .iter()
        .any(|l| l.contains("pushed authorization request")));
}

fn dpop_json() -> serde_json::Value {
    let mut v = minimal_json();
    v["dpop"] = json!(true);
    v["dpop_key"] = json!({"value": include_str!("../../../tests/fixtures/keys/ec-p256.pem")});
    v
}

fn proof_claims(proof: &str) -> serde_json::Value {
    let payload = proof.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn with_dpop_a_nonce_challenge_is_answered_and_every_forward_carries_a_fresh_proof() {
    let world = World::new();
    let mut w = world.worker(dpop_json());
    w.learn_provider();
    let cookie = due_session_cookie();
    let call = || wire("/private/api/x?y=1", &[API, CSRF, ("cookie", &cookie)]);
    assert_eq!(w.request(1, call()), Handled::Paused);
    w.engine.on_queue_nudged(&mut w.host);
    let (token, first) = w.call_to("/token");
    let proof = |r: &IdpRequest| {
        r.headers
            .iter()
            .find(|(n, _)| *n == "dpop")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let claims = proof_claims(&proof(&first));
    assert_eq!(
        (claims["htm"].as_str(), claims["htu"].as_str()),
        (Some("POST"), Some("http://127.0.0.1:9000/token"))
    );
    assert!(claims.get("nonce").is_none());
    // The IdP wants its nonce: the same call again, with it; the request waits on.
    let challenge = IdpAnswer {
        status: Some(400),
        body: br#"{"error":"use_dpop_nonce"}"#.to_vec(),
        dpop_nonce: Some("n-1".into()),
    };
    w.engine.on_call_answer(token, challenge, &mut w.host);
    assert!(w.engine.take_resumes().is_empty());
    let (_, again) = w.host.sent.last().cloned().unwrap();
    assert_eq!(proof_claims(&proof(&again))["nonce"], "n-1");
    let bound = r#"{"access_token": "new-at", "token_type": "DPoP", "expires_in": 300, "refresh_token": "new-rt"}"#;
    let resumes = w.answer("/token", Some(200), bound);
    let Settled::Forward(f) = &resumes[0].settled else {
        panic!("{:?}", resumes[0].settled)
    };
    assert_eq!(f.token_header.as_ref().unwrap().1, "DPoP new-at");
    let upstream = f
        .extra
        .iter()
        .find(|(n, _)| n == "dpop")
        .unwrap()
        .1
        .clone()
        .unwrap();
    let claims = proof_claims(&upstream);
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["htu"], "http://app.local:8080/private/api/x");
    assert_eq!(
        claims["ath"],
        json!(crate::oidc::dpop::ath(&Secret::new("new-at")))
    );
    // A second challenge for the same call is the answer: no loop.
    assert_eq!(w.calls_to("/token"), 2);
    // A Bearer answer to a proof: the IdP did not bind the token; the session goes on with
    // its current one (the refresh counts as failed).
    let world = World::new();
    let mut w = world.worker(dpop_json());
    w.learn_provider();
    assert_eq!(w.request(1, call()), Handled::Paused);
    w.engine.on_queue_nudged(&mut w.host);
    let resumes = w.answer("/token", Some(200), REFRESHED);
    assert_eq!(token_of(&resumes[0].settled), "DPoP old-at");
    assert!(w.host.counted.contains(&Counter::RefreshesFailed));
}
