//! Experiments the daemon follows: faults applied in the pods a selector picks (found through
//! the container runtime), joined by pods that come to match while a run lasts (mode `all`),
//! and run again at each tick of a schedule, never overlapping themselves.
//!
//! A run is one application of the experiment's fault templates: in each pod picked, toward
//! each target address. Its window is from its start to the end of its longest fault; while
//! it is open, a pod that comes to match (a new sandbox: a pod re-created, or a new replica)
//! gets the templates for what is left of their durations. A pod that goes ends its own
//! faults (the sandbox is what they watch). Each pod is covered once per run: a fault removed
//! by hand is not brought back. The definitions are kept in `experiments.json` in the state
//! directory, so schedules and windows survive a restart; a clean exit removes the faults but
//! keeps the definitions, `clear` and removing the experiment drop them.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::{Dataplane, Engine, EngineError};
use crate::target::Lookups;
use crate::{
    api::{Actor, Apply, AuditAction, ExperimentView, FaultView, Run},
    schedule::Schedule,
    select::{Mode, Phase, PodFacts, PodSelector, SelectorSpec},
    spec::{DurationSpec, FaultSpec, Lifetime, SpecError, validate_name},
    state::unix_ms,
};

pub use crate::pods::Pod;

/// `NAMESPACE/NAME`, as `--pod` names it.
pub fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

fn facts(pod: &Pod) -> PodFacts<'_> {
    PodFacts {
        namespace: &pod.namespace,
        name: &pod.name,
        labels: &pod.labels,
        annotations: &pod.annotations,
        // The CRI has no pod phase: a ready sandbox is a running pod.
        phase: if pod.ready { Phase::Running } else { Phase::Pending },
    }
}

/// Where the pods of the node come from: the CRI, or a list in the engine's tests.
pub trait PodSource: Send + Sync + std::fmt::Debug {
    /// The pods with their addresses (a run's targets need them).
    fn pods(&self) -> Result<Vec<Pod>, String>;
    /// The pods as listed, which is what matching needs: what a poll for pods joining asks.
    fn sandboxes(&self) -> Result<Vec<Pod>, String> {
        self.pods()
    }
}

/// The runtimes' CRI sockets (`cri_sockets`).
#[derive(Debug)]
pub struct CriPods(pub Vec<std::path::PathBuf>);

impl PodSource for CriPods {
    fn pods(&self) -> Result<Vec<Pod>, String> {
        crate::pods::list(&self.0)
    }

    fn sandboxes(&self) -> Result<Vec<Pod>, String> {
        crate::pods::list_brief(&self.0)
    }
}

/// Runs kept per experiment unless its schedule says otherwise.
const HISTORY_LIMIT: usize = 10;

/// An experiment as the state directory keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub name: String,
    /// The request as applied: its faults (templates, with a selector), selector, target,
    /// schedule and `force`, which each run applies again.
    pub request: Apply,
    pub applied_by: Actor,
    pub applied_at_ms: u64,
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub last_runs: VecDeque<Run>,
    /// The current (or last) run's start, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
    /// When its window closes (Unix ms); `None` with a run: never (an unlimited fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ends_ms: Option<u64>,
    /// The sandboxes the current run has covered.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub covered: BTreeSet<String>,
    /// The target addresses the current run resolved (joining pods get the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// The next tick, Unix ms (scheduled experiments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_ms: Option<u64>,
}

/// A record with its selector and schedule validated (once, when applied or loaded).
#[derive(Clone, Debug)]
pub struct Followed {
    pub record: ExperimentRecord,
    selector: Option<PodSelector>,
    target: Option<PodSelector>,
    schedule: Option<Schedule>,
}

