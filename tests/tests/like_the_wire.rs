//! A packet a fault drops on egress is lost as on the wire: the sender is not told, so its
//! timeouts and retransmissions run as on a real path. Each test compares a fault on `a`'s
//! egress with the same fault on `b`'s ingress (where the sender cannot know) and with what the
//! kernel counts. Neighbour discovery passes faults untouched, as ARP does.
//!
//! The `b` side's fault cuts `b`'s other address, so that both run at once, at the same times.

use std::{
    io::{ErrorKind, Read, Write},
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use chaos_tests::{Daemon, Lab, Netns, lab};
use socket2::{Domain, Protocol, Socket, Type};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn prefix(addr: &str) -> String {
    format!("{addr}/{}", if addr.contains(':') { 128 } else { 32 })
}

/// The lab, a daemon on each side, and the addresses: `a`'s, the one `a`'s egress fault cuts
/// and the one `b`'s ingress fault cuts.
struct Sides {
    a_addr: &'static str,
    egress_cut: &'static str,
    ingress_cut: &'static str,
    near: Daemon,
    far: Daemon,
    lab: Lab,
}

impl Sides {
    fn new(v6: bool) -> Self {
        let lab = Lab::new().unwrap();
        let (a_addr, egress_cut, ingress_cut) =
            if v6 { (lab::A6, lab::B6, lab::B6_OTHER) } else { (lab::A4, lab::B4, lab::B4_OTHER) };
        let near = Daemon::start(&lab.a).unwrap();
        let far = Daemon::start(&lab.b).unwrap();
        Self { a_addr, egress_cut, ingress_cut, near, far, lab }
    }

    /// `fault` (chaosctl's action flags) on `a`'s egress to `egress_cut`, and on `b`'s ingress
    /// from `a` to `ingress_cut`; `direction` is the `a` side's (`egress` or `both`).
    fn apply(&self, fault: &[&str], direction: &str) {
        let mut near = vec!["apply", "--name", "near", "-i", &self.lab.a_if, "-d", direction];
        let dst = prefix(self.egress_cut);
        near.extend(["--dst", &dst]);
        near.extend(fault);
        self.near.ctl_ok(&near);
        let mut far = vec!["apply", "--name", "far", "-i", &self.lab.b_if, "-d", "ingress"];
        let (src, dst) = (prefix(self.a_addr), prefix(self.ingress_cut));
        far.extend(["--src", &src, "--dst", &dst]);
        far.extend(fault);
        self.far.ctl_ok(&far);
    }

    /// The (matched, dropped) counters of the `near` and `far` faults.
    fn counters(&self) -> [(u64, u64); 2] {
        [&self.near, &self.far].map(|d| {
            let f = &d.list()["faults"][0];
            (f["matched"].as_u64().unwrap(), f["dropped"].as_u64().unwrap())
        })
    }
}

/// A TCP connect from `ns` to `dst`, started without blocking.
fn start_connect(ns: &Netns, dst: SocketAddr) -> Socket {
    ns.enter(move || -> std::io::Result<Socket> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        s.set_nonblocking(true)?;
        match s.connect(&dst.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
            Ok(()) => Err(std::io::Error::other("connected at once")),
            Err(e) => Err(e),
        }
    })
    .unwrap()
    .unwrap()
}

/// Waits up to `timeout` for a connect among `sockets` to end; the index of the first that did
/// and how (its error, or connected).
fn first_done(sockets: &[&Socket], timeout: Duration) -> Option<(usize, std::io::Result<()>)> {
    let deadline = Instant::now() + timeout;
    let mut fds: Vec<libc::pollfd> =
        sockets.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 }).collect();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: fds is a valid array of pollfd of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, left.as_millis() as libc::c_int) };
        if n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
            continue;
        }
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        if n == 0 {
            return None;
        }
        let i = fds.iter().position(|f| f.revents != 0).unwrap();
        return Some((i, sockets[i].take_error().unwrap().map_or(Ok(()), Err)));
    }
}

/// `tcpi_state` of a connect in progress (include/net/tcp_states.h).
const TCP_SYN_SENT: u8 = 2;

