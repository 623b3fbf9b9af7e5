//! Who is on the other end of the control socket, and what they may do. The kernel vouches for
//! the peer: SO_PEERCRED gives its uid, gid and pid, SO_PEERGROUPS (4.13+) its supplementary
//! groups, both as of connect(). Nothing the client sends is trusted for this.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{config::Readers, state::Actor};

#[derive(Clone, Debug)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
    pub comm: Option<String>,
}

impl Peer {
    /// The credentials of a connected Unix socket's peer.
    pub fn of(fd: BorrowedFd<'_>) -> std::io::Result<Self> {
        let cred = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)?;
        let mut groups = vec![cred.gid()];
        groups.extend(peer_groups(fd.as_raw_fd()));
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", cred.pid())).ok().map(|c| c.trim().to_owned());
        Ok(Self { uid: cred.uid(), pid: cred.pid(), groups, comm })
    }

    pub fn actor(&self) -> Actor {
        Actor { uid: Some(self.uid), pid: Some(self.pid), comm: self.comm.clone() }
    }
}

/// The access policy from the config.
#[derive(Clone, Debug)]
pub struct Access {
    /// The `admin_group` name and gid.
    pub admin_group: Option<(String, u32)>,
    pub readers: Readers,
}

impl Access {
    /// `Err(why)` when `peer` may not make this request.
    pub fn check(&self, peer: Option<&Peer>, mutating: bool) -> Result<(), String> {
        let Some(peer) = peer else {
            return Err("the peer's credentials could not be read (SO_PEERCRED)".into());
        };
        let admin = peer.uid == 0 || self.admin_group.as_ref().is_some_and(|(_, gid)| peer.groups.contains(gid));
        if admin || (!mutating && self.readers == Readers::Any) {
            return Ok(());
        }
        let allowed = match &self.admin_group {
            Some((name, _)) => format!("root and members of group '{name}'"),
            None => "root only (no admin_group configured)".into(),
        };
        let what = if mutating { "change faults" } else { "read the daemon's state (readers = \"admins\")" };
        Err(format!("permission denied: uid {} may not {what}; allowed: {allowed}", peer.uid))
    }
}

/// SO_PEERGROUPS: the peer's supplementary groups (empty where the kernel lacks it).
fn peer_groups(fd: i32) -> Vec<u32> {
    let mut groups = vec![0u32; 256];
    let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `groups` and sets `len` to the size used.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / size_of::<u32>());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer { uid, pid: 1, groups: groups.to_vec(), comm: None }
    }

    #[test]
    fn policy() {
        let access = Access { admin_group: Some(("chaos".into(), 900)), readers: Readers::Admins };
        assert!(access.check(Some(&peer(0, &[0])), true).is_ok());
        assert!(access.check(Some(&peer(1000, &[100, 900])), true).is_ok());
        let e = access.check(Some(&peer(1000, &[100])), true).unwrap_err();
        assert!(e.contains("uid 1000") && e.contains("'chaos'"), "{e}");
        assert!(access.check(Some(&peer(1000, &[100])), false).is_err());
        assert!(access.check(None, false).is_err());
        let open = Access { admin_group: None, readers: Readers::Any };
        assert!(open.check(Some(&peer(1000, &[100])), false).is_ok());
        assert!(open.check(Some(&peer(1000, &[100])), true).is_err());
    }
}
