//! `cargo xtask demo`: a two-host lab, the real daemon and CLI, 20% UDP loss towards one port
//! measured at the receiver, then removed. Ctrl-C at any point cleans the lab up.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use chaos_tests::{Daemon, Lab, lab, traffic};
use nix::sys::wait::{WaitPidFlag, waitpid};

const DATAGRAMS: u32 = 20_000;
const PORT: u16 = 9000;

pub fn run() -> anyhow::Result<()> {
    on_interrupt()?;
    println!("== a two-host lab: network namespaces joined by a veth pair, {} <-> {}", lab::A4, lab::B4);
    let lab = Lab::new()?;
    let daemon = Daemon::start(&lab.a)?;
    println!("== chaos-daemon running in host a, control socket {}", daemon.socket.display());

    let a_if = lab.a_if.as_str();
    let port = PORT.to_string();
    ctl(
        &daemon,
        &["apply", "--name", "demo-loss", "--interface", a_if, "--loss", "20%", "--protocol", "udp", "--dport", &port],
    )?;
    measure(&lab, "with the fault", 20.0)?;
    ctl(&daemon, &["list"])?;
    ctl(&daemon, &["rm", "demo-loss"])?;
    measure(&lab, "after chaosctl rm", 0.0)?;
    println!("== cleaning up: stopping the daemon, deleting the namespaces");
    Ok(())
}

fn ctl(daemon: &Daemon, args: &[&str]) -> anyhow::Result<()> {
    println!("$ chaosctl {}", args.join(" "));
    let out = daemon.ctl(args);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("chaosctl failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn measure(lab: &Lab, label: &str, asked: f64) -> anyhow::Result<()> {
    let dst = SocketAddr::new(lab::B4.parse()?, PORT);
    let got = traffic::udp(&lab.a, None, &lab.b, dst, DATAGRAMS)?;
    let lost = 100.0 * f64::from(DATAGRAMS - got) / f64::from(DATAGRAMS);
    // One standard deviation of a binomial rate over DATAGRAMS packets.
    let sd = 100.0 * (asked / 100.0 * (1.0 - asked / 100.0) / f64::from(DATAGRAMS)).sqrt();
    println!(
        "{label}: {got} of {DATAGRAMS} UDP datagrams to {dst} arrived: loss asked {asked:.1}%, measured {lost:.2}% (sd {sd:.2})"
    );
    Ok(())
}

/// Ctrl-C reaches the whole process group, so the daemon removes its faults by itself. This
/// handler, installed before anything is made, waits for the children to exit and then deletes
/// what this process made, found by the names `chaos_tests::unique` gives (the guards belong
/// to the main thread, which may be in the middle of a measurement).
fn on_interrupt() -> anyhow::Result<()> {
    let tag = format!("{}x", std::process::id() % 100_000);
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: cleaning the lab up");
        for _ in 0..100 {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Err(_) => break, // no children left
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let list = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
        for name in String::from_utf8_lossy(&list).split_whitespace() {
            if name.starts_with(&format!("cda{tag}")) || name.starts_with(&format!("cdb{tag}")) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&format!("chaos-test-{tag}")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}
