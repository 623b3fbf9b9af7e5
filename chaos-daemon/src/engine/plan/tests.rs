//! What `rule_action` writes for each action, checked against the models it stands for.

use super::*;
use crate::{
    spec::FaultSpec,
    state::{Actor, Record},
};

const DEADLINE: u64 = 123_456_789;
const MARK: u32 = 1 << 20;

/// A started fault from `spec` (which must be valid), as the engine keeps it.
fn active(spec: FaultSpec) -> Active {
    let fault = spec.validate().unwrap();
    let record = Record {
        name: "f".into(),
        spec: crate::state::SpecText::new(&spec),
        slot: 7,
        experiment: None,
        applied_by: Actor::default(),
        applied_at: 0,
        start_ns: 0,
        deadline_ns: DEADLINE,
        started: true,
        starts_at: 0,
        expires_at: None,
    };
    Active { record, fault, ifindex: 2, watch: None, cgroup: None, seq: 0 }
}

/// A valid spec of `action` on eth0, changed by `f`.
fn spec(action: &str, f: impl FnOnce(&mut FaultSpec)) -> FaultSpec {
    let mut s = FaultSpec { interface: Some("eth0".into()), action: Some(action.into()), ..Default::default() };
    f(&mut s);
    s
}

fn action_of(action: &str, f: impl FnOnce(&mut FaultSpec)) -> RuleAction {
    rule_action(&active(spec(action, f)), MARK)
}

#[test]
fn chance_fields() {
    let base = RuleAction { deadline_ns: DEADLINE, ..Default::default() };
    let t = threshold;

    let a = chance(Odds::random(0.3), base);
    assert_eq!((a.chance, a.flip, a.chain), ([t(0.3); 2], [0; 2], ChainKind::None as u32));
    assert_eq!(a.deadline_ns, DEADLINE);
    // -0% correlation (from "-0") is none as well.
    assert_eq!(chance(Odds::Random { p: 0.3, correlation: -0.0 }, base).chain, ChainKind::None as u32);

    let a = chance(Odds::Random { p: 0.2, correlation: 0.5 }, base);
    assert_eq!((a.chance, a.flip, a.chain), ([t(0.1), t(0.6)], [0; 2], ChainKind::Outcome as u32));
    // Certain events stay certain, whatever the correlation.
    let a = chance(Odds::Random { p: 1.0, correlation: 0.5 }, base);
    assert_eq!(a.chance, [t(0.5), DROP_ALWAYS]);
    let a = chance(Odds::Random { p: 0.0, correlation: 0.5 }, base);
    assert_eq!(a.chance, [0, t(0.5)]);

    let a = chance(Odds::GilbertElliott { p: 0.01, r: 0.3, loss_bad: 0.9, loss_good: 0.02 }, base);
    assert_eq!((a.chance, a.flip, a.chain), ([t(0.02), t(0.9)], [t(0.01), t(0.3)], ChainKind::GilbertElliott as u32));
    assert_eq!(a.deadline_ns, DEADLINE);
}

