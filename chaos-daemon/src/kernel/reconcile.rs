//! The kernel as the engine's [`Dataplane`]: one `reconcile` from the plan the kernel runs to
//! the next, which owns every step's rollback.

use std::collections::HashMap;

use chaos_common::{Counters, MAX_RULES, RuleAction, map_names};

use super::{Kernel, KernelError, NlFilter, Rules, ShapingRecord, TcHook};
use crate::engine::{Dataplane, Plan, fault_hooks};

/// The TC hooks the live faults use: each with its interface's name and how many faults use it.
#[derive(Clone, Debug, Default)]
pub(super) struct HookUsers(std::collections::BTreeMap<(u32, TcHook), (String, usize)>);

impl HookUsers {
    fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, hooks: &std::collections::BTreeMap<(u32, TcHook), String>) {
        for (key, name) in hooks {
            self.0.entry(*key).or_insert_with(|| (name.clone(), 0)).1 += 1;
        }
    }

    fn remove(&mut self, hooks: &std::collections::BTreeMap<(u32, TcHook), String>) {
        for key in hooks.keys() {
            if let Some((_, n)) = self.0.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.0.remove(key);
                }
            }
        }
    }

    fn hooks(&self) -> std::collections::BTreeMap<(u32, TcHook), String> {
        self.0.iter().map(|(k, (name, _))| (*k, name.clone())).collect()
    }
}

impl Dataplane for Kernel {
    /// Qdiscs for new shaping first, then the rules and hooks (one atomic switch for packets),
    /// then what no rule uses any more is given back: the qdiscs, and the actions of slots no
    /// longer in use (so that a rule left in a slot always belongs to a fault of the state).
    fn reconcile(&mut self, live: &Plan, desired: &Plan) -> Result<(), KernelError> {
        self.reconcile_from(live, desired, false)
    }

    fn adopt(&mut self, desired: &Plan, ended: &[u32]) -> Result<Vec<(u32, Counters)>, KernelError> {
        let known = desired.faults.by_slot();
        let ended: std::collections::BTreeSet<u32> = ended.iter().copied().collect();
        // Maps made by this start hold nothing to find.
        let used = if self.classifier.is_some() { Vec::new() } else { self.used_slots() };
        let unknown: Vec<(u32, Counters)> = used
            .iter()
            .filter(|s| !known.contains_key(*s) && !ended.contains(s))
            .map(|s| (*s, self.counters(*s)))
            .collect();
        // The whole rule set written afresh (a new generation, the old one deleted): whatever
        // a previous daemon left half done goes with it.
        self.reconcile_from(desired, desired, true)?;
        let stale: Vec<u32> = used.into_iter().filter(|s| !known.contains_key(s)).collect();
        self.clear_slots(&stale);
        Ok(unknown)
    }

    fn counters(&self, slot: u32) -> Counters {
        Kernel::counters(self, slot)
    }

    fn can_shape(&self, ingress: bool, reorder: bool) -> Result<(), KernelError> {
        Kernel::can_shape(self, ingress, reorder)
    }

    fn can_scope(&self, ingress: bool, connect: Option<i32>) -> Result<(), KernelError> {
        Kernel::can_scope(self, ingress, connect)
    }

    fn default_errno(&self) -> i32 {
        Kernel::default_errno(self)
    }

    fn can_dns(&self) -> Result<(), KernelError> {
        Kernel::can_dns(self)
    }

    fn release_idle(&mut self, now_ns: u64) -> Option<u64> {
        Kernel::release_idle(self, now_ns)
    }

    fn interfaces(&self) -> Result<HashMap<u32, String>, String> {
        let links = crate::netlink::link::all().map_err(|e| e.to_string())?;
        Ok(links.into_iter().map(|l| (l.ifindex, l.name)).collect())
    }

    fn records(&self) -> (Vec<NlFilter>, ShapingRecord) {
        (self.netlink_filters(), self.shaping_record())
    }

    fn unpin(&mut self) {
        Kernel::unpin(self)
    }

    fn followed_sessions(&mut self, ports: &[u16]) -> Option<Vec<(std::net::SocketAddr, std::net::SocketAddr)>> {
        Kernel::followed_sessions(self, ports)
    }
}

impl Kernel {
    /// [`Dataplane::reconcile`]; `adopting` rewrites every started fault's action too (their
    /// counters go on), once its qdisc class is ready.
    fn reconcile_from(&mut self, live: &Plan, desired: &Plan, adopting: bool) -> Result<(), KernelError> {
        let (needs, kept) = (desired.shape_needs(), live.shape_needs());
        let ifbs = self.prepare_shaping(&needs, &kept)?;
        if adopting && let Err(e) = self.set_rules(&desired.actions()) {
            self.settle_shaping(&kept);
            return Err(e);
        }
        let changes = if adopting { Vec::new() } else { desired.changes(live) };
        // The TC hooks in use, by how many faults use each: from every fault at a start, else
        // moved by the changed faults only.
        let mut users = if adopting { HookUsers::new() } else { self.hook_users.clone() };
        if adopting {
            for a in desired.started() {
                users.add(&fault_hooks(a, &ifbs));
            }
        }
        for c in &changes {
            if let Some(b) = c.before {
                users.remove(&fault_hooks(b, &ifbs));
            }
            if let Some(n) = c.now {
                users.add(&fault_hooks(n, &ifbs));
            }
        }
        let hooks = users.hooks();
        let cgroups = desired.cgroup_hooks();
        let fresh = desired.fresh_slots(&changes);
        let all = || desired.tc(&ifbs);
        let one = match changes.as_slice() {
            // One fault added, removed, started or changed: written in place.
            [c] => Some((c.slot, desired.rules_of(c.slot, &ifbs), c.before.is_some())),
            _ => None,
        };
        // A dns rule's names go in before its rule, and out after it.
        let names = desired.dns_names();
        let synced =
            self.dns.write(&names, false).and_then(|()| self.sync(Rules { one, all: &all }, &fresh, &hooks, &cgroups));
        if let Err(e) = synced {
            if let Err(undo) = self.dns.write(&live.dns_names(), true) {
                tracing::warn!("restoring dns names: {undo}");
            }
            self.settle_shaping(&kept);
            return Err(e);
        }
        self.dns.write(&names, true)?;
        self.hook_users = users;
        self.settle_shaping(&needs);
        // Slots no fault runs in any more (a new fault's slot was written afresh).
        let stale: Vec<u32> =
            changes.iter().filter(|c| c.before.is_some() && c.now.is_none()).map(|c| c.slot).collect();
        self.clear_slots(&stale);
        Ok(())
    }

    /// Slots whose rule holds an action: what the kernel may apply.
    fn used_slots(&self) -> Vec<u32> {
        (0..MAX_RULES).filter(|s| self.rules.get(s, 0).is_ok_and(|a| a.kind != 0)).collect()
    }

    /// Empties slots no rule points to any more. A failure is only logged: nothing can reach
    /// the slot, and the next start clears it.
    fn clear_slots(&mut self, slots: &[u32]) {
        for slot in slots {
            if let Err(e) = self.rules.set(*slot, RuleAction::default(), 0) {
                tracing::warn!(slot, "clearing rule slot: {}", KernelError::Map { map: map_names::RULES, source: e });
            }
        }
    }
}
