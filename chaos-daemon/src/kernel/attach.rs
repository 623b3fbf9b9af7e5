//! Attaching the programs to interfaces, detaching them, and re-adopting what a previous daemon
//! left attached. TCX links (6.6+) are pinned; netlink cls_bpf filters (older kernels) cannot
//! be, and are described by [`NlFilter`] records the daemon keeps in its state file.

use std::{collections::BTreeMap, path::PathBuf};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
};
use chaos_common::{Hook, PROG_EGRESS, PROG_EGRESS_EDT, PROG_IFB, PROG_IFB_EDT, PROG_INGRESS};
use serde::{Deserialize, Serialize};

use super::{AttachMode, KernelError, pins::Pins};

/// A TC attach point of the daemon's programs. Its number names it in the pins
/// (`link_<ifindex>_<number>`) and in the state file's [`NlFilter`]s: the numbers never change.
/// The first two are [`Hook`]'s.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum TcHook {
    Ingress = Hook::Ingress as u8,
    Egress = Hook::Egress as u8,
    /// An IFB device's egress, shaping an interface's ingress: its rules are matched as
    /// [`Hook::Ingress`] rules.
    IfbEgress = 2,
}

impl TcHook {
    /// As `GET /v1/status` names it.
    pub fn wire(self) -> chaos_api::api::AttachHook {
        use chaos_api::api::AttachHook;
        match self {
            Self::Ingress => AttachHook::Ingress,
            Self::Egress => AttachHook::Egress,
            Self::IfbEgress => AttachHook::IfbEgress,
        }
    }

    /// The hook a number (in a pin's name, a state file) names, if any.
    pub fn from_number(n: u8) -> Option<Self> {
        [Self::Ingress, Self::Egress, Self::IfbEgress].into_iter().find(|h| *h as u8 == n)
    }
}

impl From<TcHook> for u8 {
    fn from(hook: TcHook) -> Self {
        hook as u8
    }
}

impl TryFrom<u8> for TcHook {
    type Error = String;

    fn try_from(n: u8) -> Result<Self, String> {
        Self::from_number(n).ok_or_else(|| format!("no TC hook numbered {n}"))
    }
}

impl std::fmt::Display for TcHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire().as_str())
    }
}

/// A cls_bpf filter of ours, enough to find it again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NlFilter {
    pub ifindex: u32,
    pub interface: String,
    pub hook: TcHook,
    pub priority: u16,
    pub handle: u32,
    /// Whether the daemon added the clsact qdisc this filter sits on (and so removes it).
    pub added_clsact: bool,
}

pub(super) enum Handle {
    /// A TCX link, pinned at `pin`.
    Tcx { link: FdLink, pin: PathBuf },
    /// A cls_bpf filter, detached when `link` is dropped.
    Netlink { link: SchedClassifierLink, filter: NlFilter },
}

pub(super) struct Link {
    pub interface: String,
    pub handle: Handle,
}

impl Link {
    pub fn is_tcx(&self) -> bool {
        matches!(self.handle, Handle::Tcx { .. })
    }
}

/// The program for a hook (with the edt backend or not), and the hook as aya names it.
pub(super) fn program_for(hook: TcHook, edt: bool) -> (&'static str, TcAttachType) {
    match (hook, edt) {
        (TcHook::Egress, false) => (PROG_EGRESS, TcAttachType::Egress),
        (TcHook::Egress, true) => (PROG_EGRESS_EDT, TcAttachType::Egress),
        (TcHook::IfbEgress, false) => (PROG_IFB, TcAttachType::Egress),
        (TcHook::IfbEgress, true) => (PROG_IFB_EDT, TcAttachType::Egress),
        // Ingress never shapes (see PROG_INGRESS): one program for both backends.
        (TcHook::Ingress, _) => (PROG_INGRESS, TcAttachType::Ingress),
    }
}

/// Every (program, hook) pair that can be attached, for `cleanup`.
const ALL_PROGRAMS: [(&str, TcAttachType); 5] = [
    (PROG_INGRESS, TcAttachType::Ingress),
    (PROG_EGRESS, TcAttachType::Egress),
    (PROG_EGRESS_EDT, TcAttachType::Egress),
    (PROG_IFB, TcAttachType::Egress),
    (PROG_IFB_EDT, TcAttachType::Egress),
];

