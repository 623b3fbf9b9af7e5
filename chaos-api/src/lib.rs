//! chaos-api: what chaosctl needs of chaos-daemon, and nothing of the kernel, so that it builds
//! with a stable toolchain alone (no nightly, rust-src or bpf-linker). chaos-daemon re-exports
//! every module under the same name.
//!
//! [`api`] (the control socket's wire types), [`spec`] (what users write, validated),
//! [`chaos_mesh`] (Chaos Mesh NetworkChaos files read as faults), [`client`] (chaosctl's side of
//! the socket), [`text`] (what a peer sent, made safe to print), [`select`] (pods by namespace, labels and
//! mode), [`schedule`] (when an experiment runs again), [`manpage`] (man pages from clap
//! definitions, for both binaries).

pub mod api;
pub mod chaos_mesh;
pub mod client;
pub mod manpage;
pub mod schedule;
pub mod select;
pub mod spec;
pub mod text;
