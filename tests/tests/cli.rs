//! chaosctl as scripts use it: its exit codes, `-o json` on every command that prints faults,
//! `watch`, and `apply --wait` (to the end, and interrupted).

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_api::api::{AuditAction, Ended, FaultView, Faults};
use chaos_tests::{Daemon, Lab, daemon::bin, lab::B4, traffic};
use serde::Deserialize;

fn code(daemon: &Daemon, args: &[&str]) -> i32 {
    let out = daemon.ctl(args);
    out.status.code().expect("an exit code")
}

fn json<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a {} ({e}): {text}", std::any::type_name::<T>()))
}

/// A line of `chaosctl watch -o json`.
#[derive(Deserialize)]
struct Refresh {
    at: u64,
    faults: Vec<FaultView>,
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is chaos-daemon running?"), "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "the OS error said once: {stderr}");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_say_what_is_wrong() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    // No action: asked for by name, not "--loss is required".
    let out = daemon.ctl(&["apply", "-i", i, "--dst", "10.0.0.1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("give an action: --loss, --gemodel, --partition, --delay"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("required"), "{}", stderr(&out));
    // A negative percentage reaches the validator, which says what is wrong with it.
    for (flag, field) in [("--loss", "loss"), ("--duplicate", "duplicate"), ("--corrupt", "corrupt")] {
        let out = daemon.ctl(&["apply", "-i", i, flag, "-5"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("{field}: -5% is outside 0-100%")), "{}", stderr(&out));
    }
    // A missing argument: the usage shows the socket (given here, and by the environment) as
    // optional, not among what is required.
    let out = Command::new(bin("chaosctl"))
        .args(["apply", "--dst", "10.0.0.1"])
        .env("CHAOS_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--interface <INTERFACE>"), "{}", stderr(&out));
    assert!(stderr(&out).contains("[--socket PATH]") && !stderr(&out).contains("--socket <"), "{}", stderr(&out));
    let out = daemon.ctl(&["rm"]);
    assert!(stderr(&out).contains("chaosctl rm [--socket PATH] [OPTIONS] NAME..."), "{}", stderr(&out));
    assert_eq!(daemon.faults(), [], "nothing applied");
}

#[test]
fn outputs_read_right_for_none_and_one() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    assert_eq!(daemon.ctl_ok(&["list"]), "no faults\n");
    assert_eq!(daemon.ctl_ok(&["clear"]), "no faults to remove\n");
    daemon.ctl_ok(&["apply", "--name", "one", "-i", &lab.a_if, "--loss", "5"]);
    let watched = daemon.ctl_ok(&["watch", "--interval", "100ms", "--count", "1"]);
    assert!(watched.starts_with("1 fault, every"), "{watched}");
    assert!(daemon.ctl_ok(&["list"]).starts_with("NAME"));
    assert_eq!(daemon.ctl_ok(&["clear"]), "removed 1 fault\n");
}

#[test]
fn a_scheduled_fault_is_confirmed_with_its_own_length() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    for (after, length, says) in [("4s", "6s", "for 6s)"), ("30s", "1m", "for 1m)"), ("1s", "1h", "for 1h)")] {
        let out = daemon.ctl_ok(&["apply", "-i", i, "--loss", "5", "--start-after", after, "--for", length]);
        assert!(out.contains("(starting in ") && out.ends_with(&format!("{says}\n")), "{after} {length}: {out}");
    }
    let out = daemon.ctl_ok(&["apply", "-i", i, "--loss", "5", "--for", "90s"]);
    assert!(out.ends_with("(for 1m30s)\n"), "{out}");
}

