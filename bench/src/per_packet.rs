//! Per-packet cost of the TC programs, timed by the kernel with BPF_PROG_TEST_RUN: the daemon's
//! own pinned programs, on its own maps, with the rules it built from faults sent through its
//! socket. The baseline is an empty program run the same way (what the test-run harness itself
//! costs), so "above empty" is what chaos-daemon adds to a packet.
//!
//! With a dns fault on each hook, three packets more: an ordinary one (not to port 53: it never
//! reaches the DNS programs), a query for a name no pattern matches (through `chaos_dns`, and
//! `chaos_dns_prefix` when the rule has `prefix.*` patterns: it passes), and a query matched. An
//! answered query is rewritten in place, and a test run's repetitions share one packet: from the
//! second on they would time its answer (not a query, from port 53), which passes. So that row is
//! timed one run per call (the mean of the middle half of many calls), next to the empty program
//! timed the same way; a dns `drop` fault, which leaves the packet as it is, gives the matched path with
//! repetitions too.

use std::{net::IpAddr, os::fd::OwnedFd, sync::Arc};

use anyhow::{Context as _, ensure};
use chaos_tests::{
    Daemon, Lab,
    dns::{Dig, Rcode, decode_reply},
    lab, stats,
};
use serde_json::{Map, Value, json};

use crate::{
    Scale, bpf, faults,
    packets::{Proto, dns_query, frame, udp_payload},
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
    let lab = Lab::new()?;
    let daemon = Daemon::start(&lab.a)?;
    let iface = lab.a_if.clone();
    let timer = Arc::new(Timer {
        progs: [
            ("egress", bpf::pinned(&daemon.bpffs.join("prog_chaos_egress"))?),
            ("ingress", bpf::pinned(&daemon.bpffs.join("prog_chaos_ingress"))?),
        ],
        empty: bpf::empty_program()?,
        ifindex: lab.a.enter(move || nix::net::if_::if_nametoindex(iface.as_str()))??,
        repeat: scale.pick(1_000_000, 20_000),
        runs: scale.pick(7, 3),
        calls: scale.pick(100_000, 2_000),
    });
    // As the device sees them: a's packets to b leave on egress, b's replies come in on ingress.
    let packets = each_kind(|a, b, p| (frame(a, b, p, 40000, 5201), frame(b, a, p, 5201, 40000)));
    let measure = |empty_only: bool, packets: &[Packet], expect: Expect, timing: Timing| {
        let packets = packets.to_vec();
        in_lab(&lab, &timer, move |t| t.measure(empty_only, &packets, expect, timing))
    };

    let cgroup = chaos_tests::cgroup::Cgroup::new("cgbench")?;
    let mut cases = vec![json!({ "case": "empty program", "ns": measure(true, &packets, pass, Timing::Repeated)? })];
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
        let expect: Expect = if case.matching { |_, _| &[UNSPEC, SHOT, REDIRECT] } else { pass };
        cases.push(json!({ "case": case.name, "ns": measure(false, &packets, expect, Timing::Repeated)? }));
        if case.matching {
            check_counted(&daemon, u64::from(timer.repeat) * u64::from(timer.runs))?;
        }
    }

    // DNS: a query from a to b on egress (a's own lookups), from b to a on ingress (a serving).
    let queries = |name: &str| each_kind(|a, b, p| (dns_query(a, b, p, 40000, name), dns_query(b, a, p, 40000, name)));
    let (matched, other) = (queries(MATCHED), queries(OTHER));
    let repeated = u64::from(timer.repeat) * u64::from(timer.runs);

    // What a rule of the dns rules' shape costs a packet it does not match (any address, port
    // 53: the packet's addresses match, so its ports are looked up too), with no DNS program.
    faults::clear(&daemon.socket)?;
    let spec = json!({ "interface": lab.a_if, "action": "loss", "loss": 50, "direction": "both", "dport": 53 });
    faults::apply(&daemon.socket, vec![spec])?;
    let name = "port-53 loss rule, other packet";
    eprintln!("   {name}");
    cases.push(json!({ "case": name, "ns": measure(false, &packets, pass, Timing::Repeated)? }));
    ensure!(counted(&daemon)?.matched == 0, "{name}: the loss rule matched the packets");

    faults::clear(&daemon.socket)?;
    faults::apply(&daemon.socket, dns_faults(&lab.a_if, "error", &[SUFFIX]))?;
    // The rules send a matched query through the DNS programs to its answer: so a query that
    // passes below went through them too, and passed for its name alone.
    let answered = matched.clone();
    in_lab(&lab, &timer, move |t| t.check_answered(&answered, MATCHED))?;
    for (name, packets) in [("dns rule, other packet", &packets), ("dns rule, query not matched", &other)] {
        eprintln!("   {name}");
        let before = counted(&daemon)?;
        cases.push(json!({ "case": name, "ns": measure(false, packets, pass, Timing::Repeated)? }));
        ensure!(counted(&daemon)? == before, "{name}: the dns rules counted packets they should not have matched");
    }
    eprintln!("   dns rule, query matched, one run per call");
    let before = counted(&daemon)?;
    let ns = measure(false, &matched, dns_matched, Timing::OnePerCall)?;
    cases.push(json!({
        "case": "dns rule, query matched, one run per call (udp answered, tcp dropped)",
        "ns": ns, "calls": timer.calls, "baseline": ONE_PER_CALL_EMPTY,
    }));
    // Each hook: its two UDP queries answered, its two TCP ones dropped, every call.
    let (calls, after) = (u64::from(timer.calls), counted(&daemon)?);
    ensure!(
        after.answered - before.answered >= 4 * calls && after.dropped - before.dropped >= 4 * calls,
        "the dns rules answered {} and dropped {} queries, fewer than the {} of each sent",
        after.answered - before.answered,
        after.dropped - before.dropped,
        4 * calls,
    );
    let ns = measure(true, &matched, pass, Timing::OnePerCall)?;
    cases.push(json!({ "case": ONE_PER_CALL_EMPTY, "ns": ns, "calls": timer.calls, "baseline": ONE_PER_CALL_EMPTY }));

    faults::clear(&daemon.socket)?;
    faults::apply(&daemon.socket, dns_faults(&lab.a_if, "error", &[SUFFIX, PREFIX]))?;
    // A name only the prefix pattern matches is answered: the forward lookup is in the chain.
    let by_prefix = queries(BY_PREFIX);
    in_lab(&lab, &timer, move |t| t.check_answered(&by_prefix, BY_PREFIX))?;
    let name = "dns rule with a prefix.* pattern, query not matched";
    eprintln!("   {name}");
    let before = counted(&daemon)?;
    cases.push(json!({ "case": name, "ns": measure(false, &other, pass, Timing::Repeated)? }));
    ensure!(counted(&daemon)? == before, "{name}: the dns rules counted packets they should not have matched");

    faults::clear(&daemon.socket)?;
    faults::apply(&daemon.socket, dns_faults(&lab.a_if, "drop", &[SUFFIX]))?;
    let name = "dns drop rule, query matched";
    eprintln!("   {name}");
    let before = counted(&daemon)?;
    cases.push(json!({ "case": name, "ns": measure(false, &matched, dns_dropped, Timing::Repeated)? }));
    let dropped = counted(&daemon)?.dropped - before.dropped;
    ensure!(
        dropped >= 8 * repeated,
        "the dns drop rules dropped {dropped} queries, fewer than the {} sent",
        8 * repeated
    );

    faults::clear(&daemon.socket)?;
    Ok(json!({
        "repeat": timer.repeat, "runs": timer.runs, "program": "chaos_egress, chaos_ingress", "cases": cases,
    }))
}

