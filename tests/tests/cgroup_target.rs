//! Faults on a cgroup: two cgroups made by the test, processes of each in the lab's host `a`
//! (one network namespace), and only the target's traffic touched; connect-fail; the fault
//! ending with its cgroup. The daemon, the CLI and the kernel are the real ones.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::OwnedFd,
};

use chaos_api::api::Ability;
use chaos_tests::{
    Daemon, Lab, Netns,
    cgroup::{Cgroup, Resident},
    lab::{A4, A6, B4, B6},
    traffic,
};

const N: u32 = 20_000;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A UDP socket of a process of `cgroup` in `ns`, bound to `at`.
fn udp_socket(cgroup: &Cgroup, ns: &Netns, at: SocketAddr) -> UdpSocket {
    let domain = if at.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let fd: OwnedFd = cgroup.socket(ns, domain, libc::SOCK_DGRAM).unwrap();
    let socket = UdpSocket::from(fd);
    let bind = socket2::SockRef::from(&socket).bind(&at.into());
    bind.unwrap();
    socket
}

/// Datagrams from a process of `cgroup` (in lab `a`) to `dst` in lab `b` that arrive.
fn from_cgroup(lab: &Lab, cgroup: &Cgroup, dst: SocketAddr, count: u32) -> u32 {
    let any = if dst.is_ipv4() { addr("0.0.0.0", 0) } else { addr("::", 0) };
    let tx = udp_socket(cgroup, &lab.a, any);
    let rx = lab.b.enter(move || UdpSocket::bind(dst)).unwrap().unwrap();
    traffic::udp_via(tx, rx, dst, count).unwrap()
}

/// Datagrams from lab `b` that reach a socket of `cgroup` bound to `at` (in lab `a`).
fn to_cgroup(lab: &Lab, cgroup: &Cgroup, at: SocketAddr, count: u32) -> u32 {
    let rx = udp_socket(cgroup, &lab.a, at);
    let any = if at.is_ipv4() { addr("0.0.0.0", 0) } else { addr("::", 0) };
    let tx = lab.b.enter(move || UdpSocket::bind(any)).unwrap().unwrap();
    traffic::udp_via(tx, rx, at, count).unwrap()
}

fn fault(daemon: &Daemon, name: &str) -> serde_json::Value {
    daemon.list()["faults"].as_array().unwrap().iter().find(|f| f["name"] == name).expect("listed").clone()
}

/// Binomial: the standard deviation of a measured rate p over n trials is sqrt(p(1-p)/n); five
/// of them (±1.62 points for 30% of 20,000) fail a correct program about once in 1.7 million runs.
/// Applies `args` where `ability` is there (true); where not, checks that they are refused
/// with its reason and change nothing (false): a kernel (or profile) without cgroup links or
/// bpf_set_retval runs these tests as refusals.
fn apply_if(daemon: &Daemon, ability: &Ability, args: &[&str]) -> bool {
    if ability.available {
        daemon.ctl_ok(args);
        return true;
    }
    let before = daemon.faults();
    let out = daemon.ctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = ability.why_not.as_deref().expect("a reason");
    assert!(!out.status.success() && stderr.contains(why), "{args:?}: expected a refusal with '{why}': {stderr}");
    assert_eq!(daemon.faults(), before, "{args:?} changed the faults");
    false
}

fn assert_rate(lost: u32, n: u32, p: f64, what: &str) {
    let rate = f64::from(lost) / f64::from(n);
    let bound = 5.0 * (p * (1.0 - p) / f64::from(n)).sqrt();
    assert!(
        (rate - p).abs() <= bound,
        "{what}: {:.2}% lost, asked {:.0}% ± {:.2}",
        rate * 100.0,
        p * 100.0,
        bound * 100.0
    );
}

#[test]
fn loss_on_a_cgroup_leaves_its_neighbour_alone() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let (a, b) = (Cgroup::new("cga").unwrap(), Cgroup::new("cgb").unwrap());
    daemon.ctl_ok(&[
        "apply", "--name", "lossy", "--cgroup", &a.path, "-i", &lab.a_if, "--loss", "30%", "-p", "udp", "--dport",
        "9100",
    ]);

    let got = from_cgroup(&lab, &a, addr(B4, 9100), N);
    assert_rate(N - got, N, 0.3, "cgroup A");
    let f = fault(&daemon, "lossy");
    // Every datagram of A's was the rule's, and its drops are exactly what went missing.
    assert_eq!((f["matched"].as_u64(), f["dropped"].as_u64()), (Some(u64::from(N)), Some(u64::from(N - got))));
    assert_eq!(from_cgroup(&lab, &b, addr(B4, 9100), N / 4), N / 4, "cgroup B lost");
    // Sockets of the test process (another cgroup) and IPv6 of B: untouched too.
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9100), N / 4).unwrap(), N / 4);
    assert_eq!(from_cgroup(&lab, &b, addr(B6, 9100), N / 4), N / 4, "cgroup B lost (IPv6)");
    assert_eq!(fault(&daemon, "lossy")["matched"].as_u64(), Some(u64::from(N)), "others were matched");

    daemon.ctl_ok(&["rm", "lossy"]);
    assert_eq!(from_cgroup(&lab, &a, addr(B4, 9100), N / 4), N / 4, "A after removal");
}

