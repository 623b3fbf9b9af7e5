//! What a careless or hostile client does to the daemon: names and paths that must not mean
//! "every fault", connections that must not lock root out, answers that are never read, a
//! request whose client went away, and output read by `head`.

use std::{
    io::{Read as _, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_daemon::routes::{Route, route};
use chaos_tests::{Daemon, Lab, daemon::Snapshot, http::request};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

/// nobody/nogroup on Debian.
const NOBODY: u32 = 65534;

/// A fault no stray packet moves, so that a snapshot of the daemon is stable.
fn narrow_fault(daemon: &Daemon, lab: &Lab, name: &str) {
    daemon.ctl_ok(&["apply", "--name", name, "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9999"]);
}

fn events(daemon: &Daemon) -> Vec<serde_json::Value> {
    let history: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["history", "-n", "1000", "-o", "json"])).unwrap();
    history["events"].as_array().unwrap().clone()
}

#[test]
fn a_name_that_is_not_a_name_removes_nothing() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    narrow_fault(&daemon, &lab, "k1");
    let before = Snapshot::of(&lab, &daemon);

    // chaosctl refuses before sending anything: exit 2, naming the name.
    for args in [&["rm", ""][..], &["rm", "/"], &["rm", "?"], &["rm", "#"], &["rm", "k1", ""], &["rm", "-e", ""]] {
        let out = daemon.ctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "chaosctl {args:?}: {stderr}");
        assert!(stderr.contains("is not a valid name"), "chaosctl {args:?}: {stderr}");
    }
    // The daemon refuses every path that is not exactly the collection's.
    for (method, path, status) in [
        ("DELETE", "/v1/faults/", 400),
        ("DELETE", "/v1/faults/?", 400),
        ("DELETE", "/v1/faults?name=k1", 400),
        ("DELETE", "/v1/faults/%2F", 400),
        ("DELETE", "/v1/faults//", 404),
        ("DELETE", "/v1/faults/k1/", 404),
        ("DELETE", "/v1/experiments/", 400),
        // The collection is there to read (GET), not to remove whole.
        ("DELETE", "/v1/experiments", 405),
        ("POST", "/v1/faults/", 405),
    ] {
        let answer = request(&daemon.socket, method, path, b"").unwrap();
        assert_eq!(answer.status, status, "{method} {path}: {:?}", answer.error());
        assert!(answer.error().is_some(), "{method} {path}: no error message");
    }
    assert_eq!(Snapshot::of(&lab, &daemon), before);
    assert!(!events(&daemon).iter().any(|e| e["action"] == "clear"), "something was cleared");
    // The exact paths still work.
    assert_eq!(request(&daemon.socket, "DELETE", "/v1/faults/k1", b"").unwrap().status, 200);
    narrow_fault(&daemon, &lab, "k2");
    assert_eq!(request(&daemon.socket, "DELETE", "/v1/faults", b"").unwrap().status, 200);
}

/// Paths made of the pieces a careless or hostile client would use.
fn paths() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("v1".to_owned()),
        Just("faults".to_owned()),
        Just("experiments".to_owned()),
        Just("k1".to_owned()),
        Just("..".to_owned()),
        Just("%2F".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        "[!-~]{0,3}",
    ];
    prop::collection::vec(piece, 1..7).prop_map(|v| format!("/{}", v.concat()))
}

