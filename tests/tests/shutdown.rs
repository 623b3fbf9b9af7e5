//! SIGTERM removes every fault and leaves no program, link, map, qdisc or pin behind: checked
//! by reading the kernel, not by asking the daemon. Both attach modes: TCX links, and cls_bpf
//! filters under a clsact qdisc the daemon adds (how kernels before 6.6 run); where the kernel
//! has no TCX, the refusal of `tc_attach = "tcx"`.

use std::net::SocketAddr;

use chaos_tests::{Daemon, Lab, kernel, lab, traffic};

fn sigterm_leaves_nothing_behind(mode: &str) {
    let lab = Lab::new().unwrap();
    let qdiscs_before = kernel::qdiscs(&lab.a, &lab.a_if);
    assert!(!qdiscs_before.contains("clsact"), "{qdiscs_before}");
    let mut daemon = Daemon::start_with(&lab.a, &format!("tc_attach = \"{mode}\"")).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--partition", "-d", "both", "--dst", lab::B4_OTHER]);
    daemon.ctl_ok(&["apply", "-i", "lo", "--loss", "50", "-p", "udp"]);

    let status: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
    for a in status["attachments"].as_array().unwrap() {
        assert_eq!(a["mode"], mode, "{status}");
    }
    if mode == "netlink" {
        assert!(kernel::qdiscs(&lab.a, &lab.a_if).contains("clsact"));
    }
    // The fault is in effect in this mode too.
    let dst = SocketAddr::new(lab::B4_OTHER.parse().unwrap(), 7001);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, dst, 100).unwrap(), 0);

    let mut programs = kernel::attached(&lab.a, &lab.a_if).unwrap();
    programs.extend(kernel::attached(&lab.a, "lo").unwrap());
    assert_eq!(programs.len(), 3, "ingress and egress on the veth, egress on lo: {programs:?}");
    let maps: Vec<u32> = programs.iter().flat_map(|p| kernel::maps_of(*p).unwrap()).collect();
    assert!(maps.len() >= 6, "{maps:?}");

    let status = daemon.stop().unwrap();
    assert!(status.success(), "chaos-daemon exited with {status}");

    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());
    assert_eq!(kernel::attached(&lab.a, "lo").unwrap(), Vec::<u32>::new());
    kernel::assert_unloaded(&programs, &maps);
    assert_eq!(kernel::qdiscs(&lab.a, &lab.a_if), qdiscs_before);
    assert!(!kernel::qdiscs(&lab.a, "lo").contains("clsact"));
    assert!(!daemon.socket.exists(), "the socket should be removed");
    // Its own bpffs directory (each test daemon has one), not the whole of bpffs: other runs
    // on the machine may have theirs.
    let pins: Vec<_> = std::fs::read_dir(&daemon.bpffs)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(pins.is_empty() && !daemon.bpffs.exists(), "pins left in {}: {pins:?}", daemon.bpffs.display());
}

/// Where the kernel has no TCX (as its status says), a daemon told to use it refuses to start.
#[test]
fn sigterm_leaves_nothing_behind_tcx() {
    let lab = Lab::new().unwrap();
    if Daemon::tcx_or_refused(&lab.a, "") {
        sigterm_leaves_nothing_behind("tcx");
    }
}

/// The refusal itself, on any kernel: the 5.10 profile holds TCX back as 5.10 lacks it. The
/// refused start leaves nothing pinned.
#[test]
fn tc_attach_tcx_is_refused_where_tcx_is_lacking() {
    let lab = Lab::new().unwrap();
    assert!(!Daemon::tcx_or_refused(&lab.a, "kernel_profile = \"5.10\""));
    let daemon = Daemon::unstarted(&lab.a, "kernel_profile = \"5.10\"\ntc_attach = \"tcx\"", None).unwrap();
    let out = daemon.serve_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("holds back TCX links"), "{stderr}");
    assert!(!daemon.bpffs.exists(), "pins left in {}", daemon.bpffs.display());
}

#[test]
fn sigterm_leaves_nothing_behind_netlink() {
    sigterm_leaves_nothing_behind("netlink");
}
