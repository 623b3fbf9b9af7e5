//! `cargo xtask package --check`: the packages verified with the distributions' own tools.
//!
//! - The .rpm, read back by rpm (installed with apt-get when missing): digests, architecture,
//!   file list with modes, owners and config/doc flags, requires and scriptlets; then installed
//!   by rpm into a scratch root, where every file must be, byte for byte and mode, the one it
//!   was built from, and `rpm -V` must pass.
//! - The .deb, installed on this machine (which must not have chaos-daemon already): every file
//!   in place with its mode, `dpkg --verify` clean, installed again (the upgrade path of its
//!   scripts), the units checked by `systemd-analyze verify` when systemd is installed. Then the
//!   service runs as its unit says, without systemd: ExecStart with the unit's capability
//!   bounding set, NoNewPrivileges, LimitMEMLOCK and LimitNOFILE, in a network namespace of its own, with
//!   NOTIFY_SOCKET set. It must report READY=1, answer `chaosctl status`, drop packets of a
//!   fault on that namespace's lo, report STOPPING=1 and exit cleanly on SIGTERM. Last,
//!   `dpkg --purge` must leave nothing: no file of the package, no /etc/chaos-daemon, state,
//!   pins, socket or systemd enablement. A guard purges the package even when a step fails.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use chaos_tests::Netns;

use super::{Entry, NAME};
use crate::vm::apt;

/// Runs a command, failing with its stderr; its stdout.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn rpm(path: &Path, expected: &[Entry], linked: &super::Linked) -> anyhow::Result<()> {
    let arch = linked.arch;
    apt::ensure_program("rpm", "rpm")?;
    let query = |format: &str| output(Command::new("rpm").args(["-qp", "--qf", format]).arg(path));
    let digests = output(Command::new("rpm").args(["-K", "--nosignature"]).arg(path))?;
    ensure!(digests.contains("digests OK"), "rpm -K: {digests}");
    ensure!(query("%{ARCH}")? == arch.rpm(), "the rpm's architecture is not {}", arch.rpm());

    // MODE OWNER:GROUP FLAGS PATH, one line per file (directories included).
    let listed = query("[%{FILEMODES:octal} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]")?;
    let mut files = 0;
    for line in listed.lines() {
        let mut fields = line.splitn(4, ' ');
        let (mode, owner, flags, file) = (fields.next(), fields.next(), fields.next(), fields.next());
        let (Some(mode), Some(owner), Some(flags), Some(file)) = (mode, owner, flags, file) else {
            bail!("rpm -qp: unexpected line '{line}'");
        };
        ensure!(owner == "root:root", "{file} is owned by {owner}");
        let mode = u32::from_str_radix(mode, 8)?;
        if mode & 0o170000 == 0o040000 {
            ensure!(file.contains(NAME), "the rpm owns the directory {file}, which is not its own");
            continue;
        }
        let e = expected.iter().find(|e| e.path == file).with_context(|| format!("the rpm has {file}, unexpected"))?;
        ensure!(mode == 0o100000 | e.mode, "{file} has mode {mode:o}, not {:o}", 0o100000 | e.mode);
        let wanted = if file.starts_with("/etc/") {
            "cn"
        } else if file.starts_with("/usr/share/doc/") {
            "d"
        } else {
            ""
        };
        ensure!(flags == wanted || (wanted.is_empty() && flags == "(none)"), "{file} has flags {flags}, not {wanted}");
        files += 1;
    }
    ensure!(files == expected.len(), "the rpm lists {files} files, not {}", expected.len());
    let requires = output(Command::new("rpm").args(["-qp", "--requires"]).arg(path))?;
    if linked.needed.is_empty() {
        // Static binaries: no shared library to require (the scriptlets' /bin/sh, rpm's own
        // features and the config's provides are the rest).
        let libraries: Vec<&str> = requires.lines().filter(|l| l.contains(".so")).collect();
        ensure!(libraries.is_empty(), "the rpm of static binaries requires {libraries:?}");
    } else {
        ensure!(requires.contains("libc.so.6(GLIBC_"), "the rpm does not require a glibc version:\n{requires}");
    }
    let scripts = output(Command::new("rpm").args(["-qp", "--scripts"]).arg(path))?;
    for script in ["postinstall", "preuninstall", "postuninstall"] {
        ensure!(scripts.contains(&format!("{script} scriptlet")), "the rpm has no {script} scriptlet");
    }

    // Installed by rpm itself into a scratch root (no dependencies, no scriptlets): every file
    // as it went in, and `rpm -V` finds nothing to say.
    let root = std::env::temp_dir().join(chaos_tests::unique("chaos-rpm-root-"));
    let installed = (|| {
        let rpm = |args: &[&str]| output(Command::new("rpm").arg("--root").arg(&root).args(args));
        rpm(&["--initdb"])?;
        // Any architecture: nothing of it runs here.
        rpm(&["-i", "--nodeps", "--noscripts", "--nosignature", "--ignorearch", &path.to_string_lossy()])?;
        for e in expected {
            let file = root.join(e.path.trim_start_matches('/'));
            let data = std::fs::read(&file).with_context(|| format!("rpm -i did not install {}", e.path))?;
            ensure!(data == e.data, "{} as rpm installs it differs from what was packaged", e.path);
            let mode = std::fs::metadata(&file)?.permissions().mode() & 0o7777;
            ensure!(mode == e.mode, "rpm installs {} with mode {mode:o}, not {:o}", e.path, e.mode);
        }
        rpm(&["-V", "--nodeps", NAME])?;
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    installed?;
    println!("rpm: {} files, {}, digests OK, installed by rpm as built", expected.len(), arch.rpm());
    Ok(())
}

/// The package installed, and the daemon it runs; purged (the daemon killed first) on drop.
struct Installed {
    daemon: Option<Child>,
    purged: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.purged {
            let purge = Command::new("dpkg").args(["--purge", NAME]).output();
            if !purge.is_ok_and(|o| o.status.success()) {
                eprintln!("xtask: dpkg --purge {NAME} failed: remove the package by hand");
            }
        }
    }
}