impl Followed {
    /// Checks a record: a request's, or one read back from the state directory.
    pub fn new(record: ExperimentRecord) -> Result<Self, SpecError> {
        let sel = |s: &Option<SelectorSpec>, field: &str| {
            s.as_ref().map(|s| s.validate().map_err(|e| SpecError::new(field, e.to_string()))).transpose()
        };
        let selector = sel(&record.request.selector, "selector")?;
        let target = sel(&record.request.target, "target")?;
        let schedule = record
            .request
            .schedule
            .as_ref()
            .map(|s| s.cron.parse::<Schedule>().map_err(|e| SpecError::new("schedule.cron", e)))
            .transpose()?;
        Ok(Self { record, selector, target, schedule })
    }

    /// Whether pods that come to match join its runs.
    fn joins(&self) -> bool {
        self.selector.as_ref().is_some_and(|s| s.mode == Mode::All)
    }

    /// Whether its current run's window is open at `now_ms`.
    fn window_open(&self, now_ms: u64) -> bool {
        self.record.run_at_ms.is_some() && self.record.window_ends_ms.is_none_or(|end| now_ms < end)
    }

    /// Closes the current run's window at `now`: no pod joins it any more.
    pub(super) fn end_run(&mut self, now: u64) {
        if self.window_open(now) {
            self.record.window_ends_ms = Some(now);
        }
    }

    fn history_limit(&self) -> usize {
        self.record.request.schedule.as_ref().and_then(|s| s.history_limit).map_or(HISTORY_LIMIT, |n| n as usize)
    }

    fn push_run(&mut self, run: Run) {
        self.record.last_runs.push_back(run);
        while self.record.last_runs.len() > self.history_limit() {
            self.record.last_runs.pop_front();
        }
    }
}

/// The pods `selector` takes of `pods`: the ready ones that match, as many as its mode says,
/// picked at random where it says so. `random(n)`: a number in `0..n`.
pub fn pick<'a>(
    pods: &'a [Pod],
    selector: &PodSelector,
    random: &mut dyn FnMut(usize) -> usize,
) -> Result<Vec<&'a Pod>, String> {
    let mut matching: Vec<&Pod> = pods.iter().filter(|p| p.ready && selector.matches(&facts(p))).collect();
    matching.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let count = selector.mode.count(matching.len(), random)?;
    // A partial Fisher–Yates shuffle: the first `count` are a uniform pick.
    for i in 0..count.min(matching.len()) {
        let j = i + random(matching.len() - i);
        matching.swap(i, j);
    }
    matching.truncate(count);
    matching.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(matching)
}

/// A number in `0..n` from the kernel's generator.
pub fn random(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most the length given into the live buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // Only before the pool is initialised, early at boot: the clock is random enough to
        // pick a pod.
        bytes = (unix_ms() ^ crate::state::mono_ns()).to_le_bytes();
    }
    (u64::from_le_bytes(bytes) % n.max(1) as u64) as usize
}

/// The fault of `template` (the `index`th of the experiment's) in `pod` toward `target`: named
/// `TEMPLATE.POD` (`TEMPLATE.NAMESPACE.POD` when the selection spans namespaces, where two
/// pods may share a name; and `.N` for the Nth of several targets), within the 63 characters
/// a name may have (a long one keeps its start and a hash of the whole).
pub fn instance(
    experiment: &str,
    (index, templates): (usize, usize),
    template: &FaultSpec,
    pod: Option<(&Pod, bool)>,
    target: Option<(usize, usize, &str)>,
) -> FaultSpec {
    let base = match (&template.name, templates) {
        (Some(name), _) => name.clone(),
        (None, 1) => experiment.to_owned(),
        (None, _) => format!("{experiment}-{}", index + 1),
    };
    let mut name = base;
    match pod {
        Some((pod, true)) => name = format!("{name}.{}.{}", pod.namespace, pod.name),
        Some((pod, false)) => name = format!("{name}.{}", pod.name),
        None => {}
    }
    let pod = pod.map(|(p, _)| p);
    if let Some((k, n, _)) = target
        && n > 1
    {
        name = format!("{name}.{}", k + 1);
    }
    let mut spec = template.clone();
    spec.name = Some(bounded_name(&name, pod.map(key).as_deref().unwrap_or("")));
    if let Some(pod) = pod {
        spec.pod = Some(key(pod));
    }
    if let Some((_, _, address)) = target {
        // The target's packets to the pod come from it; the pod's to it go to it.
        if spec.direction.as_deref() == Some("ingress") {
            spec.src = Some(address.to_owned());
        } else {
            spec.dst = Some(address.to_owned());
        }
    }
    spec
}

