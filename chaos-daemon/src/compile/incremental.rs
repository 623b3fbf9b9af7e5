//! Incremental classification: one generation's classification entries kept up to date rule
//! by rule, so that a change writes only the entries it changes (issue 18: a change costs what
//! it changes), in an order under which no packet is ever judged by half of a change.
//!
//! # Shape of the entries
//! Per space (a scope, hook and family) and side, every distinct prefix some rule of the space
//! has is a *node* with a class id that stays the same while the node exists; the rules whose
//! prefix contains the node (its *set*) are bookkeeping here only. A `PAIRS` entry exists for
//! two nodes whose sets meet; its value is the class of that intersection, shared by every pair
//! with the same set (refcounted), and the class's `PORTS` entries lead to destination-port
//! classes (shared by set too) whose entries end in the winner's slot. A class's `PORTS`
//! entries depend on its set only, so they never change while the class exists: a class id is
//! never reused, a changed set is a new class.
//!
//! # Order of the writes, and why a packet sees the old or the new rule set
//! [`Change::ops`] come in phases: (0) `PORTS` entries of new classes; (1) `PAIRS` inserts and
//! updates; (2) `ADDRS` inserts (new nodes); (3) `SCOPES` inserts and updates; (4) `SCOPES`
//! deletes; (5) `ADDRS` deletes; (6) `PAIRS` deletes; (7) `PORTS` entries of dropped classes.
//! Take one rule `r` added to a space. Phase 0 writes entries nothing points to yet. In phase 1
//! the address lookups still return old nodes `s`, `d` (the longest old prefixes holding the
//! packet's addresses), and the old rules matching the packet are exactly
//! `set(s) ∩ set(d)` without `r`; the pair's entry is the old one or the new one, which adds
//! `r` only if `r`'s prefixes contain `s` and `d`, hence the packet: old or new verdict. In
//! phase 2 a lookup may return a new node `n` between the old longest match and the new one:
//! the old rules holding the address are the same for `n` (each is a prefix of the old match,
//! so of `n`), and `r` is in `set(n)` only if `r` holds the address; every pair entry already
//! has its new value, so whatever mix of old and new nodes the two lookups return, the set
//! judged is the old matching rules, with `r` or without it: the old or the new verdict.
//! Removing `r` mirrors this: pairs of surviving nodes lose `r` (phase 1; from nodes that
//! outlive the change that is the new verdict), then `r`'s own nodes go (phase 5: a lookup
//! still reaching one meets its old pair, with `r`, i.e. the old verdict), and only then their
//! pairs and the pairs left empty (phase 6), then unreferenced classes. A cgroup whose rules
//! change moves to a scope whose entries are all written before (phases 0-2) its `SCOPES`
//! entry flips (phase 3), and its old scope is dropped after (phases 4-7).
//!
//! The guarantee is for a change that adds or removes at most one rule per space (one fault:
//! a rule per hook and family, a `both` shaping fault's two rules being on two interfaces).
//! With more, the final entries are still exact, but a packet may meanwhile be judged by part
//! of the batch: a full build of the other generation and a flip is the way for those.
//!
//! Undoing a prefix of the ops (the inverses, in reverse order) passes back through the same
//! states in reverse, so a rollback after a failed write keeps the property too.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    ops::RangeInclusive,
};

use chaos_common::{
    ADDR_KEY_FIXED_BITS, ADDRS_CAPACITY, AddrKey, CLASS_GEN_BIT, Family, Hook, PAIRS_CAPACITY, PORT_KEY_FIXED_BITS,
    PORTS_CAPACITY, PairKey, PortKey, Proto, SCOPE_CGROUP_BIT, SCOPES_CAPACITY, SLOT_BIT, ScopeKey, Side,
};

use super::{CompileError, Prefix, Rule, Set, Tables, check, port_blocks, runs, views};
use crate::spec::{PortRange, mask};

/// (scope: ifindex or cgroup scope id, hook, family).
type Space = (u32, Hook, Family);
/// A node: its space, side, prefix bytes and length.
type NodeKey = (Space, Side, [u8; 16], u8);

#[derive(Clone, Debug)]
struct Node {
    class: u32,
    /// The rule views (effs) whose prefix on this side is exactly this node's.
    here: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A `PAIRS` value: its `PORTS` entries are by protocol and destination port.
    Pair,
    /// A destination-port class: its `PORTS` entries are by source port, ending in a slot.
    Dport,
}

