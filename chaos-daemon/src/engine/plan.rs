//! From a fault set to what the kernel runs ([`Plan`]): each started fault's rule action, the
//! compiler's rules and the TC hooks they need, the cgroup hooks, and the qdiscs shaping faults
//! need. Pure: the kernel layer's `reconcile` makes a plan live.

use std::{collections::BTreeMap, path::PathBuf};

use chaos_common::{
    ActionKind, ChainKind, DNS_KEY_FIXED_BITS, DNS_NAME_MAX, DNS_NO_SLOT, DROP_ALWAYS, Dist, DnsAction, DnsForm,
    DnsNameKey, RuleAction, RuleFlags, netem_class,
};

use super::faults::{Active, FaultSet};
use crate::{
    compile::Rule,
    kernel::{CgroupHook, ShapeNeed, TcHook},
    shaping::NetemClass,
    spec::{
        Action, Checksum, Cidr, Direction, Distribution, Dns, DnsReply, Domain, Match, Odds, PortRange, Protocol,
        Shape, mask, threshold,
    },
};

/// What the programs do for a fault; `mark` is the bit a duplicate fault marks its copies with.
pub(crate) fn rule_action(a: &Active, mark: u32) -> RuleAction {
    let base = RuleAction { deadline_ns: a.record.deadline_ns, ..Default::default() };
    match a.fault.action {
        Action::Loss(odds) => RuleAction { kind: ActionKind::Loss as u32, ..chance(odds, base) },
        Action::Partition => RuleAction { kind: ActionKind::Partition as u32, chance: [DROP_ALWAYS; 2], ..base },
        Action::Reset { new_only } => RuleAction {
            kind: ActionKind::Reset as u32,
            chance: [DROP_ALWAYS; 2],
            flags: if new_only { RuleFlags::RESET_NEW_ONLY } else { RuleFlags::NONE },
            ..base
        },
        Action::Duplicate(odds) => RuleAction { kind: ActionKind::Duplicate as u32, mark, ..chance(odds, base) },
        Action::ConnectFail { errno } => {
            RuleAction { kind: ActionKind::ConnectFail as u32, chance: [DROP_ALWAYS; 2], errno: errno as u32, ..base }
        }
        Action::Dns(d) => {
            RuleAction { kind: ActionKind::Dns as u32, dns: dns_action(d), ..chance(Odds::random(d.p), base) }
        }
        Action::Corrupt(odds, checksum) => RuleAction {
            kind: ActionKind::Corrupt as u32,
            flags: if checksum == Checksum::Fixed { RuleFlags::CORRUPT_FIX_CHECKSUM } else { RuleFlags::NONE },
            ..chance(odds, base)
        },
        Action::Shape(s) => {
            let rate_bytes = s.rate.map_or(0, |r| r / 8);
            let burst_ns = (burst(&s) * 1_000_000_000).checked_div(rate_bytes).unwrap_or(0);
            RuleAction {
                kind: ActionKind::Shape as u32,
                priority: netem_class(a.record.slot).priority,
                delay_ns: s.delay.as_nanos() as u64,
                // Validation keeps jitter within chaos_common::MAX_JITTER_NS.
                jitter_ns: s.jitter.as_nanos() as u32,
                correlation: correlation(s.correlation),
                distribution: if s.distribution == Distribution::Normal { Dist::Table } else { Dist::Uniform } as u32,
                rate_bytes,
                burst_ns,
                queue_ns: QUEUE_NS.max(burst_ns),
                gap: s.reorder.map_or(0, |r| r.gap),
                // The same odds as a loss's, in their own fields.
                reorder: s
                    .reorder
                    .map_or([0; 2], |r| chance(Odds::Random { p: r.p, correlation: r.correlation }, base).chance),
                ..chance(Odds::random(s.loss), base)
            }
        }
    }
}

