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

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, de::IgnoredAny};

use crate::spec::{Cidr, DurationSpec, FaultSpec, RateSpec, SpecError, validate_name};

/// The faults a file of NetworkChaos documents applies, as one experiment.
#[derive(Debug, PartialEq)]
pub struct Experiment {
    /// The first document's `metadata.name`.
    pub name: String,
    pub faults: Vec<FaultSpec>,
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
            None => experiment = Some(Experiment { name: name.clone(), faults, notes }),
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

/// Why selectors other than `pods` are refused.
const API_SERVER: &str = "selects pods through the Kubernetes API server, which chaos-daemon does not use on a node: \
                          list the pods by name in spec.selector.pods";

impl NetworkChaos {
    /// The faults (one per selected pod and external target) and the notes.
    fn faults(&self) -> Result<(Vec<FaultSpec>, Vec<String>), Error> {
        let s = &self.spec;
        validate_name(&self.metadata.name).map_err(|e| refuse("metadata.name", e.reason))?;
        for (path, given) in [("spec.target", s.target.is_some()), ("spec.targetDevice", s.target_device.is_some())] {
            if given {
                return Err(refuse(
                    path,
                    "a second pod selector is not supported on one node (its pods' addresses need the API \
                     server): list the addresses in spec.externalTargets",
                ));
            }
        }
        if s.remote_cluster.is_some() {
            return Err(refuse("spec.remoteCluster", "chaos-daemon acts on the node it runs on"));
        }
        let pods = self.pods()?;
        let action = self.action()?;
        let partition = action == "partition";
        let targets = self.targets(partition)?;
        let direction = match (s.direction.as_deref().unwrap_or("to"), partition) {
            ("to", _) => "egress",
            ("from", true) => "ingress",
            ("both", true) => "both",
            (d @ ("from" | "both"), false) => {
                return Err(refuse(
                    "spec.direction",
                    format!(
                        "'{d}' with action '{}' needs spec.target, as in Chaos Mesh (which refuses it with \
                         externalTargets alone): use 'to'",
                        s.action
                    ),
                ));
            }
            (d, _) => return Err(refuse("spec.direction", format!("'{d}' is not a direction (to, from or both)"))),
        };
        let duration = s.duration.as_deref().map(|d| go_duration("spec.duration", d)).transpose()?;
        let base = FaultSpec {
            interface: s.device.clone(),
            direction: Some(direction.into()),
            duration: duration.map(|d| DurationSpec::Text(text(d))),
            ..action_fields(s, &action)?
        };
        let count = pods.len() * targets.len();
        let mut faults = Vec::new();
        for pod in &pods {
            for target in &targets {
                let name = match count {
                    1 => self.metadata.name.clone(),
                    _ => format!("{}-{}", self.metadata.name, faults.len() + 1),
                };
                // `from` is the target's packets to the pod: the target is their source.
                let (src, dst) = if direction == "ingress" { (target.clone(), None) } else { (None, target.clone()) };
                let fault = FaultSpec { name: Some(name), pod: pod.clone(), src, dst, ..base.clone() };
                fault.validate().map_err(|e| located(e, &action))?;
                faults.push(fault);
            }
        }
        // Required by Chaos Mesh, so refusing it would refuse every bandwidth file; the queue's
        // bound changes how long packets wait above the rate, not which traffic is limited.
        let notes = s.bandwidth.as_ref().and_then(|b| b.limit).map(|limit| {
            format!(
                "spec.bandwidth.limit: {limit} bytes not used: the daemon bounds the queue above the rate itself \
                 (see docs/delay.md)"
            )
        });
        Ok((faults, notes.into_iter().collect()))
    }