#[derive(Clone, Debug)]
struct Class {
    /// Its key in `pair_of` or `dport_of`.
    key: (Kind, Set),
    /// What a `PAIRS` entry or a destination-port entry leading to it holds: its id, or the
    /// slot of its strongest rule with `SLOT_BIT` when that rule acts on every packet that gets
    /// there (then it has no entries of its own).
    value: u32,
    entries: Vec<(u32, PortKey, u32)>,
    /// The classes its entries point to (one reference each).
    deps: Vec<u32>,
}

/// One rule as seen from one hook and family.
#[derive(Clone, Debug)]
struct Eff {
    slot: u32,
    family: Family,
    /// Precedence, lowest first: strongest drop, then order of application, then arrival.
    prec: (Reverse<u64>, u64, u32),
    src: Prefix,
    dst: Prefix,
    protos: &'static [Proto],
    sport: PortRange,
    dport: PortRange,
}

#[derive(Clone, Debug)]
struct RuleRec {
    slot: u32,
    ifindex: u32,
    cgroups: Option<Vec<u64>>,
    /// (hook, family, eff id).
    effs: Vec<(Hook, Family, u32)>,
}

#[derive(Clone, Debug)]
struct ScopeInfo {
    /// The cgroup rules (rule ids) of its cgroups.
    own: Vec<u32>,
    /// Cgroups in it.
    refs: u32,
}

/// The bookkeeping, as maps, and a [`Change`]'s overlay of it (`None`: removed). The maps
/// hold their values as `Some` (never `None`), as the overlay does: a full build then takes the
/// overlay's trees as they are, instead of building every tree again (a fifth of its time).
macro_rules! maps {
    ($($name:ident: $k:ty => $v:ty,)*) => {
        #[derive(Clone, Debug, Default)]
        struct Maps { $($name: BTreeMap<$k, Option<$v>>,)* }
        #[derive(Clone, Debug, Default)]
        struct Delta { $($name: BTreeMap<$k, Option<$v>>,)* }
        impl Maps {
            fn merge(&mut self, d: Delta) {
                $(if self.$name.is_empty() {
                    self.$name = d.$name;
                    self.$name.retain(|_, v| v.is_some());
                } else {
                    for (k, v) in d.$name {
                        match v {
                            Some(v) => self.$name.insert(k, Some(v)),
                            None => self.$name.remove(&k),
                        };
                    }
                })*
            }
        }
    };
}

maps! {
    rules: u32 => RuleRec,
    slots: (u32, u32) => (),
    effs: u32 => Eff,
    // Interface rules' effs by (ifindex, hook, eff): what an egress cgroup scope inherits.
    plain: (u32, Hook, u32) => (),
    scopes: (u32, Hook, u32) => ScopeInfo,
    scope_of: (u32, Hook, Vec<u32>) => u32,
    cgroups: ScopeKey => u32,
    nodes: NodeKey => Node,
    node_of: u32 => NodeKey,
    // Nodes per (space, side, prefix length): the lengths to look at for a node's ancestors.
    lens: (Space, Side, u8) => u32,
    pairs: (u32, u32) => u32,
    by_dst: (u32, u32) => (),
    classes: u32 => Class,
    pair_of: Set => u32,
    dport_of: Set => u32,
    refs: u32 => u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Next {
    class: u32,
    eff: u32,
    rule: u32,
    scope: u32,
}

/// Entries per map, for capacity checks (one generation may use half of each map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub addrs: usize,
    pub pairs: usize,
    pub ports: usize,
    pub scopes: usize,
}

/// One map write. `old` is what the entry held before (`None`: absent), `new` what it holds
/// after (`None`: deleted): an insert, an update or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `ADDRS`: LPM prefix length, key.
    Addr {
        len: u32,
        key: AddrKey,
        old: Option<u32>,
        new: Option<u32>,
    },
    Pair {
        key: PairKey,
        old: Option<u32>,
        new: Option<u32>,
    },
    /// `PORTS`: LPM prefix length, key.
    Port {
        len: u32,
        key: PortKey,
        old: Option<u32>,
        new: Option<u32>,
    },
    Scope {
        key: ScopeKey,
        old: Option<u32>,
        new: Option<u32>,
    },
}

impl Op {
    /// The write that undoes this one. Undoing a prefix of a change's ops in reverse order
    /// goes back through the states that prefix went through, so packets still see the old or
    /// the new rule set (see the module doc).
    pub fn inverse(self) -> Op {
        match self {
            Op::Addr { len, key, old, new } => Op::Addr { len, key, old: new, new: old },
            Op::Pair { key, old, new } => Op::Pair { key, old: new, new: old },
            Op::Port { len, key, old, new } => Op::Port { len, key, old: new, new: old },
            Op::Scope { key, old, new } => Op::Scope { key, old: new, new: old },
        }
    }
}

