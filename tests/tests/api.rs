//! The control socket speaks plain HTTP/1.1: what curl or any client sends, with the status
//! codes docs/api.md promises.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use chaos_tests::{Daemon, Netns, unique};

/// One request on its own connection; returns the status code and the body.
fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

#[test]
fn endpoints_and_status_codes() {
    let ns = Netns::new(unique("cdh")).unwrap();
    let daemon = Daemon::start(&ns).unwrap();
    let sock = daemon.socket.as_path();
    let fault =
        r#"{"faults":[{"name":"x","interface":"lo","action":"loss","loss":10,"protocol":"udp","dport":"9000-9100"}]}"#;

    let (code, body) = http(sock, "POST", "/v1/faults", fault);
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["faults"][0]["name"], "x");
    assert_eq!(http(sock, "GET", "/v1/faults/x", "").0, 200);
    assert_eq!(http(sock, "GET", "/v1/faults", "").1["faults"].as_array().unwrap().len(), 1);
    let (code, body) = http(sock, "GET", "/v1/status", "");
    assert_eq!((code, body["faults"].as_u64()), (200, Some(1)), "{body}");

    let (code, body) = http(sock, "POST", "/v1/faults", fault);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "name: a fault named 'x' already exists");
    let (code, body) =
        http(sock, "POST", "/v1/faults", r#"{"faults":[{"interface":"lo","action":"loss","loss":101}]}"#);
    assert_eq!((code, body["error"].as_str()), (400, Some("loss: 101% is outside 0-100%")));
    let (code, body) = http(sock, "POST", "/v1/faults", r#"{"faults":[{"interface":"lo","colour":"red"}]}"#);
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown field `colour`"), "{body}");
    assert_eq!(http(sock, "GET", "/v1/nothing", "").0, 404);
    assert_eq!(http(sock, "PUT", "/v1/faults", "").0, 405);
    assert_eq!(http(sock, "DELETE", "/v1/faults/nope", "").0, 404);

    let (code, body) = http(sock, "DELETE", "/v1/faults/x", "");
    assert_eq!((code, body["name"].as_str()), (200, Some("x")));
    assert_eq!(http(sock, "DELETE", "/v1/faults", "").1["faults"].as_array().unwrap().len(), 0);
}
