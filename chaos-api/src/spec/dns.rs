//! The `dns` action's fields: what a matching query gets ([`Dns`]) and which names match
//! ([`Domain`]). The kernel matches names as chaos-common's `DnsNameKey` describes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{FaultSpec, QTypeSpec, SpecError};

/// What matching DNS queries get.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dns {
    pub reply: DnsReply,
    /// Share of matching queries acted on, 0.0 to 1.0 (default 1.0).
    pub p: f64,
    /// The query types acted on; empty: all.
    pub qtypes: QTypes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsReply {
    /// Answered at once with this response code, as if from the server asked.
    Error(Rcode),
    /// Answered with these addresses (A queries get `v4`, AAAA queries `v6`; other types, or a
    /// type whose address is absent, an empty NOERROR answer), TTL 0.
    Spoof { v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr> },
    /// As `Spoof` with an address drawn at random for each answer (Chaos Mesh's `random`).
    Random,
    /// The query is lost: the client times out and retries.
    Drop,
}

/// The response codes an `error` reply takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    ServFail,
    NxDomain,
    Refused,
}

impl Rcode {
    /// Its value in a DNS header.
    pub fn code(self) -> u8 {
        match self {
            Self::ServFail => 2,
            Self::NxDomain => 3,
            Self::Refused => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ServFail => "SERVFAIL",
            Self::NxDomain => "NXDOMAIN",
            Self::Refused => "REFUSED",
        }
    }
}

/// Query types (host order), zero-terminated; all zero: every type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QTypes(pub [u16; chaos_common::DNS_QTYPES_MAX]);

impl QTypes {
    pub fn is_all(self) -> bool {
        self.0[0] == 0
    }

    pub fn iter(self) -> impl Iterator<Item = u16> {
        self.0.into_iter().take_while(|t| *t != 0)
    }
}

/// One of a dns fault's `domains`, lower-cased, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// `*`: every name.
    Any,
    /// `api.example.com`: that name only.
    Exact(String),
    /// `*.example.com`: every name below `example.com` (not `example.com` itself).
    Below(String),
    /// `api.*`: every name whose first labels are `api` (not `api` itself).
    Starting(String),
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(n) => f.write_str(n),
            Self::Below(n) => write!(f, "*.{n}"),
            Self::Starting(n) => write!(f, "{n}.*"),
        }
    }
}

/// The most `domains` patterns a fault takes.
pub const MAX_DOMAINS: usize = 64;

/// The query types `qtypes` takes by name (case-insensitive), with their numbers.
const QTYPE_NAMES: [(&str, u16); 13] = [
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("SVCB", 64),
    ("HTTPS", 65),
    ("ANY", 255),
    ("CAA", 257),
];

/// A query type's name as `qtypes` takes it, else its number.
pub fn qtype_name(t: u16) -> String {
    QTYPE_NAMES.iter().find(|(_, n)| *n == t).map_or_else(|| t.to_string(), |(name, _)| (*name).to_owned())
}

/// One of `qtypes`: a name of [`QTYPE_NAMES`] (case-insensitive) or a number 1-65535.
pub fn parse_qtype(text: &str) -> Result<u16, String> {
    let text = text.trim();
    if let Some((_, n)) = QTYPE_NAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(text)) {
        return Ok(*n);
    }
    match text.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => {
            let names: Vec<&str> = QTYPE_NAMES.iter().map(|(n, _)| *n).collect();
            Err(format!("'{text}' is not a query type (a number 1-65535 or one of {})", names.join(", ")))
        }
    }
}

impl Rcode {
    /// `SERVFAIL`, `NXDOMAIN` or `REFUSED`, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::ServFail, Self::NxDomain, Self::Refused].into_iter().find(|r| r.name().eq_ignore_ascii_case(text.trim()))
    }
}

impl DnsReply {
    /// Its name in `dns`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Error(_) => "error",
            Self::Spoof { .. } => "spoof",
            Self::Random => "random",
            Self::Drop => "drop",
        }
    }
}

