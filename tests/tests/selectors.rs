//! Pods chosen the way Kubernetes users name them, on a real containerd with CNI: namespaces
//! and label selectors (flags and NetworkChaos files), modes that pick at random, pods that
//! join a running experiment and pods that go, and schedules that run again, across a daemon
//! killed between runs. Loss is measured at a receiver on the node, per pod.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use chaos_api::api::{Event, ExperimentView, FaultView};
use chaos_tests::{
    Daemon,
    containerd::{Lab, PodHandle},
    traffic, unique,
};

/// Datagrams sent per measurement.
const N: u32 = 4000;
const P: f64 = 0.30;

/// The loss a fault of 30% may show over N datagrams: each is dropped independently with p = 0.3,
/// so the measured rate is binomial(N, p) / N with standard deviation sqrt(p (1 - p) / N) =
/// 0.0072 for N = 4,000. Five of them (±3.6 points) fail a correct program about once in 1.7
/// million measurements, and tell 30% from no loss (or from 15%) at once.
fn bound() -> f64 {
    5.0 * (P * (1.0 - P) / f64::from(N)).sqrt()
}

/// The daemon first: it is dropped (stopped) before the lab takes its namespace away.
struct Node {
    daemon: Daemon,
    lab: Lab,
}

impl Node {
    fn start() -> Self {
        let lab = Lab::start().unwrap();
        let config = format!("cri_sockets = [\"{}\"]\n", lab.socket.display());
        let daemon = Daemon::start_with(&lab.node, &config).unwrap();
        Self { daemon, lab }
    }

    /// The fraction of N datagrams from `pod` to a receiver on the node that did not arrive.
    fn loss(&self, pod: &PodHandle, port: u16) -> f64 {
        let from = self.lab.pod_ns(pod).unwrap();
        let dst = SocketAddr::new(IpAddr::V4(self.lab.gateway), port);
        let received = traffic::udp(&from, None, &self.lab.node, dst, N).unwrap();
        f64::from(N - received) / f64::from(N)
    }

    fn assert_lossy(&self, pod: &PodHandle, port: u16) {
        let loss = self.loss(pod, port);
        assert!(
            (loss - P).abs() <= bound(),
            "{}/{}: measured {:.2}% loss, asked 30% (allowed ±{:.2})",
            pod.namespace,
            pod.name,
            loss * 100.0,
            bound() * 100.0
        );
    }

    fn assert_untouched(&self, pod: &PodHandle, port: u16) {
        assert_eq!(self.loss(pod, port), 0.0, "{}/{} is not selected", pod.namespace, pod.name);
    }

    fn faults(&self) -> Vec<FaultView> {
        self.daemon.faults()
    }

    /// The pods (`NAMESPACE/NAME`) the faults of `experiment` act in.
    fn pods_of(&self, experiment: &str) -> Vec<String> {
        let mut pods: Vec<String> = self
            .faults()
            .into_iter()
            .filter(|f| f.experiment.as_deref() == Some(experiment))
            .filter_map(|f| f.spec.pod)
            .collect();
        pods.sort();
        pods
    }

    fn experiment(&self, name: &str) -> ExperimentView {
        let list: serde_json::Value = self.daemon.ctl_json(&["list"]);
        let all: Vec<ExperimentView> = serde_json::from_value(list["experiments"].clone()).unwrap();
        all.into_iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no experiment {name}: {list}"))
    }

