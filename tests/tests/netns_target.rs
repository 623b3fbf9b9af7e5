//! Faults on another network namespace (a container's), named by its path or by a process in
//! it: the daemon acts on the host side of its veth, directions as seen from inside, and the
//! neighbour container on the same node is untouched.
//!
//! The lab is a node namespace (where the daemon runs, forwarding between its veths) with two
//! "pods" and a server, each behind a veth whose pod end is called eth0.

use std::net::{IpAddr, SocketAddr};

use chaos_tests::{Daemon, Netns, cgroup::Resident, traffic, unique};

const SERVER: &str = "10.210.9.2";

fn pod_ip(i: usize) -> String {
    format!("10.210.{i}.2")
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// The node, and behind it pods 1 and 2 and the server (subnet 9). Field order is drop order:
/// the namespaces go last, taking the veths with them.
struct Node {
    /// The host side of each pod's veth, by pod number (index 0 unused).
    host_if: Vec<String>,
    node: Netns,
    pods: Vec<Netns>,
    server: Netns,
}

impl Node {
    fn new() -> Self {
        let node = Netns::new(unique("cdn")).unwrap();
        let pods = vec![Netns::new(unique("cdp")).unwrap(), Netns::new(unique("cdp")).unwrap()];
        let server = Netns::new(unique("cds")).unwrap();
        let mut host_if = vec![String::new()];
        for (i, ns) in [(1, &pods[0]), (2, &pods[1]), (9, &server)] {
            let host = unique("vh");
            chaos_tests::run(
                "ip",
                &["link", "add", &host, "netns", &node.name, "type", "veth", "peer", "name", "eth0", "netns", &ns.name],
            )
            .unwrap();
            node.ip(&["addr", "add", &format!("10.210.{i}.1/24"), "dev", &host]).unwrap();
            node.ip(&["link", "set", &host, "up"]).unwrap();
            ns.ip(&["addr", "add", &format!("10.210.{i}.2/24"), "dev", "eth0"]).unwrap();
            ns.ip(&["link", "set", "eth0", "up"]).unwrap();
            ns.ip(&["route", "add", "default", "via", &format!("10.210.{i}.1")]).unwrap();
            if i != 9 {
                host_if.push(host);
            }
        }
        chaos_tests::run("ip", &["netns", "exec", &node.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
        let n = Self { host_if, node, pods, server };
        // Neighbours resolved before anything is measured.
        for pod in &n.pods {
            traffic::udp(pod, None, &n.server, addr(SERVER, 9999), 20).unwrap();
        }
        n
    }

    fn pod(&self, i: usize) -> &Netns {
        &self.pods[i - 1]
    }

    fn netns_path(&self, i: usize) -> String {
        format!("/run/netns/{}", self.pod(i).name)
    }
}

const N: u32 = 20_000;

#[test]
fn loss_on_a_pod_leaves_its_neighbour_alone() {
    let n = Node::new();
    let daemon = Daemon::start(&n.node).unwrap();
    let netns = n.netns_path(1);
    daemon.ctl_ok(&["apply", "--name", "lossy", "--netns", &netns, "--loss", "30%", "-p", "udp", "--dport", "9000"]);

    let received = traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9000), N).unwrap();
    let rate = f64::from(N - received) / f64::from(N);
    // Binomial: sd sqrt(0.3 * 0.7 / 20,000) = 0.32 points; five of them (±1.62) fail a correct
    // program about once in 1.7 million runs.
    let bound = 5.0 * (0.3f64 * 0.7 / f64::from(N)).sqrt();
    assert!((rate - 0.3).abs() <= bound, "pod 1: {:.2}% lost, asked 30% ± {:.2}", rate * 100.0, bound * 100.0);
    assert_eq!(traffic::udp(n.pod(2), None, &n.server, addr(SERVER, 9000), N / 4).unwrap(), N / 4, "pod 2 lost");
    // The pod's egress is what arrives on the host side of its veth.
    let status: serde_json::Value = serde_json::from_str(&daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
    let hooks: Vec<(String, String)> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["interface"].as_str().unwrap().to_owned(), a["hook"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(hooks, vec![(n.host_if[1].clone(), "ingress".to_owned())]);
    // Listed as written, with the namespace.
    let list = daemon.ctl_ok(&["list"]);
    assert!(list.contains(&format!("eth0@{netns}")), "{list}");
    let fault = &daemon.list()["faults"][0];
    assert_eq!(fault["dropped"], u64::from(N - received), "{fault}");
}

#[test]
fn a_process_names_its_namespace_and_directions_are_the_pods() {
    let n = Node::new();
    let daemon = Daemon::start(&n.node).unwrap();
    let sleeper = Resident::new(n.pod(1), None).unwrap();
    let pid = sleeper.pid();
    let pid = pid.to_string();
    // Ingress, seen from the pod: what it receives.
    daemon.ctl_ok(&["apply", "--pid", &pid, "--partition", "-d", "ingress", "-p", "udp", "--dport", "9001"]);
    assert_eq!(traffic::udp(&n.server, None, n.pod(1), addr(&pod_ip(1), 9001), 2_000).unwrap(), 0);
    assert_eq!(traffic::udp(&n.server, None, n.pod(2), addr(&pod_ip(2), 9001), 2_000).unwrap(), 2_000);
    assert_eq!(traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9001), 2_000).unwrap(), 2_000);
    daemon.ctl_ok(&["clear"]);

    // Both, seen from the pod: its packets to the server and the server's to it.
    let server_net = "10.210.9.0/24";
    daemon.ctl_ok(&["apply", "--pid", &pid, "--partition", "-d", "both", "--dst", server_net, "-p", "udp"]);
    assert_eq!(traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9002), 2_000).unwrap(), 0);
    assert_eq!(traffic::udp(&n.server, None, n.pod(1), addr(&pod_ip(1), 9002), 2_000).unwrap(), 0);
    assert_eq!(traffic::udp(n.pod(2), None, &n.server, addr(SERVER, 9002), 2_000).unwrap(), 2_000);
    assert_eq!(traffic::udp(&n.server, None, n.pod(2), addr(&pod_ip(2), 9002), 2_000).unwrap(), 2_000);
}

