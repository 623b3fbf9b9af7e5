//! The compiled tables are checked against the rules themselves: a model of the kernel's lookup
//! chain over the tables must pick the same rule as a direct reading of the rules, for random
//! rule sets and packets.

use std::net::IpAddr;

use super::*;
use crate::spec::{Action, Families, Odds};

/// What the program extracts from a packet.
#[derive(Clone, Copy, Debug)]
struct Pkt {
    ifindex: u32,
    hook: Hook,
    /// Its socket's cgroup id; 0 for none.
    cgroup: u64,
    family: Family,
    /// One of [`Proto`]'s values, as the program makes it.
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

/// Whether the first `n` bits of `a` and `b` are equal.
fn same_bits(a: &[u8], b: &[u8], n: u32) -> bool {
    let (whole, rest) = ((n / 8) as usize, n % 8);
    a[..whole] == b[..whole] && (rest == 0 || (a[whole] ^ b[whole]) & (0xff << (8 - rest)) == 0)
}

/// Longest-prefix match as the kernel's LPM trie does it.
fn lpm<K: Copy>(entries: &[(u32, K, u32)], data: &K, as_bytes: impl Fn(&K) -> Vec<u8>) -> Option<u32> {
    let want = as_bytes(data);
    entries
        .iter()
        .filter(|(len, k, _)| same_bits(&as_bytes(k), &want, *len))
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, _, v)| *v)
}

fn addr_bytes(k: &AddrKey) -> Vec<u8> {
    let mut v = vec![k.generation, k.hook, k.family, k.side];
    v.extend_from_slice(&k.scope.to_ne_bytes());
    k.addr.iter().for_each(|w| v.extend_from_slice(&w.to_ne_bytes()));
    v
}

fn port_bytes(k: &PortKey) -> Vec<u8> {
    let mut v = k.class.to_ne_bytes().to_vec();
    v.extend_from_slice(&[k.proto, k.side]);
    v.extend_from_slice(&k.port.to_ne_bytes());
    v
}

/// The cgroup scope of the packet's cgroup, as the programs look it up.
fn cgroup_scope(t: &Tables, generation: u8, p: Pkt) -> Option<u32> {
    let key = ScopeKey { generation, hook: p.hook as u8, _pad: 0, ifindex: p.ifindex, cgroup: p.cgroup };
    t.scopes.iter().find(|(k, _)| *k == key).map(|(_, s)| *s)
}

/// The TC program's lookup chain over `t`: on egress in the packet's cgroup scope if it has
/// one, else (and always on ingress) in the interface's.
fn kernel(t: &Tables, generation: u8, p: Pkt) -> Option<u32> {
    let scoped = if p.hook == Hook::Egress { cgroup_scope(t, generation, p) } else { None };
    chain(t, generation, p, scoped.unwrap_or(p.ifindex))
}

/// The cgroup programs' lookup chain (ingress, connect): in the packet's cgroup scope only.
fn kernel_cgroup(t: &Tables, generation: u8, p: Pkt) -> Option<u32> {
    chain(t, generation, p, cgroup_scope(t, generation, p)?)
}

fn chain(t: &Tables, generation: u8, p: Pkt, scope: u32) -> Option<u32> {
    let words = |a: [u8; 16]| std::array::from_fn(|i| u32::from_ne_bytes(a[4 * i..4 * i + 4].try_into().unwrap()));
    let mut key = AddrKey {
        generation,
        hook: p.hook as u8,
        family: p.family as u8,
        side: Side::Src as u8,
        scope,
        addr: words(p.src),
    };
    let s = lpm(&t.addrs, &key, addr_bytes)?;
    key.side = Side::Dst as u8;
    key.addr = words(p.dst);
    let d = lpm(&t.addrs, &key, addr_bytes)?;
    let pair = t.pairs.iter().find(|(k, _)| *k == PairKey { src_class: s, dst_class: d })?.1;
    if let Some(slot) = chaos_common::slot_of(pair) {
        return Some(slot);
    }
    let dk = PortKey { class: pair, proto: p.proto, side: Side::Dst as u8, port: p.dport.to_be() };
    let dc = lpm(&t.ports, &dk, port_bytes)?;
    if let Some(slot) = chaos_common::slot_of(dc) {
        return Some(slot);
    }
    let sk = PortKey { class: dc, proto: 0, side: Side::Src as u8, port: p.sport.to_be() };
    lpm(&t.ports, &sk, port_bytes)
}

