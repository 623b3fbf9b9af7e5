//! The engine against a model of the kernel: naming, slots, scheduling, expiry, re-adoption,
//! targets that go, rollback and the audit trail, with no privileges (faults name `lo`, which
//! every network namespace has; the state directory is a temporary one).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use chaos_common::{Counters, RuleAction};

use super::*;
use crate::{
    spec::{DurationSpec, FaultSpec},
    state::Event,
};

/// The kernel as the engine sees it: the live rules by slot, their counters, the interfaces.
#[derive(Default)]
struct Model {
    rules: BTreeMap<u32, RuleAction>,
    counters: HashMap<u32, Counters>,
    interfaces: HashMap<u32, String>,
    /// The next reconcile fails (and changes nothing), as a kernel that refuses would.
    fail: bool,
    reconciles: usize,
}

impl Model {
    fn new() -> Self {
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo");
        Self { interfaces: HashMap::from([(lo, "lo".to_owned())]), ..Default::default() }
    }
}

impl Dataplane for Model {
    fn reconcile(&mut self, live: &Plan, desired: &Plan) -> Result<(), KernelError> {
        self.reconciles += 1;
        if std::mem::take(&mut self.fail) {
            return Err(KernelError::Unsupported("refused by the test".into()));
        }
        // The kernel starts a fresh slot's counters at zero; a slot's rule is its fault's.
        for (slot, _) in desired.fresh_slots(&desired.changes(live)) {
            self.counters.insert(slot, Counters::default());
        }
        self.rules = desired.actions().into_iter().collect();
        Ok(())
    }

    fn adopt(&mut self, desired: &Plan, ended: &[u32]) -> Result<Vec<(u32, Counters)>, KernelError> {
        let known = desired.faults.by_slot();
        let unknown: Vec<(u32, Counters)> = self
            .rules
            .keys()
            .filter(|s| !known.contains_key(*s) && !ended.contains(s))
            .map(|s| (*s, self.counters.get(s).copied().unwrap_or_default()))
            .collect();
        self.rules = desired.actions().into_iter().collect();
        Ok(unknown)
    }

    fn counters(&self, slot: u32) -> Counters {
        self.counters.get(&slot).copied().unwrap_or_default()
    }

    fn can_shape(&self, _: bool, _: bool) -> Result<(), KernelError> {
        Ok(())
    }

    fn can_scope(&self, _: bool, _: Option<i32>) -> Result<(), KernelError> {
        Ok(())
    }

    fn release_idle(&mut self, _: u64) -> Option<u64> {
        None
    }

    fn interfaces(&self) -> Result<HashMap<u32, String>, String> {
        Ok(self.interfaces.clone())
    }

    fn records(&self) -> (Vec<NlFilter>, ShapingRecord) {
        Default::default()
    }

    fn unpin(&mut self) {}
}