#[test]
fn namespaces_it_cannot_reach_are_refused_by_name() {
    let n = Node::new();
    let daemon = Daemon::start(&n.node).unwrap();
    let missing = format!("/run/netns/{}", unique("none"));
    let server = format!("/run/netns/{}", n.server.name);
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["--netns", &missing], format!("netns: {missing}: No such file or directory")),
        (vec!["--pid", "99999999999"], "pid: 99999999999 is not a process id".into()),
        (vec!["--pid", "4000000"], "pid: /proc/4000000/ns/net: no such process".into()),
        (vec!["--netns", &server, "-i", "lo"], format!("netns: lo in {server} is not a veth")),
        (vec!["--netns", &server, "-i", "eth9"], format!("netns: no interface 'eth9' in {server}")),
        (vec!["--netns", "run/netns/x"], "netns: 'run/netns/x' is not an absolute path".into()),
    ];
    for (target, expected) in cases {
        let mut args = vec!["apply", "--loss", "10"];
        args.extend(target);
        let out = daemon.ctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&expected), "{args:?}: expected '{expected}' in {stderr}");
    }
    assert_eq!(daemon.list()["faults"].as_array().unwrap().len(), 0);
    // The daemon's own namespace by path: its interfaces as named, not turned round.
    let own = format!("/run/netns/{}", n.node.name);
    daemon.ctl_ok(&["apply", "--netns", &own, "-i", &n.host_if[2], "--partition", "-p", "udp", "--dport", "9003"]);
    assert_eq!(traffic::udp(&n.server, None, n.pod(2), addr(&pod_ip(2), 9003), 500).unwrap(), 0);
    assert_eq!(traffic::udp(n.pod(2), None, &n.server, addr(SERVER, 9003), 500).unwrap(), 500);
}

