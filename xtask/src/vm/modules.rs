//! Kernel modules for the guest, with their dependencies, in load order. Debian's package has
//! no modules.dep (depmod writes it at install time, and kmod may not even be installed here),
//! so dependencies are read where depmod's come from too: each module's `.modinfo` section,
//! whose `depends=` names the modules it needs. Compressed modules (`.ko.xz` from 6.12 on,
//! `.ko.zst`) are decompressed into the stage: the guest's init loads plain ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use object::{Object as _, ObjectSection as _};

/// A module file for the guest.
pub struct Module {
    /// A plain `.ko`: the package's, or decompressed into the stage.
    pub host: PathBuf,
    /// Its path relative to `lib/modules/<release>`, ending in `.ko`.
    pub rel: PathBuf,
}

/// `wanted` and every module they need, in `dir` (`lib/modules/<release>`), each after its
/// dependencies. Modules built into the kernel are left out.
pub fn resolve(dir: &Path, wanted: &[&str], stage: &Path) -> anyhow::Result<Vec<Module>> {
    let mut index = BTreeMap::new();
    index_dir(dir, dir, &mut index)?;
    let builtin: BTreeSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Some(name_of(Path::new(l).file_name()?.to_str()?)))
        .collect();
    let stage = stage.join("modules");
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let mut walk = Walk { dir, stage: &stage, index, builtin, seen: BTreeSet::new(), order: Vec::new() };
    for name in wanted {
        walk.visit(&name_of(name))?;
    }
    Ok(walk.order)
}

struct Walk<'a> {
    dir: &'a Path,
    stage: &'a Path,
    index: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    seen: BTreeSet<String>,
    order: Vec<Module>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str) -> anyhow::Result<()> {
        if self.builtin.contains(name) || !self.seen.insert(name.to_owned()) {
            return Ok(());
        }
        let Some(rel) = self.index.get(name).cloned() else {
            bail!("kernel module {name} is neither in {} nor built in", self.dir.display())
        };
        let module = self.plain(&rel)?;
        for dep in depends(&module.host)? {
            self.visit(&dep)?;
        }
        self.order.push(module);
        Ok(())
    }

    /// The module at `rel`, decompressed into the stage if it is compressed.
    fn plain(&self, rel: &Path) -> anyhow::Result<Module> {
        let file = rel.file_name().unwrap().to_string_lossy();
        let Some((base, program)) = COMPRESSED.iter().find_map(|(ext, p)| Some((file.strip_suffix(ext)?, *p))) else {
            return Ok(Module { host: self.dir.join(rel), rel: rel.to_owned() });
        };
        let host = self.stage.join(base);
        let source = self.dir.join(rel);
        let out = std::fs::File::create(&host).with_context(|| format!("creating {}", host.display()))?;
        let status = std::process::Command::new(program)
            .arg("-dc")
            .arg(&source)
            .stdout(out)
            .status()
            .with_context(|| format!("running {program} (for {})", source.display()))?;
        anyhow::ensure!(status.success(), "{program} -dc {} failed", source.display());
        Ok(Module { host, rel: rel.with_file_name(base) })
    }
}

/// Compressed module suffixes and the program that decompresses each.
const COMPRESSED: &[(&str, &str)] = &[(".xz", "xz"), (".zst", "zstd")];

fn is_module(file: &str) -> bool {
    COMPRESSED.iter().find_map(|(ext, _)| file.strip_suffix(ext)).unwrap_or(file).ends_with(".ko")
}

/// Module names are compared with `-` and `_` as one, as the kernel does.
fn name_of(file: &str) -> String {
    let file = COMPRESSED.iter().find_map(|(ext, _)| file.strip_suffix(ext)).unwrap_or(file);
    file.trim_end_matches(".ko").replace('-', "_")
}

fn index_dir(root: &Path, dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_dir(root, &path, index)?;
        } else if let Some(file) = path.file_name().and_then(|n| n.to_str()).filter(|n| is_module(n)) {
            index.insert(name_of(file), path.strip_prefix(root)?.to_owned());
        }
    }
    Ok(())
}

fn depends(ko: &Path) -> anyhow::Result<Vec<String>> {
    let data = std::fs::read(ko).with_context(|| format!("reading {}", ko.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("parsing {}", ko.display()))?;
    let modinfo = file.section_by_name(".modinfo").with_context(|| format!("{} has no .modinfo", ko.display()))?;
    Ok(modinfo
        .data()?
        .split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|deps| String::from_utf8_lossy(deps).split(',').map(name_of).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect())
}
