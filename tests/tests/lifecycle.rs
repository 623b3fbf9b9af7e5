//! Durations, limits, scheduled starts and experiments, end to end:
//! - a fault without a duration gets the configured maximum; a longer one, or `unlimited`
//!   where the config does not allow it, is refused by name and changes nothing;
//! - a scheduled experiment waits, then starts as a whole, and is removed as a whole;
//! - an experiment with one bad fault applies none;
//! - `clear` removes scheduled faults too;
//! - TCX programs stay attached, idle, for `detach_after` after the last fault, then go.

use std::{net::SocketAddr, time::Duration};

use chaos_api::api::{Faults, unix_ms};
use chaos_tests::{Daemon, Lab, kernel, lab, traffic};

#[test]
fn durations_and_limits_come_from_config() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, "max_duration = \"10m\"").unwrap();
    daemon.ctl_ok(&["apply", "--name", "default", "-i", &lab.a_if, "--loss", "5"]);
    let f = daemon.fault("default");
    let lasts = f.expires_at.unwrap() - f.starts_at;
    assert_eq!(lasts, 600_000, "no duration given: max_duration applies ({f:?})");
    let before = daemon.faults();

    for (args, error) in [
        (&["--for", "11m"][..], "duration: 660s is more than the limit of 600s (max_duration)"),
        (&["--for", "unlimited"][..], "duration: 'unlimited' is not allowed by this daemon's config (allow_unlimited)"),
        (&["--for", "soon"][..], "duration: 'soon' is not a duration"),
        (&["--start-after", "2d"][..], "start_after: is more than the limit of 86400s (max_start_after)"),
    ] {
        let mut all = vec!["apply", "-i", &lab.a_if, "--loss", "5"];
        all.extend_from_slice(args);
        let out = daemon.ctl(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(error), "{args:?}: {stderr}");
    }
    assert_eq!(daemon.faults(), before);

    let open = Daemon::start_with(&lab.a, "allow_unlimited = true").unwrap();
    open.ctl_ok(&["apply", "--name", "forever", "-i", "lo", "--loss", "5", "--for", "unlimited"]);
    // Absent from the JSON, not null or 0: docs/api.md says so.
    let f = &open.list()["faults"][0];
    assert!(f.get("expires_at").is_none() && f.get("deadline_ns").is_none(), "{f}");
    let f = open.fault("forever");
    assert_eq!((f.expires_at, f.deadline_ns), (None, None));
}

#[test]
fn scheduled_experiment_starts_and_ends_as_a_whole() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let file = daemon.dir.join("experiment.toml");
    std::fs::write(
        &file,
        format!(
            "experiment = \"db-outage\"\n\
             [[fault]]\nname = \"cut-db\"\ninterface = \"{i}\"\naction = \"partition\"\nprotocol = \"udp\"\ndport = 7300\nstart_after = \"1500ms\"\n\
             [[fault]]\nname = \"cut-cache\"\ninterface = \"{i}\"\naction = \"partition\"\nprotocol = \"udp\"\ndport = 7301\nstart_after = \"1500ms\"\n",
            i = lab.a_if
        ),
    )
    .unwrap();
    daemon.ctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let to = |port| SocketAddr::new(lab::B4.parse().unwrap(), port);
    let faults = daemon.faults();
    assert_eq!(faults.len(), 2);
    for f in &faults {
        assert_eq!((f.state.as_str(), f.experiment.as_deref()), ("scheduled", Some("db-outage")), "{f:?}");
    }
    // Not in effect before its start.
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(7300), 100).unwrap(), 100);

    let start = faults[0].starts_at;
    std::thread::sleep(Duration::from_millis(start.saturating_sub(unix_ms()) + 200));
    for f in daemon.faults() {
        assert_eq!(f.state.as_str(), "active", "{f:?}");
    }
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(7300), 100).unwrap(), 0);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(7301), 100).unwrap(), 0);

    // The name is taken while it runs.
    let again = daemon.ctl(&["apply", "-i", "lo", "--loss", "1", "-e", "db-outage"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("experiment: an experiment named 'db-outage' is running"));

    let removed = daemon.ctl_ok(&["rm", "-e", "db-outage"]);
    assert!(removed.contains("removed cut-db") && removed.contains("removed cut-cache"), "{removed}");
    assert_eq!(daemon.faults(), []);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(7300), 100).unwrap(), 100);
}

#[test]
fn experiment_with_a_bad_fault_applies_nothing_and_clear_takes_scheduled_faults() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let file = daemon.dir.join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "[[fault]]\ninterface = \"{i}\"\naction = \"partition\"\n\
             [[fault]]\ninterface = \"{i}\"\naction = \"loss\"\nloss = 5\nduration = \"-1s\"\n",
            i = lab.a_if
        ),
    )
    .unwrap();
    let out = daemon.ctl(&["apply", "-f", file.to_str().unwrap(), "-e", "half"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("fault[1].duration: '-1s' is not a duration"));
    assert_eq!(daemon.faults(), []);

    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--partition", "--start-after", "1h"]);
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--loss", "20"]);
    assert!(daemon.ctl_ok(&["clear"]).contains("removed 2 faults"));
    assert_eq!(daemon.faults(), []);
}

