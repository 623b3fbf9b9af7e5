//! DNS faults: queries the client sends for matching names are answered by the fault (an
//! error code or spoofed addresses) or lost, before they reach the server; other names resolve
//! as before. The server is a real dnsmasq, the resolvers glibc's (getent, getaddrinfo) and
//! dig; `lab_resolves` checks the lab itself, without a daemon. `kernel_paths` asks with raw
//! queries only, for the VM guests (`cargo xtask vm-test`'s suite `dns`), which have dnsmasq
//! but no resolver programs.

use std::{net::IpAddr, time::Duration};

use chaos_tests::{
    Daemon,
    dns::{Dig, DnsLab, Family, Gai, Getent, QType, Rcode, Record, Resolver, records},
    kernel,
    lab::{A4, A6, B4, B6},
    traffic,
};
use nix::sys::signal::Signal;

const NAMES: &[&str] = &[
    "shop.example.test",
    "api.example.test",
    "other.test",
    "example.test",
    "a.example.test",
    "b.c.example.test",
    "apis.example.test",
    "api.other.test",
];

/// The lab with [`NAMES`] served, and a daemon on the client.
fn lab_and_daemon() -> (DnsLab, Daemon) {
    let lab = DnsLab::new(&records(NAMES)).unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    (lab, daemon)
}

fn record<'a>(lab: &'a DnsLab, name: &str) -> &'a Record {
    lab.server.records().iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no record {name}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `name` resolves to its record through every resolver, for both families.
fn resolves(lab: &DnsLab, r: &Resolver, name: &str) {
    let rec = record(lab, name).clone();
    for family in [Family::V4, Family::V6] {
        let want = rec.addr(family);
        assert_eq!(r.dig(name, family.qtype()), Dig::answer([want]), "dig {name} {family:?} via {}", r.server);
        assert_eq!(r.getent(name, family), Ok(vec![want]), "getent {name} {family:?} via {}", r.server);
        assert_eq!(r.getaddrinfo(name, family), Ok(vec![want]), "getaddrinfo {name} {family:?} via {}", r.server);
    }
}

/// Applies a dns fault named `name` on the client's interface with `args`.
fn apply(lab: &DnsLab, daemon: &Daemon, name: &str, args: &[&str]) {
    daemon.ctl_ok(&[&["apply", "--name", name, "-i", &lab.a_if][..], args].concat());
}

#[test]
fn lab_resolves() {
    let mut lab = DnsLab::new(&records(NAMES)).unwrap();
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap();
    for (round, (server, client)) in [(B4, A4), (B6, A6)].into_iter().enumerate() {
        let r = lab.resolver(server).unwrap();
        for name in NAMES {
            resolves(&lab, &r, name);
        }
        // A name not served: NXDOMAIN, never forwarded (dnsmasq has no upstream server).
        assert_eq!(r.dig("nope.example.test", QType::A), Dig::error(Rcode::NxDomain));
        assert_eq!(r.dig("example.com", QType::Aaaa), Dig::error(Rcode::NxDomain));
        assert_eq!(r.getent("nope.example.test", Family::V4), Err(Getent::NotFound));
        assert_eq!(r.getaddrinfo("nope.example.test", Family::V6), Err(Gai::NoName));
        // A name that exists asked for a type it lacks: NOERROR, no address.
        assert_eq!(r.dig("shop.example.test", QType::Txt), Dig::answer([]));
        assert_eq!(r.getent("SHOP.Example.TEST", Family::V4), Ok(vec![ip("10.53.0.1")]));

        // Each lookup above reached the server once per query type, over this transport (from
        // the client's address of the server's family): 4 A, 3 AAAA, 1 TXT, and no other.
        let shop: Vec<_> = lab
            .server
            .queries()
            .into_iter()
            .filter(|q| q.name.eq_ignore_ascii_case("shop.example.test") && q.from == ip(client))
            .collect();
        let count = |t: &str| shop.iter().filter(|q| q.qtype == t).count();
        assert_eq!((count("A"), count("AAAA"), count("TXT")), (4, 3, 1), "{shop:?}");
        assert_eq!(lab.server.received("shop.example.test"), 8 * (round + 1));

        // The batch: every query answered, and each reached the server.
        let before = lab.server.received("api.example.test");
        let batch = r.batch(&["api.example.test", "other.test"], QType::A, 1000, Duration::from_millis(200));
        assert_eq!((batch.count(Rcode::NoError), batch.timeouts, batch.malformed), (1000, 0, 0), "{batch:?}");
        assert_eq!(lab.server.received("api.example.test"), before + 500);
        assert_eq!(r.query("other.test", QType::Aaaa, Duration::from_secs(1)), Dig::answer([ip("fd00:53::3")]));
    }

    // A changed record is served after the reload, to every resolver.
    lab.server.set("shop.example.test", "10.53.1.1", "fd00:53:1::1").unwrap();
    for server in [B4, B6] {
        resolves(&lab, &lab.resolver(server).unwrap(), "shop.example.test");
    }
    assert_eq!(record(&lab, "shop.example.test").v4.to_string(), "10.53.1.1");

    // Nothing reached the host: its resolv.conf is as it was, and no bind mount is left here.
    assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), host_resolv);
    assert!(!chaos_tests::dns::mounted("/etc/resolv.conf".as_ref()));
    assert!(!chaos_tests::dns::mounted("/etc/nsswitch.conf".as_ref()));

    // Dropped, the lab leaves no process, namespace or file.
    let pid = lab.server.pid().unwrap();
    let dir = lab.server.dir.clone();
    let namespaces = [lab.a.name.clone(), lab.b.name.clone()];
    std::mem::drop(lab);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "dnsmasq {pid} survived the lab");
    assert!(!dir.exists(), "{} survived the lab", dir.display());
    let listed = chaos_tests::run("ip", &["netns", "list"]).unwrap();
    assert!(namespaces.iter().all(|n| !listed.contains(n.as_str())), "{listed}");
}

