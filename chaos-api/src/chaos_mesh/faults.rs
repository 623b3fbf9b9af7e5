//! From a NetworkChaos document to faults: each field mapped with Chaos Mesh's meaning, or
//! refused by its path with the reason.

use super::{Error, NetworkChaos, Spec, go_duration, nonzero_duration, nonzero_percent, percent, refuse, text};
use crate::spec::{Cidr, DurationSpec, FaultSpec, RateSpec, SpecError, validate_name};

/// Why selectors other than `pods` are refused.
const API_SERVER: &str = "selects pods through the Kubernetes API server, which chaos-daemon does not use on a node: \
                          list the pods by name in spec.selector.pods";

impl NetworkChaos {
    /// The faults (one per selected pod and external target) and the notes.
    pub(super) fn faults(&self) -> Result<(Vec<FaultSpec>, Vec<String>), Error> {
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
