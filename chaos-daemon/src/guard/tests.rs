use super::*;
use crate::spec::{FaultSpec, PortSpec};

/// Lines read from /proc/net/tcp and tcp6 on x86_64 (kernel 6.18) in a namespace with 10.9.8.7
/// and fd00:9::7 on lo: a listener on 127.0.0.1:22 and a dual-stack one on [::]:2222, with
/// connections from 127.0.0.1:41072, [fd00:9::7]:48410, 10.9.8.7:57318 and [::1]:53846.
const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 192441 1 00000000ab135467 100 0 0 10 0
   1: 0100007F:A070 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 192442 2 0000000084e4a806 20 0 0 10 -1
   2: 0100007F:0016 0100007F:A070 01 00000000:00000000 00:00000000 00000000     0        0 192443 1 00000000b9003381 20 0 0 10 -1
   3: 0708090A:DFE6 0708090A:08AE 01 00000000:00000000 00:00000000 00000000     0        0 192447 2 00000000b1aad7d3 20 0 0 10 -1";
const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:08AE 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 192444 1 000000009759dba0 100 0 0 10 0
   1: 0000000000000000FFFF00000708090A:08AE 0000000000000000FFFF00000708090A:DFE6 01 00000000:00000000 00:00000000 00000000     0        0 192448 1 00000000dc6be11d 20 0 0 10 -1
   2: 090000FD000000000000000007000000:BD1A 090000FD000000000000000007000000:08AE 01 00000000:00000000 00:00000000 00000000     0        0 192445 2 0000000046e5c95f 20 0 0 10 -1
   3: 00000000000000000000000001000000:D256 00000000000000000000000001000000:08AE 01 00000000:00000000 00:00000000 00000000     0        0 192449 2 00000000d993e94d 20 0 0 10 -1";

fn row(local: &str, remote: &str, state: u8) -> Row {
    Row { local: local.parse().unwrap(), remote: remote.parse().unwrap(), state }
}

fn rows(table: &str) -> Vec<Row> {
    table.lines().skip(1).map(|l| parse_row(l).unwrap()).collect()
}

// The hex is the machine's byte order: these lines are little-endian ones.
#[cfg(target_endian = "little")]
#[test]
fn proc_lines_v4() {
    assert_eq!(
        rows(TCP),
        [
            row("127.0.0.1:22", "0.0.0.0:0", 0x0a),
            row("127.0.0.1:41072", "127.0.0.1:22", 1),
            row("127.0.0.1:22", "127.0.0.1:41072", 1),
            row("10.9.8.7:57318", "10.9.8.7:2222", 1),
        ]
    );
}

#[cfg(target_endian = "little")]
#[test]
fn proc_lines_v6_and_v4_mapped() {
    assert_eq!(
        rows(TCP6),
        [
            row("[::]:2222", "[::]:0", 0x0a),
            // ::ffff:10.9.8.7 is the IPv4 peer of the dual-stack listener.
            row("10.9.8.7:2222", "10.9.8.7:57318", 1),
            row("[fd00:9::7]:48410", "[fd00:9::7]:2222", 1),
            row("[::1]:53846", "[::1]:2222", 1),
        ]
    );
}

/// Whatever the byte order: the kernel's `%08X` of each native word, parsed back.
#[test]
fn proc_endpoint_any_byte_order() {
    let hex = |bytes: &[u8]| -> String {
        bytes.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap()))).collect()
    };
    let v6: std::net::Ipv6Addr = "fd00:1:2:3::4".parse().unwrap();
    assert_eq!(parse_endpoint(&format!("{}:0016", hex(&[10, 1, 2, 3]))), Some("10.1.2.3:22".parse().unwrap()));
    assert_eq!(parse_endpoint(&format!("{}:1F90", hex(&v6.octets()))), Some("[fd00:1:2:3::4]:8080".parse().unwrap()));
    for bad in ["0100007F", "0100007F:", "0100007:0016", "0100007G:0016", "0100007F:10000"] {
        assert_eq!(parse_endpoint(bad), None, "{bad}");
    }
    assert_eq!(parse_row("   0: 0100007F:0016"), None);
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// Linux's default `ip_local_port_range`.
const EPHEMERAL: PortRange = PortRange { lo: 32768, hi: 60999 };