fn contains(c: Option<Cidr>, family: Family, addr: [u8; 16]) -> bool {
    match c {
        None => true,
        Some(c) => (c.is_v4() == (family == Family::V4)) && mask(addr, c.len) == mask(c.bytes(), c.len),
    }
}

/// The rules read directly: which one acts on `p` at TC (`cgroup_program` false: interface
/// rules, and on egress the cgroup rules of the packet's cgroup) or in the cgroup programs
/// (true: the cgroup rules of the packet's cgroup only).
fn reference(rules: &[Rule], p: Pkt, cgroup_program: bool) -> Option<u32> {
    let matches = |r: &Rule| {
        let in_cgroup = r.cgroups.as_ref().map(|ids| ids.contains(&p.cgroup));
        let scope_ok = match (in_cgroup, cgroup_program) {
            (None, false) => true,
            (Some(inside), false) => inside && p.hook == Hook::Egress,
            (Some(inside), true) => inside,
            (None, true) => false,
        };
        let fam = if p.family == Family::V4 { r.matches.families.v4 } else { r.matches.families.v6 };
        let mirrored = match (r.matches.direction, p.hook) {
            _ if r.connect != (p.hook == Hook::Connect) => return false,
            (_, Hook::Connect) => false,
            (Direction::Egress, Hook::Egress) | (Direction::Ingress, Hook::Ingress) => false,
            (Direction::Both, Hook::Egress) => false,
            (Direction::Both, Hook::Ingress) => true,
            _ => return false,
        };
        let (src, dst, sport, dport) = if mirrored {
            (r.matches.dst, r.matches.src, r.matches.dport, r.matches.sport)
        } else {
            (r.matches.src, r.matches.dst, r.matches.sport, r.matches.dport)
        };
        let has_ports = matches!(p.proto, Proto::TCP | Proto::UDP);
        let proto_ok = match r.matches.protocol {
            Protocol::Tcp => p.proto == Proto::TCP,
            Protocol::Udp => p.proto == Proto::UDP,
            Protocol::Icmp => p.proto == if p.family == Family::V4 { Proto::ICMP } else { Proto::ICMPV6 },
            Protocol::Any => has_ports || (sport.is_any() && dport.is_any()),
        };
        let in_range = |r: PortRange, v: u16| r.lo <= v && v <= r.hi;
        r.ifindex == p.ifindex
            && scope_ok
            && fam
            && proto_ok
            && contains(src, p.family, p.src)
            && contains(dst, p.family, p.dst)
            && in_range(sport, p.sport)
            && in_range(dport, p.dport)
    };
    // Highest threshold wins; among equals, the first applied.
    let mut best: Option<&Rule> = None;
    for r in rules.iter().filter(|r| matches(r)) {
        if best.is_none_or(|b| r.threshold > b.threshold) {
            best = Some(r);
        }
    }
    best.map(|r| r.slot)
}

fn rule(slot: u32) -> Rule {
    Rule {
        slot,
        ifindex: 2,
        matches: Match {
            direction: Direction::Egress,
            families: Families { v4: true, v6: true },
            protocol: Protocol::Any,
            src: None,
            dst: None,
            sport: PortRange::ANY,
            dport: PortRange::ANY,
        },
        threshold: Action::Loss(Odds::random(0.5)).drop_threshold(),
        cgroups: None,
        connect: false,
        seq: 0,
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0; 16];
    b[..4].copy_from_slice(&a);
    b
}

