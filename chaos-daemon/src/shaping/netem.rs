//! netem options (linux/pkt_sched.h). `TCA_OPTIONS` carries `struct tc_netem_qopt` itself
//! first, then netem's attributes (netem_change parses the nested attributes after
//! `NLA_ALIGN(sizeof(qopt))`): not a nested attribute holding the struct. The layout and order
//! are iproute2's q_netem.c, so the message is what `tc qdisc add ... netem` sends.

use crate::netlink::{Attrs, Bytes, tc::TCA_OPTIONS};

/// `enum { TCA_NETEM_UNSPEC, TCA_NETEM_CORR, TCA_NETEM_DELAY_DIST, ..., TCA_NETEM_RATE = 6,
/// ..., TCA_NETEM_RATE64 = 8, TCA_NETEM_PAD, TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64, ... }`.
const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_DELAY_DIST: u16 = 2;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
/// include/net/pkt_sched.h `PSCHED_SHIFT`: qopt's latency and jitter are in 64 ns ticks.
const PSCHED_SHIFT: u32 = 6;

/// What one netem qdisc does here: delay with jitter (and its correlation and distribution),
/// an optional rate, a queue limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetemOptions {
    pub latency_ns: u64,
    pub jitter_ns: u64,
    /// On netem's u32 scale (see [`percent`]).
    pub correlation: u32,
    /// `NETEM_DIST_SCALE`-scaled quantiles; sent only with jitter (without it the table is unused).
    pub distribution: Option<Vec<i16>>,
    /// Bytes per second.
    pub rate_bytes: Option<u64>,
    pub limit: u32,
}

/// A percentage on netem's u32 probability scale, as iproute2's get_percent:
/// `rint(percent / 100 * UINT32_MAX)`.
pub fn percent(p: f64) -> u32 {
    (p.clamp(0.0, 100.0) / 100.0 * f64::from(u32::MAX)).round_ties_even() as u32
}

/// ns in ticks for qopt, and whether that is exact (else the 64-bit attribute, 4.15+, carries
/// the precise value: netem_change lets `TCA_NETEM_LATENCY64/JITTER64` override qopt).
fn ticks(ns: u64) -> (u32, bool) {
    let t = ns >> PSCHED_SHIFT;
    (u32::try_from(t).unwrap_or(u32::MAX), t << PSCHED_SHIFT == ns && t <= u64::from(u32::MAX))
}