/// The getaddrinfo error glibc gives for a reply with `rcode` (one server, one try): NXDOMAIN
/// is "no such name"; SERVFAIL and REFUSED are temporary failures.
fn gai_error(rcode: Rcode) -> Gai {
    match rcode {
        Rcode::NxDomain => Gai::NoName,
        _ => Gai::Again,
    }
}

/// For each code, queries for the matching name are answered with it by the fault (none reach
/// the server), and other names resolve.
fn error_codes_via(server: &str) {
    let (lab, daemon) = lab_and_daemon();
    let r = lab.resolver(server).unwrap();
    for rcode in [Rcode::ServFail, Rcode::NxDomain, Rcode::Refused] {
        let fault = format!("dns-{}", rcode.name().to_lowercase());
        apply(&lab, &daemon, &fault, &["--dns", "error", "--rcode", rcode.name(), "--domain", "shop.example.test"]);
        // The server's counts so far (the previous code's fault was removed, then `shop`
        // resolved through the server again).
        let (shop_before, api_before) =
            (lab.server.received("shop.example.test"), lab.server.received("api.example.test"));

        assert_eq!(r.dig("shop.example.test", QType::A), Dig::error(rcode));
        assert_eq!(r.dig("shop.example.test", QType::Aaaa), Dig::error(rcode));
        assert_eq!(r.getent("shop.example.test", Family::V4), Err(Getent::NotFound));
        assert_eq!(r.getaddrinfo("shop.example.test", Family::V4), Err(gai_error(rcode)), "{rcode:?}");
        assert_eq!(r.getaddrinfo("shop.example.test", Family::V6), Err(gai_error(rcode)), "{rcode:?}");
        resolves(&lab, &r, "api.example.test");

        // Five matching queries, one each (no search domain, one try): dig's two,
        // getent ahostsv4's A, getaddrinfo's A and AAAA. All answered by the fault; none
        // reached the server, while each of the other name's did (2 dig, 2 getent, 2 gai).
        let view = daemon.fault(&fault);
        assert_eq!(view.answered, 5, "{view:?}");
        assert_eq!(lab.server.received("shop.example.test"), shop_before, "{:?}", lab.server.queries());
        assert_eq!(lab.server.received("api.example.test"), api_before + 6);

        // getent ahostsv6 fails too (it asks AAAA, and A to map it if AAAA has none: how many
        // queries it sends after an error is glibc's business, so it comes after the count).
        assert_eq!(r.getent("shop.example.test", Family::V6), Err(Getent::NotFound));
        daemon.ctl_ok(&["rm", &fault]);
        resolves(&lab, &r, "shop.example.test");
    }
}

#[test]
fn error_codes() {
    error_codes_via(B4);
}

