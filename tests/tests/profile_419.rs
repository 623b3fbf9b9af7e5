//! `kernel_profile = "4.19"`: the daemon held to what Kylin V10's 4.19 offers, on whatever
//! kernel runs the tests. Its status says what it holds back and why; every fault kind 4.19 can
//! run works (through cls_bpf filters: no TCX), delay and bandwidth on netem where the kernel
//! has netem (in the VM, under `CHAOS_TEST_BACKEND=netem`) and refused, naming what is missing,
//! where not (this host); what 4.19 lacks is refused with the profile, the feature and the
//! first kernel that has it; and batches are written entry by entry (no BPF_MAP_UPDATE_BATCH),
//! to the same map entries a batch writes.

use std::{
    fmt::Write as _,
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use chaos_tests::{
    Daemon, Lab,
    cgroup::Cgroup,
    kernel,
    lab::{B4, B4_OTHER},
    traffic,
};

const PROFILE: &str = "kernel_profile = \"4.19\"";
/// Named, so that a run with CHAOS_TEST_PROFILE set compares with this kernel's own abilities.
const NATIVE: &str = "kernel_profile = \"native\"";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Fails unless `args` are refused with every one of `expected` in the message, and the daemon
/// lists the faults it listed before.
fn refused(daemon: &Daemon, args: &[&str], expected: &[&str]) {
    let before = daemon.faults();
    let out = daemon.ctl(&[&["apply"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    for e in expected {
        assert!(stderr.contains(e), "{args:?}: expected '{e}' in: {stderr}");
    }
    assert_eq!(daemon.faults(), before, "{args:?} changed the faults");
}

#[test]
fn status_says_what_the_profile_holds_back() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, PROFILE).unwrap();
    let a = daemon.abilities();
    assert_eq!(a.profile, "4.19");
    for (what, ability, since) in [
        ("tcx", &a.tcx, "6.6"),
        ("cgroup_ingress", &a.cgroup_ingress, "5.7"),
        ("connect_fail", &a.connect_fail, "5.7"),
        ("connect_fail_any_errno", &a.connect_fail_any_errno, "5.7"),
        ("edt", &a.edt, "5.0"),
        ("edt_reorder", &a.edt_reorder, "5.0"),
        ("batch_update", &a.batch_update, "5.6"),
    ] {
        let why = ability.why_not.as_deref().unwrap_or_else(|| panic!("{what} is available: {a:?}"));
        assert!(!ability.available, "{what}: {a:?}");
        assert!(why.contains("kernel_profile = \"4.19\"") && why.contains(&format!("Linux {since}+")), "{what}: {why}");
    }
    // The table says it too.
    let table = daemon.ctl_ok(&["status"]);
    assert!(table.contains("kernel profile: 4.19") && table.contains("cannot: TCX links"), "{table}");
    // Native, on this kernel: the profile is what held them back.
    let native = Daemon::start_with(&lab.a, NATIVE).unwrap().abilities();
    assert_eq!(native.profile, "native");
}

#[test]
fn what_4_19_lacks_is_refused_naming_the_profile_and_the_feature() {
    let lab = Lab::new().unwrap();
    // tc_attach = "tcx" cannot start; delay_backend = "edt" is a config error.
    assert!(!Daemon::tcx_or_refused(&lab.a, PROFILE));
    let edt = Daemon::unstarted(&lab.a, &format!("{PROFILE}\ndelay_backend = \"edt\""), None).unwrap();
    let out = edt.serve_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with delay_backend = \"edt\"");
    for e in ["delay_backend = \"edt\" cannot be", "kernel_profile = \"4.19\"", "skb->tstamp", "Linux 5.0+"] {
        assert!(stderr.contains(e), "expected '{e}' in: {stderr}");
    }
    assert!(!edt.bpffs.exists(), "a refused config pinned {}", edt.bpffs.display());

    let daemon = Daemon::start_with(&lab.a, PROFILE).unwrap();
    let cg = Cgroup::new("cg419").unwrap();
    let links = ["kernel_profile = \"4.19\" holds back bpf links for cgroup programs", "Linux 5.7+"];
    for direction in ["ingress", "both"] {
        let args = ["--cgroup", &cg.path, "-i", &lab.a_if, "-d", direction, "--partition"];
        refused(&daemon, &args, &[&["ingress cgroup faults cannot run here"], &links[..]].concat());
    }
    refused(
        &daemon,
        &["--cgroup", &cg.path, "--connect-fail"],
        &[&["connect-fail cannot run here"], &links[..]].concat(),
    );
    refused(
        &daemon,
        &["--cgroup", &cg.path, "--connect-fail", "--errno", "EPERM"],
        &[&["connect-fail cannot run here"], &links[..]].concat(),
    );
    assert!(daemon.faults().is_empty());
    // A cgroup's egress is matched at TC by the socket's cgroup (bpf_skb_cgroup_id, 4.18): it runs.
    daemon.ctl_ok(&["apply", "--name", "cg-out", "--cgroup", &cg.path, "-i", &lab.a_if, "--partition", "-p", "udp"]);
    let tx = std::net::UdpSocket::from(cg.socket(&lab.a, libc::AF_INET, libc::SOCK_DGRAM).unwrap());
    socket2::SockRef::from(&tx).bind(&addr("0.0.0.0", 0).into()).unwrap();
    let rx = lab.b.enter(|| std::net::UdpSocket::bind(addr(B4, 9419))).unwrap().unwrap();
    assert_eq!(traffic::udp_via(tx, rx, addr(B4, 9419), 300).unwrap(), 0);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9419), 300).unwrap(), 300, "outside the cgroup");
}