#[test]
fn rule_actions() {
    let t = threshold;
    let loss = action_of("loss", |s| s.loss = Some(30.0));
    assert_eq!(
        (loss.kind, loss.chance, loss.chain, loss.mark, loss.flags),
        (ActionKind::Loss as u32, [t(0.3); 2], ChainKind::None as u32, 0, RuleFlags::NONE)
    );
    assert_eq!(loss.deadline_ns, DEADLINE);

    let ge = action_of("loss", |s| s.gemodel = Some("1 30".into()));
    assert_eq!(
        (ge.kind, ge.chance, ge.flip, ge.chain),
        (ActionKind::Loss as u32, [0, DROP_ALWAYS], [t(0.01), t(0.3)], ChainKind::GilbertElliott as u32)
    );

    let p = action_of("partition", |_| {});
    assert_eq!(
        (p.kind, p.chance, p.chain, p.deadline_ns),
        (ActionKind::Partition as u32, [DROP_ALWAYS; 2], ChainKind::None as u32, DEADLINE)
    );

    let d = action_of("duplicate", |s| {
        s.duplicate = Some(20.0);
        s.correlation = Some(50.0);
    });
    assert_eq!((d.kind, d.mark, d.flags), (ActionKind::Duplicate as u32, MARK, RuleFlags::NONE));
    assert_eq!((d.chance, d.chain, d.deadline_ns), ([t(0.1), t(0.6)], ChainKind::Outcome as u32, DEADLINE));

    let c = action_of("corrupt", |s| s.corrupt = Some(5.0));
    assert_eq!(
        (c.kind, c.chance, c.chain, c.flags, c.mark),
        (ActionKind::Corrupt as u32, [t(0.05); 2], ChainKind::None as u32, RuleFlags::NONE, 0)
    );
    let c = action_of("corrupt", |s| {
        s.corrupt = Some(5.0);
        s.checksum = Some("broken".into());
    });
    assert_eq!(c.flags, RuleFlags::NONE);
    let c = action_of("corrupt", |s| {
        s.corrupt = Some(5.0);
        s.checksum = Some("fixed".into());
    });
    assert_eq!(
        (c.kind, c.flags, c.deadline_ns),
        (ActionKind::Corrupt as u32, RuleFlags::CORRUPT_FIX_CHECKSUM, DEADLINE)
    );

    for (connections, flags) in
        [(None, RuleFlags::NONE), (Some("all"), RuleFlags::NONE), (Some("new"), RuleFlags::RESET_NEW_ONLY)]
    {
        let r = action_of("reset", |s| s.connections = connections.map(Into::into));
        assert_eq!(
            (r.kind, r.chance, r.chain, r.flags, r.mark),
            (ActionKind::Reset as u32, [DROP_ALWAYS; 2], ChainKind::None as u32, flags, 0)
        );
        assert_eq!(r.deadline_ns, DEADLINE);
    }

    // The errno has a field of its own: `flags` holds flag bits only.
    let f = action_of("connect-fail", |s| {
        s.interface = None;
        s.cgroup = Some("/app".into());
        s.errno = Some("ETIMEDOUT".into());
    });
    assert_eq!((f.kind, f.chance, f.flags), (ActionKind::ConnectFail as u32, [DROP_ALWAYS; 2], RuleFlags::NONE));
    assert_eq!(f.errno, libc::ETIMEDOUT as u32);
    assert_eq!(action_of("loss", |s| s.loss = Some(30.0)).errno, 0);
}

/// splitmix64, top 32 bits: a uniform u32 as `bpf_get_prandom_u32` gives, widened as the
/// program widens it.
struct Rng(u64);

impl Rng {
    fn u32(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) >> 32
    }
}

/// chaos-ebpf's `happens`, step for step: the event with `chance[state]` (64-bit compare), then
/// the next state: the outcome (ChainKind::Outcome) or a flip on a second draw (ChainKind::GilbertElliott).
fn happens(a: &RuleAction, state: &mut u32, rng: &mut Rng) -> bool {
    let rnd = rng.u32();
    if a.chain == ChainKind::None as u32 {
        return rnd < a.chance[0];
    }
    let bad = *state != 0;
    let hit = rnd < if bad { a.chance[1] } else { a.chance[0] };
    let next = if a.chain == ChainKind::Outcome as u32 {
        hit
    } else if a.chain == ChainKind::GilbertElliott as u32 {
        let flip = rng.u32() < if bad { a.flip[1] } else { a.flip[0] };
        bad != flip
    } else {
        bad
    };
    *state = u32::from(next);
    hit
}

const STEPS: u64 = 2_000_000;
/// Steps run before counting, so the chain (which starts in state 0) is near its stationary
/// law: its memory decays as |λ|^k with |λ| ≤ 0.9 below, gone long before this.
const BURN_IN: u64 = 10_000;
/// How many standard deviations an estimate may stray: at 6 a correct model fails about once
/// in 10^9 seeds, so no seed is needed to pass, and a wrong model (an error of a few percent
/// of the value) still stands far outside.
const SIGMAS: f64 = 6.0;

/// What a run of `STEPS` packets looked like.
#[derive(Debug, Default)]
struct Run {
    hits: u64,
    /// Packets that follow a hit, and those of them hit.
    after_hit: u64,
    hit_after_hit: u64,
    /// Packets that follow a miss, and those of them hit.
    after_miss: u64,
    hit_after_miss: u64,
    /// Bursts: hits that follow a miss.
    bursts: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.hits as f64 / STEPS as f64
    }

    fn mean_burst(&self) -> f64 {
        self.hits as f64 / self.bursts as f64
    }

    /// The sample lag-1 correlation of outcomes, (E[x_t x_t+1] - x̄²) / (x̄ (1 - x̄)). For a
    /// 0/1 series this is, up to one packet at either end, P(hit | hit) - P(hit | miss).
    fn lag1(&self) -> f64 {
        let x = self.rate();
        (self.hit_after_hit as f64 / STEPS as f64 - x * x) / (x * (1.0 - x))
    }
}