#[test]
fn error_percent() {
    const N: u32 = 2000;
    const P: f64 = 0.30;
    let (lab, daemon) = lab_and_daemon();
    let r = lab.resolver(B4).unwrap();
    apply(
        &lab,
        &daemon,
        "flaky",
        &["--dns", "error", "--rcode", "SERVFAIL", "--domain", "shop.example.test", "--percent", "30"],
    );

    let batch = r.batch(&["shop.example.test"], QType::A, N, Duration::from_millis(200));
    let servfail = batch.count(Rcode::ServFail);
    // Every query got a reply: the fault's SERVFAIL or the server's answer.
    assert_eq!((servfail + batch.count(Rcode::NoError), batch.timeouts, batch.malformed), (N, 0, 0), "{batch:?}");
    let share = f64::from(servfail) / f64::from(N);
    // Each query is answered by the fault independently with p = 0.3, so the share is
    // binomial(n, p) / n with standard deviation sqrt(p (1 - p) / n) = 0.01025 for n = 2000.
    // Five standard deviations (±5.12 points) fail a correct program about once in 1.7 million
    // runs, and catch a share that is off by 6 points or more.
    let bound = 5.0 * (P * (1.0 - P) / f64::from(N)).sqrt();
    assert!(
        (share - P).abs() <= bound,
        "{:.2}% SERVFAIL, asked 30% (allowed ±{:.2}): {batch:?}",
        share * 100.0,
        bound * 100.0
    );
    // The fault answered exactly the SERVFAILs; the server got exactly the rest.
    let view = daemon.fault("flaky");
    assert_eq!(view.answered, u64::from(servfail), "{view:?}");
    assert_eq!(lab.server.received("shop.example.test"), (N - servfail) as usize);
}

/// A and AAAA queries for the spoofed name get the fault's addresses through every resolver,
/// and never reach the server; other names are unchanged.
fn spoof_via(server: &str) {
    let (lab, daemon) = lab_and_daemon();
    let r = lab.resolver(server).unwrap();
    apply(
        &lab,
        &daemon,
        "spoof",
        &["--dns", "spoof", "--domain", "shop.example.test", "--spoof", "192.0.2.7", "--spoof", "2001:db8::7"],
    );
    let (v4, v6) = (ip("192.0.2.7"), ip("2001:db8::7"));
    assert_eq!(r.dig("shop.example.test", QType::A), Dig::answer([v4]));
    assert_eq!(r.dig("shop.example.test", QType::Aaaa), Dig::answer([v6]));
    assert_eq!(r.getent("shop.example.test", Family::V4), Ok(vec![v4]));
    assert_eq!(r.getent("shop.example.test", Family::V6), Ok(vec![v6]));
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V4), Ok(vec![v4]));
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V6), Ok(vec![v6]));
    resolves(&lab, &r, "api.example.test");
    resolves(&lab, &r, "other.test");

    // Six queries, each answered once: getent ahostsv6 got its AAAA, so it asked no A.
    let view = daemon.fault("spoof");
    assert_eq!(view.answered, 6, "{view:?}");
    assert_eq!(lab.server.received("shop.example.test"), 0, "{:?}", lab.server.queries());

    daemon.ctl_ok(&["rm", "spoof"]);
    resolves(&lab, &r, "shop.example.test");
}

#[test]
fn spoof() {
    spoof_via(B4);
}

#[test]
fn drop() {
    let (lab, daemon) = lab_and_daemon();
    let r = lab.resolver(B4).unwrap();
    apply(&lab, &daemon, "lost", &["--dns", "drop", "--domain", "shop.example.test"]);

    assert_eq!(r.dig("shop.example.test", QType::A), Dig::Timeout);
    assert_eq!(r.dig("shop.example.test", QType::Aaaa), Dig::Timeout);
    // glibc waits its one second (timeout:1 attempts:1), then gives up for now.
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V4), Err(Gai::Again));
    let batch = r.batch(&["shop.example.test"], QType::A, 20, Duration::from_millis(200));
    assert_eq!((batch.timeouts, batch.rcodes.len(), batch.malformed), (20, 0, 0), "{batch:?}");
    resolves(&lab, &r, "api.example.test");

    // 2 + 1 + 20 queries, each dropped, none answered, none at the server.
    let view = daemon.fault("lost");
    assert_eq!((view.dropped, view.answered), (23, 0), "{view:?}");
    assert_eq!(lab.server.received("shop.example.test"), 0, "{:?}", lab.server.queries());

    daemon.ctl_ok(&["rm", "lost"]);
    resolves(&lab, &r, "shop.example.test");
}

