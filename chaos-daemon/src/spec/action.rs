//! What a fault does: [`Action`], and the units its shaping fields are written in (delays with
//! a unit, tc's rates and sizes). Validation names the field and the reason, as in the parent.

use std::time::Duration;

use super::{DurationSpec, FaultSpec, RateSpec, SpecError, parse_duration};

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

impl FaultSpec {
    pub(super) fn action(&self) -> Result<Action, SpecError> {
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
