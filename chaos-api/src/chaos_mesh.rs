//! Chaos Mesh NetworkChaos and DNSChaos documents (`apiVersion: chaos-mesh.org/v1alpha1`,
//! `kind: NetworkChaos` or `DNSChaos`), and `Schedule`s of them, read as faults, with Chaos
//! Mesh's meaning wherever one node can honour it. Every field is either mapped or refused with
//! its YAML path and the reason: none is ignored unannounced (those not honoured,
//! `bandwidth.limit` and a Schedule's `startingDeadlineSeconds`, are reported as notes).
//!
//! Which traffic: `spec.selector` (namespaces, labels, expressions, annotations, phases, pods
//! by name) with `mode` and `value` becomes the experiment's [`SelectorSpec`], which the daemon
//! matches against the pods of its node; the faults are then templates applied in each pod it
//! selects (`spec.device` the interface inside the pod). Without `namespaces` it selects in the
//! document's namespace (`default` without one), as Chaos Mesh does, unless `pods` names them.
//! Node selectors (`nodes`, `nodeSelectors`, `fieldSelectors`) are refused: the daemon acts on
//! its own node's pods. `spec.target` becomes the experiment's target selector. A document
//! without a selector (not valid in Chaos Mesh) acts on this host's interface `device`.
//!
//! A DNSChaos (`action: error` or `random`, `patterns`) becomes one `dns` fault template: the
//! selected pods' queries (their egress, to port 53) for those names are answered SERVFAIL, or
//! with random addresses, by the fault itself rather than by Chaos Mesh's DNS server.
//!
//! When: `spec.scheduler.cron` (older Chaos Mesh) or a Schedule's `spec.schedule` becomes the
//! experiment's schedule; each run then needs `duration`.
//!
//! Here: the documents' shape (every field named, so an unknown one is refused) and Chaos
//! Mesh's values (percentages, Go durations); `faults` maps a document to faults.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, de::IgnoredAny};

use crate::{
    schedule::ScheduleSpec,
    select::SelectorSpec,
    spec::{DurationSpec, FaultSpec},
};

/// The faults a file of NetworkChaos, DNSChaos (or Schedule) documents applies, as one
/// experiment.
#[derive(Debug, PartialEq)]
pub struct Experiment {
    /// The first document's `metadata.name` (a Schedule's own, not its NetworkChaos').
    pub name: String,
    /// Templates when `selector` is given (applied in each pod it selects), else the faults.
    pub faults: Vec<FaultSpec>,
    /// The pods the faults act in (`spec.selector` with `spec.mode` and `spec.value`).
    pub selector: Option<crate::select::SelectorSpec>,
    /// The pods at the faults' other end (`spec.target`).
    pub target: Option<crate::select::SelectorSpec>,
    /// When it runs again (a `Schedule` document, or `spec.scheduler.cron`).
    pub schedule: Option<crate::schedule::ScheduleSpec>,
    /// Fields accepted but not honoured exactly, each with its path and why.
    pub notes: Vec<String>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// Not YAML, or not shaped as a NetworkChaos (an unknown field, a wrong type): the parser's
    /// message, which names the field's path and line.
    #[error("{0}")]
    Yaml(String),
    /// A field refused, by its YAML path, and why.
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
    /// One of these, in the `index`th document (from 1) of a file of several.
    #[error("document {index}: {error}")]
    Document { index: usize, error: Box<Error> },
}

fn refuse(path: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Field { path: path.into(), reason: reason.into() }
}

/// Whether a fault file is Chaos Mesh YAML (NetworkChaos, DNSChaos, Schedule) rather than TOML
/// `[[fault]]` tables: by its extension, or a top-level `kind:` (which TOML cannot have).
pub fn is_network_chaos(path: &std::path::Path, text: &str) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml") || text.lines().any(|l| l.starts_with("kind:"))
}

