//! Reset: a matching TCP segment is answered with a RST from its peer, so the client sees
//! "connection reset by peer" (or, connecting, "connection refused") at once, not a timeout;
//! other ports keep working.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use chaos_tests::{
    Daemon, Lab, Netns,
    lab::{B4, B6},
};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// An echo server on `dst` in `ns`, serving every connection until the test ends.
fn echo(ns: &Netns, dst: SocketAddr) {
    let listener = ns.enter(move || TcpListener::bind(dst)).unwrap().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn connect(ns: &Netns, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = ns.enter(move || TcpStream::connect_timeout(&dst, Duration::from_secs(3))).unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(s)
}

/// One request and its echo, or the error the client saw.
fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// A reset on `dport` applied on `side`'s interface and hook: the connection to it is reset at
/// its next segment, a new one is refused, another port's connection is untouched.
fn resets(b_side: bool, direction: &str, ip: &str, dport: u16) {
    let lab = Lab::new().unwrap();
    let (target, other) = (addr(ip, dport), addr(ip, dport + 1));
    echo(&lab.b, target);
    echo(&lab.b, other);
    let mut victim = connect(&lab.a, target).unwrap();
    let mut bystander = connect(&lab.a, other).unwrap();
    round_trip(&mut victim).unwrap();
    round_trip(&mut bystander).unwrap();

    let (ns, dev) = if b_side { (&lab.b, &lab.b_if) } else { (&lab.a, &lab.a_if) };
    let daemon = Daemon::start(ns).unwrap();
    daemon.ctl_ok(&["apply", "--name", "rst", "-i", dev, "--reset", "-d", direction, "--dport", &dport.to_string()]);

    // The first segment after the rule is answered with a RST: the client's read fails with
    // ECONNRESET well inside its 3 s timeout (in one round trip: a reply from the next hop).
    let started = Instant::now();
    let err = round_trip(&mut victim).expect_err("the connection survived the reset fault");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "reset took {:?}", started.elapsed());
    let refused = connect(&lab.a, target).expect_err("a new connection got through");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    round_trip(&mut bystander).unwrap();

    let fault = daemon.fault("rst");
    // The data segment and the SYN were each answered once.
    assert_eq!(fault.reset, 2, "{fault:?}");
    daemon.ctl_ok(&["rm", "rst"]);
    let mut again = connect(&lab.a, target).unwrap();
    round_trip(&mut again).unwrap();
}

#[test]
fn egress_segments_are_answered_with_a_reset_ipv4() {
    resets(false, "egress", B4, 9700);
}

#[test]
fn egress_segments_are_answered_with_a_reset_ipv6() {
    resets(false, "egress", B6, 9710);
}

#[test]
fn ingress_segments_are_answered_with_a_reset_ipv4() {
    // On the server's side: the client's segment arrives, and the RST leaves in its stead.
    resets(true, "ingress", B4, 9720);
}

#[test]
fn ingress_segments_are_answered_with_a_reset_ipv6() {
    resets(true, "ingress", B6, 9730);
}

#[test]
fn new_connections_only_leaves_established_ones() {
    let lab = Lab::new().unwrap();
    let target = addr(B4, 9740);
    echo(&lab.b, target);
    let mut established = connect(&lab.a, target).unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--reset", "--connections", "new", "--dport", "9740"]);
    for _ in 0..3 {
        let refused = connect(&lab.a, target).expect_err("a new connection got through");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
        for _ in 0..10 {
            round_trip(&mut established).unwrap();
        }
    }
    // `matched` counts what the fault acted on: the three SYNs it answered, not the 30 requests
    // (and their ACKs) of the established connection it let pass.
    let fault = &daemon.faults()[0];
    assert_eq!((fault.matched, fault.reset), (3, 3), "{fault:?}");
}
