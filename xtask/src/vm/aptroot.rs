//! A private apt root per Debian release and architecture, under the cache directory: its own
//! sources list, package lists and cache, so that other releases' and architectures' packages
//! are looked up and downloaded without touching this host's apt configuration. The archive and
//! security mirrors are the ones this host's own sources use.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

/// Package lists older than this are fetched again (a kernel update replaces the old .deb).
const FRESH: Duration = Duration::from_secs(24 * 3600);

pub struct AptRoot {
    pub dir: PathBuf,
    arch: &'static str,
}

/// One package's `apt-cache show` fields.
pub type Paragraph = BTreeMap<String, String>;

impl AptRoot {
    /// The root of `release` for `arch` (Debian's name), its package lists updated when missing,
    /// stale, or made from other sources.
    pub fn open(release: &str, arch: &'static str) -> anyhow::Result<Self> {
        let dir = super::kernel::cache_dir().join(format!("{release}-{arch}"));
        let root = Self { dir, arch };
        for d in ["state/lists/partial", "cache/archives/partial"] {
            let d = root.dir.join(d);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let sources = sources_list(release)?;
        let list = root.dir.join("sources.list");
        let changed = std::fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        std::fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        // No installed packages: candidates are the archive's newest.
        std::fs::write(root.dir.join("status"), "")?;
        let stamp = root.dir.join("updated");
        let age = std::fs::metadata(&stamp).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if changed || age.is_none_or(|a| a > FRESH) {
            root.update()?;
        }
        Ok(root)
    }

    /// apt-get or apt-cache with this root's configuration.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = &self.dir;
        for (key, value) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", "/nonexistent".into()),
            ("Dir::State", d.join("state")),
            ("Dir::State::status", d.join("status")),
            ("Dir::Cache", d.join("cache")),
            ("APT::Architecture", self.arch.into()),
            ("APT::Architectures::", self.arch.into()),
            ("Acquire::Languages", "none".into()),
            // Downloads go into root's own directories: apt's _apt user could not write there.
            ("APT::Sandbox::User", "root".into()),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        cmd
    }

    pub fn update(&self) -> anyhow::Result<()> {
        eprintln!("xtask: apt-get update in {}", self.dir.display());
        // Stale until this update succeeds (the sources may have just changed).
        let _ = std::fs::remove_file(self.dir.join("updated"));
        run(self.command("apt-get").args(["update", "-qq"]))?;
        std::fs::write(self.dir.join("updated"), "")?;
        Ok(())
    }

    /// The candidate version's fields of each of `packages` the archive has (others are left
    /// out: virtual packages, names of other releases).
    pub fn show(&self, packages: &[String]) -> anyhow::Result<Vec<Paragraph>> {
        let mut cmd = self.command("apt-cache");
        let out = cmd.args(["show", "--no-all-versions"]).args(packages).output().context("running apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut paragraphs = Vec::new();
        for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let mut p = Paragraph::new();
            // Continuation lines (a description's) start with a space and are not needed.
            for line in block.lines().filter(|l| !l.starts_with(' ')) {
                if let Some((k, v)) = line.split_once(':') {
                    p.insert(k.to_owned(), v.trim().to_owned());
                }
            }
            paragraphs.push(p);
        }
        Ok(paragraphs)
    }

    /// `field` of `package`'s candidate version.
    pub fn field(&self, package: &str, field: &str) -> anyhow::Result<String> {
        let shown = self.show(&[package.to_owned()])?;
        let p = shown.first().with_context(|| format!("{} has no package {package}", self.dir.display()))?;
        p.get(field).cloned().with_context(|| format!("{package} has no {field} field"))
    }

    /// Downloads each `(package, version)` into `dir` (an empty directory) and returns the
    /// .debs. A version gone from the archive since the last update is fetched after another.
    pub fn download(&self, packages: &[(String, String)], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let specs: Vec<String> = packages.iter().map(|(p, v)| format!("{p}={v}")).collect();
        let get = || run(self.command("apt-get").args(["download", "-qq"]).args(&specs).current_dir(dir));
        get().or_else(|_| {
            self.update()?;
            get()
        })?;
        let debs: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        if debs.len() != packages.len() {
            bail!("apt-get download of {} left {} .debs in {}", specs.join(" "), debs.len(), dir.display());
        }
        Ok(debs)
    }
}

/// The sources of `release` and `release-security` (main), on the mirrors and with the keys
/// this host's own release and its security suite use.
fn sources_list(release: &str) -> anyhow::Result<String> {
    let os = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let host = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: not a Debian host?")?;
    let entries = host_entries()?;
    let find = |suite: &str| {
        entries.iter().find(|e| e.suites.iter().any(|s| s == suite)).with_context(|| {
            format!("this host's apt sources (/etc/apt/sources.list{{,.d}}) have no entry for suite {suite}")
        })
    };
    let mut list = String::new();
    for (entry, suite) in
        [(find(&host)?, release.to_owned()), (find(&format!("{host}-security"))?, format!("{release}-security"))]
    {
        let key = entry.signed_by.as_ref().map(|k| format!(" [signed-by={k}]")).unwrap_or_default();
        list.push_str(&format!("deb{key} {} {suite} main\n", entry.uri));
    }
    Ok(list)
}

/// One `deb` source of this host: its first URI, its suites and its key file.
struct Entry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

fn host_entries() -> anyhow::Result<Vec<Entry>> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut entries = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(deb822(&text)),
            Some("list") => entries.extend(one_line(&text)),
            _ => {}
        }
    }
    Ok(entries)
}

/// `.sources` files: paragraphs of `Field: value`.
fn deb822(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for block in text.split("\n\n") {
        let fields: BTreeMap<String, String> = block
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(' '))
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
            .collect();
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
        let enabled = get("enabled") != "no";
        if enabled
            && get("types").split_whitespace().any(|t| t == "deb")
            && let Some(uri) = get("uris").split_whitespace().next()
        {
            entries.push(Entry {
                uri: uri.to_owned(),
                suites: get("suites").split_whitespace().map(str::to_owned).collect(),
                // A key file (an inline key would need the host's own list to hold it).
                signed_by: Some(get("signed-by")).filter(|k| k.starts_with('/')).map(str::to_owned),
            });
        }
    }
    entries
}

/// `sources.list` lines: `deb [options] uri suite components...`.
fn one_line(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let (options, rest) = match rest.trim_start().strip_prefix('[') {
            Some(r) => r.split_once(']').unwrap_or((r, "")),
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            let signed_by = options.split_whitespace().find_map(|o| o.strip_prefix("signed-by=")).map(str::to_owned);
            entries.push(Entry { uri: uri.to_owned(), suites: vec![suite.to_owned()], signed_by });
        }
    }
    entries
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_source_formats() {
        let e = deb822(
            "Types: deb\n# a comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb-src\nURIs: http://src.example\nSuites: bookworm\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].uri.as_str(), e[0].suites.len(), e[0].signed_by.as_deref()),
            ("http://m.example/debian", 2, Some("/usr/share/keyrings/k.gpg"))
        );
        let e = one_line(
            "# deb http://off.example bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://s.example/ bookworm-security main\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].uri.as_str(), e[0].suites[0].as_str(), e[0].signed_by.as_deref()),
            ("http://s.example/", "bookworm-security", Some("/k.gpg"))
        );
    }
}
