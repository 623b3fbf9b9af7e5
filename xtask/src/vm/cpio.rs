//! A cpio archive in the "newc" format, the one the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst): per entry a 110-byte ASCII
//! header, the NUL-terminated name and the data, each padded to 4 bytes; a `TRAILER!!!` entry
//! ends it. Parents must come before their children: the kernel does not create directories.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::PathBuf,
};

use anyhow::Context as _;

pub enum Entry {
    Dir,
    /// A regular file with its contents read from this host path at write time.
    File {
        source: PathBuf,
        mode: u32,
    },
    Symlink(String),
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// Entries by absolute guest path (`/usr/sbin/ip`).
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds `entry` at `path`, and every missing parent directory.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_end_matches('/');
        let mut parent = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()).collect::<Vec<_>>().split_last().unwrap().1 {
            parent.push('/');
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir);
        }
        self.entries.insert(path.to_owned(), entry);
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Writes the archive. A path sorts before any path below it, so the map's order puts
    /// every directory before its contents.
    pub fn write(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let mut offset = 0u64;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let name = path.trim_start_matches('/');
            let (mode, data, rdev): (u32, Data, (u32, u32)) = match entry {
                Entry::Dir => (0o040_755, Data::Bytes(Vec::new()), (0, 0)),
                Entry::File { source, mode } => (0o100_000 | mode, Data::File(source), (0, 0)),
                Entry::Symlink(target) => (0o120_777, Data::Bytes(target.clone().into_bytes()), (0, 0)),
                Entry::CharDev { major, minor } => (0o020_600, Data::Bytes(Vec::new()), (*major, *minor)),
            };
            let (size, mut reader): (u64, Box<dyn io::Read>) = match data {
                Data::Bytes(b) => (b.len() as u64, Box::new(io::Cursor::new(b))),
                Data::File(p) => {
                    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
                    (f.metadata()?.len(), Box::new(f))
                }
            };
            let size32 = u32::try_from(size).with_context(|| format!("{path}: too big for cpio"))?;
            offset += header(out, ino as u32 + 1, mode, size32, rdev, name)?;
            let copied = io::copy(&mut reader, out).with_context(|| format!("writing {path}"))?;
            anyhow::ensure!(copied == size, "{path} changed size while being archived");
            offset += copied;
            offset += pad(out, offset)?;
        }
        offset += header(out, 0, 0, 0, (0, 0), "TRAILER!!!")?;
        pad(out, offset)?;
        Ok(())
    }
}

enum Data<'a> {
    Bytes(Vec<u8>),
    File(&'a PathBuf),
}

/// Writes one header and the padded name; returns the bytes written.
fn header(out: &mut impl Write, ino: u32, mode: u32, size: u32, rdev: (u32, u32), name: &str) -> io::Result<u64> {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    out.write_all(h.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let written = (h.len() + name.len() + 1) as u64;
    Ok(written + pad(out, written)?)
}

/// Pads with NULs to a multiple of 4 bytes, given the bytes written so far.
fn pad(out: &mut impl Write, written: u64) -> io::Result<u64> {
    let n = (4 - written % 4) % 4;
    out.write_all(&[0; 3][..n as usize])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parents_come_first() {
        let mut a = Archive::default();
        a.add("/a/b/link", Entry::Symlink("../x".into()));
        a.add("/dev/console", Entry::CharDev { major: 5, minor: 1 });
        let mut out = Vec::new();
        a.write(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let names: Vec<&str> = ["a\0", "a/b\0", "a/b/link\0", "dev\0", "dev/console\0", "TRAILER!!!\0"].into();
        let mut at = 0;
        for n in names {
            let i = text[at..].find(n).unwrap_or_else(|| panic!("{n} missing or out of order")) + at;
            // The name follows its 110-byte header, which starts 4-aligned with the magic.
            assert_eq!(&text[i - 110..i - 104], "070701");
            assert_eq!((i - 110) % 4, 0);
            at = i;
        }
        // The symlink's target is its data, right after its padded name.
        assert!(text.contains("a/b/link\0\0../x"));
    }
}
