//! Request decoding (`Apply` from the body of `POST /v1/faults`) and fault validation never
//! panic, whatever the input: arbitrary bytes, arbitrary JSON mixing the spec's keys, future
//! keys and random ones, and edits of it. Every refusal is a clean client error: a non-empty
//! message, and for validation a field that exists and a reason. A valid spec with one field
//! changed is accepted or refused naming that field (or, for the few rules between two fields,
//! the other one). Cases per property: `PROPTEST_CASES`, default 4,000 (a few seconds).

mod fuzz_input;

use chaos_daemon::{
    api::Apply,
    spec::{Action, Cidr, FaultSpec, Odds, PortRange, PortSpec, mask},
};
use fuzz_input::Interface;
use proptest::{
    option,
    prelude::*,
    sample::select,
    test_runner::{Config, TestCaseError},
};
use serde_json::{Map, Value};

/// The fields a refusal may name.
const FIELDS: &[&str] = fuzz_input::SPEC_KEYS;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4_000);
    // No regression files: a failure prints the smallest failing input, which is what to keep.
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Decodes a body the way the server does, and validates what decodes.
fn check_body(body: &[u8]) -> Result<(), TestCaseError> {
    match serde_json::from_slice::<Apply>(body) {
        Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
        Ok(apply) => {
            for spec in &apply.faults {
                check_spec(spec)?;
            }
        }
    }
    Ok(())
}