#[test]
fn ipv6_transport() {
    // The queries travel in IPv6 packets (to the server's IPv6 address), whatever they ask.
    error_codes_via(B6);
    spoof_via(B6);
}

#[test]
fn wildcards() {
    let (lab, daemon) = lab_and_daemon();
    let r = lab.resolver(B4).unwrap();
    let servfail = Dig::error(Rcode::ServFail);
    // SERVFAIL: dnsmasq never gives it for these names, so each one seen is the fault's.
    let error = ["--dns", "error", "--rcode", "SERVFAIL"];
    // (pattern, names it matches, names it does not), the names in any case.
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "*.example.test",
            &["a.example.test", "b.c.example.test", "shop.example.test", "A.EXAMPLE.test"],
            &["example.test", "other.test", "api.other.test"],
        ),
        (
            "api.*",
            &["api.example.test", "api.other.test", "API.Example.Test"],
            &["apis.example.test", "shop.example.test"],
        ),
        ("SHOP.Example.TEST", &["shop.example.test", "SHOP.Example.TEST", "Shop.example.test"], &["a.example.test"]),
        ("*", &["other.test", "example.test", "b.c.example.test"], &[]),
    ];
    for (i, (pattern, matching, other)) in cases.iter().enumerate() {
        let fault = format!("wild-{i}");
        apply(&lab, &daemon, &fault, &[&error[..], &["--domain", *pattern]].concat());
        for name in *matching {
            assert_eq!(r.dig(name, QType::A), servfail, "{name} should match {pattern}");
        }
        for name in *other {
            let want = record(&lab, &name.to_lowercase()).v4.into();
            assert_eq!(r.dig(name, QType::A), Dig::answer([want]), "{name} should not match {pattern}");
        }
        let view = daemon.fault(&fault);
        assert_eq!(view.answered, matching.len() as u64, "{pattern}: {view:?}");
        daemon.ctl_ok(&["rm", &fault]);
    }
    // One fault with several patterns matches the names of each.
    apply(&lab, &daemon, "wild-both", &[&error[..], &["--domain", "api.*", "--domain", "other.test"]].concat());
    for name in ["api.example.test", "other.test"] {
        assert_eq!(r.dig(name, QType::A), servfail, "{name}");
    }
    resolves(&lab, &r, "apis.example.test");
    assert_eq!(daemon.fault("wild-both").answered, 2);
}

#[test]
fn qtype() {
    let (lab, daemon) = lab_and_daemon();
    let r = lab.resolver(B4).unwrap();
    apply(
        &lab,
        &daemon,
        "aaaa",
        &["--dns", "error", "--rcode", "SERVFAIL", "--domain", "shop.example.test", "--qtype", "AAAA"],
    );
    let shop = record(&lab, "shop.example.test").clone();
    assert_eq!(r.dig("shop.example.test", QType::Aaaa), Dig::error(Rcode::ServFail));
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V6), Err(Gai::Again));
    assert_eq!(r.dig("shop.example.test", QType::A), Dig::answer([shop.v4.into()]));
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V4), Ok(vec![shop.v4.into()]));
    assert_eq!(r.getent("shop.example.test", Family::V4), Ok(vec![shop.v4.into()]));
    // Another type passes too.
    assert_eq!(r.dig("shop.example.test", QType::Txt), Dig::answer([]));

    // The two AAAA queries were answered; the server got only the others (2 A, 1 TXT).
    let view = daemon.fault("aaaa");
    assert_eq!(view.answered, 2, "{view:?}");
    let at_server: Vec<_> =
        lab.server.queries().into_iter().filter(|q| q.name == "shop.example.test").map(|q| q.qtype).collect();
    assert_eq!(at_server, ["A", "A", "A", "TXT"]);
}

