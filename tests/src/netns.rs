//! Network namespaces made with iproute2 (so they show in `ip netns list` and can be entered
//! by name), and a way to make sockets inside one.

use std::{fs::File, thread};

use nix::sched::{CloneFlags, setns};

use crate::run;

/// A named network namespace, deleted on drop (with the interfaces in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
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
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| anyhow::anyhow!("setns: {e}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}
