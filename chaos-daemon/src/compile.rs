//! Compiles a rule set into the classification maps' entries (see chaos-common for the lookup
//! chain). Pure: no kernel, so every case is unit-tested.
//!
//! # When several rules match a packet
//! Exactly one rule acts on a packet (per hook): the one with the highest drop probability
//! (a partition beats any loss), ties going to the rule applied first. So adding a fault never
//! weakens one already in place, and only the acting rule's counters count the packet.
//!
//! # Cgroup scopes
//! A rule may be limited to cgroups (a target cgroup and those below it). The packets of those
//! cgroups are classified in a scope of their own, holding their cgroup rules and, on egress,
//! the interface's other rules, so precedence stays exact; cgroups with the same rules share a
//! scope. On ingress a cgroup scope holds its cgroup rules only: it is looked at by the cgroup
//! program, where the packet reaches a socket, after the interface's rules acted at TC.
//!
//! # How
//! Each lookup returns a class standing for the set of rules still possible. For an LPM trie
//! the class of a prefix is every rule whose prefix contains it, so the longest match is the
//! right set. Port ranges are cut into the disjoint intervals their bounds make, each stored
//! as the few power-of-two blocks an LPM trie can hold. The last lookup returns the winner.
//!
//! [`compile`] builds a whole generation; [`Classifier`] (module `incremental`) keeps one up to
//! date rule by rule, writing only what a change changes, in an order safe for packets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chaos_common::{
    ADDR_KEY_FIXED_BITS, ADDRS_CAPACITY, AddrKey, CLASS_GEN_BIT, Family, Hook, PAIRS_CAPACITY, PORT_KEY_FIXED_BITS,
    PORTS_CAPACITY, PairKey, PortKey, Proto, SCOPE_CGROUP_BIT, SCOPES_CAPACITY, ScopeKey, Side,
};

use crate::spec::{Cidr, Direction, Match, PortRange, Protocol, mask};

/// One rule as the compiler needs it.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Index into `RULES`/`COUNTERS`: what a packet's lookup chain ends in.
    pub slot: u32,
    /// 0 for a connect rule.
    pub ifindex: u32,
    pub matches: Match,
    /// Drop threshold (see chaos-common `RuleAction`): the precedence between rules.
    pub threshold: u64,
    /// Order of application: among rules of equal threshold the lower `seq` wins, so precedence
    /// does not depend on where a rule sits in a slice (ties of `seq` go to slice order).
    pub seq: u64,
    /// `None`: every packet of the interface. Else only the packets of these cgroups (by
    /// cgroup v2 id): a target cgroup and those below it.
    pub cgroups: Option<Vec<u64>>,
    /// A connect-fail rule: matched at `connect()` ([`Hook::Connect`]), always with cgroups.
    pub connect: bool,
}

/// LPM entries are `(prefix length, key data, value)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub addrs: Vec<(u32, AddrKey, u32)>,
    pub pairs: Vec<(PairKey, u32)>,
    pub ports: Vec<(u32, PortKey, u32)>,
    pub scopes: Vec<(ScopeKey, u32)>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "the rule set needs {needed} {map} entries but one generation holds {capacity}; \
         remove faults or use fewer overlapping source/destination combinations"
    )]
    TooLarge { map: &'static str, needed: usize, capacity: usize },
    #[error("no rule has slot {0}")]
    NoSuchSlot(u32),
}

/// A prefix as bytes (masked) and length.
type Prefix = ([u8; 16], u8);
/// Rules by precedence rank (0 wins).
type Set = Vec<u32>;

/// What one rule looks like from one hook: for `both` on ingress, mirrored.
struct Eff {
    rank: u32,
    family: Family,
    src: Prefix,
    dst: Prefix,
    protos: &'static [Proto],
    sport: PortRange,
    dport: PortRange,
}

