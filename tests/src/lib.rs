//! A two-host lab in network namespaces, the real daemon and CLI, traffic measured at the
//! receiver, and independent reads of kernel state. Every object made here is owned by a guard
//! whose `Drop` removes it, so a failing test leaves nothing behind.

pub mod cgroup;
pub mod containerd;
pub mod daemon;
pub mod dns;
pub mod http;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod stats;
pub mod traffic;

pub use daemon::Daemon;
pub use lab::Lab;
pub use netns::Netns;

use std::sync::atomic::{AtomicU32, Ordering};

/// A short name unique in this machine's namespace for this run: interface names have 15 bytes.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
