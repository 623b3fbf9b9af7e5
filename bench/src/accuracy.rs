//! Is the fault asked for the fault measured? Loss at 1%, 10% and 50% counted at the receiver
//! (host); delay, jitter and rate measured at the receiver with one backend (VM).

use std::{net::SocketAddr, time::Duration};

use chaos_tests::{Daemon, Lab, lab, stats, traffic};
use serde_json::{Value, json};

use crate::{Scale, faults};

/// Two-sided 99.9% bound of a normal: a measured loss further than this many binomial standard
/// deviations from the rate asked for is reported as outside.
const Z: f64 = 3.29;

pub fn loss(scale: Scale) -> anyhow::Result<Value> {
    let n = scale.pick(100_000, 10_000);
    let lab = Lab::new()?;
    let daemon = Daemon::start(&lab.a)?;
    let dst = SocketAddr::new(lab::B4.parse().unwrap(), 7001);
    let mut rows = Vec::new();
    for percent in [1.0, 10.0, 50.0] {
        let spec = json!({
            "name": "acc", "interface": lab.a_if, "action": "loss", "loss": percent,
            "protocol": "udp", "dst": lab::B4, "dport": 7001,
        });
        faults::apply(&daemon.socket, vec![spec])?;
        let received = traffic::udp(&lab.a, None, &lab.b, dst, n)?;
        let list = daemon.list();
        faults::remove(&daemon.socket, "acc")?;
        let fault = &list["faults"][0];
        let (p, measured) = (percent / 100.0, 1.0 - f64::from(received) / f64::from(n));
        let bound = Z * (p * (1.0 - p) / f64::from(n)).sqrt();
        eprintln!("   {percent}%: measured {:.3}%", measured * 100.0);
        rows.push(json!({
            "asked_percent": percent,
            "measured_percent": (measured * 1e5).round() / 1e3,
            "bound_percent": (bound * 1e5).round() / 1e3,
            "within": (measured - p).abs() <= bound,
            "counted": { "matched": fault["matched"], "dropped": fault["dropped"] },
        }));
    }
    Ok(json!({ "packets": n, "z": Z, "rows": rows }))
}

/// Delay, jitter and rate with the daemon's `backend`, at the receiver.
pub fn shaping(scale: Scale, backend: &str) -> anyhow::Result<Value> {
    let lab = Lab::new()?;
    let daemon = Daemon::start_with(&lab.a, &format!("delay_backend = \"{backend}\""))?;
    let rounds = scale.pick(400, 60);
    let dst = [SocketAddr::new(lab::B4.parse().unwrap(), 7002)];
    let latencies = || -> anyhow::Result<Vec<u64>> {
        Ok(traffic::udp_latencies(&lab.a, &lab.b, &dst, Duration::from_millis(5), rounds)?.remove(0))
    };
    let base = latencies()?;
    let base_median = stats::quantile(&base, 0.5) as f64;
    let shaped = |extra: &[(&str, &str)]| -> anyhow::Result<Vec<u64>> {
        let mut spec = json!({
            "name": "acc", "interface": lab.a_if, "action": "delay", "delay": "50ms",
            "protocol": "udp", "dport": 7002,
        });
        for (k, v) in extra {
            spec[*k] = json!(v);
        }
        faults::apply(&daemon.socket, vec![spec])?;
        let l = latencies();
        faults::remove(&daemon.socket, "acc")?;
        l
    };
    let delayed = shaped(&[])?;
    let jittered = shaped(&[("jitter", "10ms")])?;
    let ms = |ns: f64| (ns / 1e4).round() / 100.0;

    let rate: f64 = 10e6;
    let spec = json!({
        "name": "acc", "interface": lab.a_if, "action": "bandwidth", "rate": "10mbit", "protocol": "tcp", "dport": 5201,
    });
    faults::apply(&daemon.socket, vec![spec])?;
    let (warmup, window) = scale
        .pick((Duration::from_secs(1), Duration::from_secs(4)), (Duration::from_millis(500), Duration::from_secs(1)));
    let goodput = traffic::tcp_goodput(&lab.a, &lab.b, SocketAddr::new(lab::B4.parse().unwrap(), 5201), warmup, window);
    faults::remove(&daemon.socket, "acc")?;
    // A full-size segment carries 1448 bytes of payload (TCP timestamps on) in a 1514-byte frame.
    let expected = rate * 1448.0 / 1514.0;
    Ok(json!({
        "datagrams": rounds,
        "baseline_median_ms": ms(base_median),
        "delay_50ms": {
            "median_shift_ms": ms(stats::quantile(&delayed, 0.5) as f64 - base_median),
            "received": delayed.len(),
        },
        "jitter_10ms_uniform": {
            "median_shift_ms": ms(stats::quantile(&jittered, 0.5) as f64 - base_median),
            "std_dev_ms": ms(stats::std_dev(&jittered)),
            "expected_std_dev_ms": ms(10e6 / 3f64.sqrt()),
        },
        "rate_10mbit": {
            "goodput_mbit_s": (goodput? / 1e4).round() / 100.0,
            "expected_mbit_s": (expected / 1e4).round() / 100.0,
            "seconds": window.as_secs_f64(),
        },
    }))
}
