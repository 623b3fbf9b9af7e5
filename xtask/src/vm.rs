//! `cargo xtask vm-test`: end-to-end test binaries run inside a Debian 6.1 kernel under qemu,
//! for what this host's kernel cannot show (no sch_netem or sch_fq here; no TCX there, so the
//! daemon's cls_bpf attachment is what runs). The guest's init is `src/bin/vm-init.rs`.

pub mod apt;
mod cpio;
mod initramfs;
mod kernel;
mod modules;
pub mod qemu;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A test target of the chaos-tests crate, run in the guest with `--test-threads=1`, then
/// `args`, with `env` added to its environment.
pub struct Suite {
    pub name: &'static str,
    pub target: &'static str,
    pub args: &'static [&'static str],
    pub env: &'static [(&'static str, &'static str)],
}

/// Test output shown even when the tests pass.
const NOCAPTURE: &[&str] = &["--nocapture"];

/// What `cargo xtask vm-test` runs, in this order (`-- <names>` picks some). A test target run
/// under several backends is one line each, with the backend in its environment.
const SUITES: &[Suite] = &[
    Suite { name: "loss", target: "loss", args: &[], env: &[] },
    Suite { name: "partition", target: "partition", args: &[], env: &[] },
    // Egress drops unknown to the sender: the redirect to no device, through cls_bpf.
    Suite { name: "like-the-wire", target: "like_the_wire", args: NOCAPTURE, env: &[] },
    // The packet-fault catalog through cls_bpf (the attachment of kernels before 6.6).
    Suite { name: "loss-model", target: "loss_model", args: NOCAPTURE, env: &[] },
    Suite { name: "duplicate", target: "duplicate", args: &[], env: &[] },
    Suite { name: "corrupt", target: "corrupt", args: &[], env: &[] },
    Suite { name: "reset", target: "reset", args: &[], env: &[] },
    Suite { name: "gso", target: "gso", args: &[], env: &[] },
    Suite { name: "cgroup", target: "cgroup_target", args: &[], env: &[] },
    // Its delay example is measured only where a delay backend exists: here.
    Suite { name: "chaos-mesh", target: "chaos_mesh", args: &[], env: &[] },
    // Where the kernel has no TCX (6.1), the variants forcing it check that the daemon refuses.
    Suite { name: "restart", target: "restart", args: &[], env: &[] },
    Suite { name: "shutdown", target: "shutdown", args: &[], env: &[] },
    // Delay and bandwidth, once per backend: netem stands for the 4.19 tier. Their measurements
    // are printed (docs/delay.md quotes them).
    Suite { name: "delay-edt", target: "delay", args: NOCAPTURE, env: &[("CHAOS_TEST_BACKEND", "edt")] },
    Suite { name: "delay-netem", target: "delay", args: NOCAPTURE, env: &[("CHAOS_TEST_BACKEND", "netem")] },
    Suite { name: "rate-edt", target: "rate", args: NOCAPTURE, env: &[("CHAOS_TEST_BACKEND", "edt")] },
    Suite { name: "rate-netem", target: "rate", args: NOCAPTURE, env: &[("CHAOS_TEST_BACKEND", "netem")] },
    Suite { name: "reorder-edt", target: "reorder", args: NOCAPTURE, env: &[("CHAOS_TEST_BACKEND", "edt")] },
    Suite { name: "reorder-netem", target: "reorder", args: NOCAPTURE, env: &[("CHAOS_TEST_BACKEND", "netem")] },
    Suite { name: "qdisc-edt", target: "qdisc_restore", args: &[], env: &[("CHAOS_TEST_BACKEND", "edt")] },
    Suite { name: "qdisc-netem", target: "qdisc_restore", args: &[], env: &[("CHAOS_TEST_BACKEND", "netem")] },
    // A class for every rule slot on the netem backend (slot 204's minor is not cd).
    Suite { name: "netem-classes", target: "netem_classes", args: NOCAPTURE, env: &[("CHAOS_TEST_BACKEND", "netem")] },
];

