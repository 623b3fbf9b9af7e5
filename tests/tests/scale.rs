//! 10,000 faults applied in one batch through the real daemon: the one that matches still acts,
//! the other 9,999 cost no wrong drop, and `clear`, like SIGTERM, removes them all within a
//! second.

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use chaos_tests::{Daemon, Lab, kernel, lab, traffic};

/// `chaosctl clear` and SIGTERM must remove every fault within this.
const ONE_SECOND: std::time::Duration = std::time::Duration::from_secs(1);

#[test]
fn ten_thousand_faults() {
    let lab = Lab::new().unwrap();
    let mut daemon = Daemon::start(&lab.a).unwrap();
    let mut file = String::new();
    for i in 0..9_999u32 {
        let dst = format!("10.201.{}.{}", i / 256, i % 256);
        writeln!(file, "[[fault]]\ninterface = \"{}\"\naction = \"partition\"\ndst = \"{dst}\"\n", lab.a_if).unwrap();
    }
    writeln!(
        file,
        "[[fault]]\nname = \"the-one\"\ninterface = \"{}\"\naction = \"partition\"\ndst = \"{}\"",
        lab.a_if,
        lab::B4
    )
    .unwrap();
    let path = daemon.dir.join("many.toml");
    std::fs::write(&path, file).unwrap();

    let started = Instant::now();
    daemon.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    eprintln!("applied 10,000 faults in {:?} (debug build)", started.elapsed());
    assert_eq!(daemon.list()["faults"].as_array().unwrap().len(), 10_000);

    let to = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 7001);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(lab::B4), 500).unwrap(), 0);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(lab::B4_OTHER), 500).unwrap(), 500);
    let one: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["list", "-o", "json"])).unwrap();
    let the_one = one["faults"].as_array().unwrap().iter().find(|f| f["name"] == "the-one").unwrap();
    assert_eq!((the_one["matched"].as_u64(), the_one["dropped"].as_u64()), (Some(500), Some(500)));

    let started = Instant::now();
    daemon.ctl_ok(&["clear"]);
    let took = started.elapsed();
    eprintln!("cleared 10,000 faults in {took:?}");
    assert!(took < ONE_SECOND, "clear took {took:?}");
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(lab::B4), 500).unwrap(), 500);
    daemon.detached();
    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());

    daemon.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(lab::B4), 500).unwrap(), 0);
    let started = Instant::now();
    let status = daemon.stop().unwrap();
    let took = started.elapsed();
    eprintln!("SIGTERM with 10,000 faults: exited in {took:?}");
    assert!(status.success() && took < ONE_SECOND, "{status}, {took:?}");
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(lab::B4), 500).unwrap(), 500);
    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());
}
