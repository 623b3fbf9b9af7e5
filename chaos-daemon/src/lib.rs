//! chaos-daemon: node-local network fault injection on eBPF.
//!
//! One concern per module: [`spec`] (what users write, validated), [`compile`] (rules into map
//! entries), [`kernel`] (programs, maps, attachments, pins), [`engine`] (the set of faults and
//! their lifecycle), [`state`] (state file and audit trail), [`guard`] (flows faults must not
//! cut), [`api`] and [`server`] (the HTTP control socket, who may use it), [`client`]
//! (chaosctl's side of it), [`chaos_mesh`] (Chaos Mesh NetworkChaos files read as faults),
//! [`metrics`] (Prometheus), [`config`], [`fsutil`] (the daemon's files, never through a link),
//! [`systemd`] (readiness, socket activation), [`pods`] (the node's pods, through the CRI), [`manpage`], [`text`] (what a peer sent, made safe
//! to print), [`routes`] (which operation a request names), [`listen`] (connection limits).
//!
//! [`api`], [`spec`], [`chaos_mesh`], [`client`], [`text`] and [`manpage`] live in the chaos-api
//! crate, which chaosctl builds from without the eBPF toolchain; they are re-exported here under
//! the same names.

pub use chaos_api::{api, chaos_mesh, client, manpage, schedule, select, spec, text};

pub mod access;
pub mod compile;
pub mod config;
pub mod crashpoint;
pub mod engine;
pub mod fsutil;
pub mod guard;
pub mod kernel;
pub mod listen;
pub mod metrics;
pub mod netlink;
pub mod pods;
pub mod routes;
pub mod server;
pub mod shaping;
pub mod state;
pub mod systemd;
pub mod target;

/// The eBPF object built from chaos-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos"));