/// A program of the object by name, as its type (`SchedClassifier`, `CgroupSkb`...).
pub(super) fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let what = || format!("program {name}");
    ebpf.program_mut(name)
        .ok_or_else(|| KernelError::Program { what: what(), source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(|source| KernelError::Program { what: what(), source })
}

pub(super) fn attach(
    ebpf: &mut Ebpf,
    pins: &Pins,
    mode: AttachMode,
    ifindex: u32,
    interface: &str,
    hook: TcHook,
    edt: bool,
) -> Result<Link, KernelError> {
    let (name, attach_type) = program_for(hook, edt);
    let what = || format!("attaching {name} to {interface}");
    let prog: &mut SchedClassifier = program(ebpf, name)?;
    // The kernel's load resolved `auto` to TCX or netlink (`tcx_probe`).
    if mode != AttachMode::Netlink {
        let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
        let id = prog
            .attach_with_options(interface, attach_type, tcx)
            .map_err(|source| KernelError::Program { what: what(), source })?;
        let pin = pins.link(ifindex, hook);
        let link = prog.take_link(id).map_err(|source| KernelError::Program { what: what(), source })?;
        let pinned = FdLink::try_from(link)
            .map_err(|e| KernelError::Pins(format!("{}: {e}", what())))?
            .pin(&pin)
            .map_err(|e| KernelError::Pins(format!("pinning {}: {e}", pin.display())))?;
        return Ok(Link { interface: interface.into(), handle: Handle::Tcx { link: pinned.into(), pin } });
    }
    let added_clsact = match tc::qdisc_add_clsact(interface) {
        Ok(()) => {
            tracing::info!(interface, "added clsact qdisc");
            true
        }
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => {
            return Err(KernelError::Program { what: format!("adding clsact to {interface}"), source: e.into() });
        }
    };
    let prog: &mut SchedClassifier = program(ebpf, name)?;
    let attached = prog
        .attach_with_options(interface, attach_type, TcAttachOptions::Netlink(NlOptions::default()))
        .and_then(|id| {
            let link = prog.take_link(id)?;
            let filter = NlFilter {
                ifindex,
                interface: interface.into(),
                hook,
                priority: link.priority()?,
                handle: link.handle()?.into(),
                added_clsact,
            };
            Ok((link, filter))
        });
    match attached {
        Ok((link, filter)) => Ok(Link { interface: interface.into(), handle: Handle::Netlink { link, filter } }),
        Err(source) => {
            if added_clsact {
                let _ = crate::netlink::delete_clsact(ifindex);
            }
            Err(KernelError::Program { what: what(), source })
        }
    }
}

/// Detaches `link` (the clsact qdisc it may sit on is the caller's concern).
pub(super) fn detach(link: Link) {
    let interface = link.interface;
    match link.handle {
        Handle::Tcx { link, pin } => {
            if let Err(e) = std::fs::remove_file(&pin) {
                tracing::warn!(interface, "unpinning {}: {e}", pin.display());
            }
            // The link goes with its last reference: the pin (removed) and this fd.
            drop(link);
        }
        // Dropping the link deletes the filter (aya's link wrapper detaches on drop).
        Handle::Netlink { link, .. } => drop(link),
    }
}

/// Re-adopts a previous daemon's attachments: pinned TCX links and recorded cls_bpf filters
/// are switched to this daemon's programs in place (`bpf_link_update` for TCX, a filter
/// replace for cls_bpf), so traffic never sees a gap or two programs at once.
pub(super) fn adopt(ebpf: &mut Ebpf, pins: &Pins, filters: &[NlFilter], edt: bool) -> BTreeMap<(u32, TcHook), Link> {
    let mut links = BTreeMap::new();
    for (ifindex, hook, pin) in pins.links() {
        let (name, _) = program_for(hook, edt);
        let adopted = PinnedLink::from_pin(&pin)
            .map_err(|e| e.to_string())
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
            .and_then(|l| program::<SchedClassifier>(ebpf, name).map_err(|e| e.to_string()).map(|p| (p, l)))
            .and_then(|(p, l)| {
                let id = p.attach_to_link(l).map_err(|e| e.to_string())?;
                let l = p.take_link(id).map_err(|e| e.to_string())?;
                FdLink::try_from(l).map_err(|e| e.to_string())
            });
        let interface = nix::net::if_::if_indextoname(ifindex).map(|s| s.to_string_lossy().into_owned());
        match (adopted, interface) {
            (Ok(link), Ok(interface)) => {
                tracing::info!(interface, %hook, "re-adopted pinned TCX link");
                links.insert((ifindex, hook), Link { interface, handle: Handle::Tcx { link, pin } });
            }
            (result, interface) => {
                // Gone interface (the kernel already detached the link) or unusable pin.
                tracing::warn!(ifindex, %hook, ?interface, error = ?result.err(), "dropping pinned link");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    for f in filters {
        let (name, attach_type) = program_for(f.hook, edt);
        let adopted =
            SchedClassifierLink::attached(&f.interface, attach_type, f.priority, TcHandle::from(f.handle), None)
                .map_err(|e| e.to_string())
                .and_then(|l| {
                    let p: &mut SchedClassifier = program(ebpf, name).map_err(|e| e.to_string())?;
                    let id = p.attach_to_link(l).map_err(|e| e.to_string())?;
                    p.take_link(id).map_err(|e| e.to_string())
                });
        match adopted {
            Ok(link) => {
                tracing::info!(interface = f.interface, hook = %f.hook, "re-adopted cls_bpf filter");
                links.insert(
                    (f.ifindex, f.hook),
                    Link { interface: f.interface.clone(), handle: Handle::Netlink { link, filter: f.clone() } },
                );
            }
            Err(e) => tracing::warn!(interface = f.interface, hook = %f.hook, "cannot re-adopt filter: {e}"),
        }
    }
    links
}

/// Removes every cls_bpf filter running one of our programs on any interface of this network
/// namespace: the fallback of `cleanup` for filters no record names.
pub fn detach_filters_by_name() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(interfaces) = nix::net::if_::if_nameindex() else { return removed };
    for iface in interfaces.iter() {
        let interface = iface.name().to_string_lossy().into_owned();
        for (name, attach_type) in ALL_PROGRAMS {
            if tc::qdisc_detach_program(&interface, attach_type, name).is_ok() {
                removed.push(format!("cls_bpf filter {name} on {interface}"));
            }
        }
    }
    removed
}

/// Whether this kernel has TCX links, found without attaching anything: a link of a TC
/// program to ifindex 0 is refused with ENODEV by a kernel that knows TCX (it looks the device
/// up), and with EINVAL by one that does not know the attach type (or BPF_LINK_CREATE).
pub(super) fn tcx_probe(ebpf: &Ebpf) -> Result<(), String> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_TCX_INGRESS: u32 = 46;
    let prog: &SchedClassifier = ebpf
        .program(PROG_INGRESS)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("no program {PROG_INGRESS} to probe TCX with"))?;
    let fd = prog.fd().map_err(|e| format!("probing TCX: {e}"))?.as_fd().as_raw_fd();
    // union bpf_attr's link_create: prog_fd, target_ifindex, attach_type, flags; the rest zero.
    let mut attr = [0u32; 16];
    attr[0] = fd as u32;
    attr[2] = BPF_TCX_INGRESS;
    // SAFETY: bpf(2) reads the attr, of the size given; on success it returns a new fd, closed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, attr.as_mut_ptr(), size_of_val(&attr)) };
    if rc >= 0 {
        // SAFETY: the fd the call just returned, ours alone.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(rc as i32) });
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        e => Err(format!("this kernel has no TCX links (BPF_TCX_INGRESS, Linux 6.6+): linking a TC program: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{NlFilter, TcHook};
    use crate::kernel::{CgroupHook, pins::Pins};

    #[test]
    fn hooks_keep_their_numbers_in_the_state_file_and_the_pins() {
        let json = r#"{"ifindex":7,"interface":"ifb0","hook":2,"priority":1,"handle":1,"added_clsact":true}"#;
        let f: NlFilter = serde_json::from_str(json).unwrap();
        assert_eq!(f.hook, TcHook::IfbEgress);
        assert_eq!(serde_json::to_string(&f).unwrap(), json);
        for (hook, n) in [(TcHook::Ingress, 0), (TcHook::Egress, 1), (TcHook::IfbEgress, 2)] {
            assert_eq!(TcHook::from_number(n), Some(hook));
            assert_eq!(hook as u8, n);
        }
        let e = serde_json::from_str::<NlFilter>(&json.replace(r#""hook":2"#, r#""hook":3"#)).unwrap_err();
        assert!(e.to_string().contains("no TC hook numbered 3"), "{e}");
        for (hook, n) in [(CgroupHook::Ingress, 0), (CgroupHook::Connect4, 4), (CgroupHook::Connect6, 6)] {
            assert_eq!(CgroupHook::from_number(n), Some(hook));
        }
        assert_eq!(CgroupHook::from_number(1), None);
        // Pins as a previous daemon named them are read back; a number no hook has is skipped.
        let dir = std::env::temp_dir().join(format!("chaos-pins-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pins = Pins::new(&dir);
        assert!(pins.link(3, TcHook::IfbEgress).ends_with("link_3_2"));
        assert!(pins.cgroup_link(9, CgroupHook::Connect6).ends_with("link_cg9_6"));
        for name in ["link_3_2", "link_3_9", "link_cg9_6", "link_cg9_5"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let links: Vec<_> = pins.links().into_iter().map(|(i, h, _)| (i, h)).collect();
        let cgroups: Vec<_> = pins.cgroup_links().into_iter().map(|(i, h, _)| (i, h)).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(links, [(3, TcHook::IfbEgress)]);
        assert_eq!(cgroups, [(9, CgroupHook::Connect6)]);
    }
}