fn entry(s: &str) -> Protected {
    let mut v = parse_protected(&[s.to_owned()], EPHEMERAL).unwrap();
    v.pop().unwrap()
}

fn ports(lo: u16, hi: u16) -> PortRange {
    PortRange { lo, hi }
}

#[test]
fn config_entries() {
    use Protocol::*;
    let any = PortRange::ANY;
    let cases: &[(&str, Protocol, &str, PortRange, Path)] = &[
        ("10.96.0.1:443", Any, "10.96.0.1/32", ports(443, 443), Path::Unknown),
        (" tcp:10.0.0.0/8 ", Tcp, "10.0.0.0/8", any, Path::Unknown),
        ("[fd00::1]:6443", Any, "fd00::1/128", ports(6443, 6443), Path::Unknown),
        ("udp:[fd00::/64]:53", Udp, "fd00::/64", ports(53, 53), Path::Unknown),
        ("fd00::1", Any, "fd00::1/128", any, Path::Unknown),
        ("[fd00::1]", Any, "fd00::1/128", any, Path::Unknown),
        ("icmp:192.168.1.10", Icmp, "192.168.1.10/32", any, Path::Unknown),
        ("abc::1", Any, "abc::1/128", any, Path::Unknown),
        ("[::ffff:10.1.2.3]:80", Any, "10.1.2.3/32", ports(80, 80), Path::Unknown),
        ("::ffff:10.0.0.0/104", Any, "10.0.0.0/8", any, Path::Unknown),
        ("127.0.0.1:8080", Any, "127.0.0.1/32", ports(8080, 8080), Path::Loopback),
        ("[::1]:8080", Any, "::1/128", ports(8080, 8080), Path::Loopback),
        ("0.0.0.0/0", Any, "0.0.0.0/0", any, Path::Unknown),
    ];
    for &(text, protocol, remote, remote_ports, path) in cases {
        let p = entry(text);
        assert_eq!((p.protocol, p.remote, p.remote_ports, p.path), (protocol, cidr(remote), remote_ports, path));
        assert_eq!((p.local, p.local_ports), (None, EPHEMERAL));
        assert_eq!(p.what, format!("protected destination {} (config)", text.trim()));
    }
    let bad = [
        ("10.0.0.1:http", "'http' is not a port"),
        ("10.0.0.1:70000", "'70000' is not a port"),
        ("10.0.0.1/8", "host bits set"),
        ("sctp:10.0.0.1", "not an IP address"),
        ("[fd00::1:443", "without ']'"),
        ("[fd00::1]443", "expected ':PORT'"),
        ("icmp:10.0.0.1:1", "icmp has no ports"),
        ("", "not an IP address"),
        ("tcp:", "not an IP address"),
    ];
    for (text, why) in bad {
        let e = parse_protected(&["10.0.0.1".into(), text.into()], EPHEMERAL).unwrap_err();
        assert!(e.starts_with(&format!("protected entry '{text}': ")) && e.contains(why), "{text}: {e}");
    }
    assert_eq!(parse_protected(&[], EPHEMERAL), Ok(vec![]));
}

/// `key=value ...` into a validated fault: interface eth0 and a partition unless given.
fn fault(text: &str) -> Fault {
    let mut s = FaultSpec { interface: Some("eth0".into()), action: Some("partition".into()), ..Default::default() };
    for kv in text.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        let v = Some(v.to_owned());
        match k {
            "i" => s.interface = v,
            "d" => s.direction = v,
            "p" => s.protocol = v,
            "family" => s.family = v,
            "src" => s.src = v,
            "dst" => s.dst = v,
            "sport" => s.sport = v.map(PortSpec::Text),
            "dport" => s.dport = v.map(PortSpec::Text),
            "loss" => (s.action, s.loss) = (Some("loss".into()), v.map(|v| v.parse().unwrap())),
            _ => panic!("{k}"),
        }
    }
    s.validate().unwrap()
}