fn check_spec(spec: &FaultSpec) -> Result<(), TestCaseError> {
    match spec.validate() {
        Err(e) => {
            prop_assert!(FIELDS.contains(&e.field.as_str()), "refusal names no field: {e:?}");
            prop_assert!(!e.reason.trim().is_empty(), "refusal without a reason: {e:?}");
            prop_assert_eq!(e.to_string(), format!("{}: {}", e.field, e.reason));
        }
        Ok(fault) => {
            // What validation lets through is what the kernel side can take as is.
            let odds = match fault.action {
                Action::Loss(o) | Action::Duplicate(o) | Action::Corrupt(o, _) => Some(o),
                _ => None,
            };
            let unit = |x: f64| (0.0..=1.0).contains(&x);
            match odds {
                Some(Odds::Random { p, correlation }) => prop_assert!(unit(p) && unit(correlation), "{fault:?}"),
                Some(Odds::GilbertElliott { p, r, loss_bad, loss_good }) => {
                    prop_assert!([p, r, loss_bad, loss_good].into_iter().all(unit) && p + r > 0.0, "{fault:?}")
                }
                None => {}
            }
            prop_assert!(fault.action.drop_threshold() <= chaos_common::DROP_ALWAYS);
            let m = fault.matches;
            prop_assert!(m.sport.lo <= m.sport.hi && m.dport.lo <= m.dport.hi, "{fault:?}");
            prop_assert!(m.families.v4 || m.families.v6, "{fault:?}");
            // The daemon echoes accepted specs back (list, get) with their ports in one form: a
            // number for one port, `"lo-hi"` for a range (docs/api.md). That form means the
            // same fault, reads back the same, and is its own form.
            let canonical = spec.clone().with_canonical_ports();
            for port in [&canonical.sport, &canonical.dport].into_iter().flatten() {
                match port {
                    PortSpec::Number(n) => prop_assert!((0..=65_535).contains(n), "{port:?}"),
                    PortSpec::Text(t) => {
                        let (lo, hi) = t.split_once('-').expect("a range");
                        let (lo, hi): (u16, u16) = (lo.parse().unwrap(), hi.parse().unwrap());
                        prop_assert!(lo < hi && t == &format!("{lo}-{hi}"), "{port:?}");
                    }
                }
            }
            prop_assert_eq!(canonical.validate(), Ok(fault.clone()));
            prop_assert_eq!(&canonical.clone().with_canonical_ports(), &canonical);
            let echoed: FaultSpec = serde_json::from_str(&serde_json::to_string(&canonical).unwrap()).unwrap();
            prop_assert_eq!(&echoed, &canonical);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_body(&body)?;
    }

    #[test]
    fn arbitrary_json(body in fuzz_input::apply(Interface::Any)) {
        check_body(body.as_bytes())?;
    }

    #[test]
    fn edited_json(body in fuzz_input::mutated(Interface::Any)) {
        check_body(&body)?;
    }

    #[test]
    fn one_field_changed((base, key, value) in perturbed()) {
        check_perturbed(&base, key, value.as_deref())?;
    }
}

/// Nesting far past serde_json's recursion limit is refused, not a stack overflow.
#[test]
fn deep_nesting() {
    for body in ["[".repeat(100_000), format!("{{\"faults\":{}", "[".repeat(100_000)), "{\"a\":".repeat(50_000)] {
        assert!(serde_json::from_str::<Apply>(&body).is_err());
    }
}

/// A prefix with host bits cleared, so it is valid.
fn cidr(v6: bool) -> impl Strategy<Value = String> {
    let max: u8 = if v6 { 128 } else { 32 };
    (any::<[u8; 16]>(), 0..=max).prop_map(move |(bytes, len)| {
        let b = mask(bytes, len);
        let addr = if v6 { b.into() } else { std::net::IpAddr::from([b[0], b[1], b[2], b[3]]) };
        Cidr { addr, len }.to_string()
    })
}

/// A port range as the API takes it: a number, `"n"` or `"lo-hi"`.
fn ports() -> impl Strategy<Value = Value> {
    (any::<u16>(), any::<u16>(), 0..3).prop_map(|(a, b, form)| match form {
        0 => Value::from(a),
        1 => Value::from(a.to_string()),
        _ => Value::from(format!("{}-{}", a.min(b), a.max(b))),
    })
}

/// The fields of a valid delay or bandwidth fault (action included), or none.
fn shaping() -> impl Strategy<Value = Option<Vec<(&'static str, Value)>>> {
    let jitter =
        option::of((1..=2_000_000u64, option::of(0.0..=100.0f64), option::of(select(&["uniform", "normal"][..]))));
    let rate = option::of((1_000..=1_000_000_000_000u64, option::of(1..=(64u64 << 20))));
    let reorder = option::of((0.0..=100.0f64, option::of(0.0..100.0f64), option::of(1..=1000i64)));
    option::of((option::of(1..=10_000_000u64), jitter, rate, reorder)).prop_map(|shape| {
        let (delay_us, jitter, rate, reorder) = shape?;
        // Without a delay it is a bandwidth fault, which needs a rate.
        let (delay_us, rate) = match (delay_us, rate) {
            (None, None) => (None, Some((10_000_000, None))),
            other => other,
        };
        let mut fields = vec![("action", Value::from(if delay_us.is_some() { "delay" } else { "bandwidth" }))];
        if let Some(d) = delay_us {
            fields.push(("delay", Value::from(format!("{d}us"))));
            if let Some((j, correlation, distribution)) = jitter {
                fields.push(("jitter", Value::from(format!("{j}us"))));
                fields.extend(correlation.map(|c| ("correlation", Value::from(c))));
                fields.extend(distribution.map(|d| ("distribution", Value::from(d))));
            }
            if let Some((p, c, gap)) = reorder {
                fields.push(("reorder", Value::from(p)));
                fields.extend(c.map(|c| ("reorder_correlation", Value::from(c))));
                fields.extend(gap.map(|g| ("gap", Value::from(g))));
            }
        }
        if let Some((r, burst)) = rate {
            fields.push(("rate", Value::from(format!("{r}bit"))));
            fields.extend(burst.map(|b| ("burst", Value::from(b))));
        }
        Some(fields)
    })
}

/// The action and fields of a valid loss (a percentage with or without correlation, or
/// gemodel), partition, duplicate or corrupt fault.
fn event() -> impl Strategy<Value = Vec<(&'static str, Value)>> {
    let percent = 0.0..=100.0f64;
    let correlation = option::of(0.0..100.0f64);
    prop_oneof![
        Just(vec![("action", Value::from("partition"))]),
        option::of(select(&["all", "new"][..])).prop_map(|connections| {
            let mut v = vec![("action", Value::from("reset"))];
            v.extend(connections.map(|c| ("connections", Value::from(c))));
            v
        }),
        (percent.clone(), correlation.clone()).prop_map(|(p, c)| {
            let mut v = vec![("action", Value::from("loss")), ("loss", Value::from(p))];
            v.extend(c.map(|c| ("correlation", Value::from(c))));
            v
        }),
        (0.1..=100.0f64, option::of((0.0..=100.0f64, option::of((0.0..=100.0f64, option::of(0.0..=100.0f64))))))
            .prop_map(|(p, rest)| {
                let mut words = vec![format!("{p}%")];
                if let Some((r, rest)) = rest {
                    words.push(r.to_string());
                    if let Some((h, k)) = rest {
                        words.push(format!("{h}%"));
                        words.extend(k.map(|k| k.to_string()));
                    }
                }
                vec![("action", Value::from("loss")), ("gemodel", Value::from(words.join(" ")))]
            }),
        (select(&["duplicate", "corrupt"][..]), percent, correlation, option::of(select(&["broken", "fixed"][..])))
            .prop_map(|(action, p, c, checksum)| {
                let mut v = vec![("action", Value::from(action)), (action, Value::from(p))];
                v.extend(c.map(|c| ("correlation", Value::from(c))));
                if action == "corrupt" {
                    v.extend(checksum.map(|c| ("checksum", Value::from(c))));
                }
                v
            }),
    ]
}

/// A valid spec, with every field present or absent, consistent with each other.
fn valid_spec() -> impl Strategy<Value = Map<String, Value>> {
    let family = option::of(select(&["ipv4", "ipv6", "any"][..]));
    let addrs = (family, any::<bool>()).prop_flat_map(|(family, v6)| {
        let v6 = match family {
            Some("ipv4") => false,
            Some("ipv6") => true,
            _ => v6,
        };
        (Just(family), option::of(cidr(v6)), option::of(cidr(v6)))
    });
    let protocol = option::of(select(&["tcp", "udp", "icmp", "any"][..]));
    (
        option::of("[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}"),
        "[a-z][a-z0-9-]{0,14}",
        event(),
        option::of(select(&["egress", "ingress", "both"][..])),
        addrs,
        protocol,
        option::of(ports()),
        option::of(ports()),
        shaping(),
    )
        .prop_map(|(name, interface, event, direction, (family, src, dst), protocol, sport, dport, shaping)| {
            let mut m = Map::new();
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            };
            set("name", name.map(Value::from));
            set("interface", Some(interface.into()));
            // With shaping fields it is a delay or bandwidth fault, which keeps only a loss.
            let corrupting = shaping.is_none() && event.iter().any(|(k, _)| *k == "corrupt");
            let resetting = shaping.is_none() && event.iter().any(|(_, v)| v == "reset");
            for (k, v) in event {
                if shaping.is_none() || k == "loss" {
                    set(k, Some(v));
                }
            }
            set("direction", direction.map(Value::from));
            set("family", family.map(Value::from));
            set("src", src.map(Value::from));
            set("dst", dst.map(Value::from));
            // Ports only apply to tcp and udp, and so does corruption.
            let protocol = match protocol {
                Some("icmp") if corrupting => Some("udp"),
                Some(_) if resetting => Some("tcp"),
                p => p,
            };
            set("protocol", protocol.map(Value::from));
            if protocol != Some("icmp") {
                set("sport", sport);
                set("dport", dport);
            }
            // A delay or bandwidth fault (its own action), with or without a loss.
            for (k, v) in shaping.into_iter().flatten() {
                set(k, Some(v));
            }
            m
        })
}