/// Reads every NetworkChaos, DNSChaos or Schedule document of `text` (separated by `---`) into
/// faults, each checked as the daemon would ([`FaultSpec::validate`]), all forming one
/// experiment: their selectors, targets and schedules must be the same.
pub fn parse(text: &str) -> Result<Experiment, Error> {
    // Two passes: loosely first, to skip empty documents and name a wrong kind before its
    // fields are judged as NetworkChaos fields; then strictly, where errors carry their path.
    let mut heads = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        // After a syntax error the iterator repeats it for ever: stop at the first.
        heads.push(serde_norway::Value::deserialize(doc).map_err(|e| Error::Yaml(e.to_string()))?);
    }
    let docs = heads.iter().filter(|h| !h.is_null()).count();
    let in_doc = |index: usize, error: Error| match docs {
        1 => error,
        _ => Error::Document { index, error: Box::new(error) },
    };
    let mut experiment: Option<Experiment> = None;
    let mut names: Vec<String> = Vec::new();
    let mut index = 0;
    for (doc, head) in serde_norway::Deserializer::from_str(text).zip(&heads) {
        if head.is_null() {
            continue;
        }
        index += 1;
        let yaml = |e: serde_norway::Error| in_doc(index, Error::Yaml(e.to_string()));
        let part = match check_kind(head).map_err(|e| in_doc(index, e))? {
            Kind::NetworkChaos => NetworkChaos::deserialize(doc).map_err(yaml)?.read(None),
            Kind::DnsChaos => DnsChaos::deserialize(doc).map_err(yaml)?.read(None),
            kind @ (Kind::Schedule | Kind::DnsSchedule) => ScheduleDoc::deserialize(doc).map_err(yaml)?.read(kind),
        }
        .map_err(|e| in_doc(index, e))?;
        if names.contains(&part.name) {
            let name = &part.name;
            return Err(in_doc(index, refuse("metadata.name", format!("'{name}' names another document too"))));
        }
        names.push(part.name.clone());
        match &mut experiment {
            None => {
                experiment = Some(Experiment {
                    name: part.name,
                    faults: part.faults,
                    selector: part.selector,
                    target: part.target,
                    schedule: part.schedule,
                    notes: part.notes,
                })
            }
            Some(x) => {
                // One experiment has one selection and one schedule.
                let why = "differs from the first document's: the documents of a file form one experiment, which has \
                           one; apply them from separate files";
                let at = part.kind.spec();
                if let Some(path) = [
                    (part.selector != x.selector, format!("{at}.selector")),
                    (part.target != x.target, format!("{at}.target")),
                    (part.schedule != x.schedule, "spec.schedule".to_owned()),
                ]
                .into_iter()
                .find_map(|(differs, path)| differs.then_some(path))
                {
                    return Err(in_doc(index, refuse(path, why)));
                }
                x.faults.extend(part.faults);
                x.notes.extend(part.notes);
            }
        }
    }
    experiment.ok_or_else(|| Error::Yaml("no NetworkChaos, DNSChaos or Schedule document in the file".into()))
}

/// The kinds of document read here.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    NetworkChaos,
    DnsChaos,
    /// Chaos Mesh's `Schedule` of a NetworkChaos.
    Schedule,
    /// A `Schedule` of a DNSChaos.
    DnsSchedule,
}

impl Kind {
    /// The path of the chaos's `spec` in the document.
    fn spec(self) -> &'static str {
        match self {
            Self::NetworkChaos | Self::DnsChaos => "spec",
            Self::Schedule => "spec.networkChaos",
            Self::DnsSchedule => "spec.dnsChaos",
        }
    }
}

/// One document read: its faults (templates with a selector), what they act on and when.
struct Part {
    kind: Kind,
    name: String,
    faults: Vec<FaultSpec>,
    selector: Option<SelectorSpec>,
    target: Option<SelectorSpec>,
    schedule: Option<ScheduleSpec>,
    notes: Vec<String>,
}

