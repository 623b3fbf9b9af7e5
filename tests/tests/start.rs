//! Starts that must fail, and what they leave: a bad setting is found before anything touches
//! the kernel (no pin, no socket file); the daemon's files are never reached through a link it
//! did not make; and a daemon whose pins would die with its mount namespace (`ip netns exec`)
//! refuses to start, as `cleanup` refuses to report on pins it cannot see.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output},
};

use chaos_tests::{
    Daemon, Netns,
    daemon::{bin, run_to_end},
    unique,
};

/// The daemon's stderr, after checking that it failed.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it succeeded: {stderr}");
    stderr
}

/// What is pinned in `dir` (nothing when it does not exist).
fn pins(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// A failed start left no pin and no socket file of its own.
fn nothing_left(daemon: &Daemon) {
    assert_eq!(pins(&daemon.bpffs), Vec::<String>::new(), "pins left in {}", daemon.bpffs.display());
    assert!(!daemon.socket.exists(), "the socket file {} was left", daemon.socket.display());
}

#[test]
fn a_missing_group_stops_the_start_before_the_kernel() {
    let ns = Netns::new(unique("cst")).unwrap();
    for setting in ["socket_group", "admin_group"] {
        let daemon = Daemon::unstarted(&ns, &format!("{setting} = \"chaos-no-such-group\""), None).unwrap();
        let stderr = failed(&daemon.serve_once());
        assert!(stderr.contains(&format!("{setting}: no group 'chaos-no-such-group'")), "{stderr}");
        nothing_left(&daemon);
    }
}

#[test]
fn a_metrics_port_in_use_stops_the_start_before_the_kernel() {
    let ns = Netns::new(unique("cst")).unwrap();
    // Held by the test, in the daemon's namespace.
    let held = ns.enter(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
    let address = held.local_addr().unwrap();
    let daemon = Daemon::unstarted(&ns, &format!("metrics_address = \"{address}\""), None).unwrap();
    let stderr = failed(&daemon.serve_once());
    assert!(stderr.contains(&format!("metrics_address: binding {address}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    nothing_left(&daemon);
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_kept_and_refused() {
    let ns = Netns::new(unique("cst")).unwrap();
    // A dangling symbolic link: nothing is made where it points, and it stays.
    let daemon = Daemon::unstarted(&ns, "", None).unwrap();
    let target = daemon.dir.join("elsewhere.sock");
    std::os::unix::fs::symlink(&target, &daemon.socket).unwrap();
    let stderr = failed(&daemon.serve_once());
    let expected = format!("{}: the control socket's path is a symbolic link, not a socket", daemon.socket.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(daemon.socket.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(target.symlink_metadata().is_err(), "something was made at the link's target");
    assert_eq!(pins(&daemon.bpffs), Vec::<String>::new());

    // A regular file: kept as it was.
    let daemon = Daemon::unstarted(&ns, "", None).unwrap();
    std::fs::write(&daemon.socket, "not a socket").unwrap();
    let stderr = failed(&daemon.serve_once());
    assert!(stderr.contains("the control socket's path is a regular file, not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&daemon.socket).unwrap(), "not a socket");
    assert_eq!(pins(&daemon.bpffs), Vec::<String>::new());
}

#[test]
fn a_state_dir_that_is_a_link_or_not_roots_is_refused() {
    let ns = Netns::new(unique("cst")).unwrap();
    let daemon = Daemon::unstarted(&ns, "", None).unwrap();
    let state = daemon.dir.join("state");
    let real = daemon.dir.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&real, &state).unwrap();
    for out in [daemon.serve_once(), daemon.command(&["cleanup"]).output().unwrap()] {
        let stderr = failed(&out);
        assert!(stderr.contains(&format!("{}: the state directory is a symbolic link", state.display())), "{stderr}");
        assert_eq!(real.metadata().unwrap().permissions().mode() & 0o7777, 0o755, "its mode changed");
        assert_eq!(pins(&real), Vec::<String>::new(), "files were made in it");
    }
    nothing_left(&daemon);

    let daemon = Daemon::unstarted(&ns, "", None).unwrap();
    let state = daemon.dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let stderr = failed(&daemon.serve_once());
    assert!(stderr.contains("the state directory is owned by uid 65534, not 0"), "{stderr}");
    nothing_left(&daemon);
}

#[test]
fn a_lock_file_that_is_a_link_is_never_opened() {
    let ns = Netns::new(unique("cst")).unwrap();
    let daemon = Daemon::unstarted(&ns, "", None).unwrap();
    let state = daemon.dir.join("state");
    std::fs::create_dir(&state).unwrap();
    let victim = daemon.dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("lock")).unwrap();
    for out in [daemon.serve_once(), daemon.command(&["cleanup"]).output().unwrap()] {
        let stderr = failed(&out);
        assert!(stderr.contains("the lock file is a symbolic link"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
    nothing_left(&daemon);
}

/// `ip netns exec NAME chaos-daemon --config <the daemon's> args...`
fn ip_netns_exec(ns: &Netns, daemon: &Daemon, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]).arg(bin("chaos-daemon"));
    cmd.arg("--config").arg(daemon.dir.join("config.toml")).args(args);
    cmd
}

#[test]
fn under_ip_netns_exec_it_refuses_to_pin_where_nothing_outlives_it() {
    let ns = Netns::new(unique("cst")).unwrap();
    let daemon = Daemon::unstarted(&ns, "", None).unwrap();
    let out = run_to_end(ip_netns_exec(&ns, &daemon, &["--socket", &daemon.socket.to_string_lossy()]));
    let stderr = failed(&out);
    assert!(stderr.contains("a mount namespace of its own"), "{stderr}");
    assert!(stderr.contains("nsenter --net=/run/netns/NAME chaos-daemon"), "{stderr}");
    nothing_left(&daemon);
}

#[test]
fn cleanup_under_ip_netns_exec_fails_rather_than_miss_the_pins() {
    let ns = Netns::new(unique("cst")).unwrap();
    let mut daemon = Daemon::start(&ns).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let left = pins(&daemon.bpffs);
    assert!(left.len() >= 10, "the killed daemon's pins: {left:?}");

    let out = ip_netns_exec(&ns, &daemon, &["cleanup"]).output().unwrap();
    let stderr = failed(&out);
    assert!(stderr.contains("cleanup cannot reach the daemon's pins; nothing was removed"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cleanup done"));
    assert_eq!(pins(&daemon.bpffs), left, "the pins changed");

    // From the namespace alone, it finds and removes them.
    let out = daemon.cleanup();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!daemon.bpffs.exists(), "pins left: {:?}", pins(&daemon.bpffs));
}