/// What the package and its daemon may leave behind, besides its files: none of it may remain.
/// (/run/chaos-daemon is systemd's RuntimeDirectory, removed at every stop.)
const LEFTOVERS: [&str; 4] =
    ["/etc/chaos-daemon", "/var/lib/chaos-daemon", "/sys/fs/bpf/chaos-daemon", "/run/chaos-daemon.sock"];

pub fn deb(path: &Path, expected: &[Entry]) -> anyhow::Result<()> {
    not_in_use()?;
    let mut installed = Installed { daemon: None, purged: false };
    let dpkg = |args: &[&str]| output(Command::new("dpkg").args(args).env("DEBIAN_FRONTEND", "noninteractive"));
    dpkg(&["-i", &path.to_string_lossy()])?;
    for e in expected {
        let data = std::fs::read(&e.path).with_context(|| format!("{} is not installed", e.path))?;
        ensure!(data == e.data, "{} differs from what was packaged", e.path);
        let mode = std::fs::metadata(&e.path)?.permissions().mode() & 0o7777;
        ensure!(mode == e.mode, "{} is installed with mode {mode:o}, not {:o}", e.path, e.mode);
    }
    let verify = dpkg(&["--verify", NAME])?;
    ensure!(verify.is_empty(), "dpkg --verify: {verify}");
    dpkg(&["-i", &path.to_string_lossy()])?;
    println!("deb: installed and installed again, {} files in place", expected.len());

    let unit_path = "/lib/systemd/system/chaos-daemon.service";
    if Command::new("systemd-analyze").arg("--version").output().is_ok() {
        // Man page references are checked too when man can look them up.
        let man = if Command::new("man").arg("--version").output().is_ok() { "--man=yes" } else { "--man=no" };
        output(Command::new("systemd-analyze").args([
            "verify",
            man,
            unit_path,
            "/lib/systemd/system/chaos-daemon.socket",
        ]))?;
        println!("deb: systemd-analyze verify passed");
    } else {
        println!("deb: systemd-analyze is not installed: the units' syntax is not checked");
    }
    let unit = Unit::parse(&std::fs::read_to_string(unit_path)?)?;
    run_service(&unit, &mut installed)?;

    dpkg(&["--purge", NAME])?;
    installed.purged = true;
    let mut left: Vec<String> = expected.iter().map(|e| e.path.clone()).chain(LEFTOVERS.map(str::to_owned)).collect();
    left.retain(|p| exists(p));
    for dir in [
        "/etc/systemd/system",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ] {
        left.extend(find(Path::new(dir), "chaos-daemon").into_iter().map(|p| p.display().to_string()));
    }
    ensure!(left.is_empty(), "dpkg --purge left: {}", left.join(" "));
    println!("deb: purged, nothing left");
    Ok(())
}

