//! Guard rails: flows a fault must not touch unless the user forces it.
//!
//! Faults that would touch a protected flow (by default the daemon's own control path and the
//! established SSH sessions to the host; more by configuration) are refused unless forced.
//!
//! - **The daemon's own control path** is its Unix socket: `AF_UNIX` traffic never becomes an IP
//!   packet, so no TC program sees it and no fault can cut it. Remote services the host depends
//!   on (a Kubernetes API server, a configuration store) are what the configured list is for:
//!   see [`parse_protected`] for its syntax.
//! - **SSH sessions**: [`ssh_sessions`] reads the established TCP connections to sshd's ports from
//!   the kernel's table for the daemon's network namespace. It is a snapshot: call it for each
//!   batch of faults checked, so that sessions opened since the last batch are covered. Where
//!   the kernel follows the sessions (the `sock:inet_sock_set_state` program, see
//!   `kernel::sessions`), its map, a superset of the namespace's sessions, is read first: when
//!   [`could_touch`] says the faults touch none of its sessions, no listing is needed.
//!
//! [`check`] refuses a fault that would match any packet of a protected flow, in either
//! direction, whatever its action: a 1% loss on an SSH session is refused like a partition.
//!
//! # Which packets of a flow a fault can see
//! Faults match as the compiler does (see [`crate::compile`]): as written on their hook, and for
//! `direction = both` also mirrored (source and destination swapped) on ingress. A protected flow
//! leaves as `local -> remote` (egress) and arrives as `remote -> local` (ingress).
//!
//! Which interface carries a flow would take a route lookup, so this module assumes any interface
//! may, with one exception it can be sure of: the kernel routes traffic to the host's own
//! addresses (127.0.0.0/8 and ::1, but also the addresses of its other interfaces) through `lo`,
//! and only there. So a fault on `lo` can only touch flows between two of the host's addresses,
//! and a fault elsewhere cannot touch those ([`Path`]). On `lo` every packet crosses both hooks
//! (`loopback_xmit` hands what it sends back to `netif_rx` on the same device), so both
//! directions of a flow are seen on each hook there.
//!
//! # Using it
//! At start-up, `parse_protected(&entries, ephemeral_ports()?)`; for each batch of faults applied
//! without `--force`, `ssh_sessions(&ports)?` plus those entries, and [`check`] on each fault.
//!
//! # Limits
//! - TC sees addresses after NAT on egress and before it on ingress (`sch_handle_egress` runs in
//!   `__dev_queue_xmit`, after netfilter's OUTPUT and POSTROUTING; `sch_handle_ingress` before
//!   PREROUTING). A service address that is DNATed (a Kubernetes ClusterIP) must be listed with
//!   its endpoints, which are what a fault can match.
//! - ICMP about a flow (a "fragmentation needed" for it, say) is not counted as its packets.
//! - /proc/net/tcp is read in pieces; a table changing meanwhile can make the kernel skip a row.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
};

use crate::spec::{Cidr, Direction, Fault, Match, PortRange, Protocol, SpecError, mask};

/// sshd's port, for a configuration with no port list of its own.
pub const DEFAULT_SSH_PORTS: &[u16] = &[22];

/// A flow that faults must not touch unless forced.
#[derive(Clone, Debug, PartialEq)]
pub struct Protected {
    /// What to tell the user, e.g. `SSH session 10.0.0.5:51234 -> 10.0.0.1:22`.
    pub what: String,
    /// `Any` with remote ports means TCP and UDP; without, every IP packet (as for a fault).
    pub protocol: Protocol,
    /// The host's address; `None`: any of them.
    pub local: Option<IpAddr>,
    pub local_ports: PortRange,
    /// The peer (IPv4-mapped IPv6 addresses are stored as IPv4: the packets are IPv4).
    pub remote: Cidr,
    /// [`PortRange::ANY`]: every port, and packets without ports.
    pub remote_ports: PortRange,
    pub path: Path,
}