/// Compiles `rules` (in the order they were applied) for generation `generation` (0 or 1).
pub fn compile(rules: &[Rule], generation: u8) -> Result<Tables, CompileError> {
    // Precedence: strongest drop first, then the order of application (sort is stable).
    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(rules[i].threshold), rules[i].seq));
    let slots: Vec<u32> = order.iter().map(|&i| rules[i].slot).collect();

    // Per (ifindex, hook): the interface's rules, and the cgroup rules with their cgroups.
    type Group<'a> = (Vec<Eff>, Vec<(Eff, &'a [u64])>);
    let mut groups: BTreeMap<(u32, Hook), Group> = BTreeMap::new();
    for (rank, &i) in order.iter().enumerate() {
        let r = &rules[i];
        for v in views(r) {
            let View { family, src, dst, protos, sport, dport, .. } = v;
            let eff = Eff { rank: rank as u32, family, src, dst, protos, sport, dport };
            let group = groups.entry((r.ifindex, v.hook)).or_default();
            match &r.cgroups {
                None => group.0.push(eff),
                Some(ids) => group.1.push((eff, ids)),
            }
        }
    }

    let mut c = Compiler { generation, next_class: 1, out: Tables::default() };
    let mut next_scope = 0;
    for ((ifindex, hook), (plain, scoped)) in &groups {
        c.families(*ifindex, *hook, plain.iter(), &slots)?;
        // The cgroups with the same rules share a scope.
        let mut of_cgroup: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        for (eff, ids) in scoped {
            for id in *ids {
                of_cgroup.entry(*id).or_default().insert(eff.rank);
            }
        }
        let mut scope_of: BTreeMap<&BTreeSet<u32>, u32> = BTreeMap::new();
        for (cgroup, ranks) in &of_cgroup {
            let scope = match scope_of.get(ranks) {
                Some(s) => *s,
                None => {
                    next_scope += 1;
                    let s = SCOPE_CGROUP_BIT | next_scope;
                    scope_of.insert(ranks, s);
                    let own = scoped.iter().filter(|(e, _)| ranks.contains(&e.rank)).map(|(e, _)| e);
                    let inherited = plain.iter().filter(|_| *hook == Hook::Egress);
                    c.families(s, *hook, own.chain(inherited), &slots)?;
                    s
                }
            };
            let key = ScopeKey { generation, hook: *hook as u8, _pad: 0, ifindex: *ifindex, cgroup: *cgroup };
            c.out.scopes.push((key, scope));
            check("SCOPES", c.out.scopes.len(), SCOPES_CAPACITY)?;
        }
    }
    Ok(c.out)
}

/// What one rule looks like from one hook and family: for `both` on ingress, mirrored.
#[derive(Clone, Copy, Debug)]
struct View {
    hook: Hook,
    family: Family,
    src: Prefix,
    dst: Prefix,
    protos: &'static [Proto],
    sport: PortRange,
    dport: PortRange,
}

fn views(r: &Rule) -> Vec<View> {
    let hooks: &[(Hook, bool)] = match r.matches.direction {
        _ if r.connect => &[(Hook::Connect, false)],
        Direction::Egress => &[(Hook::Egress, false)],
        Direction::Ingress => &[(Hook::Ingress, false)],
        Direction::Both => &[(Hook::Egress, false), (Hook::Ingress, true)],
    };
    let families = [(Family::V4, r.matches.families.v4), (Family::V6, r.matches.families.v6)];
    let prefix = |c: Option<Cidr>| c.map_or(([0; 16], 0), |c| (mask(c.bytes(), c.len), c.len));
    let mut out = Vec::new();
    for &(hook, mirror) in hooks {
        for (family, _) in families.iter().filter(|f| f.1) {
            let m = if mirror { r.matches.reply() } else { r.matches };
            let (src, dst, sport, dport) = (prefix(m.src), prefix(m.dst), m.sport, m.dport);
            let protos = protos(r.matches.protocol, *family, sport.is_any() && dport.is_any());
            out.push(View { hook, family: *family, src, dst, protos, sport, dport });
        }
    }
    out
}

/// The protocol values a rule's entries cover; port-restricted rules only see TCP and UDP.
fn protos(protocol: Protocol, family: Family, any_port: bool) -> &'static [Proto] {
    let v4 = family == Family::V4;
    match protocol {
        Protocol::Tcp => &[Proto::Tcp],
        Protocol::Udp => &[Proto::Udp],
        Protocol::Icmp if v4 => &[Proto::Icmp],
        Protocol::Icmp => &[Proto::Icmpv6],
        Protocol::Any if !any_port => &[Proto::Tcp, Proto::Udp],
        Protocol::Any if v4 => &[Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Other],
        Protocol::Any => &[Proto::Tcp, Proto::Udp, Proto::Icmpv6, Proto::Other],
    }
}

