//! chaos-daemon: node-local network fault injection on eBPF.
//!
//! One concern per module: [`spec`] (what users write, validated), [`compile`] (rules into map
//! entries), [`kernel`] (programs, maps, attachments), [`engine`] (the set of faults), [`guard`]
//! (flows faults must not touch), [`api`] (the HTTP control socket), [`client`] (chaosctl's side
//! of it), [`config`].

pub mod api;
pub mod client;
pub mod compile;
pub mod config;
pub mod engine;
pub mod guard;
pub mod kernel;
mod netlink;
pub mod server;
pub mod spec;

/// The eBPF object built from chaos-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos"));
