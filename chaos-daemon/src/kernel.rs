//! The kernel side: the loaded object, its maps, and the TC attachments. One fault's change is
//! written in place, entry by entry, in an order under which packets see the old rule set or
//! the new one, never a mix (see `compile::incremental`); a batch, and the first rule set of a
//! daemon, is written as a whole new generation of entries, made live by one write to
//! `ACTIVE`, the old generation deleted after. Maps, programs and links are pinned (see
//! [`pins`]) and re-adopted by the next daemon; `reconcile` is the engine's one way in.

mod attach;
mod backend;
mod batch;
mod cgroup;
mod dns;
pub mod pins;
mod profile;
mod reconcile;
mod sessions;
mod shaper;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::PathBuf,
};

use attach::{Handle, Link};
pub use attach::{NlFilter, TcHook};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{ProgramError, tc::SchedClassifierLink},
    sys::{is_map_supported, is_program_supported},
};
pub use backend::BackendChoice;
use backend::{load_program, netem_ability, select_backend};
use cgroup::CgroupLink;
pub use cgroup::{CgroupHook, CgroupSupport};
// An API type (`GET /v1/status`): chaosctl reads it without the daemon's crate.
pub use chaos_api::api::{Abilities, Ability, Attachment};
use chaos_common::{
    ABI_VERSION, ActiveMap, AddrKey, CLASS_GEN_BIT, Chain, Counters, PROG_EGRESS, PROG_IFB, PROG_INGRESS, PairKey,
    PortKey, RuleAction, ScopeKey, ShapeState, map_names,
};
use pins::Pins;
pub use profile::{Feature, KernelProfile};
use serde::{Deserialize, Serialize};
use shaper::Shaper;
pub use shaper::{DeviceRecord, FQ_FLOW_LIMIT, ShapeNeed, ShapingRecord};

use crate::{
    compile::{Change, Classifier, CompileError, Op, Rule, Tables},
    shaping::{Backend, ShapingError},
};

const MAPS: [&str; 13] = [
    map_names::SCOPES,
    map_names::ACTIVE,
    map_names::ADDRS,
    map_names::PAIRS,
    map_names::PORTS,
    map_names::RULES,
    map_names::COUNTERS,
    map_names::SHAPES,
    map_names::DIST,
    map_names::CHAINS,
    map_names::DNS_NAMES,
    map_names::DNS_PROGS,
    map_names::DNS_TABLES,
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this kernel lacks {0}, which chaos-daemon needs")]
    Missing(&'static str),
    #[error("loading the eBPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("the kernel refused program {program}: {source}\nverifier log:\n{log}")]
    Verifier { program: &'static str, source: io::Error, log: String },
    #[error("{what}: {source}")]
    Program { what: String, source: ProgramError },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("bpffs: {0}")]
    Pins(String),
    /// The kernel lacks what a fault needs: the text names the missing piece.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Shaping(#[from] ShapingError),
}

/// The rules a change makes live.
pub struct Rules<'a> {
    /// One fault's slot, its new rules (none when it goes) and whether the slot had rules:
    /// written in place when the live classifier can take it.
    pub one: Option<(u32, Vec<Rule>, bool)>,
    /// Every rule, in order of application: for a whole new generation (batches, a start).
    pub all: &'a dyn Fn() -> Vec<Rule>,
}

enum Step {
    Build((Classifier, Tables)),
    Change(Change),
}

/// How programs are attached: `auto` is TCX where the kernel has it (probed once at load, see
/// `attach::tcx_probe`), else netlink; the others force one (`netlink` is how kernels before
/// 6.6 are tested on newer ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Auto,
    Tcx,
    Netlink,
}

pub struct Kernel {
    ebpf: Ebpf,
    active: Array<MapData, u32>,
    addrs: LpmTrie<MapData, AddrKey, u32>,
    pairs: HashMap<MapData, PairKey, u32>,
    ports: LpmTrie<MapData, PortKey, u32>,
    rules: Array<MapData, RuleAction>,
    counters: PerCpuArray<MapData, Counters>,
    shapes: Array<MapData, ShapeState>,
    chains: PerCpuArray<MapData, Chain>,
    scopes: HashMap<MapData, ScopeKey, u32>,
    dns: dns::Dns,
    generation: u8,
    /// The live generation's entries, kept up to date change by change (see
    /// `compile::incremental`); `None` after adopting a previous daemon's maps, until the first
    /// full write of a generation (whose old entries are then found by scanning).
    classifier: Option<Classifier>,
    /// Whether `ACTIVE` says the live generation has egress cgroup scopes.
    scoped: bool,
    /// The TC hooks the live faults use (see `reconcile`).
    hook_users: reconcile::HookUsers,
    links: BTreeMap<(u32, TcHook), Link>,
    /// By cgroup id and kind.
    cgroup_links: BTreeMap<(u64, CgroupHook), CgroupLink>,
    cgroups: CgroupSupport,
    mode: AttachMode,
    /// Interfaces whose clsact qdisc this daemon added, removed with their last filter.
    our_clsact: BTreeSet<u32>,
    /// TCX links no rule uses now, since when (CLOCK_MONOTONIC ns). A TCX attach or detach
    /// waits for an RCU grace period (milliseconds) inside the syscall: an idle link is kept
    /// for `detach_after`, so that the next fault on the interface needs no attach and a
    /// removal no detach in the request; then [`Kernel::release_idle`] detaches it, between
    /// requests. cls_bpf filters cost no such wait, and go at once.
    idle: BTreeMap<(u32, TcHook), u64>,
    detach_after: std::time::Duration,
    pins: Pins,
    shaper: Shaper,
    /// The SSH guard's session map (see [`sessions`]).
    follow: sessions::Follow,
    /// What this kernel can do within the profile, found at load (cgroups: see `cgroups`).
    abilities: Abilities,
}