fn pkt(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Pkt {
    Pkt {
        ifindex: 2,
        hook: Hook::Egress,
        cgroup: 0,
        family: Family::V4,
        proto,
        src: v4(src),
        dst: v4(dst),
        sport,
        dport,
    }
}

#[test]
fn udp_port_rule() {
    let mut r = rule(7);
    r.matches.protocol = Protocol::Udp;
    r.matches.dport = PortRange { lo: 9000, hi: 9000 };
    let t = compile(&[r], 0).unwrap();
    assert_eq!(kernel(&t, 0, pkt([1, 1, 1, 1], [2, 2, 2, 2], Proto::UDP, 5, 9000)), Some(7));
    assert_eq!(kernel(&t, 0, pkt([1, 1, 1, 1], [2, 2, 2, 2], Proto::UDP, 5, 9001)), None);
    assert_eq!(kernel(&t, 0, pkt([1, 1, 1, 1], [2, 2, 2, 2], Proto::TCP, 5, 9000)), None);
    // Other generation's view is empty; other interface and hook too.
    assert_eq!(kernel(&t, 1, pkt([1, 1, 1, 1], [2, 2, 2, 2], Proto::UDP, 5, 9000)), None);
    let mut p = pkt([1, 1, 1, 1], [2, 2, 2, 2], Proto::UDP, 5, 9000);
    p.hook = Hook::Ingress;
    assert_eq!(kernel(&t, 0, p), None);
    p.hook = Hook::Egress;
    p.ifindex = 3;
    assert_eq!(kernel(&t, 0, p), None);
}

#[test]
fn both_directions_mirror() {
    let mut r = rule(1);
    r.matches.direction = Direction::Both;
    r.matches.dst = Some("10.0.0.2/32".parse().unwrap());
    r.threshold = Action::Partition.drop_threshold();
    let t = compile(&[r], 1).unwrap();
    let out = pkt([10, 0, 0, 1], [10, 0, 0, 2], Proto::TCP, 40000, 80);
    assert_eq!(kernel(&t, 1, out), Some(1));
    let mut back = pkt([10, 0, 0, 2], [10, 0, 0, 1], Proto::TCP, 80, 40000);
    back.hook = Hook::Ingress;
    assert_eq!(kernel(&t, 1, back), Some(1));
    back.src = v4([10, 0, 0, 4]);
    assert_eq!(kernel(&t, 1, back), None);
}

#[test]
fn strongest_rule_wins_then_oldest() {
    let mut weak = rule(1);
    weak.threshold = Action::Loss(Odds::random(0.1)).drop_threshold();
    let mut strong = rule(2);
    strong.matches.dst = Some("10.0.0.0/8".parse().unwrap());
    strong.threshold = Action::Loss(Odds::random(0.9)).drop_threshold();
    let mut equal = rule(3);
    equal.threshold = strong.threshold;
    let t = compile(&[weak.clone(), strong.clone(), equal.clone()], 0).unwrap();
    assert_eq!(kernel(&t, 0, pkt([1, 1, 1, 1], [10, 1, 1, 1], Proto::UDP, 1, 2)), Some(2));
    assert_eq!(kernel(&t, 0, pkt([1, 1, 1, 1], [11, 1, 1, 1], Proto::UDP, 1, 2)), Some(3));
}

#[test]
fn cgroup_rules_act_on_their_cgroups_only() {
    // An interface-wide loss, a partition of cgroup 11 (and 12, below it) on egress and ingress.
    let wide = rule(1);
    let mut cg = rule(2);
    cg.matches.direction = Direction::Both;
    cg.threshold = Action::Partition.drop_threshold();
    cg.cgroups = Some(vec![11, 12]);
    let t = compile(&[wide, cg], 0).unwrap();
    let out = |cgroup| Pkt { cgroup, ..pkt([1, 1, 1, 1], [2, 2, 2, 2], Proto::UDP, 5, 9000) };
    assert_eq!(kernel(&t, 0, out(11)), Some(2));
    assert_eq!(kernel(&t, 0, out(12)), Some(2));
    // Another cgroup, or none (forwarded), gets the interface's rule.
    assert_eq!(kernel(&t, 0, out(13)), Some(1));
    assert_eq!(kernel(&t, 0, out(0)), Some(1));
    // Ingress: TC sees the interface's rules only; the cgroup program the cgroup's.
    let back = |cgroup| Pkt { hook: Hook::Ingress, ..out(cgroup) };
    assert_eq!(kernel(&t, 0, back(11)), None);
    assert_eq!(kernel_cgroup(&t, 0, back(11)), Some(2));
    assert_eq!(kernel_cgroup(&t, 0, back(13)), None);
    // 11 and 12 have the same rules: one scope.
    let scopes: BTreeSet<u32> = t.scopes.iter().map(|(_, s)| *s).collect();
    assert_eq!(scopes.len(), 2, "{:?}", t.scopes);
}

#[test]
fn connect_rules_match_the_destination() {
    let mut r = rule(4);
    r.ifindex = 0;
    r.connect = true;
    r.cgroups = Some(vec![11]);
    r.matches.protocol = Protocol::Tcp;
    r.matches.dst = Some("10.0.0.0/8".parse().unwrap());
    r.matches.dport = PortRange { lo: 3306, hi: 3306 };
    r.threshold = Action::ConnectFail { errno: 111 }.drop_threshold();
    let t = compile(&[r], 1).unwrap();
    let connect = |cgroup, dst, dport| Pkt {
        ifindex: 0,
        hook: Hook::Connect,
        cgroup,
        ..pkt([0, 0, 0, 0], dst, Proto::TCP, 0, dport)
    };
    assert_eq!(kernel_cgroup(&t, 1, connect(11, [10, 1, 2, 3], 3306)), Some(4));
    assert_eq!(kernel_cgroup(&t, 1, connect(12, [10, 1, 2, 3], 3306)), None);
    assert_eq!(kernel_cgroup(&t, 1, connect(11, [11, 1, 2, 3], 3306)), None);
    assert_eq!(kernel_cgroup(&t, 1, connect(11, [10, 1, 2, 3], 3307)), None);
}

#[test]
fn port_blocks_cover_exactly() {
    for (lo, hi) in [(0, 65535), (1, 1), (0, 0), (1000, 2000), (65535, 65535), (1, 65534), (7, 8)] {
        let blocks = port_blocks(PortRange { lo, hi });
        let mut covered = Vec::new();
        for (start, len) in &blocks {
            let size = 1u32 << (16 - len);
            assert_eq!(u32::from(*start) % size, 0, "aligned");
            covered.extend(u32::from(*start)..u32::from(*start) + size);
        }
        assert_eq!(covered, (u32::from(lo)..=u32::from(hi)).collect::<Vec<_>>());
        assert!(blocks.len() <= 30);
    }
}

#[test]
fn ten_thousand_rules_fit() {
    let rules: Vec<Rule> = (0..10_000u32)
        .map(|i| {
            let mut r = rule(i);
            r.matches.direction = Direction::Both;
            r.matches.protocol = Protocol::Udp;
            r.matches.dst = Some(format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap());
            r.matches.families = Families { v4: true, v6: false };
            r.matches.dport = PortRange { lo: 9000, hi: 9100 };
            r
        })
        .collect();
    let t = compile(&rules, 0).unwrap();
    assert_eq!(kernel(&t, 0, pkt([1, 1, 1, 1], [10, 39, 15, 7], Proto::UDP, 1, 9050)), Some(39 * 256 + 15));
    assert_eq!(kernel(&t, 0, pkt([1, 1, 1, 1], [10, 39, 15, 7], Proto::UDP, 1, 9200)), None);
}

#[test]
fn too_large_is_refused() {
    // Every source crossed with every destination, plus one rule in all pairs.
    let mut rules = vec![rule(0)];
    for i in 0..1000u32 {
        let mut r = rule(i + 1);
        r.matches.src = Some(format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap());
        r.matches.dst = Some(format!("11.{}.{}.0/24", i / 256, i % 256).parse().unwrap());
        rules.push(r);
    }
    let err = compile(&rules, 0).unwrap_err();
    assert!(matches!(err, CompileError::TooLarge { map: "PAIRS", .. }), "{err}");
}

/// A small deterministic generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.next() as usize % xs.len()]
    }
}