    /// The pods the faults act in (`NAMESPACE/NAME`), or `[None]`: this host's `device`.
    fn pods(&self) -> Result<Vec<Option<String>>, Error> {
        let s = &self.spec;
        let pods: Vec<Option<String>> = match &s.selector {
            None if s.device.is_none() => {
                return Err(refuse(
                    "spec.device",
                    "is required without spec.selector: the interface of this host the faults act on",
                ));
            }
            None => vec![None],
            Some(sel) => {
                for (name, given) in [
                    ("namespaces", sel.namespaces.is_some()),
                    ("labelSelectors", sel.label_selectors.is_some()),
                    ("expressionSelectors", sel.expression_selectors.is_some()),
                    ("annotationSelectors", sel.annotation_selectors.is_some()),
                    ("fieldSelectors", sel.field_selectors.is_some()),
                    ("nodes", sel.nodes.is_some()),
                    ("nodeSelectors", sel.node_selectors.is_some()),
                    ("podPhaseSelectors", sel.pod_phase_selectors.is_some()),
                ] {
                    if given {
                        return Err(refuse(format!("spec.selector.{name}"), API_SERVER));
                    }
                }
                let pods: Vec<_> = sel
                    .pods
                    .iter()
                    .flatten()
                    .flat_map(|(ns, names)| names.iter().map(move |n| Some(format!("{ns}/{n}"))))
                    .collect();
                if pods.is_empty() {
                    return Err(refuse("spec.selector.pods", "names no pod: list them as NAMESPACE: [NAME, ...]"));
                }
                pods
            }
        };
        match s.mode.as_deref() {
            None | Some("all") => {}
            Some("one") if pods.len() == 1 => {}
            Some("one") => {
                return Err(refuse(
                    "spec.mode",
                    format!(
                        "'one' picks one of the {} pods at random: list that pod alone, or use mode all",
                        pods.len()
                    ),
                ));
            }
            Some(m @ ("fixed" | "fixed-percent" | "random-max-percent")) => {
                return Err(refuse(
                    "spec.mode",
                    format!("'{m}' picks pods at random: list the pods to act on and use mode all"),
                ));
            }
            Some(m) => {
                return Err(refuse(
                    "spec.mode",
                    format!("'{m}' is not a mode (one, all, fixed, fixed-percent or random-max-percent)"),
                ));
            }
        }
        if s.value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(refuse("spec.value", "goes with the modes that pick pods at random, which are refused here"));
        }
        Ok(pods)
    }

    /// The faults' action, once the settings given agree with it.
    fn action(&self) -> Result<String, Error> {
        let s = &self.spec;
        let given = [
            ("delay", s.delay.is_some()),
            ("loss", s.loss.is_some()),
            ("duplicate", s.duplicate.is_some()),
            ("corrupt", s.corrupt.is_some()),
            ("bandwidth", s.bandwidth.is_some()),
        ];
        let netem = ["delay", "loss", "duplicate", "corrupt"];
        let allowed: &[&str] = match s.action.as_str() {
            "netem" => &netem,
            "partition" => &[],
            a @ ("delay" | "loss" | "duplicate" | "corrupt" | "bandwidth") => &[a][..],
            other => {
                return Err(refuse(
                    "spec.action",
                    format!(
                        "'{other}' is not a NetworkChaos action (netem, delay, loss, duplicate, corrupt, partition or \
                         bandwidth)"
                    ),
                ));
            }
        };
        if let Some((name, _)) = given.iter().find(|(n, g)| *g && !allowed.contains(n)) {
            // Chaos Mesh sends every netem setting it is given, whatever the netem action.
            let why = if netem.contains(name) && netem.contains(&s.action.as_str()) {
                " (Chaos Mesh would apply it too): use action 'netem' to combine them, or remove it"
            } else {
                ""
            };
            return Err(refuse(format!("spec.{name}"), format!("does not go with action '{}'{why}", s.action)));
        }
        let present: Vec<&str> = given.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect();
        let action = match (s.action.as_str(), present.as_slice()) {
            ("partition", _) => "partition",
            ("netem", []) => {
                return Err(refuse(
                    "spec.action",
                    "'netem' needs at least one of spec.delay, loss, duplicate, corrupt",
                ));
            }
            ("netem", [one]) => one,
            // A shaping fault carries a loss; nothing else combines in one fault (a packet meets one).
            ("netem", ["delay", "loss"]) => "delay",
            ("netem", [.., last]) => {
                return Err(refuse(
                    format!("spec.{last}"),
                    "cannot be combined with the others in one fault here (netem does all of them to each packet; \
                     here only delay and loss combine)",
                ));
            }
            (a, []) => return Err(refuse(format!("spec.{a}"), format!("is required for action '{a}'"))),
            (a, _) => a,
        };
        Ok(action.to_owned())
    }

    /// The external targets as `dst`/`src` values, or `[None]` (all traffic).
    fn targets(&self, partition: bool) -> Result<Vec<Option<String>>, Error> {
        let list = self.spec.external_targets.as_deref().unwrap_or_default();
        if list.is_empty() {
            if partition {
                return Err(refuse(
                    "spec.externalTargets",
                    "is required for a partition: the addresses to cut off (spec.target, the other way to name \
                     them, is refused here)",
                ));
            }
            return Ok(vec![None]);
        }
        list.iter()
            .enumerate()
            .map(|(i, t)| {
                let t = t.trim();
                let domain = t.chars().any(|c| c.is_ascii_alphabetic()) && !t.contains([':', '/']);
                match t.parse::<Cidr>() {
                    Ok(_) => Ok(Some(t.to_owned())),
                    Err(_) if domain => Err(refuse(
                        format!("spec.externalTargets[{i}]"),
                        format!(
                            "'{t}' is a domain name: give its addresses (resolving it here would fix the faults to \
                             whatever DNS answered at apply time, unseen)"
                        ),
                    )),
                    Err(e) => Err(refuse(format!("spec.externalTargets[{i}]"), e)),
                }
            })
            .collect()
    }
}

