//! The guest kernel: Debian's current 6.1 cloud kernel, the version read from apt's metadata
//! (what `linux-image-cloud-amd64` depends on), downloaded once and kept extracted in
//! `$XDG_CACHE_HOME/chaos-daemon/vm/<package>_<version>`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::apt;

const META_PACKAGE: &str = "linux-image-cloud-amd64";

pub struct Kernel {
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the extracted package.
    pub modules: PathBuf,
}

pub fn ensure() -> anyhow::Result<Kernel> {
    // "linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)": the package, then its own version.
    let depends = apt::field(META_PACKAGE, "Depends")?;
    let package = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{META_PACKAGE} depends on no linux-image package: {depends}"))?
        .to_owned();
    let version = apt::field(&package, "Version")?;
    let cache = cache_dir();
    let dir = cache.join(format!("{package}_{version}"));
    if !dir.exists() {
        eprintln!("xtask: downloading {package} {version} into {}", cache.display());
        fetch(&package, &version, &cache, &dir)?;
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
    Ok(Kernel { package, version, vmlinuz, modules })
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("chaos-daemon/vm")
}

/// Downloads and extracts the package into `dir`, through a temporary directory beside it
/// renamed at the end, so an interrupted run never leaves a half-extracted kernel that looks
/// complete. Other versions in the cache, and what killed runs left, are removed then.
fn fetch(package: &str, version: &str, cache: &Path, dir: &Path) -> anyhow::Result<()> {
    let tmp = cache.join(format!(".partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        let download = tmp.join("deb");
        std::fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
        let deb = apt::download(package, version, &download)?;
        let root = tmp.join("root");
        let status = std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&root)
            .status()
            .context("running dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed", deb.display());
        }
        match std::fs::rename(&root, dir) {
            // Another run fetched the same kernel meanwhile.
            Err(_) if dir.is_dir() => Ok(()),
            r => r.with_context(|| format!("moving the kernel into {}", dir.display())),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    for entry in std::fs::read_dir(cache)?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A partial directory of a run that was killed (its pid is gone).
        let abandoned = name.strip_prefix(".partial-").is_some_and(|pid| !Path::new("/proc").join(pid).exists());
        if entry.path() != dir && (name.starts_with("linux-image-") || abandoned) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}
