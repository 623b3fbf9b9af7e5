//! The kernel as the engine's [`Dataplane`]: one `reconcile` from the plan the kernel runs to
//! the next, which owns every step's rollback.

use std::collections::HashMap;

use chaos_common::{Counters, MAX_RULES, RuleAction, map_names};

use super::{Kernel, KernelError, NlFilter, Rules, ShapingRecord};
use crate::engine::{Dataplane, Plan};

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
        let used = self.used_slots();
        let unknown: Vec<(u32, Counters)> = used
            .iter()
            .filter(|s| !known.contains_key(s) && !ended.contains(s))
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
        let hooks = desired.hooks(&ifbs);
        let cgroups = desired.cgroup_hooks();
        let fresh = desired.fresh_slots(live);
        let changed = desired.changed_slots(live);
        let all = || desired.tc(&ifbs).0;
        let one = match changed.as_slice() {
            // One fault added, removed, started or changed: written in place.
            [slot] if !adopting => {
                let was_live = live.faults.by_slot().get(slot).is_some_and(|a| a.started());
                Some((*slot, desired.rules_of(*slot, &ifbs), was_live))
            }
            _ => None,
        };
        if let Err(e) = self.sync(Rules { one, all: &all }, &fresh, &hooks, &cgroups) {
            self.settle_shaping(&kept);
            return Err(e);
        }
        self.settle_shaping(&needs);
        let stale: Vec<u32> = live
            .faults
            .by_slot()
            .iter()
            .filter(|(_, a)| a.started())
            .filter(|(slot, a)| !desired.faults.by_slot().get(slot).is_some_and(|d| d.started() && d.seq == a.seq))
            .map(|(slot, _)| *slot)
            .filter(|slot| !fresh.iter().any(|(s, _)| s == slot))
            .collect();
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
