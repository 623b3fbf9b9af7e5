//! The engine: takes requests and time, turns each into the next fault set (a value: see
//! [`faults`]), has the dataplane make that set live ([`Dataplane::reconcile`], which writes only
//! what changed and undoes its own half-done work), records it in the state file, and only then
//! keeps it. Every change is all-or-nothing: a refused change leaves the set, the state file and
//! the kernel as they were. The audit trail records every request and every fault's end.

mod experiments;
mod faults;
mod lifecycle;
mod plan;

pub use experiments::{CriPods, ExperimentRecord, Pod, PodSource};

pub use faults::{Active, EndReason, FaultSet, Incoming, Limits, Now};
pub use lifecycle::check_state;
pub use plan::{Change, Plan, fault_hooks};

use std::{sync::Arc, time::Duration};

use chaos_common::{Counters, NO_DEADLINE};

use crate::{
    api::{Apply, AuditAction, FaultState, FaultView, Status},
    crashpoint::{self, Point},
    guard::Protected,
    kernel::{Kernel, KernelError, NlFilter, ShapingRecord},
    spec::{Action, Direction, FaultSpec, SpecError},
    state::{Actor, Ended, Event, State, Store, unix_ms},
    text::escape,
};

/// Bounds on what an audit event records (bytes, escaped): a refused request's method and path,
/// each fault name (valid ones have at most 63), a result.
const MAX_ACTION: usize = 160;
const MAX_NAME: usize = 80;
const MAX_RESULT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input: the field and why.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// A name already taken.
    #[error(transparent)]
    Conflict(SpecError),
    /// A fault would touch a protected flow, and `force` was not given.
    #[error(transparent)]
    Protected(SpecError),
    #[error("no {0}")]
    NotFound(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("writing the state file: {0}")]
    State(std::io::Error),
    /// A state file that cannot be re-adopted as it is.
    #[error("the state file: {0}")]
    BadState(String),
}

/// What the engine takes from the config: its limits, and how faults are carried out.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_faults: usize,
    pub max_duration: Duration,
    pub allow_unlimited: bool,
    pub max_start_after: Duration,
    /// The `skb->mark` bit duplicate faults mark their copies with.
    pub duplicate_mark: u32,
    /// The container runtimes' CRI sockets (for pods).
    pub cri_sockets: Vec<std::path::PathBuf>,
    /// Where container runtimes keep their containers' specs (for pods, when no CRI socket
    /// answers).
    pub runtime_dirs: Vec<std::path::PathBuf>,
}

impl Settings {
    /// Where pods are found.
    pub fn runtimes(&self) -> crate::target::Runtimes {
        crate::target::Runtimes { cri_sockets: self.cri_sockets.clone(), state_dirs: self.runtime_dirs.clone() }
    }
}

/// Flows faults must not touch without `force`: configured ones, and sessions to these ports.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    pub protected: Vec<Protected>,
    pub ssh_ports: Vec<u16>,
    pub sessions: crate::guard::SessionCache,
}

