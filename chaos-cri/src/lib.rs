//! A small client of the Kubernetes Container Runtime Interface: `runtime.v1.RuntimeService`,
//! gRPC over a container runtime's Unix socket (containerd's `/run/containerd/containerd.sock`,
//! CRI-O's `/run/crio/crio.sock`), as crictl and the kubelet use it. It lists the node's pods
//! (their sandboxes, with the network namespace and pid the runtime's verbose status gives) and
//! containers; [`Runtime::client`] gives the whole API ([`api`]) for what else is needed.
//!
//! [`api`] is generated from `proto/api.proto` (Kubernetes' cri-api, `runtime.v1`, Apache-2.0)
//! and checked in, so that building needs no `protoc`. To regenerate it, build and run a crate
//! with `tonic-prost-build = "0.14"` whose main is
//! `tonic_prost_build::configure().build_server(false).out_dir("out").compile_protos(&["proto/api.proto"], &["proto/"])`
//! and copy `out/runtime.v1.rs` to `src/runtime.v1.rs`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::transport::{Channel, Endpoint, Uri};

/// The generated `runtime.v1` API: requests, responses and [`api::runtime_service_client`].
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod api {
    include!("runtime.v1.rs");
}

use api::runtime_service_client::RuntimeServiceClient;
/// The gRPC crate the API is generated for (`tonic::Request`, `Status`).
pub use tonic;

/// How long connecting (and the first call, `Version`) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long any later call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod of the node: one sandbox, as the runtime lists it (a pod whose sandbox was recreated
/// has several, the old ones not ready).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// The sandbox's id.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The sandbox is running (`SANDBOX_READY`).
    pub ready: bool,
    /// When the sandbox was created, in nanoseconds since the Unix epoch.
    pub created_ns: i64,
    /// Its addresses (none for a sandbox not ready, or on the host's network).
    pub ips: Vec<IpAddr>,
    /// Its network namespace (`/var/run/netns/cni-...`), if the runtime says; none on the host's
    /// network or once closed.
    pub netns: Option<PathBuf>,
    /// The sandbox's process (the pause container's), in the runtime's pid namespace, if the
    /// runtime says (not once stopped).
    pub pid: Option<u32>,
}

/// A container of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Its pod's sandbox id ([`Pod::id`]).
    pub pod_id: String,
    pub name: String,
    pub running: bool,
    /// Its first process, in the runtime's pid namespace, if the runtime says.
    pub pid: Option<u32>,
}

/// What failed, with the socket it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CRI socket {}: connecting: {reason}", socket.display())]
    Connect { socket: PathBuf, reason: String },
    #[error("CRI socket {}: {call}: {reason}", socket.display())]
    Call { socket: PathBuf, call: &'static str, reason: String },
    /// The tokio runtime of a [`blocking`] call could not be made.
    #[error("CRI socket {}: starting an async runtime: {reason}", socket.display())]
    Runtime { socket: PathBuf, reason: String },
}

/// A connection to one runtime's CRI socket.
#[derive(Clone, Debug)]
pub struct Runtime {
    socket: PathBuf,
    channel: Channel,
    version: String,
}

