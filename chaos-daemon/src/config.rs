//! Daemon configuration: TOML, every field optional, so the daemon runs with no file at all.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    engine::{Guard, Settings},
    kernel::{AttachMode, BackendChoice, Feature, KernelProfile},
    spec::parse_duration,
};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Control socket path. Default `/run/chaos-daemon.sock`.
    pub socket: PathBuf,
    /// Group that owns the socket, so its members can connect to it. Default: none (root).
    pub socket_group: Option<String>,
    /// Socket file mode, in octal. Default `0660`: owner and `socket_group` only.
    pub socket_mode: String,
    /// Group whose members may change faults, besides root (checked with SO_PEERCRED and
    /// SO_PEERGROUPS on every request). Default: none (root only).
    pub admin_group: Option<String>,
    /// Who may use the read-only endpoints (status, list, history): `admins` (those who may
    /// change faults) or `any` (anyone who can connect to the socket). Default `admins`.
    pub readers: Readers,
    /// Most faults at once (scheduled ones included). Default 10000 (the kernel maps hold
    /// 16384 rule slots).
    pub max_faults: usize,
    /// Longest fault, and the duration of a fault given none. Default `1h`.
    pub max_duration: String,
    /// Whether a fault may ask for `duration = "unlimited"`. Default false.
    pub allow_unlimited: bool,
    /// Longest `start_after` of a scheduled fault. Default `24h`.
    pub max_start_after: String,
    /// Servers this host talks to that no fault may touch without `--force`, besides SSH
    /// sessions: `ADDRESS[/LEN]` (all ports), `IPV4[/LEN]:PORT` or `[IPV6[/LEN]]:PORT`, each
    /// optionally prefixed by `tcp:` or `udp:` (`icmp:` without a port). The host's side is its
    /// ephemeral port range. Default: none.
    pub protected: Vec<String>,
    /// Local TCP ports whose established sessions (SSH) no fault may touch without `--force`.
    /// Default `[22]`; `[]` turns the check off.
    pub ssh_ports: Vec<u16>,
    /// Where the state file and the audit trail are kept. Default `/var/lib/chaos-daemon`.
    pub state_dir: PathBuf,
    /// The daemon's bpffs directory for pinned maps, programs and links.
    /// Default `/sys/fs/bpf/chaos-daemon`.
    pub bpffs_dir: PathBuf,
    /// Audit events kept in the history, and a tenth as many refusals besides. Default 10000.
    pub history_limit: usize,
    /// How TC programs are attached: `auto` (TCX links where the kernel has them, else cls_bpf
    /// under clsact), `tcx` or `netlink`. Default `auto`.
    pub tc_attach: AttachMode,
    /// How long TCX programs stay attached to an interface after its last fault ends, doing
    /// nothing: a TCX attach and detach each wait for the kernel's RCU grace period (about
    /// 10-30 ms), which the next fault on the interface then does not pay; after this the
    /// interface's packets run no program. cls_bpf filters are removed at once. Default `5s`.
    pub detach_after: String,
    /// How delay and bandwidth faults hold packets: `auto` (edt where the kernel has fq and
    /// lets TC programs set departure times, 5.0+; else netem), `edt` or `netem`. Default `auto`.
    pub delay_backend: BackendChoice,
    /// Hold the daemon to what an older kernel offers, so that this kernel stands for it (in
    /// tests): `native` (whatever this kernel has), `5.10` (no TCX, no bpf_set_retval: connect-fail
    /// with EPERM only) or `4.19` (besides: no bpf links, so no ingress cgroup faults and no
    /// connect-fail; no edt, so delay and bandwidth need netem; no batch map updates). See
    /// docs/kernels.md. Default `native`.
    pub kernel_profile: KernelProfile,
    /// The `skb->mark` bit a duplicate fault sets on its copies, so that a copy passing the
    /// hook again is not copied again (the bit is cleared then). It must be one bit no one else
    /// on the host uses (a CNI, kube-proxy's 0x4000 and 0x8000, policy routing). Default
    /// `0x10000000`.
    pub duplicate_mark: u32,
    /// The container runtimes' CRI sockets (gRPC, `runtime.v1`, as crictl and the kubelet use
    /// them), where faults that name a pod (`--pod NAMESPACE/NAME`) find it: the fault follows
    /// the pod's sandbox (its network namespace), whatever its containers do. Every socket that
    /// answers is asked. Default: containerd's and CRI-O's, `/run/containerd/containerd.sock`
    /// and `/run/crio/crio.sock`.
    pub cri_sockets: Vec<PathBuf>,
    /// Only when no CRI socket answers: where container runtimes keep the OCI spec of each
    /// running container (`<dir>/<id>/config.json` or `<dir>/<id>/userdata/config.json`), read
    /// for the pod's sandbox container. Default: containerd's Kubernetes namespace and CRI-O's,
    /// `/run/containerd/io.containerd.runtime.v2.task/k8s.io` and
    /// `/run/containers/storage/overlay-containers`.
    pub runtime_dirs: Vec<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP, no access control): an
    /// address and TCP port, `127.0.0.1:9464` (this host only) or `0.0.0.0:9464`. Default: none
    /// (no listener).
    pub metrics_address: Option<String>,
    /// Log filter, in `RUST_LOG` syntax; `RUST_LOG` overrides it. Default `info`.
    pub log: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Readers {
    #[default]
    Admins,
    Any,
}

