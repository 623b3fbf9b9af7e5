//! Builds chaos-ebpf for the bpf target with the nightly toolchain and bpf-linker
//! (`cargo xtask` installs both when missing). `AYA_BUILD_SKIP=1` skips it, for tools that only
//! need the host code to type-check.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../chaos-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={}/../chaos-common/src", env!("CARGO_MANIFEST_DIR"));
    aya_build::build_ebpf([Package { name: "chaos-ebpf", root_dir: root, ..Default::default() }], Toolchain::default())
}
