//! Network namespaces made with iproute2 (so they show in `ip netns list` and can be entered
//! by name), and a way to make sockets inside one.

use std::{fs::File, thread};

use nix::sched::{CloneFlags, setns};

use crate::run;

/// A named network namespace, deleted on drop (with the interfaces in it); or one made by
/// another (a container runtime's), named by its path ([`Netns::at`]), left alone.
pub struct Netns {
    pub name: String,
    /// The path of a namespace that is not ours.
    path: Option<std::path::PathBuf>,
}

impl Netns {
    pub fn new(name: String) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name, path: None };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace the file `path` names (`/proc/PID/ns/net`, a runtime's `cni-...`), to send
    /// traffic from and to: not deleted on drop. [`Self::ip`] works only for one in /run/netns.
    pub fn at(path: impl Into<std::path::PathBuf>) -> Self {
        let path = path.into();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self { name, path: Some(path) }
    }

    /// Its file.
    pub fn path(&self) -> std::path::PathBuf {
        self.path.clone().unwrap_or_else(|| format!("/run/netns/{}", self.name).into())
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there stay in this
    /// namespace wherever they are used later (`setns` is per thread, so a fresh thread is used
    /// and the caller's namespace never changes).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let path = self.path();
        let file = File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| anyhow::anyhow!("setns: {e}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    }
}

impl Netns {
    /// Turns TX checksum offload of `dev` (in this namespace) on or off, as `ethtool -K dev tx
    /// off` does (the legacy ETHTOOL_STXCSUM ioctl, so no ethtool binary is needed). Off, the
    /// stack completes every checksum before the packet leaves, as for a NIC without offload.
    pub fn set_tx_checksum(&self, dev: &str, on: bool) -> anyhow::Result<()> {
        let dev = dev.to_owned();
        self.enter(move || -> anyhow::Result<()> {
            // struct ethtool_value { __u32 cmd; __u32 data; }; ETHTOOL_STXCSUM is 0x17.
            let mut value: [u32; 2] = [0x17, u32::from(on)];
            // SAFETY: a zeroed ifreq is valid; the name fits (interface names are < 16 bytes).
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
                *d = s as libc::c_char;
            }
            req.ifr_ifru.ifru_data = value.as_mut_ptr().cast();
            // SAFETY: plain socket; the ioctl reads the ifreq and the value it points to.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: as above; fd is ours and closed below.
            let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL as _, &mut req) };
            let err = std::io::Error::last_os_error();
            // SAFETY: fd is open and ours.
            unsafe { libc::close(fd) };
            anyhow::ensure!(rc == 0, "SIOCETHTOOL (tx checksum) on {dev}: {err}");
            Ok(())
        })?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.path.is_some() {
            return;
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}