/// What carries faults out: the kernel ([`Kernel`]), or a model of it in the engine's tests.
pub trait Dataplane {
    /// Makes the kernel run `desired` where it runs `live` now, writing only what differs. On
    /// error it undoes what it did: the kernel runs `live`, as before.
    fn reconcile(&mut self, live: &Plan, desired: &Plan) -> Result<(), KernelError>;
    /// Takes over a previous daemon's kernel objects for `desired` (their counters go on). Rules
    /// in other slots are taken out: those of `ended` (faults of the state file that end now),
    /// and any the state file did not know (a daemon killed inside a change), which are
    /// returned with their last counters, to be recorded.
    fn adopt(&mut self, desired: &Plan, ended: &[u32]) -> Result<Vec<(u32, Counters)>, KernelError>;
    /// A rule slot's counters, summed over CPUs.
    fn counters(&self, slot: u32) -> Counters;
    /// Whether a delay or bandwidth fault can run here (on ingress too; with reorder).
    fn can_shape(&self, ingress: bool, reorder: bool) -> Result<(), KernelError>;
    /// Whether a cgroup fault can run here (on ingress; failing connect() with an errno).
    fn can_scope(&self, ingress: bool, connect: Option<i32>) -> Result<(), KernelError>;
    /// Whether a dns fault can run here.
    fn can_dns(&self) -> Result<(), KernelError> {
        Ok(())
    }
    /// What a connect-fail given no errno fails with here.
    fn default_errno(&self) -> i32 {
        libc::ECONNREFUSED
    }
    /// Detaches what no fault has used for a while (see `Kernel::release_idle`); returns the
    /// CLOCK_MONOTONIC time to be called again, if any.
    fn release_idle(&mut self, now_ns: u64) -> Option<u64>;
    /// The interfaces there are now, by ifindex, or why they could not be listed.
    fn interfaces(&self) -> Result<std::collections::HashMap<u32, String>, String>;
    /// What the state file keeps of the kernel side: the cls_bpf filters and the qdiscs.
    fn records(&self) -> (Vec<NlFilter>, ShapingRecord);
    /// Detaches everything and removes the pins: the daemon's clean exit.
    fn unpin(&mut self);
    /// The established sessions on `ports` the kernel follows as they open and close, a
    /// superset of this namespace's, as (local, remote); `None`: list them by a dump.
    fn followed_sessions(&mut self, _ports: &[u16]) -> Option<Vec<(std::net::SocketAddr, std::net::SocketAddr)>> {
        None
    }
}

pub struct Engine<D: Dataplane = Kernel> {
    dataplane: D,
    /// What the kernel runs (and the state file holds).
    faults: FaultSet,
    settings: Settings,
    guard: Guard,
    store: Store,
    boot_id: String,
    /// Set by [`Self::shutdown`].
    closed: bool,
    /// A large change freed memory the allocator keeps: given back at the next tick.
    trim: bool,
    /// Experiments with a selector, a target or a schedule, by name (see [`experiments`]).
    experiments: std::collections::BTreeMap<String, experiments::Followed>,
    /// Where the node's pods come from.
    pods: Arc<dyn PodSource>,
}

impl<D: Dataplane> Engine<D> {
    /// Applies a batch (all or none) on behalf of `actor`, and records it in the audit trail.
    pub fn apply(&mut self, req: &Apply, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let result = if req.selector.is_some() || req.target.is_some() || req.schedule.is_some() {
            self.apply_followed(req, actor)
        } else {
            self.try_apply(req, actor, AuditAction::Apply, "ok", crate::target::Lookups::default())
        };
        if let Err(e) = &result {
            self.audit_refused(req, actor, AuditAction::Apply, e);
        }
        result
    }

    /// Records a batch refused (`action`: an apply, a join), naming the faults it named.
    fn audit_refused(&mut self, req: &Apply, actor: &Actor, action: AuditAction, e: &EngineError) {
        let names = req.faults.iter().filter_map(|f| f.name.clone()).collect();
        self.audit(actor, action, names, req.experiment.clone(), failed(e), vec![]);
    }

    /// Removes the named faults (all must exist) and returns their final state.
    pub fn remove(&mut self, names: &[String], actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let result = self.faults.remove(names).and_then(|(next, gone)| {
            self.remove_now(next, gone, |e, views| vec![e.removal(actor, Removal::Faults, names.to_vec(), views)])
        });
        self.audit_failure(actor, Removal::Faults.action(), names.to_vec(), None, result)
    }