    /// Waits up to `within` for `ok`, polling what the daemon reports.
    fn wait_for<T>(&self, what: &str, within: Duration, mut ok: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = ok() {
                return t;
            }
            assert!(Instant::now() < deadline, "waited {within:?} for {what}:\n{}", self.daemon.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn history(&self) -> Vec<Event> {
        self.daemon.history()
    }
}

fn key(pod: &PodHandle) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

#[test]
fn namespaces_and_labels_select_exactly_the_matching_pods() {
    let node = Node::start();
    let shop = unique("shop");
    let other = unique("other");
    let web = node.lab.run_pod(&shop, "web-0", &[("app", "web"), ("tier", "front")]).unwrap();
    let db = node.lab.run_pod(&shop, "db-0", &[("app", "db"), ("tier", "db")]).unwrap();
    let elsewhere = node.lab.run_pod(&other, "web-0", &[("app", "web")]).unwrap();

    // Flags: kubectl's syntax.
    let out = node.daemon.ctl_ok(&[
        "apply",
        "-e",
        "by-flags",
        "-n",
        &shop,
        "-l",
        "app=web,tier!=db",
        "--loss",
        "30",
        "-p",
        "udp",
    ]);
    assert!(out.contains("web-0"), "{out}");
    assert_eq!(node.pods_of("by-flags"), [key(&web)]);
    node.assert_lossy(&web, 9000);
    node.assert_untouched(&db, 9000);
    node.assert_untouched(&elsewhere, 9000);
    assert_eq!(node.experiment("by-flags").pods, [key(&web)], "chaosctl list shows the pods covered");
    node.daemon.ctl_ok(&["rm", "-e", "by-flags"]);
    node.assert_untouched(&web, 9000);

    // A NetworkChaos file: namespaces and labelSelectors; then expressionSelectors.
    let dir = TempDir::new();
    for (name, selector) in [
        ("by-labels", format!("namespaces: [{shop}]\n    labelSelectors:\n      app: web")),
        (
            "by-expressions",
            format!(
                "namespaces: [{shop}, {other}]\n    expressionSelectors:\n      - {{key: app, operator: In, values: [web]}}\n      - {{key: tier, operator: NotIn, values: [front]}}"
            ),
        ),
    ] {
        let file = dir.0.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata:\n  name: {name}\nspec:\n  action: loss\n  mode: all\n  selector:\n    {selector}\n  loss:\n    loss: '30'\n  duration: 5m\n"
            ),
        )
        .unwrap();
        node.daemon.ctl_ok(&["apply", "-f", &file.to_string_lossy()]);
        let (hit, missed): (Vec<&PodHandle>, Vec<&PodHandle>) = match name {
            "by-labels" => (vec![&web], vec![&db, &elsewhere]),
            // app in (web) and tier notin (front): the other namespace's web, which has no tier.
            _ => (vec![&elsewhere], vec![&web, &db]),
        };
        assert_eq!(node.pods_of(name), hit.iter().map(|p| key(p)).collect::<Vec<_>>(), "{name}");
        for pod in hit {
            node.assert_lossy(pod, 9001);
        }
        for pod in missed {
            node.assert_untouched(pod, 9001);
        }
        node.daemon.ctl_ok(&["rm", "-e", name]);
    }