/// A state directory of the test's own, removed when the test ends however it ends.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chaos-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn store(&self) -> Store {
        Store::open(&self.0, 1000).unwrap()
    }

    fn state(&self) -> State {
        self.store().load().unwrap().unwrap_or_default()
    }

    fn history(&self) -> Vec<Event> {
        self.store().reader().read(1000).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings() -> Settings {
    Settings {
        max_faults: 100,
        max_duration: Duration::from_secs(3600),
        allow_unlimited: true,
        max_start_after: Duration::from_secs(3600),
        duplicate_mark: 1 << 20,
        cri_sockets: vec![],
        runtime_dirs: vec![],
    }
}

fn engine(dir: &Dir) -> Engine<Model> {
    Engine::new(Model::new(), false, State::default(), settings(), Guard::default(), dir.store()).unwrap()
}

/// A loss on `lo` to one destination, named `name` (or not).
fn loss(name: Option<&str>, dst: &str) -> FaultSpec {
    FaultSpec {
        name: name.map(Into::into),
        interface: Some("lo".into()),
        action: Some("loss".into()),
        loss: Some(0.1),
        dst: Some(dst.into()),
        ..Default::default()
    }
}

fn batch(faults: Vec<FaultSpec>) -> Apply {
    Apply { faults, ..Default::default() }
}

fn root() -> Actor {
    Actor { uid: Some(0), ..Default::default() }
}

fn names(views: &[FaultView]) -> Vec<&str> {
    views.iter().map(|v| v.name.as_str()).collect()
}

fn slot_of(e: &Engine<Model>, name: &str) -> u32 {
    e.faults().get(name).unwrap().slot()
}

#[test]
fn unnamed_faults_get_names_and_taken_names_are_refused() {
    let dir = Dir::new("names");
    let mut e = engine(&dir);
    let applied = e.apply(&batch(vec![loss(None, "192.0.2.1"), loss(Some("mine"), "192.0.2.2")]), &root()).unwrap();
    assert_eq!(names(&applied), ["loss-1", "mine"]);
    let err = e.apply(&batch(vec![loss(Some("mine"), "192.0.2.3")]), &root()).unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");
    // A batch is all or none: its second fault's name is taken, so its first is not applied,
    // and no name is used up.
    let err = e.apply(&batch(vec![loss(None, "192.0.2.4"), loss(Some("mine"), "192.0.2.5")]), &root()).unwrap_err();
    assert!(err.to_string().contains("fault[1].name"), "{err}");
    assert_eq!(names(&e.list()), ["loss-1", "mine"]);
    assert_eq!(names(&e.apply(&batch(vec![loss(None, "192.0.2.6")]), &root()).unwrap()), ["loss-2"]);
    assert_eq!(dir.state().next_id, 3);
}

#[test]
fn a_freed_slot_is_reused_with_fresh_counters() {
    let dir = Dir::new("slots");
    let mut e = engine(&dir);
    let three = (0..3).map(|i| loss(Some(&format!("f{i}")), &format!("192.0.2.{i}"))).collect();
    e.apply(&batch(three), &root()).unwrap();
    assert_eq!((slot_of(&e, "f0"), slot_of(&e, "f1"), slot_of(&e, "f2")), (0, 1, 2));
    e.dataplane.counters.insert(1, Counters { matched: 5, dropped: 2, ..Default::default() });
    let removed = e.remove(&["f1".into()], &root()).unwrap();
    assert_eq!((removed[0].matched, removed[0].dropped), (5, 2), "the final counters are reported");
    assert!(!e.dataplane.rules.contains_key(&1));
    e.apply(&batch(vec![loss(Some("g"), "192.0.2.9")]), &root()).unwrap();
    assert_eq!(slot_of(&e, "g"), 1, "the lowest free slot");
    assert_eq!(e.get("g").unwrap().matched, 0, "a new fault does not inherit the slot's counts");
    // The list keeps the order of application.
    assert_eq!(names(&e.list()), ["f0", "f2", "g"]);
}

#[test]
fn scheduled_faults_start_when_due_and_expire_at_their_deadline() {
    let dir = Dir::new("schedule");
    let mut e = engine(&dir);
    let mut later = loss(Some("later"), "192.0.2.1");
    later.start_after = Some(DurationSpec::Text("1h".into()));
    later.duration = Some(DurationSpec::Text("10s".into()));
    e.apply(&batch(vec![later]), &root()).unwrap();
    let view = e.get("later").unwrap();
    assert_eq!(view.state, FaultState::Scheduled);
    assert!(e.dataplane.rules.is_empty(), "nothing is in the kernel before its start");
    let record = e.faults().get("later").unwrap().record.clone();
    // Before its start: nothing happens, and the engine asks to be called at the start.
    assert_eq!(e.tick_at(record.start_ns - 1, None), Some(record.start_ns));
    assert!(e.dataplane.rules.is_empty());
    assert_eq!(e.tick_at(record.start_ns, None), Some(record.deadline_ns));
    assert_eq!(e.get("later").unwrap().state, FaultState::Active);
    assert!(e.dataplane.rules.contains_key(&record.slot));
    assert!(dir.state().faults[0].started, "the state file says it started");
    e.dataplane.counters.insert(record.slot, Counters { matched: 9, ..Default::default() });
    assert_eq!(e.tick_at(record.deadline_ns, None), None);
    assert!(e.list().is_empty() && e.dataplane.rules.is_empty() && dir.state().faults.is_empty());
    let history = dir.history();
    let actions: Vec<&str> = history.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["apply", "start", "expire"]);
    let expired = &history[2].ended[0];
    assert_eq!((expired.name.as_str(), expired.reason.as_str(), expired.matched), ("later", "expired", 9));
}