/// The writes of one change, in order, and what [`Classifier::commit`] needs once they are
/// all done.
#[derive(Debug)]
pub struct Change {
    pub ops: Vec<Op>,
    /// Entries per map after the change.
    pub counts: Counts,
    /// Whether any egress cgroup scope exists after the change (`ActiveMap::SCOPED_BIT`). Turning the
    /// bit on before the ops and off after them is safe: an egress lookup that finds no
    /// `SCOPES` entry classifies as if it had not looked.
    pub egress_scoped: bool,
    delta: Delta,
    next: Next,
    version: u64,
}

/// The classification entries of one generation, kept up to date rule by rule. Not `Clone`:
/// a change is tied to one classifier's state by its version.
#[derive(Debug)]
pub struct Classifier {
    generation: u8,
    maps: Maps,
    next: Next,
    counts: Counts,
    /// Commits so far: a [`Change`] applies only to the state it was computed from.
    version: u64,
}

impl Classifier {
    /// An empty classifier for generation `generation` (0 or 1).
    pub fn new(generation: u8) -> Classifier {
        Classifier { generation, maps: Maps::default(), next: Next::default(), counts: Counts::default(), version: 0 }
    }

    /// A classifier holding `rules` (in order of application), with all its entries.
    pub fn build(rules: &[Rule], generation: u8) -> Result<(Classifier, Tables), CompileError> {
        let mut c = Classifier::new(generation);
        // No ops: everything is an insert, and `tables` lists them.
        let (delta, next, counts) = c.work(rules, &[])?;
        c.maps.merge(delta);
        (c.next, c.counts) = (next, counts);
        let tables = c.tables();
        Ok((c, tables))
    }

    pub fn generation(&self) -> u8 {
        self.generation
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether any egress `SCOPES` entry exists (`ActiveMap::SCOPED_BIT`).
    pub fn egress_scoped(&self) -> bool {
        egress_scoped(&self.maps.cgroups, self.generation)
    }

    /// The writes that remove every rule of the `remove` slots, then add `add` (in order of
    /// application, after the rules in place), without changing `self`. Refused, with nothing
    /// changed, when a slot has no rule or a map would exceed its half.
    pub fn change(&self, add: &[Rule], remove: &[u32]) -> Result<Change, CompileError> {
        let (delta, next, counts) = self.work(add, remove)?;
        let ops = ops(&self.maps, &delta, self.generation);
        let egress_scoped = delta.cgroups.iter().any(|(k, v)| k.hook == Hook::Egress as u8 && v.is_some())
            || self.maps.cgroups.range(scoped_range(self.generation)).any(|(k, _)| !delta.cgroups.contains_key(k));
        Ok(Change { ops, counts, egress_scoped, next, delta, version: self.version })
    }

    /// The bookkeeping of a change, checked to fit.
    fn work(&self, add: &[Rule], remove: &[u32]) -> Result<(Delta, Next, Counts), CompileError> {
        let (base, generation, next, counts) = (&self.maps, self.generation, self.next, self.counts);
        let mut tx = Tx { base, d: Delta::default(), generation, next, counts };
        for &slot in remove {
            let ids = tx.keys(|m| &m.slots, |d| &d.slots, (slot, 0)..=(slot, u32::MAX));
            if ids.is_empty() {
                return Err(CompileError::NoSuchSlot(slot));
            }
            for (_, id) in ids {
                tx.remove_rule(id)?;
            }
        }
        for r in add {
            tx.add_rule(r)?;
        }
        tx.fits()?;
        Ok((tx.d, tx.next, tx.counts))
    }

    /// Takes in a change whose ops are all written.
    pub fn commit(&mut self, change: Change) {
        // A change computed from another state would corrupt the bookkeeping: a caller's bug.
        assert_eq!(change.version, self.version, "a change committed to a state it was not computed from");
        self.maps.merge(change.delta);
        self.next = change.next;
        self.counts = change.counts;
        self.version += 1;
    }

    /// Every entry, as [`compile`](super::compile) gives them.
    pub fn tables(&self) -> Tables {
        let m = &self.maps;
        Tables {
            addrs: live(&m.nodes).map(|(k, n)| addr_entry(k, n.class, self.generation)).collect(),
            pairs: live(&m.pairs)
                .map(|(&(s, d), c)| (PairKey { src_class: s, dst_class: d }, class(m, c).value))
                .collect(),
            ports: live(&m.classes).flat_map(|(_, c)| c.entries.iter().copied()).collect(),
            scopes: live(&m.cgroups).map(|(k, s)| (*k, *s)).collect(),
        }
    }
}

/// The entries of one of the [`Maps`] (all `Some`).
fn live<K, V>(m: &BTreeMap<K, Option<V>>) -> impl Iterator<Item = (&K, &V)> {
    m.iter().filter_map(|(k, v)| Some((k, v.as_ref()?)))
}

/// A class the maps hold.
fn class<'a>(m: &'a Maps, id: &u32) -> &'a Class {
    m.classes.get(id).and_then(Option::as_ref).expect("a class in use")
}