fn session(local: &str, remote: &str, path: Path) -> Protected {
    Protected::session(local.parse().unwrap(), remote.parse().unwrap(), path)
}

fn table(p: &Protected, cases: &[(&str, bool)]) {
    for &(text, touched) in cases {
        let result = check(&fault(text), std::slice::from_ref(p));
        assert_eq!(result.is_err(), touched, "'{text}' vs {}: {result:?}", p.what);
    }
}

/// A session from 10.0.0.5:51234 to the host's sshd at 10.0.0.1:22: it leaves as
/// 10.0.0.1:22 -> 10.0.0.5:51234 and arrives as 10.0.0.5:51234 -> 10.0.0.1:22.
#[test]
fn faults_vs_an_ssh_session() {
    let ssh = session("10.0.0.1:22", "10.0.0.5:51234", Path::Network);
    table(
        &ssh,
        &[
            ("", true),
            ("loss=30", true),
            ("loss=0.5 d=both", true),
            ("i=eth1", true),
            // Egress: as written.
            ("d=egress dst=10.0.0.5", true),
            ("d=egress dst=10.0.0.0/24", true),
            ("d=egress dst=0.0.0.0/0", true),
            ("d=egress dst=10.0.0.6", false),
            ("d=egress dst=10.0.0.128/25", false),
            ("d=egress src=10.0.0.5", false),
            ("d=egress src=10.0.0.1", true),
            ("d=egress src=10.0.0.1 dst=10.0.0.6", false),
            ("d=egress sport=22", true),
            ("d=egress dport=22", false),
            ("d=egress dport=51234", true),
            ("d=egress dport=50000-60000", true),
            ("d=egress dport=1-1024", false),
            // Ingress: as written, packets from the peer.
            ("d=ingress", true),
            ("d=ingress dport=22", true),
            ("d=ingress sport=22", false),
            ("d=ingress src=10.0.0.5", true),
            ("d=ingress src=10.0.0.0/8", true),
            ("d=ingress dst=10.0.0.5", false),
            ("d=ingress src=10.0.0.5 dport=23", false),
            // Both: as written on egress, mirrored on ingress; the same flow either way.
            ("d=both dst=10.0.0.5", true),
            ("d=both src=10.0.0.5", false),
            ("d=both sport=22", true),
            ("d=both dport=22", false),
            ("d=both src=10.0.0.1 dst=10.0.0.5 sport=22 dport=51234", true),
            ("d=both src=10.0.0.5 dst=10.0.0.1 sport=51234 dport=22", false),
            // Protocols and families.
            ("p=tcp", true),
            ("p=udp", false),
            ("p=icmp", false),
            ("p=udp sport=22", false),
            ("sport=22", true),
            ("dport=1000-2000", false),
            ("family=ipv6", false),
            ("family=ipv4", true),
            ("dst=fd00::/8", false),
            // lo does not carry it.
            ("i=lo", false),
            ("i=lo loss=10", false),
        ],
    );
}

