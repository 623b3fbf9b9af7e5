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

/// Sends `count` numbered UDP datagrams from `from` (bound to `src` if given) to `dst` (an
/// address in `to`) and returns how many distinct ones arrived, as [`udp_copies`] counts them.
pub fn udp(from: &Netns, src: Option<IpAddr>, to: &Netns, dst: SocketAddr, count: u32) -> anyhow::Result<u32> {
    let got = udp_sent(from, src, to, dst, count, 8, 1)?;
    Ok(got.copies.iter().filter(|c| **c > 0).count() as u32)
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

/// What arrived of a numbered UDP stream ([`udp_copies`]).
pub struct Arrivals {
    /// How many intact copies of each datagram arrived, by number.
    pub copies: Vec<u32>,
    /// Datagrams whose bytes were not what was sent (their number may be damaged too).
    pub damaged: u32,
}

impl Arrivals {
    /// Datagrams that never arrived intact.
    pub fn lost(&self) -> u32 {
        self.copies.iter().filter(|c| **c == 0).count() as u32
    }

    /// Lengths of the runs of consecutive datagrams that never arrived.
    pub fn bursts(&self) -> Vec<u32> {
        let mut runs = Vec::new();
        let mut run = 0;
        for &c in &self.copies {
            if c == 0 {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        if run > 0 {
            runs.push(run);
        }
        runs
    }
}

/// The bytes of datagram `seq`: its number, then bytes hashed from it, so that any flipped bit
/// shows, in the number too (every byte changes when any bit of the number does).
pub fn datagram(seq: u32, len: usize) -> Vec<u8> {
    // splitmix64's finalizer: each input bit flips about half the output bits.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut d = seq.to_be_bytes().to_vec();
    d.extend((4..len).map(|i| (mix(u64::from(seq) << 32 | i as u64) >> 56) as u8));
    d
}

/// Sends `count` numbered datagrams of `len` bytes (at least 8) from `from` to `dst` (in `to`)
/// and counts, at the receiver, the intact copies of each and the damaged ones: every datagram
/// missing, doubled or damaged is the fault's doing (see [`udp_sent`]).
pub fn udp_copies(from: &Netns, to: &Netns, dst: SocketAddr, count: u32, len: usize) -> anyhow::Result<Arrivals> {
    udp_segments(from, to, dst, count, len, 1)
}

/// [`udp_copies`] with UDP GSO: each send carries `segments` datagrams (UDP_SEGMENT, 4.18+),
/// which leave as one socket buffer through the TC hooks and are cut into datagrams after
/// them, so `count` should be a multiple of `segments`.
pub fn udp_segments(
    from: &Netns,
    to: &Netns,
    dst: SocketAddr,
    count: u32,
    len: usize,
    segments: u32,
) -> anyhow::Result<Arrivals> {
    udp_sent(from, None, to, dst, count, len, segments)
}

/// What [`udp`], [`udp_copies`] and [`udp_segments`] share: the receiver's buffer holds every
/// datagram (SO_RCVBUFFORCE passes rmem_max) and the sender pauses every 1000, so no loss comes
/// from buffers: all of it is the fault's.
fn udp_sent(
    from: &Netns,
    src: Option<IpAddr>,
    to: &Netns,
    dst: SocketAddr,
    count: u32,
    len: usize,
    segments: u32,
) -> anyhow::Result<Arrivals> {
    assert!(len >= 8, "datagrams carry a number and a pattern");
    let rx = to.enter(move || UdpSocket::bind(dst))??;
    let any: IpAddr = if dst.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let tx = from.enter(move || UdpSocket::bind(SocketAddr::new(src.unwrap_or(any), 0)))??;
    if segments > 1 {
        // setsockopt(SOL_UDP, UDP_SEGMENT, gso_size): each send is cut into len-byte datagrams.
        let size = len as libc::c_int;
        // SAFETY: a valid socket and an int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&tx),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(rc == 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    }
    exchange(tx, rx, dst, count, len, segments)
}

/// Sends `count` numbered datagrams from `tx` to `dst`, where `rx` (bound there) receives
/// them, and returns how many distinct ones arrived: for sockets made elsewhere (by a process
/// of a cgroup, say).
pub fn udp_via(tx: UdpSocket, rx: UdpSocket, dst: SocketAddr, count: u32) -> anyhow::Result<u32> {
    let got = exchange(tx, rx, dst, count, 8, 1)?;
    Ok(got.copies.iter().filter(|c| **c > 0).count() as u32)
}

fn exchange(
    tx: UdpSocket,
    rx: UdpSocket,
    dst: SocketAddr,
    count: u32,
    len: usize,
    segments: u32,
) -> anyhow::Result<Arrivals> {
    let _ = nix::sys::socket::setsockopt(&rx.as_fd(), nix::sys::socket::sockopt::RcvBufForce, &(256 << 20));
    rx.set_read_timeout(Some(Duration::from_millis(300)))?;
    let sent = Arc::new(AtomicBool::new(false));
    let done = sent.clone();
    let receiver = std::thread::spawn(move || {
        let mut arrivals = Arrivals { copies: vec![0; count as usize], damaged: 0 };
        let mut buf = vec![0u8; len + 1];
        let mut started = false;
        loop {
            match rx.recv(&mut buf) {
                Ok(n) => {
                    started = true;
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    match arrivals.copies.get_mut(seq as usize) {
                        Some(c) if n == len && buf[..n] == datagram(seq, len)[..] => *c += 1,
                        _ => arrivals.damaged += 1,
                    }
                }
                Err(_) if started || done.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
        arrivals
    });
    for first in (0..count).step_by(segments as usize) {
        let batch: Vec<u8> = (first..(first + segments).min(count)).flat_map(|seq| datagram(seq, len)).collect();
        let _ = tx.send_to(&batch, dst);
        if first % 1000 + segments > 1000 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sent.store(true, Ordering::SeqCst);
    receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))
}

/// Sends `data` over one TCP connection from `from` to `dst` (in `to`) and returns what the
/// receiving application read.
pub fn tcp_transfer(from: &Netns, to: &Netns, dst: SocketAddr, data: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let listener = to.enter(move || TcpListener::bind(dst))??;
    let stream = from.enter(move || std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5)))??;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = stream;
        stream.write_all(&data)?;
        stream.shutdown(std::net::Shutdown::Write)
    });
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut received = Vec::new();
    conn.read_to_end(&mut received)?;
    sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(received)
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's `bpf_ktime_get_ns` and of fault deadlines.
/// (Its own copy, not chaos-daemon's: this library must build without the daemon, whose build
/// script compiles the eBPF object, because xtask uses it to install that toolchain.)
pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

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
    // A receiver kept off the CPU on a loaded machine must not lose datagrams to its buffer
    // (the default holds about 270 of these): every loss is then the fault's.
    nix::sys::socket::setsockopt(&rx.as_fd(), nix::sys::socket::sockopt::RcvBufForce, &(64 << 20))?;
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

/// One-way latencies (ns) of timestamped UDP datagrams from `from` to each of `dsts` (in
/// `to`): one datagram to each every `interval`, `rounds` times. Both ends read CLOCK_MONOTONIC
/// of the same kernel, so a latency is the receive time minus the send time it carries; lost
/// datagrams are simply missing.
pub fn udp_latencies(
    from: &Netns,
    to: &Netns,
    dsts: &[SocketAddr],
    interval: Duration,
    rounds: usize,
) -> anyhow::Result<Vec<Vec<u64>>> {
    udp_latencies_from(from, 0, to, dsts, interval, rounds)
}

/// [`udp_latencies`] from source port `sport` (0: any).
pub fn udp_latencies_from(
    from: &Netns,
    sport: u16,
    to: &Netns,
    dsts: &[SocketAddr],
    interval: Duration,
    rounds: usize,
) -> anyhow::Result<Vec<Vec<u64>>> {
    let times = udp_times(from, sport, to, dsts, interval, rounds)?;
    Ok(times
        .into_iter()
        .map(|t| t.into_iter().map(|(sent, received)| received.saturating_sub(sent)).collect())
        .collect())
}

/// What [`udp_latencies_from`] and [`udp_timed`] share: per destination, the `(sent, received)`
/// times of the datagrams that arrived, in arrival order. Sent from the calling thread.
fn udp_times(
    from: &Netns,
    sport: u16,
    to: &Netns,
    dsts: &[SocketAddr],
    interval: Duration,
    rounds: usize,
) -> anyhow::Result<Vec<Vec<(u64, u64)>>> {
    let done = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for &dst in dsts {
        let rx = to.enter(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind(dst)?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })??;
        let finished = done.clone();
        receivers.push(std::thread::spawn(move || {
            let (mut times, mut buf, mut idle) = (Vec::new(), [0u8; 64], 0);
            // After the sender is done, wait out the longest delay a test applies (a few
            // seconds of silence) before giving up on stragglers.
            while idle < 30 {
                match rx.recv(&mut buf) {
                    Ok(8) => {
                        times.push((u64::from_be_bytes(buf[..8].try_into().unwrap()), mono_ns()));
                        idle = 0;
                    }
                    Ok(_) => {}
                    Err(_) if finished.load(Ordering::SeqCst) => idle += 1,
                    Err(_) => {}
                }
            }
            times
        }));
    }
    // One sender per IP version in `dsts` (an IPv6 socket bound to the same port as an IPv4
    // one would collide with it).
    let mut senders = Vec::new();
    for any in [IpAddr::from(Ipv4Addr::UNSPECIFIED), IpAddr::from(Ipv6Addr::UNSPECIFIED)] {
        if dsts.iter().any(|d| d.is_ipv4() == any.is_ipv4()) {
            senders.push(from.enter(move || UdpSocket::bind(SocketAddr::new(any, sport)))??);
        }
    }
    let sender = |dst: &SocketAddr| {
        senders.iter().find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == dst.is_ipv4())).expect("bound above")
    };
    for _ in 0..rounds {
        for dst in dsts {
            let _ = sender(dst).send_to(&mono_ns().to_be_bytes(), dst);
        }
        std::thread::sleep(interval);
    }
    done.store(true, Ordering::SeqCst);
    receivers.into_iter().map(|r| r.join().map_err(|_| anyhow::anyhow!("receiver panicked"))).collect()
}