#[test]
fn a_partition_covers_the_cgroups_below_the_target() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let a = Cgroup::new("cga").unwrap();
    let early = a.child("early").unwrap();
    daemon.ctl_ok(&["apply", "--name", "cut", "--cgroup", &a.path, "-i", &lab.a_if, "--partition", "-p", "udp"]);
    assert_eq!(from_cgroup(&lab, &a, addr(B4, 9101), 500), 0);
    assert_eq!(from_cgroup(&lab, &early, addr(B4, 9101), 500), 0, "a cgroup below the target");
    // One made after the fault (a new container in a pod's cgroup): taken in within a second.
    let late = a.child("late").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(from_cgroup(&lab, &late, addr(B4, 9101), 500), 0, "a cgroup made after the fault");
    let other = Cgroup::new("cgo").unwrap();
    assert_eq!(from_cgroup(&lab, &other, addr(B4, 9101), 500), 500);
}

#[test]
fn ingress_faults_act_where_packets_reach_the_cgroups_sockets() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let (a, b) = (Cgroup::new("cga").unwrap(), Cgroup::new("cgb").unwrap());
    let deaf = [
        "apply",
        "--name",
        "deaf",
        "--cgroup",
        &a.path,
        "-i",
        &lab.a_if,
        "--direction",
        "ingress",
        "--loss",
        "30%",
        "-p",
        "udp",
    ];
    if !apply_if(&daemon, &daemon.abilities().cgroup_ingress, &deaf) {
        return;
    }
    let got = to_cgroup(&lab, &a, addr(A4, 9102), N);
    assert_rate(N - got, N, 0.3, "cgroup A (ingress)");
    let f = fault(&daemon, "deaf");
    assert_eq!((f["matched"].as_u64(), f["dropped"].as_u64()), (Some(u64::from(N)), Some(u64::from(N - got))));
    // The same port on the same host, another cgroup's socket: nothing lost.
    assert_eq!(to_cgroup(&lab, &b, addr(A4, 9102), N / 4), N / 4, "cgroup B lost");
    assert_eq!(to_cgroup(&lab, &b, addr(A6, 9102), N / 4), N / 4, "cgroup B lost (IPv6)");

    // Both directions of a partition: A neither sends nor receives; B does both.
    daemon.ctl_ok(&["rm", "deaf"]);
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "cut",
        "--cgroup",
        &a.path,
        "-i",
        &lab.a_if,
        "--direction",
        "both",
        "--partition",
    ]);
    assert_eq!(to_cgroup(&lab, &a, addr(A6, 9103), 300), 0);
    assert_eq!(from_cgroup(&lab, &a, addr(B6, 9103), 300), 0);
    assert_eq!(to_cgroup(&lab, &b, addr(A6, 9103), 300), 300);
    assert_eq!(from_cgroup(&lab, &b, addr(B6, 9103), 300), 300);
}

/// Natively, and as the 5.10 profile (no bpf_set_retval: EPERM only) and the 4.19 one (no
/// connect-fail at all) hold the daemon: what its status says decides what is checked.
#[test]
fn connect_fail_fails_the_cgroups_connects_only() {
    connect_fail_fails_the_cgroups_connects_only_as("");
}

#[test]
fn connect_fail_fails_the_cgroups_connects_only_5_10() {
    connect_fail_fails_the_cgroups_connects_only_as("kernel_profile = \"5.10\"");
}

#[test]
fn connect_fail_fails_the_cgroups_connects_only_4_19() {
    connect_fail_fails_the_cgroups_connects_only_as("kernel_profile = \"4.19\"");
}