    /// Removes every fault of an experiment, and stops following it (its schedule, its
    /// selection).
    pub fn remove_experiment(&mut self, experiment: &str, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let names = self.faults.of_experiment(experiment);
        let followed = self.experiments.contains_key(experiment);
        if followed {
            let kept = self.experiments.remove(experiment);
            if let Err(e) = self.save_experiments() {
                self.experiments.extend(kept.map(|k| (experiment.to_owned(), k)));
                return self.audit_failure(
                    actor,
                    Removal::Experiment.action(),
                    vec![experiment.into()],
                    Some(experiment.into()),
                    Err(e),
                );
            }
        }
        let result = if names.is_empty() && followed {
            let event = self.removal(actor, Removal::Experiment, vec![experiment.into()], &[]);
            self.publish(vec![event]);
            Ok(vec![])
        } else if names.is_empty() {
            Err(EngineError::NotFound(format!("experiment named '{experiment}'")))
        } else {
            self.faults.remove(&names).and_then(|(next, gone)| {
                self.remove_now(next, gone, |e, views| {
                    vec![e.removal(actor, Removal::Experiment, vec![experiment.into()], views)]
                })
            })
        };
        // Named even when there was none to remove.
        let named = Some(experiment.to_owned());
        self.audit_failure(actor, Removal::Experiment.action(), vec![experiment.into()], named, result)
    }

    /// Removes every fault (scheduled ones too) and detaches every program.
    pub fn clear(&mut self, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        self.forget_experiments();
        let (next, gone) = self.faults.clear();
        let result = self.remove_now(next, gone, |e, views| vec![e.removal(actor, Removal::Clear, vec![], views)]);
        self.audit_failure(actor, Removal::Clear.action(), vec![], None, result)
    }

    /// Records a refused request (the engine never saw it) in the audit trail. `action` and
    /// `why` may hold what the peer sent: they are escaped and bounded with the rest.
    pub fn refused(&mut self, actor: &Actor, action: AuditAction, why: &str) {
        self.audit(actor, action, vec![], None, format!("refused: {why}"), vec![]);
    }

    pub fn list(&self) -> Vec<FaultView> {
        self.faults.ordered().into_iter().map(|a| self.view(a)).collect()
    }

    pub fn get(&self, name: &str) -> Result<FaultView, EngineError> {
        match self.faults.get(name) {
            Some(a) => Ok(self.view(a)),
            None => Err(EngineError::NotFound(format!("fault named '{name}'"))),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The fault set the kernel runs now.
    pub fn faults(&self) -> &FaultSet {
        &self.faults
    }

    /// Removes every fault and every pin: the daemon's clean exit. Later changes are refused.
    pub fn shutdown(&mut self, actor: &Actor) {
        // Their definitions stay for the next start (schedules go on); their faults go, and so
        // do the current runs: no pod joins a run whose faults the exit took out.
        let mut kept = std::mem::take(&mut self.experiments);
        match self.clear(actor) {
            Ok(removed) => tracing::info!(removed = removed.len(), "faults removed, programs detached"),
            Err(e) => tracing::error!("removing faults: {e}"),
        }
        if !kept.is_empty() {
            let now = crate::state::unix_ms();
            kept.values_mut().for_each(|f| f.end_run(now));
            self.experiments = kept;
            match self.save_experiments() {
                Ok(()) => tracing::info!(experiments = self.experiments.len(), "experiments kept for the next start"),
                Err(e) => tracing::error!("recording the experiments for the next start: {e}"),
            }
        }
        self.dataplane.unpin();
        crate::target::release_cgroup2();
        self.closed = true;
    }

    fn limits(&self) -> Limits {
        Limits {
            max_faults: self.settings.max_faults,
            max_duration: self.settings.max_duration,
            allow_unlimited: self.settings.allow_unlimited,
            max_start_after: self.settings.max_start_after,
        }
    }

    fn plan<'a>(&self, faults: &'a FaultSet) -> Plan<'a> {
        Plan { faults, mark: self.settings.duplicate_mark }
    }

    /// Stops following every experiment (`clear`).
    fn forget_experiments(&mut self) {
        if !self.experiments.is_empty() {
            self.experiments.clear();
            if let Err(e) = self.save_experiments() {
                tracing::error!("recording that no experiment is followed: {e}");
            }
        }
    }

