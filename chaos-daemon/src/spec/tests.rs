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
