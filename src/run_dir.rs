//! Local directories a run owns: its private run directory, and the lock on the replica directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A private (0700) directory for one run (streamed WAL, the rsync secret, the fetched pg_control),
/// removed when the run ends, however it ends.
///
/// Drop removes it on every path Rust unwinds through. For the one it cannot (`kill -9`), a reaper
/// waits on a pipe whose only writer is pgclone: the kernel closes it when pgclone dies, and the reaper
/// then removes the directory. The reaper is deliberately not tied to our life (no PDEATHSIG).
pub struct RunDir {
    path: PathBuf,
    keep: bool,
    /// Write end of the reaper's pipe; closing it lets the reaper finish.
    _reaper: Option<std::process::ChildStdin>,
}

impl RunDir {
    /// `keep`: leave the directory for inspection (--keep-run-tmp).
    pub fn create(keep: bool) -> io::Result<RunDir> {
        let path = tempfile::Builder::new().prefix("pgclone-").tempdir()?.keep();
        if keep {
            tracing::info!("keeping the run directory {}", path.display());
            return Ok(RunDir { path, keep, _reaper: None });
        }
        let mut reaper = Command::new("sh")
            .args(["-c", "read _ignored; rm -rf -- \"$1\"", "pgclone-reaper"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C meant for pgclone must not reach the reaper.
            .process_group(0)
            .spawn()?;
        Ok(RunDir { _reaper: reaper.stdin.take(), path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another pgclone{holder} is already cloning into {dir}")]
    Held { dir: PathBuf, holder: String },
    #[error("locking {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

/// An exclusive lock on the replica directory for the whole run: a second run into the same directory
/// fails at once instead of wiping or interleaving with the first. flock(2) on the directory itself needs
/// no lock file and is released by the kernel when we exit, however we exit.
pub struct ReplicaLock {
    _dir: File,
}

impl ReplicaLock {
    pub fn acquire(dir: &Path) -> Result<ReplicaLock, LockError> {
        let io_err = |source| LockError::Io { dir: dir.to_path_buf(), source };
        let f = File::open(dir).map_err(io_err)?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(ReplicaLock { _dir: f }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let ino = f.metadata().map_err(io_err)?.ino();
                let holder = std::fs::read_to_string("/proc/locks")
                    .ok()
                    .and_then(|locks| lock_holder(&locks, ino))
                    .map_or_else(String::new, |pid| format!(" (pid {pid})"));
                Err(LockError::Held { dir: dir.to_path_buf(), holder })
            }
            Err(e) => Err(io_err(e.into())),
        }
    }
}

/// Finds the pid holding a FLOCK on inode `ino` in /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`: the device is major:minor:inode).
fn lock_holder(locks: &str, ino: u64) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (kind, pid, dev) = (f.get(1)?, f.get(4)?, f.get(5)?);
        (*kind == "FLOCK" && dev.rsplit(':').next()?.parse::<u64>().ok()? == ino).then(|| pid.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_and_names_the_holder_pid() {
        let d = tempfile::tempdir().unwrap();
        let _first = ReplicaLock::acquire(d.path()).unwrap();
        let err = ReplicaLock::acquire(d.path()).err().expect("second lock must fail").to_string();
        assert!(err.contains(&format!("(pid {})", std::process::id())), "{err}");
        assert!(err.contains("already cloning into"), "{err}");
    }

    #[test]
    fn lock_holder_parses_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 00:1f:42 0 EOF\n2: FLOCK  ADVISORY  WRITE 1234 fd:01:42 0 EOF\n";
        assert_eq!(lock_holder(locks, 42), Some(1234));
        assert_eq!(lock_holder(locks, 7), None);
    }

    #[test]
    fn run_dir_is_removed_on_drop_and_by_the_reaper() {
        let r = RunDir::create(false).unwrap();
        let p = r.path().to_path_buf();
        assert!(p.is_dir());
        drop(r);
        assert!(!p.exists());
        // The reaper's pipe closing (as when pgclone is killed) removes the directory too.
        let mut r = RunDir::create(false).unwrap();
        let p = r.path().to_path_buf();
        r.keep = true;
        drop(r);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while p.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!p.exists(), "reaper did not remove {}", p.display());
    }
}