/// Every packet fault 4.19 runs, through cls_bpf filters.
#[test]
fn the_packet_faults_of_4_19_work() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, PROFILE).unwrap();
    let apply = |args: &[&str]| daemon.ctl_ok(&[&["apply", "-i", &lab.a_if], args].concat());

    apply(&["--name", "cut", "--partition", "-p", "udp", "--dport", "9401"]);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9401), 300).unwrap(), 0);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9402), 300).unwrap(), 300);
    for a in daemon.status().attachments {
        assert_eq!(a.mode, chaos_api::api::AttachMode::Netlink, "{a:?}");
    }
    assert!(kernel::qdiscs(&lab.a, &lab.a_if).contains("clsact"));

    // Loss: 50% of 4,000, within five standard deviations (±158).
    apply(&["--name", "lossy", "--loss", "50", "-p", "udp", "--dport", "9403"]);
    let got = traffic::udp(&lab.a, None, &lab.b, addr(B4, 9403), 4_000).unwrap();
    assert!((1_842..=2_158).contains(&got), "{got} of 4000 arrived at 50% loss");
    assert_eq!(daemon.fault("lossy").dropped, u64::from(4_000 - got));

    apply(&["--name", "twice", "--duplicate", "100", "-p", "udp", "--dport", "9404"]);
    let copies = traffic::udp_copies(&lab.a, &lab.b, addr(B4, 9404), 500, 64).unwrap();
    assert!(copies.copies.iter().all(|c| *c == 2), "every datagram twice: {:?}", &copies.copies[..10]);

    apply(&["--name", "damaged", "--corrupt", "100", "--checksum", "fixed", "-p", "udp", "--dport", "9405"]);
    let damaged = traffic::udp_copies(&lab.a, &lab.b, addr(B4, 9405), 500, 200).unwrap();
    assert_eq!(damaged.damaged, 500, "every datagram damaged, none lost");

    // Reset: a connection attempt answered with a RST at once.
    let listener = lab.b.enter(|| TcpListener::bind(addr(B4, 9406))).unwrap().unwrap();
    apply(&["--name", "rst", "--reset", "--dport", "9406"]);
    let dst = addr(B4, 9406);
    let err = lab.a.enter(move || TcpStream::connect_timeout(&dst, Duration::from_secs(3))).unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(daemon.fault("rst").reset >= 1);
    drop(listener);

    daemon.ctl_ok(&["clear"]);
    assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 9401), 300).unwrap(), 300);
    assert!(kernel::attached(&lab.a, &lab.a_if).unwrap().is_empty(), "cls_bpf filters go at once");
}

