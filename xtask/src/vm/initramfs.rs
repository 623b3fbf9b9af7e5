//! The guest's whole root file system, as an uncompressed cpio archive (the kernel unpacks it
//! faster than it would gunzip it under TCG): a minimal layout, the binaries given, every shared
//! library they need (found in the root their architecture's libraries are in), and whatever
//! files and trees are added.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::cpio::{Archive, Entry};

pub struct Initramfs {
    archive: Archive,
    /// Where stripped binaries and generated files are written before being archived.
    stage: PathBuf,
    /// Host paths of the binaries, whose libraries go in too.
    elves: Vec<PathBuf>,
    /// Where those libraries are: the guest's `/` as far as they are concerned.
    libs: super::tools::Tools,
}

impl Initramfs {
    pub fn new(stage: &Path, libs: super::tools::Tools) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(stage);
        std::fs::create_dir_all(stage).with_context(|| format!("creating {}", stage.display()))?;
        let mut fs = Self { archive: Archive::default(), stage: stage.to_owned(), elves: Vec::new(), libs };
        // Mount points (/sys/fs/bpf and /sys/fs/cgroup come with sysfs) and writable places.
        for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/root", "/var/lib", "/var/tmp"] {
            fs.archive.add(dir, Entry::Dir);
        }
        fs.archive.add("/var/run", Entry::Symlink("../run".into()));
        // The kernel opens /dev/console for init's stdio before anything is mounted.
        fs.archive.add("/dev/console", Entry::CharDev { major: 5, minor: 1 });
        fs.archive.add("/dev/null", Entry::CharDev { major: 1, minor: 3 });
        fs.text("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")?;
        fs.text("/etc/group", "root:x:0:\n")?;
        fs.text("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")?;
        Ok(fs)
    }

    /// An executable; with `strip`, without its debug info (a debug build's binaries are
    /// mostly that: 90 MB become about 10).
    pub fn binary(&mut self, host: &Path, guest: &str, strip: bool) -> anyhow::Result<()> {
        if self.archive.contains(guest) {
            // Two suites of one test target.
            return Ok(());
        }
        let source = if strip {
            let stripped = self.stage.join(guest.trim_start_matches('/').replace('/', "_"));
            let status = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(host)
                .arg(&stripped)
                .status()
                .context("running objcopy (binutils)")?;
            if !status.success() {
                bail!("objcopy --strip-debug {} failed", host.display());
            }
            stripped
        } else {
            host.to_owned()
        };
        self.archive.add(guest, Entry::File { source, mode: 0o755 });
        self.elves.push(host.to_owned());
        Ok(())
    }

    pub fn file(&mut self, host: &Path, guest: &str) {
        self.archive.add(guest, Entry::File { source: host.to_owned(), mode: 0o644 });
    }

    /// Every file under `host` (if it exists) at the same place under `guest`; symbolic links
    /// are left out (in a sysroot they could point anywhere on this host).
    pub fn tree(&mut self, host: &Path, guest: &str) -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(host) else { return Ok(()) };
        for entry in entries {
            let entry = entry?;
            let (path, kind) = (entry.path(), entry.file_type()?);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if kind.is_dir() {
                self.tree(&path, &format!("{guest}/{name}"))?;
            } else if kind.is_file() {
                self.file(&path, &format!("{guest}/{name}"));
            }
        }
        Ok(())
    }

    pub fn text(&mut self, guest: &str, contents: &str) -> anyhow::Result<()> {
        let staged = self.stage.join(guest.trim_start_matches('/').replace('/', "_"));
        std::fs::write(&staged, contents).with_context(|| format!("writing {}", staged.display()))?;
        self.file(&staged, guest);
        Ok(())
    }

    /// Adds the shared libraries and writes the archive to `out`; returns its size.
    pub fn write(mut self, out: &Path) -> anyhow::Result<u64> {
        let mut libs = BTreeMap::new();
        for elf in &self.elves {
            libs.extend(super::elf::libraries(&self.libs.root, self.libs.triplet, elf)?);
        }
        for (guest, lib) in libs {
            if !self.archive.contains(&guest) {
                self.archive.add(&guest, Entry::File { source: lib, mode: 0o755 });
            }
        }
        let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        self.archive.write(&mut w)?;
        w.flush()?;
        Ok(std::fs::metadata(out)?.len())
    }
}
