//! Where a fault applies. An interface of the daemon's network namespace is used as named. An
//! interface of another namespace (a container's, named by its netns path, one of its
//! processes, its container id or its pod) is reached through the host side of its veth, in the
//! daemon's namespace: what
//! leaves the container arrives there and what arrives left there, so the fault is turned
//! round (egress becomes ingress, and `both` keeps both with its addresses swapped), and
//! ifindexes stay those of one namespace, as the programs' keys need. Nothing is attached inside
//! the container's namespace.

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::{
    netlink::link,
    spec::{Direction, Fault, Match, NetnsTarget, SpecError},
};

/// A fault as the daemon's namespace sees it.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Its interface there, its matches turned round for another namespace's interface.
    pub fault: Fault,
    /// 0 for connect-fail (no interface).
    pub ifindex: u32,
    /// What the fault was named by, when another namespace or a cgroup: it ends when that goes.
    pub watch: Option<Watch>,
    pub cgroup: Option<Cgroup>,
}

/// A target cgroup, found on the cgroup2 mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub dir: PathBuf,
    /// Its cgroup v2 id, then those of the cgroups below it: a process there is in the
    /// target too (a container's processes often sit in a child cgroup).
    pub ids: Vec<u64>,
}

impl Cgroup {
    pub fn id(&self) -> u64 {
        self.ids[0]
    }

    /// The ids as they are now (cgroups come and go below a target), `None` if it is gone.
    pub fn now(&self) -> Option<Vec<u64>> {
        let mut ids = vec![cgroup_id(&self.dir).ok()?];
        below(&self.dir, &mut ids);
        Some(ids)
    }
}

/// A namespace file (`/run/netns/x`, `/proc/PID/ns/net`) and the namespace it named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub path: std::path::PathBuf,
    /// `(st_dev, st_ino)`: a namespace's identity.
    id: (u64, u64),
    /// Why the fault ends when the path no longer names it.
    why: &'static str,
}

impl Watch {
    /// Why the fault ends, when the path no longer names that namespace (the process exited,
    /// or its pid now belongs to another; the namespace was deleted).
    /// `now`: what the path names now ([`Self::now`]).
    pub fn gone(&self, now: Option<(u64, u64)>) -> Option<&'static str> {
        (now != Some(self.id)).then_some(self.why)
    }

    /// The identity of what the path names now, if anything.
    pub fn now(&self) -> Option<(u64, u64)> {
        std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()))
    }
}

/// Lookups made once per batch of faults: interface indexes in the daemon's namespace, each
/// name looked up once (a batch of 10,000 faults on one interface asks the kernel once, not
/// 10,000 times: a socket and an ioctl each), and the node's pods (one CRI listing).
#[derive(Debug, Default)]
pub struct Lookups(std::collections::HashMap<String, u32>, Option<PodList>);

/// The node's pods and the runtimes that answered, or why none did.
type PodList = Result<(Vec<chaos_cri::Pod>, Vec<String>), String>;

impl Lookups {
    /// Lookups starting from pods already listed (with their status) by `asked`.
    pub fn with_pods(pods: Vec<chaos_cri::Pod>, asked: String) -> Self {
        Self(Default::default(), Some(Ok((pods, vec![asked]))))
    }

    fn get(&mut self, name: &str) -> Result<u32, SpecError> {
        if let Some(&i) = self.0.get(name) {
            return Ok(i);
        }
        let i = nix::net::if_::if_nametoindex(name)
            .map_err(|_| SpecError::new("interface", format!("no such interface '{name}'")))?;
        self.0.insert(name.to_owned(), i);
        Ok(i)
    }

    /// The node's pods, and the runtimes that answered ([`crate::pods::list_from`]).
    fn pods(&mut self, sockets: &[PathBuf]) -> &PodList {
        self.1.get_or_insert_with(|| crate::pods::list_from(sockets))
    }
}