fn tcp_info(fd: &impl AsRawFd) -> libc::tcp_info {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer and its length are the kernel's struct tcp_info (it writes at most len).
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    // SAFETY: zeroed, then filled by the kernel: every bit pattern is a valid tcp_info.
    unsafe { info.assume_init() }
}

/// A TCP connect to an address cut on egress stays pending as one whose SYNs are lost further
/// on does: SYNs retransmitted by the timer (1, 3, 7 s: three by 10 s), no ETIMEDOUT after
/// ~6 s (what TCP makes of local drops), no EHOSTUNREACH from a FAILED neighbour. A real path
/// takes about two minutes (tcp_syn_retries). The `a` side's partition is `both`, so that it
/// would also drop `b`'s neighbour advertisements if it touched neighbour discovery; address
/// resolution is real (no static entries), so it would show.
fn connect_stays_pending(v6: bool) {
    let sides = Sides::new(v6);
    let lab = &sides.lab;
    let port = 7400;
    let targets = [sides.egress_cut, sides.ingress_cut].map(|t| SocketAddr::new(ip(t), port));
    let _listeners = targets.map(|t| lab.b.enter(move || TcpListener::bind(t)).unwrap().unwrap());
    for t in [sides.egress_cut, sides.ingress_cut] {
        lab.a.ip(&["neigh", "del", t, "dev", &lab.a_if]).unwrap();
    }
    sides.apply(&["--partition"], "both");

    let started = Instant::now();
    let sockets = targets.map(|t| start_connect(&lab.a, t));
    // Without the fix the egress connect failed with ETIMEDOUT at ~6 s (IPv6: EHOSTUNREACH at
    // ~3 s, its neighbour FAILED): 10 s is well past both.
    if let Some((i, how)) = first_done(&[&sockets[0], &sockets[1]], Duration::from_secs(10)) {
        panic!("the connect to {} ended after {:?}: {how:?}", targets[i], started.elapsed());
    }
    let [egress, ingress] = [&sockets[0], &sockets[1]].map(tcp_info);
    assert_eq!([egress.tcpi_state, ingress.tcpi_state], [TCP_SYN_SENT; 2], "TCP states");
    // The sender counts the retransmissions it made: lost SYNs, as far as it can tell, both ways.
    assert!(ingress.tcpi_total_retrans >= 3, "{} SYN retransmissions in 10 s", ingress.tcpi_total_retrans);
    assert_eq!(egress.tcpi_total_retrans, ingress.tcpi_total_retrans, "SYN retransmissions, egress vs ingress");
    // Every SYN was dropped, and counted; nothing else was (neighbour discovery passed).
    let syns = u64::from(egress.tcpi_total_retrans) + 1;
    assert_eq!(sides.counters(), [(syns, syns); 2], "(matched, dropped) of the egress and ingress faults");
    for t in [sides.egress_cut, sides.ingress_cut] {
        let neigh = lab.a.ip(&["neigh", "show", "to", t, "dev", &lab.a_if]).unwrap();
        assert!(neigh.contains("lladdr") && !neigh.contains("FAILED"), "neighbour {t}: {neigh}");
    }

    // The path was only cut: once the faults go, the next SYN (15 s) gets through.
    sides.near.ctl_ok(&["rm", "near"]);
    sides.far.ctl_ok(&["rm", "far"]);
    let mut pending = vec![0, 1];
    while !pending.is_empty() {
        let socks: Vec<&Socket> = pending.iter().map(|&i| &sockets[i]).collect();
        let (j, how) = first_done(&socks, Duration::from_secs(10)).expect("connected after the faults went");
        how.unwrap_or_else(|e| panic!("connect to {}: {e}", targets[pending[j]]));
        pending.remove(j);
    }
}

#[test]
fn connect_to_a_partitioned_address_stays_pending_ipv4() {
    connect_stays_pending(false);
}

#[test]
fn connect_to_a_partitioned_address_stays_pending_ipv6() {
    connect_stays_pending(true);
}

