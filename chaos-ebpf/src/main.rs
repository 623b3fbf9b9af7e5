//! TC programs that drop, shape, duplicate and corrupt packets by rule, and cgroup programs
//! that drop packets reaching a cgroup's sockets and fail its `connect()`s. All behaviour comes
//! from maps (see chaos-common): per packet a fixed chain of eight map lookups, whatever the
//! number of rules, one more for a rule with memory (correlation, Gilbert–Elliott) and two
//! more for a shaping rule.
//!
//! Kept loadable by 4.19 kernels: no loops, no global data, helpers from 4.19 only
//! (map_lookup_elem, get_prandom_u32, ktime_get_ns, skb_load_bytes, skb_store_bytes,
//! l4_csum_replace, clone_redirect, skb_cgroup_id), and `cargo xtask check-ebpf` proves it.
//! Some programs need more, and the daemon loads them only where the kernel accepts them: the
//! `_edt` ones write `skb->tstamp` (5.0); `chaos_cg_ingress` calls skb_cgroup_id from a
//! cgroup_skb program and the connect ones get_current_cgroup_id from cgroup/connect (5.7
//! era); the `_errno` ones call set_retval (5.18).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_REDIRECT, TC_ACT_SHOT,
        TC_ACT_UNSPEC,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_set_retval,
        bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock_addr, classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{SkBuffContext, SockAddrContext, TcContext, sk_buff::SkBuff},
};
use chaos_common::{
    ACTION_CONNECT_FAIL, ACTION_CORRUPT, ACTION_DUPLICATE, ACTION_RESET, ACTION_SHAPE, ACTIVE_GENERATION, ACTIVE_LEN,
    ACTIVE_SCOPED, ADDRS_CAPACITY, AddrKey, CHAIN_GE, CHAIN_NONE, CHAIN_OUTCOME, CORRUPT_FIX_CHECKSUM, Chain, Counters,
    DIST_SCALE, DIST_SIZE, DIST_UNIFORM, FAMILY_V4, FAMILY_V6, HOOK_CONNECT, HOOK_EGRESS, HOOK_INGRESS, MAX_RULES,
    PAIRS_CAPACITY, PORT_KEY_FIXED_BITS, PORTS_CAPACITY, PROTO_ICMP, PROTO_ICMPV6, PROTO_OTHER, PROTO_TCP, PROTO_UDP,
    PairKey, PortKey, RESET_NEW_ONLY, RuleAction, SCOPES_CAPACITY, SIDE_DST, SIDE_SRC, ScopeKey, ShapeState,
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
#[map]
static SHAPES: Array<ShapeState> = Array::with_max_entries(MAX_RULES, 0);
#[map]
static DIST: Array<i32> = Array::with_max_entries(DIST_SIZE, 0);
/// Per CPU, so a chain is stepped without locks (4.19 has no bpf_spin_lock): each CPU's packets
/// follow the rule's model exactly.
#[map]
static CHAINS: PerCpuArray<Chain> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map]
static SCOPES: HashMap<ScopeKey, u32> = HashMap::with_max_entries(SCOPES_CAPACITY, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Full-length lookup key for `ADDRS`: fixed part plus 128 address bits.
const ADDR_LOOKUP_BITS: u32 = chaos_common::ADDR_KEY_FIXED_BITS + 128;

#[classifier]
pub fn chaos_ingress(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_INGRESS, Shaping::None)
}

#[classifier]
pub fn chaos_egress(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_EGRESS, Shaping::Priority)
}

#[classifier]
pub fn chaos_egress_edt(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_EGRESS, Shaping::Edt)
}

/// On an IFB device's egress: the packets are the interface's ingress, redirected there so
/// that a qdisc can hold them; they are matched as ingress packets.
#[classifier]
pub fn chaos_ifb(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_INGRESS, Shaping::Priority)
}

#[classifier]
pub fn chaos_ifb_edt(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_INGRESS, Shaping::EdtIfb)
}

/// How a program hands shaped packets to the qdisc (see chaos-common's program names).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shaping {
    /// Ingress of a real interface: no queue, no shaping.
    None,
    /// netem backend: `skb->priority` picks the rule's HTB class.
    Priority,
    /// edt backend: `skb->tstamp` is the departure time `fq` holds the packet until.
    Edt,
    /// edt on an IFB: as `Edt`, and a timestamp the packet brought with it (a receive time, on
    /// CLOCK_REALTIME) is cleared, or `fq` would take it for a departure time years ahead.
    EdtIfb,
}

