//! A change costs what it changes, and packets never see half of one: while 1,000 faults are
//! applied and removed one by one next to 10,000 others, a flow no fault matches loses
//! nothing, and a flow an unchanged partition matches is dropped every time. Each of those
//! changes is written in place (the daemon logs `incremental=true`), not as a new generation.

use std::{net::SocketAddr, time::Duration};

use chaos_tests::{Daemon, Lab, http, lab, traffic::Flow};
use serde_json::json;

/// Addresses no flow of the lab uses: half IPv4 (198.18.0.0/15), half IPv6 (2001:db8::/32).
fn elsewhere(i: u32) -> String {
    if i.is_multiple_of(2) { format!("198.18.{}.{}", i / 2 / 256, i / 2 % 256) } else { format!("2001:db8::{:x}", i) }
}

fn partition(name: &str, interface: &str, dst: &str) -> serde_json::Value {
    json!({ "name": name, "interface": interface, "action": "partition", "direction": "both", "dst": dst })
}

#[test]
fn a_thousand_changes_next_to_ten_thousand_faults_drop_exactly_what_they_should() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, "max_faults = 12000").unwrap();
    let iface = lab.a_if.as_str();
    let mut faults: Vec<_> = (0..10_000).map(|i| partition(&format!("other-{i}"), iface, &elsewhere(i))).collect();
    faults.push(json!({
        "name": "blocked", "interface": iface, "action": "partition", "protocol": "udp", "dport": 9100, "dst": lab::B4
    }));
    let apply = |faults: serde_json::Value| {
        let answer =
            http::request(&daemon.socket, "POST", "/v1/faults", json!({ "faults": faults }).to_string().as_bytes())
                .unwrap();
        assert_eq!(answer.status, 201, "{:?}", answer.error());
    };
    apply(json!(faults));

    let b = |port| SocketAddr::new(lab::B4.parse().unwrap(), port);
    let free = Flow::start(&lab.a, &lab.b, b(9200), Duration::from_micros(500)).unwrap();
    let cut = Flow::start(&lab.a, &lab.b, b(9100), Duration::from_micros(500)).unwrap();
    let live_before = daemon.log().matches("incremental=true").count();
    for i in 0..1000 {
        let name = format!("churn-{i}");
        apply(json!([partition(&name, iface, &elsewhere(20_000 + i))]));
        let answer = http::request(&daemon.socket, "DELETE", &format!("/v1/faults/{name}"), b"").unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.error());
    }
    let (sent, arrived) = free.stop().unwrap();
    let (cut_sent, cut_arrived) = cut.stop().unwrap();

    assert!(sent > 1000 && cut_sent > 1000, "the flows ran through the changes: {sent}, {cut_sent}");
    let lost: Vec<u32> = (0..sent).filter(|s| !arrived.contains(s)).take(20).collect();
    assert!(
        lost.is_empty(),
        "the flow no fault matches lost {} of {sent} datagrams, first {lost:?}",
        sent - arrived.len() as u32
    );
    assert!(cut_arrived.is_empty(), "{} of {cut_sent} datagrams passed the partition", cut_arrived.len());
    // Each of the 2,000 changes was written in place.
    let in_place = daemon.log().matches("incremental=true").count() - live_before;
    assert!(in_place >= 2000, "only {in_place} of 2000 changes were written in place");
}
