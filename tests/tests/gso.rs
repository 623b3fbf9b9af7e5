//! Probabilities apply per socket buffer: a GSO super-packet, which leaves the TC hook as one
//! buffer and is cut into wire packets after it, meets one draw. Each wire packet is then lost
//! with exactly the probability asked (the share of wire packets lost is p), but the segments of
//! one super-packet are lost together. Pinned here with UDP GSO (8 datagrams per send).

use std::net::{IpAddr, SocketAddr};

use chaos_tests::{Daemon, Lab, lab::B4, traffic};

const GROUPS: u32 = 4_000;
const SEGMENTS: u32 = 8;
const P: f64 = 0.25;

#[test]
fn loss_applies_per_super_packet_and_per_wire_packet_on_average() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--loss", "25%", "-p", "udp", "--dport", "9800"]);
    let dst = SocketAddr::new(B4.parse::<IpAddr>().unwrap(), 9800);
    let got = traffic::udp_segments(&lab.a, &lab.b, dst, GROUPS * SEGMENTS, 100, SEGMENTS).unwrap();
    assert_eq!(got.damaged, 0);
    // Every super-packet arrived whole or not at all.
    let groups: Vec<&[u32]> = got.copies.chunks(SEGMENTS as usize).collect();
    let split = groups.iter().filter(|g| g.contains(&0) && g.iter().any(|c| *c > 0)).count();
    assert_eq!(split, 0, "{split} super-packets arrived in part");
    // The share of datagrams lost is the share of super-packets lost: binomial over GROUPS
    // draws, sd sqrt(p(1-p)/GROUPS) = 0.68 points; five of them fail a correct program about
    // once in 1.7 million runs.
    let lost = groups.iter().filter(|g| g[0] == 0).count() as u32;
    let share = f64::from(got.lost()) / f64::from(GROUPS * SEGMENTS);
    let bound = 5.0 * (P * (1.0 - P) / f64::from(GROUPS)).sqrt();
    assert!((share - P).abs() <= bound, "{:.2}% of datagrams lost, asked 25% ± {:.2}", share * 100.0, bound * 100.0);
    // The rule counts socket buffers, the units it drew for.
    let fault = &daemon.list()["faults"][0];
    assert_eq!(
        (fault["matched"].as_u64(), fault["dropped"].as_u64()),
        (Some(u64::from(GROUPS)), Some(u64::from(lost)))
    );
}