/// Where pods are found: the runtimes' CRI sockets, and (only when none answers) the
/// directories where they keep their containers' OCI specs.
#[derive(Clone, Debug, Default)]
pub struct Runtimes {
    pub cri_sockets: Vec<PathBuf>,
    pub state_dirs: Vec<PathBuf>,
}

/// `fault` as the daemon's namespace sees it: see [`Resolved`].
pub fn resolve(fault: Fault, runtimes: &Runtimes, lookups: &mut Lookups) -> Result<Resolved, SpecError> {
    if let Some(path) = &fault.cgroup {
        let cgroup = find_cgroup(path).map_err(|e| SpecError::new("cgroup", e))?;
        let meta = std::fs::metadata(&cgroup.dir)
            .map_err(|e| SpecError::new("cgroup", format!("{}: {e}", cgroup.dir.display())))?;
        let watch = Watch { path: cgroup.dir.clone(), id: (meta.dev(), meta.ino()), why: "its cgroup was removed" };
        let ifindex = match fault.interface.as_str() {
            "" => 0,
            name => lookups.get(name)?,
        };
        return Ok(Resolved { fault, ifindex, watch: Some(watch), cgroup: Some(cgroup) });
    }
    let Some(ns) = fault.netns.clone() else {
        let ifindex = lookups.get(&fault.interface)?;
        return Ok(Resolved { fault, ifindex, watch: None, cgroup: None });
    };
    let field = ns.field();
    let proc_net = |pid: u32| PathBuf::from(format!("/proc/{pid}/ns/net"));
    let (pid, netns, why) = match &ns {
        NetnsTarget::Path(path) => (None, path.clone(), "its network namespace is gone"),
        NetnsTarget::Pid(pid) => (Some(*pid as u32), proc_net(*pid as u32), "its process exited"),
        NetnsTarget::Container(id) => {
            let pid = container_pid(id).map_err(|e| SpecError::new(field, e))?;
            (Some(pid), proc_net(pid), "its container stopped")
        }
        NetnsTarget::Pod { namespace, name } => {
            let (pid, netns) = pod_sandbox(runtimes, lookups, namespace, name).map_err(|e| SpecError::new(field, e))?;
            (pid, netns, "its pod stopped")
        }
    };
    let target = File::open(&netns).map_err(|e| {
        let process = e.kind() == std::io::ErrorKind::NotFound && !matches!(ns, NetnsTarget::Path(_));
        let what = if process { "no such process".to_owned() } else { e.to_string() };
        SpecError::new(field, format!("{}: {what}", netns.display()))
    })?;
    // This thread's namespace, the daemon's (`thread-self`: the probe's thread has its own).
    let here = File::open("/proc/thread-self/ns/net")
        .map_err(|e| SpecError::new(field, format!("reading the daemon's network namespace: {e}")))?;
    let same = |a: &File, b: &File| matches!((a.metadata(), b.metadata()), (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino()));
    let meta = target.metadata().map_err(|e| SpecError::new(field, format!("{}: {e}", netns.display())))?;
    let watch = Watch { path: netns.clone(), id: (meta.dev(), meta.ino()), why };
    if same(&target, &here) {
        // The daemon's own namespace: the interface as named. A process there (of the host, or
        // a container on the host's network) shares it with every other: the fault is limited
        // to the process's cgroup, its service's or its container's (a pod's: its pod's).
        let pod = matches!(ns, NetnsTarget::Pod { .. });
        let cgroup = match pid {
            // A pod on the node's network: its cgroup, the parent of its sandbox's.
            Some(pid) if pod => Some(
                process_cgroup(pid)
                    .map(|c| c.parent().map(Path::to_owned).unwrap_or(c))
                    .map_err(|e| SpecError::new(field, e))?,
            ),
            Some(pid) => Some(process_cgroup(pid).map_err(|e| SpecError::new(field, e))?),
            None if pod => {
                return Err(SpecError::new(
                    field,
                    "is a pod on the node's network, and the runtime gave no process of its sandbox to find its cgroup by",
                ));
            }
            None => None,
        };
        if cgroup.is_some() && fault.matches.direction != Direction::Egress && !fault.action.only_drops() {
            return Err(SpecError::new(
                field,
                "is a process of the daemon's own network namespace, so the fault is limited to its cgroup, \
                 whose ingress can only be dropped (loss, partition): use direction egress",
            ));
        }
        return resolve(Fault { netns: None, cgroup, ..fault }, runtimes, lookups)
            .map(|r| Resolved { watch: Some(watch), ..r });
    }
    let interface = fault.interface.clone();
    let where_ = netns.display().to_string();
    // Without CAP_SYS_ADMIN (setns needs it) the namespace is looked at from outside, below.
    let outside = target.try_clone().map_err(|e| SpecError::new(field, format!("{where_}: {e}")))?;
    // setns is per thread: a thread of its own enters the namespace and reads the veth there.
    let peer = std::thread::spawn(move || -> Result<Option<u32>, String> {
        match nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET) {
            Err(nix::errno::Errno::EPERM) => return Ok(None),
            r => r.map_err(|e| format!("entering {where_}: {e}"))?,
        }
        let link = link::by_name(&interface)
            .map_err(|e| format!("reading {interface} in {where_}: {e}"))?
            .ok_or_else(|| format!("no interface '{interface}' in {where_}"))?;
        let (peer, nsid) =
            link.peer.ok_or_else(|| format!("{interface} in {where_} is not a veth: it has no peer on this host"))?;
        let host = link::nsid(here.as_fd()).map_err(|e| format!("naming the daemon's namespace from {where_}: {e}"))?;
        match nsid {
            Some(n) if n == host => Ok(Some(peer)),
            _ => Err(format!(
                "the peer of {interface} in {where_} is not in the daemon's network namespace (a veth to another \
                 namespace): the daemon can reach only containers wired to its own"
            )),
        }
    })
    .join()
    .map_err(|_| SpecError::new(field, "the thread reading its namespace panicked"))?
    .map_err(|e| SpecError::new(field, e))?;
    let peer = match peer {
        Some(peer) => peer,
        None => only_veth_into(&outside, &netns).map_err(|e| SpecError::new(field, e))?,
    };
    let host = link::by_index(peer)
        .map_err(|e| SpecError::new(field, format!("reading the host side of its veth: {e}")))?
        .ok_or_else(|| SpecError::new(field, "the host side of its veth is gone"))?;
    let matches = turned_round(fault.matches);
    Ok(Resolved {
        fault: Fault { interface: host.name, netns: None, matches, ..fault },
        ifindex: peer,
        watch: Some(watch),
        cgroup: None,
    })
}