/// The response code a process of `cgroup` gets for an A query of `name` to the lab's IPv4
/// server (one raw query, in the client's namespace), or `None` when none came in a second.
fn rcode_in(lab: &DnsLab, cgroup: &chaos_tests::cgroup::Cgroup, name: &str) -> Option<Rcode> {
    // Built before the fork: the child only makes system calls.
    let query = chaos_tests::dns::encode_query(0x4242, name, QType::A.code());
    let server: std::net::SocketAddrV4 = format!("{B4}:53").parse().unwrap();
    let code = cgroup
        .run(&lab.a, move || {
            let sock = match std::net::UdpSocket::bind("0.0.0.0:0") {
                Ok(s) => s,
                Err(_) => return 200,
            };
            let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
            if sock.send_to(&query, server).is_err() {
                return 201;
            }
            let mut buf = [0u8; 512];
            match sock.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[0] == 0x42 && buf[1] == 0x42 => i32::from(buf[3] & 0x0f),
                Ok(_) => 202,
                Err(_) => 255,
            }
        })
        .unwrap();
    assert!(code <= 15 || code == 255, "the child failed: {code}");
    (code != 255).then(|| Rcode::from_code(code as u8))
}

/// A dns fault limited to a cgroup answers its processes' queries only; one limited to a
/// server (`dst`) answers only the queries sent to it.
#[test]
fn scopes() {
    let (lab, daemon) = lab_and_daemon();
    let (faulted, other) =
        (chaos_tests::cgroup::Cgroup::new("dnsa").unwrap(), chaos_tests::cgroup::Cgroup::new("dnsb").unwrap());
    apply(
        &lab,
        &daemon,
        "cg",
        &["--cgroup", &faulted.path, "--dns", "error", "--rcode", "NXDOMAIN", "--domain", "shop.example.test"],
    );
    assert_eq!(rcode_in(&lab, &faulted, "shop.example.test"), Some(Rcode::NxDomain));
    assert_eq!(rcode_in(&lab, &other, "shop.example.test"), Some(Rcode::NoError));
    assert_eq!(rcode_in(&lab, &faulted, "api.example.test"), Some(Rcode::NoError));
    assert_eq!(daemon.fault("cg").answered, 1);
    daemon.ctl_ok(&["rm", "cg"]);

    apply(&lab, &daemon, "one-server", &["--dst", B6, "--dns", "error", "--domain", "shop.example.test"]);
    let (v4, v6) = (lab.resolver(B4).unwrap(), lab.resolver(B6).unwrap());
    assert_eq!(v6.query("shop.example.test", QType::A, Duration::from_secs(1)), Dig::error(Rcode::ServFail));
    let shop = record(&lab, "shop.example.test").v4;
    assert_eq!(v4.query("shop.example.test", QType::A, Duration::from_secs(1)), Dig::answer([shop.into()]));
    assert_eq!(daemon.fault("one-server").answered, 1);
}

/// `DNS_NAMES` as the daemon pinned it (see [`kernel::dns_names`]).
fn names(daemon: &Daemon) -> Vec<String> {
    kernel::dns_names(&daemon.bpffs).unwrap()
}

