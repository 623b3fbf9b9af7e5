//! The set of faults: checks a batch, gives each fault a name, a rule slot and a deadline, has
//! the kernel make the whole set live, starts scheduled faults and reaps ended ones, and keeps
//! the state file and the audit trail. Every change is all-or-nothing: a refused batch leaves
//! this state, the state file and the kernel as they were.

mod lifecycle;
mod plan;

pub use lifecycle::check_state;
use plan::{commit, rule_action};

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::Duration,
};

use chaos_common::{MAX_RULES, NO_DEADLINE, RuleAction};

use crate::{
    api::{Apply, FaultView, Status},
    guard::Protected,
    kernel::{Kernel, KernelError},
    spec::{Action, Direction, Fault, Lifetime, SpecError, validate_name},
    state::{Actor, Ended, Event, Record, State, Store, mono_ns, unix_ms},
    text::escape,
};

/// Bounds on what an audit event records (bytes, escaped): an action (a refused request's
/// method and path), each fault name (valid ones have at most 63), a result.
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
    /// Where container runtimes keep their containers' specs (for pods).
    pub runtime_dirs: Vec<std::path::PathBuf>,
}

/// Flows faults must not touch without `force`: configured ones, and sessions to these ports.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    pub protected: Vec<Protected>,
    pub ssh_ports: Vec<u16>,
}

struct Active {
    record: Record,
    /// As the daemon's namespace sees it (see `target`).
    fault: Fault,
    ifindex: u32,
    /// The namespace or cgroup it was named by, if any: the fault ends when that goes.
    watch: Option<crate::target::Watch>,
    cgroup: Option<crate::target::Cgroup>,
}

pub struct Engine {
    kernel: Kernel,
    /// By name; `order` keeps the order of application, which breaks precedence ties.
    faults: BTreeMap<String, Active>,
    order: Vec<String>,
    settings: Settings,
    guard: Guard,
    store: Store,
    next_id: u64,
    boot_id: String,
    /// Set by [`Self::shutdown`].
    closed: bool,
}

impl Engine {
    /// Applies a batch (all or none) on behalf of `actor`, and records it in the audit trail.
    pub fn apply(&mut self, req: &Apply, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let result = self.try_apply(req, actor);
        let names = match &result {
            Ok(views) => views.iter().map(|v| v.name.clone()).collect(),
            Err(_) => req.faults.iter().filter_map(|f| f.name.clone()).collect(),
        };
        self.audit(actor, "apply", names, req.experiment.clone(), outcome(&result), vec![]);
        result
    }

    /// Removes the named faults (all must exist) and returns their final state.
    pub fn remove(&mut self, names: &[String], actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let result = match names.iter().find(|n| !self.faults.contains_key(*n)) {
            Some(missing) => Err(EngineError::NotFound(format!("fault named '{missing}'"))),
            None => self.remove_now(names),
        };
        self.audit_removal(actor, "remove", names.to_vec(), result)
    }

    /// Removes every fault of an experiment.
    pub fn remove_experiment(&mut self, experiment: &str, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let names: Vec<String> = self
            .order
            .iter()
            .filter(|n| self.faults[*n].record.experiment.as_deref() == Some(experiment))
            .cloned()
            .collect();
        let result = if names.is_empty() {
            Err(EngineError::NotFound(format!("experiment named '{experiment}'")))
        } else {
            self.remove_now(&names)
        };
        self.audit_removal(actor, "remove-experiment", vec![experiment.into()], result)
    }

    /// Removes every fault (scheduled ones too) and detaches every program.
    pub fn clear(&mut self, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let names = self.order.clone();
        let result = self.remove_now(&names);
        self.audit_removal(actor, "clear", vec![], result)
    }

    /// Records a refused request (the engine never saw it) in the audit trail. `action` and
    /// `why` may hold what the peer sent: they are escaped and bounded with the rest.
    pub fn refused(&mut self, actor: &Actor, action: &str, why: &str) {
        self.audit(actor, action, vec![], None, format!("refused: {why}"), vec![]);
    }

    pub fn list(&self) -> Vec<FaultView> {
        self.order.iter().map(|n| self.view(n)).collect()
    }

