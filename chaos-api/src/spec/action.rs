//! What a fault does: [`Action`], and the units its shaping fields are written in (delays with
//! a unit, tc's rates and sizes). Validation names the field and the reason, as in the parent.

use std::time::Duration;

use super::{DurationSpec, FaultSpec, RateSpec, SpecError, parse_duration};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Drop matching packets with these odds.
    Loss(Odds),
    /// Drop every matching packet.
    Partition,
    /// Delay and/or limit the rate of matching packets (`delay` and `bandwidth`).
    Shape(Shape),
    /// Send a copy of matching packets with these odds.
    Duplicate(Odds),
    /// Flip one bit of the TCP or UDP payload of matching packets with these odds.
    Corrupt(Odds, Checksum),
    /// Answer matching TCP segments with a RST from their peer: every one, or only connection
    /// attempts (`new_only`, which refuses new connections and leaves established ones alone).
    Reset { new_only: bool },
    /// Fail matching `connect()` calls of a cgroup with this errno (positive).
    ConnectFail { errno: i32 },
    /// Answer or lose DNS queries for the fault's `domains` (see [`super::Dns`]).
    Dns(super::Dns),
}

/// How often a fault's event (a drop, a copy, a flipped bit) happens to matching packets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Odds {
    /// Probability `p` (0.0 to 1.0) for every packet. With a `correlation` c, a packet repeats
    /// the last packet's outcome with probability c and is drawn afresh otherwise: the rate
    /// stays exactly `p` (netem's recurrence lowers it), bursts grow to `1 / ((1-p)(1-c))` on
    /// average, and c is the correlation coefficient of consecutive outcomes.
    Random { p: f64, correlation: f64 },
    /// netem's `gemodel p r 1-h 1-k`: a good and a bad state, moving good to bad with
    /// probability `p` and back with `r` after each packet; a packet is hit with `loss_bad`
    /// (1-h) in the bad state and `loss_good` (1-k) in the good one.
    GilbertElliott { p: f64, r: f64, loss_bad: f64, loss_good: f64 },
}

impl Odds {
    pub fn random(p: f64) -> Self {
        Self::Random { p, correlation: 0.0 }
    }

    /// The long-run share of packets hit.
    pub fn mean(self) -> f64 {
        match self {
            Self::Random { p, .. } => p,
            Self::GilbertElliott { p, r, .. } if p + r == 0.0 => 0.0,
            Self::GilbertElliott { p, r, loss_bad, loss_good } => (r * loss_good + p * loss_bad) / (p + r),
        }
    }
}

/// What a corrupt fault does to the L4 checksum of the packet it damages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Left wrong, as netem does: a receiver that checks it drops the packet (TCP sends it
    /// again), so the application never sees the damage.
    Broken,
    /// Fixed for the flipped bit: the receiver's stack accepts the packet and the application
    /// gets the damaged bytes.
    Fixed,
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
    /// Packets that skip the delay, overtaking delayed ones (netem's `reorder`).
    pub reorder: Option<Reorder>,
}

/// netem's `reorder P [CORRELATION] gap G`: once `gap - 1` packets in a row were delayed, a
/// packet skips the delay with probability `p` (with `correlation` as for loss: the last
/// draw's outcome repeats with that probability, the rate stays `p`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reorder {
    pub p: f64,
    pub correlation: f64,
    pub gap: u32,
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
    /// The precedence between faults matching one packet: its long-run drop probability as a
    /// threshold on a 32-bit random number (faults that drop nothing rank 0).
    pub fn drop_threshold(self) -> u64 {
        match self {
            Self::Loss(odds) => threshold(odds.mean()),
            // A segment answered with a RST never reaches its destination.
            Self::Partition | Self::Reset { new_only: false } | Self::ConnectFail { .. } => chaos_common::DROP_ALWAYS,
            // Only SYNs: ranked with the faults that drop nothing, so that it never shadows a
            // loss on the established traffic of its flows (adding a fault never weakens one).
            Self::Reset { new_only: true } => 0,
            Self::Shape(s) => threshold(s.loss),
            // Acts on queries for some names only: it never shadows a fault on the same packets.
            Self::Duplicate(_) | Self::Corrupt(..) | Self::Dns(_) => 0,
        }
    }

    /// Whether its only event is a drop (loss, partition): all a cgroup's ingress allows, where
    /// packets are judged as they reach a socket and can only be dropped.
    pub fn only_drops(self) -> bool {
        matches!(self, Self::Loss(_) | Self::Partition)
    }

    /// The name generated names start with.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Loss(_) => "loss",
            Self::Partition => "partition",
            Self::Shape(s) if s.delay.is_zero() && s.jitter.is_zero() => "bandwidth",
            Self::Shape(_) => "delay",
            Self::Duplicate(_) => "duplicate",
            Self::Corrupt(..) => "corrupt",
            Self::Reset { .. } => "reset",
            Self::ConnectFail { .. } => "connect-fail",
            Self::Dns(_) => "dns",
        }
    }
}