/// A dns fault outlives its daemon (SIGKILL): the pinned programs and `DNS_NAMES` go on
/// answering; a daemon started again on the same directories adopts it (listed, counters going
/// on) and keeps the names table from what it read back (the names of a fault that ended while
/// none ran leave it); a fault whose deadline passes while no daemon runs stops acting at its
/// deadline, the kernel checking it; a clean exit leaves no pin.
#[test]
fn survives_restart() {
    let (lab, mut daemon) = lab_and_daemon();
    let r = lab.resolver(B4).unwrap();
    let nxdomain = Dig::error(Rcode::NxDomain);
    let api = record(&lab, "api.example.test").clone();
    let other = Dig::answer([record(&lab, "other.test").v4.into()]);
    // NXDOMAIN for a name the server has: each one seen is the fault's.
    apply(
        &lab,
        &daemon,
        "nx",
        &["--dns", "error", "--rcode", "NXDOMAIN", "--domain", "shop.example.test", "--for", "10m"],
    );
    assert_eq!(r.dig("shop.example.test", QType::A), nxdomain);
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V4), Err(Gai::NoName));
    assert_eq!(daemon.fault("nx").answered, 2);
    let pinned = names(&daemon);
    assert!(!pinned.is_empty() && pinned.iter().all(|e| e.contains("shop.example.test")), "{pinned:?}");

    // No daemon: the kernel answers on its own.
    daemon.signal(Signal::SIGKILL).unwrap();
    assert_eq!(r.dig("shop.example.test", QType::A), nxdomain);
    assert_eq!(r.dig("shop.example.test", QType::Aaaa), nxdomain);
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V6), Err(Gai::NoName));
    let batch = r.batch(&["shop.example.test"], QType::A, 50, Duration::from_millis(200));
    assert_eq!((batch.count(Rcode::NxDomain), batch.timeouts, batch.malformed), (50, 0, 0), "{batch:?}");
    assert_eq!(r.dig("api.example.test", QType::A), Dig::answer([api.v4.into()]));
    assert_eq!(lab.server.received("shop.example.test"), 0, "{:?}", lab.server.queries());
    assert_eq!(names(&daemon), pinned);

    // A daemon on the same directories adopts it: listed, its counter gone on (2 dig, 1
    // getaddrinfo, 50 in the batch while none ran), still in effect, the table unchanged.
    daemon.restart().unwrap();
    let listed: Vec<String> = daemon.faults().into_iter().map(|f| f.name).collect();
    assert_eq!(listed, ["nx"]);
    assert_eq!(daemon.fault("nx").answered, 2 + 53);
    assert_eq!(r.dig("shop.example.test", QType::A), nxdomain);
    assert_eq!(r.getaddrinfo("shop.example.test", Family::V4), Err(Gai::NoName));
    assert_eq!(daemon.fault("nx").answered, 2 + 53 + 2);
    assert_eq!(names(&daemon), pinned);

    // A second fault, of another name: both act.
    let api_before = lab.server.received("api.example.test");
    let (v4, v6) = (ip("192.0.2.7"), ip("2001:db8::7"));
    apply(
        &lab,
        &daemon,
        "fake",
        &["--dns", "spoof", "--domain", "api.example.test", "--spoof", "192.0.2.7", "--spoof", "2001:db8::7"],
    );
    assert_eq!(r.dig("shop.example.test", QType::A), nxdomain);
    assert_eq!(r.dig("api.example.test", QType::A), Dig::answer([v4]));
    assert_eq!(r.getaddrinfo("api.example.test", Family::V6), Ok(vec![v6]));
    assert_eq!(r.dig("other.test", QType::A), other);

    // The adopted one removed: its name resolves again, its entries left the table, the second
    // fault still acts.
    daemon.ctl_ok(&["rm", "nx"]);
    resolves(&lab, &r, "shop.example.test");
    assert_eq!(r.dig("api.example.test", QType::A), Dig::answer([v4]));
    assert_eq!(r.getent("api.example.test", Family::V4), Ok(vec![v4]));
    let table = names(&daemon);
    assert!(!table.is_empty() && table.iter().all(|e| e.contains("api.example.test")), "{table:?}");
    assert_eq!(lab.server.received("api.example.test"), api_before, "{:?}", lab.server.queries());

    // A fault whose deadline passes while no daemon runs: the kernel stops it then. Polled
    // with raw queries; the packet of a query is seen between its sending and its reply, so an
    // answer from the server received before the deadline is the fault ending early, and a
    // REFUSED sent after it the fault ending late: the first query sent after the deadline gets
    // the server's answer (how long after the deadline that is sent is the polling's business).
    apply(&lab, &daemon, "brief", &["--dns", "error", "--rcode", "REFUSED", "--domain", "other.test", "--for", "3s"]);
    let deadline = daemon.fault("brief").deadline_ns.expect("a deadline");
    assert_eq!(r.dig("other.test", QType::A), Dig::error(Rcode::Refused));
    let with_brief = names(&daemon);
    assert!(with_brief.iter().any(|e| e.contains("other.test")), "{with_brief:?}");
    daemon.signal(Signal::SIGKILL).unwrap();
    let refused = Dig::error(Rcode::Refused);
    let mut polls = 0;
    // Bounded: the first query sent after the deadline ends the loop, one way or the other.
    let first_real = loop {
        let sent = traffic::mono_ns();
        let reply = r.query("other.test", QType::A, Duration::from_millis(500));
        let received = traffic::mono_ns();
        let ms = |t: u64| (t as f64 - deadline as f64) / 1e6;
        polls += 1;
        if reply == other {
            assert!(received >= deadline, "the server answered {:.1} ms before the deadline", -ms(received));
            break ms(sent);
        }
        assert_eq!(reply, refused, "sent {:.1} ms from the deadline", ms(sent));
        assert!(sent <= deadline, "the fault answered a query sent {:.1} ms after its deadline", ms(sent));
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("first answer from the server: query sent {first_real:.1} ms after the deadline ({polls} polls)");
    assert!(polls > 20, "the polling covered the fault");
    // The other fault goes on.
    assert_eq!(r.dig("api.example.test", QType::A), Dig::answer([v4]));

    // Restarted, the daemon reaps the ended fault and keeps the other. The ended fault's names
    // leave the table: the daemon knew them only from reading the pinned table back.
    daemon.restart().unwrap();
    let listed: Vec<String> = daemon.faults().into_iter().map(|f| f.name).collect();
    assert_eq!(listed, ["fake"]);
    let ended = daemon
        .history()
        .into_iter()
        .flat_map(|e| e.ended)
        .find(|e| e.name == "brief")
        .expect("the end of 'brief' in the history");
    // Its final counter: dig's query, and the polls but the last (REFUSED, no daemon running).
    assert_eq!((ended.reason.as_str(), ended.answered), ("expired", 1 + (polls - 1)), "{ended:?}");
    assert_eq!(names(&daemon), table);
    assert_eq!(r.dig("other.test", QType::A), other);
    assert_eq!(r.dig("api.example.test", QType::Aaaa), Dig::answer([v6]));

    // A clean exit removes the fault and every pin.
    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!daemon.bpffs.exists(), "pins left in {}", daemon.bpffs.display());
    resolves(&lab, &r, "api.example.test");
    resolves(&lab, &r, "shop.example.test");
}

