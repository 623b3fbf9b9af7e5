use super::*;

fn labels(text: &str) -> Vec<String> {
    parse_labels(text).unwrap_or_else(|e| panic!("{text}: {e}")).iter().map(Requirement::to_string).collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn selector(spec: SelectorSpec) -> PodSelector {
    spec.validate().unwrap_or_else(|e| panic!("{e}"))
}

fn refused(spec: SelectorSpec) -> String {
    spec.validate().map(|s| format!("accepted: {s:?}")).unwrap_or_else(|e| e.to_string())
}

#[test]
fn kubectl_label_syntax() {
    assert_eq!(labels("app=web"), ["app=web"]);
    assert_eq!(labels(" app == web , tier!=db "), ["app=web", "tier!=db"]);
    assert_eq!(labels("env in (prod, staging),zone notin(a)"), ["env in (prod,staging)", "zone!=a"]);
    assert_eq!(labels("canary,!legacy, ! old"), ["canary", "!legacy", "!old"]);
    assert_eq!(labels("example.com/team=a_b.c-d,k8s.io/x"), ["example.com/team=a_b.c-d", "k8s.io/x"]);
    // `key=` is the empty value.
    assert_eq!(parse_labels("a=").unwrap(), [Requirement { key: "a".into(), op: Op::In, values: vec!["".into()] }]);
    assert_eq!(labels(""), Vec::<String>::new());
    assert_eq!(labels("   "), Vec::<String>::new());
    // Values sorted, repeats once.
    assert_eq!(parse_labels("k in (b,a,b)").unwrap()[0].values, ["a", "b"]);
    let text = "a=1,b!=2,c in (x,y),d notin (x,y),e,!f";
    assert_eq!(labels(&labels(text).join(",")).join(","), text, "Display reads back");
}

#[test]
fn bad_label_selectors_name_the_part() {
    for (text, expected) in [
        ("app=", ""),
        ("=web", "expected a label key or '!key', found '='"),
        ("app=web,", "ends with ','"),
        ("app=web,,x", "expected a label key or '!key', found ','"),
        ("app=we b", "expected ',' between requirements, found 'b'"),
        ("app==", ""),
        ("app=(x)", "'app=' must be followed by a value, not '('"),
        ("app in web", "'app in' must be followed by a list in parentheses"),
        ("app in (web", "expected ',' or ')' after a value, found the end"),
        ("app in ()", "'app in (...)' lists a value where ')' is"),
        ("app notin (a,)", "lists a value where ')' is"),
        ("!", "'!' must be followed by a label key, not the end"),
        ("x>1", "'x >': comparisons of label values are not supported here"),
        ("-app=web", "key '-app': '-app' is not a label name"),
        ("Exam_ple.com/app=web", "key 'Exam_ple.com/app': its prefix 'Exam_ple.com' is not a DNS subdomain"),
        ("a/b/c", "key 'a/b/c': 'b/c' is not a label name"),
        ("example.com/=x", "key 'example.com/': '' is not a label name"),
        ("app=web-", "value 'web-' is not a label value"),
        (&format!("app={}", "v".repeat(64)), "is not a label value"),
        (&format!("{}=x", "k".repeat(64)), "is not a label name"),
        ("app in (a,b c)", "expected ',' or ')' after a value, found 'c'"),
    ] {
        match parse_labels(text) {
            Err(e) => assert!(!expected.is_empty() && e.contains(expected), "{text}: {e}"),
            Ok(r) => assert!(expected.is_empty(), "{text}: accepted as {r:?}"),
        }
    }
}

#[test]
fn validation_names_the_field() {
    let cases: Vec<(SelectorSpec, &str)> = vec![
        (
            SelectorSpec { namespaces: vec!["shop".into(), "Shop".into()], ..Default::default() },
            "selector.namespaces[1]: 'Shop' is not a namespace",
        ),
        (SelectorSpec { namespaces: vec!["a.b".into()], ..Default::default() }, "selector.namespaces[0]: 'a.b' is not"),
        (SelectorSpec { labels: Some("app==".into()), ..Default::default() }, "accepted"),
        (SelectorSpec { labels: Some("app=web,".into()), ..Default::default() }, "selector.labels: ends with ','"),
        (
            SelectorSpec {
                expressions: vec![ExpressionSpec {
                    key: "app".into(),
                    operator: "in".into(),
                    values: vec!["a".into()],
                }],
                ..Default::default()
            },
            "selector.expressions[0].operator: 'in' is not an operator (In, NotIn, Exists or DoesNotExist)",
        ),
        (
            SelectorSpec {
                expressions: vec![ExpressionSpec { key: "app".into(), operator: "NotIn".into(), values: vec![] }],
                ..Default::default()
            },
            "selector.expressions[0].values: are required with operator NotIn",
        ),
        (
            SelectorSpec {
                expressions: vec![ExpressionSpec {
                    key: "app".into(),
                    operator: "Exists".into(),
                    values: vec!["a".into()],
                }],
                ..Default::default()
            },
            "selector.expressions[0].values: must be empty with operator Exists",
        ),
        (
            SelectorSpec {
                expressions: vec![ExpressionSpec {
                    key: "app".into(),
                    operator: "In".into(),
                    values: vec!["ok".into(), "no!".into()],
                }],
                ..Default::default()
            },
            "selector.expressions[0].values[1]: value 'no!' is not a label value",
        ),
        (
            SelectorSpec {
                expressions: vec![ExpressionSpec { key: "-x".into(), operator: "Exists".into(), values: vec![] }],
                ..Default::default()
            },
            "selector.expressions[0].key: key '-x'",
        ),
        (
            SelectorSpec { annotations: map(&[("bad key", "x")]), ..Default::default() },
            "selector.annotations: key 'bad key'",
        ),
        (
            SelectorSpec { phases: vec!["Running".into(), "running".into()], ..Default::default() },
            "selector.phases[1]: 'running' is not a pod phase",
        ),
        (
            SelectorSpec { pods: [("Shop".into(), vec!["a".into()])].into(), ..Default::default() },
            "selector.pods: 'Shop' is not a namespace",
        ),
        (
            SelectorSpec { pods: [("shop".into(), vec![])].into(), ..Default::default() },
            "selector.pods.shop: names no pod",
        ),
        (
            SelectorSpec { pods: [("shop".into(), vec!["Web".into()])].into(), ..Default::default() },
            "selector.pods.shop: 'Web' is not a pod name",
        ),
        (SelectorSpec { mode: Some("some".into()), ..Default::default() }, "selector.mode: 'some' is not a mode"),
        (
            SelectorSpec { mode: Some("fixed".into()), ..Default::default() },
            "selector.value: is required with mode fixed: a number of pods",
        ),
        (
            SelectorSpec { mode: Some("fixed".into()), value: Some("0".into()), ..Default::default() },
            "selector.value: '0' is not a number of pods, 1 or more",
        ),
        (
            SelectorSpec { mode: Some("fixed".into()), value: Some("2.5".into()), ..Default::default() },
            "selector.value: '2.5' is not a number",
        ),
        (
            SelectorSpec { mode: Some("fixed-percent".into()), value: Some("0".into()), ..Default::default() },
            "selector.value: '0' is not a percentage, 1 to 100",
        ),
        (
            SelectorSpec { mode: Some("random-max-percent".into()), value: Some("101".into()), ..Default::default() },
            "selector.value: '101' is not a percentage",
        ),
        (
            SelectorSpec { mode: Some("fixed-percent".into()), value: Some("50%".into()), ..Default::default() },
            "selector.value: '50%' is not",
        ),
        (
            SelectorSpec { mode: Some("one".into()), value: Some("1".into()), ..Default::default() },
            "selector.value: '1' does not go with mode one",
        ),
        (
            SelectorSpec { value: Some("3".into()), ..Default::default() },
            "selector.value: '3' does not go with mode all",
        ),
    ];
    for (spec, expected) in cases {
        let e = refused(spec.clone());
        assert!(e.starts_with(expected), "{spec:?}: {e}");
    }
    // An empty value is no value, as Chaos Mesh writes `value: ''` with mode all.
    assert_eq!(selector(SelectorSpec { value: Some(String::new()), ..Default::default() }).mode, Mode::All);
}

#[test]
fn modes_read_as_chaos_mesh_reads_them() {
    let mode = |m: &str, v: &str| Mode::parse(Some(m), Some(v)).map_err(|e| e.to_string());
    assert_eq!(Mode::parse(None, None), Ok(Mode::All));
    assert_eq!(mode("one", ""), Ok(Mode::One));
    assert_eq!(mode("fixed", "3"), Ok(Mode::Fixed(3)));
    // strconv.Atoi takes a sign and leading zeros.
    assert_eq!(mode("fixed", "+007"), Ok(Mode::Fixed(7)));
    assert_eq!(mode("fixed-percent", "100"), Ok(Mode::FixedPercent(100)));
    assert_eq!(mode("random-max-percent", "1"), Ok(Mode::RandomMaxPercent(1)));
    assert!(mode("fixed", "-1").is_err());
    assert!(mode("fixed", " 1").is_err());
}

#[test]
fn counts_as_chaos_mesh_filters_by_mode() {
    let never = &mut |_: usize| -> usize { panic!("no draw expected") };
    assert_eq!(Mode::All.count(0, never), Err("no pod matches".into()));
    assert_eq!(Mode::One.count(5, never), Ok(1));
    assert_eq!(Mode::All.count(5, never), Ok(5));
    assert_eq!(Mode::Fixed(3).count(5, never), Ok(3));
    assert_eq!(Mode::Fixed(9).count(5, never), Ok(5));
    assert_eq!(Mode::FixedPercent(50).count(5, never), Ok(2));
    assert_eq!(Mode::FixedPercent(100).count(3, never), Ok(3));
    assert_eq!(Mode::FixedPercent(50).count(1, never), Err("50% of 1 matching pod is 0 pods".into()));
    assert_eq!(Mode::FixedPercent(10).count(9, never), Err("10% of 9 matching pods is 0 pods".into()));
    // random-max-percent: a percentage drawn in 0..=p, then rounded down as fixed-percent.
    let mut asked = Vec::new();
    let mut draw = |n: usize| {
        asked.push(n);
        n - 1
    };
    assert_eq!(Mode::RandomMaxPercent(60).count(10, &mut draw), Ok(6));
    assert_eq!(asked, [61]);
    assert_eq!(Mode::RandomMaxPercent(60).count(10, &mut |_| 0), Ok(0), "none, as Chaos Mesh takes it");
    assert_eq!(Mode::RandomMaxPercent(60).count(10, &mut |_| 35), Ok(3));
    assert_eq!(Mode::RandomMaxPercent(60).count(0, never), Err("no pod matches".into()));
}

#[test]
fn matching_pods() {
    let s = selector(SelectorSpec {
        namespaces: vec!["shop".into(), "cart".into()],
        labels: Some("app=web,tier!=db,env in (prod,staging),!legacy".into()),
        expressions: vec![ExpressionSpec { key: "team".into(), operator: "Exists".into(), values: vec![] }],
        annotations: map(&[("owner", "ops")]),
        phases: vec!["Running".into()],
        ..Default::default()
    });
    let good = map(&[("app", "web"), ("env", "prod"), ("team", "a")]);
    let notes = map(&[("owner", "ops"), ("other", "x")]);
    let pod = PodFacts { namespace: "shop", name: "web-0", labels: &good, annotations: &notes, phase: Phase::Running };
    assert!(s.matches(&pod));
    assert!(!s.matches(&PodFacts { namespace: "default", ..pod }));
    assert!(!s.matches(&PodFacts { phase: Phase::Pending, ..pod }));
    let empty = BTreeMap::new();
    assert!(!s.matches(&PodFacts { annotations: &empty, ..pod }));
    let change = |k: &str, v: Option<&str>| {
        let mut l = good.clone();
        match v {
            Some(v) => l.insert(k.into(), v.into()),
            None => l.remove(k),
        };
        s.matches(&PodFacts { labels: &l, ..pod })
    };
    // `tier!=db` holds for a pod without `tier`, and for another tier; not for db.
    assert!(change("tier", Some("web")));
    assert!(!change("tier", Some("db")));
    assert!(!change("app", Some("api")));
    assert!(!change("app", None));
    assert!(change("env", Some("staging")));
    assert!(!change("env", Some("dev")));
    assert!(!change("legacy", Some("")));
    assert!(!change("team", None));
    // An empty selector takes every pod.
    assert!(selector(SelectorSpec::default()).matches(&PodFacts { labels: &empty, annotations: &empty, ..pod }));
    // Pods by name decide alone, as in Chaos Mesh (which looks them up and returns them).
    let s = selector(SelectorSpec {
        pods: [("shop".into(), vec!["web-0".into(), "web-1".into()])].into(),
        labels: Some("app=web".into()),
        ..Default::default()
    });
    assert!(s.matches(&pod));
    assert!(!s.matches(&PodFacts { name: "web-2", ..pod }));
    assert!(!s.matches(&PodFacts { namespace: "cart", ..pod }));
    assert!(s.matches(&PodFacts { labels: &empty, ..pod }));
}

#[test]
fn described_in_a_line() {
    let s = selector(SelectorSpec {
        namespaces: vec!["shop".into()],
        labels: Some("app=web,tier!=db".into()),
        mode: Some("fixed-percent".into()),
        value: Some("50".into()),
        ..Default::default()
    });
    assert_eq!(s.describe(), "namespace shop, app=web, tier!=db, mode fixed-percent 50");
    let s = selector(SelectorSpec {
        namespaces: vec!["b".into(), "a".into()],
        expressions: vec![ExpressionSpec {
            key: "env".into(),
            operator: "NotIn".into(),
            values: vec!["qa".into(), "dev".into()],
        }],
        annotations: map(&[("owner", "ops")]),
        phases: vec!["Running".into(), "Pending".into()],
        mode: Some("one".into()),
        ..Default::default()
    });
    assert_eq!(
        s.describe(),
        "namespaces a b, env notin (dev,qa), annotation owner=ops, phases Pending Running, mode one"
    );
    assert_eq!(selector(SelectorSpec::default()).describe(), "all namespaces, mode all");
    // Pods by name decide alone: the rest is not said.
    let named = SelectorSpec { pods: [("a".into(), vec!["x".into()])].into(), ..Default::default() };
    let named = selector(SelectorSpec { namespaces: vec!["b".into()], labels: Some("app=web".into()), ..named });
    assert_eq!(named.describe(), "pod a/x, mode all");
}
