//! Faults as users write them ([`FaultSpec`]: CLI flags, TOML `[[fault]]` tables, API JSON) and
//! their validated form ([`Fault`]). Validation is the one place that decides what is accepted;
//! each refusal names the field and the reason.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// A fault as submitted. Fields are loosely typed on purpose: validation, not the parser,
/// reports what is wrong, field by field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Unique name; generated (`loss-1`, `partition-2`, ...) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Interface the fault applies to (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `loss`, `partition`, `delay` or `bandwidth` (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Loss probability in percent, 0 to 100 (required for `loss`; optional with `delay` and
    /// `bandwidth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Added latency, with a unit: `50ms`, `1s`, `250us` (required for `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DurationSpec>,
    /// Latency variation around `delay`, with a unit (default: none; at most 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<DurationSpec>,
    /// How much each packet's jitter depends on the previous one's, percent (netem's meaning).
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
    /// `egress` (default), `ingress` or `both`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `ipv4`, `ipv6` or `any` (default; taken from `src`/`dst` when they are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// `tcp`, `udp`, `icmp` or `any` (default).
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
    /// Destination port or range `lo-hi` (default: any).
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

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Drop matching packets with this probability (0.0 to 1.0).
    Loss(f64),
    /// Drop every matching packet.
    Partition,
    /// Delay and/or limit the rate of matching packets (`delay` and `bandwidth`).
    Shape(Shape),
}

/// What a `delay` or `bandwidth` fault does to each matching packet, as netem would.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub delay: Duration,
    pub jitter: Duration,
    /// 0.0 to 1.0.
    pub correlation: f64,
    pub distribution: Distribution,
    /// Bits per second.
    pub rate: Option<u64>,
    /// Bytes.
    pub burst: Option<u64>,
    /// Loss probability, 0.0 to 1.0.
    pub loss: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    Uniform,
    Normal,
}

/// The longest delay accepted: the edt backend's fq horizon must cover delay plus jitter.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// See chaos-common's `MAX_JITTER_NS`.
pub const MAX_JITTER: Duration = Duration::from_nanos(chaos_common::MAX_JITTER_NS);
/// Rates accepted, bits per second.
pub const MIN_RATE: u64 = 1_000;
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// The largest burst, bytes.
pub const MAX_BURST: u64 = 64 << 20;

impl Action {
    /// Packets are dropped when a 32-bit random number is below this.
    pub fn drop_threshold(self) -> u64 {
        match self {
            Self::Loss(p) => probability_threshold(p),
            Self::Partition => chaos_common::DROP_ALWAYS,
            Self::Shape(s) => probability_threshold(s.loss),
        }
    }

    /// The name generated names start with.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Loss(_) => "loss",
            Self::Partition => "partition",
            Self::Shape(s) if s.delay.is_zero() && s.jitter.is_zero() => "bandwidth",
            Self::Shape(_) => "delay",
        }
    }
}

