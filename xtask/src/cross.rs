//! `cargo xtask cross`: the userspace binaries built for another architecture (aarch64 by
//! default: Kunpeng and Phytium servers), installing the rustup target and the cross linker
//! when missing, and checked to be that architecture's executables. The eBPF object embedded in
//! them needs no cross build: the daemon's build.rs builds it on the host, and BPF bytecode is
//! the same for both (little-endian) architectures.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Targets this knows the cross linker and Debian packages of.
const TARGETS: [(&str, &str, &[&str], object::Architecture); 1] = [(
    "aarch64-unknown-linux-gnu",
    "aarch64-linux-gnu-gcc",
    &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
    object::Architecture::Aarch64,
)];

/// Builds chaos-daemon and chaosctl for `target` (release) and returns where they are.
pub fn run(target: &str) -> anyhow::Result<PathBuf> {
    let Some(&(_, linker, packages, arch)) = TARGETS.iter().find(|t| t.0 == target) else {
        let known: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
        bail!("no cross build set up for {target} (known: {})", known.join(", "));
    };
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output()?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == target) {
        crate::bootstrap::run("rustup", &["target", "add", target])?;
    }
    if Command::new(linker).arg("--version").output().is_err() {
        println!("installing the cross linker ({})", packages.join(" "));
        crate::bootstrap::run("apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq"];
        args.extend(packages);
        crate::bootstrap::run("apt-get", &args)?;
    }
    let env = format!("CARGO_TARGET_{}_LINKER", target.to_uppercase().replace('-', "_"));
    let status = Command::new(crate::cargo())
        .args(["build", "--release", "--quiet", "-p", "chaos-daemon", "--bins", "--target", target])
        .env(env, linker)
        .current_dir(crate::workspace())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("the {target} build failed");
    }
    let dir = crate::workspace().join("target").join(target).join("release");
    for bin in ["chaos-daemon", "chaosctl"] {
        let path = dir.join(bin);
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let file = object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
        use object::Object as _;
        if file.architecture() != arch {
            bail!("{} is built for {:?}, not {arch:?}", path.display(), file.architecture());
        }
        println!("{} ({arch:?}, {} KiB)", path.display(), data.len() / 1024);
    }
    Ok(dir)
}
