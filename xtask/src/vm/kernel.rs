//! The guest kernel: a Debian release's current cloud kernel, its package and version read from
//! that release's apt metadata (what the meta package depends on), downloaded once and kept
//! extracted in `$XDG_CACHE_HOME/chaos-daemon/vm/<release>-<arch>/<package>_<version>`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::aptroot::AptRoot;

pub struct Image {
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the extracted package.
    pub modules: PathBuf,
}

pub fn ensure(apt: &AptRoot, meta: &str) -> anyhow::Result<Image> {
    // "linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)": the package, then its own version.
    let depends = apt.field(meta, "Depends")?;
    let package = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{meta} depends on no linux-image package: {depends}"))?
        .to_owned();
    let version = apt.field(&package, "Version")?;
    let dir = apt.dir.join(format!("{package}_{version}"));
    if !dir.exists() {
        eprintln!("xtask: downloading {package} {version} into {}", apt.dir.display());
        fetch(apt, &package, &version, &dir)?;
    }
    let boot = dir.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    let release = vmlinuz.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_owned();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| dir.join(m).join(&release))
        .find(|p| p.is_dir())
        .with_context(|| format!("no modules for {release} in {}", dir.display()))?;
    Ok(Image { package, version, vmlinuz, modules })
}

pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("chaos-daemon/vm")
}

/// Downloads and extracts `packages` into `dir`, through a temporary directory beside it renamed
/// at the end, so an interrupted run never leaves a half-extracted tree that looks complete.
/// What killed runs left is removed then.
pub fn extract(apt: &AptRoot, packages: &[(String, String)], dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().context("no parent directory")?;
    let tmp = parent.join(format!(".partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        let download = tmp.join("deb");
        std::fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
        let root = tmp.join("root");
        for deb in apt.download(packages, &download)? {
            let status = std::process::Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&root)
                .status()
                .context("running dpkg-deb")?;
            if !status.success() {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
        }
        match std::fs::rename(&root, dir) {
            // Another run extracted the same packages meanwhile.
            Err(_) if dir.is_dir() => Ok(()),
            r => r.with_context(|| format!("moving the packages into {}", dir.display())),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    for entry in std::fs::read_dir(parent)?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A partial directory of a run that was killed (its pid is gone).
        if name.strip_prefix(".partial-").is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    result
}

/// Fetches the kernel; other versions of it in the cache go.
fn fetch(apt: &AptRoot, package: &str, version: &str, dir: &Path) -> anyhow::Result<()> {
    extract(apt, &[(package.to_owned(), version.to_owned())], dir)?;
    for entry in std::fs::read_dir(&apt.dir)?.filter_map(Result::ok) {
        if entry.path() != dir && entry.file_name().to_string_lossy().starts_with("linux-image-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}
