//! The daemon's bpffs directory. Maps, programs and TCX links pinned there outlive the daemon
//! (a pin is a reference, like an open fd), so faults keep running after a crash until their
//! in-kernel deadlines, a restarted daemon re-adopts them, and `chaos-daemon cleanup` finds
//! everything without trusting any other record.
//!
//! Names are flat: `map_<NAME>`, `prog_<name>`, `link_<ifindex>_<hook>` (TCX links only:
//! netlink cls_bpf filters cannot be pinned; they stay on their qdisc when the daemon dies and
//! are recorded in the state file instead), `link_cg<cgroup id>_<kind>` (cgroup links).

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData};
use chaos_common::{ABI_VERSION, ActiveMap, map_names};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::{CgroupHook, KernelError, TcHook};

/// Where bpffs is mounted on every distribution chaos-daemon supports.
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(format!("map_{name}"))
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(format!("prog_{name}"))
    }

    pub fn link(&self, ifindex: u32, hook: TcHook) -> PathBuf {
        self.dir.join(format!("link_{ifindex}_{}", hook as u8))
    }

    /// A cgroup link: the cgroup's id and what it runs.
    pub fn cgroup_link(&self, cgroup: u64, kind: CgroupHook) -> PathBuf {
        self.dir.join(format!("link_cg{cgroup}_{}", kind as u8))
    }

    /// Makes the directory, mounting bpffs at /sys/fs/bpf first when nothing is mounted there
    /// (as bpftool does: minimal hosts and some containers lack the mount), but only where that
    /// mount outlives the daemon (see [`Self::check`]).
    pub fn prepare(&self) -> Result<(), KernelError> {
        let err = |what: String, e: io::Error| KernelError::Pins(format!("{what}: {e}"));
        if !self.check()? {
            nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
                .map_err(|e| err(format!("mounting bpffs at {BPFFS}"), e.into()))?;
            tracing::info!("mounted bpffs at {BPFFS}");
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| err(format!("creating {}", self.dir.display()), e))
    }

    /// Whether pins here outlive this process: `Ok(true)` when the directory is on a bpffs the
    /// host sees too, `Ok(false)` when nothing is mounted at /sys/fs/bpf (nothing can be pinned
    /// there yet, and a bpffs mounted there now is the host's), else why not. A process in a
    /// mount namespace of its own (`ip netns exec` makes one and mounts a fresh /sys) sees a
    /// bpffs of that namespace only, which dies with it, and with it every pin: the daemon's
    /// faults would end when it does, and `cleanup` would look where nothing is.
    pub fn check(&self) -> Result<bool, KernelError> {
        let dir = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let mut existing = dir.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        let host = host_root();
        let as_host = |path: &Path| host.as_ref().map(|root| root.join(path.strip_prefix("/").unwrap_or(path)));
        if is_bpffs(existing) {
            if let Some(theirs) = as_host(existing) {
                let dev = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok();
                if dev(existing) != dev(&theirs) {
                    return Err(KernelError::Pins(format!(
                        "{} is on a bpffs of this mount namespace only: pins there would die with it. {HOW}",
                        self.dir.display()
                    )));
                }
            }
            return Ok(true);
        }
        if existing != Path::new(BPFFS) {
            return Err(KernelError::Pins(format!(
                "{} is not on a bpf filesystem (mount one: mount -t bpf bpf {BPFFS}), \
                 so pinned faults could not survive a restart",
                self.dir.display()
            )));
        }
        match as_host(existing) {
            None => Ok(false),
            Some(theirs) if is_bpffs(&theirs) => Err(KernelError::Pins(format!(
                "{BPFFS} here is not the host's bpffs: this process has a mount namespace of its own with a \
                 /sys of its own (as `ip netns exec` makes), where pins in {} would die with it and the \
                 host's are out of sight. {HOW}",
                self.dir.display()
            ))),
            Some(_) => Err(KernelError::Pins(format!(
                "nothing is mounted at {BPFFS} and this process has a mount namespace of its own: a bpffs \
                 mounted here would die with it, and every pin in {} with it. {HOW}",
                self.dir.display()
            ))),
        }
    }

    /// Whether maps pinned here (if any) have this build's ABI: maps of another layout must not
    /// be reused by the programs of this build.
    pub fn compatible(&self) -> bool {
        let path = self.map(map_names::ACTIVE);
        if !path.exists() {
            return true;
        }
        let abi = MapData::from_pin(&path)
            .ok()
            .and_then(|m| Array::<MapData, u32>::try_from(aya::maps::Map::Array(m)).ok())
            .and_then(|a| a.get(&ActiveMap::ABI, 0).ok());
        abi == Some(ABI_VERSION)
    }

    /// Whether anything is pinned here.
    pub fn any(&self) -> bool {
        std::fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some())
    }

    /// Pinned TCX links: `(ifindex, hook, path)`.
    pub fn links(&self) -> Vec<(u32, TcHook, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (ifindex, hook) = name.strip_prefix("link_")?.split_once('_')?;
                if ifindex.starts_with("cg") {
                    return None;
                }
                Some((ifindex.parse().ok()?, TcHook::from_number(hook.parse().ok()?)?, e.path()))
            })
            .collect()
    }

    /// Pinned cgroup links: `(cgroup id, kind, path)`.
    pub fn cgroup_links(&self) -> Vec<(u64, CgroupHook, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (id, kind) = name.strip_prefix("link_cg")?.split_once('_')?;
                Some((id.parse().ok()?, CgroupHook::from_number(kind.parse().ok()?)?, e.path()))
            })
            .collect()
    }

    /// Unpins everything (TCX links detach when their pin and last fd go) and removes the
    /// directory. Returns what was removed.
    pub fn remove_all(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(e),
        };
        let mut paths: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        // Links first, so programs are never pinned-but-detached halfway through.
        paths.sort_by_key(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link_")));
        for path in paths {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
        std::fs::remove_dir(&self.dir)?;
        Ok(removed)
    }
}

/// How to run the daemon in a network namespace with pins that outlive it.
const HOW: &str = "Run chaos-daemon in the host's mount namespace (to enter a network namespace: \
                   `nsenter --net=/run/netns/NAME chaos-daemon`, not `ip netns exec`), or with the host's bpffs \
                   mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf on the host)";

/// The host's root (`/proc/PID/root`) when this process is in another mount namespace than the
/// host's: PID 1's, or, where PID 1 cannot be inspected (a sandbox's init), that of the process
/// that started this one. `None` in the same namespace, or when neither can be inspected.
fn host_root() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| (m.dev(), m.ino()));
    let ours = ns("self")?;
    let parent = std::os::unix::process::parent_id();
    let pids = [Some(1), (parent > 1).then_some(parent)];
    let (pid, theirs) = pids.into_iter().flatten().find_map(|pid| Some((pid, ns(&pid.to_string())?)))?;
    (theirs != ours).then(|| PathBuf::from(format!("/proc/{pid}/root")))
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}
