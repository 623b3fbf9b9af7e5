//! The Prometheus endpoint (`metrics_address`): its text parses with a Prometheus parser, its
//! counters are the ones the daemon lists and the kernel's COUNTERS map holds (read here
//! independently), its gauges follow the faults and attachments; it is off by default, and a
//! bad address stops the daemon's start.

use std::{
    collections::{BTreeSet, HashMap},
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use aya::maps::{Map, MapData, PerCpuArray};
use chaos_common::{Counters, map_names::COUNTERS};
use chaos_tests::{Daemon, Lab, Netns, kernel, lab::B4, traffic};
use prometheus_parse::{LineInfo, Scrape, Value};

/// In the lab's own network namespace: nothing else there listens on it.
const PORT: u16 = 9464;
const N: u32 = 5_000;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// One HTTP/1.0 request to the metrics listener, made inside `ns` (the daemon's namespace,
/// whose loopback it listens on): the status code, the header block and the body.
fn request(ns: &Netns, method: &str, path: &str) -> anyhow::Result<(u16, String, String)> {
    let request = format!("{method} {path} HTTP/1.0\r\nHost: chaos\r\n\r\n");
    let raw = ns.enter(move || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", PORT))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Ok(raw)
    })??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no whole answer: {text:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    Ok((status.ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?, head.to_owned(), body.to_owned()))
}

/// `GET /metrics`, parsed. prometheus-parse skips lines it cannot read, so every line is first
/// checked to be one it reads (a comment, a type, a sample), and every sample to have a type.
fn scrape(ns: &Netns) -> Scrape {
    let (status, head, body) = request(ns, "GET", "/metrics").unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    for line in body.lines() {
        let info = LineInfo::parse(line);
        assert!(!matches!(info, LineInfo::Ignored | LineInfo::Empty), "not a line of the text format: {line:?}");
    }
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("the metrics parse");
    assert_eq!(scrape.samples.len(), body.lines().filter(|l| !l.starts_with('#')).count(), "{body}");
    for s in &scrape.samples {
        assert!(matches!(s.value, Value::Counter(_) | Value::Gauge(_)), "{} has no type: {body}", s.metric);
    }
    scrape
}

/// The samples of `metric`, as their labels and values.
fn samples(scrape: &Scrape, metric: &str) -> Vec<(HashMap<String, String>, f64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) => ((*s.labels).clone(), v),
            _ => unreachable!("checked in scrape"),
        })
        .collect()
}

/// The one sample of `metric` whose `label` is `value`, with all its labels.
fn one(scrape: &Scrape, metric: &str, label: &str, value: &str) -> (HashMap<String, String>, f64) {
    let mut found: Vec<_> = samples(scrape, metric).into_iter().filter(|(l, _)| l[label] == value).collect();
    assert_eq!(found.len(), 1, "{metric}{{{label}=\"{value}\"}}: {found:?}");
    found.remove(0)
}

