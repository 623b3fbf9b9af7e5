//! A network namespace per test on a dedicated thread, iproute2 to set up and read back, and
//! raw frames to send.

use std::{process::Command, thread};

use chaos_daemon::netlink::link;

/// Runs `f` on a fresh thread in a new network namespace (unshare is per thread; the
/// namespace goes when the thread ends). Commands run from that thread run in it too.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    assert!(nix::unistd::geteuid().is_root(), "the shaping tests need root (they make network namespaces)");
    thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        // No IPv6 on new devices, so no autoconfiguration packets (router solicitations, MLD
        // reports) move the counters `tc qdisc show` prints, such as htb's
        // direct_packets_stat. Net sysctls are those of the writing thread's namespace.
        for conf in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
        }
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs a command (split on spaces); its stdout, or its stderr as the error.
pub fn try_run(cmd: &str) -> Result<String, String> {
    let args: Vec<_> = cmd.split_whitespace().collect();
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

pub fn run(cmd: &str) -> String {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// A veth pair, both ends up.
pub fn veth(a: &str, b: &str) {
    run(&format!("ip link add {a} type veth peer name {b}"));
    run(&format!("ip link set {a} up"));
    run(&format!("ip link set {b} up"));
}

pub fn index(name: &str) -> u32 {
    link::by_name(name).unwrap().unwrap_or_else(|| panic!("no interface {name}")).ifindex
}

/// Sends `n` broadcast Ethernet frames (local experimental ethertype 0x88b5) out of
/// `ifindex` through an AF_PACKET socket, so they reach the veth peer's ingress.
pub fn send_frames(ifindex: u32, n: usize) {
    // SAFETY: socket, sendto with a live buffer and sockaddr_ll, close of the socket made here.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut frame = vec![0xffu8; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
        frame.resize(60, 0);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].fill(0xff);
        for _ in 0..n {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(sent, frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}