/// Timestamped UDP datagrams from `from` to `dst` (in `to`), one every `interval`, `rounds`
/// times, sent from the calling thread: `(sent, received)` CLOCK_MONOTONIC times of those that
/// arrived, in the order they arrived (lost ones are missing).
pub fn udp_timed(
    from: &Netns,
    to: &Netns,
    dst: SocketAddr,
    interval: Duration,
    rounds: usize,
) -> anyhow::Result<Vec<(u64, u64)>> {
    Ok(udp_times(from, 0, to, &[dst], interval, rounds)?.remove(0))
}

/// Goodput (bits of payload per second) of one TCP connection from `from` to `dst` (in `to`)
/// sending as fast as it can: measured at the receiver over `measure`, after `warmup` (slow
/// start, queues filling) is left out.
pub fn tcp_goodput(
    from: &Netns,
    to: &Netns,
    dst: SocketAddr,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = to.enter(move || TcpListener::bind(dst))??;
    let total = warmup + measure;
    let sender = {
        let stream = from.enter(move || std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5)))??;
        std::thread::spawn(move || {
            let mut stream = stream;
            let chunk = [0u8; 64 * 1024];
            let start = std::time::Instant::now();
            while start.elapsed() < total + Duration::from_millis(500) {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let start = std::time::Instant::now();
    let (mut bytes, mut at_warmup) = (0u64, None);
    let result = loop {
        let elapsed = start.elapsed();
        if at_warmup.is_none() && elapsed >= warmup {
            at_warmup = Some((bytes, elapsed));
        }
        if elapsed >= total {
            let (b0, t0) = at_warmup.expect("set at warmup");
            break Ok((bytes - b0) as f64 * 8.0 / (elapsed - t0).as_secs_f64());
        }
        match conn.read(&mut buf) {
            Ok(0) => break Err(anyhow::anyhow!("the sender closed early")),
            Ok(n) => bytes += n as u64,
            Err(e) => break Err(anyhow::anyhow!("reading: {e}")),
        }
    };
    drop(conn);
    sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
    result
}

/// Background UDP traffic: `pps` datagrams of 1200 bytes a second from `from` to `dst` (in
/// `to`, where a socket takes them and never reads) for `duration`.
pub fn udp_flood(
    from: &Netns,
    to: &Netns,
    dst: SocketAddr,
    pps: u32,
    duration: Duration,
) -> std::thread::JoinHandle<()> {
    let sink = to.enter(move || UdpSocket::bind(dst)).expect("entering the namespace").expect("binding the sink");
    let any: IpAddr = if dst.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let tx = from.enter(move || UdpSocket::bind(SocketAddr::new(any, 0))).expect("entering").expect("binding");
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let payload = [0u8; 1200];
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * f64::from(pps)) as u64;
            while sent < due {
                let _ = tx.send_to(&payload, dst);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(sink);
    })
}

