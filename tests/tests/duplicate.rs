//! Duplicate: copies arrive exactly once more each, on either hook, and are never copied again.

use std::net::{IpAddr, SocketAddr};

use chaos_tests::{Daemon, Lab, lab::B4, traffic};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

const N: u32 = 20_000;

/// Applies a `percent` duplicate of UDP to `port` on the named side's interface and hook, sends
/// N datagrams a -> b, and checks what b received against the binomial and the rule's counters.
fn duplicates(on_b: bool, direction: &str, port: u16, percent: f64) {
    let lab = Lab::new().unwrap();
    let (ns, dev) = if on_b { (&lab.b, &lab.b_if) } else { (&lab.a, &lab.a_if) };
    let daemon = Daemon::start(ns).unwrap();
    let pct = format!("{percent}%");
    let port_text = port.to_string();
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "dup",
        "-i",
        dev,
        "--duplicate",
        &pct,
        "-d",
        direction,
        "-p",
        "udp",
        "--dport",
        &port_text,
    ]);

    let got = traffic::udp_copies(&lab.a, &lab.b, addr(B4, port), N, 64).unwrap();
    assert_eq!(got.damaged, 0, "copies are byte for byte the original");
    assert_eq!(got.lost(), 0, "no datagram is lost: duplication never drops");
    // No storm: a copy is never copied again, so no datagram arrives more than twice.
    let most = *got.copies.iter().max().unwrap();
    assert!(most <= 2, "a datagram arrived {most} times");
    let doubled = got.copies.iter().filter(|c| **c == 2).count() as u64;

    let p = percent / 100.0;
    // Each datagram is copied independently with probability p: the number copied is
    // binomial(N, p), standard deviation sqrt(N p (1-p)) = 42 for 10% of 20,000; five of them
    // (±212, ±1.06 points) fail a correct program about once in 1.7 million runs.
    let sd = (f64::from(N) * p * (1.0 - p)).sqrt();
    let expected = f64::from(N) * p;
    assert!(
        (doubled as f64 - expected).abs() <= 5.0 * sd,
        "{doubled} of {N} arrived twice, expected {expected:.0} ± {:.0}",
        5.0 * sd
    );
    // The rule counted every original once, and exactly the copies that arrived.
    let fault = &daemon.faults()[0];
    assert_eq!((fault.matched, fault.duplicated, fault.dropped), (u64::from(N), doubled, 0), "{fault:?}");

    // Another port is untouched.
    let other = traffic::udp_copies(&lab.a, &lab.b, addr(B4, port + 1), N / 10, 64).unwrap();
    assert!(other.copies.iter().all(|c| *c == 1), "the fault reached another port");
    daemon.ctl_ok(&["rm", "dup"]);
}

#[test]
fn egress_copies_arrive_once_more_each() {
    duplicates(false, "egress", 9100, 10.0);
}

#[test]
fn ingress_copies_arrive_once_more_each() {
    duplicates(true, "ingress", 9200, 10.0);
}

#[test]
fn every_packet_copied_once_and_only_once() {
    // 100%: were a copy ever copied again, this would be a storm; it must be exactly two each.
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--duplicate", "100", "-p", "udp", "--dport", "9300"]);
    let got = traffic::udp_copies(&lab.a, &lab.b, addr(B4, 9300), 5_000, 64).unwrap();
    assert!(got.copies.iter().all(|c| *c == 2), "copies per datagram: {:?}", {
        let mut seen = got.copies.clone();
        seen.sort_unstable();
        seen.dedup();
        seen
    });
    let fault = &daemon.faults()[0];
    assert_eq!((fault.matched, fault.duplicated), (5_000, 5_000), "{fault:?}");
}