struct Compiler {
    generation: u8,
    next_class: u32,
    out: Tables,
}

impl Compiler {
    fn class(&mut self) -> u32 {
        let id = self.next_class | if self.generation == 1 { CLASS_GEN_BIT } else { 0 };
        self.next_class += 1;
        id
    }

    /// The entries of one scope (an ifindex or a cgroup scope) on one hook, per family.
    fn families<'a>(
        &mut self,
        scope: u32,
        hook: Hook,
        effs: impl Iterator<Item = &'a Eff>,
        slots: &[u32],
    ) -> Result<(), CompileError> {
        let effs: Vec<&Eff> = effs.collect();
        for family in [Family::V4, Family::V6] {
            let of_family: Vec<&Eff> = effs.iter().filter(|e| e.family == family).copied().collect();
            if !of_family.is_empty() {
                self.scope(scope, hook, family, &of_family, slots)?;
            }
        }
        Ok(())
    }

    fn scope(
        &mut self,
        scope: u32,
        hook: Hook,
        family: Family,
        effs: &[&Eff],
        slots: &[u32],
    ) -> Result<(), CompileError> {
        let by_rank: HashMap<u32, &Eff> = effs.iter().map(|e| (e.rank, *e)).collect();
        let generation = self.generation;
        let key = move |side: Side, addr: [u8; 16]| AddrKey {
            generation,
            hook: hook as u8,
            family: family as u8,
            side: side as u8,
            scope,
            addr: std::array::from_fn(|i| u32::from_ne_bytes(addr[4 * i..4 * i + 4].try_into().unwrap())),
        };
        let src_key = |a| key(Side::Src, a);
        let dst_key = |a| key(Side::Dst, a);
        let src = self.addr_classes(effs.iter().map(|e| (e.src, e.rank)), src_key)?;
        let dst = self.addr_classes(effs.iter().map(|e| (e.dst, e.rank)), dst_key)?;

        // Pairs: only those some rule belongs to on both sides can have a non-empty set.
        let mut candidates = BTreeSet::new();
        for e in effs {
            for s in &src.of_rank[&e.rank] {
                for d in &dst.of_rank[&e.rank] {
                    candidates.insert((*s, *d));
                    check("PAIRS", self.out.pairs.len() + candidates.len(), PAIRS_CAPACITY)?;
                }
            }
        }
        let mut pair_classes: HashMap<Set, u32> = HashMap::new();
        for (s, d) in candidates {
            let set = intersect(&src.sets[&s], &dst.sets[&d]);
            let class = match pair_classes.get(&set) {
                Some(c) => *c,
                None => {
                    let c = self.class();
                    pair_classes.insert(set, c);
                    c
                }
            };
            self.out.pairs.push((PairKey { src_class: s, dst_class: d }, class));
        }

        // Destination ports, per protocol, then source ports, ending in the winner's slot.
        let mut dport_classes: HashMap<Set, u32> = HashMap::new();
        for (set, pair_class) in &pair_classes {
            for proto in Proto::ALL {
                let members: Vec<&Eff> = set.iter().map(|r| by_rank[r]).filter(|e| e.protos.contains(&proto)).collect();
                for (range, sub) in intervals(&members, |e| e.dport) {
                    let class = match dport_classes.get(&sub) {
                        Some(c) => *c,
                        None => {
                            let c = self.class();
                            dport_classes.insert(sub, c);
                            c
                        }
                    };
                    let key = PortKey { class: *pair_class, proto: proto as u8, side: Side::Dst as u8, port: 0 };
                    self.port_entries(key, range, class)?;
                }
            }
        }
        for (set, class) in &dport_classes {
            let members: Vec<&Eff> = set.iter().map(|r| by_rank[r]).collect();
            for (range, sub) in intervals(&members, |e| e.sport) {
                let key = PortKey { class: *class, proto: 0, side: Side::Src as u8, port: 0 };
                self.port_entries(key, range, slots[sub[0] as usize])?;
            }
        }
        Ok(())
    }

    /// One class per distinct prefix: the rules whose prefix contains it.
    fn addr_classes(
        &mut self,
        prefixes: impl Iterator<Item = (Prefix, u32)>,
        key: impl Fn([u8; 16]) -> AddrKey,
    ) -> Result<AddrClasses, CompileError> {
        let mut by_prefix: BTreeMap<Prefix, Set> = BTreeMap::new();
        for (p, rank) in prefixes {
            by_prefix.entry(p).or_default().push(rank);
        }
        let mut ids: HashMap<Set, u32> = HashMap::new();
        let mut classes = AddrClasses::default();
        for &(bytes, len) in by_prefix.keys() {
            let mut set: Set =
                (0..=len).filter_map(|l| by_prefix.get(&(mask(bytes, l), l))).flatten().copied().collect();
            set.sort_unstable();
            let class = match ids.get(&set) {
                Some(c) => *c,
                None => {
                    let c = self.class();
                    for r in &set {
                        classes.of_rank.entry(*r).or_default().push(c);
                    }
                    classes.sets.insert(c, set.clone());
                    ids.insert(set, c);
                    c
                }
            };
            self.out.addrs.push((ADDR_KEY_FIXED_BITS + u32::from(len), key(bytes), class));
            check("ADDRS", self.out.addrs.len(), ADDRS_CAPACITY)?;
        }
        Ok(classes)
    }

    fn port_entries(&mut self, key: PortKey, range: PortRange, value: u32) -> Result<(), CompileError> {
        for (start, len) in port_blocks(range) {
            let k = PortKey { port: start.to_be(), ..key };
            self.out.ports.push((PORT_KEY_FIXED_BITS + u32::from(len), k, value));
        }
        check("PORTS", self.out.ports.len(), PORTS_CAPACITY)
    }
}

