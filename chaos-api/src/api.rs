//! The control socket's wire types (JSON over HTTP/1.1 on a Unix socket), shared by the daemon
//! and chaosctl. Endpoints (all under `/v1`):
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | | [`Status`] |
//! | GET | `/v1/faults` | | [`Faults`] |
//! | POST | `/v1/faults` | [`Apply`] | 201, [`Faults`] (all applied, or none and an error) |
//! | GET | `/v1/faults/{name}` | | [`FaultView`] |
//! | DELETE | `/v1/faults/{name}` | | [`FaultView`] (final counters) |
//! | DELETE | `/v1/faults` | | [`Faults`] removed (scheduled ones too) |
//! | GET | `/v1/experiments` | | [`Experiments`] (selected pods, schedules) |
//! | DELETE | `/v1/experiments/{name}` | | [`Faults`] removed (its schedule and selection stop) |
//! | GET | `/v1/history?limit=N` | | [`History`] (audit trail, newest last; default 100, at most `history_limit`) |
//!
//! Errors are `{"error": "..."}` with 400 (bad input, naming the field), 403 (the peer may not
//! do this, and why), 404 (no such fault, experiment or path), 409 (duplicate name),
//! 422 (this kernel lacks what the fault needs, naming it), 500 (the kernel refused).

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{schedule::ScheduleSpec, select::SelectorSpec, spec::FaultSpec};

/// Where the daemon listens unless configured otherwise, and where chaosctl looks.
pub const DEFAULT_SOCKET: &str = "/run/chaos-daemon.sock";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    pub faults: Vec<FaultSpec>,
    /// Names the batch as an experiment, removed together with `DELETE /v1/experiments/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// Apply even faults that would touch protected flows (SSH sessions, configured destinations).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Pods of this node the faults act in, found through the container runtime (CRI): each
    /// fault is a template applied once in each pod selected (its `pod`, `netns`, `pid`,
    /// `container` and `cgroup` unset; its `interface` that inside the pod, default `eth0`).
    /// Needs `experiment`. With mode `all`, pods that come to match while the experiment lasts
    /// join it, and a pod that goes ends only its own faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SelectorSpec>,
    /// Pods of this node whose addresses are the faults' other end (Chaos Mesh's `target`):
    /// each fault's `dst` (`src` for ingress) is set to each selected pod's address. Needs
    /// `experiment`; refused, naming the selector, when no pod of this node matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<SelectorSpec>,
    /// Runs the experiment again at each tick (each fault needs a `duration`), never overlapping
    /// itself: a tick while the last run still has faults is skipped and recorded. Needs
    /// `experiment`; the first run is at the first tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
}

/// `GET /v1/experiments`: the experiments the daemon follows (those with a selector or a
/// schedule) and those that only name a batch of faults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Experiments {
    pub experiments: Vec<ExperimentView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentView {
    pub name: String,
    /// Its faults now.
    pub faults: usize,
    /// The pods its faults act in now, `NAMESPACE/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// The selector as applied, and in a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SelectorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selects: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Unix time in milliseconds of its next run, when scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_ms: Option<u64>,
    /// Runs started, and ticks skipped because the last run was still active.
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub skipped: u64,
    /// Its last runs, newest last (at most the schedule's `history_limit`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_runs: Vec<Run>,
    /// Absent for an experiment that only names faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<Actor>,
    #[serde(default)]
    pub applied_at_ms: u64,
}

/// One run of a scheduled experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Unix time in milliseconds of its tick.
    pub at_ms: u64,
    /// `ran` (its faults applied), `skipped` (the last run was still active) or `failed`.
    pub outcome: String,
    /// The faults it applied, or why it did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Faults {
    pub faults: Vec<FaultView>,
}

/// Whether a fault acts yet; on the wire `"scheduled"` or `"active"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultState {
    /// Waiting for its start.
    Scheduled,
    Active,
}

impl FaultState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Active => "active",
        }
    }
}