    // A selector matching nothing is refused, naming it, with nothing applied.
    let out = node.daemon.ctl(&["apply", "-e", "nothing", "-n", &shop, "-l", "app=cache", "--loss", "30"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("app=cache"), "{err}");
    assert!(node.faults().is_empty());
}

#[test]
fn random_modes_pick_as_many_pods_as_asked_and_name_them() {
    let node = Node::start();
    let shop = unique("shop");
    let pods: Vec<PodHandle> =
        (0..3).map(|i| node.lab.run_pod(&shop, &format!("web-{i}"), &[("app", "web")]).unwrap()).collect();
    for (mode, value, expect) in [("one", None, 1), ("fixed-percent", Some("67"), 2), ("fixed", Some("2"), 2)] {
        let name = format!("pick-{mode}");
        let mut args =
            vec!["apply", "-e", &name, "-n", &shop, "-l", "app=web", "--loss", "30", "-p", "udp", "--mode", mode];
        if let Some(v) = value {
            args.extend(["--value", v]);
        }
        let applied: chaos_api::api::Faults = node.daemon.ctl_json(&args);
        let named: Vec<String> = applied.faults.iter().filter_map(|f| f.spec.pod.clone()).collect();
        assert_eq!(named.len(), expect, "{mode}: {named:?}");
        assert_eq!(node.pods_of(&name), named, "{mode}: the answer names the pods picked");
        // The history names them too.
        let event = node.history().into_iter().rev().find(|e| e.experiment.as_deref() == Some(&name)).unwrap();
        for pod in &named {
            assert!(event.result.contains(pod.as_str()), "{mode}: {}", event.result);
        }
        // The picks are the pods hit.
        for pod in &pods {
            match named.contains(&key(pod)) {
                true => node.assert_lossy(pod, 9002),
                false => node.assert_untouched(pod, 9002),
            }
        }
        node.daemon.ctl_ok(&["rm", "-e", &name]);
    }
}

#[test]
fn pods_join_a_running_experiment_and_leave_it_alone() {
    let node = Node::start();
    let shop = unique("shop");
    let first = node.lab.run_pod(&shop, "web-0", &[("app", "web")]).unwrap();
    node.daemon
        .ctl_ok(&["apply", "-e", "live", "-n", &shop, "-l", "app=web", "--loss", "30", "-p", "udp", "--for", "5m"]);
    assert_eq!(node.pods_of("live"), [key(&first)]);

    // A pod that comes to match joins within a second of its sandbox being ready.
    let second = node.lab.run_pod(&shop, "web-1", &[("app", "web")]).unwrap();
    let ready = Instant::now();
    node.wait_for("the new pod to join", Duration::from_secs(10), || {
        node.pods_of("live").contains(&key(&second)).then_some(())
    });
    let joined = ready.elapsed();
    assert!(joined <= Duration::from_secs(1), "joined {joined:?} after it was ready");
    node.assert_lossy(&second, 9003);
    let join = node.history().into_iter().rev().find(|e| e.action.as_str() == "join").unwrap();
    assert_eq!(join.experiment.as_deref(), Some("live"));
    // One that does not match stays out.
    let db = node.lab.run_pod(&shop, "db-0", &[("app", "db")]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node.pods_of("live"), [key(&first), key(&second)]);
    node.assert_untouched(&db, 9003);

    // A pod that goes ends its own faults only, recorded with why.
    let gone: Vec<String> =
        node.faults().into_iter().filter(|f| f.spec.pod.as_deref() == Some(&key(&first))).map(|f| f.name).collect();
    node.lab.remove_pod(&first).unwrap();
    node.wait_for("the gone pod's faults to end", Duration::from_secs(10), || {
        (node.pods_of("live") == [key(&second)]).then_some(())
    });
    let ended: Vec<(String, String)> = node
        .history()
        .into_iter()
        .filter(|e| e.action.as_str() == "end")
        .flat_map(|e| e.ended.into_iter().map(|x| (x.name, x.reason)))
        .collect();
    for name in &gone {
        assert!(ended.contains(&(name.clone(), "its pod stopped".into())), "{name} ended with its pod: {ended:?}");
    }
    node.assert_lossy(&second, 9004);
    node.daemon.ctl_ok(&["rm", "-e", "live"]);
    assert!(node.faults().is_empty());
}

#[test]
fn a_schedule_runs_again_never_overlapping_across_a_daemon_killed_between_runs() {
    let mut node = Node::start();
    let shop = unique("shop");
    let web = node.lab.run_pod(&shop, "web-0", &[("app", "web")]).unwrap();
    let started = Instant::now();
    node.daemon.ctl_ok(&[
        "apply",
        "-e",
        "every",
        "-n",
        &shop,
        "-l",
        "app=web",
        "--loss",
        "30",
        "-p",
        "udp",
        "--for",
        "5s",
        "--schedule",
        "@every 20s",
    ]);
    let mut runs = 0;
    while runs < 3 {
        // A run: its fault active, then measured.
        node.wait_for("a run to start", Duration::from_secs(30), || {
            (node.pods_of("every") == [key(&web)]).then_some(())
        });
        node.assert_lossy(&web, 9005 + runs);
        runs += 1;
        node.wait_for("the run to end", Duration::from_secs(15), || node.pods_of("every").is_empty().then_some(()));
        if runs == 1 {
            // Killed between runs, started again: the schedule goes on.
            node.daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
            node.daemon.restart().unwrap();
            let view = node.experiment("every");
            assert!(view.next_run_ms.is_some(), "{view:?}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(70), "three runs took {:?}", started.elapsed());
    // Never overlapping: each run's fault ended before the next began.
    let history = node.history();
    let mut open = false;
    let mut ran = 0;
    for e in history.iter().filter(|e| e.experiment.as_deref() == Some("every")) {
        match e.action.as_str() {
            "run" => {
                assert!(!open, "a run began while the last one was active: {history:?}");
                open = true;
                ran += 1;
            }
            "expire" | "end" => open = false,
            _ => {}
        }
    }
    assert!(ran >= 3, "{ran} runs recorded");
    let view = node.experiment("every");
    assert!(view.runs >= 3 && view.last_runs.iter().all(|r| r.outcome != "failed"), "{view:?}");
    node.daemon.ctl_ok(&["rm", "-e", "every"]);
    assert!(node.daemon.ctl_ok(&["list"]).contains("no faults"));
}

/// A directory of files for chaosctl, removed at the end.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("selectors-"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_target_selector_is_resolved_to_its_pods_addresses_on_this_node() {
    let node = Node::start();
    let shop = unique("shop");
    let web = node.lab.run_pod(&shop, "web-0", &[("app", "web")]).unwrap();
    let db = node.lab.run_pod(&shop, "db-0", &[("app", "db")]).unwrap();
    let db_ip = node.lab.pod_ip(&db).unwrap();
    let web_ip = node.lab.pod_ip(&web).unwrap();
    let dir = TempDir::new();
    let file = |target: &str| {
        let path = dir.0.join(format!("{target}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata:\n  name: cut-{target}\n  namespace: {shop}\nspec:\n  action: partition\n  mode: all\n  selector:\n    labelSelectors: {{app: web}}\n  direction: both\n  target:\n    mode: all\n    selector:\n      labelSelectors: {{app: {target}}}\n  duration: 5m\n"
            ),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let (web_ns, db_ns) = (node.lab.pod_ns(&web).unwrap(), node.lab.pod_ns(&db).unwrap());
    let udp = |from: &chaos_tests::Netns, to: &chaos_tests::Netns, ip: IpAddr| {
        traffic::udp(from, None, to, SocketAddr::new(ip, 9100), 200).unwrap()
    };
    assert_eq!((udp(&web_ns, &db_ns, db_ip), udp(&db_ns, &web_ns, web_ip)), (200, 200));

    let out = node.daemon.ctl_ok(&["apply", "-f", &file("db")]);
    assert!(out.contains("cut-db.web-0"), "{out}");
    let fault = node.faults().into_iter().find(|f| f.name == "cut-db.web-0").unwrap();
    assert_eq!(fault.spec.dst.as_deref(), Some(db_ip.to_string().as_str()), "the target's address");
    // Cut both ways between web and db; each still reaches the node.
    assert_eq!((udp(&web_ns, &db_ns, db_ip), udp(&db_ns, &web_ns, web_ip)), (0, 0));
    let gateway = IpAddr::V4(node.lab.gateway);
    assert_eq!((udp(&web_ns, &node.lab.node, gateway), udp(&db_ns, &node.lab.node, gateway)), (200, 200));
    node.daemon.ctl_ok(&["rm", "-e", "cut-db"]);
    assert_eq!(udp(&web_ns, &db_ns, db_ip), 200);

    // A target with no pod on this node is refused, saying how to reach pods elsewhere.
    let out = node.daemon.ctl(&["apply", "-f", &file("cache")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("target") && err.contains("externalTargets"), "{err}");
    assert!(node.faults().is_empty());
}