#[test]
fn faults_read_the_same_from_flags_and_from_files() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    daemon.ctl_ok(&["apply", "--name", "flags", "-i", i, "--loss", "5", "--dport", "80", "--sport", "1000-2000"]);
    let file = daemon.dir.join("faults.toml");
    let toml = format!(
        "[[fault]]\nname = \"file\"\ninterface = \"{i}\"\naction = \"loss\"\nloss = 5\ndport = 80\nsport = \"1000-2000\"\n\n\
         [[fault]]\nname = \"text\"\ninterface = \"{i}\"\naction = \"loss\"\nloss = 5\ndport = \"80-80\"\nsport = 1000\n"
    );
    std::fs::write(&file, toml).unwrap();
    daemon.ctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    // The JSON as sent: one port is a number, a range a string, however it was written.
    let list = daemon.list();
    let faults = list["faults"].as_array().unwrap();
    let spec = |name: &str| &faults.iter().find(|f| f["name"] == name).unwrap()["spec"];
    let (port, range) = (serde_json::json!(80), serde_json::json!("1000-2000"));
    for name in ["flags", "file"] {
        assert_eq!((&spec(name)["dport"], &spec(name)["sport"]), (&port, &range), "{name}");
    }
    assert_eq!((&spec("text")["dport"], &spec("text")["sport"]), (&port, &serde_json::json!(1000)));
    // Times: milliseconds, `applied_at` (seconds) kept beside its millisecond form.
    for f in faults {
        let (s, ms) = (f["applied_at"].as_u64().unwrap(), f["applied_at_ms"].as_u64().unwrap());
        assert_eq!(s, ms / 1000, "{f}");
        assert!(f["starts_at"].as_u64().unwrap() >= ms && ms > 1_700_000_000_000, "{f}");
    }
}

#[test]
fn history_shows_the_experiment_in_local_time() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    daemon.ctl_ok(&["apply", "--name", "db-cut", "-i", i, "--loss", "5", "-e", "db-outage"]);
    daemon.ctl_ok(&["apply", "--name", "lone", "-i", i, "--loss", "5"]);
    daemon.ctl_ok(&["rm", "db-cut"]);
    daemon.ctl_ok(&["apply", "--name", "db-2", "-i", i, "--loss", "5", "-e", "db-outage"]);
    daemon.ctl_ok(&["rm", "-e", "db-outage"]);
    let events: Vec<(String, String)> = daemon
        .history()
        .into_iter()
        .map(|e| (e.action.to_string(), e.experiment.unwrap_or_else(|| "-".into())))
        .collect();
    let want = [("apply", "db-outage"), ("apply", "-"), ("remove", "db-outage"), ("apply", "db-outage")];
    let mut want: Vec<(String, String)> = want.iter().map(|(a, e)| (a.to_string(), e.to_string())).collect();
    want.push(("remove-experiment".into(), "db-outage".into()));
    assert_eq!(events, want);
    let table = daemon.ctl_ok(&["history"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TIME") && lines[0].contains("EXPERIMENT"), "{table}");
    let row = |n: usize| lines[n].split_whitespace().collect::<Vec<_>>();
    // `2026-12-01 15:04:05.123`: local time, to the millisecond.
    let (date, time) = (row(1)[0], row(1)[1]);
    assert!(
        date.len() == 10 && date.as_bytes()[4] == b'-' && time.len() == 12 && time.as_bytes()[8] == b'.',
        "{table}"
    );
    assert!(
        lines[1].contains(" apply ") && lines[1].contains(" db-outage ") && lines[1].contains(" db-cut "),
        "{table}"
    );
    assert!(lines[2].contains(" apply ") && lines[2].contains(" - ") && lines[2].contains(" lone "), "{table}");
    assert!(table.contains("    db-2 ended (removed): matched"), "ended faults under their event: {table}");
}

#[test]
fn every_command_that_prints_faults_has_json() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    // Each prints the API's own type (read here as that type, or the test fails).
    let names = |faults: Faults| faults.faults.into_iter().map(|f| f.name).collect::<Vec<_>>();
    let applied = daemon.ctl_json(&["apply", "--name", "a", "-i", i, "--loss", "5", "-e", "exp"]);
    assert_eq!(names(applied), ["a"]);
    daemon.ctl_ok(&["apply", "--name", "b", "-i", i, "--loss", "5"]);
    daemon.ctl_ok(&["apply", "--name", "c", "-i", i, "--loss", "5"]);
    assert_eq!(names(daemon.ctl_json(&["list"])), ["a", "b", "c"]);
    let status = daemon.status();
    assert_eq!((status.version.as_str(), status.faults), (env!("CARGO_PKG_VERSION"), 3), "{status:?}");
    let applies = daemon.history().iter().filter(|e| e.action == AuditAction::Apply).count();
    assert_eq!(applies, 3);
    assert_eq!(names(daemon.ctl_json(&["rm", "b"])), ["b"]);
    assert_eq!(names(daemon.ctl_json(&["rm", "-e", "exp"])), ["a"]);
    assert_eq!(names(daemon.ctl_json(&["clear"])), ["c"]);
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
    let refreshes: Vec<Refresh> = out.lines().map(json).collect();
    assert_eq!(refreshes.len(), 3, "{out}");
    for r in &refreshes {
        let names: Vec<&str> = r.faults.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["cut"], "only the fault named");
    }
    assert!(refreshes.windows(2).all(|w| w[0].at < w[1].at), "one refresh per interval: {out}");
    let matched: Vec<u64> = refreshes.iter().map(|r| r.faults[0].matched).collect();
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
    // Off a terminal, progress is a line per change, on stderr (stdout stays JSON).
    let progress = stderr(&out);
    let lines: Vec<&str> = progress.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("brief: active (")), "{progress}");
    assert_eq!(lines.last(), Some(&"brief: ended"), "{progress}");
    #[derive(Deserialize)]
    struct Summary {
        ended: Vec<Ended>,
    }
    let summary: Summary = json(&String::from_utf8_lossy(&out.stdout));
    let ended = &summary.ended[0];
    assert_eq!((ended.name.as_str(), ended.reason.as_str()), ("brief", "expired"));
    assert_eq!((ended.matched, ended.dropped), (300, 300));
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst, 300).unwrap(), 300, "still acting after --wait returned");
}

