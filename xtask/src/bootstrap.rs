//! Installs the eBPF toolchain when it is missing: the nightly with rust-src (for
//! `-Z build-std=core`) and bpf-linker built against the nightly's own LLVM, whose major
//! version is read from `rustc +nightly -vV`, never assumed.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

pub fn ensure() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).context("rustup is needed to build the eBPF programs")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain with rust-src");
        run("rustup", &["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"])?;
    }
    let components = output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])?;
    }

    let verbose = output("rustc", &["+nightly", "-vV"])?;
    let llvm = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV printed no LLVM version")?
        .to_owned();
    let prefix =
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".local/share/bpf-linker-llvm");
    let marker = prefix.join("llvm-major");
    let installed_for = std::fs::read_to_string(&marker).ok();
    // bpf-linker finds libLLVM through `rustup run nightly`, as aya-build invokes it.
    let works = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works && installed_for.as_deref().is_none_or(|v| v.trim() == llvm) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against the nightly's LLVM {llvm} (about a minute)");
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so")))
        .with_context(|| format!("no libLLVM.so in {}", lib.display()))?;
    let link_dir = prefix.join("lib");
    std::fs::create_dir_all(&link_dir)?;
    // The prefix must outlive the build: bpf-linker keeps an rpath to it.
    for name in ["libLLVM.so".into(), libllvm.file_name().unwrap().to_owned()] {
        let link = link_dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }
    let status = Command::new("cargo")
        .args(["install", "--force", "bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm}"))
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        bail!("installing bpf-linker failed (see above); it needs crates.io and the nightly's libLLVM");
    }
    std::fs::write(&marker, &llvm)?;
    Ok(())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, its output shown, failing when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}
