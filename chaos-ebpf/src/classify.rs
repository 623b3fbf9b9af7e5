//! Classification: the rule that acts on a packet, by chaos-common's chain of lookups.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_cgroup_id},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use chaos_common::{
    ActiveMap, AddrKey, Hook, PORT_KEY_FIXED_BITS, PairKey, PortKey, RuleAction, ScopeKey, Side, slot_of,
};

use crate::{
    maps::{ACTIVE, ADDRS, PAIRS, PORTS, RULES, SCOPES},
    packet::{ETH_HLEN, L4, Packet, parse},
};

/// Full-length lookup key for `ADDRS`: fixed part plus 128 address bits.
const ADDR_LOOKUP_BITS: u32 = chaos_common::ADDR_KEY_FIXED_BITS + 128;

/// The slot and action of the rule that acts on the packet, if any, the time it was read, and
/// the packet's transport header.
#[inline(always)]
pub(crate) fn find_rule(ctx: &TcContext, hook: Hook) -> Option<(u32, &'static RuleAction, u64, L4)> {
    let live = *ACTIVE.get(ActiveMap::GENERATION)?;
    let generation = (live & ActiveMap::GENERATION_BIT) as u8;
    let pkt = parse(&ctx.skb, ETH_HLEN)?;
    let skb = ctx.skb.skb;
    // SAFETY: the skb pointer is the program's context, valid for the whole run.
    let ifindex = unsafe { (*skb).ifindex };
    let mut scope = ifindex;
    if hook == Hook::Egress && live & ActiveMap::SCOPED_BIT != 0 {
        // The cgroup of the socket that sent it (4.18+, cgroup v2); 0 for a packet without a
        // local socket (forwarded), which no cgroup scope has.
        // SAFETY: the context pointer, as the helper requires.
        let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
        if let Some(s) = cgroup_scope(generation, hook, ifindex, cgroup) {
            scope = s;
        }
    }
    let (slot, action, now) = classify(generation, hook, scope, &pkt)?;
    Some((slot, action, now, L4 { proto: pkt.proto, offset: pkt.l4 }))
}

/// The cgroup scope of `cgroup` on this interface and hook, if it has one.
#[inline(always)]
pub(crate) fn cgroup_scope(generation: u8, hook: Hook, ifindex: u32, cgroup: u64) -> Option<u32> {
    let key = ScopeKey { generation, hook: hook as u8, _pad: 0, ifindex, cgroup };
    // SAFETY: a plain hash lookup; the value is copied out at once.
    unsafe { SCOPES.get(&key) }.copied()
}

/// The `PORTS` steps of the chain: the slot of the rule that acts on `pkt` in `pair_class`.
#[inline(always)]
fn ports(pair_class: u32, pkt: &Packet) -> Option<u32> {
    let full = PORT_KEY_FIXED_BITS + 16;
    let dport_class = *PORTS.get(&Key::new(
        full,
        PortKey { class: pair_class, proto: pkt.proto, side: Side::Dst as u8, port: pkt.dport },
    ))?;
    if let Some(slot) = slot_of(dport_class) {
        return Some(slot);
    }
    PORTS
        .get(&Key::new(full, PortKey { class: dport_class, proto: 0, side: Side::Src as u8, port: pkt.sport }))
        .copied()
}

/// The lookup chain of chaos-common, from the scope on: the acting rule's slot and action, and
/// the time, unless no rule matches or the rule is past its deadline.
#[inline(always)]
pub(crate) fn classify(
    generation: u8,
    hook: Hook,
    scope: u32,
    pkt: &Packet,
) -> Option<(u32, &'static RuleAction, u64)> {
    let mut addr = Key::new(
        ADDR_LOOKUP_BITS,
        AddrKey { generation, hook: hook as u8, family: pkt.family, side: Side::Src as u8, scope, addr: pkt.src },
    );
    let src_class = *ADDRS.get(&addr)?;
    addr.data.side = Side::Dst as u8;
    addr.data.addr = pkt.dst;
    let dst_class = *ADDRS.get(&addr)?;
    // SAFETY: a plain hash lookup; the value is copied out at once.
    let pair_class = *unsafe { PAIRS.get(&PairKey { src_class, dst_class }) }?;

    let slot = match slot_of(pair_class) {
        Some(slot) => slot,
        None => ports(pair_class, pkt)?,
    };

    let action = RULES.get(slot)?;
    // The deadline is kept here, not only by the daemon, so that a fault ends on time even when
    // the daemon is frozen or killed. bpf_ktime_get_ns is CLOCK_MONOTONIC (4.1+), the clock the
    // daemon computes deadlines on.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= action.deadline_ns {
        return None;
    }
    Some((slot, action, now))
}
