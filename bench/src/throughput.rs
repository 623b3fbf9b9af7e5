//! TCP bulk throughput over the lab's veth pair, one connection, with nothing attached and with
//! rules that do not match it: chaos-daemon's, then the same destinations as iptables DROP
//! rules and as ipsets (how Chaos Mesh and ChaosBlade partition). The cases take turns, round
//! after round, so that a drift of the machine spreads over all of them; each reports the
//! median of its rounds.

use std::{
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use chaos_tests::{Daemon, Lab, Netns, kernel, lab, stats, traffic};
use serde_json::{Value, json};

use crate::{Scale, faults};

const RULES: u32 = 10_000;

#[derive(Clone, Copy, PartialEq)]
enum Case {
    /// The daemon runs with no fault: it attaches nothing, so this is also "no program".
    Nothing,
    OneRule,
    ManyRules,
    Iptables,
    Ipset,
}

const CASES: [(Case, &str); 5] = [
    (Case::Nothing, "no program (daemon running, no fault: nothing attached)"),
    (Case::OneRule, "chaos-daemon, 1 non-matching rule (program attached)"),
    (Case::ManyRules, "chaos-daemon, 10,000 non-matching rules"),
    (Case::Iptables, "iptables, 10,000 DROP rules per direction"),
    (Case::Ipset, "ipset, 10,000 entries, 1 rule per direction"),
];

pub fn run(scale: Scale) -> anyhow::Result<Value> {
    let rounds = scale.pick(7, 2);
    let (warmup, window) = scale.pick(
        (Duration::from_millis(1000), Duration::from_secs(3)),
        (Duration::from_millis(300), Duration::from_millis(700)),
    );
    let lab = Lab::new()?;
    // "Nothing attached" is measured right after other cases: programs go at once, not after
    // the idle window that spares the next fault an attach (see the control section).
    let daemon = Daemon::start_with(&lab.a, "detach_after = \"0s\"")?;
    let dst = SocketAddr::new(lab::B4.parse().unwrap(), 5201);
    let mut samples = vec![Vec::new(); CASES.len()];
    for round in 0..rounds {
        for (i, &(case, name)) in CASES.iter().enumerate() {
            set(&lab, &daemon, case)?;
            let bps = traffic::tcp_goodput(&lab.a, &lab.b, dst, warmup, window)?;
            unset(&lab, &daemon, case)?;
            eprintln!("   round {round}: {name}: {:.2} Gbit/s", bps / 1e9);
            samples[i].push(bps as u64);
        }
    }
    let baseline = stats::quantile(&samples[0], 0.5) as f64;
    let cases: Vec<Value> = CASES
        .iter()
        .zip(&samples)
        .map(|(&(_, name), s)| {
            let median = stats::quantile(s, 0.5) as f64;
            json!({
                "case": name,
                "gbit_s": (median / 1e7).round() / 100.0,
                "ratio": (median / baseline * 1000.0).round() / 1000.0,
                "rounds_gbit_s": s.iter().map(|&x| (x as f64 / 1e7).round() / 100.0).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "rounds": rounds, "seconds": window.as_secs_f64(), "cases": cases }))
}

fn set(lab: &Lab, daemon: &Daemon, case: Case) -> anyhow::Result<()> {
    match case {
        Case::Nothing => {
            ensure!(kernel::attached(&lab.a, &lab.a_if)?.is_empty(), "a program is attached with no fault");
        }
        Case::OneRule => faults::apply(&daemon.socket, faults::non_matching(&lab.a_if, 1))?,
        Case::ManyRules => faults::apply(&daemon.socket, faults::non_matching(&lab.a_if, RULES))?,
        Case::Iptables => {
            let (v4, v6) = faults::iptables_rules(RULES);
            feed(&lab.a, "iptables-restore", &[], &v4)?;
            feed(&lab.a, "ip6tables-restore", &[], &v6)?;
        }
        Case::Ipset => {
            let (sets, v4, v6) = faults::ipset_rules(RULES, "cdbench");
            feed(&lab.a, "ipset", &["restore"], &sets)?;
            feed(&lab.a, "iptables-restore", &[], &v4)?;
            feed(&lab.a, "ip6tables-restore", &[], &v6)?;
        }
    }
    if matches!(case, Case::OneRule | Case::ManyRules) {
        ensure!(!kernel::attached(&lab.a, &lab.a_if)?.is_empty(), "the faults attached no program");
    }
    Ok(())
}

fn unset(lab: &Lab, daemon: &Daemon, case: Case) -> anyhow::Result<()> {
    match case {
        Case::Nothing => Ok(()),
        Case::OneRule | Case::ManyRules => faults::clear(&daemon.socket),
        Case::Iptables | Case::Ipset => {
            // iptables-restore without --noflush replaces the whole table: now empty.
            feed(&lab.a, "iptables-restore", &[], "*filter\nCOMMIT\n")?;
            feed(&lab.a, "ip6tables-restore", &[], "*filter\nCOMMIT\n")?;
            if case == Case::Ipset {
                feed(&lab.a, "ipset", &["destroy"], "")?;
            }
            Ok(())
        }
    }
}

/// Runs `program args` inside `ns` with `input` on its stdin.
pub fn feed(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
