//! The kernel side: the loaded object, its maps, and the TC attachments. Rule changes are
//! written as a whole new generation of entries, made live by one write to `ACTIVE`, and the
//! old generation is deleted after: packets see the old rule set or the new one, never a mix.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    sys::{is_map_supported, is_program_supported},
};
use chaos_common::{
    AddrKey, Counters, HOOK_EGRESS, PROG_EGRESS, PROG_INGRESS, PairKey, PortKey, RuleAction, map_names,
};
use serde::{Deserialize, Serialize};

use crate::compile::{self, CompileError, Rule, Tables};

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
}

/// How one hook of one interface is attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub hook: String,
    /// `tcx` (a bpf link, kernel 6.6+) or `netlink` (a cls_bpf filter under clsact).
    pub mode: String,
}

/// How programs are attached: `auto` tries TCX and falls back to netlink; the others force one
/// (`netlink` is how kernels before 6.6 are tested on newer ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Auto,
    Tcx,
    Netlink,
}

struct Link {
    interface: String,
    id: SchedClassifierLinkId,
    tcx: bool,
}

pub struct Kernel {
    ebpf: Ebpf,
    active: Array<MapData, u32>,
    addrs: LpmTrie<MapData, AddrKey, u32>,
    pairs: HashMap<MapData, PairKey, u32>,
    ports: LpmTrie<MapData, PortKey, u32>,
    rules: Array<MapData, RuleAction>,
    counters: PerCpuArray<MapData, Counters>,
    generation: u8,
    /// The live generation's entries, so they can be deleted exactly.
    live: Tables,
    links: BTreeMap<(u32, u8), Link>,
    mode: AttachMode,
    /// Interfaces whose clsact qdisc this daemon added, removed with their last filter.
    our_clsact: BTreeSet<u32>,
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
    /// Loads the object and its programs; nothing is attached until a fault needs it.
    pub fn load(mode: AttachMode) -> Result<Self, KernelError> {
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
        let mut ebpf = Ebpf::load(crate::EBPF_OBJECT)?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().map_err(|e| match e {
                ProgramError::LoadError { io_error, verifier_log } => {
                    KernelError::Verifier { program: name, source: io_error, log: verifier_log.to_string() }
                }
                e => KernelError::Program { what: format!("loading {name}"), source: e },
            })?;
        }
        let mut kernel = Self {
            active: map(&mut ebpf, map_names::ACTIVE)?,
            addrs: map(&mut ebpf, map_names::ADDRS)?,
            pairs: map(&mut ebpf, map_names::PAIRS)?,
            ports: map(&mut ebpf, map_names::PORTS)?,
            rules: map(&mut ebpf, map_names::RULES)?,
            counters: map(&mut ebpf, map_names::COUNTERS)?,
            ebpf,
            generation: 0,
            live: Tables::default(),
            links: BTreeMap::new(),
            mode,
            our_clsact: BTreeSet::new(),
        };
        kernel.active.set(0, 0, 0).map_err(|source| KernelError::Map { map: map_names::ACTIVE, source })?;
        Ok(kernel)
    }

    /// Makes `rules` the live rule set. `new_slots` are slots not in use before, with their
    /// actions (their counters start at zero); `hooks` is every (ifindex, hook) the rules need,
    /// with the interface name. On error the previous rule set stays live and untouched.
    pub fn sync(
        &mut self,
        rules: &[Rule],
        new_slots: &[(u32, RuleAction)],
        hooks: &BTreeMap<(u32, u8), String>,
    ) -> Result<(), KernelError> {
        let next = 1 - self.generation;
        let started = std::time::Instant::now();
        let tables = compile::compile(rules, next)?;
        let compiled = started.elapsed();

        let mut attached = Vec::new();
        for (&(ifindex, hook), interface) in hooks {
            if self.links.contains_key(&(ifindex, hook)) {
                continue;
            }
            match self.attach(ifindex, interface, hook) {
                Ok(link) => {
                    self.links.insert((ifindex, hook), link);
                    attached.push((ifindex, hook));
                }
                Err(e) => {
                    self.detach_all(&attached);
                    return Err(e);
                }
            }
        }
        let made_live = self.write_slots(new_slots).and_then(|()| self.write(&tables)).and_then(|()| {
            self.active.set(0, u32::from(next), 0).map_err(|source| KernelError::Map { map: map_names::ACTIVE, source })
        });
        if let Err(e) = made_live {
            self.delete(&tables);
            self.detach_all(&attached);
            return Err(e);
        }
        let written = started.elapsed();
        let old = std::mem::replace(&mut self.live, tables);
        self.generation = next;
        self.delete(&old);
        let t = &self.live;
        tracing::info!(
            rules = rules.len(),
            entries = t.addrs.len() + t.pairs.len() + t.ports.len(),
            ?compiled,
            ?written,
            total = ?started.elapsed(),
            "rule set live"
        );
        let unused: Vec<_> = self.links.keys().filter(|k| !hooks.contains_key(k)).copied().collect();
        self.detach_all(&unused);
        Ok(())
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
                hook: if hook == HOOK_EGRESS { "egress" } else { "ingress" }.into(),
                mode: if l.tcx { "tcx" } else { "netlink" }.into(),
            })
            .collect()
    }

    fn attach(&mut self, ifindex: u32, interface: &str, hook: u8) -> Result<Link, KernelError> {
        let (name, attach_type) = program_for(hook);
        let what = || format!("attaching {name} to {interface}");
        // Probe TCX by trying it: kernels without it (before 6.6, or vendor kernels that lack
        // the backport) refuse the link type, and then a cls_bpf filter under clsact is used.
        if self.mode != AttachMode::Netlink {
            let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
            let prog = program(&mut self.ebpf, name)?;
            match prog.attach_with_options(interface, attach_type, tcx) {
                Ok(id) => return Ok(Link { interface: interface.into(), id, tcx: true }),
                Err(e) if self.mode == AttachMode::Tcx || is_missing_interface(&e) => {
                    return Err(KernelError::Program { what: what(), source: e });
                }
                Err(e) => tracing::debug!(interface, "TCX attach failed ({e}); using netlink"),
            }
        }
        match tc::qdisc_add_clsact(interface) {
            Ok(()) => {
                tracing::info!(interface, "added clsact qdisc");
                self.our_clsact.insert(ifindex);
            }
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(KernelError::Program { what: format!("adding clsact to {interface}"), source: e.into() });
            }
        }
        let id = program(&mut self.ebpf, name)?
            .attach_with_options(interface, attach_type, TcAttachOptions::Netlink(NlOptions::default()))
            .map_err(|source| KernelError::Program { what: what(), source })?;
        Ok(Link { interface: interface.into(), id, tcx: false })
    }

    fn detach_all(&mut self, keys: &[(u32, u8)]) {
        for key in keys {
            let Some(link) = self.links.remove(key) else { continue };
            let (name, _) = program_for(key.1);
            let result = program(&mut self.ebpf, name).and_then(|p: &mut SchedClassifier| {
                p.detach(link.id).map_err(|source| KernelError::Program { what: format!("detaching {name}"), source })
            });
            if let Err(e) = result {
                tracing::warn!(interface = link.interface, "{e}");
            }
            // Never delete a qdisc we did not create, nor one still holding our filters.
            let in_use = self.links.keys().any(|(ifindex, _)| *ifindex == key.0);
            if !in_use && self.our_clsact.remove(&key.0) {
                match crate::netlink::delete_clsact(key.0) {
                    Ok(()) => tracing::info!(interface = link.interface, "removed the clsact qdisc it added"),
                    Err(e) => tracing::warn!(interface = link.interface, "removing clsact: {e}"),
                }
            }
        }
    }

    fn write_slots(&mut self, slots: &[(u32, RuleAction)]) -> Result<(), KernelError> {
        let err = |map, source| KernelError::Map { map, source };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err(map_names::COUNTERS, MapError::IoError(e)))?;
        for (slot, action) in slots {
            let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])
                .map_err(|e| err(map_names::COUNTERS, MapError::IoError(e)))?;
            self.counters.set(*slot, zero, 0).map_err(|e| err(map_names::COUNTERS, e))?;
            self.rules.set(*slot, *action, 0).map_err(|e| err(map_names::RULES, e))?;
        }
        Ok(())
    }

    fn write(&mut self, t: &Tables) -> Result<(), KernelError> {
        for (len, key, value) in &t.addrs {
            self.addrs
                .insert(&Key::new(*len, *key), *value, 0)
                .map_err(|source| KernelError::Map { map: map_names::ADDRS, source })?;
        }
        for (key, value) in &t.pairs {
            self.pairs.insert(*key, *value, 0).map_err(|source| KernelError::Map { map: map_names::PAIRS, source })?;
        }
        for (len, key, value) in &t.ports {
            self.ports
                .insert(&Key::new(*len, *key), *value, 0)
                .map_err(|source| KernelError::Map { map: map_names::PORTS, source })?;
        }
        Ok(())
    }

    /// Deletes `t`'s entries; missing ones (a partial write) are fine.
    fn delete(&mut self, t: &Tables) {
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

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, KernelError> {
    let what = || format!("program {name}");
    ebpf.program_mut(name)
        .ok_or_else(|| KernelError::Program { what: what(), source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(|source| KernelError::Program { what: what(), source })
}

/// The program for a hook, and the hook as aya names it.
fn program_for(hook: u8) -> (&'static str, TcAttachType) {
    if hook == HOOK_EGRESS { (PROG_EGRESS, TcAttachType::Egress) } else { (PROG_INGRESS, TcAttachType::Ingress) }
}

fn is_missing_interface(e: &ProgramError) -> bool {
    matches!(e, ProgramError::TcError(TcError::IoError(_)))
}
