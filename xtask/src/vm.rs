//! `cargo xtask vm-test`: end-to-end test binaries run inside Debian's kernels under qemu, for
//! what this host's kernel cannot show (no sch_netem or sch_fq here) and for the kernels users
//! run: 5.10 (no TCX: the daemon's cls_bpf attachment runs), 6.1, 6.12 (TCX) and 6.1 on arm64
//! (`--kernel`, see `vm/kernels.rs`). The guest's init is `src/bin/vm-init.rs`.

pub mod apt;
mod aptroot;
mod build;
mod cpio;
mod elf;
mod initramfs;
mod kernel;
pub mod kernels;
mod modules;
pub mod qemu;
pub mod results;
mod tools;

use std::{
    collections::{BTreeMap, btree_map::Entry},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use kernels::{Defaults, Kernel};

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

/// What `cargo xtask vm-test` runs on 6.1, in this order (other kernels run some of them, and
/// `-- <names>` picks some). A test target run under several backends is one line each, with
/// the backend in its environment.
pub const SUITES: &[Suite] = &[
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
    // The 4.19 profile's own checks, delay and bandwidth on netem included (the 4.19-profile
    // kernel runs it; elsewhere it holds its own daemons to the profile all the same).
    Suite { name: "profile-419", target: "profile_419", args: &[], env: &[("CHAOS_TEST_BACKEND", "netem")] },
    // The DNS programs loaded by this kernel's verifier and acting (raw queries to the lab's
    // dnsmasq: the other dns tests need getent, python3 and dig, which the guest lacks).
    Suite { name: "dns", target: "dns", args: &["kernel_paths"], env: &[] },
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

/// Runs the suites (`names`, else each kernel's defaults) on the kernels `kernel` names, one VM
/// each; writes `target/vm-test/results/<kernel>.json` for each kernel that booted.
pub fn run(kernel: &str, names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let plans =
        kernels::select(kernel)?.into_iter().map(|k| Ok((k, select(k, names)?))).collect::<anyhow::Result<Vec<_>>>()?;
    crate::bootstrap::ensure()?;
    let others: Vec<kernels::Arch> =
        plans.iter().map(|(k, _)| k.arch).filter(|a| *a != kernels::Arch::host()).collect();
    let mut builds = BTreeMap::new();
    let mut beside: BTreeMap<kernels::Arch, std::thread::JoinHandle<(anyhow::Result<build::Binaries>, Duration)>> =
        BTreeMap::new();
    let (mut records, mut failed) = (Vec::new(), Vec::new());
    for (k, suites) in plans {
        let started = Instant::now();
        if let Entry::Vacant(slot) = builds.entry(k.arch) {
            let (bins, took, how) = match beside.remove(&k.arch) {
                Some(handle) => {
                    let (bins, took) =
                        handle.join().unwrap_or_else(|_| (Err(anyhow::anyhow!("its build panicked")), Duration::ZERO));
                    (bins, took, ", beside the guests before it")
                }
                None => {
                    let t = Instant::now();
                    (build::build(k.arch), t.elapsed(), "")
                }
            };
            println!("== {:?} build: {:.0} s{how}", k.arch, took.as_secs_f64());
            slot.insert(bins);
        }
        // A failed build fails its kernels; the others still run.
        let result = match &builds[&k.arch] {
            Ok(bins) => run_kernel(k, &suites, bins, timeout, started),
            Err(e) => Err(anyhow::anyhow!("the {:?} build failed: {e:#}", k.arch)),
        };
        match result {
            Ok(record) => {
                failed.extend(results::failures(&record).into_iter().map(|f| format!("{}: {f}", k.name)));
                records.push(record);
            }
            Err(e) => {
                println!("xtask: kernel {}: {e:#}", k.name);
                failed.push(format!("{}: {e:#}", k.name));
            }
        }
        // Once a host guest has run (and qemu and the host's packages are installed, so no two
        // apt-get runs meet), the other architectures build beside the next guests: a guest
        // under TCG keeps about one core busy, and the build takes the rest (at a lower
        // priority, so the guest's timing suffers little). Measured: 381 s alone before the
        // arm64 guest; 752 s beside the x86 guests, which none waited for.
        if k.arch == kernels::Arch::host() {
            for arch in others.iter().copied().filter(|a| !builds.contains_key(a)) {
                if let Entry::Vacant(slot) = beside.entry(arch) {
                    slot.insert(std::thread::spawn(move || {
                        // Per thread on Linux, and inherited by the cargo processes it starts.
                        // SAFETY: plain syscalls on this thread.
                        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
                        let t = Instant::now();
                        (build::build(arch), t.elapsed())
                    }));
                }
            }
        }
    }
    if records.len() > 1 {
        results::print_combined(&records);
    }
    if !failed.is_empty() {
        bail!("VM tests failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn run_kernel(
    k: &Kernel,
    suites: &[&Suite],
    bins: &build::Binaries,
    timeout: Duration,
    started: Instant,
) -> anyhow::Result<serde_json::Value> {
    let mut runs = Vec::new();
    for &suite in suites {
        let exe = bins.tests.get(suite.target).with_context(|| {
            let known: Vec<&str> = bins.tests.keys().map(String::as_str).collect();
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
            env: suite
                .env
                .iter()
                .copied()
                .chain(k.profile.map(|p| ("CHAOS_TEST_PROFILE", p)))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }
    let (image, outcome) = boot_kernel(k, &runs, &bins.bin, bins.strip, timeout)?;
    let record = results::record(k, &image, &outcome, suites);
    let path = results::write(&record)?;
    results::print(&record, &outcome, started.elapsed());
    println!("results: {}", path.display());
    Ok(record)
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

/// Boots the default kernel with the daemon, CLI and init from `bin` (this host's cargo target
/// directory) and `runs`, and returns what its console said.
pub fn boot(runs: &[GuestRun], bin: &Path, timeout: Duration) -> anyhow::Result<qemu::Outcome> {
    let k = kernels::select(kernels::DEFAULT)?[0];
    Ok(boot_kernel(k, runs, bin, true, timeout)?.1)
}

fn boot_kernel(
    k: &Kernel,
    runs: &[GuestRun],
    bin: &Path,
    strip: bool,
    timeout: Duration,
) -> anyhow::Result<(kernel::Image, qemu::Outcome)> {
    let (qemu, package) = k.arch.qemu();
    apt::ensure_program(qemu, package)?;
    apt::ensure_program("objcopy", "binutils")?;
    let apt = aptroot::AptRoot::open(k.release, k.arch.deb())?;
    let image = kernel::ensure(&apt, k.meta)?;
    println!("== guest kernel {}: {} {} ({})", k.name, image.package, image.version, k.arch.deb());
    let tools = tools::ensure(&apt, k.arch)?;
    let dir = crate::workspace().join("target/vm-test");
    let initrd = dir.join("initramfs.cpio");
    let started = Instant::now();
    let daemon_config = k.profile.map(|p| format!("kernel_profile = \"{p}\"\n")).unwrap_or_default();
    let size = build_initramfs(&image, tools, bin, strip, runs, &daemon_config, &initrd)?;
    println!("== initramfs: {} MB in {:.0} s; booting under qemu (TCG)", size >> 20, started.elapsed().as_secs_f64());
    let outcome = qemu::run(k.arch, &image.vmlinuz, &initrd, timeout)?;
    Ok((image, outcome))
}

/// The suites `names` picks, else the kernel's defaults.
fn select(k: &Kernel, names: &[String]) -> anyhow::Result<Vec<&'static Suite>> {
    let find = |n: &str| {
        SUITES.iter().find(|s| s.name == n).with_context(|| {
            let known: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
            format!("no VM test suite '{n}' (there are: {})", known.join(", "))
        })
    };
    match (names, &k.suites) {
        ([], Defaults::Every) => Ok(SUITES.iter().collect()),
        ([], Defaults::ByKernelAnd(more)) => kernels::BY_KERNEL.iter().chain(*more).map(|n| find(n)).collect(),
        ([], Defaults::Only(defaults)) => defaults.iter().map(|n| find(n)).collect(),
        _ => names.iter().map(|n| find(n)).collect(),
    }
}

/// Writes the initramfs: the init, the daemon and CLI, the programs to run, iproute2, sleep,
/// dnsmasq, the modules, and the plan the init follows (`/vmtest/plan.json`).
fn build_initramfs(
    image: &kernel::Image,
    tools: tools::Tools,
    bin: &Path,
    strip: bool,
    runs: &[GuestRun],
    daemon_config: &str,
    out: &Path,
) -> anyhow::Result<u64> {
    let stage = &out.with_file_name("stage");
    let programs: Vec<(PathBuf, &str)> = vec![
        (tools.program("ip")?, "/usr/sbin/ip"),
        (tools.program("tc")?, "/usr/sbin/tc"),
        // Tests start processes to stand for a container's (and put them in namespaces, cgroups).
        (tools.program("sleep")?, "/usr/bin/sleep"),
        // The DNS lab's server (tests/src/dns.rs).
        (tools.program("dnsmasq")?, "/usr/sbin/dnsmasq"),
    ];
    let data: Vec<(PathBuf, String)> =
        tools.data_dirs().into_iter().filter_map(|d| Some((tools.dir(&d)?, d))).collect();
    let mut fs = initramfs::Initramfs::new(stage, tools)?;
    fs.binary(&bin.join("vm-init"), "/init", strip)?;
    for name in ["chaos-daemon", "chaosctl"] {
        fs.binary(&bin.join(name), &format!("{GUEST_BIN}/{name}"), strip)?;
    }
    for (host, guest) in programs {
        fs.binary(&host, guest, false)?;
    }
    for (host, guest) in data {
        fs.tree(&host, &guest)?;
    }

    let release = image.modules.file_name().unwrap().to_string_lossy().into_owned();
    let mut modules = Vec::new();
    for m in modules::resolve(&image.modules, MODULES, stage)? {
        let guest = format!("/lib/modules/{release}/{}", m.rel.display());
        fs.file(&m.host, &guest);
        modules.push(guest);
    }

    let mut suites = Vec::new();
    for run in runs {
        fs.binary(&run.exe, &run.guest, strip)?;
        let mut env = vec![("CHAOS_BIN_DIR".to_owned(), GUEST_BIN.to_owned())];
        env.extend(run.env.iter().cloned());
        suites.push(serde_json::json!({ "name": run.name, "exe": run.guest, "args": run.args, "env": env }));
    }
    let plan = serde_json::json!({
        "modules": modules,
        "path": GUEST_PATH,
        "bin_dir": GUEST_BIN,
        "suite_timeout_secs": SUITE_TIMEOUT.as_secs(),
        // Added to the configuration of the daemon whose status is reported.
        "daemon_config": daemon_config,
        "suites": suites,
    });
    fs.text("/vmtest/plan.json", &serde_json::to_string_pretty(&plan)?)?;
    fs.write(out)
}
