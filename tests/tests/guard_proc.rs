//! `guard::ssh_sessions` against the kernel's own tables: inside netns `a` it finds exactly the
//! established sessions to a's port 22, IPv4 and IPv6, with their addresses, and tells sessions
//! from the host itself (carried by lo) from those from b.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use chaos_daemon::guard::{self, Path, Protected};
use chaos_tests::{Lab, lab};
use socket2::{Domain, Socket, Type};

/// Another address of a, for a session between two of a's own addresses.
const A4_OTHER: &str = "10.200.0.3";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A dual-stack listener on `[::]:port`: an IPv4 peer shows in tcp6 as ::ffff:a.b.c.d.
fn listen(port: u16) -> TcpListener {
    let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
    s.set_only_v6(false).unwrap();
    s.bind(&sa("::", port).into()).unwrap();
    s.listen(16).unwrap();
    s.into()
}

fn connect(from: Option<&str>, to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    if let Some(ip) = from {
        s.bind(&sa(ip, 0).into()).unwrap();
    }
    s.connect(&to.into()).unwrap();
    s.into()
}

/// What `ssh_sessions` should report for the server side of `client`'s connection.
fn expected(client: &TcpStream, path: Path) -> Protected {
    Protected::session(client.peer_addr().unwrap(), client.local_addr().unwrap(), path)
}

#[test]
fn ssh_sessions_in_a_namespace() {
    let lab = Lab::new().unwrap();
    lab.a.ip(&["addr", "add", &format!("{A4_OTHER}/24"), "dev", &lab.a_if]).unwrap();
    let (l22, l2222) = lab.a.enter(|| (listen(22), listen(2222))).unwrap();
    let b22 = lab.b.enter(|| listen(22)).unwrap();
    // A session a closed first: a's side waits in TIME_WAIT, a row that must be read and skipped.
    let closed = lab.b.enter(|| connect(None, sa(lab::A4, 22))).unwrap();
    drop(l22.accept().unwrap());
    drop(closed);

    // From b: IPv4 and IPv6, to sshd's port and to another one.
    let from_b = lab
        .b
        .enter(|| [sa(lab::A4, 22), sa(lab::A6, 22), sa(lab::A4, 2222), sa(lab::A6, 2222)].map(|to| connect(None, to)))
        .unwrap();
    // From a itself: over loopback addresses, between two of its own addresses, and out to b's
    // port 22 (a's session as a client, not one to protect).
    let from_a = lab
        .a
        .enter(|| {
            [
                connect(None, sa("127.0.0.1", 22)),
                connect(None, sa("::1", 22)),
                connect(Some(A4_OTHER), sa(lab::A4, 22)),
                connect(None, sa(lab::B4, 22)),
            ]
        })
        .unwrap();
    let mut accepted = Vec::new();
    for (listener, n) in [(&l22, 5), (&l2222, 2), (&b22, 1)] {
        for _ in 0..n {
            accepted.push(listener.accept().unwrap().0);
        }
    }
    // TIME_WAIT comes once b's FIN is in: wait for it so the skipped row is really there.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !time_wait(&lab) {
        assert!(Instant::now() < deadline, "no TIME_WAIT socket in a");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut found =
        lab.a.enter(|| guard::ssh_sessions(&[22], guard::Families { v4: true, v6: true })).unwrap().unwrap();
    let mut want = vec![
        expected(&from_b[0], Path::Network),
        expected(&from_b[1], Path::Network),
        expected(&from_a[0], Path::Loopback),
        expected(&from_a[1], Path::Loopback),
        expected(&from_a[2], Path::Loopback),
    ];
    found.sort_by(|x, y| x.what.cmp(&y.what));
    want.sort_by(|x, y| x.what.cmp(&y.what));
    assert_eq!(found, want);
    // The IPv4 session reached the dual-stack listener: it is reported as IPv4.
    assert!(found.iter().any(|p| p.remote.addr == lab::B4.parse::<IpAddr>().unwrap()), "{found:#?}");

    // Several ports, and none.
    assert_eq!(
        lab.a
            .enter(|| guard::ssh_sessions(&[22, 2222], guard::Families { v4: true, v6: true }))
            .unwrap()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(lab.a.enter(|| guard::ssh_sessions(&[], guard::Families { v4: true, v6: true })).unwrap().unwrap(), []);
    // b sees only the session a opened to it.
    let in_b = lab.b.enter(|| guard::ssh_sessions(&[22], guard::Families { v4: true, v6: true })).unwrap().unwrap();
    assert_eq!(in_b, [expected(&from_a[3], Path::Network)]);
    drop((from_a, from_b, accepted));
}

/// Whether a's TCP tables hold a socket in TIME_WAIT (state 06). The dual-stack listener's
/// sockets are IPv6 ones: an IPv4 session to it is in tcp6.
fn time_wait(lab: &Lab) -> bool {
    let tables = lab.a.enter(|| std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap()).unwrap();
    tables.lines().skip(1).any(|l| l.split_whitespace().nth(3) == Some("06"))
}
