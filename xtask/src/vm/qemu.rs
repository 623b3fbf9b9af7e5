//! Boots the guest under qemu (TCG: KVM hung on these machines), streams its console to
//! stdout, and collects the init's `VMTEST` lines (and chaos-bench's `BENCH` ones), within an overall time limit.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::kernels::Arch;

/// One `VMTEST RESULT <suite> PASS|FAIL <exit> <seconds>` line.
pub struct SuiteResult {
    pub suite: String,
    pub pass: bool,
    pub exit: String,
    pub seconds: String,
}

pub struct Outcome {
    pub results: Vec<SuiteResult>,
    /// The init printed `VMTEST DONE`.
    pub done: bool,
    pub timed_out: bool,
    /// From starting qemu to the init's first line.
    pub boot: Option<Duration>,
    /// The JSON of each `BENCH <json>` line (chaos-bench's results).
    pub bench: Vec<String>,
    /// The kernel's release as the guest reports it (`VMTEST KERNEL <release>`).
    pub kernel: Option<String>,
    /// What `chaosctl status -o json` said there before the suites (`VMTEST STATUS <json>`).
    pub status: Option<String>,
}

pub fn run(arch: Arch, kernel: &Path, initrd: &Path, timeout: Duration) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let (qemu, _) = arch.qemu();
    let mut child = Command::new(qemu)
        .args(arch.machine())
        .args(["-accel", "tcg", "-m", "4096", "-smp", "2", "-no-reboot"])
        // The serial port on stdout and nothing else: with -nographic's default devices the
        // firmware also writes there (a NIC's boot ROM banner, escape codes that reset the
        // terminal).
        .args(["-nodefaults", "-display", "none", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1: a kernel panic (or an init that exits) reboots at once, which -no-reboot
        // turns into qemu exiting.
        .arg("-append")
        .arg(format!("console={} panic=-1 quiet", arch.console()))
        // No stdin: qemu would take the terminal over, and Ctrl-C should stop the run.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    let console = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut console = BufReader::new(console);
        let mut line = Vec::new();
        while console.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
            // Kernel messages may share a line with ours: look for the marker anywhere.
            if let Some(i) = text.find("VMTEST ") {
                let _ = tx.send(text[i + 7..].to_owned());
            } else if let Some(i) = text.find("BENCH {") {
                let _ = tx.send(format!("BENCH {}", &text[i + 6..]));
            }
            line.clear();
        }
    });

    let mut outcome = Outcome {
        results: Vec::new(),
        done: false,
        timed_out: false,
        boot: None,
        bench: Vec::new(),
        kernel: None,
        status: None,
    };
    let deadline = started + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(msg) => {
                if let Some(json) = msg.strip_prefix("BENCH ") {
                    outcome.bench.push(json.to_owned());
                    continue;
                }
                if let Some(json) = msg.strip_prefix("STATUS ") {
                    outcome.status = Some(json.trim().to_owned());
                    continue;
                }
                let words: Vec<&str> = msg.split_whitespace().collect();
                match words.as_slice() {
                    ["START", ..] => outcome.boot = Some(started.elapsed()),
                    ["DONE", ..] => outcome.done = true,
                    ["KERNEL", release, ..] => outcome.kernel = Some((*release).into()),
                    ["RESULT", suite, result, exit, seconds, ..] => outcome.results.push(SuiteResult {
                        suite: (*suite).into(),
                        pass: *result == "PASS",
                        exit: (*exit).into(),
                        seconds: (*seconds).into(),
                    }),
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                println!("xtask: the VM did not finish within {} min: stopping it", timeout.as_secs() / 60);
                outcome.timed_out = true;
                let _ = child.kill();
                break;
            }
            // The console closed: qemu has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let _ = reader.join();
    if !status.success() && !outcome.timed_out {
        println!("xtask: {qemu} exited with {status}");
    }
    Ok(outcome)
}
