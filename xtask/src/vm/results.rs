//! What one kernel's run found, as `target/vm-test/results/<kernel>.json` (read back by `cargo
//! xtask support-matrix`), and the summary tables printed after a run.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{Suite, kernel::Image, kernels::Kernel, qemu::Outcome};

pub fn dir() -> PathBuf {
    crate::workspace().join("target/vm-test/results")
}

/// The record of a run: the kernel, what the guest and the daemon said of it, each suite's result.
pub fn record(k: &Kernel, image: &Image, outcome: &Outcome, suites: &[&Suite]) -> Value {
    let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().ok();
    let date = date.map(|d| String::from_utf8_lossy(&d.stdout).trim().to_owned());
    let mut rows: Vec<Value> = suites
        .iter()
        .map(|s| match outcome.results.iter().find(|r| r.suite == s.name) {
            Some(r) => json!({ "name": s.name, "result": if r.pass { "pass" } else { "fail" },
                "exit": r.exit, "seconds": r.seconds.parse::<f64>().ok(), "date": date }),
            None => json!({ "name": s.name, "result": "no result", "date": date }),
        })
        .collect();
    // The init's own failure (mounts, modules, a panic) is reported under its name.
    for r in outcome.results.iter().filter(|r| !suites.iter().any(|s| s.name == r.suite)) {
        rows.push(json!({ "name": r.suite, "result": if r.pass { "pass" } else { "fail" }, "exit": r.exit }));
    }
    let status = outcome.status.as_deref().map(|s| serde_json::from_str(s).unwrap_or_else(|_| json!(s)));
    json!({
        "kernel": k.name,
        "release": k.release,
        "arch": k.arch.deb(),
        "package": image.package,
        "version": image.version,
        "guest_release": outcome.kernel,
        "status": status,
        "boot_seconds": outcome.boot.map(|b| (b.as_secs_f64() * 10.0).round() / 10.0),
        "timed_out": outcome.timed_out,
        "done": outcome.done,
        "date": date,
        "suites": rows,
    })
}

/// Writes `record` as its kernel's results file. Suites the previous file has and this run did
/// not run are kept, with their date, when that file is of the same kernel build: a run of a
/// few suites (a rerun) updates the matrix without losing the rest.
pub fn write(record: &Value) -> anyhow::Result<PathBuf> {
    let dir = dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.json", record["kernel"].as_str().unwrap_or("unknown")));
    let mut record = record.clone();
    let previous: Option<Value> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(previous) = previous.filter(|p| p["package"] == record["package"] && p["version"] == record["version"])
    {
        let ran: Vec<Value> = rows(&record).map(|r| r["name"].clone()).collect();
        let kept: Vec<Value> = rows(&previous).filter(|r| !ran.contains(&r["name"])).cloned().collect();
        if let Some(rows) = record["suites"].as_array_mut() {
            rows.extend(kept);
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// What failed: suites that did not pass, and a guest that timed out or stopped early.
pub fn failures(record: &Value) -> Vec<String> {
    let mut failed: Vec<String> = rows(record)
        .filter(|r| r["result"] != "pass")
        .map(|r| format!("{} ({})", r["name"].as_str().unwrap_or("?"), r["result"].as_str().unwrap_or("?")))
        .collect();
    if record["timed_out"] == true {
        failed.push("the VM timed out".into());
    } else if record["done"] != true {
        failed.push("the guest stopped before it was done (no VMTEST DONE line)".into());
    }
    failed
}

fn rows(record: &Value) -> impl Iterator<Item = &Value> {
    record["suites"].as_array().into_iter().flatten()
}

/// What the summaries show of the daemon's status: its delay backend, the kernel features it
/// probed, how cgroups scope faults, and how the SSH guard follows sessions (or why the daemon
/// did not start).
/// What the daemon reported there: its delay backend, what the kernel can do (within the
/// run's profile), what it cannot and why, and how the SSH guard follows sessions.
pub fn abilities(status: &Value) -> [String; 4] {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    if let Some(e) = status.get("error") {
        return [format!("daemon did not start: {}", s(e)), String::new(), String::new(), String::new()];
    }
    let all = status["abilities"].as_object().into_iter().flatten();
    let (mut can, mut cannot) = (Vec::new(), Vec::new());
    for (name, a) in all.filter(|(_, a)| a.is_object()) {
        let name = name.replace('_', " ");
        match a["available"].as_bool() {
            Some(true) => can.push(name),
            _ => cannot.push(format!("{name} ({})", s(&a["why_not"]))),
        }
    }
    let errno = &status["abilities"]["connect_fail_default_errno"];
    if errno.is_string() && status["abilities"]["connect_fail"]["available"] == true {
        can.push(format!("connect-fail default {}", s(errno)));
    }
    let profile = s(&status["abilities"]["profile"]);
    let backend = format!("{} (profile {profile})", s(&status["delay_backend"]));
    [backend, can.join(", "), cannot.join("; "), s(&status["guard_sessions"])]
}

pub fn print(record: &Value, outcome: &Outcome, total: Duration) {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    println!("\n== VM test summary: kernel {} ({})", s(&record["kernel"]), s(&record["guest_release"]));
    let [backend, can, cannot, guard] = abilities(&record["status"]);
    println!("daemon: delay backend {backend}; can: {can}; cannot: {cannot}; guard: {guard}");
    println!("{:<16} {:<10} {:>8} {:>9}", "suite", "result", "exit", "seconds");
    for r in rows(record) {
        let secs = r["seconds"].as_f64().map_or("-".into(), |s| format!("{s:.1}"));
        let result = r["result"].as_str().unwrap_or("?").to_uppercase();
        println!(
            "{:<16} {:<10} {:>8} {:>9}",
            r["name"].as_str().unwrap_or("?"),
            result,
            r["exit"].as_str().unwrap_or("-"),
            secs
        );
    }
    let boot = outcome.boot.map_or("-".into(), |b| format!("{:.1} s", b.as_secs_f64()));
    println!("boot to init: {boot}; whole run: {:.0} s", total.as_secs_f64());
    let passed = rows(record).filter(|r| r["result"] == "pass").count();
    println!("vm-test {}: {passed} passed, {} failed", s(&record["kernel"]), failures(record).len());
}

/// One row per suite, one column per kernel.
pub fn print_combined(records: &[Value]) {
    println!("\n== VM test summary, all kernels");
    let mut names: Vec<&str> = Vec::new();
    for r in records.iter().flat_map(rows) {
        let n = r["name"].as_str().unwrap_or("?");
        if !names.contains(&n) {
            names.push(n);
        }
    }
    print!("{:<16}", "suite");
    for rec in records {
        print!(" {:>14}", rec["kernel"].as_str().unwrap_or("?"));
    }
    println!();
    for name in names {
        print!("{name:<16}");
        for rec in records {
            let cell = rows(rec).find(|r| r["name"] == name).map_or("-".into(), |r| {
                let secs = r["seconds"].as_f64().map_or(String::new(), |s| format!(" {s:.0}s"));
                format!("{}{secs}", r["result"].as_str().unwrap_or("?").to_uppercase())
            });
            print!(" {cell:>14}");
        }
        println!();
    }
}