/// `name` if it is a valid name, else its valid start and a hash of it and `salt`.
fn bounded_name(name: &str, salt: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    if clean == name && validate_name(name).is_ok() {
        return clean;
    }
    // FNV-1a: stable across versions, so a restarted daemon names a pod's fault the same.
    let hash = format!("{name}\0{salt}")
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let start: String = clean.trim_start_matches(['-', '.']).chars().take(63 - 9).collect();
    format!("{start}-{:08x}", hash as u32)
}

/// How long a template's fault lasts from its run's start: `None` for unlimited.
fn lifetime(template: &FaultSpec, max: std::time::Duration) -> Result<Option<u64>, SpecError> {
    let checked = FaultSpec { interface: Some("eth0".into()), ..template.clone() };
    Ok(match checked.validate()?.lifetime {
        Lifetime::For(d) => Some(d.as_millis() as u64),
        Lifetime::Default => Some(max.as_millis() as u64),
        Lifetime::Unlimited => None,
    })
}

impl<D: Dataplane> Engine<D> {
    /// Applies a request with a selector, a target or a schedule: its experiment is followed
    /// from now on. A schedule's first run is at its first tick; otherwise the run is now, all
    /// or nothing.
    pub(super) fn apply_followed(&mut self, req: &Apply, actor: &Actor) -> Result<Vec<FaultView>, EngineError> {
        let Some(name) = req.experiment.clone() else {
            let field = if req.schedule.is_some() { "schedule" } else { "selector" };
            return Err(SpecError::new(field, "needs an experiment name (the faults are followed as one)").into());
        };
        validate_name(&name).map_err(|e| SpecError::new("experiment", e.reason))?;
        if self.experiments.contains_key(&name) || self.faults.has_experiment(&name) {
            return Err(EngineError::Conflict(SpecError::new(
                "experiment",
                format!("'{name}' is running: remove it first (chaosctl rm -e {name})"),
            )));
        }
        if req.faults.is_empty() {
            return Err(SpecError::new("faults", "an experiment needs at least one fault").into());
        }
        for (i, f) in req.faults.iter().enumerate() {
            let at = |e: SpecError| if req.faults.len() > 1 { e.within(&format!("fault[{i}].")) } else { e };
            if req.selector.is_some() {
                for (field, given) in [
                    ("pod", f.pod.is_some()),
                    ("netns", f.netns.is_some()),
                    ("pid", f.pid.is_some()),
                    ("container", f.container.is_some()),
                    ("cgroup", f.cgroup.is_some()),
                ] {
                    if given {
                        return Err(at(SpecError::new(
                            field,
                            "is set by the selector: each fault acts in each pod it picks",
                        ))
                        .into());
                    }
                }
            }
            if req.target.is_some() && (f.dst.is_some() || f.src.is_some()) {
                return Err(at(SpecError::new(
                    "dst",
                    "is set by the target selector: the addresses of the pods it picks",
                ))
                .into());
            }
            if req.schedule.is_some() {
                let limited = lifetime(f, self.settings.max_duration).map_err(at)?;
                if f.duration.is_none() || limited.is_none() {
                    return Err(at(SpecError::new(
                        "duration",
                        "is required with a schedule, and limited: each run lasts this long",
                    ))
                    .into());
                }
            }
        }
        let now = unix_ms();
        let record = ExperimentRecord {
            name: name.clone(),
            request: req.clone(),
            applied_by: actor.clone(),
            applied_at_ms: now,
            runs: 0,
            skipped: 0,
            last_runs: VecDeque::new(),
            run_at_ms: None,
            window_ends_ms: None,
            covered: BTreeSet::new(),
            targets: Vec::new(),
            next_run_ms: None,
        };
        let mut followed = Followed::new(record)?;
        if let Some(schedule) = &followed.schedule {
            followed.record.next_run_ms = Some(schedule.next_after(now, now).ok_or_else(|| {
                SpecError::new(
                    "schedule.cron",
                    format!(
                        "'{}' names no time to come",
                        followed.record.request.schedule.as_ref().map_or("", |s| s.cron.as_str())
                    ),
                )
            })?);
            self.experiments.insert(name.clone(), followed);
            self.save_experiments()?;
            self.audit(actor, AuditAction::Apply, vec![], Some(name), "ok: scheduled".into(), vec![]);
            return Ok(vec![]);
        }
        let pods = self.list_pods(&followed)?;
        let views = self.start_run(&mut followed, &pods, now, actor, AuditAction::Apply)?;
        self.experiments.insert(name.clone(), followed);
        if let Err(e) = self.save_experiments() {
            // All or nothing: faults no restarted daemon would know to follow are taken out.
            self.experiments.remove(&name);
            let names: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
            if let Err(back) =
                self.faults.remove(&names).and_then(|(next, gone)| self.remove_now(next, gone, |_, _| vec![]))
            {
                tracing::error!("taking out the faults of an experiment that could not be recorded: {back}");
            }
            return Err(e);
        }
        Ok(views)
    }

