//! `chaos-bench`: the measurements of `cargo xtask bench`. `host` runs on this machine's kernel
//! (per-packet cost, throughput, control-plane latency, footprint, loss accuracy); `vm` runs in
//! the VM guest with one delay backend (delay and rate accuracy, and delay faults applied with
//! chaos-daemon next to `tc`). Progress goes to stderr; the result is one line on stdout,
//! `BENCH <json>`, which xtask collects (from the guest's console, too) and renders.
//!
//! Everything runs in network namespaces made for it, with the real daemon and CLI found
//! through `CHAOS_BIN_DIR` (xtask points it at release builds), and is removed on the way out.

mod accuracy;
mod bpf;
mod connections;
mod control;
mod faults;
mod footprint;
mod packets;
mod per_packet;
mod throughput;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
struct Cli {
    /// Smaller counts (CI's check that the harness still runs): the numbers are rough.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    place: Place,
}

#[derive(Subcommand)]
enum Place {
    /// Everything this kernel can run (no delay backend needed).
    Host {
        /// Sections to run (default: all): per-packet, throughput, control, connections,
        /// footprint, accuracy.
        sections: Vec<String>,
    },
    /// Delay and rate accuracy, and delay faults applied next to `tc`, with one backend.
    Vm {
        #[arg(long)]
        backend: String,
    },
    /// The other user of the `connections` section: holds connections open until stdin closes.
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        count: usize,
        socket: std::path::PathBuf,
    },
}

/// How much of everything: the full run, or CI's quick one.
#[derive(Clone, Copy)]
pub struct Scale {
    pub quick: bool,
}

impl Scale {
    /// `full` normally, `quick` under --quick.
    pub fn pick<T>(self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// One measurement: its result as JSON.
type Section = fn(Scale) -> anyhow::Result<Value>;

const HOST_SECTIONS: &[&str] = &["per-packet", "throughput", "control", "connections", "footprint", "accuracy"];

fn main() {
    let cli = Cli::parse();
    let scale = Scale { quick: cli.quick };
    let result = match cli.place {
        Place::Host { sections } => host(scale, &sections),
        Place::Vm { backend } => vm(scale, &backend),
        Place::Hold { count, socket } => {
            if let Err(e) = connections::hold(&socket, count) {
                eprintln!("chaos-bench hold: {e:#}");
                std::process::exit(1);
            }
            return;
        }
    };
    match result {
        Ok(v) => println!("BENCH {v}"),
        Err(e) => {
            eprintln!("chaos-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn host(scale: Scale, sections: &[String]) -> anyhow::Result<Value> {
    if let Some(s) = sections.iter().find(|s| !HOST_SECTIONS.contains(&s.as_str())) {
        anyhow::bail!("no section '{s}' (there are: {})", HOST_SECTIONS.join(", "));
    }
    let wanted = |s: &str| sections.is_empty() || sections.iter().any(|x| x == s);
    let mut out = serde_json::Map::new();
    let steps: [(&str, Section); 6] = [
        ("per-packet", per_packet::run),
        ("throughput", throughput::run),
        ("control", control::run),
        ("connections", connections::run),
        ("footprint", footprint::run),
        ("accuracy", accuracy::loss),
    ];
    for (name, step) in steps {
        if wanted(name) {
            eprintln!("== {name}");
            let started = std::time::Instant::now();
            let value = step(scale).map_err(|e| e.context(format!("section {name}")))?;
            eprintln!("   ({:.0} s)", started.elapsed().as_secs_f64());
            out.insert(name.to_owned(), value);
        }
    }
    Ok(Value::Object(out))
}

fn vm(scale: Scale, backend: &str) -> anyhow::Result<Value> {
    anyhow::ensure!(["edt", "netem"].contains(&backend), "--backend: '{backend}' is not edt or netem");
    Ok(json!({
        "backend": backend,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        "accuracy": accuracy::shaping(scale, backend)?,
        "control": control::delay(scale, backend)?,
    }))
}