#[test]
fn a_new_fault_counts_from_zero_in_a_slot_used_before() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let to = SocketAddr::new(lab::B4.parse().unwrap(), 7310);
    let cut = ["-i", &lab.a_if, "--partition", "-p", "udp", "--dport", "7310"];
    daemon.ctl_ok(&[&["apply", "--name", "first"][..], &cut].concat());
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to, 16).unwrap(), 0);
    let removed: Faults = daemon.ctl_json(&["rm", "first"]);
    assert_eq!((removed.faults[0].name.as_str(), removed.faults[0].dropped), ("first", 16), "{removed:?}");

    // The next fault takes the freed slot: scheduled, it has counted nothing, in the list and
    // in the history when it is removed before it starts.
    daemon.ctl_ok(&[&["apply", "--name", "second", "--start-after", "60s"][..], &cut].concat());
    let f = daemon.fault("second");
    assert_eq!((f.state.as_str(), f.matched, f.dropped), ("scheduled", 0, 0));
    daemon.ctl_ok(&["rm", "second"]);
    let last = daemon.history().pop().expect("an event");
    let ended = &last.ended[0];
    assert_eq!((ended.name.as_str(), ended.matched, ended.dropped), ("second", 0, 0), "{last:?}");

    // Started, it counts its own packets from zero.
    daemon.ctl_ok(&[&["apply", "--name", "third"][..], &cut].concat());
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to, 5).unwrap(), 0);
    let f = daemon.fault("third");
    assert_eq!((f.matched, f.dropped), (5, 5), "{f:?}");
}

#[test]
fn a_reset_fault_says_it_matches_tcp() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "--name", "rst", "-i", &lab.a_if, "--reset", "--dport", "7311"]);
    let f = daemon.fault("rst");
    assert_eq!(f.spec.protocol.as_deref(), Some("tcp"), "{f:?}");
    let table = daemon.ctl_ok(&["list"]);
    let row = table.lines().find(|l| l.starts_with("rst")).unwrap();
    assert!(row.split_whitespace().any(|c| c == "tcp"), "{table}");
}

#[test]
fn an_interface_keeps_its_programs_idle_for_detach_after_then_runs_none() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, "detach_after = \"3s\"").unwrap();
    let iface = lab.a_if.as_str();
    let loss = ["apply", "--name", "l", "-i", iface, "--loss", "10", "-p", "udp", "--dport", "9000"];
    let attaches = || daemon.log().lines().filter(|l| l.contains(" attached")).count();
    daemon.ctl_ok(&loss);
    let after_first = attaches();
    assert!(after_first > 0, "the first fault attached nothing:\n{}", daemon.log());
    daemon.ctl_ok(&["rm", "l"]);
    let status: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
    let attachments = status["attachments"].as_array().unwrap();
    let tcx = attachments.iter().any(|a| a["mode"] == "tcx");
    if tcx {
        // TCX: kept, idle, and taken back by the next fault without a new attach.
        assert!(attachments.iter().all(|a| a["idle"] == true), "{status}");
        assert!(!kernel::attached(&lab.a, iface).unwrap().is_empty());
        daemon.ctl_ok(&loss);
        assert_eq!(attaches(), after_first, "the idle link was not reused:\n{}", daemon.log());
        daemon.ctl_ok(&["rm", "l"]);
    } else {
        // cls_bpf: detached at once.
        assert_eq!(status["attachments"], serde_json::json!([]), "{status}");
    }
    daemon.detached();
    assert_eq!(kernel::attached(&lab.a, iface).unwrap(), Vec::<u32>::new());
}

/// A batch's rule slots are written together (one call per map where the kernel has batches):
/// a slot a removed fault counted in starts again from zero, and every fault of the batch acts.
#[test]
fn a_batch_reuses_slots_with_fresh_counters() {
    const N: u32 = 50;
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let to_b = SocketAddr::new(lab::B4.parse().unwrap(), 7300);
    let to_other = SocketAddr::new(lab::B4_OTHER.parse().unwrap(), 7301);
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "first",
        "-i",
        &lab.a_if,
        "--loss",
        "100",
        "--protocol",
        "udp",
        "--dst",
        lab::B4,
    ]);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to_b, N).unwrap(), 0);
    assert_eq!(daemon.fault("first").matched, u64::from(N));
    daemon.ctl_ok(&["rm", "first"]);

    let file = daemon.dir.join("batch.toml");
    let batch = format!(
        "[[fault]]\nname = \"second\"\ninterface = \"{i}\"\naction = \"loss\"\nloss = 100\nprotocol = \"udp\"\ndst = \"{b}\"\n\n\
         [[fault]]\nname = \"third\"\ninterface = \"{i}\"\naction = \"partition\"\ndst = \"{o}\"\n",
        i = lab.a_if,
        b = lab::B4,
        o = lab::B4_OTHER
    );
    std::fs::write(&file, batch).unwrap();
    daemon.ctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    for name in ["second", "third"] {
        let f = daemon.fault(name);
        assert_eq!((f.matched, f.dropped), (0, 0), "a fresh fault, in a slot that counted before: {f:?}");
    }
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to_b, N).unwrap(), 0, "second drops");
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to_other, N).unwrap(), 0, "third cuts");
    assert_eq!(daemon.fault("second").matched, u64::from(N));
    assert_eq!(daemon.fault("third").matched, u64::from(N));
}
