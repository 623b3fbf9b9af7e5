//! Guard rails end to end: with an SSH session established to the daemon's host, a fault that
//! would touch it is refused (409, naming the session) and changes nothing, a narrower fault is
//! accepted, and `--force` overrides. A configured protected destination is refused the same way.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use chaos_tests::{Daemon, Lab, lab};

#[test]
fn faults_touching_ssh_sessions_or_protected_destinations_need_force() {
    let lab = Lab::new().unwrap();
    // An "sshd" on host a, port 22, and a session to it from b.
    let sshd = SocketAddr::new(lab::A4.parse().unwrap(), 22);
    let listener = lab.a.enter(move || TcpListener::bind(sshd)).unwrap().unwrap();
    let session = lab.b.enter(move || TcpStream::connect_timeout(&sshd, Duration::from_secs(2))).unwrap().unwrap();
    let (_accepted, peer) = listener.accept().unwrap();

    let daemon = Daemon::start_with(&lab.a, "protected = [\"udp:10.200.0.4:53\"]").unwrap();
    let before = daemon.list();
    let refused = daemon.ctl(&["apply", "-i", &lab.a_if, "--partition", "-d", "both", "--dst", lab::B4]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let named = format!("SSH session {peer} -> {}:22", lab::A4);
    assert!(!refused.status.success(), "a partition of the SSH peer was applied");
    assert!(stderr.contains("match: would touch") && stderr.contains(&named) && stderr.contains("--force"), "{stderr}");
    // Any action counts, on the ingress side too.
    let out = daemon.ctl(&["apply", "-i", &lab.a_if, "--loss", "1", "-d", "ingress", "-p", "tcp"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&named), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(daemon.list(), before, "a refusal changes nothing");

    // A fault that leaves the session out is fine; --force overrides.
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "udp-only",
        "-i",
        &lab.a_if,
        "--partition",
        "-d",
        "both",
        "--dst",
        lab::B4,
        "-p",
        "udp",
    ]);
    daemon.ctl_ok(&["apply", "--name", "forced", "-i", &lab.a_if, "--loss", "1", "--dst", lab::B4, "--force"]);

    // The configured destination (UDP 53 on 10.200.0.4) is protected as well.
    let out = daemon.ctl(&["apply", "-i", &lab.a_if, "--loss", "50", "--dst", lab::B4_OTHER]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("10.200.0.4") && stderr.contains("53"), "{stderr}");
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--loss", "50", "--dst", lab::B4_OTHER, "-p", "tcp"]);
    drop(session);
}
