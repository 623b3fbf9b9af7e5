//! PID 1 of the `cargo xtask vm-test` guest. Mounts what the tests need, loads the kernel
//! modules, prints `VMTEST KERNEL <release>` and the daemon's status there (`VMTEST STATUS
//! <json>`, see [`daemon_status`]), runs each suite of `/vmtest/plan.json` (written by xtask) with its output on the
//! console, prints `VMTEST RESULT <suite> PASS|FAIL <exit> <seconds>` for each and `VMTEST DONE`,
//! and powers the machine off. Whatever goes wrong, it still prints a FAIL line and powers off:
//! the host must never wait for a guest that hangs.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _, unix::process::ExitStatusExt as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::mount::{MsFlags, mount};
use serde_json::Value;

const PLAN: &str = "/vmtest/plan.json";

fn main() {
    println!("VMTEST START");
    match std::panic::catch_unwind(run) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            println!("vm-init: {e:#}");
            println!("VMTEST RESULT init FAIL error 0");
        }
        // The panic hook has printed the message.
        Err(_) => println!("VMTEST RESULT init FAIL panic 0"),
    }
    println!("VMTEST DONE");
    // SAFETY: plain syscalls. Should the power-off fail, returning from main ends PID 1, the
    // kernel panics, and panic=-1 with qemu's -no-reboot ends the VM all the same.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    eprintln!("vm-init: power off failed: {}", std::io::Error::last_os_error());
}

fn run() -> anyhow::Result<()> {
    mounts()?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("VMTEST KERNEL {}", release.trim());
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(PLAN).context(PLAN)?).context(PLAN)?;
    for module in strings(&plan["modules"]) {
        load_module(&module)?;
    }
    let path = plan["path"].as_str().context("plan: no path")?.to_owned();
    let status = Command::new("ip").args(["link", "set", "lo", "up"]).env("PATH", &path).status();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        bail!("ip link set lo up: {status:?}");
    }
    let extra = plan["daemon_config"].as_str().unwrap_or_default();
    daemon_status(plan["bin_dir"].as_str().context("plan: no bin_dir")?, &path, extra);
    let timeout = Duration::from_secs(plan["suite_timeout_secs"].as_u64().context("plan: no suite timeout")?);
    for suite in plan["suites"].as_array().context("plan: no suites")? {
        let name = suite["name"].as_str().context("suite without a name")?;
        let started = Instant::now();
        let exit = run_suite(name, suite, &path, timeout).unwrap_or_else(|e| {
            println!("vm-init: suite {name}: {e:#}");
            "error".into()
        });
        let result = if exit == "0" { "PASS" } else { "FAIL" };
        println!("VMTEST RESULT {name} {result} {exit} {:.1}", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Starts the daemon once (its own socket and state directory) and prints, on one line, what
/// `chaosctl status -o json` says: the kernel's abilities as the daemon found them. If it does
/// not start, its log (which carries any verifier log) goes to the console and the line says
/// why. Stopped, and cleaned up after, before any suite runs.
/// `extra` is added to its configuration (the kernel profile a run holds its daemons to).
fn daemon_status(bin: &str, path: &str, extra: &str) {
    let dir = Path::new("/tmp/vmtest-status");
    let status = status_once(bin, path, dir, extra).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        for line in log.lines() {
            println!("vm-init: daemon: {line}");
        }
        let start = (log.len().saturating_sub(4096)..log.len()).find(|i| log.is_char_boundary(*i)).unwrap_or(0);
        let tail = &log[start..];
        serde_json::json!({ "error": format!("{e:#}"), "log": tail })
    });
    println!("VMTEST STATUS {status}");
    let _ = std::fs::remove_dir_all(dir);
}

fn status_once(bin: &str, path: &str, dir: &Path, extra: &str) -> anyhow::Result<Value> {
    std::fs::create_dir_all(dir)?;
    let (config, socket) = (dir.join("config.toml"), dir.join("chaos.sock"));
    let bpffs = "/sys/fs/bpf/vmtest-status";
    std::fs::write(
        &config,
        format!("state_dir = \"{}\"\nbpffs_dir = \"{bpffs}\"\n{extra}", dir.join("state").display()),
    )?;
    let daemon = format!("{bin}/chaos-daemon");
    let log = File::create(dir.join("daemon.log"))?;
    let mut child = Command::new(&daemon)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .env_clear()
        .env("PATH", path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {daemon}"))?;
    let result = (|| {
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("chaos-daemon exited at start ({status})");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("chaos-daemon did not open its socket within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(format!("{bin}/chaosctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["status", "-o", "json"])
            .output()?;
        if !out.status.success() {
            bail!("chaosctl status failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).context("chaosctl status -o json printed no JSON")
    })();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
    let stopping = Instant::now();
    while child.try_wait()?.is_none() {
        if stopping.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whatever it pinned or attached goes before the suites.
    let _ = Command::new(&daemon).arg("--config").arg(&config).arg("cleanup").env("PATH", path).output();
    let _ = std::fs::remove_dir_all(bpffs);
    result
}

/// The kernel gives init only the initramfs: everything else the tests touch is mounted here.
fn mounts() -> anyhow::Result<()> {
    for (fstype, target, data) in [
        ("proc", "/proc", None),
        ("sysfs", "/sys", None),
        ("devtmpfs", "/dev", None),
        ("tmpfs", "/tmp", Some("mode=1777")),
        // `ip netns add` bind-mounts namespaces under /run/netns.
        ("tmpfs", "/run", Some("mode=0755")),
        ("bpf", "/sys/fs/bpf", Some("mode=0700")),
        ("cgroup2", "/sys/fs/cgroup", None),
    ] {
        std::fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
        mount(Some(fstype), target, Some(fstype), MsFlags::empty(), data)
            .with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    Ok(())
}

fn load_module(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: finit_module reads the module from the fd; the parameters are an empty C string.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    let err = std::io::Error::last_os_error();
    // EEXIST: already loaded (or built in), which is as good.
    if r != 0 && err.raw_os_error() != Some(libc::EEXIST) {
        bail!("loading {path}: {err}");
    }
    Ok(())
}

/// Runs one suite to its end (or its timeout, then its whole process group is killed);
/// returns its exit code, or how it ended otherwise.
fn run_suite(name: &str, suite: &Value, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let exe = suite["exe"].as_str().context("suite without an exe")?;
    let args = strings(&suite["args"]);
    println!("==== VM test suite {name}: {exe} {}", args.join(" "));
    let mut cmd = Command::new(exe);
    cmd.args(&args).env_clear().env("PATH", path).env("HOME", "/root").env("RUST_BACKTRACE", "1");
    // The console ends up in a log file: no colour codes from the daemon's log lines.
    cmd.env("NO_COLOR", "1");
    for kv in suite["env"].as_array().into_iter().flatten() {
        cmd.env(kv[0].as_str().unwrap_or_default(), kv[1].as_str().unwrap_or_default());
    }
    // Its own process group: on timeout the daemons it started are killed with it.
    cmd.stdin(Stdio::null()).process_group(0);
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {exe}"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(match status.code() {
                Some(code) => code.to_string(),
                None => format!("signal-{}", status.signal().unwrap_or(0)),
            });
        }
        if started.elapsed() > timeout {
            println!("vm-init: suite {name} still running after {} s: killing it", timeout.as_secs());
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
            let _ = child.wait();
            return Ok("timeout".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}
