//! Control-plane latency: from a request to the fault being in the kernel, and from its removal
//! to it being gone, through the socket and through `chaosctl`; next to it the same change with
//! the `iptables` command (and, for delay, in the VM, with `tc`). Each daemon operation is
//! checked right after its answer: the daemon's own pinned program, run on a matching packet
//! with BPF_PROG_TEST_RUN, must drop it after an apply and pass it after a removal.

use std::{net::IpAddr, os::fd::OwnedFd, process::Command, time::Instant};

use anyhow::{Context as _, bail, ensure};
use chaos_tests::{Daemon, Lab, daemon::bin, lab};
use serde_json::{Value, json};

use crate::{Scale, bpf, faults, packets};

pub fn run(scale: Scale) -> anyhow::Result<Value> {
    let ops = scale.pick(1000, 50);
    let lab = Lab::new()?;
    let mut rows = partitions(&lab, "", "TCX, idle programs kept for detach_after", ops, true)?;
    // What the idle window spares: a TCX attach and detach (each an RCU grace period) in every
    // request, as when the window has passed.
    rows.extend(partitions(&lab, "detach_after = \"0s\"", "TCX, attached and detached in the request", ops, false)?);
    // The attachment kernels before 6.6 get (Kylin's 4.19, UOS's 5.10): cls_bpf under clsact.
    rows.extend(partitions(&lab, "tc_attach = \"netlink\"", "cls_bpf", ops, false)?);
    let iptables = lab.a.enter(move || {
        eprintln!("   iptables");
        let rule = |op: &'static str| {
            let args = [op, "OUTPUT", "-d", lab::B4, "-j", "DROP"];
            move || run_ok(Command::new("iptables").args(args))
        };
        timed(ops, rule("-A"), rule("-D"))
    })??;
    rows.push(row("iptables -A / -D (one DROP rule)", &iptables));
    Ok(json!({ "ops": ops, "fault": "partition of one destination", "rows": rows }))
}

/// Rows for a daemon with `config`: cold through the socket, and if `full` also cold through
/// chaosctl, warm through both, and next to 9,999 other faults.
fn partitions(lab: &Lab, config: &str, attach: &'static str, ops: usize, full: bool) -> anyhow::Result<Vec<Value>> {
    let daemon = Daemon::start_with(&lab.a, config)?;
    let prog = bpf::pinned(&daemon.bpffs.join("prog_chaos_egress"))?;
    let (a, b): (IpAddr, IpAddr) = (lab::A4.parse().unwrap(), lab::B4.parse().unwrap());
    let check = Check { prog, frame: packets::frame(a, b, packets::Proto::Udp, 40000, 7001), ifindex: 0 };
    let spec = json!({ "name": "cp", "interface": lab.a_if, "action": "partition", "dst": lab::B4 });
    let flags = ["apply", "--name", "cp", "-i", &lab.a_if, "--partition", "--dst", lab::B4].map(str::to_owned);
    let iface = lab.a_if.clone();
    let socket = daemon.socket.clone();

    // Everything runs on a thread inside host a, whose device the check's ifindex names.
    let rows = lab.a.enter(move || -> anyhow::Result<Vec<Value>> {
        let mut check = check;
        check.ifindex = nix::net::if_::if_nametoindex(iface.as_str())?;
        let through_socket =
            |n| timed_pairs(n, &check, || faults::apply(&socket, vec![spec.clone()]), || faults::remove(&socket, "cp"));
        let ctl = |args: &[String]| run_ok(Command::new(bin("chaosctl")).arg("--socket").arg(&socket).args(args));
        let through_ctl = |n| timed_pairs(n, &check, || ctl(&flags), || ctl(&["rm".into(), "cp".into()]));
        // Cold: the interface has no other fault, so each apply attaches the programs and each
        // removal detaches them. Warm: another fault keeps them attached.
        let mut rows = Vec::new();
        eprintln!("   socket, cold, {attach}");
        rows.push(row(
            &format!("chaos-daemon, socket, cold (no other fault on the interface): {attach}"),
            &through_socket(ops)?,
        ));
        if !full {
            return Ok(rows);
        }
        eprintln!("   chaosctl, cold");
        rows.push(row(&format!("chaos-daemon, chaosctl, cold: {attach}"), &through_ctl(ops)?));
        faults::apply(&socket, faults::non_matching(&iface, 1))?;
        eprintln!("   socket, warm");
        rows.push(row("chaos-daemon, socket, warm: another fault on the interface", &through_socket(ops)?));
        eprintln!("   chaosctl, warm");
        rows.push(row("chaos-daemon, chaosctl, warm", &through_ctl(ops)?));
        faults::clear(&socket)?;
        eprintln!("   socket, with 9,999 other faults");
        faults::apply(&socket, faults::non_matching(&iface, 9_999))?;
        rows.push(row("chaos-daemon, socket, next to 9,999 other faults", &through_socket(ops)?));
        faults::clear(&socket)?;
        Ok(rows)
    })??;
    Ok(rows)
}