fn check_kind(head: &serde_norway::Value) -> Result<Kind, Error> {
    let field = |name: &str| head.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    match field("apiVersion") {
        v if v == "chaos-mesh.org/v1alpha1" => {}
        v if v.is_empty() => return Err(refuse("apiVersion", "is required: chaos-mesh.org/v1alpha1")),
        v => return Err(refuse("apiVersion", format!("'{v}' is not chaos-mesh.org/v1alpha1"))),
    }
    match field("kind") {
        k if k == "NetworkChaos" => Ok(Kind::NetworkChaos),
        k if k == "DNSChaos" => Ok(Kind::DnsChaos),
        k if k == "Schedule" => {
            let kind = head.get("spec").and_then(|s| s.get("type")).and_then(|v| v.as_str()).unwrap_or_default();
            match kind {
                "NetworkChaos" => Ok(Kind::Schedule),
                "DNSChaos" => Ok(Kind::DnsSchedule),
                "" => Err(refuse("spec.type", "is required: NetworkChaos or DNSChaos")),
                other => {
                    Err(refuse("spec.type", format!("'{other}' is not read here: only NetworkChaos and DNSChaos are")))
                }
            }
        }
        k if k.is_empty() => Err(refuse("kind", "is required: NetworkChaos, DNSChaos or Schedule")),
        k => Err(refuse("kind", format!("'{k}' is not read here: only NetworkChaos, DNSChaos and Schedule are"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkChaos {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: Metadata,
    spec: Spec,
}

/// A Chaos Mesh DNSChaos: the selected pods' DNS queries for some names answered with an error
/// or random addresses.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DnsChaos {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: Metadata,
    spec: DnsSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DnsSpec {
    action: String,
    mode: Option<String>,
    value: Option<String>,
    selector: Option<Selector>,
    /// Chaos Mesh's `DomainNamePatterns`.
    patterns: Option<Vec<String>>,
    duration: Option<String>,
    // Refused when given (see `faults`).
    container_names: Option<IgnoredAny>,
    remote_cluster: Option<IgnoredAny>,
    /// Chaos Mesh 1.x's `outer`, `inner` or `all` names.
    scope: Option<IgnoredAny>,
}

/// A Chaos Mesh `Schedule` of type NetworkChaos or DNSChaos: its chaos at each tick.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScheduleDoc {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: Metadata,
    spec: ScheduleDocSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScheduleDocSpec {
    schedule: String,
    #[serde(rename = "type")]
    _type: IgnoredAny,
    network_chaos: Option<Spec>,
    dns_chaos: Option<DnsSpec>,
    concurrency_policy: Option<String>,
    history_limit: Option<u32>,
    starting_deadline_seconds: Option<i64>,
}

/// The Kubernetes object's metadata: its name names the experiment and its faults, its
/// namespace is where a selector without namespaces selects (as in Chaos Mesh); the rest
/// describes the object and means nothing on a node.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: Option<String>,
    #[serde(rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(rename = "annotations")]
    _annotations: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    action: String,
    mode: Option<String>,
    value: Option<String>,
    selector: Option<Selector>,
    device: Option<String>,
    direction: Option<String>,
    external_targets: Option<Vec<String>>,
    duration: Option<String>,
    delay: Option<Delay>,
    loss: Option<Loss>,
    duplicate: Option<Duplicate>,
    corrupt: Option<Corrupt>,
    bandwidth: Option<Bandwidth>,
    target: Option<Target>,
    /// Older Chaos Mesh's recurring NetworkChaos: `{cron: ...}`.
    scheduler: Option<Scheduler>,
    // Refused when given (see `faults`).
    target_device: Option<IgnoredAny>,
    remote_cluster: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    namespaces: Option<Vec<String>>,
    label_selectors: Option<BTreeMap<String, String>>,
    expression_selectors: Option<Vec<Expression>>,
    annotation_selectors: Option<BTreeMap<String, String>>,
    pod_phase_selectors: Option<Vec<String>>,
    /// Namespace to pod names.
    pods: Option<BTreeMap<String, Vec<String>>>,
    // Refused when given: see `faults`.
    field_selectors: Option<IgnoredAny>,
    nodes: Option<IgnoredAny>,
    node_selectors: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expression {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

/// `spec.target`: the pods at the other end.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    selector: Selector,
    mode: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scheduler {
    cron: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delay {
    latency: String,
    correlation: Option<String>,
    jitter: Option<String>,
    reorder: Option<Reorder>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reorder {
    reorder: String,
    correlation: Option<String>,
    gap: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Loss {
    loss: String,
    correlation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Duplicate {
    duplicate: String,
    correlation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corrupt {
    corrupt: String,
    correlation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bandwidth {
    rate: String,
    limit: Option<u64>,
    buffer: Option<u64>,
    peakrate: Option<IgnoredAny>,
    minburst: Option<IgnoredAny>,
}

/// A Chaos Mesh percentage: a number as text (`'25'`, `'0.5'`).
fn percent(path: &str, text: &str) -> Result<f64, Error> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or_else(|| refuse(path, format!("'{text}' is not a number (a percentage, e.g. '25')")))
}

fn nonzero_percent(path: &str, text: Option<&str>) -> Result<Option<f64>, Error> {
    Ok(text.map(|t| percent(path, t)).transpose()?.filter(|p| *p != 0.0))
}

fn nonzero_duration(path: &str, text: Option<&str>) -> Result<Option<DurationSpec>, Error> {
    Ok(text
        .map(|t| go_duration(path, t))
        .transpose()?
        .filter(|d| !d.is_zero())
        .map(|d| DurationSpec::Text(self::text(d))))
}

/// A duration as Go's `time.ParseDuration` reads Chaos Mesh's: `300ms`, `1.5h`, `2h45m`, `0`
/// (units ns, us or µs, ms, s, m, h; no sign: a negative one means nothing here).
pub(crate) fn go_duration(path: &str, text: &str) -> Result<Duration, Error> {
    let bad = || refuse(path, format!("'{text}' is not a duration (e.g. 300ms, 1.5h, 2h45m)"));
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos = 0.0;
    while !rest.is_empty() {
        let number = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..number].parse().map_err(|_| bad())?;
        rest = &rest[number..];
        let unit = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        nanos += n * scale;
    }
    // Go's limit: an int64 of nanoseconds (292 years).
    if nanos >= 9.2e18 {
        return Err(refuse(path, format!("'{text}' is too long")));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// A duration in the daemon's syntax, to the microsecond (Chaos Mesh gives netem microseconds).
fn text(d: Duration) -> String {
    match d.as_micros() {
        us if us % 1_000_000 == 0 => format!("{}s", us / 1_000_000),
        us if us % 1000 == 0 => format!("{}ms", us / 1000),
        us => format!("{us}us"),
    }
}

mod faults;
#[cfg(test)]
mod tests;
