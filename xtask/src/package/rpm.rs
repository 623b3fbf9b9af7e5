//! The .rpm, written by the `rpm` crate (RPM v4 headers, gzip payload: what Kylin V10's rpm 4.15
//! reads). Requires are the shared libraries and symbol versions the binaries need, named as
//! rpmbuild's dependency generator names them. The scriptlets mirror systemd's RPM macros: the
//! preset policy decides enablement (Kylin's disables), removal stops and cleans up, an upgrade
//! restarts a running daemon.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{DESCRIPTION, Entry, LICENSE, Linked, MAINTAINER, NAME, RELEASE, STOP_AND_CLEAN, SUMMARY, VERSION};

const UNITS: &str = "chaos-daemon.service chaos-daemon.socket";

fn post() -> String {
    format!(
        r#"if [ $1 -eq 1 ] && [ -x /usr/bin/systemctl ]; then
    systemctl --no-reload preset {UNITS} >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
"#
    )
}

fn preun() -> String {
    format!(
        r#"if [ $1 -eq 0 ]; then
    if [ -x /usr/bin/systemctl ]; then
        systemctl --no-reload disable {UNITS} >/dev/null 2>&1 || :
    fi
{STOP_AND_CLEAN}fi
"#
    )
}

fn postun() -> String {
    r#"if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # An upgrade: a running daemon is restarted on the new binary (its faults end, as on every stop).
    if [ $1 -ge 1 ]; then
        systemctl try-restart chaos-daemon.service >/dev/null 2>&1 || :
    fi
fi
if [ $1 -eq 0 ]; then
    # The state file and the audit trail (preun's cleanup already removed pins and programs).
    rm -rf /var/lib/chaos-daemon
fi
"#
    .into()
}

/// Builds target/package/chaos-daemon-VERSION-RELEASE.ARCH.rpm.
pub fn build(entries: &[Entry], linked: &Linked, out: &Path) -> anyhow::Result<PathBuf> {
    let arch = linked.arch.rpm();
    let mut b = rpm::PackageBuilder::new(NAME, VERSION, LICENSE, arch, SUMMARY);
    b.using_config(rpm::BuildConfig::v4().compression(rpm::CompressionType::Gzip))
        .release(RELEASE)
        .description(DESCRIPTION)
        .packager(MAINTAINER)
        .group("System Environment/Daemons");
    // The directories that are the package's own (not /usr/bin's kind, shared with others).
    let mut own: Vec<&str> = entries
        .iter()
        .flat_map(|e| Path::new(&e.path).ancestors().skip(1).filter_map(Path::to_str))
        .filter(|d| d.contains(NAME))
        .collect();
    own.sort_unstable();
    own.dedup();
    for dir in own {
        b.with_dir_entry(rpm::FileOptions::dir(dir).permissions(0o755))?;
    }
    for e in entries {
        let mut options = rpm::FileOptions::new(&e.path).permissions(e.mode as u16);
        if e.path.starts_with("/etc/") {
            options = options.config().noreplace();
        } else if e.path.starts_with("/usr/share/doc/") {
            options = options.doc();
        }
        b.with_file_contents(e.data.clone(), options)?;
    }
    for lib in &linked.needed {
        b.requires(rpm::Dependency::any(format!("{lib}()(64bit)")));
    }
    for (lib, version) in &linked.versions {
        b.requires(rpm::Dependency::any(format!("{lib}({version})(64bit)")));
    }
    for (name, script) in [("%post", post()), ("%preun", preun()), ("%postun", postun())] {
        super::check_script(name, &script)?;
    }
    b.post_install_script(post()).pre_uninstall_script(preun()).post_uninstall_script(postun());
    let path = out.join(format!("{NAME}-{VERSION}-{RELEASE}.{arch}.rpm"));
    b.build()?.write_to(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
