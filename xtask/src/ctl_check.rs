//! `cargo xtask ctl-check`: chaosctl builds from chaos-api alone with the stable toolchain and
//! nothing of the eBPF build in reach (no nightly, rust-src or bpf-linker), and chaos-api's
//! dependencies hold none of the kernel side. Fails as soon as chaos-api depends on the eBPF
//! build again, directly or through another crate.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Crates that mean the eBPF build (or the loader) is in chaos-api's dependencies.
const KERNEL_CRATES: [&str; 5] = ["aya", "aya-build", "aya-ebpf", "chaos-ebpf", "chaos-daemon"];

pub fn run() -> anyhow::Result<()> {
    let workspace = crate::workspace().canonicalize()?;
    let root = workspace.join("target/ctl-check");
    // A PATH of its own: the stable cargo and rustc, and the C toolchain's driver and linker
    // that every host build links with. bpf-linker, rustup and the nightly are out of reach.
    let bin = root.join("bin");
    if bin.exists() {
        std::fs::remove_dir_all(&bin)?;
    }
    std::fs::create_dir_all(&bin)?;
    for tool in ["cargo", "rustc"] {
        let out = Command::new("rustup").args(["which", "--toolchain", "stable", tool]).output();
        let out = out.context("running rustup which")?;
        if !out.status.success() {
            bail!("no stable {tool}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        link(Path::new(String::from_utf8(out.stdout)?.trim()), &bin.join(tool))?;
    }
    for tool in ["cc", "ld"] {
        link(&which(tool)?, &bin.join(tool))?;
    }
    let cargo = |args: &[&str]| {
        let mut c = Command::new(bin.join("cargo"));
        c.args(args)
            .current_dir(&workspace)
            .env("PATH", &bin)
            .env("RUSTUP_TOOLCHAIN", "stable")
            .env("CARGO_TARGET_DIR", root.join("target"))
            .env("RUSTC", bin.join("rustc"));
        // What the outer cargo (running xtask) set for itself must not steer this one.
        for var in ["CARGO", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
            c.env_remove(var);
        }
        c
    };

    let out = cargo(&["tree", "--quiet", "-p", "chaos-api", "-e", "normal,build", "--prefix", "none"])
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!("cargo tree -p chaos-api failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let tree = String::from_utf8(out.stdout)?;
    let found = kernel_crates(&tree);
    if !found.is_empty() {
        bail!("chaos-api depends on the kernel side ({}): chaosctl would need the eBPF toolchain", found.join(", "));
    }
    println!("cargo tree -p chaos-api: none of {}", KERNEL_CRATES.join(", "));

    let status =
        cargo(&["build", "--quiet", "-p", "chaos-api", "--bin", "chaosctl"]).status().context("running cargo build")?;
    if !status.success() {
        bail!("chaosctl does not build from chaos-api with the stable toolchain alone");
    }
    let chaosctl = root.join("target/debug/chaosctl");
    let out = Command::new(&chaosctl).arg("--version").output().context("running the built chaosctl")?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.starts_with("chaosctl ") {
        bail!("the built chaosctl does not run: {}{version}", String::from_utf8_lossy(&out.stderr));
    }
    println!("{} built with stable, without bpf-linker: {}", chaosctl.display(), version.trim());
    Ok(())
}

/// The kernel crates among `cargo tree --prefix none` lines (`name vX.Y.Z (path) (*)`).
fn kernel_crates(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| KERNEL_CRATES.contains(name))
        .map(String::from)
        .collect();
    found.sort();
    found.dedup();
    found
}

fn link(target: &Path, at: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::symlink(target, at).with_context(|| format!("linking {} to {}", at.display(), target.display()))
}

/// `tool`'s path in this process's PATH.
fn which(tool: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("`{tool}` is not in PATH: install a C toolchain (apt-get install gcc)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_crates_are_found_by_name_only() {
        let tree = "chaos-api v0.1.0 (/w/chaos-api)\nchaos-common v0.1.0 (/w/chaos-common)\naya v0.14.0\n\
                    aya-obj v0.2.1\nchaos-daemon v0.1.0 (/w/chaos-daemon) (*)\naya v0.14.0 (*)\n";
        assert_eq!(kernel_crates(tree), ["aya", "chaos-daemon"]);
        assert!(kernel_crates("chaos-api v0.1.0 (/w/chaos-api)\nchaos-common v0.1.0\n").is_empty());
    }
}
