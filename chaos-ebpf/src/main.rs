//! TC programs that drop packets by rule. All behaviour comes from maps (see chaos-common):
//! per packet a fixed chain of eight map lookups, whatever the number of rules.
//!
//! Kept loadable by 4.19 kernels: no loops, no global data, helpers from 4.19 only
//! (map_lookup_elem, get_prandom_u32, ktime_get_ns, skb_load_bytes), and `cargo xtask check-ebpf` proves it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use chaos_common::{
    ACTIVE_GENERATION, ACTIVE_LEN, ADDRS_CAPACITY, AddrKey, Counters, FAMILY_V4, FAMILY_V6, HOOK_EGRESS, HOOK_INGRESS,
    MAX_RULES, PAIRS_CAPACITY, PORT_KEY_FIXED_BITS, PORTS_CAPACITY, PROTO_ICMP, PROTO_ICMPV6, PROTO_OTHER, PROTO_TCP,
    PROTO_UDP, PairKey, PortKey, RuleAction, SIDE_DST, SIDE_SRC,
};

#[map]
static ACTIVE: Array<u32> = Array::with_max_entries(ACTIVE_LEN, 0);
#[map]
static ADDRS: LpmTrie<AddrKey, u32> = LpmTrie::with_max_entries(ADDRS_CAPACITY, 0);
#[map]
static PAIRS: HashMap<PairKey, u32> = HashMap::with_max_entries(PAIRS_CAPACITY, 0);
#[map]
static PORTS: LpmTrie<PortKey, u32> = LpmTrie::with_max_entries(PORTS_CAPACITY, 0);
#[map]
static RULES: Array<RuleAction> = Array::with_max_entries(MAX_RULES, 0);
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Full-length lookup key for `ADDRS`: fixed part plus 128 address bits.
const ADDR_LOOKUP_BITS: u32 = chaos_common::ADDR_KEY_FIXED_BITS + 128;

#[classifier]
pub fn chaos_ingress(ctx: TcContext) -> i32 {
    verdict(try_classify(&ctx, HOOK_INGRESS))
}

#[classifier]
pub fn chaos_egress(ctx: TcContext) -> i32 {
    verdict(try_classify(&ctx, HOOK_EGRESS))
}

/// TC_ACT_UNSPEC, not TC_ACT_OK, for packets we leave alone: under TCX it is TCX_NEXT and
/// under cls_bpf "continue", so programs attached after ours (a CNI's) still run.
#[inline(always)]
fn verdict(drop: Option<bool>) -> i32 {
    match drop {
        Some(true) => TC_ACT_SHOT,
        _ => TC_ACT_UNSPEC,
    }
}

/// What the rules look at; addresses and ports as raw words, in wire byte order.
struct Packet {
    family: u8,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
}

/// `Some(drop?)` when a rule chose the packet, `None` when none did.
#[inline(always)]
fn try_classify(ctx: &TcContext, hook: u8) -> Option<bool> {
    let generation = *ACTIVE.get(ACTIVE_GENERATION)?;
    let pkt = parse(ctx)?;
    // SAFETY: the skb pointer is the program's context, valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    let mut addr = Key::new(
        ADDR_LOOKUP_BITS,
        AddrKey { generation: generation as u8, hook, family: pkt.family, side: SIDE_SRC, ifindex, addr: pkt.src },
    );
    let src_class = *ADDRS.get(&addr)?;
    addr.data.side = SIDE_DST;
    addr.data.addr = pkt.dst;
    let dst_class = *ADDRS.get(&addr)?;
    // SAFETY: a plain hash lookup; the value is copied out at once.
    let pair_class = *unsafe { PAIRS.get(&PairKey { src_class, dst_class }) }?;

    let full = PORT_KEY_FIXED_BITS + 16;
    let dport_class = *PORTS
        .get(&Key::new(full, PortKey { class: pair_class, proto: pkt.proto, side: SIDE_DST, port: pkt.dport }))?;
    let slot =
        *PORTS.get(&Key::new(full, PortKey { class: dport_class, proto: 0, side: SIDE_SRC, port: pkt.sport }))?;

    let action = RULES.get(slot)?;
    // The deadline is kept here, not only by the daemon, so that a fault ends on time even when
    // the daemon is frozen or killed. bpf_ktime_get_ns is CLOCK_MONOTONIC (4.1+), the clock the
    // daemon computes deadlines on.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    if unsafe { bpf_ktime_get_ns() } >= action.deadline_ns {
        return None;
    }
    let counters = COUNTERS.get_ptr_mut(slot)?;
    // Compared in 64 bits so that DROP_ALWAYS (2^32) drops every packet.
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let drop = u64::from(unsafe { bpf_get_prandom_u32() }) < action.drop_threshold;
    // SAFETY: a per-CPU slot, only written from this CPU with preemption off (TC runs in softirq
    // or with BH disabled).
    unsafe {
        (*counters).matched += 1;
        if drop {
            (*counters).dropped += 1;
        }
    }
    Some(drop)
}

/// Reads the IP header and, for TCP/UDP first fragments, the ports. Assumes an Ethernet device
/// (TC gives the program the frame from the MAC header on both hooks).
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let family;
    let mut proto: u8;
    let mut src = [0u32; 4];
    let mut dst = [0u32; 4];
    let l4;
    // skb->protocol is the frame's L3 protocol, big-endian in the low 16 bits.
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let frag: u16 = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
            family = FAMILY_V4;
            proto = ctx.load(ETH_HLEN + 9).ok()?;
            src[0] = ctx.load(ETH_HLEN + 12).ok()?;
            dst[0] = ctx.load(ETH_HLEN + 16).ok()?;
            // Later fragments carry no L4 header: they are matched as port 0.
            let first_fragment = frag & 0x1fff == 0;
            l4 = if first_fragment { Some(ETH_HLEN + usize::from(vihl & 0x0f) * 4) } else { None };
        }
        ETH_P_IPV6 => {
            family = FAMILY_V6;
            // Only the fixed header's next header is read (no loops on 4.19): a packet with
            // extension headers is matched as protocol "other".
            proto = ctx.load(ETH_HLEN + 6).ok()?;
            src[0] = ctx.load(ETH_HLEN + 8).ok()?;
            src[1] = ctx.load(ETH_HLEN + 12).ok()?;
            src[2] = ctx.load(ETH_HLEN + 16).ok()?;
            src[3] = ctx.load(ETH_HLEN + 20).ok()?;
            dst[0] = ctx.load(ETH_HLEN + 24).ok()?;
            dst[1] = ctx.load(ETH_HLEN + 28).ok()?;
            dst[2] = ctx.load(ETH_HLEN + 32).ok()?;
            dst[3] = ctx.load(ETH_HLEN + 36).ok()?;
            l4 = Some(ETH_HLEN + 40);
        }
        _ => return None,
    }
    let (mut sport, mut dport) = (0, 0);
    match proto {
        PROTO_TCP | PROTO_UDP => {
            if let Some(off) = l4 {
                sport = ctx.load(off).ok()?;
                dport = ctx.load(off + 2).ok()?;
            }
        }
        PROTO_ICMP if family == FAMILY_V4 => {}
        PROTO_ICMPV6 if family == FAMILY_V6 => {}
        _ => proto = PROTO_OTHER,
    }
    Some(Packet { family, proto, src, dst, sport, dport })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
