//! A killed daemon's faults keep running from their pins; a restarted daemon re-adopts them
//! (listed, still in effect, counters continuing); `chaos-daemon cleanup` then removes every
//! program, link, map, pin and qdisc, checked by reading the kernel, not by asking the daemon.
//! Both attach modes: TCX links (pinned) and cls_bpf filters (recorded in the state file); where
//! the kernel has no TCX, the refusal of `tc_attach = "tcx"`.

use std::net::SocketAddr;

use chaos_tests::{Daemon, Lab, kernel, lab, traffic};
use nix::sys::signal::Signal;

fn matched(daemon: &Daemon, name: &str) -> u64 {
    daemon.fault(name).matched
}

fn killed_daemon_is_readopted_then_cleaned_up(mode: &str) {
    let lab = Lab::new().unwrap();
    let qdiscs_before = kernel::qdiscs(&lab.a, &lab.a_if);
    let mut daemon = Daemon::start_with(&lab.a, &format!("tc_attach = \"{mode}\"")).unwrap();
    let cut = SocketAddr::new(lab::B4.parse().unwrap(), 7200);
    let send = |n| traffic::udp(&lab.a, None, &lab.b, cut, n).unwrap();
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "cut",
        "-i",
        &lab.a_if,
        "--partition",
        "-p",
        "udp",
        "--dport",
        "7200",
        "--for",
        "2m",
    ]);
    daemon.ctl_ok(&["apply", "--name", "lossy", "-i", &lab.a_if, "--loss", "50", "-d", "both", "--dport", "7201"]);
    assert_eq!(send(200), 0);
    assert_eq!(matched(&daemon, "cut"), 200);
    let mut programs = kernel::attached(&lab.a, &lab.a_if).unwrap();
    assert_eq!(programs.len(), 2, "ingress and egress: {programs:?}");
    let mut maps: Vec<u32> = programs.iter().flat_map(|p| kernel::maps_of(*p).unwrap()).collect();

    daemon.signal(Signal::SIGKILL).unwrap();
    assert_eq!(send(200), 0, "the fault must outlive the daemon");
    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), programs);

    daemon.restart().unwrap();
    let names: Vec<String> = daemon.faults().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["cut", "lossy"]);
    assert_eq!(matched(&daemon, "cut"), 400, "counters continue across the restart");
    assert_eq!(send(200), 0);
    assert_eq!(matched(&daemon, "cut"), 600);
    // The new daemon's programs took the old links' places; the maps are the same ones.
    let adopted = kernel::attached(&lab.a, &lab.a_if).unwrap();
    assert_eq!(adopted.len(), 2, "{adopted:?}");
    let mut adopted_maps: Vec<u32> = adopted.iter().flat_map(|p| kernel::maps_of(*p).unwrap()).collect();
    adopted_maps.sort_unstable();
    adopted_maps.dedup();
    maps.sort_unstable();
    maps.dedup();
    assert_eq!(adopted_maps, maps, "the pinned maps are re-adopted");
    programs.extend(adopted);

    daemon.signal(Signal::SIGKILL).unwrap();
    let out = daemon.cleanup();
    assert!(out.status.success(), "cleanup failed: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());
    assert!(!daemon.bpffs.exists(), "pins left in {}", daemon.bpffs.display());
    kernel::assert_unloaded(&programs, &maps);
    assert_eq!(kernel::qdiscs(&lab.a, &lab.a_if), qdiscs_before);
    assert_eq!(send(200), 200, "traffic flows after cleanup");
}

/// Where the kernel has no TCX (as its status says), a daemon told to use it refuses to start.
#[test]
fn killed_daemon_is_readopted_then_cleaned_up_tcx() {
    let lab = Lab::new().unwrap();
    if Daemon::tcx_or_refused(&lab.a, "") {
        killed_daemon_is_readopted_then_cleaned_up("tcx");
    }
}

#[test]
fn killed_daemon_is_readopted_then_cleaned_up_netlink() {
    killed_daemon_is_readopted_then_cleaned_up("netlink");
}
