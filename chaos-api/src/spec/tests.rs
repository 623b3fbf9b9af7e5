use super::*;

fn spec() -> FaultSpec {
    FaultSpec { interface: Some("eth0".into()), action: Some("loss".into()), loss: Some(30.0), ..Default::default() }
}

fn err(f: impl FnOnce(&mut FaultSpec)) -> SpecError {
    let mut s = spec();
    f(&mut s);
    s.validate().unwrap_err()
}

#[test]
fn defaults() {
    let f = spec().validate().unwrap();
    assert_eq!(f.matches.direction, Direction::Egress);
    assert_eq!(f.matches.protocol, Protocol::Any);
    assert_eq!(f.matches.families, Families { v4: true, v6: true });
    assert_eq!((f.matches.sport, f.matches.dport), (PortRange::ANY, PortRange::ANY));
    assert_eq!(f.action, Action::Loss(Odds::random(0.3)));
}

#[test]
fn toml_fault_tables() {
    #[derive(Deserialize)]
    struct File {
        fault: Vec<FaultSpec>,
    }
    let file: File = toml::from_str(
        r#"
        [[fault]]
        name = "a"
        interface = "eth0"
        action = "loss"
        loss = 20
        protocol = "udp"
        dport = 9000
        [[fault]]
        interface = "eth0"
        action = "partition"
        direction = "both"
        dst = "fd00::/64"
        sport = "1000-2000"
        "#,
    )
    .unwrap();
    let a = file.fault[0].validate().unwrap();
    assert_eq!(a.matches.dport, PortRange { lo: 9000, hi: 9000 });
    let b = file.fault[1].validate().unwrap();
    assert_eq!(b.matches.families, Families { v4: false, v6: true });
    assert_eq!(b.matches.sport, PortRange { lo: 1000, hi: 2000 });
    assert_eq!(b.action.drop_threshold(), 1 << 32);
}

#[test]
fn refusals_name_the_field() {
    let cases: Vec<(SpecError, &str)> = vec![
        (err(|s| s.interface = None), "interface"),
        (err(|s| s.action = Some("explode".into())), "action"),
        (err(|s| s.loss = Some(150.0)), "loss"),
        (err(|s| s.loss = Some(-1.0)), "loss"),
        (err(|s| s.loss = None), "loss"),
        (err(|s| s.dport = Some(PortSpec::Number(70000))), "dport"),
        (err(|s| s.sport = Some(PortSpec::Text("9-1".into()))), "sport"),
        (err(|s| s.dport = Some(PortSpec::Text("http".into()))), "dport"),
        (err(|s| s.dst = Some("10.0.0.300/24".into())), "dst"),
        (err(|s| s.dst = Some("10.0.0.1/8".into())), "dst"),
        (err(|s| s.src = Some("10.0.0.0/33".into())), "src"),
        (err(|s| s.direction = Some("sideways".into())), "direction"),
        (err(|s| s.protocol = Some("sctp".into())), "protocol"),
        (err(|s| s.name = Some("bad name".into())), "name"),
        (
            err(|s| {
                s.src = Some("10.0.0.0/8".into());
                s.dst = Some("fd00::/8".into());
            }),
            "dst",
        ),
        (
            err(|s| {
                s.family = Some("ipv6".into());
                s.dst = Some("10.0.0.1".into());
            }),
            "dst",
        ),
        (
            err(|s| {
                s.protocol = Some("icmp".into());
                s.dport = Some(PortSpec::Number(80));
            }),
            "dport",
        ),
    ];
    for (e, field) in cases {
        assert_eq!(e.field, field, "{e}");
    }
    assert_eq!(
        err(|s| s.dst = Some("10.0.0.1/8".into())).to_string(),
        "dst: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"
    );
    assert_eq!(err(|s| s.dport = Some(PortSpec::Number(70000))).to_string(), "dport: 70000 is not a port (0-65535)");
}

