//! Faults as users write them ([`FaultSpec`]: CLI flags, TOML `[[fault]]` tables, API JSON) and
//! their validated form ([`Fault`]). Validation is the one place that decides what is accepted;
//! each refusal names the field and the reason.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

mod action;
mod dns;

pub use action::{
    Action, Checksum, Distribution, MAX_BURST, MAX_DELAY, MAX_JITTER, MAX_RATE, MIN_RATE, Odds, Reorder, Shape, errno,
    errno_name, gemodel, parse_rate, parse_size, threshold,
};
pub use dns::{Dns, DnsReply, Domain, MAX_DOMAINS, QTypes, Rcode, parse_qtype, qtype_name};

/// A fault as submitted. Fields are loosely typed on purpose: validation, not the parser,
/// reports what is wrong, field by field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Unique name; generated (`loss-1`, `partition-2`, ...) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Interface the fault applies to (required; with `netns` or `pid`, the interface in that
    /// namespace, default `eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Another network namespace, by path (`/run/netns/x`, `/proc/PID/ns/net`): the fault acts
    /// on its `interface` as seen from inside it, through the host side of its veth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// As `netns`, naming a process in that namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// As `netns`, naming a container by its id (or a unique prefix of 12 or more hex digits),
    /// found in the processes' cgroups (containerd, CRI-O, Docker; no runtime socket needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// As `netns`, naming a Kubernetes pod on this node: `NAMESPACE/NAME`, found in the
    /// container runtime's state files (containerd, CRI-O; no API server needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// A cgroup v2 directory: the fault acts only on its processes' packets on `interface`
    /// (egress: the socket's cgroup, at TC; ingress: where a packet reaches one of its sockets),
    /// and below it. A path under the cgroup2 mount, or one from its root
    /// (`/system.slice/x.service`), as `/proc/PID/cgroup` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// `loss`, `partition`, `delay`, `bandwidth`, `duplicate`, `corrupt`, `reset`,
    /// `connect-fail` or `dns` (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Loss probability in percent, 0 to 100 (`loss` needs it or `gemodel`; optional with
    /// `delay` and `bandwidth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Gilbert–Elliott loss as netem's `loss gemodel`: `"P [R [1-H [1-K]]]"`, percentages
    /// (defaults R 100, 1-H 100, 1-K 0). For `loss`, instead of `loss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemodel: Option<String>,
    /// Percent of matching packets sent twice (required for `duplicate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<f64>,
    /// Percent of matching packets with one payload bit flipped (required for `corrupt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<f64>,
    /// `corrupt`: `broken` (default: the L4 checksum stays wrong, receivers drop the packet) or
    /// `fixed` (the checksum is fixed, the application receives the damaged bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// `delay`: percent of packets that skip the delay, overtaking delayed ones (netem's
    /// `reorder`; default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<f64>,
    /// `delay` with `reorder`: percent by which a packet's reorder draw repeats the last one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder_correlation: Option<f64>,
    /// `delay` with `reorder`: only after this many packets in a row were delayed may one skip
    /// the delay (netem's `gap`; default 1: any packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<i64>,
    /// `reset`: `all` (default: every matching segment is answered with a RST, so established
    /// connections are reset and new ones refused) or `new` (only connection attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<String>,
    /// `connect-fail`: what `connect()` fails with: an errno name (`ECONNREFUSED`,
    /// `ETIMEDOUT`, `EHOSTUNREACH`, ...) or number. Before Linux 5.18 only `EPERM`. Default: the
    /// best the kernel can do, `ECONNREFUSED`, or `EPERM` before 5.18; the daemon records the
    /// one it applied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// `dns`: what a matching query gets: `error` (default: answered at once with `rcode`),
    /// `spoof` (answered with the `spoof` addresses, TTL 0), `random` (answered with random
    /// addresses) or `drop` (lost: the client times out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// `dns` `error`: the response code, `SERVFAIL` (default), `NXDOMAIN` or `REFUSED` (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
    /// `dns` `spoof` (required for it): the addresses answered, at most one IPv4 (for A queries)
    /// and one IPv6 (for AAAA queries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoof: Option<Vec<String>>,
    /// `dns`: the query types acted on: names (`A`, `AAAA`, `CNAME`, `MX`, `TXT`, `NS`, `SOA`,
    /// `PTR`, `SRV`, `HTTPS`, `SVCB`, `CAA`, `ANY`, any case) or numbers 1-65535, at most 8.
    /// Default: every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qtypes: Option<Vec<QTypeSpec>>,
    /// `dns`: percent of matching queries acted on, 0 to 100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// `dns`: the names whose queries it acts on, at most 64 patterns: `api.example.com` (that
    /// name), `*.example.com` (names below it, not itself), `api.*` (names starting with the
    /// label `api`, not `api` alone), `*` (every name). Any case, a trailing dot dropped.
    /// Default: every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<String>>,
    /// Added latency, with a unit: `50ms`, `1s`, `250us` (required for `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DurationSpec>,
    /// Latency variation around `delay`, with a unit (default: none; at most 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<DurationSpec>,
    /// Percent by which each packet follows the previous one: for `loss`, `duplicate` and
    /// `corrupt` its outcome (the rate stays as given, bursts grow), for `delay` its jitter
    /// (netem's meaning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<f64>,
    /// How jitter is spread: `uniform` (default) or `normal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// Bandwidth limit: `10mbit`, `1gbit`, `500kbit` (bits per second; tc's units, so `mbps`
    /// is megabytes per second); a bare number is bits per second (required for `bandwidth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// Bytes that may leave at once above the rate: `32kb`, `1mb`, a bare number is bytes
    /// (default: 10 ms at the rate, at least two full-size frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<RateSpec>,
    /// `egress` (default), `ingress` or `both` (not for `dns`: egress is the queries this host
    /// sends, ingress the queries it receives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `ipv4`, `ipv6` or `any` (default; taken from `src`/`dst` when they are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// `tcp`, `udp`, `icmp` or `any` (default; `tcp` for `reset`, which takes nothing else;
    /// not `icmp` for `dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Source CIDR or address (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination CIDR or address (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Source port or range `lo-hi` (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<PortSpec>,
    /// Destination port or range `lo-hi` (default: any; 53 for `dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortSpec>,
    /// How long the fault lasts: `30s`, `5m`, `1h30m`, `500ms` (a bare number is seconds), or
    /// `unlimited` where the daemon's config allows it. Default: the config's `max_duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationSpec>,
    /// Start this long after being applied (same syntax). Default: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_after: Option<DurationSpec>,
}