fn scoped_range(generation: u8) -> RangeInclusive<ScopeKey> {
    let lo = ScopeKey { generation, hook: Hook::Egress as u8, _pad: 0, ifindex: 0, cgroup: 0 };
    lo..=ScopeKey { _pad: u16::MAX, ifindex: u32::MAX, cgroup: u64::MAX, ..lo }
}

fn egress_scoped(cgroups: &BTreeMap<ScopeKey, Option<u32>>, generation: u8) -> bool {
    cgroups.range(scoped_range(generation)).next().is_some()
}

fn addr_entry(k: &NodeKey, class: u32, generation: u8) -> (u32, AddrKey, u32) {
    let &((scope, hook, family), side, bytes, len) = k;
    let (family, side) = (family as u8, side as u8);
    let addr = std::array::from_fn(|i| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()));
    (ADDR_KEY_FIXED_BITS + u32::from(len), AddrKey { generation, hook: hook as u8, family, side, scope, addr }, class)
}

/// The kernel writes between `base` and `base` with `d`, in the order of the module doc.
fn ops(base: &Maps, d: &Delta, generation: u8) -> Vec<Op> {
    let mut phases: [Vec<Op>; 8] = Default::default();
    for (k, new) in &d.nodes {
        let (old, new) = (base.nodes.get(k).and_then(Option::as_ref).map(|n| n.class), new.as_ref().map(|n| n.class));
        if old != new {
            let (len, key, _) = addr_entry(k, 0, generation);
            phases[if new.is_some() { 2 } else { 5 }].push(Op::Addr { len, key, old, new });
        }
    }
    // A pair holds its class's value (the same class, or another of the same value, needs no write).
    let value = |id: &u32| match d.classes.get(id) {
        Some(c) => c.as_ref().expect("a class a pair holds").value,
        None => class(base, id).value,
    };
    for (&(s, dc), new) in &d.pairs {
        let old = base.pairs.get(&(s, dc)).and_then(Option::as_ref).map(|id| class(base, id).value);
        let new = new.as_ref().map(value);
        if old != new {
            let key = PairKey { src_class: s, dst_class: dc };
            phases[if new.is_some() { 1 } else { 6 }].push(Op::Pair { key, old, new });
        }
    }
    for (id, new) in &d.classes {
        // Class ids are never reused: a class only appears or goes.
        match (base.classes.get(id).and_then(Option::as_ref), new) {
            (None, Some(c)) => {
                phases[0].extend(c.entries.iter().map(|&(len, key, v)| Op::Port { len, key, old: None, new: Some(v) }))
            }
            (Some(c), None) => {
                phases[7].extend(c.entries.iter().map(|&(len, key, v)| Op::Port { len, key, old: Some(v), new: None }))
            }
            _ => {}
        }
    }
    for (key, new) in &d.cgroups {
        let (old, new) = (base.cgroups.get(key).copied().flatten(), *new);
        if old != new {
            phases[if new.is_some() { 3 } else { 4 }].push(Op::Scope { key: *key, old, new });
        }
    }
    phases.into_iter().flatten().collect()
}

/// A change being worked out: reads see `base` through `d`, writes go to `d`.
struct Tx<'a> {
    base: &'a Maps,
    d: Delta,
    generation: u8,
    next: Next,
    /// Entries per map as the change stands, so one too large is refused early.
    counts: Counts,
}

/// Reads one entry of one map through the overlay.
macro_rules! get {
    ($tx:expr, $name:ident, $k:expr) => {
        match $tx.d.$name.get($k) {
            Some(v) => v.as_ref(),
            None => $tx.base.$name.get($k).and_then(Option::as_ref),
        }
    };
}

/// Writes (`Some`) or removes (`None`) one entry in the overlay.
macro_rules! set {
    ($tx:expr, $name:ident, $k:expr, $v:expr) => {
        $tx.d.$name.insert($k, $v)
    };
}

/// The last address of a prefix (host bits set).
fn last(p: Prefix) -> [u8; 16] {
    let mut b = p.0;
    for (i, byte) in b.iter_mut().enumerate() {
        let keep = (usize::from(p.1).saturating_sub(8 * i)).min(8);
        *byte |= if keep == 8 { 0 } else { 0xff >> keep };
    }
    b
}

fn holds(outer: Prefix, inner: Prefix) -> bool {
    outer.1 <= inner.1 && mask(inner.0, outer.1) == outer.0
}

