//! Daemon configuration: TOML, every field optional, so the daemon runs with no file at all.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::kernel::AttachMode;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Control socket path. Default `/run/chaos-daemon.sock`.
    pub socket: PathBuf,
    /// Group that owns the socket, so its members may use chaosctl (mode is 0660).
    /// Default: none (root only).
    pub socket_group: Option<String>,
    /// Most faults active at once. Default 10000 (the kernel maps hold 16384 rule slots).
    pub max_faults: usize,
    /// How TC programs are attached: `auto` (TCX links where the kernel has them, else cls_bpf
    /// under clsact), `tcx` or `netlink`. Default `auto`.
    pub tc_attach: AttachMode,
    /// Log filter, in `RUST_LOG` syntax; `RUST_LOG` overrides it. Default `info`.
    pub log: String,
}

pub const DEFAULT_SOCKET: &str = "/run/chaos-daemon.sock";

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            socket_group: None,
            max_faults: 10_000,
            tc_attach: AttachMode::Auto,
            log: "info".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if config.max_faults == 0 || config.max_faults > chaos_common::MAX_RULES as usize {
            anyhow::bail!("{}: max_faults must be 1-{}", path.display(), chaos_common::MAX_RULES);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(toml::from_str::<Config>("").unwrap(), Config::default());
        let c: Config = toml::from_str("max_faults = 5\nsocket = \"/tmp/x.sock\"").unwrap();
        assert_eq!((c.max_faults, c.socket), (5, PathBuf::from("/tmp/x.sock")));
        assert!(toml::from_str::<Config>("sockt = 1").is_err());
    }
}