/// The errnos `connect-fail` takes by name: what a failing `connect()` can return.
const ERRNOS: [(&str, i32); 12] = [
    ("EPERM", libc::EPERM),
    ("EACCES", libc::EACCES),
    ("EAGAIN", libc::EAGAIN),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("ENETDOWN", libc::ENETDOWN),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("ECONNRESET", libc::ECONNRESET),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
];

/// `connect-fail`'s errno: a name of [`ERRNOS`] or a number 1-4095 (default ECONNREFUSED).
pub fn errno(text: Option<&str>) -> Result<i32, SpecError> {
    let Some(text) = text.map(str::trim) else { return Ok(libc::ECONNREFUSED) };
    if let Some((_, n)) = ERRNOS.iter().find(|(name, _)| name.eq_ignore_ascii_case(text)) {
        return Ok(*n);
    }
    match text.parse::<i32>() {
        Ok(n) if (1..4096).contains(&n) => Ok(n),
        _ => {
            let names: Vec<&str> = ERRNOS.iter().map(|(n, _)| *n).collect();
            Err(SpecError::new(
                "errno",
                format!("'{text}' is not an errno (a number 1-4095 or one of {})", names.join(", ")),
            ))
        }
    }
}

/// The name of an errno [`errno`] takes, else its number.
pub fn errno_name(n: i32) -> String {
    ERRNOS.iter().find(|(_, e)| *e == n).map_or_else(|| n.to_string(), |(name, _)| (*name).to_owned())
}

/// A probability as the programs compare it: a 32-bit random number below `p * 2^32`.
pub fn threshold(p: f64) -> u64 {
    (p * 4_294_967_296.0).round() as u64
}

/// The actions, for messages.
const ACTIONS: &str =
    "'loss', 'partition', 'delay', 'bandwidth', 'duplicate', 'corrupt', 'reset', 'connect-fail' or 'dns'";