const ADDRS4: [[u8; 4]; 5] = [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 1, 9], [10, 9, 0, 1], [192, 168, 1, 1]];
const PORTS: [u16; 9] = [0, 1, 53, 80, 81, 443, 1000, 5000, 65535];

/// A random rule over a few overlapping prefixes, port ranges, thresholds and cgroups.
fn random_rule(rng: &mut Rng, slot: u32) -> Rule {
    let cidrs4 = ["10.0.0.0/8", "10.0.0.0/16", "10.0.0.2/32", "10.0.0.0/31", "192.168.0.0/16"];
    let cidrs6 = ["fd00::/8", "fd00::2/128"];
    let ranges =
        [PortRange::ANY, PortRange { lo: 80, hi: 80 }, PortRange { lo: 1, hi: 1000 }, PortRange { lo: 443, hi: 65535 }];
    let mut r = rule(slot);
    r.ifindex = rng.pick(&[2, 3]);
    r.matches.direction = rng.pick(&[Direction::Egress, Direction::Ingress, Direction::Both]);
    r.matches.protocol = rng.pick(&[Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Any]);
    let v6 = rng.next().is_multiple_of(4);
    let cidr = |rng: &mut Rng| {
        if rng.next().is_multiple_of(3) {
            None
        } else if v6 {
            Some(rng.pick(&cidrs6).parse::<Cidr>().unwrap())
        } else {
            Some(rng.pick(&cidrs4).parse::<Cidr>().unwrap())
        }
    };
    r.matches.src = cidr(rng);
    r.matches.dst = cidr(rng);
    let has_cidr = r.matches.src.is_some() || r.matches.dst.is_some();
    r.matches.families = if has_cidr { Families { v4: !v6, v6 } } else { Families { v4: true, v6: true } };
    if r.matches.protocol != Protocol::Icmp {
        r.matches.sport = rng.pick(&ranges);
        r.matches.dport = rng.pick(&ranges);
    }
    r.threshold = rng.pick(&[0, 1 << 30, 1 << 31, 1 << 32]);
    r.cgroups = rng.pick(&[None, None, Some(&[11u64][..]), Some(&[11, 12]), Some(&[12, 13])]).map(<[u64]>::to_vec);
    r
}