/// No program left on any of the node's interfaces.
fn nothing_attached(daemon: &Daemon) {
    daemon.detached();
}

#[test]
fn a_fault_ends_with_its_target() {
    let mut n = Node::new();
    let daemon = Daemon::start(&n.node).unwrap();

    // A process: when it exits, its fault ends, with its counters.
    let sleeper = Resident::new(n.pod(1), None).unwrap();
    let pid = sleeper.pid();
    let pid = pid.to_string();
    daemon.ctl_ok(&["apply", "--name", "by-pid", "--pid", &pid, "--partition", "-p", "udp", "--dport", "9004"]);
    assert_eq!(traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9004), 300).unwrap(), 0);
    drop(sleeper);
    assert_eq!(daemon.ended(), vec![("by-pid".into(), "its process exited".into(), 300)]);
    nothing_attached(&daemon);

    // A namespace, deleted: its fault ends too.
    let netns = n.netns_path(2);
    daemon.ctl_ok(&["apply", "--name", "by-netns", "--netns", &netns, "--partition", "-p", "udp", "--dport", "9005"]);
    assert_eq!(traffic::udp(n.pod(2), None, &n.server, addr(SERVER, 9005), 200).unwrap(), 0);
    drop(n.pods.remove(1));
    assert_eq!(daemon.ended(), vec![("by-netns".into(), "its network namespace is gone".into(), 200)]);
    nothing_attached(&daemon);

    // An interface of the node, deleted.
    let host = n.host_if[1].clone();
    // (On the host side, a pod's packets arrive: ingress.)
    daemon.ctl_ok(&[
        "apply",
        "--name",
        "by-if",
        "-i",
        &host,
        "--partition",
        "-d",
        "ingress",
        "-p",
        "udp",
        "--dport",
        "9006",
    ]);
    assert_eq!(traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9006), 100).unwrap(), 0);
    n.node.ip(&["link", "del", &host]).unwrap();
    assert_eq!(daemon.ended(), vec![("by-if".into(), "its interface is gone".into(), 100)]);
    nothing_attached(&daemon);
}

#[test]
fn faults_watching_one_process_end_each_with_its_own_reason() {
    let n = Node::new();
    let daemon = Daemon::start(&n.node).unwrap();
    let sleeper = Resident::new(n.pod(1), None).unwrap();
    let pid = sleeper.pid().to_string();
    // One path, /proc/PID/ns/net, watched for two ends: the process's and its namespace's.
    let netns = format!("/proc/{pid}/ns/net");
    daemon.ctl_ok(&["apply", "--name", "a-netns", "--netns", &netns, "--partition", "-p", "udp", "--dport", "9007"]);
    daemon.ctl_ok(&["apply", "--name", "b-pid", "--pid", &pid, "--partition", "-p", "udp", "--dport", "9008"]);
    drop(sleeper);
    let mut ended = daemon.ended();
    ended.sort();
    assert_eq!(
        ended,
        vec![
            ("a-netns".into(), "its network namespace is gone".into(), 0),
            ("b-pid".into(), "its process exited".into(), 0)
        ]
    );
    nothing_attached(&daemon);
}

/// A cgroup made for a fake container (`docker-<id>.scope`, as Docker's systemd driver names
/// them) under the host's cgroup2 mount, removed on drop (its processes are gone by then).
struct ContainerCgroup {
    dirs: Vec<std::path::PathBuf>,
}