/// The delay fault applied and removed in the guest, next to `tc qdisc add ... netem` / `del`.
pub fn delay(scale: Scale, backend: &str) -> anyhow::Result<Value> {
    let ops = scale.pick(100, 10);
    let lab = Lab::new()?;
    let daemon = Daemon::start_with(&lab.a, &format!("delay_backend = \"{backend}\""))?;
    let spec = json!({ "name": "cp", "interface": lab.a_if, "action": "delay", "delay": "50ms", "dst": lab::B4 });
    let flags = ["apply", "--name", "cp", "-i", &lab.a_if, "--delay", "50ms", "--dst", lab::B4].map(str::to_owned);
    let (iface, socket) = (lab.a_if.clone(), daemon.socket.clone());
    lab.a.enter(move || -> anyhow::Result<Value> {
        eprintln!("   socket");
        let socket_times = timed(ops, || faults::apply(&socket, vec![spec.clone()]), || faults::remove(&socket, "cp"))?;
        eprintln!("   chaosctl");
        let ctl = |args: &[String]| run_ok(Command::new(bin("chaosctl")).arg("--socket").arg(&socket).args(args));
        let ctl_times = timed(ops, || ctl(&flags), || ctl(&["rm".into(), "cp".into()]))?;
        eprintln!("   tc");
        let tc_add = ["qdisc", "add", "dev", &iface, "root", "netem", "delay", "50ms"].map(str::to_owned);
        let tc_del = ["qdisc", "del", "dev", &iface, "root"].map(str::to_owned);
        let tc = timed(ops, || run_ok(Command::new("tc").args(&tc_add)), || run_ok(Command::new("tc").args(&tc_del)))?;
        Ok(json!({
            "ops": ops,
            "fault": "50ms delay to one destination",
            "rows": [
                row("chaos-daemon, socket", &socket_times),
                row("chaos-daemon, chaosctl", &ctl_times),
                row("tc qdisc add root netem / del", &tc),
            ],
        }))
    })?
}

/// The daemon's egress program, a packet the fault under test matches, and a's device.
struct Check {
    prog: OwnedFd,
    frame: Vec<u8>,
    ifindex: u32,
}

impl Check {
    /// Whether the program, with the maps as they are now, drops the packet: on egress it
    /// redirects it to no device (TC_ACT_REDIRECT, 7), so that the sender is not told.
    fn drops(&self) -> anyhow::Result<bool> {
        Ok(bpf::test_run(&self.prog, &self.frame, self.ifindex, 1)?.0 == 7)
    }
}

/// `n` applies and removals, each timed, each checked in the kernel after its answer.
fn timed_pairs(
    n: usize,
    check: &Check,
    apply: impl Fn() -> anyhow::Result<()>,
    remove: impl Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let (mut applied, mut removed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t = Instant::now();
        apply()?;
        applied.push(t.elapsed().as_nanos() as u64);
        ensure!(check.drops()?, "operation {i}: the fault was not in the kernel when the apply returned");
        let t = Instant::now();
        remove()?;
        removed.push(t.elapsed().as_nanos() as u64);
        ensure!(!check.drops()?, "operation {i}: the fault was still in the kernel when the removal returned");
    }
    Ok((applied, removed))
}

/// Same, for changes this benchmark has no check of its own for.
fn timed(
    n: usize,
    apply: impl Fn() -> anyhow::Result<()>,
    remove: impl Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let (mut applied, mut removed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        apply()?;
        applied.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        remove()?;
        removed.push(t.elapsed().as_nanos() as u64);
    }
    Ok((applied, removed))
}

fn row(how: &str, (applied, removed): &(Vec<u64>, Vec<u64>)) -> Value {
    json!({ "how": how, "apply": faults::latency_summary(applied), "remove": faults::latency_summary(removed) })
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
