//! Loss on one UDP destination port, measured at the receiver.

use std::net::{IpAddr, SocketAddr};

use chaos_tests::{
    Daemon, Lab, kernel,
    lab::{A4, B4},
    traffic,
};

const N: u32 = 20_000;
const P: f64 = 0.30;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

#[test]
fn udp_loss_on_one_port_is_exact_and_scoped() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "--name", "udp-loss", "-i", &lab.a_if, "--loss", "30%", "-p", "udp", "--dport", "9000"]);

    let received = traffic::udp(&lab.a, None, &lab.b, addr(B4, 9000), N).unwrap();
    let lost = N - received;
    let rate = f64::from(lost) / f64::from(N);
    // Each datagram is dropped independently with p = 0.3, so the measured rate is
    // binomial(n, p) / n with standard deviation sqrt(p (1 - p) / n) = 0.00324 for n = 20,000.
    // Five standard deviations (±1.62 points) fail a correct program about once in 1.7 million
    // runs, and catch a rate that is off by 2 points or more.
    let bound = 5.0 * (P * (1.0 - P) / f64::from(N)).sqrt();
    assert!((rate - P).abs() <= bound, "measured {:.2}% loss, asked 30% (allowed ±{:.2})", rate * 100.0, bound * 100.0);

    // Every datagram met the rule, and every lost one is one the rule dropped.
    let list = daemon.list();
    let fault = &list["faults"][0];
    assert_eq!(fault["matched"], u64::from(N), "{fault}");
    assert_eq!(fault["dropped"], u64::from(lost), "{fault}");

    // Another port, and the same port in the other direction, are untouched.
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9001), N / 4).unwrap(), N / 4);
    assert_eq!(traffic::udp(&lab.b, None, &lab.a, addr(A4, 9000), N / 4).unwrap(), N / 4);

    daemon.ctl_ok(&["rm", "udp-loss"]);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9000), N / 4).unwrap(), N / 4);
    // With no fault left on the interface, no program stays on its packet path (once idle for
    // detach_after).
    daemon.detached();
    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());
}
