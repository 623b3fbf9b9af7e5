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
    // The other port, measured in the same rounds, shows the noise of this run.
    let tol = tol.max(tolerance(&with[1..2]));
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

    // The same 50 ms without jitter on port 9004, measured in the same rounds: its latency less
    // 50 ms is the noise the jittered packets met at the same time on the same path (a loaded
    // machine's late timers and wake-ups), which a baseline taken before cannot know.
    daemon.ctl_ok(&["apply", "--name", "steady", "-i", &lab.a_if, "--delay", "50ms", "-p", "udp", "--dport", "9004"]);
    daemon.ctl_ok(&[
        "apply", "--name", "jittery", "-i", &lab.a_if, "--delay", "50ms", "--jitter", "10ms", "-p", "udp", "--dport",
        "9002",
    ]);
    let dsts = [addr(lab::B4, 9002), addr(lab::B4, 9001), addr(lab::B4, 9004)];
    let with = traffic::udp_latencies(&lab.a, &lab.b, &dsts, INTERVAL, ROUNDS).unwrap();
    assert_eq!(with[0].len(), ROUNDS, "jittered port: datagrams lost");
    let noise: Vec<u64> = with[2].iter().map(|l| l.saturating_sub(50 * MS)).collect();
    let tol = tol.max(tolerance(std::slice::from_ref(&noise)));
    // The median of n draws from a uniform of width W has a standard error of W / (2 sqrt(n)):
    // 0.5 ms here. Four of them are added to the tolerance.
    let median_error = 4 * (20 * MS) / (2 * (ROUNDS as f64).sqrt() as u64);
    assert_shifted("jittered port", &base[0], &with[0], 50 * MS, tol + median_error);
    assert_uniform_jitter(&with[0], &noise);
    assert_shifted("other port, jitter on", &base[1], &with[1], 0, tol);
}

/// `latencies` are 50 ms plus a uniform draw in +/-10 ms plus `noise` (measured at the same
/// time): with U the draw and N the noise, X = U + N with U in [40, 60] ms.
/// - Bounded: P(X <= 40 ms + n) <= P(N <= n), so X's p quantile is at least 40 ms plus N's, and
///   at most 60 ms plus N's. Checked at the 2nd and 98th percentiles against N's 1st and 99th,
///   which leaves room for the sampling error of N's; 0.6 ms is four standard errors of an
///   empirical 2nd percentile of U (sqrt(0.02 * 0.98 / 400) * 20 ms = 0.14 ms).
/// - Spread: P(X > a + b) >= P(U > a) P(N > b) for independent U and N, so X's 95th percentile is
///   at least U's 90th plus N's median, and its 5th at most U's 10th plus N's median: the 5th to
///   95th percentile of X spans at least 16 ms, whatever the noise. 1.3 ms is four standard
///   errors of that span (0.22 ms for each end).
///
/// The standard deviation is printed (docs/delay.md quotes it); the noise's tail moves it too
/// much to judge it on a loaded machine.
fn assert_uniform_jitter(latencies: &[u64], noise: &[u64]) {
    let x = |q| quantile(latencies, q) as f64;
    let n = |q| quantile(noise, q) as f64;
    let msf = MS as f64;
    println!(
        "jitter: standard deviation {} (uniform alone {}; the noise at the same time {}), p2-p98 {}..{}, noise p1-p99 {}..{}",
        ms(std_dev(latencies)),
        ms(20.0 * msf / 12f64.sqrt()),
        ms(std_dev(noise)),
        ms(x(0.02)),
        ms(x(0.98)),
        ms(n(0.01)),
        ms(n(0.99))
    );
    assert!(
        x(0.02) >= 40.0 * msf + n(0.01) - 0.6 * msf && x(0.98) <= 60.0 * msf + n(0.99) + 0.6 * msf,
        "jitter: 2nd-98th percentile {}..{}, not within 40..60 ms plus the noise's 1st-99th {}..{}",
        ms(x(0.02)),
        ms(x(0.98)),
        ms(n(0.01)),
        ms(n(0.99))
    );
    let span = x(0.95) - x(0.05);
    assert!(
        span >= 16.0 * msf - 1.3 * msf,
        "jitter: 5th-95th percentile spans {}, uniform +/-10 ms spans 16 ms",
        ms(span)
    );
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
    // The other port, measured in the same rounds, shows the noise of this run.
    let tol = tol.max(tolerance(&with_out[1..2]));
    assert_shifted("requests", &base_out[0], &with_out[0], 50 * MS, tol);
    assert_shifted("other port", &base_out[1], &with_out[1], 0, tol);
    assert_shifted("replies", &base_back[0], &with_back[0], 50 * MS, tol);
}

