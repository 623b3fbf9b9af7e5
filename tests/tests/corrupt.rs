//! Corrupt: one payload bit flipped per chosen packet, with the L4 checksum left broken (the
//! receiver's stack drops the packet; TCP sends it again) or fixed (the application gets the
//! damaged bytes). Measured at the receiver, on UDP and TCP.
//!
//! Between two namespaces on one host the kernel never checks the checksum of a packet it built
//! itself (it stays CHECKSUM_PARTIAL across the veth), so the broken-checksum tests turn TX
//! checksum offload off on the sender, as a NIC without offload would: the stack then completes
//! every checksum before the packet leaves. `broken_checksum_is_not_checked_between_namespaces`
//! pins what happens with offload on, as the docs say.

use std::net::{IpAddr, SocketAddr};

use chaos_tests::{Daemon, Lab, lab::B4, traffic};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

const N: u32 = 20_000;
const P: f64 = 0.10;

/// Five binomial standard deviations of a count of N trials at P: ±212 of 2,000.
fn assert_binomial(what: &str, count: u64) {
    let (n, expected) = (f64::from(N), f64::from(N) * P);
    let bound = 5.0 * (n * P * (1.0 - P)).sqrt();
    assert!((count as f64 - expected).abs() <= bound, "{what}: {count} of {N}, expected {expected:.0} ± {bound:.0}");
}

fn counters(daemon: &Daemon) -> (u64, u64, u64) {
    let f = &daemon.list()["faults"][0];
    (f["matched"].as_u64().unwrap(), f["corrupted"].as_u64().unwrap(), f["dropped"].as_u64().unwrap())
}

#[test]
fn udp_fixed_checksum_delivers_damaged_datagrams() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let apply = ["apply", "-i", &lab.a_if, "--corrupt", "10%", "--checksum", "fixed", "-p", "udp", "--dport", "9500"];
    daemon.ctl_ok(&apply);
    let got = traffic::udp_copies(&lab.a, &lab.b, addr(B4, 9500), N, 200).unwrap();
    // Every datagram arrives, once: the checksum was fixed, so none is dropped.
    let intact = got.copies.iter().filter(|c| **c == 1).count() as u32;
    assert_eq!(intact + got.damaged, N, "{} lost", got.lost() - got.damaged);
    assert!(got.copies.iter().all(|c| *c <= 1));
    assert_binomial("damaged datagrams", u64::from(got.damaged));
    assert_eq!(counters(&daemon), (u64::from(N), u64::from(got.damaged), 0));
}

#[test]
fn udp_broken_checksum_is_dropped_by_the_receiver() {
    let lab = Lab::new().unwrap();
    lab.a.set_tx_checksum(&lab.a_if, false).unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--corrupt", "10%", "-p", "udp", "--dport", "9501"]);
    let got = traffic::udp_copies(&lab.a, &lab.b, addr(B4, 9501), N, 200).unwrap();
    // The application never sees a damaged datagram: the stack drops them.
    assert_eq!(got.damaged, 0, "damaged datagrams reached the application");
    assert_binomial("lost datagrams", u64::from(got.lost()));
    let (matched, corrupted, dropped) = counters(&daemon);
    assert_eq!((matched, corrupted, dropped), (u64::from(N), u64::from(got.lost()), 0));
}

#[test]
fn broken_checksum_is_not_checked_between_namespaces() {
    // With TX checksum offload on (the veth default) the sender leaves the checksum to the
    // "hardware", and the receiver trusts it: the damage arrives, as with `fixed`.
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--corrupt", "10%", "-p", "udp", "--dport", "9502"]);
    let got = traffic::udp_copies(&lab.a, &lab.b, addr(B4, 9502), N, 200).unwrap();
    assert_eq!(got.lost(), got.damaged);
    assert_binomial("damaged datagrams", u64::from(got.damaged));
}

/// 4 MB of data whose every byte depends on its position. With GSO a socket buffer carries at
/// most 64 KB, so at least 64 of them pass the hook: at 20% the chance that none is corrupted is
/// 0.8^64 < 1e-6 (a run that corrupted nothing would show nothing).
fn data() -> Vec<u8> {
    (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

#[test]
fn tcp_broken_checksum_costs_retransmissions_not_data() {
    let lab = Lab::new().unwrap();
    lab.a.set_tx_checksum(&lab.a_if, false).unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--corrupt", "20%", "-p", "tcp", "--dport", "9503"]);
    let sent = data();
    let got = traffic::tcp_transfer(&lab.a, &lab.b, addr(B4, 9503), sent.clone()).unwrap();
    assert!(got == sent, "TCP delivered damaged data ({} bytes of {})", got.len(), sent.len());
    let (_, corrupted, _) = counters(&daemon);
    assert!(corrupted > 0, "nothing was corrupted");
}

#[test]
fn tcp_fixed_checksum_flips_one_bit_per_corrupted_segment() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let apply = ["apply", "-i", &lab.a_if, "--corrupt", "20%", "--checksum", "fixed", "-p", "tcp", "--dport", "9504"];
    daemon.ctl_ok(&apply);
    let sent = data();
    let retransmitted = || lab.a.enter(tcp_retransmits).unwrap();
    let before = retransmitted();
    let got = traffic::tcp_transfer(&lab.a, &lab.b, addr(B4, 9504), sent.clone()).unwrap();
    let resent = retransmitted() - before;
    assert_eq!(got.len(), sent.len());
    let flipped: u64 = got.iter().zip(&sent).map(|(a, b)| u64::from((a ^ b).count_ones())).sum();
    // Nothing is lost on a veth: every corrupted segment reached the application with exactly
    // one bit flipped. Only a segment sent twice (a retransmission timer firing on a loaded
    // machine) can be corrupted in a copy the receiver then drops as a duplicate.
    let (_, corrupted, _) = counters(&daemon);
    assert!(corrupted > 0, "nothing was corrupted");
    assert!(
        flipped <= corrupted && corrupted - flipped <= resent,
        "{flipped} bits flipped in the received data, {corrupted} counted by the rule, {resent} segments resent"
    );
}

/// Segments TCP retransmitted in the calling thread's network namespace (/proc/net/snmp).
fn tcp_retransmits() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == "RetransSegs").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}