fn simulate(a: &RuleAction, seed: u64) -> Run {
    let mut rng = Rng(seed);
    let mut state = 0;
    let mut last = false;
    for _ in 0..BURN_IN {
        last = happens(a, &mut state, &mut rng);
    }
    let mut run = Run::default();
    for _ in 0..STEPS {
        let hit = happens(a, &mut state, &mut rng);
        let h = u64::from(hit);
        run.hits += h;
        if last {
            run.after_hit += 1;
            run.hit_after_hit += h;
        } else {
            run.after_miss += 1;
            run.hit_after_miss += h;
            run.bursts += h;
        }
        last = hit;
    }
    run
}

/// Asymptotic variance per packet of the hit rate, σ² with Var(rate) = σ²/n, for a hit drawn
/// with e_s in a two-state Markov chain s (stationary law π, second eigenvalue λ), the event
/// draw independent of the chain's moves: E_π[e(1-e)] (the event draws) plus
/// Var_π(e_s) (1+λ)/(1-λ) (the states' autocorrelation λ^k summed over lags).
fn rate_variance(odds: Odds) -> f64 {
    let (e, move_out) = match odds {
        // The state is the last outcome, so the event draw is the chain's move: take the
        // outcomes themselves as the chain (e = 0 or 1, no draw of its own). A hit follows a
        // miss with (1-c)p, a miss follows a hit with (1-c)(1-p); λ = c, σ² = p(1-p)(1+c)/(1-c).
        Odds::Random { p, correlation: c } => ([0.0, 1.0], [(1.0 - c) * p, (1.0 - c) * (1.0 - p)]),
        Odds::GilbertElliott { p, r, loss_bad, loss_good } => ([loss_good, loss_bad], [p, r]),
    };
    let leave = move_out[0] + move_out[1];
    // A chain that never moves stays in state 0, where it starts.
    let pi = if leave == 0.0 { [1.0, 0.0] } else { [move_out[1] / leave, move_out[0] / leave] };
    let lambda = 1.0 - leave;
    let draws = pi[0] * e[0] * (1.0 - e[0]) + pi[1] * e[1] * (1.0 - e[1]);
    let states = pi[0] * pi[1] * (e[1] - e[0]).powi(2);
    if states == 0.0 { draws } else { draws + states * (1.0 + lambda) / (1.0 - lambda) }
}

fn within(what: &str, got: f64, want: f64, sd: f64) {
    assert!(
        (got - want).abs() <= SIGMAS * sd,
        "{what}: got {got}, want {want} ± {} ({SIGMAS} sd of {sd})",
        SIGMAS * sd
    );
}

/// The rules the programs run reproduce the model's long-run rate: Odds::mean().
fn check_rate(spec: FaultSpec, seed: u64) -> (Odds, Run) {
    let a = active(spec);
    let odds = match a.fault.action {
        Action::Loss(o) | Action::Duplicate(o) | Action::Corrupt(o, _) => o,
        other => panic!("{other:?} has no odds"),
    };
    let run = simulate(&rule_action(&a, MARK), seed);
    within(&format!("{odds:?} rate"), run.rate(), odds.mean(), (rate_variance(odds) / STEPS as f64).sqrt());
    (odds, run)
}

#[test]
fn correlated_outcomes_keep_the_rate_and_make_bursts() {
    let cases = [
        ("loss", 30.0, None),
        ("loss", 30.0, Some(50.0)),
        ("duplicate", 2.0, Some(90.0)),
        ("corrupt", 90.0, Some(75.0)),
    ];
    for (i, (action, percent, correlation)) in cases.into_iter().enumerate() {
        let s = spec(action, |s| {
            match action {
                "loss" => s.loss = Some(percent),
                "duplicate" => s.duplicate = Some(percent),
                _ => s.corrupt = Some(percent),
            }
            s.correlation = correlation;
        });
        let (odds, run) = check_rate(s, 0x5eed + i as u64);
        let Odds::Random { p, correlation: c } = odds else { unreachable!() };
        // Burst lengths: after its first hit a burst goes on with a = c + (1-c)p and ends with
        // q = 1 - a = (1-p)(1-c): lengths are independent Geometric(q) (each burst starts the
        // chain afresh), mean 1/q, variance (1-q)/q², so the mean of R bursts has sd
        // sqrt((1-q)/R)/q.
        let q = (1.0 - p) * (1.0 - c);
        let bursts = run.bursts as f64;
        within(&format!("{odds:?} mean burst"), run.mean_burst(), 1.0 / q, ((1.0 - q) / bursts).sqrt() / q);
        // Lag-1 correlation = P(hit | hit) - P(hit | miss) = a - b (see Run::lag1), each
        // estimated from independent Bernoulli draws: after_hit draws with a, after_miss with
        // b = (1-c)p, so its variance is a(1-a)/after_hit + b(1-b)/after_miss.
        let (a, b) = (c + (1.0 - c) * p, (1.0 - c) * p);
        let sd = (a * (1.0 - a) / run.after_hit as f64 + b * (1.0 - b) / run.after_miss as f64).sqrt();
        within(&format!("{odds:?} lag-1 correlation"), run.lag1(), c, sd);
        // And each of its two halves.
        let (after_hit, after_miss) = (run.after_hit as f64, run.after_miss as f64);
        let sd_a = (a * (1.0 - a) / after_hit).sqrt();
        within(&format!("{odds:?} P(hit | hit)"), run.hit_after_hit as f64 / after_hit, a, sd_a);
        let sd_b = (b * (1.0 - b) / after_miss).sqrt();
        within(&format!("{odds:?} P(hit | miss)"), run.hit_after_miss as f64 / after_miss, b, sd_b);
    }
}

