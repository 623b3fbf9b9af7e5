//! The audit trail holds up against the peers it records: a peer that may only read cannot
//! flush real changes out of it or grow it without bound by being refused again and again; what
//! a peer sent (its process name, a path, a name) is escaped in the daemon's log and in
//! `chaosctl history`; a damaged line hides nothing after it.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use chaos_tests::{Daemon, Lab, daemon::bin, http};

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// nobody/nogroup on Debian.
const NOBODY: u32 = 65534;

/// A daemon whose socket anyone may reach and whose state anyone may read, so that its own
/// access check is what refuses uid 65534's changes.
fn open_daemon(lab: &Lab, config: &str) -> Daemon {
    let daemon = Daemon::start_with(&lab.a, &format!("socket_mode = \"0666\"\nreaders = \"any\"\n{config}")).unwrap();
    // The daemon's directory must be reachable by uid 65534 to reach the socket.
    std::fs::set_permissions(&daemon.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    daemon
}

fn history(daemon: &Daemon, limit: usize) -> Vec<serde_json::Value> {
    let text = daemon.ctl_ok(&["history", "-n", &limit.to_string(), "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["events"].as_array().unwrap().clone()
}

/// Sends `count` requests on one keep-alive connection, from a thread that runs as uid/gid
/// 65534 (setresuid as a raw system call changes the calling thread only), and returns the
/// status of each answer.
fn flood_as_nobody(socket: &Path, count: usize, path: impl Fn(usize) -> String + Send + 'static) -> Vec<u16> {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's credentials.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY), 0);
        }
        let stream = UnixStream::connect(&socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        (0..count)
            .map(|i| {
                write!(writer, "DELETE {} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", path(i)).unwrap();
                let mut status = String::new();
                reader.read_line(&mut status).unwrap();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                status.split_whitespace().nth(1).unwrap().parse().unwrap()
            })
            .collect()
    })
    .join()
    .unwrap()
}

#[test]
fn a_flood_of_refusals_keeps_accepted_events_and_the_history_bounded() {
    let lab = Lab::new().unwrap();
    // Budgets of 20 events and 2 refusals: without them, any 20 refusals would flush the apply.
    let daemon = open_daemon(&lab, "history_limit = 20");
    daemon.ctl_ok(&["apply", "--name", "kept", "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9999"]);

    // 5,000 refused DELETEs with 60 KB paths from a peer that may only read.
    const FLOOD: usize = 5_000;
    let started = Instant::now();
    let long = "%1b%0a".repeat(10_000);
    let statuses = flood_as_nobody(&daemon.socket, FLOOD, move |i| format!("/v1/faults/{i}{long}"));
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 403), "every request refused");
    assert!(took < Duration::from_secs(120), "the flood took {took:?}");

    // Root's apply is still there, and the refusals are within their budget.
    let events = history(&daemon, 20);
    assert!(
        events.iter().any(|e| e["action"] == "apply" && e["faults"][0] == "kept" && e["result"] == "ok"),
        "{events:#?}"
    );
    let refused = events.iter().filter(|e| e["result"].as_str().unwrap().starts_with("refused")).count();
    assert!((1..=4).contains(&refused), "{refused} refusals kept: {events:#?}");
    // Recorded paths are bounded (and the file with them): 128 bytes of path at most.
    for e in events.iter().filter(|e| e["actor"]["uid"] == NOBODY && e["action"] != "refusals") {
        let action = e["action"].as_str().unwrap();
        assert!(action.starts_with("DELETE /v1/faults/") && action.len() <= "DELETE ".len() + 128, "{action}");
        assert!(action.ends_with('…'), "{action}");
    }
    let file = daemon.dir.join("state/history.jsonl");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size < 40_000, "history.jsonl is {size} bytes");

    // Logged at a limited rate too: the burst, then about one a second.
    let logged = daemon.log().matches("chaos_daemon::server: permission denied: uid 65534").count();
    assert!(logged <= 10 + took.as_secs() as usize + 2, "{logged} log lines for {FLOOD} refusals");

    // The refusals not recorded are counted, in the next one that is (one a second): each is
    // either logged and recorded, or in such a count.
    let flood_end = unix_ms();
    let mut sent = FLOOD;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(flood_as_nobody(&daemon.socket, 1, |_| "/v1/faults".into()), [403]);
        sent += 1;
        let events = history(&daemon, 20);
        if events.iter().any(|e| e["action"] == "refusals" && e["at"].as_u64().unwrap() >= flood_end) {
            break;
        }
        assert!(Instant::now() < deadline, "no count of unrecorded refusals: {events:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.log();
    let recorded = log.matches("chaos_daemon::server: permission denied: uid 65534").count();
    let unrecorded: usize = log
        .lines()
        .filter_map(|l| l.split_once("chaos_daemon::server: refused: ")?.1.split_once(" more requests from uid 65534"))
        .map(|(n, _)| n)
        .map(|n| n.parse::<usize>().unwrap())
        .sum();
    assert_eq!(recorded + unrecorded, sent, "{log}");

    // Reading stays quick.
    let started = Instant::now();
    let out = daemon.ctl_ok(&["history", "-n", "10"]);
    assert!(started.elapsed() < Duration::from_secs(2), "history -n 10 took {:?}", started.elapsed());
    assert!(out.lines().any(|l| l.contains(" apply ") && l.contains(" kept ") && l.ends_with(" ok")), "{out}");
    // Any limit is taken (at most history_limit events are returned).
    let all = http::request(&daemon.socket, "GET", "/v1/history?limit=1000000000", b"").unwrap();
    assert_eq!(all.status, 200);
    // The table's lines: a header, then an event each.
    assert_eq!(all.json()["events"].as_array().unwrap().len(), out.lines().count() - 1);

    // The daemon did not grow with the flood.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid().unwrap())).unwrap();
    let rss_kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    assert!(rss_kb < 100 << 10, "the daemon holds {rss_kb} kB");
}

