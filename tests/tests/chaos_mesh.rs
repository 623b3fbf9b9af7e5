//! Chaos Mesh NetworkChaos files applied with the real `chaosctl apply -f`: the examples in
//! `examples/` (copies with the lab's interface and addresses put in) act as Chaos Mesh says
//! they do, on a pod found by name as on a Kubernetes node, and a field chaos-daemon cannot
//! honour is refused by its name with nothing applied.
//!
//! The lab's host b plays the pod `shop/checkout-0` the examples name: a process in its network
//! namespace and in a container's cgroup, named in the container runtime state the daemon reads
//! when no CRI socket answers (`runtime_dirs`; `cri_sockets` is empty here, so that a runtime on
//! the machine is not asked). The daemon runs on host a, the node, where b's veth ends.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use chaos_tests::{
    Daemon, Lab,
    cgroup::{Cgroup, Resident},
    daemon::Snapshot,
    lab, stats, traffic, unique,
};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// The pod, and the daemon that finds it. Field order is drop order: the daemon first, then
/// the pod's process, its cgroups and the files.
struct Node {
    daemon: Daemon,
    _process: Resident,
    _container: Cgroup,
    _pod: Cgroup,
    dir: PathBuf,
    lab: Lab,
}

impl Node {
    fn new() -> Self {
        let lab = Lab::new().unwrap();
        let dir = std::env::temp_dir().join(unique("cdcm"));
        // A container id of this run (64 hex digits), and its runtime state: containerd's
        // `<dir>/<id>/config.json` with the CRI annotations naming its pod.
        let id = format!("{:0>64}", unique("").replace('x', "f"));
        std::fs::create_dir_all(dir.join("runtime").join(&id)).unwrap();
        let annotations = r#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-name": "checkout-0"}}"#;
        std::fs::write(dir.join("runtime").join(&id).join("config.json"), annotations).unwrap();
        let pod = Cgroup::new("cdcm").unwrap();
        let container = pod.child(&format!("docker-{id}.scope")).unwrap();
        // Its process, in b's namespace and in the container's cgroup.
        let process = Resident::new(&lab.b, Some(&container)).unwrap();
        let config = format!("cri_sockets = []\nruntime_dirs = [\"{}\"]", dir.join("runtime").display());
        let daemon = Daemon::start_with(&lab.a, &config).unwrap();
        Self { daemon, _process: process, _container: container, _pod: pod, dir, lab }
    }