impl Domain {
    /// A pattern as written in `domains`: `api.example.com`, `*.example.com`, `api.*` or `*`,
    /// in any case, with or without a trailing dot. Refused, naming it: a wildcard anywhere but
    /// as a whole first or last label (or Chaos Mesh's `?`), an empty label, one longer than 63
    /// or with characters other than letters, digits, `-` and `_`, and names the kernel cannot
    /// match: more than [`chaos_common::DNS_LABELS_MAX`] labels or longer than
    /// [`chaos_common::DNS_NAME_MAX`] bytes on the wire (for `*.x` and `x.*`, the shortest names
    /// they match: `*` stands for one label of one character).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let lower = pattern.trim().to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.is_empty() {
            return Err(format!("'{pattern}' is empty: give a name, or '*' for every name"));
        }
        if name == "*" {
            return Ok(Self::Any);
        }
        let (body, wildcard) = if let Some(rest) = name.strip_prefix("*.") {
            (rest, Some(true))
        } else if let Some(rest) = name.strip_suffix(".*") {
            (rest, Some(false))
        } else {
            (name, None)
        };
        if body.contains(['*', '?']) {
            let placeholder =
                if body.contains('?') { "'?' (a one-character placeholder) is not supported: " } else { "" };
            return Err(format!(
                "'{pattern}': {placeholder}only a whole first or last label can be '*' (*.example.com, api.*, or * \
                 for every name)"
            ));
        }
        for label in body.split('.') {
            if label.is_empty() {
                return Err(format!("'{pattern}' has an empty label"));
            }
            if label.len() > 63 {
                return Err(format!("'{pattern}': label '{label}' is longer than 63 characters"));
            }
            if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
                return Err(format!(
                    "'{pattern}': '{}' is not allowed in a name (letters, digits, '-' and '_')",
                    c.escape_debug()
                ));
            }
        }
        // The shortest name it matches: `*` as one label of one character.
        let extra = usize::from(wildcard.is_some());
        let labels = body.split('.').count() + extra;
        let length = body.len() + 2 * extra;
        let (have, are, more) = match wildcard {
            Some(_) => ("the names it matches have", "the names it matches are", " or more"),
            None => ("it has", "it is", ""),
        };
        if labels > chaos_common::DNS_LABELS_MAX {
            return Err(format!(
                "'{pattern}': {have} {labels} labels{more}: the kernel matches names of at most {}",
                chaos_common::DNS_LABELS_MAX
            ));
        }
        if length + 2 > chaos_common::DNS_NAME_MAX {
            return Err(format!(
                "'{pattern}': {are} {length} characters{more}: the kernel matches names of at most {} ({} bytes on \
                 the wire)",
                chaos_common::DNS_NAME_MAX - 2,
                chaos_common::DNS_NAME_MAX
            ));
        }
        let body = body.to_owned();
        Ok(match wildcard {
            None => Self::Exact(body),
            Some(true) => Self::Below(body),
            Some(false) => Self::Starting(body),
        })
    }
}

impl FaultSpec {
    /// The `dns` action's fields: `dns`, `rcode`, `spoof`, `qtypes`, `percent` (the other
    /// actions' fields were refused already).
    pub(super) fn dns_action(&self) -> Result<Dns, SpecError> {
        let name = self.dns.as_deref().map(str::trim).unwrap_or("error");
        if !matches!(name, "error" | "spoof" | "random" | "drop") {
            return Err(SpecError::new(
                "dns",
                format!("'{name}' is not a dns reply (expected error, spoof, random or drop)"),
            ));
        }
        let only = |field: &str, given: bool, reply: &str| {
            if given && name != reply {
                return Err(SpecError::new(field, format!("applies to dns '{reply}', not dns '{name}'")));
            }
            Ok(())
        };
        only("rcode", self.rcode.is_some(), "error")?;
        only("spoof", self.spoof.is_some(), "spoof")?;
        let reply = match name {
            "error" => DnsReply::Error(match self.rcode.as_deref() {
                None => Rcode::ServFail,
                Some(text) => Rcode::parse(text).ok_or_else(|| {
                    SpecError::new("rcode", format!("'{text}' is not a response code (SERVFAIL, NXDOMAIN or REFUSED)"))
                })?,
            }),
            "spoof" => self.spoofed()?,
            "random" => DnsReply::Random,
            _ => DnsReply::Drop,
        };
        let p = match self.percent {
            None => 1.0,
            Some(p) => super::action::percent("percent", p)?,
        };
        Ok(Dns { reply, p, qtypes: self.qtypes()? })
    }