#[derive(Default)]
struct AddrClasses {
    sets: HashMap<u32, Set>,
    of_rank: HashMap<u32, Vec<u32>>,
}

/// Each generation gets half of a map.
fn check(map: &'static str, needed: usize, capacity: u32) -> Result<(), CompileError> {
    let capacity = capacity as usize / 2;
    if needed > capacity {
        return Err(CompileError::TooLarge { map, needed, capacity });
    }
    Ok(())
}

fn intersect(a: &[u32], b: &[u32]) -> Set {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Splits the port space at every range bound of `members` and returns the maximal runs with
/// the same non-empty set of covering rules (ranks, sorted).
fn intervals(members: &[&Eff], range: impl Fn(&Eff) -> PortRange) -> Vec<(PortRange, Set)> {
    runs(&members.iter().map(|e| (e.rank, range(e))).collect::<Vec<_>>())
}

/// Splits the port space at every bound of the `(id, range)` members and returns the maximal
/// runs with the same non-empty set of covering ids (sorted).
fn runs(members: &[(u32, PortRange)]) -> Vec<(PortRange, Set)> {
    if let [(id, range)] = members {
        return vec![(*range, vec![*id])];
    }
    let mut bounds: BTreeSet<u32> = BTreeSet::new();
    for (_, r) in members {
        bounds.insert(u32::from(r.lo));
        bounds.insert(u32::from(r.hi) + 1);
    }
    let mut out: Vec<(PortRange, Set)> = Vec::new();
    let bounds: Vec<u32> = bounds.into_iter().collect();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
        let mut set: Set = members.iter().filter(|(_, r)| r.lo <= lo && hi <= r.hi).map(|(id, _)| *id).collect();
        if set.is_empty() {
            continue;
        }
        set.sort_unstable();
        match out.last_mut() {
            Some((prev, s)) if *s == set && u32::from(prev.hi) + 1 == u32::from(lo) => prev.hi = hi,
            _ => out.push((PortRange { lo, hi }, set)),
        }
    }
    out
}

/// The aligned power-of-two blocks covering `range`, as (start, prefix length in bits).
pub fn port_blocks(range: PortRange) -> Vec<(u16, u8)> {
    let (mut start, end) = (u32::from(range.lo), u32::from(range.hi) + 1);
    let mut out = Vec::new();
    while start < end {
        let mut size: u32 = if start == 0 { 1 << 16 } else { start & start.wrapping_neg() };
        while start + size > end {
            size >>= 1;
        }
        out.push((start as u16, 16 - size.trailing_zeros() as u8));
        start += size;
    }
    out
}

mod incremental;
pub use incremental::{Change, Classifier, Counts, Op};

#[cfg(test)]
mod tests;
