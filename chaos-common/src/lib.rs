//! The kernel/user ABI of chaos-daemon: every map key and value both sides read, and the
//! constants that give them meaning. Every type is `#[repr(C)]` with explicit padding fields so
//! that its layout is the same on both sides and no uninitialised byte ever reaches a map key.
//!
//! # How a packet finds its rule
//! Lookups are a fixed chain, whatever the number of rules:
//! 1. [`ACTIVE`](map_names::ACTIVE)`[0]` gives the live generation (rules are swapped by writing a
//!    whole new generation and flipping this one value, so a change is atomic for packets).
//! 2. The scope: the interface's ifindex, unless the packet's cgroup has rules of its own there:
//!    then `SCOPES` with [`ScopeKey`] gives a cgroup scope (egress, when
//!    [`ActiveMap::SCOPED_BIT`] says the generation has any; the cgroup programs always look).
//! 3. `ADDRS` (LPM trie) with [`AddrKey`] for the source address, then for the destination:
//!    each gives an address class.
//! 4. `PAIRS` (hash) with [`PairKey`] gives the class of the (source, destination) pair.
//! 5. `PORTS` (LPM trie) with [`PortKey`] for protocol and destination port, then for the source
//!    port: the last gives the rule slot. A class value with [`SLOT_BIT`] is the slot already
//!    (its strongest rule acts on every packet that gets there): the chain stops there.
//! 6. `RULES[slot]` gives the [`RuleAction`]; a rule past its deadline is ignored. `COUNTERS[slot]`
//!    (per CPU) counts it.
//! 7. Only for a rule with memory (correlation, Gilbert–Elliott, reorder): `CHAINS[slot]` (per
//!    CPU) holds its [`Chain`]. Only for a rule that shapes (delay, jitter, rate): `SHAPES[slot]` keeps its
//!    mutable state, and `DIST` holds the jitter distribution table.
//!
//! User space (chaos-daemon's `compile` module) precomputes the classes so that each lookup's
//! longest match already stands for every rule that can still match.
#![no_std]

/// The hook a rule is matched on: [`AddrKey::hook`] and [`ScopeKey::hook`] hold it as a `u8`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Ingress = 0,
    Egress = 1,
    /// Not a TC hook: `connect()` of a socket in a cgroup (cgroup/connect4 and connect6
    /// programs), matched by destination address, protocol and port; its scopes have ifindex 0.
    Connect = 3,
}

/// Address family: [`AddrKey::family`] holds it as a `u8`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

/// Which packet address an [`AddrKey`] or port a [`PortKey`] describes: their `side` holds it
/// as a `u8`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Src = 0,
    Dst = 1,
}

/// Protocols as [`PortKey::proto`] holds them (as a `u8`): their IP protocol numbers. Any
/// protocol without its own entry is looked up as [`Proto::Other`], so a rule for "any protocol"
/// needs a bounded number of entries.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
    Icmpv6 = 58,
    Other = 255,
}

impl Proto {
    /// The raw values, for code that matches a packet's protocol byte in patterns (where
    /// `Proto::Tcp as u8` cannot stand).
    pub const ICMP: u8 = Self::Icmp as u8;
    pub const TCP: u8 = Self::Tcp as u8;
    pub const UDP: u8 = Self::Udp as u8;
    pub const ICMPV6: u8 = Self::Icmpv6 as u8;
    pub const OTHER: u8 = Self::Other as u8;
    /// Every protocol with entries of its own.
    pub const ALL: [Self; 5] = [Self::Tcp, Self::Udp, Self::Icmp, Self::Icmpv6, Self::Other];
}

/// Bits of [`AddrKey`] before the address: an LPM prefix length is this plus the CIDR length.
pub const ADDR_KEY_FIXED_BITS: u32 = 64;
/// Bits of [`PortKey`] before the port: an LPM prefix length is this plus the port prefix.
pub const PORT_KEY_FIXED_BITS: u32 = 48;

/// Class ids carry the generation in their top bit, so the two generations' `PAIRS` and `PORTS`
/// entries never collide and need no generation field of their own.
pub const CLASS_GEN_BIT: u32 = 1 << 31;