/// Delay, bandwidth and reorder need netem under the profile (no EDT): they run where the
/// kernel has it, and are refused naming both backends' missing pieces where it has not.
#[test]
fn delay_and_bandwidth_run_on_netem_or_are_refused() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, PROFILE).unwrap();
    let status = daemon.status();
    let shape = [
        vec!["--delay", "50ms", "-p", "udp", "--dport", "9410"],
        vec!["--rate", "1mbit", "-p", "tcp", "--dport", "9411"],
        vec!["--delay", "20ms", "--reorder", "25", "-p", "udp", "--dport", "9412"],
    ];
    if !status.abilities.netem.available {
        let netem = status.abilities.netem.why_not.unwrap();
        assert!(status.delay_backend.starts_with("none"), "{}", status.delay_backend);
        for args in &shape {
            let args: Vec<&str> = ["-i", lab.a_if.as_str()].into_iter().chain(args.iter().copied()).collect();
            refused(&daemon, &args, &["cannot run here", "kernel_profile = \"4.19\"", "skb->tstamp", &netem]);
        }
        assert!(!kernel::qdiscs(&lab.a, &lab.a_if).contains("netem"));
        return;
    }
    assert_eq!(status.delay_backend, "netem");
    for args in &shape {
        daemon.ctl_ok(&[&["apply", "-i", &lab.a_if], &args[..]].concat());
    }
    assert!(kernel::qdiscs(&lab.a, &lab.a_if).contains("netem"));
    // 50 ms more than the baseline's median, give or take its spread and 5 ms.
    let dst = addr(B4, 9410);
    let base = traffic::udp_latencies(&lab.a, &lab.b, &[addr(B4, 9413)], Duration::from_millis(5), 100).unwrap();
    let got = traffic::udp_latencies(&lab.a, &lab.b, &[dst], Duration::from_millis(5), 100).unwrap();
    let median = |v: &[u64]| chaos_tests::stats::quantile(v, 0.5);
    let added = median(&got[0]).saturating_sub(median(&base[0]));
    assert!((45_000_000..=60_000_000).contains(&added), "added {added} ns, asked 50 ms");
    // 1 mbit/s: a TCP flow gets no more (a margin for the burst).
    let bps =
        traffic::tcp_goodput(&lab.a, &lab.b, addr(B4, 9411), Duration::from_secs(1), Duration::from_secs(2)).unwrap();
    assert!(bps < 1.3e6, "{bps} bit/s through a 1 mbit/s limit");
    daemon.ctl_ok(&["clear"]);
}

/// A batch of many faults is applied and removed through the per-entry writes (the status says
/// there is no batch update), and leaves the same entries a native daemon writes in batches.
#[test]
fn a_batch_is_written_entry_by_entry_to_the_same_entries() {
    let lab = Lab::new().unwrap();
    let mut file = String::new();
    for i in 0..500u32 {
        let dst = format!("10.219.{}.{}", i / 256, i % 256);
        let port = 1000 + i;
        writeln!(
            file,
            "[[fault]]\nname = \"f{i}\"\ninterface = \"{}\"\naction = \"loss\"\nloss = {}\ndst = \"{dst}\"\ndport = {port}\n",
            lab.a_if,
            1 + i % 90
        )
        .unwrap();
    }
    writeln!(
        file,
        "[[fault]]\nname = \"the-one\"\ninterface = \"{}\"\naction = \"partition\"\ndst = \"{B4}\"",
        lab.a_if
    )
    .unwrap();

    let mut entries = Vec::new();
    for config in [NATIVE, PROFILE] {
        let daemon = Daemon::start_with(&lab.a, config).unwrap();
        assert_eq!(daemon.abilities().batch_update.available, config == NATIVE, "{config}");
        let path = daemon.dir.join("many.toml");
        std::fs::write(&path, &file).unwrap();
        daemon.ctl_ok(&["apply", "-f", path.to_str().unwrap(), "--experiment", "many"]);
        assert_eq!(daemon.faults().len(), 501);
        assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 7001), 300).unwrap(), 0);
        assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4_OTHER, 7001), 300).unwrap(), 300);
        assert_eq!(daemon.fault("the-one").dropped, 300);
        // Every fault's rule is reachable, with its action (deadlines differ between the runs).
        let rules = kernel::reachable_rules(&daemon.bpffs).unwrap();
        assert_eq!(rules.len(), 501);
        let attached = kernel::attached(&lab.a, &lab.a_if).unwrap();
        let mut maps = kernel::map_contents(attached[0]).unwrap();
        maps.retain(|name, _| ["ADDRS", "PAIRS", "PORTS"].contains(&name.as_str()));
        let actions: Vec<_> = rules.into_iter().map(|(slot, r)| (slot, r.kind, r.chance)).collect();
        entries.push((actions, maps));

        daemon.ctl_ok(&["rm", "-e", "many"]);
        assert!(daemon.faults().is_empty());
        assert!(kernel::reachable_rules(&daemon.bpffs).unwrap().is_empty(), "{config}: rules left reachable");
        assert_eq!(traffic::udp(&lab.a, None, &lab.b, addr(B4, 7001), 300).unwrap(), 300);
    }
    assert!(entries[0] == entries[1], "entry by entry and in batches, the maps differ");
}