/// The DNS programs' paths, through raw queries from this process only: besides the daemon
/// the lab's dnsmasq is the one program it needs, so `cargo xtask vm-test` runs it (suite
/// `dns`) on every kernel, whose verifier must take the programs first (the daemon's status
/// says why not). Over IPv4 and IPv6: an error code and spoofed A and AAAA addresses (the
/// answer `chaos_dns_act` writes, with its UDP checksum), a query lost (a timeout), exact and
/// `*.suffix` names (`chaos_dns`'s reversed lookup), `prefix.*` (`chaos_dns_prefix`'s forward
/// one); over TCP, a matching query is lost and another answered by the server.
#[test]
fn kernel_paths() {
    let (lab, daemon) = lab_and_daemon();
    let dns = daemon.abilities().dns;
    assert!(dns.available, "the DNS programs did not load: {}", dns.why_not.unwrap_or_default());
    // An answer comes at once; a lost query is given this long.
    let (answered, lost) = (Duration::from_secs(2), Duration::from_millis(400));
    let resolvers = [lab.resolver(B4).unwrap(), lab.resolver(B6).unwrap()];
    let addr = |name: &str, qtype: QType| {
        let r = record(&lab, name);
        let addr: IpAddr = if qtype == QType::A { r.v4.into() } else { r.v6.into() };
        Dig::answer([addr])
    };
    // Names no fault below matches, answered by the server.
    let unmatched = |r: &Resolver, names: &[&str]| {
        for name in names {
            for qtype in [QType::A, QType::Aaaa] {
                assert_eq!(r.query(name, qtype, answered), addr(name, qtype), "{name} {qtype:?} via {}", r.server);
            }
        }
    };

    // An error code, for an exact name in any case; over TCP the query is lost.
    apply(&lab, &daemon, "k-error", &["--dns", "error", "--rcode", "NXDOMAIN", "--domain", "shop.example.test"]);
    for r in &resolvers {
        for (name, qtype) in [("shop.example.test", QType::A), ("SHOP.Example.test", QType::Aaaa)] {
            assert_eq!(r.query(name, qtype, answered), Dig::error(Rcode::NxDomain), "{name} via {}", r.server);
        }
        unmatched(r, &["example.test", "a.example.test"]);
        assert_eq!(r.tcp_query("shop.example.test", QType::A, lost), Dig::Timeout, "TCP via {}", r.server);
        let api = "api.example.test";
        assert_eq!(r.tcp_query(api, QType::Aaaa, answered), addr(api, QType::Aaaa), "TCP via {}", r.server);
    }
    let view = daemon.fault("k-error");
    // Each TCP query was lost at least once (and its retransmissions, if any, with it).
    assert!(view.answered == 4 && view.dropped >= 2, "{view:?}");
    daemon.ctl_ok(&["rm", "k-error"]);

    // Spoofed addresses, for A and AAAA queries.
    apply(
        &lab,
        &daemon,
        "k-spoof",
        &["--dns", "spoof", "--domain", "a.example.test", "--spoof", "192.0.2.7", "--spoof", "2001:db8::7"],
    );
    for r in &resolvers {
        assert_eq!(r.query("a.example.test", QType::A, answered), Dig::answer([ip("192.0.2.7")]), "via {}", r.server);
        assert_eq!(r.query("a.example.test", QType::Aaaa, answered), Dig::answer([ip("2001:db8::7")]));
        unmatched(r, &["shop.example.test"]);
    }
    assert_eq!(daemon.fault("k-spoof").answered, 4);
    daemon.ctl_ok(&["rm", "k-spoof"]);

    // Lost, for the names below a suffix.
    apply(&lab, &daemon, "k-drop", &["--dns", "drop", "--domain", "*.c.example.test"]);
    for r in &resolvers {
        assert_eq!(r.query("b.c.example.test", QType::A, lost), Dig::Timeout, "via {}", r.server);
        let batch = r.batch(&["b.c.example.test"], QType::Aaaa, 3, lost);
        assert_eq!((batch.timeouts, batch.rcodes.len(), batch.malformed), (3, 0, 0), "{batch:?}");
        unmatched(r, &["example.test"]);
    }
    let view = daemon.fault("k-drop");
    assert_eq!((view.dropped, view.answered), (8, 0), "{view:?}");
    daemon.ctl_ok(&["rm", "k-drop"]);

    // A first label: the forward lookup.
    apply(&lab, &daemon, "k-prefix", &["--dns", "error", "--rcode", "REFUSED", "--domain", "api.*"]);
    for r in &resolvers {
        for name in ["api.example.test", "API.other.test"] {
            assert_eq!(r.query(name, QType::A, answered), Dig::error(Rcode::Refused), "{name} via {}", r.server);
        }
        unmatched(r, &["apis.example.test", "a.example.test"]);
    }
    assert_eq!(daemon.fault("k-prefix").answered, 4);
    daemon.ctl_ok(&["rm", "k-prefix"]);

    // None of the matching queries reached the server (UDP or TCP); those the other faults let
    // pass did: a.example.test's 4 (2 families, 2 types) while k-error and k-prefix acted,
    // shop.example.test's while k-spoof did.
    for (name, passed) in
        [("shop.example.test", 4), ("a.example.test", 8), ("b.c.example.test", 0), ("api.other.test", 0)]
    {
        assert_eq!(lab.server.received(name), passed, "{name}: {:?}", lab.server.queries());
    }
    for r in &resolvers {
        unmatched(r, &["shop.example.test", "a.example.test", "b.c.example.test", "api.other.test"]);
        assert_eq!(r.tcp_query("shop.example.test", QType::A, answered), addr("shop.example.test", QType::A));
    }
}