fn connect_fail_fails_the_cgroups_connects_only_as(config: &str) {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, config).unwrap();
    let abilities = daemon.abilities();
    let (a, b) = (Cgroup::new("cga").unwrap(), Cgroup::new("cgb").unwrap());
    let (v4, v6) = (addr(B4, 9200), addr(B6, 9200));
    let listeners: Vec<TcpListener> =
        [v4, v6].into_iter().map(|at| lab.b.enter(move || TcpListener::bind(at)).unwrap().unwrap()).collect();
    for l in &listeners {
        l.set_nonblocking(true).unwrap();
    }
    let apply = ["apply", "--name", "refused", "--cgroup", &a.path, "--connect-fail", "-p", "tcp", "--dport", "9200"];
    let connected = |c: &Cgroup, dst| c.connect(&lab.a, dst).unwrap();
    if !abilities.connect_fail.available {
        // Refused with the reason the status gives, and nothing changed.
        let why = abilities.connect_fail.why_not.unwrap();
        let out = daemon.ctl(&apply);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&why), "expected '{why}' in: {stderr}");
        assert_eq!(daemon.list()["faults"], serde_json::json!([]));
        assert_eq!(connected(&a, v4), 0);
        return;
    }
    // No errno given: the best this kernel can do, as listed.
    let default = if abilities.connect_fail_any_errno.available { libc::ECONNREFUSED } else { libc::EPERM };
    assert_eq!(daemon.default_errno(), default);
    daemon.ctl_ok(&apply);
    assert_eq!(fault(&daemon, "refused")["spec"]["errno"], abilities.connect_fail_default_errno.as_str());
    let table = daemon.ctl_ok(&["list"]);
    assert!(table.contains(&format!("connect-fail {}", abilities.connect_fail_default_errno)), "{table}");

    assert_eq!(connected(&a, v4), default);
    assert_eq!(connected(&a, v6), default);
    // Failed before any packet left: nothing reached the listeners.
    for l in &listeners {
        assert!(l.accept().is_err(), "a connection reached the server");
    }
    let f = fault(&daemon, "refused");
    assert_eq!((f["matched"].as_u64(), f["dropped"].as_u64()), (Some(2), Some(2)));
    assert_eq!(connected(&b, v4), 0, "cgroup B could not connect");
    assert_eq!(connected(&b, v6), 0, "cgroup B could not connect (IPv6)");
    // Another port: A connects (refused by the host itself, as nothing listens there).
    assert_eq!(connected(&a, addr(B4, 9201)), libc::ECONNREFUSED);
    assert_eq!(fault(&daemon, "refused")["matched"].as_u64(), Some(2), "another port was matched");

    // Another errno, then removal restores connect().
    daemon.ctl_ok(&["rm", "refused"]);
    assert_eq!(connected(&a, v4), 0, "connect after removal");
    let timeout = ["apply", "--name", "timeout", "--cgroup", &a.path, "--connect-fail", "--errno", "ETIMEDOUT"];
    if abilities.connect_fail_any_errno.available {
        daemon.ctl_ok(&timeout);
        assert_eq!(connected(&a, v4), libc::ETIMEDOUT);
        assert_eq!(connected(&b, v4), 0);
        daemon.ctl_ok(&["rm", "timeout"]);
    } else {
        // Refused, saying why and what to give instead; nothing applied.
        let why = abilities.connect_fail_any_errno.why_not.unwrap();
        let out = daemon.ctl(&timeout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for expected in ["errno ETIMEDOUT", "EPERM only", why.as_str(), "give errno EPERM"] {
            assert!(!out.status.success() && stderr.contains(expected), "expected '{expected}' in: {stderr}");
        }
        assert_eq!(daemon.list()["faults"], serde_json::json!([]));
        assert_eq!(connected(&a, v4), 0);
        daemon.ctl_ok(&["apply", "--name", "eperm", "--cgroup", &a.path, "--connect-fail", "--errno", "EPERM"]);
        assert_eq!(connected(&a, v4), libc::EPERM);
        daemon.ctl_ok(&["rm", "eperm"]);
    }
    assert_eq!(connected(&a, v6), 0, "connect after removal");
    daemon.detached();
}

#[test]
fn a_fault_ends_when_its_cgroup_is_removed() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let abilities = daemon.abilities();
    let a = Cgroup::new("cga").unwrap();
    // Both directions where ingress cgroup faults can be, else egress only.
    let both =
        ["apply", "--name", "gone", "--cgroup", &a.path, "-i", &lab.a_if, "-d", "both", "--partition", "-p", "udp"];
    if !apply_if(&daemon, &abilities.cgroup_ingress, &both) {
        daemon.ctl_ok(&[&both[..7], &["-d", "egress", "--partition", "-p", "udp"]].concat());
    }
    // With the errno this kernel gives by default (EPERM only is enough).
    let connect = apply_if(
        &daemon,
        &abilities.connect_fail,
        &["apply", "--name", "gone-too", "--cgroup", &a.path, "--connect-fail"],
    );
    assert_eq!(from_cgroup(&lab, &a, addr(B4, 9104), 300), 0);
    chaos_tests::cgroup::remove(&a.dir);
    let mut ended = daemon.ended();
    ended.sort();
    let why = "its cgroup was removed".to_owned();
    let mut expected = vec![("gone".into(), why.clone(), 300)];
    if connect {
        expected.push(("gone-too".into(), why, 0));
    }
    assert_eq!(ended, expected);
    daemon.detached();
}

