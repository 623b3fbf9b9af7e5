//! This host's packages, as CI's fresh machine has them: installs, with one `apt-get update`
//! when the package lists are missing or stale. (Kernels and other releases' packages come
//! from `aptroot`.)

use std::{process::Command, sync::Once};

use anyhow::{Context as _, bail};

/// Runs `apt-get update` once per run.
pub fn update() -> anyhow::Result<()> {
    static DONE: Once = Once::new();
    let mut result = Ok(());
    DONE.call_once(|| {
        eprintln!("xtask: apt-get update");
        result = run(Command::new("apt-get").args(["update", "-qq"]));
    });
    result
}

/// Installs `package` unless `program` runs.
pub fn ensure_program(program: &str, package: &str) -> anyhow::Result<()> {
    if Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("xtask: installing {package} (for {program})");
    install(package)
}

pub fn install(package: &str) -> anyhow::Result<()> {
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install()
        .or_else(|_| {
            update()?;
            install()
        })
        .with_context(|| format!("installing {package} (this needs root and Debian's package mirrors)"))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(drop)
}
