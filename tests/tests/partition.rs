//! A partition with `direction = both` cuts one address both ways and nothing else.

use std::net::{IpAddr, SocketAddr};

use chaos_tests::{Daemon, Lab, lab, traffic};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Connectivity between `a` and the address `b_addr` of b, both ways, TCP and UDP.
fn reachable(lab: &Lab, a_addr: &str, b_addr: &str) -> [bool; 4] {
    const N: u32 = 200;
    let (a, b) = (ip(a_addr), ip(b_addr));
    [
        traffic::tcp_connects(&lab.a, Some(a), &lab.b, SocketAddr::new(b, 7000)).unwrap(),
        traffic::tcp_connects(&lab.b, Some(b), &lab.a, SocketAddr::new(a, 7000)).unwrap(),
        traffic::udp(&lab.a, Some(a), &lab.b, SocketAddr::new(b, 7001), N).unwrap() == N,
        traffic::udp(&lab.b, Some(b), &lab.a, SocketAddr::new(a, 7001), N).unwrap() == N,
    ]
}

fn partition(a_addr: &str, cut: &str, other: &str, prefix: &str) {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    assert_eq!(reachable(&lab, a_addr, cut), [true; 4], "before the partition");

    let dst = format!("{cut}/{prefix}");
    daemon.ctl_ok(&["apply", "--name", "cut", "-i", &lab.a_if, "--partition", "--direction", "both", "--dst", &dst]);
    // [tcp a->b, tcp b->a, udp a->b, udp b->a]: all of them fail for the cut address...
    assert_eq!(reachable(&lab, a_addr, cut), [false; 4], "{cut} should be cut both ways");
    // ...the other address of the same host is untouched.
    assert_eq!(reachable(&lab, a_addr, other), [true; 4], "{other} should be reachable");

    daemon.ctl_ok(&["rm", "cut"]);
    assert_eq!(reachable(&lab, a_addr, cut), [true; 4], "after removing the partition");
}

#[test]
fn partition_both_ways_ipv4() {
    partition(lab::A4, lab::B4, lab::B4_OTHER, "32");
}

#[test]
fn partition_both_ways_ipv6() {
    partition(lab::A6, lab::B6, lab::B6_OTHER, "128");
}
