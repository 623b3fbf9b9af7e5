//! Pods chosen the way Kubernetes users name them: namespaces, label selectors (kubectl's
//! syntax, and Chaos Mesh's `labelSelectors` and `expressionSelectors`), annotations, phases,
//! pods by name, and a mode that says how many of the matching pods to take (Chaos Mesh's
//! `one`, `all`, `fixed`, `fixed-percent`, `random-max-percent` with `value`).
//!
//! [`SelectorSpec`] is the wire form (loosely typed, like [`crate::spec::FaultSpec`]: the
//! validation, not the parser, says what is wrong); [`PodSelector`] its validated form, which
//! the daemon matches against the pods the container runtime lists.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// A pod selector as submitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorSpec {
    /// Kubernetes namespaces the pods must be in (any of them). Empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// A label selector in kubectl's syntax: `app=web,tier!=db,env in (a,b),canary,!legacy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Label requirements as Kubernetes' `matchExpressions` write them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expressions: Vec<ExpressionSpec>,
    /// Annotations the pods must carry, with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Pod phases (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<String>,
    /// Pods by name: namespace to names. Given, it alone decides (the other fields are not
    /// looked at), as in Chaos Mesh.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pods: BTreeMap<String, Vec<String>>,
    /// `one`, `all` (default), `fixed`, `fixed-percent` or `random-max-percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The number (`fixed`) or percentage (the percent modes) the mode takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One of Kubernetes' `matchExpressions`: `{key, operator: In|NotIn|Exists|DoesNotExist, values}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpressionSpec {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A validated selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSelector {
    pub namespaces: BTreeSet<String>,
    /// All must hold (the `labels` text's and the `expressions`).
    pub labels: Vec<Requirement>,
    pub annotations: BTreeMap<String, String>,
    pub phases: BTreeSet<Phase>,
    /// Namespace to names; empty: any pod.
    pub pods: BTreeMap<String, BTreeSet<String>>,
    pub mode: Mode,
}

/// A label requirement. `key=v` and `key==v` are `In [v]`, `key!=v` is `NotIn [v]` (which, as
/// in Kubernetes, a pod without the label satisfies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    /// Sorted; empty for `Exists` and `DoesNotExist`.
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A pod's phase, as Kubernetes names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// How many of the matching pods are taken, as Chaos Mesh defines the modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One, at random.
    One,
    /// Every one, and (in the daemon) those that come to match while the experiment runs.
    All,
    /// This many, at random (all of them if fewer match).
    Fixed(usize),
    /// This percentage of them, rounded down, at random.
    FixedPercent(u8),
    /// A percentage drawn at random from 0 to this, then as `FixedPercent`.
    RandomMaxPercent(u8),
}

/// What a selector is matched against: one pod as the container runtime describes it.
#[derive(Clone, Copy, Debug)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub phase: Phase,
}

/// Pod phases by the names Kubernetes gives them.
const PHASES: [(&str, Phase); 5] = [
    ("Pending", Phase::Pending),
    ("Running", Phase::Running),
    ("Succeeded", Phase::Succeeded),
    ("Failed", Phase::Failed),
    ("Unknown", Phase::Unknown),
];

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        PHASES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, p)| *p)
            .ok_or_else(|| format!("'{text}' is not a pod phase (Pending, Running, Succeeded, Failed or Unknown)"))
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = PHASES.iter().find(|(_, p)| p == self).map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl std::str::FromStr for Op {
    type Err = String;

    /// As Kubernetes' `matchExpressions` write them.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "In" => Ok(Op::In),
            "NotIn" => Ok(Op::NotIn),
            "Exists" => Ok(Op::Exists),
            "DoesNotExist" => Ok(Op::DoesNotExist),
            _ => Err(format!("'{text}' is not an operator (In, NotIn, Exists or DoesNotExist)")),
        }
    }
}