impl Protected {
    /// An SSH session as the host sees it: `local` is the host's end (sshd's port).
    pub fn session(local: SocketAddr, remote: SocketAddr, path: Path) -> Self {
        Self {
            what: format!("SSH session {remote} -> {local}"),
            protocol: Protocol::Tcp,
            local: Some(local.ip()),
            local_ports: port(local.port()),
            remote: host(remote.ip()),
            remote_ports: port(remote.port()),
            path,
        }
    }
}

/// Which interfaces can carry a protected flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Only `lo`: the peer is one of the host's own addresses.
    Loopback,
    /// Any interface but `lo`.
    Network,
    /// Any interface, `lo` included: a configured destination may be one of the host's addresses.
    Unknown,
}

impl fmt::Display for Protected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// `sk_state` of an established TCP socket (`TCP_ESTABLISHED` in include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// Established TCP connections whose local port is one of `ports` (sshd's), from
/// /proc/thread-self/net/tcp and tcp6: the table of the calling thread's network namespace, which
/// is the daemon's. (`/proc/self/net` would show the namespace of the process's main thread.)
pub fn ssh_sessions(ports: &[u16], families: Families) -> io::Result<Vec<Protected>> {
    let ends = session_ends(ports, families)?;
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let own = own_addresses()?;
    Ok(ends
        .into_iter()
        .map(|(local, remote)| {
            let path = if to_self(local, remote, &own) { Path::Loopback } else { Path::Network };
            Protected::session(local, remote, path)
        })
        .collect())
}

/// Whether a session's peer is the host itself (by loopback, its own address, or one of `own`).
fn to_self(local: SocketAddr, remote: SocketAddr, own: &[IpAddr]) -> bool {
    remote.ip().is_loopback() || remote.ip() == local.ip() || own.contains(&remote.ip())
}

/// Listings of the kernel's TCP table made so far ([`session_ends`]): a metric, which shows
/// whether requests are served from the tracepoint's session map.
static DUMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn dumps() -> u64 {
    DUMPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The (local, remote) ends of the established TCP connections whose local port is one of
/// `ports`, in the calling thread's network namespace: one listing of the kernel's TCP table.
pub fn session_ends(ports: &[u16], families: Families) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
    if !families.v4 && !families.v6 {
        return Ok(Vec::new());
    }
    DUMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // sock_diag where the kernel has it (inet_diag; a module that loads on demand), the /proc
    // tables otherwise: the same rows, but sock_diag walks the socket table once per family and
    // keeps only established sockets, where /proc costs two walks per file.
    let rows = match established_by_diag(families) {
        Ok(rows) => rows,
        Err(_) => established_by_proc(families)?,
    };
    Ok(rows
        .into_iter()
        .filter(|r| r.state == TCP_ESTABLISHED && ports.contains(&r.local.port()))
        .map(|r| (r.local, r.remote))
        .collect())
}

fn established_by_proc(families: Families) -> io::Result<Vec<Row>> {
    let mut rows = if families.v4 { read_table("/proc/thread-self/net/tcp")? } else { Vec::new() };
    if !families.v6 {
        return Ok(rows);
    }
    match read_table("/proc/thread-self/net/tcp6") {
        Ok(more) => rows.extend(more),
        // Booted with ipv6.disable=1: there is no IPv6 table, and no IPv6 session.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(rows)
}

/// linux/sock_diag.h and inet_diag.h: `SOCK_DIAG_BY_FAMILY`; `struct inet_diag_req_v2` is
/// family, protocol, ext, pad, a state mask, and a zeroed `inet_diag_sockid` (48 bytes).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const DIAG_SOCKID_LEN: usize = 48;

/// Established TCP sockets of both families from NETLINK_SOCK_DIAG (as `ss` reads them).
fn established_by_diag(families: Families) -> io::Result<Vec<Row>> {
    let mut socket = crate::netlink::Socket::open_protocol(libc::NETLINK_SOCK_DIAG)?;
    let mut rows = Vec::new();
    // IPv4 sessions to an IPv6 socket (mapped addresses) are in the IPv6 dump: an IPv4 fault
    // needs it too. (A dump walks the kernel's whole TCP table, however few sockets it has.)
    let wanted = [(libc::AF_INET as u8, families.v4), (libc::AF_INET6 as u8, families.v4 || families.v6)];
    for family in wanted.into_iter().filter(|(_, w)| *w).map(|(f, _)| f) {
        let mut req = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
        req.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
        req.extend_from_slice(&[0; DIAG_SOCKID_LEN]);
        let answer = match socket.dump(SOCK_DIAG_BY_FAMILY, &req, &crate::netlink::Attrs::new()) {
            Ok(a) => a,
            // No IPv6 in this kernel (ipv6.disable=1): no IPv6 session either.
            Err(e) if family == libc::AF_INET6 as u8 && (e.is(libc::ENOENT) || e.is(libc::EAFNOSUPPORT)) => continue,
            Err(e) => return Err(e.into()),
        };
        for m in answer.iter().filter(|m| m.ty == SOCK_DIAG_BY_FAMILY) {
            rows.push(parse_diag(&m.payload).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "sock_diag: a message shorter than inet_diag_msg")
            })?);
        }
    }
    Ok(rows)
}

