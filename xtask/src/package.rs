//! `cargo xtask package`: a .deb (Debian, UOS) and an .rpm (Kylin) in target/package, with the
//! release binaries, the systemd units, the default configuration, man pages and shell
//! completions generated from the binaries' clap definitions, and the docs. The .deb is built
//! by dpkg-deb, the .rpm by the `rpm` crate (no rpmbuild). `--check` then verifies both: see
//! [`check`].

mod check;
mod deb;
mod rpm;

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub const NAME: &str = "chaos-daemon";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The packaging's own revision of a version (Debian's `-1`, RPM's Release).
const RELEASE: &str = "1";
const LICENSE: &str = "MIT OR Apache-2.0";
/// Who answers for the packages: set it to the team that ships them.
const MAINTAINER: &str = "chaos-daemon maintainers <chaos-daemon@localhost>";
const SUMMARY: &str = "network fault injection in the kernel (eBPF), driven by a CLI";
const DESCRIPTION: &str = "\
chaos-daemon drops, delays, duplicates, corrupts and resets packets by rule with TC eBPF
programs, scoped by interface, direction, protocol, address and port, cgroup, container or
pod; every fault ends on time by itself, in the kernel. chaosctl applies, lists and removes
faults through the daemon's local socket. The systemd service is installed disabled:
`systemctl enable --now chaos-daemon`.";

/// Removal, in both formats' scripts: the units stopped when systemd runs (which removes every
/// fault), then whatever a killed daemon left attached or pinned.
const STOP_AND_CLEAN: &str = r#"
if [ -d /run/systemd/system ]; then
    systemctl stop chaos-daemon.socket chaos-daemon.service >/dev/null 2>&1 || true
fi
if [ -f /etc/chaos-daemon/config.toml ]; then
    set -- --config /etc/chaos-daemon/config.toml
else
    set --
fi
/usr/bin/chaos-daemon "$@" cleanup ||
    echo "chaos-daemon: cleanup failed (is a chaos-daemon still running?): run 'chaos-daemon cleanup' once it is stopped" >&2
"#;

/// The two package formats; they differ in a few paths and in their maintainer scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Deb,
    Rpm,
}

/// A file of a package: where it is installed, its mode, its contents.
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// The architectures packages are built for, by their names in each format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn deb(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    pub fn rpm(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }
}

/// What the binaries are built for and need at run time, read from their ELF headers.
pub struct Linked {
    pub arch: Arch,
    /// Shared libraries (DT_NEEDED).
    pub needed: BTreeSet<String>,
    /// Symbol versions needed, with their library (`libc.so.6`, `GLIBC_2.34`).
    pub versions: BTreeSet<(String, String)>,
}

impl Linked {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        use object::{
            Object as _,
            read::elf::{Dyn as _, ElfFile64},
        };
        let mut arch = None;
        let (mut needed, mut versions) = (BTreeSet::new(), BTreeSet::new());
        for bin in ["chaos-daemon", "chaosctl"] {
            let path = dir.join(bin);
            let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let elf = ElfFile64::<object::Endianness>::parse(&*data)
                .with_context(|| format!("{} is not a 64-bit ELF executable", path.display()))?;
            let this = match elf.architecture() {
                object::Architecture::X86_64 => Arch::X86_64,
                object::Architecture::Aarch64 => Arch::Aarch64,
                other => bail!("{} is built for {other:?}, which is not packaged", path.display()),
            };
            if arch.replace(this).is_some_and(|a| a != this) {
                bail!("chaos-daemon and chaosctl are built for different architectures");
            }
            let (endian, sections) = (elf.endian(), elf.elf_section_table());
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            if let Some((dynamic, link)) = sections.dynamic(endian, &*data)? {
                let strings = sections.strings(endian, &*data, link)?;
                for d in dynamic.iter().filter(|d| d.tag32(endian) == Some(object::elf::DT_NEEDED)) {
                    needed.insert(text(d.string(endian, strings)?));
                }
            }
            if let Some((mut verneeds, link)) = sections.gnu_verneed(endian, &*data)? {
                let strings = sections.strings(endian, &*data, link)?;
                while let Some((need, mut auxs)) = verneeds.next()? {
                    let file = text(need.file(endian, strings)?);
                    while let Some(aux) = auxs.next()? {
                        versions.insert((file.clone(), text(aux.name(endian, strings)?)));
                    }
                }
            }
        }
        Ok(Self { arch: arch.expect("two binaries read"), needed, versions })
    }

    /// The newest glibc version needed (`2.34`), if any.
    pub fn glibc(&self) -> Option<String> {
        let number = |v: &str| -> Option<Vec<u32>> { v.split('.').map(|n| n.parse().ok()).collect() };
        self.versions
            .iter()
            .filter_map(|(_, v)| v.strip_prefix("GLIBC_"))
            .filter_map(|v| Some((number(v)?, v.to_owned())))
            .max()
            .map(|(_, v)| v)
    }
}

