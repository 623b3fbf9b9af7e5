//! Chaos Mesh NetworkChaos and DNSChaos files applied with the real `chaosctl apply -f`: the
//! examples in `examples/`, as they are, act as Chaos Mesh says they do on the pod they name,
//! found by the daemon through the node's container runtime (a real containerd, through the
//! CRI), and a field chaos-daemon cannot honour is refused by its name with nothing applied.
//!
//! The lab's containerd runs the pod `shop/checkout-0` the examples name, on a CNI bridge in the
//! node's network namespace, where the daemon runs. The examples' external targets are
//! addresses of the node namespace (on its loopback interface): the pod reaches them through its
//! default route, the bridge, as it would reach them through its node. The DNS server the pods
//! ask is a dnsmasq of the node namespace, on the bridge's address (the pods' gateway), as a
//! cluster's DNS service is reached through the node.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use chaos_api::api::FaultView;
use chaos_tests::{
    Daemon, Netns,
    containerd::Lab,
    dns::{Dig, Dnsmasq, Family, Gai, QType, Rcode, Resolver, records},
    kernel, stats, traffic, unique,
};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

fn ip(ip: &str) -> IpAddr {
    ip.parse().unwrap()
}

/// The daemon on a node running the pod the examples name. Field order is drop order: the
/// daemon first (stopped, with its faults), then the lab (its pods, containerd, the node
/// namespace); the files go in `Drop`.
struct Node {
    daemon: Daemon,
    /// The pod's network namespace.
    pod_ns: Netns,
    pod_ip: IpAddr,
    dir: PathBuf,
    lab: Lab,
}

