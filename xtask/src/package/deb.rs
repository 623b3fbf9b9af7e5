//! The .deb: a staged tree with DEBIAN/ (control, conffiles, md5sums, maintainer scripts),
//! packed by `dpkg-deb --root-owner-group`. The scripts do what debhelper's would for a service
//! installed disabled: units registered with deb-systemd-helper (so that purge removes any
//! enablement), stopped and cleaned up on removal, restarted on upgrade when running.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{DESCRIPTION, Entry, LICENSE, Linked, MAINTAINER, NAME, RELEASE, STOP_AND_CLEAN, SUMMARY, VERSION};

const UNITS: &str = "chaos-daemon.service chaos-daemon.socket";

fn postinst() -> String {
    format!(
        r#"#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
    if [ -x /usr/bin/deb-systemd-helper ]; then
        for unit in {UNITS}; do
            # Not enabled on a first install; a unit the admin had enabled is enabled again.
            if deb-systemd-helper debian-installed "$unit"; then
                deb-systemd-helper unmask "$unit" >/dev/null || true
                if deb-systemd-helper --quiet was-enabled "$unit"; then
                    deb-systemd-helper enable "$unit" >/dev/null || true
                fi
            fi
            deb-systemd-helper update-state "$unit" >/dev/null || true
        done
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # An upgrade: a running daemon is restarted on the new binary (its faults end, as on
        # every stop).
        if [ -n "$2" ]; then
            systemctl try-restart chaos-daemon.service >/dev/null || true
        fi
    fi
fi
"#
    )
}

fn prerm() -> String {
    format!("#!/bin/sh\nset -e\nif [ \"$1\" = remove ]; then\n{STOP_AND_CLEAN}fi\n")
}

fn postrm() -> String {
    format!(
        r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -x /usr/bin/deb-systemd-helper ]; then
    deb-systemd-helper mask {UNITS} >/dev/null || true
fi
if [ "$1" = purge ]; then
    if [ -x /usr/bin/deb-systemd-helper ]; then
        deb-systemd-helper purge {UNITS} >/dev/null || true
        deb-systemd-helper unmask {UNITS} >/dev/null || true
    fi
    # The state file and the audit trail (prerm's cleanup already removed pins and programs).
    rm -rf /var/lib/chaos-daemon
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
"#
    )
}

/// /usr/share/doc/chaos-daemon/copyright, machine-readable.
pub fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: {NAME}\n\n\
         Files: *\nCopyright: the {NAME} authors\nLicense: {}\n On Debian systems, the Apache License 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n",
        LICENSE.replace(" OR ", " or ")
    )
}

/// glibc's libraries, besides the dynamic loader (`ld-linux-*`).
const GLIBC: [&str; 5] = ["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1"];

/// Debian packages of the shared libraries the binaries need.
fn depends(linked: &Linked) -> anyhow::Result<String> {
    let mut depends = Vec::new();
    for lib in &linked.needed {
        let dep = match lib.as_str() {
            glibc if glibc.starts_with("ld-linux") || GLIBC.contains(&glibc) => match linked.glibc() {
                Some(v) => format!("libc6 (>= {v})"),
                None => "libc6".into(),
            },
            "libgcc_s.so.1" => "libgcc-s1".into(),
            other => bail!("no Debian package is known for {other}, which the binaries need: add it to depends()"),
        };
        if !depends.contains(&dep) {
            depends.push(dep);
        }
    }
    Ok(depends.join(", "))
}

/// Builds target/package/chaos-daemon_VERSION-RELEASE_ARCH.deb.
pub fn build(entries: &[Entry], linked: &Linked, out: &Path) -> anyhow::Result<PathBuf> {
    let root = out.join("deb");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for e in entries {
        write(&root.join(e.path.trim_start_matches('/')), &e.data, e.mode)?;
    }
    let size_kib: usize = entries.iter().map(|e| e.data.len().div_ceil(1024)).sum();
    let description: String = DESCRIPTION.lines().map(|l| format!(" {l}\n")).collect();
    let control = format!(
        "Package: {NAME}\nVersion: {VERSION}-{RELEASE}\nArchitecture: {}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {size_kib}\n{}Section: net\nPriority: optional\nDescription: {SUMMARY}\n{description}",
        linked.arch.deb(),
        // Static binaries need no library.
        match depends(linked)? {
            d if d.is_empty() => String::new(),
            d => format!("Depends: {d}\n"),
        },
    );
    let debian = root.join("DEBIAN");
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    let conffiles: String =
        entries.iter().filter(|e| e.path.starts_with("/etc/")).map(|e| format!("{}\n", e.path)).collect();
    write(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    write(&debian.join("md5sums"), md5sums(&root, entries)?.as_bytes(), 0o644)?;
    for (name, script) in [("postinst", postinst()), ("prerm", prerm()), ("postrm", postrm())] {
        super::check_script(name, &script)?;
        write(&debian.join(name), script.as_bytes(), 0o755)?;
    }
    open_dirs(&root)?;
    let deb = out.join(format!("{NAME}_{VERSION}-{RELEASE}_{}.deb", linked.arch.deb()));
    let built = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .context("running dpkg-deb (from the dpkg package)")?;
    if !built.status.success() {
        bail!("dpkg-deb --build failed: {}", String::from_utf8_lossy(&built.stderr).trim());
    }
    Ok(deb)
}

/// DEBIAN/md5sums, as `md5sum` writes it for the staged files (paths relative to the root).
fn md5sums(root: &Path, entries: &[Entry]) -> anyhow::Result<String> {
    let paths: Vec<&str> = entries.iter().map(|e| e.path.trim_start_matches('/')).collect();
    let out = Command::new("md5sum").args(&paths).current_dir(root).output().context("running md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Writes a staged file with `mode` (dpkg-deb takes modes as they are on disk).
fn write(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().expect("a staged path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Every directory under `dir`, and `dir`, 0755 whatever the umask made them.
fn open_dirs(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            open_dirs(&entry.path())?;
        }
    }
    Ok(())
}