#[test]
fn gilbert_elliott_keeps_its_mean() {
    // netem's P R 1-H 1-K, as written.
    let cases = ["1 30", "5 20 80 1", "60 70 50 10", "0 100 50 5", "2% 10% 100% 0%"];
    for (i, gemodel) in cases.into_iter().enumerate() {
        let (odds, run) = check_rate(spec("loss", |s| s.gemodel = Some(gemodel.into())), 0x6e00 + i as u64);
        // With 1-H 100% and 1-K 0% (simple Gilbert) the hits are the bad state: a burst is a
        // stay in it, Geometric(r) long, mean 1/r, variance (1-r)/r², as above.
        if let Odds::GilbertElliott { r, loss_bad: 1.0, loss_good: 0.0, .. } = odds {
            let bursts = run.bursts as f64;
            within(&format!("{odds:?} mean burst"), run.mean_burst(), 1.0 / r, ((1.0 - r) / bursts).sqrt() / r);
        }
    }
}

#[test]
fn the_variance_model_matches_the_chains() {
    // The bounds above lean on rate_variance: check it against the spread of the rate over
    // many shorter runs. The rates of M runs of K packets are close to normal, so their sample
    // variance (times K, an estimate of σ²) has a relative sd of sqrt(2/(M-1)); K is far
    // longer than the chains' memory, so the runs are close to independent.
    const K: u64 = 5_000;
    const M: u64 = 400;
    let cases = [
        Odds::Random { p: 0.3, correlation: 0.0 },
        Odds::Random { p: 0.2, correlation: 0.8 },
        Odds::GilbertElliott { p: 0.05, r: 0.2, loss_bad: 0.8, loss_good: 0.01 },
    ];
    for (i, odds) in cases.into_iter().enumerate() {
        let a = chance(odds, RuleAction::default());
        let mut rng = Rng(0x7a00 + i as u64);
        let mut state = 0;
        for _ in 0..BURN_IN {
            happens(&a, &mut state, &mut rng);
        }
        let rates: Vec<f64> =
            (0..M).map(|_| (0..K).filter(|_| happens(&a, &mut state, &mut rng)).count() as f64 / K as f64).collect();
        let mean = rates.iter().sum::<f64>() / M as f64;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (M - 1) as f64 * K as f64;
        let want = rate_variance(odds);
        let sd = (2.0 / (M - 1) as f64).sqrt();
        assert!((var / want - 1.0).abs() <= SIGMAS * sd, "{odds:?}: variance {var}, model {want}");
    }
}

/// What docs/faults.md says of netem's correlated loss, which these rules do not copy: netem
/// averages the random numbers (`get_crandom`: `(rnd * (2^32 - rho) + last * rho) >> 32`, with
/// `rho = c * (2^32 - 1) + 1`) and drops when `loss >= that`, which narrows their spread and
/// lowers the rate far below the one asked for.
#[test]
fn netems_correlation_lowers_the_rate() {
    let netem = |p: f64, c: f64| {
        let (mut rng, steps) = (Rng(7), 1_000_000u32);
        let rho = (c * f64::from(u32::MAX)).round() as u64 + 1;
        let threshold = (p * f64::from(u32::MAX)).round() as u64;
        let mut last = rng.u32();
        let lost = (0..steps)
            .filter(|_| {
                last = (rng.u32() * ((1 << 32) - rho) + last * rho) >> 32;
                threshold >= last
            })
            .count();
        lost as f64 / f64::from(steps)
    };
    // The rates docs/faults.md gives, within half a point: a million correlated steps spread
    // far less than that, and the rates asked for (10%, 30%) are far above.
    for (p, c, rate) in [(0.10, 0.25, 0.018), (0.10, 0.50, 0.001), (0.30, 0.50, 0.13)] {
        let got = netem(p, c);
        assert!((got - rate).abs() < 0.005, "netem loss {p} correlation {c}: {got}, docs say {rate}");
    }
}