impl Node {
    /// The node, with `addresses` (the examples' targets, and others to compare with) its own,
    /// on its loopback interface.
    fn new(addresses: &[&str]) -> Self {
        let lab = Lab::start().unwrap();
        for a in addresses {
            lab.node.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]).unwrap();
        }
        let pod = lab.run_pod("shop", "checkout-0", &[("app", "checkout")]).unwrap();
        let pod_ns = lab.pod_ns(&pod).unwrap();
        let pod_ip = lab.pod_ip(&pod).unwrap();
        let dir = std::env::temp_dir().join(unique("cdcm"));
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = Daemon::start_with(&lab.node, &format!("cri_sockets = [\"{}\"]\n", lab.socket.display())).unwrap();
        let node = Self { daemon, pod_ns, pod_ip, dir, lab };
        // Each address reachable from the pod, and the pod from each (which resolves the
        // neighbours on both sides before anything is measured).
        for a in addresses {
            assert_eq!(node.sent_to(a, 9998, 50), 50, "the pod reaches {a}");
            assert_eq!(node.received_from(a, 9998, 50), 50, "{a} reaches the pod");
        }
        node
    }

    /// `examples/<name>` as it is (built in, so that the test runs where the source tree is not,
    /// in the VM), written to a file. Returns its path.
    fn example(&self, name: &str) -> PathBuf {
        let text = match name {
            "network-loss.yaml" => include_str!("../../examples/network-loss.yaml"),
            "network-partition.yaml" => include_str!("../../examples/network-partition.yaml"),
            "network-delay.yaml" => include_str!("../../examples/network-delay.yaml"),
            other => panic!("no example {other} built in"),
        };
        assert!(text.contains("        - checkout-0\n"), "{name} names the pod shop/checkout-0");
        self.write(name, text)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn apply(&self, path: &Path) -> std::process::Output {
        self.daemon.ctl(&["apply", "-f", path.to_str().unwrap()])
    }

    /// How many of `count` datagrams from the pod to `target` (an address of the node) arrive.
    fn sent_to(&self, target: &str, port: u16, count: u32) -> u32 {
        traffic::udp(&self.pod_ns, None, &self.lab.node, addr(target, port), count).unwrap()
    }

    /// How many of `count` datagrams from `source` (an address of the node) to the pod arrive.
    fn received_from(&self, source: &str, port: u16, count: u32) -> u32 {
        let dst = SocketAddr::new(self.pod_ip, port);
        traffic::udp(&self.lab.node, Some(ip(source)), &self.pod_ns, dst, count).unwrap()
    }

    /// The faults listed, as `(name, experiment, pod)`.
    fn listed(&self) -> Vec<(String, String, String)> {
        self.daemon
            .faults()
            .into_iter()
            .map(|f: FaultView| (f.name, f.experiment.unwrap_or_default(), f.spec.pod.unwrap_or_default()))
            .collect()
    }

    /// The daemon's faults, and what the kernel holds for them: the programs on the node's
    /// interfaces (a pod's fault acts on the node's end of its veth) and on the pod's, and every
    /// entry of the daemon's maps.
    fn snapshot(&self) -> Snapshot {
        let links = self.lab.node.ip(&["-o", "link", "show"]).unwrap();
        let mut attached = Vec::new();
        for line in links.lines() {
            // "7: veth1c2ee863@if2: <...": the name, without its peer.
            let name = line.split(": ").nth(1).and_then(|n| n.split('@').next()).unwrap();
            attached.push((name.to_owned(), kernel::attached(&self.lab.node, name).unwrap()));
        }
        attached.push(("pod eth0".into(), kernel::attached(&self.pod_ns, "eth0").unwrap()));
        assert!(attached.iter().any(|(_, p)| !p.is_empty()), "a fault in the pod should have attached a program");
        let pid = self.daemon.pid().unwrap().as_raw() as u32;
        Snapshot {
            list: self.daemon.faults(),
            attached,
            maps: kernel::maps_contents(&kernel::maps_of_process(pid).unwrap()).unwrap(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    list: Vec<FaultView>,
    attached: Vec<(String, Vec<u32>)>,
    maps: std::collections::BTreeMap<String, Vec<String>>,
}

/// `(TEMPLATE.POD, experiment, pod)` as listed for the fault of `template` in shop/checkout-0.
fn in_pod(template: &str, experiment: &str) -> (String, String, String) {
    (format!("{template}.checkout-0"), experiment.into(), "shop/checkout-0".into())
}

#[test]
fn loss_example_loses_its_share_of_what_the_pod_sends_to_the_targets() {
    let targets = ["203.0.113.10", "203.0.113.11"];
    let n = Node::new(&targets);
    let out = n.apply(&n.example("network-loss.yaml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let experiment = "flaky-payments-api";
    assert_eq!(
        n.listed(),
        [in_pod("flaky-payments-api-1", experiment), in_pod("flaky-payments-api-2", experiment)],
        "one fault per target, in the pod"
    );
    // `loss: '20'`, independent per packet. Binomial: sd sqrt(0.2 * 0.8 / 20,000) = 0.28 points;
    // five of them (±1.41) fail a correct program about once in 1.7 million runs.
    const N: u32 = 20_000;
    let bound = 5.0 * (0.2f64 * 0.8 / f64::from(N)).sqrt();
    for target in targets {
        let received = n.sent_to(target, 9000, N);
        let rate = f64::from(N - received) / f64::from(N);
        assert!(
            (rate - 0.2).abs() <= bound,
            "to {target}: {:.2}% lost, asked 20% ± {:.2}",
            rate * 100.0,
            bound * 100.0
        );
    }
    // `direction: to`: what the pod receives, from the targets too, is untouched.
    for target in targets {
        assert_eq!(n.received_from(target, 9000, N / 4), N / 4, "from {target}");
    }
    n.daemon.ctl_ok(&["rm", "-e", experiment]);
    assert_eq!(n.listed(), []);
    assert_eq!(n.sent_to(targets[0], 9000, N / 4), N / 4);
}

#[test]
fn partition_example_cuts_the_target_both_ways_and_nothing_else() {
    // An address in the example's subnet 10.20.40.0/24, and one just outside it.
    let (target, other) = ("10.20.40.7", "10.20.41.7");
    let n = Node::new(&[target, other]);
    n.daemon.ctl_ok(&["apply", "-f", n.example("network-partition.yaml").to_str().unwrap()]);
    assert_eq!(n.listed(), [in_pod("cache-partition", "cache-partition")]);
    let gateway = n.lab.gateway.to_string();
    // `direction: both`: nothing from the pod to the target, nothing from the target to the pod.
    assert_eq!(n.sent_to(target, 9001, 300), 0);
    assert_eq!(n.received_from(target, 9001, 300), 0);
    assert!(!traffic::tcp_connects(&n.pod_ns, None, &n.lab.node, addr(target, 9002)).unwrap());
    // Any other address, either way, is untouched: outside the subnet, and the pod's gateway.
    for other in [other, gateway.as_str()] {
        assert_eq!(n.sent_to(other, 9001, 300), 300, "to {other}");
        assert_eq!(n.received_from(other, 9001, 300), 300, "from {other}");
        assert!(traffic::tcp_connects(&n.pod_ns, None, &n.lab.node, addr(other, 9002)).unwrap(), "{other}");
    }
    n.daemon.ctl_ok(&["rm", "-e", "cache-partition"]);
    assert_eq!(n.sent_to(target, 9001, 300), 300);
    assert_eq!(n.received_from(target, 9001, 300), 300);
}

#[test]
fn delay_example_is_read_and_left_to_the_kernel() {
    // An address in the example's subnet 10.20.30.0/24, and one outside it as the baseline.
    let (target, other) = ("10.20.30.7", "10.20.31.7");
    let n = Node::new(&[target, other]);
    let file = n.example("network-delay.yaml");
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
        assert_eq!(n.listed(), []);
        return;
    }
    assert!(out.status.success(), "{stderr}");
    assert_eq!(n.listed(), [in_pod("slow-database", "slow-database")]);
    // 100 ms ± 10 ms (uniform) on what the pod sends to the target; another address as the
    // baseline. The median of a uniform spread is its middle.
    let [delayed, baseline] = traffic::udp_latencies(
        &n.pod_ns,
        &n.lab.node,
        &[addr(target, 9003), addr(other, 9003)],
        Duration::from_millis(5),
        400,
    )
    .unwrap()
    .try_into()
    .unwrap();
    let shift = stats::quantile(&delayed, 0.5) as f64 - stats::quantile(&baseline, 0.5) as f64;
    assert!((95e6..=105e6).contains(&shift), "median shift {}, asked 100 ms", stats::ms(shift));
}

#[test]
fn an_unsupported_field_is_refused_by_name_and_nothing_is_applied() {
    let n = Node::new(&["10.20.40.7"]);
    let text = include_str!("../../examples/network-partition.yaml");
    // A fault of the pod's own, so that the kernel's maps can be compared.
    n.daemon.ctl_ok(&[
        "apply",
        "--name",
        "keep",
        "--pod",
        "shop/checkout-0",
        "--loss",
        "10",
        "-p",
        "udp",
        "--dport",
        "9999",
    ]);
    let before = n.snapshot();
    let pods = "    pods:\n      shop:\n        - checkout-0\n";
    let cases = [
        (
            text.replace(
                "  duration:",
                "  target:\n    mode: all\n    selector:\n      pods:\n        shop: [redis-0]\n  duration:",
            ),
            "spec.externalTargets: does not go with spec.target here",
        ),
        (
            text.replace(pods, &format!("{pods}    nodes: [node-1]\n")),
            "spec.selector.nodes: chaos-daemon acts on the pods of the node it runs on",
        ),
        (text.replace("10.20.40.0/24", "redis.shop.svc"), "spec.externalTargets[0]: 'redis.shop.svc' is a domain name"),
        (text.replace("  direction: both\n", "  direction: both\n  podSelector: {}\n"), "unknown field `podSelector`"),
        (
            text.replace(
                "action: partition",
                "action: netem\n  delay:\n    latency: 10ms\n  corrupt:\n    corrupt: '1'",
            ),
            "spec.corrupt: cannot be combined with the others in one fault here",
        ),
        // Well formed, but no such pod runs on this node.
        (text.replace("- checkout-0", "- redis-0"), "selector: no pod matches (pod shop/redis-0"),
    ];
    for (i, (bad, expected)) in cases.iter().enumerate() {
        assert_ne!(bad, text, "case {i} changes the example");
        let out = n.apply(&n.write(&format!("bad-{i}.yaml"), bad));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was applied");
        assert!(stderr.contains(expected), "case {i}: {stderr}");
        assert!(n.snapshot() == before, "case {i} changed the faults or the maps");
    }
}

/// Names the DNS server has: those `examples/dns-error.yaml` matches (`payments.example.com`,
/// and below `*.example.net`), then others, `example.net` among them (the wildcard does not
/// cover it).
const DNS_NAMES: &[&str] =
    &["payments.example.com", "api.example.net", "a.b.example.net", "example.net", "shop.example.com"];
const DNS_MATCHING: &[&str] = &["payments.example.com", "api.example.net", "a.b.example.net"];
const DNS_OTHER: &[&str] = &["example.net", "shop.example.com"];

/// The address dnsmasq serves for `name` (of [`DNS_NAMES`]).
fn served(server: &Dnsmasq, name: &str, family: Family) -> IpAddr {
    server.records().iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no record {name}")).addr(family)
}

/// `name` resolves in the pod as the server has it: dig, for both families, and glibc.
fn resolves_in(r: &Resolver, server: &Dnsmasq, name: &str) {
    for family in [Family::V4, Family::V6] {
        let want = served(server, name, family);
        assert_eq!(r.dig(name, family.qtype()), Dig::answer([want]), "dig {name} {family:?}");
    }
    assert_eq!(r.getaddrinfo(name, Family::V4), Ok(vec![served(server, name, Family::V4)]), "getaddrinfo {name}");
}

/// examples/dns-error.yaml, as it is: the queries of the pods it selects (namespace shop,
/// app=checkout) for its patterns get SERVFAIL from the fault, other names resolve, and a pod
/// it does not select (app=cart) is untouched; the same document with `action: random` gives
/// addresses that are not the server's, each drawn anew.
#[test]
fn dns_example_answers_the_selected_pods_queries() {
    let n = Node::new(&[]);
    let cart = n.lab.run_pod("shop", "cart-0", &[("app", "cart")]).unwrap();
    let cart_ns = n.lab.pod_ns(&cart).unwrap();
    let cart_ip = n.lab.pod_ip(&cart).unwrap();
    // Started once the bridge exists (with the first pod), on its address. Dropped before the
    // node (a local after `n`).
    let gateway = IpAddr::V4(n.lab.gateway);
    let server = Dnsmasq::start(&n.lab.node, &[gateway], &records(DNS_NAMES)).unwrap();
    let checkout = Resolver::new(&n.pod_ns, gateway).unwrap();
    let other_pod = Resolver::new(&cart_ns, gateway).unwrap();
    for name in DNS_NAMES {
        resolves_in(&checkout, &server, name);
    }

    let text = include_str!("../../examples/dns-error.yaml");
    assert!(text.contains("    labelSelectors:\n      app: checkout\n"), "dns-error.yaml selects app=checkout");
    let experiment = "payments-dns-error";
    let out = n.apply(&n.write("dns-error.yaml", text));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fault = in_pod(experiment, experiment);
    assert_eq!(n.listed(), std::slice::from_ref(&fault), "one fault, in the selected pod only");
    // `duration: '10m'`: the kernel's deadline.
    let deadline = n.daemon.fault(&fault.0).deadline_ns.expect("a deadline");
    let left = deadline.saturating_sub(traffic::mono_ns());
    assert!((590_000_000_000..=600_000_000_000).contains(&left), "deadline in {left} ns, asked 10m");

    let servfail = Dig::error(Rcode::ServFail);
    let before = server.queries();
    for name in DNS_MATCHING {
        assert_eq!(checkout.dig(name, QType::A), servfail, "{name}");
        assert_eq!(checkout.dig(name, QType::Aaaa), servfail, "{name}");
    }
    assert_eq!(checkout.getaddrinfo("payments.example.com", Family::V4), Err(Gai::Again));
    let batch = checkout.batch(DNS_MATCHING, QType::A, 60, Duration::from_millis(500));
    assert_eq!((batch.count(Rcode::ServFail), batch.timeouts, batch.malformed), (60, 0, 0), "{batch:?}");
    for name in DNS_OTHER {
        resolves_in(&checkout, &server, name);
    }
    // The pod the document does not select resolves every name.
    for name in DNS_NAMES {
        resolves_in(&other_pod, &server, name);
    }
    // The fault answered the selected pod's matching queries (6 dig, getaddrinfo's A, 60 in the
    // batch); none reached the server, while each of the other pod's did (dig's A and AAAA,
    // getaddrinfo's A), as did the selected pod's for other names.
    assert_eq!(n.daemon.fault(&fault.0).answered, 6 + 1 + 60);
    let queries = server.queries();
    let from = |name: &str, ip: IpAddr| {
        let count = |qs: &[chaos_tests::dns::LoggedQuery]| qs.iter().filter(|q| q.name == name && q.from == ip).count();
        count(&queries) - count(&before)
    };
    for name in DNS_MATCHING {
        assert_eq!((from(name, n.pod_ip), from(name, cart_ip)), (0, 3), "{name}: {queries:?}");
    }
    for name in DNS_OTHER {
        assert_eq!((from(name, n.pod_ip), from(name, cart_ip)), (3, 3), "{name}: {queries:?}");
    }
    n.daemon.ctl_ok(&["rm", "-e", experiment]);
    assert_eq!(n.listed(), []);
    resolves_in(&checkout, &server, "payments.example.com");

    // `action: random`: A and AAAA answers with an address drawn for each, never the server's.
    let random = text.replace("action: error", "action: random").replace(experiment, "payments-dns-random");
    assert_ne!(random, text);
    n.daemon.ctl_ok(&["apply", "-f", n.write("dns-random.yaml", &random).to_str().unwrap()]);
    let fault = in_pod("payments-dns-random", "payments-dns-random");
    assert_eq!(n.listed(), std::slice::from_ref(&fault));
    let mut seen = Vec::new();
    for name in DNS_MATCHING {
        for family in [Family::V4, Family::V6] {
            for _ in 0..3 {
                let got = checkout.query(name, family.qtype(), Duration::from_secs(1));
                let Dig::Reply { rcode: Rcode::NoError, addresses } = &got else {
                    panic!("{name} {family:?}: {got:?}")
                };
                assert_eq!(addresses.len(), 1, "{name} {family:?}: {got:?}");
                let a = addresses[0];
                assert_eq!(a.is_ipv4(), family == Family::V4, "{name} {family:?}: {got:?}");
                assert_ne!(a, served(&server, name, family), "{name} {family:?}: the server's address");
                seen.push(a);
            }
        }
    }
    // glibc takes them too.
    let got = checkout.getaddrinfo("api.example.net", Family::V4).unwrap();
    assert!(got.len() == 1 && got[0] != served(&server, "api.example.net", Family::V4), "{got:?}");
    // Each answer's address drawn anew: 18 answers, no two alike (32 random bits for IPv4: a
    // repeat among its 9 answers has a chance below 1e-8; far less for IPv6).
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "{seen:?}");
    for name in DNS_OTHER {
        resolves_in(&checkout, &server, name);
    }
    for name in DNS_MATCHING {
        resolves_in(&other_pod, &server, name);
    }
    assert_eq!(n.daemon.fault(&fault.0).answered, 18 + 1);
    n.daemon.ctl_ok(&["rm", "-e", "payments-dns-random"]);
    resolves_in(&checkout, &server, "api.example.net");
}