/// An ICMP echo request of identifier `id`; the kernel fills in ICMPv6 checksums itself.
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    m.extend(id.to_be_bytes());
    m.extend(seq.to_be_bytes());
    m.extend(b"chaos-daemon echo");
    if !v6 {
        let mut sum: u32 = m.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        m[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    m
}

/// IP_RECVERR, as ping sets it: without it raw and UDP sockets hide a local drop's ENOBUFS.
fn recv_errors(s: &Socket, v6: bool) {
    let (level, name) =
        if v6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVERR) } else { (libc::IPPROTO_IP, libc::IP_RECVERR) };
    let on: libc::c_int = 1;
    // SAFETY: an int option, given with its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_RECVERR: {}", std::io::Error::last_os_error());
}

/// Sends `count` echo requests (as ping does as root: a raw socket with IP_RECVERR) from `ns` to `dst`, each
/// `sendto` required to succeed, and returns how many replies came back within a second.
fn ping(ns: &Netns, dst: IpAddr, count: u16) -> u16 {
    ns.enter(move || {
        let v6 = dst.is_ipv6();
        let (domain, proto) = if v6 { (Domain::IPV6, Protocol::ICMPV6) } else { (Domain::IPV4, Protocol::ICMPV4) };
        let s = Socket::new(domain, Type::RAW, Some(proto)).unwrap();
        recv_errors(&s, v6);
        let id = std::process::id() as u16;
        let to = SocketAddr::new(dst, 0).into();
        for seq in 0..count {
            // What the fault must not do: fail the send (ENOBUFS: "sendmsg: No buffer space available").
            let sent = s.send_to(&echo_request(v6, id, seq), &to);
            assert!(sent.is_ok(), "echo request {seq} to {dst}: {sent:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut replies = 0;
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            s.set_read_timeout(Some(left)).unwrap();
            let Ok((n, from)) = s.recv_from(&mut buf) else { break };
            // SAFETY: recv_from initialised the first n bytes.
            let m: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
            // IPv4 raw sockets get the IP header too; IPv6 ones the ICMPv6 message only.
            let icmp = if v6 { &m[..] } else { &m[usize::from(m[0] & 0x0f) * 4..] };
            let reply = if v6 { 129 } else { 0 };
            if from.as_socket().map(|a| a.ip()) == Some(dst) && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
                replies += 1;
            }
        }
        replies
    })
    .unwrap()
}

/// Sends `count` UDP datagrams from `ns` to `dst`, each `sendto` required to succeed.
fn udp_sends(ns: &Netns, dst: SocketAddr, count: u32) {
    ns.enter(move || {
        let s = Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP)).unwrap();
        recv_errors(&s, dst.is_ipv6());
        for i in 0..count {
            let sent = s.send_to(&i.to_be_bytes(), &dst.into());
            assert!(sent.is_ok(), "datagram {i} to {dst}: {sent:?}");
        }
    })
    .unwrap();
}

/// Ping (and UDP) under a partition on egress: `sendmsg` succeeds and no reply comes, as when
/// `b` drops the requests on arrival; the faults count every request and datagram.
fn ping_gets_no_enobufs(v6: bool) {
    let sides = Sides::new(v6);
    let lab = &sides.lab;
    let (egress_cut, ingress_cut) = (ip(sides.egress_cut), ip(sides.ingress_cut));
    assert_eq!(ping(&lab.a, egress_cut, 3), 3, "replies before the fault");
    assert_eq!(ping(&lab.a, ingress_cut, 3), 3, "replies before the fault");
    sides.apply(&["--partition"], "egress");
    assert_eq!(ping(&lab.a, egress_cut, 5), 0, "replies through the egress partition");
    assert_eq!(ping(&lab.a, ingress_cut, 5), 0, "replies through the ingress partition");
    udp_sends(&lab.a, SocketAddr::new(egress_cut, 7410), 5);
    udp_sends(&lab.a, SocketAddr::new(ingress_cut, 7410), 5);
    assert_eq!(sides.counters(), [(10, 10); 2], "(matched, dropped) of the egress and ingress faults");
}

#[test]
fn ping_through_an_egress_partition_gets_no_enobufs_ipv4() {
    ping_gets_no_enobufs(false);
}

#[test]
fn ping_through_an_egress_partition_gets_no_enobufs_ipv6() {
    ping_gets_no_enobufs(true);
}