/// The cgroup v2 path of a process, as `/proc/PID/cgroup` shows it; refused for the root
/// cgroup, which holds every process where cgroup v2 is not in use.
fn process_cgroup(pid: u32) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| format!("process {pid}: {e}"))?;
    match text.lines().find_map(|l| l.strip_prefix("0::")) {
        Some(path) if path != "/" => Ok(path.into()),
        _ => Err(format!(
            "process {pid} is in the daemon's network namespace and in the root cgroup v2 (cgroup v2 is not in \
             use here), so nothing tells its traffic from every other process's: name the interface instead"
        )),
    }
}

/// The host side of the one veth leading into the namespace `ns`, seen from the daemon's: how a
/// daemon without CAP_SYS_ADMIN (which setns needs) finds a container's veth. Its name inside
/// cannot be read from outside, so a namespace with several veths to this one is refused.
fn only_veth_into(ns: &File, path: &std::path::Path) -> Result<u32, String> {
    // The dump first: showing a veth's peer gives its namespace an id here (peernet2id_alloc),
    // which RTM_GETNSID only reads.
    let links = link::all().map_err(|e| format!("listing links: {e}"))?;
    let id = link::nsid(ns.as_fd()).map_err(|e| format!("naming {} from here: {e}", path.display()))?;
    let into: Vec<&link::Link> = links.iter().filter(|l| matches!(l.peer, Some((_, Some(n))) if n == id)).collect();
    match into.as_slice() {
        [one] => Ok(one.ifindex),
        [] => Err(format!("no veth of the daemon's network namespace leads into {}", path.display())),
        several => Err(format!(
            "{} veths lead into {} ({}); telling them apart by their name inside needs CAP_SYS_ADMIN",
            several.len(),
            path.display(),
            several.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Where a fault on the pod `namespace/name` goes: its sandbox's network namespace, which its
/// containers share and which lives as long as the pod does (a container restarting does not end
/// the fault; the sandbox stopping does), and the sandbox's process if known. The pod is asked of
/// the runtime through the CRI; only when no CRI socket answers is it looked for in the runtimes'
/// state files ([`sandbox_from_state`]), which give the sandbox's process alone.
fn pod_sandbox(
    runtimes: &Runtimes,
    lookups: &mut Lookups,
    namespace: &str,
    name: &str,
) -> Result<(Option<u32>, PathBuf), String> {
    let (pods, answered) = match lookups.pods(&runtimes.cri_sockets) {
        Ok(listed) => listed,
        Err(none) => {
            let pid = sandbox_from_state(&runtimes.state_dirs, namespace, name).map_err(|e| format!("{e}; {none}"))?;
            return Ok((Some(pid), format!("/proc/{pid}/ns/net").into()));
        }
    };
    let sandbox = running_sandbox(pods, namespace, name, &answered.join(", "))?;
    // The sandbox's process's namespace is watched rather than the runtime's path: stopping a
    // pod, the runtime ends that process before it tears the pod's network down (deleting its
    // veth) and removes the path, so the fault ends as "its pod stopped", not "its interface is
    // gone". The path serves when the runtime gave no process, or when the process's pid is not
    // one of the daemon's pid namespace (it names another namespace there). A daemon in a pod
    // sees the node's processes (hostPID), not its /run/netns.
    let by_pid = sandbox.pid.map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")));
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let netns = match (sandbox.netns.clone().filter(|p| p.exists()), by_pid) {
        (Some(path), Some(process)) if id(&path) != id(&process) => path,
        (_, Some(process)) => process,
        (Some(path), None) => path,
        (None, None) => {
            return Err(format!(
                "the runtime gave neither the network namespace nor the process of pod {namespace}/{name}'s sandbox {}",
                sandbox.id
            ));
        }
    };
    Ok((sandbox.pid, netns))
}

/// The pod `namespace/name`'s running sandbox among the node's: a pod whose sandbox was
/// recreated has old ones, not ready; the newest ready one. `asked`: the runtimes that answered.
fn running_sandbox<'a>(
    pods: &'a [chaos_cri::Pod],
    namespace: &str,
    name: &str,
    asked: &str,
) -> Result<&'a chaos_cri::Pod, String> {
    let mut sandboxes = pods.iter().filter(|p| p.namespace == namespace && p.name == name).peekable();
    if sandboxes.peek().is_none() {
        return Err(format!("no pod {namespace}/{name} on this node (asked {asked})"));
    }
    sandboxes
        .filter(|p| p.ready)
        .max_by_key(|p| p.created_ns)
        .ok_or_else(|| format!("pod {namespace}/{name} has no running sandbox on this node (it stopped)"))
}

/// The process of the pod `namespace/name`'s sandbox (its pause container), found through the
/// annotations of the OCI specs the runtimes keep per container: `<dir>/<id>/config.json`
/// (containerd's `io.kubernetes.cri.container-type` = `sandbox` and
/// `io.kubernetes.cri.sandbox-namespace` and `-name`) or `<dir>/<id>/userdata/config.json`
/// (CRI-O's `io.kubernetes.cri-o.ContainerType` and `io.kubernetes.pod.namespace` and `.name`).
/// The fallback for a daemon no CRI socket answers (the runtimes' state files are no API, but a
/// node whose socket is not mounted for the daemon still has them).
fn sandbox_from_state(dirs: &[PathBuf], namespace: &str, name: &str) -> Result<u32, String> {
    let mut ids = Vec::new();
    for entry in dirs.iter().filter_map(|d| std::fs::read_dir(d).ok()).flatten().flatten() {
        let spec = ["config.json", "userdata/config.json"]
            .iter()
            .find_map(|f| std::fs::read_to_string(entry.path().join(f)).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let Some(spec) = spec else { continue };
        let annotation = |keys: &[&str]| keys.iter().find_map(|k| spec["annotations"][*k].as_str());
        if annotation(&["io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"]) == Some("sandbox")
            && annotation(&["io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"]) == Some(namespace)
            && annotation(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]) == Some(name)
        {
            ids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if ids.is_empty() {
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(format!("no pod {namespace}/{name} on this node (looked in {})", dirs.join(", ")));
    }
    ids.iter()
        .find_map(|id| container_pid(id).ok())
        .ok_or_else(|| format!("pod {namespace}/{name} has no running sandbox on this node"))
}

/// The first process (the lowest pid: the container's init) of the container whose id starts
/// with `id`, found in `/proc/*/cgroup`: the last component of a process's cgroup path is its
/// container's id, bare (cgroupfs: `/kubepods/.../<id>`, `/docker/<id>`) or in a systemd scope
/// (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`).
fn container_pid(id: &str) -> Result<u32, String> {
    let mut found: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("reading /proc: {e}"))?;
    for pid in procs.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { continue };
        if let Some(full) = cgroups.lines().find_map(|l| container_of(l).filter(|c| c.starts_with(id))) {
            let lowest = found.entry(full.to_owned()).or_insert(pid);
            *lowest = (*lowest).min(pid);
        }
    }
    match found.len() {
        0 => Err(format!("no running container has an id starting with {id}")),
        1 => Ok(*found.values().next().expect("one")),
        _ => Err(format!(
            "{id} is the start of several containers' ids ({}): give more of it",
            found.keys().map(|k| &k[..k.len().min(16)]).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The container id a `/proc/PID/cgroup` line names, if any.
fn container_of(line: &str) -> Option<&str> {
    let last = line.rsplit('/').next()?;
    let last = last.strip_suffix(".scope").unwrap_or(last);
    let id =
        ["cri-containerd-", "crio-", "docker-", "libpod-"].iter().find_map(|p| last.strip_prefix(p)).unwrap_or(last);
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

/// A match written from inside a container, as the host side of its veth sees it.
pub fn turned_round(m: Match) -> Match {
    match m.direction {
        Direction::Egress => Match { direction: Direction::Ingress, ..m },
        Direction::Ingress => Match { direction: Direction::Egress, ..m },
        // `both` is "as written on egress, replies on ingress": from the host side, the
        // container's egress as written arrives on ingress, which `both` of the replies gives.
        Direction::Both => m.reply(),
    }
}

/// Where cgroup v2 is mounted, from `/proc/self/mountinfo`, and whether cgroup v1 hierarchies are
/// mounted too (a hybrid host, as Kylin and UOS often are: v2 at /sys/fs/cgroup/unified).
pub fn cgroup2(mountinfo: &str) -> Option<(std::path::PathBuf, bool)> {
    // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`
    let mounts: Vec<(&str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            Some((left.split(' ').nth(4)?, right.split(' ').next()?))
        })
        .collect();
    let v1 = mounts.iter().any(|(_, fs)| *fs == "cgroup");
    // The first one mounted (the host's); more may follow inside containers.
    mounts.iter().find(|(_, fs)| *fs == "cgroup2").map(|(at, _)| (at.replace("\\040", " ").into(), v1))
}

/// Where the daemon mounts cgroup2 on a host that has none mounted (cgroup v1 only).
const OWN_CGROUP2: &str = "/run/chaos-daemon-cgroup2";

/// The cgroup2 mount, mounting one at [`OWN_CGROUP2`] where there is none.
fn cgroup2_mount() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading mountinfo: {e}"))?;
    if let Some((at, _)) = cgroup2(&mountinfo) {
        return Ok(at);
    }
    std::fs::create_dir_all(OWN_CGROUP2).map_err(|e| format!("creating {OWN_CGROUP2}: {e}"))?;
    nix::mount::mount(Some("cgroup2"), OWN_CGROUP2, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| format!("no cgroup2 is mounted, and mounting one at {OWN_CGROUP2} failed: {e}"))?;
    tracing::info!("mounted cgroup2 at {OWN_CGROUP2}");
    Ok(OWN_CGROUP2.into())
}

/// Unmounts the cgroup2 the daemon mounted for itself, if it did, and removes its directory: on
/// a clean exit and in `cleanup`, so that nothing of the daemon stays on the host. Returns what
/// it removed. A directory whose mount is gone (made by a daemon that was killed, or that ran in
/// a mount namespace of its own) is removed too, if empty.
pub fn release_cgroup2() -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let ours = mountinfo.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(left, right)| right.starts_with("cgroup2 ") && left.split(' ').nth(4) == Some(OWN_CGROUP2))
    });
    if !ours {
        std::fs::symlink_metadata(OWN_CGROUP2).ok().filter(|m| m.is_dir())?;
        return match std::fs::remove_dir(OWN_CGROUP2) {
            Ok(()) => Some(format!("directory {OWN_CGROUP2}")),
            Err(e) => {
                tracing::warn!("removing {OWN_CGROUP2}: {e}");
                None
            }
        };
    }
    match nix::mount::umount2(OWN_CGROUP2, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => {
            let _ = std::fs::remove_dir(OWN_CGROUP2);
            tracing::info!("unmounted the cgroup2 it mounted at {OWN_CGROUP2}");
            Some(format!("cgroup2 mount at {OWN_CGROUP2}"))
        }
        Err(e) => {
            tracing::warn!("unmounting {OWN_CGROUP2}: {e}");
            None
        }
    }
}

/// The cgroup `path` names: under the cgroup2 mount as given, or from its root (as
/// `/proc/PID/cgroup` shows it), with its id and those below it.
fn find_cgroup(path: &Path) -> Result<Cgroup, String> {
    let mount = cgroup2_mount()?;
    let dir =
        if path.starts_with(&mount) { path.to_owned() } else { mount.join(path.strip_prefix("/").unwrap_or(path)) };
    let on_cgroup2 =
        nix::sys::statfs::statfs(&dir).map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    match on_cgroup2 {
        Ok(true) if dir.is_dir() => {}
        Ok(_) => {
            return Err(format!("{} is not a cgroup v2 directory (cgroup2 is at {})", dir.display(), mount.display()));
        }
        Err(e) => return Err(format!("no cgroup {} ({e}; cgroup2 is at {})", dir.display(), mount.display())),
    }
    let mut ids = vec![cgroup_id(&dir).map_err(|e| format!("reading the id of {}: {e}", dir.display()))?];
    below(&dir, &mut ids);
    Ok(Cgroup { dir, ids })
}

/// Adds the ids of every cgroup below `dir`.
fn below(dir: &Path, ids: &mut Vec<u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            if let Ok(id) = cgroup_id(&path) {
                ids.push(id);
                below(&path, ids);
            }
        }
    }
}