    /// Applies a batch (all or none), its event recorded as `action` with `result`. `lookups`:
    /// what is known already (a run's pods).
    fn try_apply(
        &mut self,
        req: &Apply,
        actor: &Actor,
        action: AuditAction,
        result: &str,
        mut lookups: crate::target::Lookups,
    ) -> Result<Vec<FaultView>, EngineError> {
        let specs = &req.faults;
        if self.closed {
            return Err(SpecError::new("faults", "chaos-daemon is shutting down").into());
        }
        // What needs no lookup first: a batch that cannot fit is refused before any is resolved.
        // Pods joining a run add to its experiment; anything else names a new one.
        let new_experiment = if action == AuditAction::Join { None } else { req.experiment.as_deref() };
        if let Some(e) = new_experiment.filter(|e| self.experiments.contains_key(*e)) {
            return Err(EngineError::Conflict(SpecError::new(
                "experiment",
                format!("an experiment named '{e}' is followed (a schedule or a selection): remove it first"),
            )));
        }
        self.faults.check_batch(specs.len(), new_experiment, &self.limits())?;
        let mut batch = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let spec = self.with_errno(spec);
            let at = |e: SpecError| if specs.len() > 1 { e.within(&format!("fault[{i}].")) } else { e };
            // The fault as the daemon's namespace sees it: its interface there, and turned round
            // for another namespace's (see `target`).
            let resolved =
                crate::target::resolve(spec.validate().map_err(at)?, &self.settings.runtimes(), &mut lookups)
                    .map_err(at)?;
            let fault = &resolved.fault;
            if let Action::Shape(s) = fault.action {
                self.dataplane.can_shape(fault.matches.direction != Direction::Egress, s.reorder.is_some())?;
            }
            if let Action::Dns(_) = fault.action {
                self.dataplane.can_dns()?;
            }
            if resolved.cgroup.is_some() {
                let connect = match fault.action {
                    Action::ConnectFail { errno } => Some(errno),
                    _ => None,
                };
                self.dataplane.can_scope(connect.is_none() && fault.matches.direction != Direction::Egress, connect)?;
            }
            batch.push(Incoming { spec, resolved });
        }
        if !req.force {
            let faults: Vec<_> = batch.iter().map(|i| &i.resolved.fault).collect();
            let dataplane = &mut self.dataplane;
            let sessions = self.guard.flows(&faults, |ports| dataplane.followed_sessions(ports));
            for (i, incoming) in batch.iter().enumerate() {
                let at = |e: SpecError| if specs.len() > 1 { e.within(&format!("fault[{i}].")) } else { e };
                crate::guard::check(&incoming.resolved.fault, &sessions).map_err(|e| EngineError::Protected(at(e)))?;
            }
        }
        let (next, names) = self.faults.apply(batch, req.experiment.clone(), actor, &self.limits(), Now::read())?;
        let event = self.event(actor, action, names.clone(), req.experiment.clone(), result.into(), vec![]);
        self.commit(next, vec![event])?;
        Ok(names.iter().filter_map(|n| self.faults.get(n)).map(|a| self.view(a)).collect())
    }

    /// `spec`, a connect-fail given no errno given the best this kernel can do: recorded in the
    /// spec, so that it is listed as applied and a restarted daemon re-adopts the same.
    fn with_errno(&self, spec: &FaultSpec) -> FaultSpec {
        let mut spec = spec.clone();
        if spec.action.as_deref() == Some("connect-fail") && spec.errno.is_none() {
            spec.errno = Some(crate::spec::errno_name(self.dataplane.default_errno()));
        }
        spec
    }

    /// Makes `next` the live set, kernel first: the journal then records it, with its audit
    /// `events`; if it cannot, the kernel goes back and the change is refused. A change that
    /// takes faults away is recorded first (see [`Self::remove_now`]).
    fn commit(&mut self, next: FaultSet, events: Vec<Event>) -> Result<(), EngineError> {
        self.dataplane.reconcile(&self.plan(&self.faults), &self.plan(&next))?;
        crashpoint::hit(Point::KernelChanged);
        if let Err(e) = self.record(&self.faults.clone(), &next, events.clone()) {
            if let Err(back) = self.dataplane.reconcile(&self.plan(&next), &self.plan(&self.faults)) {
                tracing::error!("undoing a change the state file could not record: {back}");
            }
            return Err(e);
        }
        crashpoint::hit(Point::Recorded);
        self.trim |= next.len().abs_diff(self.faults.len()) >= TRIM_AFTER;
        self.faults = next;
        self.publish(events);
        Ok(())
    }

    /// Takes faults out: the journal first (with the audit events `make` gives for the final
    /// views), so that a daemon killed before the kernel took them out never brings them back;
    /// then the kernel. If the kernel refuses, the journal gets the faults back.
    fn remove_now(
        &mut self,
        next: FaultSet,
        gone: Vec<Arc<Active>>,
        make: impl FnOnce(&Self, &[FaultView]) -> Vec<Event>,
    ) -> Result<Vec<FaultView>, EngineError> {
        let views: Vec<FaultView> = gone.iter().map(|a| self.view(a)).collect();
        let events = make(self, &views);
        let live = self.faults.clone();
        self.record(&live, &next, events.clone())?;
        crashpoint::hit(Point::RemovalRecorded);
        if let Err(e) = self.dataplane.reconcile(&self.plan(&live), &self.plan(&next)) {
            if let Err(back) = self.record(&next, &live, vec![]) {
                tracing::error!("restoring the state file after the kernel refused a removal: {back}");
            }
            return Err(e.into());
        }
        crashpoint::hit(Point::Recorded);
        self.trim |= next.len().abs_diff(self.faults.len()) >= TRIM_AFTER;
        self.faults = next;
        self.publish(events);
        // The filters and qdiscs given back: not made durable (a stale list only makes the next
        // start look for what is gone), so a removal costs one synchronous write.
        let kernel = self.dataplane.records();
        if self.store.kernel_changed(&kernel)
            && let Err(e) = self.store.record((vec![], vec![]), self.faults.next_id(), kernel, vec![], false)
        {
            tracing::warn!("recording the kernel objects given back: {e}");
        }
        Ok(views)
    }

    /// The audit event of a removal that took `views` out.
    fn removal(&self, actor: &Actor, removal: Removal, names: Vec<String>, views: &[FaultView]) -> Event {
        let experiment = match removal {
            Removal::Experiment => names.first().cloned(),
            Removal::Faults | Removal::Clear => one_experiment(views.iter().map(|v| v.experiment.as_deref())),
        };
        let ended = views.iter().map(|v| ended(v, removal.reason())).collect();
        self.event(actor, removal.action(), names, experiment, "ok".into(), ended)
    }

    /// Records a removal that failed (one that succeeded was recorded with its change).
    fn audit_failure(
        &mut self,
        actor: &Actor,
        action: AuditAction,
        names: Vec<String>,
        experiment: Option<String>,
        result: Result<Vec<FaultView>, EngineError>,
    ) -> Result<Vec<FaultView>, EngineError> {
        if let Err(e) = &result {
            self.audit(actor, action, names, experiment, failed(e), vec![]);
        }
        result
    }

    fn audit(
        &mut self,
        actor: &Actor,
        action: AuditAction,
        faults: Vec<String>,
        experiment: Option<String>,
        result: String,
        ended: Vec<Ended>,
    ) {
        let event = self.event(actor, action, faults, experiment, result, ended);
        self.publish(vec![event]);
    }

    /// An audit event, logged. Names and errors may quote what a peer sent (a refused name, a
    /// request path): one line each, bounded, in the log and the history alike.
    fn event(
        &self,
        actor: &Actor,
        action: AuditAction,
        faults: Vec<String>,
        experiment: Option<String>,
        result: String,
        ended: Vec<Ended>,
    ) -> Event {
        let action = match action {
            AuditAction::Request(text) => AuditAction::Request(escape(&text, MAX_ACTION)),
            AuditAction::Other(text) => AuditAction::Other(escape(&text, MAX_ACTION)),
            word => word,
        };
        let faults: Vec<String> = faults.iter().map(|f| escape(f, MAX_NAME)).collect();
        let result = escape(&result, MAX_RESULT);
        tracing::info!(target: "audit", %actor, action = action.as_str(), ?faults, result, ended = ended.len(), "audit");
        let experiment = experiment.map(|e| escape(&e, MAX_NAME));
        Event { at: unix_ms(), actor: actor.clone(), action, faults, experiment, result, ended }
    }

    /// Appends events to the history.
    fn publish(&mut self, events: Vec<Event>) {
        for event in &events {
            if let Err(e) = self.store.append(event) {
                tracing::error!("writing the audit trail: {e}");
            }
        }
    }

    /// The experiment of the named faults (those present), when they all belong to one.
    fn experiment_of(&self, names: &[String]) -> Option<String> {
        one_experiment(names.iter().filter_map(|n| self.faults.get(n)).map(|a| a.record.experiment.as_deref()))
    }

    /// Makes the change from `before` to `after` durable in the state (one journal line), with
    /// its audit events.
    fn record(&mut self, before: &FaultSet, after: &FaultSet, events: Vec<Event>) -> Result<(), EngineError> {
        let kernel = self.dataplane.records();
        self.store.record(after.changes_from(before), after.next_id(), kernel, events, true).map_err(EngineError::State)
    }

    /// Writes the state whole (a snapshot, which starts the journal afresh).
    fn snapshot(&mut self, faults: &FaultSet) -> Result<(), EngineError> {
        let (filters, shaping) = self.dataplane.records();
        let state = State {
            boot_id: self.boot_id.clone(),
            journal_seq: 0,
            next_id: faults.next_id(),
            faults: faults.records(),
            filters,
            shaping,
        };
        self.store.save(&state).map_err(EngineError::State)
    }

    fn view(&self, a: &Active) -> FaultView {
        let r = &a.record;
        // None before it starts (its slot may still hold the counts of the fault that had it).
        let c = if r.started { self.dataplane.counters(r.slot) } else { Counters::default() };
        FaultView {
            name: r.name.clone(),
            // One form for ports however they were sent (flags send text, files numbers).
            spec: r.spec.get().with_canonical_ports(),
            experiment: r.experiment.clone(),
            state: if r.started { FaultState::Active } else { FaultState::Scheduled },
            applied_at: r.applied_at / 1000,
            applied_at_ms: r.applied_at,
            applied_by: r.applied_by.clone(),
            starts_at: r.starts_at,
            expires_at: r.expires_at,
            deadline_ns: (r.deadline_ns != NO_DEADLINE).then_some(r.deadline_ns),
            matched: c.matched,
            dropped: c.dropped,
            duplicated: c.duplicated,
            corrupted: c.corrupted,
            reset: c.reset,
            answered: c.answered,
        }
    }
}

