//! Where the guest's `ip`, `tc` and `sleep`, their libraries and iproute2's data come from: this
//! host's own, for a guest of its architecture; for another, a sysroot of that architecture's
//! packages of the kernel's release (iproute2, coreutils and the libraries they depend on),
//! extracted once into the cache.

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::Context as _;

use super::{aptroot::AptRoot, kernels::Arch};

/// dnsmasq (the binary alone, without the dnsmasq package's service) is the DNS lab's server.
const PACKAGES: &[&str] = &["iproute2", "coreutils", "dnsmasq-base"];

pub struct Tools {
    /// The guest's `/` as far as these tools are concerned.
    pub root: PathBuf,
    pub triplet: &'static str,
}

pub fn ensure(apt: &AptRoot, arch: Arch) -> anyhow::Result<Tools> {
    if arch == Arch::host() {
        super::apt::ensure_program("dnsmasq", "dnsmasq-base")?;
        return Ok(Tools { root: "/".into(), triplet: arch.triplet() });
    }
    let packages = closure(apt)?;
    let list: String = packages.iter().map(|(p, v)| format!("{p}={v}\n")).collect();
    let root = apt.dir.join("sysroot");
    let stamp = root.join(".packages");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(list.as_str()) {
        eprintln!("xtask: extracting {} packages into {}", packages.len(), root.display());
        let _ = std::fs::remove_dir_all(&root);
        super::kernel::extract(apt, &packages, &root)?;
        std::fs::write(&stamp, list)?;
    }
    Ok(Tools { root, triplet: arch.triplet() })
}

impl Tools {
    /// `name` in the sbin and bin directories of the root.
    pub fn program(&self, name: &str) -> anyhow::Result<PathBuf> {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .find_map(|d| super::elf::resolve(&self.root, &format!("{d}/{name}")))
            .with_context(|| {
                format!("`{name}` is not in {}: install iproute2, coreutils or dnsmasq-base", self.root.display())
            })
    }

    /// iproute2's tables, and tc's netem distributions (in the multiarch directory on Debian).
    pub fn data_dirs(&self) -> Vec<String> {
        let t = self.triplet;
        ["/etc/iproute2".into(), "/usr/share/iproute2".into(), format!("/usr/lib/{t}/tc"), "/usr/lib/tc".into()].into()
    }

    /// `guest` (a directory the guest sees) in the root, when it is there.
    pub fn dir(&self, guest: &str) -> Option<PathBuf> {
        Some(self.root.join(guest.trim_start_matches('/'))).filter(|p| p.is_dir() && !p.is_symlink())
    }
}

/// [`PACKAGES`] and the libraries they need, with versions: their Depends and Pre-Depends,
/// followed through packages of section `libs` only (a library's own dependencies, not
/// debconf's or perl's).
fn closure(apt: &AptRoot) -> anyhow::Result<Vec<(String, String)>> {
    let mut seen: BTreeSet<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    let mut level: Vec<String> = seen.iter().cloned().collect();
    let mut packages = Vec::new();
    while !level.is_empty() {
        let mut next = Vec::new();
        for p in apt.show(&level)? {
            let name = p.get("Package").context("apt-cache printed a package without a name")?;
            let section = p.get("Section").map(String::as_str).unwrap_or_default();
            if !PACKAGES.contains(&name.as_str()) && !section.ends_with("libs") {
                continue;
            }
            packages.push((name.clone(), p.get("Version").context("a package without a version")?.clone()));
            let deps = [p.get("Depends"), p.get("Pre-Depends")];
            for dep in deps.into_iter().flatten().flat_map(|d| d.split(',')) {
                // The first alternative, without its version or architecture qualifier.
                let first = dep.split('|').next().unwrap_or_default().split_whitespace().next().unwrap_or_default();
                let first = first.split(':').next().unwrap_or_default();
                if !first.is_empty() && seen.insert(first.to_owned()) {
                    next.push(first.to_owned());
                }
            }
        }
        level = next;
    }
    packages.sort();
    for want in PACKAGES {
        anyhow::ensure!(packages.iter().any(|(p, _)| p == want), "{} has no package {want}", apt.dir.display());
    }
    Ok(packages)
}