impl Mode {
    /// Chaos Mesh's `mode` and `value`: the mode's name (default `all`) and its number.
    pub fn parse(mode: Option<&str>, value: Option<&str>) -> Result<Mode, SpecError> {
        let value = value.filter(|v| !v.is_empty());
        // strconv.Atoi's syntax, as Chaos Mesh reads `value`: an optional sign, digits.
        let number = |what: &str, range: std::ops::RangeInclusive<i64>| {
            let v = value.ok_or_else(|| {
                SpecError::new("selector.value", format!("is required with mode {}: {what}", mode.unwrap_or_default()))
            })?;
            v.parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| SpecError::new("selector.value", format!("'{v}' is not {what}")))
        };
        let mode = match mode.unwrap_or("all") {
            m @ ("one" | "all") => {
                if let Some(v) = value {
                    return Err(SpecError::new(
                        "selector.value",
                        format!(
                            "'{v}' does not go with mode {m}: only fixed, fixed-percent and random-max-percent take one"
                        ),
                    ));
                }
                if m == "one" { Mode::One } else { Mode::All }
            }
            "fixed" => Mode::Fixed(number("a number of pods, 1 or more", 1..=i64::from(u32::MAX))? as usize),
            "fixed-percent" => Mode::FixedPercent(number("a percentage, 1 to 100", 1..=100)? as u8),
            "random-max-percent" => Mode::RandomMaxPercent(number("a percentage, 1 to 100", 1..=100)? as u8),
            other => {
                return Err(SpecError::new(
                    "selector.mode",
                    format!("'{other}' is not a mode (one, all, fixed, fixed-percent or random-max-percent)"),
                ));
            }
        };
        Ok(mode)
    }

    /// How many of `matching` pods to take; `random(n)` gives a number in `0..n`. Refused when
    /// no pod matches (as Chaos Mesh), and when `fixed-percent` rounds down to none (where Chaos
    /// Mesh silently selects none); `random-max-percent` may draw none, as in Chaos Mesh.
    pub fn count(&self, matching: usize, random: &mut dyn FnMut(usize) -> usize) -> Result<usize, String> {
        if matching == 0 {
            return Err("no pod matches".into());
        }
        let share = |p: u8| matching * usize::from(p) / 100;
        match *self {
            Mode::One => Ok(1),
            Mode::All => Ok(matching),
            Mode::Fixed(n) => Ok(n.min(matching)),
            Mode::FixedPercent(p) => match share(p) {
                0 => Err(format!("{p}% of {} is 0 pods", plural(matching, "matching pod"))),
                n => Ok(n),
            },
            // Chaos Mesh draws the percentage from 0 to p inclusive and takes what it gives,
            // none included: a run that acts on no pod is not an error there.
            Mode::RandomMaxPercent(p) => Ok(matching * random(usize::from(p) + 1) / 100),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::One => f.write_str("one"),
            Mode::All => f.write_str("all"),
            Mode::Fixed(n) => write!(f, "fixed {n}"),
            Mode::FixedPercent(p) => write!(f, "fixed-percent {p}"),
            Mode::RandomMaxPercent(p) => write!(f, "random-max-percent {p}"),
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

impl SelectorSpec {
    /// The selector, or the first field that is wrong (`selector.labels: ...`).
    pub fn validate(&self) -> Result<PodSelector, SpecError> {
        let mut namespaces = BTreeSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !dns_label(ns) {
                return Err(SpecError::new(format!("selector.namespaces[{i}]"), not_namespace(ns)));
            }
            namespaces.insert(ns.clone());
        }
        let mut labels = match &self.labels {
            Some(text) => parse_labels(text).map_err(|e| SpecError::new("selector.labels", e))?,
            None => Vec::new(),
        };
        for (i, x) in self.expressions.iter().enumerate() {
            let field = |name: &str| format!("selector.expressions[{i}].{name}");
            check_key(&x.key).map_err(|e| SpecError::new(field("key"), e))?;
            let op: Op = x.operator.parse().map_err(|e| SpecError::new(field("operator"), e))?;
            match (op, x.values.is_empty()) {
                (Op::In | Op::NotIn, true) => {
                    return Err(SpecError::new(field("values"), format!("are required with operator {}", x.operator)));
                }
                (Op::Exists | Op::DoesNotExist, false) => {
                    return Err(SpecError::new(field("values"), format!("must be empty with operator {}", x.operator)));
                }
                _ => {}
            }
            for (j, v) in x.values.iter().enumerate() {
                check_value(v).map_err(|e| SpecError::new(format!("{}[{j}]", field("values")), e))?;
            }
            labels.push(Requirement::new(&x.key, op, x.values.iter().cloned()));
        }
        for key in self.annotations.keys() {
            check_key(key).map_err(|e| SpecError::new("selector.annotations", e))?;
        }
        let mut phases = BTreeSet::new();
        for (i, p) in self.phases.iter().enumerate() {
            phases.insert(p.parse().map_err(|e| SpecError::new(format!("selector.phases[{i}]"), e))?);
        }
        let mut pods = BTreeMap::new();
        for (ns, names) in &self.pods {
            if !dns_label(ns) {
                return Err(SpecError::new("selector.pods", not_namespace(ns)));
            }
            if names.is_empty() {
                return Err(SpecError::new(format!("selector.pods.{ns}"), "names no pod"));
            }
            for name in names {
                if !dns_subdomain(name) {
                    return Err(SpecError::new(
                        format!("selector.pods.{ns}"),
                        format!("'{name}' is not a pod name (lowercase letters, digits, '-' and '.', at most 253)"),
                    ));
                }
            }
            pods.insert(ns.clone(), names.iter().cloned().collect());
        }
        let mode = Mode::parse(self.mode.as_deref(), self.value.as_deref())?;
        Ok(PodSelector { namespaces, labels, annotations: self.annotations.clone(), phases, pods, mode })
    }
}

fn not_namespace(ns: &str) -> String {
    format!(
        "'{ns}' is not a namespace (1-63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
    )
}

impl Requirement {
    fn new(key: &str, op: Op, values: impl IntoIterator<Item = String>) -> Self {
        let values: BTreeSet<String> = values.into_iter().collect();
        Requirement { key: key.to_owned(), op, values: values.into_iter().collect() }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Op::In => value.is_some_and(|v| self.values.contains(v)),
            // Kubernetes' meaning: a pod without the label is not in the set.
            Op::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

/// In kubectl's syntax, which [`parse_labels`] reads back.
impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (k, list) = (&self.key, self.values.join(","));
        match (self.op, self.values.as_slice()) {
            (Op::In, [v]) => write!(f, "{k}={v}"),
            (Op::NotIn, [v]) => write!(f, "{k}!={v}"),
            (Op::In, _) => write!(f, "{k} in ({list})"),
            (Op::NotIn, _) => write!(f, "{k} notin ({list})"),
            (Op::Exists, _) => write!(f, "{k}"),
            (Op::DoesNotExist, _) => write!(f, "!{k}"),
        }
    }
}

impl PodSelector {
    /// Whether the pod satisfies every field (the mode aside).
    pub fn matches(&self, pod: &PodFacts<'_>) -> bool {
        // As Chaos Mesh: pods named are taken as named, the other fields aside.
        if !self.pods.is_empty() {
            return self.pods.get(pod.namespace).is_some_and(|names| names.contains(pod.name));
        }
        (self.namespaces.is_empty() || self.namespaces.contains(pod.namespace))
            && self.labels.iter().all(|r| r.matches(pod.labels))
            && self.annotations.iter().all(|(k, v)| pod.annotations.get(k) == Some(v))
            && (self.phases.is_empty() || self.phases.contains(&pod.phase))
    }

    /// The selector in a line, for messages and `chaosctl list`: `namespace shop, app=web,
    /// tier!=db, mode fixed-percent 50`.
    pub fn describe(&self) -> String {
        let words = |one: &str, many: &str, items: Vec<String>| match items.len() {
            1 => format!("{one} {}", items[0]),
            _ => format!("{many} {}", items.join(" ")),
        };
        let mut parts = Vec::new();
        if !self.pods.is_empty() {
            // They decide alone (see `matches`).
            let pods = self.pods.iter().flat_map(|(ns, names)| names.iter().map(move |n| format!("{ns}/{n}")));
            parts.push(words("pod", "pods", pods.collect()));
            parts.push(format!("mode {}", self.mode));
            return parts.join(", ");
        }
        parts.push(match self.namespaces.len() {
            0 => "all namespaces".to_owned(),
            _ => words("namespace", "namespaces", self.namespaces.iter().cloned().collect()),
        });
        parts.extend(self.labels.iter().map(Requirement::to_string));
        parts.extend(self.annotations.iter().map(|(k, v)| format!("annotation {k}={v}")));
        if !self.phases.is_empty() {
            parts.push(words("phase", "phases", self.phases.iter().map(Phase::to_string).collect()));
        }
        parts.push(format!("mode {}", self.mode));
        parts.join(", ")
    }
}

/// A token of kubectl's selector syntax.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    Word(&'a str),
    /// `=`, `==`, `!=`, `!`, `(`, `)`, `,`, `<`, `>`.
    Sign(&'a str),
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        let Some(c) = rest.chars().next() else { return out };
        let len = match c {
            '=' | '!' if rest[1..].starts_with('=') => 2,
            '=' | '!' | '(' | ')' | ',' | '<' | '>' => 1,
            _ => {
                let end = rest.find(|c: char| c.is_whitespace() || "=!(),<>".contains(c)).unwrap_or(rest.len());
                out.push(Token::Word(&rest[..end]));
                rest = &rest[end..];
                continue;
            }
        };
        out.push(Token::Sign(&rest[..len]));
        rest = &rest[len..];
    }
}

