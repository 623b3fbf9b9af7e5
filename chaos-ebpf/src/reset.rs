//! The reset rewrite: a TCP segment turned into the RST its peer would answer it with.

use aya_ebpf::programs::TcContext;
use chaos_common::{Proto, RuleAction, RuleFlags};

use crate::packet::{ETH_HLEN, ETH_P_IP, L4};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Rewrites a TCP segment into the RST its peer would answer it with (RFC 9293 3.10.7.1):
/// addresses and ports swapped; to a segment with ACK, `seq = SEG.ACK`; to one without (a SYN),
/// `RST|ACK` with `ack = SEG.SEQ + SYN + FIN`. `None` (left alone) for a RST (never answered,
/// so our own RSTs pass) or, with [`RuleFlags::RESET_NEW_ONLY`], anything but a SYN;
/// `Some(false)` when it failed half-way (the packet must then be dropped).
///
/// Only fixed-size fields change, so the segment keeps its length, options and payload (a RST
/// may carry data; receivers ignore it) and every checksum stays right through in-place edits:
/// swaps change no sum, and `bpf_l4_csum_replace` updates the TCP checksum for seq, ack and
/// flags whatever the skb's checksum state (a CHECKSUM_PARTIAL seed does not cover them).
#[inline(always)]
pub(crate) fn reset_back(ctx: &TcContext, action: &RuleAction, l4: L4) -> Option<bool> {
    if l4.offset == 0 || l4.proto != Proto::TCP {
        return None;
    }
    // seq (4), ack (4), data offset and flags (2), from byte 4 of the TCP header.
    let old: [u8; 10] = ctx.load(l4.offset + 4).ok()?;
    let flags = old[9];
    let syn_only = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if flags & TCP_RST != 0 || (action.flags.has(RuleFlags::RESET_NEW_ONLY) && !syn_only) {
        return None;
    }
    let (seq, ack) = ([old[0], old[1], old[2], old[3]], [old[4], old[5], old[6], old[7]]);
    let (new_seq, new_ack, new_flags) = if flags & TCP_ACK != 0 {
        (ack, [0; 4], TCP_RST)
    } else {
        let step = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        ([0; 4], u32::from_be_bytes(seq).wrapping_add(step).to_be_bytes(), TCP_RST | TCP_ACK)
    };
    let tcp = TcpEdit { offset: l4.offset, seq, ack, new_seq, new_ack, word: old[8], flags, new_flags };
    // Past the first write the packet is half a reply: on a failure (only an allocation can
    // fail here) it is dropped rather than sent on.
    Some(answer(ctx, &tcp).is_some())
}

/// The TCP fields [`reset_back`] changes: old and new values.
struct TcpEdit {
    offset: usize,
    seq: [u8; 4],
    ack: [u8; 4],
    new_seq: [u8; 4],
    new_ack: [u8; 4],
    /// The data offset byte, kept.
    word: u8,
    flags: u8,
    new_flags: u8,
}

/// Writes the reply: the ends swapped (see [`swap_ends`]), then the TCP fields, with the
/// checksum updated for each.
#[inline(always)]
fn answer(ctx: &TcContext, t: &TcpEdit) -> Option<()> {
    swap_ends(ctx, t.offset)?;
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

/// Turns a packet round, for a reply written in its place (a reset's RST, a dns fault's
/// answer): Ethernet addresses (the reply's destination is the sender), IP addresses, and the
/// ports at `l4`. Swapped words sum the same, so no checksum changes, and the Ethernet header
/// is in none.
#[inline(always)]
pub(crate) fn swap_ends(ctx: &TcContext, l4: usize) -> Option<()> {
    let mac: [u8; 12] = ctx.load(0).ok()?;
    let swapped = [mac[6], mac[7], mac[8], mac[9], mac[10], mac[11], mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];
    ctx.store(0, &swapped, 0).ok()?;
    if u16::from_be(ctx.skb.protocol() as u16) == ETH_P_IP {
        let a: [u32; 2] = ctx.load(ETH_HLEN + 12).ok()?;
        ctx.store(ETH_HLEN + 12, &[a[1], a[0]], 0).ok()?;
    } else {
        let a: [u32; 8] = ctx.load(ETH_HLEN + 8).ok()?;
        ctx.store(ETH_HLEN + 8, &[a[4], a[5], a[6], a[7], a[0], a[1], a[2], a[3]], 0).ok()?;
    }
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    ctx.store(l4, &[ports[1], ports[0]], 0).ok()
}
