//! The `dns` action's fields: what a matching query gets ([`Dns`]) and which names match
//! ([`Domain`]). The kernel matches names as chaos-common's `DnsNameKey` describes.

use std::net::{Ipv4Addr, Ipv6Addr};

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