    /// `spoof`: at most one IPv4 and one IPv6 address, at least one of them.
    fn spoofed(&self) -> Result<DnsReply, SpecError> {
        let list = self.spoof.as_deref().unwrap_or_default();
        if list.is_empty() {
            return Err(SpecError::new(
                "spoof",
                "is required for dns 'spoof': the address to answer with (an IPv4 address for A queries, an IPv6 \
                 one for AAAA, or one of each)",
            ));
        }
        let (mut v4, mut v6) = (None::<Ipv4Addr>, None::<Ipv6Addr>);
        for text in list {
            let addr: IpAddr =
                text.trim().parse().map_err(|_| SpecError::new("spoof", format!("'{text}' is not an IP address")))?;
            let two = |a: &dyn std::fmt::Display, b: IpAddr, family: &str| {
                SpecError::new(
                    "spoof",
                    format!("{a} and {b} are two {family} addresses: give at most one IPv4 and one IPv6 address"),
                )
            };
            match addr {
                IpAddr::V4(a) => match v4 {
                    Some(first) => return Err(two(&first, addr, "IPv4")),
                    None => v4 = Some(a),
                },
                IpAddr::V6(a) => match v6 {
                    Some(first) => return Err(two(&first, addr, "IPv6")),
                    None => v6 = Some(a),
                },
            }
        }
        Ok(DnsReply::Spoof { v4, v6 })
    }

    /// `qtypes`: at most [`chaos_common::DNS_QTYPES_MAX`], each once; none: every type.
    fn qtypes(&self) -> Result<QTypes, SpecError> {
        let mut out = QTypes::default();
        let mut n = 0;
        for spec in self.qtypes.as_deref().unwrap_or_default() {
            let t = match spec {
                QTypeSpec::Number(v) => u16::try_from(*v)
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or_else(|| format!("{v} is not a query type (1-65535)")),
                QTypeSpec::Text(text) => parse_qtype(text),
            }
            .map_err(|e| SpecError::new("qtypes", e))?;
            if out.iter().any(|x| x == t) {
                continue;
            }
            if n == chaos_common::DNS_QTYPES_MAX {
                return Err(SpecError::new(
                    "qtypes",
                    format!("more than {} query types: give at most {0}", chaos_common::DNS_QTYPES_MAX),
                ));
            }
            out.0[n] = t;
            n += 1;
        }
        Ok(out)
    }

    /// `domains`, each checked by [`Domain::parse`] (refused as `domains[i]`), duplicates
    /// dropped; none, or `*` among them: `[Domain::Any]`, every name.
    pub(super) fn dns_domains(&self) -> Result<Vec<Domain>, SpecError> {
        let list = self.domains.as_deref().unwrap_or_default();
        if list.len() > MAX_DOMAINS {
            return Err(SpecError::new(
                "domains",
                format!("{} patterns: a fault takes at most {MAX_DOMAINS} (apply several faults)", list.len()),
            ));
        }
        let mut out = Vec::new();
        for (i, pattern) in list.iter().enumerate() {
            let d = Domain::parse(pattern).map_err(|e| SpecError::new(format!("domains[{i}]"), e))?;
            if !out.contains(&d) {
                out.push(d);
            }
        }
        if out.is_empty() || out.contains(&Domain::Any) {
            return Ok(vec![Domain::Any]);
        }
        Ok(out)
    }
}
