//! A real containerd, driven through the CRI as the kubelet drives it: pods (sandboxes) and their
//! containers, on a CNI bridge. It runs as a plain process with a config of its own, everything
//! (root, state, sockets, CNI config, the pods' network namespaces) in a scratch directory, and
//! inside a network namespace of its own, the lab's node ([`Lab::node`]): the bridge, the pods'
//! veths and the bridge plugin's `net.ipv4.ip_forward = 1` are there, so the host's network is
//! never touched, and the daemon under test runs in the node namespace as on a node.
//!
//! Images are built here (no registry is reachable): one layer with busybox-static, imported
//! with `ctr`. See /work/shared/notes/containers.md for what this machine needs (no
//! CAP_SYS_RESOURCE: `restrict_oom_score_adj`; cgroup v1: the cgroupfs driver).
//!
//! [`Lab`]'s `Drop` stops and removes its pods through the CRI, stops containerd (and any shim of
//! it left), unmounts what it left under the scratch directory, removes the pods' cgroups, the
//! scratch directory and the node namespace (the bridge with it).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use chaos_cri::{api, tonic};

use crate::{Netns, run, unique};

/// The image every container runs: busybox, whose entrypoint waits for SIGTERM (so the sandbox
/// image is the same one).
pub const IMAGE: &str = "docker.io/library/chaos-lab:1";

/// What a container runs unless told: wait for SIGTERM, in one-second sleeps.
const WAIT: &str = "trap 'exit 0' TERM INT; while :; do sleep 1 & wait; done";

/// Packages the lab needs (Debian's names), installed when missing.
const PACKAGES: &[&str] = &["containerd", "runc", "containernetworking-plugins", "busybox-static"];

/// A pod the lab started: what later calls need to name it.
#[derive(Clone, Debug)]
pub struct PodHandle {
    /// Its sandbox's id.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Its workload containers' ids, as started (`sleep` first).
    pub containers: Vec<String>,
    config: api::PodSandboxConfig,
}

/// containerd in the node namespace, and the pods made through it.
pub struct Lab {
    /// The node's network namespace: containerd's, the bridge's, the daemon's.
    pub node: Netns,
    pub dir: PathBuf,
    /// containerd's gRPC socket, the CRI's: what the daemon's `cri_sockets` names.
    pub socket: PathBuf,
    /// The bridge's address, the pods' gateway.
    pub gateway: Ipv4Addr,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    cri: Option<chaos_cri::Runtime>,
    pods: Mutex<Vec<PodHandle>>,
}

/// Deadline of anything the lab waits for.
const WAIT_FOR: Duration = Duration::from_secs(30);

impl Lab {
    /// Starts containerd (installing the packages if missing), imports the image and waits until
    /// the CRI sees it.
    pub fn start() -> anyhow::Result<Self> {
        install()?;
        let dir = std::env::temp_dir().join(unique("cri-lab-"));
        std::fs::create_dir_all(&dir)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // A /24 of its own per lab (each node namespace is apart anyway).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = (std::process::id() + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % 250 + 1;
        let gateway = Ipv4Addr::new(10, 216, n as u8, 1);
        let mut lab = Self {
            node: Netns::new(unique("crin"))?,
            socket: dir.join("containerd.sock"),
            dir,
            gateway,
            child: None,
            rt,
            cri: None,
            pods: Mutex::new(Vec::new()),
        };
        lab.write_config(n)?;
        lab.spawn()?;
        lab.import()?;
        Ok(lab)
    }

