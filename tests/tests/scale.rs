//! 10,000 faults applied in one batch through the real daemon: the one that matches still acts,
//! the other 9,999 cost no wrong drop, and `clear` removes them all.

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use chaos_tests::{Daemon, Lab, kernel, lab, traffic};

#[test]
fn ten_thousand_faults() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
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

    daemon.ctl_ok(&["clear"]);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, to(lab::B4), 500).unwrap(), 500);
    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());
}
