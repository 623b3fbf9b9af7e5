//! The real `chaos-daemon`, started inside a lab namespace, and the real `chaosctl`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt as _;

use chaos_api::api::{Abilities, AuditAction, Event, FaultView, Faults, History, Status};
use serde::de::DeserializeOwned;

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

/// A running daemon; stopped with SIGTERM on drop (SIGKILL if it hangs), then
/// `chaos-daemon cleanup` runs so that nothing it pinned or attached survives the test, and its
/// files are removed.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Its bpffs directory (unique per daemon, on the host's bpffs).
    pub bpffs: PathBuf,
    netns: PathBuf,
    /// The only capabilities the daemon (and its cleanup) run with, when set.
    capabilities: Option<Vec<u32>>,
    /// Mount points the daemon does not see (in a mount namespace of its own), as on a host
    /// without them.
    hidden: Vec<std::ffi::CString>,
    /// Environment variables of the next start (`CHAOS_CRASH_AT`).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts the daemon in `ns` with its own socket, and waits until it answers.
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        Self::start_with(ns, "")
    }

    /// The daemon in `lab.a` with the delay backend `CHAOS_TEST_BACKEND` names (`edt` or
    /// `netem`; `cargo xtask vm-test` sets it on a kernel that has both), checked in its status;
    /// `None`, with a note, when the variable is not set (the host kernel has no backend).
    pub fn with_test_backend(lab: &crate::Lab) -> Option<Self> {
        let Ok(backend) = std::env::var("CHAOS_TEST_BACKEND") else {
            eprintln!(
                "skipped: set CHAOS_TEST_BACKEND=edt|netem on a kernel with fq/netem (`cargo xtask vm-test` does)"
            );
            return None;
        };
        let daemon = Self::start_with(&lab.a, &format!("delay_backend = \"{backend}\"")).unwrap();
        let status: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
        assert_eq!(status["delay_backend"], backend.as_str(), "{status}");
        Some(daemon)
    }

    /// Same, with `config` as its TOML configuration file.
    pub fn start_with(ns: &Netns, config: &str) -> anyhow::Result<Self> {
        Self::start_at(ns, config, None)
    }

    /// Same, with the socket at `socket` (default: in the daemon's own temporary directory).
    /// The state directory is in that temporary directory too.
    pub fn start_at(ns: &Netns, config: &str, socket: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_capped(ns, config, socket, None)
    }

    /// Same, keeping only `capabilities` (linux/capability.h numbers) in the daemon's bounding
    /// set, as a container granted just those has them: root's capabilities after exec are the
    /// bounding set.
    pub fn start_capped(
        ns: &Netns,
        config: &str,
        socket: Option<PathBuf>,
        capabilities: Option<Vec<u32>>,
    ) -> anyhow::Result<Self> {
        Self::start_in(ns, config, socket, capabilities, false)
    }

    fn start_in(
        ns: &Netns,
        config: &str,
        socket: Option<PathBuf>,
        capabilities: Option<Vec<u32>>,
        hide_cgroup2: bool,
    ) -> anyhow::Result<Self> {
        let mut daemon = Self::unstarted(ns, config, socket)?;
        daemon.capabilities = capabilities;
        if hide_cgroup2 {
            daemon.hidden = std::fs::read_to_string("/proc/self/mountinfo")?
                .lines()
                .filter_map(|l| {
                    let (left, right) = l.split_once(" - ")?;
                    right.starts_with("cgroup2 ").then(|| left.split(' ').nth(4).map(str::to_owned))?
                })
                .map(std::ffi::CString::new)
                .collect::<Result<_, _>>()?;
        }
        daemon.restart()?;
        Ok(daemon)
    }

    /// A daemon in `ns` with `config`, its files made (as [`Self::start_at`]) but not started:
    /// for a start that must fail ([`Self::serve_once`]). Dropped like a started one.
    pub fn unstarted(ns: &Netns, config: &str, socket: Option<PathBuf>) -> anyhow::Result<Self> {
        // The host's bpffs, as a daemon would mount it: one in a mount namespace of its own
        // (start_without_cgroup2) then sees it too, and pins there outlive it.
        if !nix::sys::statfs::statfs("/sys/fs/bpf").is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        {
            nix::mount::mount(Some("bpf"), "/sys/fs/bpf", Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)?;
        }
        let name = unique("chaos-test-");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let socket = socket.unwrap_or_else(|| dir.join("chaos.sock"));
        let bpffs = Path::new("/sys/fs/bpf").join(&name);
        // CHAOS_TEST_PROFILE holds every daemon of a run to an older kernel's abilities (the VM
        // runs the suites on 5.10 as 4.19 this way); a test that names a profile keeps its own.
        let profile = match std::env::var("CHAOS_TEST_PROFILE") {
            Ok(p) if !p.is_empty() && !config.contains("kernel_profile") => format!("kernel_profile = \"{p}\"\n"),
            _ => String::new(),
        };
        let config = format!(
            "state_dir = \"{}\"\nbpffs_dir = \"{}\"\n{profile}{config}",
            dir.join("state").display(),
            bpffs.display()
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let netns = PathBuf::from(format!("/run/netns/{}", ns.name));
        Ok(Self { child: None, dir, socket, bpffs, netns, capabilities: None, hidden: Vec::new(), env: Vec::new() })
    }

    /// Runs the daemon (as [`Self::restart`] does) to its end and returns its output: for a
    /// start that must fail. One still running after 20 s is stopped with SIGTERM.
    pub fn serve_once(&self) -> Output {
        run_to_end(self.command(&["--socket", &self.socket.to_string_lossy()]))
    }

    /// The daemon in `ns` on what looks like a cgroup v1 host: no cgroup2 mounted anywhere it
    /// can see (its own mount namespace, without the host's cgroup2 mounts).
    pub fn start_without_cgroup2(ns: &Netns) -> anyhow::Result<Self> {
        Self::start_in(ns, "", None, None, true)
    }

    /// `chaos-daemon --config <its config> args...`, run inside its network namespace. The
    /// namespace is entered with setns(2) rather than `ip netns exec`, which would also remount
    /// /sys and hide the host's bpffs, where the daemon pins its objects.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("chaos-daemon"));
        cmd.arg("--config").arg(self.dir.join("config.toml")).args(args);
        let netns = std::fs::File::open(&self.netns).expect("the lab namespace exists");
        let keep = self.capabilities.clone();
        let hidden = self.hidden.clone();
        // SAFETY: setns, unshare, mount, umount2 and prctl are async-signal-safe system calls;
        // the closure makes only those (`keep` and `hidden` were allocated before the fork).
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                if !hidden.is_empty() {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                    // Private first, so the unmounts below do not reach the host.
                    let flags = libc::MS_REC | libc::MS_PRIVATE;
                    if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    for at in &hidden {
                        libc::umount2(at.as_ptr(), libc::MNT_DETACH);
                    }
                }
                if let Some(keep) = &keep {
                    // Every capability this kernel knows but those: PR_CAPBSET_DROP fails with
                    // EINVAL past the last one.
                    for cap in (0..64).filter(|c| !keep.contains(c)) {
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                            break;
                        }
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Starts the daemon (again, after [`Self::signal`] killed it), with the same files, and
    /// waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the daemon is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log"))?;
        let child = self
            .command(&["--socket", &self.socket.to_string_lossy()])
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        // A debug daemon under emulation (the VM suites) on a loaded machine can take 20 s to
        // compute and write its tables: the bound is generous, as it costs a passing start nothing.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                anyhow::bail!("chaos-daemon exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                anyhow::bail!("chaos-daemon did not open its socket within 60 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.child.as_ref().map(|c| nix::unistd::Pid::from_raw(c.id() as i32))
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its status, `None` if it still
    /// runs (then it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.as_mut()?.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                _ if Instant::now() > deadline => return None,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends `signal`; for SIGKILL, also waits for the process to be gone.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(self.pid().ok_or_else(|| anyhow::anyhow!("not running"))?, signal)?;
        if signal == nix::sys::signal::Signal::SIGKILL {
            self.child.take().expect("running").wait()?;
        }
        Ok(())
    }

    /// Runs `chaos-daemon cleanup` with this daemon's config, in its namespace.
    pub fn cleanup(&self) -> Output {
        self.command(&["cleanup"]).output().expect("running chaos-daemon cleanup")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's status, once it reports no attachment: a TCX program no fault uses stays
    /// attached, idle, for `detach_after` (5 s unless configured) and is detached then.
    pub fn detached(&self) -> serde_json::Value {
        let status = || -> serde_json::Value { serde_json::from_str(&self.ctl_ok(&["status", "-o", "json"])).unwrap() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let s = status();
            let attached = s["attachments"].as_array().unwrap();
            if attached.is_empty() || std::time::Instant::now() > deadline {
                assert!(attached.is_empty(), "still attached after 30 s: {s}");
                return s;
            }
            // Only idle links may be waited for: a link in use after removal is a bug.
            assert!(attached.iter().all(|a| a["idle"] == true), "attached, not idle: {s}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
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

    /// Waits (up to 5 s: the daemon looks every second) until the daemon lists no fault, then
    /// returns the faults its last `end` event ended: (name, reason, dropped).
    pub fn ended(&self) -> Vec<(String, String, u64)> {
        for _ in 0..50 {
            if self.faults().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(self.faults().is_empty(), "a fault outlived its target");
        let event = self.history().into_iter().rev().find(|e| e.action == AuditAction::End).expect("an end event");
        event.ended.into_iter().map(|e| (e.name, e.reason, e.dropped)).collect()
    }

    /// `chaosctl list -o json` as sent: for checks of the wire format itself. [`Self::faults`]
    /// reads the same as API values.
    pub fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["list", "-o", "json"])).expect("list is JSON")
    }

    /// The faults `chaosctl list -o json` lists, in order of application.
    pub fn faults(&self) -> Vec<FaultView> {
        self.ctl_json::<Faults>(&["list"]).faults
    }

    /// The fault named `name` (failing the test when none is listed).
    pub fn fault(&self, name: &str) -> FaultView {
        let faults = self.faults();
        faults.iter().find(|f| f.name == name).cloned().unwrap_or_else(|| panic!("{name} is not listed: {faults:?}"))
    }

    /// The audit trail, oldest first (`chaosctl history -o json`: the daemon's default limit).
    pub fn history(&self) -> Vec<Event> {
        self.ctl_json::<History>(&["history"]).events
    }

    /// `chaosctl status -o json`.
    pub fn status(&self) -> Status {
        self.ctl_json(&["status"])
    }

    /// What the daemon found this kernel can do, within its `kernel_profile`: what tests
    /// branch on, never the kernel's version.
    pub fn abilities(&self) -> Abilities {
        self.status().abilities
    }

    /// The errno a connect-fail given none fails with here, as the daemon reports it.
    pub fn default_errno(&self) -> i32 {
        let name = self.abilities().connect_fail_default_errno;
        chaos_api::spec::errno(Some(&name)).unwrap_or_else(|e| panic!("default errno '{name}': {e}"))
    }

    /// Whether a daemon with `config` may attach by TCX here, as its status says. Where it may
    /// not, checks that one told `tc_attach = "tcx"` refuses to start, naming TCX and what to
    /// set instead.
    pub fn tcx_or_refused(ns: &Netns, config: &str) -> bool {
        let tcx = Self::start_with(ns, config).unwrap().abilities().tcx;
        if tcx.available {
            return true;
        }
        let why = tcx.why_not.expect("a reason");
        let err = Self::start_with(ns, &format!("{config}\ntc_attach = \"tcx\""))
            .err()
            .expect("a daemon told tc_attach = \"tcx\" started where TCX is lacking")
            .to_string();
        for expected in ["tc_attach = \"tcx\" cannot be", why.as_str(), "tc_attach = \"auto\" or \"netlink\""] {
            assert!(err.contains(expected), "expected '{expected}' in: {err}");
        }
        false
    }

    /// Runs chaosctl with `-o json` and reads its output as `T`, failing the test, with the
    /// output, when it is not one.
    pub fn ctl_json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self.ctl_ok(&[args, &["-o", "json"]].concat());
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("chaosctl {args:?}: not a {} ({e}): {out}", std::any::type_name::<T>()))
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
        // Whatever a killed daemon left; a daemon stopped with SIGTERM left nothing.
        let out = self.cleanup();
        if !out.status.success() {
            eprintln!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
        }
        if std::thread::panicking() {
            eprintln!("daemon log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cmd` to its end and returns its output; SIGTERM if it still runs after 20 s (a daemon
/// that started when it should not have).
pub fn run_to_end(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting the command");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waiting").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("waiting").is_none() {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    child.wait_with_output().expect("reading the output")
}

/// A daemon's faults and everything the kernel holds for them on the lab's host a, to compare
/// before and after a request that must change nothing.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub list: Vec<FaultView>,
    pub attached: Vec<u32>,
    pub attached_lo: Vec<u32>,
    pub maps: std::collections::BTreeMap<String, Vec<String>>,
}

impl Snapshot {
    /// Needs a fault applied on `lab.a_if`, whose program leads to the maps.
    pub fn of(lab: &crate::Lab, daemon: &Daemon) -> Self {
        let attached = crate::kernel::attached(&lab.a, &lab.a_if).unwrap();
        assert!(!attached.is_empty(), "a fault should have attached a program");
        Self {
            list: daemon.faults(),
            maps: crate::kernel::map_contents(attached[0]).unwrap(),
            attached,
            attached_lo: crate::kernel::attached(&lab.a, "lo").unwrap(),
        }
    }
}