/// A duration as written: `30` (seconds) or `"1m30s"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(f64),
    Text(String),
}

/// How long a validated fault lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// None given: the daemon's maximum applies.
    Default,
    For(Duration),
    Unlimited,
}

/// A rate or size as written: a number or text with a unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RateSpec {
    Number(f64),
    Text(String),
}

/// A port as written: `8080`, `"8080"` or `"8000-8100"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(i64),
    Text(String),
}

/// A DNS query type as written: a name (`"AAAA"`) or a number (`28`, `"28"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QTypeSpec {
    Number(i64),
    Text(String),
}

impl PortSpec {
    /// The one form a port is echoed in, whatever it was sent as: a number for one port
    /// (`"80"`, `"80-80"`: 80), `"lo-hi"` for a range. Left as given if it is not a valid port
    /// or range (validation refuses it).
    pub fn canonical(&self) -> PortSpec {
        match port_range("", Some(self)) {
            Ok(r) if r.lo == r.hi => PortSpec::Number(r.lo.into()),
            Ok(r) => PortSpec::Text(format!("{}-{}", r.lo, r.hi)),
            Err(_) => self.clone(),
        }
    }
}

impl FaultSpec {
    /// The spec with its ports in their one form ([`PortSpec::canonical`]), as the API echoes it.
    pub fn with_canonical_ports(mut self) -> Self {
        self.sport = self.sport.as_ref().map(PortSpec::canonical);
        self.dport = self.dport.as_ref().map(PortSpec::canonical);
        self
    }
}

