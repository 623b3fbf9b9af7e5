//! From a NetworkChaos or DNSChaos document to faults: each field mapped with Chaos Mesh's
//! meaning, or refused by its path with the reason.

use super::{
    DnsChaos, Error, Kind, NetworkChaos, Part, ScheduleDoc, Selector, Spec, go_duration, nonzero_duration,
    nonzero_percent, percent, refuse, text,
};
use crate::{
    schedule::{Schedule, ScheduleSpec},
    select::{ExpressionSpec, SelectorSpec},
    spec::{Cidr, Domain, DurationSpec, Fault, FaultSpec, RateSpec, SpecError, validate_name},
};

/// Why node selectors are refused.
const NODES: &str = "chaos-daemon acts on the pods of the node it runs on: its node is the one selected (run it, or \
                     apply, on the nodes you mean)";

/// A template checked as the daemon applies it in a selected pod: there, without an
/// `interface`, `eth0`.
pub(crate) fn validate_template(template: &FaultSpec) -> Result<Fault, SpecError> {
    FaultSpec { pod: Some("default/template".into()), ..template.clone() }.validate()
}

impl ScheduleDoc {
    /// The NetworkChaos or DNSChaos (`kind`: [`Kind::Schedule`] or [`Kind::DnsSchedule`]) it
    /// runs, with the Schedule's metadata, and when.
    pub(super) fn read(self, kind: Kind) -> Result<Part, Error> {
        let s = self.spec;
        s.schedule.parse::<Schedule>().map_err(|e| refuse("spec.schedule", e))?;
        match s.concurrency_policy.as_deref() {
            None | Some("Forbid") => {}
            Some("Allow") => {
                return Err(refuse(
                    "spec.concurrencyPolicy",
                    "'Allow' is not supported: runs of one experiment never overlap here (a tick while the last run \
                     lasts is skipped, as with Forbid)",
                ));
            }
            Some(other) => {
                return Err(refuse("spec.concurrencyPolicy", format!("'{other}' is not a policy (Forbid or Allow)")));
            }
        }
        let (at, other) = match kind {
            Kind::DnsSchedule => ("spec.dnsChaos", ("spec.networkChaos", s.network_chaos.is_some())),
            _ => ("spec.networkChaos", ("spec.dnsChaos", s.dns_chaos.is_some())),
        };
        let kind_name = if kind == Kind::DnsSchedule { "DNSChaos" } else { "NetworkChaos" };
        if let (path, true) = other {
            return Err(refuse(path, format!("does not go with type {kind_name}: give the {at} it runs")));
        }
        let missing = || refuse(at, format!("is required with type {kind_name}: the faults each run applies"));
        let schedule = Some(ScheduleSpec { cron: s.schedule, history_limit: s.history_limit });
        let (_api_version, _kind) = (serde::de::IgnoredAny, serde::de::IgnoredAny);
        let metadata = self.metadata;
        let part = match kind {
            Kind::DnsSchedule => {
                let spec = s.dns_chaos.ok_or_else(missing)?;
                DnsChaos { _api_version, _kind, metadata, spec }.read(schedule)
            }
            _ => {
                let spec = s.network_chaos.ok_or_else(missing)?;
                NetworkChaos { _api_version, _kind, metadata, spec }.read(schedule)
            }
        };
        let mut part = part.map_err(|e| match e {
            Error::Field { path, reason } => match path.strip_prefix("spec.") {
                Some(rest) => refuse(format!("{at}.{rest}"), reason),
                None => refuse(path, reason),
            },
            other => other,
        })?;
        if let Some(seconds) = s.starting_deadline_seconds {
            // The daemon runs no tick late: one missed (the daemon stopped) is not made up.
            part.notes.push(format!(
                "spec.startingDeadlineSeconds: {seconds} not used: a tick missed while the daemon was down is not run \
                 late"
            ));
        }
        part.kind = kind;
        Ok(part)
    }
}

