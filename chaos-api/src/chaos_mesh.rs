//! Chaos Mesh NetworkChaos documents (`apiVersion: chaos-mesh.org/v1alpha1`, `kind:
//! NetworkChaos`) read as faults, with Chaos Mesh's meaning wherever one node can honour it.
//! Every field is either mapped or refused with its YAML path and the reason: none is ignored
//! unannounced (the one not honoured, `bandwidth.limit`, is reported as a note).
//!
//! Which traffic: Chaos Mesh finds its pods through the API server, which a node-local daemon
//! does not use. So the selector is read only where the node can check it by itself: pods
//! listed by name (`selector.pods`), found as `pod` targets in the container runtime's state;
//! every other selector, `mode`s that pick pods at random, and `target` (a second selector)
//! are refused. A document without a selector (not valid in Chaos Mesh) acts on this host's
//! interface `device`.
//!
//! Here: the documents' shape (every field named, so an unknown one is refused) and Chaos
//! Mesh's values (percentages, Go durations); `faults` maps a document to faults.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, de::IgnoredAny};

use crate::spec::{DurationSpec, FaultSpec};

/// The faults a file of NetworkChaos documents applies, as one experiment.
#[derive(Debug, PartialEq)]
pub struct Experiment {
    /// The first document's `metadata.name`.
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

/// Whether a fault file is NetworkChaos YAML rather than TOML `[[fault]]` tables: by its
/// extension, or a top-level `kind:` (which TOML cannot have).
pub fn is_network_chaos(path: &std::path::Path, text: &str) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml") || text.lines().any(|l| l.starts_with("kind:"))
}

/// Reads every NetworkChaos document of `text` (separated by `---`) into faults, each checked
/// as the daemon would ([`FaultSpec::validate`]), all forming one experiment.
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
        check_kind(head).map_err(|e| in_doc(index, e))?;
        let chaos = NetworkChaos::deserialize(doc).map_err(|e| in_doc(index, Error::Yaml(e.to_string())))?;
        let name = &chaos.metadata.name;
        if names.contains(name) {
            return Err(in_doc(index, refuse("metadata.name", format!("'{name}' names another document too"))));
        }
        names.push(name.clone());
        let (faults, notes) = chaos.faults().map_err(|e| in_doc(index, e))?;
        match &mut experiment {
            None => {
                experiment =
                    Some(Experiment { name: name.clone(), faults, selector: None, target: None, schedule: None, notes })
            }
            Some(x) => {
                x.faults.extend(faults);
                x.notes.extend(notes);
            }
        }
    }
    experiment.ok_or_else(|| Error::Yaml("no NetworkChaos document in the file".into()))
}

fn check_kind(head: &serde_norway::Value) -> Result<(), Error> {
    let field = |name: &str| head.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    match field("apiVersion") {
        v if v == "chaos-mesh.org/v1alpha1" => {}
        v if v.is_empty() => return Err(refuse("apiVersion", "is required: chaos-mesh.org/v1alpha1")),
        v => return Err(refuse("apiVersion", format!("'{v}' is not chaos-mesh.org/v1alpha1"))),
    }
    match field("kind") {
        k if k == "NetworkChaos" => Ok(()),
        k if k.is_empty() => Err(refuse("kind", "is required: NetworkChaos")),
        k => Err(refuse("kind", format!("'{k}' is not read here: only NetworkChaos is"))),
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

/// The Kubernetes object's metadata: its name names the experiment and its faults; the rest
/// describes the object and means nothing on a node (with `selector.pods`, Chaos Mesh does not
/// use the namespace either).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(rename = "namespace")]
    _namespace: Option<IgnoredAny>,
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
    // Refused when given (see `faults`).
    target: Option<IgnoredAny>,
    target_device: Option<IgnoredAny>,
    remote_cluster: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    /// Namespace to pod names: the one selector a node can check by itself.
    pods: Option<BTreeMap<String, Vec<String>>>,
    // The others need the API server: refused when given.
    namespaces: Option<IgnoredAny>,
    label_selectors: Option<IgnoredAny>,
    expression_selectors: Option<IgnoredAny>,
    annotation_selectors: Option<IgnoredAny>,
    field_selectors: Option<IgnoredAny>,
    nodes: Option<IgnoredAny>,
    node_selectors: Option<IgnoredAny>,
    pod_phase_selectors: Option<IgnoredAny>,
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