/// A `PAIRS` or destination-port `PORTS` value with this bit is no class but the acting rule's
/// slot (in the bits below it): the strongest rule of that class matches every protocol and
/// port left to look at, so the rest of the chain would only lead to it. A partition of a host
/// (any protocol, any port) thus needs no `PORTS` entry at all, and its packets one lookup
/// less. Class ids stay below it.
pub const SLOT_BIT: u32 = 1 << 30;

/// The slot a class value stands for, if it is one ([`SLOT_BIT`]).
#[inline(always)]
pub const fn slot_of(value: u32) -> Option<u32> {
    if value & SLOT_BIT != 0 { Some(value & !SLOT_BIT) } else { None }
}

/// Version of this ABI, kept in `ACTIVE[`[`ActiveMap::ABI`]`]` of the pinned maps: a daemon
/// finding pinned maps of another version does not reuse them. Bump it with any layout or
/// meaning change here.
pub const ABI_VERSION: u32 = 8;

/// The `ACTIVE` array: its indexes, and the bits of the live word at [`ActiveMap::GENERATION`].
/// Indexes and bits are both `u32`s; their names say which is which.
pub struct ActiveMap;

impl ActiveMap {
    /// Index of the live word: the live generation (bit 0), and [`ActiveMap::SCOPED_BIT`].
    pub const GENERATION: u32 = 0;
    /// Index of the [`ABI_VERSION`] the pinned maps were made with.
    pub const ABI: u32 = 1;
    /// Entries of `ACTIVE`.
    pub const LEN: u32 = 2;
    /// Bit of the live word: the live generation (0 or 1).
    pub const GENERATION_BIT: u32 = 1;
    /// Bit of the live word: the live generation has egress cgroup scopes, so egress programs
    /// look the packet's cgroup up in `SCOPES` (no lookup while no cgroup fault exists).
    pub const SCOPED_BIT: u32 = 2;
}

/// Rule slots: `RULES` and `COUNTERS` are arrays of this length.
pub const MAX_RULES: u32 = 16_384;
/// Capacities of the classification maps (both generations together). A rule set whose compiled
/// form does not fit is refused by the daemon before anything is written.
pub const ADDRS_CAPACITY: u32 = 131_072;
pub const PAIRS_CAPACITY: u32 = 131_072;
pub const PORTS_CAPACITY: u32 = 524_288;
/// (cgroup, interface, hook) entries: a target cgroup and each one below it count once per
/// interface and hook. Preallocated like the others: 16,384 cost about 1 MB of kernel memory.
pub const SCOPES_CAPACITY: u32 = 16_384;
/// Scope ids of cgroup scopes have this bit; an ifindex never does (ifindexes are positive
/// `int`s), so the two kinds share [`AddrKey::scope`].
pub const SCOPE_CGROUP_BIT: u32 = 1 << 31;

/// What a rule does: [`RuleAction::kind`] holds it as a `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Loss = 1,
    Partition = 2,
    /// Delay, jitter and/or rate, with an optional loss (the rule's event is a drop).
    Shape = 3,
    /// The event is a copy of the packet, sent once more on the same device and hook.
    Duplicate = 4,
    /// The event is one flipped bit in the TCP or UDP payload.
    Corrupt = 5,
    /// A TCP segment is turned into a RST back to its sender, as its peer would answer.
    Reset = 6,
    /// `connect()` fails at once with [`RuleAction::errno`] (the event is a failure).
    ConnectFail = 7,
    /// A DNS query whose name is in `DNS_NAMES` for the rule is answered or lost as
    /// [`RuleAction::dns`] says (the event is that answer or loss); other packets pass.
    Dns = 8,
}