/// A started dns fault in `slot`, applied `seq`-th, on `domains`, changed by `f`.
fn dns(slot: u32, seq: u64, domains: &[&str], f: impl FnOnce(&mut FaultSpec)) -> Active {
    let mut a = active(spec("dns", |s| {
        s.domains = Some(domains.iter().map(|d| (*d).to_owned()).collect());
        f(s);
    }));
    a.record.slot = slot;
    a.seq = seq;
    a
}

/// The entries of `slot`'s table, as (form, name bytes written out, value), sorted.
fn table(names: &BTreeMap<(u32, DnsNameKey), u32>, slot: u32) -> Vec<(u8, String, u32)> {
    let mut out: Vec<_> = names
        .iter()
        .filter(|((_, k), _)| u32::from(k.slot) == slot)
        .map(|((len, k), v)| {
            let n = ((len - DNS_KEY_FIXED_BITS) / 8) as usize;
            (k.form, String::from_utf8_lossy(&k.name[..n]).replace('\0', "$"), *v)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn dns_keys_are_the_names_the_program_builds() {
    // The program writes a query's labels each led by a dot, reversed, then a zero byte
    // (chaos-ebpf's dns.rs): an exact name is that whole, `*.x` its part up to x's first dot,
    // `x.*` the name forward up to the dot after x.
    let a = dns(3, 0, &["Api.Example.com.", "*.shop.test", "cdn.*"], |_| {});
    let names = dns_names(&[&a]);
    let (rev, fwd) = (DnsForm::Reversed as u8, DnsForm::Forward as u8);
    assert_eq!(
        table(&names, 3),
        [
            (rev, "moc.elpmaxe.ipa.$".to_owned(), 3),
            (rev, "tset.pohs.".to_owned(), 3),
            // `*.shop.test` does not cover shop.test itself.
            (rev, "tset.pohs.$".to_owned(), DNS_NO_SLOT),
            (fwd, ".cdn.".to_owned(), 3),
        ]
    );
    let every = dns(4, 0, &[], |_| {});
    assert_eq!(table(&dns_names(&[&every]), 4), [(rev, String::new(), 4)]);
}

#[test]
fn dns_tables_hold_the_faults_covering_theirs() {
    let rev = DnsForm::Reversed as u8;
    // Two faults on the same queries: each table holds both, the first applied winning a
    // pattern both have; an exact name makes the `*.x` sentinel unneeded.
    let first = dns(1, 0, &["*.example.test", "same.test"], |_| {});
    let second = dns(2, 1, &["example.test", "same.test"], |s| s.dns = Some("drop".into()));
    let names = dns_names(&[&first, &second]);
    let want = |a: u32, b: u32| {
        vec![
            (rev, "tset.elpmaxe.".to_owned(), 1),
            (rev, "tset.elpmaxe.$".to_owned(), 2),
            (rev, "tset.emas.$".to_owned(), a.min(b)),
        ]
    };
    assert_eq!(table(&names, 1), want(1, 2));
    assert_eq!(table(&names, 2), want(1, 2));

    // A fault on one server's queries does not cover one on every server's: the wider one's
    // table lacks its names; its own table has the wider one's.
    let wide = dns(1, 0, &["a.test"], |_| {});
    let narrow = dns(2, 1, &["b.test"], |s| s.dst = Some("10.0.0.53".into()));
    let names = dns_names(&[&wide, &narrow]);
    assert_eq!(table(&names, 1), [(rev, "tset.a.$".to_owned(), 1)]);
    assert_eq!(table(&names, 2), [(rev, "tset.a.$".to_owned(), 1), (rev, "tset.b.$".to_owned(), 2)]);

    // Nor one on another interface, or the other direction.
    let mut other = dns(2, 1, &["b.test"], |_| {});
    other.ifindex = 9;
    let ingress = dns(3, 2, &["c.test"], |s| s.direction = Some("ingress".into()));
    let names = dns_names(&[&wide, &other, &ingress]);
    assert_eq!(table(&names, 1), [(rev, "tset.a.$".to_owned(), 1)]);
    assert_eq!(table(&names, 2), [(rev, "tset.b.$".to_owned(), 2)]);
    assert_eq!(table(&names, 3), [(rev, "tset.c.$".to_owned(), 3)]);
}