impl ContainerCgroup {
    fn new(id: &str, pid: u32) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                right.starts_with("cgroup2 ").then(|| left.split(' ').nth(4).unwrap().to_owned())
            })
            .expect("a cgroup2 mount");
        let parent = std::path::Path::new(&mount).join(unique("cdtest"));
        let leaf = parent.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string()).unwrap();
        Self { dirs: vec![leaf, parent] }
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn a_container_is_found_by_its_id() {
    let n = Node::new();
    let daemon = Daemon::start(&n.node).unwrap();
    let sleeper = Resident::new(n.pod(1), None).unwrap();
    let pid = sleeper.pid();
    let id = "c0ffee00d15ea5e5000000000000000000000000000000000000000000000001";
    let cgroup = ContainerCgroup::new(id, pid);
    // By a prefix, as `crictl ps` shows ids.
    daemon.ctl_ok(&["apply", "--name", "ctr", "--container", &id[..13], "--partition", "-p", "udp", "--dport", "9007"]);
    assert_eq!(traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9007), 300).unwrap(), 0);
    assert_eq!(traffic::udp(n.pod(2), None, &n.server, addr(SERVER, 9007), 300).unwrap(), 300);
    let list = daemon.ctl_ok(&["list"]);
    assert!(list.contains(&format!("eth0@{}", &id[..12])), "{list}");
    let out = daemon.ctl(&["apply", "--container", "c0ffee00d15ea5e5ff", "--loss", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running container has an id starting with"));
    // The container stops: its fault ends.
    drop(sleeper);
    assert_eq!(daemon.ended(), vec![("ctr".into(), "its container stopped".into(), 300)]);
    drop(cgroup);
}

/// Pods are found through the CRI (tests/tests/pods.rs, with a real containerd). With no CRI
/// socket answering, the daemon falls back on the runtimes' state: the OCI spec each container
/// has, with the CRI's annotations naming its pod, as containerd keeps them. What only fake
/// state can show here: the pod's sandbox is the one followed, not another of its containers.
#[test]
fn without_a_cri_socket_a_pod_is_found_in_the_runtimes_state() {
    let n = Node::new();
    let runtime = TempDir(std::env::temp_dir().join(unique("cdrt")));
    let runtime = &runtime.0;
    let sandbox = "c0ffee00d15ea5e5000000000000000000000000000000000000000000000002";
    let workload = "c0ffee00d15ea5e5000000000000000000000000000000000000000000000003";
    for (id, kind) in [(sandbox, "sandbox"), (workload, "container")] {
        std::fs::create_dir_all(runtime.join(id)).unwrap();
        let spec = serde_json::json!({"annotations": {
            "io.kubernetes.cri.container-type": kind,
            "io.kubernetes.cri.sandbox-name": "web-0",
            "io.kubernetes.cri.sandbox-namespace": "shop",
        }});
        std::fs::write(runtime.join(id).join("config.json"), spec.to_string()).unwrap();
    }
    let no_cri = runtime.join("containerd.sock");
    let config = format!("cri_sockets = [\"{}\"]\nruntime_dirs = [\"{}\"]", no_cri.display(), runtime.display());
    let daemon = Daemon::start_with(&n.node, &config).unwrap();
    // The sandbox's process in pod 1's namespace; the workload container's, were it followed,
    // in pod 2's.
    let sleeper = Resident::new(n.pod(1), None).unwrap();
    let cgroup = ContainerCgroup::new(sandbox, sleeper.pid());
    let other = Resident::new(n.pod(2), None).unwrap();
    let other_cgroup = ContainerCgroup::new(workload, other.pid());

    daemon.ctl_ok(&["apply", "--name", "web", "--pod", "shop/web-0", "--partition", "-p", "udp", "--dport", "9008"]);
    assert_eq!(traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9008), 300).unwrap(), 0);
    assert_eq!(traffic::udp(n.pod(2), None, &n.server, addr(SERVER, 9008), 300).unwrap(), 300);
    let out = daemon.ctl(&["apply", "--pod", "shop/web-1", "--loss", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pod: no pod shop/web-1 on this node"), "{stderr}");
    assert!(stderr.contains("no CRI socket answered"), "{stderr}");
    // The workload container stops: the pod's fault stays; its sandbox stops: it ends.
    drop(other);
    assert_eq!(traffic::udp(n.pod(1), None, &n.server, addr(SERVER, 9008), 300).unwrap(), 0);
    drop(sleeper);
    assert_eq!(daemon.ended(), vec![("web".into(), "its pod stopped".into(), 600)]);
    drop((cgroup, other_cgroup));
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