pub use chaos_api::api::DEFAULT_SOCKET;

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            socket_group: None,
            socket_mode: "0660".into(),
            admin_group: None,
            readers: Readers::Admins,
            max_faults: 10_000,
            max_duration: "1h".into(),
            allow_unlimited: false,
            max_start_after: "24h".into(),
            protected: Vec::new(),
            ssh_ports: vec![22],
            state_dir: "/var/lib/chaos-daemon".into(),
            bpffs_dir: "/sys/fs/bpf/chaos-daemon".into(),
            history_limit: 10_000,
            tc_attach: AttachMode::Auto,
            detach_after: "5s".into(),
            delay_backend: BackendChoice::Auto,
            kernel_profile: KernelProfile::Native,
            duplicate_mark: 0x1000_0000,
            cri_sockets: vec!["/run/containerd/containerd.sock".into(), "/run/crio/crio.sock".into()],
            runtime_dirs: vec![
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io".into(),
                "/run/containers/storage/overlay-containers".into(),
            ],
            metrics_address: None,
            log: "info".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.check().with_context(|| format!("{}", path.display()))?;
        Ok(config)
    }

    /// Every setting a TOML type cannot check.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_faults == 0 || self.max_faults > chaos_common::MAX_RULES as usize {
            anyhow::bail!("max_faults must be 1-{}", chaos_common::MAX_RULES);
        }
        self.settings()?;
        self.guard()?;
        self.socket_mode()?;
        self.metrics_address()?;
        self.detach_after()?;
        self.profile()?;
        Ok(())
    }

    /// The kernel profile, unless it holds back the delay backend the config asks for.
    /// (`tc_attach = "tcx"` is refused at start, as where the kernel lacks TCX.)
    pub fn profile(&self) -> anyhow::Result<KernelProfile> {
        let p = self.kernel_profile;
        if let (BackendChoice::Edt, Some(why)) = (self.delay_backend, p.holds_back(Feature::Edt)) {
            anyhow::bail!("kernel_profile: delay_backend = \"edt\" cannot be, as {why}; use \"auto\" or \"netem\"");
        }
        Ok(p)
    }

    pub fn detach_after(&self) -> anyhow::Result<Duration> {
        parse_duration(&self.detach_after).map_err(|e| anyhow::anyhow!("detach_after: {e}"))
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        let d = |field: &str, v: &str| parse_duration(v).map_err(|e| anyhow::anyhow!("{field}: {e}"));
        let max_duration = d("max_duration", &self.max_duration)?;
        if max_duration == Duration::ZERO {
            anyhow::bail!("max_duration must be more than 0");
        }
        if !self.duplicate_mark.is_power_of_two() {
            anyhow::bail!("duplicate_mark: {:#x} is not a single bit (e.g. 0x10000000)", self.duplicate_mark);
        }
        Ok(Settings {
            max_faults: self.max_faults,
            max_duration,
            allow_unlimited: self.allow_unlimited,
            max_start_after: d("max_start_after", &self.max_start_after)?,
            duplicate_mark: self.duplicate_mark,
            cri_sockets: self.cri_sockets.clone(),
            runtime_dirs: self.runtime_dirs.clone(),
        })
    }

    pub fn guard(&self) -> anyhow::Result<Guard> {
        let ephemeral = crate::guard::ephemeral_ports().context("reading net.ipv4.ip_local_port_range")?;
        let protected =
            crate::guard::parse_protected(&self.protected, ephemeral).map_err(|e| anyhow::anyhow!("protected: {e}"))?;
        Ok(Guard { protected, ssh_ports: self.ssh_ports.clone(), sessions: Default::default() })
    }

    pub fn socket_mode(&self) -> anyhow::Result<u32> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| anyhow::anyhow!("socket_mode: '{}' is not an octal file mode", self.socket_mode))
    }

    pub fn metrics_address(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(text) = &self.metrics_address else { return Ok(None) };
        let addr: SocketAddr = text.parse().map_err(|_| {
            anyhow::anyhow!("metrics_address: '{text}' is not an IP address and port (e.g. 127.0.0.1:9464, [::1]:9464)")
        })?;
        if addr.port() == 0 {
            anyhow::bail!("metrics_address: '{text}' has port 0: Prometheus needs a fixed port to scrape");
        }
        Ok(Some(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(toml::from_str::<Config>("").unwrap(), Config::default());
        Config::default().check().unwrap();
        let c: Config = toml::from_str("max_faults = 5\nsocket = \"/tmp/x.sock\"").unwrap();
        assert_eq!((c.max_faults, c.socket), (5, PathBuf::from("/tmp/x.sock")));
        assert!(toml::from_str::<Config>("sockt = 1").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        for (text, field) in [
            ("max_duration = \"forever\"", "max_duration"),
            ("max_duration = \"0s\"", "max_duration"),
            ("max_start_after = \"1x\"", "max_start_after"),
            ("socket_mode = \"0999\"", "socket_mode"),
            ("max_faults = 0", "max_faults"),
            ("duplicate_mark = 0x3000", "duplicate_mark"),
            ("duplicate_mark = 0", "duplicate_mark"),
            ("protected = [\"10.0.0.1:http\"]", "protected"),
            ("metrics_address = \"localhost:9464\"", "metrics_address"),
            ("metrics_address = \"127.0.0.1\"", "metrics_address"),
            ("metrics_address = \"127.0.0.1:0\"", "metrics_address"),
            ("kernel_profile = \"4.19\"\ndelay_backend = \"edt\"", "delay_backend = \"edt\""),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        assert!(toml::from_str::<Config>("readers = \"everyone\"").is_err());
        assert!(toml::from_str::<Config>("kernel_profile = \"4.14\"").is_err());
        let c: Config = toml::from_str("kernel_profile = \"5.10\"\ndelay_backend = \"edt\"").unwrap();
        assert_eq!(c.profile().unwrap(), KernelProfile::V5_10);
    }

    #[test]
    fn metrics_address_is_an_ip_and_port() {
        let address = |text: &str| toml::from_str::<Config>(text).unwrap().metrics_address();
        assert_eq!(address("").unwrap(), None);
        assert_eq!(address("metrics_address = \"0.0.0.0:9464\"").unwrap(), Some(([0, 0, 0, 0], 9464).into()));
        assert_eq!(address("metrics_address = \"[::1]:9464\"").unwrap(), "[::1]:9464".parse().ok());
        assert_eq!(
            address("metrics_address = \"localhost:9464\"").unwrap_err().to_string(),
            "metrics_address: 'localhost:9464' is not an IP address and port (e.g. 127.0.0.1:9464, [::1]:9464)"
        );
    }
}
