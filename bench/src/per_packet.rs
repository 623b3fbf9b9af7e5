//! Per-packet cost of the TC programs, timed by the kernel with BPF_PROG_TEST_RUN: the daemon's
//! own pinned programs, on its own maps, with the rules it built from faults sent through its
//! socket. The baseline is an empty program run the same way (what the test-run harness itself
//! costs), so "above empty" is what chaos-daemon adds to a packet.

use std::net::IpAddr;

use anyhow::{Context as _, ensure};
use chaos_tests::{Daemon, Lab, lab, stats};
use serde_json::{Value, json};

use crate::{
    Scale, bpf, faults,
    packets::{Proto, frame},
};

/// TC_ACT_UNSPEC (a packet left alone), TC_ACT_SHOT (dropped on ingress) and TC_ACT_REDIRECT
/// (dropped on egress: redirected to no device, so the sender is not told; docs/faults.md).
const UNSPEC: i32 = -1;
const SHOT: i32 = 2;
const REDIRECT: i32 = 7;

struct Case {
    name: &'static str,
    /// Non-matching rules loaded for it.
    rules: u32,
    /// A 50% loss rule on the packets themselves.
    matching: bool,
    /// A loss rule on a cgroup (the packets are not its: test runs have no socket), so egress
    /// looks the packet's cgroup up: what every packet pays while a cgroup fault exists.
    cgroup: bool,
}

const CASES: &[Case] = &[
    Case { name: "no rules", rules: 0, matching: false, cgroup: false },
    Case { name: "1 rule", rules: 1, matching: false, cgroup: false },
    Case { name: "100 rules", rules: 100, matching: false, cgroup: false },
    Case { name: "10,000 rules", rules: 10_000, matching: false, cgroup: false },
    Case { name: "matching loss rule", rules: 0, matching: true, cgroup: false },
    Case { name: "a cgroup's loss rule", rules: 0, matching: false, cgroup: true },
];

pub fn run(scale: Scale) -> anyhow::Result<Value> {
    let repeat = scale.pick(1_000_000, 20_000);
    let runs: u32 = scale.pick(7, 3);
    let lab = Lab::new()?;
    let daemon = Daemon::start(&lab.a)?;
    let progs = [
        ("egress", bpf::pinned(&daemon.bpffs.join("prog_chaos_egress"))?),
        ("ingress", bpf::pinned(&daemon.bpffs.join("prog_chaos_ingress"))?),
    ];
    let empty = bpf::empty_program()?;
    let iface = lab.a_if.clone();
    let ifindex = lab.a.enter(move || nix::net::if_::if_nametoindex(iface.as_str()))??;
    // As the device sees them: a's packets to b leave on egress, b's replies come in on ingress.
    let packets: Vec<(String, Vec<u8>, Vec<u8>)> = [(lab::A4, lab::B4), (lab::A6, lab::B6)]
        .into_iter()
        .flat_map(|(a, b)| [Proto::Tcp, Proto::Udp].map(move |p| (a, b, p)))
        .map(|(a, b, p)| {
            let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
            let kind = format!("{}/{}", if a.is_ipv4() { "ipv4" } else { "ipv6" }, p.name());
            (kind, frame(a, b, p, 40000, 5201), frame(b, a, p, 5201, 40000))
        })
        .collect();

    // Times one program on each packet and hook: the median of `runs` test runs.
    let measure = move |empty_only: bool, expect: &[i32]| -> anyhow::Result<Value> {
        let mut out = serde_json::Map::new();
        for (hook, (name, fd)) in progs.iter().enumerate() {
            let mut by_packet = serde_json::Map::new();
            for (kind, egress, ingress) in &packets {
                let frame = if hook == 0 { egress } else { ingress };
                let fd = if empty_only { &empty } else { fd };
                let mut samples = Vec::new();
                for _ in 0..runs {
                    let (verdict, ns) = bpf::test_run(fd, frame, ifindex, repeat)?;
                    ensure!(expect.contains(&verdict), "{name} {kind}: verdict {verdict}, expected one of {expect:?}");
                    samples.push(u64::from(ns));
                }
                by_packet.insert(kind.clone(), json!(stats::quantile(&samples, 0.5)));
            }
            out.insert((*name).to_owned(), Value::Object(by_packet));
        }
        Ok(Value::Object(out))
    };
    let measure = std::sync::Arc::new(measure);
    let in_lab = |empty_only: bool, expect: &'static [i32]| {
        let m = measure.clone();
        lab.a.enter(move || m(empty_only, expect))?
    };

    let cgroup = chaos_tests::cgroup::Cgroup::new("cgbench")?;
    let mut cases = vec![json!({ "case": "empty program", "ns": in_lab(true, &[UNSPEC])? })];
    for case in CASES {
        faults::clear(&daemon.socket)?;
        let mut specs = faults::non_matching(&lab.a_if, case.rules);
        if case.matching {
            for b in [lab::B4, lab::B6] {
                specs.push(json!({
                    "interface": lab.a_if, "action": "loss", "loss": 50, "direction": "both", "dst": b,
                }));
            }
        }
        if case.cgroup {
            specs.push(json!({ "interface": lab.a_if, "cgroup": cgroup.path, "action": "loss", "loss": 50 }));
        }
        if !specs.is_empty() {
            faults::apply(&daemon.socket, specs)?;
        }
        eprintln!("   {}", case.name);
        let expect: &'static [i32] = if case.matching { &[UNSPEC, SHOT, REDIRECT] } else { &[UNSPEC] };
        cases.push(json!({ "case": case.name, "ns": in_lab(false, expect)? }));
        if case.matching {
            check_counted(&daemon, u64::from(repeat) * u64::from(runs))?;
        }
    }
    faults::clear(&daemon.socket)?;
    Ok(json!({ "repeat": repeat, "runs": runs, "program": "chaos_egress, chaos_ingress", "cases": cases }))
}

/// The matching rule really was the path measured: its counters saw the runs.
fn check_counted(daemon: &Daemon, at_least: u64) -> anyhow::Result<()> {
    let list = daemon.list();
    let matched: u64 = list["faults"]
        .as_array()
        .context("list has no faults")?
        .iter()
        .map(|f| f["matched"].as_u64().unwrap_or(0))
        .sum();
    ensure!(matched >= at_least, "the loss rules counted {matched} packets, fewer than the {at_least} runs");
    Ok(())
}
