//! Kernel modules for the guest, with their dependencies, in load order. Debian's package has
//! no modules.dep (depmod writes it at install time, and kmod may not even be installed here),
//! so dependencies are read where depmod's come from too: each module's `.modinfo` section,
//! whose `depends=` names the modules it needs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use object::{Object as _, ObjectSection as _};

/// Paths relative to `dir` (`lib/modules/<release>`) of `wanted` and everything they need,
/// each after its dependencies. Modules built into the kernel are left out.
pub fn resolve(dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut index = BTreeMap::new();
    index_dir(dir, dir, &mut index)?;
    let builtin: BTreeSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Some(name_of(Path::new(l).file_name()?.to_str()?)))
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(&name_of(name), dir, &index, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    dir: &Path,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    if builtin.contains(name) || !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let Some(rel) = index.get(name) else { bail!("kernel module {name} is neither in {} nor built in", dir.display()) };
    for dep in depends(&dir.join(rel))? {
        visit(&dep, dir, index, builtin, seen, order)?;
    }
    order.push(rel.clone());
    Ok(())
}

/// Module names are compared with `-` and `_` as one, as the kernel does.
fn name_of(file: &str) -> String {
    file.trim_end_matches(".ko").replace('-', "_")
}

fn index_dir(root: &Path, dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_dir(root, &path, index)?;
        } else if let Some(file) = path.file_name().and_then(|n| n.to_str()).filter(|n| n.ends_with(".ko")) {
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