/// The DNS part of a dns fault's rule action.
fn dns_action(d: Dns) -> DnsAction {
    let (reply, rcode, v4, v6) = match d.reply {
        DnsReply::Error(rcode) => (chaos_common::DnsReply::Error, u32::from(rcode.code()), None, None),
        DnsReply::Spoof { v4, v6 } => (chaos_common::DnsReply::Spoof, 0, v4, v6),
        DnsReply::Random => (chaos_common::DnsReply::Random, 0, None, None),
        DnsReply::Drop => (chaos_common::DnsReply::Drop, 0, None, None),
    };
    let mut flags = 0;
    if v4.is_some() {
        flags |= DnsAction::HAS_V4;
    }
    if v6.is_some() {
        flags |= DnsAction::HAS_V6;
    }
    DnsAction {
        reply: reply as u32,
        rcode,
        // Nothing a cache keeps outlives the fault.
        ttl: 0,
        flags,
        qtypes: d.qtypes.0,
        v4: v4.map_or([0; 4], |a| a.octets()),
        _pad: 0,
        v6: v6.map_or([0; 16], |a| a.octets()),
    }
}

/// The chance fields of a rule with `odds` (see chaos-common's `ChainKind` for what they mean).
fn chance(odds: Odds, base: RuleAction) -> RuleAction {
    match odds {
        Odds::Random { p, correlation: 0.0 } => {
            RuleAction { chance: [threshold(p); 2], chain: ChainKind::None as u32, ..base }
        }
        // The last outcome repeats with probability c, else a fresh draw: after a miss the
        // event happens with (1-c)p, after a hit with c + (1-c)p.
        Odds::Random { p, correlation: c } => RuleAction {
            chance: [threshold((1.0 - c) * p), threshold(c + (1.0 - c) * p)],
            chain: ChainKind::Outcome as u32,
            ..base
        },
        Odds::GilbertElliott { p, r, loss_bad, loss_good } => RuleAction {
            chance: [threshold(loss_good), threshold(loss_bad)],
            flip: [threshold(p), threshold(r)],
            chain: ChainKind::GilbertElliott as u32,
            ..base
        },
    }
}

/// How long a packet may wait for the rate (edt) before it is dropped; the netem backend's
/// leaf queues are sized to about the same.
const QUEUE_NS: u64 = 100_000_000;

/// netem's correlation scale: 100% is 2^32 - 1 (tc's get_percent).
fn correlation(fraction: f64) -> u32 {
    (fraction * f64::from(u32::MAX)).round() as u32
}

/// The burst in bytes: as given, else 10 ms at the rate and at least two full-size frames.
fn burst(s: &Shape) -> u64 {
    s.burst.unwrap_or_else(|| (s.rate.unwrap_or(0) / 8 / 100).max(2 * 1514))
}

/// The qdiscs each started shaping fault needs.
fn shape_needs(faults: &[&Active]) -> Vec<ShapeNeed> {
    faults
        .iter()
        .filter(|a| a.record.started)
        .filter_map(|a| {
            let Action::Shape(s) = a.fault.action else { return None };
            let direction = a.fault.matches.direction;
            let queue_packets = match s.rate {
                Some(bits) if s.delay.is_zero() && s.jitter.is_zero() => {
                    (bits / 8 * QUEUE_NS / 1_000_000_000 / 1514).max(16) as u32
                }
                // Delayed packets wait in the leaf: as fq's per-flow limit on edt.
                _ => crate::kernel::FQ_FLOW_LIMIT,
            };
            Some(ShapeNeed {
                ifindex: a.ifindex,
                interface: a.fault.interface.clone(),
                egress: direction != Direction::Ingress,
                ingress: direction != Direction::Egress,
                class: NetemClass {
                    minor: netem_class(a.record.slot).minor,
                    delay_ns: s.delay.as_nanos() as u64,
                    jitter_ns: s.jitter.as_nanos() as u64,
                    correlation: correlation(s.correlation),
                    distribution: (s.distribution == Distribution::Normal)
                        .then_some(crate::shaping::Distribution::Normal),
                    rate_bps: s.rate,
                    burst_bytes: s.rate.map(|_| burst(&s) as u32),
                    limit_packets: queue_packets,
                },
            })
        })
        .collect()
}