#[test]
fn a_refused_kernel_change_leaves_everything_as_it_was() {
    let dir = Dir::new("rollback");
    let mut e = engine(&dir);
    e.apply(&batch(vec![loss(Some("a"), "192.0.2.1")]), &root()).unwrap();
    let before = (dir.state().faults, e.dataplane.rules.clone());
    e.dataplane.fail = true;
    let err = e.apply(&batch(vec![loss(Some("b"), "192.0.2.2")]), &root()).unwrap_err();
    assert!(matches!(err, EngineError::Kernel(_)), "{err}");
    e.dataplane.fail = true;
    assert!(e.remove(&["a".into()], &root()).is_err());
    e.dataplane.fail = true;
    assert!(e.clear(&root()).is_err());
    assert_eq!(names(&e.list()), ["a"]);
    assert_eq!((dir.state().faults, e.dataplane.rules.clone()), before);
    let results: Vec<String> = dir.history().iter().map(|e| e.result.clone()).collect();
    assert_eq!(results[0], "ok");
    assert!(results[1..].iter().all(|r| r.starts_with("error: refused by the test")), "{results:?}");
    // And the name stays free.
    e.apply(&batch(vec![loss(Some("b"), "192.0.2.2")]), &root()).unwrap();
}

#[test]
fn a_change_the_state_file_cannot_record_is_refused_and_undone() {
    let dir = Dir::new("unwritable");
    let mut e = engine(&dir);
    e.apply(&batch(vec![loss(Some("a"), "192.0.2.1")]), &root()).unwrap();
    let rules = e.dataplane.rules.clone();
    // A directory in the journal's place: nothing can be appended to it, root or not.
    let state = dir.0.join("journal.jsonl");
    let saved = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir_all(state.join("in-the-way")).unwrap();
    let err = e.apply(&batch(vec![loss(Some("b"), "192.0.2.2")]), &root()).unwrap_err();
    assert!(matches!(err, EngineError::State(_)), "{err}");
    assert_eq!(e.dataplane.rules, rules, "the kernel went back");
    let err = e.remove(&["a".into()], &root()).unwrap_err();
    assert!(matches!(err, EngineError::State(_)), "{err}");
    assert_eq!(e.dataplane.rules, rules, "a removal the state cannot record does not happen");
    assert_eq!(names(&e.list()), ["a"]);
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, saved).unwrap();
    e.remove(&["a".into()], &root()).unwrap();
    assert!(e.dataplane.rules.is_empty());
}

#[test]
fn a_restart_adopts_what_is_due_and_records_the_rest() {
    let dir = Dir::new("adopt");
    let mut first = engine(&dir);
    let mut short = loss(Some("short"), "192.0.2.2");
    short.duration = Some(DurationSpec::Text("1s".into()));
    first.apply(&batch(vec![loss(Some("long"), "192.0.2.1"), short]), &root()).unwrap();
    let long = slot_of(&first, "long");
    let mut kernel = std::mem::replace(&mut first.dataplane, Model::new());
    kernel.counters.insert(long, Counters { matched: 7, ..Default::default() });
    // A rule the state file never heard of (a daemon killed between the kernel and the file).
    kernel.rules.insert(42, RuleAction { kind: 1, ..Default::default() });
    kernel.counters.insert(42, Counters { matched: 3, ..Default::default() });
    drop(first);

    let mut state = dir.state();
    let deadline = state.faults[1].deadline_ns;
    // As if the restart came after the short one's deadline.
    state.faults[1].deadline_ns = 1;
    let second = Engine::new(kernel, true, state, settings(), Guard::default(), dir.store()).unwrap();
    assert!(deadline > 1);
    assert_eq!(names(&second.list()), ["long"]);
    assert_eq!(slot_of(&second, "long"), long);
    assert_eq!(second.get("long").unwrap().matched, 7, "counters go on");
    assert_eq!(second.dataplane.rules.keys().copied().collect::<Vec<_>>(), [long], "the unknown rule is out");
    let adopt = dir.history().pop().unwrap();
    assert_eq!((adopt.action.as_str(), adopt.faults.as_slice()), ("adopt", ["long".to_owned()].as_slice()));
    let ended: Vec<(&str, &str, u64)> =
        adopt.ended.iter().map(|e| (e.name.as_str(), e.reason.as_str(), e.matched)).collect();
    assert_eq!(ended, [("short", "expired", 0), ("slot-42", "unknown to the state file", 3)]);
    // Names go on from where the first daemon left them.
    assert_eq!(second.faults().next_id(), dir.state().next_id);
}

