//! A daemon that dies at any point of a change (apply, remove, clear, an expiry, a target's
//! end), as a SIGKILL would (`CHAOS_CRASH_AT`, see chaos-daemon's crashpoint module): after a
//! restart, the rules a packet can reach in the kernel are exactly those of the faults the
//! daemon lists; every fault acknowledged before is listed or recorded as ended, never both; a
//! fault whose removal was recorded never comes back; rules the state did not know are ended
//! and recorded.

use std::{collections::BTreeSet, time::Duration};

use chaos_tests::{Daemon, Lab, kernel, run, unique};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Apply,
    Remove,
    Clear,
    Expire,
    End,
}

/// Where each operation is cut short, in the order it passes the points.
fn points(op: Op) -> &'static [&'static str] {
    match op {
        Op::Apply => &["maps-written", "flipped", "kernel-changed", "journal-half", "recorded"],
        _ => &["journal-half", "removal-recorded", "maps-written", "flipped", "recorded"],
    }
}

#[test]
fn a_daemon_killed_inside_a_change_restarts_agreeing_with_the_kernel() {
    for op in [Op::Apply, Op::Remove, Op::Clear, Op::Expire, Op::End] {
        for point in points(op) {
            case(op, point);
        }
    }
}

/// A veth pair in the lab's host a (an interface a fault can outlive), removed when dropped.
struct Dummy {
    ns: String,
    name: String,
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = run("ip", &["-n", &self.ns, "link", "del", &self.name]);
    }
}

fn case(op: Op, point: &str) {
    eprintln!("{op:?} cut at {point}");
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start(&lab.a).unwrap();
    let name: String = unique("crash").chars().take(15).collect();
    let dummy = Dummy { ns: lab.a.name.clone(), name };
    let peer: String = unique("crashp").chars().take(15).collect();
    run("ip", &["-n", &dummy.ns, "link", "add", &dummy.name, "type", "veth", "peer", "name", &peer]).unwrap();
    run("ip", &["-n", &dummy.ns, "link", "set", &dummy.name, "up"]).unwrap();
    let partition = |name: &str, iface: &str, port: &str, more: &[&str]| {
        let mut args = vec!["apply", "--name", name, "-i", iface, "--partition", "-p", "udp", "--dport", port];
        args.extend_from_slice(more);
        daemon.ctl_ok(&args);
    };
    partition("keep", &lab.a_if, "9001", &[]);
    match op {
        Op::Expire => partition("gone", &lab.a_if, "9002", &["--duration", "3s"]),
        Op::End => partition("gone", &dummy.name, "9002", &[]),
        _ => partition("gone", &lab.a_if, "9002", &[]),
    }
    // The same faults, re-adopted by a daemon that dies at `point`.
    daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    daemon.env = vec![("CHAOS_CRASH_AT".into(), (*point).into())];
    daemon.restart().unwrap();
    let answered = match op {
        Op::Apply => daemon.ctl(&["apply", "--name", "new", "-i", &lab.a_if, "--partition", "--dport", "9003"]),
        Op::Remove => daemon.ctl(&["rm", "gone"]),
        Op::Clear => daemon.ctl(&["clear"]),
        // The daemon's own changes: its deadline, its interface deleted.
        Op::Expire => daemon.ctl(&["status"]),
        Op::End => {
            run("ip", &["-n", &dummy.ns, "link", "del", &dummy.name]).unwrap();
            daemon.ctl(&["status"])
        }
    };
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(137), "{op:?} never reached {point}:\n{}", daemon.log());
    if matches!(op, Op::Apply | Op::Remove | Op::Clear) {
        assert!(!answered.status.success(), "{op:?} at {point} was answered");
    }

    daemon.env.clear();
    daemon.restart().unwrap();
    let listed: Vec<(String, u32)> = daemon.list()["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_owned(), slot_of(&daemon, f["name"].as_str().unwrap())))
        .collect();
    let names: BTreeSet<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    // What a packet can reach is what the daemon lists: nothing more, nothing less.
    let reachable = kernel::reachable_rules(&daemon.bpffs).unwrap();
    let slots: BTreeSet<u32> = listed.iter().map(|(_, s)| *s).collect();
    assert_eq!(reachable.keys().copied().collect::<BTreeSet<_>>(), slots, "{op:?} at {point}: listed {listed:?}");
    assert!(reachable.values().all(|r| r.kind != 0), "{op:?} at {point}: a reachable slot without a rule");

    let history: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["history", "-o", "json"])).unwrap();
    let ended: Vec<String> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["ended"].as_array().into_iter().flatten().map(|x| x["name"].as_str().unwrap().to_owned()))
        .collect();
    // Every fault acknowledged is listed or ended, never both.
    for name in ["keep", "gone"] {
        let gone = ended.iter().any(|e| e == name);
        assert!(
            names.contains(name) != gone,
            "{op:?} at {point}: {name} listed {}, ended {gone}",
            names.contains(name)
        );
    }
    let removal_recorded = !matches!(point, "journal-half");
    match op {
        Op::Apply => {
            // Never acknowledged: listed only if the journal has it, else ended if the kernel
            // had it.
            let recorded = matches!(point, "recorded");
            assert_eq!(names.contains("new"), recorded, "{op:?} at {point}: {listed:?}");
            // Its rule was written before the journal line: unknown to the state, it is ended
            // and recorded by its slot.
            let unknown = ended.iter().any(|e| e.starts_with("slot-"));
            assert_eq!(unknown, !recorded, "{op:?} at {point}: unknown rules recorded: {ended:?}");
        }
        Op::Remove | Op::Clear | Op::Expire | Op::End => {
            // Once the journal has the removal, the fault is gone for good (and recorded by
            // name, not as an unknown rule).
            assert!(!ended.iter().any(|e| e.starts_with("slot-")), "{op:?} at {point}: {ended:?}");
            // A fault past its deadline or without its interface ends at the start anyway.
            let listed_still = !removal_recorded && matches!(op, Op::Remove | Op::Clear);
            assert_eq!(names.contains("gone"), listed_still, "{op:?} at {point}: {listed:?}");
            if op == Op::Clear {
                assert_eq!(names.contains("keep"), !removal_recorded, "{op:?} at {point}: {listed:?}");
            } else {
                assert!(names.contains("keep"), "{op:?} at {point}: {listed:?}");
            }
        }
    }
    drop(dummy);
}

/// A fault's rule slot, from the daemon's state as it reads it.
fn slot_of(daemon: &Daemon, name: &str) -> u32 {
    let mut store = chaos_daemon::state::Store::open(&daemon.dir.join("state"), 1000).unwrap();
    let state = store.load().unwrap().expect("a state");
    state.faults.iter().find(|f| f.name == name).expect("recorded").slot
}
