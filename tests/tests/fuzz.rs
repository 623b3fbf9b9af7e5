//! Arbitrary requests sent to the real daemon's socket: `POST /v1/faults` with arbitrary bytes,
//! arbitrary JSON and edited JSON (the generators of chaos-daemon's `decode_fuzz` test), and
//! arbitrary methods and paths. Every answer is whole: a 4xx with `{"error": "..."}` (a GET may
//! read, 200), never a 5xx or a dropped connection; and nothing changes, neither the daemon's
//! list nor what the kernel holds. Cases: `PROPTEST_CASES`, default 2,000.

#[path = "../../chaos-daemon/tests/fuzz_input/mod.rs"]
mod fuzz_input;

use std::{fmt, path::Path, time::Instant};

use chaos_daemon::routes::{Route, route};
use chaos_tests::{Daemon, Lab, daemon::Snapshot, http};
use fuzz_input::Interface;
use proptest::{
    collection::vec,
    prelude::*,
    sample::select,
    test_runner::{Config, TestRunner},
};

/// The only interface a generated spec names. It does not exist, so no generated request is
/// valid: any 2xx to a POST or DELETE is a bug, and no case needs cleaning up after.
const NO_SUCH_INTERFACE: &str = "fz-none0";

/// A body, shown as text with escapes when a case fails.
#[derive(Clone)]
struct Body(Vec<u8>);

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    body: Body,
}

fn body() -> BoxedStrategy<Body> {
    let only = Interface::Only(NO_SUCH_INTERFACE);
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        2 => fuzz_input::mutated(only),
        3 => fuzz_input::apply(only).prop_map(String::into_bytes),
    ]
    .prop_map(Body)
    .boxed()
}

/// Methods hyper parses as such. (Requests stay well-formed HTTP: one hyper cannot parse is
/// answered by hyper itself, 400 with an empty body, before any of the daemon's code runs.)
/// Not HEAD (its answer has no body by definition) nor CONNECT
/// (it takes a host, not a path).
fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"][..]).prop_map(String::from),
        "[A-Z]{1,10}".prop_filter("HEAD and CONNECT are special", |m| m != "HEAD" && m != "CONNECT"),
    ]
}

/// Percent-encodes all but unreserved characters, so any string makes a valid request target.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Paths made of the API's segments, dots, empty segments and anything encoded, sometimes with
/// a query.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        3 => select(&["v1", "faults", "status", "good", "", ".", ".."][..]).prop_map(String::from),
        1 => "[a-z0-9-]{1,8}",
        1 => any::<String>().prop_map(|s| encode(&s)),
    ];
    (vec(segment, 0..5), proptest::option::of(any::<String>())).prop_map(|(segments, query)| {
        let query = query.map(|q| format!("?{}", encode(&q))).unwrap_or_default();
        format!("/{}{query}", segments.join("/"))
    })
}

/// Whether the daemon takes this request for a removal of what exists (`good`, or every fault):
/// its own routing decides (an exact path, no query).
fn removes(r: &Request) -> bool {
    let (path, query) = match r.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (r.path.as_str(), None),
    };
    let Ok(method) = r.method.parse() else { return false };
    matches!(route(&method, path, query), Ok(Route::Clear))
        || route(&method, path, query) == Ok(Route::RemoveFault("good".into()))
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        3 => body().prop_map(|body| Request { method: "POST".into(), path: "/v1/faults".into(), body }),
        1 => (method(), path(), prop_oneof![Just(Body(Vec::new())), body()])
            .prop_map(|(method, path, body)| Request { method, path, body })
            // These remove faults for real: deleting what exists is not bad input.
            .prop_filter("a real removal", |r| !removes(r)),
    ]
}

/// Checks one answer: whole, JSON, and a client error (or a read).
fn check(socket: &Path, r: &Request) -> Result<(), TestCaseError> {
    let answer = http::request(socket, &r.method, &r.path, &r.body.0)
        .map_err(|e| TestCaseError::fail(format!("no whole answer: {e:#}")))?;
    let text = String::from_utf8_lossy(&answer.body);
    if r.method == "GET" && answer.status == 200 {
        prop_assert!(answer.json().is_object(), "GET answered 200 without a JSON object: {text}");
        return Ok(());
    }
    prop_assert!((400..500).contains(&answer.status), "answered {}: {text}", answer.status);
    prop_assert!(answer.error().is_some(), "{} without {{\"error\": \"...\"}}: {text}", answer.status);
    Ok(())
}

/// Fixed inputs worth sending every run: empty, nearly empty, huge, deep, limits, and a batch
/// whose first fault is valid on the real interface (all or nothing: nothing applied).
fn fixed_cases(a_if: &str) -> Vec<Vec<u8>> {
    let spec = |i: &str| format!(r#"{{"interface":"{i}","action":"loss","loss":10,"dport":9000}}"#);
    let many = vec![spec(NO_SUCH_INTERFACE); 16_385].join(",");
    [
        String::new(),
        " ".into(),
        "{}".into(),
        "null".into(),
        r#"{"faults":[]}"#.into(),
        r#"{"faults":[{}]}"#.into(),
        format!(r#"{{"faults":[{}]}}"#, spec(NO_SUCH_INTERFACE)),
        format!(r#"{{"faults":[{},{{"interface":"{a_if}","action":"loss","loss":101}}]}}"#, spec(a_if)),
        format!(r#"{{"faults":[{},{}]}}"#, spec(a_if), spec(NO_SUCH_INTERFACE)),
        format!(r#"{{"faults":[{}], "faults":[]}}"#, spec(a_if)),
        format!(r#"{{"faults":[{many}]}}"#),
        "[".repeat(100_000),
        format!(r#"{{"faults":[{{"name":"{}"}}]}}"#, "x".repeat(1 << 20)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

#[test]
fn arbitrary_requests_are_client_errors_and_change_nothing() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&[
        "apply", "--name", "good", "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9000", "-d", "both",
    ]);
    let before = Snapshot::of(&lab, &daemon);
    let socket = daemon.socket.as_path();
    // The list as the API gives it: checked after every case (cheap), so a change is caught
    // at the case that made it.
    let listed = http::request(socket, "GET", "/v1/faults", b"").unwrap().body;

    for body in fixed_cases(&lab.a_if) {
        let r = Request { method: "POST".into(), path: "/v1/faults".into(), body: Body(body) };
        let shown: String = format!("{:?}", r.body).chars().take(200).collect();
        check(socket, &r).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(http::request(socket, "GET", "/v1/faults", b"").unwrap().body, listed, "{shown} changed the list");
    }

    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let started = Instant::now();
    // No shrinking: once a case has changed the daemon's state every input tried after it fails
    // too, so shrinking would report some unrelated small input. The first failure is the one.
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 0, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&request(), |r| {
        check(socket, &r)?;
        let now = http::request(socket, "GET", "/v1/faults", b"").map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(now.body == listed, "the list changed: {}", String::from_utf8_lossy(&now.body));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("{cases} generated requests in {:?}", started.elapsed());

    assert_eq!(Snapshot::of(&lab, &daemon), before, "the fuzzing changed the daemon's or the kernel's state");
    let status = http::request(socket, "GET", "/v1/status", b"").unwrap();
    assert_eq!((status.status, status.json()["faults"].as_u64()), (200, Some(1)));
    let log = daemon.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}