impl Tx<'_> {
    fn fits(&self) -> Result<(), CompileError> {
        check("ADDRS", self.counts.addrs, ADDRS_CAPACITY)?;
        check("PAIRS", self.counts.pairs, PAIRS_CAPACITY)?;
        check("PORTS", self.counts.ports, PORTS_CAPACITY)?;
        check("SCOPES", self.counts.scopes, SCOPES_CAPACITY)
    }

    /// The keys present in `range` of one map, through the overlay.
    fn keys<K: Ord + Clone, V>(
        &self,
        base: impl Fn(&Maps) -> &BTreeMap<K, Option<V>>,
        over: impl Fn(&Delta) -> &BTreeMap<K, Option<V>>,
        range: RangeInclusive<K>,
    ) -> Vec<K> {
        let (base, over) = (base(self.base), over(&self.d));
        // A full build reads only the overlay, a small change mostly the base.
        if base.range(range.clone()).next().is_none() {
            return over.range(range).filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()).collect();
        }
        if over.range(range.clone()).next().is_none() {
            return base.range(range).map(|(k, _)| k.clone()).collect();
        }
        let mut keys: BTreeSet<K> = base.range(range.clone()).map(|(k, _)| k.clone()).collect();
        for (k, v) in over.range(range) {
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        keys.into_iter().collect()
    }

    fn eff(&self, e: u32) -> &Eff {
        get!(self, effs, &e).expect("eff of a live rule")
    }

    fn add_rule(&mut self, r: &Rule) -> Result<(), CompileError> {
        let id = self.next.rule;
        self.next.rule += 1;
        let mut effs = Vec::new();
        for v in views(r) {
            let e = self.next.eff;
            self.next.eff += 1;
            let prec = (Reverse(r.threshold), r.seq, id);
            let (src, dst, protos, sport, dport) = (v.src, v.dst, v.protos, v.sport, v.dport);
            set!(self, effs, e, Some(Eff { slot: r.slot, family: v.family, prec, src, dst, protos, sport, dport }));
            effs.push((v.hook, v.family, e));
        }
        let rec = RuleRec { slot: r.slot, ifindex: r.ifindex, cgroups: r.cgroups.clone(), effs: effs.clone() };
        set!(self, rules, id, Some(rec));
        set!(self, slots, (r.slot, id), Some(()));
        match &r.cgroups {
            None => {
                for (hook, family, e) in effs {
                    set!(self, plain, (r.ifindex, hook, e), Some(()));
                    self.add_eff((r.ifindex, hook, family), e)?;
                    for sid in self.inheriting(r.ifindex, hook) {
                        self.add_eff((sid, hook, family), e)?;
                    }
                }
            }
            Some(ids) => {
                let hooks: BTreeSet<Hook> = effs.iter().map(|e| e.0).collect();
                let ids: BTreeSet<u64> = ids.iter().copied().collect();
                for hook in hooks {
                    for &cgroup in &ids {
                        self.move_cgroup(r.ifindex, hook, cgroup, |own| own.push(id))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn remove_rule(&mut self, id: u32) -> Result<(), CompileError> {
        let rec = get!(self, rules, &id).expect("rule of a slot").clone();
        let r = &rec;
        match &r.cgroups {
            None => {
                for &(hook, family, e) in &rec.effs {
                    for sid in self.inheriting(r.ifindex, hook) {
                        self.remove_eff((sid, hook, family), e);
                    }
                    self.remove_eff((r.ifindex, hook, family), e);
                    set!(self, plain, (r.ifindex, hook, e), None);
                }
            }
            Some(ids) => {
                let hooks: BTreeSet<Hook> = rec.effs.iter().map(|e| e.0).collect();
                let ids: BTreeSet<u64> = ids.iter().copied().collect();
                for hook in hooks {
                    for &cgroup in &ids {
                        // A cgroup left with other rules moves to a new scope, which may not fit.
                        self.move_cgroup(r.ifindex, hook, cgroup, |own| own.retain(|o| *o != id))?;
                    }
                }
            }
        }
        // Last: dropping a scope above still read the rule's effs.
        for &(_, _, e) in &rec.effs {
            set!(self, effs, e, None);
        }
        set!(self, rules, id, None);
        set!(self, slots, (r.slot, id), None);
        Ok(())
    }

    /// The cgroup scopes that hold the interface rules of (`ifindex`, `hook`): egress ones.
    fn inheriting(&self, ifindex: u32, hook: Hook) -> Vec<u32> {
        if hook != Hook::Egress {
            return Vec::new();
        }
        let range = (ifindex, hook, 0)..=(ifindex, hook, u32::MAX);
        self.keys(|m| &m.scopes, |d| &d.scopes, range).into_iter().map(|k| k.2).collect()
    }

    /// Moves a cgroup to the scope of its own rules as `edit` changes them (none: no scope).
    fn move_cgroup(
        &mut self,
        ifindex: u32,
        hook: Hook,
        cgroup: u64,
        edit: impl FnOnce(&mut Vec<u32>),
    ) -> Result<(), CompileError> {
        let key = ScopeKey { generation: self.generation, hook: hook as u8, _pad: 0, ifindex, cgroup };
        let old = get!(self, cgroups, &key).copied();
        let mut own = old.map_or_else(Vec::new, |s| get!(self, scopes, &(ifindex, hook, s)).unwrap().own.clone());
        edit(&mut own);
        own.sort_unstable();
        let new = if own.is_empty() { None } else { Some(self.scope(ifindex, hook, own)?) };
        set!(self, cgroups, key, new);
        self.counts.scopes = self.counts.scopes + usize::from(new.is_some()) - usize::from(old.is_some());
        if let Some(s) = old {
            self.release_scope(ifindex, hook, s);
        }
        self.fits()
    }

    /// The scope of cgroups with the rules `own`, built with all its entries if new.
    fn scope(&mut self, ifindex: u32, hook: Hook, own: Vec<u32>) -> Result<u32, CompileError> {
        if let Some(&s) = get!(self, scope_of, &(ifindex, hook, own.clone())) {
            let mut info = get!(self, scopes, &(ifindex, hook, s)).unwrap().clone();
            info.refs += 1;
            set!(self, scopes, (ifindex, hook, s), Some(info));
            return Ok(s);
        }
        self.next.scope += 1;
        let s = SCOPE_CGROUP_BIT | self.next.scope;
        for (family, e) in self.scope_effs(ifindex, hook, &own) {
            self.add_eff((s, hook, family), e)?;
        }
        set!(self, scope_of, (ifindex, hook, own.clone()), Some(s));
        set!(self, scopes, (ifindex, hook, s), Some(ScopeInfo { own, refs: 1 }));
        Ok(s)
    }

    fn release_scope(&mut self, ifindex: u32, hook: Hook, s: u32) {
        let mut info = get!(self, scopes, &(ifindex, hook, s)).unwrap().clone();
        info.refs -= 1;
        if info.refs > 0 {
            set!(self, scopes, (ifindex, hook, s), Some(info));
            return;
        }
        for (family, e) in self.scope_effs(ifindex, hook, &info.own) {
            self.remove_eff((s, hook, family), e);
        }
        set!(self, scope_of, (ifindex, hook, info.own), None);
        set!(self, scopes, (ifindex, hook, s), None);
    }

    /// (family, eff) of a cgroup scope: its own rules' and, on egress, the interface's.
    fn scope_effs(&self, ifindex: u32, hook: Hook, own: &[u32]) -> Vec<(Family, u32)> {
        let mut out = Vec::new();
        for id in own {
            let rec = get!(self, rules, id).unwrap();
            out.extend(rec.effs.iter().filter(|e| e.0 == hook).map(|e| (e.1, e.2)));
        }
        if hook == Hook::Egress {
            let range = (ifindex, hook, 0)..=(ifindex, hook, u32::MAX);
            for (_, _, e) in self.keys(|m| &m.plain, |d| &d.plain, range) {
                out.push((self.eff(e).family, e));
            }
        }
        out
    }

    /// Nodes of `space` and `side` inside `p` (itself included).
    fn inside(&self, space: Space, side: Side, p: Prefix) -> Vec<NodeKey> {
        self.keys(|m| &m.nodes, |d| &d.nodes, (space, side, p.0, p.1)..=(space, side, last(p), 128))
    }

    /// The nodes holding `k`'s prefix (itself included, if it exists), shortest first.
    fn ancestors(&self, k: NodeKey) -> Vec<(NodeKey, &Node)> {
        let (space, side, bytes, len) = k;
        let lens = self.keys(|m| &m.lens, |d| &d.lens, (space, side, 0)..=(space, side, len));
        lens.into_iter()
            .filter_map(|(_, _, l)| {
                let a = (space, side, mask(bytes, l), l);
                get!(self, nodes, &a).map(|n| (a, n))
            })
            .collect()
    }

    fn node(&self, k: &NodeKey) -> &Node {
        get!(self, nodes, k).expect("node")
    }

    fn add_eff(&mut self, space: Space, e: u32) -> Result<(), CompileError> {
        let (src, dst) = (self.eff(e).src, self.eff(e).dst);
        let mut fresh = [None, None];
        for (side, p) in [(Side::Src, src), (Side::Dst, dst)] {
            let k = (space, side, p.0, p.1);
            match get!(self, nodes, &k) {
                Some(n) => {
                    // In place once in the overlay: a node may hold thousands of rules.
                    if !matches!(self.d.nodes.get(&k), Some(Some(_))) {
                        let n = n.clone();
                        set!(self, nodes, k, Some(n));
                    }
                    self.d.nodes.get_mut(&k).unwrap().as_mut().unwrap().here.push(e);
                }
                None => {
                    let class = self.class_id();
                    set!(self, nodes, k, Some(Node { class, here: vec![e] }));
                    set!(self, node_of, class, Some(k));
                    let n = get!(self, lens, &(space, side, p.1)).copied().unwrap_or(0);
                    set!(self, lens, (space, side, p.1), Some(n + 1));
                    fresh[side as usize] = Some(k);
                    self.counts.addrs += 1;
                }
            }
        }
        // The pairs whose sets gain `e`...
        let (srcs, dsts) = (self.inside(space, Side::Src, src), self.inside(space, Side::Dst, dst));
        for s in &srcs {
            for d in &dsts {
                self.refresh(*s, *d);
                self.fits()?;
            }
        }
        // ...and a new node's pairs with the partners of the node it splits from.
        if let Some(n) = fresh[Side::Src as usize]
            && let Some(parent) = self.parent(n)
        {
            let c = self.node(&parent).class;
            for (_, d) in self.keys(|m| &m.pairs, |d| &d.pairs, (c, 0)..=(c, u32::MAX)) {
                let d = *get!(self, node_of, &d).unwrap();
                self.refresh(n, d);
            }
        }
        if let Some(n) = fresh[Side::Dst as usize]
            && let Some(parent) = self.parent(n)
        {
            let c = self.node(&parent).class;
            for (_, s) in self.keys(|m| &m.by_dst, |d| &d.by_dst, (c, 0)..=(c, u32::MAX)) {
                let s = *get!(self, node_of, &s).unwrap();
                self.refresh(s, n);
            }
        }
        self.fits()
    }

    fn remove_eff(&mut self, space: Space, e: u32) {
        let (src, dst) = (self.eff(e).src, self.eff(e).dst);
        let (srcs, dsts) = (self.inside(space, Side::Src, src), self.inside(space, Side::Dst, dst));
        let mut gone = [None, None];
        for (side, p) in [(Side::Src, src), (Side::Dst, dst)] {
            let k = (space, side, p.0, p.1);
            let mut n = self.node(&k).clone();
            n.here.retain(|x| *x != e);
            if n.here.is_empty() {
                set!(self, nodes, k, None);
                set!(self, node_of, n.class, None);
                let count = get!(self, lens, &(space, side, p.1)).copied().unwrap();
                set!(self, lens, (space, side, p.1), (count > 1).then_some(count - 1));
                gone[side as usize] = Some((k, n.class));
                self.counts.addrs -= 1;
            } else {
                set!(self, nodes, k, Some(n));
            }
        }
        for s in &srcs {
            for d in &dsts {
                if !gone.iter().flatten().any(|(g, _)| g == s || g == d) {
                    self.refresh(*s, *d);
                }
            }
        }
        // A gone node's pairs go with it.
        if let Some((_, c)) = gone[Side::Src as usize] {
            for (_, d) in self.keys(|m| &m.pairs, |d| &d.pairs, (c, 0)..=(c, u32::MAX)) {
                self.set_pair(c, d, None);
            }
        }
        if let Some((_, c)) = gone[Side::Dst as usize] {
            for (_, s) in self.keys(|m| &m.by_dst, |d| &d.by_dst, (c, 0)..=(c, u32::MAX)) {
                self.set_pair(s, c, None);
            }
        }
    }

    /// The longest node strictly holding `k`'s prefix.
    fn parent(&self, k: NodeKey) -> Option<NodeKey> {
        self.ancestors(k).into_iter().map(|(a, _)| a).rfind(|a| *a != k)
    }

    /// Sets the pair of two nodes to the class of their sets' intersection (none if empty).
    fn refresh(&mut self, s: NodeKey, d: NodeKey) {
        let set = self.meet(s, d);
        let (sc, dc) = (self.node(&s).class, self.node(&d).class);
        let class = (!set.is_empty()).then(|| self.class(Kind::Pair, set));
        self.set_pair(sc, dc, class);
    }

    /// The effs in both nodes' sets: read from the smaller side, tested against the other.
    fn meet(&self, s: NodeKey, d: NodeKey) -> Set {
        let (a, b) = (self.ancestors(s), self.ancestors(d));
        let size = |v: &[(NodeKey, &Node)]| v.iter().map(|(_, n)| n.here.len()).sum::<usize>();
        let mut set: Set = if size(&a) <= size(&b) {
            let p = (d.2, d.3);
            a.iter().flat_map(|(_, n)| n.here.iter().copied()).filter(|e| holds(self.eff(*e).dst, p)).collect()
        } else {
            let p = (s.2, s.3);
            b.iter().flat_map(|(_, n)| n.here.iter().copied()).filter(|e| holds(self.eff(*e).src, p)).collect()
        };
        set.sort_unstable();
        set
    }

    /// Writes a pair holding one reference to `class` (taken by the caller), dropping the
    /// reference its old value held.
    fn set_pair(&mut self, s: u32, d: u32, class: Option<u32>) {
        let old = get!(self, pairs, &(s, d)).copied();
        set!(self, pairs, (s, d), class);
        set!(self, by_dst, (d, s), class.map(|_| ()));
        self.counts.pairs = self.counts.pairs + usize::from(class.is_some()) - usize::from(old.is_some());
        if let Some(old) = old {
            self.release(old);
        }
    }

    fn class_id(&mut self) -> u32 {
        self.next.class += 1;
        self.next.class | if self.generation == 1 { CLASS_GEN_BIT } else { 0 }
    }

    /// A reference to the class of `set`, made with its `PORTS` entries if new.
    fn class(&mut self, kind: Kind, set: Set) -> u32 {
        let known = match kind {
            Kind::Pair => get!(self, pair_of, &set),
            Kind::Dport => get!(self, dport_of, &set),
        };
        if let Some(&id) = known {
            let n = *get!(self, refs, &id).unwrap();
            set!(self, refs, id, Some(n + 1));
            return id;
        }
        let id = self.class_id();
        let (mut entries, mut deps) = (Vec::new(), Vec::new());
        // The strongest rule, if it acts on whatever is left to match: the class is its slot.
        let top = set.iter().map(|e| self.eff(*e)).min_by_key(|x| x.prec).expect("a class of some rules");
        let terminal = match kind {
            Kind::Pair => top.protos.contains(&Proto::Other) && top.dport.is_any() && top.sport.is_any(),
            Kind::Dport => top.sport.is_any(),
        };
        let value = if terminal { SLOT_BIT | top.slot } else { id };
        let mut push = |key: PortKey, range, value| {
            for (start, len) in port_blocks(range) {
                entries.push((PORT_KEY_FIXED_BITS + u32::from(len), PortKey { port: start.to_be(), ..key }, value));
            }
        };
        match kind {
            _ if terminal => {}
            Kind::Pair => {
                let all: Vec<(u32, &'static [Proto], PortRange)> =
                    set.iter().map(|e| (*e, self.eff(*e).protos, self.eff(*e).dport)).collect();
                for proto in Proto::ALL {
                    let members: Vec<(u32, PortRange)> =
                        all.iter().filter(|(_, p, _)| p.contains(&proto)).map(|(e, _, r)| (*e, *r)).collect();
                    for (range, sub) in runs(&members) {
                        let dport = self.class(Kind::Dport, sub);
                        deps.push(dport);
                        let value = get!(self, classes, &dport).expect("just referenced").value;
                        push(PortKey { class: id, proto: proto as u8, side: Side::Dst as u8, port: 0 }, range, value);
                    }
                }
            }
            Kind::Dport => {
                let members: Vec<(u32, PortRange)> = set.iter().map(|e| (*e, self.eff(*e).sport)).collect();
                for (range, sub) in runs(&members) {
                    let winner = sub.iter().map(|e| self.eff(*e)).min_by_key(|x| x.prec).unwrap().slot;
                    push(PortKey { class: id, proto: 0, side: Side::Src as u8, port: 0 }, range, winner);
                }
            }
        }
        self.counts.ports += entries.len();
        match kind {
            Kind::Pair => set!(self, pair_of, set.clone(), Some(id)),
            Kind::Dport => set!(self, dport_of, set.clone(), Some(id)),
        };
        set!(self, classes, id, Some(Class { key: (kind, set), value, entries, deps }));
        set!(self, refs, id, Some(1));
        id
    }

    fn release(&mut self, id: u32) {
        let n = *get!(self, refs, &id).unwrap();
        if n > 1 {
            set!(self, refs, id, Some(n - 1));
            return;
        }
        let class = get!(self, classes, &id).unwrap().clone();
        set!(self, refs, id, None);
        set!(self, classes, id, None);
        match class.key {
            (Kind::Pair, set) => set!(self, pair_of, set, None),
            (Kind::Dport, set) => set!(self, dport_of, set, None),
        };
        self.counts.ports -= class.entries.len();
        for dep in class.deps {
            self.release(dep);
        }
    }
}
