//! Delay and jitter, measured as one-way latency at the receiver (both ends read the same
//! CLOCK_MONOTONIC), against a no-fault baseline taken in the same lab just before.
//!
//! Needs a kernel with a delay backend: `cargo xtask vm-test` runs this file on a Debian 6.1
//! kernel once per backend (`CHAOS_TEST_BACKEND=edt` and `=netem`). Without that variable these
//! tests check nothing and say so: the host kernel has neither fq nor netem (see
//! `delay_refused.rs` for what happens there).
//!
//! Tolerance: a measured median may differ from the expected one by the baseline's own spread
//! (its 10th to 90th percentile: scheduling and, in a VM, emulation noise) plus 1 ms (the
//! qdisc watchdog's timer slack and the receiver's wake-up).

use std::{net::SocketAddr, time::Duration};

use chaos_tests::{
    Daemon, Lab, lab,
    stats::{ms, quantile, std_dev},
    traffic,
};

const MS: u64 = 1_000_000;
const ROUNDS: usize = 400;
const INTERVAL: Duration = Duration::from_millis(2);

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// The no-fault measurement and the tolerance it gives.
fn baseline(measure: &dyn Fn() -> Vec<Vec<u64>>) -> (Vec<Vec<u64>>, u64) {
    let base = measure();
    let tol = tolerance(&base);
    (base, tol)
}

/// The baseline's noise: see the module's comment.
fn tolerance(baseline: &[Vec<u64>]) -> u64 {
    MS + baseline.iter().map(|b| quantile(b, 0.9) - quantile(b, 0.1)).max().unwrap()
}

fn assert_shifted(name: &str, base: &[u64], with: &[u64], by: u64, tol: u64) {
    let (b, w) = (quantile(base, 0.5), quantile(with, 0.5));
    let shift = w as i64 - b as i64;
    // Printed for docs/delay.md (the VM suites run with --nocapture).
    println!(
        "{name}: median {} -> {}, shift {} (expected {} within {}), p10-p90 {}..{}",
        ms(b as f64),
        ms(w as f64),
        ms(shift as f64),
        ms(by as f64),
        ms(tol as f64),
        ms(quantile(with, 0.1) as f64),
        ms(quantile(with, 0.9) as f64)
    );
    assert!(
        (shift - by as i64).unsigned_abs() <= tol,
        "{name}: median {} -> {} (shift {}), expected a shift of {} within {}",
        ms(b as f64),
        ms(w as f64),
        ms(shift as f64),
        ms(by as f64),
        ms(tol as f64)
    );
}

/// For [IPv4 delayed port, other port, IPv6 delayed port]: nothing lost, the delayed ports
/// shifted by 50 ms, the other one not at all.
fn assert_delayed_50ms(base: &[Vec<u64>], with: &[Vec<u64>], tol: u64) {
    for (i, (name, by)) in
        [("IPv4 delayed port", 50 * MS), ("other port", 0), ("IPv6 delayed port", 50 * MS)].into_iter().enumerate()
    {
        assert_eq!(with[i].len(), ROUNDS, "{name}: datagrams lost");
        assert_shifted(name, &base[i], &with[i], by, tol);
    }
}

/// Acceptance 1: 50 ms on UDP to one port (IPv4 and IPv6) shifts its latency by 50 ms, other
/// ports keep theirs even while delayed traffic is queued (no head-of-line blocking), and
/// jitter 10 ms spreads the latency as a uniform +/-10 ms does.
#[test]
fn egress_delay_and_jitter() {
    let lab = Lab::new().unwrap();
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    // 9002: delayed; 9001: not; 9003: delayed bulk traffic queued in the same qdisc.
    let dsts = [addr(lab::B4, 9002), addr(lab::B4, 9001), addr(lab::B6, 9002)];
    let measure = || traffic::udp_latencies(&lab.a, &lab.b, &dsts, INTERVAL, ROUNDS).unwrap();
    let (base, tol) = baseline(&measure);

    daemon.ctl_ok(&[
        "apply",
        "--name",
        "slow",
        "-i",
        &lab.a_if,
        "--delay",
        "50ms",
        "-p",
        "udp",
        "--dport",
        "9002-9003",
    ]);
    let bulk = traffic::udp_flood(&lab.a, &lab.b, addr(lab::B4, 9003), 1000, Duration::from_secs(3));
    let with = measure();
    bulk.join().unwrap();
    assert_delayed_50ms(&base, &with, tol);
    daemon.ctl_ok(&["rm", "slow"]);

    daemon.ctl_ok(&[
        "apply", "--name", "jittery", "-i", &lab.a_if, "--delay", "50ms", "--jitter", "10ms", "-p", "udp", "--dport",
        "9002",
    ]);
    let with = measure();
    // The median of n draws from a uniform of width W has a standard error of W / (2 sqrt(n)):
    // 0.5 ms here. Four of them are added to the tolerance.
    let median_error = 4 * (20 * MS) / (2 * (ROUNDS as f64).sqrt() as u64);
    assert_shifted("jittered port", &base[0], &with[0], 50 * MS, tol + median_error);
    // Uniform on [40, 60] ms: standard deviation 20/sqrt(12) = 5.77 ms, added in quadrature to
    // the baseline's. With 400 samples the estimate's standard error is about 3.5%; 20% allows
    // for the baseline's own variation between the two runs.
    let expected = ((20.0 * MS as f64).powi(2) / 12.0 + std_dev(&base[0]).powi(2)).sqrt();
    let measured = std_dev(&with[0]);
    println!("jitter: standard deviation {} (expected {})", ms(measured), ms(expected));
    assert!(
        (measured / expected - 1.0).abs() < 0.2,
        "jitter: standard deviation {} where {} was expected",
        ms(measured),
        ms(expected)
    );
    // And bounded as uniform: the 2nd and 98th percentiles sit 0.4 ms inside 40 and 60 ms.
    let b = quantile(&base[0], 0.5);
    let (lo, hi) = (quantile(&with[0], 0.02) - b, quantile(&with[0], 0.98) - b);
    assert!(
        lo + tol >= 40 * MS && hi <= 60 * MS + tol,
        "jitter: 2nd-98th percentile {}..{}",
        ms(lo as f64),
        ms(hi as f64)
    );
    assert_shifted("other port, jitter on", &base[1], &with[1], 0, tol);
}

