//! DNS rules: a query whose name is in the rule's table is answered (an error, or spoofed
//! addresses) or lost. The TC programs tail-call `chaos_dns` for packets whose rule is a DNS
//! rule (see chaos-common's `PROG_DNS`), so they grow by a tail call only.
//!
//! Three programs, each under 4.19's 4096 instructions, chained by tail calls through
//! `DNS_PROGS` and passing the query in a per-CPU scratch value: `chaos_dns` parses the query
//! and looks its name up reversed (exact names, `*.suffix`); `chaos_dns_prefix` looks it up
//! forward (`prefix.*`), for a table with such patterns (`DNS_TABLES`); `chaos_dns_act` answers or drops it.
//!
//! Kept to 4.19's rules: every loop is unrolled (`seq!`), names are bounded by
//! `DNS_NAME_MAX` and `DNS_LABELS_MAX`, and the name is matched by one or two LPM lookups
//! (chaos-common's `DnsNameKey`), whatever the number of names.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_skb_change_tail, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, ProgramArray, lpm_trie::Key},
    programs::TcContext,
};
use chaos_common::{
    DNS_KEY_FIXED_BITS, DNS_LABELS_MAX, DNS_NAME_MAX, DNS_NAMES_CAPACITY, DNS_NO_SLOT, DNS_TABLE_FORWARD, DnsAction,
    DnsForm, DnsNameKey, DnsReply, Hook, MAX_RULES, Proto, RuleAction,
};
use seq_macro::seq;

use crate::{
    maps::{COUNTERS, RULES},
    odds::happens,
    packet::{ETH_HLEN, ETH_P_IP},
    reset::swap_ends,
    tc::{back, lost},
};

#[map]
pub(crate) static DNS_NAMES: LpmTrie<DnsNameKey, u32> = LpmTrie::with_max_entries(DNS_NAMES_CAPACITY, 0);
#[map]
pub(crate) static DNS_LOWER: Array<[u8; 256]> = Array::with_max_entries(1, 0);
/// Per rule slot: [`DNS_TABLE_FORWARD`] when its table has `prefix.*` patterns.
#[map]
pub(crate) static DNS_TABLES: Array<u32> = Array::with_max_entries(MAX_RULES, 0);
#[map]
pub(crate) static DNS_PROGS: ProgramArray = ProgramArray::with_max_entries(3, 0);
#[map]
static DNS_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for a query's name and the keys made of it (too big for the stack).
#[repr(C)]
struct Scratch {
    /// The name as on the wire, and its type and class.
    raw: [u8; DNS_NAME_MAX + 8],
    /// Where each label's length byte is.
    labels: [u8; DNS_LABELS_MAX],
    /// The byte `reversed` copies next.
    at: usize,
    /// The name's root byte and number of labels (see `labels`).
    end: usize,
    count: usize,
    /// The name as a `DNS_NAMES` key.
    key: Key<DnsNameKey>,
    /// Where the DNS message starts, its header, and the query's type (host order).
    dns: usize,
    header: [u8; DNS_HEADER],
    qtype: u16,
    /// The rule whose pattern matched.
    acting: u32,
    /// The answer's UDP segment, for its checksum (a multiple of 4 bytes, zero-padded).
    segment: [u32; SEGMENT_WORDS],
}

const SEGMENT_WORDS: usize = 64;
const NAME_MASK: usize = DNS_NAME_MAX - 1;
// The unrolled loops below are written for these bounds.
const _: () = assert!(DNS_NAME_MAX == 128 && DNS_LABELS_MAX == 40 && SEGMENT_WORDS == 64);

