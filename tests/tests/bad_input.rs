//! Every bad input is refused with an error naming the field and the reason, a non-zero exit,
//! and no change: neither in the daemon's list nor in the kernel (read independently).

use chaos_tests::{Daemon, Lab, daemon::Snapshot};

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&[
        "apply", "--name", "good", "-i", &lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9000", "-d", "both",
    ]);
    let before = Snapshot::of(&lab, &daemon);
    assert!(before.attached_lo.is_empty());

    // The daemon guard's directory, removed with it.
    let dir = daemon.dir.clone();
    let batch = dir.join("batch.toml");
    std::fs::write(
        &batch,
        "[[fault]]\ninterface = \"lo\"\naction = \"loss\"\nloss = 5\n\n\
         [[fault]]\ninterface = \"lo\"\naction = \"partition\"\ndport = 70000\n",
    )
    .unwrap();
    let batch = batch.to_str().unwrap();

    let a = lab.a_if.as_str();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["apply", "-i", "nope0", "--loss", "10"], "interface: no such interface 'nope0'"),
        (
            vec!["apply", "-i", a, "--loss", "10", "--dst", "10.0.0.300/24"],
            "dst: '10.0.0.300/24' is not an IP address or CIDR",
        ),
        (vec!["apply", "-i", a, "--loss", "10", "--src", "10.0.0.1/8"], "src: '10.0.0.1/8' has host bits set"),
        (
            vec!["apply", "-i", a, "--loss", "10", "-p", "udp", "--dport", "70000"],
            "dport: 70000 is not a port (0-65535)",
        ),
        (vec!["apply", "-i", a, "--loss", "150%"], "loss: 150% is outside 0-100%"),
        (vec!["apply", "-i", a, "--loss", "10", "--name", "good"], "name: a fault named 'good' already exists"),
        (vec!["apply", "-i", a, "--loss", "10", "-d", "up"], "direction: 'up' is not a direction"),
        (vec!["apply", "-i", a, "--loss", "10", "-p", "sctp"], "protocol: 'sctp' is not a protocol"),
        (vec!["apply", "-i", a, "--delay", "50"], "delay: 50 needs a unit (e.g. 50ms)"),
        (vec!["apply", "-i", a, "--delay", "50ms", "--jitter", "3s"], "jitter: 3s is more than the largest"),
        (vec!["apply", "-i", a, "--rate", "10xbit"], "rate: '10xbit' is not a rate"),
        (vec!["apply", "-i", a, "--rate", "1mbit", "--burst", "2gb"], "burst: 2147483648 bytes is outside"),
        // All or nothing: the first fault of the file is fine, the second is not.
        (vec!["apply", "-f", batch], "fault[1].dport: 70000 is not a port (0-65535)"),
        (vec!["apply", "-i", a, "--gemodel", "150"], "gemodel: p = 150% is outside 0-100%"),
        (vec!["apply", "-i", a, "--gemodel", "1 30 x"], "gemodel: 'x' is not a percentage"),
        (vec!["apply", "-i", a, "--gemodel", "0 0"], "gemodel: p and r are both 0"),
        (vec!["apply", "-i", a, "--gemodel", "1", "--correlation", "10"], "correlation: does not apply with gemodel"),
        // Refused by chaosctl's flags already.
        (vec!["apply", "-i", a, "--loss", "5", "--gemodel", "1"], "'--loss <PERCENT>' cannot be used with '--gemodel"),
        (vec!["apply", "-i", a, "--duplicate", "200"], "duplicate: 200% is outside 0-100%"),
        (vec!["apply", "-i", a, "--duplicate", "10", "--corrupt", "10"], "corrupt: applies to action 'corrupt'"),
        (vec!["apply", "-i", a, "--corrupt", "10", "-p", "icmp"], "protocol: icmp"),
        (
            vec!["apply", "-i", a, "--corrupt", "10", "--checksum", "maybe"],
            "checksum: 'maybe' is not a checksum choice",
        ),
        (vec!["apply", "-i", a, "--corrupt", "10", "--correlation", "101"], "correlation: 101% is outside 0-100%"),
        (vec!["apply", "-i", a, "--reset", "-p", "udp"], "protocol: reset answers TCP segments"),
        (vec!["apply", "-i", a, "--reset", "-p", "any"], "protocol: reset answers TCP segments"),
        (vec!["apply", "-i", a, "--reset", "--connections", "some"], "connections: 'some' is not a choice"),
        (vec!["apply", "-i", a, "--reset", "--correlation", "10"], "correlation: applies to actions"),
        (vec!["rm", "missing"], "no fault named 'missing'"),
    ];
    for (args, expected) in cases {
        let out = daemon.ctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "chaosctl {args:?} should fail");
        assert!(stderr.contains(expected), "chaosctl {args:?}: expected '{expected}' in:\n{stderr}");
        assert_eq!(Snapshot::of(&lab, &daemon), before, "chaosctl {args:?} changed something");
    }

    // No daemon behind the socket: a missing path, then a stale socket file.
    let missing = dir.join("missing.sock");
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [&missing, &stale] {
        let out = std::process::Command::new(chaos_tests::daemon::bin("chaosctl"))
            .arg("--socket")
            .arg(socket)
            .arg("list")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("cannot connect to chaos-daemon") && stderr.contains("is chaos-daemon running?"),
            "{stderr}"
        );
    }
    assert_eq!(Snapshot::of(&lab, &daemon), before);
}
