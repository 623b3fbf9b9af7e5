//! Where a fault applies. An interface of the daemon's network namespace is used as named. An
//! interface of another namespace (a container's, named by its netns path or one of its
//! processes) is reached through the host side of its veth, in the daemon's namespace: what
//! leaves the container arrives there and what arrives left there, so the fault is turned
//! round (egress becomes ingress, and `both` keeps both with its addresses swapped), and
//! ifindexes stay those of one namespace, as the programs' keys need. Nothing is attached inside
//! the container's namespace.

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
};

use crate::{
    netlink::link,
    spec::{Direction, Fault, Match, SpecError},
};

/// A fault as the daemon's namespace sees it.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Its interface there, its matches turned round for another namespace's interface.
    pub fault: Fault,
    pub ifindex: u32,
    /// What the fault was named by, when another namespace: it ends when that goes.
    pub watch: Option<Watch>,
}

/// A namespace file (`/run/netns/x`, `/proc/PID/ns/net`) and the namespace it named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub path: std::path::PathBuf,
    pub by_pid: bool,
    /// `(st_dev, st_ino)`: a namespace's identity.
    id: (u64, u64),
}

impl Watch {
    /// Why the fault ends, when the path no longer names that namespace (the process exited,
    /// or its pid now belongs to another; the namespace was deleted).
    pub fn gone(&self) -> Option<&'static str> {
        let now = std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        match (now == Some(self.id), self.by_pid) {
            (true, _) => None,
            (false, true) => Some("its process exited"),
            (false, false) => Some("its network namespace is gone"),
        }
    }
}

/// `fault` as the daemon's namespace sees it: see [`Resolved`].
pub fn resolve(fault: Fault) -> Result<Resolved, SpecError> {
    let Some(ns) = fault.netns.clone() else {
        let ifindex = nix::net::if_::if_nametoindex(fault.interface.as_str())
            .map_err(|_| SpecError::new("interface", format!("no such interface '{}'", fault.interface)))?;
        return Ok(Resolved { fault, ifindex, watch: None });
    };
    let (field, netns) = if ns.by_pid { ("pid", ns.path) } else { ("netns", ns.path) };
    let target = File::open(&netns).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound && ns.by_pid { "no such process" } else { "" };
        SpecError::new(
            field,
            format!("{}: {}", netns.display(), if what.is_empty() { e.to_string() } else { what.into() }),
        )
    })?;
    // This thread's namespace, the daemon's (`thread-self`: the probe's thread has its own).
    let here = File::open("/proc/thread-self/ns/net")
        .map_err(|e| SpecError::new(field, format!("reading the daemon's network namespace: {e}")))?;
    let same = |a: &File, b: &File| matches!((a.metadata(), b.metadata()), (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino()));
    let meta = target.metadata().map_err(|e| SpecError::new(field, format!("{}: {e}", netns.display())))?;
    let watch = Watch { path: netns.clone(), by_pid: ns.by_pid, id: (meta.dev(), meta.ino()) };
    if same(&target, &here) {
        // The daemon's own namespace (a process of the host): the interface as named.
        return resolve(Fault { netns: None, ..fault }).map(|r| Resolved { watch: Some(watch), ..r });
    }
    let interface = fault.interface.clone();
    let where_ = netns.display().to_string();
    // setns is per thread: a thread of its own enters the namespace and reads the veth there.
    let peer = std::thread::spawn(move || -> Result<u32, String> {
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering {where_}: {e}"))?;
        let link = link::by_name(&interface)
            .map_err(|e| format!("reading {interface} in {where_}: {e}"))?
            .ok_or_else(|| format!("no interface '{interface}' in {where_}"))?;
        let (peer, nsid) =
            link.peer.ok_or_else(|| format!("{interface} in {where_} is not a veth: it has no peer on this host"))?;
        let host = link::nsid(here.as_fd()).map_err(|e| format!("naming the daemon's namespace from {where_}: {e}"))?;
        match nsid {
            Some(n) if n == host => Ok(peer),
            _ => Err(format!(
                "the peer of {interface} in {where_} is not in the daemon's network namespace (a veth to another \
                 namespace): the daemon can reach only containers wired to its own"
            )),
        }
    })
    .join()
    .map_err(|_| SpecError::new(field, "the thread reading its namespace panicked"))?
    .map_err(|e| SpecError::new(field, e))?;
    let host = link::by_index(peer)
        .map_err(|e| SpecError::new(field, format!("reading the host side of its veth: {e}")))?
        .ok_or_else(|| SpecError::new(field, "the host side of its veth is gone"))?;
    let matches = turned_round(fault.matches);
    Ok(Resolved {
        fault: Fault { interface: host.name, netns: None, matches, ..fault },
        ifindex: peer,
        watch: Some(watch),
    })
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