/// A valid spec, a key of it, and new JSON text for that key (`None`: the key removed).
fn perturbed() -> impl Strategy<Value = (Map<String, Value>, &'static str, Option<String>)> {
    (valid_spec(), select(FIELDS)).prop_flat_map(|(base, key)| {
        let value = prop_oneof![
            1 => Just(None),
            // Values of the field's type, near its valid ones; or any JSON at all.
            4 => near(key).prop_map(Some),
            2 => fuzz_input::json(Interface::Any).prop_map(Some),
        ];
        (Just(base), Just(key), value)
    })
}

/// JSON text for `key`, mostly of the type it takes.
fn near(key: &'static str) -> BoxedStrategy<String> {
    match key {
        "loss" | "correlation" | "duplicate" | "corrupt" | "reorder" | "reorder_correlation" | "gap" | "pid" => {
            fuzz_input::number()
        }
        "gemodel" => prop_oneof![
            "[0-9]{1,3}(\\.[0-9])?%?( -?[0-9]{1,3}%?){0,4}".prop_map(|s| fuzz_input::quote(&s)),
            fuzz_input::text().prop_map(|s| fuzz_input::quote(&s)),
        ]
        .boxed(),
        "delay" | "jitter" | "rate" | "burst" => prop_oneof![
            fuzz_input::number(),
            (fuzz_input::number(), select(&["", "ms", "us", "s", "mbit", "kbit", "kb", "x"][..]))
                .prop_map(|(n, unit)| fuzz_input::quote(&format!("{n}{unit}"))),
            fuzz_input::text().prop_map(|s| fuzz_input::quote(&s)),
        ]
        .boxed(),
        "sport" | "dport" => {
            prop_oneof![fuzz_input::number(), fuzz_input::port_like().prop_map(|s| fuzz_input::quote(&s))].boxed()
        }
        "src" | "dst" => fuzz_input::cidr_like().prop_map(|s| fuzz_input::quote(&s)).boxed(),
        _ => fuzz_input::text().prop_map(|s| fuzz_input::quote(&s)).boxed(),
    }
}