/// `struct inet_diag_msg`: family, state, timer, retrans, then the socket id: source and
/// destination port (big-endian), source and destination address (16 bytes each; IPv4 in
/// the first 4).
fn parse_diag(m: &[u8]) -> Option<Row> {
    let id = m.get(4..44)?;
    let port = |at: usize| u16::from_be_bytes([id[at], id[at + 1]]);
    let addr = |at: usize| -> IpAddr {
        if i32::from(m[0]) == libc::AF_INET {
            IpAddr::from(<[u8; 4]>::try_from(&id[at..at + 4]).unwrap())
        } else {
            IpAddr::from(<[u8; 16]>::try_from(&id[at..at + 16]).unwrap()).to_canonical()
        }
    };
    Some(Row { local: SocketAddr::new(addr(4), port(0)), remote: SocketAddr::new(addr(20), port(2)), state: m[1] })
}

/// The addresses of this network namespace's interfaces: a peer with one of them is the host
/// itself, reached through `lo` (e.g. `ssh -b 10.0.0.2 10.0.0.1` from the host).
fn own_addresses() -> io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter_map(|a| {
            let a = a.address?;
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip()).to_canonical()))
        })
        .collect())
}

/// One socket of /proc/net/tcp or tcp6.
#[derive(Debug, PartialEq)]
struct Row {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
}

fn read_table(path: &str) -> io::Result<Vec<Row>> {
    use std::io::Read as _;
    // Each read() of this file walks the kernel's whole TCP hash table from where the last one
    // stopped, and the table is big (about a third of a millisecond per walk on a host with
    // 24 GB). `read_to_string` would start with 32-byte probes, a walk each; one buffer large
    // enough for the usual table reads it in one walk, plus one for the end of file.
    let mut bytes = Vec::with_capacity(256 << 10);
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let text =
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?;
    // The first line is the column header.
    text.lines()
        .skip(1)
        .map(|line| {
            parse_row(line).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{path}: cannot parse '{}'", line.trim()))
            })
        })
        .collect()
}

/// `   1: 0100007F:A070 0100007F:0016 01 ...`: slot, local and remote address, state (hex).
/// Written by `get_tcp4_sock` (net/ipv4/tcp_ipv4.c) and `get_tcp6_sock` (net/ipv6/tcp_ipv6.c).
fn parse_row(line: &str) -> Option<Row> {
    let mut fields = line.split_whitespace().skip(1);
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    Some(Row { local, remote, state })
}

