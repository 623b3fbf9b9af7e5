//! The node's pods, asked of its container runtime through the CRI (`runtime.v1`
//! RuntimeService on the runtime's Unix socket, as crictl and the kubelet ask): see chaos-cri.
//! Blocking calls, each on a thread and tokio runtime of its own, so that they may be made from
//! anywhere in the daemon.

use std::path::PathBuf;

pub use chaos_cri::Pod;

/// The pods of every runtime in `sockets` that answers (a node normally runs one), ready or
/// not; an error naming each socket and what failed when none answers.
pub fn list(sockets: &[PathBuf]) -> Result<Vec<Pod>, String> {
    list_from(sockets).map(|(pods, _)| pods)
}

/// The same as the runtimes list them, without their addresses, network namespaces and pids:
/// one call per runtime, for matching selectors ([`chaos_cri::Runtime::sandboxes`]).
pub fn list_brief(sockets: &[PathBuf]) -> Result<Vec<Pod>, String> {
    ask(sockets, |rt| rt.sandboxes()).map(|(pods, _)| pods)
}

/// The same, with the runtimes that answered, as `containerd 1.6.20 at /run/containerd/containerd.sock`.
pub fn list_from(sockets: &[PathBuf]) -> Result<(Vec<Pod>, Vec<String>), String> {
    ask(sockets, |rt| rt.pods())
}

fn ask(
    sockets: &[PathBuf],
    list: impl Fn(&chaos_cri::blocking::Runtime) -> Result<Vec<Pod>, chaos_cri::Error>,
) -> Result<(Vec<Pod>, Vec<String>), String> {
    let (mut pods, mut answered, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for socket in sockets {
        let asked = chaos_cri::blocking::Runtime::connect(socket).and_then(|rt| Ok((list(&rt)?, runtime(&rt))));
        match asked {
            Ok((p, which)) => {
                pods.extend(p);
                answered.push(which);
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    if answered.is_empty() {
        return Err(none_answered(sockets, &failed));
    }
    Ok((pods, answered))
}

fn runtime(rt: &chaos_cri::blocking::Runtime) -> String {
    format!("{} at {}", rt.version(), rt.socket().display())
}

fn none_answered(sockets: &[PathBuf], failed: &[String]) -> String {
    if sockets.is_empty() {
        "no CRI socket is configured (cri_sockets)".to_owned()
    } else {
        format!("no CRI socket answered ({})", failed.join("; "))
    }
}

/// What `chaosctl status` says of the CRI: which runtime answered, or that none did.
pub fn status(sockets: &[PathBuf]) -> String {
    let (mut answered, mut failed) = (Vec::new(), Vec::new());
    for socket in sockets {
        match chaos_cri::blocking::Runtime::connect(socket) {
            Ok(rt) => answered.push(runtime(&rt)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    match answered.is_empty() {
        false => answered.join(", "),
        true => format!(
            "{}: --pod looks in the runtimes' state files instead (runtime_dirs)",
            none_answered(sockets, &failed)
        ),
    }
}
