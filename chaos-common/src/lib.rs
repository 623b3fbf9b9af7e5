//! The kernel/user ABI of chaos-daemon: every map key and value both sides read, and the
//! constants that give them meaning. Every type is `#[repr(C)]` with explicit padding fields so
//! that its layout is the same on both sides and no uninitialised byte ever reaches a map key.
//!
//! # How a packet finds its rule
//! Lookups are a fixed chain, whatever the number of rules:
//! 1. [`ACTIVE`](map_names::ACTIVE)`[0]` gives the live generation (rules are swapped by writing a
//!    whole new generation and flipping this one value, so a change is atomic for packets).
//! 2. `ADDRS` (LPM trie) with [`AddrKey`] for the source address, then for the destination:
//!    each gives an address class.
//! 3. `PAIRS` (hash) with [`PairKey`] gives the class of the (source, destination) pair.
//! 4. `PORTS` (LPM trie) with [`PortKey`] for protocol and destination port, then for the source
//!    port: the last gives the rule slot.
//! 5. `RULES[slot]` gives the [`RuleAction`]; a rule past its deadline is ignored. `COUNTERS[slot]`
//!    (per CPU) counts it.
//!
//! User space (chaos-daemon's `compile` module) precomputes the classes so that each lookup's
//! longest match already stands for every rule that can still match.
#![no_std]

/// TC hook a program runs on; part of [`AddrKey`].
pub const HOOK_INGRESS: u8 = 0;
pub const HOOK_EGRESS: u8 = 1;

/// Address family in [`AddrKey`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Which packet address an [`AddrKey`] or port a [`PortKey`] describes.
pub const SIDE_SRC: u8 = 0;
pub const SIDE_DST: u8 = 1;

/// Protocol numbers as they appear in [`PortKey::proto`]. Any protocol without its own entry is
/// looked up as [`PROTO_OTHER`], so a rule for "any protocol" needs a bounded number of entries.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_OTHER: u8 = 255;

/// Bits of [`AddrKey`] before the address: an LPM prefix length is this plus the CIDR length.
pub const ADDR_KEY_FIXED_BITS: u32 = 64;
/// Bits of [`PortKey`] before the port: an LPM prefix length is this plus the port prefix.
pub const PORT_KEY_FIXED_BITS: u32 = 48;

/// Class ids carry the generation in their top bit, so the two generations' `PAIRS` and `PORTS`
/// entries never collide and need no generation field of their own.
pub const CLASS_GEN_BIT: u32 = 1 << 31;

/// Version of this ABI, kept in `ACTIVE[`[`ACTIVE_ABI`]`]` of the pinned maps: a daemon finding
/// pinned maps of another version does not reuse them. Bump it with any layout change here.
pub const ABI_VERSION: u32 = 2;
/// Indexes of `ACTIVE`.
pub const ACTIVE_GENERATION: u32 = 0;
pub const ACTIVE_ABI: u32 = 1;
pub const ACTIVE_LEN: u32 = 2;

/// Rule slots: `RULES` and `COUNTERS` are arrays of this length.
pub const MAX_RULES: u32 = 16_384;
/// Capacities of the classification maps (both generations together). A rule set whose compiled
/// form does not fit is refused by the daemon before anything is written.
pub const ADDRS_CAPACITY: u32 = 131_072;
pub const PAIRS_CAPACITY: u32 = 131_072;
pub const PORTS_CAPACITY: u32 = 524_288;

/// [`RuleAction::kind`] values.
pub const ACTION_LOSS: u32 = 1;
pub const ACTION_PARTITION: u32 = 2;

/// A packet is dropped when `bpf_get_prandom_u32() < drop_threshold`: `p * 2^32` for loss, and
/// `2^32` (always) for a partition.
pub const DROP_ALWAYS: u64 = 1 << 32;

/// Map names, shared so the daemon and tests open exactly what the program declares.
pub mod map_names {
    pub const ACTIVE: &str = "ACTIVE";
    pub const ADDRS: &str = "ADDRS";
    pub const PAIRS: &str = "PAIRS";
    pub const PORTS: &str = "PORTS";
    pub const RULES: &str = "RULES";
    pub const COUNTERS: &str = "COUNTERS";
}

/// Program names in the object (also the names the kernel reports, truncated to 15 bytes).
pub const PROG_INGRESS: &str = "chaos_ingress";
pub const PROG_EGRESS: &str = "chaos_egress";

/// Data of an `ADDRS` LPM key. The prefix covers `generation..ifindex` fully, then the CIDR bits
/// of `addr`. `addr` holds the address bytes in wire order (IPv4 in the first word, the rest
/// zero); it is made of words so the program copies it without byte loops.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub generation: u8,
    pub hook: u8,
    pub family: u8,
    pub side: u8,
    pub ifindex: u32,
    pub addr: [u32; 4],
}

/// Key of `PAIRS`: the source and destination address classes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub src_class: u32,
    pub dst_class: u32,
}

/// Data of a `PORTS` LPM key. For the destination-port step `class` is the pair class and
/// `proto` the packet's protocol; for the source-port step `class` is the class the first step
/// returned and `proto` is 0. `port` holds the two port bytes in wire (big-endian) order, so an
/// LPM prefix of it is a port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub class: u32,
    pub proto: u8,
    pub side: u8,
    pub port: u16,
}

/// Value of `RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleAction {
    pub kind: u32,
    pub _pad: u32,
    pub drop_threshold: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) from which the rule is ignored, so a fault ends on
    /// time even when the daemon is stopped or dead; [`NO_DEADLINE`] for none.
    pub deadline_ns: u64,
}

/// [`RuleAction::deadline_ns`] of a fault that runs until removed.
pub const NO_DEADLINE: u64 = u64::MAX;

/// Value of `COUNTERS` (per CPU; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets this rule was chosen for.
    pub matched: u64,
    /// Of those, packets it dropped.
    pub dropped: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made only of integers, with explicit padding fields.
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::PairKey {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::RuleAction {}
    unsafe impl aya::Pod for super::Counters {}
}

// The layouts are the ABI: a change here must be a conscious one on both sides.
const _: () = {
    assert!(core::mem::size_of::<AddrKey>() == 24);
    assert!(core::mem::size_of::<PairKey>() == 8);
    assert!(core::mem::size_of::<PortKey>() == 8);
    assert!(core::mem::size_of::<RuleAction>() == 24);
    assert!(core::mem::size_of::<Counters>() == 16);
};
