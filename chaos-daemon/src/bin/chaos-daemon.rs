//! chaos-daemon: loads the programs, owns the maps, serves the control socket. On SIGINT or
//! SIGTERM it removes every fault and detaches every program before exiting.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};
use chaos_daemon::{config::Config, engine::Engine, kernel::Kernel, server};
use clap::Parser;
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Network fault injection in the kernel, driven by chaosctl")]
struct Args {
    /// TOML configuration file (optional: every setting has a default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Control socket path (overrides the config file).
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("chaos-daemon: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log)).context("log filter")?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    if !nix::unistd::geteuid().is_root() {
        bail!("chaos-daemon must run as root: it loads eBPF programs and attaches them to interfaces");
    }
    let kernel = Kernel::load(config.tc_attach).context("loading the eBPF programs")?;
    let engine = Arc::new(Mutex::new(Engine::new(kernel, config.max_faults)));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = bind(&config)?;
        tracing::info!(socket = %config.socket.display(), "chaos-daemon ready");
        let (shutdown, _) = broadcast::channel(1);
        let server = tokio::spawn(server::serve(listener, engine.clone(), shutdown.subscribe()));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: removing every fault"),
            _ = int.recv() => tracing::info!("SIGINT: removing every fault"),
        }
        let _ = shutdown.send(());
        let _ = server.await;
        anyhow::Ok(())
    })?;

    let _ = std::fs::remove_file(&config.socket);
    let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
    match engine.clear() {
        Ok(removed) => tracing::info!(removed = removed.len(), "faults removed, programs detached"),
        Err(e) => tracing::error!("removing faults: {e}"),
    }
    // Dropping the engine drops the Ebpf object: every remaining link and program goes with it.
    drop(engine);
    Ok(())
}

/// Binds the control socket with mode 0660, replacing a stale socket but never a live one.
fn bind(config: &Config) -> anyhow::Result<UnixListener> {
    let path: &Path = &config.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another chaos-daemon is already serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = &config.socket_group {
        let gid =
            nix::unistd::Group::from_name(group)?.with_context(|| format!("socket_group: no group '{group}'"))?.gid;
        nix::unistd::chown(path, None, Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(listener)
}
