//! Generators of request bodies for fuzzing `POST /v1/faults`: arbitrary bytes, JSON text shaped
//! like (and unlike) an `Apply`, and small byte mutations of that JSON. Shared by the library
//! fuzz test (`decode_fuzz.rs`) and the end-to-end one (`tests/tests/fuzz.rs`, which includes this
//! file by path), so both feed the same inputs.
//!
//! JSON is generated as text, not as `serde_json::Value`, so it can hold what a `Value` cannot:
//! duplicate keys, numbers out of range (`1e400`), and tokens that are not JSON (`NaN`).

use proptest::{collection::vec, option, prelude::*, sample::select};

/// The keys of a fault spec today.
pub const SPEC_KEYS: &[&str] = &[
    "name",
    "interface",
    "action",
    "loss",
    "direction",
    "family",
    "protocol",
    "src",
    "dst",
    "sport",
    "dport",
    "delay",
    "jitter",
    "correlation",
    "distribution",
    "rate",
    "burst",
    "gemodel",
    "duplicate",
    "corrupt",
    "checksum",
    "connections",
    "reorder",
    "reorder_correlation",
    "gap",
    "netns",
    "pid",
    "container",
    "pod",
];

/// Keys about to be added: unknown today, so refused by decoding; validated once they exist.
pub const FUTURE_KEYS: &[&str] = &["duration", "start_after", "experiment", "force"];

/// What the `interface` key of a generated spec holds.
// Each test that includes this file uses one of the variants.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub enum Interface {
    /// Anything, like every other field.
    Any,
    /// Only this (non-existent) name: a request sent to a live daemon can then never be valid,
    /// so it can never change the daemon's state.
    Only(&'static str),
}

/// A JSON string literal.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// JSON numbers serde reads: any integer or float, and values around the port and percent
/// limits.
pub fn json_number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        // Debug prints `1e300`, `-0.0`, `5e-324`.
        any::<f64>().prop_filter("finite", |n| n.is_finite()).prop_map(|n| format!("{n:?}")),
        (-70_000i64..70_000).prop_map(|n| n.to_string()),
        (-200.0..200.0f64).prop_map(|n| n.to_string()),
    ]
    .boxed()
}

/// Number tokens: JSON numbers, edge values, and tokens serde must refuse (out of range for
/// every number type, or not JSON at all).
pub fn number() -> BoxedStrategy<String> {
    prop_oneof![
        3 => json_number(),
        1 => select(&[
            "0", "-0", "-0.0", "100", "100.0", "100.0000001", "-1", "-0.000001", "65535", "65536", "-65536", "80.0",
            "8e1", "1E400", "-1e400", "1e-400", "9223372036854775807", "9223372036854775808",
            "-9223372036854775809", "18446744073709551616", "NaN", "-NaN", "Infinity", "-Infinity", "01", "1.",
            ".5", "-", "+1", "0x50", "1_000",
        ][..])
        .prop_map(String::from),
    ]
    .boxed()
}

/// Addresses and prefixes, valid or nearly so: octets past 255, prefix lengths past the
/// family's, negative, empty, signed or padded, host bits set, zones, mapped addresses.
pub fn cidr_like() -> BoxedStrategy<String> {
    let len = prop_oneof![
        Just(String::new()),
        (0u32..140).prop_map(|l| format!("/{l}")),
        select(&["/", "/-1", "/+8", "/ 8", "/08", "/1e1", "/33", "/129", "/256", "//8", "/8/8", "/४"][..])
            .prop_map(String::from),
    ];
    let v4 = (any::<[u8; 4]>(), len.clone()).prop_map(|(a, l)| format!("{}.{}.{}.{}{l}", a[0], a[1], a[2], a[3]));
    let v4_wide = (vec(0u32..1000, 1..6), len.clone()).prop_map(|(parts, l)| {
        let parts: Vec<String> = parts.iter().map(u32::to_string).collect();
        format!("{}{l}", parts.join("."))
    });
    let v6 = (any::<[u16; 8]>(), len).prop_map(|(s, l)| format!("{}{l}", std::net::Ipv6Addr::from(s)));
    let odd = select(
        &[
            "::/0",
            "::",
            "0.0.0.0/0",
            "::ffff:10.0.0.1/104",
            "fe80::1%eth0",
            " 10.0.0.0/8 ",
            "10.0.0.0 /8",
            "10/8",
            "10.0.0.0/8,10.1.0.0/16",
            "1.2.3.4.5",
            "localhost",
            "10.0.0.1/8",
        ][..],
    )
    .prop_map(String::from);
    prop_oneof![v4, v4_wide, v6, odd].boxed()
}