impl std::fmt::Display for FaultState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault as applied (`spec.name` always set) with its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultView {
    pub name: String,
    pub spec: FaultSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    pub state: FaultState,
    /// Unix time, seconds. Deprecated: kept for clients of the first `/v1`; read
    /// `applied_at_ms`, in milliseconds like every other time of the API.
    pub applied_at: u64,
    /// Unix time in milliseconds at which it was applied (0 from daemons before it existed).
    #[serde(default)]
    pub applied_at_ms: u64,
    pub applied_by: Actor,
    /// Unix time in milliseconds at which it starts (started).
    pub starts_at: u64,
    /// Unix time in milliseconds at which it ends; absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The same deadline as the kernel holds it: CLOCK_MONOTONIC nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ns: Option<u64>,
    /// Packets this fault was chosen for.
    pub matched: u64,
    /// Of those, packets it dropped.
    pub dropped: u64,
    /// Copies it sent (duplicate).
    #[serde(default)]
    pub duplicated: u64,
    /// Packets it flipped a payload bit in (corrupt).
    #[serde(default)]
    pub corrupted: u64,
    /// Segments it answered with a RST (reset).
    #[serde(default)]
    pub reset: u64,
    /// Queries it answered itself (dns).
    #[serde(default)]
    pub answered: u64,
}