/// What a rule remembers between packets (per CPU, in `CHAINS`): [`RuleAction::chain`] holds it
/// as a `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainKind {
    /// Nothing: every packet is an independent draw with `chance[0]`.
    None = 0,
    /// The state is whether the event happened to the last packet: `chance[1]` after a hit,
    /// `chance[0]` after a miss (correlation that keeps the mean: see the daemon's `Odds`).
    Outcome = 1,
    /// Gilbert–Elliott, as netem's `loss_gilb_ell`: state 0 is good, 1 bad; the event happens
    /// with `chance[state]`, then the state flips when a second draw is below `flip[state]`.
    GilbertElliott = 2,
}

/// How jitter is spread around the delay, as netem does it: [`RuleAction::distribution`] holds
/// it as a `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dist {
    /// `delay - jitter + rnd % (2 * jitter)`.
    Uniform = 0,
    /// From the `DIST` table: `delay + jitter * DIST[rnd % DIST_SIZE] / DIST_SCALE`.
    Table = 1,
}

/// [`RuleAction::flags`]: bits only (no other value shares the field).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleFlags(pub u32);

impl RuleFlags {
    pub const NONE: Self = Self(0);
    /// Corrupt: fix the L4 checksum for the flipped bit (the application receives the damaged
    /// data). Without it the checksum is left wrong, also where the stack or the NIC computes it
    /// later (`CHECKSUM_PARTIAL`), so the receiver drops the packet.
    pub const CORRUPT_FIX_CHECKSUM: Self = Self(1);
    /// Reset: only connection attempts (SYN without ACK) are answered with a RST (refused);
    /// established connections go on.
    pub const RESET_NEW_ONLY: Self = Self(2);

    /// Whether `flag` (one of the flags above) is set.
    #[inline(always)]
    pub const fn has(self, flag: Self) -> bool {
        self.0 & flag.0 != 0
    }
}

// Each index names an entry, each bit one bit of its own.
const _: () = {
    assert!(ActiveMap::GENERATION < ActiveMap::LEN && ActiveMap::ABI < ActiveMap::LEN);
    assert!(ActiveMap::GENERATION != ActiveMap::ABI);
    assert!(ActiveMap::GENERATION_BIT.count_ones() == 1 && ActiveMap::SCOPED_BIT.count_ones() == 1);
    assert!(ActiveMap::GENERATION_BIT & ActiveMap::SCOPED_BIT == 0);
    let (fix, new_only) = (RuleFlags::CORRUPT_FIX_CHECKSUM.0, RuleFlags::RESET_NEW_ONLY.0);
    assert!(fix.count_ones() == 1 && new_only.count_ones() == 1 && fix & new_only == 0);
};

/// Entries of the `DIST` table (netem's distribution tables have 4096 too).
pub const DIST_SIZE: u32 = 4096;
/// `DIST` entries are standard deviations times this (netem's `NETEM_DIST_SCALE`).
pub const DIST_SCALE: i64 = 8192;
/// The longest jitter: `rnd % (2 * jitter)` needs `2 * jitter` to fit the 32 bits of `rnd`.
pub const MAX_JITTER_NS: u64 = 2_000_000_000;
/// The major number of the netem backend's root qdisc (`cd:`): a rule steers a packet into its
/// class by writing `skb->priority = ROOT_MAJOR << 16 | minor` (HTB classifies by it first).
pub const ROOT_MAJOR: u32 = 0xcd;

/// The netem backend's class of a rule: HTB class `cd:minor` with the leaf qdisc `minor:`, which
/// the rule's packets reach through `skb->priority = priority`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetemClassId {
    pub minor: u16,
    pub priority: u32,
}

/// The class of rule slot `slot` (below [`MAX_RULES`]): the one place user space takes a rule's
/// class minor and its priority from. Minors count from 1 (0 names no handle) and skip
/// [`ROOT_MAJOR`] (`cd:` is the root's handle, so no leaf can take it); the last slot's minor
/// stays far below `0xffff` (`ffff:` is clsact's).
pub const fn netem_class(slot: u32) -> NetemClassId {
    let minor = if slot + 1 < ROOT_MAJOR { slot + 1 } else { slot + 2 };
    NetemClassId { minor: minor as u16, priority: ROOT_MAJOR << 16 | minor }
}

const _: () = assert!(netem_class(MAX_RULES - 1).minor < 0xffff);

