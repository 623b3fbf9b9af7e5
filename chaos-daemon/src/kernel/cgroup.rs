//! The cgroup programs: loading them where the kernel accepts them, attaching them to target
//! cgroups as bpf links pinned like the TCX ones, and re-adopting those links.
//!
//! Only bpf links (5.7+) are used: a link is detached when its pin and last fd go, so `cleanup`
//! (and a daemon's exit) can always take it back. A legacy `BPF_PROG_ATTACH` attachment would
//! stay on the cgroup after a crash with nothing pinned to find it by.

use std::{collections::BTreeMap, os::fd::AsFd as _, path::PathBuf};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError,
        links::{FdLink, PinnedLink},
    },
};
use chaos_common::{PROG_CGROUP_INGRESS, PROG_CONNECT4, PROG_CONNECT4_ERRNO, PROG_CONNECT6, PROG_CONNECT6_ERRNO};

use super::{
    KernelError,
    attach::program,
    backend::verifier_error,
    pins::Pins,
    profile::{Feature, KernelProfile},
};

/// What a cgroup attachment runs: part of its key, and by number of its pin's name
/// (`link_cg<id>_<number>`), so the numbers never change.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CgroupHook {
    Ingress = 0,
    Connect4 = 4,
    Connect6 = 6,
}

impl CgroupHook {
    /// As `GET /v1/status` names it.
    pub fn wire(self) -> chaos_api::api::AttachHook {
        use chaos_api::api::AttachHook;
        match self {
            Self::Ingress => AttachHook::CgroupIngress,
            Self::Connect4 => AttachHook::Connect4,
            Self::Connect6 => AttachHook::Connect6,
        }
    }

    /// The hook a pin's number names, if any.
    pub fn from_number(n: u8) -> Option<Self> {
        [Self::Ingress, Self::Connect4, Self::Connect6].into_iter().find(|h| *h as u8 == n)
    }
}

impl std::fmt::Display for CgroupHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire().as_str())
    }
}

/// What this kernel can do with cgroups, found by loading the programs.
#[derive(Clone, Debug)]
pub struct CgroupSupport {
    /// Ingress attribution (the cgroup_skb program), or why not.
    pub ingress: Result<(), String>,
    /// connect-fail, and whether with any errno (true) or EPERM only, or why not.
    pub connect: Result<bool, String>,
    /// What the daemon holds itself to (for the reason an errno is refused).
    pub profile: KernelProfile,
}

/// A cgroup attachment: the cgroup it is on, its link and the link's pin.
pub(super) struct CgroupLink {
    pub dir: PathBuf,
    link: FdLink,
    pin: PathBuf,
}

/// Loads the cgroup programs the kernel accepts, and `profile` lets it use.
pub(super) fn load(ebpf: &mut Ebpf, pins: &Pins, profile: KernelProfile) -> CgroupSupport {
    // 4.19 has the program types but no bpf links for them, and the daemon uses links only.
    if let Some(why) = profile.holds_back(Feature::CgroupLinks) {
        return CgroupSupport {
            ingress: Err(format!("ingress cgroup faults cannot run here: {why}")),
            connect: Err(format!("connect-fail cannot run here: {why}")),
            profile,
        };
    }
    let ingress = load_one(ebpf, pins, PROG_CGROUP_INGRESS).map_err(|e| {
        format!("ingress cgroup faults need a cgroup_skb program that reads the socket's cgroup, which this kernel refuses: {e}")
    });
    let any_errno = match profile.holds_back(Feature::SetRetval) {
        Some(why) => Err(why),
        None => match [PROG_CONNECT4_ERRNO, PROG_CONNECT6_ERRNO].map(|p| load_one(ebpf, pins, p)) {
            [Ok(()), Ok(())] => Ok(()),
            [e4, e6] => Err(e4.and(e6).err().map(|e| e.to_string()).unwrap_or_default()),
        },
    };
    let connect = match any_errno {
        Ok(()) => Ok(true),
        Err(why) => {
            tracing::debug!("connect-fail with any errno (bpf_set_retval, 5.18+) unavailable: {why}");
            match [PROG_CONNECT4, PROG_CONNECT6].map(|p| load_one(ebpf, pins, p)) {
                [Ok(()), Ok(())] => Ok(false),
                [e4, e6] => Err(format!(
                    "connect-fail needs cgroup/connect programs that read the calling task's cgroup (5.7+), \
                     which this kernel refuses: {}",
                    e4.and(e6).err().map(|e| e.to_string()).unwrap_or_default()
                )),
            }
        }
    };
    CgroupSupport { ingress, connect, profile }
}