#[test]
fn maps_a_previous_daemon_did_not_leave_or_another_boot_end_every_fault() {
    for (adopted, boot, reason) in [
        (false, None, "its kernel objects were gone (removed by cleanup?)"),
        (true, Some("other"), "the node rebooted"),
    ] {
        let dir = Dir::new("not-adopted");
        let mut first = engine(&dir);
        first.apply(&batch(vec![loss(Some("a"), "192.0.2.1")]), &root()).unwrap();
        drop(first);
        let mut state = dir.state();
        if let Some(boot) = boot {
            state.boot_id = boot.into();
        }
        let second = Engine::new(Model::new(), adopted, state, settings(), Guard::default(), dir.store()).unwrap();
        assert!(second.list().is_empty());
        let adopt = dir.history().pop().unwrap();
        assert_eq!(adopt.ended[0].reason, reason);
        assert!(dir.state().faults.is_empty());
    }
}

#[test]
fn a_fault_ends_when_its_interface_or_namespace_goes() {
    let dir = Dir::new("targets");
    let mut e = engine(&dir);
    // A namespace named by a path of the test's own: the daemon's namespace, through a link
    // that the test then removes (as `ip netns del` removes a name).
    let link = dir.0.join("netns");
    std::os::unix::fs::symlink("/proc/thread-self/ns/net", &link).unwrap();
    let mut in_ns = loss(Some("in-ns"), "192.0.2.1");
    in_ns.netns = Some(link.display().to_string());
    e.apply(&batch(vec![in_ns, loss(Some("on-lo"), "192.0.2.2")]), &root()).unwrap();
    let now = crate::state::mono_ns();
    // While a fault watches a namespace, the engine looks every second.
    assert!(e.tick_at(now, None).is_some_and(|t| t <= now + 1_000_000_000));
    assert_eq!(e.list().len(), 2);
    std::fs::remove_file(&link).unwrap();
    e.tick_at(now, None);
    assert_eq!(names(&e.list()), ["on-lo"]);
    e.dataplane.interfaces.clear();
    e.tick_at(now, None);
    assert!(e.list().is_empty());
    let ends: Vec<(String, String)> = dir
        .history()
        .iter()
        .filter(|ev| ev.action == AuditAction::End)
        .map(|ev| (ev.faults[0].clone(), ev.ended[0].reason.clone()))
        .collect();
    assert_eq!(
        ends,
        [
            ("in-ns".to_owned(), "its network namespace is gone".to_owned()),
            ("on-lo".to_owned(), "its interface is gone".to_owned())
        ]
    );
}

#[test]
fn experiments_are_removed_together_and_audited_by_name() {
    let dir = Dir::new("experiments");
    let mut e = engine(&dir);
    let req = Apply { experiment: Some("exp".into()), ..batch(vec![loss(None, "192.0.2.1"), loss(None, "192.0.2.2")]) };
    e.apply(&req, &root()).unwrap();
    let err = e.apply(&req, &root()).unwrap_err();
    assert!(err.to_string().contains("an experiment named 'exp' is running"), "{err}");
    e.apply(&batch(vec![loss(Some("other"), "192.0.2.3")]), &root()).unwrap();
    let removed = e.remove_experiment("exp", &root()).unwrap();
    assert_eq!(names(&removed), ["loss-1", "loss-2"]);
    assert_eq!(names(&e.list()), ["other"]);
    assert!(matches!(e.remove_experiment("exp", &root()), Err(EngineError::NotFound(_))));
    let history = dir.history();
    let last: Vec<(&str, Option<&str>, usize)> =
        history.iter().map(|ev| (ev.action.as_str(), ev.experiment.as_deref(), ev.ended.len())).collect();
    assert_eq!(
        last,
        [
            ("apply", Some("exp"), 0),
            ("apply", Some("exp"), 0),
            ("apply", None, 0),
            ("remove-experiment", Some("exp"), 2),
            ("remove-experiment", Some("exp"), 0)
        ]
    );
    assert!(history[1].result.starts_with("error:") && history[4].result.starts_with("error: no experiment"));
}

#[test]
fn each_change_reconciles_once() {
    let dir = Dir::new("reconciles");
    let mut e = engine(&dir);
    let start = e.dataplane.reconciles;
    e.apply(&batch((0..20).map(|i| loss(None, &format!("192.0.2.{i}"))).collect()), &root()).unwrap();
    e.remove(&["loss-3".into(), "loss-4".into()], &root()).unwrap();
    e.clear(&root()).unwrap();
    assert_eq!(e.dataplane.reconciles - start, 3);
}