/// A label selector in kubectl's syntax (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`,
/// separated by commas), each key and value checked as Kubernetes checks them.
pub fn parse_labels(text: &str) -> Result<Vec<Requirement>, String> {
    let tokens = tokens(text);
    let mut at = tokens.iter().peekable();
    let mut out = Vec::new();
    let shown = |t: Option<&&Token>| match t {
        None => "the end".to_owned(),
        Some(Token::Word(w) | Token::Sign(w)) => format!("'{w}'"),
    };
    while at.peek().is_some() {
        let requirement = match at.next() {
            Some(Token::Sign("!")) => match at.next() {
                Some(Token::Word(key)) => {
                    check_key(key)?;
                    Requirement::new(key, Op::DoesNotExist, [])
                }
                t => return Err(format!("'!' must be followed by a label key, not {}", shown(t.as_ref()))),
            },
            Some(Token::Word(key)) => {
                check_key(key)?;
                match at.peek() {
                    None | Some(Token::Sign(",")) => Requirement::new(key, Op::Exists, []),
                    Some(Token::Sign(op @ ("=" | "==" | "!="))) => {
                        at.next();
                        let value = match at.peek() {
                            // `key=` is the empty value, as in kubectl.
                            None | Some(Token::Sign(",")) => "",
                            Some(Token::Word(v)) => {
                                at.next();
                                v
                            }
                            t => return Err(format!("'{key}{op}' must be followed by a value, not {}", shown(t))),
                        };
                        check_value(value)?;
                        let op = if *op == "!=" { Op::NotIn } else { Op::In };
                        Requirement::new(key, op, [value.to_owned()])
                    }
                    Some(Token::Word(w @ ("in" | "notin"))) => {
                        at.next();
                        let op = if *w == "in" { Op::In } else { Op::NotIn };
                        if at.next() != Some(&Token::Sign("(")) {
                            return Err(format!("'{key} {w}' must be followed by a list in parentheses: (a,b)"));
                        }
                        let mut values = Vec::new();
                        loop {
                            match at.next() {
                                Some(Token::Word(v)) => {
                                    check_value(v)?;
                                    values.push((*v).to_owned());
                                }
                                t => {
                                    return Err(format!(
                                        "'{key} {w} (...)' lists a value where {} is",
                                        shown(t.as_ref())
                                    ));
                                }
                            }
                            match at.next() {
                                Some(Token::Sign(",")) => {}
                                Some(Token::Sign(")")) => break,
                                t => {
                                    return Err(format!(
                                        "'{key} {w} (...)': expected ',' or ')' after a value, found {}",
                                        shown(t.as_ref())
                                    ));
                                }
                            }
                        }
                        Requirement::new(key, op, values)
                    }
                    Some(Token::Sign(s @ ("<" | ">"))) => {
                        return Err(format!("'{key} {s}': comparisons of label values are not supported here"));
                    }
                    t => {
                        return Err(format!(
                            "'{key}' must be followed by =, ==, !=, in, notin, ',' or the end, not {}",
                            shown(t)
                        ));
                    }
                }
            }
            t => return Err(format!("expected a label key or '!key', found {}", shown(t.as_ref()))),
        };
        out.push(requirement);
        match at.next() {
            None => {}
            Some(Token::Sign(",")) if at.peek().is_some() => {}
            Some(Token::Sign(",")) => return Err("ends with ',': a requirement must follow it".into()),
            t => return Err(format!("expected ',' between requirements, found {}", shown(t.as_ref()))),
        }
    }
    Ok(out)
}

/// A label (or annotation) key: an optional DNS subdomain and `/`, then a name.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !dns_subdomain(prefix)
    {
        return Err(format!(
            "key '{key}': its prefix '{prefix}' is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most \
             253)"
        ));
    }
    if name.is_empty() || !label_name(name) {
        return Err(format!(
            "key '{key}': '{name}' is not a label name (1-63 of A-Z a-z 0-9 - _ ., starting and ending with a letter or \
             digit)"
        ));
    }
    Ok(())
}

/// A label value: empty, or as a key's name.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "value '{value}' is not a label value (up to 63 of A-Z a-z 0-9 - _ ., starting and ending with a letter or \
             digit)"
        ))
    }
}

fn label_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && edge(s.chars().next())
        && edge(s.chars().last())
}

/// RFC 1123's label, as Kubernetes checks namespaces.
fn dns_label(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && edge(s.chars().next())
        && edge(s.chars().last())
}

/// RFC 1123's subdomain, as Kubernetes checks pod names and key prefixes.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

#[cfg(test)]
mod tests;