/// Loaded in the guest before the suites, with their dependencies: the lab's veth pairs,
/// clsact (sch_ingress) and cls_bpf for the daemon, and what delay faults build on.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "cls_matchall",
    "cls_u32",
    "act_mirred",
    "ifb",
    "sch_prio",
    "sch_htb",
    "sch_tbf",
    "sch_netem",
    "sch_fq",
];

/// A suite still running after this is killed by the init, so the others still run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Where things are in the guest.
pub const GUEST_BIN: &str = "/chaos/bin";
const GUEST_TESTS: &str = "/tests";
const GUEST_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let suites = select(names)?;
    crate::bootstrap::ensure()?;
    crate::build()?;
    let executables = test_executables()?;
    let mut runs = Vec::new();
    for &suite in &suites {
        let exe = executables.get(suite.target).with_context(|| {
            let known: Vec<&str> = executables.keys().map(String::as_str).collect();
            format!(
                "suite {}: chaos-tests has no test target '{}' (it has: {})",
                suite.name,
                suite.target,
                known.join(", ")
            )
        })?;
        let mut args = vec!["--test-threads=1".to_owned()];
        args.extend(suite.args.iter().map(|a| a.to_string()));
        runs.push(GuestRun {
            name: suite.name.into(),
            exe: exe.clone(),
            guest: format!("{GUEST_TESTS}/{}", suite.target),
            args,
            env: suite.env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        });
    }
    let outcome = boot(&runs, &crate::bin_dir(), timeout)?;
    report(&suites, &outcome, started.elapsed())
}

/// A program the guest's init runs (its output on the console), with `CHAOS_BIN_DIR` and
/// `env` in its environment.
pub struct GuestRun {
    pub name: String,
    /// On the host.
    pub exe: PathBuf,
    /// Where it goes in the guest.
    pub guest: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Boots the guest with the daemon, CLI and init from `bin` (a cargo target directory) and
/// `runs`, and returns what its console said.
pub fn boot(runs: &[GuestRun], bin: &std::path::Path, timeout: Duration) -> anyhow::Result<qemu::Outcome> {
    apt::ensure_program(qemu::QEMU, "qemu-system-x86")?;
    apt::ensure_program("objcopy", "binutils")?;
    let kernel = kernel::ensure()?;
    println!("== guest kernel: {} {}", kernel.package, kernel.version);
    let dir = crate::workspace().join("target/vm-test");
    let initrd = dir.join("initramfs.cpio");
    let size = build_initramfs(&kernel, bin, runs, &dir.join("stage"), &initrd)?;
    println!("== initramfs: {} MB; booting under qemu (TCG)", size >> 20);
    qemu::run(&kernel.vmlinuz, &initrd, timeout)
}

fn select(names: &[String]) -> anyhow::Result<Vec<&'static Suite>> {
    if names.is_empty() {
        return Ok(SUITES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            SUITES.iter().find(|s| s.name == n).with_context(|| {
                let known: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
                format!("no VM test suite '{n}' (there are: {})", known.join(", "))
            })
        })
        .collect()
}

/// The executable of each test target of chaos-tests, by target name, from cargo's JSON.
fn test_executables() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let out = Command::new(crate::cargo())
        .args(["test", "--quiet", "-p", "chaos-tests", "--no-run", "--message-format=json"])
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