/// A refused field: `field: reason`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }

    /// Prefixes the field with where it was found, e.g. `fault[2].`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}{}", self.field);
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// Which IP versions a fault covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

/// An inclusive port range; `0-65535` means any port (and packets without ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: Self = Self { lo: 0, hi: u16::MAX };

    pub fn is_any(self) -> bool {
        self == Self::ANY
    }
}

/// A network prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn is_v4(self) -> bool {
        self.addr.is_ipv4()
    }

    /// The address bytes, IPv4 in the first four.
    pub fn bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        match self.addr {
            IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => out = a.octets(),
        }
        out
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("'{s}' is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("'{s}' has a prefix length outside 0-{max}")),
            },
        };
        let cidr = Self { addr, len };
        if cidr.bytes() != mask(cidr.bytes(), len) {
            let net = Self { addr: from_bytes(addr.is_ipv4(), mask(cidr.bytes(), len)), len };
            return Err(format!("'{s}' has host bits set (did you mean {net}?)"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Clears every bit after the first `len`.
pub fn mask(mut bytes: [u8; 16], len: u8) -> [u8; 16] {
    for (i, b) in bytes.iter_mut().enumerate() {
        let keep = (usize::from(len)).saturating_sub(i * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    bytes
}

fn from_bytes(v4: bool, b: [u8; 16]) -> IpAddr {
    if v4 { IpAddr::from([b[0], b[1], b[2], b[3]]) } else { IpAddr::from(b) }
}

/// A validated fault. The interface (and namespace) are checked to exist by the engine, not
/// here.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub name: Option<String>,
    /// Empty for `connect-fail`, which acts before any interface.
    pub interface: String,
    /// The namespace `interface` is in, when not the daemon's.
    pub netns: Option<NetnsTarget>,
    /// The cgroup the fault is limited to, as written (absolute, from the cgroup2 root or
    /// under its mount); found by the engine.
    pub cgroup: Option<std::path::PathBuf>,
    pub action: Action,
    pub matches: Match,
    /// `dns`: the names whose queries it acts on (empty for other actions).
    pub domains: Vec<Domain>,
    pub lifetime: Lifetime,
    pub start_after: Duration,
}

/// Another network namespace, as the user named it.
#[derive(Clone, Debug, PartialEq)]
pub enum NetnsTarget {
    /// `/run/netns/x`, `/proc/PID/ns/net`.
    Path(std::path::PathBuf),
    /// A process's.
    Pid(i32),
    /// A container's, by its id or a unique prefix of it (12 to 64 hex digits).
    Container(String),
    /// A Kubernetes pod's, by namespace and name, found in the container runtime's state files.
    Pod { namespace: String, name: String },
}

impl NetnsTarget {
    /// The spec field that named it.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Path(_) => "netns",
            Self::Pid(_) => "pid",
            Self::Container(_) => "container",
            Self::Pod { .. } => "pod",
        }
    }
}

/// Which packets a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    pub direction: Direction,
    pub families: Families,
    pub protocol: Protocol,
    pub src: Option<Cidr>,
    pub dst: Option<Cidr>,
    pub sport: PortRange,
    pub dport: PortRange,
}

impl Match {
    /// The same match seen from the replies: source and destination (addresses and ports)
    /// swapped. What `both` matches on the ingress side.
    pub fn reply(self) -> Self {
        Self { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..self }
    }
}

impl FaultSpec {
    /// Checks every field and returns the typed fault, or the first field that is wrong.
    pub fn validate(&self) -> Result<Fault, SpecError> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        let netns = self.netns_target()?;
        let cgroup = self.cgroup_target(netns.as_ref())?;
        let action = self.action()?;
        let connect = matches!(action, Action::ConnectFail { .. });
        let dns = matches!(action, Action::Dns(_));
        let default_interface = netns.as_ref().map(|_| "eth0");
        let interface = match self.interface.as_deref().map(str::trim).or(default_interface) {
            Some(_) if connect => {
                return Err(SpecError::new("interface", "connect-fail acts on connect() calls, before any interface"));
            }
            None if connect => String::new(),
            None | Some("") if cgroup.is_some() => {
                return Err(SpecError::new("interface", "is required: the interface the cgroup's packets take"));
            }
            None | Some("") => return Err(SpecError::new("interface", "is required")),
            Some(i) if i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) => {
                return Err(SpecError::new("interface", format!("'{i}' is not an interface name")));
            }
            Some(i) => i.to_owned(),
        };
        if connect {
            if cgroup.is_none() {
                return Err(SpecError::new("cgroup", "is required for action 'connect-fail' (whose connect() fails)"));
            }
            for (field, given) in
                [("direction", self.direction.is_some()), ("src", self.src.is_some()), ("sport", self.sport.is_some())]
            {
                if given {
                    return Err(SpecError::new(
                        field,
                        "does not apply to connect-fail: it acts at connect(), before a source is chosen",
                    ));
                }
            }
        }
        let direction = match self.direction.as_deref().unwrap_or("egress") {
            "egress" => Direction::Egress,
            "ingress" => Direction::Ingress,
            "both" => Direction::Both,
            other => {
                return Err(SpecError::new(
                    "direction",
                    format!("'{other}' is not a direction (expected ingress, egress or both)"),
                ));
            }
        };
        if dns && direction == Direction::Both {
            return Err(SpecError::new(
                "direction",
                "both: dns acts on queries: egress for queries this host sends, ingress for queries it receives",
            ));
        }
        let default_protocol = if let Action::Reset { .. } = action { "tcp" } else { "any" };
        if connect && self.protocol.as_deref() == Some("icmp") {
            return Err(SpecError::new("protocol", "icmp: connect-fail fails tcp and udp connect() calls"));
        }
        if dns && self.protocol.as_deref() == Some("icmp") {
            return Err(SpecError::new(
                "protocol",
                "icmp: dns acts on DNS queries over udp and tcp (use udp, tcp or any)",
            ));
        }
        let protocol = match self.protocol.as_deref().unwrap_or(default_protocol) {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "any" => Protocol::Any,
            other => {
                return Err(SpecError::new(
                    "protocol",
                    format!("'{other}' is not a protocol (expected tcp, udp, icmp or any)"),
                ));
            }
        };
        let cidr = |field: &str, v: &Option<String>| {
            v.as_deref().map(|s| s.parse::<Cidr>().map_err(|e| SpecError::new(field, e))).transpose()
        };
        let src = cidr("src", &self.src)?;
        let dst = cidr("dst", &self.dst)?;
        let families = families(self.family.as_deref(), src, dst)?;
        let sport = port_range("sport", self.sport.as_ref())?;
        let dport = match &self.dport {
            // The DNS port, whatever the direction: queries go to it.
            None if dns => PortRange { lo: 53, hi: 53 },
            given => port_range("dport", given.as_ref())?,
        };
        if let (Action::Reset { .. }, Protocol::Udp | Protocol::Icmp | Protocol::Any) = (action, protocol) {
            return Err(SpecError::new("protocol", "reset answers TCP segments: it needs protocol tcp (the default)"));
        }
        if protocol == Protocol::Icmp {
            if let Action::Corrupt(..) | Action::ConnectFail { .. } = action {
                return Err(SpecError::new(
                    "protocol",
                    "icmp: corrupt flips bits in TCP and UDP payloads only (use tcp, udp or any)",
                ));
            }
            for (field, range) in [("sport", sport), ("dport", dport)] {
                if !range.is_any() {
                    return Err(SpecError::new(field, "ports apply to tcp and udp, not icmp"));
                }
            }
        }
        if cgroup.is_some() && !connect && direction != Direction::Egress && !action.only_drops() {
            return Err(SpecError::new(
                "direction",
                format!(
                    "{}: a cgroup's ingress is where packets reach its sockets, where they can only be dropped \
                     (loss, partition); use direction egress",
                    self.direction.as_deref().unwrap_or_default()
                ),
            ));
        }
        let matches = Match { direction, families, protocol, src, dst, sport, dport };
        let lifetime = match &self.duration {
            None => Lifetime::Default,
            Some(DurationSpec::Text(t)) if t.trim() == "unlimited" => Lifetime::Unlimited,
            Some(d) => match duration("duration", d)? {
                Duration::ZERO => return Err(SpecError::new("duration", "must be more than 0 (or 'unlimited')")),
                d => Lifetime::For(d),
            },
        };
        let start_after =
            self.start_after.as_ref().map(|d| duration("start_after", d)).transpose()?.unwrap_or_default();
        let domains = if dns { self.dns_domains()? } else { Vec::new() };
        Ok(Fault { name: self.name.clone(), interface, netns, cgroup, action, matches, domains, lifetime, start_after })
    }
}

