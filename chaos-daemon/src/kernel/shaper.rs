//! The qdiscs behind delay and bandwidth faults, kept in step with the rules: a device is taken
//! (its qdiscs recorded, ours installed) before the first rule that shapes on it goes live, and
//! given back exactly as it was once the last one is gone. Ingress is shaped on the egress of an
//! IFB device the interface's ingress is redirected to (ingress has no queue to hold packets).

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};

use serde::{Deserialize, Serialize};

use super::KernelError;
use crate::shaping::{self, Backend, FqParams, IfbRedirect, NetemClass, Saved, ShapingError};

/// One shaping rule as the qdiscs need it.
#[derive(Clone, Debug)]
pub struct ShapeNeed {
    pub ifindex: u32,
    pub interface: String,
    pub egress: bool,
    pub ingress: bool,
    /// The netem backend's class (its `minor` is the rule's); unused by edt.
    pub class: NetemClass,
}

/// A device we took, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub ifindex: u32,
    pub interface: String,
    pub saved: Saved,
    /// netem backend: the minors of the classes we made.
    pub classes: BTreeSet<u16>,
    /// An IFB of ours: it goes with its redirect, qdiscs and all; nothing to restore.
    pub ifb: bool,
}

/// Everything shaping holds in the kernel, for the state file and `cleanup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShapingRecord {
    pub backend: Option<Backend>,
    pub devices: Vec<DeviceRecord>,
    pub ifbs: Vec<IfbRedirect>,
}

/// Enough for every delayed packet of a busy flow: fq's defaults (10000 packets, 100 per flow)
/// would drop a 50 ms delayed stream of more than 2000 packets per second.
pub const FQ: FqParams = FqParams { plimit: 100_000, flow_plimit: FQ_FLOW_LIMIT, horizon_ns: 20_000_000_000 };
/// Per flow; also the limit of the netem backend's delay leaves.
pub const FQ_FLOW_LIMIT: u32 = 20_000;
/// HTB's direct queue (traffic no rule shapes) on the netem backend.
pub const DIRECT_QLEN: u32 = 10_000;

pub(super) struct Shaper {
    /// The backend in use, or why there is none.
    pub backend: Result<Backend, String>,
    /// Whether ingress can be shaped (IFB and mirred), or why not.
    pub ingress: Result<(), String>,
    /// Whether a packet can skip its delay and overtake delayed ones (reorder), or why not.
    pub reorder: Result<(), String>,
    devices: BTreeMap<u32, DeviceRecord>,
    /// By the redirected interface's ifindex.
    ifbs: BTreeMap<u32, IfbRedirect>,
    /// netem backend: the classes (ifindex, minor) a previous daemon made and this one has not
    /// set yet. Each is set again before a rule uses it: that daemon may have given the minor to
    /// another rule (minors moved when they came to skip `cd`), whose delay it still has.
    adopted: BTreeSet<(u32, u16)>,
}

impl Shaper {
    /// Takes over what a previous daemon recorded (its qdiscs are still in place).
    pub fn new(
        backend: Result<Backend, String>,
        ingress: Result<(), String>,
        reorder: Result<(), String>,
        previous: ShapingRecord,
    ) -> Self {
        let adopted = previous.devices.iter().flat_map(|d| d.classes.iter().map(|&m| (d.ifindex, m))).collect();
        Self {
            backend,
            ingress,
            reorder,
            adopted,
            devices: previous.devices.into_iter().map(|d| (d.ifindex, d)).collect(),
            ifbs: previous.ifbs.into_iter().map(|r| (r.ifindex, r)).collect(),
        }
    }

    pub fn record(&self) -> ShapingRecord {
        ShapingRecord {
            backend: self.backend.as_ref().ok().copied(),
            devices: self.devices.values().cloned().collect(),
            ifbs: self.ifbs.values().cloned().collect(),
        }
    }

    /// Interfaces whose clsact qdisc a redirect added: the kernel module keeps that record
    /// with its own (see `Kernel::release_clsact`).
    pub fn clsact_added(&self) -> Vec<u32> {
        self.ifbs.values().filter(|r| r.added_clsact).map(|r| r.ifindex).collect()
    }