/// Writes the initramfs: the init, the daemon and CLI, the programs to run, iproute2, the
/// modules, and the plan the init follows (`/vmtest/plan.json`).
fn build_initramfs(
    kernel: &kernel::Kernel,
    bin: &std::path::Path,
    runs: &[GuestRun],
    stage: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<u64> {
    let mut fs = initramfs::Initramfs::new(stage)?;
    fs.binary(&bin.join("vm-init"), "/init", true)?;
    for name in ["chaos-daemon", "chaosctl"] {
        fs.binary(&bin.join(name), &format!("{GUEST_BIN}/{name}"), true)?;
    }
    for tool in ["ip", "tc"] {
        fs.binary(&host_tool(tool)?, &format!("/usr/sbin/{tool}"), false)?;
    }
    // Tests start processes to stand for a container's (and put them in namespaces, cgroups).
    fs.binary(&host_tool("sleep")?, "/usr/bin/sleep", false)?;
    // iproute2's tables, and tc's netem distributions.
    for dir in ["/etc/iproute2", "/usr/share/iproute2", "/usr/lib/tc"] {
        fs.tree(std::path::Path::new(dir), dir)?;
    }

    let release = kernel.modules.file_name().unwrap().to_string_lossy().into_owned();
    let mut modules = Vec::new();
    for rel in modules::resolve(&kernel.modules, MODULES)? {
        let guest = format!("/lib/modules/{release}/{}", rel.display());
        fs.file(&kernel.modules.join(&rel), &guest);
        modules.push(guest);
    }

    let mut suites = Vec::new();
    for run in runs {
        fs.binary(&run.exe, &run.guest, true)?;
        let mut env = vec![("CHAOS_BIN_DIR".to_owned(), GUEST_BIN.to_owned())];
        env.extend(run.env.iter().cloned());
        suites.push(serde_json::json!({ "name": run.name, "exe": run.guest, "args": run.args, "env": env }));
    }
    let plan = serde_json::json!({
        "modules": modules,
        "path": GUEST_PATH,
        "suite_timeout_secs": SUITE_TIMEOUT.as_secs(),
        "suites": suites,
    });
    fs.text("/vmtest/plan.json", &serde_json::to_string_pretty(&plan)?)?;
    fs.write(out)
}

/// `name` in this host's PATH or sbin directories.
fn host_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` is missing: install iproute2 or coreutils"))
}

/// Prints the summary; fails unless every suite passed and the guest finished in time.
fn report(suites: &[&Suite], outcome: &qemu::Outcome, total: Duration) -> anyhow::Result<()> {
    println!("\n== VM test summary");
    println!("{:<16} {:<10} {:>8} {:>9}", "suite", "result", "exit", "seconds");
    let mut failed = Vec::new();
    for suite in suites {
        match outcome.results.iter().find(|r| r.suite == suite.name) {
            Some(r) => {
                println!("{:<16} {:<10} {:>8} {:>9}", r.suite, if r.pass { "PASS" } else { "FAIL" }, r.exit, r.seconds);
                if !r.pass {
                    failed.push(suite.name.to_owned());
                }
            }
            None => {
                println!("{:<16} {:<10}", suite.name, "NO RESULT");
                failed.push(suite.name.to_owned());
            }
        }
    }
    // The init's own failure (mounts, modules, a panic) is reported under its name.
    for r in outcome.results.iter().filter(|r| !suites.iter().any(|s| s.name == r.suite)) {
        println!("{:<16} {:<10} {:>8} {:>9}", r.suite, if r.pass { "PASS" } else { "FAIL" }, r.exit, r.seconds);
        if !r.pass {
            failed.push(r.suite.clone());
        }
    }
    let boot = outcome.boot.map_or("-".into(), |b| format!("{:.1} s", b.as_secs_f64()));
    println!("boot to init: {boot}; whole run: {:.0} s", total.as_secs_f64());
    let passed = outcome.results.iter().filter(|r| r.pass).count();
    println!("vm-test: {passed} passed, {} failed", failed.len());
    if outcome.timed_out {
        bail!("the VM timed out");
    }
    if !failed.is_empty() {
        bail!("VM test suites failed: {}", failed.join(", "));
    }
    if !outcome.done {
        bail!("the guest stopped before it was done (no VMTEST DONE line)");
    }
    Ok(())
}