/// The names queried: one `SUFFIX` matches, one only `PREFIX` does, one neither.
const SUFFIX: &str = "*.example.test";
const PREFIX: &str = "api.*";
const MATCHED: &str = "www.example.test";
const BY_PREFIX: &str = "api.other.test";
const OTHER: &str = "www.other.test";
const ONE_PER_CALL_EMPTY: &str = "empty program, one run per call";

/// A dns fault per hook on `interface` (port 53, TCP and UDP), with this reply (`error`:
/// NXDOMAIN) for these names.
fn dns_faults(interface: &str, reply: &str, domains: &[&str]) -> Vec<Value> {
    ["egress", "ingress"]
        .map(|direction| {
            let mut spec = json!({
                "name": format!("dns-{direction}"), "interface": interface, "action": "dns", "dns": reply,
                "domains": domains, "direction": direction,
            });
            if reply == "error" {
                spec["rcode"] = json!("NXDOMAIN");
            }
            spec
        })
        .to_vec()
}

/// One packet of each kind ("ipv4/tcp", ...) as each hook sees it: `make(a, b, protocol)` gives
/// the egress and ingress frames.
fn each_kind(make: impl Fn(IpAddr, IpAddr, Proto) -> (Vec<u8>, Vec<u8>)) -> Vec<Packet> {
    let mut out = Vec::new();
    for (a, b) in [(lab::A4, lab::B4), (lab::A6, lab::B6)] {
        let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
        for p in [Proto::Tcp, Proto::Udp] {
            let (egress, ingress) = make(a, b, p);
            let kind = format!("{}/{}", if a.is_ipv4() { "ipv4" } else { "ipv6" }, p.name());
            out.push(Packet { kind, egress, ingress });
        }
    }
    out
}

/// One kind of packet ("ipv4/udp") as each hook sees it.
#[derive(Clone)]
struct Packet {
    kind: String,
    egress: Vec<u8>,
    ingress: Vec<u8>,
}

/// How a row is timed.
#[derive(Clone, Copy)]
enum Timing {
    /// The median of `runs` test runs of `repeat` repetitions each (the kernel's mean).
    Repeated,
    /// The mean of the middle half of `calls` test runs of one repetition each: for a program
    /// that rewrites the packet, which repetitions would share.
    OnePerCall,
}