#[test]
fn what_a_peer_sent_is_escaped_in_the_log_and_in_chaosctl_history() {
    let lab = Lab::new().unwrap();
    let daemon = open_daemon(&lab, "");
    // A process names itself after what it runs: chaosctl, run by this name (15 bytes at most).
    let comm = "x\nINFO \x1b[1mok";
    let named = daemon.dir.join(comm);
    std::os::unix::fs::symlink(bin("chaosctl"), &named).unwrap();
    let out = Command::new(&named)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["apply", "--name", "evil", "-i", &lab.a_if, "--partition"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    // A name that is refused, written to look like an event of its own in `chaosctl history`.
    let forged = "x\n1999-01-01 00:00:00.000  chaos-daemon  clear: ok\x1b[2J";
    let out = daemon.ctl(&["apply", "--name", forged, "-i", &lab.a_if, "--loss", "10"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\x1b') && stderr.lines().count() == 1, "the error quoted it raw: {stderr:?}");

    let text = daemon.ctl_ok(&["history"]);
    assert!(!text.contains('\x1b'), "a raw ESC reached the terminal: {text:?}");
    assert!(!text.lines().any(|l| l.starts_with("1999-")), "a forged line: {text}");
    assert!(text.contains("(x\\nINFO \\x1b[1mok)"), "{text}");
    assert!(text.contains("x\\n1999-01-01 00:00:00.000  chaos-daemon  clear: ok\\x1b[2J"), "{text}");
    // A header, then one line per event, each starting with its local time.
    assert!(text.starts_with("TIME "), "{text}");
    for line in text.lines().skip(1).filter(|l| !l.starts_with("    ")) {
        let (date, time) = (&line[..10], &line[11..23]);
        let digits = |s: &str, at: &[usize]| s.chars().enumerate().all(|(i, c)| c.is_ascii_digit() != at.contains(&i));
        assert!(digits(date, &[4, 7]) && digits(time, &[2, 5, 8]) && line[23..].starts_with("  "), "{line:?}");
    }
    // The history keeps the escaped text.
    let events = history(&daemon, 50);
    assert!(events.iter().any(|e| e["actor"]["comm"] == "x\\nINFO \\x1b[1mok"), "{events:#?}");

    let log = daemon.log();
    assert!(!log.contains('\x1b'), "a raw ESC in the log: {log:?}");
    assert!(!log.lines().any(|l| l.starts_with("INFO ") || l.starts_with("1999-")), "a forged line: {log}");
    assert!(log.contains("x\\nINFO \\x1b[1mok"), "{log}");
}

#[test]
fn a_damaged_line_hides_nothing_after_it() {
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "--name", "before", "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9999"]);
    daemon.stop().unwrap();
    // Garbage, then a line torn in the middle of a UTF-8 character (a full disk) as the last.
    let file = daemon.dir.join("state/history.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(b"garbage\n{\"at\":1,\"actor\":{},\"action\":\"apply\",\"result\":\"d\xc3").unwrap();
    drop(f);

    daemon.restart().unwrap();
    daemon.ctl_ok(&["apply", "--name", "after", "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9998"]);
    let events = history(&daemon, 50);
    let applied: Vec<&str> =
        events.iter().filter(|e| e["action"] == "apply").map(|e| e["faults"][0].as_str().unwrap()).collect();
    assert_eq!(applied, ["before", "after"], "{events:#?}");
    let text = daemon.ctl_ok(&["history"]);
    let row = |l: &str| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
    assert!(text.lines().any(|l| row(l).ends_with("apply - after ok")), "{text}");
    // Reported once, naming the file; the torn line was not glued to the next event.
    let log = daemon.log();
    assert_eq!(log.matches("lines that are not events").count(), 1, "{log}");
    assert!(log.contains("history.jsonl: skipping 2 lines"), "{log}");
    let raw = std::fs::read(&file).unwrap();
    let parsed = raw.split(|b| *b == b'\n').filter(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok()).count();
    assert_eq!(parsed, events.len(), "{}", String::from_utf8_lossy(&raw));
}

#[test]
fn reading_a_long_history_holds_up_nothing() {
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start(&lab.a).unwrap();
    daemon.stop().unwrap();
    // 19,000 events of 3 KB (57 MB), as 10,000 large changes and their trims leave it.
    let file = daemon.dir.join("state/history.jsonl");
    let names: Vec<String> = (0..40).map(|i| format!("{i:0>60}")).collect();
    let mut text = Vec::new();
    for n in 0..19_000u64 {
        let event = serde_json::json!({"at": n, "actor": {}, "action": "apply", "faults": names, "result": "ok"});
        serde_json::to_writer(&mut text, &event).unwrap();
        text.push(b'\n');
    }
    std::fs::write(&file, &text).unwrap();
    drop(text);
    // The journal holds the stop's own event, which the next start would find missing from
    // this history of the test's and append.
    std::fs::remove_file(daemon.dir.join("state/journal.jsonl")).unwrap();
    daemon.restart().unwrap();

    // The newest 10 at once, from the end of the file.
    let started = Instant::now();
    let newest = http::request(&daemon.socket, "GET", "/v1/history?limit=10", b"").unwrap();
    // Bounds far above what it takes (milliseconds), below what reading the whole file took.
    assert!(started.elapsed() < Duration::from_secs(2), "limit=10 took {:?}", started.elapsed());
    let ats: Vec<u64> = newest.json()["events"].as_array().unwrap().iter().map(|e| e["at"].as_u64().unwrap()).collect();
    assert_eq!(ats, (18_990..19_000).collect::<Vec<_>>());

    // Three readers of all 10,000 do not hold up the engine: status answers meanwhile.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (socket, done) = (daemon.socket.clone(), done.clone());
            std::thread::spawn(move || {
                let all = http::request(&socket, "GET", "/v1/history?limit=100000", b"").unwrap();
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                all.json()["events"].as_array().unwrap().len()
            })
        })
        .collect();
    let mut asked = 0;
    while done.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        let started = Instant::now();
        assert_eq!(http::request(&daemon.socket, "GET", "/v1/status", b"").unwrap().status, 200);
        assert!(started.elapsed() < Duration::from_secs(2), "status took {:?} during history reads", started.elapsed());
        asked += 1;
    }
    let read: Vec<usize> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(read, [10_000; 3], "at most history_limit each");
    assert!(asked >= 3, "status was asked {asked} times while the reads ran");
}
