//! The socket file of a Unix listener (`--listen unix:PATH`), from bind to
//! removal.
//!
//! * A file left by a process that died is *stale*: nothing accepts on it,
//!   so it is replaced. A socket a live process accepts on is refused,
//!   unless `--unix-takeover` asks to replace it (a zero-downtime restart).
//! * The socket is bound under a temporary name next to the path, given its
//!   `--unix-permissions`, then renamed over the path: rename(2) is atomic,
//!   so a client connecting at any moment finds either the old listener or
//!   the new one, never no file and never a file with the umask's mode.
//! * At shutdown the file is removed only if it is still the one bound
//!   here: after a takeover the path belongs to the new process.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::UnixListen;

/// A bound Unix listener and the socket file it owns; dropping the last
/// reference removes the file (if it is still this listener's).
#[derive(Debug)]
pub(crate) struct UnixBinding {
    /// The listening socket; each event loop accepts on a clone of it.
    listener: UnixListener,
    /// The path clients connect to, as `CLIENT LIST` shows it.
    path: Arc<str>,
    /// The socket file's device and inode once bound: who owns the path.
    file_id: (u64, u64),
}

/// Why the socket could not be bound; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UnixBindError {
    /// A live process accepts on the path.
    #[error("{path} is the socket of a running process (another respool?): stop it first, or start with --unix-takeover to replace it without downtime")]
    Live {
        /// The path.
        path: String,
    },
    /// The path is something else than a socket.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: String,
    },
    /// The OS refused a step.
    #[error("cannot listen on unix:{path}: {step}: {source}")]
    Io {
        /// The path.
        path: String,
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl UnixBinding {
    /// Binds `settings.path`, replacing a stale socket file (or a live one
    /// with `--unix-takeover`); see the module docs.
    pub fn bind(settings: &UnixListen) -> Result<Arc<UnixBinding>, UnixBindError> {
        let path = &settings.path;
        let shown = path.display().to_string();
        let io_error = |step| {
            let path = shown.clone();
            move |source| UnixBindError::Io { path, step, source }
        };
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("looking at the path")(e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(UnixBindError::NotASocket { path: shown })
            }
            Ok(_) => {
                // Someone accepting there answers a connect; a stale file
                // refuses it.
                if UnixStream::connect(path).is_ok() && !settings.takeover {
                    return Err(UnixBindError::Live { path: shown });
                }
            }
        }
        let temporary = temporary_name(path);
        // Left by a process of the same id that died mid-start.
        let _ = fs::remove_file(&temporary);
        let listener = UnixListener::bind(&temporary).map_err(io_error("binding"))?;
        let placed = (|| {
            if let Some(mode) = settings.permissions {
                fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
                    .map_err(io_error("setting --unix-permissions"))?;
            }
            fs::rename(&temporary, path).map_err(io_error("renaming it into place"))?;
            let meta = fs::symlink_metadata(path).map_err(io_error("looking at the path"))?;
            listener
                .set_nonblocking(true)
                .map_err(io_error("setting it non-blocking"))?;
            Ok((meta.dev(), meta.ino()))
        })();
        match placed {
            Ok(file_id) => Ok(Arc::new(UnixBinding {
                listener,
                path: shown.into(),
                file_id,
            })),
            Err(e) => {
                let _ = fs::remove_file(&temporary);
                Err(e)
            }
        }
    }

    /// A tokio listener on this socket, for one event loop (called inside
    /// that loop's runtime). Several loops accepting on one socket each take
    /// whichever connection they get to first.
    pub fn listener(&self) -> io::Result<tokio::net::UnixListener> {
        tokio::net::UnixListener::from_std(self.listener.try_clone()?)
    }

    /// The path clients connect to.
    pub fn path(&self) -> &Arc<str> {
        &self.path
    }
}

impl Drop for UnixBinding {
    fn drop(&mut self) {
        let path = Path::new(&*self.path);
        match fs::symlink_metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.file_id => {
                if let Err(e) = fs::remove_file(path) {
                    tracing::warn!(path = %self.path, error = %e, "could not remove the Unix socket file");
                }
            }
            // Replaced by a newer respool (--unix-takeover) or removed by
            // hand: not ours to remove.
            _ => {
                tracing::info!(path = %self.path, "the Unix socket file is no longer ours; leaving it")
            }
        }
    }
}

/// `PATH.<pid>.new`, next to the path, so the rename stays on one file
/// system and two processes never share the name.
fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(path: &Path) -> UnixListen {
        UnixListen {
            path: path.to_path_buf(),
            permissions: Some(0o600),
            takeover: false,
        }
    }

    #[test]
    fn binds_replaces_stale_files_refuses_live_ones_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let first = UnixBinding::bind(&settings(&path)).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Live: refused, and the live socket is left alone.
        let e = UnixBinding::bind(&settings(&path)).unwrap_err();
        assert!(matches!(e, UnixBindError::Live { .. }), "{e}");
        assert!(e.to_string().contains("--unix-takeover"), "{e}");
        assert!(UnixStream::connect(&path).is_ok());

        // Takeover: the path is the new socket's, and the old one's drop
        // leaves it there.
        let takeover = UnixListen {
            takeover: true,
            ..settings(&path)
        };
        let second = UnixBinding::bind(&takeover).unwrap();
        drop(first);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists(), "removed by its owner");

        // Stale: a socket file nobody accepts on is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let third = UnixBinding::bind(&settings(&path)).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(third);

        // Not a socket: never replaced.
        fs::write(&path, b"data").unwrap();
        let e = UnixBinding::bind(&settings(&path)).unwrap_err();
        assert!(matches!(e, UnixBindError::NotASocket { .. }), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"data");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