#[test]
fn faults_vs_a_local_session() {
    // ssh to the host from the host: both ends are its addresses, so only lo carries it, and
    // every packet crosses both hooks there.
    for ssh in [
        session("127.0.0.1:22", "127.0.0.1:40000", Path::Loopback),
        session("10.0.0.1:22", "10.0.0.2:40000", Path::Loopback),
    ] {
        let peer = ssh.remote.addr;
        table(
            &ssh,
            &[
                ("i=lo", true),
                ("i=eth0", false),
                ("i=lo d=egress dport=22", true),
                ("i=lo d=ingress sport=22", true),
                ("i=lo d=ingress dport=40000", true),
                ("i=lo d=egress dport=23", false),
                ("i=lo p=udp", false),
                (&format!("i=lo d=ingress dst={peer}"), true),
                (&format!("i=lo d=ingress src={peer}"), true),
                ("i=lo dst=10.99.0.0/16", false),
            ],
        );
    }
    let v6 = session("[fd00::1]:22", "[fd00::9]:40000", Path::Network);
    table(
        &v6,
        &[
            ("", true),
            ("d=ingress src=fd00::/64", true),
            ("d=ingress src=fd01::/64", false),
            ("dst=10.0.0.0/8", false),
            ("family=ipv4", false),
            ("i=lo", false),
        ],
    );
}

#[test]
fn faults_vs_configured_destinations() {
    let api = entry("10.96.0.1:443");
    table(
        &api,
        &[
            ("", true),
            ("p=udp dport=9000", false),
            ("p=udp dport=443", true),
            ("p=icmp", false),
            ("dst=10.96.0.1", true),
            ("dst=10.96.0.0/12", true),
            ("dst=10.97.0.1", false),
            ("d=egress sport=443 dst=10.0.0.9", false),
            ("d=ingress src=10.96.0.1", true),
            ("d=ingress sport=443", true),
            ("d=ingress sport=80", false),
            // The host's end is an ephemeral port: a local service's port is not it.
            ("d=ingress dport=8080", false),
            ("d=ingress dport=40000", true),
            ("d=egress sport=8080", false),
            ("d=both sport=8080", false),
            ("d=both sport=30000-33000", true),
            // 10.96.0.1 may be one of the host's own addresses, and a client bound to 127.0.0.1
            // can reach it: on lo only faults that leave out one end or the ports pass.
            ("i=lo dst=10.96.0.1", true),
            ("i=lo dst=127.0.0.1", true),
            ("i=lo dst=127.0.0.1 dport=8080", false),
            ("i=lo src=127.0.0.0/8 dst=127.0.0.0/8", false),
        ],
    );
    table(&entry("127.0.0.1:8080"), &[("i=eth0", false), ("i=lo", true), ("i=lo dport=8081", false)]);
    let everything = entry("icmp:10.0.0.1");
    table(&everything, &[("p=tcp", false), ("", true), ("dport=80", false), ("p=icmp dst=10.0.0.1", true)]);
    table(&entry("10.0.0.1"), &[("p=icmp", true), ("dport=80", true), ("dst=10.0.0.2", false)]);
    table(&entry("tcp:[fd00::/64]"), &[("p=tcp dport=1-2", true), ("p=udp", false), ("dst=fd00:0:0:1::/64", false)]);
}

#[test]
fn refusal_names_the_flow_and_the_ways_out() {
    let protected = [
        session("10.0.0.1:22", "10.0.0.5:51234", Path::Network),
        session("10.0.0.1:22", "10.0.0.6:40000", Path::Network),
        entry("10.96.0.1:443"),
    ];
    let e = check(&fault("p=tcp"), &protected).unwrap_err();
    assert_eq!(e.field, "match");
    assert!(
        e.reason.starts_with("would touch SSH session 10.0.0.5:51234 -> 10.0.0.1:22 (and 2 more protected flows)"),
        "{e}"
    );
    assert!(e.reason.contains("--force") && e.reason.contains("narrow"), "{e}");
    let e = check(&fault("dst=10.0.0.6"), &protected).unwrap_err();
    assert!(e.reason.starts_with("would touch SSH session 10.0.0.6:40000 -> 10.0.0.1:22, which"), "{e}");
    assert_eq!(check(&fault("p=udp dport=53"), &protected), Ok(()));
    assert_eq!(check(&fault(""), &[]), Ok(()));
}

