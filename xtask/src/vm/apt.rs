//! Debian's package tools, as CI's fresh machine has them: look-ups, installs and downloads,
//! with one `apt-get update` when the package lists are missing or stale.

use std::{path::Path, process::Command, sync::Once};

use anyhow::{Context as _, bail};

/// Runs `apt-get update` once per run.
pub fn update() -> anyhow::Result<()> {
    static DONE: Once = Once::new();
    let mut result = Ok(());
    DONE.call_once(|| {
        eprintln!("xtask: apt-get update");
        result = run(Command::new("apt-get").args(["update", "-qq"]));
    });
    result
}

/// Field `field` of the candidate version of `package` (`apt-cache show`), updating the
/// package lists first if the package is unknown.
pub fn field(package: &str, field: &str) -> anyhow::Result<String> {
    let lookup = || -> anyhow::Result<String> {
        let out = output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
        let prefix = format!("{field}: ");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
            .with_context(|| format!("apt-cache show {package} has no {field} field"))
    };
    lookup().or_else(|_| {
        update()?;
        lookup()
    })
}

/// Installs `package` unless `program` runs.
pub fn ensure_program(program: &str, package: &str) -> anyhow::Result<()> {
    if Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("xtask: installing {package} (for {program})");
    install(package)
}

pub fn install(package: &str) -> anyhow::Result<()> {
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install()
        .or_else(|_| {
            update()?;
            install()
        })
        .with_context(|| format!("installing {package} (this needs root and Debian's package mirrors)"))
}

/// Downloads `package`=`version` into `dir` and returns the .deb's path. As root, apt warns
/// that it cannot sandbox the download (user _apt): harmless, and kept out of the output.
pub fn download(package: &str, version: &str, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let get =
        || run(Command::new("apt-get").args(["download", "-qq", &format!("{package}={version}")]).current_dir(dir));
    get().or_else(|_| {
        update()?;
        get()
    })?;
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb in {}", dir.display()))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(drop)
}