fn probability_threshold(p: f64) -> u64 {
    (p * 4_294_967_296.0).round() as u64
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

/// A validated fault. The interface is checked to exist by the engine, not here.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub name: Option<String>,
    pub interface: String,
    pub action: Action,
    pub matches: Match,
    pub lifetime: Lifetime,
    pub start_after: Duration,
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

impl FaultSpec {
    /// Checks every field and returns the typed fault, or the first field that is wrong.
    pub fn validate(&self) -> Result<Fault, SpecError> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        let interface = match self.interface.as_deref().map(str::trim) {
            None | Some("") => return Err(SpecError::new("interface", "is required")),
            Some(i) if i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) => {
                return Err(SpecError::new("interface", format!("'{i}' is not an interface name")));
            }
            Some(i) => i.to_owned(),
        };
        let action = self.action()?;
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
        let protocol = match self.protocol.as_deref().unwrap_or("any") {
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
        let dport = port_range("dport", self.dport.as_ref())?;
        if protocol == Protocol::Icmp {
            for (field, range) in [("sport", sport), ("dport", dport)] {
                if !range.is_any() {
                    return Err(SpecError::new(field, "ports apply to tcp and udp, not icmp"));
                }
            }
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
        Ok(Fault { name: self.name.clone(), interface, action, matches, lifetime, start_after })
    }
}

impl FaultSpec {
    fn action(&self) -> Result<Action, SpecError> {
        let shaping = [
            ("delay", self.delay.is_some()),
            ("jitter", self.jitter.is_some()),
            ("correlation", self.correlation.is_some()),
            ("distribution", self.distribution.is_some()),
            ("rate", self.rate.is_some()),
            ("burst", self.burst.is_some()),
        ];
        let action = self.action.as_deref();
        if !matches!(action, Some("delay" | "bandwidth"))
            && let Some((field, _)) = shaping.iter().find(|(_, given)| *given)
        {
            let what = action.map_or("no action".to_owned(), |a| format!("action '{a}'"));
            return Err(SpecError::new(*field, format!("applies to actions 'delay' and 'bandwidth', not {what}")));
        }
        let loss = |required: bool| match self.loss {
            None if required => Err(SpecError::new("loss", "is required for action 'loss' (percent, 0-100)")),
            None => Ok(0.0),
            Some(p) if !(0.0..=100.0).contains(&p) => Err(SpecError::new("loss", format!("{p}% is outside 0-100%"))),
            Some(p) => Ok(p / 100.0),
        };
        match action {
            Some("loss") => Ok(Action::Loss(loss(true)?)),
            Some("partition") => match self.loss {
                Some(_) => Err(SpecError::new("loss", "does not apply to action 'partition'")),
                None => Ok(Action::Partition),
            },
            Some(a @ ("delay" | "bandwidth")) => {
                let delay = match &self.delay {
                    None if a == "delay" => {
                        return Err(SpecError::new("delay", "is required for action 'delay' (e.g. 50ms)"));
                    }
                    None => Duration::ZERO,
                    Some(d) => latency("delay", d, MAX_DELAY)?,
                };
                let jitter = self.jitter.as_ref().map(|j| latency("jitter", j, MAX_JITTER)).transpose()?;
                let needs_jitter = |field: &str| SpecError::new(field, "has no effect without jitter");
                let correlation = match self.correlation {
                    None => 0.0,
                    Some(_) if jitter.is_none() => return Err(needs_jitter("correlation")),
                    Some(c) if (0.0..=100.0).contains(&c) => c / 100.0,
                    Some(c) => return Err(SpecError::new("correlation", format!("{c}% is outside 0-100%"))),
                };
                let distribution = match self.distribution.as_deref() {
                    None => Distribution::Uniform,
                    Some(_) if jitter.is_none() => return Err(needs_jitter("distribution")),
                    Some("uniform") => Distribution::Uniform,
                    Some("normal") => Distribution::Normal,
                    Some(other) => {
                        return Err(SpecError::new(
                            "distribution",
                            format!("'{other}' is not a distribution (expected uniform or normal)"),
                        ));
                    }
                };
                let rate = match &self.rate {
                    None if a == "bandwidth" => {
                        return Err(SpecError::new("rate", "is required for action 'bandwidth' (e.g. 10mbit)"));
                    }
                    None => None,
                    Some(r) => Some(rate(r)?),
                };
                let burst = match &self.burst {
                    Some(_) if rate.is_none() => return Err(SpecError::new("burst", "has no effect without rate")),
                    b => b.as_ref().map(burst).transpose()?,
                };
                let jitter = jitter.unwrap_or_default();
                if delay.is_zero() && jitter.is_zero() && rate.is_none() {
                    return Err(SpecError::new("delay", "0 with no jitter and no rate does nothing"));
                }
                Ok(Action::Shape(Shape { delay, jitter, correlation, distribution, rate, burst, loss: loss(false)? }))
            }
            None => Err(SpecError::new("action", "is required ('loss', 'partition', 'delay' or 'bandwidth')")),
            Some(other) => Err(SpecError::new(
                "action",
                format!("'{other}' is not an action (expected 'loss', 'partition', 'delay' or 'bandwidth')"),
            )),
        }
    }
}

/// A delay or jitter: text with a unit (a bare number is refused: seconds or milliseconds?).
fn latency(field: &str, spec: &DurationSpec, max: Duration) -> Result<Duration, SpecError> {
    let d = match spec {
        DurationSpec::Seconds(n) => {
            return Err(SpecError::new(field, format!("{n} needs a unit (e.g. {n}ms): a bare number is ambiguous")));
        }
        DurationSpec::Text(t) if t.trim().parse::<f64>().is_ok() => {
            let t = t.trim();
            return Err(SpecError::new(field, format!("{t} needs a unit (e.g. {t}ms): a bare number is ambiguous")));
        }
        DurationSpec::Text(t) => parse_duration(t).map_err(|e| SpecError::new(field, e))?,
    };
    if d > max {
        return Err(SpecError::new(field, format!("{d:?} is more than the largest accepted, {max:?}")));
    }
    Ok(d)
}

/// A rate in bits per second, with tc's units: `bit`, `kbit`, `mbit`, `gbit`, `tbit` (powers of
/// 1000; `kibit`... powers of 1024) and `bps`, `kbps`, `mbps`, `gbps`, `tbps` (bytes per second).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || format!("'{text}' is not a rate (e.g. 10mbit, 500kbit, 1gbit)");
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let n: f64 = t[..split].parse().map_err(|_| bad())?;
    let unit = t[split..].trim();
    let (prefix, bytes) = if let Some(p) = unit.strip_suffix("bps") {
        (p, true)
    } else if let Some(p) = unit.strip_suffix("bit") {
        (p, false)
    } else if unit.is_empty() {
        ("", false)
    } else {
        return Err(bad());
    };
    let scale: f64 = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    let bits = n * scale * if bytes { 8.0 } else { 1.0 };
    check_rate(bits)
}

