//! The cgroup programs: drops at a cgroup's sockets and failed `connect()`s. They can only
//! drop or fail, so they count and draw odds without the TC programs' actions.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_set_retval, bpf_skb_cgroup_id},
    programs::{SkBuffContext, SockAddrContext},
};
use chaos_common::{ActionKind, ActiveMap, Family, Hook, Proto, RuleAction};

use crate::{
    classify::{cgroup_scope, classify},
    maps::{ACTIVE, COUNTERS},
    odds::happens,
    packet::{Packet, parse},
};

#[inline(always)]
pub(crate) fn ingress_drops(ctx: &SkBuffContext) -> bool {
    let Some(&live) = ACTIVE.get(ActiveMap::GENERATION) else { return false };
    let generation = (live & ActiveMap::GENERATION_BIT) as u8;
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer, valid for the whole run; bpf_skb_cgroup_id is the socket's
    // cgroup here (the daemon loads this program only where the kernel allows the helper).
    let (ifindex, cgroup) = unsafe { ((*skb).ifindex, bpf_skb_cgroup_id(skb)) };
    let Some(scope) = cgroup_scope(generation, Hook::Ingress, ifindex, cgroup) else { return false };
    // cgroup_skb programs see the packet from its network header.
    let Some(pkt) = parse(&ctx.skb, 0) else { return false };
    let Some((slot, action, _)) = classify(generation, Hook::Ingress, scope, &pkt) else { return false };
    // Only dropping rules are given cgroup ingress scopes (the daemon refuses the others).
    count(slot, action)
}

/// 1 lets the `connect()` go on; 0 fails it, with EPERM unless `errno` (5.18's
/// `bpf_set_retval`) sets the rule's errno first. The source is not known yet at connect time:
/// rules here match destination address, protocol and port only.
#[inline(always)]
pub(crate) fn connect(ctx: &SockAddrContext, family: Family, errno: bool) -> i32 {
    let Some(&live) = ACTIVE.get(ActiveMap::GENERATION) else { return 1 };
    let generation = (live & ActiveMap::GENERATION_BIT) as u8;
    // The task's cgroup: connect() runs in the calling process (5.7+ for this program type).
    // SAFETY: bpf_get_current_cgroup_id has no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let Some(scope) = cgroup_scope(generation, Hook::Connect, 0, cgroup) else { return 1 };
    let a = ctx.sock_addr;
    // SAFETY: the context pointer, valid for the whole run; user_ip4/user_ip6/user_port hold
    // the address and port in network byte order, as the packet words do.
    let (proto, port) = unsafe { ((*a).protocol, (*a).user_port) };
    let dst = if family == Family::V4 {
        // SAFETY: as above.
        [unsafe { (*a).user_ip4 }, 0, 0, 0]
    } else {
        // SAFETY: as above; read word by word, the access size the verifier allows.
        unsafe { [(*a).user_ip6[0], (*a).user_ip6[1], (*a).user_ip6[2], (*a).user_ip6[3]] }
    };
    let proto = match proto as u8 {
        Proto::TCP => Proto::TCP,
        Proto::UDP => Proto::UDP,
        _ => Proto::OTHER,
    };
    // The source is unknown: all zeros, which only rules without a source match. Read through
    // a volatile load, or LLVM zeroes the key with a memset call, a loop 4.19 refuses.
    let zero = 0u32;
    // SAFETY: a read of a local (on the stack: a constant's address would be global data).
    let zero = unsafe { core::ptr::read_volatile(&raw const zero) };
    let pkt = Packet { family: family as u8, proto, src: [zero; 4], dst, sport: 0, dport: port as u16, l4: 0 };
    let Some((slot, action, _)) = classify(generation, Hook::Connect, scope, &pkt) else { return 1 };
    if action.kind != ActionKind::ConnectFail as u32 || !count(slot, action) {
        return 1;
    }
    if errno {
        // SAFETY: bpf_set_retval has no preconditions; an errno is a small positive number.
        unsafe { bpf_set_retval(-(action.errno as i32)) };
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