impl DnsChaos {
    /// Its one fault template, the pods it acts in, and when (`scheduled`: by a Schedule
    /// document). `error` is dns error SERVFAIL (what Chaos Mesh's DNS server answers), `random`
    /// dns random; `patterns` the fault's domains (none: every name).
    pub(super) fn read(&self, scheduled: Option<ScheduleSpec>) -> Result<Part, Error> {
        let s = &self.spec;
        validate_name(&self.metadata.name).map_err(|e| refuse("metadata.name", e.reason))?;
        if s.container_names.is_some() {
            return Err(refuse(
                "spec.containerNames",
                "is not supported: the fault acts on the pod's network namespace, which its containers share",
            ));
        }
        if s.remote_cluster.is_some() {
            return Err(refuse("spec.remoteCluster", "chaos-daemon acts on the node it runs on"));
        }
        if s.scope.is_some() {
            return Err(refuse(
                "spec.scope",
                "(Chaos Mesh 1.x) is not supported: name the domains the fault acts on in spec.patterns",
            ));
        }
        if scheduled.is_some() && s.duration.is_none() {
            return Err(refuse("spec.duration", "is required for a recurring experiment: how long each run lasts"));
        }
        let namespace = self.metadata.namespace.as_deref().unwrap_or("default");
        let selector = match &s.selector {
            None => {
                return Err(refuse(
                    "spec.selector",
                    "is required: the pods whose DNS queries the fault answers (a DNSChaos names no interface of \
                     this host)",
                ));
            }
            Some(sel) => selector_spec(sel, s.mode.as_deref(), s.value.as_deref(), namespace, "spec")?,
        };
        let reply = match s.action.as_str() {
            a @ ("error" | "random") => a,
            other => {
                return Err(refuse("spec.action", format!("'{other}' is not a DNSChaos action (error or random)")));
            }
        };
        let patterns = s.patterns.clone().unwrap_or_default();
        // Chaos Mesh's glob: `*` alone or as a whole first or last label maps to a pattern here;
        // `?` and other wildcards are refused, by the pattern's path.
        for (i, p) in patterns.iter().enumerate() {
            Domain::parse(p).map_err(|e| refuse(format!("spec.patterns[{i}]"), e))?;
        }
        let duration = s.duration.as_deref().map(|d| go_duration("spec.duration", d)).transpose()?;
        let fault = FaultSpec {
            name: Some(self.metadata.name.clone()),
            action: Some("dns".into()),
            dns: Some(reply.into()),
            rcode: (reply == "error").then(|| "SERVFAIL".into()),
            domains: (!patterns.is_empty()).then_some(patterns),
            duration: duration.map(|d| DurationSpec::Text(text(d))),
            ..FaultSpec::default()
        };
        validate_template(&fault).map_err(|e| located(e, "dns"))?;
        Ok(Part {
            kind: Kind::DnsChaos,
            name: self.metadata.name.clone(),
            faults: vec![fault],
            selector: Some(selector),
            target: None,
            schedule: scheduled,
            notes: Vec::new(),
        })
    }
}