/// What the kernel runs for a fault set. `mark` is the bit duplicate faults mark copies with.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    pub faults: &'a FaultSet,
    pub mark: u32,
}

/// A started fault that differs between two plans, by slot: before and now (either absent).
pub struct Change<'a> {
    pub slot: u32,
    pub before: Option<&'a Active>,
    pub now: Option<&'a Active>,
}

impl<'a> Plan<'a> {
    /// The started faults, in order of application (which breaks precedence ties).
    pub fn started(&self) -> Vec<&'a Active> {
        self.faults.ordered().into_iter().map(|a| &**a).filter(|a| a.record.started).collect()
    }

    /// What the kernel must change to go from `live` to this plan: the slots whose started
    /// fault differs (added, removed, started, changed). O(changes): the two fault sets are
    /// compared through the structure they share.
    pub fn changes(&self, live: &Plan<'a>) -> Vec<Change<'a>> {
        let started = |a: Option<&'a Active>| a.filter(|a| a.record.started);
        self.faults
            .diff(live.faults)
            .into_iter()
            .map(|c| Change { slot: c.slot, before: started(c.before), now: started(c.now) })
            .filter(|c| c.before.is_some() || c.now.is_some())
            .collect()
    }

    /// The actions of the slots that start in `changes` (a new fault, a scheduled one starting,
    /// another fault in a slot): their counters, chains and shaping state start afresh.
    pub fn fresh_slots(&self, changes: &[Change]) -> Vec<(u32, RuleAction)> {
        changes
            .iter()
            .filter_map(|c| match (c.before, c.now) {
                (Some(b), Some(n)) if b.seq == n.seq => None,
                (_, Some(n)) => Some((c.slot, rule_action(n, self.mark))),
                (_, None) => None,
            })
            .collect()
    }

    /// Every started fault's slot and action (re-adopted faults: their counters go on).
    pub fn actions(&self) -> Vec<(u32, RuleAction)> {
        self.faults
            .by_slot()
            .iter()
            .filter(|(_, a)| a.record.started)
            .map(|(slot, a)| (*slot, rule_action(a, self.mark)))
            .collect()
    }

    /// The started faults that need a look of their own (qdiscs, cgroups), in order of
    /// application.
    fn special(&self) -> Vec<&'a Active> {
        let mut special: Vec<&Active> = self.faults.special().filter(|a| a.record.started).collect();
        special.sort_unstable_by_key(|a| a.seq);
        special
    }

    pub fn shape_needs(&self) -> Vec<ShapeNeed> {
        shape_needs(&self.special())
    }

    /// Every started fault's rules, in order of application; `ifbs` are the IFBs of
    /// interfaces whose ingress is shaped. (The hooks they need: [`fault_hooks`].)
    pub fn tc(&self, ifbs: &BTreeMap<u32, (u32, String)>) -> Vec<Rule> {
        let mut unused = BTreeMap::new();
        self.started().into_iter().flat_map(|a| fault_rules(a, ifbs, &mut unused)).collect()
    }

    /// The rules of the fault started in `slot` (none if no started fault has it).
    pub fn rules_of(&self, slot: u32, ifbs: &BTreeMap<u32, (u32, String)>) -> Vec<Rule> {
        match self.faults.at(slot) {
            Some(a) if a.record.started => fault_rules(a, ifbs, &mut BTreeMap::new()),
            _ => Vec::new(),
        }
    }

    pub fn cgroup_hooks(&self) -> BTreeMap<(u64, CgroupHook), PathBuf> {
        cgroup_hooks(&self.special())
    }

    /// The `DNS_NAMES` entries of the started dns faults.
    pub fn dns_names(&self) -> BTreeMap<(u32, DnsNameKey), u32> {
        let dns: Vec<&Active> =
            self.special().into_iter().filter(|a| matches!(a.fault.action, Action::Dns(_))).collect();
        dns_names(&dns)
    }
}

