//! `cargo xtask bench`: chaos-bench (the `bench` crate) on this machine and, with each delay
//! backend, in the VM guest; the results merged into `target/bench/results.json` and rendered
//! as `target/bench/results.md` (copied into docs/benchmarks.md with `--docs`).

mod report;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::vm;

pub struct Options {
    pub quick: bool,
    pub vm: bool,
    pub docs: bool,
    pub sections: Vec<String>,
}

/// The block of docs/benchmarks.md that `--docs` replaces.
const DOCS: &str = "docs/benchmarks.md";
const BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench --docs`) -->";
const END: &str = "<!-- bench:end -->";

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::preflight("cargo xtask bench")?;
    // The mechanisms the comparison rows use, as the tools users would pick use them.
    vm::apt::ensure_program("iptables", "iptables")?;
    vm::apt::ensure_program("ipset", "ipset")?;
    build_release()?;
    let bin = crate::workspace().join("target/release");

    let mut host_args = vec!["host".to_owned()];
    host_args.extend(opts.sections.iter().cloned());
    println!("== chaos-bench {} on this machine", host_args.join(" "));
    let host = run_host(&bin, opts.quick, &host_args)?;

    let mut vm_results = serde_json::Map::new();
    if opts.vm {
        let runs: Vec<vm::GuestRun> = ["edt", "netem"]
            .map(|backend| {
                let mut args = vec!["vm".to_owned(), "--backend".to_owned(), backend.to_owned()];
                if opts.quick {
                    args.push("--quick".into());
                }
                vm::GuestRun {
                    name: format!("bench-{backend}"),
                    exe: bin.join("chaos-bench"),
                    guest: format!("{}/chaos-bench", vm::GUEST_BIN),
                    args,
                    env: Vec::new(),
                }
            })
            .into();
        let outcome = vm::boot(&runs, &bin, Duration::from_secs(30 * 60))?;
        for r in &outcome.results {
            if !r.pass {
                bail!("chaos-bench failed in the VM ({}: exit {}): its output is above", r.suite, r.exit);
            }
        }
        for line in &outcome.bench {
            let v: Value = serde_json::from_str(line).context("a BENCH line from the guest is not JSON")?;
            let backend = v["backend"].as_str().context("a guest result without its backend")?.to_owned();
            vm_results.insert(backend, v);
        }
        if vm_results.len() != runs.len() {
            bail!("the VM gave {} results of {} (see its console above)", vm_results.len(), runs.len());
        }
    }

    let results = json!({
        "meta": meta(opts.quick, started.elapsed())?,
        "host": host,
        "vm": vm_results,
    });
    let dir = crate::workspace().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let table = report::markdown(&results);
    std::fs::write(dir.join("results.md"), &table)?;
    println!("\n{table}");
    println!("== written: {} and results.md", dir.join("results.json").display());
    if opts.docs {
        splice_docs(&crate::workspace().join(DOCS), &table)?;
        println!("== {DOCS} updated");
    }
    Ok(())
}

/// Release builds of everything (the daemon and CLI are measured as shipped).
fn build_release() -> anyhow::Result<()> {
    let status = Command::new(crate::cargo())
        .args(["build", "--release", "--quiet"])
        .current_dir(crate::workspace())
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(())
}

/// Runs chaos-bench on this machine (its progress on stderr) and returns its result.
fn run_host(bin: &Path, quick: bool, args: &[String]) -> anyhow::Result<Value> {
    let mut cmd = Command::new(bin.join("chaos-bench"));
    if quick {
        cmd.arg("--quick");
    }
    let out =
        cmd.args(args).env("CHAOS_BIN_DIR", bin).stderr(Stdio::inherit()).output().context("running chaos-bench")?;
    if !out.status.success() {
        bail!("chaos-bench failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("BENCH ")).context("chaos-bench printed no result")?;
    serde_json::from_str(line).context("chaos-bench's result is not JSON")
}

/// Where and on what the numbers were taken.
fn meta(quick: bool, took: Duration) -> anyhow::Result<Value> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1.trim().to_owned()));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0);
    let git = |args: &[&str]| -> String {
        Command::new("git")
            .args(args)
            .current_dir(crate::workspace())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output()?;
    Ok(json!({
        "cpu": cpu.unwrap_or_else(|| "unknown".into()),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / (1 << 20) as f64).round(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        "commit": format!("{}{}", git(&["rev-parse", "--short=12", "HEAD"]), if dirty { " (with uncommitted changes)" } else { "" }),
        "date": String::from_utf8_lossy(&date.stdout).trim(),
        "quick": quick,
        "minutes": (took.as_secs_f64() / 6.0).round() / 10.0,
    }))
}

/// Replaces the generated block of the docs with `table`.
fn splice_docs(path: &Path, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no `{BEGIN}` ... `{END}` block to replace", path.display());
    };
    let out = format!("{}{BEGIN}\n{table}\n{}", &text[..b], &text[e..]);
    std::fs::write(path, out)?;
    Ok(())
}