/// `--distribution normal`: jitter is the standard deviation, drawn from netem's table. The
/// shape is checked, not only the spread: about 68% of a normal lies within one standard
/// deviation of its median (a uniform of the same spread puts 58% there).
#[test]
fn normal_jitter() {
    let lab = Lab::new().unwrap();
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    let dsts = [addr(lab::B4, 9402), addr(lab::B4, 9404)];
    let measure = || traffic::udp_latencies(&lab.a, &lab.b, &dsts, INTERVAL, ROUNDS).unwrap();
    let (base, tol) = baseline(&measure);
    // A steady 50 ms on 9404, measured in the same rounds, gives the noise of the run (see
    // egress_delay_and_jitter).
    daemon.ctl_ok(&["apply", "--name", "steady", "-i", &lab.a_if, "--delay", "50ms", "-p", "udp", "--dport", "9404"]);
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
    let mut both = measure();
    let noise: Vec<u64> = both.remove(1).iter().map(|l| l.saturating_sub(50 * MS)).collect();
    let with = both.remove(0);
    assert_eq!(with.len(), ROUNDS, "datagrams lost");
    let tol = tol.max(tolerance(std::slice::from_ref(&noise)));
    // The median of n normal draws has a standard error of 1.2533 sigma / sqrt(n): 0.63 ms.
    assert_shifted("normal jitter", &base[0], &with, 50 * MS, tol + 4 * 627_000);
    // Shape and spread at once: the share of packets within 10 ms (the asked standard
    // deviation) of their median. 50 ms plus a normal draw plus the noise measured at the same
    // time puts, on average over that noise's samples n, Phi((m + 10 - 50 - n) / 10) -
    // Phi((m - 10 - 50 - n) / 10) there (m the median): 68.3% without noise, where a uniform of
    // the same deviation puts 57.7% and a normal of half of it 95%. With 400 samples the
    // binomial standard error of the share is at most 2.5%; the bound is three of them.
    let sigma = 10.0 * MS as f64;
    let median = quantile(&with, 0.5) as f64;
    let within = with.iter().filter(|&&x| (x as f64 - median).abs() <= sigma).count() as f64 / with.len() as f64;
    let predicted = noise
        .iter()
        .map(|&n| {
            let centre = median - 50.0 * MS as f64 - n as f64;
            normal_cdf((centre + sigma) / sigma) - normal_cdf((centre - sigma) / sigma)
        })
        .sum::<f64>()
        / noise.len() as f64;
    let bound = 3.0 * (predicted * (1.0 - predicted) / with.len() as f64).sqrt();
    println!(
        "normal jitter: {:.1}% within 10 ms of the median (predicted from the noise {:.1}%, {:.1}% without); standard deviation {}",
        within * 100.0,
        predicted * 100.0,
        68.3,
        ms(std_dev(&with))
    );
    assert!(
        (within - predicted).abs() <= bound,
        "{:.1}% within 10 ms of the median, where a normal of 10 ms with this run's noise puts {:.1}% (+/-{:.1}%)",
        within * 100.0,
        predicted * 100.0,
        bound * 100.0
    );
}

/// The standard normal's distribution function (Abramowitz and Stegun 26.2.17, error below
/// 7.5e-8).
fn normal_cdf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.231_641_9 * x.abs());
    let poly =
        t * (0.319_381_530 + t * (-0.356_563_782 + t * (1.781_477_937 + t * (-1.821_255_978 + t * 1.330_274_429))));
    let upper = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * poly;
    if x >= 0.0 { 1.0 - upper } else { upper }
}