#[test]
fn bad_cgroup_faults_are_refused_by_name() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let a = Cgroup::new("cga").unwrap();
    let missing = format!("{}-missing", a.path);
    for (args, expected) in [
        (vec!["--cgroup", missing.as_str(), "-i", lab.a_if.as_str(), "--partition"], "cgroup: no cgroup"),
        (
            vec!["--cgroup", "relative/path", "-i", lab.a_if.as_str(), "--partition"],
            "cgroup: 'relative/path' is not a cgroup path",
        ),
        (
            vec!["--cgroup", a.path.as_str(), "-i", lab.a_if.as_str(), "--delay", "10ms", "--direction", "ingress"],
            "direction: ingress: a cgroup's ingress is where packets reach its sockets",
        ),
        // chaosctl's own check; the daemon's says "interface: is required".
        (vec!["--cgroup", a.path.as_str(), "--partition"], "--interface"),
        (vec!["--cgroup", a.path.as_str(), "--connect-fail", "--errno", "EWHAT"], "errno: 'EWHAT' is not an errno"),
        (vec!["--cgroup", a.path.as_str(), "--connect-fail", "--src", A4], "src: does not apply to connect-fail"),
    ] {
        let mut all = vec!["apply"];
        all.extend(args.iter().copied());
        let out = daemon.ctl(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: expected '{expected}' in {stderr}");
    }
    assert_eq!(daemon.list()["faults"], serde_json::json!([]));
}

/// The programs attached to a cgroup, by id, as the kernel lists them (`bpftool cgroup show`
/// without bpftool: BPF_PROG_QUERY with the effective flag off).
fn attached_to(cgroup: &Cgroup) -> usize {
    [libc::c_uint::from(0u8), 10, 11] // BPF_CGROUP_INET_INGRESS, INET4_CONNECT, INET6_CONNECT
        .iter()
        .map(|attach_type| chaos_tests::kernel::cgroup_programs(&cgroup.dir, *attach_type).unwrap().len())
        .sum()
}

/// Natively, and as the 5.10 profile holds the daemon (connect-fail with EPERM only): the
/// errno a fault was applied with is the one re-adopted.
#[test]
fn cgroup_faults_survive_a_daemon_crash_and_cleanup_takes_them_back() {
    cgroup_faults_survive_a_daemon_crash_as("");
}

#[test]
fn cgroup_faults_survive_a_daemon_crash_and_cleanup_takes_them_back_5_10() {
    cgroup_faults_survive_a_daemon_crash_as("kernel_profile = \"5.10\"");
}

fn cgroup_faults_survive_a_daemon_crash_as(config: &str) {
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start_with(&lab.a, config).unwrap();
    let abilities = daemon.abilities();
    let (a, b) = (Cgroup::new("cga").unwrap(), Cgroup::new("cgb").unwrap());
    // What is re-adopted here are the cgroup links of ingress and connect-fail faults: where
    // they cannot be, both are refused and there is nothing more to check.
    let cut = ["apply", "--name", "cut", "--cgroup", &a.path, "-i", &lab.a_if, "--direction", "both", "--partition"];
    let connect = ["apply", "--name", "refused", "--cgroup", &a.path, "--connect-fail"];
    if !apply_if(&daemon, &abilities.cgroup_ingress, &cut) | !apply_if(&daemon, &abilities.connect_fail, &connect) {
        return;
    }
    daemon.ctl_ok(&["rm", "refused"]);
    let unreachable = ["apply", "--name", "refused", "--cgroup", &a.path, "--connect-fail", "--errno", "EHOSTUNREACH"];
    // EHOSTUNREACH where the kernel can give it; else refused, and the default (EPERM) given.
    let errno = if abilities.connect_fail_any_errno.available {
        daemon.ctl_ok(&unreachable);
        libc::EHOSTUNREACH
    } else {
        let out = daemon.ctl(&unreachable);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("give errno EPERM"), "{stderr}");
        daemon.ctl_ok(&unreachable[..6]);
        libc::EPERM
    };
    let applied = fault(&daemon, "refused")["spec"]["errno"].clone();
    assert_eq!(attached_to(&a), 3, "ingress, connect4 and connect6");
    assert_eq!(attached_to(&b), 0);

    daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    // Killed: the pinned links keep the faults acting.
    assert_eq!(a.connect(&lab.a, addr(B4, 9300)).unwrap(), errno);
    assert_eq!(to_cgroup(&lab, &a, addr(A4, 9301), 300), 0);
    daemon.restart().unwrap();
    // Re-adopted: nothing attached twice, the faults still act, with the errno they were
    // applied with, and are listed.
    assert_eq!(attached_to(&a), 3);
    assert_eq!(a.connect(&lab.a, addr(B4, 9300)).unwrap(), errno);
    assert_eq!(fault(&daemon, "refused")["spec"]["errno"], applied);
    assert_eq!(to_cgroup(&lab, &a, addr(A4, 9301), 300), 0);
    assert_eq!(to_cgroup(&lab, &b, addr(A4, 9301), 300), 300);
    assert_eq!(daemon.list()["faults"].as_array().unwrap().len(), 2);

    // Killed again, then `chaos-daemon cleanup`: nothing of ours stays on the cgroup.
    daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = daemon.cleanup();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(attached_to(&a), 0, "left attached after cleanup");
    assert_eq!(to_cgroup(&lab, &a, addr(A4, 9301), 300), 300);
}

