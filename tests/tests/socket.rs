//! The control socket: mode 0660, a stale socket replaced, a live one never taken over.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use chaos_tests::{Daemon, Netns, daemon::bin, unique};

#[test]
fn socket_mode_stale_and_live() {
    let ns = Netns::new(unique("cds")).unwrap();
    let dir = std::env::temp_dir().join(unique("chaos-sock-"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("chaos.sock");
    // A stale socket: bound by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

    let daemon = Daemon::start_at(&ns, "", Some(socket.clone()));
    let result = std::panic::catch_unwind(|| {
        let daemon = daemon.as_ref().expect("the daemon replaces a stale socket");
        assert_eq!(daemon.socket.metadata().unwrap().permissions().mode() & 0o777, 0o660);
        // Its own state directory (the default's would be the host's), the same socket.
        let config = dir.join("second.toml");
        std::fs::write(&config, format!("state_dir = \"{}\"\n", dir.join("state").display())).unwrap();
        let second = Command::new(bin("chaos-daemon"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&daemon.socket)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(!second.status.success());
        assert!(stderr.contains("another chaos-daemon is already serving"), "{stderr}");
        daemon.ctl_ok(&["status"]);
    });
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