/// A fault's counters as the kernel holds them: its rule slot (from the daemon's state, as the
/// daemon reads it) in the COUNTERS map the daemon has open, summed over CPUs.
fn kernel_counters(daemon: &Daemon, name: &str) -> Counters {
    let mut store = chaos_daemon::state::Store::open(&daemon.dir.join("state"), 1000).unwrap();
    let state = store.load().unwrap().expect("a state");
    let slot = state.faults.iter().find(|f| f.name == name).expect("recorded").slot;
    let pid = daemon.pid().expect("running").as_raw() as u32;
    for id in kernel::maps_of_process(pid).unwrap() {
        let data = MapData::from_id(id).unwrap();
        if data.info().unwrap().name_as_str() != Some(COUNTERS) {
            continue;
        }
        let map = PerCpuArray::<_, Counters>::try_from(Map::from_map_data(data).unwrap()).unwrap();
        return map.get(&slot, 0).unwrap().iter().fold(Counters::default(), |a, c| Counters {
            matched: a.matched + c.matched,
            dropped: a.dropped + c.dropped,
            duplicated: a.duplicated + c.duplicated,
            corrupted: a.corrupted + c.corrupted,
            reset: a.reset + c.reset,
            answered: a.answered + c.answered,
        });
    }
    panic!("the daemon (pid {pid}) holds no {COUNTERS} map");
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn metrics_are_the_kernels_counters_and_follow_the_faults() {
    let lab = Lab::new().unwrap();
    let config = format!("metrics_address = \"127.0.0.1:{PORT}\"\nmax_faults = 50");
    let mut daemon = Daemon::start_with(&lab.a, &config).unwrap();
    let a_if = lab.a_if.as_str();
    let apply = |port: &str, args: &[&str]| {
        daemon.ctl_ok(&[&["apply", "-i", a_if, "-p", "udp", "--dport", port][..], args].concat());
    };
    apply("9000", &["--name", "lossy", "-e", "exp1", "--loss", "30%", "--for", "10m"]);
    apply("9001", &["--name", "copies", "--duplicate", "20%"]);
    apply("9002", &["--name", "later", "--loss", "5%", "--start-after", "1h", "--for", "10m"]);

    let received = traffic::udp(&lab.a, None, &lab.b, addr(B4, 9000), N).unwrap();
    let copies = traffic::udp_copies(&lab.a, &lab.b, addr(B4, 9001), N, 64).unwrap();
    let doubled = copies.copies.iter().filter(|c| **c == 2).count() as f64;
    let s = scrape(&lab.a);
    let list = daemon.list();
    let listed = |name: &str, field: &str| {
        let f = list["faults"].as_array().unwrap().iter().find(|f| f["name"] == name).expect("listed");
        f[field].as_u64().unwrap() as f64
    };

    // Each fault's counters: as listed, as the kernel's map holds them, as the receiver saw.
    let (lossy, matched) = one(&s, "chaos_fault_matched_packets_total", "name", "lossy");
    assert_eq!(lossy, labels(&[("name", "lossy"), ("action", "loss"), ("interface", a_if), ("experiment", "exp1")]));
    let (_, dropped) = one(&s, "chaos_fault_dropped_packets_total", "name", "lossy");
    let kernel = kernel_counters(&daemon, "lossy");
    assert_eq!((matched, dropped), (listed("lossy", "matched"), listed("lossy", "dropped")));
    assert_eq!((matched, dropped), (kernel.matched as f64, kernel.dropped as f64));
    assert_eq!((matched, dropped), (f64::from(N), f64::from(N - received)));
    assert!(dropped > 0.0, "a 30% loss of {N} dropped nothing");

    let (copies_labels, duplicated) = one(&s, "chaos_fault_duplicated_packets_total", "name", "copies");
    assert_eq!(copies_labels, labels(&[("name", "copies"), ("action", "duplicate"), ("interface", a_if)]));
    let kernel = kernel_counters(&daemon, "copies");
    assert_eq!(duplicated, listed("copies", "duplicated"));
    assert_eq!(duplicated, kernel.duplicated as f64);
    assert_eq!(duplicated, doubled, "copies that arrived");
    assert!(duplicated > 0.0, "a 20% duplicate of {N} copied nothing");
    assert_eq!(one(&s, "chaos_fault_matched_packets_total", "name", "copies").1, kernel.matched as f64);
    // A counter only where the action moves it.
    let duplicating: Vec<_> = samples(&s, "chaos_fault_duplicated_packets_total").into_iter().map(|(l, _)| l).collect();
    assert_eq!(duplicating, vec![copies_labels], "only the duplicate fault has a duplicated counter");
    assert!(samples(&s, "chaos_fault_reset_packets_total").is_empty());
    assert_eq!(one(&s, "chaos_fault_matched_packets_total", "name", "later").1, 0.0);

    // State and time left: the scheduled fault ends an hour and ten minutes from now.
    assert_eq!(one(&s, "chaos_fault_active", "name", "lossy").1, 1.0);
    assert_eq!(one(&s, "chaos_fault_active", "name", "later").1, 0.0);
    let left = one(&s, "chaos_fault_remaining_seconds", "name", "lossy").1;
    assert!((540.0..=600.0).contains(&left), "lossy: {left} s left of 10m");
    let left = one(&s, "chaos_fault_remaining_seconds", "name", "later").1;
    assert!((4140.0..=4200.0).contains(&left), "later: {left} s left of 1h10m");
    assert_eq!(one(&s, "chaos_faults", "state", "active").1, 2.0);
    assert_eq!(one(&s, "chaos_faults", "state", "scheduled").1, 1.0);
    assert_eq!(samples(&s, "chaos_rule_slots"), vec![(HashMap::new(), 3.0)]);
    assert_eq!(samples(&s, "chaos_max_faults"), vec![(HashMap::new(), 50.0)]);
    assert_eq!(samples(&s, "chaos_max_rule_slots"), vec![(HashMap::new(), f64::from(chaos_common::MAX_RULES))]);

    // The daemon and its attachments, as its status says.
    let status: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
    let [(info, 1.0)] = &samples(&s, "chaos_daemon_info")[..] else { panic!("{:?}", samples(&s, "chaos_daemon_info")) };
    assert_eq!(info["version"], status["version"].as_str().unwrap());
    assert_eq!(info["kernel"], status["kernel"].as_str().unwrap());
    // Its first word: status says why there is none.
    assert_eq!(status["delay_backend"].as_str().unwrap().split(' ').next(), Some(info["delay_backend"].as_str()));
    let attached: BTreeSet<(String, String, String)> = samples(&s, "chaos_attached")
        .into_iter()
        .map(|(l, v)| {
            assert_eq!(v, 1.0);
            (l["interface"].clone(), l["hook"].clone(), l["mode"].clone())
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| [&a["interface"], &a["hook"], &a["mode"]].map(|v| v.as_str().unwrap().to_owned()).into())
        .collect();
    assert!(expected.iter().any(|(i, h, _)| i == a_if && h == "egress"), "{status}");
    assert_eq!(attached, expected);

    // Other paths and methods.
    assert_eq!(request(&lab.a, "GET", "/").unwrap().0, 404);
    let (status, head, _) = request(&lab.a, "POST", "/metrics").unwrap();
    assert_eq!(status, 405);
    assert!(head.to_lowercase().contains("allow: get"), "{head}");

    // With every fault gone, so are their series and (once idle for detach_after) the
    // attachments.
    daemon.ctl_ok(&["clear"]);
    daemon.detached();
    let s = scrape(&lab.a);
    assert!(samples(&s, "chaos_fault_matched_packets_total").is_empty());
    assert!(samples(&s, "chaos_fault_active").is_empty());
    assert!(samples(&s, "chaos_attached").is_empty());
    assert_eq!(one(&s, "chaos_faults", "state", "active").1, 0.0);
    assert_eq!(one(&s, "chaos_faults", "state", "scheduled").1, 0.0);
    assert_eq!(samples(&s, "chaos_rule_slots"), vec![(HashMap::new(), 0.0)]);

    // SIGTERM with a scrape connection open: a clean exit, and the listener gone with it.
    let idle = lab.a.enter(|| TcpStream::connect(("127.0.0.1", PORT))).unwrap().unwrap();
    let exit = daemon.stop().unwrap();
    assert!(exit.success(), "chaos-daemon exited with {exit}");
    drop(idle);
    assert!(request(&lab.a, "GET", "/metrics").is_err(), "the metrics listener outlived the daemon");
}

/// TCP sockets listening in the calling thread's network namespace.
fn listening() -> Vec<String> {
    ["tcp", "tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        // The fourth field is the state: 0A is LISTEN.
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .collect()
}

#[test]
fn metrics_are_off_by_default() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--loss", "10%", "-p", "udp", "--dport", "9000"]);
    let (refused, listeners) =
        lab.a.enter(|| (TcpStream::connect(("127.0.0.1", PORT)).map_err(|e| e.kind()).err(), listening())).unwrap();
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(listeners, Vec::<String>::new(), "no TCP listener in the daemon's namespace");
}

#[test]
fn a_bad_metrics_address_stops_the_start() {
    let lab = Lab::new().unwrap();
    for (address, why) in [
        ("localhost:9464", "metrics_address: 'localhost:9464' is not an IP address and port"),
        ("127.0.0.1:0", "metrics_address: '127.0.0.1:0' has port 0"),
        // The other host's address, not one of the daemon's namespace: the bind fails.
        (&format!("{B4}:{PORT}"), &format!("metrics_address: binding {B4}:{PORT}")),
    ] {
        let error = Daemon::start_with(&lab.a, &format!("metrics_address = \"{address}\""))
            .err()
            .unwrap_or_else(|| panic!("{address}: the daemon started"))
            .to_string();
        assert!(error.contains(why), "{address}: {error}");
    }
}