/// The followed sessions are a superset: one the faults touch is confirmed by a listing (here
/// the test's namespace has no session on port 1, as with a session of another namespace or
/// one closed), so it refuses nothing; faults that cannot touch the port do not ask.
#[test]
fn followed_sessions_are_confirmed_by_a_listing() {
    let mut guard = Guard { ssh_ports: vec![1], ..Default::default() };
    let spec = loss(None, "127.0.0.1");
    let fault = spec.validate().unwrap();
    let stale = vec![("127.0.0.1:1".parse().unwrap(), "127.0.0.1:40000".parse().unwrap())];
    assert!(crate::guard::could_touch(&[&fault], &stale), "the test needs a fault touching the entry");
    let mut asked = false;
    let flows = guard.flows(&[&fault], |ports| {
        asked = true;
        assert_eq!(ports, [1]);
        Some(stale.clone())
    });
    assert!(asked && flows.is_empty(), "{flows:?}");
    let udp = FaultSpec { protocol: Some("udp".into()), ..spec }.validate().unwrap();
    let flows = guard.flows(&[&udp], |_| panic!("a UDP fault cannot touch a TCP session"));
    assert!(flows.is_empty());
}

#[test]
fn a_schedule_runs_at_its_ticks_never_over_its_last_run_and_survives_a_restart() {
    use crate::schedule::ScheduleSpec;
    let dir = Dir::new("every-20s");
    let mut e = engine(&dir);
    let template = FaultSpec { duration: Some(DurationSpec::Text("5s".into())), ..loss(Some("tick"), "192.0.2.1") };
    let every = |cron: &str| Some(ScheduleSpec { cron: cron.into(), history_limit: None });
    let req =
        Apply { experiment: Some("every".into()), schedule: every("@every 20s"), ..batch(vec![template.clone()]) };
    // Refused: no experiment name; a fault without a duration.
    let e1 = e.apply(&Apply { experiment: None, ..req.clone() }, &root()).unwrap_err().to_string();
    assert!(e1.contains("needs an experiment name"), "{e1}");
    let endless = Apply { faults: vec![loss(Some("tick"), "192.0.2.1")], ..req.clone() };
    let e2 = e.apply(&endless, &root()).unwrap_err().to_string();
    assert!(e2.starts_with("duration:") && e2.contains("required with a schedule"), "{e2}");
    let e3 = e.apply(&Apply { schedule: every("61 * * * *"), ..req.clone() }, &root()).unwrap_err().to_string();
    assert!(e3.starts_with("schedule.cron:"), "{e3}");
    assert!(e.experiments().is_empty() && e.list().is_empty(), "refusals change nothing");

    assert!(e.apply(&req, &root()).unwrap().is_empty(), "the first run is at the first tick");
    let view = e.experiments().remove(0);
    let first = view.next_run_ms.unwrap();
    assert_eq!(first - view.applied_at_ms, 20_000);
    assert_eq!(e.follow_experiments(first - 1, None), Some(first), "nothing before its tick");
    assert!(e.list().is_empty());
    assert_eq!(e.follow_experiments(first, None), Some(first + 20_000));
    assert_eq!(names(&e.list()), ["tick"]);
    assert_eq!(e.list()[0].experiment.as_deref(), Some("every"));
    let run = dir.history().pop().unwrap();
    assert_eq!((run.action.as_str(), run.faults.as_slice()), ("run", ["tick".to_owned()].as_slice()));
    // The next tick while the run is still active: skipped and recorded, never overlapping.
    e.follow_experiments(first + 20_000, None);
    let view = e.experiments().remove(0);
    assert_eq!((view.runs, view.skipped, view.faults), (1, 1, 1));
    assert_eq!(view.last_runs.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(), ["ran", "skipped"]);
    assert_eq!(dir.history().pop().unwrap().action.as_str(), "skip");
    // Its run over, a restarted daemon keeps the schedule and runs at the next tick.
    e.remove(&["tick".into()], &root()).unwrap();
    drop(e);
    let mut again = engine(&dir);
    let view = again.experiments().remove(0);
    assert_eq!((view.name.as_str(), view.next_run_ms, view.runs), ("every", Some(first + 40_000), 1));
    again.follow_experiments(first + 40_000, None);
    assert_eq!(names(&again.list()), ["tick"]);
    assert_eq!(again.experiments()[0].runs, 2);
    // Removing the experiment ends its run and its schedule.
    let removed = again.remove_experiment("every", &root()).unwrap();
    assert_eq!(names(&removed), ["tick"]);
    assert!(again.experiments().is_empty() && again.list().is_empty());
    assert_eq!(again.follow_experiments(first + 60_000, None), None);
    assert!(engine(&dir).experiments().is_empty(), "and a restart does not bring it back");
}