impl Engine<Kernel> {
    /// Read-only, for metrics (attachments, delay backend) without `status`'s probes.
    pub fn kernel(&self) -> &Kernel {
        &self.dataplane
    }

    pub fn status(&self) -> Status {
        let kernel = &self.dataplane;
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            features: crate::kernel::features().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            delay_backend: match kernel.backend() {
                Ok(crate::shaping::Backend::Edt) => "edt".into(),
                Ok(crate::shaping::Backend::Netem) => "netem".into(),
                Err(why) => format!("none ({why})"),
            },
            guard_sessions: kernel.guard_sessions(),
            attachments: kernel.attachments(),
            scoping: {
                let mut scoping = crate::target::scoping();
                let support = kernel.cgroup_support();
                let said = |r: &Result<String, String>| r.clone().unwrap_or_else(|why| format!("no: {why}"));
                let ingress = support.ingress.clone().map(|()| "yes: where packets reach its sockets".to_owned());
                let connect = support.connect.clone().map(|any| {
                    if any { "yes, any errno" } else { "yes, EPERM only (other errnos need 5.18)" }.to_owned()
                });
                scoping.insert("cgroup ingress".into(), said(&ingress));
                scoping.insert("connect-fail".into(), said(&connect));
                scoping
            },
            faults: self.faults.len(),
            max_faults: self.settings.max_faults,
            max_duration_ms: self.settings.max_duration.as_millis() as u64,
            allow_unlimited: self.settings.allow_unlimited,
            abilities: kernel.abilities(),
        }
    }
}

