//! Root's control socket while another user floods it: 2,000 idle connections from one
//! unprivileged peer, held open, with the daemon under the packaged unit's open-files limit;
//! root's `chaosctl status` timed before and meanwhile, and the daemon's log lines about it.

use std::{
    io::{Read as _, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use chaos_tests::{Daemon, Lab, daemon::bin};
use serde_json::{Value, json};

use crate::{Scale, faults};

/// nobody on Debian.
const NOBODY: u32 = 65534;
/// Connections the other user holds.
const HELD: usize = 2_000;

pub fn run(scale: Scale) -> anyhow::Result<Value> {
    let n = scale.pick(200, 20);
    let lab = Lab::new()?;
    let daemon = Daemon::start_with(&lab.a, "socket_mode = \"0666\"\nreaders = \"any\"")?;
    // The daemon's directory must be reachable by the other user to reach the socket.
    std::fs::set_permissions(&daemon.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let limit = unit_nofile()?;
    let pid = daemon.pid().context("the daemon is running")?.to_string();
    chaos_tests::run("prlimit", &["--pid", &pid, &format!("--nofile={limit}:{limit}")])?;
    let status = || -> anyhow::Result<u64> {
        let t = Instant::now();
        let out = Command::new(bin("chaosctl")).arg("--socket").arg(&daemon.socket).arg("status").output()?;
        ensure!(out.status.success(), "chaosctl status: {}", String::from_utf8_lossy(&out.stderr));
        Ok(t.elapsed().as_nanos() as u64)
    };
    let before: Vec<u64> = (0..n).map(|_| status()).collect::<anyhow::Result<_>>()?;
    let lines = || daemon.log().lines().filter(|l| l.contains("control socket")).count();
    let logged = lines();

    eprintln!("   {HELD} connections held by uid {NOBODY}");
    let mut holder = Command::new(std::env::current_exe()?);
    holder.args(["hold", "--count", &HELD.to_string()]).arg(&daemon.socket).stdin(Stdio::piped());
    holder.stdout(Stdio::piped());
    // SAFETY: setgroups, setgid and setuid are system calls; nothing is allocated.
    unsafe {
        holder.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = holder.spawn().context("starting the holder")?;
    let mut report = String::new();
    holder.stdout.take().context("its stdout")?.read_to_string(&mut report)?;
    let held: usize = report.trim().strip_prefix("held ").and_then(|n| n.parse().ok()).context("its report")?;
    let during: anyhow::Result<Vec<u64>> = (0..n).map(|_| status()).collect();
    drop(holder.stdin.take());
    holder.wait()?;
    let during = during?;
    Ok(json!({
        "held": held,
        "nofile": limit,
        "status_alone": faults::latency_summary(&before),
        "status_while_held": faults::latency_summary(&during),
        "log_lines": lines() - logged,
    }))
}

/// `LimitNOFILE=` of the packaged unit.
fn unit_nofile() -> anyhow::Result<u64> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/chaos-daemon.service");
    let text = std::fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("{} sets no LimitNOFILE", unit.display()))
}

/// The holder's side: `count` connections to `socket`, held until stdin closes; reports how many
/// it opened on stdout (then closes stdout, so the bench can read to its end).
pub fn hold(socket: &Path, count: usize) -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: one rlimit, valid for both calls; the soft limit is raised to the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        match UnixStream::connect(socket) {
            Ok(s) => held.push(s),
            Err(e) => bail!("connection {}: {e}", held.len()),
        }
    }
    let mut out = std::io::stdout();
    write!(out, "held {}", held.len())?;
    out.flush()?;
    // SAFETY: closing our own stdout, which nothing uses after this.
    unsafe { libc::close(1) };
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