    /// The pods of the node, when the experiment's selectors need them.
    fn list_pods(&self, followed: &Followed) -> Result<Vec<Pod>, EngineError> {
        if followed.selector.is_none() && followed.target.is_none() {
            return Ok(vec![]);
        }
        self.pods.pods().map_err(|e| SpecError::new("selector", format!("listing the pods of this node: {e}")).into())
    }

    /// Starts a run of `followed` at `now`: picks its pods and targets and applies its faults
    /// (all or none), recorded as `action` on behalf of `actor`.
    fn start_run(
        &mut self,
        followed: &mut Followed,
        pods: &[Pod],
        now: u64,
        actor: &Actor,
        action: AuditAction,
    ) -> Result<Vec<FaultView>, EngineError> {
        let picked: Vec<Pod> = match &followed.selector {
            Some(s) => pick(pods, s, &mut random)
                .map_err(|e| SpecError::new("selector", format!("{e} ({}) on this node", s.describe())))?
                .into_iter()
                .cloned()
                .collect(),
            None => vec![],
        };
        let targets: Vec<String> = match &followed.target {
            Some(t) => {
                let chosen = pick(pods, t, &mut random).map_err(|e| {
                    SpecError::new(
                        "target",
                        format!(
                            "{e} ({}) on this node: pods of other nodes are reached by their addresses \
                             (externalTargets, or dst)",
                            t.describe()
                        ),
                    )
                })?;
                let addresses: Vec<String> =
                    chosen.iter().flat_map(|p| p.ips.iter().map(|ip| ip.to_string())).collect();
                if addresses.is_empty() {
                    return Err(SpecError::new("target", "the pods it picks have no address yet").into());
                }
                addresses
            }
            None => vec![],
        };
        let mut ends: Option<u64> = Some(now);
        for t in &followed.record.request.faults {
            ends = match (ends, lifetime(t, self.settings.max_duration)?) {
                (Some(a), Some(d)) => Some(a.max(now + d)),
                _ => None,
            };
        }
        let specs = self.instances(followed, &picked, &targets, 0);
        // The picks, named in the history (random ones especially).
        let mut said = "ok".to_owned();
        if let Some(s) = &followed.selector {
            let keys: Vec<String> = picked.iter().map(key).collect();
            said += &format!(": pods {} ({})", keys.join(", "), s.describe());
        }
        if !targets.is_empty() {
            said += &format!("; targets {}", targets.join(", "));
        }
        let req = Apply {
            faults: specs,
            experiment: Some(followed.record.name.clone()),
            force: followed.record.request.force,
            ..Default::default()
        };
        // Its failure is recorded by the caller, with what came before (listing, picking).
        let views = if req.faults.is_empty() {
            // random-max-percent may draw none: a run with nothing to apply, as in Chaos Mesh.
            let said = format!("{said}: no pod drawn");
            self.audit(actor, action, vec![], req.experiment.clone(), said, vec![]);
            vec![]
        } else {
            // The pods listed to pick them serve to resolve them too: one listing per run.
            let lookups = match followed.selector {
                Some(_) => Lookups::with_pods(pods.to_vec(), "the runtime, for this run".into()),
                None => Lookups::default(),
            };
            self.try_apply(&req, actor, action, &said, lookups)?
        };
        let r = &mut followed.record;
        r.runs += 1;
        r.run_at_ms = Some(now);
        r.window_ends_ms = ends;
        r.covered = picked.iter().map(|p| p.id.clone()).collect();
        r.targets = targets;
        Ok(views)
    }

