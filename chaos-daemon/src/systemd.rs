//! Running under systemd, without libsystemd: readiness and stop notifications (the datagram
//! protocol of `sd_notify(3)`), socket activation (`sd_listen_fds(3)`) and whether stderr is the
//! journal. Each does nothing when systemd did not start the daemon.

use std::{
    ffi::OsStr,
    io,
    os::{
        fd::{FromRawFd as _, RawFd},
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram, UnixListener},
        },
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {var} is '{value}', not a number")]
    NotANumber { var: &'static str, value: String },
    #[error(
        "socket activation: systemd passed {0} sockets; chaos-daemon serves one (a single ListenStream= in \
         chaos-daemon.socket)"
    )]
    TooMany(u32),
    #[error(
        "socket activation: the socket systemd passed is not a listening Unix stream socket (chaos-daemon.socket \
         needs ListenStream=/a/path)"
    )]
    NotUnixStream,
    #[error("socket activation: the socket systemd passed: {0}")]
    Io(#[from] io::Error),
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The control socket systemd passed (`chaos-daemon.socket`), if it started this process with
/// one: `LISTEN_PID` is our pid and `LISTEN_FDS` is 1. Non-blocking, for tokio. systemd made the
/// socket file, with the socket unit's mode and group, and keeps it: it must be neither replaced
/// nor removed. Call once: the listener owns the descriptor.
pub fn listener_from_env() -> Result<Option<UnixListener>, ActivationError> {
    let number = |var: &'static str| match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(value) => value.trim().parse::<u32>().map(Some).map_err(|_| ActivationError::NotANumber { var, value }),
    };
    if number("LISTEN_PID")? != Some(std::process::id()) {
        return Ok(None);
    }
    match number("LISTEN_FDS")?.unwrap_or(0) {
        0 => return Ok(None),
        1 => {}
        n => return Err(ActivationError::TooMany(n)),
    }
    let fd = LISTEN_FDS_START;
    let option = |name| {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which has that size.
        let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut value).cast(), &mut len) };
        if r == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
    };
    if option(libc::SO_DOMAIN)? != libc::AF_UNIX
        || option(libc::SO_TYPE)? != libc::SOCK_STREAM
        || option(libc::SO_ACCEPTCONN)? == 0
    {
        return Err(ActivationError::NotUnixStream);
    }
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours) for it to own,
    // and it is a socket (checked above).
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // Not inherited by anything the daemon might run.
    nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(io::Error::from)?;
    listener.set_nonblocking(true)?;
    let path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
    tracing::info!(socket = path.as_deref().unwrap_or("(unnamed)"), "serving the socket systemd passed");
    Ok(Some(listener))
}

/// Tells systemd (`Type=notify`) that the daemon is ready: its control socket accepts requests.
pub fn notify_ready() {
    notify("READY=1\nSTATUS=serving");
}

/// Tells systemd that the daemon is stopping: removing every fault, then exiting.
pub fn notify_stopping() {
    notify("STOPPING=1\nSTATUS=removing every fault");
}

fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&path, state) {
        tracing::warn!("telling systemd {:?} through {}: {e}", state.lines().next(), path.display());
    }
}

/// One datagram to `path`: a file, or an abstract address when it starts with `@`.
fn send(path: &OsStr, state: &str) -> io::Result<()> {
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Whether stderr is the journal (systemd names the stream it connected in `JOURNAL_STREAM`,
/// as `DEVICE:INODE`): the journal timestamps each line itself and shows no colours.
pub fn logs_to_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (dev, ino) = v.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    nix::sys::stat::fstat(io::stderr()).is_ok_and(|s| s.st_dev == dev && s.st_ino == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both address forms systemd uses reach a listening socket with the message as given.
    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("chaos-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let file = UnixDatagram::bind(&path).unwrap();
        let name = format!("chaos-notify-{}", std::process::id());
        let abstract_ = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = file.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let n = abstract_.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(send(path.as_os_str(), "READY=1").is_err(), "no listener: an error, not silence");
    }
}