impl FaultView {
    /// Its counters, as the kernel's map holds them.
    pub fn counters(&self) -> chaos_common::Counters {
        chaos_common::Counters {
            matched: self.matched,
            dropped: self.dropped,
            duplicated: self.duplicated,
            corrupted: self.corrupted,
            reset: self.reset,
            answered: self.answered,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub kernel: String,
    /// Kernel features found by probing.
    pub features: BTreeMap<String, bool>,
    /// `edt` or `netem`, or `none (why)`: how delay and bandwidth faults hold packets.
    pub delay_backend: String,
    /// How the SSH guard learns the sessions a fault could cut: by the `sock:inet_sock_set_state`
    /// tracepoint (no dump of the kernel's TCP table while a fault touches none), or by dump.
    #[serde(default)]
    pub guard_sessions: String,
    pub attachments: Vec<Attachment>,
    /// The targets a fault can name here (interface, netns and pid, cgroup), and how.
    #[serde(default)]
    pub scoping: BTreeMap<String, String>,
    pub faults: usize,
    pub max_faults: usize,
    pub max_duration_ms: u64,
    pub allow_unlimited: bool,
    /// What this kernel can do, as the daemon found by trying (never by version), within its
    /// `kernel_profile` (absent from daemons before it existed).
    #[serde(default)]
    pub abilities: Abilities,
}

/// What the kernel can do for faults, each found by trying it: what a client (or a test) reads
/// instead of the version string, which vendor kernels make meaningless.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abilities {
    /// `native`, or the older kernel the daemon holds itself to (its `kernel_profile`: `5.10`,
    /// `4.19`).
    pub profile: String,
    /// TCX links on interfaces (6.6+); without them, cls_bpf filters under clsact.
    pub tcx: Ability,
    /// Cgroup faults on ingress (a cgroup_skb program attached by a bpf link, 5.7+).
    pub cgroup_ingress: Ability,
    /// connect-fail (cgroup/connect programs attached by bpf links, 5.7+).
    pub connect_fail: Ability,
    /// connect-fail with any errno (bpf_set_retval, 5.18+); without it, EPERM only.
    pub connect_fail_any_errno: Ability,
    /// What a connect-fail given no errno fails with here: `ECONNREFUSED` where any errno
    /// can be, else `EPERM`.
    pub connect_fail_default_errno: String,
    /// The edt delay backend (fq, and TC programs that set departure times, 5.0+).
    pub edt: Ability,
    /// reorder on the edt backend (fq serving a flow by departure time: its horizon, 5.7+).
    pub edt_reorder: Ability,
    /// The netem delay backend (the netem and htb qdiscs).
    pub netem: Ability,
    /// Writing many map entries in one call (BPF_MAP_UPDATE_BATCH, 5.6+); without it, one
    /// call per entry.
    pub batch_update: Ability,
    /// dns faults (the DNS programs, which every supported kernel should take).
    #[serde(default)]
    pub dns: Ability,
}

/// One ability: there, or not and why (the missing kernel piece, named).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ability {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

impl From<&Result<(), String>> for Ability {
    fn from(r: &Result<(), String>) -> Self {
        Self { available: r.is_ok(), why_not: r.clone().err() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct History {
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// How one hook of one interface (or one cgroup) is attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The interface's name; for a cgroup hook, the cgroup's directory.
    pub interface: String,
    /// 0 for a cgroup hook.
    pub ifindex: u32,
    pub hook: AttachHook,
    pub mode: AttachMode,
    /// Attached but used by no fault: detached after `detach_after` (see the config).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
}

/// Where a program is attached; on the wire in kebab case (`ifb-egress`, `cgroup-ingress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachHook {
    Ingress,
    Egress,
    /// An IFB device's egress, shaping an interface's ingress.
    IfbEgress,
    /// A cgroup's ingress (`cgroup_skb`).
    CgroupIngress,
    /// `connect()` in a cgroup (`cgroup/connect4`, `connect6`).
    Connect4,
    Connect6,
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// A TCX bpf link (kernel 6.6+), pinned.
    Tcx,
    /// A cls_bpf filter under the clsact qdisc.
    Netlink,
    /// A cgroup's bpf link, pinned.
    Link,
}

macro_rules! wire_names {
    ($($t:ty { $($v:ident => $s:literal,)* })*) => {$(
        impl $t {
            /// As the wire names it.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s,)* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

wire_names! {
    AttachHook {
        Ingress => "ingress",
        Egress => "egress",
        IfbEgress => "ifb-egress",
        CgroupIngress => "cgroup-ingress",
        Connect4 => "connect4",
        Connect6 => "connect6",
    }
    AttachMode { Tcx => "tcx", Netlink => "netlink", Link => "link", }
}

/// Who asked, from the control socket's SO_PEERCRED; all `None` for the daemon itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

/// The most bytes a recorded process name takes, escaped (the kernel's names have 15).
pub const MAX_COMM: usize = 64;

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.uid, self.pid, &self.comm) {
            (None, _, _) => write!(f, "chaos-daemon"),
            (Some(uid), pid, comm) => {
                write!(f, "uid {uid}")?;
                if let Some(pid) = pid {
                    write!(f, " pid {pid}")?;
                }
                if let Some(comm) = comm {
                    // Escaped when read (`Peer::of`); again here for files an older daemon wrote.
                    write!(f, " ({})", crate::text::escape(comm, MAX_COMM))?;
                }
                Ok(())
            }
        }
    }
}

/// One line of the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time, milliseconds.
    pub at: u64,
    pub actor: Actor,
    pub action: AuditAction,
    /// Faults (or the experiment) concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// The experiment of the faults concerned, when they all belong to one (absent from lines
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// `ok`, `refused: <why>` or `error: <why>`.
    pub result: String,
    /// Faults that ended, with their final counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<Ended>,
}

/// What an audit event records; on the wire the lowercase word (`"remove-experiment"`), or the
/// method and path of a refused request as recorded (`"DELETE /v1/faults"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum AuditAction {
    Apply,
    Remove,
    RemoveExperiment,
    Clear,
    /// A scheduled fault started.
    Start,
    /// Faults reached their deadline.
    Expire,
    /// Faults whose target went (an interface, a cgroup).
    End,
    /// A start took over the faults the previous daemon left.
    Adopt,
    /// `chaos-daemon cleanup` removed everything.
    Cleanup,
    /// A count of refusals not recorded one by one (over the rate limit).
    Refusals,
    /// A scheduled experiment's tick applied its faults.
    Run,
    /// A scheduled experiment's tick found its last run still active.
    Skip,
    /// A pod came to match a running experiment's selector: its faults were applied.
    Join,
    /// A request refused before it was routed: its method and path, escaped and bounded. Read
    /// back by its space, which no word above has.
    Request(String),
    /// A word this version does not know (a history written by another one): kept as read, so
    /// the line stays readable.
    Other(String),
}

impl AuditAction {
    /// Every word variant: what [`From<String>`] reads back (`as_str` gives their words).
    const WORDS: [Self; 13] = [
        Self::Apply,
        Self::Remove,
        Self::RemoveExperiment,
        Self::Clear,
        Self::Start,
        Self::Expire,
        Self::End,
        Self::Adopt,
        Self::Cleanup,
        Self::Refusals,
        Self::Run,
        Self::Skip,
        Self::Join,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Self::Apply => "apply",
            Self::Remove => "remove",
            Self::RemoveExperiment => "remove-experiment",
            Self::Clear => "clear",
            Self::Start => "start",
            Self::Expire => "expire",
            Self::End => "end",
            Self::Adopt => "adopt",
            Self::Cleanup => "cleanup",
            Self::Refusals => "refusals",
            Self::Run => "run",
            Self::Skip => "skip",
            Self::Join => "join",
            Self::Request(text) | Self::Other(text) => text,
        }
    }
}

impl From<String> for AuditAction {
    fn from(text: String) -> Self {
        match Self::WORDS.into_iter().find(|word| word.as_str() == text) {
            Some(word) => word,
            None if text.contains(' ') => Self::Request(text),
            None => Self::Other(text),
        }
    }
}

impl From<AuditAction> for String {
    fn from(action: AuditAction) -> Self {
        match action {
            AuditAction::Request(text) | AuditAction::Other(text) => text,
            word => word.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub name: String,
    pub reason: String,
    pub matched: u64,
    pub dropped: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicated: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrupted: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub answered: u64,
}

impl Ended {
    pub fn new(name: &str, reason: &str, c: &chaos_common::Counters) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
            matched: c.matched,
            dropped: c.dropped,
            duplicated: c.duplicated,
            corrupted: c.corrupted,
            reset: c.reset,
            answered: c.answered,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    /// A refused request: kept within its own, smaller budget.
    pub fn is_refusal(&self) -> bool {
        self.result.starts_with("refused")
    }
}

/// Now, as a Unix time in milliseconds (the API's times are).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::{AttachHook, AttachMode, AuditAction, FaultState};

    #[test]
    fn fault_state_on_the_wire() {
        for (state, text) in [(FaultState::Scheduled, "\"scheduled\""), (FaultState::Active, "\"active\"")] {
            assert_eq!(serde_json::to_string(&state).unwrap(), text);
            assert_eq!(serde_json::from_str::<FaultState>(text).unwrap(), state);
            assert_eq!(format!("\"{state}\""), text);
        }
        assert!(serde_json::from_str::<FaultState>("\"Active\"").is_err());
    }

    #[test]
    fn audit_actions_on_the_wire() {
        let words = "apply remove remove-experiment clear start expire end adopt cleanup refusals run skip join";
        for (word, action) in words.split(' ').zip(AuditAction::WORDS) {
            let text = format!("\"{word}\"");
            assert_eq!(serde_json::to_string(&action).unwrap(), text);
            assert_eq!(serde_json::from_str::<AuditAction>(&text).unwrap(), action);
        }
        assert_eq!(words.split(' ').count(), AuditAction::WORDS.len());
        // A refused request's method and path, and words of other versions, read back as written.
        for (text, action) in [
            ("DELETE /v1/faults", AuditAction::Request("DELETE /v1/faults".into())),
            ("pause", AuditAction::Other("pause".into())),
            ("Apply", AuditAction::Other("Apply".into())),
        ] {
            let json = serde_json::to_string(text).unwrap();
            assert_eq!(serde_json::from_str::<AuditAction>(&json).unwrap(), action);
            assert_eq!(serde_json::to_string(&action).unwrap(), json);
            assert_eq!(action.to_string(), text);
        }
    }

    #[test]
    fn attachments_on_the_wire() {
        use AttachHook::*;
        let hooks = [Ingress, Egress, IfbEgress, CgroupIngress, Connect4, Connect6];
        let words = "ingress egress ifb-egress cgroup-ingress connect4 connect6";
        for (hook, word) in hooks.into_iter().zip(words.split(' ')) {
            let text = format!("\"{word}\"");
            assert_eq!(serde_json::to_string(&hook).unwrap(), text);
            assert_eq!(serde_json::from_str::<AttachHook>(&text).unwrap(), hook);
            assert_eq!(hook.to_string(), word);
        }
        for (mode, word) in [(AttachMode::Tcx, "tcx"), (AttachMode::Netlink, "netlink"), (AttachMode::Link, "link")] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{word}\""));
            assert_eq!(mode.to_string(), word);
        }
    }
}