/// Acceptance 3: ingress delay (through the IFB), measured the same way.
#[test]
fn ingress_delay() {
    let lab = Lab::new().unwrap();
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    let dsts = [addr(lab::A4, 9102), addr(lab::A4, 9101), addr(lab::A6, 9102)];
    let measure = || traffic::udp_latencies(&lab.b, &lab.a, &dsts, INTERVAL, ROUNDS).unwrap();
    let (base, tol) = baseline(&measure);
    daemon.ctl_ok(&[
        "apply", "--name", "slow-in", "-i", &lab.a_if, "-d", "ingress", "--delay", "50ms", "-p", "udp", "--dport",
        "9102",
    ]);
    let with = measure();
    assert_delayed_50ms(&base, &with, tol);
    daemon.ctl_ok(&["rm", "slow-in"]);
    let after = measure();
    assert_shifted("after removal", &base[0], &after[0], 0, tol);
}

/// `both` delays the requests on egress and the replies on ingress: a round trip to the
/// delayed port gains 100 ms (two one-way measurements here, one each way).
#[test]
fn both_directions() {
    let lab = Lab::new().unwrap();
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    let out = [addr(lab::B4, 9202), addr(lab::B4, 9201)];
    // Replies: from b's port 9202 to a. `both` mirrors ports, so a's side is matched by sport.
    let back = [addr(lab::A4, 9203)];
    let base_out = traffic::udp_latencies(&lab.a, &lab.b, &out, INTERVAL, ROUNDS).unwrap();
    let base_back = traffic::udp_latencies_from(&lab.b, 9202, &lab.a, &back, INTERVAL, ROUNDS).unwrap();
    let tol = tolerance(&base_out).max(tolerance(&base_back));
    daemon.ctl_ok(&["apply", "--name", "rtt", "-i", &lab.a_if, "-d", "both", "--delay", "50ms", "--dport", "9202"]);
    let with_out = traffic::udp_latencies(&lab.a, &lab.b, &out, INTERVAL, ROUNDS).unwrap();
    let with_back = traffic::udp_latencies_from(&lab.b, 9202, &lab.a, &back, INTERVAL, ROUNDS).unwrap();
    assert_shifted("requests", &base_out[0], &with_out[0], 50 * MS, tol);
    assert_shifted("other port", &base_out[1], &with_out[1], 0, tol);
    assert_shifted("replies", &base_back[0], &with_back[0], 50 * MS, tol);
}

/// `--distribution normal`: jitter is the standard deviation, drawn from netem's table. The
/// shape is checked, not only the spread: about 68% of a normal lies within one standard
/// deviation of its median (a uniform of the same spread puts 58% there). With 400 samples the
/// binomial standard error of that share is 2.3%; the bound is three of them.
#[test]
fn normal_jitter() {
    let lab = Lab::new().unwrap();
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    let dsts = [addr(lab::B4, 9402)];
    let measure = || traffic::udp_latencies(&lab.a, &lab.b, &dsts, INTERVAL, ROUNDS).unwrap();
    let (base, tol) = baseline(&measure);
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "normal",
        "-i",
        &lab.a_if,
        "--delay",
        "50ms",
        "--jitter",
        "10ms",
        "--distribution",
        "normal",
        "-p",
        "udp",
        "--dport",
        "9402",
    ]);
    let with = measure().remove(0);
    assert_eq!(with.len(), ROUNDS, "datagrams lost");
    // The median of n normal draws has a standard error of 1.2533 sigma / sqrt(n): 0.63 ms.
    assert_shifted("normal jitter", &base[0], &with, 50 * MS, tol + 4 * 627_000);
    let expected = ((10.0 * MS as f64).powi(2) + std_dev(&base[0]).powi(2)).sqrt();
    let measured = std_dev(&with);
    println!("normal jitter: standard deviation {} (expected {})", ms(measured), ms(expected));
    assert!(
        (measured / expected - 1.0).abs() < 0.2,
        "standard deviation {} where {} was expected",
        ms(measured),
        ms(expected)
    );
    let median = quantile(&with, 0.5) as f64;
    let within = with.iter().filter(|&&x| (x as f64 - median).abs() <= measured).count() as f64 / with.len() as f64;
    println!("normal jitter: {:.1}% within one standard deviation", within * 100.0);
    assert!((within - 0.683).abs() <= 3.0 * 0.023, "{:.1}% within one standard deviation: not normal", within * 100.0);
}