#[test]
fn cidrs() {
    let c: Cidr = "10.1.2.3".parse().unwrap();
    assert_eq!(c.len, 32);
    let c: Cidr = "fd00:1::/32".parse().unwrap();
    assert_eq!(c.len, 32);
    assert_eq!(mask([0xff; 16], 12)[..3], [0xff, 0xf0, 0]);
    assert_eq!(mask([0xff; 16], 0), [0; 16]);
    assert_eq!(mask([0xff; 16], 128), [0xff; 16]);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
    for bad in ["", "30", "s", "5x", "1h30", "-5s", "99999999999999999999s", "400d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    let f = |d: DurationSpec| FaultSpec { duration: Some(d), ..spec() }.validate();
    assert_eq!(f(DurationSpec::Seconds(3.0)).unwrap().lifetime, Lifetime::For(Duration::from_secs(3)));
    assert_eq!(f(DurationSpec::Text("unlimited".into())).unwrap().lifetime, Lifetime::Unlimited);
    assert_eq!(f(DurationSpec::Text("0s".into())).unwrap_err().field, "duration");
    assert_eq!(f(DurationSpec::Seconds(f64::NAN)).unwrap_err().field, "duration");
    // A number has the text's resolution: 1e-9 is refused as "1ns" is, 0.0000015 is 2us.
    assert!(f(DurationSpec::Seconds(1e-9)).unwrap_err().reason.contains("less than 1us"));
    assert!(f(DurationSpec::Text("1ns".into())).is_err());
    assert_eq!(f(DurationSpec::Seconds(0.0000015)).unwrap().lifetime, Lifetime::For(Duration::from_micros(2)));
    assert_eq!(f(DurationSpec::Seconds(0.1)).unwrap().lifetime, Lifetime::For(Duration::from_millis(100)));
    assert_eq!(spec().validate().unwrap().lifetime, Lifetime::Default);
}

fn delay_spec() -> FaultSpec {
    FaultSpec {
        interface: Some("eth0".into()),
        action: Some("delay".into()),
        delay: Some(DurationSpec::Text("50ms".into())),
        ..Default::default()
    }
}

#[test]
fn delay_and_bandwidth() {
    let text = |t: &str| Some(DurationSpec::Text(t.into()));
    let f = FaultSpec {
        jitter: text("10ms"),
        correlation: Some(25.0),
        distribution: Some("normal".into()),
        rate: Some(RateSpec::Text("10mbit".into())),
        burst: Some(RateSpec::Text("32kb".into())),
        loss: Some(1.0),
        ..delay_spec()
    };
    let Action::Shape(s) = f.validate().unwrap().action else { panic!("not a shape") };
    assert_eq!(s.delay, Duration::from_millis(50));
    assert_eq!(s.jitter, Duration::from_millis(10));
    assert_eq!((s.correlation, s.distribution), (0.25, Distribution::Normal));
    assert_eq!((s.rate, s.burst, s.loss), (Some(10_000_000), Some(32 * 1024), 0.01));
    let bw =
        FaultSpec { action: Some("bandwidth".into()), rate: Some(RateSpec::Number(1e6)), delay: None, ..delay_spec() };
    assert_eq!(bw.validate().unwrap().action.kind(), "bandwidth");
    assert_eq!(delay_spec().validate().unwrap().action.kind(), "delay");

    assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
    assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
    assert_eq!(parse_rate("100kbps"), Ok(800_000));
    assert_eq!(parse_rate("1mibit"), Ok(1 << 20));
    assert_eq!(parse_rate("64000"), Ok(64_000));
    for bad in ["", "10", "fast", "10mbits", "-1mbit", "2tbit"] {
        assert!(parse_rate(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_size("32kb"), Ok(32 * 1024));
    assert_eq!(parse_size("1500"), Ok(1500));
    assert!(parse_size("1.5k").is_err());
    assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
}

#[test]
fn delay_refusals_name_the_field() {
    let d = |f: &dyn Fn(&mut FaultSpec)| {
        let mut s = delay_spec();
        f(&mut s);
        s.validate().unwrap_err()
    };
    let text = |t: &str| Some(DurationSpec::Text(t.into()));
    let cases: Vec<(SpecError, &str, &str)> = vec![
        (d(&|s| s.delay = None), "delay", "is required"),
        (d(&|s| s.delay = text("50")), "delay", "needs a unit"),
        (d(&|s| s.delay = Some(DurationSpec::Seconds(50.0))), "delay", "needs a unit"),
        (d(&|s| s.delay = text("11s")), "delay", "largest"),
        (d(&|s| s.jitter = text("3s")), "jitter", "largest"),
        (d(&|s| s.correlation = Some(10.0)), "correlation", "without jitter"),
        (d(&|s| s.distribution = Some("normal".into())), "distribution", "without jitter"),
        (
            d(&|s| {
                s.jitter = text("1ms");
                s.distribution = Some("pareto".into());
            }),
            "distribution",
            "not a distribution",
        ),
        (
            d(&|s| {
                s.jitter = text("1ms");
                s.correlation = Some(101.0);
            }),
            "correlation",
            "outside",
        ),
        (d(&|s| s.burst = Some(RateSpec::Text("1kb".into()))), "burst", "without rate"),
        (d(&|s| s.rate = Some(RateSpec::Number(10.0))), "rate", "outside"),
        (
            d(&|s| {
                s.rate = Some(RateSpec::Text("1mbit".into()));
                s.burst = Some(RateSpec::Text("1gb".into()));
            }),
            "burst",
            "outside",
        ),
        (d(&|s| s.loss = Some(200.0)), "loss", "outside"),
        (d(&|s| s.delay = text("0ms")), "delay", "does nothing"),
        (
            d(&|s| {
                s.action = Some("bandwidth".into());
                s.delay = None;
            }),
            "rate",
            "is required",
        ),
        (
            d(&|s| {
                s.action = Some("loss".into());
                s.loss = Some(1.0);
            }),
            "delay",
            "not action 'loss'",
        ),
    ];
    for (e, field, reason) in cases {
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    }
}

#[test]
fn thresholds() {
    assert_eq!(Action::Loss(Odds::random(0.0)).drop_threshold(), 0);
    assert_eq!(Action::Loss(Odds::random(1.0)).drop_threshold(), 1 << 32);
    assert_eq!(Action::Loss(Odds::random(0.25)).drop_threshold(), 1 << 30);
}

/// A valid fault of `action` on eth0 (with the percentage it requires).
fn of(action: &str) -> FaultSpec {
    let mut s = FaultSpec { interface: Some("eth0".into()), action: Some(action.into()), ..Default::default() };
    match action {
        "loss" => s.loss = Some(30.0),
        "duplicate" => s.duplicate = Some(10.0),
        "corrupt" => s.corrupt = Some(10.0),
        _ => {}
    }
    s
}

/// `of(action)` changed by `f`, validated.
fn with(action: &str, f: impl FnOnce(&mut FaultSpec)) -> Result<Fault, SpecError> {
    let mut s = of(action);
    f(&mut s);
    s.validate()
}

/// Each case is refused naming `field`, with a reason containing `reason`.
fn refused(cases: Vec<(Result<Fault, SpecError>, &str, &str)>) {
    for (result, field, reason) in cases {
        let e = result.expect_err(&format!("{field}: should be refused"));
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(reason), "'{reason}' not in: {e}");
    }
}

fn ge(p: f64, r: f64, loss_bad: f64, loss_good: f64) -> Odds {
    Odds::GilbertElliott { p, r, loss_bad, loss_good }
}

#[test]
fn gemodel_parsing() {
    // tc's defaults for what is left out: R 100%, 1-H 100%, 1-K 0%.
    assert_eq!(gemodel("5"), Ok(ge(0.05, 1.0, 1.0, 0.0)));
    assert_eq!(gemodel("5 20"), Ok(ge(0.05, 0.2, 1.0, 0.0)));
    assert_eq!(gemodel("5 20 80"), Ok(ge(0.05, 0.2, 0.8, 0.0)));
    assert_eq!(gemodel("5 20 80 1"), Ok(ge(0.05, 0.2, 0.8, 0.01)));
    // % signs optional, any whitespace between.
    assert_eq!(gemodel("5% 20%\t80%  1%"), Ok(ge(0.05, 0.2, 0.8, 0.01)));
    assert_eq!(gemodel(" 5%  20 "), Ok(ge(0.05, 0.2, 1.0, 0.0)));
    assert_eq!(gemodel("0.5 12.5"), Ok(ge(0.005, 0.125, 1.0, 0.0)));
    // Either move may be 0, not both.
    assert_eq!(gemodel("0 100 50 5"), Ok(ge(0.0, 1.0, 0.5, 0.05)));
    assert_eq!(gemodel("100 0"), Ok(ge(1.0, 0.0, 1.0, 0.0)));
    // P alone leaves R at 100%: 0 is a model that never loses (as loss 0 is).
    assert_eq!(gemodel("0"), Ok(ge(0.0, 1.0, 1.0, 0.0)));

    let cases = [
        ("", "'' is not 'P [R [1-H [1-K]]]' (1 to 4 percentages)"),
        ("   ", "is not 'P [R [1-H [1-K]]]'"),
        ("1 2 3 4 5", "'1 2 3 4 5' is not 'P [R [1-H [1-K]]]' (1 to 4 percentages)"),
        ("150", "p = 150% is outside 0-100%"),
        ("-1", "p = -1% is outside 0-100%"),
        ("5 101", "r = 101% is outside 0-100%"),
        ("5 20 100.5", "1-h = 100.5% is outside 0-100%"),
        ("5 20 80 -3", "1-k = -3% is outside 0-100%"),
        ("five", "'five' is not a percentage"),
        ("5 20 x", "'x' is not a percentage"),
        ("5,20", "'5,20' is not a percentage"),
        ("%", "'%' is not a percentage"),
        ("5 %", "'%' is not a percentage"),
        ("nan", "outside 0-100%"),
        ("inf", "outside 0-100%"),
        ("0 0", "p and r are both 0"),
        ("0% 0% 50 50", "p and r are both 0"),
    ];
    for (text, reason) in cases {
        let e = gemodel(text).unwrap_err();
        assert_eq!(e.field, "gemodel", "{text:?}: {e}");
        assert!(e.reason.contains(reason), "{text:?}: '{reason}' not in: {e}");
    }

    // In a fault, instead of loss.
    let f = with("loss", |s| {
        s.loss = None;
        s.gemodel = Some("1 30".into());
    })
    .unwrap();
    assert_eq!(f.action, Action::Loss(ge(0.01, 0.3, 1.0, 0.0)));
    assert_eq!(f.action.kind(), "loss");
}

#[test]
fn loss_models() {
    assert_eq!(
        with("loss", |s| s.correlation = Some(25.0)).unwrap().action,
        Action::Loss(Odds::Random { p: 0.3, correlation: 0.25 })
    );
    assert_eq!(with("loss", |_| {}).unwrap().action, Action::Loss(Odds::Random { p: 0.3, correlation: 0.0 }));
    let gemodel = |s: &mut FaultSpec| {
        s.loss = None;
        s.gemodel = Some("1".into());
    };
    refused(vec![
        (with("loss", |s| s.gemodel = Some("1".into())), "gemodel", "and loss are two loss models: give one"),
        // Even a bad gemodel: the conflict is what is reported.
        (with("loss", |s| s.gemodel = Some("150".into())), "gemodel", "two loss models"),
        (
            with("loss", |s| {
                gemodel(s);
                s.correlation = Some(10.0);
            }),
            "correlation",
            "does not apply with gemodel",
        ),
        (
            with("loss", |s| {
                gemodel(s);
                s.gemodel = Some("1 2 3 4 5".into());
            }),
            "gemodel",
            "1 to 4 percentages",
        ),
        (with("loss", |s| s.loss = None), "loss", "is required for action 'loss' (percent, 0-100, or gemodel)"),
        (with("loss", |s| s.correlation = Some(101.0)), "correlation", "101% is outside 0-100%"),
        (with("loss", |s| s.correlation = Some(100.0)), "correlation", "100% would repeat the first outcome"),
        (with("duplicate", |s| s.correlation = Some(100.0)), "correlation", "100% would repeat the first outcome"),
        (with("loss", |s| s.correlation = Some(-5.0)), "correlation", "outside"),
        (with("loss", |s| s.correlation = Some(f64::NAN)), "correlation", "outside"),
    ]);
}

#[test]
fn duplicate_action() {
    let f = with("duplicate", |_| {}).unwrap();
    assert_eq!(f.action, Action::Duplicate(Odds::random(0.1)));
    assert_eq!(f.action.kind(), "duplicate");
    assert_eq!(f.matches.protocol, Protocol::Any);
    assert_eq!(
        with("duplicate", |s| s.correlation = Some(50.0)).unwrap().action,
        Action::Duplicate(Odds::Random { p: 0.1, correlation: 0.5 })
    );
    assert_eq!(with("duplicate", |s| s.duplicate = Some(100.0)).unwrap().action, Action::Duplicate(Odds::random(1.0)));
    for protocol in ["tcp", "udp", "icmp", "any"] {
        assert!(with("duplicate", |s| s.protocol = Some(protocol.into())).is_ok(), "{protocol}");
    }
    refused(vec![
        (with("duplicate", |s| s.duplicate = None), "duplicate", "is required for action 'duplicate' (percent, 0-100)"),
        (with("duplicate", |s| s.duplicate = Some(200.0)), "duplicate", "200% is outside 0-100%"),
        (with("duplicate", |s| s.duplicate = Some(-1.0)), "duplicate", "-1% is outside 0-100%"),
        (with("duplicate", |s| s.correlation = Some(150.0)), "correlation", "150% is outside"),
        (with("duplicate", |s| s.loss = Some(5.0)), "loss", "not action 'duplicate'"),
        (
            with("duplicate", |s| s.gemodel = Some("1".into())),
            "gemodel",
            "applies to action 'loss', not action 'duplicate'",
        ),
        (
            with("duplicate", |s| s.corrupt = Some(5.0)),
            "corrupt",
            "applies to action 'corrupt', not action 'duplicate'",
        ),
        (with("duplicate", |s| s.checksum = Some("fixed".into())), "checksum", "applies to action 'corrupt'"),
        (with("duplicate", |s| s.connections = Some("new".into())), "connections", "applies to action 'reset'"),
        (with("duplicate", |s| s.jitter = Some(DurationSpec::Text("1ms".into()))), "jitter", "not action 'duplicate'"),
    ]);
}

#[test]
fn corrupt_action() {
    let f = with("corrupt", |_| {}).unwrap();
    assert_eq!(f.action, Action::Corrupt(Odds::random(0.1), Checksum::Broken));
    assert_eq!(f.action.kind(), "corrupt");
    assert_eq!(f.matches.protocol, Protocol::Any);
    let checksum = |c: &str| with("corrupt", |s| s.checksum = Some(c.into()));
    assert_eq!(checksum("broken").unwrap().action, Action::Corrupt(Odds::random(0.1), Checksum::Broken));
    assert_eq!(checksum("fixed").unwrap().action, Action::Corrupt(Odds::random(0.1), Checksum::Fixed));
    assert_eq!(
        with("corrupt", |s| s.correlation = Some(30.0)).unwrap().action,
        Action::Corrupt(Odds::Random { p: 0.1, correlation: 0.3 }, Checksum::Broken)
    );
    for protocol in ["tcp", "udp", "any"] {
        assert!(with("corrupt", |s| s.protocol = Some(protocol.into())).is_ok(), "{protocol}");
    }
    refused(vec![
        (checksum("maybe"), "checksum", "'maybe' is not a checksum choice (expected broken or fixed)"),
        (checksum("Fixed"), "checksum", "not a checksum choice"),
        (
            with("corrupt", |s| s.protocol = Some("icmp".into())),
            "protocol",
            "icmp: corrupt flips bits in TCP and UDP payloads only",
        ),
        (with("corrupt", |s| s.corrupt = None), "corrupt", "is required for action 'corrupt' (percent, 0-100)"),
        (with("corrupt", |s| s.corrupt = Some(100.5)), "corrupt", "100.5% is outside 0-100%"),
        (with("corrupt", |s| s.correlation = Some(-1.0)), "correlation", "outside"),
        (
            with("corrupt", |s| s.duplicate = Some(5.0)),
            "duplicate",
            "applies to action 'duplicate', not action 'corrupt'",
        ),
        (with("corrupt", |s| s.loss = Some(5.0)), "loss", "not action 'corrupt'"),
        (with("corrupt", |s| s.connections = Some("all".into())), "connections", "not action 'corrupt'"),
    ]);
}

#[test]
fn reset_action() {
    // TCP by default: the only protocol it takes.
    let f = with("reset", |_| {}).unwrap();
    assert_eq!(f.action, Action::Reset { new_only: false });
    assert_eq!(f.matches.protocol, Protocol::Tcp);
    assert_eq!(f.action.kind(), "reset");
    let connections = |c: &str| with("reset", |s| s.connections = Some(c.into()));
    assert_eq!(connections("all").unwrap().action, Action::Reset { new_only: false });
    assert_eq!(connections("new").unwrap().action, Action::Reset { new_only: true });
    let f = with("reset", |s| {
        s.protocol = Some("tcp".into());
        s.dport = Some(PortSpec::Number(443));
        s.direction = Some("both".into());
    })
    .unwrap();
    assert_eq!((f.matches.protocol, f.matches.dport), (Protocol::Tcp, PortRange { lo: 443, hi: 443 }));

    let protocol = |p: &str| with("reset", |s| s.protocol = Some(p.into()));
    let tcp_only = "reset answers TCP segments: it needs protocol tcp (the default)";
    refused(vec![
        (protocol("udp"), "protocol", tcp_only),
        (protocol("icmp"), "protocol", tcp_only),
        (protocol("any"), "protocol", tcp_only),
        (protocol("sctp"), "protocol", "'sctp' is not a protocol"),
        (connections("some"), "connections", "'some' is not a choice (expected all or new)"),
        (connections(""), "connections", "is not a choice"),
        (with("reset", |s| s.correlation = Some(10.0)), "correlation", "not action 'reset'"),
        (with("reset", |s| s.loss = Some(10.0)), "loss", "not action 'reset'"),
        (with("reset", |s| s.gemodel = Some("1".into())), "gemodel", "not action 'reset'"),
        (with("reset", |s| s.duplicate = Some(10.0)), "duplicate", "not action 'reset'"),
        (with("reset", |s| s.corrupt = Some(10.0)), "corrupt", "not action 'reset'"),
        (with("reset", |s| s.checksum = Some("fixed".into())), "checksum", "not action 'reset'"),
        (with("reset", |s| s.delay = Some(DurationSpec::Text("5ms".into()))), "delay", "not action 'reset'"),
    ]);
}

#[test]
fn fields_of_other_actions_are_refused() {
    refused(vec![
        (with("loss", |s| s.duplicate = Some(5.0)), "duplicate", "applies to action 'duplicate', not action 'loss'"),
        (with("loss", |s| s.corrupt = Some(5.0)), "corrupt", "applies to action 'corrupt', not action 'loss'"),
        (
            with("loss", |s| s.checksum = Some("fixed".into())),
            "checksum",
            "applies to action 'corrupt', not action 'loss'",
        ),
        (
            with("loss", |s| s.connections = Some("new".into())),
            "connections",
            "applies to action 'reset', not action 'loss'",
        ),
        (with("partition", |s| s.correlation = Some(5.0)), "correlation", "not action 'partition'"),
        (with("partition", |s| s.gemodel = Some("1".into())), "gemodel", "not action 'partition'"),
        (with("partition", |s| s.duplicate = Some(5.0)), "duplicate", "not action 'partition'"),
        (with("delay", |s| s.gemodel = Some("1".into())), "gemodel", "applies to action 'loss', not action 'delay'"),
        (with("delay", |s| s.corrupt = Some(5.0)), "corrupt", "not action 'delay'"),
        (with("bandwidth", |s| s.connections = Some("all".into())), "connections", "not action 'bandwidth'"),
    ]);
    // With delay, correlation is still the jitter's, and needs jitter.
    let delay = |f: &dyn Fn(&mut FaultSpec)| {
        with("delay", |s| {
            s.delay = Some(DurationSpec::Text("50ms".into()));
            f(s);
        })
    };
    refused(vec![(delay(&|s| s.correlation = Some(20.0)), "correlation", "has no effect without jitter")]);
    let f = delay(&|s| {
        s.jitter = Some(DurationSpec::Text("10ms".into()));
        s.correlation = Some(20.0);
        s.loss = Some(1.0);
    })
    .unwrap();
    let Action::Shape(shape) = f.action else { panic!("not a shape: {:?}", f.action) };
    assert_eq!((shape.correlation, shape.loss), (0.2, 0.01));
}

#[test]
fn gilbert_elliott_mean() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    // Stationary: in the bad state p/(p+r) of the time.
    assert!(close(ge(0.01, 0.3, 1.0, 0.0).mean(), 0.01 / 0.31));
    assert!(close(ge(0.05, 0.2, 0.8, 0.01).mean(), (0.2 * 0.01 + 0.05 * 0.8) / 0.25));
    assert!(close(ge(0.5, 0.5, 0.6, 0.2).mean(), 0.4));
    // Never bad; bad for ever once there.
    assert!(close(ge(0.0, 0.3, 1.0, 0.07).mean(), 0.07));
    assert!(close(ge(0.2, 0.0, 0.9, 0.07).mean(), 0.9));
    // Both 0 is refused by gemodel; mean() still answers without dividing by 0.
    assert_eq!(ge(0.0, 0.0, 1.0, 0.5).mean(), 0.0);
    // The same loss in both states is that loss, whatever the moves.
    assert!(close(ge(0.13, 0.71, 0.25, 0.25).mean(), 0.25));
    // Correlation keeps the rate.
    assert_eq!(Odds::Random { p: 0.3, correlation: 0.9 }.mean(), 0.3);
}

#[test]
fn drop_thresholds_of_the_new_actions() {
    let action = |action: &str, f: &dyn Fn(&mut FaultSpec)| with(action, f).unwrap().action;
    // Faults that drop nothing rank 0, whatever their odds.
    assert_eq!(action("duplicate", &|s| s.duplicate = Some(100.0)).drop_threshold(), 0);
    assert_eq!(action("corrupt", &|s| s.corrupt = Some(100.0)).drop_threshold(), 0);
    assert_eq!(action("corrupt", &|s| s.checksum = Some("broken".into())).drop_threshold(), 0);
    // A segment answered with a RST never arrives: a reset ranks with partition; one that only
    // answers SYNs ranks 0, so it never shadows a loss on its flows' established traffic.
    assert_eq!(action("reset", &|_| {}).drop_threshold(), chaos_common::DROP_ALWAYS);
    assert_eq!(action("reset", &|s| s.connections = Some("new".into())).drop_threshold(), 0);
    assert_eq!(action("partition", &|_| {}).drop_threshold(), chaos_common::DROP_ALWAYS);
    // Gilbert–Elliott ranks by its long-run rate.
    let g = action("loss", &|s| {
        s.loss = None;
        s.gemodel = Some("5 20 80 1".into());
    });
    let Action::Loss(odds) = g else { panic!("{g:?}") };
    assert_eq!(g.drop_threshold(), threshold(odds.mean()));
    assert_eq!(g.drop_threshold(), threshold(0.168));
    // 1% in and 30% out: about 3.2%, below a 5% loss.
    let bursty = action("loss", &|s| {
        s.loss = None;
        s.gemodel = Some("1 30".into());
    });
    assert_eq!(bursty.drop_threshold(), threshold(0.01 / 0.31));
    assert!(bursty.drop_threshold() < action("loss", &|s| s.loss = Some(5.0)).drop_threshold());
    // Correlated loss ranks by its rate.
    let correlated = action("loss", &|s| s.correlation = Some(80.0));
    assert_eq!(correlated.drop_threshold(), threshold(0.3));
}

#[test]
fn cgroup_targets() {
    let f = with("partition", |s| {
        s.cgroup = Some("/kubepods.slice/app".into());
        s.direction = Some("both".into());
    })
    .unwrap();
    assert_eq!(f.cgroup.as_deref(), Some(std::path::Path::new("/kubepods.slice/app")));
    // Any action on egress (it acts at TC); ingress only drops.
    assert!(with("duplicate", |s| s.cgroup = Some("/app".into())).is_ok());
    assert!(with("loss", |s| (s.cgroup, s.direction) = (Some("/app".into()), Some("ingress".into()))).is_ok());
    let ingress = "a cgroup's ingress is where packets reach its sockets, where they can only be dropped";
    refused(vec![
        (with("loss", |s| s.cgroup = Some("app".into())), "cgroup", "'app' is not a cgroup path"),
        (with("loss", |s| s.cgroup = Some("/a/../b".into())), "cgroup", "is not a cgroup path"),
        (with("loss", |s| (s.cgroup, s.pid) = (Some("/app".into()), Some(1))), "cgroup", "and pid name two targets"),
        (with("loss", |s| (s.cgroup, s.interface) = (Some("/app".into()), None)), "interface", "is required"),
        (
            with("corrupt", |s| (s.cgroup, s.direction) = (Some("/app".into()), Some("both".into()))),
            "direction",
            ingress,
        ),
        (
            with("reset", |s| (s.cgroup, s.direction) = (Some("/app".into()), Some("ingress".into()))),
            "direction",
            ingress,
        ),
    ]);
}

#[test]
fn connect_fail_action() {
    let connect = |f: &dyn Fn(&mut FaultSpec)| {
        let mut s =
            FaultSpec { action: Some("connect-fail".into()), cgroup: Some("/app".into()), ..Default::default() };
        f(&mut s);
        s.validate()
    };
    let f = connect(&|_| {}).unwrap();
    assert_eq!(f.action, Action::ConnectFail { errno: libc::ECONNREFUSED });
    assert_eq!((f.interface.as_str(), f.action.kind()), ("", "connect-fail"));
    assert_eq!(f.action.drop_threshold(), chaos_common::DROP_ALWAYS);
    for (given, errno) in [("ETIMEDOUT", libc::ETIMEDOUT), ("ehostunreach", libc::EHOSTUNREACH), ("13", 13)] {
        let f = connect(&|s| s.errno = Some(given.into())).unwrap();
        assert_eq!(f.action, Action::ConnectFail { errno }, "{given}");
    }
    assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
    assert_eq!(errno_name(200), "200");
    let f = connect(&|s| {
        s.protocol = Some("tcp".into());
        s.dst = Some("10.0.0.0/8".into());
        s.dport = Some(PortSpec::Number(3306));
    })
    .unwrap();
    assert_eq!(f.matches.dport, PortRange { lo: 3306, hi: 3306 });
    let before = "it acts at connect(), before a source is chosen";
    refused(vec![
        (connect(&|s| s.cgroup = None), "cgroup", "is required for action 'connect-fail'"),
        (connect(&|s| s.interface = Some("eth0".into())), "interface", "acts on connect() calls"),
        (connect(&|s| s.src = Some("10.0.0.1".into())), "src", before),
        (connect(&|s| s.sport = Some(PortSpec::Number(1))), "sport", before),
        (connect(&|s| s.direction = Some("ingress".into())), "direction", before),
        (connect(&|s| s.protocol = Some("icmp".into())), "protocol", "connect-fail fails tcp and udp"),
        (connect(&|s| s.errno = Some("EWHAT".into())), "errno", "'EWHAT' is not an errno"),
        (connect(&|s| s.errno = Some("0".into())), "errno", "is not an errno"),
        (connect(&|s| s.errno = Some("4096".into())), "errno", "is not an errno"),
        (with("loss", |s| s.errno = Some("EPERM".into())), "errno", "applies to action 'connect-fail'"),
    ]);
}

/// A dns fault on eth0 changed by `f`, validated.
fn dns(f: impl FnOnce(&mut FaultSpec)) -> Result<Fault, SpecError> {
    with("dns", f)
}

fn texts(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

fn exact(name: &str) -> Domain {
    Domain::Exact(name.into())
}

#[test]
fn dns_defaults() {
    let f = dns(|_| {}).unwrap();
    let Action::Dns(d) = f.action else { panic!("{:?}", f.action) };
    assert_eq!(d, Dns { reply: DnsReply::Error(Rcode::ServFail), p: 1.0, qtypes: QTypes::default() });
    assert!(d.qtypes.is_all());
    assert_eq!((f.action.kind(), f.action.drop_threshold()), ("dns", 0));
    // Queries this host sends, to port 53, over UDP and TCP.
    assert_eq!(f.matches.direction, Direction::Egress);
    assert_eq!(f.matches.protocol, Protocol::Any);
    assert_eq!((f.matches.sport, f.matches.dport), (PortRange::ANY, PortRange { lo: 53, hi: 53 }));
    // Every name.
    assert_eq!(f.domains, [Domain::Any]);
    // Other actions have none.
    assert_eq!(spec().validate().unwrap().domains, Vec::<Domain>::new());
}

#[test]
fn dns_replies() {
    let reply = |f: &dyn Fn(&mut FaultSpec)| match dns(f).unwrap().action {
        Action::Dns(d) => d.reply,
        other => panic!("{other:?}"),
    };
    assert_eq!(reply(&|s| s.dns = Some("error".into())), DnsReply::Error(Rcode::ServFail));
    for (given, rcode) in [
        ("SERVFAIL", Rcode::ServFail),
        ("nxdomain", Rcode::NxDomain),
        ("NXDomain", Rcode::NxDomain),
        ("Refused", Rcode::Refused),
    ] {
        assert_eq!(reply(&|s| s.rcode = Some(given.into())), DnsReply::Error(rcode), "{given}");
    }
    assert_eq!((Rcode::NxDomain.code(), Rcode::NxDomain.name()), (3, "NXDOMAIN"));
    let spoof = |addrs: &[&str]| {
        reply(&|s| {
            s.dns = Some("spoof".into());
            s.spoof = texts(addrs);
        })
    };
    let v4 = Some("10.0.0.1".parse().unwrap());
    let v6 = Some("fd00::1".parse().unwrap());
    assert_eq!(spoof(&["10.0.0.1"]), DnsReply::Spoof { v4, v6: None });
    assert_eq!(spoof(&["fd00::1"]), DnsReply::Spoof { v4: None, v6 });
    assert_eq!(spoof(&["fd00::1", " 10.0.0.1 "]), DnsReply::Spoof { v4, v6 });
    assert_eq!(reply(&|s| s.dns = Some("random".into())), DnsReply::Random);
    assert_eq!(reply(&|s| s.dns = Some("drop".into())), DnsReply::Drop);
    assert_eq!(DnsReply::Drop.name(), "drop");
}

#[test]
fn dns_percent_and_qtypes() {
    let d = |f: &dyn Fn(&mut FaultSpec)| match dns(f).unwrap().action {
        Action::Dns(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(d(&|s| s.percent = Some(30.0)).p, 0.3);
    assert_eq!(d(&|s| s.percent = Some(0.0)).p, 0.0);
    assert_eq!(d(&|s| s.percent = Some(100.0)).p, 1.0);
    let qtypes = |q: Vec<QTypeSpec>| d(&|s| s.qtypes = Some(q.clone())).qtypes.iter().collect::<Vec<u16>>();
    let text = |t: &str| QTypeSpec::Text(t.into());
    assert_eq!(qtypes(vec![text("A"), text("aaaa"), QTypeSpec::Number(15), text("65")]), [1, 28, 15, 65]);
    assert_eq!(
        qtypes(["CNAME", "TXT", "NS", "SOA", "PTR", "SRV", "SVCB", "CAA"].map(text).to_vec()),
        [5, 16, 2, 6, 12, 33, 64, 257]
    );
    assert_eq!(qtypes(vec![text("ANY"), text("65535"), QTypeSpec::Number(1)]), [255, 65535, 1]);
    // Each once: repeating one is not another.
    assert_eq!(qtypes(vec![text("A"), text("a"), QTypeSpec::Number(1)]), [1]);
    let nine = ["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SOA", "PTR", "a"].map(text).to_vec();
    assert_eq!(qtypes(nine).len(), 8);
    // None: every type.
    assert!(d(&|s| s.qtypes = Some(vec![])).qtypes.is_all());
    assert_eq!((qtype_name(28), qtype_name(257), qtype_name(99)), ("AAAA".into(), "CAA".into(), "99".into()));
}

#[test]
fn dns_domains() {
    let domains = |list: &[&str]| dns(|s| s.domains = texts(list)).unwrap().domains;
    assert_eq!(domains(&["api.example.com"]), [exact("api.example.com")]);
    // Lower-cased, one trailing dot dropped.
    assert_eq!(domains(&["API.Example.COM."]), [exact("api.example.com")]);
    assert_eq!(domains(&["*.example.com"]), [Domain::Below("example.com".into())]);
    assert_eq!(domains(&["api.*"]), [Domain::Starting("api".into())]);
    assert_eq!(domains(&["api.v2.*"]), [Domain::Starting("api.v2".into())]);
    assert_eq!(domains(&["*"]), [Domain::Any]);
    // `*` covers the others; none is every name; duplicates count once.
    assert_eq!(domains(&["a.com", "*", "*.b.com"]), [Domain::Any]);
    assert_eq!(domains(&[]), [Domain::Any]);
    assert_eq!(domains(&["a.com", "A.com.", "_srv._tcp.b-c.com"]), [exact("a.com"), exact("_srv._tcp.b-c.com")]);
    let all: Vec<String> = (0..64).map(|i| format!("n{i}.example.com")).collect();
    assert_eq!(dns(|s| s.domains = Some(all.clone())).unwrap().domains.len(), 64);
    for d in [exact("a.b"), Domain::Below("b".into()), Domain::Starting("a".into()), Domain::Any] {
        assert_eq!(Domain::parse(&d.to_string()), Ok(d.clone()), "{d}");
    }
    // The kernel's bounds: 126 characters written out, 40 labels.
    let label = |n: usize| "a".repeat(n);
    let longest = format!("{}.{}", label(63), label(62));
    assert_eq!(longest.len(), 126);
    assert_eq!(domains(&[&longest]), [exact(&longest)]);
    assert!(domains(&[&format!("*.{}.{}", label(63), label(60))]).len() == 1);
    let forty = vec!["a"; 40].join(".");
    assert_eq!(domains(&[&forty]), [exact(&forty)]);
    assert!(domains(&[&format!("*.{}", vec!["a"; 39].join("."))]).len() == 1);
}

#[test]
fn dns_domain_refusals() {
    let domain = |p: &str| dns(|s| s.domains = texts(&["ok.com", p]));
    let whole = "only a whole first or last label can be '*'";
    let label = |n: usize| "a".repeat(n);
    refused(vec![
        (domain(""), "domains[1]", "'' is empty"),
        (domain("."), "domains[1]", "'.' is empty"),
        (domain("api*.com"), "domains[1]", &format!("'api*.com': {whole}")),
        (domain("a.*.com"), "domains[1]", whole),
        (domain("*a.com"), "domains[1]", whole),
        (domain("*.*"), "domains[1]", whole),
        (domain("**"), "domains[1]", whole),
        (domain("www.examp?e.com"), "domains[1]", "'www.examp?e.com': '?' (a one-character placeholder) is not"),
        (domain("a..com"), "domains[1]", "'a..com' has an empty label"),
        (domain(".a.com"), "domains[1]", "has an empty label"),
        (domain("a.com.."), "domains[1]", "has an empty label"),
        (domain(&format!("{}.com", label(64))), "domains[1]", "is longer than 63 characters"),
        (domain("a b.com"), "domains[1]", "' ' is not allowed in a name (letters, digits, '-' and '_')"),
        (domain("ex@mple.com"), "domains[1]", "'@' is not allowed"),
        (domain("bücher.de"), "domains[1]", "'ü' is not allowed"),
        (domain(&vec!["a"; 41].join(".")), "domains[1]", "it has 41 labels: the kernel matches names of at most 40"),
        (
            domain(&format!("*.{}", vec!["a"; 40].join("."))),
            "domains[1]",
            "the names it matches have 41 labels or more",
        ),
        (domain(&format!("{}.*", vec!["a"; 40].join("."))), "domains[1]", "41 labels"),
        (
            domain(&format!("{}.{}", label(63), label(63))),
            "domains[1]",
            "it is 127 characters: the kernel matches names of at most 126 (128 bytes on the wire)",
        ),
        (
            domain(&format!("*.{}.{}", label(63), label(61))),
            "domains[1]",
            "the names it matches are 127 characters or more",
        ),
        (
            dns(|s| s.domains = Some((0..65).map(|i| format!("n{i}.com")).collect())),
            "domains",
            "65 patterns: a fault takes at most 64",
        ),
    ]);
    // `*.` is `*`, with its dot dropped.
    assert_eq!(domain("*.").unwrap().domains, [Domain::Any]);
}

#[test]
fn dns_refusals() {
    let spoof = |addrs: &[&str]| {
        dns(|s| {
            s.dns = Some("spoof".into());
            s.spoof = texts(addrs);
        })
    };
    let qtypes = |q: Vec<QTypeSpec>| dns(|s| s.qtypes = Some(q));
    let queries = "dns acts on queries: egress for queries this host sends, ingress for queries it receives";
    refused(vec![
        (
            dns(|s| s.dns = Some("lie".into())),
            "dns",
            "'lie' is not a dns reply (expected error, spoof, random or drop)",
        ),
        (dns(|s| s.dns = Some("Error".into())), "dns", "is not a dns reply"),
        (dns(|s| s.rcode = Some("NOERROR".into())), "rcode", "'NOERROR' is not a response code"),
        (
            dns(|s| (s.dns, s.rcode) = (Some("drop".into()), Some("NXDOMAIN".into()))),
            "rcode",
            "applies to dns 'error', not dns 'drop'",
        ),
        (
            dns(|s| (s.dns, s.rcode) = (Some("spoof".into()), Some("NXDOMAIN".into()))),
            "rcode",
            "applies to dns 'error', not dns 'spoof'",
        ),
        (dns(|s| s.spoof = texts(&["10.0.0.1"])), "spoof", "applies to dns 'spoof', not dns 'error'"),
        (
            dns(|s| (s.dns, s.spoof) = (Some("random".into()), texts(&["10.0.0.1"]))),
            "spoof",
            "applies to dns 'spoof', not dns 'random'",
        ),
        (dns(|s| s.dns = Some("spoof".into())), "spoof", "is required for dns 'spoof'"),
        (spoof(&[]), "spoof", "is required for dns 'spoof'"),
        (spoof(&["10.0.0.1", "10.0.0.2"]), "spoof", "10.0.0.1 and 10.0.0.2 are two IPv4 addresses: give at most one"),
        (spoof(&["::1", "fd00::1", "10.0.0.1"]), "spoof", "::1 and fd00::1 are two IPv6 addresses"),
        (spoof(&["example.com"]), "spoof", "'example.com' is not an IP address"),
        (spoof(&["10.0.0.0/8"]), "spoof", "is not an IP address"),
        (dns(|s| s.percent = Some(101.0)), "percent", "101% is outside 0-100%"),
        (dns(|s| s.percent = Some(-1.0)), "percent", "outside"),
        (dns(|s| s.percent = Some(f64::NAN)), "percent", "outside"),
        (qtypes(vec![QTypeSpec::Text("AXFR2".into())]), "qtypes", "'AXFR2' is not a query type (a number 1-65535 or"),
        (qtypes(vec![QTypeSpec::Text("0".into())]), "qtypes", "'0' is not a query type"),
        (qtypes(vec![QTypeSpec::Number(0)]), "qtypes", "0 is not a query type (1-65535)"),
        (qtypes(vec![QTypeSpec::Number(65536)]), "qtypes", "65536 is not a query type"),
        (qtypes((1..=9).map(QTypeSpec::Number).collect()), "qtypes", "more than 8 query types: give at most 8"),
        // Where and how it acts.
        (dns(|s| s.direction = Some("both".into())), "direction", queries),
        (dns(|s| s.protocol = Some("icmp".into())), "protocol", "icmp: dns acts on DNS queries over udp and tcp"),
        (
            dns(|s| (s.cgroup, s.direction) = (Some("/app".into()), Some("ingress".into()))),
            "direction",
            "a cgroup's ingress is where packets reach its sockets",
        ),
        // The other actions' fields.
        (dns(|s| s.loss = Some(5.0)), "loss", "not action 'dns'"),
        (dns(|s| s.correlation = Some(5.0)), "correlation", "not action 'dns'"),
        (dns(|s| s.duplicate = Some(5.0)), "duplicate", "applies to action 'duplicate', not action 'dns'"),
        (dns(|s| s.connections = Some("new".into())), "connections", "not action 'dns'"),
        (dns(|s| s.errno = Some("EPERM".into())), "errno", "not action 'dns'"),
        (dns(|s| s.delay = Some(DurationSpec::Text("5ms".into()))), "delay", "not action 'dns'"),
        (dns(|s| s.gemodel = Some("1".into())), "gemodel", "not action 'dns'"),
        // Its fields with the other actions.
        (with("loss", |s| s.dns = Some("error".into())), "dns", "applies to action 'dns', not action 'loss'"),
        (with("partition", |s| s.rcode = Some("NXDOMAIN".into())), "rcode", "applies to action 'dns'"),
        (with("reset", |s| s.spoof = texts(&["10.0.0.1"])), "spoof", "applies to action 'dns', not action 'reset'"),
        (with("duplicate", |s| s.qtypes = Some(vec![])), "qtypes", "applies to action 'dns'"),
        (with("loss", |s| s.percent = Some(30.0)), "percent", "applies to action 'dns', not action 'loss'"),
        (with("corrupt", |s| s.domains = texts(&["a.com"])), "domains", "applies to action 'dns'"),
        (with("explode", |_| {}), "action", "(expected 'loss', 'partition', 'delay', 'bandwidth', 'duplicate'"),
    ]);
    assert!(with("explode", |_| {}).unwrap_err().reason.ends_with("'connect-fail' or 'dns')"));
}

#[test]
fn dns_matches() {
    // Ingress: the queries a DNS server here receives, to port 53.
    let f = dns(|s| s.direction = Some("ingress".into())).unwrap();
    assert_eq!((f.matches.direction, f.matches.dport), (Direction::Ingress, PortRange { lo: 53, hi: 53 }));
    // A port given is taken as it is: a resolver on another port.
    let f = dns(|s| s.dport = Some(PortSpec::Text("5353".into()))).unwrap();
    assert_eq!(f.matches.dport, PortRange { lo: 5353, hi: 5353 });
    let f = dns(|s| s.dport = Some(PortSpec::Text("0-65535".into()))).unwrap();
    assert!(f.matches.dport.is_any());
    for (protocol, expected) in [("udp", Protocol::Udp), ("tcp", Protocol::Tcp), ("any", Protocol::Any)] {
        assert_eq!(dns(|s| s.protocol = Some(protocol.into())).unwrap().matches.protocol, expected);
    }
    let f = dns(|s| {
        s.dst = Some("10.96.0.10".into());
        s.cgroup = Some("/app".into());
    })
    .unwrap();
    assert_eq!(f.matches.families, Families { v4: true, v6: false });
    assert!(f.cgroup.is_some());
}

#[test]
fn dns_toml_and_json() {
    #[derive(Deserialize)]
    struct File {
        fault: Vec<FaultSpec>,
    }
    let file: File = toml::from_str(
        r#"
        [[fault]]
        interface = "eth0"
        action = "dns"
        dns = "spoof"
        spoof = ["10.0.0.1", "fd00::1"]
        qtypes = ["A", "aaaa", 15]
        percent = 30
        domains = ["*.example.com", "api.*"]
        "#,
    )
    .unwrap();
    let f = file.fault[0].validate().unwrap();
    let Action::Dns(d) = f.action else { panic!("{:?}", f.action) };
    assert_eq!((d.p, d.qtypes.iter().collect::<Vec<_>>()), (0.3, vec![1, 28, 15]));
    assert_eq!(f.domains, [Domain::Below("example.com".into()), Domain::Starting("api".into())]);
    // The JSON the API echoes has the fields as sent.
    let json = serde_json::to_value(&file.fault[0]).unwrap();
    assert_eq!(json["qtypes"], serde_json::json!(["A", "aaaa", 15]));
    assert_eq!(json["domains"], serde_json::json!(["*.example.com", "api.*"]));
    let back: FaultSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, file.fault[0]);
    // Absent fields are left out.
    let json = serde_json::to_value(spec()).unwrap();
    for field in ["dns", "rcode", "spoof", "qtypes", "percent", "domains"] {
        assert!(json.get(field).is_none(), "{field}");
    }
}