/// Ports and ranges as text, valid or nearly so.
pub fn port_like() -> BoxedStrategy<String> {
    prop_oneof![
        (-70_000i64..70_000).prop_map(|p| p.to_string()),
        (-70_000i64..70_000, -70_000i64..70_000).prop_map(|(a, b)| format!("{a}-{b}")),
        // Forms the API echoes differently (`"80"`, `"80-80"`, `" 80 "`: 80): one port, sent as
        // text.
        (0..=65_535u32).prop_map(|p| format!("{p}-{p}")),
        select(
            &[
                "",
                "-",
                "5-",
                "-5",
                "80-80-80",
                " 80 - 90 ",
                " 80 ",
                "+80",
                "080",
                "80..90",
                "0x50",
                "８０",
                "http",
                "80,443"
            ][..]
        )
        .prop_map(String::from),
    ]
    .boxed()
}

/// Strings: anything, printable ASCII, the words fields take, near misses of them, durations.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,24}",
        select(
            &[
                "loss",
                "partition",
                "ingress",
                "egress",
                "both",
                "tcp",
                "udp",
                "icmp",
                "any",
                "ipv4",
                "ipv6",
                "LOSS",
                " loss",
                "loss\0",
                "Partition",
                "",
                " ",
                "lo",
                "eth0",
                "a/b",
                "xxxxxxxxxxxxxxxx",
                "é",
                "💥",
                "\u{202e}",
                "30s",
                "1m",
                "-5m",
                "0s",
                "10ms",
                "1h30m",
                "true",
                "null",
            ][..]
        )
        .prop_map(String::from),
        cidr_like(),
        port_like(),
    ]
    .boxed()
}

/// A key that is not one of a spec's, today's or future.
fn random_key() -> BoxedStrategy<String> {
    prop_oneof!["[a-z_]{0,12}", any::<String>()]
        .prop_filter("not a known key", |k| !SPEC_KEYS.contains(&k.as_str()) && !FUTURE_KEYS.contains(&k.as_str()))
        .boxed()
}

/// JSON scalars, as text.
fn scalar() -> BoxedStrategy<String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number(),
        text().prop_map(|s| quote(&s))
    ]
    .boxed()
}

/// A value of the type `key` takes, mostly with content near its valid values.
fn plausible(key: &str, interface: Interface) -> BoxedStrategy<String> {
    match (key, interface) {
        ("interface", Interface::Only(name)) => Just(quote(name)).boxed(),
        ("loss" | "duplicate" | "corrupt" | "correlation" | "reorder" | "reorder_correlation" | "gap" | "pid", _) => {
            number()
        }
        ("gemodel", _) => prop_oneof![
            "[0-9]{1,3}(\\.[0-9])?%?( [0-9]{1,3}%?){0,4}".prop_map(|s| quote(&s)),
            text().prop_map(|s| quote(&s))
        ]
        .boxed(),
        ("sport" | "dport", _) => prop_oneof![number(), port_like().prop_map(|s| quote(&s))].boxed(),
        ("src" | "dst", _) => cidr_like().prop_map(|s| quote(&s)).boxed(),
        _ => text().prop_map(|s| quote(&s)).boxed(),
    }
}

/// One `"key": value` member: mostly a spec key with a plausible value, sometimes a future or
/// random key, with any `value`.
fn member(interface: Interface, value: BoxedStrategy<String>) -> BoxedStrategy<String> {
    let spec = select(SPEC_KEYS).prop_flat_map(move |k| {
        // The interface never takes an arbitrary value when it is pinned.
        let v = match (k, interface) {
            ("interface", Interface::Only(_)) => plausible(k, interface),
            _ => prop_oneof![3 => plausible(k, interface), 1 => value.clone()].boxed(),
        };
        (Just(k), v)
    });
    prop_oneof![
        6 => spec.prop_map(|(k, v)| format!("{}:{v}", quote(k))),
        1 => (select(FUTURE_KEYS), scalar()).prop_map(|(k, v)| format!("{}:{v}", quote(k))),
        2 => (random_key(), scalar()).prop_map(|(k, v)| format!("{}:{v}", quote(&k))),
    ]
    .boxed()
}

fn object(members: Vec<String>) -> String {
    format!("{{{}}}", members.join(","))
}

/// Any JSON, nested a few levels, whose objects mix spec keys and other keys.
pub fn json(interface: Interface) -> BoxedStrategy<String> {
    scalar()
        .prop_recursive(4, 48, 8, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(","))),
                vec(member(interface, inner), 0..10).prop_map(object),
            ]
        })
        .boxed()
}