/// A numbered UDP flow from `from` to `dst` (in `to`), one datagram every `interval`, running
/// until [`Flow::stop`]: for what happens to traffic while something else goes on. The
/// receiver's buffer holds every datagram (SO_RCVBUFFORCE), so no loss comes from buffers.
pub struct Flow {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u32>,
    receiver: std::thread::JoinHandle<std::collections::BTreeSet<u32>>,
}

impl Flow {
    pub fn start(from: &Netns, to: &Netns, dst: SocketAddr, interval: Duration) -> anyhow::Result<Self> {
        let rx = to.enter(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind(dst)?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            Ok(s)
        })??;
        let _ = nix::sys::socket::setsockopt(&rx.as_fd(), nix::sys::socket::sockopt::RcvBufForce, &(64 << 20));
        let any: IpAddr = if dst.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let tx = from.enter(move || UdpSocket::bind(SocketAddr::new(any, 0)))??;
        let stop = Arc::new(AtomicBool::new(false));
        let (sending, receiving) = (stop.clone(), stop.clone());
        let sender = std::thread::spawn(move || {
            let mut seq = 0u32;
            while !sending.load(Ordering::SeqCst) {
                // A datagram dropped on egress may fail the send: it was still sent.
                let _ = tx.send_to(&seq.to_be_bytes(), dst);
                seq += 1;
                std::thread::sleep(interval);
            }
            seq
        });
        let receiver = std::thread::spawn(move || {
            let mut arrived = std::collections::BTreeSet::new();
            let mut buf = [0u8; 64];
            loop {
                match rx.recv(&mut buf) {
                    Ok(4) => {
                        arrived.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                    }
                    Ok(_) => {}
                    Err(_) if receiving.load(Ordering::SeqCst) => return arrived,
                    Err(_) => {}
                }
            }
        });
        Ok(Self { stop, sender, receiver })
    }

    /// Stops the flow; returns how many datagrams were sent and which arrived.
    pub fn stop(self) -> anyhow::Result<(u32, std::collections::BTreeSet<u32>)> {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
        let arrived = self.receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
        Ok((sent, arrived))
    }
}