    pub fn get(&self, name: &str) -> Result<FaultView, EngineError> {
        if self.faults.contains_key(name) {
            Ok(self.view(name))
        } else {
            Err(EngineError::NotFound(format!("fault named '{name}'")))
        }
    }

    /// Read-only, for metrics (attachments, delay backend) without `status`'s probes.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            features: crate::kernel::features().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            delay_backend: match self.kernel.backend() {
                Ok(crate::shaping::Backend::Edt) => "edt".into(),
                Ok(crate::shaping::Backend::Netem) => "netem".into(),
                Err(why) => format!("none ({why})"),
            },
            attachments: self.kernel.attachments(),
            scoping: {
                let mut scoping = crate::target::scoping();
                let support = self.kernel.cgroup_support();
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
        }
    }

    /// Removes every fault and every pin: the daemon's clean exit. Later changes are refused.
    pub fn shutdown(&mut self, actor: &Actor) {
        match self.clear(actor) {
            Ok(removed) => tracing::info!(removed = removed.len(), "faults removed, programs detached"),
            Err(e) => tracing::error!("removing faults: {e}"),
        }
        self.kernel.unpin();
        crate::target::release_cgroup2();
        self.closed = true;
    }

    fn try_apply(&mut self, req: &Apply, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let specs = &req.faults;
        if self.closed {
            return Err(SpecError::new("faults", "chaos-daemon is shutting down").into());
        }
        if specs.is_empty() {
            return Err(SpecError::new("fault", "no faults given").into());
        }
        let room = self.settings.max_faults.min(MAX_RULES as usize).saturating_sub(self.faults.len());
        if specs.len() > room {
            return Err(SpecError::new(
                "fault",
                format!(
                    "{} more faults would pass the limit of {} (max_faults)",
                    specs.len(),
                    self.settings.max_faults
                ),
            )
            .into());
        }
        if let Some(e) = &req.experiment {
            validate_name(e).map_err(|err| SpecError::new("experiment", err.reason))?;
            if self.faults.values().any(|a| a.record.experiment.as_ref() == Some(e)) {
                return Err(EngineError::Conflict(SpecError::new(
                    "experiment",
                    format!("an experiment named '{e}' is running"),
                )));
            }
        }
        let sessions = if req.force { Vec::new() } else { self.guard.flows() };
        let used: BTreeSet<u32> = self.faults.values().map(|a| a.record.slot).collect();
        let mut free = (0..MAX_RULES).filter(|s| !used.contains(s));
        let mut names: BTreeSet<String> = self.faults.keys().cloned().collect();
        let mut next_id = self.next_id;
        let (now, now_ms) = (mono_ns(), unix_ms());
        let mut batch = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let at = |e: SpecError| if specs.len() > 1 { e.within(&format!("fault[{i}].")) } else { e };
            // The fault as the daemon's namespace sees it: its interface there, and turned round
            // for another namespace's (see `target`).
            let crate::target::Resolved { fault, ifindex, watch, cgroup } =
                crate::target::resolve(spec.validate().map_err(at)?, &self.settings.runtime_dirs).map_err(at)?;
            if let Action::Shape(s) = fault.action {
                self.kernel.can_shape(fault.matches.direction != Direction::Egress, s.reorder.is_some())?;
            }
            if cgroup.is_some() {
                let connect = match fault.action {
                    Action::ConnectFail { errno } => Some(errno),
                    _ => None,
                };
                self.kernel.can_scope(connect.is_none() && fault.matches.direction != Direction::Egress, connect)?;
            }
            let duration = self.lifetime(&fault).map_err(at)?;
            if fault.start_after > self.settings.max_start_after {
                return Err(at(SpecError::new(
                    "start_after",
                    format!("is more than the limit of {:?} (max_start_after)", self.settings.max_start_after),
                ))
                .into());
            }
            if !req.force {
                crate::guard::check(&fault, &sessions).map_err(|e| EngineError::Protected(at(e)))?;
            }
            let name = match &fault.name {
                Some(n) if names.contains(n) => {
                    return Err(EngineError::Conflict(at(SpecError::new(
                        "name",
                        format!("a fault named '{n}' already exists"),
                    ))));
                }
                Some(n) => n.clone(),
                None => loop {
                    let n = format!("{}-{next_id}", fault.action.kind());
                    // Wraps (after 2^64 names, or a hand-edited state file) rather than panic.
                    next_id = next_id.wrapping_add(1).max(1);
                    if !names.contains(&n) {
                        break n;
                    }
                },
            };
            names.insert(name.clone());
            let start_ns = now + fault.start_after.as_nanos() as u64;
            let starts_at = now_ms + fault.start_after.as_millis() as u64;
            let mut spec = spec.clone();
            spec.name = Some(name.clone());
            // The spec as applied says what the fault matches: reset takes TCP only.
            if let Action::Reset { .. } = fault.action {
                spec.protocol = Some("tcp".into());
            }
            let record = Record {
                name: name.clone(),
                spec,
                slot: free.next().expect("room was checked"),
                experiment: req.experiment.clone(),
                applied_by: actor.clone(),
                applied_at: now_ms,
                start_ns,
                deadline_ns: duration.map_or(NO_DEADLINE, |d| start_ns + d.as_nanos() as u64),
                starts_at,
                expires_at: duration.map(|d| starts_at + d.as_millis() as u64),
                started: fault.start_after.is_zero(),
            };
            batch.push(Active { record, fault, ifindex, watch, cgroup });
        }

        let new_slots: Vec<(u32, RuleAction)> = batch
            .iter()
            .filter(|a| a.record.started)
            .map(|a| (a.record.slot, rule_action(a, self.settings.duplicate_mark)))
            .collect();
        let before: Vec<&Active> = self.order.iter().map(|n| &self.faults[n]).collect();
        let all: Vec<&Active> = before.iter().copied().chain(batch.iter()).collect();
        commit(&mut self.kernel, &all, &new_slots, &before)?;

        self.next_id = next_id;
        let names: Vec<String> = batch.iter().map(|a| a.record.name.clone()).collect();
        for active in batch {
            self.order.push(active.record.name.clone());
            self.faults.insert(active.record.name.clone(), active);
        }
        self.save();
        Ok(names.iter().map(|n| self.view(n)).collect())
    }

    /// The fault's duration under the config's limits; `None` for unlimited.
    fn lifetime(&self, fault: &Fault) -> Result<Option<Duration>, SpecError> {
        match fault.lifetime {
            Lifetime::Default => Ok(Some(self.settings.max_duration)),
            Lifetime::For(d) if d > self.settings.max_duration => Err(SpecError::new(
                "duration",
                format!("{d:?} is more than the limit of {:?} (max_duration)", self.settings.max_duration),
            )),
            Lifetime::For(d) => Ok(Some(d)),
            Lifetime::Unlimited if self.settings.allow_unlimited => Ok(None),
            Lifetime::Unlimited => {
                Err(SpecError::new("duration", "'unlimited' is not allowed by this daemon's config (allow_unlimited)"))
            }
        }
    }

    /// Takes `names` out of the kernel and of the set; returns their final views.
    fn remove_now(&mut self, names: &[String]) -> Result<Vec<FaultView>, EngineError> {
        let views: Vec<FaultView> = names.iter().map(|n| self.view(n)).collect();
        // A set, so that clearing 10,000 faults is not 10,000 x 10,000 comparisons.
        let gone: HashSet<&String> = names.iter().collect();
        let remaining: Vec<&Active> =
            self.order.iter().filter(|n| !gone.contains(n)).map(|n| &self.faults[n]).collect();
        let before: Vec<&Active> = self.order.iter().map(|n| &self.faults[n]).collect();
        commit(&mut self.kernel, &remaining, &[], &before)?;
        self.order.retain(|n| !gone.contains(n));
        self.faults.retain(|n, _| !gone.contains(n));
        self.save();
        Ok(views)
    }

    fn audit_removal(
        &mut self,
        actor: &Actor,
        action: &str,
        names: Vec<String>,
        result: Result<Vec<FaultView>, EngineError>,
    ) -> Result<Vec<FaultView>, EngineError> {
        let reason = if action == "clear" { "cleared" } else { "removed" };
        let ended = match &result {
            Ok(views) => views.iter().map(|v| ended(v, reason)).collect(),
            Err(_) => vec![],
        };
        let experiment = match &result {
            // Named even when there was none to remove.
            _ if action == "remove-experiment" => names.first().cloned(),
            Ok(views) => one_experiment(views.iter().map(|v| v.experiment.as_deref())),
            Err(_) => None,
        };
        self.audit(actor, action, names, experiment, outcome(&result), ended);
        result
    }

    fn audit(
        &mut self,
        actor: &Actor,
        action: &str,
        faults: Vec<String>,
        experiment: Option<String>,
        result: String,
        ended: Vec<Ended>,
    ) {
        // Names and errors may quote what a peer sent (a refused name, a request path): one
        // line each, bounded, in the log and the history alike.
        let action = escape(action, MAX_ACTION);
        let faults: Vec<String> = faults.iter().map(|f| escape(f, MAX_NAME)).collect();
        let result = escape(&result, MAX_RESULT);
        tracing::info!(target: "audit", %actor, action = action.as_str(), ?faults, result, ended = ended.len(), "audit");
        let experiment = experiment.map(|e| escape(&e, MAX_NAME));
        let event = Event { at: unix_ms(), actor: actor.clone(), action, faults, experiment, result, ended };
        if let Err(e) = self.store.append(&event) {
            tracing::error!("writing the audit trail: {e}");
        }
    }

    /// The experiment of the named faults (those present), when they all belong to one.
    fn experiment_of(&self, names: &[String]) -> Option<String> {
        one_experiment(names.iter().filter_map(|n| self.faults.get(n)).map(|a| a.record.experiment.as_deref()))
    }

    /// Writes the state file. The kernel change it follows has happened: a failure here is
    /// logged, not returned (the faults are live; the next write catches up).
    fn save(&self) {
        let state = State {
            boot_id: self.boot_id.clone(),
            next_id: self.next_id,
            faults: self.order.iter().map(|n| self.faults[n].record.clone()).collect(),
            filters: self.kernel.netlink_filters(),
            shaping: self.kernel.shaping_record(),
        };
        if let Err(e) = self.store.save(&state) {
            tracing::error!("{}", EngineError::State(e));
        }
    }

    fn view(&self, name: &str) -> FaultView {
        let a = &self.faults[name];
        let r = &a.record;
        let c = counters(&self.kernel, r);
        FaultView {
            name: name.into(),
            // One form for ports however they were sent (flags send text, files numbers).
            spec: r.spec.clone().with_canonical_ports(),
            experiment: r.experiment.clone(),
            state: if r.started { "active" } else { "scheduled" }.into(),
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
        }
    }
}

