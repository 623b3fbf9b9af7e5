//! A fault ends at its deadline, enforced in the kernel: with the daemon running, frozen
//! (SIGSTOP) or dead (SIGKILL), traffic flows again within 50 ms of the deadline, and not
//! before it.
//!
//! Measured with a stream of timestamped UDP datagrams (one per millisecond) through a 3-second
//! partition: every datagram sent between the fault taking effect and its deadline must be
//! dropped, and the first one through must have been sent less than 50 ms after the deadline.
//! Deadline and send times are both CLOCK_MONOTONIC, the clock the program reads.

use std::{net::SocketAddr, time::Duration};

use chaos_tests::{Daemon, Lab, lab, traffic};
use nix::sys::signal::Signal;

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Running,
    Stopped,
    Killed,
}

fn fault_ends_on_time(mode: State) {
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start(&lab.a).unwrap();
    let dst = SocketAddr::new(lab::B4.parse().unwrap(), 7100);
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
        "7100",
        "--for",
        "3s",
    ]);
    let in_effect = traffic::mono_ns();
    let list = daemon.list();
    let deadline = list["faults"][0]["deadline_ns"].as_u64().expect("a deadline");
    let remaining = deadline - in_effect;
    assert!(remaining > 2_500_000_000 && remaining <= 3_000_000_000, "deadline in {remaining} ns");

    match mode {
        State::Running => {}
        State::Stopped => daemon.signal(Signal::SIGSTOP).unwrap(),
        State::Killed => daemon.signal(Signal::SIGKILL).unwrap(),
    }
    let (sent, arrived) =
        traffic::udp_stream(&lab.a, &lab.b, dst, Duration::from_millis(1), deadline + 500_000_000).unwrap();
    let first = *arrived.iter().min().expect("traffic flows again after the deadline");
    let late_ms = (first as f64 - deadline as f64) / 1e6;
    eprintln!("{mode:?}: first datagram through was sent {late_ms:.3} ms after the deadline");
    assert!(first >= deadline, "a datagram sent {:.3} ms before the deadline got through", -late_ms);
    assert!(late_ms < 50.0, "traffic resumed {late_ms:.3} ms after the deadline");
    // Everything sent from then on arrives: the fault is over, not flickering.
    let after: Vec<u64> = sent.iter().copied().filter(|t| *t >= first).collect();
    assert_eq!(arrived.len(), after.len(), "datagrams lost after the deadline");
    assert!(sent.iter().filter(|t| **t < deadline).count() > 2000, "the stream covered the fault");

    match mode {
        State::Running => {}
        State::Stopped => daemon.signal(Signal::SIGCONT).unwrap(),
        State::Killed => daemon.restart().unwrap(),
    }
    // The daemon reaps the ended fault (at once when it was running or wakes up; at start
    // after a crash) and records it with its final counters.
    let mut tries = 0;
    while !daemon.list()["faults"].as_array().unwrap().is_empty() {
        tries += 1;
        assert!(tries < 100, "the ended fault is still listed: {}", daemon.list());
        std::thread::sleep(Duration::from_millis(20));
    }
    let history: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["history", "-o", "json"])).expect("history is JSON");
    let ended = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["ended"].as_array().cloned().unwrap_or_default())
        .find(|x| x["name"] == "cut")
        .unwrap_or_else(|| panic!("no end of 'cut' in the history: {history}"));
    assert_eq!(ended["reason"], "expired", "{ended}");
    let dropped = (sent.len() - arrived.len()) as u64;
    assert_eq!(ended["dropped"].as_u64(), Some(dropped), "{ended}");
}

#[test]
fn fault_ends_on_time_with_the_daemon_running() {
    fault_ends_on_time(State::Running);
}

#[test]
fn fault_ends_on_time_with_the_daemon_stopped() {
    fault_ends_on_time(State::Stopped);
}

#[test]
fn fault_ends_on_time_with_the_daemon_killed() {
    fault_ends_on_time(State::Killed);
}
