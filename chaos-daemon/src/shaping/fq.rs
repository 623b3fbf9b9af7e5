//! fq options (linux/pkt_sched.h `TCA_FQ_*`) for the EDT backend: fq holds each packet until
//! its skb->tstamp, so its queues must hold rate × delay packets.

use serde::{Deserialize, Serialize};

use crate::netlink::{Attrs, tc::TCA_OPTIONS};

const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
/// u32, in microseconds (fq_change: `q->horizon = NSEC_PER_USEC * nla_get_u32(...)`); 5.7+.
/// Older kernels ignore both horizon attributes (fq_change's parse is not strict).
const TCA_FQ_HORIZON: u16 = 14;
/// u8: drop packets beyond the horizon (1) rather than cap their time (0).
const TCA_FQ_HORIZON_DROP: u16 = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqParams {
    /// Packets in the whole qdisc (fq's default 10000).
    pub plimit: u32,
    /// Packets per flow (fq's default 100).
    pub flow_plimit: u32,
    /// Packets timestamped further ahead are dropped (fq's default 10 s).
    pub horizon_ns: u64,
}

impl Default for FqParams {
    fn default() -> Self {
        Self { plimit: 100_000, flow_plimit: 10_000, horizon_ns: 10_000_000_000 }
    }
}

pub fn options(p: &FqParams) -> Attrs {
    let horizon_us = u32::try_from(p.horizon_ns / 1000).unwrap_or(u32::MAX);
    let mut a = Attrs::new();
    a.nest(TCA_OPTIONS, |o| {
        o.put_u32(TCA_FQ_PLIMIT, p.plimit)
            .put_u32(TCA_FQ_FLOW_PLIMIT, p.flow_plimit)
            .put_u32(TCA_FQ_HORIZON, horizon_us)
            .put_u8(TCA_FQ_HORIZON_DROP, 1);
    });
    a
}

/// Whether fq options as the kernel dumps them carry a horizon (5.7+).
pub fn has_horizon(options: &[u8]) -> bool {
    crate::netlink::attr(options, TCA_FQ_HORIZON).is_some()
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::shaping::hex;

    /// `tc qdisc add dev lo root handle cd: fq limit 100000 flow_limit 10000 horizon 10s
    /// horizon_drop` (iproute2 6.1).
    #[test]
    fn matches_iproute2() {
        let tc = "2400020008000100a0860100080002001027000008000e008096980005000f0001000000";
        assert_eq!(hex(options(&FqParams::default()).as_bytes()), tc);
    }
}
