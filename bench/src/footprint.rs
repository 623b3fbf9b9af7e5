//! What the daemon costs the node: time from start to a socket that answers, resident memory
//! and CPU while idle, with no fault and with 10,000 faults loaded, the kernel memory its maps
//! hold, and the time to load and to clear 10,000 faults.

use std::{
    fmt::Write as _,
    os::unix::net::UnixStream,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use chaos_tests::{Daemon, Lab, stats};
use serde_json::{Value, json};

use crate::{Scale, faults};

pub fn run(scale: Scale) -> anyhow::Result<Value> {
    let starts = scale.pick(10, 3);
    let window = scale.pick(Duration::from_secs(10), Duration::from_secs(2));
    let lab = Lab::new()?;
    let mut daemon = Daemon::start(&lab.a)?;
    daemon.stop()?;

    let mut ready = Vec::new();
    for _ in 0..starts {
        ready.push(start(&mut daemon)?.as_micros() as u64);
        daemon.stop()?;
    }
    start(&mut daemon)?;
    let idle = measure_idle(&daemon, window)?;

    let mut file = String::new();
    for spec in faults::non_matching(&lab.a_if, 10_000) {
        writeln!(file, "[[fault]]")?;
        for (k, v) in spec.as_object().unwrap() {
            writeln!(file, "{k} = {v}")?;
        }
    }
    let path = daemon.dir.join("ten-thousand.toml");
    std::fs::write(&path, file)?;
    let t = Instant::now();
    daemon.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    let load = t.elapsed();
    let loaded = measure_idle(&daemon, window)?;
    let t = Instant::now();
    daemon.ctl_ok(&["clear"]);
    let clear = t.elapsed();

    let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    Ok(json!({
        "start_to_ready_ms": {
            "median": stats::quantile(&ready, 0.5) as f64 / 1000.0,
            "max": *ready.iter().max().unwrap() as f64 / 1000.0,
            "n": starts,
        },
        "idle_window_s": window.as_secs_f64(),
        "idle": idle,
        "loaded_10000": loaded,
        "load_10000_ms": ms(load),
        "clear_10000_ms": ms(clear),
    }))
}

/// Starts the daemon and returns the time until its socket accepts a connection.
fn start(daemon: &mut Daemon) -> anyhow::Result<Duration> {
    ensure!(daemon.child.is_none(), "the daemon is running");
    let _ = std::fs::remove_file(&daemon.socket);
    let t = Instant::now();
    let child = daemon
        .command(&["--socket", &daemon.socket.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    daemon.child = Some(child);
    while UnixStream::connect(&daemon.socket).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("the daemon did not answer within 20 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(t.elapsed())
}

/// Resident memory, map memory, and the CPU the daemon used over `window` while nothing
/// happened, after a second to settle.
fn measure_idle(daemon: &Daemon, window: Duration) -> anyhow::Result<Value> {
    std::thread::sleep(Duration::from_secs(1));
    let before = faults::cpu_ns(daemon)?;
    std::thread::sleep(window);
    let used = faults::cpu_used(&before, &faults::cpu_ns(daemon)?);
    Ok(json!({
        "rss_mb": (faults::rss_kib(daemon)? as f64 * 1024.0 / 1e5).round() / 10.0,
        "maps_mb": (faults::map_memory(daemon)? as f64 / 1e5).round() / 10.0,
        "cpu_percent": (used as f64 / window.as_nanos() as f64 * 100.0 * 1000.0).round() / 1000.0,
    }))
}