/// The `DNS_NAMES` entries of dns faults (started, in order of application), as (LPM prefix
/// length, key) and value. A packet's chain ends in one rule, so each rule's table holds its
/// own patterns and those of the other dns faults that cover every packet it covers (same
/// interface and cgroups, a match containing its own): each fault's queries are answered as
/// if it had the packets to itself. Where a pattern is in several, the first applied wins, as
/// between rules; `*.x` without `x` itself gets an entry for `x` that matches nothing.
pub(crate) fn dns_names(dns: &[&Active]) -> BTreeMap<(u32, DnsNameKey), u32> {
    let mut out = BTreeMap::new();
    for w in dns {
        let mut table: BTreeMap<(u32, DnsNameKey), u32> = BTreeMap::new();
        let mut below = Vec::new();
        // In order of application, as the chain breaks ties between rules.
        let members = dns.iter().filter(|r| {
            r.seq == w.seq
                || (r.ifindex == w.ifindex
                    && r.cgroup.as_ref().map(|c| &c.ids) == w.cgroup.as_ref().map(|c| &c.ids)
                    && covers(&r.fault.matches, &w.fault.matches))
        });
        for r in members {
            let domains: &[Domain] = if r.fault.domains.is_empty() { &[Domain::Any] } else { &r.fault.domains };
            for d in domains {
                let key = dns_key(w.record.slot, d);
                table.entry(key).or_insert(r.record.slot);
                if let Domain::Below(name) = d {
                    below.push(name);
                }
            }
        }
        for name in below {
            table.entry(dns_key(w.record.slot, &Domain::Exact(name.clone()))).or_insert(DNS_NO_SLOT);
        }
        out.extend(table);
    }
    out
}

/// The `DNS_NAMES` key of a pattern in `slot`'s table (see chaos-common's `DnsNameKey`): each
/// label led by a dot, reversed for exact names (with the zero after them) and `*.x`, forward
/// for `x.*`. Validation keeps names within `DNS_NAME_MAX`.
fn dns_key(slot: u32, domain: &Domain) -> (u32, DnsNameKey) {
    let dotted = |n: &str| format!(".{n}").into_bytes();
    let (form, bytes) = match domain {
        Domain::Any => (DnsForm::Reversed, Vec::new()),
        Domain::Exact(n) => (DnsForm::Reversed, dotted(n).into_iter().rev().chain([0]).collect()),
        Domain::Below(n) => (DnsForm::Reversed, dotted(n).into_iter().rev().collect()),
        Domain::Starting(n) => (DnsForm::Forward, [dotted(n), b".".to_vec()].concat()),
    };
    let mut name = [0; DNS_NAME_MAX];
    let len = bytes.len().min(DNS_NAME_MAX);
    name[..len].copy_from_slice(&bytes[..len]);
    let key = DnsNameKey { slot: slot as u16, form: form as u8, _pad: 0, name };
    (DNS_KEY_FIXED_BITS + 8 * len as u32, key)
}

/// Whether every packet `inner` matches, `outer` matches too.
fn covers(outer: &Match, inner: &Match) -> bool {
    let cidr = |o: Option<Cidr>, i: Option<Cidr>| match (o, i) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(o), Some(i)) => {
            o.is_v4() == i.is_v4() && o.len <= i.len && mask(o.bytes(), o.len) == mask(i.bytes(), o.len)
        }
    };
    let ports = |o: PortRange, i: PortRange| o.lo <= i.lo && i.hi <= o.hi;
    let families = (outer.families.v4 || !inner.families.v4) && (outer.families.v6 || !inner.families.v6);
    let protocol = outer.protocol == Protocol::Any || outer.protocol == inner.protocol;
    outer.direction == inner.direction
        && families
        && protocol
        && cidr(outer.src, inner.src)
        && cidr(outer.dst, inner.dst)
        && ports(outer.sport, inner.sport)
        && ports(outer.dport, inner.dport)
}

/// The TC hooks a started fault's rules need, with their interfaces' names.
pub fn fault_hooks(a: &Active, ifbs: &BTreeMap<u32, (u32, String)>) -> BTreeMap<(u32, TcHook), String> {
    let mut hooks = BTreeMap::new();
    fault_rules(a, ifbs, &mut hooks);
    hooks
}

