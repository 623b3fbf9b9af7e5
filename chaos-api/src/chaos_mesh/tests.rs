use std::path::{Path, PathBuf};

use super::{faults::validate_template, *};
use crate::select::ExpressionSpec;
use crate::spec::{Action, Direction, Distribution, Dns, DnsReply, Domain, Odds, QTypes, Rcode, Reorder, Shape};

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
        let (faults, experiment, templates) = if is_network_chaos(&path, &text) {
            yaml_files += 1;
            let x = parse(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            (x.faults, Some(x.name), x.selector.is_some())
        } else {
            toml_files += 1;
            let file: FaultFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            (file.fault, file.experiment, false)
        };
        assert!(!faults.is_empty(), "{what}");
        assert!(experiment.is_some(), "{what}: names its experiment");
        for f in &faults {
            let checked = if templates { validate_template(f) } else { f.validate() };
            checked.unwrap_or_else(|e| panic!("{what}: {e}"));
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
    // A template, applied in each pod the selector takes.
    assert_eq!(f.pod, None);
    let pods = x.selector.as_ref().map(|s| s.pods.clone());
    assert_eq!(pods, Some([("shop".to_owned(), vec!["checkout-0".to_owned()])].into()));
    assert_eq!(f.interface.as_deref(), Some("eth0"));
    let v = validate_template(f).unwrap();
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
fn one_template_per_external_target() {
    let text =
        doc("  action: loss\n  externalTargets: ['10.0.0.1', 'fd00::/64']\n  loss: {loss: '25', correlation: '50'}\n")
            .replace("shop: [web-0]", "shop: [web-0, web-1]");
    let x = parse(&text).unwrap();
    let got: Vec<String> = x
        .faults
        .iter()
        .map(|f| format!("{} {:?} {}", f.name.as_ref().unwrap(), f.pod, f.dst.as_ref().unwrap()))
        .collect();
    assert_eq!(got, ["exp-1 None 10.0.0.1", "exp-2 None fd00::/64"]);
    let pods = x.selector.unwrap().pods;
    assert_eq!(pods, [("shop".to_owned(), vec!["web-0".to_owned(), "web-1".to_owned()])].into());
    assert_eq!(
        validate_template(&x.faults[0]).unwrap().action,
        Action::Loss(Odds::Random { p: 0.25, correlation: 0.5 })
    );
}

#[test]
fn partition_directions() {
    let dir = |d: &str| {
        let f = faults(&format!("  action: partition\n  direction: {d}\n  externalTargets: [10.1.0.0/16]\n"));
        let v = validate_template(&f[0]).unwrap();
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
    let Action::Shape(s) = validate_template(&f[0]).unwrap().action else { panic!() };
    assert_eq!((s.delay, s.loss), (Duration::from_micros(1500), 0.02));
    assert_eq!(s.reorder, Some(Reorder { p: 0.25, correlation: 0.0, gap: 5 }));
    // Chaos Mesh's defaults (jitter 0ms, correlation 0, gap 0) are no jitter, no correlation, gap 1.
    let f = faults(
        "  action: delay\n  delay: {latency: 10ms, jitter: 0ms, correlation: '0', reorder: {reorder: '5', gap: 0}}\n",
    );
    let Action::Shape(s) = validate_template(&f[0]).unwrap().action else { panic!() };
    assert_eq!((s.jitter, s.correlation, s.reorder.unwrap().gap), (Duration::ZERO, 0.0, 1));
    // One netem setting alone is that action.
    let f = faults("  action: netem\n  duplicate: {duplicate: '5'}\n");
    assert_eq!(validate_template(&f[0]).unwrap().action, Action::Duplicate(Odds::random(0.05)));
}

#[test]
fn bandwidth_uses_tc_units_and_notes_the_limit() {
    let x = parse(&doc("  action: bandwidth\n  bandwidth: {rate: 1mbps, limit: 20971520, buffer: 10000}\n")).unwrap();
    let Action::Shape(s) = validate_template(&x.faults[0]).unwrap().action else { panic!() };
    // `mbps` is megabytes per second, as in tc.
    assert_eq!((s.rate, s.burst), (Some(8_000_000), Some(10_000)));
    assert_eq!(x.notes.len(), 1);
    assert!(x.notes[0].starts_with("spec.bandwidth.limit: 20971520 bytes not used"), "{}", x.notes[0]);
    let f = faults("  action: bandwidth\n  bandwidth: {rate: 10mbit, buffer: 32000}\n");
    let Action::Shape(s) = validate_template(&f[0]).unwrap().action else { panic!() };
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
        ("  action: partition\n", "spec.externalTargets: is required for a partition without spec.target"),
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

/// The selector a document with `selector` (indented by four spaces) and `more` spec fields maps to.
fn selected(selector: &str, more: &str) -> Result<Experiment, String> {
    let text = doc(&format!("  action: loss\n  loss: {{loss: '5'}}\n{more}"))
        .replace("    pods:\n      shop: [web-0]\n", selector)
        .replace("  name: exp\n", "  name: exp\n  namespace: shop\n");
    parse(&text).map_err(|e| e.to_string())
}

#[test]
fn selectors_map_to_the_daemons() {
    let x = selected(
        "    namespaces: [shop, cart]\n    labelSelectors: {app: web, tier: front}\n    expressionSelectors:\n      \
         - {key: env, operator: In, values: [prod]}\n      - {key: legacy, operator: DoesNotExist}\n    \
         annotationSelectors: {owner: ops}\n    podPhaseSelectors: [Running]\n",
        "  device: eth1\n",
    )
    .unwrap();
    let expected = SelectorSpec {
        namespaces: vec!["shop".into(), "cart".into()],
        labels: Some("app=web,tier=front".into()),
        expressions: vec![
            ExpressionSpec { key: "env".into(), operator: "In".into(), values: vec!["prod".into()] },
            ExpressionSpec { key: "legacy".into(), operator: "DoesNotExist".into(), values: vec![] },
        ],
        annotations: [("owner".to_owned(), "ops".to_owned())].into(),
        phases: vec!["Running".into()],
        pods: BTreeMap::new(),
        mode: Some("all".into()),
        value: None,
    };
    assert_eq!(x.selector, Some(expected));
    assert_eq!((x.target, x.schedule), (None, None));
    // Templates: no pod, the document's device inside each pod.
    let [f] = x.faults.as_slice() else { panic!("{:?}", x.faults) };
    assert_eq!((f.pod.as_deref(), f.interface.as_deref()), (None, Some("eth1")));
    let s = x.selector.unwrap().validate().unwrap();
    assert_eq!(
        s.describe(),
        "namespaces cart shop, app=web, tier=front, env=prod, !legacy, annotation owner=ops, phase Running, mode all"
    );
}

#[test]
fn selector_namespace_defaults_and_modes() {
    let ns = |x: Experiment| x.selector.unwrap().namespaces;
    // Without namespaces: the document's, as Chaos Mesh defaults it.
    assert_eq!(ns(selected("    labelSelectors: {app: web}\n", "").unwrap()), ["shop"]);
    let text = doc("  action: loss\n  loss: {loss: '5'}\n")
        .replace("    pods:\n      shop: [web-0]\n", "    labelSelectors: {app: web}\n");
    assert_eq!(ns(parse(&text).unwrap()), ["default"], "no metadata.namespace");
    // Pods by name name their namespaces.
    assert_eq!(ns(selected("    pods: {cart: [a]}\n", "").unwrap()), Vec::<String>::new());
    // `selector: {}`: every pod of the namespace.
    let x = selected("    {}\n", "").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(x.selector.unwrap().validate().unwrap().describe(), "namespace shop, mode all");
    let text = doc("  action: loss\n  loss: {loss: '5'}\n").replace("mode: all", "mode: fixed-percent\n  value: '50'");
    let s = parse(&text).unwrap().selector.unwrap();
    assert_eq!((s.mode.as_deref(), s.value.as_deref()), (Some("fixed-percent"), Some("50")));
    // Chaos Mesh writes `value: ''` beside mode all: no value.
    let text = doc("  action: loss\n  loss: {loss: '5'}\n").replace("mode: all", "mode: all\n  value: ''");
    assert_eq!(parse(&text).unwrap().selector.unwrap().value, None);
}

#[test]
fn selector_refusals_name_the_field_by_its_path() {
    for (selector, more, expected) in [
        (
            "    fieldSelectors: {spec.nodeName: n1}\n",
            "",
            "spec.selector.fieldSelectors: chaos-daemon acts on the pods of the node it runs on",
        ),
        ("    nodes: [node-1]\n", "", "spec.selector.nodes: chaos-daemon acts on the pods of the node"),
        ("    nodeSelectors: {zone: a}\n", "", "spec.selector.nodeSelectors: "),
        ("    namespaces: [Shop]\n", "", "spec.selector.namespaces[0]: 'Shop' is not a namespace"),
        ("    labelSelectors: {app: 'a b'}\n", "", "spec.selector.labelSelectors: "),
        (
            "    expressionSelectors: [{key: app, operator: Within, values: [a]}]\n",
            "",
            "spec.selector.expressionSelectors[0].operator: 'Within' is not an operator",
        ),
        (
            "    expressionSelectors: [{key: app, operator: In}]\n",
            "",
            "spec.selector.expressionSelectors[0].values: are required with operator In",
        ),
        ("    annotationSelectors: {'a b': x}\n", "", "spec.selector.annotationSelectors: key 'a b'"),
        ("    podPhaseSelectors: [running]\n", "", "spec.selector.podPhaseSelectors[0]: 'running' is not a pod phase"),
        ("    pods: {shop: [Web]}\n", "", "spec.selector.pods.shop: 'Web' is not a pod name"),
        ("    pods: {shop: [a]}\n    bogus: 1\n", "", "spec.selector: unknown field `bogus`"),
    ] {
        let e = selected(selector, more).map(|x| format!("accepted: {x:?}")).unwrap_or_else(|e| e);
        assert!(e.starts_with(expected), "{selector}: {e}");
    }
    let loss = doc("  action: loss\n  loss: {loss: '5'}\n");
    for (mode, expected) in [
        ("mode: some", "spec.mode: 'some' is not a mode"),
        ("mode: fixed", "spec.value: is required with mode fixed"),
        ("mode: fixed-percent\n  value: '0'", "spec.value: '0' is not a percentage, 1 to 100"),
        ("mode: random-max-percent\n  value: '101'", "spec.value: '101' is not a percentage"),
        ("mode: all\n  value: '1'", "spec.value: '1' does not go with mode all"),
    ] {
        let e = parse(&loss.replace("mode: all", mode))
            .map(|x| format!("accepted: {x:?}"))
            .unwrap_or_else(|e| e.to_string());
        assert!(e.starts_with(expected), "{mode}: {e}");
    }
    // Without a selector, a mode that picks pods has none to pick from.
    let host = "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata: {name: host}\nspec:\n  \
                action: loss\n  device: ens3\n  loss: {loss: '10'}\n";
    let e = parse(&format!("{host}  mode: fixed\n")).unwrap_err().to_string();
    assert!(e.starts_with("spec.mode: 'fixed' picks pods: it needs spec.selector"), "{e}");
    let e = parse(&format!("{host}  value: '2'\n")).unwrap_err().to_string();
    assert!(e.starts_with("spec.value: goes with a mode that picks pods"), "{e}");
}

#[test]
fn target_selects_the_other_end() {
    let target = "  target:\n    mode: fixed\n    value: '2'\n    selector: {labelSelectors: {app: db}}\n";
    let x = selected("    labelSelectors: {app: web}\n", target).unwrap();
    let t = x.target.unwrap();
    assert_eq!((t.namespaces, t.labels), (vec!["shop".to_owned()], Some("app=db".to_owned())));
    assert_eq!((t.mode.as_deref(), t.value.as_deref()), (Some("fixed"), Some("2")));
    // The daemon fills in the target's addresses: the template has none.
    assert_eq!((x.faults[0].src.as_ref(), x.faults[0].dst.as_ref()), (None, None));
    // A partition needs no externalTargets with a target, and may go `from` or `both` ways.
    let cut = |direction: &str| {
        let text = doc(&format!("  action: partition\n  direction: {direction}\n{target}"));
        let x = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        validate_template(&x.faults[0]).unwrap().matches.direction
    };
    assert_eq!((cut("to"), cut("from"), cut("both")), (Direction::Egress, Direction::Ingress, Direction::Both));
    let text = doc(&format!("  action: delay\n  delay: {{latency: 10ms}}\n  direction: from\n{target}"));
    assert_eq!(validate_template(&parse(&text).unwrap().faults[0]).unwrap().matches.direction, Direction::Ingress);
    for (more, expected) in [
        ("  target: {mode: one, selector: {nodes: [n1]}}\n", "spec.target.selector.nodes: "),
        ("  target: {mode: fixed, selector: {}}\n", "spec.target.value: is required with mode fixed"),
        ("  target: {mode: one, selector: {namespaces: [A]}}\n", "spec.target.selector.namespaces[0]: "),
        ("  target: {mode: one}\n", "spec.target: missing field `selector`"),
        (&format!("{target}  externalTargets: [10.0.0.1]\n"), "spec.externalTargets: does not go with spec.target"),
    ] {
        let e = selected("    {}\n", more).map(|x| format!("accepted: {x:?}")).unwrap_or_else(|e| e);
        assert!(e.starts_with(expected), "{more}: {e}");
    }
}

#[test]
fn scheduler_of_a_network_chaos() {
    let x = selected("    {}\n", "  duration: 30s\n  scheduler: {cron: '@every 10m'}\n").unwrap();
    assert_eq!(x.schedule, Some(ScheduleSpec { cron: "@every 10m".into(), history_limit: None }));
    let e = selected("    {}\n", "  scheduler: {cron: '@every 10m'}\n").unwrap_err();
    assert!(e.starts_with("spec.duration: is required for a recurring experiment"), "{e}");
    let e = selected("    {}\n", "  duration: 30s\n  scheduler: {cron: '61 * * * *'}\n").unwrap_err();
    assert_eq!(e, "spec.scheduler.cron: minute '61': 61 is outside 0-59");
}

/// A Schedule of type NetworkChaos with `spec` lines added (indented by two spaces).
fn schedule_doc(spec: &str) -> String {
    format!(
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: Schedule\nmetadata: {{name: nightly, namespace: shop}}\nspec:\n  \
         schedule: '0 2 * * 1-5'\n  type: NetworkChaos\n{spec}"
    )
}

const SCHEDULED: &str = "  networkChaos:\n    action: delay\n    mode: one\n    selector: {labelSelectors: {app: web}}\n    \
                         delay: {latency: 50ms}\n    duration: 10m\n";

#[test]
fn schedule_documents() {
    let x = parse(&schedule_doc(&format!("{SCHEDULED}  historyLimit: 5\n  concurrencyPolicy: Forbid\n"))).unwrap();
    assert_eq!(x.name, "nightly");
    assert_eq!(x.schedule, Some(ScheduleSpec { cron: "0 2 * * 1-5".into(), history_limit: Some(5) }));
    let s = x.selector.unwrap();
    assert_eq!(
        (s.namespaces, s.labels, s.mode),
        (vec!["shop".to_owned()], Some("app=web".to_owned()), Some("one".to_owned()))
    );
    let [f] = x.faults.as_slice() else { panic!("{:?}", x.faults) };
    assert_eq!((f.name.as_deref(), f.pod.as_ref()), (Some("nightly"), None));
    assert_eq!(validate_template(f).unwrap().lifetime, crate::spec::Lifetime::For(Duration::from_secs(600)));
    assert_eq!(x.notes, Vec::<String>::new());
    let x = parse(&schedule_doc(&format!("{SCHEDULED}  startingDeadlineSeconds: 60\n"))).unwrap();
    assert!(x.notes[0].starts_with("spec.startingDeadlineSeconds: 60 not used"), "{:?}", x.notes);
}

#[test]
fn schedule_refusals_name_the_field_by_its_path() {
    for (text, expected) in [
        (
            schedule_doc(SCHEDULED).replace("type: NetworkChaos", "type: PodChaos"),
            "spec.type: 'PodChaos' is not read here",
        ),
        (schedule_doc(SCHEDULED).replace("  type: NetworkChaos\n", ""), "spec.type: is required: NetworkChaos"),
        (
            schedule_doc(SCHEDULED).replace("0 2 * * 1-5", "0 2 * * 7"),
            "spec.schedule: day of week '7': 7 is outside 0-6",
        ),
        (
            schedule_doc(&format!("{SCHEDULED}  concurrencyPolicy: Allow\n")),
            "spec.concurrencyPolicy: 'Allow' is not supported",
        ),
        (
            schedule_doc(&format!("{SCHEDULED}  concurrencyPolicy: Replace\n")),
            "spec.concurrencyPolicy: 'Replace' is not a policy",
        ),
        (schedule_doc(""), "spec.networkChaos: is required with type NetworkChaos"),
        (
            schedule_doc(&SCHEDULED.replace("    duration: 10m\n", "")),
            "spec.networkChaos.duration: is required for a recurring experiment",
        ),
        (
            schedule_doc(&SCHEDULED.replace("latency: 50ms", "latency: 50xs")),
            "spec.networkChaos.delay.latency: '50xs' is not a duration",
        ),
        (schedule_doc(&SCHEDULED.replace("mode: one", "mode: some")), "spec.networkChaos.mode: 'some' is not a mode"),
        (
            schedule_doc(&format!("{SCHEDULED}    scheduler: {{cron: '@daily'}}\n")),
            "spec.networkChaos.scheduler: does not go in a Schedule",
        ),
        (schedule_doc(&format!("{SCHEDULED}  podChaos: {{}}\n")), "spec: unknown field `podChaos`"),
    ] {
        let e = parse(&text).map(|x| format!("accepted: {x:?}")).unwrap_or_else(|e| e.to_string());
        assert!(e.starts_with(expected), "{text}: {e}");
    }
}

#[test]
fn documents_of_one_file_share_their_selection() {
    let first = doc("  action: loss\n  loss: {loss: '5'}\n");
    let second = doc("  action: delay\n  delay: {latency: 10ms}\n").replace("name: exp", "name: slow");
    let x = parse(&format!("{first}---\n{second}")).unwrap();
    assert_eq!(x.faults.len(), 2);
    for (other, expected) in [
        (
            second.replace("shop: [web-0]", "shop: [web-1]"),
            "document 2: spec.selector: differs from the first document's",
        ),
        (
            second.replace("  action: delay", "  target: {mode: all, selector: {}}\n  action: delay"),
            "document 2: spec.target: differs",
        ),
        (
            second.replace("  action: delay", "  duration: 1m\n  scheduler: {cron: '@hourly'}\n  action: delay"),
            "document 2: spec.schedule: differs",
        ),
        (schedule_doc(SCHEDULED), "document 2: spec.networkChaos.selector: differs"),
    ] {
        let e = parse(&format!("{first}---\n{other}"))
            .map(|x| format!("accepted: {x:?}"))
            .unwrap_or_else(|e| e.to_string());
        assert!(e.starts_with(expected), "{other}: {e}");
    }
}

#[test]
fn wrong_kinds_and_broken_files() {
    let text = doc("  action: pod-kill\n").replace("NetworkChaos", "PodChaos");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "kind: 'PodChaos' is not read here: only NetworkChaos, DNSChaos and Schedule are"
    );
    let text = doc("  action: loss\n").replace("chaos-mesh.org/v1alpha1", "v1");
    assert_eq!(parse(&text).unwrap_err().to_string(), "apiVersion: 'v1' is not chaos-mesh.org/v1alpha1");
    assert!(matches!(parse("spec: [unclosed\n"), Err(Error::Yaml(_))));
    assert_eq!(
        parse("# nothing\n").unwrap_err().to_string(),
        "no NetworkChaos, DNSChaos or Schedule document in the file"
    );
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

/// A DNSChaos document for the pods of namespace shop labelled app=web, with `spec` (indented
/// by two spaces) added.
fn dns_doc(spec: &str) -> String {
    format!(
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: DNSChaos\nmetadata:\n  name: dns\n  namespace: shop\nspec:\n  \
         mode: all\n  selector:\n    labelSelectors: {{app: web}}\n{spec}"
    )
}

fn dns_refused(spec: &str) -> String {
    parse(&dns_doc(spec)).map(|x| format!("accepted: {x:?}")).unwrap_or_else(|e| e.to_string())
}

#[test]
fn dns_chaos_error_and_random() {
    let x = parse(&dns_doc(
        "  action: error\n  patterns: [google.com, '*.example.com', 'chaos-mesh.*']\n  duration: 90s\n",
    ))
    .unwrap();
    assert_eq!(x.name, "dns");
    let s = x.selector.clone().unwrap();
    assert_eq!(
        (s.namespaces, s.labels, s.mode),
        (vec!["shop".to_owned()], Some("app=web".to_owned()), Some("all".into()))
    );
    assert_eq!((x.target, x.schedule, x.notes.len()), (None, None, 0));
    let [f] = x.faults.as_slice() else { panic!("{:?}", x.faults) };
    assert_eq!((f.name.as_deref(), f.action.as_deref(), f.dns.as_deref()), (Some("dns"), Some("dns"), Some("error")));
    // A template: in each pod, its eth0.
    assert_eq!((f.pod.as_ref(), f.interface.as_ref()), (None, None));
    let v = validate_template(f).unwrap();
    assert_eq!(
        v.action,
        Action::Dns(Dns { reply: DnsReply::Error(Rcode::ServFail), p: 1.0, qtypes: QTypes::default() })
    );
    assert_eq!(
        v.domains,
        [
            Domain::Exact("google.com".into()),
            Domain::Below("example.com".into()),
            Domain::Starting("chaos-mesh".into())
        ]
    );
    // The queries the pod sends, to port 53.
    assert_eq!((v.matches.direction, v.matches.dport.lo, v.matches.dport.hi), (Direction::Egress, 53, 53));
    assert_eq!(v.lifetime, crate::spec::Lifetime::For(Duration::from_secs(90)));

    let f = &parse(&dns_doc("  action: random\n")).unwrap().faults[0];
    let v = validate_template(f).unwrap();
    assert_eq!(v.action, Action::Dns(Dns { reply: DnsReply::Random, p: 1.0, qtypes: QTypes::default() }));
    // No patterns: every name.
    assert_eq!((f.domains.as_ref(), v.domains), (None, vec![Domain::Any]));
    let f = &parse(&dns_doc("  action: random\n  patterns: ['*']\n")).unwrap().faults[0];
    assert_eq!(validate_template(f).unwrap().domains, [Domain::Any]);
    // The selector as NetworkChaos's: the document's namespace by default, the modes.
    let text = dns_doc("  action: error\n").replace("mode: all", "mode: fixed\n  value: '2'");
    let s = parse(&text).unwrap().selector.unwrap();
    assert_eq!((s.mode.as_deref(), s.value.as_deref()), (Some("fixed"), Some("2")));
    let text = dns_doc("  action: error\n").replace("  namespace: shop\n", "");
    assert_eq!(parse(&text).unwrap().selector.unwrap().namespaces, ["default"]);
}

#[test]
fn dns_chaos_refusals_name_the_field_by_its_path() {
    let whole = "only a whole first or last label can be '*'";
    for (spec, expected) in [
        ("  action: delay\n", "spec.action: 'delay' is not a DNSChaos action (error or random)"),
        ("  action: error\n  patterns: [ok.com, 'chaos-mes*.org']\n", "spec.patterns[1]: 'chaos-mes*.org': "),
        ("  action: error\n  patterns: ['goo*']\n", whole),
        ("  action: error\n  patterns: ['a.*.com']\n", whole),
        (
            "  action: error\n  patterns: ['github.c?m']\n",
            "spec.patterns[0]: 'github.c?m': '?' (a one-character placeholder) is not supported",
        ),
        ("  action: error\n  patterns: ['a..com']\n", "spec.patterns[0]: 'a..com' has an empty label"),
        ("  action: error\n  patterns: ['']\n", "spec.patterns[0]: '' is empty"),
        ("  action: error\n  duration: 1d\n", "spec.duration: '1d' is not a duration"),
        ("  action: error\n  containerNames: [app]\n", "spec.containerNames: is not supported"),
        ("  action: error\n  remoteCluster: east\n", "spec.remoteCluster: chaos-daemon acts on the node"),
        ("  action: error\n  scope: outer\n", "spec.scope: (Chaos Mesh 1.x) is not supported"),
        ("  action: error\n  device: eth0\n", "spec: unknown field `device`"),
        ("  action: error\n  externalTargets: [10.0.0.1]\n", "spec: unknown field `externalTargets`"),
        ("  action: error\n  loss: {loss: '5'}\n", "spec: unknown field `loss`"),
        ("  patterns: [a.com]\n", "spec: missing field `action`"),
    ] {
        let e = dns_refused(spec);
        assert!(e.starts_with("spec") && e.contains(expected), "{spec}: {e}");
    }
    let e = dns_refused("  action: error\n  patterns: [{n: 1}]\n");
    assert!(e.starts_with("spec.patterns[0]: invalid type"), "{e}");
    let mut many = String::from("  action: error\n  patterns:\n");
    for i in 0..65 {
        many += &format!("    - n{i}.com\n");
    }
    assert_eq!(dns_refused(&many), "spec.patterns: 65 patterns: a fault takes at most 64 (apply several faults)");
    // The selector's refusals, as NetworkChaos's.
    let text = dns_doc("  action: error\n").replace("mode: all", "mode: some");
    assert!(parse(&text).unwrap_err().to_string().starts_with("spec.mode: 'some' is not a mode"));
    let text = dns_doc("  action: error\n").replace("labelSelectors: {app: web}", "nodes: [n1]");
    assert!(parse(&text).unwrap_err().to_string().starts_with("spec.selector.nodes: chaos-daemon acts on the pods"));
    let text = dns_doc("  action: error\n").replace("  selector:\n    labelSelectors: {app: web}\n", "");
    assert!(
        parse(&text).unwrap_err().to_string().starts_with("spec.selector: is required: the pods whose DNS queries")
    );
    let text = dns_doc("  action: error\n").replace("name: dns", "name: 'bad name'");
    assert!(parse(&text).unwrap_err().to_string().starts_with("metadata.name: "));
}

/// A Schedule of type DNSChaos with `spec` lines added (indented by two spaces).
fn dns_schedule_doc(spec: &str) -> String {
    format!(
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: Schedule\nmetadata: {{name: nightly-dns, namespace: shop}}\nspec:\n  \
         schedule: '@every 1h'\n  type: DNSChaos\n{spec}"
    )
}

const DNS_SCHEDULED: &str = "  dnsChaos:\n    action: error\n    mode: one\n    selector: {labelSelectors: {app: web}}\n    \
                             patterns: ['*.example.com']\n    duration: 5m\n";

#[test]
fn dns_chaos_schedules() {
    let x = parse(&dns_schedule_doc(&format!("{DNS_SCHEDULED}  historyLimit: 3\n"))).unwrap();
    assert_eq!(x.name, "nightly-dns");
    assert_eq!(x.schedule, Some(ScheduleSpec { cron: "@every 1h".into(), history_limit: Some(3) }));
    assert_eq!(x.selector.unwrap().mode.as_deref(), Some("one"));
    let [f] = x.faults.as_slice() else { panic!("{:?}", x.faults) };
    let v = validate_template(f).unwrap();
    assert_eq!(v.domains, [Domain::Below("example.com".into())]);
    assert_eq!(v.lifetime, crate::spec::Lifetime::For(Duration::from_secs(300)));
    for (text, expected) in [
        (dns_schedule_doc(""), "spec.dnsChaos: is required with type DNSChaos"),
        (
            dns_schedule_doc(&DNS_SCHEDULED.replace("    duration: 5m\n", "")),
            "spec.dnsChaos.duration: is required for a recurring experiment",
        ),
        (
            dns_schedule_doc(&DNS_SCHEDULED.replace("*.example.com", "ex?mple.com")),
            "spec.dnsChaos.patterns[0]: 'ex?mple.com': '?'",
        ),
        (
            dns_schedule_doc(&DNS_SCHEDULED.replace("action: error", "action: spoof")),
            "spec.dnsChaos.action: 'spoof' is not a DNSChaos action",
        ),
        (dns_schedule_doc(&format!("{DNS_SCHEDULED}{SCHEDULED}")), "spec.networkChaos: does not go with type DNSChaos"),
        (schedule_doc(&format!("{SCHEDULED}{DNS_SCHEDULED}")), "spec.dnsChaos: does not go with type NetworkChaos"),
        (
            dns_schedule_doc(DNS_SCHEDULED).replace("type: DNSChaos", "type: PodChaos"),
            "spec.type: 'PodChaos' is not read here: only NetworkChaos and DNSChaos are",
        ),
        (
            dns_schedule_doc(DNS_SCHEDULED).replace("  type: DNSChaos\n", ""),
            "spec.type: is required: NetworkChaos or DNSChaos",
        ),
    ] {
        let e = parse(&text).map(|x| format!("accepted: {x:?}")).unwrap_or_else(|e| e.to_string());
        assert!(e.starts_with(expected), "{text}: {e}");
    }
}

#[test]
fn dns_and_network_chaos_in_one_file() {
    // One experiment: a DNSChaos beside a NetworkChaos with the same selection.
    let net = "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata: {name: slow, namespace: shop}\nspec:\n  \
               action: delay\n  delay: {latency: 50ms}\n  mode: all\n  selector:\n    labelSelectors: {app: web}\n";
    let x = parse(&format!("{}---\n{net}", dns_doc("  action: error\n"))).unwrap();
    let names: Vec<_> = x.faults.iter().map(|f| f.name.clone().unwrap()).collect();
    assert_eq!((x.name.as_str(), names), ("dns", vec!["dns".to_owned(), "slow".to_owned()]));
    let other = dns_doc("  action: error\n").replace("app: web", "app: db");
    let e = parse(&format!("{net}---\n{other}")).unwrap_err().to_string();
    assert!(e.starts_with("document 2: spec.selector: differs from the first document's"), "{e}");
    let e = parse(&format!("{net}---\n{}", dns_schedule_doc(DNS_SCHEDULED))).unwrap_err().to_string();
    assert!(e.starts_with("document 2: spec.dnsChaos.selector: differs"), "{e}");
}

#[test]
fn dns_example_keeps_chaos_mesh_meaning() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dns-error.yaml");
    let x = parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(x.notes, Vec::<String>::new());
    let s = x.selector.unwrap();
    assert!(!s.namespaces.is_empty() && s.labels.is_some(), "{s:?}");
    let [f] = x.faults.as_slice() else { panic!("{:?}", x.faults) };
    let v = validate_template(f).unwrap();
    assert!(matches!(v.action, Action::Dns(Dns { reply: DnsReply::Error(Rcode::ServFail), .. })), "{:?}", v.action);
    assert!(!v.domains.contains(&Domain::Any), "{:?}", v.domains);
    assert!(matches!(v.lifetime, crate::spec::Lifetime::For(_)));
}