/// A random packet the rules of [`random_rule`] may or may not match.
fn random_pkt(rng: &mut Rng) -> Pkt {
    let family = rng.pick(&[Family::V4, Family::V4, Family::V6]);
    let addr = |rng: &mut Rng| {
        if family == Family::V4 {
            v4(rng.pick(&ADDRS4))
        } else {
            match rng.pick(&["fd00::1", "fd00::2", "fe80::1"]).parse::<IpAddr>().unwrap() {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(_) => unreachable!(),
            }
        }
    };
    let proto = rng.pick(&[
        Proto::TCP,
        Proto::UDP,
        if family == Family::V4 { Proto::ICMP } else { Proto::ICMPV6 },
        Proto::OTHER,
    ]);
    let has_ports = matches!(proto, Proto::TCP | Proto::UDP);
    Pkt {
        ifindex: rng.pick(&[2, 3]),
        hook: rng.pick(&[Hook::Ingress, Hook::Egress]),
        cgroup: rng.pick(&[0, 11, 12, 13, 14]),
        family,
        proto,
        src: addr(rng),
        dst: addr(rng),
        sport: if has_ports { rng.pick(&PORTS) } else { 0 },
        dport: if has_ports { rng.pick(&PORTS) } else { 0 },
    }
}

#[test]
fn random_rule_sets_agree_with_the_rules() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let n = 1 + rng.next() % 6;
        let rules: Vec<Rule> = (0..n as u32).map(|i| random_rule(&mut rng, 100 + i)).collect();
        let t = compile(&rules, (round % 2) as u8).unwrap();
        for _ in 0..200 {
            let p = random_pkt(&mut rng);
            let g = (round % 2) as u8;
            assert_eq!(kernel(&t, g, p), reference(&rules, p, false), "round {round}: {p:?}\n{rules:#?}");
            // The cgroup programs run on ingress (egress cgroup scopes are TC's).
            if p.hook == Hook::Ingress {
                assert_eq!(kernel_cgroup(&t, g, p), reference(&rules, p, true), "round {round}: {p:?}\n{rules:#?}");
            }
        }
    }
}

mod incremental;
