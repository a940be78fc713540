//! Unix socket listeners (`listen: unix:/cloudsql/db/.s.PGSQL.5432`), the way cloud-sql-proxy
//! offers them: the parent directory is created, a stale socket left by a dead process is
//! replaced, a socket some live process still listens on is refused, and the file is removed
//! again when legate stops.

use super::BindError;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

pub fn bind(what: &str, path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    let shown = format!("unix:{}", path.display());
    let fail = |source: io::Error, hint: &str| BindError {
        hint: hint.to_string(),
        ..BindError::new(what, &shown, source)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(
                e,
                &format!(
                    " (creating the directory {}: mount a writable volume, e.g. an emptyDir, there)",
                    dir.display()
                ),
            )
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(fail(
                io::Error::from(io::ErrorKind::AddrInUse),
                " (a running process is listening on this socket; stop it or choose another path)",
            )),
            Err(_) => {
                // Nobody answers: a socket left behind by a process that died.
                tracing::info!(listener = what, path = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path).map_err(|e| fail(e, " (removing the stale socket)"))?;
            }
        },
        Ok(_) => {
            return Err(fail(
                io::Error::from(io::ErrorKind::AlreadyExists),
                " (the path exists and is not a socket; legate does not remove it)",
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            " (the directory is not writable by this user)"
        } else {
            ""
        };
        fail(e, hint)
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(e, " (setting socket_mode)"))?;
    listener.set_nonblocking(true).map_err(|e| fail(e, ""))?;
    Ok(listener)
}

/// A reload that changed `socket_mode` on a listener it kept.
pub fn set_mode(path: &Path, mode: u32) {
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot change socket_mode");
    }
}

/// Removes a socket file legate created, if it is still a socket.
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_replaced_live_refused_file_kept() {
        let dir = std::env::temp_dir().join(format!("legate-unix-{}", std::process::id()));
        let path = dir.join("sub/.s.PGSQL.5432");
        let live = bind("t", &path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind("t", &path, 0o660).unwrap_err().to_string();
        assert!(err.contains("a running process is listening"), "{err}");
        drop(live); // the file stays: a stale socket
        let _again = bind("t", &path, 0o600).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let err = bind("t", &plain, 0o660).unwrap_err().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert!(plain.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
