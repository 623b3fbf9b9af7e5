//! SIGTERM removes every fault and leaves no program, link, map, qdisc or pin behind: checked
//! by reading the kernel, not by asking the daemon.

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, Lab, kernel};

#[test]
fn sigterm_leaves_nothing_behind() {
    let lab = Lab::new().unwrap();
    let qdiscs_before = kernel::qdiscs(&lab.a, &lab.a_if);
    let mut daemon = Daemon::start(&lab.a).unwrap();
    daemon.ctl_ok(&["apply", "-i", &lab.a_if, "--partition", "-d", "both", "--dst", "10.200.0.4"]);
    daemon.ctl_ok(&["apply", "-i", "lo", "--loss", "50", "-p", "udp"]);

    let mut programs = kernel::attached(&lab.a, &lab.a_if).unwrap();
    programs.extend(kernel::attached(&lab.a, "lo").unwrap());
    assert_eq!(programs.len(), 3, "ingress and egress on the veth, egress on lo: {programs:?}");
    let maps: Vec<u32> = programs.iter().flat_map(|p| kernel::maps_of(*p).unwrap()).collect();
    assert!(maps.len() >= 6, "{maps:?}");

    let status = daemon.stop().unwrap();
    assert!(status.success(), "chaos-daemon exited with {status}");

    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());
    assert_eq!(kernel::attached(&lab.a, "lo").unwrap(), Vec::<u32>::new());
    // The kernel frees programs and maps after an RCU grace period: allow it two seconds.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<u32> = programs.iter().copied().filter(|p| kernel::program_loaded(*p)).collect();
        let maps_left: Vec<u32> = maps.iter().copied().filter(|m| kernel::map_loaded(*m)).collect();
        if left.is_empty() && maps_left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still loaded: programs {left:?}, maps {maps_left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(kernel::qdiscs(&lab.a, &lab.a_if), qdiscs_before);
    assert!(!daemon.socket.exists(), "the socket should be removed");
    let pins: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.to_string_lossy().contains("chaos")).collect())
        .unwrap_or_default();
    assert!(pins.is_empty(), "pins left: {pins:?}");
}