fn check_rate(bits: f64) -> Result<u64, String> {
    if !(bits.is_finite() && (MIN_RATE as f64..=MAX_RATE as f64).contains(&bits)) {
        return Err(format!("{bits} bit/s is outside 1kbit-1tbit"));
    }
    Ok(bits.round() as u64)
}

fn rate(spec: &RateSpec) -> Result<u64, SpecError> {
    match spec {
        RateSpec::Number(n) => check_rate(*n),
        RateSpec::Text(t) => parse_rate(t),
    }
    .map_err(|e| SpecError::new("rate", e))
}

/// A size in bytes, with tc's units: `b`, `k`/`kb`, `m`/`mb`, `g`/`gb` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("'{text}' is not a size (e.g. 32kb, 1mb, 1500)");
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().map_err(|_| bad())?;
    let scale: u64 = match t[split..].trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

fn burst(spec: &RateSpec) -> Result<u64, SpecError> {
    let bytes = match spec {
        RateSpec::Number(n) if n.is_finite() && *n >= 0.0 && n.fract() == 0.0 => Ok(*n as u64),
        RateSpec::Number(n) => Err(format!("{n} is not a number of bytes")),
        RateSpec::Text(t) => parse_size(t),
    }
    .map_err(|e| SpecError::new("burst", e))?;
    if !(1..=MAX_BURST).contains(&bytes) {
        return Err(SpecError::new("burst", format!("{bytes} bytes is outside 1 byte-64mb")));
    }
    Ok(bytes)
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
        DurationSpec::Seconds(s) if s.is_finite() && *s >= 0.0 && *s <= MAX_DURATION.as_secs_f64() => {
            Duration::from_secs_f64(*s)
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
mod tests {
    use super::*;

    fn spec() -> FaultSpec {
        FaultSpec {
            interface: Some("eth0".into()),
            action: Some("loss".into()),
            loss: Some(30.0),
            ..Default::default()
        }
    }

    fn err(f: impl FnOnce(&mut FaultSpec)) -> SpecError {
        let mut s = spec();
        f(&mut s);
        s.validate().unwrap_err()
    }

    #[test]
    fn defaults() {
        let f = spec().validate().unwrap();
        assert_eq!(f.matches.direction, Direction::Egress);
        assert_eq!(f.matches.protocol, Protocol::Any);
        assert_eq!(f.matches.families, Families { v4: true, v6: true });
        assert_eq!((f.matches.sport, f.matches.dport), (PortRange::ANY, PortRange::ANY));
        assert_eq!(f.action, Action::Loss(0.3));
    }

    #[test]
    fn toml_fault_tables() {
        #[derive(Deserialize)]
        struct File {
            fault: Vec<FaultSpec>,
        }
        let file: File = toml::from_str(
            r#"
            [[fault]]
            name = "a"
            interface = "eth0"
            action = "loss"
            loss = 20
            protocol = "udp"
            dport = 9000
            [[fault]]
            interface = "eth0"
            action = "partition"
            direction = "both"
            dst = "fd00::/64"
            sport = "1000-2000"
            "#,
        )
        .unwrap();
        let a = file.fault[0].validate().unwrap();
        assert_eq!(a.matches.dport, PortRange { lo: 9000, hi: 9000 });
        let b = file.fault[1].validate().unwrap();
        assert_eq!(b.matches.families, Families { v4: false, v6: true });
        assert_eq!(b.matches.sport, PortRange { lo: 1000, hi: 2000 });
        assert_eq!(b.action.drop_threshold(), 1 << 32);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(SpecError, &str)> = vec![
            (err(|s| s.interface = None), "interface"),
            (err(|s| s.action = Some("explode".into())), "action"),
            (err(|s| s.loss = Some(150.0)), "loss"),
            (err(|s| s.loss = Some(-1.0)), "loss"),
            (err(|s| s.loss = None), "loss"),
            (err(|s| s.dport = Some(PortSpec::Number(70000))), "dport"),
            (err(|s| s.sport = Some(PortSpec::Text("9-1".into()))), "sport"),
            (err(|s| s.dport = Some(PortSpec::Text("http".into()))), "dport"),
            (err(|s| s.dst = Some("10.0.0.300/24".into())), "dst"),
            (err(|s| s.dst = Some("10.0.0.1/8".into())), "dst"),
            (err(|s| s.src = Some("10.0.0.0/33".into())), "src"),
            (err(|s| s.direction = Some("sideways".into())), "direction"),
            (err(|s| s.protocol = Some("sctp".into())), "protocol"),
            (err(|s| s.name = Some("bad name".into())), "name"),
            (
                err(|s| {
                    s.src = Some("10.0.0.0/8".into());
                    s.dst = Some("fd00::/8".into());
                }),
                "dst",
            ),
            (
                err(|s| {
                    s.family = Some("ipv6".into());
                    s.dst = Some("10.0.0.1".into());
                }),
                "dst",
            ),
            (
                err(|s| {
                    s.protocol = Some("icmp".into());
                    s.dport = Some(PortSpec::Number(80));
                }),
                "dport",
            ),
        ];
        for (e, field) in cases {
            assert_eq!(e.field, field, "{e}");
        }
        assert_eq!(
            err(|s| s.dst = Some("10.0.0.1/8".into())).to_string(),
            "dst: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            err(|s| s.dport = Some(PortSpec::Number(70000))).to_string(),
            "dport: 70000 is not a port (0-65535)"
        );
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.2.3".parse().unwrap();
        assert_eq!(c.len, 32);
        let c: Cidr = "fd00:1::/32".parse().unwrap();
        assert_eq!(c.len, 32);
        assert_eq!(mask([0xff; 16], 12)[..3], [0xff, 0xf0, 0]);
        assert_eq!(mask([0xff; 16], 0), [0; 16]);
        assert_eq!(mask([0xff; 16], 128), [0xff; 16]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        for bad in ["", "30", "s", "5x", "1h30", "-5s", "99999999999999999999s", "400d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let f = |d: DurationSpec| FaultSpec { duration: Some(d), ..spec() }.validate();
        assert_eq!(f(DurationSpec::Seconds(3.0)).unwrap().lifetime, Lifetime::For(Duration::from_secs(3)));
        assert_eq!(f(DurationSpec::Text("unlimited".into())).unwrap().lifetime, Lifetime::Unlimited);
        assert_eq!(f(DurationSpec::Text("0s".into())).unwrap_err().field, "duration");
        assert_eq!(f(DurationSpec::Seconds(f64::NAN)).unwrap_err().field, "duration");
        assert_eq!(spec().validate().unwrap().lifetime, Lifetime::Default);
    }

    fn delay_spec() -> FaultSpec {
        FaultSpec {
            interface: Some("eth0".into()),
            action: Some("delay".into()),
            delay: Some(DurationSpec::Text("50ms".into())),
            ..Default::default()
        }
    }

    #[test]
    fn delay_and_bandwidth() {
        let text = |t: &str| Some(DurationSpec::Text(t.into()));
        let f = FaultSpec {
            jitter: text("10ms"),
            correlation: Some(25.0),
            distribution: Some("normal".into()),
            rate: Some(RateSpec::Text("10mbit".into())),
            burst: Some(RateSpec::Text("32kb".into())),
            loss: Some(1.0),
            ..delay_spec()
        };
        let Action::Shape(s) = f.validate().unwrap().action else { panic!("not a shape") };
        assert_eq!(s.delay, Duration::from_millis(50));
        assert_eq!(s.jitter, Duration::from_millis(10));
        assert_eq!((s.correlation, s.distribution), (0.25, Distribution::Normal));
        assert_eq!((s.rate, s.burst, s.loss), (Some(10_000_000), Some(32 * 1024), 0.01));
        let bw = FaultSpec {
            action: Some("bandwidth".into()),
            rate: Some(RateSpec::Number(1e6)),
            delay: None,
            ..delay_spec()
        };
        assert_eq!(bw.validate().unwrap().action.kind(), "bandwidth");
        assert_eq!(delay_spec().validate().unwrap().action.kind(), "delay");

        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("100kbps"), Ok(800_000));
        assert_eq!(parse_rate("1mibit"), Ok(1 << 20));
        assert_eq!(parse_rate("64000"), Ok(64_000));
        for bad in ["", "10", "fast", "10mbits", "-1mbit", "2tbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("32kb"), Ok(32 * 1024));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert!(parse_size("1.5k").is_err());
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn delay_refusals_name_the_field() {
        let d = |f: &dyn Fn(&mut FaultSpec)| {
            let mut s = delay_spec();
            f(&mut s);
            s.validate().unwrap_err()
        };
        let text = |t: &str| Some(DurationSpec::Text(t.into()));
        let cases: Vec<(SpecError, &str, &str)> = vec![
            (d(&|s| s.delay = None), "delay", "is required"),
            (d(&|s| s.delay = text("50")), "delay", "needs a unit"),
            (d(&|s| s.delay = Some(DurationSpec::Seconds(50.0))), "delay", "needs a unit"),
            (d(&|s| s.delay = text("11s")), "delay", "largest"),
            (d(&|s| s.jitter = text("3s")), "jitter", "largest"),
            (d(&|s| s.correlation = Some(10.0)), "correlation", "without jitter"),
            (d(&|s| s.distribution = Some("normal".into())), "distribution", "without jitter"),
            (
                d(&|s| {
                    s.jitter = text("1ms");
                    s.distribution = Some("pareto".into());
                }),
                "distribution",
                "not a distribution",
            ),
            (
                d(&|s| {
                    s.jitter = text("1ms");
                    s.correlation = Some(101.0);
                }),
                "correlation",
                "outside",
            ),
            (d(&|s| s.burst = Some(RateSpec::Text("1kb".into()))), "burst", "without rate"),
            (d(&|s| s.rate = Some(RateSpec::Number(10.0))), "rate", "outside"),
            (
                d(&|s| {
                    s.rate = Some(RateSpec::Text("1mbit".into()));
                    s.burst = Some(RateSpec::Text("1gb".into()));
                }),
                "burst",
                "outside",
            ),
            (d(&|s| s.loss = Some(200.0)), "loss", "outside"),
            (d(&|s| s.delay = text("0ms")), "delay", "does nothing"),
            (
                d(&|s| {
                    s.action = Some("bandwidth".into());
                    s.delay = None;
                }),
                "rate",
                "is required",
            ),
            (
                d(&|s| {
                    s.action = Some("loss".into());
                    s.loss = Some(1.0);
                }),
                "delay",
                "not action 'loss'",
            ),
        ];
        for (e, field, reason) in cases {
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
    }

    #[test]
    fn thresholds() {
        assert_eq!(Action::Loss(0.0).drop_threshold(), 0);
        assert_eq!(Action::Loss(1.0).drop_threshold(), 1 << 32);
        assert_eq!(Action::Loss(0.25).drop_threshold(), 1 << 30);
    }
}