/// TC_ACT_UNSPEC, not TC_ACT_OK, for packets we leave alone: under TCX it is TCX_NEXT and
/// under cls_bpf "continue", so programs attached after ours (a CNI's) still run.
#[inline(always)]
fn run(ctx: &TcContext, hook: u8, shaping: Shaping) -> i32 {
    let skb = ctx.skb.skb;
    let verdict = match find_rule(ctx, hook) {
        Some((slot, action, now, l4)) => act(ctx, hook, slot, action, now, l4, shaping),
        None => None,
    };
    match verdict {
        Some(Verdict::Drop) if hook == HOOK_EGRESS => {
            // Lost as on the wire, unknown to the sender. TC_ACT_SHOT here would free the
            // packet and return NET_XMIT_DROP to the sender's stack: ENOBUFS from sendmsg, and
            // TCP's local-drop handling (ETIMEDOUT after ~6 s, cwnd cut without a loss). A
            // redirect to ifindex 0, which names no device, makes skb_do_redirect free it after
            // the sender was told NET_XMIT_SUCCESS, under cls_bpf (4.19 on) and TCX alike;
            // TC_ACT_STOLEN would too, but TCX takes it for TCX_NEXT and passes the packet.
            // SAFETY: bpf_redirect has no preconditions.
            unsafe { bpf_redirect(0, 0) };
            TC_ACT_REDIRECT as i32
        }
        // Ingress drops are unknown to the sender anyway; a full rate queue is the host's own
        // queue overflowing, which a local qdisc reports to the sender too (tbf, htb).
        Some(Verdict::Drop | Verdict::Full) => TC_ACT_SHOT,
        Some(Verdict::Back) => {
            // Out the way the packet came: a reply to a packet leaving goes up this host's
            // stack, a reply to a packet arriving leaves on the same device. bpf_redirect's
            // flags take effect when the program returns TC_ACT_REDIRECT.
            let flags = if hook == HOOK_EGRESS { u64::from(BPF_F_INGRESS) } else { 0 };
            // SAFETY: the context pointer is valid for the whole run; bpf_redirect has no
            // other preconditions.
            unsafe { bpf_redirect((*skb).ifindex, flags) };
            TC_ACT_REDIRECT as i32
        }
        Some(Verdict::Depart(t)) => {
            // SAFETY: the context pointer is valid for the whole run; tstamp is writable from
            // TC programs since 5.0 (this path is only in the edt programs).
            unsafe { (*skb).tstamp = t };
            TC_ACT_UNSPEC
        }
        _ => {
            // Only here is the clock read for a packet no rule acts on.
            // SAFETY: as above; bpf_ktime_get_ns has no preconditions.
            if shaping == Shaping::EdtIfb && unsafe { (*skb).tstamp > bpf_ktime_get_ns() } {
                unsafe { (*skb).tstamp = 0 };
            }
            TC_ACT_UNSPEC
        }
    }
}

enum Verdict {
    /// Lost: on egress unknown to the sender, as a loss on the wire is.
    Drop,
    /// The rule's rate queue is full: dropped as a local qdisc drops, known to the sender.
    Full,
    Pass,
    /// Rewritten into a reply: send it back where it came from.
    Back,
    /// edt: leave at this CLOCK_MONOTONIC time.
    Depart(u64),
}

/// What the rules look at; addresses and ports as raw words, in wire byte order.
struct Packet {
    family: u8,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    /// Where the TCP or UDP header starts, for a first fragment; 0 otherwise.
    l4: usize,
}

/// Where the TCP or UDP header of a packet starts (0: none) and its protocol.
#[derive(Clone, Copy)]
struct L4 {
    proto: u8,
    offset: usize,
}

