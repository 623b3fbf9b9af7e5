//! The daemon's own files, opened without following links it did not make: the state
//! directory, its lock file and the control socket's path. Each refuses, naming the path and
//! what is there, rather than taking over or deleting something that is not the daemon's.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Something is at the path that the daemon must not use or replace.
    #[error("{path}: {why}")]
    Refused { path: String, why: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: io::Error },
}

fn refused(path: &Path, why: impl Into<String>) -> FsError {
    FsError::Refused { path: path.display().to_string(), why: why.into() }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError {
    move |source| FsError::Io { what, path: path.display().to_string(), source }
}

/// What a file type is, for an error message.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device"
    }
}

/// Makes the state directory (mode 0700) if it is missing, else checks that it is a directory
/// (not a link to one) owned by the daemon's user (root), and makes its mode 0700. Whoever else
/// could write there could forge the state the next daemon trusts.
pub fn state_dir(dir: &Path) -> Result<(), FsError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error("creating", dir))?
        }
        Err(e) => return Err(io_error("reading", dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_error("reading", dir))?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(refused(
            dir,
            format!("the state directory is {}, not a directory: refusing to use it", kind(meta.file_type())),
        ));
    }
    if meta.uid() != euid {
        return Err(refused(
            dir,
            format!("the state directory is owned by uid {}, not {euid}: refusing to use it", meta.uid()),
        ));
    }
    // The mode is set through a descriptor of what was checked, so a directory swapped in
    // since is not the one changed.
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(io_error("opening", dir))?;
    let now = opened.metadata().map_err(io_error("reading", dir))?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        return Err(refused(dir, "the state directory changed while it was checked"));
    }
    if now.mode() & 0o7777 != 0o700 {
        nix::sys::stat::fchmod(&opened, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .map_err(|e| io_error("chmod 0700", dir)(e.into()))?;
    }
    Ok(())
}

/// Opens (creating, mode 0600, never truncating) the lock file, refusing a symbolic link or
/// anything but a regular file.
pub fn lock_file(path: &Path) -> Result<File, FsError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused(path, "the lock file is a symbolic link: refusing to open it"),
            _ => io_error("opening", path)(e),
        })?;
    let meta = file.metadata().map_err(io_error("reading", path))?;
    if !meta.is_file() {
        return Err(refused(path, format!("the lock file is {}, not a regular file", kind(meta.file_type()))));
    }
    Ok(file)
}

/// Makes room for the control socket at `path`: nothing there, or a stale socket (one that
/// refuses connections), which is removed. A live socket, a symbolic link or anything else is
/// refused, and left as it is.
pub fn clear_socket_path(path: &Path) -> Result<(), FsError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("reading", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(refused(
            path,
            format!(
                "the control socket's path is {}, not a socket: refusing to replace it (remove it, or set \
                 `socket` to another path)",
                kind(meta.file_type())
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(refused(path, "another chaos-daemon is already serving this socket")),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(io_error("removing the stale socket", path))
        }
        Err(e) => Err(refused(path, format!("a socket that is neither served nor stale ({e}): not replacing it"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("chaos-fsutil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let dir = scratch("socket");
        let path = dir.join("s");
        clear_socket_path(&path).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        clear_socket_path(&path).unwrap();
        assert!(!path.exists(), "the stale socket is gone");

        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = clear_socket_path(&path).unwrap_err().to_string();
        assert!(e.contains("already serving"), "{e}");
        drop(live);
        std::fs::remove_file(&path).unwrap();

        std::fs::write(&path, "keep").unwrap();
        let e = clear_socket_path(&path).unwrap_err().to_string();
        assert!(e.contains("a regular file, not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
        std::fs::remove_file(&path).unwrap();

        std::os::unix::fs::symlink(dir.join("nowhere"), &path).unwrap();
        let e = clear_socket_path(&path).unwrap_err().to_string();
        assert!(e.contains("a symbolic link, not a socket"), "{e}");
        assert!(path.symlink_metadata().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_file_is_never_a_link() {
        let dir = scratch("lock");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let lock = dir.join("lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let e = lock_file(&lock).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(&lock).unwrap();
        // A lock file of its own is created, then reused without truncation.
        lock_file(&lock).unwrap();
        std::fs::write(&lock, "x").unwrap();
        lock_file(&lock).unwrap();
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), "x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_dir_is_made_private_or_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("state");
        let state = dir.join("a/state");
        state_dir(&state).unwrap();
        assert_eq!(state.metadata().unwrap().permissions().mode() & 0o7777, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        state_dir(&state).unwrap();
        assert_eq!(state.metadata().unwrap().permissions().mode() & 0o7777, 0o700);

        let target = dir.join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = state_dir(&link).unwrap_err().to_string();
        assert!(e.contains("a symbolic link, not a directory"), "{e}");
        assert_eq!(target.metadata().unwrap().permissions().mode() & 0o7777, 0o755);

        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(state_dir(&file).unwrap_err().to_string().contains("a regular file"));

        // Another user's directory can only be made by root (the unit tests also run unprivileged).
        if nix::unistd::geteuid().is_root() {
            let theirs = dir.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(nix::unistd::geteuid().as_raw() + 1), None).unwrap();
            let e = state_dir(&theirs).unwrap_err().to_string();
            assert!(e.contains("owned by uid"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