    /// The faults of `followed`'s templates in `pods` (or on the host, without a selector)
    /// toward its targets, each lasting `elapsed_ms` less than its template says.
    fn instances(&self, followed: &Followed, pods: &[Pod], targets: &[String], elapsed_ms: u64) -> Vec<FaultSpec> {
        let r = &followed.record;
        let pods: Vec<Option<&Pod>> =
            if followed.selector.is_some() { pods.iter().map(Some).collect() } else { vec![None] };
        // The names stay the same run after run: they depend on the selector, not on the picks.
        let namespaced = followed.selector.as_ref().is_some_and(|s| {
            let named: BTreeSet<&String> =
                if s.pods.is_empty() { s.namespaces.iter().collect() } else { s.pods.keys().collect() };
            named.len() != 1
        });
        let targets: Vec<Option<(usize, usize, &str)>> = if targets.is_empty() {
            vec![None]
        } else {
            targets.iter().enumerate().map(|(k, t)| Some((k, targets.len(), t.as_str()))).collect()
        };
        let mut specs = Vec::new();
        for pod in &pods {
            for (i, template) in r.request.faults.iter().enumerate() {
                let mut template = template.clone();
                if elapsed_ms > 0
                    && let Ok(Some(d)) = lifetime(&template, self.settings.max_duration)
                {
                    template.duration = Some(DurationSpec::Text(format!("{}ms", d.saturating_sub(elapsed_ms).max(1))));
                }
                for target in &targets {
                    let pod = pod.map(|p| (p, namespaced));
                    specs.push(instance(&r.name, (i, r.request.faults.len()), &template, pod, *target));
                }
            }
        }
        specs
    }

    /// Whether a tick needs the node's pods (a run's window is open for pods to join).
    pub fn wants_pods(&self) -> bool {
        let now = unix_ms();
        self.experiments.values().any(|f| f.joins() && f.window_open(now))
    }

    /// The source of the node's pods, to list them outside the engine's lock.
    pub fn pod_source(&self) -> Arc<dyn PodSource> {
        self.pods.clone()
    }

