//! 16 concurrent clients each apply and remove 500 faults through the real daemon: every request
//! succeeds, and afterwards nothing is left: no fault listed, no entry in the daemon's
//! classification maps (read from the kernel), no program attached, and the daemon holds as
//! many file descriptors as before.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use chaos_common::map_names::{ADDRS, PAIRS, PORTS};
use chaos_tests::{Daemon, Lab, http, kernel};

const CLIENTS: u32 = 16;
const FAULTS_PER_CLIENT: u32 = 500;
/// Faults a client keeps applied at once before removing its oldest: up to 64 in all, so the
/// rule sets compiled vary in size and mix directions and actions.
const WINDOW: u32 = 4;

/// Entries in the maps a fault adds to (the arrays always have every slot).
fn entries(maps: &[u32]) -> usize {
    let contents = kernel::maps_contents(maps).unwrap();
    [ADDRS, PAIRS, PORTS].iter().map(|m| contents[*m].len()).sum()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

// Every request opens its own connection (chaos_tests::http): 16,000 connections accepted and
// closed while faults change, which is what the file descriptor count afterwards checks.
fn apply(socket: &Path, name: &str, spec: &str) {
    let body = format!(r#"{{"faults":[{{"name":"{name}",{spec}}}]}}"#);
    let a = http::request(socket, "POST", "/v1/faults", body.as_bytes()).unwrap();
    assert_eq!(a.status, 201, "applying {name}: {}", String::from_utf8_lossy(&a.body));
}

fn remove(socket: &Path, name: &str) {
    let a = http::request(socket, "DELETE", &format!("/v1/faults/{name}"), b"").unwrap();
    assert_eq!(a.status, 200, "removing {name}: {}", String::from_utf8_lossy(&a.body));
}

#[test]
fn concurrent_clients_leave_nothing_behind() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start(&lab.a).unwrap();
    let pid = daemon.pid().expect("running").as_raw() as u32;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("chaos-daemon"), "pid {pid} is {}, not the daemon", exe.display());
    // Its maps, found through its file descriptors: no fault is active, so no program is
    // attached to lead to them. The maps live as long as the daemon.
    let maps = kernel::maps_of_process(pid).unwrap();
    let names = kernel::maps_contents(&maps).unwrap();
    assert!([ADDRS, PAIRS, PORTS].iter().all(|m| names.contains_key(*m)), "daemon maps: {names:?}");
    // The connection Daemon::start opened to wait for the socket may still be closing.
    thread::sleep(Duration::from_millis(200));
    let fds_before = open_fds(pid);

    // One fault shows in the maps found this way, so empty maps at the end mean something.
    let socket = daemon.socket.as_path();
    let port = format!(r#""interface":"{}","action":"loss","loss":10,"protocol":"udp","dport":7000"#, lab.a_if);
    apply(socket, "probe", &port);
    assert!(entries(&maps) > 0, "a fault added no entry to the maps found");
    let program = kernel::attached(&lab.a, &lab.a_if).unwrap()[0];
    assert!(kernel::maps_of(program).unwrap().iter().all(|id| maps.contains(id)), "the attached program's maps");
    remove(socket, "probe");
    assert_eq!(entries(&maps), 0);

    let started = Instant::now();
    thread::scope(|s| {
        for client in 0..CLIENTS {
            let a_if = lab.a_if.as_str();
            s.spawn(move || {
                let name = |i: u32| format!("c{client}-{i}");
                for i in 0..FAULTS_PER_CLIENT {
                    // A port of its own per fault; every fourth cuts both ways, every third
                    // is a partition.
                    let dport = 10_000 + client * FAULTS_PER_CLIENT + i;
                    let direction = if i % 4 == 0 { "both" } else { "egress" };
                    let action = if i % 3 == 0 { r#""action":"partition""# } else { r#""action":"loss","loss":25"# };
                    let spec = format!(
                        r#""interface":"{a_if}",{action},"direction":"{direction}","protocol":"tcp","dport":{dport}"#
                    );
                    apply(socket, &name(i), &spec);
                    if i >= WINDOW {
                        remove(socket, &name(i - WINDOW));
                    }
                }
                for i in FAULTS_PER_CLIENT - WINDOW..FAULTS_PER_CLIENT {
                    remove(socket, &name(i));
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let requests = 2 * CLIENTS * FAULTS_PER_CLIENT;
    eprintln!(
        "{CLIENTS} clients, {requests} requests (apply + remove) in {elapsed:.2?}: {:.0} requests/s (debug build)",
        f64::from(requests) / elapsed.as_secs_f64()
    );

    assert_eq!(daemon.list()["faults"].as_array().map(Vec::len), Some(0));
    let contents = kernel::maps_contents(&maps).unwrap();
    for map in [ADDRS, PAIRS, PORTS] {
        assert!(contents[map].is_empty(), "{map} still holds {} entries: {:?}", contents[map].len(), contents[map]);
    }
    daemon.detached();
    assert_eq!(kernel::attached(&lab.a, &lab.a_if).unwrap(), Vec::<u32>::new());
    // The daemon closes a connection when it sees the client's end: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while open_fds(pid) != fds_before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(open_fds(pid), fds_before, "the daemon's open file descriptors, before and after");
}
