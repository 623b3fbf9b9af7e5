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
    /// Pods by name: namespace to names. With other fields, a pod must satisfy them all.
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

impl SelectorSpec {
    /// The selector, or the first field that is wrong (`selector.labels: ...`).
    pub fn validate(&self) -> Result<PodSelector, SpecError> {
        let _ = self;
        unimplemented!("select: validate")
    }
}

impl PodSelector {
    /// Whether the pod satisfies every field (the mode aside).
    pub fn matches(&self, pod: &PodFacts<'_>) -> bool {
        let _ = pod;
        unimplemented!("select: matches")
    }

    /// The selector in a line, for messages and `chaosctl list`: `namespace shop, app=web,
    /// tier!=db, mode fixed-percent 50`.
    pub fn describe(&self) -> String {
        unimplemented!("select: describe")
    }
}

impl Mode {
    /// How many of `matching` pods to take; `random(n)` gives a number in `0..n`. Refused as
    /// Chaos Mesh refuses it: no pod matches, or the mode takes none.
    pub fn count(&self, matching: usize, random: &mut dyn FnMut(usize) -> usize) -> Result<usize, String> {
        let _ = (matching, random);
        unimplemented!("select: count")
    }
}

/// A label selector in kubectl's syntax (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`,
/// separated by commas), each key and value checked as Kubernetes checks them.
pub fn parse_labels(text: &str) -> Result<Vec<Requirement>, String> {
    let _ = text;
    unimplemented!("select: parse_labels")
}