impl Runtime {
    /// Connects to `socket` and asks the runtime's version, within [`CONNECT_TIMEOUT`]: a
    /// socket that is there but does not speak CRI v1 fails here.
    pub async fn connect(socket: &Path) -> Result<Self, Error> {
        let fail = |reason: String| Error::Connect { socket: socket.to_owned(), reason };
        let path = socket.to_owned();
        let attempt = async {
            // The URI is not used: every connection is to the socket.
            let channel = Endpoint::from_static("http://[::1]:50051")
                .timeout(CALL_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| fail(chain(&e)))?;
            let version = RuntimeServiceClient::new(channel.clone())
                .version(api::VersionRequest { version: "v1".into() })
                .await
                .map_err(|s| fail(format!("Version: {}", status(&s))))?
                .into_inner();
            Ok(Self {
                socket: socket.to_owned(),
                channel,
                version: format!("{} {}", version.runtime_name, version.runtime_version),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))))
    }

    /// The socket connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runtime's name and version, as it answered (`containerd 1.6.20`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The raw client, for what this crate does not wrap.
    pub fn client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// The raw image client on the same connection (`ImageStatus`, to see an image imported).
    pub fn images(&self) -> api::image_service_client::ImageServiceClient<Channel> {
        api::image_service_client::ImageServiceClient::new(self.channel.clone())
    }

    fn failed(&self, call: &'static str) -> impl Fn(tonic::Status) -> Error + '_ {
        move |s| Error::Call { socket: self.socket.clone(), call, reason: status(&s) }
    }

    /// Every pod sandbox of the runtime (ready or not) as one `ListPodSandbox` gives it: ids,
    /// names, labels, annotations and readiness, without addresses, namespace or pid. What
    /// matching pods against a selector needs, at the cost of one call however many pods.
    pub async fn sandboxes(&self) -> Result<Vec<Pod>, Error> {
        let items = self
            .client()
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await
            .map_err(self.failed("ListPodSandbox"))?
            .into_inner()
            .items;
        Ok(items
            .into_iter()
            .map(|sandbox| {
                let metadata = sandbox.metadata.unwrap_or_default();
                Pod {
                    id: sandbox.id,
                    namespace: metadata.namespace,
                    name: metadata.name,
                    uid: metadata.uid,
                    labels: sandbox.labels.into_iter().collect(),
                    annotations: sandbox.annotations.into_iter().collect(),
                    ready: sandbox.state == api::PodSandboxState::SandboxReady as i32,
                    created_ns: sandbox.created_at,
                    ..Pod::default()
                }
            })
            .collect())
    }

    /// [`Self::sandboxes`] with each one's addresses, network namespace and pid from its
    /// verbose status: one `PodSandboxStatus` more per sandbox. A sandbox removed between the
    /// two is left out.
    pub async fn pods(&self) -> Result<Vec<Pod>, Error> {
        let mut client = self.client();
        let mut pods = Vec::new();
        for mut pod in self.sandboxes().await? {
            let response = match client
                .pod_sandbox_status(api::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: true })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::NotFound => continue,
                Err(s) => return Err(self.failed("PodSandboxStatus")(s)),
            };
            let info = Info::of(&response.info);
            let network = response.status.as_ref().and_then(|s| s.network.as_ref());
            pod.ips = network
                .map(|n| std::iter::once(n.ip.as_str()).chain(n.additional_ips.iter().map(|i| i.ip.as_str())))
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            pod.netns = info.netns.filter(|_| pod.ready);
            pod.pid = info.pid.filter(|_| pod.ready);
            pods.push(pod);
        }
        Ok(pods)
    }

    /// Every container of the runtime (running or not), with its pid from its verbose status:
    /// one `ListContainers`, then one `ContainerStatus` each running container.
    pub async fn containers(&self) -> Result<Vec<Container>, Error> {
        let mut client = self.client();
        let listed = client
            .list_containers(api::ListContainersRequest { filter: None })
            .await
            .map_err(self.failed("ListContainers"))?
            .into_inner()
            .containers;
        let mut containers = Vec::with_capacity(listed.len());
        for c in listed {
            let running = c.state == api::ContainerState::ContainerRunning as i32;
            let pid = if running {
                match client
                    .container_status(api::ContainerStatusRequest { container_id: c.id.clone(), verbose: true })
                    .await
                {
                    Ok(r) => Info::of(&r.into_inner().info).pid,
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => return Err(self.failed("ContainerStatus")(s)),
                }
            } else {
                None
            };
            let name = c.metadata.map(|m| m.name).unwrap_or_default();
            containers.push(Container { id: c.id, pod_id: c.pod_sandbox_id, name, running, pid });
        }
        Ok(containers)
    }
}

/// What a verbose status's `info` tells. containerd puts one JSON document under `info` with
/// `pid` and `runtimeSpec` (the OCI spec, whose `linux.namespaces` has the network namespace's
/// `path`); CRI-O's is of the same shape. Any key is looked at, anything missing tolerated.
#[derive(Debug, Default, PartialEq, Eq)]
struct Info {
    pid: Option<u32>,
    netns: Option<PathBuf>,
}

impl Info {
    fn of(info: &std::collections::HashMap<String, String>) -> Self {
        let mut found = Self::default();
        for text in info.values() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else { continue };
            if found.pid.is_none() {
                found.pid = json["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|&p| p > 0);
            }
            if found.netns.is_none() {
                found.netns = json["runtimeSpec"]["linux"]["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|ns| ns["type"] == "network")
                    .and_then(|ns| ns["path"].as_str())
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from);
            }
        }
        found
    }
}