/// A cgroup's v2 id as BPF sees it: its file handle (the kernfs node id), which is the inode
/// number only since 5.5; before, the id also carries a generation in its high bits.
fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut handle = Handle { bytes: 8, kind: 0, id: 0 };
    let mut mount_id = 0;
    // SAFETY: a NUL-terminated path and a file_handle with room for the 8 bytes it says.
    let r =
        unsafe { libc::name_to_handle_at(libc::AT_FDCWD, path.as_ptr(), (&raw mut handle).cast(), &mut mount_id, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(handle.id)
}

/// What `chaosctl status` says of the targets a fault can name here (which CRI socket answers,
/// for pods, is added by the server: see `crate::pods::status`).
pub fn scoping() -> std::collections::BTreeMap<String, String> {
    let cgroup = match std::fs::read_to_string("/proc/self/mountinfo").ok().as_deref().and_then(cgroup2) {
        Some((at, true)) => format!("cgroup2 at {} (hybrid: cgroup v1 hierarchies too)", at.display()),
        Some((at, false)) => format!("cgroup2 at {}", at.display()),
        None => format!("no cgroup2 mounted (cgroup v1 only): mounted at {OWN_CGROUP2} for the first cgroup fault"),
    };
    [
        ("interface", "yes".to_owned()),
        ("netns, pid, container, pod", "yes: through the host side of a veth to this namespace".to_owned()),
        ("cgroup", cgroup),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_read_from_cgroup_paths() {
        let id = "4f1c0a7e2b9d8c6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a098765";
        for line in [
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("0::/system.slice/docker-{id}.scope"),
            format!("12:pids:/kubepods/burstable/pod0c8e/{id}"),
            format!("0::/machine.slice/libpod-{id}.scope"),
            format!("0::/kubepods.slice/crio-{id}.scope"),
        ] {
            assert_eq!(container_of(&line), Some(id), "{line}");
        }
        for line in [
            format!("0::/kubepods.slice/crio-conmon-{id}.scope"),
            "0::/user.slice/user-0.slice/session-1.scope".to_owned(),
            "0::/".to_owned(),
            format!("0::/docker/{}", &id[..12]),
        ] {
            assert_eq!(container_of(&line), None, "{line}");
        }
    }

    #[test]
    fn a_pod_is_its_newest_ready_sandbox() {
        let sandbox = |id: &str, name: &str, ready: bool, created_ns: i64| chaos_cri::Pod {
            id: id.into(),
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{id}"),
            labels: Default::default(),
            annotations: Default::default(),
            ready,
            created_ns,
            ips: vec![],
            netns: None,
            pid: None,
        };
        let pods = [
            sandbox("old", "web-0", false, 1),
            sandbox("new", "web-0", true, 3),
            sandbox("older-ready", "web-0", true, 2),
            sandbox("db", "db-0", true, 4),
            sandbox("gone", "cache-0", false, 5),
        ];
        assert_eq!(running_sandbox(&pods, "shop", "web-0", "x").map(|p| p.id.as_str()), Ok("new"));
        assert_eq!(
            running_sandbox(&pods, "other", "web-0", "containerd 2.1 at /c.sock").unwrap_err(),
            "no pod other/web-0 on this node (asked containerd 2.1 at /c.sock)"
        );
        assert_eq!(
            running_sandbox(&pods, "shop", "cache-0", "x").unwrap_err(),
            "pod shop/cache-0 has no running sandbox on this node (it stopped)"
        );
    }

    #[test]
    fn cgroup2_mounts_are_found() {
        let hybrid = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(cgroup2(hybrid), Some(("/sys/fs/cgroup/unified".into(), true)));
        let unified =
            "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2(unified), Some(("/sys/fs/cgroup".into(), false)));
        let v1 = "27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2(v1), None);
        assert_eq!(cgroup2(""), None);
    }

    #[test]
    fn matches_are_turned_round_for_the_host_side() {
        use crate::spec::{FaultSpec, Protocol};
        let m = |direction: &str| {
            let spec = FaultSpec {
                interface: Some("eth0".into()),
                action: Some("partition".into()),
                direction: Some(direction.into()),
                protocol: Some("udp".into()),
                src: Some("10.0.0.1".into()),
                dport: Some(crate::spec::PortSpec::Number(53)),
                ..Default::default()
            };
            spec.validate().unwrap().matches
        };
        // The container's egress arrives on the host side: ingress, as written.
        assert_eq!(turned_round(m("egress")), Match { direction: Direction::Ingress, ..m("egress") });
        assert_eq!(turned_round(m("ingress")), Match { direction: Direction::Egress, ..m("ingress") });
        // Both: the host's egress sees the replies, its ingress the container's packets.
        let both = turned_round(m("both"));
        assert_eq!((both.direction, both.dst, both.sport), (Direction::Both, m("both").src, m("both").dport));
        assert_eq!(both.protocol, Protocol::Udp);
    }
}