/// Whether a spec field decodes from this JSON: the wire types are exactly these.
fn decodes_as(key: &str, value: &Value) -> bool {
    match key {
        // Option<f64>: any JSON number (serde_json reads integers as floats too), or null.
        "loss" | "correlation" | "duplicate" | "corrupt" | "reorder" | "reorder_correlation" => {
            value.is_number() || value.is_null()
        }
        // Option<i64>.
        "gap" | "pid" => value.as_i64().is_some() || value.is_null(),
        // Option<DurationSpec> and Option<RateSpec>: a number or a string, or null.
        "delay" | "jitter" | "rate" | "burst" => value.is_number() || value.is_string() || value.is_null(),
        // Option<PortSpec>: an i64 or a string, or null.
        "sport" | "dport" => value.as_i64().is_some() || value.is_string() || value.is_null(),
        // Option<String>.
        _ => value.is_string() || value.is_null(),
    }
}

/// Rules between two fields: a change to the key may be refused naming the other field.
fn related(key: &str, named: &str) -> bool {
    matches!(
        (key, named),
        // partition refuses a loss percentage; loss requires one; the shaping fields belong to
        // delay and bandwidth, which each require one of them.
        // The same for the fields of loss, duplicate and corrupt, and corrupt refuses icmp.
        ("action", _)
        // A loss model is a percentage or gemodel, not both.
        | ("loss" | "gemodel", "loss" | "gemodel")
        | ("gemodel", "correlation")
        // Reordering needs a delay, and its correlation and gap need it.
        | ("delay", "reorder")
        | ("reorder", "reorder_correlation" | "gap")
        // correlation and distribution need jitter; burst needs a rate; a fault that shapes
        // nothing is refused naming its delay.
        | ("jitter", "correlation" | "distribution" | "delay")
        | ("rate", "burst" | "delay")
        // icmp refuses ports, and corruption.
        | ("protocol", "sport" | "dport" | "corrupt")
        // reset takes tcp only.
        | ("protocol", "action")
        // A namespace is named once.
        | ("netns" | "pid" | "container" | "pod", "netns" | "pid" | "container" | "pod")
        // An address must be of the family.
        | ("family", "src" | "dst")
        // src and dst must be of one family.
        | ("src", "dst")
    )
}