#[test]
fn on_a_host_without_cgroup2_the_daemon_mounts_its_own() {
    let lab = Lab::new().unwrap();
    let own = std::path::Path::new("/run/chaos-daemon-cgroup2");
    let mut daemon = Daemon::start_without_cgroup2(&lab.a).unwrap();
    let status = daemon.ctl_ok(&["status"]);
    assert!(status.contains("no cgroup2 mounted (cgroup v1 only)"), "{status}");
    let (a, b) = (Cgroup::new("cga").unwrap(), Cgroup::new("cgb").unwrap());
    // The path from the cgroup2 root, as /proc/PID/cgroup shows it, whatever the mount.
    daemon.ctl_ok(&["apply", "--name", "cut", "--cgroup", &a.path, "-i", &lab.a_if, "--partition", "-p", "udp"]);
    assert_eq!(from_cgroup(&lab, &a, addr(B4, 9105), 300), 0);
    assert_eq!(from_cgroup(&lab, &b, addr(B4, 9105), 300), 300);
    let status = daemon.ctl_ok(&["status"]);
    assert!(status.contains("cgroup2 at /run/chaos-daemon-cgroup2"), "{status}");
    // A clean exit unmounts it and removes what it made.
    assert!(daemon.stop().unwrap().success(), "{}", daemon.log());
    assert!(daemon.log().contains("unmounted the cgroup2 it mounted"), "{}", daemon.log());
    assert!(!own.exists(), "{} left behind", own.display());

    // Killed, its mount dies with its mount namespace but the directory stays: cleanup (in a
    // namespace of its own too) removes it.
    daemon.restart().unwrap();
    daemon.ctl_ok(&["apply", "--name", "cut", "--cgroup", &a.path, "-i", &lab.a_if, "--partition", "-p", "udp"]);
    daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(own.exists());
    let out = daemon.cleanup();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("removed directory /run/chaos-daemon-cgroup2"), "{stdout}");
    assert!(!own.exists(), "{} left behind", own.display());
}

#[test]
fn a_process_of_the_daemons_namespace_is_scoped_by_its_cgroup() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let (a, b) = (Cgroup::new("cga").unwrap(), Cgroup::new("cgb").unwrap());
    let resident = Resident::new(&lab.a, Some(&a)).unwrap();
    let pid = resident.pid().to_string();
    // The process shares the daemon's namespace (a host process, or a pod on the host's
    // network): only its cgroup's packets are cut, not the interface's.
    daemon.ctl_ok(&["apply", "--name", "by-pid", "--pid", &pid, "-i", &lab.a_if, "--partition", "-p", "udp"]);
    assert_eq!(from_cgroup(&lab, &a, addr(B4, 9106), 300), 0);
    assert_eq!(from_cgroup(&lab, &b, addr(B4, 9106), 300), 300);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9106), 300).unwrap(), 300);
    let out = daemon.ctl(&["apply", "--pid", &pid, "-i", &lab.a_if, "--duplicate", "5", "-d", "ingress"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("so the fault is limited to its cgroup, whose ingress can only be dropped"), "{stderr}");
    // It ends with the process.
    drop(resident);
    assert_eq!(daemon.ended(), vec![("by-pid".into(), "its process exited".into(), 300)]);
}
