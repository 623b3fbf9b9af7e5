use std::path::{Path, PathBuf};

use super::*;
use crate::spec::{Action, Direction, Distribution, Odds, Reorder, Shape};

/// A NetworkChaos document for pod shop/web-0 with `spec` (indented by two spaces) added.
fn doc(spec: &str) -> String {
    format!(
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata:\n  name: exp\nspec:\n  mode: all\n  \
         selector:\n    pods:\n      shop: [web-0]\n{spec}"
    )
}

fn faults(spec: &str) -> Vec<FaultSpec> {
    parse(&doc(spec)).unwrap_or_else(|e| panic!("{e}")).faults
}

fn refused(spec: &str) -> String {
    parse(&doc(spec)).map(|x| format!("accepted: {x:?}")).unwrap_or_else(|e| e.to_string())
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn every_example_parses_and_validates() {
    /// chaosctl's TOML fault file.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FaultFile {
        experiment: Option<String>,
        fault: Vec<FaultSpec>,
    }
    let (mut toml_files, mut yaml_files) = (0, 0);
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let what = path.display();
        assert!(text.starts_with("# "), "{what}: begins with a comment saying what it does");
        let (faults, experiment) = if is_network_chaos(&path, &text) {
            yaml_files += 1;
            let x = parse(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            (x.faults, Some(x.name))
        } else {
            toml_files += 1;
            let file: FaultFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            (file.fault, file.experiment)
        };
        assert!(!faults.is_empty(), "{what}");
        assert!(experiment.is_some(), "{what}: names its experiment");
        for f in &faults {
            f.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    assert!(toml_files >= 4 && yaml_files >= 3, "{toml_files} TOML and {yaml_files} YAML examples");
}

#[test]
fn delay_example_keeps_chaos_mesh_meaning() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/network-delay.yaml");
    let x = parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(x.name, "slow-database");
    assert_eq!(x.notes, Vec::<String>::new());
    let [f] = x.faults.as_slice() else { panic!("{:?}", x.faults) };
    assert_eq!(f.name.as_deref(), Some("slow-database"));
    assert_eq!(f.pod.as_deref(), Some("shop/checkout-0"));
    assert_eq!(f.interface.as_deref(), Some("eth0"));
    let v = f.validate().unwrap();
    // `to`: what the pod sends to the target.
    assert_eq!(v.matches.direction, Direction::Egress);
    assert_eq!(v.matches.dst.unwrap().to_string(), "10.20.30.0/24");
    assert_eq!(v.lifetime, crate::spec::Lifetime::For(Duration::from_secs(600)));
    let Action::Shape(s) = v.action else { panic!("{:?}", v.action) };
    assert_eq!(
        s,
        Shape {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(10),
            correlation: 0.25,
            distribution: Distribution::Uniform,
            rate: None,
            burst: None,
            loss: 0.0,
            reorder: None,
        }
    );
}

#[test]
fn one_fault_per_pod_and_target() {
    let text =
        doc("  action: loss\n  externalTargets: ['10.0.0.1', 'fd00::/64']\n  loss: {loss: '25', correlation: '50'}\n")
            .replace("shop: [web-0]", "shop: [web-0, web-1]");
    let f = parse(&text).unwrap().faults;
    let got: Vec<String> = f
        .iter()
        .map(|f| format!("{} {} {}", f.name.as_ref().unwrap(), f.pod.as_ref().unwrap(), f.dst.as_ref().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            "exp-1 shop/web-0 10.0.0.1",
            "exp-2 shop/web-0 fd00::/64",
            "exp-3 shop/web-1 10.0.0.1",
            "exp-4 shop/web-1 fd00::/64"
        ]
    );
    assert_eq!(f[0].validate().unwrap().action, Action::Loss(Odds::Random { p: 0.25, correlation: 0.5 }));
}

#[test]
fn partition_directions() {
    let dir = |d: &str| {
        let f = faults(&format!("  action: partition\n  direction: {d}\n  externalTargets: [10.1.0.0/16]\n"));
        let v = f[0].validate().unwrap();
        (v.matches.direction, v.matches.src.map(|c| c.to_string()), v.matches.dst.map(|c| c.to_string()))
    };
    let net = Some("10.1.0.0/16".to_owned());
    assert_eq!(dir("to"), (Direction::Egress, None, net.clone()));
    // `from`: the target's packets to the pod.
    assert_eq!(dir("from"), (Direction::Ingress, net.clone(), None));
    // `both`: to it, and its replies (the daemon mirrors the addresses for the ingress side).
    assert_eq!(dir("both"), (Direction::Both, None, net));
}

#[test]
fn netem_and_reorder() {
    let f = faults(
        "  action: netem\n  delay:\n    latency: 1.5ms\n    reorder: {reorder: '25', correlation: '0', gap: 5}\n  \
         loss: {loss: '2'}\n",
    );
    let Action::Shape(s) = f[0].validate().unwrap().action else { panic!() };
    assert_eq!((s.delay, s.loss), (Duration::from_micros(1500), 0.02));
    assert_eq!(s.reorder, Some(Reorder { p: 0.25, correlation: 0.0, gap: 5 }));
    // Chaos Mesh's defaults (jitter 0ms, correlation 0, gap 0) are no jitter, no correlation, gap 1.
    let f = faults(
        "  action: delay\n  delay: {latency: 10ms, jitter: 0ms, correlation: '0', reorder: {reorder: '5', gap: 0}}\n",
    );
    let Action::Shape(s) = f[0].validate().unwrap().action else { panic!() };
    assert_eq!((s.jitter, s.correlation, s.reorder.unwrap().gap), (Duration::ZERO, 0.0, 1));
    // One netem setting alone is that action.
    let f = faults("  action: netem\n  duplicate: {duplicate: '5'}\n");
    assert_eq!(f[0].validate().unwrap().action, Action::Duplicate(Odds::random(0.05)));
}

#[test]
fn bandwidth_uses_tc_units_and_notes_the_limit() {
    let x = parse(&doc("  action: bandwidth\n  bandwidth: {rate: 1mbps, limit: 20971520, buffer: 10000}\n")).unwrap();
    let Action::Shape(s) = x.faults[0].validate().unwrap().action else { panic!() };
    // `mbps` is megabytes per second, as in tc.
    assert_eq!((s.rate, s.burst), (Some(8_000_000), Some(10_000)));
    assert_eq!(x.notes.len(), 1);
    assert!(x.notes[0].starts_with("spec.bandwidth.limit: 20971520 bytes not used"), "{}", x.notes[0]);
    let f = faults("  action: bandwidth\n  bandwidth: {rate: 10mbit, buffer: 32000}\n");
    let Action::Shape(s) = f[0].validate().unwrap().action else { panic!() };
    assert_eq!(s.rate, Some(10_000_000));
}

#[test]
fn without_a_selector_it_acts_on_this_host() {
    let text = "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata: {name: host}\nspec:\n  \
                action: loss\n  device: ens3\n  loss: {loss: '10'}\n";
    let x = parse(text).unwrap();
    assert_eq!((x.faults[0].pod.as_deref(), x.faults[0].interface.as_deref()), (None, Some("ens3")));
    let e = parse(&text.replace("  device: ens3\n", "")).unwrap_err().to_string();
    assert!(e.starts_with("spec.device: is required without spec.selector"), "{e}");
}

#[test]
fn several_documents_are_one_experiment() {
    let first = doc("  action: loss\n  loss: {loss: '5'}\n");
    let second = doc("  action: partition\n  externalTargets: [10.9.0.1]\n").replace("name: exp", "name: cut");
    let x = parse(&format!("---\n{first}---\n{second}---\n")).unwrap();
    assert_eq!(x.name, "exp");
    let names: Vec<_> = x.faults.iter().map(|f| f.name.clone().unwrap()).collect();
    assert_eq!(names, ["exp", "cut"]);
    let e = parse(&format!("{first}---\n{}", second.replace("partition", "jam"))).unwrap_err().to_string();
    assert!(e.starts_with("document 2: spec.action: 'jam' is not a NetworkChaos action"), "{e}");
    let e = parse(&format!("{first}---\n{first}")).unwrap_err().to_string();
    assert_eq!(e, "document 2: metadata.name: 'exp' names another document too");
}

#[test]
fn refusals_name_the_field_by_its_path() {
    let cases = [
        (
            "  action: loss\n  loss: {loss: '5'}\n  target: {mode: all, selector: {pods: {db: [db-0]}}}\n",
            "spec.target: ",
        ),
        ("  action: loss\n  loss: {loss: '5'}\n  targetDevice: eth1\n", "spec.targetDevice: "),
        ("  action: loss\n  loss: {loss: '5'}\n  remoteCluster: east\n", "spec.remoteCluster: "),
        ("  action: loss\n  loss: {loss: '5'}\n  bogus: 1\n", "spec: unknown field `bogus`"),
        ("  action: loss\n  loss: {loss: '5', foo: '1'}\n", "spec.loss: unknown field `foo`"),
        ("  action: loss\n  loss: {loss: '5%'}\n", "spec.loss.loss: '5%' is not a number"),
        ("  action: loss\n  loss: {loss: '150'}\n", "spec.loss.loss: 150% is outside 0-100%"),
        ("  action: loss\n", "spec.loss: is required for action 'loss'"),
        (
            "  action: loss\n  loss: {loss: '5'}\n  delay: {latency: 10ms}\n",
            "spec.delay: does not go with action 'loss' (Chaos Mesh would apply it too)",
        ),
        (
            "  action: partition\n  loss: {loss: '5'}\n  externalTargets: [10.0.0.1]\n",
            "spec.loss: does not go with action 'partition'",
        ),
        (
            "  action: netem\n  delay: {latency: 10ms}\n  duplicate: {duplicate: '5'}\n",
            "spec.duplicate: cannot be combined",
        ),
        ("  action: netem\n", "spec.action: 'netem' needs at least one"),
        (
            "  action: netem\n  delay: {latency: 10ms}\n  loss: {loss: '1', correlation: '25'}\n",
            "spec.loss.correlation: ",
        ),
        ("  action: explode\n", "spec.action: 'explode' is not a NetworkChaos action"),
        ("  action: delay\n  delay: {latency: 10xs}\n", "spec.delay.latency: '10xs' is not a duration"),
        ("  action: delay\n  delay: {latency: 20s}\n", "spec.delay.latency: 20s is more than the largest accepted"),
        (
            "  action: delay\n  delay: {latency: 10ms, correlation: '100'}\n",
            "spec.delay.correlation: has no effect without jitter",
        ),
        ("  action: delay\n  delay: {latency: 10ms, reorder: {reorder: '5', gap: -1}}\n", "spec.delay.reorder.gap: "),
        (
            "  action: delay\n  delay: {latency: 10ms}\n  direction: from\n",
            "spec.direction: 'from' with action 'delay' needs spec.target",
        ),
        (
            "  action: delay\n  delay: {latency: 10ms}\n  direction: sideways\n",
            "spec.direction: 'sideways' is not a direction",
        ),
        ("  action: bandwidth\n  bandwidth: {rate: 1mbps, buffer: 1, peakrate: 100}\n", "spec.bandwidth.peakrate: "),
        ("  action: bandwidth\n  bandwidth: {rate: fast, buffer: 1}\n", "spec.bandwidth.rate: 'fast' is not a rate"),
        ("  action: partition\n", "spec.externalTargets: is required for a partition"),
        (
            "  action: partition\n  externalTargets: [www.example.com]\n",
            "spec.externalTargets[0]: 'www.example.com' is a domain name",
        ),
        (
            "  action: partition\n  externalTargets: [10.0.0.1, 10.0.0.1/8]\n",
            "spec.externalTargets[1]: '10.0.0.1/8' has host bits set",
        ),
        ("  action: loss\n  loss: {loss: '5'}\n  duration: 1d\n", "spec.duration: '1d' is not a duration"),
        ("  action: loss\n  loss: {loss: '5'}\n  device: a/b\n", "spec.device: 'a/b' is not an interface name"),
    ];
    for (spec, expected) in cases {
        let e = refused(spec);
        assert!(e.starts_with(expected), "{spec}: {e}");
    }
}

#[test]
fn selectors_a_node_cannot_check_are_refused() {
    let loss = doc("  action: loss\n  loss: {loss: '5'}\n");
    for (selector, expected) in [
        (
            "    namespaces: [shop]\n    pods: {shop: [web-0]}\n",
            "spec.selector.namespaces: selects pods through the Kubernetes API server",
        ),
        ("    labelSelectors: {app: web}\n", "spec.selector.labelSelectors: "),
        ("    expressionSelectors: [{key: app, operator: In, values: [web]}]\n", "spec.selector.expressionSelectors: "),
        ("    nodes: [node-1]\n", "spec.selector.nodes: "),
        ("    pods: {}\n", "spec.selector.pods: names no pod"),
        ("    pods: {Shop: [web-0]}\n", "spec.selector.pods: 'Shop/web-0' is not NAMESPACE/NAME"),
    ] {
        let e = parse(&loss.replace("    pods:\n      shop: [web-0]\n", selector)).unwrap_err().to_string();
        assert!(e.starts_with(expected), "{selector}: {e}");
    }
    for (mode, pods, expected) in [
        ("mode: one", "shop: [a, b]", "spec.mode: 'one' picks one of the 2 pods at random"),
        ("mode: fixed", "shop: [web-0]", "spec.mode: 'fixed' picks pods at random"),
        ("mode: all\n  value: '1'", "shop: [web-0]", "spec.value: "),
    ] {
        let e = parse(&loss.replace("mode: all", mode).replace("shop: [web-0]", pods)).unwrap_err().to_string();
        assert!(e.starts_with(expected), "{mode}: {e}");
    }
    // `one` of one pod is that pod.
    assert_eq!(parse(&loss.replace("mode: all", "mode: one")).unwrap().faults.len(), 1);
}

#[test]
fn wrong_kinds_and_broken_files() {
    let text = doc("  action: pod-kill\n").replace("NetworkChaos", "PodChaos");
    assert_eq!(parse(&text).unwrap_err().to_string(), "kind: 'PodChaos' is not read here: only NetworkChaos is");
    let text = doc("  action: loss\n").replace("chaos-mesh.org/v1alpha1", "v1");
    assert_eq!(parse(&text).unwrap_err().to_string(), "apiVersion: 'v1' is not chaos-mesh.org/v1alpha1");
    assert!(matches!(parse("spec: [unclosed\n"), Err(Error::Yaml(_))));
    assert_eq!(parse("# nothing\n").unwrap_err().to_string(), "no NetworkChaos document in the file");
}

#[test]
fn go_durations() {
    let d = |t: &str| go_duration("x", t).map_err(|e| e.to_string());
    assert_eq!(d("300ms"), Ok(Duration::from_millis(300)));
    assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
    assert_eq!(d("2h45m"), Ok(Duration::from_secs(9900)));
    assert_eq!(d("250us"), Ok(Duration::from_micros(250)));
    assert_eq!(d("1µs500ns"), Ok(Duration::from_nanos(1500)));
    assert_eq!(d("0"), Ok(Duration::ZERO));
    for bad in ["", "10", "-1s", "1d", "ms", "1.2.3s"] {
        assert!(d(bad).is_err(), "{bad}");
    }
    assert_eq!(text(Duration::from_secs(600)), "600s");
    assert_eq!(text(Duration::from_micros(1500)), "1500us");
    assert_eq!(text(Duration::from_millis(1500)), "1500ms");
}

#[test]
fn format_by_extension_or_content() {
    assert!(is_network_chaos(Path::new("x.yaml"), ""));
    assert!(is_network_chaos(Path::new("x.yml"), ""));
    assert!(is_network_chaos(Path::new("x"), "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\n"));
    assert!(!is_network_chaos(Path::new("x.toml"), "[[fault]]\ninterface = \"eth0\"\n"));
}