/// A refusal of [`FaultSpec::validate`], at the YAML path of the field it came from.
fn located(e: SpecError, action: &str) -> Error {
    let path = match e.field.as_str() {
        "name" => "metadata.name",
        "interface" => "spec.device",
        "pod" => "spec.selector.pods",
        "direction" => "spec.direction",
        "duration" => "spec.duration",
        "src" | "dst" | "family" => "spec.externalTargets",
        "delay" => "spec.delay.latency",
        "jitter" => "spec.delay.jitter",
        "reorder" => "spec.delay.reorder.reorder",
        "reorder_correlation" => "spec.delay.reorder.correlation",
        "gap" => "spec.delay.reorder.gap",
        "rate" => "spec.bandwidth.rate",
        "burst" => "spec.bandwidth.buffer",
        "loss" => "spec.loss.loss",
        "duplicate" => "spec.duplicate.duplicate",
        "corrupt" => "spec.corrupt.corrupt",
        // The block of the action: its names are the actions'.
        "correlation" => return refuse(format!("spec.{action}.correlation"), e.reason),
        other => return refuse(format!("spec.{other}"), e.reason),
    };
    refuse(path, e.reason)
}

/// The settings of `action` from their NetworkChaos blocks.
fn action_fields(s: &Spec, action: &str) -> Result<FaultSpec, Error> {
    let mut f = FaultSpec { action: Some(action.to_owned()), ..FaultSpec::default() };
    if let Some(d) = &s.delay {
        f.delay = Some(DurationSpec::Text(text(go_duration("spec.delay.latency", &d.latency)?)));
        // Chaos Mesh's defaults, jitter 0ms and correlation 0, are the absence of either.
        f.jitter = nonzero_duration("spec.delay.jitter", d.jitter.as_deref())?;
        f.correlation = nonzero_percent("spec.delay.correlation", d.correlation.as_deref())?;
        if let Some(r) = &d.reorder {
            f.reorder = nonzero_percent("spec.delay.reorder.reorder", Some(&r.reorder))?;
            f.reorder_correlation = nonzero_percent("spec.delay.reorder.correlation", r.correlation.as_deref())?;
            // Gap 0 is Chaos Mesh's default: tc's gap 1, any packet.
            f.gap = r.gap.filter(|g| *g != 0);
        }
    }
    if let Some(l) = &s.loss {
        f.loss = Some(percent("spec.loss.loss", &l.loss)?);
        let correlation = nonzero_percent("spec.loss.correlation", l.correlation.as_deref())?;
        if action == "delay" && correlation.is_some() {
            return Err(refuse(
                "spec.loss.correlation",
                "with a delay, each packet's loss is drawn afresh here: remove it, or apply the loss alone",
            ));
        }
        if action == "loss" {
            f.correlation = correlation;
        }
    }
    if let Some(d) = &s.duplicate {
        f.duplicate = Some(percent("spec.duplicate.duplicate", &d.duplicate)?);
        f.correlation = nonzero_percent("spec.duplicate.correlation", d.correlation.as_deref())?;
    }
    if let Some(c) = &s.corrupt {
        f.corrupt = Some(percent("spec.corrupt.corrupt", &c.corrupt)?);
        f.correlation = nonzero_percent("spec.corrupt.correlation", c.correlation.as_deref())?;
    }
    if let Some(b) = &s.bandwidth {
        for (name, given) in [("peakrate", b.peakrate.is_some()), ("minburst", b.minburst.is_some())] {
            if given {
                return Err(refuse(
                    format!("spec.bandwidth.{name}"),
                    "tbf's second bucket (peakrate, minburst) is not modelled here: remove it",
                ));
            }
        }
        // tc's units, as Chaos Mesh documents them: `mbps` is megabytes per second, `mbit` megabits.
        f.rate = Some(RateSpec::Text(b.rate.clone()));
        f.burst = b.buffer.map(|n| RateSpec::Number(n as f64));
    }
    Ok(f)
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
fn go_duration(path: &str, text: &str) -> Result<Duration, Error> {
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

#[cfg(test)]
mod tests;