#[test]
fn interrupting_apply_wait_removes_its_faults() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let mut waiting = Command::new(bin("chaosctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["apply", "--name", "long", "-i", &lab.a_if, "--partition", "-p", "udp", "--dport", "9403"])
        .args(["--for", "1h", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // On a pipe, progress comes a line at a time as it happens, not at the end.
    let progress = BufReader::new(waiting.stderr.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in progress.lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(5)).expect("a progress line while waiting");
    assert!(first.starts_with("long: active (") && first.contains("matched 0"), "{first}");
    assert!(!daemon.faults().is_empty(), "applied");
    let pid = nix::unistd::Pid::from_raw(waiting.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = waiting.wait_with_output().unwrap();
    reader.join().unwrap();
    assert_eq!(out.status.code(), Some(130), "{:?}", lines.try_iter().collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("long ended (removed: the wait was interrupted)"), "{stdout}");
    assert_eq!(daemon.faults(), []);
    let dst = SocketAddr::new(B4.parse().unwrap(), 9403);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst, 100).unwrap(), 100);
}

#[test]
fn the_daemons_own_events_name_the_experiment_of_their_faults() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let i = lab.a_if.as_str();
    daemon.ctl_ok(&["apply", "--name", "brief", "-i", i, "--loss", "5", "-e", "short"]);
    daemon.ctl_ok(&["rm", "brief"]);
    daemon.ctl_ok(&["apply", "--name", "soon", "-i", i, "--loss", "5", "-e", "short"]);
    daemon.ctl_ok(&["apply", "--name", "late", "-i", i, "--loss", "5", "--start-after", "300ms", "--for", "300ms"]);
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "x",
        "-i",
        i,
        "--loss",
        "5",
        "--start-after",
        "300ms",
        "--for",
        "300ms",
        "-e",
        "sched",
    ]);
    // The daemon starts and ends them by itself (it looks every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.faults().len() > 1 {
        assert!(Instant::now() < deadline, "never expired: {:#?}", daemon.history());
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.ctl_ok(&["clear"]);
    let of = |action: &str| -> Vec<(Vec<String>, Option<String>)> {
        daemon.history().into_iter().filter(|e| e.action.as_str() == action).map(|e| (e.faults, e.experiment)).collect()
    };
    let one = |names: &[&str], e: Option<&str>| (names.iter().map(|n| n.to_string()).collect(), e.map(String::from));
    // Faults of one experiment name it; faults of several, or of none, name none.
    assert_eq!(of("remove"), [one(&["brief"], Some("short"))]);
    // `late` (no experiment) and `x` (sched) start and end in one tick or in two.
    for action in ["start", "expire"] {
        let events = of(action);
        for (faults, experiment) in &events {
            let want = if faults == &["x"] { Some("sched".to_owned()) } else { None };
            assert_eq!(experiment, &want, "{action}: {events:?}");
        }
        assert_eq!(events.iter().map(|(f, _)| f.len()).sum::<usize>(), 2, "{action}: {events:?}");
    }
    // Only `soon` was left: the clear was of experiment `short`'s faults.
    assert_eq!(of("clear"), [one(&[], Some("short"))]);
}
