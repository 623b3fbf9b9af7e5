//! The shared libraries an executable needs, found as the guest's dynamic loader would find
//! them, in a root directory standing for the guest's `/` (this host's, or the sysroot made of
//! another architecture's packages): its `PT_INTERP`, its `DT_NEEDED` entries, theirs in turn.

use std::{
    collections::{BTreeMap, VecDeque, btree_map::Entry},
    path::{Component, Path, PathBuf},
};

use anyhow::Context as _;
use object::{
    elf::{DT_NEEDED, PT_INTERP},
    read::elf::{Dyn as _, ElfFile64, ProgramHeader as _},
};

/// Guest paths and the files in `root` they are: `elf`'s loader (at the path written in it)
/// and every library it needs (where the loader's search finds it in `root`). Nothing for a
/// static executable.
pub fn libraries(root: &Path, triplet: &str, elf: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let dirs = [format!("/lib/{triplet}"), format!("/usr/lib/{triplet}"), "/lib".into(), "/usr/lib".into()];
    let mut found = BTreeMap::new();
    let mut todo = VecDeque::from([elf.to_owned()]);
    while let Some(file) = todo.pop_front() {
        let (interp, needed) = read(&file)?;
        let mut wanted: Vec<String> = interp.into_iter().collect();
        for name in needed {
            let guest =
                dirs.iter().map(|d| format!("{d}/{name}")).find(|g| resolve(root, g).is_some()).with_context(|| {
                    format!("{}: {name} is in none of {} under {}", file.display(), dirs.join(", "), root.display())
                })?;
            wanted.push(guest);
        }
        for guest in wanted {
            if let Entry::Vacant(slot) = found.entry(guest) {
                let host = resolve(root, slot.key())
                    .with_context(|| format!("{}: no {} under {}", file.display(), slot.key(), root.display()))?;
                todo.push_back(host.clone());
                slot.insert(host);
            }
        }
    }
    Ok(found)
}

/// The loader and the needed library names of `elf`.
fn read(elf: &Path) -> anyhow::Result<(Option<String>, Vec<String>)> {
    let data = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let file = ElfFile64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is no 64-bit ELF file", elf.display()))?;
    let endian = file.endian();
    let mut interp = None;
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) == PT_INTERP
            && let Some(path) = ph.interpreter(endian, &*data)?
        {
            interp = Some(String::from_utf8_lossy(path).into_owned());
        }
    }
    let mut needed = Vec::new();
    let sections = file.elf_section_table();
    if let Some((dynamic, link)) = sections.dynamic(endian, &*data)? {
        let strings = sections.strings(endian, &*data, link)?;
        for d in dynamic.iter().filter(|d| d.tag32(endian) == Some(DT_NEEDED)) {
            needed.push(String::from_utf8_lossy(d.string(endian, strings)?).into_owned());
        }
    }
    Ok((interp, needed))
}

/// The regular file `path` (absolute, as the guest sees it) is in `root`, its symbolic links
/// followed as though `root` were `/`: an absolute target starts again at `root`, and `..`
/// stops there, so nothing outside `root` is ever reached.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: VecDeque<PathBuf> = Path::new(path).components().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut done = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        match part.components().next()? {
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(&done).join(&part);
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            if target.is_absolute() {
                done = PathBuf::new();
            }
            for c in target.components().rev() {
                todo.push_front(PathBuf::from(c.as_os_str()));
            }
        } else {
            done.push(part);
        }
    }
    let file = root.join(done);
    file.is_file().then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_inside_the_root() {
        let root = std::env::temp_dir().join(format!("xtask-elf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib/t")).unwrap();
        std::fs::write(root.join("usr/lib/t/libx.so.1.2"), "x").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("usr/lib/t/libx.so.1")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/t/libx.so.1", root.join("usr/lib/abs")).unwrap();
        // The host's own /etc/passwd is not the root's.
        std::os::unix::fs::symlink("../../../../../../etc/passwd", root.join("usr/lib/out")).unwrap();
        let x = Some(root.join("usr/lib/t/libx.so.1.2"));
        assert_eq!(resolve(&root, "/lib/t/libx.so.1"), x);
        assert_eq!(resolve(&root, "/usr/lib/abs"), x);
        assert_eq!(resolve(&root, "/usr/lib/out"), None);
        assert_eq!(resolve(&root, "/usr/lib/t"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The same libraries `ldd` finds for this host's `ip`, found from its ELF headers alone.
    #[test]
    fn finds_what_ldd_finds() {
        let Some(ip) = resolve(Path::new("/"), "/usr/sbin/ip").or_else(|| resolve(Path::new("/"), "/sbin/ip")) else {
            return eprintln!("skipped: no ip here");
        };
        let ours = libraries(Path::new("/"), super::super::kernels::Arch::host().triplet(), &ip).unwrap();
        let out = std::process::Command::new("ldd").arg(&ip).output().unwrap();
        let ldd = String::from_utf8_lossy(&out.stdout);
        let names = |s: &str| Path::new(s).file_name().unwrap().to_string_lossy().into_owned();
        let mut theirs: Vec<String> = ldd.split_whitespace().filter(|w| w.starts_with('/')).map(names).collect();
        let mut mine: Vec<String> = ours.keys().map(|k| names(k)).collect();
        theirs.sort();
        theirs.dedup();
        // libc names the loader too, found in the library directory: a second copy, harmless.
        mine.sort();
        mine.dedup();
        assert_eq!(mine, theirs);
    }
}
