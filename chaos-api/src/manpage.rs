//! Man pages generated from the binaries' clap definitions, so that they say what `--help`
//! says: one page per command and one per subcommand, named as git's are (`chaosctl-apply.1`,
//! which `chaosctl.1` lists). Each binary adds what `--help` has no room for (examples, exit
//! status, environment) as [`Section`]s.

use std::path::{Path, PathBuf};

/// A section added to a page: a title (`EXAMPLES`) and its entries, each a term (a command
/// line, an exit code, a variable) set in bold and what it means.
#[derive(Clone, Debug)]
pub struct Section {
    pub title: &'static str,
    pub entries: Vec<(String, String)>,
}

impl Section {
    pub fn new(title: &'static str, entries: &[(&str, &str)]) -> Self {
        Self { title, entries: entries.iter().map(|(t, d)| (t.to_string(), d.to_string())).collect() }
    }

    fn roff(&self) -> String {
        let mut out = match self.title.contains(' ') {
            true => format!(".SH \"{}\"\n", self.title),
            false => format!(".SH {}\n", self.title),
        };
        for (term, what) in &self.entries {
            out += &format!(".TP\n\\fB{}\\fR\n{}\n", text(term), text(what));
        }
        out
    }
}

/// Text as roff shows it as is: backslashes, hyphens (minus signs in commands) and a leading
/// dot or quote (a request otherwise) escaped.
fn text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    match s.starts_with(['.', '\'']) {
        true => format!("\\&{s}"),
        false => s,
    }
}

/// Writes the pages of `cmd` and of its visible subcommands, in manual `section`, into `dir`,
/// each with the sections `extra` gives for its name (`chaosctl-apply`), after its options;
/// returns their paths.
pub fn write(
    cmd: clap::Command,
    section: &str,
    dir: &Path,
    extra: &dyn Fn(&str) -> Vec<Section>,
) -> std::io::Result<Vec<PathBuf>> {
    fn each(
        cmd: clap::Command,
        section: &str,
        dir: &Path,
        extra: &dyn Fn(&str) -> Vec<Section>,
        written: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            each(sub.clone(), section, dir, extra, written)?;
        }
        let man = clap_mangen::Man::new(cmd).section(section);
        let name = man.get_filename();
        let page = render(&man, &extra(name.trim_end_matches(&format!(".{section}"))))?;
        let path = dir.join(name);
        std::fs::write(&path, page)?;
        written.push(path);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    // Built once from the top, so that subcommands carry their full names (`chaosctl-apply`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    each(cmd, section, dir, extra, &mut written)?;
    Ok(written)
}

/// The page clap_mangen renders, with `extra` before its VERSION section (at the end if none).
fn render(man: &clap_mangen::Man, extra: &[Section]) -> std::io::Result<String> {
    let mut page = Vec::new();
    man.render(&mut page)?;
    let page = String::from_utf8_lossy(&page).into_owned();
    let extra: String = extra.iter().map(Section::roff).collect();
    Ok(match page.find("\n.SH VERSION") {
        Some(at) => format!("{}\n{extra}{}", &page[..at], &page[at + 1..]),
        None => page + &extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_come_before_the_version_and_are_escaped() {
        let cmd = clap::Command::new("tool").version("1.0").about("Does things");
        let dir = std::env::temp_dir().join(format!("chaos-manpage-{}", std::process::id()));
        let extra = |name: &str| {
            assert_eq!(name, "tool");
            vec![Section::new("EXIT STATUS", &[("0", "done"), (".x", "a \\ and --flag")])]
        };
        let pages = write(cmd, "1", &dir, &extra).unwrap();
        let page = std::fs::read_to_string(&pages[0]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let (exit, version) = (page.find(".SH \"EXIT STATUS\"").unwrap(), page.find(".SH VERSION").unwrap());
        assert!(exit < version, "{page}");
        assert!(page.contains(".TP\n\\fB\\&.x\\fR\na \\e and \\-\\-flag\n"), "{page}");
    }
}