    /// Runs the scheduled experiments that are due, lets pods join open runs (`pods`: the
    /// node's, listed just before, when [`Self::wants_pods`] said so), and forgets experiments
    /// that are over. Returns the Unix ms of the next thing to do.
    pub(super) fn follow_experiments(&mut self, now: u64, pods: Option<&[Pod]>) -> Option<u64> {
        if self.experiments.is_empty() {
            return None;
        }
        let mut changed = false;
        let names: Vec<String> = self.experiments.keys().cloned().collect();
        for name in names {
            let Some(mut followed) = self.experiments.remove(&name) else { continue };
            changed |= self.follow_one(&mut followed, now, pods);
            let live = self.faults.has_experiment(&name);
            if followed.schedule.is_none() && !live && !(followed.joins() && followed.window_open(now)) {
                // Over: its faults ended and no pod can join any more.
                tracing::info!(experiment = name, "experiment over");
                changed = true;
            } else {
                self.experiments.insert(name, followed);
            }
        }
        if changed && let Err(e) = self.save_experiments() {
            tracing::error!("recording the experiments: {e}");
        }
        let mut next: Option<u64> = None;
        for f in self.experiments.values() {
            let mut at = f.record.next_run_ms;
            if f.joins() && f.window_open(now) {
                // Pods are looked for twice a second: one that starts joins within a second.
                let poll = now + 500;
                at = Some(at.map_or(poll, |t| t.min(poll)));
                if let Some(end) = f.record.window_ends_ms {
                    at = at.map(|t| t.min(end));
                }
            }
            next = match (next, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    /// One experiment's due tick and joins; whether its record changed.
    fn follow_one(&mut self, followed: &mut Followed, now: u64, pods: Option<&[Pod]>) -> bool {
        let mut changed = false;
        let name = followed.record.name.clone();
        let daemon = Actor::default();
        if let (Some(schedule), Some(due)) = (&followed.schedule, followed.record.next_run_ms)
            && due <= now
        {
            let schedule = schedule.clone();
            changed = true;
            let active = self.faults.of_experiment(&name);
            if !active.is_empty() {
                followed.record.skipped += 1;
                followed.push_run(Run {
                    at_ms: due,
                    outcome: "skipped".into(),
                    faults: vec![],
                    error: Some("the last run is still active".into()),
                });
                self.audit(
                    &daemon,
                    AuditAction::Skip,
                    active,
                    Some(name.clone()),
                    "skipped: the last run is still active".into(),
                    vec![],
                );
            } else {
                let result = self
                    .list_pods(followed)
                    .and_then(|pods| self.start_run(followed, &pods, now, &daemon, AuditAction::Run));
                let run = match result {
                    Ok(views) => Run {
                        at_ms: due,
                        outcome: "ran".into(),
                        faults: views.into_iter().map(|v| v.name).collect(),
                        error: None,
                    },
                    Err(e) => {
                        tracing::warn!(experiment = name, "scheduled run failed: {e}");
                        followed.record.runs += 1;
                        let error = format!("error: {e}");
                        self.audit(&daemon, AuditAction::Run, vec![], Some(name.clone()), error, vec![]);
                        Run { at_ms: due, outcome: "failed".into(), faults: vec![], error: Some(e.to_string()) }
                    }
                };
                followed.push_run(run);
            }
            followed.record.next_run_ms = schedule.next_after(now, followed.record.applied_at_ms);
        }
        if let Some(pods) = pods
            && followed.joins()
            && followed.window_open(now)
            && let Some(selector) = &followed.selector
        {
            let joining: Vec<Pod> = pods
                .iter()
                .filter(|p| p.ready && !followed.record.covered.contains(&p.id) && selector.matches(&facts(p)))
                .cloned()
                .collect();
            let elapsed = now.saturating_sub(followed.record.run_at_ms.unwrap_or(now));
            // Each pod on its own: one that cannot take the faults does not keep the others out.
            for pod in &joining {
                let req = Apply {
                    faults: self.instances(followed, std::slice::from_ref(pod), &followed.record.targets, elapsed),
                    experiment: Some(name.clone()),
                    force: followed.record.request.force,
                    ..Default::default()
                };
                let said = format!("ok: pod {} came to match", key(pod));
                let result = self.try_apply(&req, &daemon, AuditAction::Join, &said, Lookups::default());
                if let Err(e) = result {
                    self.audit_refused(&req, &daemon, AuditAction::Join, &e);
                    tracing::warn!(experiment = name, pod = key(pod), "a pod could not join: {e}");
                }
                // Covered either way: a pod that could not take them is not retried twice a second.
                followed.record.covered.insert(pod.id.clone());
                changed = true;
            }
        }
        changed
    }

    /// The experiments: those followed, then those that only name faults.
    pub fn experiments(&self) -> Vec<ExperimentView> {
        let mut pods: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for a in self.faults.ordered() {
            let Some(e) = a.record.experiment.as_deref() else { continue };
            *counts.entry(e).or_default() += 1;
            if let Some(pod) = a.record.spec.get().pod {
                pods.entry(e).or_default().insert(pod);
            }
        }
        let mut views: Vec<ExperimentView> = self
            .experiments
            .values()
            .map(|f| {
                let r = &f.record;
                ExperimentView {
                    name: r.name.clone(),
                    faults: counts.get(r.name.as_str()).copied().unwrap_or(0),
                    pods: pods.get(r.name.as_str()).map(|p| p.iter().cloned().collect()).unwrap_or_default(),
                    selector: r.request.selector.clone(),
                    selects: f.selector.as_ref().map(PodSelector::describe),
                    schedule: r.request.schedule.clone(),
                    next_run_ms: r.next_run_ms,
                    runs: r.runs,
                    skipped: r.skipped,
                    last_runs: r.last_runs.iter().cloned().collect(),
                    applied_by: Some(r.applied_by.clone()),
                    applied_at_ms: r.applied_at_ms,
                }
            })
            .collect();
        for (name, count) in counts {
            if !self.experiments.contains_key(name) {
                views.push(ExperimentView {
                    name: name.to_owned(),
                    faults: count,
                    pods: pods.get(name).map(|p| p.iter().cloned().collect()).unwrap_or_default(),
                    selector: None,
                    selects: None,
                    schedule: None,
                    next_run_ms: None,
                    runs: 0,
                    skipped: 0,
                    last_runs: vec![],
                    applied_by: None,
                    applied_at_ms: 0,
                });
            }
        }
        views
    }

    /// Writes the followed experiments to the state directory.
    pub(super) fn save_experiments(&mut self) -> Result<(), EngineError> {
        let records: Vec<&ExperimentRecord> = self.experiments.values().map(|f| &f.record).collect();
        self.store.save_experiments(&records).map_err(EngineError::State)
    }
}

impl<D: Dataplane> Engine<D> {
    /// Takes up the experiments the last daemon followed. One that no longer reads (written by
    /// another version) is reported and dropped; a schedule's ticks missed while no daemon ran
    /// are skipped, not caught up.
    pub(super) fn load_experiments(&mut self) {
        let records: Vec<ExperimentRecord> = match self.store.load_experiments() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!("reading the experiments: {e}; none is followed");
                return;
            }
        };
        let now = unix_ms();
        for record in records {
            let name = record.name.clone();
            match Followed::new(record) {
                Ok(mut followed) => {
                    if let (Some(s), Some(next)) = (&followed.schedule, followed.record.next_run_ms)
                        && next < now
                    {
                        followed.record.next_run_ms = s.next_after(now, followed.record.applied_at_ms);
                    }
                    self.experiments.insert(name, followed);
                }
                Err(e) => tracing::error!(experiment = name, "the state directory's experiment does not read: {e}"),
            }
        }
        if !self.experiments.is_empty() {
            tracing::info!(experiments = self.experiments.len(), "following the previous daemon's experiments");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            id: format!("sandbox-{namespace}-{name}"),
            namespace: namespace.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ready: true,
            ips: vec!["10.88.0.2".parse().unwrap()],
            ..Default::default()
        }
    }

    fn selector(namespaces: &[&str], labels: &str, mode: &str, value: Option<&str>) -> PodSelector {
        SelectorSpec {
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            labels: Some(labels.into()).filter(|l: &String| !l.is_empty()),
            mode: Some(mode.into()),
            value: value.map(Into::into),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn selectors_pick_ready_matching_pods_as_their_mode_says() {
        let mut pods = vec![
            pod("shop", "web-1", &[("app", "web")]),
            pod("shop", "web-2", &[("app", "web"), ("tier", "db")]),
            pod("shop", "web-3", &[("app", "web")]),
            pod("shop", "api-1", &[("app", "api")]),
            pod("other", "web-9", &[("app", "web")]),
        ];
        pods[2].ready = false;
        let mut first = |_: usize| 0;
        let names = |p: Vec<&Pod>| p.iter().map(|p| key(p)).collect::<Vec<_>>();
        let all = selector(&["shop"], "app=web,tier!=db", "all", None);
        assert_eq!(names(pick(&pods, &all, &mut first).unwrap()), ["shop/web-1"]);
        let web = selector(&[], "app=web", "all", None);
        assert_eq!(names(pick(&pods, &web, &mut first).unwrap()), ["other/web-9", "shop/web-1", "shop/web-2"]);
        let one = selector(&[], "app=web", "one", None);
        for draw in 0..3 {
            let picked = pick(&pods, &one, &mut |n| draw % n).unwrap();
            assert_eq!(picked.len(), 1);
        }
        // Every pod can be the one: the draw decides.
        let seen: BTreeSet<String> = (0..3).map(|d| key(pick(&pods, &one, &mut |n| d % n).unwrap()[0])).collect();
        assert_eq!(seen.len(), 3);
        let fixed = selector(&[], "app=web", "fixed", Some("2"));
        assert_eq!(pick(&pods, &fixed, &mut random).unwrap().len(), 2);
        let percent = selector(&[], "app", "fixed-percent", Some("67"));
        // 67% of the 4 ready pods with an app label, rounded down.
        assert_eq!(pick(&pods, &percent, &mut random).unwrap().len(), 2);
        let none = selector(&["nowhere"], "", "all", None);
        assert!(pick(&pods, &none, &mut random).is_err());
    }

    #[test]
    fn instances_are_named_after_their_template_and_pod() {
        let template = FaultSpec { action: Some("loss".into()), loss: Some(30.0), ..Default::default() };
        let p = pod("shop", "web-1", &[]);
        let one = instance("exp", (0, 1), &template, Some((&p, false)), None);
        assert_eq!((one.name.as_deref(), one.pod.as_deref()), (Some("exp.web-1"), Some("shop/web-1")));
        let second = instance("exp", (1, 2), &template, Some((&p, false)), Some((1, 2, "10.0.0.9")));
        assert_eq!((second.name.as_deref(), second.dst.as_deref()), (Some("exp-2.web-1.2"), Some("10.0.0.9")));
        let ingress = FaultSpec { direction: Some("ingress".into()), name: Some("cut".into()), ..template.clone() };
        let from = instance("exp", (0, 1), &ingress, Some((&p, false)), Some((0, 1, "10.0.0.9")));
        // Across namespaces, the namespace is in the name: two pods may share one.
        let across = instance("exp", (0, 1), &template, Some((&p, true)), None);
        assert_eq!(across.name.as_deref(), Some("exp.shop.web-1"));
        assert_eq!((from.name.as_deref(), from.src.as_deref(), from.dst), (Some("cut.web-1"), Some("10.0.0.9"), None));
        // A long pod name: a valid name, its start kept, told apart from another by a hash.
        let long = pod("shop", &format!("{}-a", "x".repeat(70)), &[]);
        let other = pod("shop", &format!("{}-b", "x".repeat(70)), &[]);
        let (a, b) = (
            instance("exp", (0, 1), &template, Some((&long, false)), None).name.unwrap(),
            instance("exp", (0, 1), &template, Some((&other, false)), None).name.unwrap(),
        );
        assert!(validate_name(&a).is_ok() && validate_name(&b).is_ok() && a != b, "{a} {b}");
        assert!(a.starts_with("exp.xxx"), "{a}");
    }
}
