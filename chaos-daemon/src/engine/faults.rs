//! The set of faults as one value, and every change to it as a pure function from one set to
//! the next: apply, remove, clear, start, end (expired, or its target gone), follow a target's
//! cgroups, and re-adopt a previous daemon's. Nothing here touches the kernel or a file: the
//! engine gives each new set to the dataplane (see [`super::Dataplane`]) and keeps it only once
//! the kernel and the state took it.
//!
//! A set is a persistent value (`imbl`'s maps share structure): a change copies the few tree
//! nodes it touches, never the faults, so it costs O(log n) however many faults there are; and
//! two sets are compared in O(changes) ([`FaultSet::diff`]), shared subtrees skipped. Indexes
//! (by deadline, start, interface, and the few faults that need a look of their own) keep the
//! engine's periodic work proportional to what is due, not to the number of faults.

use std::{ops::Deref, sync::Arc, time::Duration};

use imbl::{HashMap, OrdMap, OrdSet, ordmap::DiffItem};

use chaos_common::{MAX_RULES, NO_DEADLINE};

use super::EngineError;
use crate::{
    spec::{Action, Fault, FaultSpec, Lifetime, SpecError, validate_name},
    state::{Actor, Dropped, Record, SpecText},
    target::{Cgroup, Resolved, Watch},
};

/// One fault as the engine keeps it.
#[derive(Clone, Debug)]
pub struct Active {
    pub record: Record,
    /// As the daemon's namespace sees it (see `target`).
    pub fault: Fault,
    pub ifindex: u32,
    /// The namespace or cgroup it was named by, if any: the fault ends when that goes.
    pub watch: Option<Watch>,
    pub cgroup: Option<Cgroup>,
    /// Order of application in this daemon: breaks precedence ties, orders lists.
    pub seq: u64,
}

impl Active {
    fn of(record: Record, resolved: Resolved, seq: u64) -> Self {
        let Resolved { fault, ifindex, watch, cgroup } = resolved;
        Self { record, fault, ifindex, watch, cgroup, seq }
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn slot(&self) -> u32 {
        self.record.slot
    }

    pub fn started(&self) -> bool {
        self.record.started
    }
}

/// A fault in a set: shared with the sets before and after it. Two are equal when they are the
/// same fault value (pointer equality): a changed fault is a new value.
#[derive(Clone, Debug)]
pub struct Shared(Arc<Active>);

impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Shared {
    type Target = Active;
    fn deref(&self) -> &Active {
        &self.0
    }
}

impl Shared {
    pub fn arc(&self) -> &Arc<Active> {
        &self.0
    }
}

/// A difference between two sets, by slot: `before` and `now` (either absent).
pub struct Changed<'a> {
    pub slot: u32,
    pub before: Option<&'a Active>,
    pub now: Option<&'a Active>,
}

/// The faults, by rule slot (what the kernel knows them by), with their names and indexes.
#[derive(Clone, Debug, Default)]
pub struct FaultSet {
    by_slot: OrdMap<u32, Shared>,
    by_name: HashMap<Arc<str>, u32>,
    /// (deadline, slot) of every fault with one; (start, slot) of those not started.
    deadlines: OrdSet<(u64, u32)>,
    starts: OrdSet<(u64, u32)>,
    /// (ifindex, slot) of faults on an interface.
    by_ifindex: OrdSet<(u32, u32)>,
    /// Faults with a qdisc, a cgroup or a watched target: what needs a look of its own.
    special: OrdSet<u32>,
    /// For names made up for unnamed faults (`loss-7`).
    next_id: u64,
    next_seq: u64,
}

/// A fault to apply: the spec as sent, and the fault as validated and resolved from it.
pub struct Incoming {
    pub spec: FaultSpec,
    pub resolved: Resolved,
}

/// The limits a batch is checked against (from the config).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_faults: usize,
    pub max_duration: Duration,
    pub allow_unlimited: bool,
    pub max_start_after: Duration,
}