/// A probability as the programs compare it: an event happens when `bpf_get_prandom_u32()` is
/// below `p * 2^32`, so this (2^32) is "always" (a partition).
pub const DROP_ALWAYS: u64 = 1 << 32;

/// Map names, shared so the daemon and tests open exactly what the program declares.
pub mod map_names {
    pub const ACTIVE: &str = "ACTIVE";
    pub const ADDRS: &str = "ADDRS";
    pub const PAIRS: &str = "PAIRS";
    pub const PORTS: &str = "PORTS";
    pub const RULES: &str = "RULES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SHAPES: &str = "SHAPES";
    pub const CHAINS: &str = "CHAINS";
    pub const DIST: &str = "DIST";
    pub const SCOPES: &str = "SCOPES";
    pub const SESSIONS: &str = "SESSIONS";
    pub const GUARD_PORTS: &str = "GUARD_PORTS";
    pub const SESSION_CONF: &str = "SESSION_CONF";
    pub const SESSION_OVERFLOW: &str = "SESSION_OVERFLOW";
    pub const DNS_NAMES: &str = "DNS_NAMES";
    pub const DNS_LOWER: &str = "DNS_LOWER";
    pub const DNS_PROGS: &str = "DNS_PROGS";
    pub const DNS_TABLES: &str = "DNS_TABLES";
}

/// Program names in the object (also the names the kernel reports, truncated to 15 bytes).
/// Ingress never shapes (ingress has no queue): ingress shaping runs on an IFB device's egress.
pub const PROG_INGRESS: &str = "chaos_ingress";
/// Egress, steering shaped packets into netem classes (`skb->priority`): every kernel.
pub const PROG_EGRESS: &str = "chaos_egress";
/// Egress, giving shaped packets a departure time (`skb->tstamp`, for `fq`): 5.0+ only, as
/// earlier verifiers refuse the write; loaded only when the edt backend is in use.
pub const PROG_EGRESS_EDT: &str = "chaos_egress_edt";
/// On an IFB device's egress, for ingress shaping: rules are matched as ingress rules.
pub const PROG_IFB: &str = "chaos_ifb";
pub const PROG_IFB_EDT: &str = "chaos_ifb_edt";
/// cgroup_skb/ingress on a target cgroup: packets as they reach its sockets, which is where a
/// packet's cgroup is known on ingress. It can only drop: loss and partition.
pub const PROG_CGROUP_INGRESS: &str = "chaos_cg_ingress";
/// cgroup/connect4 and connect6, failing `connect()` with EPERM (the only errno before 5.18).
pub const PROG_CONNECT4: &str = "chaos_connect4";
pub const PROG_CONNECT6: &str = "chaos_connect6";
/// The same with `bpf_set_retval` (5.18+) for any errno; loaded where the kernel accepts them.
pub const PROG_CONNECT4_ERRNO: &str = "chaos_connect4_errno";
pub const PROG_CONNECT6_ERRNO: &str = "chaos_connect6_errno";

/// The DNS rules' program: the TC programs tail-call it (through `DNS_PROGS[0]`) for a packet
/// whose rule is a DNS rule, with the slot in `cb[0]`, the hook in `cb[1]` and the transport
/// header's offset and protocol in `cb[2]` and `cb[3]`.
pub const PROG_DNS: &str = "chaos_dns";
/// Tail-called by `chaos_dns` for a rule with `prefix.*` patterns (`DNS_PROGS[1]`).
pub const PROG_DNS_PREFIX: &str = "chaos_dns_prefix";
/// Tail-called for a query whose name matched (`DNS_PROGS[2]`): answers or drops it.
pub const PROG_DNS_ACT: &str = "chaos_dns_act";

/// On the `sock:inet_sock_set_state` tracepoint: keeps `SESSIONS`, the established TCP sessions
/// whose local port is in `GUARD_PORTS` (the SSH guard's ports), in every network namespace.
pub const PROG_SESSIONS: &str = "chaos_sessions";