impl FaultSpec {
    pub(super) fn action(&self) -> Result<Action, SpecError> {
        let action = self.action.as_deref();
        match action {
            None => return Err(SpecError::new("action", format!("is required ({ACTIONS})"))),
            Some(
                "loss" | "partition" | "delay" | "bandwidth" | "duplicate" | "corrupt" | "reset" | "connect-fail"
                | "dns",
            ) => {}
            Some(other) => {
                return Err(SpecError::new("action", format!("'{other}' is not an action (expected {ACTIONS})")));
            }
        }
        let what = || action.map_or("no action".to_owned(), |a| format!("action '{a}'"));
        let only = |field: &str, given: bool, allowed: &[&str], names: &str| {
            if given && !action.is_some_and(|a| allowed.contains(&a)) {
                return Err(SpecError::new(field, format!("applies to {names}, not {}", what())));
            }
            Ok(())
        };
        let shaping = "actions 'delay' and 'bandwidth'";
        only("delay", self.delay.is_some(), &["delay", "bandwidth"], shaping)?;
        only("jitter", self.jitter.is_some(), &["delay", "bandwidth"], shaping)?;
        only("distribution", self.distribution.is_some(), &["delay", "bandwidth"], shaping)?;
        only("rate", self.rate.is_some(), &["delay", "bandwidth"], shaping)?;
        only("burst", self.burst.is_some(), &["delay", "bandwidth"], shaping)?;
        only("loss", self.loss.is_some(), &["loss", "delay", "bandwidth"], "actions 'loss', 'delay' and 'bandwidth'")?;
        only("gemodel", self.gemodel.is_some(), &["loss"], "action 'loss'")?;
        only("duplicate", self.duplicate.is_some(), &["duplicate"], "action 'duplicate'")?;
        only("corrupt", self.corrupt.is_some(), &["corrupt"], "action 'corrupt'")?;
        only("checksum", self.checksum.is_some(), &["corrupt"], "action 'corrupt'")?;
        only("connections", self.connections.is_some(), &["reset"], "action 'reset'")?;
        only("errno", self.errno.is_some(), &["connect-fail"], "action 'connect-fail'")?;
        only("reorder", self.reorder.is_some(), &["delay"], "action 'delay'")?;
        only("reorder_correlation", self.reorder_correlation.is_some(), &["delay"], "action 'delay'")?;
        only("gap", self.gap.is_some(), &["delay"], "action 'delay'")?;
        for (field, given) in [
            ("dns", self.dns.is_some()),
            ("rcode", self.rcode.is_some()),
            ("spoof", self.spoof.is_some()),
            ("qtypes", self.qtypes.is_some()),
            ("percent", self.percent.is_some()),
            ("domains", self.domains.is_some()),
        ] {
            only(field, given, &["dns"], "action 'dns'")?;
        }
        only(
            "correlation",
            self.correlation.is_some(),
            &["loss", "duplicate", "corrupt", "delay", "bandwidth"],
            "actions 'loss', 'duplicate', 'corrupt' (the event), 'delay' and 'bandwidth' (the jitter)",
        )?;
        let correlation = || match self.correlation {
            None => Ok(0.0),
            Some(c) => memory("correlation", c),
        };
        let required = |field: &str, value: Option<f64>, what: &str| match value {
            None => Err(SpecError::new(field, format!("is required for action '{what}' (percent, 0-100)"))),
            Some(p) => percent(field, p),
        };
        match action {
            Some("loss") => match (&self.gemodel, self.loss) {
                (Some(_), Some(_)) => Err(SpecError::new("gemodel", "and loss are two loss models: give one")),
                (Some(_), None) if self.correlation.is_some() => {
                    Err(SpecError::new("correlation", "does not apply with gemodel (its states are its memory)"))
                }
                (Some(text), None) => Ok(Action::Loss(gemodel(text)?)),
                (None, None) => {
                    Err(SpecError::new("loss", "is required for action 'loss' (percent, 0-100, or gemodel)"))
                }
                (None, Some(p)) => {
                    Ok(Action::Loss(Odds::Random { p: percent("loss", p)?, correlation: correlation()? }))
                }
            },
            Some("partition") => Ok(Action::Partition),
            Some("dns") => Ok(Action::Dns(self.dns_action()?)),
            Some("connect-fail") => Ok(Action::ConnectFail { errno: errno(self.errno.as_deref())? }),
            Some("reset") => match self.connections.as_deref() {
                None | Some("all") => Ok(Action::Reset { new_only: false }),
                Some("new") => Ok(Action::Reset { new_only: true }),
                Some(other) => {
                    Err(SpecError::new("connections", format!("'{other}' is not a choice (expected all or new)")))
                }
            },
            Some("duplicate") => Ok(Action::Duplicate(Odds::Random {
                p: required("duplicate", self.duplicate, "duplicate")?,
                correlation: correlation()?,
            })),
            Some("corrupt") => {
                let checksum = match self.checksum.as_deref() {
                    None | Some("broken") => Checksum::Broken,
                    Some("fixed") => Checksum::Fixed,
                    Some(other) => {
                        return Err(SpecError::new(
                            "checksum",
                            format!("'{other}' is not a checksum choice (expected broken or fixed)"),
                        ));
                    }
                };
                let odds =
                    Odds::Random { p: required("corrupt", self.corrupt, "corrupt")?, correlation: correlation()? };
                Ok(Action::Corrupt(odds, checksum))
            }
            Some(a) => self.shape(a),
            None => unreachable!("checked above"),
        }
    }