/// Fails if chaos-daemon is installed or in use here: the check installs and purges it. A state
/// directory holding nothing but an unheld lock (a daemon run once without a config, then
/// stopped) is no use: the purge removes it.
fn not_in_use() -> anyhow::Result<()> {
    let why = "the check installs and purges it, so it runs only on a machine without it";
    let status = Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", NAME]).output()?;
    let status = String::from_utf8_lossy(&status.stdout);
    if !status.is_empty() && status != "not-installed" {
        bail!("{NAME} is installed here ({status}): {why}");
    }
    for path in ["/usr/bin/chaos-daemon", "/usr/bin/chaosctl", "/etc/chaos-daemon", "/sys/fs/bpf/chaos-daemon"] {
        ensure!(!exists(path), "{path} exists: {why}");
    }
    ensure!(
        std::os::unix::net::UnixStream::connect("/run/chaos-daemon.sock").is_err(),
        "a chaos-daemon serves /run/chaos-daemon.sock: {why}"
    );
    let state = Path::new("/var/lib/chaos-daemon");
    if let Ok(entries) = std::fs::read_dir(state) {
        let names: Vec<String> =
            entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        ensure!(
            names.iter().all(|n| n == "lock"),
            "{} holds a daemon's state ({}): {why}",
            state.display(),
            names.join(" ")
        );
        if let Ok(lock) = std::fs::File::open(state.join("lock")) {
            ensure!(
                nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
                "a chaos-daemon runs with {}: {why}",
                state.display()
            );
        }
    }
    Ok(())
}

/// Whether `path` exists, dangling symlinks included.
fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Paths under `dir` whose name contains `name`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.filter_map(Result::ok) {
        if e.file_name().to_string_lossy().contains(name) {
            found.push(e.path());
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(find(&e.path(), name));
        }
    }
    found
}

/// What of the unit's [Service] section decides how the daemon runs without systemd.
struct Unit {
    exec_start: Vec<String>,
    capabilities: Vec<String>,
    no_new_privileges: bool,
    memlock_unlimited: bool,
    /// `LimitNOFILE=`, soft and hard.
    nofile: Option<u64>,
}

impl Unit {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut unit = Self {
            exec_start: Vec::new(),
            capabilities: Vec::new(),
            no_new_privileges: false,
            memlock_unlimited: false,
            nofile: None,
        };
        let mut notify = false;
        let mut section = "";
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            let Some((key, value)) = line.split_once('=').filter(|_| section == "[Service]") else { continue };
            match key.trim() {
                "Type" => notify = value == "notify",
                "ExecStart" => {
                    ensure!(
                        !value.contains(['"', '\'', '$', '\\']),
                        "ExecStart={value}: quoting and variables are not run by this check"
                    );
                    unit.exec_start = value.split_whitespace().map(str::to_owned).collect();
                }
                "CapabilityBoundingSet" if value.is_empty() => unit.capabilities.clear(),
                "CapabilityBoundingSet" => {
                    ensure!(!value.starts_with('~'), "CapabilityBoundingSet=~... is not run by this check");
                    unit.capabilities.extend(value.split_whitespace().map(str::to_owned));
                }
                "NoNewPrivileges" => unit.no_new_privileges = value == "yes",
                "LimitMEMLOCK" => unit.memlock_unlimited = value == "infinity",
                "LimitNOFILE" => {
                    unit.nofile = Some(value.trim().parse().with_context(|| format!("LimitNOFILE={value}"))?)
                }
                _ => {}
            }
        }
        ensure!(notify, "the unit is not Type=notify");
        ensure!(!unit.exec_start.is_empty(), "the unit has no ExecStart=");
        ensure!(!unit.capabilities.is_empty(), "the unit has no CapabilityBoundingSet=");
        Ok(unit)
    }
}

