//! `cargo xtask cross`: the userspace binaries built for another architecture (aarch64 by
//! default: Kunpeng and Phytium servers) or C library (musl: static), installing the rustup
//! target and the cross linker when missing, checked to be that architecture's executables
//! and to run (under qemu for another architecture). The eBPF object embedded in
//! them needs no cross build: the daemon's build.rs builds it on the host, and BPF bytecode is
//! the same for both (little-endian) architectures.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// A target this knows how to build for: its cross linker (none: the host's `cc` will do) and
/// the Debian packages that bring it, and its architecture.
pub struct Target {
    triple: &'static str,
    linker: Option<&'static str>,
    packages: &'static [&'static str],
    arch: object::Architecture,
    /// Where the target's dynamic loader and C library are (the cross packages' sysroot), for
    /// running a dynamically linked build under qemu.
    sysroot: Option<&'static str>,
}

const AARCH64_GCC: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"];

/// The musl targets give static executables, which run on any distribution whatever its glibc
/// (Kylin V10 and UOS 20 have 2.28, older than this build machine's): the packages use them.
const TARGETS: [Target; 4] = [
    Target {
        triple: "aarch64-unknown-linux-gnu",
        linker: Some("aarch64-linux-gnu-gcc"),
        packages: AARCH64_GCC,
        arch: object::Architecture::Aarch64,
        sysroot: Some("/usr/aarch64-linux-gnu"),
    },
    // Rust brings musl's C library and start files; the gcc only drives the link.
    Target {
        triple: "aarch64-unknown-linux-musl",
        linker: Some("aarch64-linux-gnu-gcc"),
        packages: AARCH64_GCC,
        arch: object::Architecture::Aarch64,
        sysroot: None,
    },
    Target {
        triple: "x86_64-unknown-linux-musl",
        linker: None,
        packages: &[],
        arch: object::Architecture::X86_64,
        sysroot: None,
    },
    Target {
        triple: "x86_64-unknown-linux-gnu",
        linker: None,
        packages: &[],
        arch: object::Architecture::X86_64,
        sysroot: None,
    },
];

/// The static (musl) target of this machine's architecture: what packages are built from.
pub fn host_static() -> &'static str {
    if cfg!(target_arch = "aarch64") { "aarch64-unknown-linux-musl" } else { "x86_64-unknown-linux-musl" }
}

/// Builds chaos-daemon and chaosctl for `target` (release) and returns where they are.
pub fn run(target: &str) -> anyhow::Result<PathBuf> {
    let (t, env) = prepare(target)?;
    let mut build = Command::new(crate::cargo());
    build.args(["build", "--release", "--quiet"]).args(crate::SHIPPED).args(["--bins", "--target", target]);
    if !build.envs(env).current_dir(crate::workspace()).status().context("running cargo build")?.success() {
        bail!("the {target} build failed");
    }
    let dir = crate::workspace().join("target").join(target).join("release");
    for bin in ["chaos-daemon", "chaosctl"] {
        let path = dir.join(bin);
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let file = object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
        use object::Object as _;
        if file.architecture() != t.arch {
            bail!("{} is built for {:?}, not {:?}", path.display(), file.architecture(), t.arch);
        }
        println!("{} ({:?}, {} KiB)", path.display(), t.arch, data.len() / 1024);
    }
    smoke(&dir, t)?;
    Ok(dir)
}

/// Installs the rustup target and the cross linker of `target` when missing; returns the
/// target and the environment cargo needs to link for it.
pub fn prepare(target: &str) -> anyhow::Result<(&'static Target, Vec<(String, String)>)> {
    let Some(t) = TARGETS.iter().find(|t| t.triple == target) else {
        let known: Vec<&str> = TARGETS.iter().map(|t| t.triple).collect();
        bail!("no cross build set up for {target} (known: {})", known.join(", "));
    };
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output()?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == target) {
        crate::bootstrap::run("rustup", &["target", "add", target])?;
    }
    let mut env = Vec::new();
    if let Some(linker) = t.linker {
        if Command::new(linker).arg("--version").output().is_err() {
            apt_install(t.packages)?;
        }
        env.push((format!("CARGO_TARGET_{}_LINKER", target.to_uppercase().replace('-', "_")), linker.to_owned()));
    }
    Ok((t, env))
}

/// Runs the built chaosctl (`--version`): natively, or under qemu's user-mode emulation for
/// another architecture, so a build that links but cannot start is caught here.
fn smoke(dir: &std::path::Path, t: &Target) -> anyhow::Result<()> {
    let arch = t.arch;
    let native =
        if cfg!(target_arch = "aarch64") { object::Architecture::Aarch64 } else { object::Architecture::X86_64 };
    let mut run = if arch == native {
        Command::new(dir.join("chaosctl"))
    } else {
        let qemu = match arch {
            object::Architecture::Aarch64 => "qemu-aarch64-static",
            _ => "qemu-x86_64-static",
        };
        if Command::new(qemu).arg("--version").output().is_err() {
            apt_install(&["qemu-user-static"])?;
        }
        let mut c = Command::new(qemu);
        if let Some(sysroot) = t.sysroot {
            // The dynamic loader and libraries of the target, as the cross packages install them.
            c.env("QEMU_LD_PREFIX", sysroot);
        }
        c.arg(dir.join("chaosctl"));
        c
    };
    let out = run.arg("--version").output().context("running the built chaosctl")?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.starts_with("chaosctl ") {
        bail!("the built chaosctl does not run: {}{version}", String::from_utf8_lossy(&out.stderr));
    }
    println!("runs: {}", version.trim());
    Ok(())
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    println!("installing {}", packages.join(" "));
    crate::bootstrap::run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(packages);
    crate::bootstrap::run("apt-get", &args)
}
