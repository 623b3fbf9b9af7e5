//! The set of active faults: checks a batch, gives each fault a name and a rule slot, and has
//! the kernel make the whole set live. Every change is all-or-nothing: a refused batch leaves
//! both this state and the kernel as they were.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use chaos_common::{ACTION_LOSS, ACTION_PARTITION, HOOK_EGRESS, HOOK_INGRESS, MAX_RULES, RuleAction};

use crate::{
    api::{FaultView, Status},
    compile::Rule,
    kernel::{Kernel, KernelError},
    spec::{Action, Direction, Fault, FaultSpec, SpecError},
};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input: the field and why.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// A name already taken.
    #[error(transparent)]
    Conflict(SpecError),
    #[error("no fault named '{0}'")]
    NotFound(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

struct Active {
    spec: FaultSpec,
    fault: Fault,
    ifindex: u32,
    slot: u32,
    applied_at: u64,
}

pub struct Engine {
    kernel: Kernel,
    /// By name; `order` keeps the order of application, which breaks precedence ties.
    faults: BTreeMap<String, Active>,
    order: Vec<String>,
    max_faults: usize,
    next_id: u64,
}

impl Engine {
    pub fn new(kernel: Kernel, max_faults: usize) -> Self {
        Self { kernel, faults: BTreeMap::new(), order: Vec::new(), max_faults, next_id: 1 }
    }

    /// Applies every spec or none.
    pub fn apply(&mut self, specs: &[FaultSpec]) -> Result<Vec<FaultView>, EngineError> {
        if specs.is_empty() {
            return Err(SpecError::new("fault", "no faults given").into());
        }
        let room = self.max_faults.min(MAX_RULES as usize).saturating_sub(self.faults.len());
        if specs.len() > room {
            return Err(SpecError::new(
                "fault",
                format!("{} more faults would pass the limit of {} (max_faults)", specs.len(), self.max_faults),
            )
            .into());
        }
        let used: BTreeSet<u32> = self.faults.values().map(|a| a.slot).collect();
        let mut free = (0..MAX_RULES).filter(|s| !used.contains(s));
        let mut names: BTreeSet<String> = self.faults.keys().cloned().collect();
        let mut next_id = self.next_id;
        let mut batch = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let at = |e: SpecError| if specs.len() > 1 { e.within(&format!("fault[{i}].")) } else { e };
            let fault = spec.validate().map_err(at)?;
            let ifindex = nix::net::if_::if_nametoindex(fault.interface.as_str())
                .map_err(|_| at(SpecError::new("interface", format!("no such interface '{}'", fault.interface))))?;
            let name = match &fault.name {
                Some(n) if names.contains(n) => {
                    return Err(EngineError::Conflict(at(SpecError::new(
                        "name",
                        format!("a fault named '{n}' already exists"),
                    ))));
                }
                Some(n) => n.clone(),
                None => loop {
                    let kind = if fault.action == Action::Partition { "partition" } else { "loss" };
                    let n = format!("{kind}-{next_id}");
                    next_id += 1;
                    if !names.contains(&n) {
                        break n;
                    }
                },
            };
            names.insert(name.clone());
            let slot = free.next().expect("room was checked");
            let mut spec = spec.clone();
            spec.name = Some(name.clone());
            let applied_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            batch.push((name, Active { spec, fault, ifindex, slot, applied_at }));
        }

        let new_slots: Vec<(u32, RuleAction)> = batch.iter().map(|(_, a)| (a.slot, action(a.fault.action))).collect();
        let all: Vec<&Active> =
            self.order.iter().map(|n| &self.faults[n]).chain(batch.iter().map(|(_, a)| a)).collect();
        let (rules, hooks) = plan(&all);
        self.kernel.sync(&rules, &new_slots, &hooks)?;

        self.next_id = next_id;
        let names: Vec<String> = batch.iter().map(|(n, _)| n.clone()).collect();
        for (name, active) in batch {
            self.order.push(name.clone());
            self.faults.insert(name, active);
        }
        Ok(names.iter().map(|n| self.view(n)).collect())
    }

    /// Removes the named faults (all must exist) and returns their final state.
    pub fn remove(&mut self, names: &[String]) -> Result<Vec<FaultView>, EngineError> {
        if let Some(missing) = names.iter().find(|n| !self.faults.contains_key(*n)) {
            return Err(EngineError::NotFound(missing.clone()));
        }
        let views: Vec<FaultView> = names.iter().map(|n| self.view(n)).collect();
        // A set, so that clearing 10,000 faults is not 10,000 x 10,000 comparisons.
        let names: HashSet<&String> = names.iter().collect();
        let remaining: Vec<&Active> =
            self.order.iter().filter(|n| !names.contains(n)).map(|n| &self.faults[n]).collect();
        let (rules, hooks) = plan(&remaining);
        self.kernel.sync(&rules, &[], &hooks)?;
        self.order.retain(|n| !names.contains(n));
        self.faults.retain(|n, _| !names.contains(n));
        Ok(views)
    }

    /// Removes every fault and detaches every program.
    pub fn clear(&mut self) -> Result<Vec<FaultView>, EngineError> {
        let names = self.order.clone();
        self.remove(&names)
    }

    pub fn list(&self) -> Vec<FaultView> {
        self.order.iter().map(|n| self.view(n)).collect()
    }

    pub fn get(&self, name: &str) -> Result<FaultView, EngineError> {
        if self.faults.contains_key(name) { Ok(self.view(name)) } else { Err(EngineError::NotFound(name.into())) }
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            features: crate::kernel::features().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            attachments: self.kernel.attachments(),
            faults: self.faults.len(),
        }
    }

    fn view(&self, name: &str) -> FaultView {
        let a = &self.faults[name];
        let c = self.kernel.counters(a.slot);
        FaultView {
            name: name.into(),
            spec: a.spec.clone(),
            applied_at: a.applied_at,
            matched: c.matched,
            dropped: c.dropped,
        }
    }
}

fn action(a: Action) -> RuleAction {
    let kind = if a == Action::Partition { ACTION_PARTITION } else { ACTION_LOSS };
    RuleAction { kind, _pad: 0, drop_threshold: a.drop_threshold() }
}

/// The compiler's rules and the hooks they need, in order of application.
fn plan(faults: &[&Active]) -> (Vec<Rule>, BTreeMap<(u32, u8), String>) {
    let mut hooks = BTreeMap::new();
    let rules = faults
        .iter()
        .map(|a| {
            let f = &a.fault;
            let needs: &[u8] = match f.matches.direction {
                Direction::Egress => &[HOOK_EGRESS],
                Direction::Ingress => &[HOOK_INGRESS],
                Direction::Both => &[HOOK_EGRESS, HOOK_INGRESS],
            };
            for hook in needs {
                hooks.insert((a.ifindex, *hook), f.interface.clone());
            }
            Rule { slot: a.slot, ifindex: a.ifindex, matches: f.matches, threshold: f.action.drop_threshold() }
        })
        .collect();
    (rules, hooks)
}