/// What the sender's TCP counted for one stream of `bytes` to `dst`, sent and fully acked.
struct Stream {
    /// Segments sent, and those of them with data (first transmissions and retransmissions).
    segs_out: u32,
    data_segs_out: u32,
    /// Segments sent again (TCP's own count, as TcpRetransSegs sums it).
    retrans: u32,
}

fn stream(from: &Netns, to: &Netns, dst: SocketAddr, bytes: usize) -> Stream {
    let listener = to.enter(move || TcpListener::bind(dst)).unwrap().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 65536];
        while let n @ 1.. = conn.read(&mut buf).unwrap() {
            got += n;
        }
        got
    });
    let mut conn = from.enter(move || TcpStream::connect_timeout(&dst, Duration::from_secs(30))).unwrap().unwrap();
    conn.write_all(&vec![7u8; bytes]).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    // The sink's close: everything was acked.
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    assert_eq!(conn.read(&mut [0u8; 1]).unwrap(), 0);
    assert_eq!(sink.join().unwrap(), bytes);
    let info = tcp_info(&conn);
    Stream { segs_out: info.tcpi_segs_out, data_segs_out: info.tcpi_data_segs_out, retrans: info.tcpi_total_retrans }
}

/// A TCP stream through 20% loss on egress: the sender retransmits what was lost, as it does
/// when the loss is on `b`'s ingress. With `gso_max_segs 1` every socket buffer is one segment, so
/// the faults' counts and TCP's are of the same things.
///
/// Bounds: each segment sent is dropped with p = 0.2, independently, so the dropped share of the
/// D data segments sent is within 5σ = 5·sqrt(p(1-p)/D) of p (D ≈ 1400: ±0.053). Every dropped
/// segment with data must be sent again, so TCP's retransmissions R are at least the fault's
/// drops less the segments without data (SYN, pure ACKs), and R/D ≥ p - 5σ - (those)/D.
/// Spurious retransmissions only add to R: R/D ≤ 2p is a loose sanity bound. With the old
/// TC_ACT_SHOT, the sender saw local drops and R was near 0.
#[test]
fn tcp_retransmits_egress_loss_as_it_does_ingress_loss() {
    const P: f64 = 0.2;
    let sides = Sides::new(false);
    let lab = &sides.lab;
    // TCP always builds GSO buffers (segmented after the hook when the device cannot): one
    // segment per buffer, at most.
    lab.a.ip(&["link", "set", &lab.a_if, "gso_max_segs", "1"]).unwrap();
    let port = 7420;
    sides.apply(&["--loss", "20%", "-p", "tcp", "--dport", &port.to_string()], "egress");
    let bytes = 2_000_000;
    let egress = stream(&lab.a, &lab.b, SocketAddr::new(ip(sides.egress_cut), port), bytes);
    let ingress = stream(&lab.a, &lab.b, SocketAddr::new(ip(sides.ingress_cut), port), bytes);
    let counters = sides.counters();
    for (side, s, (matched, dropped)) in [("egress", &egress, counters[0]), ("ingress", &ingress, counters[1])] {
        let (d, r) = (f64::from(s.data_segs_out), f64::from(s.retrans));
        let other = u64::from(s.segs_out - s.data_segs_out);
        let sigma = (P * (1.0 - P) / d).sqrt();
        eprintln!(
            "{side}: segs_out {} data {} retrans {} (R/D {:.3}), fault matched {matched} dropped {dropped}",
            s.segs_out,
            s.data_segs_out,
            s.retrans,
            r / d
        );
        // The fault saw every segment the sender sent (and the odd late ACK after).
        assert!(matched >= u64::from(s.segs_out), "{side}: matched {matched} < segs_out {}", s.segs_out);
        let share = dropped as f64 / matched as f64;
        assert!((share - P).abs() <= 5.0 * sigma, "{side}: dropped {dropped} of {matched}");
        assert!(
            u64::from(s.retrans) + other >= dropped,
            "{side}: {} retransmissions for {dropped} drops ({other} segments without data)",
            s.retrans
        );
        assert!(r / d >= P - 5.0 * sigma - other as f64 / d, "{side}: R/D {:.3}", r / d);
        assert!(r / d <= 2.0 * P, "{side}: R/D {:.3}", r / d);
    }
}
