//! Who is on the other end of the control socket, and what they may do. The kernel vouches for
//! the peer: SO_PEERCRED gives its uid, gid and pid, SO_PEERGROUPS (4.13+) its supplementary
//! groups, both as of connect(). Nothing the client sends is trusted for this.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, BorrowedFd},
    sync::Mutex,
    time::Instant,
};

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
        // The peer names itself (prctl, or the name of what it ran): escaped, as it is logged.
        let comm = std::fs::read(format!("/proc/{}/comm", cred.pid()))
            .ok()
            .map(|c| crate::text::escape_bytes(c.strip_suffix(b"\n").unwrap_or(&c), crate::state::MAX_COMM));
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

/// Refusals a peer uid may have logged and recorded in the audit trail at once, and then per
/// second: a token bucket. Beyond it a refusal is only counted, and the count recorded with the
/// uid's next refusal that is, so that a peer refused again and again floods neither the log
/// nor the history (which also keeps refusals within a budget of their own).
pub const REFUSALS_BURST: f64 = 10.0;
pub const REFUSALS_PER_SECOND: f64 = 1.0;
/// Buckets kept; beyond, idle ones are forgotten and, if none is, the rest share one.
const MAX_BUCKETS: usize = 4096;
/// The bucket of peers without credentials, and of those beyond `MAX_BUCKETS` ((uid_t)-1 is
/// no one's uid).
const SHARED_BUCKET: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct RefusalLimit {
    buckets: Mutex<HashMap<u32, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Refusals counted but not recorded since the last one recorded.
    unrecorded: u64,
}

impl Bucket {
    fn refill(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * REFUSALS_PER_SECOND).min(REFUSALS_BURST);
        self.at = now;
        self.tokens
    }
}

impl RefusalLimit {
    /// Whether to log and record a refusal of `uid` now: `Some(n)`, with the `n` refusals
    /// counted but not recorded before it, or `None` (counted).
    pub fn admit(&self, uid: Option<u32>) -> Option<u64> {
        self.admit_at(uid, Instant::now())
    }

    fn admit_at(&self, uid: Option<u32>, now: Instant) -> Option<u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = uid.unwrap_or(SHARED_BUCKET);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, b| b.refill(now) < REFUSALS_BURST || b.unrecorded > 0);
            if buckets.len() >= MAX_BUCKETS {
                key = SHARED_BUCKET;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: REFUSALS_BURST, at: now, unrecorded: 0 });
        if bucket.refill(now) >= 1.0 {
            bucket.tokens -= 1.0;
            Some(std::mem::take(&mut bucket.unrecorded))
        } else {
            bucket.unrecorded += 1;
            None
        }
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

    #[test]
    fn refusals_are_recorded_at_a_limited_rate_per_uid() {
        let limit = RefusalLimit::default();
        let t0 = Instant::now();
        let burst = REFUSALS_BURST as usize;
        for _ in 0..burst {
            assert_eq!(limit.admit_at(Some(1000), t0), Some(0));
        }
        for _ in 0..500 {
            assert_eq!(limit.admit_at(Some(1000), t0), None);
        }
        // Another uid has a bucket of its own.
        assert_eq!(limit.admit_at(Some(1001), t0), Some(0));
        // A second later, one more is recorded, with the count of those that were not.
        let later = t0 + std::time::Duration::from_secs_f64(1.0 / REFUSALS_PER_SECOND);
        assert_eq!(limit.admit_at(Some(1000), later), Some(500));
        assert_eq!(limit.admit_at(Some(1000), later), None);
        // Buckets are bounded: idle ones are forgotten, busy ones beyond the bound share one.
        for uid in 0..2 * MAX_BUCKETS as u32 {
            limit.admit_at(Some(10_000 + uid), later);
        }
        assert!(limit.buckets.lock().unwrap().len() <= MAX_BUCKETS + 1);
        let much_later = later + std::time::Duration::from_secs(3600);
        assert_eq!(limit.admit_at(Some(1), much_later), Some(0));
        assert!(limit.buckets.lock().unwrap().len() <= MAX_BUCKETS + 1);
    }
}