impl Guard {
    /// The SSH sessions open now, then the configured flows.
    fn flows(&self) -> Vec<Protected> {
        let mut flows = if self.ssh_ports.is_empty() {
            Vec::new()
        } else {
            // Fail closed would block every fault on a host without /proc/net: warn and go on.
            crate::guard::ssh_sessions(&self.ssh_ports).unwrap_or_else(|e| {
                tracing::warn!("reading SSH sessions: {e}");
                Vec::new()
            })
        };
        flows.extend(self.protected.iter().cloned());
        flows
    }
}

/// `ok` or `error: why`, as the audit trail records a result.
fn outcome<T>(result: &Result<T, EngineError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// The experiment shared by every one of `experiments` (an audit event's faults); none if they
/// differ, if one has none, or if there are none.
fn one_experiment<'a>(mut experiments: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    let first = experiments.next()??;
    experiments.all(|e| e == Some(first)).then(|| first.to_owned())
}

/// A fault's counters: the kernel's for its slot once it has started; none before (a scheduled
/// fault's slot may still hold the counts of the fault that had it last, until it starts).
fn counters(kernel: &Kernel, r: &Record) -> chaos_common::Counters {
    if r.started { kernel.counters(r.slot) } else { Default::default() }
}

fn ended(v: &FaultView, reason: &str) -> Ended {
    Ended::new(&v.name, reason, &v.counters())
}