/// Entries of `SESSIONS`. When an insert fails (full), `SESSION_OVERFLOW[0]` becomes 1 and the
/// daemon lists sessions by dumping the kernel's TCP table again.
pub const SESSIONS_CAPACITY: u32 = 4096;
/// Entries of `GUARD_PORTS` (key: a port in host order; value: 1).
pub const GUARD_PORTS_CAPACITY: u32 = 64;
/// [`SessionConf`]: a field the tracepoint's record lacks on this kernel.
pub const FIELD_ABSENT: u32 = u32::MAX;
/// The last byte of the tracepoint's record a [`SessionConf`] offset may point below (the
/// record is 72 bytes on 6.x): the program reads nothing past it.
pub const SESSION_RECORD_MAX: u32 = 256;

/// Value of `SESSION_CONF[0]`: where the fields are in the tracepoint's record on this kernel
/// (they moved when `protocol` was added), read by the daemon from tracefs's `format` file.
/// The program does nothing while `ready` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionConf {
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    /// [`FIELD_ABSENT`] before it existed (the tracepoint was TCP-only then).
    pub protocol: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub ready: u32,
}

/// Key of `SESSIONS`: one TCP session as its host sees it (the value is 1). Addresses are in
/// wire order as IPv6, IPv4 ones mapped (`::ffff:a.b.c.d`, as the tracepoint gives them);
/// `family` is [`FAMILY_V4`] for those (their packets are IPv4), else [`FAMILY_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub family: u8,
    pub _pad: u8,
    /// Host order.
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad2: u16,
    pub local: [u32; 4],
    pub remote: [u32; 4],
}

/// Key of `SCOPES`: a cgroup (its cgroup v2 id, as `bpf_skb_cgroup_id` and
/// `bpf_get_current_cgroup_id` return it) on an interface and hook. The value is the scope id
/// (with [`SCOPE_CGROUP_BIT`]) its packets are classified under instead of the ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub generation: u8,
    pub hook: u8,
    pub _pad: u16,
    pub ifindex: u32,
    pub cgroup: u64,
}

/// Data of an `ADDRS` LPM key. The prefix covers `generation..scope` fully, then the CIDR bits
/// of `addr`. `addr` holds the address bytes in wire order (IPv4 in the first word, the rest
/// zero); it is made of words so the program copies it without byte loops.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub generation: u8,
    pub hook: u8,
    pub family: u8,
    pub side: u8,
    /// The interface's ifindex, or a cgroup scope (see [`ScopeKey`]).
    pub scope: u32,
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

/// Value of `RULES`. The shaping fields matter only for [`ActionKind::Shape`]; the edt backend
/// reads `delay_ns..queue_ns`, the netem backend only `priority` (the qdisc class does the rest).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleAction {
    /// An [`ActionKind`].
    pub kind: u32,
    /// netem backend: the `skb->priority` (HTB class id) for shaped packets; 0 for none.
    pub priority: u32,
    /// The rule's event (a drop for loss, partition and shape; a copy; a flipped bit) happens
    /// to a packet when `bpf_get_prandom_u32() < chance[state]`; the state is 0 unless `chain`
    /// says otherwise. [`DROP_ALWAYS`] is always, 0 never.
    pub chance: [u64; 2],
    /// [`ChainKind::GilbertElliott`]: after a packet the state flips when a second draw is below
    /// `flip[state]`.
    pub flip: [u64; 2],
    /// A [`ChainKind`].
    pub chain: u32,
    /// duplicate: the `skb->mark` bit that marks a copy, so it is never copied again.
    pub mark: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) from which the rule is ignored, so a fault ends on
    /// time even when the daemon is stopped or dead; [`NO_DEADLINE`] for none.
    pub deadline_ns: u64,
    pub delay_ns: u64,
    /// At most [`MAX_JITTER_NS`]; 0 for none.
    pub jitter_ns: u32,
    /// netem's correlation: `rho` with 2^32 meaning 100% (`u32::MAX` is the largest).
    pub correlation: u32,
    /// A [`Dist`].
    pub distribution: u32,
    /// corrupt: [`RuleFlags::CORRUPT_FIX_CHECKSUM`]; reset: [`RuleFlags::RESET_NEW_ONLY`].
    pub flags: RuleFlags,
    /// Rate in bytes per second; 0 for no rate limit.
    pub rate_bytes: u64,
    /// Burst: how far (ns) a rule's departure clock may lag `now`, i.e. burst bytes at the rate.
    pub burst_ns: u64,
    /// The rate's queue: a packet whose departure would be more than this (ns) ahead is dropped.
    pub queue_ns: u64,
    /// Reorder (shape rules with a delay), as netem's `reorder ... gap`: once `gap - 1` packets
    /// in a row have been delayed, a packet skips the delay (overtaking them) when a draw is
    /// below `reorder[state]`; the state is whether the last draw did (`[0]` = `[1]` without
    /// correlation). 0: no reordering.
    pub gap: u32,
    /// connect-fail: the errno `connect()` fails with (where the kernel lets a program set it).
    pub errno: u32,
    pub reorder: [u64; 2],
    /// dns: what a matching query gets.
    pub dns: DnsAction,
}

