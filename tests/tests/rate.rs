//! Bandwidth: a 10 Mbit/s rule holds a TCP transfer to 10 Mbit/s; another flow at the same
//! time is not limited. Needs a delay backend: see `delay.rs` (`CHAOS_TEST_BACKEND`).
//!
//! The rate counts whole frames (Ethernet, IP and TCP headers included, per segment: the
//! qdisc length `wire_len` on the edt backend, HTB's packet length on netem). A full-size TCP segment carries 1448 payload bytes
//! (timestamps on) in a 1514-byte frame, so the payload goodput of a 10 Mbit/s link is
//! 9.56 Mbit/s; the acceptance bound is 10% of the rate around that, measured over 4 s after
//! 1 s of slow start.

use std::{net::SocketAddr, time::Duration};

use chaos_tests::{Daemon, Lab, lab, traffic};

const RATE: f64 = 10e6;
const PAYLOAD_SHARE: f64 = 1448.0 / 1514.0;

#[test]
fn rate_limits_tcp_and_nothing_else() {
    let lab = Lab::new().unwrap();
    let Some(daemon) = Daemon::with_test_backend(&lab) else { return };
    let limited = SocketAddr::new(lab::B4.parse().unwrap(), 5001);
    let free = SocketAddr::new(lab::B4.parse().unwrap(), 5002);
    daemon.ctl_ok(&["apply", "--name", "thin", "-i", &lab.a_if, "--rate", "10mbit", "-p", "tcp", "--dport", "5001"]);

    let (warmup, window) = (Duration::from_secs(1), Duration::from_secs(4));
    let (goodput, other) = std::thread::scope(|s| {
        let other = s.spawn(|| traffic::tcp_goodput(&lab.a, &lab.b, free, warmup, window).unwrap());
        let goodput = traffic::tcp_goodput(&lab.a, &lab.b, limited, warmup, window).unwrap();
        (goodput, other.join().unwrap())
    });
    let expected = RATE * PAYLOAD_SHARE;
    println!(
        "limited flow {:.2} Mbit/s (expected {:.2}), other flow {:.2} Mbit/s",
        goodput / 1e6,
        expected / 1e6,
        other / 1e6
    );
    assert!(
        (goodput - expected).abs() <= 0.1 * RATE,
        "limited flow: {:.2} Mbit/s of payload, expected {:.2} (10 Mbit/s of frames) within 1 Mbit/s",
        goodput / 1e6,
        expected / 1e6
    );
    assert!(other > 2.0 * RATE, "the other flow was held to {:.2} Mbit/s", other / 1e6);

    daemon.ctl_ok(&["rm", "thin"]);
    let after = traffic::tcp_goodput(&lab.a, &lab.b, limited, warmup, Duration::from_secs(2)).unwrap();
    assert!(after > 2.0 * RATE, "after removal the flow still runs at {:.2} Mbit/s", after / 1e6);
}