/// A word a field takes, often; anything, sometimes.
fn word(words: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![3 => select(words).prop_map(String::from), 1 => text()].boxed()
}

/// A spec object whose every key is a spec key with a value of the type it takes, so it
/// decodes and validation sees the contents: mostly near-valid, often wrong somewhere.
pub fn typed_spec(interface: Interface) -> BoxedStrategy<String> {
    let interface = match interface {
        Interface::Only(name) => Just(Some(name.to_owned())).boxed(),
        Interface::Any => option::weighted(0.9, word(&["lo", "eth0", "x", "a-b_c.d", "fifteen-chars15"])).boxed(),
    };
    let port = prop_oneof![(-70_000i64..70_000).prop_map(|p| p.to_string()), port_like().prop_map(|s| quote(&s))];
    (
        (
            option::weighted(0.3, prop_oneof!["[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}", text()]),
            interface,
            option::weighted(0.9, word(&["loss", "partition", "duplicate", "corrupt", "reset"])),
            option::weighted(0.7, prop_oneof![(-10.0..110.0f64).prop_map(|n| n.to_string()), json_number()]),
        ),
        (
            option::weighted(0.4, word(&["egress", "ingress", "both"])),
            option::weighted(0.3, word(&["ipv4", "ipv6", "any"])),
            option::weighted(0.4, word(&["tcp", "udp", "icmp", "any"])),
        ),
        (
            option::weighted(0.3, cidr_like()),
            option::weighted(0.3, cidr_like()),
            option::weighted(0.3, port.clone()),
            option::weighted(0.3, port),
        ),
    )
        .prop_map(|((name, interface, action, loss), (direction, family, protocol), (src, dst, sport, dport))| {
            let strings = [
                ("name", name),
                ("interface", interface),
                ("action", action),
                ("direction", direction),
                ("family", family),
                ("protocol", protocol),
                ("src", src),
                ("dst", dst),
            ];
            let mut members: Vec<String> =
                strings.into_iter().filter_map(|(k, v)| v.map(|v| format!("{}:{}", quote(k), quote(&v)))).collect();
            for (k, v) in [("loss", loss), ("sport", sport), ("dport", dport)] {
                members.extend(v.map(|v| format!("{}:{v}", quote(k))));
            }
            object(members)
        })
        .boxed()
}

/// Bodies shaped like `{"faults": [spec, ...]}` (with well-typed specs, or with any keys and
/// values), and JSON that is not.
pub fn apply(interface: Interface) -> BoxedStrategy<String> {
    let loose = vec(member(interface, json(interface)), 0..12).prop_map(object);
    let faults =
        |spec: BoxedStrategy<String>| vec(spec, 0..4).prop_map(|specs| format!("{{\"faults\":[{}]}}", specs.join(",")));
    prop_oneof![
        4 => faults(typed_spec(interface)),
        2 => faults(loose.boxed()),
        // `faults` of any type, next to other members.
        1 => (json(interface), vec(member(interface, json(interface)), 0..3)).prop_map(|(faults, mut rest)| {
            rest.insert(0, format!("\"faults\":{faults}"));
            object(rest)
        }),
        1 => json(interface),
    ]
    .boxed()
}

/// A few byte edits: delete, insert (mostly JSON punctuation), replace, or cut the rest.
#[derive(Clone, Debug)]
enum Edit {
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Replace(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![select(&b"{}[]\":,\\0123456789-+.eE tfn\xff\x00\n"[..]), any::<u8>()];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Edit::Replace(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

/// Apply-shaped JSON with 1 to 4 byte edits: inputs that get deep into the parser before
/// going wrong, which random bytes almost never do.
pub fn mutated(interface: Interface) -> BoxedStrategy<Vec<u8>> {
    (apply(interface), vec(edit(), 1..5))
        .prop_map(|(text, edits)| {
            let mut b = text.into_bytes();
            for e in edits {
                // Index::index needs a non-empty range: an insert may go at the end.
                match e {
                    Edit::Delete(i) if !b.is_empty() => {
                        b.remove(i.index(b.len()));
                    }
                    Edit::Insert(i, x) => {
                        let at = i.index(b.len() + 1);
                        b.insert(at, x);
                    }
                    Edit::Replace(i, x) if !b.is_empty() => {
                        let at = i.index(b.len());
                        b[at] = x;
                    }
                    Edit::Truncate(i) if !b.is_empty() => b.truncate(i.index(b.len())),
                    _ => {}
                }
            }
            b
        })
        .boxed()
}