/// What a DNS rule does to a matching query: [`DnsAction::reply`] holds it as a `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsReply {
    /// Answered at once with [`DnsAction::rcode`], no records.
    Error = 1,
    /// Answered with [`DnsAction::v4`] to A queries and [`DnsAction::v6`] to AAAA queries
    /// (an empty NOERROR answer to other types, or when the address is absent).
    Spoof = 2,
    /// As `Spoof`, with addresses drawn at random for each answer (Chaos Mesh's `random`).
    Random = 3,
    /// Lost: the client times out and tries again.
    Drop = 4,
}

/// The DNS part of a [`RuleAction`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsAction {
    /// A [`DnsReply`].
    pub reply: u32,
    /// Error: the response code (2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED).
    pub rcode: u32,
    /// Spoof: the TTL of the records (seconds).
    pub ttl: u32,
    /// Bits: [`DnsAction::HAS_V4`], [`DnsAction::HAS_V6`].
    pub flags: u32,
    /// The query types acted on (host order); 0 ends the list; all 0: every type.
    pub qtypes: [u16; DNS_QTYPES_MAX],
    /// Spoof: the IPv4 address, in wire order.
    pub v4: [u8; 4],
    pub _pad: u32,
    /// Spoof: the IPv6 address, in wire order.
    pub v6: [u8; 16],
}

impl DnsAction {
    pub const HAS_V4: u32 = 1;
    pub const HAS_V6: u32 = 2;
}

/// Bit of `DNS_TABLES[slot]`: the rule's table has `prefix.*` patterns (its own or another
/// fault's), so a name the reversed lookup misses is looked up forward too.
pub const DNS_TABLE_FORWARD: u32 = 1;

/// Query types a DNS rule can be limited to.
pub const DNS_QTYPES_MAX: usize = 8;
/// The longest query name a DNS rule can match, as on the wire (length bytes and the root's
/// zero included: 126 characters written out). Longer names pass unmatched.
pub const DNS_NAME_MAX: usize = 128;
/// The most labels a matched name may have (IPv6 reverse names have 34). Names with more pass
/// unmatched.
pub const DNS_LABELS_MAX: usize = 40;
/// A `DNS_NAMES` value that matches nothing: `*.example.com` stores it for `example.com`
/// itself, which the pattern does not cover.
pub const DNS_NO_SLOT: u32 = u32::MAX;

/// How [`DnsNameKey::name`] holds the name.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DnsForm {
    /// Written out from the root: `example.com` is `moc.elpmaxe.` then a zero byte, so an
    /// LPM prefix of it is a suffix of the name: `*.example.com` is `moc.elpmaxe.`.
    Reversed = 0,
    /// Written out from the start: `.api.` is the prefix of every name below `api.*`'s.
    Forward = 1,
}

