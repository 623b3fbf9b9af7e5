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
//! | DELETE | `/v1/faults` | | [`Faults`] removed |
//!
//! Errors are `{"error": "..."}` with 400 (bad input, naming the field), 404 (no such fault or
//! path), 409 (duplicate name), 500 (the kernel refused).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{kernel::Attachment, spec::FaultSpec};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Apply {
    pub faults: Vec<FaultSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Faults {
    pub faults: Vec<FaultView>,
}

/// A fault as applied (`spec.name` always set) with its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultView {
    pub name: String,
    pub spec: FaultSpec,
    /// Unix time, seconds.
    pub applied_at: u64,
    /// Packets this fault was chosen for.
    pub matched: u64,
    /// Of those, packets it dropped.
    pub dropped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub kernel: String,
    /// Kernel features found by probing.
    pub features: BTreeMap<String, bool>,
    pub attachments: Vec<Attachment>,
    pub faults: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
