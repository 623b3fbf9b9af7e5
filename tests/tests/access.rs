//! Only allowed peers change faults: a uid that is neither root nor in `admin_group` is refused
//! every mutating call, with the reason, and each refusal is in the audit trail. The socket is
//! made world-writable here (socket_mode) so that the daemon's own check is what refuses.

use std::{os::unix::process::CommandExt as _, process::Command};

use chaos_tests::{Daemon, Lab, daemon::bin};

/// nobody/nogroup on Debian.
const NOBODY: u32 = 65534;

/// chaosctl run as uid/gid 65534 against `daemon`.
fn ctl_as_nobody(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(bin("chaosctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("running chaosctl")
}

#[test]
fn non_allowed_uid_is_refused_and_audited() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, "socket_mode = \"0666\"\nreaders = \"any\"").unwrap();
    // The daemon's directory must be reachable by uid 65534 to reach the socket.
    std::fs::set_permissions(&daemon.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Narrow, so that no stray packet (IPv6 router solicitations) moves its counters.
    daemon.ctl_ok(&["apply", "--name", "kept", "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9999"]);
    let before = daemon.list();

    let mutating: [&[&str]; 4] = [
        &["apply", "--name", "evil", "-i", &lab.a_if, "--partition"],
        &["rm", "kept"],
        &["rm", "-e", "some-experiment"],
        &["clear"],
    ];
    for args in mutating {
        let out = ctl_as_nobody(&daemon, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "chaosctl {args:?} as uid {NOBODY} succeeded");
        assert!(
            stderr.contains("permission denied: uid 65534 may not change faults; allowed: root only"),
            "chaosctl {args:?}: {stderr}"
        );
    }
    // Reading is allowed by `readers = "any"`; nothing changed.
    let out = ctl_as_nobody(&daemon, &["list", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), before);
    assert_eq!(daemon.list(), before);

    // Each refusal is audited with who asked, in the history and in the daemon's log.
    let history: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["history", "-o", "json"])).unwrap();
    let refused: Vec<&serde_json::Value> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["actor"]["uid"] == NOBODY && e["result"].as_str().unwrap().starts_with("refused: permission denied")
        })
        .collect();
    assert_eq!(refused.len(), 4, "{history}");
    assert!(refused.iter().all(|e| e["actor"]["comm"] == "chaosctl" && e["actor"]["pid"].as_u64().is_some()));
    let actions: Vec<&str> = refused.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["POST /v1/faults", "DELETE /v1/faults/kept", "DELETE /v1/experiments/some-experiment", "DELETE /v1/faults"]
    );
    assert_eq!(daemon.log().matches("permission denied: uid 65534").count(), 4 * 2, "warned and audited each time");
}

#[test]
fn admin_group_members_may_change_faults_and_readers_default_to_admins() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_with(&lab.a, "socket_mode = \"0666\"\nadmin_group = \"nogroup\"").unwrap();
    std::fs::set_permissions(&daemon.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = ctl_as_nobody(&daemon, &["apply", "--name", "by-group", "-i", &lab.a_if, "--loss", "10"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = daemon.list();
    assert_eq!(list["faults"][0]["applied_by"]["uid"], NOBODY, "{list}");

    // A uid outside the group may not even read (readers = "admins" by default).
    let out = Command::new(bin("chaosctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["list"])
        .uid(65533)
        .gid(65533)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not read"), "{}", String::from_utf8_lossy(&out.stderr));
}