/// Data of a `DNS_NAMES` LPM key: a name lower-cased, its labels each starting with a dot (no
/// length bytes), in the rule's table. The prefix covers `slot..form` fully, then the pattern's
/// bytes. The value is the slot of the rule whose pattern it is ([`DNS_NO_SLOT`] for none):
/// the rule a packet's chain ended in, or a weaker DNS rule covering every packet it covers.
/// Bytes other than `a-z`, `0-9`, `-` and `_` in a query's labels become 0xff, so a name with
/// them (or with a dot inside a label) matches no pattern.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsNameKey {
    pub slot: u16,
    /// A [`DnsForm`].
    pub form: u8,
    pub _pad: u8,
    pub name: [u8; DNS_NAME_MAX],
}

/// Bits of [`DnsNameKey`] before the name.
pub const DNS_KEY_FIXED_BITS: u32 = 32;
/// Capacity of `DNS_NAMES`.
pub const DNS_NAMES_CAPACITY: u32 = 16_384;
/// `DNS_LOWER[0]`: the byte each name byte becomes in a key (see [`DnsNameKey`]).
pub fn dns_lower_table() -> [u8; 256] {
    let mut t = [0xff; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => c,
            b'A'..=b'Z' => c + 32,
            _ => 0xff,
        };
        b += 1;
    }
    t
}

/// Value of `CHAINS` (per CPU): a rule's memory between packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// [`ChainKind::Outcome`]: whether the last packet was hit; [`ChainKind::GilbertElliott`]:
    /// 1 in the bad state.
    /// For a reordering shape rule: whether the last reorder draw skipped the delay.
    pub state: u32,
    /// Reorder: packets delayed since the last one that skipped the delay.
    pub count: u32,
}

/// Value of `SHAPES` (one per rule slot, shared by all CPUs: a rate is an aggregate). Written
/// without locks (4.19 has no bpf_spin_lock): concurrent CPUs may lose an update, which lets a
/// little more through than the rate, as in Cilium's EDT rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShapeState {
    /// Departure time of the rule's last packet (rate limiting).
    pub t_last: u64,
    /// Last correlated random number (netem's `crndstate.last`).
    pub last_rnd: u32,
    pub _pad: u32,
}

/// [`RuleAction::deadline_ns`] of a fault that runs until removed.
pub const NO_DEADLINE: u64 = u64::MAX;

/// Value of `COUNTERS` (per CPU; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets this rule was chosen for (a duplicate rule's copies are not counted again).
    pub matched: u64,
    /// Of those, packets it dropped (connect-fail: connects it failed).
    pub dropped: u64,
    /// Copies it sent (duplicate).
    pub duplicated: u64,
    /// Packets it flipped a bit in (corrupt).
    pub corrupted: u64,
    /// Segments it turned into a RST to their sender (reset).
    pub reset: u64,
    /// Queries it answered itself (dns error, spoof, random).
    pub answered: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made only of integers, with explicit padding fields.
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::PairKey {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::RuleAction {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::ShapeState {}
    unsafe impl aya::Pod for super::Chain {}
    unsafe impl aya::Pod for super::ScopeKey {}
    unsafe impl aya::Pod for super::SessionConf {}
    unsafe impl aya::Pod for super::SessionKey {}
    unsafe impl aya::Pod for super::DnsNameKey {}
}

// The layouts are the ABI: a change here must be a conscious one on both sides.
const _: () = {
    assert!(core::mem::size_of::<AddrKey>() == 24);
    assert!(core::mem::size_of::<PairKey>() == 8);
    assert!(core::mem::size_of::<ScopeKey>() == 16);
    assert!(core::mem::size_of::<PortKey>() == 8);
    assert!(core::mem::size_of::<DnsAction>() == 56);
    assert!(core::mem::size_of::<RuleAction>() == 184);
    assert!(core::mem::size_of::<DnsNameKey>() == 4 + DNS_NAME_MAX);
    assert!(core::mem::size_of::<Chain>() == 8);
    assert!(core::mem::size_of::<Counters>() == 48);
    assert!(core::mem::size_of::<ShapeState>() == 16);
    assert!(core::mem::size_of::<SessionConf>() == 32);
    assert!(core::mem::size_of::<SessionKey>() == 40);
};