impl Guard {
    /// The SSH sessions open now that `faults` could touch, then the configured flows.
    /// `followed` gives the sessions the kernel follows, if it does: when `faults` touch none
    /// of them, none of this namespace's is touched, and no dump is needed; when they touch
    /// one (perhaps of another namespace, or closed), a dump decides.
    fn flows(
        &mut self,
        faults: &[&crate::spec::Fault],
        followed: impl FnOnce(&[u16]) -> Option<Vec<(std::net::SocketAddr, std::net::SocketAddr)>>,
    ) -> Vec<Protected> {
        let families = crate::guard::at_stake(faults.iter().copied(), &self.ssh_ports);
        let untouched = |s: Vec<_>| !crate::guard::could_touch(faults, &s);
        let mut flows = if (!families.v4 && !families.v6) || followed(&self.ssh_ports).is_some_and(untouched) {
            Vec::new()
        } else {
            // Fail closed would block every fault on a host without /proc/net: warn and go on.
            self.sessions.sessions(&self.ssh_ports, families).unwrap_or_else(|e| {
                tracing::warn!("reading SSH sessions: {e}");
                Vec::new()
            })
        };
        flows.extend(self.protected.iter().cloned());
        flows
    }
}

/// Faults added or removed in one change past which the heap is trimmed (see [`trim_heap`]).
const TRIM_AFTER: usize = 1000;

