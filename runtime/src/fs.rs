//! Files that must never be seen half-written, and the lock on a run directory.
//!
//! [`write_atomic`] writes to a temporary name in the destination directory, fsyncs it, renames
//! it over the destination and fsyncs the directory, so a reader (or a restart after a crash)
//! sees the old file or the new one, never a mix. On any failure the temporary file is removed:
//! a full disk leaves nothing behind but the last good file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Suffix of temporary files; [`remove_stale_temps`] removes leftovers with it.
pub const TEMP_SUFFIX: &str = ".tmp";

/// A failed file operation, with the path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    /// What was being done: `create temporary file`, `write`, `sync`, or `rename temporary file
    /// into place as`.
    pub action: &'static str,
    /// The file: the temporary one while it is created, written and synced; the destination
    /// when it is renamed.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `path` atomically; `fill` writes the contents into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<&File>) -> io::Result<()>,
) -> Result<(), FileError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}{TEMP_SUFFIX}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let at = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| FileError {
            action,
            path: p,
            source,
        }
    };
    let written = (|| {
        let f = File::create(&tmp).map_err(at("create temporary file", &tmp))?;
        {
            let mut w = io::BufWriter::new(&f);
            fill(&mut w)
                .and_then(|()| w.flush())
                .map_err(at("write", &tmp))?;
        }
        f.sync_all().map_err(at("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(at("rename temporary file into place as", path))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// Writes `data` to `path` atomically.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FileError> {
    write_atomic_with(path, |w| w.write_all(data))
}

/// Makes a rename or a new file in `dir` durable (best effort: not every file system allows
/// opening a directory).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes temporary files that a killed writer left in `dir` (names starting with `.` and ending
/// in [`TEMP_SUFFIX`]). Call it only while holding the directory's [`DirLock`].
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.')
            && name.ends_with(TEMP_SUFFIX)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Runs `op` up to `attempts` times, sleeping `pause`, then twice as long, between tries; returns
/// the last error. For writes that may fail for a moment (a full disk that a log rotation is
/// about to free, a network file system hiccup).
pub fn retry<T, E>(
    attempts: u32,
    pause: Duration,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut wait = pause;
    let mut tries = 0;
    loop {
        tries += 1;
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if tries >= attempts.max(1) => return Err(e),
            Err(_) => {
                std::thread::sleep(wait);
                wait *= 2;
            }
        }
    }
}

/// An exclusive lock on a directory, held while the value lives (`flock` on `DIR/.lock`; the
/// kernel releases it when the process dies, so a killed coordinator leaves no stale lock).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = ".lock";

impl DirLock {
    /// Takes the lock on `dir` (created if missing), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this function owns.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let e = io::Error::last_os_error();
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(if e.kind() == io::ErrorKind::WouldBlock {
                    format!(
                        "{} is in use by another coordinator{}; give each run its own --out",
                        dir.display(),
                        if holder.is_empty() {
                            String::new()
                        } else {
                            format!(" (pid {holder})")
                        }
                    )
                } else {
                    format!("locking {}: {e}", path.display())
                });
            }
        }
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carry-fs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_whole_and_cleans_up_on_failure() {
        let d = scratch("atomic");
        let p = d.join("f.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let e = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"two", "the old file is intact");
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["f.bin".to_string()], "no temporary file left");
        std::fs::write(d.join(".x.1.2.tmp"), b"").unwrap();
        assert_eq!(remove_stale_temps(&d), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_is_locked_once() {
        let d = scratch("lock");
        let a = DirLock::acquire(&d).unwrap();
        let e = DirLock::acquire(&d).unwrap_err();
        assert!(e.contains("in use by another coordinator"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(a);
        DirLock::acquire(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn retry_gives_up_after_the_attempts() {
        let mut n = 0;
        let r: Result<(), &str> = retry(3, Duration::from_millis(1), || {
            n += 1;
            Err("no")
        });
        assert_eq!((r, n), (Err("no"), 3));
        let mut m = 0;
        assert_eq!(
            retry(3, Duration::from_millis(1), || {
                m += 1;
                if m < 2 { Err("once") } else { Ok(m) }
            }),
            Ok(2)
        );
    }
}
