//! The corrupt rewrite: one flipped bit in a TCP or UDP payload.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use chaos_common::{Proto, RuleAction, RuleFlags};

use crate::packet::L4;

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
pub(crate) fn corrupt(ctx: &TcContext, action: &RuleAction, l4: L4) -> Option<()> {
    if l4.offset == 0 {
        return None;
    }
    // The header's length and where its checksum is.
    let (header, check) = match l4.proto {
        // TCP's data offset: the high nibble of byte 12, in 32-bit words.
        Proto::TCP => (usize::from(ctx.load::<u8>(l4.offset + 12).ok()? >> 4) * 4, 16),
        Proto::UDP => (8, 6),
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
    let mangled = if l4.proto == Proto::UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    if action.flags.has(RuleFlags::CORRUPT_FIX_CHECKSUM) {
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
