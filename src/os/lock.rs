//! One writer per directory: an advisory lock (`flock`) on `DIR/.kiln.lock`, held for as long
//! as the [`DirLock`] lives (and released by the kernel when the process dies, however it
//! dies). The holder writes who it is into the file, so that a second writer's error can name
//! it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a locked directory.
pub const LOCK_FILE: &str = ".kiln.lock";

/// A held lock on a directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    /// The locked directory.
    pub dir: PathBuf,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("`{dir}` is in use by another kiln process ({holder}); wait for it to finish or stop it first (two writers would mix their results)")]
    Busy {
        /// The directory.
        dir: PathBuf,
        /// Who holds it, as it wrote itself into the lock file.
        holder: String,
    },
    /// The lock file cannot be created or locked.
    #[error("cannot lock `{}`: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How a directory is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The only writer (`kiln train`, `kiln sweep`).
    Exclusive,
    /// One of several cooperating writers (`kiln run` tasks of one cluster job, each of
    /// which locks its own trial exclusively); excludes exclusive holders.
    Shared,
}

impl DirLock {
    /// Lock `dir` (created if missing) without waiting. `what` describes this process for
    /// the error another writer will see (e.g. "kiln train --resume runs/x").
    pub fn acquire(dir: &Path, mode: Mode, what: &str) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let got = match mode {
            Mode::Exclusive => file.try_lock(),
            Mode::Shared => file.try_lock_shared(),
        };
        match got {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Busy {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "one or more `kiln run` tasks of a cluster job".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        if mode == Mode::Exclusive {
            // Who holds it, for the next writer's error message. Shared holders leave the
            // file empty (several would overwrite each other).
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let me = format!(
                "pid {}, `{what}`, since unix time {since}",
                std::process::id()
            );
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            file.write_all(me.as_bytes()).map_err(io)?;
        } else if file.metadata().map_err(io)?.len() > 0 {
            // A former exclusive holder's note: it no longer holds the lock.
            let _ = file.set_len(0);
        }
        Ok(DirLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_told_who_holds_the_directory() {
        let dir = std::env::temp_dir().join(format!("kiln-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DirLock::acquire(&dir, Mode::Exclusive, "kiln train x").unwrap();
        let err = DirLock::acquire(&dir, Mode::Exclusive, "kiln train y").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Busy { .. }), "{msg}");
        assert!(msg.contains("kiln train x"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(DirLock::acquire(&dir, Mode::Shared, "kiln run").is_err());
        drop(first);
        // Shared holders coexist and keep an exclusive writer out.
        let a = DirLock::acquire(&dir, Mode::Shared, "kiln run").unwrap();
        let b = DirLock::acquire(&dir, Mode::Shared, "kiln run").unwrap();
        let err = DirLock::acquire(&dir, Mode::Exclusive, "kiln sweep").unwrap_err();
        assert!(err.to_string().contains("kiln run"), "{err}");
        drop((a, b));
        DirLock::acquire(&dir, Mode::Exclusive, "kiln sweep").unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
