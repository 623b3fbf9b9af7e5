//! Reorder (netem's `reorder P gap G` on a delay): some packets skip the delay and overtake the
//! delayed ones sent before them. Measured as one-way latency and arrival order at the receiver.
//!
//! Needs a delay backend: `cargo xtask vm-test` runs this file on Debian's 6.1 kernel once per
//! backend (`CHAOS_TEST_BACKEND=edt` and `=netem`); without that variable it checks nothing and
//! says so (the host kernel has neither fq nor netem).

use std::{net::SocketAddr, time::Duration};

use chaos_tests::{Daemon, Lab, lab::B4, stats, traffic};

const MS: u64 = 1_000_000;
const DELAY: u64 = 40 * MS;
const ROUNDS: usize = 1_000;
const INTERVAL: Duration = Duration::from_millis(2);

/// Keeps the calling thread on CPU 0: the reorder chain (and its gap count) is per CPU, and the
/// sender's CPU is the one its packets' egress program runs on.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity(0) act on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

/// Sends ROUNDS datagrams under `flags` and returns, in sending order, whether each skipped the
/// delay, and how many arrived before one sent earlier.
fn measure(port: u16, flags: &[&str]) -> Option<(Vec<bool>, usize)> {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::with_test_backend(&lab)?;
    let port_text = port.to_string();
    let mut args = vec!["apply", "-i", &lab.a_if, "-p", "udp", "--dport", &port_text, "--delay", "40ms"];
    args.extend_from_slice(flags);
    daemon.ctl_ok(&args);
    pin_to_cpu0();
    let dst = SocketAddr::new(B4.parse().unwrap(), port);
    let got = traffic::udp_timed(&lab.a, &lab.b, dst, INTERVAL, ROUNDS).unwrap();
    assert_eq!(got.len(), ROUNDS, "datagrams lost");
    let overtaking = got.windows(2).filter(|w| w[1].0 < w[0].0).count();
    let mut by_send = got.clone();
    by_send.sort_unstable();
    // A delayed datagram arrives after the whole delay; a skipped one before it. netem sends a
    // skipped packet at once; fq sends it with its flow's next due packet (fq holds a flow back
    // until its earliest due time), which in a steady flow is at most an interval later, and
    // at the very start of the flow is when the first delayed packet is due.
    let latency = |(sent, received): &(u64, u64)| received - sent;
    let skipped: Vec<bool> = by_send.iter().map(|d| latency(d) < DELAY).collect();
    let fast: Vec<u64> = by_send.iter().map(latency).filter(|l| *l < DELAY).collect();
    if !fast.is_empty() {
        println!(
            "skipped datagrams' latency: median {}, p90 {}",
            stats::ms(stats::quantile(&fast, 0.5) as f64),
            stats::ms(stats::quantile(&fast, 0.9) as f64)
        );
    }
    Some((skipped, overtaking))
}

#[test]
fn a_share_of_packets_skips_the_delay_and_overtakes() {
    let Some((skipped, overtaking)) = measure(9900, &["--reorder", "25%"]) else { return };
    let share = skipped.iter().filter(|s| **s).count() as f64 / ROUNDS as f64;
    // Each datagram skips independently with p = 0.25 (gap 1): binomial, sd
    // sqrt(p(1-p)/n) = 1.37 points for 1,000; five of them fail a correct program about once
    // in 1.7 million runs.
    let bound = 5.0 * (0.25f64 * 0.75 / ROUNDS as f64).sqrt();
    println!("reorder 25%: {:.1}% skipped the delay, {overtaking} arrivals overtook", share * 100.0);
    assert!((share - 0.25).abs() <= bound, "{:.1}% skipped, expected 25% ± {:.1}", share * 100.0, bound * 100.0);
    // A datagram that skips the 40 ms overtakes the ~20 delayed ones sent in the 40 ms before it.
    assert!(overtaking > ROUNDS / 10, "only {overtaking} datagrams arrived out of order");
}

#[test]
fn gap_lets_one_in_gap_packets_skip() {
    // reorder 100% gap 5: four datagrams delayed, the fifth skips, and again: exactly, on the
    // one CPU the sender is pinned to.
    let Some((skipped, _)) = measure(9901, &["--reorder", "100", "--gap", "5"]) else { return };
    let expected: Vec<bool> = (0..ROUNDS).map(|i| i % 5 == 4).collect();
    let wrong: Vec<usize> = (0..ROUNDS).filter(|&i| skipped[i] != expected[i]).collect();
    assert!(wrong.is_empty(), "datagrams not following the gap: {:?}", &wrong[..wrong.len().min(20)]);
}