/// sock_diag and the /proc tables must agree: live connections over IPv4, IPv6 and a
/// v4-mapped dual-stack socket, read both ways in this thread's namespace.
#[test]
fn sock_diag_sees_what_proc_sees() {
    use std::net::{TcpListener, TcpStream};
    let mut keep = Vec::new();
    for (listen, connect) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1"), ("[::]:0", "127.0.0.1")] {
        let Ok(listener) = TcpListener::bind(listen) else { continue }; // no IPv6 here
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect((connect, port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        keep.push((listener, client, server));
    }
    let ours: Vec<u16> = keep.iter().flat_map(|(_, c, s)| [c, s]).map(|x| x.local_addr().unwrap().port()).collect();
    let established = |rows: Vec<Row>| {
        let mut mine: Vec<(SocketAddr, SocketAddr)> = rows
            .into_iter()
            .filter(|r| r.state == TCP_ESTABLISHED && ours.contains(&r.local.port()))
            .map(|r| (r.local, r.remote))
            .collect();
        mine.sort();
        mine
    };
    let both = Families { v4: true, v6: true };
    let by_diag = established(established_by_diag(both).unwrap());
    assert_eq!(by_diag, established(established_by_proc(both).unwrap()));
    assert_eq!(by_diag.len(), 2 * keep.len(), "{by_diag:?}");
    assert!(by_diag.iter().all(|(l, _)| !matches!(l.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())));
}

#[test]
fn sessions_are_listed_only_in_the_families_a_fault_could_touch() {
    let at = |text: &str| {
        let f = fault(text);
        let families = at_stake(std::iter::once(&f), DEFAULT_SSH_PORTS);
        (families.v4, families.v6)
    };
    assert_eq!(at(""), (true, true));
    assert_eq!(at("dst=10.0.0.0/8"), (true, false));
    assert_eq!(at("dst=fd00::/8"), (false, true));
    // No SSH packet can match: another protocol, or sshd's side on another port.
    assert_eq!(at("p=udp"), (false, false));
    assert_eq!(at("d=egress p=tcp sport=8080"), (false, false));
    assert_eq!(at("d=ingress p=tcp dport=80"), (false, false));
    // The peer's port is any: a fault on it can touch a session.
    assert_eq!(at("d=egress p=tcp dport=80"), (true, true));
    // No guarded port, nothing to list.
    assert_eq!(at_stake(std::iter::once(&fault("")), &[]), Families::default());
}

/// The tracepoint's map says nothing of interfaces: a session whose peer is not plainly the
/// host is taken as on any (a fault on `lo` needs a listing); one to a loopback peer is on `lo`.
#[test]
fn followed_sessions_are_touched_as_sessions_on_any_path() {
    let end = |s: &str| s.parse::<SocketAddr>().unwrap();
    let remote = [(end("10.0.0.1:22"), end("10.0.0.5:51234"))];
    let local = [(end("127.0.0.1:22"), end("127.0.0.1:41072"))];
    let touch = |text: &str, sessions: &[(SocketAddr, SocketAddr)]| could_touch(&[&fault(text)], sessions);
    assert!(touch("d=ingress p=tcp dport=22", &remote));
    assert!(touch("i=lo d=ingress p=tcp dport=22", &remote), "a peer may be one of the host's addresses");
    assert!(!touch("d=ingress p=tcp dport=22 src=10.0.0.6", &remote), "another peer");
    assert!(!touch("d=ingress p=tcp dport=2222", &remote), "another port");
    assert!(!touch("p=tcp dport=22", &[]), "no session");
    assert!(touch("i=lo p=tcp", &local));
    assert!(!touch("p=tcp", &local), "a loopback session is on lo only");
    // Several faults: one touching is enough.
    let (a, b) = (fault("p=udp"), fault("d=ingress src=10.0.0.5"));
    assert!(could_touch(&[&a, &b], &remote) && !could_touch(&[&a], &remote));
}