fn hooks_of(direction: Direction) -> &'static [TcHook] {
    match direction {
        Direction::Egress => &[TcHook::Egress],
        Direction::Ingress => &[TcHook::Ingress],
        Direction::Both => &[TcHook::Egress, TcHook::Ingress],
    }
}

/// The cgroup attachments started cgroup faults need: (cgroup id, kind) and its
/// directory. A program attached to a cgroup runs for the cgroups below it too, so one below
/// another target of the same kind gets none (it would run twice).
fn cgroup_hooks(faults: &[&Active]) -> BTreeMap<(u64, CgroupHook), PathBuf> {
    let mut wanted: BTreeMap<CgroupHook, BTreeMap<PathBuf, u64>> = BTreeMap::new();
    for a in faults.iter().filter(|a| a.record.started) {
        let Some(cg) = &a.cgroup else { continue };
        let kinds: &[CgroupHook] = match (a.fault.action, a.fault.matches.direction) {
            (Action::ConnectFail { .. }, _) => &[CgroupHook::Connect4, CgroupHook::Connect6],
            (_, Direction::Egress) => &[],
            _ => &[CgroupHook::Ingress],
        };
        for kind in kinds {
            wanted.entry(*kind).or_default().insert(cg.dir.clone(), cg.id());
        }
    }
    let mut hooks = BTreeMap::new();
    for (kind, dirs) in &wanted {
        for (dir, id) in dirs {
            if !dirs.keys().any(|other| other != dir && dir.starts_with(other)) {
                hooks.insert((*id, *kind), dir.clone());
            }
        }
    }
    hooks
}

/// The compiler's rules and the TC hooks they need, in order of application. Scheduled faults
/// not yet started take no part. A shaping fault's ingress half goes to its interface's IFB
/// (`ifbs`), whose egress program matches it as an ingress rule. A cgroup fault's ingress half
/// and a connect-fail fault need no TC hook (see [`cgroup_hooks`]).
/// One started fault's rules, adding the TC hooks they need to `hooks`.
fn fault_rules(
    a: &Active,
    ifbs: &BTreeMap<u32, (u32, String)>,
    hooks: &mut BTreeMap<(u32, TcHook), String>,
) -> Vec<Rule> {
    let f = &a.fault;
    let connect = matches!(f.action, Action::ConnectFail { .. });
    let cgroups = a.cgroup.as_ref().map(|c| c.ids.clone());
    let rule = |ifindex, matches| Rule {
        slot: a.record.slot,
        ifindex,
        matches,
        threshold: f.action.drop_threshold(),
        cgroups: cgroups.clone(),
        connect,
        seq: a.seq,
    };
    let mut hook = |key, name: &String| {
        hooks.entry(key).or_insert_with(|| name.clone());
    };
    if a.cgroup.is_some() {
        if !connect && f.matches.direction != Direction::Ingress {
            hook((a.ifindex, TcHook::Egress), &f.interface);
        }
        return vec![rule(a.ifindex, f.matches)];
    }
    let ifb = match (f.action, f.matches.direction) {
        (Action::Shape(_), Direction::Ingress | Direction::Both) => ifbs.get(&a.ifindex),
        _ => None,
    };
    let Some((ifb, ifb_name)) = ifb else {
        for h in hooks_of(f.matches.direction) {
            hook((a.ifindex, *h), &f.interface);
        }
        return vec![rule(a.ifindex, f.matches)];
    };
    let mut rules = Vec::new();
    let mut ingress = f.matches;
    if f.matches.direction == Direction::Both {
        hook((a.ifindex, TcHook::Egress), &f.interface);
        rules.push(rule(a.ifindex, Match { direction: Direction::Egress, ..f.matches }));
        // The ingress half of `both` sees the replies, as the compiler's ingress hook does.
        ingress = Match { direction: Direction::Ingress, ..f.matches.reply() };
    }
    hook((*ifb, TcHook::IfbEgress), ifb_name);
    rules.push(rule(*ifb, ingress));
    rules
}

#[cfg(test)]
mod tests;