/// Starts ExecStart as the unit would (see the module's doc), in `ns`, with NOTIFY_SOCKET at
/// `notify`; stderr into `log`.
fn start(unit: &Unit, ns: &Netns, notify: &Path, log: &Path) -> anyhow::Result<Child> {
    let caps: Vec<String> =
        unit.capabilities.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg("--bounding-set").arg(format!("-all,{}", caps.join(",")));
    if unit.no_new_privileges {
        cmd.arg("--no-new-privs");
    }
    cmd.arg("--").args(&unit.exec_start).env("NOTIFY_SOCKET", notify).stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(log)?);
    if unit.memlock_unlimited {
        // Here, inherited by the daemon. Raising the hard limit needs CAP_SYS_RESOURCE, which
        // systemd has and a container may not.
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: setrlimit reads a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
            println!("deb: LimitMEMLOCK=infinity not applied: {}", std::io::Error::last_os_error());
        }
    }
    let netns = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
    let nofile = unit.nofile.map(|n| libc::rlimit { rlim_cur: n, rlim_max: n });
    // SAFETY: setns and setrlimit are async-signal-safe system calls, on a file opened and a
    // value made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            // The unit's open-files limit, lowered to (systemd would set it either way).
            if let Some(limit) = &nofile
                && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().context("starting the unit's ExecStart")
}

/// Waits for a notification holding `state` while `child` runs.
fn wait_for(socket: &UnixDatagram, state: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == state)
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("chaos-daemon exited ({status}) before {state}");
        }
    }
    bail!("no {state} from chaos-daemon within 30 s")
}

fn chaosctl(args: &[&str]) -> anyhow::Result<String> {
    output(Command::new("/usr/bin/chaosctl").args(args))
}

/// The installed service, run and stopped as systemd would, with a fault on its namespace's lo.
fn run_service(unit: &Unit, installed: &mut Installed) -> anyhow::Result<()> {
    let ns = Netns::new(chaos_tests::unique("pkgcheck"))?;
    let dir = std::env::temp_dir().join(chaos_tests::unique("chaos-pkg-"));
    std::fs::create_dir_all(&dir)?;
    let notify = UnixDatagram::bind(dir.join("notify"))?;
    notify.set_read_timeout(Some(Duration::from_millis(100)))?;
    let log = dir.join("daemon.log");
    let result = (|| {
        let child = installed.daemon.insert(start(unit, &ns, &dir.join("notify"), &log)?);
        wait_for(&notify, "READY=1", child)?;
        // Ready means ready: the socket answers at once.
        let status = chaosctl(&["status"])?;
        print!("{status}");
        // The probes of qdiscs and IFB devices need CAP_NET_ADMIN, which attaching does not
        // (CAP_SYS_ADMIN does it too): a capability the unit lacks shows here.
        ensure!(
            !status.contains("not permitted"),
            "chaosctl status reports a permission error: the unit lacks a capability"
        );
        chaosctl(&["apply", "--name", "package-check", "-i", "lo", "--loss", "100%", "-p", "udp", "--dport", "9"])?;
        ns.enter(|| -> std::io::Result<()> {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            for _ in 0..20 {
                socket.send_to(b"chaos", "127.0.0.1:9")?;
            }
            Ok(())
        })??;
        let list: serde_json::Value = serde_json::from_str(&chaosctl(&["list", "-o", "json"])?)?;
        let fault = &list["faults"][0];
        ensure!(fault["matched"] == 20 && fault["dropped"] == 20, "the fault did not drop the 20 packets: {fault}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        wait_for(&notify, "STOPPING=1", child)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait()? {
                Some(status) => break status,
                None if Instant::now() > deadline => bail!("chaos-daemon did not exit within 30 s of SIGTERM"),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        installed.daemon = None;
        ensure!(status.success(), "chaos-daemon exited with {status} on SIGTERM");
        for gone in ["/run/chaos-daemon.sock", "/sys/fs/bpf/chaos-daemon"] {
            ensure!(!exists(gone), "{gone} is still there after a clean stop");
        }
        println!("deb: ExecStart ran as the unit says: READY=1, status, 20/20 packets dropped, STOPPING=1, clean exit");
        anyhow::Ok(())
    })();
    if result.is_err() {
        eprintln!("daemon log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}