/// The kernel prints an IPv4 address as one `%08X` of the `__be32` read as a native integer,
/// and an IPv6 address as four of them (`s6_addr32[0..4]`); so each 8 hex digits parsed back
/// into a native `u32` give, as native bytes, four address bytes in network order, whatever the
/// machine's byte order. The port is printed after `ntohs`: plain hex.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| Some(u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok()?.to_ne_bytes());
    let ip = match addr.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0; 16];
            for i in 0..4 {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            // An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d; on the wire it is IPv4.
            IpAddr::from(bytes).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The ports the kernel picks for a client socket that does not bind one (`connect` and UDP
/// autobind both draw from `net.ipv4.ip_local_port_range`, which applies to IPv6 too), read for
/// the calling thread's network namespace.
pub fn ephemeral_ports() -> io::Result<PortRange> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(PATH)?;
    let mut bounds = text.split_whitespace().map(str::parse::<u16>);
    match (bounds.next(), bounds.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Ok(PortRange { lo, hi }),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{PATH}: unexpected '{}'", text.trim()))),
    }
}

/// Parses the configured protected destinations. Each entry is
///
/// ```text
/// [tcp: | udp: | icmp:] ADDRESS[/LEN]            every port
/// [tcp: | udp:]         IPV4[/LEN]:PORT
/// [tcp: | udp:]         [IPV6[/LEN]]:PORT        brackets are required with a port
/// ```
///
/// for example `10.96.0.1:443`, `tcp:10.0.0.0/8`, `[fd00::1]:6443`, `udp:[fd00::53]:53`,
/// `192.168.1.10`. Without a protocol, an entry with a port means TCP and UDP, one without a port
/// every packet (ICMP included), as for a fault. Errors name the entry.
///
/// An entry stands for a server this host connects to: packets to it leave, its replies arrive,
/// and the host's end uses a port from `ephemeral` (see [`ephemeral_ports`]). Taking the host's
/// port as "any" instead would refuse every fault on incoming traffic to a local service, such
/// as `--direction ingress --dport 8080`. A client that binds its own port outside that range
/// (the kernel NFS client's reserved ports, say) is protected only by the remote end.
pub fn parse_protected(entries: &[String], ephemeral: PortRange) -> Result<Vec<Protected>, String> {
    entries.iter().map(|e| parse_entry(e, ephemeral).map_err(|why| format!("protected entry '{e}': {why}"))).collect()
}

fn parse_entry(entry: &str, ephemeral: PortRange) -> Result<Protected, String> {
    let entry = entry.trim();
    let (protocol, dest) = match entry.split_once(':') {
        Some(("tcp", rest)) => (Protocol::Tcp, rest),
        Some(("udp", rest)) => (Protocol::Udp, rest),
        Some(("icmp", rest)) => (Protocol::Icmp, rest),
        _ => (Protocol::Any, entry),
    };
    let (addr, port_text) = if let Some(rest) = dest.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or("'[' without ']'")?;
        match after {
            "" => (addr, None),
            _ => (addr, Some(after.strip_prefix(':').ok_or("expected ':PORT' after ']'")?)),
        }
    } else if dest.matches(':').count() == 1 {
        // One colon: IPv4 and port. An IPv6 address has at least two (and needs brackets).
        let (addr, port) = dest.split_once(':').expect("one colon");
        (addr, Some(port))
    } else {
        (dest, None)
    };
    let remote = canonical(addr.parse::<Cidr>()?);
    let remote_ports = match port_text {
        None => PortRange::ANY,
        Some(_) if protocol == Protocol::Icmp => return Err("icmp has no ports".into()),
        Some(p) => port(p.parse().map_err(|_| format!("'{p}' is not a port (0-65535)"))?),
    };
    let loopback = remote.len >= if remote.is_v4() { 8 } else { 128 } && remote.addr.is_loopback();
    Ok(Protected {
        what: format!("protected destination {entry} (config)"),
        protocol,
        local: None,
        local_ports: ephemeral,
        remote,
        remote_ports,
        path: if loopback { Path::Loopback } else { Path::Unknown },
    })
}

/// `::ffff:a.b.c.d/len` as `a.b.c.d/(len - 96)`: those addresses travel as IPv4.
fn canonical(c: Cidr) -> Cidr {
    match c.addr {
        IpAddr::V6(a) if c.len >= 96 && a.to_ipv4_mapped().is_some() => {
            Cidr { addr: a.to_canonical(), len: c.len - 96 }
        }
        _ => c,
    }
}

