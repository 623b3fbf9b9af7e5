//! Guard rails end to end: with an SSH session established to the daemon's host, a fault that
//! would touch it is refused (409, naming the session) and changes nothing, a narrower fault is
//! accepted, and `--force` overrides. A configured protected destination is refused the same way.
//!
//! The sessions are followed by the `sock:inet_sock_set_state` tracepoint: one opened after the
//! start is protected, one closed no longer is, one opened before the start is (the map is
//! seeded), and a fault that touches none of them is checked without a dump of the TCP table
//! (the `chaos_guard_session_dumps` metric stays put) while other connections open and close.
//! Where the program cannot follow the ports, the start goes on and every apply dumps; so it does
//! once its map is full.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chaos_tests::{Daemon, Lab, Netns, lab};

#[test]
fn faults_touching_ssh_sessions_or_protected_destinations_need_force() {
    let lab = Lab::new().unwrap();
    // An "sshd" on host a, port 22, and a session to it from b.
    let sshd = SocketAddr::new(lab::A4.parse().unwrap(), 22);
    let listener = lab.a.enter(move || TcpListener::bind(sshd)).unwrap().unwrap();
    let session = lab.b.enter(move || TcpStream::connect_timeout(&sshd, Duration::from_secs(2))).unwrap().unwrap();
    let (_accepted, peer) = listener.accept().unwrap();

    let daemon = Daemon::start_with(&lab.a, "protected = [\"udp:10.200.0.4:53\"]").unwrap();
    let before = daemon.list();
    let refused = daemon.ctl(&["apply", "-i", &lab.a_if, "--partition", "-d", "both", "--dst", lab::B4]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let named = format!("SSH session {peer} -> {}:22", lab::A4);
    assert!(!refused.status.success(), "a partition of the SSH peer was applied");
    assert!(stderr.contains("match: would touch") && stderr.contains(&named) && stderr.contains("--force"), "{stderr}");
    // Any action counts, on the ingress side too.
    let out = daemon.ctl(&["apply", "-i", &lab.a_if, "--loss", "1", "-d", "ingress", "-p", "tcp"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&named), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(daemon.list(), before, "a refusal changes nothing");

    // A fault that leaves the session out is fine; --force overrides.
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "udp-only",
        "-i",
        &lab.a_if,
        "--partition",
        "-d",
        "both",
        "--dst",
        lab::B4,
        "-p",
        "udp",
    ]);
    daemon.ctl_ok(&["apply", "--name", "forced", "-i", &lab.a_if, "--loss", "1", "--dst", lab::B4, "--force"]);

    // The configured destination (UDP 53 on 10.200.0.4) is protected as well.
    let out = daemon.ctl(&["apply", "-i", &lab.a_if, "--loss", "50", "--dst", lab::B4_OTHER]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("10.200.0.4") && stderr.contains("53"), "{stderr}");
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--loss", "50", "--dst", lab::B4_OTHER, "-p", "tcp"]);
    drop(session);
}

/// A guarded port that is not sshd's, and the metrics port, in the lab's own namespace.
const GUARDED: u16 = 2222;
const METRICS: u16 = 9465;

fn config() -> String {
    format!("ssh_ports = [{GUARDED}]\nmetrics_address = \"127.0.0.1:{METRICS}\"")
}

/// A server on the guarded port of host a, and sessions to it from b.
struct Server {
    listener: TcpListener,
    lab: Lab,
}

impl Server {
    fn new() -> Self {
        let lab = Lab::new().unwrap();
        let addr = SocketAddr::new(lab::A4.parse().unwrap(), GUARDED);
        let listener = lab.a.enter(move || TcpListener::bind(addr)).unwrap().unwrap();
        Self { listener, lab }
    }

    /// A session from b: its client end, the server's end, and how the daemon names it.
    fn session(&self) -> (TcpStream, TcpStream, String) {
        let addr = self.listener.local_addr().unwrap();
        let client =
            self.lab.b.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2))).unwrap().unwrap();
        let (server, peer) = self.listener.accept().unwrap();
        (client, server, format!("SSH session {peer} -> {addr}"))
    }
}