#[test]
fn every_refused_path_changes_nothing() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    narrow_fault(&daemon, &lab, "k1");
    daemon
        .ctl_ok(&["apply", "--name", "k2", "-e", "e1", "-i", &lab.a_if, "--loss", "5", "-p", "udp", "--dport", "9998"]);
    let before = Snapshot::of(&lab, &daemon);
    let method = prop_oneof![Just("DELETE"), Just("POST"), Just("PUT"), Just("GET")];
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    let refused = std::cell::Cell::new(0);
    runner
        .run(&(method, paths()), |(method, target)| {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target.as_str(), None),
            };
            let m = method.parse().unwrap();
            // Requests the routes take for a change are not sent: every other one must change
            // nothing, whatever it is answered.
            if route(&m, path, query).is_ok_and(|r| r.mutating()) {
                return Ok(());
            }
            // A request line HTTP itself refuses (`//`) is answered 400 by the HTTP layer, which
            // may close before reading the body: no answer read counts as refused too.
            let status = request(&daemon.socket, method, &target, b"{}").map_or(400, |a| a.status);
            if method != "GET" {
                prop_assert!(status >= 400, "{method} {target}: {status}");
                refused.set(refused.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    assert!(refused.get() > 100, "only {} refused requests were tried", refused.get());
    assert_eq!(Snapshot::of(&lab, &daemon), before);
    // And the collection path is the only one the routes give for a clear.
    assert_eq!(route(&"DELETE".parse().unwrap(), "/v1/faults", None), Ok(Route::Clear));
}

/// Not a test of its own: the process [`Holder`] starts, as another user, to open connections
/// and hold them until its stdin closes.
#[test]
#[ignore = "run by other tests as a process of its own"]
fn connection_holder() {
    let (Ok(target), Ok(count)) = (std::env::var("HOLD_TARGET"), std::env::var("HOLD_COUNT")) else { return };
    // As many descriptors as the hard limit allows an unprivileged process.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: one rlimit, valid for both calls.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
    for _ in 0..count.parse::<usize>().unwrap() {
        let connected: std::io::Result<Box<dyn std::any::Any>> = match target.strip_prefix("tcp:") {
            Some(addr) => std::net::TcpStream::connect(addr).map(|s| Box::new(s) as _),
            None => UnixStream::connect(&target).map(|s| Box::new(s) as _),
        };
        match connected {
            Ok(s) => held.push(s),
            Err(e) => {
                eprintln!("connect: {e}");
                break;
            }
        }
    }
    println!("held {}", held.len());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A process of another user holding connections; they close when it is dropped.
struct Holder(std::process::Child);

impl Holder {
    /// `count` connections to `target` (a socket path, or `tcp:ADDR:PORT`), from inside `netns`.
    fn new(target: &str, count: usize, uid: u32, netns: &Path) -> Self {
        let netns = std::fs::File::open(netns).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--ignored", "--exact", "connection_holder", "--nocapture"])
            .env("HOLD_TARGET", target)
            .env("HOLD_COUNT", count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: setns, setgroups, setgid and setuid are system calls, on a file opened before
        // the fork. The namespace is entered as root, then root is given up (Command::uid would
        // give it up before this runs).
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = Self(cmd.spawn().unwrap());
        // Wait for its report that every connection is open (the harness prints lines of its own).
        let mut out = child.0.stdout.take().unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.lines().any(|l| l.starts_with("held ")) {
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "the holder ended without holding: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let held: usize = text.lines().find_map(|l| l.strip_prefix("held ")).unwrap().trim().parse().unwrap();
        assert_eq!(held, count, "the holder could not open its connections");
        child
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Open descriptors of a process.
fn fds(pid: nix::unistd::Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Lines of the daemon's log that contain `text`.
fn logged(daemon: &Daemon, text: &str) -> usize {
    daemon.log().lines().filter(|l| l.contains(text)).count()
}

#[test]
fn many_idle_connections_do_not_lock_root_out() {
    let lab = Lab::new().unwrap();
    let port = 19464;
    let daemon = Daemon::start_with(
        &lab.a,
        &format!("socket_mode = \"0666\"\nreaders = \"any\"\nmetrics_address = \"127.0.0.1:{port}\""),
    )
    .unwrap();
    // The daemon's directory must be reachable by uid 65534 to reach the socket.
    std::fs::set_permissions(&daemon.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pid = daemon.pid().unwrap();
    // The descriptors of the packaged unit's default (no LimitNOFILE): 1,024.
    chaos_tests::run("prlimit", &["--pid", &pid.to_string(), "--nofile=1024:1024"]).unwrap();
    narrow_fault(&daemon, &lab, "k1");
    let base = fds(pid);
    let netns = Path::new("/run/netns").join(&lab.a.name);

    let socket = daemon.socket.to_string_lossy().into_owned();
    let holder = Holder::new(&socket, 1_100, NOBODY, &netns);
    let scraper = Holder::new(&format!("tcp:127.0.0.1:{port}"), 1_100, NOBODY, &netns);
    // Root is still served at once, through the control socket and the metrics port.
    let started = Instant::now();
    let status = daemon.ctl(&["--timeout", "5s", "status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let list = daemon.list();
    assert_eq!(list["faults"][0]["name"], "k1");
    eprintln!("status and list with 2,200 connections held: {:?}", started.elapsed());
    // The daemon holds only its limits' worth: 64 from one uid, 8 from one address.
    let open = fds(pid);
    assert!(open <= base + 64 + 8 + 4, "{open} descriptors open (before: {base})");
    // The connections turned away were answered, and said why once, not once each.
    assert!(logged(&daemon, "too many connections from uid 65534 (64 at once)") >= 1, "{}", daemon.log());
    assert!(logged(&daemon, "too many connections from 127.0.0.1 (8 at once)") >= 1, "{}", daemon.log());
    let refused = logged(&daemon, "connection refused");
    assert!(refused <= 4, "{refused} log lines about refused connections");
    assert_eq!(logged(&daemon, "accept:"), 0, "accept failed: {}", daemon.log());
    drop(holder);
    drop(scraper);
    // Once they go, their descriptors are given back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fds(pid) > base + 2 {
        assert!(Instant::now() < deadline, "{} descriptors still open (before: {base})", fds(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_answer_never_read_is_given_up() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let pid = daemon.pid().unwrap();
    let base = fds(pid);
    let stream = UnixStream::connect(&daemon.socket).unwrap();
    // 2,000 requests sent at once, their answers never read.
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for _ in 0..2_000 {
            if writer.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
                break;
            }
        }
    });
    // The daemon closes it once an answer has waited 10 s for the client (WRITE_TIMEOUT).
    let started = Instant::now();
    loop {
        let mut pfd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&stream), events: 0, revents: 0 };
        // SAFETY: one pollfd, valid for the call.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        if pfd.revents & libc::POLLHUP != 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(25), "the connection is still open");
    }
    eprintln!("closed after {:?}", started.elapsed());
    sender.join().unwrap();
    drop(stream);
    daemon.ctl_ok(&["--timeout", "5s", "status"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds(pid) > base {
        assert!(Instant::now() < deadline, "{} descriptors open (before: {base})", fds(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_request_sent_before_shutting_down_writing_is_answered() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let body = format!(
        r#"{{"faults":[{{"name":"k1","interface":"{}","action":"loss","loss":10,"protocol":"udp","dport":9999}}]}}"#,
        lab.a_if
    );
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "POST /v1/faults HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
    assert_eq!(daemon.list()["faults"][0]["name"], "k1");
}

#[test]
fn a_stopped_daemon_is_given_up_on_and_does_not_act_later() {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start(&lab.a).unwrap();
    narrow_fault(&daemon, &lab, "k1");
    daemon.signal(SIGSTOP).unwrap();
    let out = daemon.ctl(&["--timeout", "1s", "rm", "k1"]);
    daemon.signal(SIGCONT).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("did not answer within 1s") && stderr.contains("withdrawn"), "{stderr}");
    // Resumed, the daemon reads the withdrawn request, says so, and does not act on it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let withdrawn = loop {
        let found = events(&daemon).into_iter().find(|e| e["action"] == "DELETE /v1/faults/k1");
        if let Some(event) = found {
            break event;
        }
        assert!(Instant::now() < deadline, "the withdrawn request is not in the history");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(withdrawn["result"].as_str().unwrap().contains("closed its connection"), "{withdrawn}");
    assert_eq!(daemon.list()["faults"][0]["name"], "k1");
}

#[test]
fn output_read_by_head_ends_quietly() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    narrow_fault(&daemon, &lab, "k1");
    for args in [&["history"][..], &["list"], &["list", "-o", "json"]] {
        let mut child = Command::new(chaos_tests::daemon::bin("chaosctl"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before anything is written, as `| head -0` would be.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "chaosctl {args:?}: {stderr}");
        let killed = std::os::unix::process::ExitStatusExt::signal(&out.status);
        assert_eq!(killed, Some(libc::SIGPIPE), "chaosctl {args:?}: {:?}", out.status);
    }
}

#[test]
fn percentages_and_durations_read_as_written() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let iface = lab.a_if.as_str();
    daemon.ctl_ok(&["apply", "--name", "z", "-i", iface, "--loss=-0", "-p", "udp", "--dport", "9999"]);
    daemon.ctl_ok(&["apply", "--name", "tiny", "-i", iface, "--loss", "1e-300", "-p", "udp", "--dport", "9998"]);
    let table = daemon.ctl_ok(&["list"]);
    assert!(table.contains("loss 0%") && !table.contains("-0%"), "{table}");
    assert!(table.contains("loss 1e-300%"), "{table}");
    assert!(table.lines().all(|l| l.len() < 300), "{table}");
    // A number of seconds has the resolution of the text form: 1e-9 is refused as "1ns" is.
    for duration in ["1e-9", "\"1ns\""] {
        let body =
            format!(r#"{{"faults":[{{"interface":"{iface}","action":"loss","loss":10,"duration":{duration}}}]}}"#);
        let answer = request(&daemon.socket, "POST", "/v1/faults", body.as_bytes()).unwrap();
        assert_eq!(answer.status, 400, "duration {duration}: {:?}", answer.error());
        assert!(answer.error().unwrap().starts_with("duration: "), "{:?}", answer.error());
    }
}

#[test]
fn a_hand_edited_state_file_is_refused_or_survived() {
    use nix::sys::signal::Signal::SIGKILL;
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start(&lab.a).unwrap();
    narrow_fault(&daemon, &lab, "a");
    daemon.ctl_ok(&["apply", "--name", "b", "-i", &lab.a_if, "--loss", "50", "-p", "udp", "--dport", "9998"]);
    daemon.signal(SIGKILL).unwrap();
    // The state as the daemon would read it (snapshot and journal), edited into one snapshot.
    let dir = daemon.dir.join("state");
    let path = dir.join("state.json");
    let read = chaos_daemon::state::Store::open(&dir, 1000).unwrap().load().unwrap().unwrap();
    std::fs::remove_file(dir.join("journal.jsonl")).unwrap();
    let original = serde_json::to_string(&read).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&original).unwrap();

    // Two faults in one slot: one would act with the other's rule.
    state["faults"][1]["slot"] = state["faults"][0]["slot"].clone();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let e = daemon.restart().unwrap_err().to_string();
    assert!(e.contains("faults 'a' and 'b' share rule slot") && e.contains("cleanup"), "{e}");

    // The last name handed out: the next one wraps instead of overflowing.
    let mut state: serde_json::Value = serde_json::from_str(&original).unwrap();
    state["next_id"] = u64::MAX.into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    daemon.restart().unwrap();
    let iface = lab.a_if.as_str();
    for name in [format!("loss-{}", u64::MAX), "loss-1".into()] {
        let applied = daemon.ctl_ok(&["apply", "-i", iface, "--loss", "1", "-p", "udp", "--dport", "9997"]);
        assert!(applied.contains(&format!("applied {name} ")), "{applied}");
    }
}

/// CPU time a process has used, in clock ticks (utime + stime of /proc/PID/stat).
fn cpu_ticks(pid: nix::unistd::Pid) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) in parentheses: utime is the 12th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn accept_failing_for_want_of_descriptors_is_backed_off_and_logged_rarely() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, "socket_mode = \"0666\"\nreaders = \"any\"").unwrap();
    std::fs::set_permissions(&daemon.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pid = daemon.pid().unwrap();
    // Room for a few connections only, so that accept fails with EMFILE under the per-uid limit.
    let limit = fds(pid) + 4;
    chaos_tests::run("prlimit", &["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")]).unwrap();
    let netns = Path::new("/run/netns").join(&lab.a.name);
    let holder = Holder::new(&daemon.socket.to_string_lossy(), 40, NOBODY, &netns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged(&daemon, "accept:") == 0 {
        assert!(Instant::now() < deadline, "accept never failed: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Out of descriptors for 3 s: the loop waits between tries instead of spinning.
    let ticks = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - ticks;
    assert!(used < 30, "{used} ticks of CPU in 3 s while accept failed");
    assert_eq!(logged(&daemon, "accept:"), 1, "{}", daemon.log());
    // Once the connections go, the daemon serves again.
    drop(holder);
    let out = daemon.ctl(&["--timeout", "10s", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
