//! The guest's programs for its architecture: this host's debug build for its own, and for
//! another a release build for that architecture's static (musl) target, cross-linked as
//! `cargo xtask cross` sets it up (a release daemon starts in seconds under TCG, a debug one
//! takes ten or more).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::kernels::Arch;

pub struct Binaries {
    /// Holds chaos-daemon, chaosctl and vm-init.
    pub bin: PathBuf,
    /// Each test target of chaos-tests, by name.
    pub tests: BTreeMap<String, PathBuf>,
    /// Debug builds carry debug info worth stripping.
    pub strip: bool,
}

pub fn build(arch: Arch) -> anyhow::Result<Binaries> {
    if arch == Arch::host() {
        crate::build()?;
        let tests = test_executables(&[], &[])?;
        return Ok(Binaries { bin: crate::bin_dir(), tests, strip: true });
    }
    let target = match arch {
        Arch::Aarch64 => "aarch64-unknown-linux-musl",
        Arch::X86_64 => "x86_64-unknown-linux-musl",
    };
    // The daemon and CLI exactly as `cargo xtask cross` builds (and checks) them; then the init.
    let bin = crate::cross::run(target)?;
    let (_, env) = crate::cross::prepare(target)?;
    let mut build = Command::new(crate::cargo());
    build.args(["build", "--release", "--quiet", "--target", target, "-p", "xtask", "--bin", "vm-init"]);
    let status = build.envs(env.clone()).current_dir(crate::workspace()).status().context("running cargo build")?;
    if !status.success() {
        bail!("the {target} build of vm-init failed");
    }
    let tests = test_executables(&["--release", "--target", target], &env)?;
    Ok(Binaries { bin, tests, strip: false })
}

/// The executable of each test target of chaos-tests, by target name, from cargo's JSON.
fn test_executables(args: &[&str], env: &[(String, String)]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let out = Command::new(crate::cargo())
        .args(["test", "--quiet", "-p", "chaos-tests", "--no-run", "--message-format=json"])
        .args(args)
        .envs(env.iter().cloned())
        .current_dir(crate::workspace())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut exes = BTreeMap::new();
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let msg: serde_json::Value = serde_json::from_slice(line).context("cargo printed a line that is not JSON")?;
        let is_test = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (is_test, msg["target"]["name"].as_str(), msg["executable"].as_str()) {
            exes.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(exes)
}