fn check_perturbed(base: &Map<String, Value>, key: &str, value: Option<&str>) -> Result<(), TestCaseError> {
    let spec: FaultSpec = serde_json::from_value(Value::Object(base.clone())).unwrap();
    prop_assert!(spec.validate().is_ok(), "the generated base must be valid: {:?}", spec.validate());

    // Built as text: the new value may not be JSON at all.
    let mut rest = base.clone();
    rest.remove(key);
    let mut members: Vec<String> = rest.iter().map(|(k, v)| format!("{}:{v}", fuzz_input::quote(k))).collect();
    if let Some(v) = value {
        members.push(format!("{}:{v}", fuzz_input::quote(key)));
    }
    let body = format!("{{\"faults\":[{{{}}}]}}", members.join(","));

    let expected = value.is_none_or(|v| serde_json::from_str::<Value>(v).is_ok_and(|v| decodes_as(key, &v)));
    let apply = match serde_json::from_str::<Apply>(&body) {
        Ok(apply) => apply,
        Err(e) => {
            prop_assert!(!expected, "{key} = {value:?} should decode: {e}");
            prop_assert!(!e.to_string().trim().is_empty());
            return Ok(());
        }
    };
    prop_assert!(expected, "{key} = {value:?} should not decode");
    let spec = &apply.faults[0];
    check_spec(spec)?;
    if let Err(e) = spec.validate() {
        let named = e.field.as_str();
        prop_assert!(
            // Without gemodel a loss fault asks for its percentage.
            named == key
                || (related(key, named) && (base.contains_key(named) || key == "action"))
                || (key, named) == ("gemodel", "loss"),
            "changing {key} to {value:?} was refused naming {named}: {e}"
        );
    }
    Ok(())
}

/// Ports echo in one form whatever form they came in (flags send text, files numbers).
#[test]
fn ports_echo_in_one_form() {
    let echo = |json: &str| {
        let spec: FaultSpec = serde_json::from_str(json).unwrap();
        serde_json::to_value(spec.with_canonical_ports()).unwrap()
    };
    let base = r#""interface":"x","action":"loss","loss":5"#;
    for (sent, echoed) in [
        (r#""dport":"80""#, serde_json::json!(80)),
        (r#""dport":80"#, serde_json::json!(80)),
        (r#""dport":" 80-80 ""#, serde_json::json!(80)),
        (r#""dport":"1000 - 2000""#, serde_json::json!("1000-2000")),
        // Not a port: left for validation to refuse as sent.
        (r#""dport":"http""#, serde_json::json!("http")),
    ] {
        assert_eq!(echo(&format!("{{{base},{sent}}}"))["dport"], echoed, "{sent}");
    }
}

/// The generator's notion of "valid" matches validation's on the edges.
#[test]
fn valid_edges() {
    let spec = |json: &str| serde_json::from_str::<FaultSpec>(json).unwrap().validate();
    let f = spec(r#"{"interface":"x","action":"loss","loss":100,"sport":"0-65535","dport":0}"#).unwrap();
    assert_eq!((f.matches.sport, f.matches.dport), (PortRange::ANY, PortRange { lo: 0, hi: 0 }));
    assert!(spec(r#"{"interface":"x","action":"partition","src":"::/0","dst":"::1"}"#).is_ok());
    assert!(spec(r#"{"interface":"x","action":"partition","src":"0.0.0.0/0","protocol":"icmp"}"#).is_ok());
}