/// Gives the memory a large change freed back to the system: glibc's allocator keeps freed
/// memory for reuse, which after loading or clearing thousands of faults is tens of MB.
/// (musl's gives it back by itself.)
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets glibc's allocator so that large blocks (a request of thousands of faults, its answer,
/// a snapshot: megabytes each, freed once the change is made) are mapped on their own and
/// unmapped when freed. By default glibc raises that threshold to the largest block freed so
/// far (up to 32 MB), after which such blocks come from the heap and leave it fragmented: with
/// 10,000 faults loaded the daemon then kept twice the memory it used.
pub fn tune_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// `error: why`, as the audit trail records a failure.
fn failed(e: &EngineError) -> String {
    format!("error: {e}")
}

/// The experiment shared by every one of `experiments` (an audit event's faults); none if they
/// differ, if one has none, or if there are none.
fn one_experiment<'a>(mut experiments: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    let first = experiments.next()??;
    experiments.all(|e| e == Some(first)).then(|| first.to_owned())
}

/// The removals a request asks for: each is its own audit action, and ends its faults with its
/// own reason.
#[derive(Clone, Copy, Debug)]
enum Removal {
    Faults,
    Experiment,
    Clear,
}

impl Removal {
    fn action(self) -> AuditAction {
        match self {
            Self::Faults => AuditAction::Remove,
            Self::Experiment => AuditAction::RemoveExperiment,
            Self::Clear => AuditAction::Clear,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Faults | Self::Experiment => "removed",
            Self::Clear => "cleared",
        }
    }
}

fn ended(v: &FaultView, reason: &str) -> Ended {
    Ended::new(&v.name, reason, &v.counters())
}

#[cfg(test)]
mod tests;
