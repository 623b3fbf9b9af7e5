//! Faults over time: re-adopting a previous daemon's faults at start, starting scheduled faults
//! when due, and reaping faults whose deadline has passed or whose interface or namespace is
//! gone. The kernel ignores a rule from its deadline on by itself; reaping frees its slot and
//! entries and records its final counters.

use std::collections::{BTreeMap, HashMap, HashSet};

use chaos_common::{MAX_RULES, NO_DEADLINE};

const SECOND: u64 = 1_000_000_000;

use super::{Active, Engine, EngineError, Guard, Settings, commit, counters, ended, one_experiment, rule_action};
use crate::{
    kernel::Kernel,
    state::{Actor, Ended, State, Store, boot_id, mono_ns},
};

/// What a state file must hold to be re-adopted: valid, distinct names and distinct rule slots
/// within the maps. A file that breaks this was edited by hand or damaged; adopting it would let
/// one fault act with another's rule (two in one slot).
pub fn check_state(state: &State) -> Result<(), EngineError> {
    let invalid = |why: String| {
        EngineError::BadState(format!(
            "{why}: it was edited or damaged (`chaos-daemon cleanup` removes what it describes)"
        ))
    };
    let mut names = HashSet::new();
    let mut slots = HashMap::new();
    for r in &state.faults {
        crate::spec::validate_name(&r.name).map_err(|e| invalid(format!("fault name: {}", e.reason)))?;
        if !names.insert(r.name.as_str()) {
            return Err(invalid(format!("two faults are named '{}'", r.name)));
        }
        if r.slot >= MAX_RULES {
            return Err(invalid(format!("fault '{}' has slot {}, past the maps' {}", r.name, r.slot, MAX_RULES)));
        }
        if let Some(other) = slots.insert(r.slot, r.name.as_str()) {
            return Err(invalid(format!("faults '{other}' and '{}' share rule slot {}", r.name, r.slot)));
        }
    }
    Ok(())
}

impl Engine {
    /// Builds the engine over `kernel`. `state` is the state file as read, checked with
    /// [`check_state`] before the kernel was touched. When the kernel re-adopted a previous
    /// daemon's pinned maps (`adopted`), the faults of the state file that are still due are
    /// re-adopted with their slots, so their counters continue; the others are recorded as ended.
    pub fn new(
        kernel: Kernel,
        adopted: bool,
        state: State,
        settings: Settings,
        guard: Guard,
        store: Store,
    ) -> Result<Self, EngineError> {
        let mut engine = Self {
            kernel,
            faults: BTreeMap::new(),
            order: Vec::new(),
            settings,
            guard,
            store,
            next_id: state.next_id.max(1),
            boot_id: boot_id(),
            closed: false,
        };
        let same_boot = state.boot_id == engine.boot_id;
        let now = mono_ns();
        let mut gone = Vec::new();
        let mut kept = Vec::new();
        for record in state.faults {
            let fault = record.spec.validate();
            let resolved = fault.clone().map(|f| crate::target::resolve(f, &engine.settings.runtime_dirs));
            let reason = if !same_boot {
                Some("the node rebooted")
            } else if !adopted {
                Some("its kernel objects were gone (removed by cleanup?)")
            } else if record.deadline_ns <= now {
                Some("expired")
            } else if matches!(resolved, Ok(Err(_))) {
                Some("its interface (or namespace) is gone")
            } else {
                None
            };
            match (reason, resolved) {
                (None, Ok(Ok(r))) => {
                    kept.push(Active { record, fault: r.fault, ifindex: r.ifindex, watch: r.watch, cgroup: r.cgroup })
                }
                (reason, _) => {
                    let counters =
                        if same_boot && adopted { counters(&engine.kernel, &record) } else { Default::default() };
                    let reason = reason.unwrap_or("its definition is no longer valid");
                    gone.push(Ended::new(&record.name, reason, &counters));
                }
            }
        }
        let started: Vec<_> = kept
            .iter()
            .filter(|a| a.record.started)
            .map(|a| (a.record.slot, rule_action(a, engine.settings.duplicate_mark)))
            .collect();
        engine.kernel.set_rules(&started)?;
        let kept_refs: Vec<&Active> = kept.iter().collect();
        commit(&mut engine.kernel, &kept_refs, &[], &kept_refs)?;
        let names: Vec<String> = kept.iter().map(|a| a.record.name.clone()).collect();
        for active in kept {
            engine.order.push(active.record.name.clone());
            engine.faults.insert(active.record.name.clone(), active);
        }
        engine.save();
        if !names.is_empty() || !gone.is_empty() {
            tracing::info!(adopted = names.len(), ended = gone.len(), "re-adopted the previous daemon's faults");
            let experiment = engine.experiment_of(&names);
            engine.audit(&Actor::default(), "adopt", names, experiment, "ok".into(), gone);
        }
        Ok(engine)
    }

