//! Man pages generated from the binaries' clap definitions, so that they say what `--help`
//! says: one page per command and one per subcommand, named as git's are (`chaosctl-apply.1`,
//! which `chaosctl.1` lists).

use std::path::{Path, PathBuf};

/// Writes the pages of `cmd` and of its visible subcommands, in manual `section`, into `dir`;
/// returns their paths.
pub fn write(cmd: clap::Command, section: &str, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn each(cmd: clap::Command, section: &str, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            each(sub.clone(), section, dir, written)?;
        }
        written.push(clap_mangen::Man::new(cmd).section(section).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    // Built once from the top, so that subcommands carry their full names (`chaosctl-apply`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    each(cmd, section, dir, &mut written)?;
    Ok(written)
}