/// The time of a change, on both clocks: deadlines are CLOCK_MONOTONIC (as the kernel checks
/// them), what people read is Unix time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Now {
    pub mono_ns: u64,
    pub unix_ms: u64,
}

impl Now {
    pub fn read() -> Self {
        Self { mono_ns: crate::state::mono_ns(), unix_ms: crate::state::unix_ms() }
    }
}

/// Why a fault left the set without being asked to: recorded with its final counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    InterfaceGone,
    /// A namespace, process or cgroup: the target's own words (`target::Watch`).
    TargetGone(&'static str),
    Rebooted,
    KernelObjectsGone,
    InvalidDefinition,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::InterfaceGone => "its interface is gone",
            Self::TargetGone(why) => why,
            Self::Rebooted => "the node rebooted",
            Self::KernelObjectsGone => "its kernel objects were gone (removed by cleanup?)",
            Self::InvalidDefinition => "its definition is no longer valid",
        }
    }
}

impl FaultSet {
    pub fn new(next_id: u64) -> Self {
        Self { next_id: next_id.max(1), ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.by_slot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_slot.is_empty()
    }

    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Active>> {
        self.by_name.get(name).and_then(|slot| self.by_slot.get(slot)).map(Shared::arc)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// By rule slot.
    pub fn by_slot(&self) -> &OrdMap<u32, Shared> {
        &self.by_slot
    }

    pub fn at(&self, slot: u32) -> Option<&Active> {
        self.by_slot.get(&slot).map(|s| &**s)
    }

    /// What differs from `before`, by slot: O(changes), subtrees the two share are skipped.
    pub fn diff<'a>(&'a self, before: &'a FaultSet) -> Vec<Changed<'a>> {
        before
            .by_slot
            .diff(&self.by_slot)
            .map(|d| match d {
                DiffItem::Add(slot, now) => Changed { slot: *slot, before: None, now: Some(&**now) },
                DiffItem::Update { old: (slot, b), new: (_, now) } => {
                    Changed { slot: *slot, before: Some(&**b), now: Some(&**now) }
                }
                DiffItem::Remove(slot, b) => Changed { slot: *slot, before: Some(&**b), now: None },
            })
            .collect()
    }

    /// The faults with a qdisc, names (dns), a cgroup or a watched target.
    pub fn special(&self) -> impl Iterator<Item = &Active> {
        self.special.iter().filter_map(|slot| self.at(*slot))
    }

    /// The interfaces faults are on (ifindex 0, connect-fail's, excluded), each once.
    pub fn ifindexes(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut from = 1;
        while let Some(&(ifindex, _)) = self.by_ifindex.range((from, 0)..).next() {
            out.push(ifindex);
            match ifindex.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        out
    }

    /// A fault on `ifindex`, if any.
    pub fn one_on(&self, ifindex: u32) -> Option<&Active> {
        self.by_ifindex.range((ifindex, 0)..=(ifindex, u32::MAX)).next().and_then(|(_, slot)| self.at(*slot))
    }

    /// The names of the faults on `ifindex`.
    pub fn on_interface(&self, ifindex: u32) -> Vec<String> {
        self.by_ifindex
            .range((ifindex, 0)..=(ifindex, u32::MAX))
            .filter_map(|(_, slot)| self.at(*slot))
            .map(|a| a.record.name.clone())
            .collect()
    }

    /// The next CLOCK_MONOTONIC time something is due: a start or a deadline.
    pub fn next_due(&self) -> Option<u64> {
        let start = self.starts.get_min().map(|(t, _)| *t);
        let deadline = self.deadlines.get_min().map(|(t, _)| *t);
        start.into_iter().chain(deadline).min()
    }

    /// In order of application.
    pub fn ordered(&self) -> Vec<&Arc<Active>> {
        let mut all: Vec<&Arc<Active>> = self.by_slot.values().map(Shared::arc).collect();
        all.sort_unstable_by_key(|a| a.seq);
        all
    }

    /// The records, in order of application: what the state file holds.
    pub fn records(&self) -> Vec<Record> {
        self.ordered().into_iter().map(|a| a.record.clone()).collect()
    }

    /// Whether any fault belongs to `experiment`.
    pub fn has_experiment(&self, experiment: &str) -> bool {
        self.by_slot.values().any(|a| a.record.experiment.as_deref() == Some(experiment))
    }

    /// The names of an experiment's faults, in order of application.
    pub fn of_experiment(&self, experiment: &str) -> Vec<String> {
        self.ordered()
            .into_iter()
            .filter(|a| a.record.experiment.as_deref() == Some(experiment))
            .map(|a| a.record.name.clone())
            .collect()
    }

    fn insert(&mut self, active: Active) {
        let slot = active.record.slot;
        self.take(&active.record.name.clone());
        let r = &active.record;
        self.by_name.insert(r.name.as_str().into(), slot);
        if r.deadline_ns != NO_DEADLINE {
            self.deadlines.insert((r.deadline_ns, slot));
        }
        if !r.started {
            self.starts.insert((r.start_ns, slot));
        }
        if active.ifindex != 0 {
            self.by_ifindex.insert((active.ifindex, slot));
        }
        if matches!(active.fault.action, Action::Shape(_) | Action::Dns(_))
            || active.cgroup.is_some()
            || active.watch.is_some()
        {
            self.special.insert(slot);
        }
        self.by_slot.insert(slot, Shared(Arc::new(active)));
    }

    fn take(&mut self, name: &str) -> Option<Arc<Active>> {
        let slot = self.by_name.remove(name)?;
        let a = self.by_slot.remove(&slot)?.0;
        self.deadlines.remove(&(a.record.deadline_ns, slot));
        self.starts.remove(&(a.record.start_ns, slot));
        self.by_ifindex.remove(&(a.ifindex, slot));
        self.special.remove(&slot);
        Some(a)
    }

    /// The set with a batch applied (all or none), and the names given. Names unnamed faults
    /// (`{action}-{n}`), gives each the lowest free rule slot and its start and deadline.
    pub fn apply(
        &self,
        batch: Vec<Incoming>,
        experiment: Option<String>,
        actor: &Actor,
        limits: &Limits,
        now: Now,
    ) -> Result<(Self, Vec<String>), EngineError> {
        // Whether the experiment may take these is the engine's to say (a pod joining a run
        // adds to its experiment; see `check_batch`).
        self.check_batch(batch.len(), None, limits)?;
        let mut next = self.clone();
        // The lowest free slots: gaps in the slots in use, then past the last one.
        let mut used = self.by_slot.keys().copied().peekable();
        let mut free = (0..MAX_RULES).filter(move |s| {
            while used.next_if(|u| u < s).is_some() {}
            used.next_if_eq(s).is_none()
        });
        let mut names = Vec::with_capacity(batch.len());
        let many = batch.len() > 1;
        for (i, Incoming { spec, resolved }) in batch.into_iter().enumerate() {
            let at = |e: SpecError| if many { e.within(&format!("fault[{i}].")) } else { e };
            let fault = &resolved.fault;
            let duration = lifetime(fault, limits).map_err(at)?;
            if fault.start_after > limits.max_start_after {
                return Err(at(SpecError::new(
                    "start_after",
                    format!("is more than the limit of {:?} (max_start_after)", limits.max_start_after),
                ))
                .into());
            }
            let name = match &fault.name {
                Some(n) if next.contains(n) => {
                    return Err(EngineError::Conflict(at(SpecError::new(
                        "name",
                        format!("a fault named '{n}' already exists"),
                    ))));
                }
                Some(n) => n.clone(),
                None => next.fresh_name(fault.action.kind()),
            };
            let start_ns = now.mono_ns + fault.start_after.as_nanos() as u64;
            let starts_at = now.unix_ms + fault.start_after.as_millis() as u64;
            let mut spec = spec;
            spec.name = Some(name.clone());
            // The spec as applied says what the fault matches: reset takes TCP only.
            if let Action::Reset { .. } = fault.action {
                spec.protocol = Some("tcp".into());
            }
            let record = Record {
                name: name.clone(),
                spec: SpecText::new(&spec),
                slot: free.next().expect("room was checked"),
                experiment: experiment.clone(),
                applied_by: actor.clone(),
                applied_at: now.unix_ms,
                start_ns,
                deadline_ns: duration.map_or(NO_DEADLINE, |d| start_ns + d.as_nanos() as u64),
                starts_at,
                expires_at: duration.map(|d| starts_at + d.as_millis() as u64),
                started: fault.start_after.is_zero(),
            };
            let seq = next.next_seq;
            next.next_seq += 1;
            next.insert(Active::of(record, resolved, seq));
            names.push(name);
        }
        Ok((next, names))
    }

    /// Whether a batch of `len` faults (of `experiment`) may be applied at all: not empty,
    /// within `max_faults`, and its experiment a valid name not running already.
    pub fn check_batch(&self, len: usize, experiment: Option<&str>, limits: &Limits) -> Result<(), EngineError> {
        if len == 0 {
            return Err(SpecError::new("fault", "no faults given").into());
        }
        let room = limits.max_faults.min(MAX_RULES as usize).saturating_sub(self.len());
        if len > room {
            return Err(SpecError::new(
                "fault",
                format!("{len} more faults would pass the limit of {} (max_faults)", limits.max_faults),
            )
            .into());
        }
        if let Some(e) = experiment {
            validate_name(e).map_err(|err| SpecError::new("experiment", err.reason))?;
            if self.has_experiment(e) {
                return Err(EngineError::Conflict(SpecError::new(
                    "experiment",
                    format!("an experiment named '{e}' is running"),
                )));
            }
        }
        Ok(())
    }

    /// A name for an unnamed fault of `kind` that no fault has.
    fn fresh_name(&mut self, kind: &str) -> String {
        loop {
            let n = format!("{kind}-{}", self.next_id);
            // Wraps (after 2^64 names, or a hand-edited state file) rather than panic.
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.contains(&n) {
                return n;
            }
        }
    }

    /// The set without `names` (all must be there), and the faults taken out.
    pub fn remove(&self, names: &[String]) -> Result<(Self, Vec<Arc<Active>>), EngineError> {
        if let Some(missing) = names.iter().find(|n| !self.contains(n)) {
            return Err(EngineError::NotFound(format!("fault named '{missing}'")));
        }
        Ok(self.without(names.iter().map(String::as_str)))
    }

    /// The set without every fault (the name counter goes on).
    pub fn clear(&self) -> (Self, Vec<Arc<Active>>) {
        let removed = self.ordered().into_iter().cloned().collect();
        (Self { next_id: self.next_id, next_seq: self.next_seq, ..Self::default() }, removed)
    }

    /// The set without those of `names` it has.
    pub fn without<'a>(&self, names: impl Iterator<Item = &'a str>) -> (Self, Vec<Arc<Active>>) {
        let mut next = self.clone();
        let removed = names.filter_map(|n| next.take(n)).collect();
        (next, removed)
    }

    /// Scheduled faults due at `now` (and not past their deadline).
    pub fn due(&self, now_ns: u64) -> Vec<String> {
        self.starts
            .range(..=(now_ns, u32::MAX))
            .filter_map(|(_, slot)| self.at(*slot))
            .filter(|a| a.record.deadline_ns > now_ns)
            .map(|a| a.record.name.clone())
            .collect()
    }

    /// Faults whose deadline has passed.
    pub fn expired(&self, now_ns: u64) -> Vec<String> {
        self.deadlines
            .range(..=(now_ns, u32::MAX))
            .filter_map(|(_, slot)| self.at(*slot))
            .map(|a| a.record.name.clone())
            .collect()
    }

    /// The set with `names` started.
    pub fn start(&self, names: &[String]) -> Self {
        let mut next = self.clone();
        for n in names {
            if let Some(a) = next.get(n) {
                let mut a = Active::clone(a);
                a.record.started = true;
                next.insert(a);
            }
        }
        next
    }

    /// The set with new cgroup ids for the faults named (cgroups made or removed below their
    /// targets).
    pub fn with_cgroups(&self, changes: &[(String, Vec<u64>)]) -> Self {
        let mut next = self.clone();
        for (n, ids) in changes {
            if let Some(a) = next.get(n) {
                let mut a = Active::clone(a);
                if let Some(cg) = &mut a.cgroup {
                    cg.ids.clone_from(ids);
                }
                next.insert(a);
            }
        }
        next
    }

    /// The first set of a daemon: the previous one's records that can go on, and those that
    /// cannot, with why. `resolve` finds a fault's target again; `adopted` says whether the
    /// previous daemon's maps (its slots and counters) are still there.
    pub fn adopt(
        records: Vec<Record>,
        next_id: u64,
        same_boot: bool,
        adopted: bool,
        now_ns: u64,
        mut resolve: impl FnMut(Fault) -> Result<Resolved, SpecError>,
    ) -> (Self, Vec<(Record, EndReason)>) {
        let mut set = Self::new(next_id);
        let mut gone = Vec::new();
        for record in records {
            let resolved = record.spec.get().validate().map(&mut resolve);
            let reason = if !same_boot {
                Some(EndReason::Rebooted)
            } else if !adopted {
                Some(EndReason::KernelObjectsGone)
            } else if record.deadline_ns <= now_ns {
                Some(EndReason::Expired)
            } else if matches!(resolved, Ok(Err(_))) {
                Some(EndReason::InterfaceGone)
            } else {
                None
            };
            match (reason, resolved) {
                (None, Ok(Ok(r))) if !set.by_slot.contains_key(&record.slot) && !set.contains(&record.name) => {
                    let seq = set.next_seq;
                    set.next_seq += 1;
                    set.insert(Active::of(record, r, seq));
                }
                (reason, _) => gone.push((record, reason.unwrap_or(EndReason::InvalidDefinition))),
            }
        }
        (set, gone)
    }

    /// What the state file must learn to go from `before` to this set: the records added or
    /// changed (in order of application) and the names taken out. Found by comparing the two
    /// sets' shared faults, so it costs a walk of pointers, not a look at every record.
    pub fn changes_from(&self, before: &FaultSet) -> (Vec<Record>, Vec<Dropped>) {
        let changed = self.diff(before);
        let mut put: Vec<&Active> = changed.iter().filter_map(|c| c.now).collect();
        put.sort_unstable_by_key(|a| a.seq);
        let drop = changed
            .iter()
            .filter_map(|c| c.before.map(|b| (c.slot, b)))
            .filter(|(_, b)| !self.contains(&b.record.name))
            .map(|(slot, b)| Dropped { name: b.record.name.clone(), slot })
            .collect();
        (put.into_iter().map(|a| a.record.clone()).collect(), drop)
    }
}

/// A fault's duration under the config's limits; `None` for unlimited.
fn lifetime(fault: &Fault, limits: &Limits) -> Result<Option<Duration>, SpecError> {
    match fault.lifetime {
        Lifetime::Default => Ok(Some(limits.max_duration)),
        Lifetime::For(d) if d > limits.max_duration => Err(SpecError::new(
            "duration",
            format!("{d:?} is more than the limit of {:?} (max_duration)", limits.max_duration),
        )),
        Lifetime::For(d) => Ok(Some(d)),
        Lifetime::Unlimited if limits.allow_unlimited => Ok(None),
        Lifetime::Unlimited => {
            Err(SpecError::new("duration", "'unlimited' is not allowed by this daemon's config (allow_unlimited)"))
        }
    }
}
