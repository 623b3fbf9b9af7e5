//! Loss with memory: correlation keeps the rate and lengthens bursts as the model says, and
//! Gilbert–Elliott loss lands on the model's stationary rate. Measured at the receiver.
//!
//! Both models are Markov chains, so successive outcomes are correlated and the binomial bound
//! is too tight: each bound below is five standard deviations of the sample mean of the chain
//! (its asymptotic variance, `Var(X) + 2 Σ Cov(X_0, X_k)`, over n), about one false failure in
//! 1.7 million runs.

use std::net::{IpAddr, SocketAddr};

use chaos_tests::{Daemon, Lab, lab::B4, traffic};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

const N: u32 = 100_000;

/// Applies `flags` as a loss on UDP to `port`, sends N datagrams and returns what arrived and
/// the fault's counters (matched, dropped).
fn measure(port: u16, flags: &[&str]) -> (traffic::Arrivals, (u64, u64)) {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let port_text = port.to_string();
    let mut args = vec!["apply", "--name", "lossy", "-i", &lab.a_if, "-p", "udp", "--dport", &port_text];
    args.extend_from_slice(flags);
    daemon.ctl_ok(&args);
    let got = traffic::udp_copies(&lab.a, &lab.b, addr(B4, port), N, 16).unwrap();
    assert_eq!(got.damaged, 0);
    let fault = &daemon.list()["faults"][0];
    let counters = (fault["matched"].as_u64().unwrap(), fault["dropped"].as_u64().unwrap());
    // The rule saw every datagram, and every datagram lost is one it dropped.
    assert_eq!(counters, (u64::from(N), u64::from(got.lost())), "{fault}");
    (got, counters)
}

/// Checks the measured loss rate against `p` within five standard deviations of a chain whose
/// outcomes have variance factor `factor` (1 for independent packets).
fn assert_rate(what: &str, got: &traffic::Arrivals, p: f64, factor: f64) {
    let rate = f64::from(got.lost()) / f64::from(N);
    let bound = 5.0 * (p * (1.0 - p) * factor / f64::from(N)).sqrt();
    eprintln!("{what}: loss {:.3}% (model {:.3}% ± {:.3})", rate * 100.0, p * 100.0, bound * 100.0);
    assert!(
        (rate - p).abs() <= bound,
        "{what}: measured {:.3}% loss, model {:.3}% ± {:.3}",
        rate * 100.0,
        p * 100.0,
        bound * 100.0
    );
}

/// Checks the mean length of loss bursts against the model's `1/q` (bursts end with
/// probability q after each loss, so their lengths are geometric: variance (1-q)/q²).
fn assert_bursts(what: &str, got: &traffic::Arrivals, q: f64) -> f64 {
    let bursts = got.bursts();
    let mean = bursts.iter().map(|&b| f64::from(b)).sum::<f64>() / bursts.len() as f64;
    let bound = 5.0 * ((1.0 - q) / (q * q) / bursts.len() as f64).sqrt();
    eprintln!("{what}: mean burst {mean:.3} over {} bursts (model {:.3} ± {bound:.3})", bursts.len(), 1.0 / q);
    assert!(
        (mean - 1.0 / q).abs() <= bound,
        "{what}: mean burst {mean:.3} over {} bursts, model {:.3} ± {bound:.3}",
        bursts.len(),
        1.0 / q
    );
    mean
}

#[test]
fn correlation_keeps_the_rate_and_lengthens_bursts() {
    let p = 0.10;
    let (independent, _) = measure(9400, &["--loss", "10%"]);
    assert_rate("correlation 0", &independent, p, 1.0);
    // Independent losses: a burst goes on with probability p.
    let short = assert_bursts("correlation 0", &independent, 1.0 - p);

    let c = 0.5;
    let (correlated, _) = measure(9401, &["--loss", "10%", "--correlation", "50%"]);
    // A loss follows a loss with c + (1-c)p, a delivery with (1-c)p: the outcomes form a
    // two-state chain with second eigenvalue c, whose sample mean has variance factor
    // (1+c)/(1-c) over independent packets. The rate is still p.
    assert_rate("correlation 50%", &correlated, p, (1.0 + c) / (1.0 - c));
    // A burst ends with probability 1 - (c + (1-c)p) = (1-c)(1-p): mean 2.22 against 1.11.
    let long = assert_bursts("correlation 50%", &correlated, (1.0 - c) * (1.0 - p));
    assert!(long > 1.8 * short, "correlation did not lengthen bursts: {long:.3} against {short:.3}");
}

#[test]
fn gilbert_elliott_matches_its_stationary_rate() {
    // netem's `loss gemodel 1% 30% 80% 1%`: good -> bad 1%, bad -> good 30%, loss 80% in the
    // bad state and 1% in the good one.
    let (p, r, loss_bad, loss_good): (f64, f64, f64, f64) = (0.01, 0.30, 0.80, 0.01);
    let (got, _) = measure(9402, &["--gemodel", "1% 30% 80% 1%"]);
    let bad = p / (p + r);
    let mean = (1.0 - bad) * loss_good + bad * loss_bad;
    // The state chain's second eigenvalue is 1 - p - r; a packet's outcome depends on the state,
    // so Cov(X_0, X_k) = (loss_bad - loss_good)² π_good π_bad λ^k for k ≥ 1.
    let lambda = 1.0 - p - r;
    let covariances = 2.0 * (loss_bad - loss_good).powi(2) * bad * (1.0 - bad) * lambda / (1.0 - lambda);
    let factor = 1.0 + covariances / (mean * (1.0 - mean));
    assert_rate("gemodel", &got, mean, factor);
    // Bursts: far longer than independent loss at the same rate would give (1.04).
    let bursts = got.bursts();
    let mean_burst = bursts.iter().map(|&b| f64::from(b)).sum::<f64>() / bursts.len() as f64;
    eprintln!("gemodel: mean burst {mean_burst:.3} over {} bursts", bursts.len());
    assert!(mean_burst > 1.5, "gemodel bursts average {mean_burst:.2}");
}
