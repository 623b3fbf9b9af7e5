//! Faults sent to the daemon through its socket, as a client would send them, and the
//! non-matching rule sets the benchmarks load.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, ensure};
use chaos_tests::{Daemon, http};
use serde_json::{Value, json};

/// `POST /v1/faults` with these specs (all or none); fails unless they were applied.
pub fn apply(socket: &Path, specs: Vec<Value>) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&json!({ "faults": specs }))?;
    let answer = http::request(socket, "POST", "/v1/faults", &body)?;
    ensure!(answer.status == 201, "apply: {} {}", answer.status, String::from_utf8_lossy(&answer.body));
    Ok(())
}

/// `DELETE /v1/faults/<name>`.
pub fn remove(socket: &Path, name: &str) -> anyhow::Result<()> {
    let answer = http::request(socket, "DELETE", &format!("/v1/faults/{name}"), b"")?;
    ensure!(answer.status == 200, "remove {name}: {} {}", answer.status, String::from_utf8_lossy(&answer.body));
    Ok(())
}

/// `DELETE /v1/faults`: every fault.
pub fn clear(socket: &Path) -> anyhow::Result<()> {
    let answer = http::request(socket, "DELETE", "/v1/faults", b"")?;
    ensure!(answer.status == 200, "clear: {} {}", answer.status, String::from_utf8_lossy(&answer.body));
    Ok(())
}

/// The `i`-th address no benchmark packet comes from or goes to: 10.201.0.0/16 for even `i`,
/// fd00:201::/112 for odd ones, so that a rule set is half IPv4, half IPv6.
pub fn elsewhere(i: u32) -> String {
    if i.is_multiple_of(2) {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 0, 0)) + i / 2).to_string()
    } else {
        format!("fd00:201::{:x}", i / 2)
    }
}

/// `n` partitions on `interface`, both directions, none of which a lab packet matches: the
/// rules an idle node carries for other workloads. The same destinations as
/// [`iptables_rules`].
pub fn non_matching(interface: &str, n: u32) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "name": format!("other-{i}"),
                "interface": interface,
                "action": "partition",
                "direction": "both",
                "dst": elsewhere(i),
            })
        })
        .collect()
}

/// The faults' kernel-side equivalent with iptables, as Chaos Mesh and ChaosBlade build a
/// partition: one DROP rule per address and direction (`iptables-restore` input for the
/// IPv4 half, `ip6tables-restore` for the IPv6 half).
pub fn iptables_rules(n: u32) -> (String, String) {
    let (mut v4, mut v6) = (String::from("*filter\n"), String::from("*filter\n"));
    for i in 0..n {
        let out = if i.is_multiple_of(2) { &mut v4 } else { &mut v6 };
        let addr = elsewhere(i);
        out.push_str(&format!("-A OUTPUT -d {addr} -j DROP\n-A INPUT -s {addr} -j DROP\n"));
    }
    v4.push_str("COMMIT\n");
    v6.push_str("COMMIT\n");
    (v4, v6)
}

/// The same addresses in two ipsets (`hash:net`, one per family) matched by one rule per
/// direction: how Chaos Mesh's partition matches many targets. `ipset restore` input, and the
/// iptables-restore input of the rules.
pub fn ipset_rules(n: u32, set: &str) -> (String, String, String) {
    let mut sets =
        format!("create {set}4 hash:net family inet maxelem {n}\ncreate {set}6 hash:net family inet6 maxelem {n}\n");
    for i in 0..n {
        sets.push_str(&format!("add {set}{} {}\n", if i.is_multiple_of(2) { 4 } else { 6 }, elsewhere(i)));
    }
    let rules = |family: u8| {
        format!(
            "*filter\n-A OUTPUT -m set --match-set {set}{family} dst -j DROP\n-A INPUT -m set --match-set {set}{family} src -j DROP\nCOMMIT\n"
        )
    };
    (sets, rules(4), rules(6))
}

/// The daemon's processes' resident memory in KiB (`VmRSS`).
pub fn rss_kib(daemon: &Daemon) -> anyhow::Result<u64> {
    let pid = daemon.pid().context("the daemon is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("no VmRSS")
}

/// CPU time (ns) each of the daemon's threads has run, by thread id, from their schedstat.
pub fn cpu_ns(daemon: &Daemon) -> anyhow::Result<std::collections::BTreeMap<u32, u64>> {
    let pid = daemon.pid().context("the daemon is not running")?;
    let mut threads = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        // A thread that ended since the listing has no schedstat any more.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let (Some(tid), Some(ns)) = (
            task.file_name().to_str().and_then(|t| t.parse().ok()),
            stat.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()),
        ) else {
            continue;
        };
        threads.insert(tid, ns);
    }
    Ok(threads)
}

/// CPU time used between two [`cpu_ns`] readings: by the threads alive at the second, from the
/// first (or from their start). A thread that ended in between (tokio ends idle blocking
/// threads after 10 s) is not counted after its last reading.
pub fn cpu_used(before: &std::collections::BTreeMap<u32, u64>, after: &std::collections::BTreeMap<u32, u64>) -> u64 {
    after.iter().map(|(tid, ns)| ns.saturating_sub(*before.get(tid).unwrap_or(&0))).sum()
}

/// Kernel memory the daemon's BPF maps hold (bytes; `memlock` of each map fd, once per map).
pub fn map_memory(daemon: &Daemon) -> anyhow::Result<u64> {
    let pid = daemon.pid().context("the daemon is not running")?;
    let mut seen = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else { continue };
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok());
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            seen.insert(id, bytes);
        }
    }
    Ok(seen.values().sum())
}

/// Nearest-rank quantiles and the mean of durations in ns, in µs, as JSON.
pub fn latency_summary(ns: &[u64]) -> Value {
    use chaos_tests::stats::{mean, quantile};
    let us = |x: f64| (x / 100.0).round() / 10.0;
    json!({
        "n": ns.len(),
        "p50_us": us(quantile(ns, 0.5) as f64),
        "p99_us": us(quantile(ns, 0.99) as f64),
        "max_us": us(*ns.iter().max().unwrap_or(&0) as f64),
        "mean_us": us(mean(ns)),
    })
}
