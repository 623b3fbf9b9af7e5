//! chaos-daemon: loads the programs, owns the maps, serves the control socket. On SIGINT or
//! SIGTERM it removes every fault, detaches every program and removes its pins before exiting.
//! Killed any other way, it leaves its pinned state for the next daemon to re-adopt (faults
//! still end at their deadlines, in the kernel); `chaos-daemon cleanup` removes it instead.

use std::{
    fs::File,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use chaos_daemon::{
    access::Access,
    api::AuditAction,
    config::Config,
    engine::Engine,
    kernel::{self, Kernel, pins::Pins},
    server::{self, Shared},
    state::{Actor, Ended, Event, State, Store, mono_ns, unix_ms},
};
use clap::{Parser, Subcommand};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{Notify, broadcast},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "Network fault injection in the kernel, driven by chaosctl",
    after_long_help = "SIGTERM or SIGINT removes every fault, detaches every program and removes every pin, then \
                       the daemon exits; killed any other way, it leaves them for the next daemon to re-adopt, or \
                       for `chaos-daemon cleanup`.\n\nUnder systemd (chaos-daemon.service, Type=notify) it reports \
                       when its socket is ready, and serves the socket chaos-daemon.socket passes instead of \
                       binding one. The packages install its configuration as /etc/chaos-daemon/config.toml."
)]
struct Args {
    /// TOML configuration file (optional: every setting has a default).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Control socket path (overrides the config file).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Remove everything a daemon left on this node (after a crash or before uninstalling):
    /// its TC filters and links, pinned programs and maps, and the qdiscs it added.
    Cleanup,
    /// Write the man pages (from these definitions) into a directory, for packaging.
    #[command(hide = true)]
    Manpage { dir: PathBuf },
}

/// What the man pages hold beyond `--help`: examples, exit status, environment.
fn man_sections(page: &str) -> Vec<chaos_daemon::manpage::Section> {
    use chaos_daemon::manpage::Section;
    let examples: &[(&str, &str)] = match page {
        "chaos-daemon-cleanup" => &[(
            "systemctl stop chaos-daemon && chaos-daemon cleanup",
            "Remove what a daemon that crashed or was killed left in the kernel.",
        )],
        _ => &[
            ("systemctl enable --now chaos-daemon.socket", "As packaged: started by its socket, under systemd."),
            (
                "RUST_LOG=chaos_daemon=debug chaos-daemon --config /etc/chaos-daemon/config.toml",
                "In the foreground, with debug logs.",
            ),
            ("chaosctl apply -i eth0 --loss 20% --for 30s", "Then drive it with chaosctl(1)."),
        ],
    };
    vec![
        Section::new("EXAMPLES", examples),
        Section::new(
            "EXIT STATUS",
            &[
                ("0", "Stopped by SIGTERM or SIGINT with every fault removed; or done (cleanup)."),
                ("1", "An error, printed."),
            ],
        ),
        Section::new(
            "ENVIRONMENT",
            &[
                ("RUST_LOG", "Log filter (tracing's EnvFilter syntax), overriding the config's log setting."),
                ("NOTIFY_SOCKET, LISTEN_FDS", "Set by systemd: readiness is reported, a passed socket is served."),
            ],
        ),
        Section::new("SEE ALSO", &[("chaosctl(1)", "Applies, lists and removes faults through the daemon's socket.")]),
    ]
}

fn main() {
    chaos_daemon::engine::tune_heap();
    if let Err(e) = run() {
        eprintln!("chaos-daemon: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Manpage { dir }) = &args.command {
        chaos_daemon::manpage::write(<Args as clap::CommandFactory>::command(), "8", dir, &man_sections)?;
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log)).context("log filter")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if chaos_daemon::systemd::logs_to_journal() {
        logs.without_time().init()
    } else {
        logs.init()
    }

    if !nix::unistd::geteuid().is_root() {
        bail!("chaos-daemon must run as root: it loads eBPF programs and attaches them to interfaces");
    }
    chaos_daemon::fsutil::state_dir(&config.state_dir)?;
    let _lock = lock(&config.state_dir)?;
    match args.command {
        Some(Command::Cleanup) => cleanup(&config),
        Some(Command::Manpage { .. }) => unreachable!("written before anything else"),
        None => serve(config),
    }
}

