//! Cgroup v2 directories made for a test, and sockets and `connect()` calls of processes in
//! them. A socket belongs to the cgroup of the process that made it (the kernel records it at
//! creation), so a child process placed in the cgroup makes the socket and hands it back; a
//! `connect()` is judged by the caller's cgroup, so it runs in such a child.

use std::{
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    sys::{
        socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, fork},
};

use crate::{Netns, unique};

/// A cgroup made under the host's cgroup2 mount, removed on drop.
pub struct Cgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// Its path from the cgroup2 root, as `/proc/PID/cgroup` shows it and `--cgroup` takes it.
    pub path: String,
}

/// Where cgroup2 is mounted here (unified, or hybrid next to v1).
pub fn mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right.starts_with("cgroup2 ").then(|| left.split(' ').nth(4).expect("a mount point").into())
        })
        .expect("a cgroup2 mount")
}

impl Cgroup {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = unique(prefix);
        let dir = mount().join(&name);
        std::fs::create_dir(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        Ok(Self { dir, path: format!("/{name}") })
    }

    /// A cgroup below this one.
    pub fn child(&self, name: &str) -> anyhow::Result<Self> {
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        Ok(Self { dir, path: format!("{}/{name}", self.path) })
    }

    /// Runs `f` in a child process that is in this cgroup and in `ns`, and returns what it
    /// exits with. `f` runs after a fork of a threaded process: it must do little more than
    /// system calls.
    pub fn run(&self, ns: &Netns, f: impl FnOnce() -> i32) -> anyhow::Result<i32> {
        let procs = std::ffi::CString::new(self.dir.join("cgroup.procs").into_os_string().into_encoded_bytes())?;
        let netns = File::open(format!("/run/netns/{}", ns.name))?;
        // SAFETY: the child only makes system calls (and `f`, held to the same) and exits
        // with _exit, never returning into the test harness.
        match unsafe { fork() }? {
            ForkResult::Child => {
                // SAFETY: plain system calls on valid arguments; "0" moves the writer itself.
                let code = unsafe {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                        libc::_exit(120);
                    }
                    libc::close(fd);
                    if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        libc::_exit(121);
                    }
                    f()
                };
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None)? {
                WaitStatus::Exited(_, code) => Ok(code),
                other => anyhow::bail!("child in {}: {other:?}", self.path),
            },
        }
    }

    /// A socket (`domain`, `ty`) made by a process of this cgroup, in `ns`.
    pub fn socket(&self, ns: &Netns, domain: i32, ty: i32) -> anyhow::Result<OwnedFd> {
        let (mine, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            None,
            nix::sys::socket::SockFlag::empty(),
        )?;
        let code = self.run(ns, || {
            // SAFETY: socket(2); the fd is sent below and the process exits.
            let fd = unsafe { libc::socket(domain, ty, 0) };
            if fd < 0 {
                return 122;
            }
            let fds = [fd];
            let sent = sendmsg::<()>(
                theirs.as_raw_fd(),
                &[std::io::IoSlice::new(b"s")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            );
            if sent.is_ok() { 0 } else { 123 }
        })?;
        anyhow::ensure!(code == 0, "making a socket in {}: child exited {code}", self.path);
        let mut buf = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(mine.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())?;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg
                && let Some(fd) = fds.first()
            {
                // SAFETY: a descriptor just received, owned by nobody else.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
        anyhow::bail!("no socket came back from {}", self.path)
    }

    /// The errno of a TCP `connect()` to `dst` by a process of this cgroup in `ns`, or 0 when
    /// it connected (within a second).
    pub fn connect(&self, ns: &Netns, dst: std::net::SocketAddr) -> anyhow::Result<i32> {
        let addr = socket2::SockAddr::from(dst);
        self.run(ns, move || {
            let domain = if dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            // SAFETY: socket, setsockopt and connect on valid arguments; errno is this thread's.
            unsafe {
                let fd = libc::socket(domain, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    return 124;
                }
                let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
                let size = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&raw const timeout).cast(), size);
                if libc::connect(fd, addr.as_ptr().cast(), addr.len()) == 0 { 0 } else { *libc::__errno_location() }
            }
        })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

/// Removes a cgroup directory (and any left below it), waiting briefly for exited processes
/// to leave it.
pub fn remove(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
    }
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(20)),
            _ => return,
        }
    }
}

/// A process (`sleep`) in a network namespace and, if given, a cgroup, standing for a
/// container's; killed on drop. It is there when `new` returns: spawn returns after the exec.
pub struct Resident(std::process::Child);

impl Resident {
    pub fn new(ns: &Netns, cgroup: Option<&Cgroup>) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let netns = File::open(format!("/run/netns/{}", ns.name))?;
        let procs = cgroup.map(|c| File::options().write(true).open(c.dir.join("cgroup.procs"))).transpose()?;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600");
        // SAFETY: setns and a write to cgroup.procs ("0": the writer itself) are system calls on
        // files opened before the fork; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                if let Some(mut procs) = procs.as_ref() {
                    std::io::Write::write_all(&mut procs, b"0")?;
                }
                Ok(())
            });
        }
        Ok(Self(cmd.spawn()?))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
