//! Faults over time: re-adopting a previous daemon's faults at start, starting scheduled faults
//! when due, and reaping faults whose deadline has passed or whose interface or namespace is
//! gone. The kernel ignores a rule from its deadline on by itself; reaping frees its slot and
//! entries and records its final counters.

use std::collections::{HashMap, HashSet};

use chaos_common::MAX_RULES;

const SECOND: u64 = 1_000_000_000;

use super::{Dataplane, EndReason, Engine, EngineError, FaultSet, Guard, Settings, ended, one_experiment};
use crate::{
    api::{AuditAction, FaultView},
    state::{Actor, Ended, Event, State, Store, boot_id, mono_ns},
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

impl<D: Dataplane> Engine<D> {
    /// Builds the engine over `dataplane`. `state` is the state file as read, checked with
    /// [`check_state`] before the kernel was touched. When the kernel re-adopted a previous
    /// daemon's pinned maps (`adopted`), the faults of the state file that are still due are
    /// re-adopted with their slots, so their counters continue; the others are recorded as
    /// ended, and so are rules the kernel held that the state file did not know.
    pub fn new(
        dataplane: D,
        adopted: bool,
        state: State,
        settings: Settings,
        guard: Guard,
        store: Store,
    ) -> Result<Self, EngineError> {
        let boot_id = boot_id();
        let cri_sockets = settings.cri_sockets.clone();
        let same_boot = state.boot_id == boot_id;
        let runtimes = settings.runtimes();
        let mut lookups = crate::target::Lookups::default();
        let (faults, gone) = FaultSet::adopt(state.faults, state.next_id, same_boot, adopted, mono_ns(), |f| {
            crate::target::resolve(f, &runtimes, &mut lookups)
        });
        let mut engine = Self {
            dataplane,
            faults: FaultSet::new(state.next_id),
            settings,
            guard,
            store,
            boot_id,
            closed: false,
            trim: false,
            experiments: Default::default(),
            pods: std::sync::Arc::new(super::CriPods(cri_sockets)),
        };
        engine.load_experiments();
        let mut ended: Vec<Ended> = gone
            .iter()
            .map(|(record, reason)| {
                let counters = if same_boot && adopted && record.started {
                    engine.dataplane.counters(record.slot)
                } else {
                    Default::default()
                };
                Ended::new(&record.name, reason.as_str(), &counters)
            })
            .collect();
        // Those the journal took out (and recorded) before a daemon died, too.
        let ended_slots: Vec<u32> =
            gone.iter().map(|(r, _)| r.slot).chain(engine.store.dropped_slots().iter().copied()).collect();
        match engine.store.recover_history() {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "recorded the last change's audit events a stopped daemon had not"),
            Err(e) => tracing::warn!("recovering the audit events of the last change: {e}"),
        }
        let unknown = engine.dataplane.adopt(&engine.plan(&faults), &ended_slots)?;
        if !unknown.is_empty() {
            tracing::warn!(
                rules = unknown.len(),
                "the kernel held rules the state file did not know (a daemon stopped inside a change, or the \
                 state file was removed): they are taken out"
            );
        }
        ended.extend(
            unknown.iter().map(|(slot, c)| Ended::new(&format!("slot-{slot}"), "unknown to the state file", c)),
        );
        engine.snapshot(&faults)?;
        engine.faults = faults;
        let names: Vec<String> = engine.faults.records().into_iter().map(|r| r.name).collect();
        if !names.is_empty() || !ended.is_empty() {
            tracing::info!(adopted = names.len(), ended = ended.len(), "re-adopted the previous daemon's faults");
            let experiment = engine.experiment_of(&names);
            let event = engine.event(&Actor::default(), AuditAction::Adopt, names, experiment, "ok".into(), ended);
            // In the journal too: the faults it ends are gone from the snapshot just written.
            let faults = engine.faults.clone();
            if let Err(e) = engine.record(&faults, &faults, vec![event.clone()]) {
                tracing::warn!("recording the re-adoption: {e}");
            }
            engine.publish(vec![event]);
        }
        Ok(engine)
    }

    /// Starts scheduled faults that are due and removes those past their deadline or whose
    /// interface or namespace is gone. Returns the CLOCK_MONOTONIC time to be called again: the
    /// next start or deadline, and while a fault names another namespace at most a second away
    /// (a process can exit without any link changing). Deleted interfaces need no polling: the
    /// daemon is called on every link change too.
    pub fn tick(&mut self, pods: Option<&[super::Pod]>) -> Option<u64> {
        self.tick_at(mono_ns(), pods)
    }

    /// [`Self::tick`] at CLOCK_MONOTONIC time `now`. `pods`: the node's, listed when
    /// [`Self::wants_pods`] said so.
    pub(super) fn tick_at(&mut self, now: u64, pods: Option<&[super::Pod]>) -> Option<u64> {
        let mut ending: Vec<(String, EndReason)> =
            self.faults.expired(now).into_iter().map(|n| (n, EndReason::Expired)).collect();
        let expiring: HashSet<String> = ending.iter().map(|(n, _)| n.clone()).collect();
        ending.extend(self.vanished().into_iter().filter(|(n, _)| !expiring.contains(n)));
        let due = self.faults.due(now);
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
        // Between requests, not inside one: folding the journal costs a write of every fault.
        if self.store.wants_snapshot()
            && let Err(e) = self.snapshot(&self.faults.clone())
        {
            tracing::warn!("writing a snapshot of the state: {e}");
        }
        if std::mem::take(&mut self.trim) {
            super::trim_heap();
        }
        let idle = self.dataplane.release_idle(now);
        // Experiments keep Unix time (a schedule is a wall clock's); the wait is monotonic.
        let wall = crate::state::unix_ms();
        let experiments = self.follow_experiments(wall, pods).map(|at| now + at.saturating_sub(wall) * 1_000_000);
        let next = self.faults.next_due().into_iter().chain(idle).chain(experiments).min();
        match (self.faults.special().any(|a| a.watch.is_some()), next) {
            (false, _) => next,
            (true, Some(t)) => Some(t.min(now + SECOND)),
            (true, None) => Some(now + SECOND),
        }
    }

    /// Faults whose interface is gone (deleted, or its name now another device's), or whose
    /// namespace (or process) is, with why. One listing of the interfaces for all of them.
    fn vanished(&self) -> Vec<(String, EndReason)> {
        if self.faults.is_empty() {
            return Vec::new();
        }
        let present = match self.dataplane.interfaces() {
            Ok(present) => present,
            Err(e) => {
                tracing::debug!("listing links: {e}");
                return Vec::new();
            }
        };
        // Each interface looked at once (not each fault): an interface deleted, or its name now
        // another device's, ends every fault on it. connect-fail (ifindex 0) has none.
        let mut gone: Vec<(String, EndReason)> = Vec::new();
        for ifindex in self.faults.ifindexes() {
            let Some(one) = self.faults.one_on(ifindex) else { continue };
            if present.get(&ifindex) != Some(&one.fault.interface) {
                gone.extend(self.faults.on_interface(ifindex).into_iter().map(|n| (n, EndReason::InterfaceGone)));
            }
        }
        // Each path looked at once; whether it still names a fault's target, and why not, is
        // the fault's own (a --pid and a --netns fault can watch one path for different ends).
        let mut looked: HashMap<&std::path::Path, Option<(u64, u64)>> = HashMap::new();
        for a in self.faults.special() {
            let Some(w) = &a.watch else { continue };
            if let Some(why) = w.gone(*looked.entry(w.path.as_path()).or_insert_with(|| w.now())) {
                // A namespace's end is said before its interface's.
                gone.retain(|(n, _)| *n != a.record.name);
                gone.push((a.record.name.clone(), EndReason::TargetGone(why)));
            }
        }
        gone
    }

    /// Takes in the cgroups made or removed below target cgroups since the last look (a new
    /// container's cgroup under a pod's, say): their processes are in the target too.
    fn follow_cgroups(&mut self) -> Result<(), EngineError> {
        let mut changed = Vec::new();
        for a in self.faults.special() {
            let Some(cg) = &a.cgroup else { continue };
            // A target that is gone ends at the next look (`vanished`).
            if let Some(ids) = cg.now().filter(|ids| *ids != cg.ids) {
                changed.push((a.record.name.clone(), ids));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let next = self.faults.with_cgroups(&changed);
        self.commit(next, vec![])?;
        tracing::info!(faults = changed.len(), "cgroups below targets changed");
        Ok(())
    }

    /// Ends `ending` (each with why) and starts `due`, in one change.
    fn advance(&mut self, ending: &[(String, EndReason)], due: &[String]) -> Result<(), EngineError> {
        let (next, gone) = self.faults.start(due).without(ending.iter().map(|(n, _)| n.as_str()));
        let daemon = Actor::default();
        let started = (!due.is_empty()).then(|| {
            let experiment = self.experiment_of(due);
            self.event(&daemon, AuditAction::Start, due.to_vec(), experiment, "ok".into(), vec![])
        });
        if gone.is_empty() {
            return self.commit(next, started.into_iter().collect());
        }
        self.remove_now(next, gone, |engine, views| {
            let views: HashMap<&str, &FaultView> = views.iter().map(|v| (v.name.as_str(), v)).collect();
            let mut events: Vec<Event> = started.into_iter().collect();
            // Deadlines are an "expire" event, gone targets an "end" one.
            let (timed, gone): (Vec<_>, Vec<_>) = ending.iter().partition(|(_, why)| *why == EndReason::Expired);
            for (action, ending) in [(AuditAction::Expire, timed), (AuditAction::End, gone)] {
                if !ending.is_empty() {
                    let names: Vec<String> = ending.iter().map(|(n, _)| n.clone()).collect();
                    let ended: Vec<Ended> =
                        ending.iter().map(|(n, why)| ended(views[n.as_str()], why.as_str())).collect();
                    let experiment = one_experiment(names.iter().map(|n| views[n.as_str()].experiment.as_deref()));
                    events.push(engine.event(&daemon, action, names, experiment, "ok".into(), ended));
                }
            }
            events
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::test_record as record;

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