/// What `chaosctl status` reports about the kernel, found by loading tiny probes.
pub fn features() -> BTreeMap<&'static str, bool> {
    use aya::{maps::MapType, programs::ProgramType};
    BTreeMap::from([
        ("sched_cls", is_program_supported(ProgramType::SchedClassifier).unwrap_or(false)),
        ("lpm_trie", is_map_supported(MapType::LpmTrie).unwrap_or(false)),
        ("percpu_array", is_map_supported(MapType::PerCpuArray).unwrap_or(false)),
    ])
}

fn map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = ebpf
        .take_map(name)
        .ok_or(KernelError::Map { map: name, source: MapError::InvalidName { name: name.into() } })?;
    T::try_from(m).map_err(|source| KernelError::Map { map: name, source })
}

impl Kernel {
    /// Loads the object and its programs, with the maps pinned in `pins` (reused when a previous
    /// daemon left them), and re-adopts that daemon's attachments (its pinned TCX links and the
    /// cls_bpf `filters` it recorded). Returns whether previous maps were adopted: only then do
    /// the previous rule slots and counters still exist.
    /// `shaping` is what a previous daemon recorded of its qdiscs: while it holds devices, its
    /// backend is kept (their qdiscs are that backend's). `profile` holds the daemon to what an
    /// older kernel offers.
    pub fn load(
        mode: AttachMode,
        pins: Pins,
        filters: &[NlFilter],
        choice: BackendChoice,
        shaping: ShapingRecord,
        profile: KernelProfile,
    ) -> Result<(Self, bool), KernelError> {
        for (feature, ok) in features() {
            if !ok {
                return Err(KernelError::Missing(match feature {
                    "sched_cls" => "TC BPF programs (BPF_PROG_TYPE_SCHED_CLS)",
                    "lpm_trie" => "LPM trie maps (4.11+)",
                    _ => "per-CPU array maps",
                }));
            }
        }
        // Before 5.11 map memory is charged to RLIMIT_MEMLOCK.
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: setrlimit with a valid pointer; failure only matters on old kernels.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
            tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", io::Error::last_os_error());
        }
        pins.prepare()?;
        if !pins.compatible() {
            return Err(KernelError::Pins(format!(
                "{} holds maps of another chaos-daemon version; run `chaos-daemon cleanup` to remove them",
                pins.dir.display()
            )));
        }
        let adopting = pins.map(map_names::ACTIVE).exists();
        let fresh = (!adopting).then(|| pins.clone());
        Self::load_pinned(mode, pins, filters, choice, shaping, profile, adopting).inspect_err(|_| {
            // A first start that failed half-way (a program refused, a missing capability)
            // leaves no pins behind to block the next one.
            if let Some(pins) = fresh {
                let _ = pins.remove_all();
            }
        })
    }

    fn load_pinned(
        mode: AttachMode,
        pins: Pins,
        filters: &[NlFilter],
        choice: BackendChoice,
        shaping: ShapingRecord,
        profile: KernelProfile,
        adopting: bool,
    ) -> Result<(Self, bool), KernelError> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<_> = MAPS.iter().map(|name| (*name, pins.map(name))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(crate::EBPF_OBJECT)?;
        for name in [PROG_INGRESS, PROG_EGRESS, PROG_IFB] {
            load_program(&mut ebpf, &pins, name)?;
        }
        let tcx = profile.allows(Feature::Tcx).and_then(|()| attach::tcx_probe(&ebpf));
        let mode = match (mode, &tcx) {
            (AttachMode::Tcx, Err(why)) => {
                return Err(KernelError::Unsupported(format!(
                    "tc_attach = \"tcx\" cannot be: {why}; use tc_attach = \"auto\" or \"netlink\""
                )));
            }
            (_, Err(_)) => AttachMode::Netlink,
            // Decided once, here: every attach then does what the mode says.
            (AttachMode::Auto, Ok(())) => AttachMode::Tcx,
            (mode, Ok(())) => mode,
        };
        let dns = dns::Dns::load(&mut ebpf, adopting)?;
        let cgroups = cgroup::load(&mut ebpf, &pins, profile);
        tracing::info!(ingress = ?cgroups.ingress, connect = ?cgroups.connect, "cgroup programs");
        let probe = crate::shaping::probe();
        // Only qdiscs still in place bind the backend; otherwise the config decides.
        let held = shaping.backend.filter(|_| !shaping.devices.is_empty());
        let (backend, edt) = select_backend(&mut ebpf, &pins, choice, held, &probe, profile);
        match &backend {
            Ok(b) => tracing::info!(backend = ?b, "delay backend"),
            Err(why) => tracing::warn!("no delay backend: {why}"),
        }
        let fq_orders = profile.allows(Feature::FqHorizon).and_then(|()| probe.fq_orders.clone());
        let edt_reorder = edt.clone().and_then(|()| fq_orders.clone());
        let rules: Array<MapData, RuleAction> = map(&mut ebpf, map_names::RULES)?;
        let batch =
            profile.allows(Feature::BatchUpdate).and_then(|()| batch::probe(batch::fd(IterableMap::map(&rules))));
        tracing::info!(profile = profile.as_str(), ?tcx, ?batch, "kernel abilities");
        let abilities = Abilities {
            profile: profile.as_str().into(),
            tcx: Ability::from(&tcx),
            edt: Ability::from(&edt),
            edt_reorder: Ability::from(&edt_reorder),
            netem: Ability::from(&netem_ability(&probe)),
            batch_update: Ability::from(&batch),
            dns: Ability::from(&dns.ready),
            // Filled from `cgroups` when asked.
            ..Abilities::default()
        };
        let edt = backend == Ok(Backend::Edt);
        let links = attach::adopt(&mut ebpf, &pins, filters, edt);
        let mut kernel = Self {
            active: map(&mut ebpf, map_names::ACTIVE)?,
            addrs: map(&mut ebpf, map_names::ADDRS)?,
            pairs: map(&mut ebpf, map_names::PAIRS)?,
            ports: map(&mut ebpf, map_names::PORTS)?,
            rules,
            counters: map(&mut ebpf, map_names::COUNTERS)?,
            shapes: map(&mut ebpf, map_names::SHAPES)?,
            chains: map(&mut ebpf, map_names::CHAINS)?,
            scopes: map(&mut ebpf, map_names::SCOPES)?,
            dns,
            cgroup_links: cgroup::adopt(&pins),
            cgroups,
            ebpf,
            generation: 0,
            classifier: None,
            scoped: false,
            hook_users: Default::default(),
            our_clsact: filters
                .iter()
                .filter(|f| f.added_clsact && links.contains_key(&(f.ifindex, f.hook)))
                .map(|f| f.ifindex)
                .chain(shaping.ifbs.iter().filter(|r| r.added_clsact).map(|r| r.ifindex))
                .collect(),
            links,
            idle: BTreeMap::new(),
            detach_after: std::time::Duration::from_secs(5),
            mode,
            pins,
            // netem's reordered packets skip their class for HTB's direct queue: any kernel.
            shaper: Shaper::new(backend, probe.ifb.and(probe.mirred), if edt { fq_orders } else { Ok(()) }, shaping),
            follow: sessions::Follow::NotYet,
            abilities,
        };
        let mut dist: Array<MapData, i32> = map(&mut kernel.ebpf, map_names::DIST)?;
        let table: Vec<(u32, i32)> =
            crate::shaping::normal_table().into_iter().enumerate().map(|(i, v)| (i as u32, i32::from(v))).collect();
        let batch = kernel.batch();
        batch::put_all(batch, batch::fd(IterableMap::map(&dist)), &table, None, |i, v| dist.set(*i, v, 0))
            .map_err(|source| KernelError::Map { map: map_names::DIST, source })?;
        let active_err = |source| KernelError::Map { map: map_names::ACTIVE, source };
        if adopting {
            kernel.generation = kernel.active.get(&ActiveMap::GENERATION, 0).map_err(active_err)? as u8 & 1;
            // A daemon killed in the middle of a change may have left part of the next
            // generation written: clear it before anything is written there.
            kernel.purge(1 - kernel.generation);
        } else {
            kernel.active.set(ActiveMap::GENERATION, 0, 0).map_err(active_err)?;
            kernel.active.set(ActiveMap::ABI, ABI_VERSION, 0).map_err(active_err)?;
            kernel.classifier = Some(Classifier::new(0));
        }
        Ok((kernel, adopting))
    }

    /// Makes `rules` the live rule set. `new_slots` are slots not in use before, with their
    /// actions (their counters start at zero); `hooks` is every (ifindex, hook) the rules need,
    /// with the interface name, and `cgroups` every (cgroup id, kind) with its
    /// directory. On error the previous rule set stays live and untouched.
    pub fn sync(
        &mut self,
        rules: Rules,
        new_slots: &[(u32, RuleAction)],
        hooks: &BTreeMap<(u32, TcHook), String>,
        cgroups: &BTreeMap<(u64, CgroupHook), PathBuf>,
    ) -> Result<(), KernelError> {
        let started = std::time::Instant::now();
        // One fault's change in place when it can be (see `compile::incremental`); else, and
        // for batches, a whole new generation made live by one write.
        let step = match (&rules.one, &self.classifier) {
            (Some((slot, new, was_live)), Some(c)) if c.generation() == self.generation => {
                match c.change(new, if *was_live { std::slice::from_ref(slot) } else { &[] }) {
                    Ok(change) => Step::Change(change),
                    // A slot the classifier does not hold (a previous daemon's): start afresh.
                    Err(CompileError::NoSuchSlot(_)) => Step::Build(self.build(&(rules.all)())?),
                    Err(e) => return Err(e.into()),
                }
            }
            _ => Step::Build(self.build(&(rules.all)())?),
        };
        let incremental = matches!(step, Step::Change(_));
        let compiled = started.elapsed();

        let mut attached = Vec::new();
        // Idle links taken back into use: idle again if this change fails.
        let revived: Vec<((u32, TcHook), u64)> =
            hooks.keys().filter_map(|k| self.idle.remove(k).map(|since| (*k, since))).collect();
        let undo = |kernel: &mut Self, attached: &[(u32, TcHook)]| {
            kernel.detach_all(attached);
            kernel.idle.extend(revived.iter().copied());
        };
        for (&(ifindex, hook), interface) in hooks {
            if self.links.contains_key(&(ifindex, hook)) {
                continue;
            }
            let edt = self.shaper.backend == Ok(Backend::Edt);
            match attach::attach(&mut self.ebpf, &self.pins, self.mode, ifindex, interface, hook, edt) {
                Ok(link) => {
                    if let Handle::Netlink { filter, .. } = &link.handle
                        && filter.added_clsact
                    {
                        self.our_clsact.insert(ifindex);
                    }
                    tracing::info!(interface, %hook, tcx = link.is_tcx(), "attached");
                    self.links.insert((ifindex, hook), link);
                    attached.push((ifindex, hook));
                }
                Err(e) => {
                    undo(self, &attached);
                    return Err(e);
                }
            }
        }
        let mut attached_cg = Vec::new();
        for (&(id, kind), dir) in cgroups {
            if let Some(link) = self.cgroup_links.get_mut(&(id, kind)) {
                // A re-adopted link learns its directory (for status).
                link.dir.clone_from(dir);
                continue;
            }
            match cgroup::attach(&mut self.ebpf, &self.pins, &self.cgroups, id, kind, dir) {
                Ok(link) => {
                    self.cgroup_links.insert((id, kind), link);
                    attached_cg.push((id, kind));
                }
                Err(e) => {
                    undo(self, &attached);
                    self.detach_cgroups(&attached_cg);
                    return Err(e);
                }
            }
        }
        let made_live = match step {
            Step::Build((classifier, tables)) => self.flip(classifier, &tables, new_slots),
            Step::Change(change) => self.change(change, new_slots),
        };
        if let Err(e) = made_live {
            undo(self, &attached);
            self.detach_cgroups(&attached_cg);
            return Err(e);
        }
        let c = self.classifier.as_ref().expect("set by a successful change").counts();
        tracing::info!(
            incremental,
            entries = c.addrs + c.pairs + c.ports + c.scopes,
            ?compiled,
            total = ?started.elapsed(),
            "rule set live"
        );
        let unused: Vec<_> = self.links.keys().filter(|k| !hooks.contains_key(k)).copied().collect();
        let (tcx, netlink): (Vec<_>, Vec<_>) = unused.into_iter().partition(|k| self.links[k].is_tcx());
        let now = crate::state::mono_ns();
        if self.detach_after.is_zero() {
            self.detach_all(&tcx);
        }
        for key in tcx.into_iter().filter(|k| self.links.contains_key(k)) {
            self.idle.entry(key).or_insert(now);
        }
        self.detach_all(&netlink);
        let unused: Vec<_> = self.cgroup_links.keys().filter(|k| !cgroups.contains_key(k)).copied().collect();
        self.detach_cgroups(&unused);
        Ok(())
    }

    /// The entries of `rules` for the other generation.
    fn build(&self, rules: &[Rule]) -> Result<(Classifier, Tables), KernelError> {
        Ok(Classifier::build(rules, 1 - self.generation)?)
    }

    /// Writes a whole generation and makes it live with one write to `ACTIVE`; then deletes
    /// the old one. On error the old generation stays live and the new entries go.
    fn flip(
        &mut self,
        classifier: Classifier,
        tables: &Tables,
        new_slots: &[(u32, RuleAction)],
    ) -> Result<(), KernelError> {
        let next = classifier.generation();
        // Egress programs look cgroups up only while some rule needs it.
        let scoped = classifier.egress_scoped();
        let live = u32::from(next) | if scoped { ActiveMap::SCOPED_BIT } else { 0 };
        let made_live = self.write_slots(new_slots).and_then(|()| self.write(tables)).and_then(|()| {
            crate::crashpoint::hit(crate::crashpoint::Point::MapsWritten);
            self.active
                .set(ActiveMap::GENERATION, live, 0)
                .map_err(|source| KernelError::Map { map: map_names::ACTIVE, source })
        });
        if let Err(e) = made_live {
            self.delete(tables);
            return Err(e);
        }
        crate::crashpoint::hit(crate::crashpoint::Point::Flipped);
        self.scoped = scoped;
        let old = self.classifier.replace(classifier);
        let old_generation = std::mem::replace(&mut self.generation, next);
        match old {
            Some(old) => self.delete(&old.tables()),
            None => self.purge(old_generation),
        }
        Ok(())
    }

    /// Writes one fault's change into the live generation, entry by entry in the order that
    /// keeps every packet judged by the old rule set or the new one (`compile::incremental`),
    /// with `ActiveMap::SCOPED_BIT` on before any egress scope appears and off after the last
    /// goes. On error the writes done are undone in reverse, which keeps that too.
    fn change(&mut self, change: Change, new_slots: &[(u32, RuleAction)]) -> Result<(), KernelError> {
        self.write_slots(new_slots)?;
        let was = self.scoped;
        if change.egress_scoped && !was {
            self.set_scoped(true)?;
        }
        for (i, op) in change.ops.iter().enumerate() {
            if i == change.ops.len() / 2 {
                crate::crashpoint::hit(crate::crashpoint::Point::MapsWritten);
            }
            if let Err(e) = self.write_op(op) {
                for done in change.ops[..i].iter().rev() {
                    if let Err(e) = self.write_op(&done.inverse()) {
                        tracing::error!("undoing a classification write: {e}");
                    }
                }
                if self.scoped != was {
                    let _ = self.set_scoped(was);
                }
                return Err(e);
            }
        }
        crate::crashpoint::hit(crate::crashpoint::Point::Flipped);
        if !change.egress_scoped && was {
            // Only an optimisation is lost if this fails: egress looks cgroups up for nothing.
            let _ = self.set_scoped(false);
        }
        self.classifier.as_mut().expect("a change is of the live classifier").commit(change);
        Ok(())
    }

    fn set_scoped(&mut self, scoped: bool) -> Result<(), KernelError> {
        let live = u32::from(self.generation) | if scoped { ActiveMap::SCOPED_BIT } else { 0 };
        self.active
            .set(ActiveMap::GENERATION, live, 0)
            .map_err(|source| KernelError::Map { map: map_names::ACTIVE, source })?;
        self.scoped = scoped;
        Ok(())
    }

    /// One classification entry written, replaced or deleted.
    fn write_op(&mut self, op: &Op) -> Result<(), KernelError> {
        let err = |map| move |source| KernelError::Map { map, source };
        match *op {
            Op::Addr { len, key, new: Some(v), .. } => {
                self.addrs.insert(&Key::new(len, key), v, 0).map_err(err(map_names::ADDRS))
            }
            Op::Addr { len, key, new: None, .. } => {
                self.addrs.remove(&Key::new(len, key)).map_err(err(map_names::ADDRS))
            }
            Op::Pair { key, new: Some(v), .. } => self.pairs.insert(key, v, 0).map_err(err(map_names::PAIRS)),
            Op::Pair { key, new: None, .. } => self.pairs.remove(&key).map_err(err(map_names::PAIRS)),
            Op::Port { len, key, new: Some(v), .. } => {
                self.ports.insert(&Key::new(len, key), v, 0).map_err(err(map_names::PORTS))
            }
            Op::Port { len, key, new: None, .. } => {
                self.ports.remove(&Key::new(len, key)).map_err(err(map_names::PORTS))
            }
            Op::Scope { key, new: Some(v), .. } => self.scopes.insert(key, v, 0).map_err(err(map_names::SCOPES)),
            Op::Scope { key, new: None, .. } => self.scopes.remove(&key).map_err(err(map_names::SCOPES)),
        }
    }

    /// How long a TCX link no rule uses stays attached (see `idle`).
    pub fn set_detach_after(&mut self, after: std::time::Duration) {
        self.detach_after = after;
    }

    /// Detaches the links idle for `detach_after` by `now`; returns when to be called next.
    pub fn release_idle(&mut self, now: u64) -> Option<u64> {
        let after = self.detach_after.as_nanos() as u64;
        let due: Vec<(u32, TcHook)> =
            self.idle.iter().filter(|(_, since)| since.saturating_add(after) <= now).map(|(k, _)| *k).collect();
        for key in &due {
            self.idle.remove(key);
        }
        if !due.is_empty() {
            self.detach_all(&due);
            tracing::info!(links = due.len(), "detached links idle for {:?}", self.detach_after);
        }
        self.idle.values().map(|since| since.saturating_add(after)).min()
    }

    fn detach_cgroups(&mut self, keys: &[(u64, CgroupHook)]) {
        for key in keys {
            if let Some(link) = self.cgroup_links.remove(key) {
                cgroup::detach(link);
            }
        }
    }

    /// Whether this kernel can scope a fault to a cgroup on ingress (`ingress`), and fail
    /// `connect()` with `errno` (`connect`), or the missing piece, named.
    pub fn can_scope(&self, ingress: bool, connect: Option<i32>) -> Result<(), KernelError> {
        if ingress && let Err(why) = &self.cgroups.ingress {
            return Err(KernelError::Unsupported(why.clone()));
        }
        match (connect, &self.cgroups.connect) {
            (Some(_), Err(why)) => Err(KernelError::Unsupported(why.clone())),
            (Some(errno), Ok(false)) if errno != libc::EPERM => {
                let why = self.no_set_retval();
                Err(KernelError::Unsupported(format!(
                    "errno {}: this kernel can fail connect() with EPERM only ({why}); give errno EPERM, or \
                     none (EPERM is the default here)",
                    crate::spec::errno_name(errno)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether a dns fault can run here (the DNS programs loaded).
    pub fn can_dns(&self) -> Result<(), KernelError> {
        self.dns.ready.clone().map_err(|why| KernelError::Unsupported(format!("dns faults cannot run here: {why}")))
    }

    /// What a connect-fail given no errno fails with: ECONNREFUSED (what a closed port
    /// answers) where any errno can be given, else EPERM, the only one there is.
    pub fn default_errno(&self) -> i32 {
        match self.cgroups.connect {
            Ok(false) => libc::EPERM,
            _ => libc::ECONNREFUSED,
        }
    }

    /// What this kernel can do, within the daemon's profile (for status).
    pub fn abilities(&self) -> Abilities {
        let ok = |r: Result<(), String>| Ability::from(&r);
        let connect = &self.cgroups.connect;
        Abilities {
            cgroup_ingress: ok(self.cgroups.ingress.clone()),
            connect_fail: ok(connect.clone().map(drop)),
            connect_fail_any_errno: ok(match connect {
                Ok(true) => Ok(()),
                Ok(false) => Err(self.no_set_retval()),
                Err(why) => Err(why.clone()),
            }),
            connect_fail_default_errno: crate::spec::errno_name(self.default_errno()),
            ..self.abilities.clone()
        }
    }

    /// Why connect() fails with EPERM only here: one text for the status and the refusal, so
    /// that what the status says is what a refused errno is told.
    fn no_set_retval(&self) -> String {
        self.cgroups
            .profile
            .holds_back(Feature::SetRetval)
            .unwrap_or_else(|| "this kernel has no bpf_set_retval (Linux 5.18+)".into())
    }

    /// Whether maps are written many entries per call.
    fn batch(&self) -> bool {
        self.abilities.batch_update.available
    }

    /// The established sessions on `ports` (the SSH guard's) the tracepoint program follows, a
    /// superset of this namespace's; `None` where they must be listed by dumping the TCP table
    /// (the program cannot run here, or its map overflowed). Starts the program on first use.
    pub fn followed_sessions(&mut self, ports: &[u16]) -> Option<Vec<(std::net::SocketAddr, std::net::SocketAddr)>> {
        if matches!(self.follow, sessions::Follow::NotYet) {
            self.follow = match sessions::start(&mut self.ebpf, ports) {
                Ok(f) => sessions::Follow::On(Box::new(f)),
                Err(why) => {
                    tracing::info!("the SSH guard lists sessions by dumping the TCP table: {why}");
                    sessions::Follow::Off(why)
                }
            };
        }
        match &self.follow {
            sessions::Follow::On(f) => f.list(),
            _ => None,
        }
    }

    /// How the SSH guard learns the sessions (for status).
    pub fn guard_sessions(&self) -> String {
        self.follow.describe()
    }

    /// What the cgroup programs can do here (for status).
    pub fn cgroup_support(&self) -> &CgroupSupport {
        &self.cgroups
    }

    /// Makes the qdiscs for `needs` ready before rules use them; on error, undoes what it
    /// added (`keep`: what the live rules need). Returns each ingress-shaped interface's IFB
    /// (ifindex and name), where its ingress rules go.
    pub fn prepare_shaping(
        &mut self,
        needs: &[ShapeNeed],
        keep: &[ShapeNeed],
    ) -> Result<BTreeMap<u32, (u32, String)>, KernelError> {
        let result = self.shaper.prepare(needs, keep);
        // The shaper's redirects share the clsact qdisc with the daemon's filters: one record.
        self.our_clsact.extend(self.shaper.clsact_added());
        self.release_clsact();
        result?;
        Ok(self.shaper.ifbs())
    }

    /// Gives back the qdiscs, classes and IFBs the live rules (`needs`) no longer use.
    pub fn settle_shaping(&mut self, needs: &[ShapeNeed]) {
        self.shaper.settle(needs);
        self.release_clsact();
    }

    pub fn shaping_record(&self) -> ShapingRecord {
        self.shaper.record()
    }

    /// Whether this kernel can hold packets for a delay or bandwidth fault (on ingress too, when
    /// `ingress`; letting some overtake, when `reorder`), or the missing piece, named.
    pub fn can_shape(&self, ingress: bool, reorder: bool) -> Result<(), KernelError> {
        let why = match (&self.shaper.backend, &self.shaper.ingress, &self.shaper.reorder) {
            (Err(why), _, _) => format!("delay and bandwidth faults cannot run here: {why}"),
            (Ok(_), Err(why), _) if ingress => format!("ingress delay and bandwidth need an IFB device: {why}"),
            (Ok(b), _, Err(why)) if reorder => {
                let b = format!("{b:?}").to_lowercase();
                format!("reorder cannot run on the {b} backend here: {why}; delay_backend = \"netem\" can")
            }
            _ => return Ok(()),
        };
        Err(KernelError::Unsupported(why))
    }

    /// The delay backend, or why there is none.
    pub fn backend(&self) -> Result<Backend, String> {
        self.shaper.backend.clone()
    }

    /// Per-rule counters, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Counters {
        let values = self.counters.get(&slot, 0);
        values.map_or_else(
            |_| Counters::default(),
            |v| {
                v.iter().fold(Counters::default(), |a, c| Counters {
                    matched: a.matched + c.matched,
                    dropped: a.dropped + c.dropped,
                    duplicated: a.duplicated + c.duplicated,
                    corrupted: a.corrupted + c.corrupted,
                    reset: a.reset + c.reset,
                    answered: a.answered + c.answered,
                })
            },
        )
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.links
            .iter()
            .map(|(&(ifindex, hook), l)| Attachment {
                interface: l.interface.clone(),
                ifindex,
                hook: hook.wire(),
                mode: if l.is_tcx() { chaos_api::api::AttachMode::Tcx } else { chaos_api::api::AttachMode::Netlink },
                idle: self.idle.contains_key(&(ifindex, hook)),
            })
            .chain(self.cgroup_links.iter().map(|(&(_, kind), l)| Attachment {
                interface: l.dir.display().to_string(),
                ifindex: 0,
                hook: kind.wire(),
                mode: chaos_api::api::AttachMode::Link,
                idle: false,
            }))
            .collect()
    }

    /// The cls_bpf filters attached now, for the state file (TCX links are pinned instead).
    pub fn netlink_filters(&self) -> Vec<NlFilter> {
        self.links
            .values()
            .filter_map(|l| match &l.handle {
                Handle::Netlink { filter, .. } => {
                    Some(NlFilter { added_clsact: self.our_clsact.contains(&filter.ifindex), ..filter.clone() })
                }
                Handle::Tcx { .. } => None,
            })
            .collect()
    }

    /// Rewrites the actions of existing slots, keeping their counters (re-adopted faults).
    pub fn set_rules(&mut self, slots: &[(u32, RuleAction)]) -> Result<(), KernelError> {
        for (slot, action) in slots {
            self.rules.set(*slot, *action, 0).map_err(|source| KernelError::Map { map: map_names::RULES, source })?;
        }
        Ok(())
    }

    /// Detaches everything and removes every pin and the pin directory: the daemon's clean exit.
    /// Call with no faults left (after the engine's clear).
    pub fn unpin(&mut self) {
        let keys: Vec<_> = self.links.keys().copied().collect();
        self.detach_all(&keys);
        let keys: Vec<_> = self.cgroup_links.keys().copied().collect();
        self.detach_cgroups(&keys);
        match self.pins.remove_all() {
            Ok(removed) => tracing::info!(pins = removed.len(), "removed pins"),
            Err(e) => tracing::warn!("removing pins in {}: {e}", self.pins.dir.display()),
        }
    }

    fn detach_all(&mut self, keys: &[(u32, TcHook)]) {
        for key in keys {
            self.idle.remove(key);
            if let Some(link) = self.links.remove(key) {
                attach::detach(link);
            }
        }
        self.release_clsact();
    }

    /// Removes the clsact qdiscs the daemon added (for its filters or an ingress redirect) that
    /// nothing of its own uses any more, unless a filter is left on them: one someone else
    /// added since keeps the qdisc, which is never ours to take away with it.
    fn release_clsact(&mut self) {
        use crate::netlink::tc::{CLSACT_EGRESS, CLSACT_INGRESS, filters};
        let redirected = self.shaper.ifbs();
        let idle: Vec<u32> = self
            .our_clsact
            .iter()
            // A TCX link needs no clsact: only cls_bpf filters (and redirects) keep it.
            .filter(|i| !redirected.contains_key(i) && !self.links.iter().any(|((l, _), k)| l == *i && !k.is_tcx()))
            .copied()
            .collect();
        for ifindex in idle {
            self.our_clsact.remove(&ifindex);
            let left =
                filters(ifindex, CLSACT_INGRESS).and_then(|i| Ok(i.len() + filters(ifindex, CLSACT_EGRESS)?.len()));
            match left {
                Ok(0) => match crate::netlink::delete_clsact(ifindex) {
                    Ok(()) => tracing::info!(ifindex, "removed the clsact qdisc it added"),
                    Err(e) => tracing::warn!(ifindex, "removing clsact: {e}"),
                },
                Ok(n) => {
                    tracing::info!(ifindex, filters = n, "kept the clsact qdisc it added: others' filters are on it")
                }
                // The interface is gone, and its qdiscs with it.
                Err(e) => tracing::debug!(ifindex, "listing clsact filters: {e}"),
            }
        }
    }

    fn write_slots(&mut self, slots: &[(u32, RuleAction)]) -> Result<(), KernelError> {
        let err = |map| move |source| KernelError::Map { map, source };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err(map_names::COUNTERS)(MapError::IoError(e)))?;
        fn each<V: Copy>(slots: &[(u32, RuleAction)], v: V) -> Vec<(u32, V)> {
            slots.iter().map(|(slot, _)| (*slot, v)).collect()
        }
        // The same value on every CPU, as a per-CPU map's entry-by-entry write takes it.
        fn on_all<V: aya::Pod>(v: V, cpus: usize) -> Result<PerCpuValues<V>, MapError> {
            PerCpuValues::try_from(vec![v; cpus]).map_err(MapError::IoError)
        }
        let batch = self.batch();
        let counters = &mut self.counters;
        batch::put_all(
            batch,
            batch::fd(IterableMap::map(counters)),
            &each(slots, Counters::default()),
            Some(cpus),
            |s, v| counters.set(*s, on_all(v, cpus)?, 0),
        )
        .map_err(err(map_names::COUNTERS))?;
        // A new fault's chains start in the good state (no event last) on every CPU.
        let chains = &mut self.chains;
        batch::put_all(
            batch,
            batch::fd(IterableMap::map(chains)),
            &each(slots, Chain::default()),
            Some(cpus),
            |s, v| chains.set(*s, on_all(v, cpus)?, 0),
        )
        .map_err(err(map_names::CHAINS))?;
        let shapes = &mut self.shapes;
        batch::put_all(
            batch,
            batch::fd(IterableMap::map(shapes)),
            &each(slots, ShapeState::default()),
            None,
            |s, v| shapes.set(*s, v, 0),
        )
        .map_err(err(map_names::SHAPES))?;
        // Last: a slot's rule with its state in place.
        let rules = &mut self.rules;
        batch::put_all(batch, batch::fd(IterableMap::map(rules)), slots, None, |s, v| rules.set(*s, v, 0))
            .map_err(err(map_names::RULES))
    }

    fn write(&mut self, t: &Tables) -> Result<(), KernelError> {
        for (len, key, value) in &t.addrs {
            self.addrs
                .insert(&Key::new(*len, *key), *value, 0)
                .map_err(|source| KernelError::Map { map: map_names::ADDRS, source })?;
        }
        let batch = self.batch();
        let pairs = &mut self.pairs;
        batch::put_all(batch, batch::fd(IterableMap::map(pairs)), &t.pairs, None, |k, v| pairs.insert(k, v, 0))
            .map_err(|source| KernelError::Map { map: map_names::PAIRS, source })?;
        for (len, key, value) in &t.ports {
            self.ports
                .insert(&Key::new(*len, *key), *value, 0)
                .map_err(|source| KernelError::Map { map: map_names::PORTS, source })?;
        }
        // Last: a scope is found only once its entries are all in place.
        for (key, value) in &t.scopes {
            self.scopes
                .insert(*key, *value, 0)
                .map_err(|source| KernelError::Map { map: map_names::SCOPES, source })?;
        }
        Ok(())
    }

    /// Deletes every entry of `generation`, found by scanning the maps.
    fn purge(&mut self, generation: u8) {
        let bit = if generation == 1 { CLASS_GEN_BIT } else { 0 };
        let addrs: Vec<_> =
            self.addrs.keys().filter_map(Result::ok).filter(|k| k.data().generation == generation).collect();
        for k in &addrs {
            let _ = self.addrs.remove(k);
        }
        let pairs: Vec<_> =
            self.pairs.keys().filter_map(Result::ok).filter(|k| k.src_class & CLASS_GEN_BIT == bit).collect();
        for k in &pairs {
            let _ = self.pairs.remove(k);
        }
        let ports: Vec<_> =
            self.ports.keys().filter_map(Result::ok).filter(|k| k.data().class & CLASS_GEN_BIT == bit).collect();
        for k in &ports {
            let _ = self.ports.remove(k);
        }
        let scopes: Vec<_> = self.scopes.keys().filter_map(Result::ok).filter(|k| k.generation == generation).collect();
        for k in &scopes {
            let _ = self.scopes.remove(k);
        }
        let entries = addrs.len() + pairs.len() + ports.len() + scopes.len();
        tracing::debug!(generation, entries, "purged a generation");
    }

    /// Deletes `t`'s entries; missing ones (a partial write) are fine.
    fn delete(&mut self, t: &Tables) {
        for (key, _) in &t.scopes {
            let _ = self.scopes.remove(key);
        }
        for (len, key, _) in &t.addrs {
            let _ = self.addrs.remove(&Key::new(*len, *key));
        }
        for (key, _) in &t.pairs {
            let _ = self.pairs.remove(key);
        }
        for (len, key, _) in &t.ports {
            let _ = self.ports.remove(&Key::new(*len, *key));
        }
    }
}

/// `chaos-daemon cleanup`: removes every attachment, pin and qdisc of the daemon in this network
/// namespace without loading anything: the recorded qdiscs (restoring what was there) and IFBs,
/// the recorded cls_bpf `filters`, any other filter running our programs, the pinned links,
/// programs and maps. Returns what it removed.
pub fn cleanup(pins: &Pins, filters: &[NlFilter], shaping: &ShapingRecord) -> Vec<String> {
    let mut removed = shaper::cleanup(shaping);
    for f in filters {
        let (_, attach_type) = attach::program_for(f.hook, false);
        let handle = aya::programs::tc::TcHandle::from(f.handle);
        if let Ok(link) = SchedClassifierLink::attached(&f.interface, attach_type, f.priority, handle, None) {
            // Dropping the link deletes the filter.
            drop(link);
            removed.push(format!("cls_bpf filter on {} (recorded)", f.interface));
        }
    }
    removed.extend(attach::detach_filters_by_name());
    let clsact: BTreeSet<u32> = filters.iter().filter(|f| f.added_clsact).map(|f| f.ifindex).collect();
    for ifindex in clsact {
        if crate::netlink::delete_clsact(ifindex).is_ok() {
            removed.push(format!("clsact qdisc on ifindex {ifindex}"));
        }
    }
    match pins.remove_all() {
        Ok(paths) => removed.extend(paths.iter().map(|p| format!("pin {}", p.display()))),
        Err(e) => tracing::warn!("removing pins in {}: {e}", pins.dir.display()),
    }
    removed
}
