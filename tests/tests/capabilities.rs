//! The capabilities deploy/daemonset.yaml grants are enough, and each is needed: the daemon runs
//! with only CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_RESOURCE (no CAP_SYS_ADMIN: its
//! probe then runs on an IFB device of its own instead of a private namespace), applies and
//! removes faults that act on packets (on a cgroup's too), and leaves nothing behind; without
//! CAP_PERFMON it refuses
//! to start, naming what it needs, and leaves no pins.

use std::net::SocketAddr;

use chaos_tests::{Daemon, Lab, lab::B4, traffic};

// linux/capability.h
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A capability set of `/proc/PID/status` (`CapEff`, `CapBnd`...).
fn caps(pid: &str, set: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix(set)).unwrap().trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Non-empty pin directories of test daemons.
fn pinned() -> std::collections::BTreeSet<std::ffi::OsString> {
    std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("chaos-test-"))
        .filter(|e| std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some()))
        .map(|e| e.file_name())
        .collect()
}

#[test]
fn the_daemonset_capabilities_are_enough() {
    let lab = Lab::new().unwrap();
    let keep = vec![CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_RESOURCE];
    let mut daemon = Daemon::start_capped(&lab.a, "", None, Some(keep.clone())).unwrap();
    let pid = daemon.pid().unwrap().as_raw().to_string();
    // Those of them the test itself has (a sandbox may lack some, as CAP_SYS_RESOURCE here).
    let granted = keep.iter().fold(0u64, |m, c| m | 1 << c) & caps("self", "CapBnd:");
    assert_eq!(caps(&pid, "CapEff:"), granted, "the daemon runs with the DaemonSet's capabilities only");

    // The probe could not make a namespace: it says what the kernel has, not that it failed.
    let status = daemon.ctl_ok(&["status"]);
    assert!(!status.contains("cannot probe"), "{status}");
    // ... and took its device away again.
    assert!(!lab.a.ip(&["-o", "link"]).unwrap().contains("chaos-probe"));

    daemon.ctl_ok(&["apply", "--name", "cut", "-i", &lab.a_if, "--partition", "-p", "udp", "--dport", "9950"]);
    daemon.ctl_ok(&["apply", "--name", "twice", "-i", &lab.a_if, "--duplicate", "100", "-p", "udp", "--dport", "9951"]);
    let dst = |port| SocketAddr::new(B4.parse().unwrap(), port);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst(9950), 500).unwrap(), 0);
    let twice = traffic::udp_copies(&lab.a, &lab.b, dst(9951), 500, 16).unwrap();
    assert!(twice.copies.iter().all(|c| *c == 2), "duplicates did not arrive twice each");
    daemon.ctl_ok(&["rm", "cut", "twice"]);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst(9950), 500).unwrap(), 500);

    // Another namespace without setns (which needs CAP_SYS_ADMIN): found from outside, through
    // the one veth that leads into it. b's egress, as b sees it, arrives on a's interface.
    let b = format!("/run/netns/{}", lab.b.name);
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "from-b",
        "--netns",
        &b,
        "-i",
        &lab.b_if,
        "--partition",
        "-p",
        "udp",
        "--dport",
        "9952",
    ]);
    let to_a = SocketAddr::new(chaos_tests::lab::A4.parse().unwrap(), 9952);
    assert_eq!(traffic::udp(&lab.b, None, &lab.a, to_a, 500).unwrap(), 0);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst(9952), 500).unwrap(), 500);
    daemon.ctl_ok(&["rm", "from-b"]);

    // A cgroup: its egress at TC, its ingress and connect() through programs on the cgroup
    // (where this kernel, or the profile of the run, has cgroup links at all: cgroup_target.rs
    // checks the refusals).
    let abilities = daemon.abilities();
    if !(abilities.cgroup_ingress.available && abilities.connect_fail.available) {
        assert!(daemon.stop().unwrap().success(), "{}", daemon.log());
        return;
    }
    let cgroup = chaos_tests::cgroup::Cgroup::new("cgcap").unwrap();
    daemon.ctl_ok(&["apply", "--name", "cg", "--cgroup", &cgroup.path, "-i", &lab.a_if, "-d", "both", "--partition"]);
    daemon.ctl_ok(&["apply", "--name", "cf", "--cgroup", &cgroup.path, "--connect-fail", "--dport", "9953"]);
    let tx = std::net::UdpSocket::from(cgroup.socket(&lab.a, libc::AF_INET, libc::SOCK_DGRAM).unwrap());
    socket2::SockRef::from(&tx).bind(&SocketAddr::new("0.0.0.0".parse().unwrap(), 0).into()).unwrap();
    let rx = lab.b.enter(move || std::net::UdpSocket::bind(dst(9954))).unwrap().unwrap();
    assert_eq!(traffic::udp_via(tx, rx, dst(9954), 500).unwrap(), 0);
    // The best errno this kernel has (ECONNREFUSED, or EPERM before bpf_set_retval).
    assert_eq!(cgroup.connect(&lab.a, dst(9953)).unwrap(), daemon.default_errno());
    daemon.ctl_ok(&["rm", "cg", "cf"]);

    assert!(daemon.stop().unwrap().success(), "{}", daemon.log());
    assert!(!daemon.bpffs.exists(), "pins left in {}", daemon.bpffs.display());
}

#[test]
fn without_perfmon_it_refuses_to_start_and_leaves_nothing() {
    let lab = Lab::new().unwrap();
    let before = pinned();
    let err = Daemon::start_capped(&lab.a, "", None, Some(vec![CAP_BPF, CAP_NET_ADMIN, CAP_SYS_RESOURCE]))
        .err()
        .expect("the daemon started without CAP_PERFMON");
    let text = err.to_string();
    assert!(text.contains("CAP_PERFMON"), "{text}");
    // Its first start failed half-way: the maps it had pinned are gone again.
    let leftovers: Vec<_> = pinned().difference(&before).cloned().collect();
    assert!(leftovers.is_empty(), "pins left: {leftovers:?}");
}