fn host(addr: IpAddr) -> Cidr {
    Cidr { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
}

fn port(p: u16) -> PortRange {
    PortRange { lo: p, hi: p }
}

/// The SSH sessions last listed, and the kernel's TCP counters then: while no connection has
/// been accepted (`PassiveOpens`, which every new SSH session adds to) and none opened or closed
/// (`CurrEstab`), the list still holds, and a request needs no walk of the kernel's TCP table.
/// The counters are the daemon's network namespace's, IPv4 and IPv6 together.
#[derive(Clone, Debug, Default)]
pub struct SessionCache {
    last: Option<(TcpCounters, Families, Vec<Protected>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TcpCounters {
    passive_opens: u64,
    curr_estab: u64,
}

impl SessionCache {
    /// [`ssh_sessions`], from the last listing while it still holds.
    pub fn sessions(&mut self, ports: &[u16], families: Families) -> io::Result<Vec<Protected>> {
        if !families.v4 && !families.v6 {
            return Ok(Vec::new());
        }
        let now = tcp_counters().ok();
        if let (Some(now), Some((then, had, sessions))) = (now, &self.last)
            && now == *then
            && (had.v4 || !families.v4)
            && (had.v6 || !families.v6)
        {
            return Ok(sessions.clone());
        }
        let sessions = ssh_sessions(ports, families)?;
        // Read before and after: a change meanwhile leaves nothing cached.
        self.last = match (now, tcp_counters().ok()) {
            (Some(before), Some(after)) if before == after => Some((before, families, sessions.clone())),
            _ => None,
        };
        Ok(sessions)
    }
}

/// The `Tcp:` counters of /proc/thread-self/net/snmp (the calling thread's namespace).
fn tcp_counters() -> io::Result<TcpCounters> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "/proc/net/snmp: no Tcp counters");
    let (names, values) = (tcp.next().ok_or_else(bad)?, tcp.next().ok_or_else(bad)?);
    let value = |name: &str| -> io::Result<u64> {
        let i = names.split_whitespace().position(|n| n == name).ok_or_else(bad)?;
        values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).ok_or_else(bad)
    };
    Ok(TcpCounters { passive_opens: value("PassiveOpens")?, curr_estab: value("CurrEstab")? })
}

/// Which address families' sessions a check needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

/// The families in which some SSH session (on `ports`, to any peer, on any interface) could be
/// touched by one of `faults`: only those need the sessions listed. A fault that cannot match
/// TCP from or to those ports (UDP only, other ports, ...) needs no listing at all, which
/// spares the request a walk of the kernel's TCP table.
pub fn at_stake<'a>(faults: impl Iterator<Item = &'a Fault>, ports: &[u16]) -> Families {
    let any = |v4: bool, p: u16| Protected {
        what: String::new(),
        protocol: Protocol::Tcp,
        local: None,
        local_ports: port(p),
        remote: Cidr { addr: if v4 { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) }, len: 0 },
        remote_ports: PortRange::ANY,
        path: Path::Unknown,
    };
    let mut families = Families::default();
    for fault in faults {
        for p in ports {
            families.v4 |= touches(fault, &any(true, *p));
            families.v6 |= touches(fault, &any(false, *p));
        }
    }
    families
}

/// Whether one of `faults` could touch one of `sessions` ((local, remote) ends, as the
/// tracepoint's session map holds them). The map does not say which interfaces carry a
/// session, so one whose peer is not plainly the host itself is taken as on any of them.
pub fn could_touch(faults: &[&Fault], sessions: &[(SocketAddr, SocketAddr)]) -> bool {
    sessions.iter().any(|&(local, remote)| {
        let path = if to_self(local, remote, &[]) { Path::Loopback } else { Path::Unknown };
        let session = Protected::session(local, remote, path);
        faults.iter().any(|f| touches(f, &session))
    })
}

