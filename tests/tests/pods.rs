//! Pods of a real containerd, found through the CRI: chaos-cri's view of them, and faults named
//! `--pod NAMESPACE/NAME` that follow the pod's sandbox (its network namespace), not one of its
//! containers.

use std::net::SocketAddr;

use chaos_tests::{Daemon, Netns, containerd::Lab, traffic, unique};

#[test]
fn the_cri_lists_pods_with_their_namespace_and_containers() {
    let lab = Lab::start().unwrap();
    let name = unique("web-");
    let pod = lab.run_pod("shop", &name, &[("app", "web"), ("tier", "front")]).unwrap();
    let side = lab.add_container(&pod, "side", &[]).unwrap();

    let pods = lab.call_pods();
    let listed = pods.iter().find(|p| p.id == pod.id).expect("the pod is listed");
    assert_eq!(
        (listed.namespace.as_str(), listed.name.as_str(), listed.uid.as_str()),
        ("shop", name.as_str(), pod.uid.as_str())
    );
    assert!(listed.ready, "{listed:?}");
    assert_eq!(listed.labels.get("app").map(String::as_str), Some("web"), "{listed:?}");
    assert_eq!(listed.ips, vec![lab.pod_ip(&pod).unwrap()]);
    let netns = listed.netns.clone().expect("a netns path");
    assert!(netns.starts_with(&lab.dir), "{}", netns.display());
    let pid = listed.pid.expect("the sandbox's pid");
    // The sandbox's process is in that namespace.
    let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_eq!(ino(&netns), ino(std::path::Path::new(&format!("/proc/{pid}/ns/net"))));

    let containers = lab.call_containers();
    let mine: Vec<_> = containers.iter().filter(|c| c.pod_id == pod.id).collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|c| c.running && c.pid.is_some()), "{mine:?}");
    lab.stop_container(&side).unwrap();
    let side = lab.call_containers().into_iter().find(|c| c.id == side).unwrap();
    assert!(!side.running && side.pid.is_none(), "{side:?}");

    lab.stop_pod(&pod).unwrap();
    let listed = lab.call_pods().into_iter().find(|p| p.id == pod.id).unwrap();
    assert!(!listed.ready && listed.netns.is_none() && listed.pid.is_none(), "{listed:?}");
}

/// Until `done`, for up to 10 s (the daemon looks at watched targets every second).
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "waited 10 s for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_pod_fault_follows_its_sandbox_not_its_containers() {
    let lab = Lab::start().unwrap();
    let daemon = Daemon::start_with(&lab.node, &format!("cri_sockets = [\"{}\"]", lab.socket.display())).unwrap();
    let status = daemon.status();
    let cri = &status.scoping["pod (CRI)"];
    assert!(cri.starts_with("containerd ") && cri.ends_with(&format!(" at {}", lab.socket.display())), "{cri}");

    let name = unique("web-");
    let pod = lab.run_pod("shop", &name, &[("app", "web")]).unwrap();
    let side = lab.add_container(&pod, "side", &[]).unwrap();
    lab.add_container(&pod, "metrics", &[]).unwrap();
    let neighbour = lab.run_pod("shop", &unique("db-"), &[]).unwrap();
    let (pod_ns, neighbour_ns) = (lab.pod_ns(&pod).unwrap(), lab.pod_ns(&neighbour).unwrap());
    // A server on the node, at the pods' gateway.
    let server = SocketAddr::new(lab.gateway.into(), 9100);
    let through = |ns: &Netns, n: u32| traffic::udp(ns, None, &lab.node, server, n).unwrap();
    assert_eq!(through(&pod_ns, 50), 50, "the pod reaches the node before any fault");

    let target = format!("shop/{name}");
    daemon.ctl_ok(&["apply", "--name", "web", "--pod", &target, "--partition", "-p", "udp", "--dport", "9100"]);
    assert_eq!(through(&pod_ns, 300), 0);
    assert_eq!(through(&neighbour_ns, 300), 300, "the neighbour pod lost datagrams");
    let list = daemon.ctl_ok(&["list"]);
    assert!(list.contains(&target), "{list}");

    // The workload container stops and is restarted (a new container, the next attempt, as the
    // kubelet does), and another stops: the pod's fault stays. A fault on the stopped
    // container's process ends meanwhile, which shows the daemon looked after the stop.
    let sleep = lab.call_containers().into_iter().find(|c| c.id == pod.containers[0]).unwrap();
    let pid = sleep.pid.expect("the container's pid").to_string();
    daemon.ctl_ok(&["apply", "--name", "canary", "--pid", &pid, "--loss", "1%", "-p", "udp", "--dport", "9199"]);
    lab.stop_container(&sleep.id).unwrap();
    lab.add_container(&pod, "sleep", &["sleep", "3600"]).unwrap();
    lab.stop_container(&side).unwrap();
    until("the canary fault to end", || daemon.faults().iter().all(|f| f.name != "canary"));
    let ended = daemon.history().into_iter().rev().find(|e| e.ended.iter().any(|f| f.name == "canary")).unwrap();
    assert_eq!(ended.ended[0].reason, "its process exited");
    assert_eq!(daemon.faults().iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), vec!["web"]);
    assert_eq!(through(&pod_ns, 300), 0, "the fault no longer acts after a container restart");
    assert_eq!(through(&neighbour_ns, 300), 300);

    // A pod not on the node, named with the runtime that was asked.
    let out = daemon.ctl(&["apply", "--pod", "shop/none", "--loss", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pod: no pod shop/none on this node (asked containerd "), "{stderr}");

    // The sandbox stops: the fault ends, with the pod.
    lab.stop_pod(&pod).unwrap();
    assert_eq!(daemon.ended(), vec![("web".into(), "its pod stopped".into(), 600)]);
    let out = daemon.ctl(&["apply", "--pod", &target, "--loss", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("pod {target} has no running sandbox on this node")), "{stderr}");
    assert_eq!(through(&neighbour_ns, 100), 100);
}

#[test]
fn with_no_cri_socket_answering_a_pod_is_refused_by_name() {
    let node = Netns::new(unique("crid")).unwrap();
    let socket = std::env::temp_dir().join(unique("no-cri-")).join("containerd.sock");
    let config = format!("cri_sockets = [\"{}\"]\nruntime_dirs = []", socket.display());
    let daemon = Daemon::start_with(&node, &config).unwrap();
    let status = daemon.status();
    let cri = &status.scoping["pod (CRI)"];
    assert!(cri.starts_with(&format!("no CRI socket answered (CRI socket {}: connecting:", socket.display())), "{cri}");
    assert!(cri.ends_with("--pod looks in the runtimes' state files instead (runtime_dirs)"), "{cri}");
    let out = daemon.ctl(&["apply", "--pod", "shop/web-0", "--loss", "10"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied with no runtime");
    for expected in [
        "pod: no pod shop/web-0 on this node",
        &format!("no CRI socket answered (CRI socket {}: connecting:", socket.display()),
    ] {
        assert!(stderr.contains(expected), "expected '{expected}' in {stderr}");
    }
    assert!(daemon.faults().is_empty());
}
