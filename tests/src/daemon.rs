//! The real `chaos-daemon`, started inside a lab namespace, and the real `chaosctl`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{Netns, unique};

/// Where the binaries are: `CHAOS_BIN_DIR` (set by `cargo xtask`), else the workspace's
/// `target/debug`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CHAOS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo xtask test` (it builds the binaries first)", path.display());
    path
}

/// A running daemon; stopped with SIGTERM on drop (SIGKILL if it hangs), its files removed.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts the daemon in `ns` with its own socket, and waits until it answers.
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        Self::start_with(ns, "")
    }

    /// Same, with `config` as its TOML configuration file.
    pub fn start_with(ns: &Netns, config: &str) -> anyhow::Result<Self> {
        Self::start_at(ns, config, None)
    }

    /// Same, with the socket at `socket` (default: in the daemon's own temporary directory).
    pub fn start_at(ns: &Netns, config: &str, socket: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("chaos-test-"));
        std::fs::create_dir_all(&dir)?;
        let socket = socket.unwrap_or_else(|| dir.join("chaos.sock"));
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        std::fs::write(dir.join("config.toml"), config)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin("chaos-daemon"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut daemon = Self { child: Some(child), dir, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
            if let Some(status) = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("chaos-daemon exited with {status}:\n{}", daemon.log());
            }
            if Instant::now() > deadline {
                anyhow::bail!("chaos-daemon did not open its socket within 20 s:\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// The daemon's process id: `ip netns exec` execs the daemon in place of itself.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs `chaosctl --socket <ours> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("chaosctl")).arg("--socket").arg(&self.socket).args(args).output().expect("running chaosctl")
    }

    /// Runs chaosctl and fails the test, with its stderr, if it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "chaosctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `chaosctl list -o json`, parsed.
    pub fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["list", "-o", "json"])).expect("list is JSON")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow::anyhow!("already stopped"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("chaos-daemon ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("cleanup: {e}");
        }
        if std::thread::panicking() {
            eprintln!("daemon log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
