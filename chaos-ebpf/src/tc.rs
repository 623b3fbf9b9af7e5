//! The TC programs: find the packet's rule, act on it, and turn the verdict into a return code.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    programs::TcContext,
};
use chaos_common::{ActionKind, Hook, RuleAction};

use crate::{
    classify::find_rule,
    corrupt::corrupt,
    maps::COUNTERS,
    odds::{happens, reordered},
    packet::L4,
    reset::reset_back,
    shape::{NSEC_PER_SEC, depart},
};

/// How a program hands shaped packets to the qdisc (see chaos-common's program names).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shaping {
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
pub(crate) fn run(ctx: &TcContext, hook: Hook, shaping: Shaping) -> i32 {
    let skb = ctx.skb.skb;
    match try_run(ctx, hook, shaping) {
        Some(Verdict::Drop) => lost(hook),
        // A full rate queue is the host's own queue overflowing, which a local qdisc reports to
        // the sender too (tbf, htb).
        Some(Verdict::Full) => TC_ACT_SHOT,
        Some(Verdict::Back) => back(ctx, hook),
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

/// The return code of a packet lost on `hook`. On egress, lost as on the wire, unknown to the
/// sender: TC_ACT_SHOT would free the packet and return NET_XMIT_DROP to the sender's stack
/// (ENOBUFS from sendmsg, and TCP's local-drop handling: ETIMEDOUT after ~6 s, cwnd cut without
/// a loss). A redirect to ifindex 0, which names no device, makes skb_do_redirect free it after
/// the sender was told NET_XMIT_SUCCESS, under cls_bpf (4.19 on) and TCX alike; TC_ACT_STOLEN
/// would too, but TCX takes it for TCX_NEXT and passes the packet. Ingress drops are unknown to
/// the sender anyway.
#[inline(always)]
pub(crate) fn lost(hook: Hook) -> i32 {
    if hook != Hook::Egress {
        return TC_ACT_SHOT;
    }
    // SAFETY: bpf_redirect has no preconditions.
    unsafe { bpf_redirect(0, 0) };
    TC_ACT_REDIRECT as i32
}

/// The return code of a packet rewritten into a reply (a reset's RST, a dns answer): out the
/// way it came. A reply to a packet leaving goes up this host's stack, a reply to a packet
/// arriving leaves on the same device; bpf_redirect's flags take effect when the program
/// returns TC_ACT_REDIRECT.
#[inline(always)]
pub(crate) fn back(ctx: &TcContext, hook: Hook) -> i32 {
    let flags = if hook == Hook::Egress { u64::from(BPF_F_INGRESS) } else { 0 };
    // SAFETY: the context pointer is valid for the whole run; bpf_redirect has no other
    // preconditions.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, flags) };
    TC_ACT_REDIRECT as i32
}

/// What to do with the packet: `None` when no rule acts on it.
#[inline(always)]
fn try_run(ctx: &TcContext, hook: Hook, shaping: Shaping) -> Option<Verdict> {
    let (slot, action, now, l4) = find_rule(ctx, hook)?;
    if action.kind == DNS {
        // Returns only if the DNS program is missing: the packet passes.
        crate::dns::enter(ctx, hook, slot, l4.offset, l4.proto);
        return Some(Verdict::Pass);
    }
    act(ctx, hook, slot, action, now, l4, shaping)
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

// `RuleAction::kind` values, matched raw: decoding into an `ActionKind` first costs 14 to 32
// instructions.
const SHAPE: u32 = ActionKind::Shape as u32;
const DUPLICATE: u32 = ActionKind::Duplicate as u32;
const CORRUPT: u32 = ActionKind::Corrupt as u32;
const RESET: u32 = ActionKind::Reset as u32;
const DNS: u32 = ActionKind::Dns as u32;

/// Counts the packet for the rule, and drops, shapes, copies, corrupts or passes it.
#[inline(always)]
fn act(
    ctx: &TcContext,
    hook: Hook,
    slot: u32,
    action: &RuleAction,
    now: u64,
    l4: L4,
    shaping: Shaping,
) -> Option<Verdict> {
    let counters = COUNTERS.get_ptr_mut(slot)?;
    // SAFETY: the context pointer is valid for the whole run; mark is readable and writable.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let kind = action.kind;
    if kind == DUPLICATE && mark & action.mark != 0 {
        // Our own copy, back through this hook (a clone redirected to the same device runs its
        // TC programs again): take the mark off and let it go, uncounted.
        ctx.set_mark(mark & !action.mark);
        return Some(Verdict::Pass);
    }
    let event = happens(slot, action);
    let (mut drop, mut full, mut copied, mut corrupted, mut reset) = (false, false, false, false, false);
    match kind {
        DUPLICATE if event => {
            // The clone carries the mark (skb_clone copies it), the original gets its own back.
            ctx.set_mark(mark | action.mark);
            let flags = if hook == Hook::Ingress { u64::from(BPF_F_INGRESS) } else { 0 };
            // SAFETY: as above; ifindex is the device the packet is on.
            copied = ctx.clone_redirect(unsafe { (*ctx.skb.skb).ifindex }, flags).is_ok();
            ctx.set_mark(mark);
        }
        CORRUPT if event => corrupted = corrupt(ctx, action, l4).is_some(),
        RESET if event => match reset_back(ctx, action, l4) {
            Some(true) => reset = true,
            Some(false) => drop = true,
            // Not a segment the fault answers (a RST; with connections = new, anything but a
            // SYN): passed, and not counted, as `matched` counts the packets a fault acts on.
            None => return Some(Verdict::Pass),
        },
        DUPLICATE | CORRUPT | RESET => {}
        // Loss, partition, shape (its loss); connect-fail never reaches TC.
        _ => drop = event,
    }
    let mut verdict = Verdict::Pass;
    if !drop && kind == SHAPE {
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