    /// `examples/<name>` with the lab put in: the pod's interface, and each `(example's
    /// address, lab's)`. Returns the copy's path.
    fn example(&self, name: &str, addresses: &[(&str, &str)]) -> PathBuf {
        // Built in, so that the test runs where the source tree is not (in the VM).
        let mut text = match name {
            "network-loss.yaml" => include_str!("../../examples/network-loss.yaml"),
            "network-partition.yaml" => include_str!("../../examples/network-partition.yaml"),
            "network-delay.yaml" => include_str!("../../examples/network-delay.yaml"),
            other => panic!("no example {other} built in"),
        }
        .to_owned();
        assert!(text.contains("device: eth0\n"), "{name} names the pod's interface");
        text = text.replace("device: eth0\n", &format!("device: {}\n", self.lab.b_if));
        for (from, to) in addresses {
            assert!(text.contains(from), "{name} has {from}");
            text = text.replace(from, to);
        }
        self.write(name, &text)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn apply(&self, path: &Path) -> std::process::Output {
        self.daemon.ctl(&["apply", "-f", path.to_str().unwrap()])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The faults listed, as `(name, experiment)`.
fn listed(daemon: &Daemon) -> Vec<(String, String)> {
    let list = daemon.list();
    list["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_owned(), f["experiment"].as_str().unwrap_or("-").to_owned()))
        .collect()
}

#[test]
fn loss_example_loses_its_share_of_what_the_pod_sends_to_the_targets() {
    let n = Node::new();
    let file = n.example("network-loss.yaml", &[("203.0.113.10", lab::A4), ("203.0.113.11", lab::A6)]);
    let out = n.apply(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let experiment = "flaky-payments-api";
    assert_eq!(
        listed(&n.daemon),
        [("flaky-payments-api-1".into(), experiment.into()), ("flaky-payments-api-2".into(), experiment.into())]
    );
    // `loss: '20'`, independent per packet. Binomial: sd sqrt(0.2 * 0.8 / 20,000) = 0.28 points;
    // five of them (±1.41) fail a correct program about once in 1.7 million runs.
    const N: u32 = 20_000;
    let bound = 5.0 * (0.2f64 * 0.8 / f64::from(N)).sqrt();
    for target in [lab::A4, lab::A6] {
        let received = traffic::udp(&n.lab.b, None, &n.lab.a, addr(target, 9000), N).unwrap();
        let rate = f64::from(N - received) / f64::from(N);
        assert!(
            (rate - 0.2).abs() <= bound,
            "to {target}: {:.2}% lost, asked 20% ± {:.2}",
            rate * 100.0,
            bound * 100.0
        );
    }
    // `direction: to`: what the pod receives is untouched.
    assert_eq!(traffic::udp(&n.lab.a, None, &n.lab.b, addr(lab::B4, 9000), N / 4).unwrap(), N / 4);
    n.daemon.ctl_ok(&["rm", "-e", experiment]);
    assert_eq!(traffic::udp(&n.lab.b, None, &n.lab.a, addr(lab::A4, 9000), N / 4).unwrap(), N / 4);
}

#[test]
fn partition_example_cuts_the_target_both_ways_and_nothing_else() {
    let n = Node::new();
    // The example cuts a subnet; here the node's IPv4 address is that subnet, its IPv6 is not.
    let file = n.example("network-partition.yaml", &[("10.20.40.0/24", &format!("{}/32", lab::A4))]);
    n.daemon.ctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(listed(&n.daemon), [("cache-partition".into(), "cache-partition".into())]);
    let (a, b) = (&n.lab.a, &n.lab.b);
    // `direction: both`: nothing from the pod to the target, nothing from the target to the pod.
    assert_eq!(traffic::udp(b, None, a, addr(lab::A4, 9001), 300).unwrap(), 0);
    assert_eq!(traffic::udp(a, None, b, addr(lab::B4, 9001), 300).unwrap(), 0);
    assert!(!traffic::tcp_connects(b, None, a, addr(lab::A4, 9002)).unwrap());
    // Any other address, either way, is untouched.
    assert_eq!(traffic::udp(b, None, a, addr(lab::A6, 9001), 300).unwrap(), 300);
    assert_eq!(traffic::udp(a, None, b, addr(lab::B6, 9001), 300).unwrap(), 300);
    assert!(traffic::tcp_connects(b, None, a, addr(lab::A6, 9002)).unwrap());
    n.daemon.ctl_ok(&["rm", "-e", "cache-partition"]);
    assert_eq!(traffic::udp(b, None, a, addr(lab::A4, 9001), 300).unwrap(), 300);
}

#[test]
fn delay_example_is_read_and_left_to_the_kernel() {
    let n = Node::new();
    let file = n.example("network-delay.yaml", &[("10.20.30.0/24", &format!("{}/32", lab::A4))]);
    let status: serde_json::Value = serde_json::from_str(&n.daemon.ctl_ok(&["status", "-o", "json"])).unwrap();
    let backend = status["delay_backend"].as_str().unwrap().to_owned();
    let out = n.apply(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if backend.starts_with("none") {
        // This kernel has neither fq nor netem: the file was read and mapped, and the daemon
        // refused the delay for the kernel's reason, not the file's.
        assert!(!out.status.success(), "applied without a delay backend");
        assert!(stderr.contains("cannot run here") && stderr.contains("netem"), "{stderr}");
        assert!(!stderr.contains("spec."), "{stderr}");
        assert_eq!(listed(&n.daemon), []);
        return;
    }
    assert!(out.status.success(), "{stderr}");
    // 100 ms ± 10 ms (uniform) on what the pod sends to the target; another address as the
    // baseline. The median of a uniform spread is its middle.
    let [target, other] = traffic::udp_latencies(
        &n.lab.b,
        &n.lab.a,
        &[addr(lab::A4, 9003), addr(lab::A6, 9003)],
        Duration::from_millis(5),
        400,
    )
    .unwrap()
    .try_into()
    .unwrap();
    let shift = stats::quantile(&target, 0.5) as f64 - stats::quantile(&other, 0.5) as f64;
    assert!((95e6..=105e6).contains(&shift), "median shift {}, asked 100 ms", stats::ms(shift));
}

#[test]
fn an_unsupported_field_is_refused_by_name_and_nothing_is_applied() {
    let n = Node::new();
    let partition = n.example("network-partition.yaml", &[("10.20.40.0/24", &format!("{}/32", lab::A4))]);
    let text = std::fs::read_to_string(&partition).unwrap();
    // A fault of the node's own, so that the kernel's maps can be compared.
    n.daemon.ctl_ok(&["apply", "--name", "keep", "-i", &n.lab.a_if, "--loss", "10", "-p", "udp", "--dport", "9999"]);
    let before = Snapshot::of(&n.lab, &n.daemon);
    let cases = [
        (
            text.replace(
                "  duration:",
                "  target:\n    mode: all\n    selector:\n      pods:\n        shop: [redis-0]\n  duration:",
            ),
            "spec.target: a second pod selector is not supported on one node",
        ),
        (
            text.replace(
                "    pods:\n      shop:\n        - checkout-0\n",
                "    labelSelectors:\n      app: checkout\n",
            ),
            "spec.selector.labelSelectors: selects pods through the Kubernetes API server",
        ),
        (
            text.replace(&format!("{}/32", lab::A4), "redis.shop.svc"),
            "spec.externalTargets[0]: 'redis.shop.svc' is a domain name",
        ),
        (text.replace("  direction: both\n", "  direction: both\n  podSelector: {}\n"), "unknown field `podSelector`"),
        (
            text.replace(
                "action: partition",
                "action: netem\n  delay:\n    latency: 10ms\n  corrupt:\n    corrupt: '1'",
            ),
            "spec.corrupt: cannot be combined with the others in one fault here",
        ),
    ];
    for (i, (bad, expected)) in cases.iter().enumerate() {
        let out = n.apply(&n.write(&format!("bad-{i}.yaml"), bad));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was applied");
        assert!(stderr.contains(expected), "case {i}: {stderr}");
        assert!(Snapshot::of(&n.lab, &n.daemon) == before, "case {i} changed the faults or the maps");
    }
}
