//! chaosctl as scripts use it: its exit codes, `-o json` on every command that prints faults,
//! `watch`, and `apply --wait` (to the end, and interrupted).

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::{Daemon, Lab, daemon::bin, lab::B4, traffic};

fn code(daemon: &Daemon, args: &[&str]) -> i32 {
    let out = daemon.ctl(args);
    out.status.code().expect("an exit code")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn exit_codes_tell_failures_apart() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    // Usage (clap), a bad value chaosctl reads itself, a file it cannot read, a fault the daemon
    // refuses as invalid: bad input.
    assert_eq!(code(&daemon, &["apply", "--bogus"]), 2);
    assert_eq!(code(&daemon, &["apply", "-i", i, "--loss", "lots"]), 2);
    assert_eq!(code(&daemon, &["apply", "-f", "/nonexistent/faults.toml"]), 2);
    assert_eq!(code(&daemon, &["apply", "-i", i, "--loss", "5", "--dport", "70000"]), 2);
    // A name taken, a fault this kernel cannot run: refused.
    daemon.ctl_ok(&["apply", "--name", "one", "-i", i, "--loss", "5"]);
    assert_eq!(code(&daemon, &["apply", "--name", "one", "-i", i, "--loss", "5"]), 4);
    if !daemon.ctl_ok(&["status"]).contains("delay backend: none") {
        eprintln!("note: this kernel has a delay backend; the 422 case is not checked here");
    } else {
        assert_eq!(code(&daemon, &["apply", "-i", i, "--delay", "10ms"]), 4);
    }
    // Not found.
    assert_eq!(code(&daemon, &["rm", "nope"]), 5);
    assert_eq!(code(&daemon, &["rm", "-e", "nope"]), 5);
    // Done.
    assert_eq!(code(&daemon, &["rm", "one"]), 0);
    // No daemon there.
    let out = Command::new(bin("chaosctl")).args(["--socket", "/nonexistent/chaos.sock", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is chaos-daemon running?"));
}

#[test]
fn every_command_that_prints_faults_has_json() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    let applied = json(&daemon.ctl_ok(&["apply", "--name", "a", "-i", i, "--loss", "5", "-e", "exp", "-o", "json"]));
    assert_eq!(applied["faults"][0]["name"], "a");
    daemon.ctl_ok(&["apply", "--name", "b", "-i", i, "--loss", "5"]);
    daemon.ctl_ok(&["apply", "--name", "c", "-i", i, "--loss", "5"]);
    assert_eq!(json(&daemon.ctl_ok(&["list", "-o", "json"]))["faults"].as_array().unwrap().len(), 3);
    assert!(json(&daemon.ctl_ok(&["status", "-o", "json"]))["version"].is_string());
    assert!(json(&daemon.ctl_ok(&["history", "-o", "json"]))["events"].is_array());
    let removed = json(&daemon.ctl_ok(&["rm", "b", "-o", "json"]));
    assert_eq!(removed["faults"][0]["name"], "b");
    let removed = json(&daemon.ctl_ok(&["rm", "-e", "exp", "-o", "json"]));
    assert_eq!(removed["faults"][0]["name"], "a");
    let cleared = json(&daemon.ctl_ok(&["clear", "-o", "json"]));
    assert_eq!(cleared["faults"][0]["name"], "c");
}

#[test]
fn watch_shows_counters_as_they_grow() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "--name", "cut", "-i", &lab.a_if, "--partition", "-p", "udp", "--dport", "9400"]);
    daemon.ctl_ok(&["apply", "--name", "other", "-i", &lab.a_if, "--loss", "1", "-p", "udp", "--dport", "9401"]);
    let dst = SocketAddr::new(B4.parse().unwrap(), 9400);
    // Traffic during the watch: 3 refreshes 300 ms apart.
    let out = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            traffic::udp(&lab.a, None, &lab.b, dst, 200).unwrap()
        });
        let out = daemon.ctl_ok(&["watch", "cut", "--interval", "300ms", "--count", "3", "-o", "json"]);
        assert_eq!(sender.join().unwrap(), 0);
        out
    });
    let refreshes: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(refreshes.len(), 3, "{out}");
    for r in &refreshes {
        let names: Vec<&str> = r["faults"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["cut"], "only the fault named");
    }
    let matched: Vec<u64> = refreshes.iter().map(|r| r["faults"][0]["matched"].as_u64().unwrap()).collect();
    assert!(matched.windows(2).all(|w| w[0] <= w[1]), "{matched:?}");
    // The table, off a terminal: one block per refresh, no screen control codes.
    let table = daemon.ctl_ok(&["watch", "--interval", "100ms", "--count", "2"]);
    assert_eq!(table.matches("2 faults, every").count(), 2, "{table}");
    assert!(table.contains("cut") && table.contains("other") && !table.contains('\x1b'), "{table}");
    let bad = daemon.ctl(&["watch", "--interval", "1ms"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("'1ms' is shorter than 100ms"));
}

#[test]
fn apply_wait_blocks_until_the_end_and_prints_the_final_counters() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let dst = SocketAddr::new(B4.parse().unwrap(), 9402);
    let started = Instant::now();
    let waiting = Command::new(bin("chaosctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["apply", "--name", "brief", "-i", &lab.a_if, "--partition", "-p", "udp", "--dport", "9402"])
        .args(["--for", "2s", "--wait", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Applied by then (a local socket answers in milliseconds), and still running.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst, 300).unwrap(), 0);
    let out = waiting.wait_with_output().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "returned before the fault ended");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = json(&String::from_utf8_lossy(&out.stdout));
    let ended = &summary["ended"][0];
    assert_eq!((ended["name"].as_str(), ended["reason"].as_str()), (Some("brief"), Some("expired")));
    assert_eq!((ended["matched"].as_u64(), ended["dropped"].as_u64()), (Some(300), Some(300)));
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst, 300).unwrap(), 300, "still acting after --wait returned");
}

#[test]
fn interrupting_apply_wait_removes_its_faults() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let waiting = Command::new(bin("chaosctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["apply", "--name", "long", "-i", &lab.a_if, "--partition", "-p", "udp", "--dport", "9403"])
        .args(["--for", "1h", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.list()["faults"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(waiting.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("long ended (removed: the wait was interrupted)"), "{stdout}");
    assert_eq!(daemon.list()["faults"], serde_json::json!([]));
    let dst = SocketAddr::new(B4.parse().unwrap(), 9403);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst, 100).unwrap(), 100);
}
