//! The kernels `cargo xtask vm-test --kernel` boots: a Debian release's current cloud kernel
//! each, for one architecture, with the suites run there by default.

use anyhow::bail;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Debian's name for it.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Its multiarch directory (`/usr/lib/<triplet>`).
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// The qemu system emulator and the Debian package that brings it.
    pub fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Aarch64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }

    /// The machine and CPU: pauth-impdef keeps pointer authentication cheap under TCG.
    pub fn machine(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[],
            Arch::Aarch64 => &["-M", "virt", "-cpu", "max,pauth-impdef=on"],
        }
    }

    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The architecture xtask itself runs on: its guests use the host's build and tools.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") { Arch::Aarch64 } else { Arch::X86_64 }
    }
}

/// The suites a kernel runs when none are named.
pub enum Defaults {
    Every,
    /// [`BY_KERNEL`] and these.
    ByKernelAnd(&'static [&'static str]),
    Only(&'static [&'static str]),
}

pub struct Kernel {
    /// What `--kernel` takes, and the name of its results file.
    pub name: &'static str,
    /// The Debian release (and its `-security` suite) the kernel comes from.
    pub release: &'static str,
    pub arch: Arch,
    /// The meta package whose Depends names the current kernel package.
    pub meta: &'static str,
    /// The `kernel_profile` every daemon of the run is held to (`CHAOS_TEST_PROFILE` for the
    /// tests): how a newer kernel stands for one that cannot be booted here.
    pub profile: Option<&'static str>,
    pub suites: Defaults,
}

/// The suites whose outcome depends on the kernel: the attachment (cls_bpf before 6.6, TCX
/// after), cgroup programs (no `bpf_set_retval` before 5.18), both delay backends, resets, how
/// the stack treats GSO, and whether the verifier takes the DNS programs (`dns`, which every
/// kernel runs). (like-the-wire and corrupt, 2 and 1.5 minutes, run on 6.1 only, for CI's
/// time: `-- like-the-wire corrupt` runs them anywhere; both passed on 5.10 and 6.12.)
pub const BY_KERNEL: &[&str] = &[
    "loss",
    "partition",
    "gso",
    "cgroup",
    "reset",
    "restart",
    "shutdown",
    "delay-edt",
    "delay-netem",
    "rate-edt",
    "rate-netem",
    "dns",
];

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        release: "bullseye",
        arch: Arch::X86_64,
        meta: "linux-image-cloud-amd64",
        profile: None,
        suites: Defaults::ByKernelAnd(&[]),
    },
    // Kylin V10's 4.19 cannot be booted here (its Debian release left the archive): the 5.10
    // guest with the daemon held to what 4.19 offers (docs/kernels.md), every fault 4.19 can
    // run run there, the others refused with their reason (profile-419).
    Kernel {
        name: "4.19-profile",
        release: "bullseye",
        arch: Arch::X86_64,
        meta: "linux-image-cloud-amd64",
        profile: Some("4.19"),
        suites: Defaults::Only(&[
            "profile-419",
            "loss",
            "partition",
            "cgroup",
            "reset",
            "restart",
            // Delay itself on netem is 5.10's delay-netem: the profile changes only the
            // attachment and batches, which these two show as well.
            "rate-netem",
            "reorder-netem",
            "dns",
        ]),
    },
    Kernel {
        name: "6.1",
        release: "bookworm",
        arch: Arch::X86_64,
        meta: "linux-image-cloud-amd64",
        profile: None,
        suites: Defaults::Every,
    },
    Kernel {
        name: "6.12",
        release: "trixie",
        arch: Arch::X86_64,
        meta: "linux-image-cloud-amd64",
        profile: None,
        // The first kernel here whose edt backend sits under TCX: reorder and the qdiscs put
        // back with TCX attachments too.
        // profile-419 (a batch of 501 faults written natively and as 4.19 does, compared;
        // every daemon of it names its profile) runs on 5.10 in the 4.19-profile run, and here
        // where a 4.19 daemon must also turn down the TCX the kernel has.
        suites: Defaults::ByKernelAnd(&["reorder-edt", "qdisc-edt", "profile-419"]),
    },
    // Kept short (aarch64 under TCG): about 4 minutes of suites when measured, 8 at most.
    Kernel {
        name: "arm64-6.1",
        release: "bookworm",
        arch: Arch::Aarch64,
        meta: "linux-image-cloud-arm64",
        profile: None,
        suites: Defaults::Only(&["loss", "partition", "cgroup", "reset", "restart", "delay-edt", "dns"]),
    },
];

pub const DEFAULT: &str = "6.1";

/// The kernels `--kernel <name>` names (`all`: every one).
pub fn select(name: &str) -> anyhow::Result<Vec<&'static Kernel>> {
    if name == "all" {
        return Ok(KERNELS.iter().collect());
    }
    match KERNELS.iter().find(|k| k.name == name) {
        Some(k) => Ok(vec![k]),
        None => {
            let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            bail!("no VM kernel '{name}' (there are: {}, and all)", known.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every default suite names a suite that exists.
    #[test]
    fn defaults_name_suites() {
        for k in KERNELS {
            if let Defaults::Only(names) | Defaults::ByKernelAnd(names) = k.suites {
                for n in names.iter().chain(BY_KERNEL) {
                    assert!(crate::vm::SUITES.iter().any(|s| s.name == *n), "{}: no suite {n}", k.name);
                }
            }
        }
    }

    /// Every kernel loads the DNS programs by default: each verifier judges them its own way.
    #[test]
    fn every_kernel_runs_dns() {
        for k in KERNELS {
            let names: Vec<&str> = crate::vm::select(k, &[]).unwrap().iter().map(|s| s.name).collect();
            assert!(names.contains(&"dns"), "{}: {names:?}", k.name);
        }
    }
}
