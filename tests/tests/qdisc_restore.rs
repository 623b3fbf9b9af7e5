//! Acceptance 4: after delay faults go, the interface's qdiscs are what they were, compared as
//! `tc qdisc show` text: on removal, after SIGKILL and a restart, after SIGKILL and `chaos-daemon
//! cleanup`, and when the fault expired while the daemon was dead. The IFB made for ingress
//! goes too. A root qdisc a user made is put back as it was; a user's classful tree, which could
//! not be put back exactly, is refused and left alone. Needs a delay backend: see `delay.rs`.

use std::time::Duration;

use chaos_tests::{Daemon, Lab, kernel};
use nix::sys::signal::Signal;

fn ifbs(lab: &Lab) -> usize {
    lab.a.ip(&["-o", "link", "show"]).unwrap().lines().filter(|l| l.contains("chaos-ifb")).count()
}

/// Applies a delay both ways on a's interface and checks the qdiscs changed and an IFB exists.
fn apply(daemon: &Daemon, lab: &Lab, before: &str, extra: &[&str]) {
    let mut args = vec!["apply", "--name", "slow", "-i", &lab.a_if, "-d", "both", "--delay", "20ms", "--dport", "9300"];
    args.extend_from_slice(extra);
    daemon.ctl_ok(&args);
    assert_ne!(kernel::qdiscs(&lab.a, &lab.a_if), before, "the delay installed no qdisc");
    assert_eq!(ifbs(lab), 1, "no IFB for the ingress half");
}

fn assert_restored(lab: &Lab, before: &str, when: &str) {
    assert_eq!(kernel::qdiscs(&lab.a, &lab.a_if), before, "qdiscs {when}");
    assert_eq!(ifbs(lab), 0, "IFB left {when}");
}

#[test]
fn qdiscs_are_restored() {
    let lab = Lab::new().unwrap();
    let before = kernel::qdiscs(&lab.a, &lab.a_if);
    let Some(mut daemon) = Daemon::with_test_backend(&lab) else { return };

    apply(&daemon, &lab, &before, &[]);
    daemon.ctl_ok(&["rm", "slow"]);
    assert_restored(&lab, &before, "after rm");

    apply(&daemon, &lab, &before, &[]);
    daemon.signal(Signal::SIGKILL).unwrap();
    daemon.restart().unwrap();
    assert_eq!(daemon.list()["faults"].as_array().unwrap().len(), 1, "the fault was not re-adopted");
    daemon.ctl_ok(&["rm", "slow"]);
    assert_restored(&lab, &before, "after SIGKILL, restart and rm");

    apply(&daemon, &lab, &before, &[]);
    daemon.signal(Signal::SIGKILL).unwrap();
    let out = daemon.cleanup();
    assert!(out.status.success(), "cleanup: {}", String::from_utf8_lossy(&out.stderr));
    assert_restored(&lab, &before, "after SIGKILL and cleanup");
    daemon.restart().unwrap();

    apply(&daemon, &lab, &before, &["--for", "2s"]);
    daemon.signal(Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    daemon.restart().unwrap();
    assert!(daemon.list()["faults"].as_array().unwrap().is_empty(), "the expired fault is listed");
    assert_restored(&lab, &before, "after the fault expired while the daemon was dead");

    apply(&daemon, &lab, &before, &[]);
    daemon.stop().unwrap();
    assert_restored(&lab, &before, "after SIGTERM");

    // Nothing is held any more: the config decides the backend again at the next start.
    let backend = std::env::var("CHAOS_TEST_BACKEND").unwrap();
    let other = if backend == "edt" { "netem" } else { "edt" };
    let config = daemon.dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(&backend, other);
    std::fs::write(&config, text).unwrap();
    daemon.restart().unwrap();
    let status: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
    assert_eq!(status["delay_backend"], other, "{status}");
}

#[test]
fn a_users_root_qdisc_is_put_back() {
    let lab = Lab::new().unwrap();
    let tc = |args: &[&str]| {
        let mut all = vec!["-n", lab.a.name.as_str()];
        all.extend_from_slice(args);
        chaos_tests::run("tc", &all).unwrap()
    };
    tc(&[
        "qdisc", "add", "dev", &lab.a_if, "root", "handle", "7:", "tbf", "rate", "900mbit", "burst", "64kb", "latency",
        "40ms",
    ]);
    let before = kernel::qdiscs(&lab.a, &lab.a_if);
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    apply(&daemon, &lab, &before, &[]);
    daemon.ctl_ok(&["rm", "slow"]);
    assert_restored(&lab, &before, "after rm (a user's tbf root)");

    // A classful tree: refused, named, untouched.
    tc(&["qdisc", "replace", "dev", &lab.a_if, "root", "handle", "8:", "htb", "default", "1"]);
    tc(&["class", "add", "dev", &lab.a_if, "parent", "8:", "classid", "8:1", "htb", "rate", "100mbit"]);
    let before = kernel::qdiscs(&lab.a, &lab.a_if);
    let out = daemon.ctl(&["apply", "-i", &lab.a_if, "--delay", "20ms"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("htb") && stderr.contains(&lab.a_if), "{stderr}");
    assert_eq!(kernel::qdiscs(&lab.a, &lab.a_if), before, "a refused delay changed the qdiscs");
    assert!(daemon.list()["faults"].as_array().unwrap().is_empty());
}