/// Several dns faults on the same queries each act on their own names, whichever carries the
/// packet: an exact name, a `prefix.*` pattern (looked up forward, though the first fault has
/// none) and a `*.suffix`; removing the first leaves the others acting.
#[test]
fn overlapping_faults() {
    let (lab, daemon) = lab_and_daemon();
    apply(&lab, &daemon, "exact", &["--dns", "error", "--rcode", "NXDOMAIN", "--domain", "shop.example.test"]);
    apply(&lab, &daemon, "prefix", &["--dns", "error", "--rcode", "REFUSED", "--domain", "api.*"]);
    apply(&lab, &daemon, "suffix", &["--dns", "drop", "--domain", "*.c.example.test"]);
    let r = lab.resolver(B4).unwrap();
    let t = Duration::from_secs(1);
    let check = |first: bool| {
        let shop = if first {
            Dig::error(Rcode::NxDomain)
        } else {
            Dig::answer([record(&lab, "shop.example.test").v4.into()])
        };
        assert_eq!(r.query("shop.example.test", QType::A, t), shop);
        assert_eq!(r.query("api.example.test", QType::A, t), Dig::error(Rcode::Refused));
        assert_eq!(r.query("b.c.example.test", QType::A, t), Dig::Timeout);
        let other = record(&lab, "other.test").v4;
        assert_eq!(r.query("other.test", QType::A, t), Dig::answer([other.into()]));
    };
    check(true);
    assert_eq!(
        [daemon.fault("exact").answered, daemon.fault("prefix").answered, daemon.fault("suffix").dropped],
        [1, 1, 1]
    );
    daemon.ctl_ok(&["rm", "exact"]);
    check(false);
    assert_eq!([daemon.fault("prefix").answered, daemon.fault("suffix").dropped], [2, 2]);
}
