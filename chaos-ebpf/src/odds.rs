//! Chains and odds: whether a rule's event happens to a packet, and whether a shaped packet
//! skips its delay, with the rule's memory kept per CPU in `CHAINS`.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use chaos_common::{ChainKind, RuleAction};

use crate::maps::CHAINS;

/// Whether the rule's event happens to this packet, stepping the rule's chain on this CPU.
/// Probabilities are compared in 64 bits so that DROP_ALWAYS (2^32) is always.
#[inline(always)]
pub(crate) fn happens(slot: u32, action: &RuleAction) -> bool {
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let rnd = u64::from(unsafe { bpf_get_prandom_u32() });
    if action.chain == ChainKind::None as u32 {
        return rnd < action.chance[0];
    }
    let Some(chain) = CHAINS.get_ptr_mut(slot) else { return rnd < action.chance[0] };
    // SAFETY: a per-CPU slot, only used from this CPU with preemption off (see `act`).
    let bad = unsafe { (*chain).state } != 0;
    let hit = rnd < if bad { action.chance[1] } else { action.chance[0] };
    let next = if action.chain == ChainKind::Outcome as u32 {
        hit
    } else if action.chain == ChainKind::GilbertElliott as u32 {
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
pub(crate) fn reordered(slot: u32, action: &RuleAction) -> bool {
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