const DNS_HEADER: usize = 12;
const QR: u8 = 0x80;
const OPCODE: u8 = 0x78;
const RD: u8 = 0x01;
const RA: u8 = 0x80;
const CD: u8 = 0x10;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// Hands the packet to `chaos_dns` with what it needs in `cb`. Returns only if the tail call
/// failed (the program is not in `DNS_PROGS`): the packet then passes.
#[inline(always)]
pub(crate) fn enter(ctx: &TcContext, hook: Hook, slot: u32, l4: usize, proto: u8) {
    // A later fragment has no ports, let alone a query.
    if l4 == 0 {
        return;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the whole run; cb is writable from TC.
    unsafe {
        (*skb).cb[0] = slot;
        (*skb).cb[1] = hook as u32;
        (*skb).cb[2] = l4 as u32;
        (*skb).cb[3] = u32::from(proto);
        DNS_PROGS.tail_call(ctx, STAGE_FIND);
    }
}

/// `DNS_PROGS` indexes.
pub(crate) const STAGE_FIND: u32 = 0;
pub(crate) const STAGE_PREFIX: u32 = 1;
pub(crate) const STAGE_ACT: u32 = 2;

/// `chaos_dns`: parses the query `enter` handed over and looks its name up reversed; on to
/// `chaos_dns_act` when a rule's pattern matches, or to `chaos_dns_prefix`. The packet passes
/// when it is not a query, its name matches nothing, or a tail call fails.
#[inline(always)]
pub(crate) fn find(ctx: &TcContext) -> i32 {
    if let Some(next) = try_find(ctx) {
        // SAFETY: the context is the program's own.
        unsafe { DNS_PROGS.tail_call(ctx, next) };
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_find(ctx: &TcContext) -> Option<u32> {
    let skb = ctx.skb.skb;
    // SAFETY: as in `enter`.
    let (slot, l4, proto) = unsafe { ((*skb).cb[0], (*skb).cb[2] as usize, (*skb).cb[3] as u8) };
    let dns = if proto == Proto::UDP {
        l4 + 8
    } else if proto == Proto::TCP {
        // The message follows its two-byte length; a segment that does not start with one is
        // not looked at (a client writes its query in one go).
        l4 + usize::from(ctx.load::<u8>(l4 + 12).ok()? >> 4) * 4 + 2
    } else {
        return None;
    };
    let header: [u8; DNS_HEADER] = ctx.load(dns).ok()?;
    // A standard query with one question; anything else (answers above all) passes.
    if header[2] & (QR | OPCODE) != 0 || header[4] != 0 || header[5] != 1 {
        return None;
    }
    let s = scratch()?;
    let loaded = load(ctx, dns + DNS_HEADER, &mut s.raw[..DNS_NAME_MAX + 4])?;
    let (end, labels) = labels(s)?;
    // The type and class must have been loaded with the name.
    if end + 5 > loaded {
        return None;
    }
    s.qtype = u16::from_be_bytes([*s.raw.get(end + 1)?, *s.raw.get(end + 2)?]);
    s.dns = dns;
    s.header = header;
    let lower = DNS_LOWER.get(0)?;
    reversed(s, lower, slot, end, labels);
    if let Some(&acting) = DNS_NAMES.get(&s.key)
        && acting != DNS_NO_SLOT
    {
        s.acting = acting;
        return Some(STAGE_ACT);
    }
    (*DNS_TABLES.get(slot)? & DNS_TABLE_FORWARD != 0).then_some(STAGE_PREFIX)
}

/// `chaos_dns_prefix`: the forward lookup of the name `chaos_dns` parsed; on to
/// `chaos_dns_act` if a rule's pattern matches.
#[inline(always)]
pub(crate) fn prefix(ctx: &TcContext) -> i32 {
    if try_prefix(ctx).is_some() {
        // SAFETY: the context is the program's own.
        unsafe { DNS_PROGS.tail_call(ctx, STAGE_ACT) };
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_prefix(ctx: &TcContext) -> Option<()> {
    // SAFETY: as in `enter`.
    let slot = unsafe { (*ctx.skb.skb).cb[0] };
    let s = scratch()?;
    let lower = DNS_LOWER.get(0)?;
    forward(s, lower, slot);
    let acting = *DNS_NAMES.get(&s.key)?;
    if acting == DNS_NO_SLOT {
        return None;
    }
    s.acting = acting;
    Some(())
}

/// `chaos_dns_act`: what the matched query gets, as a return code.
#[inline(always)]
pub(crate) fn act(ctx: &TcContext) -> i32 {
    // SAFETY: as in `enter`.
    let hook = if unsafe { (*ctx.skb.skb).cb[1] } == Hook::Egress as u32 { Hook::Egress } else { Hook::Ingress };
    match try_act(ctx) {
        Some(Outcome::Drop) => lost(hook),
        Some(Outcome::Answered) => back(ctx, hook),
        Some(Outcome::Broken) => TC_ACT_SHOT,
        None => TC_ACT_UNSPEC,
    }
}

enum Outcome {
    Drop,
    Answered,
    /// Rewriting failed half-way: not a query any more, not yet an answer.
    Broken,
}

/// What the query gets, or `None` when it passes (the rule ended, another type, the odds).
#[inline(always)]
fn try_act(ctx: &TcContext) -> Option<Outcome> {
    // SAFETY: as in `enter`.
    let (l4, proto) = unsafe { ((*ctx.skb.skb).cb[2] as usize, (*ctx.skb.skb).cb[3] as u8) };
    let s = scratch()?;
    let acting = s.acting;
    let action = RULES.get(acting)?;
    // A weaker rule's table entries live as long as it does: its own deadline holds.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    if unsafe { bpf_ktime_get_ns() } >= action.deadline_ns || !wanted(&action.dns, s.qtype) {
        return None;
    }
    let counters = COUNTERS.get_ptr_mut(acting)?;
    let event = happens(acting, action);
    let drop = event && (action.dns.reply == DnsReply::Drop as u32 || proto != Proto::UDP);
    let answer = event && !drop;
    let written = answer && respond(ctx, s, action, l4).is_some();
    // SAFETY: a per-CPU slot, only written from this CPU with preemption off.
    unsafe {
        (*counters).matched += 1;
        if drop {
            (*counters).dropped += 1;
        }
        if written {
            (*counters).answered += 1;
        }
    }
    if drop {
        Some(Outcome::Drop)
    } else if written {
        Some(Outcome::Answered)
    } else if answer {
        Some(Outcome::Broken)
    } else {
        None
    }
}

/// This CPU's scratch value: a program and the ones it tail-calls run on one CPU, with
/// preemption off (TC), so it carries the query from one to the next.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    let p = DNS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value, used by these programs only, one at a time.
    Some(unsafe { &mut *p })
}

/// Walks the name's labels in `s.raw`: the offset of its root (zero) byte and the number of
/// labels, their length bytes' offsets in `s.labels`. `None` for a name that is compressed (a
/// query has no reason to be), longer than `DNS_NAME_MAX` or with more labels than
/// `DNS_LABELS_MAX`.
#[inline(always)]
fn labels(s: &mut Scratch) -> Option<(usize, usize)> {
    let (mut pos, mut count, mut done) = (0usize, 0usize, false);
    seq!(K in 0..40 {
        if !done {
            let len = usize::from(s.raw[pos & NAME_MASK]);
            if len == 0 {
                done = true;
            } else {
                if len > 63 {
                    return None;
                }
                s.labels[K] = pos as u8;
                count += 1;
                pos += len + 1;
                if pos >= DNS_NAME_MAX {
                    return None;
                }
            }
        }
    });
    if !done {
        return None;
    }
    // Through memory, so LLVM cannot tell `count` at each label's exit (it would keep a flag
    // per label for the loops that test it, and grow the program by thousands of instructions).
    // SAFETY: plain writes and reads of fields.
    unsafe {
        core::ptr::write_volatile(&mut s.end, pos);
        core::ptr::write_volatile(&mut s.count, count);
        // Masked: the verifier knows nothing of a value read back from memory.
        Some((core::ptr::read_volatile(&s.end) & NAME_MASK, core::ptr::read_volatile(&s.count)))
    }
}

/// Makes `s.key` the name reversed (see chaos-common's `DnsForm`) in `slot`'s table.
#[inline(always)]
fn reversed(s: &mut Scratch, lower: &[u8; 256], slot: u32, end: usize, labels: usize) {
    // Every byte of the name is written below: only the fixed part is set here.
    s.key.prefix_len = DNS_KEY_FIXED_BITS + 8 * DNS_NAME_MAX as u32;
    s.key.data.slot = slot as u16;
    s.key.data.form = DnsForm::Reversed as u8;
    s.key.data._pad = 0;
    // Byte J of the reversed name is byte end-1-J of the written-out one (the length bytes
    // become dots below). Past the name's start the index wraps: those bytes are never read
    // by a match, as every pattern ends at the zero written after the name. The index goes
    // through memory: computed from `end` directly, LLVM computes all 128 ahead and spills
    // them past the 512 bytes of stack.
    s.at = end;
    seq!(J in 0..128 {
        // SAFETY: plain reads and writes of a field.
        let at = unsafe { core::ptr::read_volatile(&s.at) }.wrapping_sub(1);
        unsafe { core::ptr::write_volatile(&mut s.at, at) };
        copy(&s.raw, at, lower, &mut s.key.data.name[J]);
    });
    seq!(K in 0..40 {
        if K < labels {
            let at = end.wrapping_sub(1 + label(&s.labels, K));
            dot(&mut s.key.data.name, at);
        }
    });
    s.key.data.name[end & NAME_MASK] = 0;
}

/// Makes `s.key` the name written out forward in `slot`'s table, from what `chaos_dns` left
/// in the scratch value.
#[inline(always)]
fn forward(s: &mut Scratch, lower: &[u8; 256], slot: u32) {
    s.key.data.slot = slot as u16;
    s.key.data.form = DnsForm::Forward as u8;
    seq!(J in 0..128 {
        copy(&s.raw, J, lower, &mut s.key.data.name[J]);
    });
    // SAFETY: plain reads of fields written by `chaos_dns` (see `labels`).
    let (end, labels) = unsafe { (core::ptr::read_volatile(&s.end) & NAME_MASK, core::ptr::read_volatile(&s.count)) };
    seq!(K in 0..40 {
        if K < labels {
            dot(&mut s.key.data.name, label(&s.labels, K));
        }
    });
    s.key.data.name[end & NAME_MASK] = 0;
}

/// Copies up to `to.len()` bytes (at most 256) from `offset` (as many as the packet has): how
/// many. Unlike `load_bytes`, never asks for 0 bytes, which the verifier refuses.
#[inline(always)]
fn load(ctx: &TcContext, offset: usize, to: &mut [u8]) -> Option<usize> {
    let len = (ctx.len() as usize).checked_sub(offset)?.min(to.len());
    // The length less one (0 wraps around), through the stack: else LLVM folds it back into
    // `len`, or tests `skb->len == offset` instead. Verifiers before 6.x learn no lower bound
    // from `len != 0`, nor any bound from a test against a register (`to.len()` in `checksum`):
    // what they see is `less` below a constant, and the length passed is `less + 1`.
    let mut less = len.wrapping_sub(1);
    // SAFETY: a plain write and read of a local.
    less = unsafe {
        core::ptr::write_volatile(&mut less, less);
        core::ptr::read_volatile(&less)
    };
    if less >= to.len() || less > 255 {
        return None;
    }
    let len = less + 1;
    // SAFETY: `to` holds at least `len` bytes.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, offset as u32, to.as_mut_ptr().cast(), len as u32) };
    (ret == 0).then_some(len)
}

/// `to = lower[raw[at]]`, in program order: left to itself LLVM loads ahead for many bytes at
/// once, and spills past the 512 bytes of stack.
#[inline(always)]
fn copy(raw: &[u8; DNS_NAME_MAX + 8], at: usize, lower: &[u8; 256], to: &mut u8) {
    // SAFETY: `at` is below DNS_NAME_MAX (callers mask it), both are valid references.
    unsafe {
        let b = core::ptr::read_volatile(raw.as_ptr().add(at & NAME_MASK));
        core::ptr::write_volatile(to, lower[usize::from(b)]);
    }
}

/// Where label `k`'s length byte is; read in program order (see `copy`).
#[inline(always)]
fn label(labels: &[u8; DNS_LABELS_MAX], k: usize) -> usize {
    // SAFETY: callers pass constant indexes below DNS_LABELS_MAX.
    usize::from(unsafe { core::ptr::read_volatile(labels.as_ptr().add(k)) })
}

/// Writes the dot that stands for a length byte, in program order (see `copy`).
#[inline(always)]
fn dot(name: &mut [u8; DNS_NAME_MAX], at: usize) {
    // SAFETY: the index is masked below DNS_NAME_MAX.
    unsafe { core::ptr::write_volatile(name.as_mut_ptr().add(at & NAME_MASK), b'.') };
}

/// Whether the rule acts on queries of this type.
#[inline(always)]
fn wanted(dns: &DnsAction, qtype: u16) -> bool {
    let t = &dns.qtypes;
    if t[0] == 0 {
        return true;
    }
    seq!(I in 0..8 {
        if t[I] == qtype {
            return true;
        }
    });
    false
}

/// Rewrites the query into its answer, in place: the header's flags and counts, the
/// addresses and ports swapped, everything after the question cut (EDNS and other additional
/// records), one answer record appended for a spoofed A or AAAA, the lengths and checksums
/// set. `None` if a helper failed.
#[inline(always)]
fn respond(ctx: &TcContext, s: &mut Scratch, action: &RuleAction, l4: usize) -> Option<()> {
    let (dns, query, end, qtype) = (s.dns, s.header, s.end & NAME_MASK, s.qtype);
    let d = &action.dns;
    let error = d.reply == DnsReply::Error as u32;
    let random = d.reply == DnsReply::Random as u32;
    // The record, if one: name (a pointer to the question's), type, class IN, TTL, address.
    // The record, if one: name (a pointer to the question's), type, class IN, TTL, address.
    let ttl = d.ttl.to_be_bytes();
    let head = |t: u16, len: u8| [0xc0, 0x0c, 0, t as u8, 0, 1, ttl[0], ttl[1], ttl[2], ttl[3], 0, len];
    let (a, aaaa) = (!error && qtype == TYPE_A, !error && qtype == TYPE_AAAA);
    let record_len = if a && (random || d.flags & DnsAction::HAS_V4 != 0) {
        16
    } else if aaaa && (random || d.flags & DnsAction::HAS_V6 != 0) {
        28
    } else {
        0
    };
    let rcode = if error { d.rcode as u8 } else { 0 };
    let flags = [QR | (query[2] & RD), RA | (query[3] & CD) | rcode];
    let header = [query[0], query[1], flags[0], flags[1], 0, 1, 0, u8::from(record_len != 0), 0, 0, 0, 0];
    let recompute = u64::from(BPF_F_RECOMPUTE_CSUM);
    ctx.store(dns, &header, recompute).ok()?;

    // The new end: after the question (name, type, class), and the record.
    let question_end = dns + DNS_HEADER + end + 5;
    let total = question_end + record_len;
    // SAFETY: the context pointer, as the helper requires.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut __sk_buff, total as u32, 0) } != 0 {
        return None;
    }
    if record_len == 16 {
        ctx.store(question_end, &head(TYPE_A, 4), recompute).ok()?;
        // SAFETY: bpf_get_prandom_u32 has no preconditions.
        let addr = if random { unsafe { bpf_get_prandom_u32() }.to_ne_bytes() } else { d.v4 };
        ctx.store(question_end + 12, &addr, recompute).ok()?;
    } else if record_len == 28 {
        ctx.store(question_end, &head(TYPE_AAAA, 16), recompute).ok()?;
        if random {
            // A unique local address (fd00::/8), the rest random.
            // SAFETY: as above.
            let r =
                unsafe { [bpf_get_prandom_u32(), bpf_get_prandom_u32(), bpf_get_prandom_u32(), bpf_get_prandom_u32()] };
            let first = (r[0] & !0xff) | 0xfd;
            ctx.store(question_end + 12, &[first, r[1], r[2], r[3]], recompute).ok()?;
        } else {
            ctx.store(question_end + 12, &d.v6, recompute).ok()?;
        }
    }

    swap_ends(ctx, l4)?;
    let segment = total - l4;
    let v4 = u16::from_be(ctx.skb.protocol() as u16) == ETH_P_IP;
    if v4 {
        let old: u16 = ctx.load(ETH_HLEN + 2).ok()?;
        let new = ((total - ETH_HLEN) as u16).to_be();
        ctx.store(ETH_HLEN + 2, &new, recompute).ok()?;
        ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old), u64::from(new), 2).ok()?;
    } else {
        ctx.store(ETH_HLEN + 4, &(segment as u16).to_be(), recompute).ok()?;
    }
    let udp = [(segment as u16).to_be(), 0u16];
    ctx.store(l4 + 4, &udp, recompute).ok()?;
    checksum(ctx, s, l4, segment, v4)
}

