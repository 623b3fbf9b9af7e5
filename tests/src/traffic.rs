//! Traffic between lab hosts, counted at the receiver.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::Netns;

/// Sends `count` numbered UDP datagrams from `from` to `dst` (an address in `to`) and returns
/// how many distinct ones arrived. The receiver's buffer holds every datagram and the sender
/// pauses every 1000, so no loss comes from buffers: all of it is the fault's.
pub fn udp(from: &Netns, src: Option<IpAddr>, to: &Netns, dst: SocketAddr, count: u32) -> anyhow::Result<u32> {
    let rx = to.enter(move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind(dst)?;
        // SO_RCVBUFFORCE (root) passes rmem_max: 64 MiB holds 20,000 small datagrams.
        let _ = nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::RcvBufForce, &(64 << 20));
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s)
    })??;
    let any: IpAddr = if dst.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let tx = from.enter(move || UdpSocket::bind(SocketAddr::new(src.unwrap_or(any), 0)))??;
    let sent = Arc::new(AtomicBool::new(false));
    let done = sent.clone();
    let receiver = std::thread::spawn(move || {
        let mut seen = vec![false; count as usize];
        let mut buf = [0u8; 64];
        let mut started = false;
        loop {
            match rx.recv(&mut buf) {
                Ok(n) if n >= 4 => {
                    started = true;
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                    if let Some(s) = seen.get_mut(seq) {
                        *s = true;
                    }
                }
                Ok(_) => {}
                // Idle: done once the sender has finished (or never reached us).
                Err(_) if started || done.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
        seen.iter().filter(|s| **s).count() as u32
    });
    for seq in 0..count {
        // A datagram dropped on egress may fail the send (ENOBUFS): the receiver counts anyway.
        let _ = tx.send_to(&seq.to_be_bytes(), dst);
        if seq % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sent.store(true, Ordering::SeqCst);
    receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))
}

/// Whether a TCP connection from `from` (bound to `src` if given) to `dst` (an address in
/// `to`) is established within one second.
pub fn tcp_connects(from: &Netns, src: Option<IpAddr>, to: &Netns, dst: SocketAddr) -> anyhow::Result<bool> {
    let listener = to.enter(move || TcpListener::bind(dst))??;
    let ok = from.enter(move || -> std::io::Result<bool> {
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(src) = src {
            socket.bind(&SocketAddr::new(src, 0).into())?;
        }
        Ok(socket.connect_timeout(&dst.into(), Duration::from_secs(1)).is_ok())
    })??;
    drop(listener);
    Ok(ok)
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's `bpf_ktime_get_ns` and of fault deadlines.
pub use chaos_daemon::state::mono_ns;

/// A stream of UDP datagrams from `from` to `dst` (in `to`), one every `interval` until
/// CLOCK_MONOTONIC reaches `until_ns`, each carrying its send time. Returns the send times of
/// all datagrams, and of those that arrived.
pub fn udp_stream(
    from: &Netns,
    to: &Netns,
    dst: SocketAddr,
    interval: Duration,
    until_ns: u64,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let rx = to.enter(move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind(dst)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s)
    })??;
    let any: IpAddr = if dst.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let tx = from.enter(move || UdpSocket::bind(SocketAddr::new(any, 0)))??;
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut arrived = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match rx.recv(&mut buf) {
                Ok(8) => arrived.push(u64::from_be_bytes(buf[..8].try_into().unwrap())),
                Ok(_) => {}
                Err(_) if finished.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
        arrived
    });
    let mut sent = Vec::new();
    loop {
        let now = mono_ns();
        if now >= until_ns {
            break;
        }
        // A datagram dropped on egress may fail the send: it was still sent at `now`.
        let _ = tx.send_to(&now.to_be_bytes(), dst);
        sent.push(now);
        std::thread::sleep(interval);
    }
    done.store(true, Ordering::SeqCst);
    let arrived = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    Ok((sent, arrived))
}