impl FaultSpec {
    /// The cgroup `cgroup` names, checked for form only (the engine finds it).
    fn cgroup_target(&self, netns: Option<&NetnsTarget>) -> Result<Option<std::path::PathBuf>, SpecError> {
        let Some(path) = self.cgroup.as_deref().map(str::trim) else { return Ok(None) };
        if let Some(ns) = netns {
            return Err(SpecError::new(
                "cgroup",
                format!(
                    "and {} name two targets: give one (a cgroup's packets are on this host's interfaces)",
                    ns.field()
                ),
            ));
        }
        if !path.starts_with('/') || path.split('/').any(|c| c == ".." || c == ".") {
            return Err(SpecError::new(
                "cgroup",
                format!("'{path}' is not a cgroup path (absolute, e.g. /sys/fs/cgroup/app or /system.slice/x.service)"),
            ));
        }
        Ok(Some(path.into()))
    }

    /// The other network namespace `netns`, `pid`, `container` or `pod` names (at most one).
    fn netns_target(&self) -> Result<Option<NetnsTarget>, SpecError> {
        let named = [self.netns.is_some(), self.pid.is_some(), self.container.is_some(), self.pod.is_some()];
        if named.iter().filter(|n| **n).count() > 1 {
            let field = if self.pod.is_some() {
                "pod"
            } else if self.container.is_some() {
                "container"
            } else {
                "pid"
            };
            return Err(SpecError::new(field, "netns, pid, container and pod each name a namespace: give one"));
        }
        // A Kubernetes namespace or pod name: a DNS subdomain.
        let k8s_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        Ok(match (&self.netns, self.pid, &self.container, &self.pod) {
            (Some(path), ..) if !path.starts_with('/') => {
                return Err(SpecError::new("netns", format!("'{path}' is not an absolute path (e.g. /run/netns/x)")));
            }
            (Some(path), ..) => Some(NetnsTarget::Path(path.into())),
            (_, Some(pid), ..) => match i32::try_from(pid) {
                Ok(pid) if pid > 0 => Some(NetnsTarget::Pid(pid)),
                _ => return Err(SpecError::new("pid", format!("{pid} is not a process id"))),
            },
            (_, _, Some(id), _) => {
                let id = id.trim().to_ascii_lowercase();
                if !(12..=64).contains(&id.len()) || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(SpecError::new(
                        "container",
                        format!(
                            "'{id}' is not a container id (12 to 64 hex digits, as `crictl ps` or `docker ps` shows)"
                        ),
                    ));
                }
                Some(NetnsTarget::Container(id))
            }
            (_, _, _, Some(pod)) => match pod.split_once('/') {
                Some((namespace, name)) if k8s_name(namespace) && k8s_name(name) => {
                    Some(NetnsTarget::Pod { namespace: namespace.into(), name: name.into() })
                }
                _ => {
                    return Err(SpecError::new(
                        "pod",
                        format!("'{pod}' is not NAMESPACE/NAME (lowercase letters, digits, '-' and '.')"),
                    ));
                }
            },
            (None, None, None, None) => None,
        })
    }
}