pub fn run(target: Option<&str>, check: bool) -> anyhow::Result<()> {
    if check {
        crate::preflight("cargo xtask package --check")?;
    }
    // The host's binaries write the man pages and completions: the same for every target.
    let host = build_host()?;
    // Static by default: one package runs on every distribution of its architecture, whatever
    // its glibc (Kylin V10 and UOS 20 have 2.28).
    let bins = crate::cross::run(target.unwrap_or(crate::cross::host_static()))?;
    let linked = Linked::read(&bins)?;
    let native = Linked::read(&host)?.arch == linked.arch;
    let out = crate::workspace().join("target/package");
    std::fs::create_dir_all(&out)?;
    let out = out.canonicalize()?;
    let generated = out.join("generated");
    generate(&host, &generated)?;
    let deb_files = contents(Format::Deb, &bins, &generated)?;
    let rpm_files = contents(Format::Rpm, &bins, &generated)?;
    let deb = deb::build(&deb_files, &linked, &out)?;
    let rpm = rpm::build(&rpm_files, &linked, &out)?;
    println!("{}\n{}", deb.display(), rpm.display());
    if check {
        check::rpm(&rpm, &rpm_files, &linked)?;
        if native {
            check::deb(&deb, &deb_files)?;
        } else {
            println!("the .deb is for {}, not this machine: installing it is not checked", linked.arch.deb());
        }
        println!("package check passed");
    }
    Ok(())
}

/// Builds the release binaries for this machine; their directory.
fn build_host() -> anyhow::Result<PathBuf> {
    let status = Command::new(crate::cargo())
        .args(["build", "--release", "--quiet"])
        .args(crate::SHIPPED)
        .arg("--bins")
        .current_dir(crate::workspace())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(crate::workspace().join("target/release"))
}

/// The man pages (`man1/chaosctl*.1`, `man8/chaos-daemon*.8`) in `dir`, written by the binaries
/// in `bins` from their clap definitions; their paths.
pub fn man_pages(bins: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for (bin, section) in [("chaos-daemon", "man8"), ("chaosctl", "man1")] {
        let out = dir.join(section);
        let run = Command::new(bins.join(bin)).arg("manpage").arg(&out).output();
        let run = run.with_context(|| format!("running {bin}"))?;
        if !run.status.success() {
            bail!("{bin} manpage: {}", String::from_utf8_lossy(&run.stderr).trim());
        }
        let mut written: Vec<PathBuf> =
            std::fs::read_dir(&out)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        written.sort();
        pages.extend(written);
    }
    Ok(pages)
}

/// Man pages (`man1`, `man8`) and completion scripts (`completions/`) in `dir`, written by the
/// binaries from their clap definitions.
fn generate(bins: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir.join("completions"))?;
    let run = |bin: &str, args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = Command::new(bins.join(bin)).args(args).output().with_context(|| format!("running {bin}"))?;
        if !out.status.success() {
            bail!("{bin} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(out.stdout)
    };
    man_pages(bins, dir)?;
    for (shell, name) in [("bash", "chaosctl"), ("zsh", "_chaosctl"), ("fish", "chaosctl.fish")] {
        std::fs::write(dir.join("completions").join(name), run("chaosctl", &["completions", shell])?)?;
    }
    Ok(())
}

/// Every file of the package in `format`, sorted by path.
fn contents(format: Format, bins: &Path, generated: &Path) -> anyhow::Result<Vec<Entry>> {
    let workspace = crate::workspace();
    let read = |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let (units, zsh) = match format {
        Format::Deb => ("/lib/systemd/system", "/usr/share/zsh/vendor-completions"),
        Format::Rpm => ("/usr/lib/systemd/system", "/usr/share/zsh/site-functions"),
    };
    let doc = format!("/usr/share/doc/{NAME}");
    let mut files = Vec::new();
    let mut add = |path: String, mode: u32, data: Vec<u8>| files.push(Entry { path, mode, data });
    for bin in ["chaos-daemon", "chaosctl"] {
        add(format!("/usr/bin/{bin}"), 0o755, read(&bins.join(bin))?);
    }
    for unit in ["chaos-daemon.service", "chaos-daemon.socket"] {
        add(format!("{units}/{unit}"), 0o644, read(&workspace.join("deploy/systemd").join(unit))?);
    }
    add(format!("/etc/{NAME}/config.toml"), 0o644, read(&workspace.join("deploy/config.toml"))?);
    for section in ["man1", "man8"] {
        for page in sorted_dir(&generated.join(section))? {
            let name = page.file_name().unwrap().to_string_lossy();
            add(format!("/usr/share/man/{section}/{name}.gz"), 0o644, gzip(&read(&page)?)?);
        }
    }
    let completions = generated.join("completions");
    add("/usr/share/bash-completion/completions/chaosctl".into(), 0o644, read(&completions.join("chaosctl"))?);
    add(format!("{zsh}/_chaosctl"), 0o644, read(&completions.join("_chaosctl"))?);
    add("/usr/share/fish/vendor_completions.d/chaosctl.fish".into(), 0o644, read(&completions.join("chaosctl.fish"))?);
    add(format!("{doc}/README.md"), 0o644, read(&workspace.join("README.md"))?);
    for dir in ["docs", "examples"] {
        for page in sorted_dir(&workspace.join(dir))? {
            let name = page.file_name().unwrap().to_string_lossy();
            add(format!("{doc}/{dir}/{name}"), 0o644, read(&page)?);
        }
    }
    if format == Format::Deb {
        add(format!("{doc}/copyright"), 0o644, deb::copyright().into_bytes());
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn sorted_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    Ok(paths)
}

/// gzip -9n: no name or time in the header, so the same page gives the same bytes.
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

/// Fails unless `script` is valid `sh` (checked with `sh -n` before it goes into a package).
fn check_script(name: &str, script: &str) -> anyhow::Result<()> {
    let out = Command::new("sh").args(["-n", "-c", script]).output().context("running sh -n")?;
    if !out.status.success() {
        bail!("the {name} script is not valid sh: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
