//! The netem backend gives every rule slot an HTB class of its own. 210 delay faults on one
//! interface, applied in one batch and then one by one, are all accepted, among them the one in
//! rule slot 204, whose class minor would be 0xcd (the root's own major, refused as a leaf
//! handle) were minors simply slot + 1. Its class exists, its packets are delayed by its own
//! delay, and `clear` takes every class away.
//!
//! Needs the netem backend: `cargo xtask vm-test netem-classes` runs it on a Debian 6.1 kernel
//! with `CHAOS_TEST_BACKEND=netem`; anywhere else it checks nothing and says so.

use std::{net::SocketAddr, time::Duration};

use chaos_tests::{
    Daemon, Lab, kernel, lab,
    stats::{ms, quantile},
    traffic,
};

const MS: u64 = 1_000_000;
const FAULTS: u16 = 210;
const FIRST_PORT: u16 = 20_000;
/// The slot whose minor used to be 0xcd.
const SLOT: u64 = 204;
/// Where its class is now: minors skip 0xcd.
const CLASS: &str = "cd:ce";
const LEAF: &str = "ce:";
/// Not matched by any fault.
const FREE_PORT: u16 = 19_999;
const ROUNDS: usize = 200;
const INTERVAL: Duration = Duration::from_millis(2);

/// Fault `i`'s delay: 10 to 50 ms, so that faults next to each other (and so their classes)
/// differ by at least 10 ms and a packet in a neighbour's class is told apart.
fn delay_ms(i: u16) -> u64 {
    10 * (1 + u64::from(i % 5))
}

fn name(i: u16) -> String {
    format!("d-{i}")
}

/// The index of the fault the daemon put in rule slot [`SLOT`], from its state file.
fn fault_in_slot(daemon: &Daemon) -> u16 {
    let state = state(daemon);
    let record = state["faults"].as_array().unwrap().iter().find(|f| f["slot"] == SLOT).expect("a fault in slot 204");
    let name = record["name"].as_str().unwrap();
    name.strip_prefix("d-").and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("slot {SLOT} holds '{name}'"))
}

/// The daemon's state as it reads it (its snapshot with its journal applied), as JSON.
fn state(daemon: &Daemon) -> serde_json::Value {
    let mut store = chaos_daemon::state::Store::open(&daemon.dir.join("state"), 1000).unwrap();
    serde_json::to_value(store.load().unwrap().expect("a state")).unwrap()
}

fn tc(lab: &Lab, what: &str) -> String {
    chaos_tests::run("tc", &["-n", &lab.a.name, what, "show", "dev", &lab.a_if]).unwrap()
}

/// Every fault listed and active, slot [`SLOT`]'s class and netem leaf present with its fault's
/// delay, one class per fault; then its packets measured: delayed by that fault's delay, and a
/// port no fault matches not at all.
fn check_applied(daemon: &Daemon, lab: &Lab, base: &[Vec<u64>], tol: u64, how: &str) {
    let faults = daemon.list()["faults"].as_array().unwrap().clone();
    assert_eq!(faults.len(), usize::from(FAULTS), "{how}: faults listed");
    for f in &faults {
        assert_eq!(f["state"], "active", "{how}: {f}");
    }
    let i = fault_in_slot(daemon);
    let classes = tc(lab, "class");
    let qdiscs = tc(lab, "qdisc");
    assert_eq!(
        classes.lines().filter(|l| l.starts_with("class htb cd:")).count(),
        usize::from(FAULTS),
        "{how}: {classes}"
    );
    assert!(
        classes.lines().any(|l| l.starts_with(&format!("class htb {CLASS} "))),
        "{how}: no class {CLASS}: {classes}"
    );
    let leaf = qdiscs
        .lines()
        .find(|l| l.starts_with(&format!("qdisc netem {LEAF} parent {CLASS} ")))
        .unwrap_or_else(|| panic!("{how}: no netem leaf {LEAF} under {CLASS}: {qdiscs}"));
    assert!(leaf.contains(&format!("delay {}ms", delay_ms(i))), "{how}: {} has {leaf}", name(i));

    let with = measure(lab, FIRST_PORT + i);
    // The free port, measured in the same rounds, shows the noise of this run.
    let tol = tol.max(tolerance(&with[1..2]));
    assert_shifted(&format!("{how}: slot {SLOT} ({})", name(i)), &base[0], &with[0], delay_ms(i) * MS, tol);
    assert_shifted(&format!("{how}: free port"), &base[1], &with[1], 0, tol);
}

/// Nothing lost, and the median moved by `by` within `tol`.
fn assert_shifted(what: &str, base: &[u64], with: &[u64], by: u64, tol: u64) {
    assert_within(what, base, with, by, tol, tol);
}

/// Nothing lost, and the median moved by `by`, at most `early` less and `late` more.
fn assert_within(what: &str, base: &[u64], with: &[u64], by: u64, early: u64, late: u64) {
    assert_eq!(with.len(), ROUNDS, "{what}: datagrams lost");
    let (b, w) = (quantile(base, 0.5), quantile(with, 0.5));
    let shift = w as i64 - b as i64;
    println!("{what}: median {} -> {}, expected a shift of {}", ms(b as f64), ms(w as f64), ms(by as f64));
    assert!(
        shift >= by as i64 - early as i64 && shift <= (by + late) as i64,
        "{what}: median {} -> {} (shift {}), expected a shift of {} ({} early to {} late)",
        ms(b as f64),
        ms(w as f64),
        ms(shift as f64),
        ms(by as f64),
        ms(early as f64),
        ms(late as f64)
    );
}