pub fn options(o: &NetemOptions) -> Attrs {
    let (latency, latency_exact) = ticks(o.latency_ns);
    let (jitter, jitter_exact) = ticks(o.jitter_ns);
    // tc_netem_qopt { latency, limit, loss, gap, duplicate, jitter }
    let qopt = Bytes::default().u32(latency).u32(o.limit).u32(0).u32(0).u32(0).u32(jitter).0;
    let mut a = Attrs::new();
    a.nest(TCA_OPTIONS, |n| {
        n.raw(&qopt);
        if o.correlation != 0 {
            // tc_netem_corr { delay_corr, loss_corr, dup_corr }
            n.put(TCA_NETEM_CORR, &Bytes::default().u32(o.correlation).u32(0).u32(0).0);
        }
        if !latency_exact {
            n.put_u64(TCA_NETEM_LATENCY64, o.latency_ns.min(i64::MAX as u64));
        }
        if !jitter_exact {
            n.put_u64(TCA_NETEM_JITTER64, o.jitter_ns.min(i64::MAX as u64));
        }
        if let Some(rate) = o.rate_bytes {
            if rate >= 1 << 32 {
                n.put_u64(TCA_NETEM_RATE64, rate);
            }
            // tc_netem_rate { rate, packet_overhead, cell_size, cell_overhead }
            let rate32 = u32::try_from(rate).unwrap_or(u32::MAX);
            n.put(TCA_NETEM_RATE, &Bytes::default().u32(rate32).i32(0).u32(0).i32(0).0);
        }
        if let Some(table) = o.distribution.as_ref().filter(|_| o.jitter_ns != 0) {
            let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
            n.put(TCA_NETEM_DELAY_DIST, &bytes);
        }
    });
    a
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::shaping::{hex, normal_table};

    /// `tc qdisc add dev lo root handle cd: netem delay 50ms 10ms 25% distribution normal
    /// rate 10mbit limit 1000`, captured from iproute2 6.1: TCA_OPTIONS of 0x2044 bytes holding
    /// qopt (latency 781250 ticks, limit 1000, jitter 156250 ticks), TCA_NETEM_CORR
    /// (0x40000000), TCA_NETEM_RATE (1,250,000 bytes/s), TCA_NETEM_DELAY_DIST (normal.dist).
    #[test]
    fn matches_iproute2() {
        let o = NetemOptions {
            latency_ns: 50_000_000,
            jitter_ns: 10_000_000,
            correlation: percent(25.0),
            distribution: Some(normal_table()),
            rate_bytes: Some(1_250_000),
            limit: 1000,
        };
        let bytes = options(&o);
        // Header, qopt, CORR, RATE, then DELAY_DIST's header and its first two values
        // (-32768, -28307): the table is checked whole by the hash below.
        let head = concat!(
            "44200200",
            "c2eb0b00e80300000000000000000000000000005a620200",
            "100001000000004000000000",
            "00000000",
            "14000600d0121300000000000000000000000000",
            "0420020000806d91",
        );
        assert_eq!(&hex(bytes.as_bytes())[..head.len()], head);
        assert_eq!(bytes.as_bytes().len(), 0x2044);
        assert_eq!(fnv(bytes.as_bytes()), TC_OPTIONS_FNV);
    }

    /// FNV-1a 64 of the TCA_OPTIONS attribute of the captured message above.
    const TC_OPTIONS_FNV: u64 = 0x8497_c6ee_7466_23c9;

    fn fnv(b: &[u8]) -> u64 {
        b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x0000_0100_0000_01b3))
    }

    #[test]
    fn inexact_delays_add_the_64_bit_attributes() {
        let o = NetemOptions { latency_ns: 1_000_001, jitter_ns: 0, limit: 10, ..Default::default() };
        let b = options(&o);
        let nested = &b.as_bytes()[4 + 24..];
        let attrs: Vec<_> = crate::netlink::attrs(nested).collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].0, TCA_NETEM_LATENCY64);
        assert_eq!(attrs[0].1, 1_000_001u64.to_ne_bytes());
        // qopt keeps the truncated tick count, as an older kernel would use it.
        assert_eq!(crate::netlink::u32_at(&b.as_bytes()[4..], 0), Some(1_000_001 >> 6));
        // A distribution without jitter is not sent.
        let o = NetemOptions { latency_ns: 64, distribution: Some(vec![1, 2]), ..Default::default() };
        assert_eq!(options(&o).as_bytes().len(), 4 + 24);
    }

    /// Rates from 2^32 bytes/s on go in TCA_NETEM_RATE64 first, with ~0 in tc_netem_rate (as
    /// q_netem.c sends them); jitter not a multiple of 64 ns in TCA_NETEM_JITTER64.
    #[test]
    fn big_rates_and_fine_jitter_use_the_64_bit_attributes() {
        let o = NetemOptions { latency_ns: 64, jitter_ns: 100, rate_bytes: Some(5_000_000_000), ..Default::default() };
        let b = options(&o);
        let attrs: Vec<_> = crate::netlink::attrs(&b.as_bytes()[4 + 24..]).collect();
        let types: Vec<_> = attrs.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, [TCA_NETEM_JITTER64, TCA_NETEM_RATE64, TCA_NETEM_RATE]);
        assert_eq!(attrs[0].1, 100u64.to_ne_bytes());
        assert_eq!(attrs[1].1, 5_000_000_000u64.to_ne_bytes());
        assert_eq!(hex(attrs[2].1), "ffffffff000000000000000000000000");
        // qopt: latency 1 tick, jitter 1 tick (100 >> 6).
        assert_eq!(hex(&b.as_bytes()[4..28]), "010000000000000000000000000000000000000001000000");
    }

    #[test]
    fn percent_like_tc() {
        assert_eq!(percent(25.0), 0x4000_0000);
        assert_eq!(percent(100.0), u32::MAX);
        assert_eq!(percent(0.0), 0);
    }
}