/// Everything that can fail without the kernel is done before the programs are loaded, so a
/// bad setting stops the start with nothing to undo; a failure after it undoes what it loaded.
fn serve(config: Config) -> anyhow::Result<()> {
    let admin_group = match &config.admin_group {
        Some(name) => Some((name.clone(), group("admin_group", name)?)),
        None => None,
    };
    let socket_gid = config.socket_group.as_deref().map(|name| group("socket_group", name)).transpose()?;
    let (settings, guard) = (config.settings()?, config.guard()?);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // A socket systemd passed is systemd's: it answers before we do, and must not be removed.
    let passed = chaos_daemon::systemd::listener_from_env()?;
    let socket = match passed {
        Some(_) => None,
        None => Some(SocketFile::bind(&config.socket, config.socket_mode()?, socket_gid)?),
    };
    let (metrics, mut term, mut int) = runtime.block_on(async {
        let metrics = chaos_daemon::metrics::bind(config.metrics_address()?).await?;
        anyhow::Ok((metrics, signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
    })?;
    let mut store = Store::open(&config.state_dir, config.history_limit)
        .with_context(|| format!("opening the state directory {}", config.state_dir.display()))?;
    let previous = store.load().context("reading the state file")?.unwrap_or_default();
    // Checked before the kernel is touched, as everything that can be.
    chaos_daemon::engine::check_state(&previous)?;
    chaos_daemon::listen::raise_fd_limit();

    let pins = Pins::new(&config.bpffs_dir);
    let (mut kernel, adopted) = Kernel::load(
        config.tc_attach,
        pins.clone(),
        &previous.filters,
        config.delay_backend,
        previous.shaping.clone(),
        config.profile()?,
    )
    .context("loading the eBPF programs")?;
    kernel.set_detach_after(config.detach_after()?);
    let history = store.reader();
    let engine = Engine::new(kernel, adopted, previous, settings, guard, store).inspect_err(|_| {
        // What this start pinned goes; a previous daemon's objects stay as it left them (its
        // faults keep their deadlines, the state file still records them) for the next
        // daemon to re-adopt or for `cleanup`.
        if !adopted && let Err(e) = pins.remove_all() {
            tracing::warn!("removing the pins in {}: {e}", pins.dir.display());
        }
    });
    let engine = engine.context("starting")?;
    let shared = Arc::new(Shared {
        engine: Arc::new(Mutex::new(engine)),
        history,
        access: Access { admin_group, readers: config.readers },
        refusals: Default::default(),
        changed: Arc::new(Notify::new()),
    });

    runtime.block_on(async {
        let listener = match passed {
            Some(passed) => UnixListener::from_std(passed)?,
            None => socket.as_ref().expect("bound when none was passed").listen()?,
        };
        tracing::info!(socket = %config.socket.display(), "chaos-daemon ready");
        chaos_daemon::systemd::notify_ready();
        chaos_daemon::crashpoint::arm();
        let (shutdown, _) = broadcast::channel(1);
        let server = tokio::spawn(server::serve(listener, shared.clone(), shutdown.subscribe()));
        let metrics =
            metrics.map(|l| tokio::spawn(chaos_daemon::metrics::serve(l, shared.engine.clone(), shutdown.subscribe())));
        let lifecycle = tokio::spawn(lifecycle(shared.clone(), shutdown.subscribe()));
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: removing every fault"),
            _ = int.recv() => tracing::info!("SIGINT: removing every fault"),
        }
        chaos_daemon::systemd::notify_stopping();
        let _ = shutdown.send(());
        let _ = server.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        let _ = lifecycle.await;
        anyhow::Ok(())
    })?;

    drop(socket);
    // Connections still open keep their handlers alive: shut the engine down in place.
    shared.engine.lock().unwrap_or_else(|p| p.into_inner()).shutdown(&Actor::default());
    Ok(())
}

fn group(setting: &str, name: &str) -> anyhow::Result<u32> {
    let group = nix::unistd::Group::from_name(name).with_context(|| format!("{setting}: looking up group '{name}'"))?;
    Ok(group.with_context(|| format!("{setting}: no group '{name}'"))?.gid.as_raw())
}

/// Starts scheduled faults and reaps ended ones at their times, and when a link changes (an
/// interface a fault is on may be gone). The kernel already ignores a rule past its deadline;
/// this frees its slot and records its end.
async fn lifecycle(shared: Arc<Shared>, mut shutdown: broadcast::Receiver<()>) {
    let links = match chaos_daemon::netlink::link::events() {
        // SAFETY: an OwnedFd's descriptor is valid, open and the same for as long as it lives,
        // and the AsyncFd owns it.
        Ok(fd) => unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
    .inspect_err(|e| tracing::warn!("no link events ({e}): a deleted interface is noticed at the next request"))
    .ok();
    loop {
        let engine = shared.engine.clone();
        let next = tokio::task::spawn_blocking(move || {
            let lock = || engine.lock().unwrap_or_else(|p| p.into_inner());
            // The pods are listed outside the lock: the runtime may take its time answering.
            let source = {
                let e = lock();
                e.wants_pods().then(|| e.pod_source())
            };
            let pods = source.and_then(|s| {
                s.sandboxes().inspect_err(|e| tracing::warn!("listing the node's pods for experiments: {e}")).ok()
            });
            lock().tick(pods.as_deref())
        })
        .await
        .unwrap_or(None);
        let wait = next.map_or(Duration::from_secs(3600), |at| Duration::from_nanos(at.saturating_sub(mono_ns())));
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = shared.changed.notified() => {}
            _ = link_change(links.as_ref()) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Returns once a link of the daemon's namespace has changed (never, without the socket),
/// having read everything the kernel sent: only that something changed matters.
async fn link_change(links: Option<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>) {
    use std::os::fd::AsRawFd as _;
    let Some(fd) = links else { return std::future::pending().await };
    loop {
        let Ok(mut ready) = fd.readable().await else { return std::future::pending().await };
        let mut buf = [0u8; 8192];
        let mut changed = false;
        loop {
            // SAFETY: recv into a live buffer of its size, on a non-blocking socket.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                changed = true;
                continue;
            }
            // ENOBUFS (events were lost) counts as a change; EAGAIN is the end of them.
            changed |= n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN);
            break;
        }
        ready.clear_ready();
        if changed {
            return;
        }
    }
}

/// `chaos-daemon cleanup`: everything the state file records and everything pinned, removed
/// without loading any program.
fn cleanup(config: &Config) -> anyhow::Result<()> {
    let pins = Pins::new(&config.bpffs_dir);
    // Pins it cannot see are not gone: never report a cleanup that looked in the wrong place.
    pins.check().context("cleanup cannot reach the daemon's pins; nothing was removed")?;
    let mut store = Store::open(&config.state_dir, config.history_limit)?;
    let state = store.load().unwrap_or_else(|e| {
        eprintln!("chaos-daemon: warning: {e}; removing what is pinned and attached by name");
        None
    });
    let state = state.unwrap_or_default();
    let mut removed = kernel::cleanup(&pins, &state.filters, &state.shaping);
    removed.extend(chaos_daemon::target::release_cgroup2());
    for r in &removed {
        println!("removed {r}");
    }
    let ended: Vec<Ended> =
        state.faults.iter().map(|r| Ended::new(&r.name, "removed by cleanup", &Default::default())).collect();
    store.save(&State { boot_id: state.boot_id, next_id: state.next_id, ..Default::default() })?;
    // Nothing left to run again either: schedules and selections end with the rest.
    let experiments: Vec<chaos_daemon::engine::ExperimentRecord> = store.load_experiments().unwrap_or_default();
    store.save_experiments::<chaos_daemon::engine::ExperimentRecord>(&[])?;
    for e in &experiments {
        println!("removed experiment {}", e.name);
    }
    store.append(&Event {
        at: unix_ms(),
        actor: Actor { uid: Some(nix::unistd::getuid().as_raw()), pid: Some(std::process::id() as i32), comm: None },
        action: AuditAction::Cleanup,
        faults: vec![],
        experiment: None,
        result: format!("ok: {} objects removed", removed.len()),
        ended,
    })?;
    println!("cleanup done: {} objects removed", removed.len());
    Ok(())
}

/// One daemon (or cleanup) per state directory: an exclusive flock, released at exit.
fn lock(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<File>> {
    let path = dir.join("lock");
    let file = chaos_daemon::fsutil::lock_file(&path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!("{} is locked ({e}): another chaos-daemon is running with this state directory", path.display())
    })
}

/// The control socket the daemon bound: the file is removed when this is dropped (at exit, or
/// when the start fails), if it is still the one bound. Bound before the programs are loaded,
/// but listening only once the daemon serves: a connect that succeeds means it serves.
struct SocketFile {
    path: PathBuf,
    socket: std::os::fd::OwnedFd,
    /// Device and inode of the file the bind made.
    id: (u64, u64),
}

impl SocketFile {
    /// Binds `path` (replacing only a stale socket) with `mode` and group `gid`.
    fn bind(path: &Path, mode: u32, gid: Option<u32>) -> anyhow::Result<Self> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
        use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        chaos_daemon::fsutil::clear_socket_path(path)?;
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let socket = socket(AddressFamily::Unix, SockType::Stream, flags, None).context("creating a Unix socket")?;
        let address = UnixAddr::new(path).with_context(|| format!("socket path {}", path.display()))?;
        bind(socket.as_raw_fd(), &address).with_context(|| format!("binding {}", path.display()))?;
        let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let bound = Self { path: path.into(), socket, id: (meta.dev(), meta.ino()) };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
        if let Some(gid) = gid {
            nix::unistd::chown(path, None, Some(gid.into())).with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(bound)
    }

    /// Starts accepting connections.
    fn listen(&self) -> anyhow::Result<UnixListener> {
        let socket = self.socket.try_clone()?;
        nix::sys::socket::listen(&socket, nix::sys::socket::Backlog::MAXCONN)
            .with_context(|| format!("listening on {}", self.path.display()))?;
        Ok(UnixListener::from_std(std::os::unix::net::UnixListener::from(socket))?)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