/// The baseline's noise (10th to 90th percentile) plus 1 ms of timer slack, as in delay.rs.
fn tolerance(base: &[Vec<u64>]) -> u64 {
    MS + base.iter().map(|b| quantile(b, 0.9) - quantile(b, 0.1)).max().unwrap()
}

/// One-way latencies to `port` and to [`FREE_PORT`] on b.
fn measure(lab: &Lab, port: u16) -> Vec<Vec<u64>> {
    let dsts = [port, FREE_PORT].map(|p| SocketAddr::new(lab::B4.parse().unwrap(), p));
    traffic::udp_latencies(&lab.a, &lab.b, &dsts, INTERVAL, ROUNDS).unwrap()
}

/// `clear` leaves no class and the qdiscs as they were.
fn check_cleared(daemon: &Daemon, lab: &Lab, before: &str, how: &str) {
    daemon.ctl_ok(&["clear"]);
    assert!(daemon.list()["faults"].as_array().unwrap().is_empty(), "{how}: faults left");
    assert_eq!(tc(lab, "class"), "", "{how}: classes left");
    assert_eq!(kernel::qdiscs(&lab.a, &lab.a_if), before, "{how}: qdiscs not restored");
}

#[test]
fn two_hundred_ten_delay_faults_each_have_a_class() {
    if std::env::var("CHAOS_TEST_BACKEND").as_deref() != Ok("netem") {
        eprintln!(
            "skipped: needs CHAOS_TEST_BACKEND=netem on a kernel with netem (`cargo xtask vm-test netem-classes`)"
        );
        return;
    }
    let lab = Lab::new().unwrap();
    let before = kernel::qdiscs(&lab.a, &lab.a_if);
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    // Any port's baseline stands for every other: nothing matches yet.
    let base = measure(&lab, FIRST_PORT);
    let tol = tolerance(&base);

    let mut file = String::new();
    for i in 0..FAULTS {
        file += &format!(
            "[[fault]]\nname = \"{}\"\ninterface = \"{}\"\naction = \"delay\"\ndelay = \"{}ms\"\nprotocol = \"udp\"\ndport = {}\n\n",
            name(i),
            lab.a_if,
            delay_ms(i),
            FIRST_PORT + i
        );
    }
    let path = daemon.dir.join("delays.toml");
    std::fs::write(&path, file).unwrap();
    daemon.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    check_applied(&daemon, &lab, &base, tol, "one batch");
    check_cleared(&daemon, &lab, &before, "one batch");

    for i in 0..FAULTS {
        let (delay, port) = (format!("{}ms", delay_ms(i)), (FIRST_PORT + i).to_string());
        let name = name(i);
        daemon.ctl_ok(&["apply", "--name", &name, "-i", &lab.a_if, "--delay", &delay, "-p", "udp", "--dport", &port]);
    }
    check_applied(&daemon, &lab, &base, tol, "one by one");
    check_cleared(&daemon, &lab, &before, "one by one");
}

/// A restarted daemon sets every class it adopts before its rules use it: the daemon before it
/// may have given that minor to another rule (as daemons did before minors skipped `cd`). Stood
/// for by swapping two delay faults' slots in the state file while the daemon is dead: each
/// fault's packets must keep its own delay, not take the one its new slot's class had.
#[test]
fn a_restarted_daemon_sets_the_classes_it_adopts() {
    if std::env::var("CHAOS_TEST_BACKEND").as_deref() != Ok("netem") {
        eprintln!(
            "skipped: needs CHAOS_TEST_BACKEND=netem on a kernel with netem (`cargo xtask vm-test netem-classes`)"
        );
        return;
    }
    let lab = Lab::new().unwrap();
    let before = kernel::qdiscs(&lab.a, &lab.a_if);
    let Some(mut daemon) = Daemon::with_test_backend(&lab) else { return };
    let (slow, fast) = (FIRST_PORT, FIRST_PORT + 1);
    let base = measure(&lab, slow);
    let tol = tolerance(&base);
    for (name, delay, port) in [("slow", "50ms", slow), ("fast", "10ms", fast)] {
        daemon.ctl_ok(&[
            "apply",
            "--name",
            name,
            "-i",
            &lab.a_if,
            "--delay",
            delay,
            "-p",
            "udp",
            "--dport",
            &port.to_string(),
        ]);
    }

    daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    // The state as the daemon reads it, edited into one snapshot (the journal goes).
    let path = daemon.dir.join("state/state.json");
    let mut state = state(&daemon);
    std::fs::remove_file(daemon.dir.join("state/journal.jsonl")).unwrap();
    let faults = state["faults"].as_array_mut().unwrap();
    assert_eq!(faults.len(), 2);
    let slots = (faults[0]["slot"].clone(), faults[1]["slot"].clone());
    assert_ne!(slots.0, slots.1);
    (faults[0]["slot"], faults[1]["slot"]) = (slots.1, slots.0);
    std::fs::write(&path, serde_json::to_string(&state).unwrap()).unwrap();
    daemon.restart().unwrap();
    assert_eq!(daemon.list()["faults"].as_array().unwrap().len(), 2, "the faults were not re-adopted");

    // What is checked is whose class a fault's packets take: its own delay, never the other's.
    // A netem timer can only fire late, and a loaded guest fired one 5 ms late in CI, so a
    // packet may come up to halfway to the other delay (20 ms) late, but not early.
    for (what, port, by) in [("slow", slow, 50 * MS), ("fast", fast, 10 * MS)] {
        let with = measure(&lab, port);
        let tol = tol.max(tolerance(&with[1..2]));
        assert_within(&format!("after the restart, {what}"), &base[0], &with[0], by, tol, 20 * MS);
    }
    check_cleared(&daemon, &lab, &before, "after the restart");
}