/// `chaos_guard_session_dumps_total`, from the daemon's metrics listener in `ns`.
fn dumps(ns: &Netns) -> u64 {
    let body = ns
        .enter(|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect(("127.0.0.1", METRICS))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: chaos\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap()
        .unwrap();
    let line = body.lines().find(|l| l.starts_with("chaos_guard_session_dumps_total ")).expect(&body);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The kernel's TCP `PassiveOpens` and `CurrEstab` in `ns` (what the dump cache goes by).
fn tcp_counters(ns: &Netns) -> String {
    let snmp = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp")).unwrap().unwrap();
    snmp.lines().filter(|l| l.starts_with("Tcp:")).nth(1).unwrap().to_owned()
}

/// Opens and closes connections in `ns` (to a port nobody guards) until dropped, so that the
/// TCP counters move between any two requests.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Churn {
    fn start(ns: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let listener = ns.enter(|| TcpListener::bind(("127.0.0.1", 0))).unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        let path = format!("/run/netns/{}", ns.name);
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            while !flag.load(Ordering::Relaxed) {
                let client = TcpStream::connect(addr).unwrap();
                drop(listener.accept().unwrap());
                drop(client);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn sessions_opened_and_closed_after_the_start_are_followed_by_the_tracepoint() {
    let server = Server::new();
    let (lab, a_if) = (&server.lab, server.lab.a_if.clone());
    let daemon = Daemon::start_with(&lab.a, &config()).unwrap();
    assert!(daemon.status().guard_sessions.contains("loaded at the first apply"), "{:?}", daemon.status());
    // The first apply that could touch the guarded port starts the program (no session yet).
    daemon.ctl_ok(&[
        "apply", "--name", "first", "-i", &a_if, "--loss", "1", "-d", "ingress", "-p", "tcp", "--dport", "2222",
    ]);
    assert_eq!(daemon.status().guard_sessions, "tracepoint sock:inet_sock_set_state");
    daemon.ctl_ok(&["rm", "first"]);

    let (client, accepted, named) = server.session();
    let before = daemon.list();
    let cut = ["apply", "-i", a_if.as_str(), "--partition", "-d", "both", "--dst", lab::B4];
    let refused = daemon.ctl(&cut);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains(&named), "{stderr}");
    assert_eq!(daemon.list(), before, "a refusal changes nothing");

    // Closed by the server (its end leaves ESTABLISHED at once): the same fault is accepted,
    // and the tracepoint's map says so without a dump.
    drop(accepted);
    drop(client);
    let dumped = dumps(&lab.a);
    let mut cut_named = cut.to_vec();
    cut_named.extend(["--name", "cut"]);
    daemon.ctl_ok(&cut_named);
    assert_eq!(dumps(&lab.a), dumped, "a fault touching no followed session needed a dump");
}

#[test]
fn a_session_from_before_the_start_is_protected_and_others_need_no_dump() {
    let server = Server::new();
    let (lab, a_if) = (&server.lab, server.lab.a_if.clone());
    let (_client, _accepted, named) = server.session();
    let daemon = Daemon::start_with(&lab.a, &config()).unwrap();
    // The map is seeded with the sessions open when the program starts.
    let refused = daemon.ctl(&["apply", "-i", &a_if, "--loss", "5", "-d", "ingress", "-p", "tcp"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains(&named), "{stderr}");

    // A fault that could touch the guarded port, but not this session (another peer), while
    // connections open and close: the counters move, and no dump is made.
    let churn = Churn::start(&lab.a);
    let (dumped, counters) = (dumps(&lab.a), tcp_counters(&lab.a));
    for (i, peer) in [lab::B4_OTHER, "10.200.0.9", "10.200.0.10"].into_iter().enumerate() {
        let name = format!("other-peer-{i}");
        daemon.ctl_ok(&[
            "apply",
            "--name",
            &name,
            "-i",
            &a_if,
            "--partition",
            "-d",
            "ingress",
            "-p",
            "tcp",
            "--dport",
            "2222",
            "--src",
            peer,
        ]);
    }
    assert_eq!(dumps(&lab.a), dumped, "applies that touch no followed session made a dump");
    assert_ne!(tcp_counters(&lab.a), counters, "the TCP counters did not move: the test proves nothing");
    drop(churn);
    // And the session is still protected (the map hit is confirmed by a dump).
    let refused = daemon.ctl(&["apply", "-i", &a_if, "--partition", "-d", "ingress", "-p", "tcp", "--dport", "2222"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&named));
    assert!(dumps(&lab.a) > dumped, "a fault touching a followed session is confirmed by a dump");
}

#[test]
fn where_the_program_cannot_follow_the_ports_every_apply_dumps_and_still_refuses() {
    let server = Server::new();
    let (lab, a_if) = (&server.lab, server.lab.a_if.clone());
    // More ports than the program's map holds: the start goes on, the guard dumps.
    let ports: Vec<String> = (GUARDED..GUARDED + 65).map(|p| p.to_string()).collect();
    let config = format!("ssh_ports = [{}]\nmetrics_address = \"127.0.0.1:{METRICS}\"", ports.join(", "));
    let daemon = Daemon::start_with(&lab.a, &config).unwrap();
    let (_client, _accepted, named) = server.session();
    let dumped = dumps(&lab.a);
    let refused = daemon.ctl(&["apply", "-i", &a_if, "--partition", "-d", "both", "--dst", lab::B4]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains(&named), "{stderr}");
    let status = daemon.status().guard_sessions;
    assert_eq!(status, "dump (more than 64 guarded ports)");
    assert!(daemon.ctl_ok(&["status"]).contains(&format!("SSH guard sessions: {status}")));
    assert!(dumps(&lab.a) > dumped);
}

#[test]
fn a_full_session_map_makes_every_apply_dump() {
    let server = Server::new();
    let (lab, a_if) = (&server.lab, server.lab.a_if.clone());
    // Two descriptors a session: raise the soft limit to the hard one.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: one rlimit, valid for both calls.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let daemon = Daemon::start_with(&lab.a, &config()).unwrap();
    let other = |name: &str, peer: &str| {
        daemon.ctl_ok(&[
            "apply", "--name", name, "-i", &a_if, "--loss", "1", "-d", "ingress", "-p", "tcp", "--dport", "2222",
            "--src", peer,
        ]);
    };
    other("first", lab::B4_OTHER);
    assert_eq!(daemon.status().guard_sessions, "tracepoint sock:inet_sock_set_state");
    // One session more than the map holds.
    let sessions: Vec<_> = (0..=chaos_common::SESSIONS_CAPACITY).map(|_| server.session()).collect();
    assert_eq!(daemon.status().guard_sessions, "dump (the tracepoint's session map is full)");
    // A fault that touches none of them still needs the dump: the map may miss one.
    let dumped = dumps(&lab.a);
    other("second", "10.200.0.9");
    assert!(dumps(&lab.a) > dumped, "a full map was trusted");
    drop(sessions);
}
