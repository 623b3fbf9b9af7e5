//! `cargo xtask <task>`: everything a developer or CI runs, from a fresh machine.

mod bench;
mod bootstrap;
mod check_ebpf;
mod cross;
mod ctl_check;
mod demo;
mod package;
mod support_matrix;
mod vm;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker) when missing.
    Bootstrap,
    /// Build, check the eBPF object for old kernels, run every test (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build chaos-daemon and chaosctl for another architecture (installs the rustup target and
    /// the cross linker when missing) and check the executables are that architecture's.
    Cross {
        #[arg(long, default_value = "aarch64-unknown-linux-gnu")]
        target: String,
    },
    /// Build chaosctl from chaos-api alone with the stable toolchain and no bpf-linker in PATH
    /// (into target/ctl-check), and check chaos-api depends on nothing of the eBPF build.
    CtlCheck,
    /// Static check of the eBPF object: instruction counts and helpers against 4.19.
    CheckEbpf {
        /// Object to check (default: the one the last build embedded).
        object: Option<PathBuf>,
    },
    /// Two hosts in network namespaces, 20% UDP loss applied and removed with chaosctl.
    Demo,
    /// Benchmarks next to iptables, ipset and tc: per-packet cost, throughput, control-plane
    /// latency, footprint, accuracy. Writes target/bench/results.{json,md}.
    Bench {
        /// Small counts, for CI: checks the harness, the numbers are rough.
        #[arg(long)]
        quick: bool,
        /// Skip the VM part (delay and rate, both backends).
        #[arg(long)]
        no_vm: bool,
        /// Also replace the table in docs/benchmarks.md.
        #[arg(long)]
        docs: bool,
        /// Host sections to run (default: all): per-packet, throughput, control, footprint, accuracy.
        sections: Vec<String>,
    },
    /// Build the .deb and .rpm in target/package: binaries, systemd units, default config, man
    /// pages, completions, docs.
    Package {
        /// Build for this target (cross-compiled, as `cargo xtask cross` does).
        #[arg(long)]
        target: Option<String>,
        /// Then check them: the .rpm read back by rpm; the .deb installed here, its service run
        /// as the unit says, and purged (needs root and no chaos-daemon installed).
        #[arg(long)]
        check: bool,
    },
    /// Write the man pages (as the packages ship them) into target/man, from a build of this
    /// tree, and say how to read them.
    Man,
    /// End-to-end test suites inside a Debian kernel under qemu (installs qemu, downloads the
    /// kernel once); writes target/vm-test/results/<kernel>.json.
    VmTest {
        /// The kernel: 5.10, 6.1, 6.12, arm64-6.1, or all (one VM each).
        #[arg(long, default_value = vm::kernels::DEFAULT)]
        kernel: String,
        /// Minutes before a VM is stopped and the run fails.
        #[arg(long, default_value_t = 40)]
        timeout: u64,
        /// Suites to run (default: the kernel's own list; every suite on 6.1).
        #[arg(last = true)]
        suites: Vec<String>,
    },
    /// Write docs/support-matrix.md from the results `vm-test` left in target/vm-test/results.
    SupportMatrix,
}

fn main() {
    if let Err(e) = run(Cli::parse().task) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Bootstrap => bootstrap::ensure(),
        Task::Cross { target } => cross::run(&target).map(|_| ()),
        Task::CtlCheck => ctl_check::run(),
        Task::CheckEbpf { object } => {
            let object = match object {
                Some(o) => o,
                None => {
                    build()?;
                    check_ebpf::built_object()?
                }
            };
            check_ebpf::check(&object)
        }
        Task::Test { args } => {
            preflight("cargo xtask test")?;
            build()?;
            check_ebpf::check(&check_ebpf::built_object()?)?;
            // End-to-end tests share the machine's kernel: one at a time keeps each
            // measurement clean; unit tests are fast enough not to mind.
            let status = Command::new(cargo())
                .args(["test", "--quiet"])
                .args(&args)
                .args(["--", "--test-threads=1"])
                .env("CHAOS_BIN_DIR", bin_dir())
                .status()?;
            if !status.success() {
                bail!("tests failed");
            }
            if args.is_empty() {
                unprivileged_unit_tests()?;
            }
            Ok(())
        }
        Task::Demo => {
            preflight("cargo xtask demo")?;
            build()?;
            demo::run()
        }
        Task::Bench { quick, no_vm, docs, sections } => {
            bench::run(&bench::Options { quick, vm: !no_vm, docs, sections })
        }
        Task::Package { target, check } => package::run(target.as_deref(), check),
        Task::Man => {
            build()?;
            let dir = workspace().join("target/man");
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            let dir = dir.canonicalize()?;
            let pages = package::man_pages(&bin_dir(), &dir)?;
            for page in &pages {
                println!("{}", page.display());
            }
            let apply = dir.join("man1/chaosctl-apply.1");
            println!("read one with `man -l {}`, or all with MANPATH={}: man chaosctl", apply.display(), dir.display());
            Ok(())
        }
        Task::VmTest { kernel, timeout, suites } => vm::run(&kernel, &suites, Duration::from_secs(timeout * 60)),
        Task::SupportMatrix => support_matrix::run(),
    }
}

/// Root, iproute2 and the kernel features, checked before anything is built: one sentence each.
fn preflight(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} must run as root: it creates network namespaces and loads eBPF programs (try `sudo -E {what}`)");
    }
    for tool in ["ip", "tc"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!("`{tool}` is missing: install iproute2 (apt-get install iproute2)");
        }
    }
    use aya::{maps::MapType, programs::ProgramType, sys};
    if !sys::is_program_supported(ProgramType::SchedClassifier).unwrap_or(false) {
        bail!("this kernel cannot load TC eBPF programs (BPF_PROG_TYPE_SCHED_CLS), which chaos-daemon needs");
    }
    if !sys::is_map_supported(MapType::LpmTrie).unwrap_or(false) {
        bail!("this kernel has no LPM trie maps (4.11+), which chaos-daemon needs");
    }
    bootstrap::ensure()
}

/// The packages whose binaries ship, as cargo's arguments: chaos-daemon, and chaos-api's chaosctl.
const SHIPPED: [&str; 4] = ["-p", "chaos-daemon", "-p", "chaos-api"];

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> PathBuf {
    workspace().join("target/debug")
}

/// Builds the host crates; chaos-daemon's build.rs builds and embeds the eBPF object.
fn build() -> anyhow::Result<()> {
    let status = Command::new(cargo())
        .args(["build", "--quiet"])
        .current_dir(workspace())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// The daemon's unit tests (the engine against a model of the kernel among them) once more as
/// an unprivileged user (uid 65534), so that none comes to need root unnoticed.
fn unprivileged_unit_tests() -> anyhow::Result<()> {
    let out = Command::new(cargo())
        .args(["test", "--quiet", "-p", "chaos-daemon", "--lib", "--no-run", "--message-format=json"])
        .output()?;
    if !out.status.success() {
        bail!("building the unit tests failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| {
            m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "lib")) && m["executable"].is_string()
        })
        .and_then(|m| m["executable"].as_str().map(str::to_owned))
        .context("no unit test executable for chaos-daemon's library")?;
    println!("chaos-daemon's unit tests as uid 65534");
    // Its own working directory: the tests write only below the temporary directory.
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .arg("--quiet")
        .current_dir(std::env::temp_dir())
        .status()?;
    if !status.success() {
        bail!("the unit tests failed as an unprivileged user");
    }
    Ok(())
}