/// Names are what `chaosctl rm` and URLs take: keep them to a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            format!("'{name}' is not a valid name (1-63 of A-Z a-z 0-9 - _ ., not starting with - or .)"),
        ))
    }
}

fn families(family: Option<&str>, src: Option<Cidr>, dst: Option<Cidr>) -> Result<Families, SpecError> {
    let mut fam = match family.unwrap_or("any") {
        "ipv4" => Families { v4: true, v6: false },
        "ipv6" => Families { v4: false, v6: true },
        "any" => Families { v4: true, v6: true },
        other => {
            return Err(SpecError::new(
                "family",
                format!("'{other}' is not an IP version (expected ipv4, ipv6 or any)"),
            ));
        }
    };
    for (field, cidr) in [("src", src), ("dst", dst)] {
        let Some(c) = cidr else { continue };
        let (v4, v6) = (fam.v4 && c.is_v4(), fam.v6 && !c.is_v4());
        if !v4 && !v6 {
            let what = if src.is_some() && dst.is_some() && field == "dst" && family.is_none() {
                "is not the same IP version as src".to_owned()
            } else {
                format!("{c} is not {}", family.unwrap_or("any"))
            };
            return Err(SpecError::new(field, what));
        }
        fam = Families { v4, v6 };
    }
    Ok(fam)
}