    /// The IFB standing for each redirected interface (by ifindex).
    pub fn ifbs(&self) -> BTreeMap<u32, (u32, String)> {
        self.ifbs.iter().map(|(k, r)| (*k, (r.ifb_ifindex, r.ifb_name.clone()))).collect()
    }

    /// Makes the qdiscs `needs` shape through ready. Adds only: what no longer is needed goes
    /// in [`Self::settle`], after the rules stopped using it. On error, what this call added is
    /// undone (`keep` is what was needed before).
    pub fn prepare(&mut self, needs: &[ShapeNeed], keep: &[ShapeNeed]) -> Result<(), KernelError> {
        let result = self.try_prepare(needs);
        if result.is_err() {
            self.settle(keep);
        }
        result
    }

    fn try_prepare(&mut self, needs: &[ShapeNeed]) -> Result<(), KernelError> {
        if needs.is_empty() {
            return Ok(());
        }
        let backend = self.backend.clone().map_err(KernelError::Unsupported)?;
        for need in needs {
            let mut places = Vec::new();
            if need.egress {
                places.push((need.ifindex, need.interface.clone(), false));
            }
            if need.ingress {
                self.ingress.clone().map_err(|why| {
                    KernelError::Unsupported(format!("ingress delay and bandwidth need an IFB device: {why}"))
                })?;
                if let Entry::Vacant(slot) = self.ifbs.entry(need.ifindex) {
                    let redirect = shaping::redirect_ingress(need.ifindex)?;
                    tracing::info!(interface = need.interface, ifb = redirect.ifb_name, "redirected ingress to IFB");
                    slot.insert(redirect);
                }
                let r = &self.ifbs[&need.ifindex];
                places.push((r.ifb_ifindex, r.ifb_name.clone(), true));
            }
            for (ifindex, interface, ifb) in places {
                let device = match self.devices.entry(ifindex) {
                    Entry::Occupied(d) => d.into_mut(),
                    Entry::Vacant(slot) => {
                        let saved = match shaping::take(ifindex, backend, FQ, DIRECT_QLEN) {
                            // A root of ours no record names: a daemon died between taking the
                            // device and saving its state. What it replaced is unknown; the
                            // kernel default is what `cleanup` would give back too.
                            Err(ShapingError::AlreadyOurs { .. }) => {
                                tracing::warn!(interface, "unrecorded cd: root qdisc found: replacing it");
                                shaping::remove_our_root(ifindex)?;
                                shaping::take(ifindex, backend, FQ, DIRECT_QLEN)?
                            }
                            taken => taken?,
                        };
                        tracing::info!(interface, ?backend, ?saved, "took the root qdisc");
                        slot.insert(DeviceRecord { ifindex, interface, saved, classes: BTreeSet::new(), ifb })
                    }
                };
                let minor = need.class.minor;
                if backend == Backend::Netem
                    && (!device.classes.contains(&minor) || self.adopted.contains(&(ifindex, minor)))
                {
                    shaping::set_class(ifindex, &need.class)?;
                    device.classes.insert(minor);
                    self.adopted.remove(&(ifindex, minor));
                }
            }
        }
        Ok(())
    }