    /// Starts scheduled faults that are due and removes those past their deadline or whose
    /// interface or namespace is gone. Returns the CLOCK_MONOTONIC time to be called again: the
    /// next start or deadline, and while a fault names another namespace at most a second away
    /// (a process can exit without any link changing). Deleted interfaces need no polling: the
    /// daemon is called on every link change too.
    pub fn tick(&mut self) -> Option<u64> {
        let now = mono_ns();
        // Over the map itself, not `order` (a lookup by name each): this runs every second.
        let mut ending: Vec<(String, &'static str)> = self
            .faults
            .iter()
            .filter(|(_, a)| a.record.deadline_ns <= now)
            .map(|(n, _)| (n.clone(), "expired"))
            .collect();
        for (name, why) in self.vanished() {
            if !ending.iter().any(|(n, _)| *n == name) {
                ending.push((name, why));
            }
        }
        let due: Vec<String> = self
            .faults
            .iter()
            .filter(|(_, a)| !a.record.started && a.record.start_ns <= now && a.record.deadline_ns > now)
            .map(|(n, _)| n.clone())
            .collect();
        if (!ending.is_empty() || !due.is_empty())
            && let Err(e) = self.advance(&ending, &due)
        {
            tracing::error!("starting or ending faults: {e}; retrying in 1 s");
            return Some(now + SECOND);
        }
        if let Err(e) = self.follow_cgroups() {
            tracing::error!("following cgroups below targets: {e}; retrying in 1 s");
            return Some(now + SECOND);
        }
        let next = self
            .faults
            .values()
            .filter_map(|a| match a.record.started {
                false => Some(a.record.start_ns),
                true if a.record.deadline_ns != NO_DEADLINE => Some(a.record.deadline_ns),
                true => None,
            })
            .min();
        match (self.faults.values().any(|a| a.watch.is_some()), next) {
            (false, _) => next,
            (true, Some(t)) => Some(t.min(now + SECOND)),
            (true, None) => Some(now + SECOND),
        }
    }

    /// Faults whose interface is gone (deleted, or its name now another device's), or whose
    /// namespace (or process) is, with why. One dump of the links for all of them.
    fn vanished(&self) -> Vec<(String, &'static str)> {
        if self.faults.is_empty() {
            return Vec::new();
        }
        let links = match crate::netlink::link::all() {
            Ok(links) => links,
            Err(e) => {
                tracing::debug!("listing links: {e}");
                return Vec::new();
            }
        };
        // Once a second over every fault: by ifindex (no string hashing), without looking the
        // faults up by name, each namespace looked at once.
        let present: HashMap<u32, &str> = links.iter().map(|l| (l.ifindex, l.name.as_str())).collect();
        // Each path looked at once; whether it still names a fault's target, and why not, is
        // the fault's own (a --pid and a --netns fault can watch one path for different ends).
        let mut looked: HashMap<&std::path::Path, Option<(u64, u64)>> = HashMap::new();
        self.faults
            .iter()
            .filter_map(|(n, a)| {
                let namespace =
                    a.watch.as_ref().and_then(|w| w.gone(*looked.entry(w.path.as_path()).or_insert_with(|| w.now())));
                // connect-fail (ifindex 0) has no interface.
                let interface = (a.ifindex != 0 && present.get(&a.ifindex) != Some(&a.fault.interface.as_str()))
                    .then_some("its interface is gone");
                namespace.or(interface).map(|why| (n.clone(), why))
            })
            .collect()
    }

    /// Takes in the cgroups made or removed below target cgroups since the last look (a new
    /// container's cgroup under a pod's, say): their processes are in the target too.
    fn follow_cgroups(&mut self) -> Result<(), EngineError> {
        let mut changed = Vec::new();
        for (name, a) in &self.faults {
            let Some(cg) = &a.cgroup else { continue };
            // A target that is gone ends at the next look (`vanished`).
            if let Some(ids) = cg.now().filter(|ids| *ids != cg.ids) {
                changed.push((name.clone(), ids));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let old: Vec<(String, Vec<u64>)> = changed
            .iter()
            .map(|(n, ids)| {
                let cg = self.faults.get_mut(n).and_then(|a| a.cgroup.as_mut()).expect("listed");
                (n.clone(), std::mem::replace(&mut cg.ids, ids.clone()))
            })
            .collect();
        let all: Vec<&Active> = self.order.iter().map(|n| &self.faults[n]).collect();
        if let Err(e) = commit(&mut self.kernel, &all, &[], &all) {
            for (n, ids) in old {
                if let Some(cg) = self.faults.get_mut(&n).and_then(|a| a.cgroup.as_mut()) {
                    cg.ids = ids;
                }
            }
            return Err(e);
        }
        tracing::info!(faults = changed.len(), "cgroups below targets changed");
        Ok(())
    }

    /// Ends `ending` (each with why) and starts `due`, in one change of the rule set.
    fn advance(&mut self, ending: &[(String, &'static str)], due: &[String]) -> Result<(), EngineError> {
        let names: Vec<String> = ending.iter().map(|(n, _)| n.clone()).collect();
        let ended: Vec<Ended> = ending.iter().map(|(n, why)| ended(&self.view(n), why)).collect();
        // Known only while the ending faults are still here.
        let experiments: HashMap<String, Option<String>> =
            names.iter().map(|n| (n.clone(), self.faults[n].record.experiment.clone())).collect();
        for n in due {
            self.faults.get_mut(n).expect("listed").record.started = true;
        }
        let gone: HashSet<&String> = names.iter().collect();
        let remaining: Vec<&Active> =
            self.order.iter().filter(|n| !gone.contains(n)).map(|n| &self.faults[n]).collect();
        let new_slots: Vec<_> = due
            .iter()
            .map(|n| &self.faults[n])
            .map(|a| (a.record.slot, rule_action(a, self.settings.duplicate_mark)))
            .collect();
        let before: Vec<&Active> =
            self.order.iter().map(|n| &self.faults[n]).filter(|a| !due.contains(&a.record.name)).collect();
        if let Err(e) = commit(&mut self.kernel, &remaining, &new_slots, &before) {
            for n in due {
                self.faults.get_mut(n).expect("listed").record.started = false;
            }
            return Err(e);
        }
        self.order.retain(|n| !gone.contains(n));
        self.faults.retain(|n, _| !gone.contains(n));
        self.save();
        let daemon = Actor::default();
        if !due.is_empty() {
            let experiment = self.experiment_of(due);
            self.audit(&daemon, "start", due.to_vec(), experiment, "ok".into(), vec![]);
        }
        // Deadlines are an "expire" event, gone targets an "end" one.
        let (timed, gone): (Vec<Ended>, Vec<Ended>) = ended.into_iter().partition(|e| e.reason == "expired");
        for (action, ended) in [("expire", timed), ("end", gone)] {
            if !ended.is_empty() {
                let names: Vec<String> = ended.iter().map(|e| e.name.clone()).collect();
                let experiment = one_experiment(names.iter().map(|n| experiments[n].as_deref()));
                self.audit(&daemon, action, names, experiment, "ok".into(), ended);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Record;

    fn record(name: &str, slot: u32) -> Record {
        Record {
            name: name.into(),
            spec: Default::default(),
            slot,
            experiment: None,
            applied_by: Actor::default(),
            applied_at: 0,
            start_ns: 0,
            deadline_ns: NO_DEADLINE,
            started: true,
            starts_at: 0,
            expires_at: None,
        }
    }

    #[test]
    fn a_state_file_with_shared_slots_or_names_is_refused() {
        let state = |faults| State { faults, ..Default::default() };
        check_state(&state(vec![record("a", 0), record("b", 1)])).unwrap();
        for (faults, why) in [
            (vec![record("a", 3), record("b", 3)], "faults 'a' and 'b' share rule slot 3"),
            (vec![record("a", 0), record("a", 1)], "two faults are named 'a'"),
            (vec![record("a", MAX_RULES)], "past the maps"),
            (vec![record("x\n", 0)], "fault name"),
        ] {
            let e = check_state(&state(faults)).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("cleanup"), "{e}");
        }
    }
}