/// Refuses a fault that would match a packet of a protected flow (see the module doc for how
/// that is decided). The error names the first such flow and how to proceed.
pub fn check(fault: &Fault, protected: &[Protected]) -> Result<(), SpecError> {
    let mut touched = protected.iter().filter(|p| touches(fault, p));
    let Some(first) = touched.next() else { return Ok(()) };
    let more = match touched.count() {
        0 => String::new(),
        n => format!(" (and {n} more protected flow{})", if n == 1 { "" } else { "s" }),
    };
    Err(SpecError::new(
        "match",
        format!(
            "would touch {first}{more}, which must not be cut: narrow interface, direction, protocol, \
             src, dst, sport or dport to leave it out, or apply the fault with --force"
        ),
    ))
}

/// One end of a packet: address (`None`: any) and ports.
type End = (Option<Cidr>, PortRange);

fn touches(fault: &Fault, p: &Protected) -> bool {
    let m = &fault.matches;
    let on_lo = fault.interface == "lo";
    let carried = match p.path {
        Path::Loopback => on_lo,
        Path::Network => !on_lo,
        Path::Unknown => true,
    };
    let family = if p.remote.is_v4() { m.families.v4 } else { m.families.v6 };
    if !carried || !family || fault_protocols(m) & flow_protocols(p) == 0 {
        return false;
    }
    let local: End = (p.local.map(host), p.local_ports);
    let remote: End = (Some(p.remote), p.remote_ports);
    // (hook is ingress, rule mirrored there), as compile.rs lays rules out.
    let hooks: &[(bool, bool)] = match m.direction {
        Direction::Egress => &[(false, false)],
        Direction::Ingress => &[(true, false)],
        Direction::Both => &[(false, false), (true, true)],
    };
    hooks.iter().any(|&(ingress, mirrored)| {
        let (src, dst, sport, dport) =
            if mirrored { (m.dst, m.src, m.dport, m.sport) } else { (m.src, m.dst, m.sport, m.dport) };
        // (source, destination) of the flow's packets this hook sees.
        let seen: &[(End, End)] = match (on_lo, ingress) {
            (true, _) => &[(local, remote), (remote, local)],
            (false, false) => &[(local, remote)],
            (false, true) => &[(remote, local)],
        };
        seen.iter().any(|(s, d)| addrs(src, s.0) && addrs(dst, d.0) && ports(sport, s.1) && ports(dport, d.1))
    })
}

const TCP: u8 = 1;
const UDP: u8 = 2;
const ICMP: u8 = 4;
const OTHER: u8 = 8;

/// As compile.rs `protos`: a fault with ports sees only TCP and UDP.
fn fault_protocols(m: &Match) -> u8 {
    match m.protocol {
        Protocol::Tcp => TCP,
        Protocol::Udp => UDP,
        Protocol::Icmp => ICMP,
        Protocol::Any if m.sport.is_any() && m.dport.is_any() => TCP | UDP | ICMP | OTHER,
        Protocol::Any => TCP | UDP,
    }
}

fn flow_protocols(p: &Protected) -> u8 {
    match p.protocol {
        Protocol::Tcp => TCP,
        Protocol::Udp => UDP,
        Protocol::Icmp => ICMP,
        Protocol::Any if p.remote_ports.is_any() => TCP | UDP | ICMP | OTHER,
        Protocol::Any => TCP | UDP,
    }
}

/// Two prefixes share an address exactly when one contains the other.
fn addrs(fault: Option<Cidr>, flow: Option<Cidr>) -> bool {
    match (fault, flow) {
        (Some(a), Some(b)) => {
            let len = a.len.min(b.len);
            a.is_v4() == b.is_v4() && mask(a.bytes(), len) == mask(b.bytes(), len)
        }
        _ => true,
    }
}

/// A fault's port range against a flow's. Packets without ports need no case of their own: a
/// fault that can match them has both ranges [`PortRange::ANY`], which overlap every range.
fn ports(fault: PortRange, flow: PortRange) -> bool {
    fault.lo <= flow.hi && flow.lo <= fault.hi
}

#[cfg(test)]
mod tests;