    /// Gives back every class, device and IFB that `needs` does not use. Failures are logged:
    /// the rules no longer send packets there, and `cleanup` retries from the record.
    pub fn settle(&mut self, needs: &[ShapeNeed]) {
        let mut used: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
        let mut redirected = BTreeSet::new();
        for need in needs {
            if need.egress {
                used.entry(need.ifindex).or_default().insert(need.class.minor);
            }
            if need.ingress
                && let Some(r) = self.ifbs.get(&need.ifindex)
            {
                redirected.insert(need.ifindex);
                used.entry(r.ifb_ifindex).or_default().insert(need.class.minor);
            }
        }
        let ifindexes: Vec<u32> = self.devices.keys().copied().collect();
        for ifindex in ifindexes {
            let device = self.devices.get_mut(&ifindex).expect("listed");
            match used.get(&ifindex) {
                Some(minors) => {
                    let stale: Vec<u16> = device.classes.difference(minors).copied().collect();
                    for minor in stale {
                        if let Err(e) = shaping::remove_class(ifindex, minor) {
                            tracing::warn!(interface = device.interface, minor, "removing a netem class: {e}");
                        }
                        device.classes.remove(&minor);
                    }
                }
                None => {
                    let device = self.devices.remove(&ifindex).expect("listed");
                    // An IFB's qdiscs go with the IFB, below.
                    if !device.ifb {
                        match shaping::restore(ifindex, &device.saved) {
                            Ok(()) => tracing::info!(interface = device.interface, "restored the root qdisc"),
                            Err(e) => tracing::error!(interface = device.interface, "restoring qdiscs: {e}"),
                        }
                    }
                }
            }
        }
        let gone: Vec<u32> = self.ifbs.keys().filter(|k| !redirected.contains(k)).copied().collect();
        for ifindex in gone {
            let r = self.ifbs.remove(&ifindex).expect("listed");
            // clsact stays for the kernel module to remove, with the daemon's own record.
            match shaping::unredirect_ingress(&IfbRedirect { added_clsact: false, ..r.clone() }) {
                Ok(()) => tracing::info!(ifb = r.ifb_name, "removed the ingress redirect and its IFB"),
                Err(e) => tracing::error!(ifb = r.ifb_name, "removing the ingress redirect: {e}"),
            }
        }
    }
}

/// `chaos-daemon cleanup`: gives back every recorded device and removes every recorded IFB.
pub fn cleanup(record: &ShapingRecord) -> Vec<String> {
    let mut removed = Vec::new();
    for d in record.devices.iter().filter(|d| !d.ifb) {
        match shaping::restore(d.ifindex, &d.saved) {
            Ok(()) => removed.push(format!("root qdisc on {} (restored)", d.interface)),
            Err(e) => tracing::warn!(interface = d.interface, "restoring qdiscs: {e}"),
        }
    }
    for r in &record.ifbs {
        match shaping::unredirect_ingress(r) {
            Ok(()) => removed.push(format!("IFB {} and the ingress redirect to it", r.ifb_name)),
            Err(e) => tracing::warn!(ifb = r.ifb_name, "removing the ingress redirect: {e}"),
        }
    }
    removed.extend(cleanup_unrecorded());
    removed
}

/// What no record names (a daemon died before saving its state): our `cd:` root qdiscs, given
/// back to the kernel default, and our IFBs with the redirects to them (the redirect first: a
/// mirred action whose device is gone drops every packet).
fn cleanup_unrecorded() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(interfaces) = nix::net::if_::if_nameindex() else { return removed };
    for iface in interfaces.iter() {
        let (ifindex, name) = (iface.index(), iface.name().to_string_lossy().into_owned());
        let redirected =
            name.strip_prefix("chaos-ifb").or_else(|| name.strip_prefix("cifb")).and_then(|n| n.parse().ok());
        let ifb = crate::netlink::link::by_index(ifindex).ok().flatten().and_then(|l| l.kind) == Some("ifb".into());
        if let (Some(of), true) = (redirected, ifb) {
            let r = IfbRedirect {
                ifindex: of,
                ifb_ifindex: ifindex,
                ifb_name: name.clone(),
                priority: shaping::REDIRECT_PRIORITY,
                handle: 0,
                added_clsact: false,
            };
            match shaping::unredirect_ingress(&r) {
                Ok(()) => removed.push(format!("IFB {name} and the ingress redirect to it (unrecorded)")),
                Err(e) => tracing::warn!(ifb = name, "removing an unrecorded IFB: {e}"),
            }
            continue;
        }
        if let Ok(true) = shaping::remove_our_root(ifindex) {
            removed.push(format!("root qdisc cd: on {name} (unrecorded: the kernel default is back)"));
        }
    }
    removed
}