/// The slot and action of the rule that acts on the packet, if any, the time it was read, and
/// the packet's transport header.
#[inline(always)]
fn find_rule(ctx: &TcContext, hook: u8) -> Option<(u32, &'static RuleAction, u64, L4)> {
    let live = *ACTIVE.get(ACTIVE_GENERATION)?;
    let generation = (live & 1) as u8;
    let pkt = parse(&ctx.skb, ETH_HLEN)?;
    let skb = ctx.skb.skb;
    // SAFETY: the skb pointer is the program's context, valid for the whole run.
    let ifindex = unsafe { (*skb).ifindex };
    let mut scope = ifindex;
    if hook == HOOK_EGRESS && live & ACTIVE_SCOPED != 0 {
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
fn cgroup_scope(generation: u8, hook: u8, ifindex: u32, cgroup: u64) -> Option<u32> {
    let key = ScopeKey { generation, hook, _pad: 0, ifindex, cgroup };
    // SAFETY: a plain hash lookup; the value is copied out at once.
    unsafe { SCOPES.get(&key) }.copied()
}

/// The lookup chain of chaos-common, from the scope on: the acting rule's slot and action, and
/// the time, unless no rule matches or the rule is past its deadline.
#[inline(always)]
fn classify(generation: u8, hook: u8, scope: u32, pkt: &Packet) -> Option<(u32, &'static RuleAction, u64)> {
    let mut addr = Key::new(
        ADDR_LOOKUP_BITS,
        AddrKey { generation, hook, family: pkt.family, side: SIDE_SRC, scope, addr: pkt.src },
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
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= action.deadline_ns {
        return None;
    }
    Some((slot, action, now))
}

/// cgroup_skb/ingress, attached to the cgroups of ingress cgroup faults: a packet as it reaches
/// a socket of the cgroup (or of one below it), acted on by the rules of the socket's cgroup
/// scope only; the interface's own ingress rules acted at TC already. Returns 0 to drop.
#[cgroup_skb(ingress)]
pub fn chaos_cg_ingress(ctx: SkBuffContext) -> i32 {
    i32::from(!cgroup_ingress_drops(&ctx))
}

#[inline(always)]
fn cgroup_ingress_drops(ctx: &SkBuffContext) -> bool {
    let Some(&live) = ACTIVE.get(ACTIVE_GENERATION) else { return false };
    let generation = (live & 1) as u8;
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer, valid for the whole run; bpf_skb_cgroup_id is the socket's
    // cgroup here (the daemon loads this program only where the kernel allows the helper).
    let (ifindex, cgroup) = unsafe { ((*skb).ifindex, bpf_skb_cgroup_id(skb)) };
    let Some(scope) = cgroup_scope(generation, HOOK_INGRESS, ifindex, cgroup) else { return false };
    // cgroup_skb programs see the packet from its network header.
    let Some(pkt) = parse(&ctx.skb, 0) else { return false };
    let Some((slot, action, _)) = classify(generation, HOOK_INGRESS, scope, &pkt) else { return false };
    // Only dropping rules are given cgroup ingress scopes (the daemon refuses the others).
    count(slot, action)
}

/// cgroup/connect4 and connect6: `connect()` in a cgroup with connect-fail faults.
#[cgroup_sock_addr(connect4)]
pub fn chaos_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, FAMILY_V4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, FAMILY_V6, false)
}

#[cgroup_sock_addr(connect4)]
pub fn chaos_connect4_errno(ctx: SockAddrContext) -> i32 {
    connect(&ctx, FAMILY_V4, true)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_connect6_errno(ctx: SockAddrContext) -> i32 {
    connect(&ctx, FAMILY_V6, true)
}

/// 1 lets the `connect()` go on; 0 fails it, with EPERM unless `errno` (5.18's
/// `bpf_set_retval`) sets the rule's errno first. The source is not known yet at connect time:
/// rules here match destination address, protocol and port only.
#[inline(always)]
fn connect(ctx: &SockAddrContext, family: u8, errno: bool) -> i32 {
    let Some(&live) = ACTIVE.get(ACTIVE_GENERATION) else { return 1 };
    let generation = (live & 1) as u8;
    // The task's cgroup: connect() runs in the calling process (5.7+ for this program type).
    // SAFETY: bpf_get_current_cgroup_id has no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let Some(scope) = cgroup_scope(generation, HOOK_CONNECT, 0, cgroup) else { return 1 };
    let a = ctx.sock_addr;
    // SAFETY: the context pointer, valid for the whole run; user_ip4/user_ip6/user_port hold
    // the address and port in network byte order, as the packet words do.
    let (proto, port) = unsafe { ((*a).protocol, (*a).user_port) };
    let dst = if family == FAMILY_V4 {
        // SAFETY: as above.
        [unsafe { (*a).user_ip4 }, 0, 0, 0]
    } else {
        // SAFETY: as above; read word by word, the access size the verifier allows.
        unsafe { [(*a).user_ip6[0], (*a).user_ip6[1], (*a).user_ip6[2], (*a).user_ip6[3]] }
    };
    let proto = match proto as u8 {
        PROTO_TCP => PROTO_TCP,
        PROTO_UDP => PROTO_UDP,
        _ => PROTO_OTHER,
    };
    // The source is unknown: all zeros, which only rules without a source match. Read through
    // a volatile load, or LLVM zeroes the key with a memset call, a loop 4.19 refuses.
    let zero = 0u32;
    // SAFETY: a read of a local (on the stack: a constant's address would be global data).
    let zero = unsafe { core::ptr::read_volatile(&raw const zero) };
    let pkt = Packet { family, proto, src: [zero; 4], dst, sport: 0, dport: port as u16, l4: 0 };
    let Some((slot, action, _)) = classify(generation, HOOK_CONNECT, scope, &pkt) else { return 1 };
    if action.kind != ACTION_CONNECT_FAIL || !count(slot, action) {
        return 1;
    }
    if errno {
        // SAFETY: bpf_set_retval has no preconditions; an errno is a small positive number.
        unsafe { bpf_set_retval(-(action.flags as i32)) };
    }
    0
}

/// For the programs that can only drop (cgroup ones): counts the packet or connect for its
/// rule and whether the rule's event (a drop, a failure) happens.
#[inline(always)]
fn count(slot: u32, action: &RuleAction) -> bool {
    let Some(counters) = COUNTERS.get_ptr_mut(slot) else { return false };
    let event = happens(slot, action);
    // SAFETY: a per-CPU slot, only written from this CPU with preemption off (softirq, or
    // BH-disabled process context for connect).
    unsafe {
        (*counters).matched += 1;
        if event {
            (*counters).dropped += 1;
        }
    }
    event
}

/// Counts the packet for the rule, and drops, shapes, copies, corrupts or passes it.
#[inline(always)]
fn act(
    ctx: &TcContext,
    hook: u8,
    slot: u32,
    action: &RuleAction,
    now: u64,
    l4: L4,
    shaping: Shaping,
) -> Option<Verdict> {
    let counters = COUNTERS.get_ptr_mut(slot)?;
    // SAFETY: the context pointer is valid for the whole run; mark is readable and writable.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if action.kind == ACTION_DUPLICATE && mark & action.mark != 0 {
        // Our own copy, back through this hook (a clone redirected to the same device runs its
        // TC programs again): take the mark off and let it go, uncounted.
        ctx.set_mark(mark & !action.mark);
        return Some(Verdict::Pass);
    }
    let event = happens(slot, action);
    let (mut drop, mut full, mut copied, mut corrupted, mut reset) = (false, false, false, false, false);
    match action.kind {
        ACTION_DUPLICATE if event => {
            // The clone carries the mark (skb_clone copies it), the original gets its own back.
            ctx.set_mark(mark | action.mark);
            let flags = if hook == HOOK_INGRESS { u64::from(BPF_F_INGRESS) } else { 0 };
            // SAFETY: as above; ifindex is the device the packet is on.
            copied = ctx.clone_redirect(unsafe { (*ctx.skb.skb).ifindex }, flags).is_ok();
            ctx.set_mark(mark);
        }
        ACTION_CORRUPT if event => corrupted = corrupt(ctx, action, l4).is_some(),
        ACTION_RESET if event => match reset_back(ctx, action, l4) {
            Some(true) => reset = true,
            Some(false) => drop = true,
            // Not a segment the fault answers (a RST; with connections = new, anything but a
            // SYN): passed, and not counted, as `matched` counts the packets a fault acts on.
            None => return Some(Verdict::Pass),
        },
        ACTION_DUPLICATE | ACTION_CORRUPT | ACTION_RESET => {}
        _ => drop = event,
    }
    let mut verdict = Verdict::Pass;
    if !drop && action.kind == ACTION_SHAPE {
        let skb = ctx.skb.skb;
        let skip_delay = shaping != Shaping::None && reordered(slot, action);
        match shaping {
            Shaping::None => {}
            // A reordered packet is left out of the rule's class: HTB sends a packet whose
            // priority names none of its classes to its direct queue, ahead of the delayed ones.
            Shaping::Priority if skip_delay => {}
            // SAFETY: the context pointer is valid for the whole run; priority is writable.
            Shaping::Priority => unsafe { (*skb).priority = action.priority },
            Shaping::Edt | Shaping::EdtIfb => {
                // A departure time already set (TCP's pacing, 4.20+) is kept when it is ahead
                // of now by less than a second; anything else (a receive time) is not one.
                // SAFETY: as above; tstamp is readable since 5.0, like the write in `run`.
                let ts = unsafe { (*skb).tstamp };
                let start = if shaping == Shaping::Edt && ts > now && ts - now < NSEC_PER_SEC { ts } else { now };
                // The length on the wire, as qdiscs count it (qdisc_pkt_len_init, before the
                // TC egress hook): a GSO packet's headers once per segment. `len` counts them
                // once, which would let GSO traffic pass ~4% above the rate. wire_len is 5.0+,
                // like the tstamp write; 0 where it was not computed.
                // SAFETY: as above.
                let wire = unsafe { (*skb).wire_len };
                let len = u64::from(if wire != 0 { wire } else { unsafe { (*skb).len } });
                match depart(slot, action, start, len, skip_delay) {
                    Some(t) => verdict = Verdict::Depart(t),
                    None => full = true,
                }
            }
        }
    }
    // SAFETY: a per-CPU slot, only written from this CPU with preemption off (TC runs in softirq
    // or with BH disabled).
    unsafe {
        (*counters).matched += 1;
        if drop || full {
            (*counters).dropped += 1;
        }
        if copied {
            (*counters).duplicated += 1;
        }
        if corrupted {
            (*counters).corrupted += 1;
        }
        if reset {
            (*counters).reset += 1;
        }
    }
    Some(if drop {
        Verdict::Drop
    } else if full {
        Verdict::Full
    } else if reset {
        Verdict::Back
    } else {
        verdict
    })
}

/// Whether the rule's event happens to this packet, stepping the rule's chain on this CPU.
/// Probabilities are compared in 64 bits so that DROP_ALWAYS (2^32) is always.
#[inline(always)]
fn happens(slot: u32, action: &RuleAction) -> bool {
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let rnd = u64::from(unsafe { bpf_get_prandom_u32() });
    if action.chain == CHAIN_NONE {
        return rnd < action.chance[0];
    }
    let Some(chain) = CHAINS.get_ptr_mut(slot) else { return rnd < action.chance[0] };
    // SAFETY: a per-CPU slot, only used from this CPU with preemption off (see `act`).
    let bad = unsafe { (*chain).state } != 0;
    let hit = rnd < if bad { action.chance[1] } else { action.chance[0] };
    let next = if action.chain == CHAIN_OUTCOME {
        hit
    } else if action.chain == CHAIN_GE {
        // SAFETY: as above.
        let flip = u64::from(unsafe { bpf_get_prandom_u32() }) < if bad { action.flip[1] } else { action.flip[0] };
        bad != flip
    } else {
        bad
    };
    // SAFETY: as above.
    unsafe { (*chain).state = u32::from(next) };
    hit
}

/// Whether a shaped packet skips its delay (netem's reorder with gap): only once `gap - 1`
/// packets in a row were delayed, and then with the rule's reorder odds. Counted per CPU.
#[inline(always)]
fn reordered(slot: u32, action: &RuleAction) -> bool {
    if action.gap == 0 {
        return false;
    }
    let Some(chain) = CHAINS.get_ptr_mut(slot) else { return false };
    // SAFETY: a per-CPU slot, only used from this CPU with preemption off (see `act`).
    let (state, count) = unsafe { ((*chain).state, (*chain).count) };
    let mut skip = false;
    if count + 1 >= action.gap {
        // SAFETY: bpf_get_prandom_u32 has no preconditions.
        let rnd = u64::from(unsafe { bpf_get_prandom_u32() });
        skip = rnd < if state != 0 { action.reorder[1] } else { action.reorder[0] };
        // SAFETY: as above.
        unsafe { (*chain).state = u32::from(skip) };
    }
    // SAFETY: as above.
    unsafe { (*chain).count = if skip { 0 } else { count.saturating_add(1) } };
    skip
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Rewrites a TCP segment into the RST its peer would answer it with (RFC 9293 3.10.7.1):
/// addresses and ports swapped; to a segment with ACK, `seq = SEG.ACK`; to one without (a SYN),
/// `RST|ACK` with `ack = SEG.SEQ + SYN + FIN`. `None` (left alone) for a RST (never answered,
/// so our own RSTs pass) or, with [`RESET_NEW_ONLY`], anything but a SYN; `Some(false)` when it
/// failed half-way (the packet must then be dropped).
///
/// Only fixed-size fields change, so the segment keeps its length, options and payload (a RST
/// may carry data; receivers ignore it) and every checksum stays right through in-place edits:
/// swaps change no sum, and `bpf_l4_csum_replace` updates the TCP checksum for seq, ack and
/// flags whatever the skb's checksum state (a CHECKSUM_PARTIAL seed does not cover them).
#[inline(always)]
fn reset_back(ctx: &TcContext, action: &RuleAction, l4: L4) -> Option<bool> {
    if l4.offset == 0 || l4.proto != PROTO_TCP {
        return None;
    }
    // seq (4), ack (4), data offset and flags (2), from byte 4 of the TCP header.
    let old: [u8; 10] = ctx.load(l4.offset + 4).ok()?;
    let flags = old[9];
    let syn_only = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if flags & TCP_RST != 0 || (action.flags & RESET_NEW_ONLY != 0 && !syn_only) {
        return None;
    }
    let (seq, ack) = ([old[0], old[1], old[2], old[3]], [old[4], old[5], old[6], old[7]]);
    let (new_seq, new_ack, new_flags) = if flags & TCP_ACK != 0 {
        (ack, [0; 4], TCP_RST)
    } else {
        let step = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        ([0; 4], u32::from_be_bytes(seq).wrapping_add(step).to_be_bytes(), TCP_RST | TCP_ACK)
    };
    let mac: [u8; 12] = ctx.load(0).ok()?;
    let ports: [u16; 2] = ctx.load(l4.offset).ok()?;
    let tcp = TcpEdit { offset: l4.offset, ports, seq, ack, new_seq, new_ack, word: old[8], flags, new_flags };
    // Past the first write the packet is half a reply: on a failure (only an allocation can
    // fail here) it is dropped rather than sent on.
    Some(answer(ctx, mac, &tcp).is_some())
}

/// The TCP fields [`reset_back`] changes: old and new values.
struct TcpEdit {
    offset: usize,
    ports: [u16; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    new_seq: [u8; 4],
    new_ack: [u8; 4],
    /// The data offset byte, kept.
    word: u8,
    flags: u8,
    new_flags: u8,
}

/// Writes the reply: swaps first (Ethernet addresses, as the reply's destination is the sender;
/// IP addresses; ports), which change no checksum (swapped words sum the same, and the Ethernet
/// header is in none), then the TCP fields, with the checksum updated for each.
#[inline(always)]
fn answer(ctx: &TcContext, mac: [u8; 12], t: &TcpEdit) -> Option<()> {
    let swapped = [mac[6], mac[7], mac[8], mac[9], mac[10], mac[11], mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];
    ctx.store(0, &swapped, 0).ok()?;
    if u16::from_be(ctx.skb.protocol() as u16) == ETH_P_IP {
        let a: [u32; 2] = ctx.load(ETH_HLEN + 12).ok()?;
        ctx.store(ETH_HLEN + 12, &[a[1], a[0]], 0).ok()?;
    } else {
        let a: [u32; 8] = ctx.load(ETH_HLEN + 8).ok()?;
        ctx.store(ETH_HLEN + 8, &[a[4], a[5], a[6], a[7], a[0], a[1], a[2], a[3]], 0).ok()?;
    }
    ctx.store(t.offset, &[t.ports[1], t.ports[0]], 0).ok()?;
    let (s, a) = (t.new_seq, t.new_ack);
    let fields: [u8; 10] = [s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3], t.word, t.new_flags];
    ctx.store(t.offset + 4, &fields, 0).ok()?;
    let check = t.offset + 16;
    let word = |b: [u8; 4]| u64::from(u32::from_ne_bytes(b));
    ctx.l4_csum_replace(check, word(t.seq), word(t.new_seq), 4).ok()?;
    ctx.l4_csum_replace(check, word(t.ack), word(t.new_ack), 4).ok()?;
    let (from, to) = (u16::from_ne_bytes([t.word, t.flags]), u16::from_ne_bytes([t.word, t.new_flags]));
    ctx.l4_csum_replace(check, u64::from(from), u64::from(to), 2).ok()
}

/// Flips one random bit of the TCP or UDP payload, then either fixes the L4 checksum for it or
/// makes sure it stays wrong. `None` when there is no payload to corrupt (a pure ACK, a later
/// fragment, another protocol) or the packet could not be written.
///
/// The checksum is updated for the 16-bit word holding the bit (the internet checksum sums
/// words from the start of the L4 header). `bpf_l4_csum_replace` without BPF_F_PSEUDO_HDR fixes
/// a complete checksum and leaves a CHECKSUM_PARTIAL one alone (the stack or NIC will sum the
/// damaged payload: fixed either way). To break it, the change is undone in the checksum as if
/// the pseudo-header had changed the other way: a complete checksum then misses the flip, and a
/// CHECKSUM_PARTIAL seed is offset so that the checksum computed later is the undamaged one's.
#[inline(always)]
fn corrupt(ctx: &TcContext, action: &RuleAction, l4: L4) -> Option<()> {
    if l4.offset == 0 {
        return None;
    }
    // The header's length and where its checksum is.
    let (header, check) = match l4.proto {
        // TCP's data offset: the high nibble of byte 12, in 32-bit words.
        PROTO_TCP => (usize::from(ctx.load::<u8>(l4.offset + 12).ok()? >> 4) * 4, 16),
        PROTO_UDP => (8, 6),
        _ => return None,
    };
    let start = l4.offset + header;
    let len = ctx.len() as usize;
    if start >= len {
        return None;
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let bit = unsafe { bpf_get_prandom_u32() } as usize % ((len - start) * 8);
    let at = start + bit / 8;
    let odd = (at - l4.offset) & 1 == 1;
    let word_at = if odd { at - 1 } else { at };
    // The last byte of an odd-length payload is summed as a word padded with a zero byte.
    let old: [u8; 2] = if word_at + 2 <= len { ctx.load(word_at).ok()? } else { [ctx.load::<u8>(word_at).ok()?, 0] };
    let flip = 1u8 << (bit % 8);
    let new = if odd { [old[0], old[1] ^ flip] } else { [old[0] ^ flip, old[1]] };
    let byte = if odd { new[1] } else { new[0] };
    let (from, to) = (u64::from(u16::from_ne_bytes(old)), u64::from(u16::from_ne_bytes(new)));
    // UDP over IPv4 may carry no checksum (0): keep it so; a computed 0 is written as 0xffff.
    let mangled = if l4.proto == PROTO_UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    if action.flags & CORRUPT_FIX_CHECKSUM != 0 {
        // The payload and the checksum change by opposite amounts: skb->csum (CHECKSUM_COMPLETE,
        // the sum of the whole packet) stays right without recomputing.
        ctx.store(at, &byte, 0).ok()?;
        ctx.l4_csum_replace(l4.offset + check, from, to, mangled | 2).ok()?;
    } else {
        ctx.store(at, &byte, u64::from(BPF_F_RECOMPUTE_CSUM)).ok()?;
        ctx.l4_csum_replace(l4.offset + check, to, from, u64::from(BPF_F_PSEUDO_HDR) | mangled | 2).ok()?;
    }
    Some(())
}

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The departure time of a packet of `len` bytes that could leave at `start`, or `None` when
/// the rate's queue is full. Rate first (a bottleneck link), then delay and jitter (the path),
/// which a reordered packet (`skip_delay`) skips.
#[inline(always)]
fn depart(slot: u32, action: &RuleAction, start: u64, len: u64, skip_delay: bool) -> Option<u64> {
    let state = SHAPES.get_ptr_mut(slot)?;
    let mut t = start;
    if action.rate_bytes != 0 {
        // A token bucket in time: the rule's clock may lag `start` by the burst, never more.
        let floor = start.saturating_sub(action.burst_ns);
        // SAFETY: a map value valid for the run; races between CPUs are tolerated (ShapeState).
        let last = unsafe { (*state).t_last };
        let next = if last > floor { last } else { floor } + len * NSEC_PER_SEC / action.rate_bytes;
        if next > start + action.queue_ns {
            return None;
        }
        // SAFETY: as above.
        unsafe { (*state).t_last = next };
        if next > t {
            t = next;
        }
    }
    if skip_delay {
        return Some(t);
    }
    Some(t + delay(action, state))
}

/// The delay for one packet: `delay_ns` plus jitter drawn as netem's `tabledist` does, with
/// netem's correlation (`get_crandom`), never below zero.
#[inline(always)]
fn delay(action: &RuleAction, state: *mut ShapeState) -> u64 {
    let jitter = u64::from(action.jitter_ns);
    if jitter == 0 {
        return action.delay_ns;
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let mut rnd = u64::from(unsafe { bpf_get_prandom_u32() });
    if action.correlation != 0 {
        let rho = u64::from(action.correlation) + 1;
        // SAFETY: a map value valid for the run (see `depart`).
        let last = u64::from(unsafe { (*state).last_rnd });
        // Fits 64 bits: at most (2^32 - 1) * 2^32.
        rnd = (rnd * ((1 << 32) - rho) + last * rho) >> 32;
        // SAFETY: as above.
        unsafe { (*state).last_rnd = rnd as u32 };
    }
    if action.distribution == DIST_UNIFORM {
        // jitter <= MAX_JITTER_NS, so 2 * jitter fits the 32 bits rnd has.
        return (action.delay_ns + rnd % (2 * jitter)).saturating_sub(jitter);
    }
    let Some(&t) = DIST.get((rnd as u32) % DIST_SIZE) else { return action.delay_ns };
    // netem's `x / NETEM_DIST_SCALE + (sigma / NETEM_DIST_SCALE) * t`, rounded, on magnitudes
    // (the BPF ISA before v4 has no signed division); DIST_SCALE is 2^13.
    let scale = DIST_SCALE as u64;
    let magnitude = u64::from(t.unsigned_abs());
    let x = ((jitter % scale) * magnitude + scale / 2) / scale + (jitter / scale) * magnitude;
    if t >= 0 { action.delay_ns + x } else { action.delay_ns.saturating_sub(x) }
}

/// Reads the IP header (at `l3`: after the Ethernet header for TC, which gives the program the
/// frame from the MAC header on both hooks; 0 for cgroup programs) and, for TCP/UDP first
/// fragments, the ports. Each header is copied in
/// one `bpf_skb_load_bytes` (the ports in another): a helper call is the main per-packet cost
/// of an unmatched packet, and field by field it took 7 calls for IPv4 and 11 for IPv6.
#[inline(always)]
fn parse(skb: &SkBuff, l3: usize) -> Option<Packet> {
    let family;
    let mut proto: u8;
    let mut src = [0u32; 4];
    let mut dst = [0u32; 4];
    let l4;
    // Addresses stay raw words in wire byte order, as the map keys hold them.
    let word = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    // skb->protocol is the frame's L3 protocol, big-endian in the low 16 bits.
    match u16::from_be(skb.protocol() as u16) {
        ETH_P_IP => {
            let h: [u8; 20] = skb.load(l3).ok()?;
            let frag = u16::from_be_bytes([h[6], h[7]]);
            family = FAMILY_V4;
            proto = h[9];
            src[0] = word(&h, 12);
            dst[0] = word(&h, 16);
            // Later fragments carry no L4 header: they are matched as port 0.
            let first_fragment = frag & 0x1fff == 0;
            l4 = if first_fragment { Some(l3 + usize::from(h[0] & 0x0f) * 4) } else { None };
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = skb.load(l3).ok()?;
            family = FAMILY_V6;
            // Only the fixed header's next header is read (no loops on 4.19): a packet with
            // extension headers is matched as protocol "other".
            proto = h[6];
            src = [word(&h, 8), word(&h, 12), word(&h, 16), word(&h, 20)];
            dst = [word(&h, 24), word(&h, 28), word(&h, 32), word(&h, 36)];
            l4 = Some(l3 + 40);
        }
        _ => return None,
    }
    let (mut sport, mut dport, mut l4_offset) = (0, 0, 0);
    match proto {
        PROTO_TCP | PROTO_UDP => {
            if let Some(off) = l4 {
                // Raw, in wire byte order, like the addresses.
                let p: [u8; 4] = skb.load(off).ok()?;
                sport = u16::from_ne_bytes([p[0], p[1]]);
                dport = u16::from_ne_bytes([p[2], p[3]]);
                l4_offset = off;
            }
        }
        PROTO_ICMP if family == FAMILY_V4 => {}
        PROTO_ICMPV6 if family == FAMILY_V6 => {
            // Neighbour discovery (router and neighbour solicitations and advertisements,
            // redirects: types 133-137) is left alone, as ARP is: a fault on an address must
            // not make the kernel mark its neighbour FAILED and fail connects with EHOSTUNREACH.
            // One more load, for ICMPv6 packets only.
            if let Some(off) = l4
                && matches!(skb.load::<u8>(off), Ok(133..=137))
            {
                return None;
            }
        }
        _ => proto = PROTO_OTHER,
    }
    Some(Packet { family, proto, src, dst, sport, dport, l4: l4_offset })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