impl NetworkChaos {
    /// The faults (one per external target; templates with a selector), what they act on, and
    /// when (`scheduled`: by a Schedule document), with the notes.
    pub(super) fn read(&self, scheduled: Option<ScheduleSpec>) -> Result<Part, Error> {
        let s = &self.spec;
        validate_name(&self.metadata.name).map_err(|e| refuse("metadata.name", e.reason))?;
        if s.target_device.is_some() {
            return Err(refuse(
                "spec.targetDevice",
                "is not supported: the faults act on each selected pod's spec.device, toward the target's addresses",
            ));
        }
        if s.remote_cluster.is_some() {
            return Err(refuse("spec.remoteCluster", "chaos-daemon acts on the node it runs on"));
        }
        let schedule = match (scheduled, &s.scheduler) {
            (Some(_), Some(_)) => {
                return Err(refuse("spec.scheduler", "does not go in a Schedule: its spec.schedule says when it runs"));
            }
            (Some(x), None) => Some(x),
            (None, Some(x)) => {
                x.cron.parse::<Schedule>().map_err(|e| refuse("spec.scheduler.cron", e))?;
                Some(ScheduleSpec { cron: x.cron.clone(), history_limit: None })
            }
            (None, None) => None,
        };
        if schedule.is_some() && s.duration.is_none() {
            return Err(refuse("spec.duration", "is required for a recurring experiment: how long each run lasts"));
        }
        let selector = self.selector()?;
        let target = s.target.as_ref().map(|t| self.target(t)).transpose()?;
        let action = self.action()?;
        let partition = action == "partition";
        let targets = self.targets(partition, target.is_some())?;
        let direction = match (s.direction.as_deref().unwrap_or("to"), partition || target.is_some()) {
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
        let mut faults = Vec::new();
        for target in &targets {
            let name = match targets.len() {
                1 => self.metadata.name.clone(),
                _ => format!("{}-{}", self.metadata.name, faults.len() + 1),
            };
            // `from` is the target's packets to the pod: the target is their source.
            let (src, dst) = if direction == "ingress" { (target.clone(), None) } else { (None, target.clone()) };
            let fault = FaultSpec { name: Some(name), src, dst, ..base.clone() };
            match selector {
                Some(_) => validate_template(&fault),
                None => fault.validate(),
            }
            .map_err(|e| located(e, &action))?;
            faults.push(fault);
        }
        // Required by Chaos Mesh, so refusing it would refuse every bandwidth file; the queue's
        // bound changes how long packets wait above the rate, not which traffic is limited.
        let notes = s.bandwidth.as_ref().and_then(|b| b.limit).map(|limit| {
            format!(
                "spec.bandwidth.limit: {limit} bytes not used: the daemon bounds the queue above the rate itself \
                 (see docs/delay.md)"
            )
        });
        Ok(Part {
            kind: Kind::NetworkChaos,
            name: self.metadata.name.clone(),
            faults,
            selector,
            target,
            schedule,
            notes: notes.into_iter().collect(),
        })
    }

    /// Where a selector without namespaces selects: the document's namespace, as in Chaos Mesh.
    fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The pods the faults act in, or none: this host's `device`.
    fn selector(&self) -> Result<Option<SelectorSpec>, Error> {
        let s = &self.spec;
        match &s.selector {
            None if s.device.is_none() => Err(refuse(
                "spec.device",
                "is required without spec.selector: the interface of this host the faults act on",
            )),
            None => {
                match s.mode.as_deref() {
                    None | Some("all" | "one") => {}
                    Some(m) => return Err(refuse("spec.mode", format!("'{m}' picks pods: it needs spec.selector"))),
                }
                if s.value.as_deref().is_some_and(|v| !v.is_empty()) {
                    return Err(refuse("spec.value", "goes with a mode that picks pods: it needs spec.selector"));
                }
                Ok(None)
            }
            Some(sel) => selector_spec(sel, s.mode.as_deref(), s.value.as_deref(), self.namespace(), "spec").map(Some),
        }
    }

    fn target(&self, t: &super::Target) -> Result<SelectorSpec, Error> {
        selector_spec(&t.selector, t.mode.as_deref(), t.value.as_deref(), self.namespace(), "spec.target")
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

    /// The external targets as `dst`/`src` values, or `[None]` (all traffic, or the target's
    /// pods, which the daemon fills in).
    fn targets(&self, partition: bool, target: bool) -> Result<Vec<Option<String>>, Error> {
        let list = self.spec.external_targets.as_deref().unwrap_or_default();
        if list.is_empty() {
            if partition && !target {
                return Err(refuse(
                    "spec.externalTargets",
                    "is required for a partition without spec.target: the addresses to cut off",
                ));
            }
            return Ok(vec![None]);
        }
        if target {
            return Err(refuse(
                "spec.externalTargets",
                "does not go with spec.target here: the daemon sets each fault's address to the target's pods; put \
                 the external targets in another file",
            ));
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

/// A Chaos Mesh selector with its mode and value (`at`: `spec` or `spec.target`) as a
/// [`SelectorSpec`], checked; refusals by their YAML paths.
fn selector_spec(
    sel: &Selector,
    mode: Option<&str>,
    value: Option<&str>,
    namespace: &str,
    at: &str,
) -> Result<SelectorSpec, Error> {
    for (name, given) in [
        ("fieldSelectors", sel.field_selectors.is_some()),
        ("nodes", sel.nodes.is_some()),
        ("nodeSelectors", sel.node_selectors.is_some()),
    ] {
        if given {
            return Err(refuse(format!("{at}.selector.{name}"), NODES));
        }
    }
    let pods = sel.pods.clone().unwrap_or_default();
    let mut namespaces = sel.namespaces.clone().unwrap_or_default();
    // Chaos Mesh's default: the document's namespace, unless the pods name theirs.
    if namespaces.is_empty() && pods.is_empty() {
        namespaces.push(namespace.to_owned());
    }
    let labels = sel.label_selectors.as_ref().filter(|l| !l.is_empty()).map(|l| {
        let pairs: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(",")
    });
    let spec = SelectorSpec {
        namespaces,
        labels,
        expressions: sel
            .expression_selectors
            .iter()
            .flatten()
            .map(|x| ExpressionSpec {
                key: x.key.clone(),
                operator: x.operator.clone(),
                values: x.values.clone().unwrap_or_default(),
            })
            .collect(),
        annotations: sel.annotation_selectors.clone().unwrap_or_default(),
        phases: sel.pod_phase_selectors.clone().unwrap_or_default(),
        pods,
        mode: mode.map(str::to_owned),
        value: value.filter(|v| !v.is_empty()).map(str::to_owned),
    };
    spec.validate().map_err(|e| {
        let field = e.field.strip_prefix("selector.").unwrap_or(&e.field);
        let (head, rest) = field.find(['.', '[']).map_or((field, ""), |i| field.split_at(i));
        let path = match head {
            "mode" | "value" => format!("{at}.{head}"),
            "labels" => format!("{at}.selector.labelSelectors"),
            "expressions" => format!("{at}.selector.expressionSelectors{rest}"),
            "annotations" => format!("{at}.selector.annotationSelectors{rest}"),
            "phases" => format!("{at}.selector.podPhaseSelectors{rest}"),
            _ => format!("{at}.selector.{field}"),
        };
        refuse(path, e.reason)
    })?;
    Ok(spec)
}

/// A refusal of [`FaultSpec::validate`], at the YAML path of the field it came from.
fn located(e: SpecError, action: &str) -> Error {
    let path = match e.field.as_str() {
        "name" => "metadata.name",
        "interface" => "spec.device",
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
        // A DNSChaos's patterns are its fault's domains.
        d if d.starts_with("domains") => return refuse(format!("spec.patterns{}", &d["domains".len()..]), e.reason),
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
