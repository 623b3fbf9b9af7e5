//! The daemon under systemd, with systemd's side played here: READY=1 once its socket answers
//! and STOPPING=1 on SIGTERM (`Type=notify`, to a path and to an abstract NOTIFY_SOCKET);
//! socket activation (chaos-daemon.socket): the passed socket is served, never bound over or
//! removed, and a passed socket of the wrong kind, or several, are refused with the reason.

use std::{
    os::{
        fd::{AsRawFd as _, RawFd},
        linux::net::SocketAddrExt as _,
        unix::{
            fs::MetadataExt as _,
            net::{SocketAddr, UnixDatagram, UnixListener},
            process::CommandExt as _,
        },
    },
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::{Daemon, Netns, daemon::bin, unique};

/// A daemon harness (own config, state, pins; cleaned up on drop) with nothing running yet.
fn stopped_daemon(ns: &Netns) -> Daemon {
    let mut daemon = Daemon::start(ns).unwrap();
    daemon.stop().unwrap();
    daemon
}

/// The next notification, within 20 s.
fn next(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs the daemon through `notify` and checks what it says, and when.
fn notifies(daemon: &mut Daemon, notify: &UnixDatagram, address: &str) {
    let log = std::fs::File::create(daemon.dir.join("daemon.log")).unwrap();
    let child = daemon
        .command(&["--socket", &daemon.socket.to_string_lossy()])
        .env("NOTIFY_SOCKET", address)
        .stderr(log)
        .spawn()
        .unwrap();
    daemon.child = Some(child);
    let ready = next(notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means serving: the socket answers now, not after a retry.
    daemon.ctl_ok(&["status"]);
    assert!(daemon.stop().unwrap().success());
    let stopping = next(notify);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
}

#[test]
fn readiness_and_stop_are_notified() {
    let ns = Netns::new(unique("csd")).unwrap();
    let mut daemon = stopped_daemon(&ns);
    let path = daemon.dir.join("notify");
    let notify = UnixDatagram::bind(&path).unwrap();
    notifies(&mut daemon, &notify, &path.to_string_lossy());

    // systemd may give an abstract address (`@name`), which is the network namespace's.
    let name = unique("chaos-notify-");
    let address = SocketAddr::from_abstract_name(&name).unwrap();
    let notify = ns.enter(move || UnixDatagram::bind_addr(&address)).unwrap().unwrap();
    notifies(&mut daemon, &notify, &format!("@{name}"));
}

/// chaos-daemon with `fd` passed as systemd passes sockets: as descriptor 3, `LISTEN_FDS` of
/// them, `LISTEN_PID` its own pid (set by the shell it is exec'd from), in `ns`; its configured
/// socket is `socket`, as the unit's is the socket unit's ListenStream=.
fn activated(daemon: &Daemon, ns: &Netns, fd: RawFd, count: &str, socket: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(bin("chaos-daemon"))
        .arg("--config")
        .arg(daemon.dir.join("config.toml"))
        .arg("--socket")
        .arg(socket)
        .env("LISTEN_FDS", count);
    let netns = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    // SAFETY: setns, dup2 and fcntl are async-signal-safe system calls on descriptors opened
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            // dup2 clears close-on-exec on the copy; a descriptor that already is 3 keeps it.
            let r = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    cmd
}

#[test]
fn socket_activation_serves_the_passed_socket() {
    let ns = Netns::new(unique("csa")).unwrap();
    let mut daemon = stopped_daemon(&ns);
    let passed = daemon.dir.join("activated.sock");
    let listener = UnixListener::bind(&passed).unwrap();
    let inode = passed.metadata().unwrap().ino();
    let log = std::fs::File::create(daemon.dir.join("daemon.log")).unwrap();
    let child =
        activated(&daemon, &ns, listener.as_raw_fd(), "1", &passed).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    daemon.child = Some(child);
    // Only the daemon holds it now: if it exits, requests fail instead of waiting.
    drop(listener);
    daemon.socket = passed.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.ctl(&["status"]).status.success() {
        assert!(Instant::now() < deadline, "no answer on the passed socket:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.log().contains("serving the socket systemd passed"), "{}", daemon.log());
    daemon.ctl_ok(&["apply", "--name", "activated", "-i", "lo", "--loss", "50%", "-p", "udp", "--dport", "9"]);
    assert_eq!(daemon.list()["faults"][0]["name"], "activated");
    assert!(daemon.stop().unwrap().success());
    // The passed socket is systemd's: neither replaced by one of the daemon's nor removed.
    assert_eq!(passed.metadata().map(|m| m.ino()).ok(), Some(inode), "the passed socket was replaced or removed");
}

#[test]
fn a_wrong_passed_socket_is_refused() {
    let ns = Netns::new(unique("csw")).unwrap();
    let daemon = stopped_daemon(&ns);
    let unbound = daemon.dir.join("unbound.sock");
    let refused = |fd: RawFd, count: &str| {
        let out = activated(&daemon, &ns, fd, count, &unbound).output().unwrap();
        assert!(!out.status.success());
        assert!(!unbound.exists(), "refused, it bound its own socket");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let datagram = UnixDatagram::unbound().unwrap();
    let e = refused(datagram.as_raw_fd(), "1");
    assert!(e.contains("not a listening Unix stream socket") && e.contains("ListenStream="), "{e}");
    let file = std::fs::File::open(Path::new("/dev/null")).unwrap();
    let e = refused(file.as_raw_fd(), "1");
    assert!(e.contains("socket activation"), "{e}");
    let listener = UnixListener::bind(daemon.dir.join("two.sock")).unwrap();
    let e = refused(listener.as_raw_fd(), "2");
    assert!(e.contains("passed 2 sockets"), "{e}");
    let e = refused(listener.as_raw_fd(), "x");
    assert!(e.contains("LISTEN_FDS is 'x', not a number"), "{e}");
}