/// A gRPC status as words: its code, its message.
fn status(s: &tonic::Status) -> String {
    match s.message() {
        "" => format!("{:?}", s.code()),
        m => format!("{:?}: {m}", s.code()),
    }
}

/// An error and its sources (tonic's transport errors say little at the top).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

/// The same, for code that is not async. Each call runs on a tokio runtime of the connection's
/// own, driven on a thread of its own: so it may be called from anywhere, a tokio worker or a
/// `spawn_blocking` thread included (where blocking on another runtime would panic).
pub mod blocking {
    use std::path::Path;

    pub use super::{Container, Error, Pod};

    /// A connection to one runtime's CRI socket, with the runtime it runs on.
    pub struct Runtime {
        inner: super::Runtime,
        rt: Option<tokio::runtime::Runtime>,
    }

    impl std::fmt::Debug for Runtime {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Runtime").field("socket", &self.inner.socket).field("version", &self.inner.version).finish()
        }
    }

    /// Runs `f` to its end on `rt`, on a thread of its own.
    fn run<T: Send>(rt: &tokio::runtime::Runtime, f: impl Future<Output = T> + Send) -> T {
        std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join().expect("a CRI call panicked"))
    }

    impl Runtime {
        /// [`super::Runtime::connect`].
        pub fn connect(socket: &Path) -> Result<Self, Error> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Runtime { socket: socket.to_owned(), reason: e.to_string() })?;
            match run(&rt, super::Runtime::connect(socket)) {
                Ok(inner) => Ok(Self { inner, rt: Some(rt) }),
                Err(e) => {
                    // As in `drop`: not dropped, which would panic inside an async context.
                    rt.shutdown_background();
                    Err(e)
                }
            }
        }

        pub fn socket(&self) -> &Path {
            self.inner.socket()
        }

        pub fn version(&self) -> &str {
            self.inner.version()
        }

        /// [`super::Runtime::sandboxes`].
        pub fn sandboxes(&self) -> Result<Vec<Pod>, Error> {
            run(self.rt.as_ref().expect("kept until dropped"), self.inner.sandboxes())
        }

        /// [`super::Runtime::pods`].
        pub fn pods(&self) -> Result<Vec<Pod>, Error> {
            run(self.rt.as_ref().expect("kept until dropped"), self.inner.pods())
        }

        /// [`super::Runtime::containers`].
        pub fn containers(&self) -> Result<Vec<Container>, Error> {
            run(self.rt.as_ref().expect("kept until dropped"), self.inner.containers())
        }
    }

    impl Drop for Runtime {
        fn drop(&mut self) {
            // Dropping a runtime inside another's async context panics; this does not wait.
            if let Some(rt) = self.rt.take() {
                rt.shutdown_background();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_verbose_info_gives_pid_and_netns() {
        let info = serde_json::json!({
            "pid": 4242,
            "processStatus": "running",
            "netNamespaceClosed": false,
            "runtimeSpec": {"linux": {"namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "network", "path": "/var/run/netns/cni-1f2e"},
            ]}},
        });
        let map = [("info".to_owned(), info.to_string())].into();
        assert_eq!(Info::of(&map), Info { pid: Some(4242), netns: Some("/var/run/netns/cni-1f2e".into()) });
    }

    #[test]
    fn missing_or_odd_info_is_tolerated() {
        assert_eq!(Info::of(&Default::default()), Info::default());
        // Host network: no path; a stopped sandbox: pid 0; a key that is not JSON.
        let info = serde_json::json!({"pid": 0, "runtimeSpec": {"linux": {"namespaces": [{"type": "network"}]}}});
        let map = [("info".to_owned(), info.to_string()), ("other".to_owned(), "not json".to_owned())].into();
        assert_eq!(Info::of(&map), Info::default());
    }

    #[test]
    fn blocking_calls_may_be_made_inside_an_async_runtime() {
        // Where blocking on a runtime of one's own would panic: a task of another runtime.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(async { blocking::Runtime::connect(Path::new("/nonexistent/cri.sock")).unwrap_err() });
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }

    #[test]
    fn a_missing_socket_is_named() {
        let socket = Path::new("/nonexistent/cri.sock");
        let err = blocking::Runtime::connect(socket).unwrap_err().to_string();
        assert!(err.starts_with("CRI socket /nonexistent/cri.sock: connecting:"), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }
}