/// Longest duration accepted anywhere (the config's limits are checked by the engine): keeps
/// deadline arithmetic far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn duration(field: &str, spec: &DurationSpec) -> Result<Duration, SpecError> {
    let d = match spec {
        // Whole microseconds, the finest unit the text form has: 1e-9 is refused as "1ns" is.
        DurationSpec::Seconds(s) if s.is_finite() && *s >= 0.0 && *s <= MAX_DURATION.as_secs_f64() => {
            let us = (*s * 1e6).round();
            if us == 0.0 && *s > 0.0 {
                return Err(SpecError::new(field, format!("{s} is less than 1us, the finest duration accepted")));
            }
            Duration::from_micros(us as u64)
        }
        DurationSpec::Seconds(s) => return Err(SpecError::new(field, format!("{s} is not a number of seconds"))),
        DurationSpec::Text(t) => parse_duration(t).map_err(|e| SpecError::new(field, e))?,
    };
    if d > MAX_DURATION {
        return Err(SpecError::new(field, "is longer than a year"));
    }
    Ok(d)
}

/// Parses `1h30m`, `90s`, `500ms`, `2d`: numbers each followed by a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a duration (e.g. 30s, 5m, 1h30m, 500ms, 250us)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "us" | "µs" => Duration::from_micros(1),
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        let part = u32::try_from(n).ok().and_then(|n| scale.checked_mul(n)).ok_or_else(bad)?;
        total =
            total.checked_add(part).filter(|t| *t <= MAX_DURATION).ok_or_else(|| format!("'{text}' is too long"))?;
    }
    Ok(total)
}

fn port_range(field: &str, spec: Option<&PortSpec>) -> Result<PortRange, SpecError> {
    let port = |v: i64| u16::try_from(v).map_err(|_| SpecError::new(field, format!("{v} is not a port (0-65535)")));
    let parse = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| SpecError::new(field, format!("'{s}' is not a port or range lo-hi")))
            .and_then(port)
    };
    let range = match spec {
        None => return Ok(PortRange::ANY),
        Some(PortSpec::Number(n)) => {
            let p = port(*n)?;
            PortRange { lo: p, hi: p }
        }
        Some(PortSpec::Text(s)) => match s.split_once('-') {
            Some((lo, hi)) => PortRange { lo: parse(lo)?, hi: parse(hi)? },
            None => {
                let p = parse(s)?;
                PortRange { lo: p, hi: p }
            }
        },
    };
    if range.lo > range.hi {
        return Err(SpecError::new(field, format!("range {}-{} is empty", range.lo, range.hi)));
    }
    Ok(range)
}

#[cfg(test)]
mod tests;