    fn write_config(&self, n: u32) -> anyhow::Result<()> {
        let d = &self.dir;
        for sub in ["cni", "root", "state", "runc", "logs"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let cni = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "chaos-lab",
            "plugins": [{
                "type": "bridge",
                "bridge": "crilab0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("10.216.{n}.0/24"), "gateway": self.gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": d.join("cni-ipam").display().to_string(),
                },
            }],
        });
        std::fs::write(d.join("cni/10-chaos-lab.conflist"), cni.to_string())?;
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # No CAP_SYS_RESOURCE here: runc could not set the sandbox's oom_score_adj of -998.
  restrict_oom_score_adj = true
  # The pods' network namespaces in the scratch directory, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config)?;
        Ok(())
    }

    /// containerd in the node namespace; waits until its CRI answers.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("containerd.log"))?;
        let netns = std::fs::File::open(self.node.path())?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setns is an async-signal-safe system call; the file was opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().context("starting containerd")?);
        let deadline = Instant::now() + WAIT_FOR;
        loop {
            match self.rt.block_on(chaos_cri::Runtime::connect(&self.socket)) {
                Ok(cri) => {
                    self.cri = Some(cri);
                    return Ok(());
                }
                Err(e) => {
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                        self.child = None;
                        anyhow::bail!("containerd exited with {status}:\n{}", self.log());
                    }
                    anyhow::ensure!(Instant::now() < deadline, "containerd's CRI did not answer in 30 s: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The CRI connection.
    pub fn cri(&self) -> &chaos_cri::Runtime {
        self.cri.as_ref().expect("connected while the lab runs")
    }

    /// Runs a CRI call to its end.
    pub fn call<T>(&self, f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> anyhow::Result<T> {
        self.rt
            .block_on(f)
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))
    }

    /// Builds the image (an OCI layout tar), imports it with `ctr` and waits until the CRI's
    /// image store has it.
    fn import(&self) -> anyhow::Result<()> {
        let tar = image(&self.dir.join("image"))?;
        run(
            "ctr",
            &["--address", &self.socket.to_string_lossy(), "-n", "k8s.io", "images", "import", &tar.to_string_lossy()],
        )?;
        self.wait("the CRI to see the image", || {
            let spec = api::ImageSpec { image: IMAGE.into(), ..Default::default() };
            let status = self.call(
                self.cri().images().image_status(api::ImageStatusRequest { image: Some(spec), verbose: false }),
            )?;
            Ok(status.image.is_some())
        })
    }

    /// Polls `done` until it says so, for up to 30 s.
    fn wait(&self, what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT_FOR;
        loop {
            let last = done();
            if matches!(last, Ok(true)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("waited 30 s for {what} (last: {last:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a pod `namespace/name` with `labels` (RunPodSandbox, in the cgroup
    /// `/kubepods/besteffort/pod<uid>` as the kubelet's cgroupfs driver puts it) and a workload
    /// container `sleep` in it; returns once the runtime reports both running.
    pub fn run_pod(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<PodHandle> {
        let uid = format!("{:08x}-{}", std::process::id(), unique("").replace('x', "-"));
        let labels: HashMap<String, String> = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.chars().take(63).collect(),
            log_directory: self.dir.join("logs").join(&uid).display().to_string(),
            labels: labels.clone(),
            annotations: [("chaos-lab/test".to_owned(), "yes".to_owned())].into(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: api::NamespaceMode::Pod as i32,
                        pid: api::NamespaceMode::Container as i32,
                        ipc: api::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .call(self.cri().client().run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .with_context(|| format!("RunPodSandbox {namespace}/{name}:\n{}", self.log()))?
            .pod_sandbox_id;
        let mut pod =
            PodHandle { id, namespace: namespace.into(), name: name.into(), uid, containers: Vec::new(), config };
        // Known before anything else can fail, so that Drop removes it.
        self.pods.lock().unwrap().push(pod.clone());
        self.wait(
            "the sandbox to be ready",
            || Ok(self.sandbox(&pod)?.0 == api::PodSandboxState::SandboxReady as i32),
        )?;
        let sleep = self.add_container(&pod, "sleep", &["sleep", "3600"])?;
        pod.containers.push(sleep);
        Ok(pod)
    }

    /// The sandbox's state and status response.
    fn sandbox(&self, pod: &PodHandle) -> anyhow::Result<(i32, api::PodSandboxStatusResponse)> {
        let r = self.call(
            self.cri()
                .client()
                .pod_sandbox_status(api::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: true }),
        )?;
        Ok((r.status.as_ref().map_or(-1, |s| s.state), r))
    }

    /// Creates and starts a container `name` running `cmd` (the image's wait for SIGTERM if
    /// empty) in `pod`; returns its id once the runtime reports it running. A name used before
    /// in the pod is a restart: the next attempt, as the kubelet numbers them.
    pub fn add_container(&self, pod: &PodHandle, name: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let filter = api::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() };
        let existing =
            self.call(self.cri().client().list_containers(api::ListContainersRequest { filter: Some(filter) }))?;
        let attempt =
            existing.containers.iter().filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == name)).count();
        let command = if cmd.is_empty() {
            vec!["/bin/sh".into(), "-c".into(), WAIT.into()]
        } else {
            cmd.iter().map(|s| (*s).into()).collect()
        };
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: name.into(), attempt: attempt as u32 }),
            image: Some(api::ImageSpec { image: IMAGE.into(), ..Default::default() }),
            command,
            log_path: format!("{name}-{attempt}.log"),
            linux: Some(api::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let id = self
            .call(self.cri().client().create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .with_context(|| format!("CreateContainer {name} in {}/{}:\n{}", pod.namespace, pod.name, self.log()))?
            .container_id;
        self.call(self.cri().client().start_container(api::StartContainerRequest { container_id: id.clone() }))
            .with_context(|| format!("StartContainer {name}:\n{}", self.log()))?;
        self.wait("the container to run", || {
            self.container_state(&id).map(|s| s == api::ContainerState::ContainerRunning as i32)
        })?;
        Ok(id)
    }

    fn container_state(&self, id: &str) -> anyhow::Result<i32> {
        let r = self.call(
            self.cri()
                .client()
                .container_status(api::ContainerStatusRequest { container_id: id.into(), verbose: false }),
        )?;
        Ok(r.status.map_or(-1, |s| s.state))
    }

    /// Stops a container (SIGKILL at once: `timeout` 0) and waits until the runtime reports it
    /// exited. A container cannot be started again: [`Self::add_container`] with its name is
    /// its restart.
    pub fn stop_container(&self, id: &str) -> anyhow::Result<()> {
        self.call(
            self.cri().client().stop_container(api::StopContainerRequest { container_id: id.into(), timeout: 0 }),
        )?;
        self.wait("the container to exit", || {
            self.container_state(id).map(|s| s == api::ContainerState::ContainerExited as i32)
        })
    }

    /// StopPodSandbox, then waits until the runtime reports it not ready.
    pub fn stop_pod(&self, pod: &PodHandle) -> anyhow::Result<()> {
        self.call(self.cri().client().stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }))?;
        self.wait("the sandbox to stop", || Ok(self.sandbox(pod)?.0 == api::PodSandboxState::SandboxNotready as i32))
    }

    /// RemovePodSandbox (stopping it first, as the kubelet does).
    pub fn remove_pod(&self, pod: &PodHandle) -> anyhow::Result<()> {
        self.stop_pod(pod)?;
        self.call(
            self.cri().client().remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }),
        )?;
        self.pods.lock().unwrap().retain(|p| p.id != pod.id);
        Ok(())
    }

    /// The pod's address, as the runtime reports it.
    pub fn pod_ip(&self, pod: &PodHandle) -> anyhow::Result<IpAddr> {
        let (_, r) = self.sandbox(pod)?;
        let ip = r.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        ip.parse().with_context(|| format!("pod {}/{} has no address ('{ip}')", pod.namespace, pod.name))
    }

    /// The pod's network namespace file, as the runtime reports it (chaos-cri reads the
    /// verbose status).
    pub fn pod_netns(&self, pod: &PodHandle) -> anyhow::Result<PathBuf> {
        let pods = self.rt.block_on(self.cri().pods())?;
        pods.into_iter()
            .find(|p| p.id == pod.id)
            .and_then(|p| p.netns)
            .with_context(|| format!("pod {}/{} has no network namespace", pod.namespace, pod.name))
    }

    /// The pod's network namespace, to send traffic from or to.
    pub fn pod_ns(&self, pod: &PodHandle) -> anyhow::Result<Netns> {
        Ok(Netns::at(self.pod_netns(pod)?))
    }

    /// chaos-cri's list of the runtime's pods.
    pub fn call_pods(&self) -> Vec<chaos_cri::Pod> {
        self.rt.block_on(self.cri().pods()).expect("listing pods")
    }

    /// chaos-cri's list of the runtime's containers.
    pub fn call_containers(&self) -> Vec<chaos_cri::Container> {
        self.rt.block_on(self.cri().containers()).expect("listing containers")
    }

    /// Stops containerd: SIGTERM, SIGKILL after 10 s.
    fn stop_containerd(&mut self) {
        self.cri = None;
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Processes of this lab that may outlive containerd: its shims (which name its socket on
    /// their command line) and whatever is still in its pods' cgroups.
    fn leftover_processes(&self, uids: &[String]) -> Vec<i32> {
        let socket = self.socket.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for pid in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).split('\0').any(|a| a == socket)
                || uids.iter().any(|uid| cgroups.contains(&format!("/kubepods/besteffort/pod{uid}")));
            if ours && pid != std::process::id() as i32 {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let pods: Vec<PodHandle> = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
        if self.cri.is_some() {
            for pod in &pods {
                if let Err(e) = self.remove_pod(pod) {
                    eprintln!("cleanup: removing pod {}/{}: {e:#}", pod.namespace, pod.name);
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("containerd log (last 4000 bytes):\n{}", tail(&self.log(), 4000));
        }
        self.stop_containerd();
        let uids: Vec<String> = pods.iter().map(|p| p.uid.clone()).collect();
        for pid in self.leftover_processes(&uids) {
            eprintln!("cleanup: killing leftover process {pid}");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        unmount_under(&self.dir);
        for uid in &uids {
            remove_pod_cgroups(uid);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: removing {}: {e}", self.dir.display());
        }
        // The shims' socket directory (named by a hash of our socket, so it is empty once they
        // are gone), and its parent if nothing else made it.
        for dir in ["/run/containerd/s", "/run/containerd"] {
            let _ = std::fs::remove_dir(dir);
        }
        // The node namespace goes next (a field), taking the bridge and the veths with it.
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// Installs the lab's packages with apt-get when one is missing.
fn install() -> anyhow::Result<()> {
    let have = |p: &str| Path::new(p).exists();
    let missing = !(have("/usr/bin/containerd")
        && have("/usr/bin/ctr")
        && (have("/usr/sbin/runc") || have("/usr/bin/runc"))
        && have("/usr/lib/cni/bridge")
        && busybox().is_some());
    if missing {
        static ONCE: Mutex<()> = Mutex::new(());
        let _one = ONCE.lock().unwrap();
        run("apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq"];
        args.extend(PACKAGES);
        let out = Command::new("apt-get").args(&args).env("DEBIAN_FRONTEND", "noninteractive").output()?;
        anyhow::ensure!(out.status.success(), "apt-get install {PACKAGES:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The static busybox binary.
fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Writes an OCI image layout tar at `dir/image.tar`: one uncompressed layer with busybox and
/// the applets used as symlinks, a config whose entrypoint waits for SIGTERM, and the manifest
/// named [`IMAGE`] (the `io.containerd.image.name` annotation `ctr import` reads).
fn image(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let blobs = dir.join("layout/blobs/sha256");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(&blobs)?;
    std::fs::copy(busybox().context("no busybox")?, rootfs.join("bin/busybox"))?;
    for applet in ["sh", "sleep", "nc", "httpd", "ip", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    let layer = dir.join("layer.tar");
    run(
        "tar",
        &[
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "--sort=name",
            "-C",
            &rootfs.to_string_lossy(),
            "-cf",
            &layer.to_string_lossy(),
            "bin",
        ],
    )?;
    // A blob: stored under its digest; its descriptor's digest and size.
    let blob = |path: &Path| -> anyhow::Result<(String, u64)> {
        let sum = run("sha256sum", &[&path.to_string_lossy()])?;
        let digest = sum.split_whitespace().next().context("sha256sum")?.to_owned();
        std::fs::copy(path, blobs.join(&digest))?;
        Ok((format!("sha256:{digest}"), std::fs::metadata(path)?.len()))
    };
    let (layer_digest, layer_size) = blob(&layer)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c", WAIT]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let (config_digest, config_size) = blob(&dir.join("config.json"))?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string())?;
    let (manifest_digest, manifest_size) = blob(&dir.join("manifest.json"))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE},
        }],
    });
    std::fs::write(dir.join("layout/index.json"), index.to_string())?;
    std::fs::write(dir.join("layout/oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let tar = dir.join("image.tar");
    run(
        "tar",
        &[
            "-C",
            &dir.join("layout").to_string_lossy(),
            "-cf",
            &tar.to_string_lossy(),
            "oci-layout",
            "index.json",
            "blobs",
        ],
    )?;
    Ok(tar)
}

/// Unmounts everything mounted under `dir` (a killed containerd's rootfs, shm and netns
/// mounts), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cleanup: unmounting {}: {e}", p.display());
        }
    }
}

/// Removes the pod's cgroup directories, `kubepods/besteffort/pod<uid>` and below, in every
/// hierarchy (cgroup v1's controllers and cgroup2), then their parents if they are empty.
fn remove_pod_cgroups(uid: &str) {
    let mut roots: Vec<PathBuf> = vec![crate::cgroup::mount()];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    roots.sort();
    roots.dedup();
    for root in roots {
        let pod = root.join(format!("kubepods/besteffort/pod{uid}"));
        if pod.is_dir() {
            remove_tree(&pod);
            for parent in ["kubepods/besteffort", "kubepods"] {
                let _ = std::fs::remove_dir(root.join(parent));
            }
        }
    }
}

/// rmdir of a cgroup directory, its children first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("cleanup: removing cgroup {}: {e}", dir.display());
    }
}