/// Loads and pins one cgroup program; the verifier's log is in the error.
fn load_one(ebpf: &mut Ebpf, pins: &Pins, name: &'static str) -> Result<(), KernelError> {
    use aya::programs::Program;
    let missing = || KernelError::Program { what: format!("program {name}"), source: ProgramError::NotLoaded };
    let path = pins.program(name);
    let _ = std::fs::remove_file(&path);
    let pinned = match ebpf.program_mut(name).ok_or_else(missing)? {
        Program::CgroupSkb(p) => {
            p.load().map_err(|e| verifier_error(name, e))?;
            p.pin(&path)
        }
        Program::CgroupSockAddr(p) => {
            p.load().map_err(|e| verifier_error(name, e))?;
            p.pin(&path)
        }
        _ => return Err(missing()),
    };
    pinned.map_err(|e| KernelError::Pins(format!("pinning {}: {e}", path.display())))
}

/// Attaches the program for `kind` to the cgroup `dir` (its id `id`), beside any other
/// programs there, as a pinned link.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    pins: &Pins,
    support: &CgroupSupport,
    id: u64,
    kind: CgroupHook,
    dir: &std::path::Path,
) -> Result<CgroupLink, KernelError> {
    let what = |name: &str| format!("attaching {name} to cgroup {}", dir.display());
    let failed = |name: &str, e: ProgramError| KernelError::Unsupported(format!("{}: {}", what(name), causes(&e)));
    let cgroup = std::fs::File::open(dir)
        .map_err(|e| KernelError::Unsupported(format!("opening cgroup {}: {e}", dir.display())))?;
    // A cgroup bpf link always sits beside the cgroup's other programs (the kernel attaches
    // links as BPF_F_ALLOW_MULTI) and takes no flags: "single" is what asks for none.
    let multi = CgroupAttachMode::Single;
    let errno = matches!(support.connect, Ok(true));
    let link = match kind {
        CgroupHook::Ingress => {
            let p: &mut CgroupSkb = program(ebpf, PROG_CGROUP_INGRESS)?;
            let id = p
                .attach(cgroup.as_fd(), CgroupSkbAttachType::Ingress, multi)
                .map_err(|e| failed(PROG_CGROUP_INGRESS, e))?;
            FdLink::try_from(p.take_link(id).map_err(|e| failed(PROG_CGROUP_INGRESS, e))?)
        }
        CgroupHook::Connect4 | CgroupHook::Connect6 => {
            let (v4, v6) =
                if errno { (PROG_CONNECT4_ERRNO, PROG_CONNECT6_ERRNO) } else { (PROG_CONNECT4, PROG_CONNECT6) };
            let name = if kind == CgroupHook::Connect4 { v4 } else { v6 };
            let p: &mut CgroupSockAddr = program(ebpf, name)?;
            let id = p.attach(cgroup.as_fd(), multi).map_err(|e| failed(name, e))?;
            FdLink::try_from(p.take_link(id).map_err(|e| failed(name, e))?)
        }
    }
    .map_err(|_| {
        KernelError::Unsupported(
            "cgroup faults need bpf links (Linux 5.7+), so that nothing stays attached if the daemon dies".into(),
        )
    })?;
    let pin = pins.cgroup_link(id, kind);
    let link: FdLink = link.pin(&pin).map_err(|e| KernelError::Pins(format!("pinning {}: {e}", pin.display())))?.into();
    Ok(CgroupLink { dir: dir.to_owned(), link, pin })
}

/// An error with its causes, as `a: b: c`.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// Detaches: the link goes with its pin and this, its last fd.
pub(super) fn detach(link: CgroupLink) {
    if let Err(e) = std::fs::remove_file(&link.pin) {
        tracing::warn!("unpinning {}: {e}", link.pin.display());
    }
    drop(link.link);
}

/// A previous daemon's cgroup links, kept as they are: they run its programs, on the same
/// pinned maps (the ABI check guarantees their layout), until no fault needs them.
pub(super) fn adopt(pins: &Pins) -> BTreeMap<(u64, CgroupHook), CgroupLink> {
    let mut links = BTreeMap::new();
    for (id, kind, pin) in pins.cgroup_links() {
        match PinnedLink::from_pin(&pin) {
            Ok(p) => {
                tracing::info!(cgroup = id, %kind, "re-adopted pinned cgroup link");
                links.insert((id, kind), CgroupLink { dir: PathBuf::new(), link: FdLink::from(p), pin });
            }
            Err(e) => {
                tracing::warn!(cgroup = id, %kind, "dropping pinned cgroup link: {e}");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    links
}