    /// `delay` or `bandwidth`.
    fn shape(&self, a: &str) -> Result<Action, SpecError> {
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
            Some(c) => percent("correlation", c)?,
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
        let loss = self.loss.map(|p| percent("loss", p)).transpose()?.unwrap_or(0.0);
        let reorder = self.reorder(delay)?;
        Ok(Action::Shape(Shape { delay, jitter, correlation, distribution, rate, burst, loss, reorder }))
    }

    /// `reorder`, `reorder_correlation` and `gap` (the latter two need the first; reordering
    /// needs a delay to overtake, as tc says).
    fn reorder(&self, delay: Duration) -> Result<Option<Reorder>, SpecError> {
        let Some(p) = self.reorder else {
            for (field, given) in
                [("reorder_correlation", self.reorder_correlation.is_some()), ("gap", self.gap.is_some())]
            {
                if given {
                    return Err(SpecError::new(field, "has no effect without reorder"));
                }
            }
            return Ok(None);
        };
        let p = percent("reorder", p)?;
        if delay.is_zero() {
            return Err(SpecError::new("reorder", "needs a delay for packets to overtake"));
        }
        let correlation = self.reorder_correlation.map(|c| memory("reorder_correlation", c)).transpose()?;
        let gap = match self.gap {
            None => 1,
            Some(g) if (1..=i64::from(u32::MAX >> 1)).contains(&g) => g as u32,
            Some(g) => return Err(SpecError::new("gap", format!("{g} is not a number of packets (1 or more)"))),
        };
        Ok(Some(Reorder { p, correlation: correlation.unwrap_or(0.0), gap }))
    }
}

/// A percentage, 0 to 100, as a fraction.
pub(super) fn percent(field: &str, p: f64) -> Result<f64, SpecError> {
    if !(0.0..=100.0).contains(&p) {
        return Err(SpecError::new(field, format!("{p}% is outside 0-100%")));
    }
    Ok(p / 100.0)
}

/// The correlation of an event's outcomes, below 100%: at 100% a chain repeats its first
/// outcome for ever (a miss: a fault that never acts).
fn memory(field: &str, c: f64) -> Result<f64, SpecError> {
    let c = percent(field, c)?;
    if c >= 1.0 {
        return Err(SpecError::new(field, "100% would repeat the first outcome for ever: give less than 100%"));
    }
    Ok(c)
}

/// netem's `gemodel P [R [1-H [1-K]]]`, percentages (a `%` sign optional), with tc's defaults
/// for the ones left out: R 100%, 1-H 100%, 1-K 0%.
pub fn gemodel(text: &str) -> Result<Odds, SpecError> {
    let bad = |why: String| SpecError::new("gemodel", why);
    let mut values = [None, Some(1.0), Some(1.0), Some(0.0)];
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || words.len() > 4 {
        return Err(bad(format!("'{text}' is not 'P [R [1-H [1-K]]]' (1 to 4 percentages)")));
    }
    for (i, w) in words.iter().enumerate() {
        let n = w.trim_end_matches('%').parse::<f64>().map_err(|_| bad(format!("'{w}' is not a percentage")))?;
        let name = ["p", "r", "1-h", "1-k"][i];
        values[i] = Some(percent("gemodel", n).map_err(|_| bad(format!("{name} = {n}% is outside 0-100%")))?);
    }
    let [Some(p), Some(r), Some(loss_bad), Some(loss_good)] = values else { unreachable!("all set") };
    if p + r == 0.0 {
        return Err(bad("p and r are both 0: the model would never leave its first state".into()));
    }
    Ok(Odds::GilbertElliott { p, r, loss_bad, loss_good })
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
