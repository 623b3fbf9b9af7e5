//! Acceptance 5: on a kernel with no delay backend (this project's host kernel has neither fq
//! nor netem), a delay or bandwidth request is refused with a message naming the missing
//! kernel piece, and nothing changes: no fault, no qdisc, no map entry.

use chaos_tests::{Daemon, Lab, daemon::Snapshot, kernel};

#[test]
fn delay_is_refused_without_a_backend() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let status: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
    let backend = status["delay_backend"].as_str().unwrap().to_owned();
    if !backend.starts_with("none") {
        eprintln!("skipped: this kernel has a delay backend ({backend}); delay.rs covers it");
        return;
    }
    assert!(backend.contains("fq") && backend.contains("netem"), "{backend}");
    // Narrow, so that no stray packet (IPv6 router solicitations) moves its counters.
    daemon.ctl_ok(&["apply", "--name", "keep", "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9999"]);
    let qdiscs = kernel::qdiscs(&lab.a, &lab.a_if);
    let before = Snapshot::of(&lab, &daemon);
    for args in [
        vec!["--delay", "50ms"],
        vec!["--rate", "10mbit"],
        vec!["--delay", "10ms", "-d", "ingress"],
        vec!["--delay", "10ms", "--start-after", "1m"],
    ] {
        let mut cmd = vec!["apply", "-i", &lab.a_if];
        cmd.extend(args.iter().copied());
        let out = daemon.ctl(&cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("cannot run here") && stderr.contains("fq") && stderr.contains("netem"),
            "{args:?}: {stderr}"
        );
        assert!(Snapshot::of(&lab, &daemon) == before, "{args:?} changed the faults or the maps");
        assert_eq!(kernel::qdiscs(&lab.a, &lab.a_if), qdiscs, "{args:?} changed the qdiscs");
    }
}