/// Sets the UDP checksum of the answer (its field is 0): the segment's sum plus the
/// pseudo-header's, folded. The segment is copied into `s.segment`, zero-padded to whole
/// words, as `bpf_csum_diff` sums words.
#[inline(always)]
fn checksum(ctx: &TcContext, s: &mut Scratch, l4: usize, segment: usize, v4: bool) -> Option<()> {
    if segment > SEGMENT_WORDS * 4 - 4 {
        return None;
    }
    // Volatile, or LLVM makes it a call to memset, whose loop 4.19 refuses.
    seq!(I in 0..64 {
        // SAFETY: a plain write of an element.
        unsafe { core::ptr::write_volatile(&mut s.segment[I], 0) };
    });
    // SAFETY: the segment buffer is SEGMENT_WORDS words; `segment` was checked to fit.
    let bytes = unsafe { core::slice::from_raw_parts_mut(s.segment.as_mut_ptr().cast::<u8>(), SEGMENT_WORDS * 4) };
    if load(ctx, l4, &mut bytes[..segment & 0xff])? != segment {
        return None;
    }
    let words = ((segment + 3) / 4) & (SEGMENT_WORDS - 1);
    // The pseudo-header: both addresses (their order does not change the sum), then zero,
    // protocol and length (IPv4), or length and next header (IPv6): as 16-bit words both
    // sum to protocol + length.
    let tail = (u32::from(Proto::UDP) << 16 | segment as u32).to_be();
    // SAFETY: each buffer holds the size given (words * 4 bytes).
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, s.segment.as_mut_ptr(), (words * 4) as u32, 0) };
    if sum < 0 {
        return None;
    }
    // Every element written: a zeroed array would be a call to memset.
    let sum = if v4 {
        let a: [u32; 2] = ctx.load(ETH_HLEN + 12).ok()?;
        let mut pseudo = [a[0], a[1], tail];
        // SAFETY: as above.
        unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, pseudo.as_mut_ptr(), 12, sum as u32) }
    } else {
        let a: [u32; 8] = ctx.load(ETH_HLEN + 8).ok()?;
        let mut pseudo = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], tail];
        // SAFETY: as above.
        unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, pseudo.as_mut_ptr(), 36, sum as u32) }
    };
    if sum < 0 {
        return None;
    }
    let mut folded = sum as u64;
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    let mut check = !(folded as u16);
    if check == 0 {
        check = 0xffff;
    }
    // The sum was taken over words in wire order, so it is in wire order already.
    ctx.store(l4 + 6, &check, u64::from(BPF_F_RECOMPUTE_CSUM)).ok()
}