/// The verdicts a row's program may return, by hook and packet kind.
type Expect = fn(&str, &str) -> &'static [i32];

fn pass(_: &str, _: &str) -> &'static [i32] {
    &[UNSPEC]
}

/// A query a dns error rule matched: a UDP one answered (sent back: a redirect), a TCP one
/// dropped (unknown to the sender on egress).
fn dns_matched(hook: &str, kind: &str) -> &'static [i32] {
    if kind.ends_with("udp") { &[REDIRECT] } else { dns_dropped(hook, kind) }
}

fn dns_dropped(hook: &str, _: &str) -> &'static [i32] {
    if hook == "egress" { &[REDIRECT] } else { &[SHOT] }
}

/// The programs and what to time them with; used in the lab's namespace (the test runs'
/// `ifindex` is its device).
struct Timer {
    progs: [(&'static str, OwnedFd); 2],
    empty: OwnedFd,
    ifindex: u32,
    repeat: u32,
    runs: u32,
    calls: u32,
}

impl Timer {
    /// Times each hook's program (or the empty one) on each packet: `{hook: {kind: ns}}`.
    fn measure(&self, empty_only: bool, packets: &[Packet], expect: Expect, timing: Timing) -> anyhow::Result<Value> {
        let (count, repeat) = match timing {
            Timing::Repeated => (self.runs, self.repeat),
            Timing::OnePerCall => (self.calls, 1),
        };
        let mut out = Map::new();
        for (hook, (name, fd)) in self.progs.iter().enumerate() {
            let mut by_packet = Map::new();
            for p in packets {
                let frame = if hook == 0 { &p.egress } else { &p.ingress };
                let (fd, expect) =
                    if empty_only { (&self.empty, pass(name, &p.kind)) } else { (fd, expect(name, &p.kind)) };
                let mut samples = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let (verdict, ns) = bpf::test_run(fd, frame, self.ifindex, repeat)?;
                    let kind = &p.kind;
                    ensure!(expect.contains(&verdict), "{name} {kind}: verdict {verdict}, expected one of {expect:?}");
                    samples.push(u64::from(ns));
                }
                let ns = match timing {
                    Timing::Repeated => stats::quantile(&samples, 0.5),
                    Timing::OnePerCall => middle_mean(samples),
                };
                by_packet.insert(p.kind.clone(), json!(ns));
            }
            out.insert((*name).to_owned(), Value::Object(by_packet));
        }
        Ok(Value::Object(out))
    }

    /// Each hook's program answers the UDP queries for `qname` with NXDOMAIN (sent back whence
    /// they came) and drops the TCP ones.
    fn check_answered(&self, queries: &[Packet], qname: &str) -> anyhow::Result<()> {
        for (hook, (name, fd)) in self.progs.iter().enumerate() {
            for p in queries {
                let frame = if hook == 0 { &p.egress } else { &p.ingress };
                let (verdict, out) = bpf::test_run_out(fd, frame, self.ifindex)?;
                let kind = &p.kind;
                let expect = dns_matched(name, kind);
                ensure!(expect.contains(&verdict), "{name} {kind}: verdict {verdict}, expected one of {expect:?}");
                if kind.ends_with("udp") {
                    let reply = udp_payload(&out).context("the answer has no UDP payload")?;
                    let dig = decode_reply(reply, qname, 1).with_context(|| format!("{name} {kind}: the answer"))?;
                    ensure!(dig == Dig::error(Rcode::NxDomain), "{name} {kind}: answered {dig:?}, not NXDOMAIN");
                }
            }
        }
        Ok(())
    }
}

/// The mean of the middle half of `samples`, rounded: one run's time is a difference of two
/// clock readings, which step by 10 ns on some machines (a median would too), and a few runs
/// meet an interrupt.
fn middle_mean(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    let middle = &samples[samples.len() / 4..samples.len() - samples.len() / 4];
    stats::mean(middle).round() as u64
}

/// Runs `f` with the timer in the lab's namespace.
fn in_lab<T: Send + 'static>(
    lab: &Lab,
    timer: &Arc<Timer>,
    f: impl FnOnce(&Timer) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let timer = timer.clone();
    lab.a.enter(move || f(&timer))?
}

/// The counters of every fault, summed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Counted {
    matched: u64,
    dropped: u64,
    answered: u64,
}

fn counted(daemon: &Daemon) -> anyhow::Result<Counted> {
    let list = daemon.list();
    let faults = list["faults"].as_array().context("list has no faults")?;
    let sum = |field: &str| faults.iter().map(|f| f[field].as_u64().unwrap_or(0)).sum();
    Ok(Counted { matched: sum("matched"), dropped: sum("dropped"), answered: sum("answered") })
}

/// The matching rule really was the path measured: its counters saw the runs.
fn check_counted(daemon: &Daemon, at_least: u64) -> anyhow::Result<()> {
    let matched = counted(daemon)?.matched;
    ensure!(matched >= at_least, "the loss rules counted {matched} packets, fewer than the {at_least} runs");
    Ok(())
}
