//! HTB options (linux/pkt_sched.h): the root's `struct tc_htb_glob` and a class's
//! `struct tc_htb_opt`, both inside a nested `TCA_OPTIONS`.

use crate::netlink::{Attrs, Bytes, tc::TCA_OPTIONS};

/// `enum { TCA_HTB_UNSPEC, TCA_HTB_PARMS, TCA_HTB_INIT, TCA_HTB_CTAB, TCA_HTB_RTAB,
/// TCA_HTB_DIRECT_QLEN, TCA_HTB_RATE64, TCA_HTB_CEIL64, ... }`.
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`, checked by htb_init.
const TC_HTB_PROTOVER: u32 = 3;
/// `TC_LINKLAYER_ETHERNET`: with a link layer set, htb_change_class does not ask for a rate
/// table (`TCA_HTB_RTAB` is read only when `linklayer == TC_LINKLAYER_UNAWARE`).
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// include/net/pkt_sched.h `PSCHED_SHIFT`: a psched tick is 2^6 ns.
const PSCHED_SHIFT: u32 = 6;
/// tc's default rate-to-quantum divisor. Quantum is set explicitly per class (below), so r2q
/// never produces the kernel's "quantum of class is big/small" warnings.
const R2Q: u32 = 10;

/// The root: `tc_htb_glob { version, rate2quantum, defcls, debug, direct_pkts }` with
/// `defcls = 0`: packets whose skb->priority names no class of ours go to HTB's direct queue
/// (htb_classify returns HTB_DIRECT when the default class cd:0 does not exist), never
/// shaped. `TCA_HTB_DIRECT_QLEN` is explicit, or htb_init would take the device's
/// tx_queue_len (0 or 1000 on veth) and clamp it to at least 2.
pub fn root_options(direct_qlen: u32) -> Attrs {
    let glob = Bytes::default().u32(TC_HTB_PROTOVER).u32(R2Q).u32(0).u32(0).u32(0).0;
    let mut a = Attrs::new();
    a.nest(TCA_OPTIONS, |o| {
        o.put(TCA_HTB_INIT, &glob).put_u32(TCA_HTB_DIRECT_QLEN, direct_qlen);
    });
    a
}

/// A user's htb root options as dumped, made acceptable to htb_init: htb_dump writes
/// `tc_htb_glob.version = HTB_VER` (0x30011) but htb_init refuses any version but
/// `HTB_VER >> 16` (3), with EINVAL. The rest (r2q, defcls, direct_qlen) goes back as is;
/// direct_pkts is a counter, which htb_init ignores and a new qdisc starts at 0.
pub fn restorable(options: &[u8]) -> Vec<u8> {
    let mut o = options.to_vec();
    let mut at = 0;
    while at + 8 <= o.len() {
        let len = usize::from(u16::from_ne_bytes([o[at], o[at + 1]]));
        let ty = u16::from_ne_bytes([o[at + 2], o[at + 3]]) & 0x3fff;
        if len < 4 {
            break;
        }
        if ty == TCA_HTB_INIT && len >= 8 {
            o[at + 4..at + 8].copy_from_slice(&TC_HTB_PROTOVER.to_ne_bytes());
        }
        at += (len + 3) & !3;
    }
    o
}

/// A leaf class with `rate == ceil` (it never borrows): `tc_htb_opt { rate, ceil, buffer,
/// cbuffer, quantum, level, prio }`, with `TCA_HTB_RATE64/CEIL64` first when the rate does not
/// fit the ratespec's u32 (which then holds ~0, as iproute2 sends it).
pub fn class_options(rate_bytes: u64, burst_bytes: u32) -> Attrs {
    let spec = ratespec(u32::try_from(rate_bytes).unwrap_or(u32::MAX));
    let buffer = ticks(burst_bytes, rate_bytes);
    // htb_change_class takes an explicit quantum as is; this is its own default (rate / r2q
    // clamped to 1000..200000) without the warning.
    let quantum = (rate_bytes / u64::from(R2Q)).clamp(1000, 200_000) as u32;
    let mut opt = [spec.clone(), spec].concat();
    opt.extend(Bytes::default().u32(buffer).u32(buffer).u32(quantum).u32(0).u32(0).0);
    let mut a = Attrs::new();
    a.nest(TCA_OPTIONS, |o| {
        if rate_bytes >= 1 << 32 {
            o.put_u64(TCA_HTB_RATE64, rate_bytes).put_u64(TCA_HTB_CEIL64, rate_bytes);
        }
        o.put(TCA_HTB_PARMS, &opt);
    });
    a
}

/// `struct tc_ratespec { u8 cell_log, linklayer; u16 overhead; s16 cell_align; u16 mpu;
/// u32 rate; }` (bytes per second). psched_ratecfg_precompute reads rate, overhead, mpu and
/// linklayer; cell_log and cell_align only describe a rate table, which is not sent.
fn ratespec(rate: u32) -> Vec<u8> {
    Bytes::default().u8(0).u8(TC_LINKLAYER_ETHERNET).u16(0).i16(-1).u16(0).u32(rate).0
}

/// The time to send `bytes` at `rate_bytes` per second, in psched ticks (what HTB's buffer
/// and cbuffer hold: htb_change_class does `PSCHED_TICKS2NS(hopt->buffer)`).
pub fn ticks(bytes: u32, rate_bytes: u64) -> u32 {
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(rate_bytes.max(1));
    u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::shaping::hex;

    /// `tc qdisc add dev lo root handle cd: htb default 0 direct_qlen 1000 r2q 10` (iproute2 6.1).
    #[test]
    fn root_matches_iproute2() {
        let tc = "2400020018000200030000000a00000000000000000000000000000008000500e8030000";
        assert_eq!(hex(root_options(1000).as_bytes()), tc);
    }

    /// `tc class add dev lo parent cd: classid cd:6 htb rate 100gbit burst 12500000
    /// quantum 200000 linklayer ethernet` (iproute2 6.1) sends RATE64, CEIL64, then PARMS:
    /// rate and ceil `{cell_log 3, linklayer 1, overhead 0, cell_align -1, mpu 0, rate ~0}`,
    /// buffer 15625 ticks (12.5 MB at 12.5 GB/s = 1 ms), cbuffer (computed from its MTU),
    /// quantum 200000, then RTAB/CTAB. Ours: the same but cell_log 0, cbuffer = buffer, and
    /// no rate tables.
    #[test]
    fn class_matches_iproute2() {
        let rate64 = "0c00060000dd0ee9020000000c00070000dd0ee902000000";
        let spec = "00010000ffff0000ffffffff";
        let expected = format!("4c000200{rate64}30000100{spec}{spec}093d0000093d0000400d03000000000000000000");
        assert_eq!(hex(class_options(12_500_000_000, 12_500_000).as_bytes()), expected);
    }

    #[test]
    fn dumped_htb_version_is_made_acceptable() {
        let mut dumped = root_options(77).as_bytes()[4..].to_vec();
        dumped[4..8].copy_from_slice(&0x30011u32.to_ne_bytes());
        assert_eq!(restorable(&dumped), &root_options(77).as_bytes()[4..]);
    }

    #[test]
    fn class_below_4gbytes_has_no_rate64() {
        // 10 Mbit/s: 1,250,000 bytes/s; 3200 bytes take 2.56 ms = 40000 ticks; quantum 125000.
        let spec = "00010000ffff0000d0121300";
        let expected = format!("3400020030000100{spec}{spec}409c0000409c000048e801000000000000000000");
        assert_eq!(hex(class_options(1_250_000, 3200).as_bytes()), expected);
        assert_eq!(ticks(3200, 1_250_000), 40000);
        assert_eq!(ticks(u32::MAX, 1), u32::MAX);
    }
}
