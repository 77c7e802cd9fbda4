//! The replica directory on this host: one run at a time, clearing it when asked, its WAL directory.

pub mod direct_io;
pub mod run_dir;
pub mod tablespace;

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{IoAt, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("another pgclone{holder} is already cloning into {dir}: wait for it to end, or stop it first")]
    Locked { dir: PathBuf, holder: String },
    #[error(transparent)]
    Io(#[from] IoAt),
}

/// An exclusive lock on the replica directory for the whole run: a second run into the same directory
/// fails at once instead of wiping or interleaving with the first. flock(2) on the directory itself needs
/// no lock file and is released by the kernel when we exit, however we exit.
pub struct ReplicaLock {
    _dir: File,
}

impl ReplicaLock {
    pub fn acquire(dir: &Path) -> Result<ReplicaLock, ReplicaError> {
        let f = File::open(dir).at("opening", dir)?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(ReplicaLock { _dir: f }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let ino = f.metadata().at("reading", dir)?.ino();
                let holder = std::fs::read_to_string("/proc/locks")
                    .ok()
                    .and_then(|locks| lock_holder(&locks, ino))
                    .map_or_else(String::new, |pid| format!(" (pid {pid})"));
                Err(ReplicaError::Locked { dir: dir.to_path_buf(), holder })
            }
            Err(e) => Err(IoAt::new("locking", dir, e.into()).into()),
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

/// Makes the directory unable to start until finalize puts a new `global/pg_control` in place: removes the old
/// one and syncs `global/`, so that the removal is on disk before any file of the new copy is: after a power
/// loss mid-copy, the directory must never start again as the old cluster over half-new files.
pub fn retire_control(replica: &Path) -> Result<(), IoAt> {
    let global = replica.join("global");
    let control = global.join("pg_control");
    match std::fs::remove_file(&control) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.at("removing", &control)?,
    }
    File::open(&global).and_then(|d| d.sync_all()).at("syncing", &global)
}

/// The signal files that make a server start in recovery (xlogrecovery.c, readRecoverySignalFile).
const SIGNALS: [&str; 2] = ["recovery.signal", "standby.signal"];

/// What makes this directory the standby (or the targeted recovery) it is, when it is one: its signal files
/// and its own `postgresql.auto.conf`, where `primary_conninfo` and the other recovery settings live (written
/// by ALTER SYSTEM, pg_basebackup -R or pgclone -R). A re-sync without -R keeps them, or the primary's
/// postgresql.auto.conf and no signal would start it as a second primary on the primary's timeline.
/// Regular files only: a link here is nobody's setting.
pub fn recovery_settings(replica: &Path) -> Vec<PathBuf> {
    let is_file = |name: &str| std::fs::symlink_metadata(replica.join(name)).is_ok_and(|m| m.is_file());
    if !SIGNALS.iter().any(|s| is_file(s)) {
        return Vec::new();
    }
    std::iter::once("postgresql.auto.conf").chain(SIGNALS).filter(|n| is_file(n)).map(PathBuf::from).collect()
}

/// Flushes everything written to the filesystem of `dir` so far: the removals of a --drop-existing or a
/// re-sync's prune reach the disk before the new copy's files do.
pub fn sync_filesystem(dir: &Path) -> Result<(), IoAt> {
    let d = File::open(dir).at("opening", dir)?;
    rustix::fs::syncfs(&d).map_err(io::Error::from).at("syncing the filesystem of", dir)
}

/// Creates a directory (and its parents) private to the owner, as PostgreSQL requires of its data
/// directory; an existing one is left as it is.
pub fn mkdir(path: &Path) -> Result<(), IoAt> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).at("creating directory", path)
}

/// Deletes everything inside `dir` (--drop-existing), never `dir` itself and never through a symlink:
/// a pg_wal link to another directory goes, its target stays. Returns how many entries went.
pub fn clear(dir: &Path) -> Result<usize, IoAt> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(IoAt::new("reading", dir, e)),
    };
    let mut n = 0;
    for e in entries {
        let e = e.at("reading", dir)?;
        let path = e.path();
        let is_dir = e.file_type().at("reading", &path)?.is_dir();
        if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.at("removing", &path)?;
        n += 1;
    }
    Ok(n)
}

/// Makes `replica/pg_wal` a symlink to `waldir` (--replica-waldir), as initdb -X and pg_basebackup
/// --waldir do; PostgreSQL follows it. The target is absolute so the link survives moving the replica.
/// A re-run replaces whatever pg_wal was: its contents are stale WAL that our stream supersedes.
pub fn link_waldir(replica: &Path, waldir: &Path) -> Result<(), IoAt> {
    mkdir(waldir)?;
    let target = std::path::absolute(waldir).at("resolving", waldir)?;
    let link = replica.join("pg_wal");
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.is_symlink() && std::fs::read_link(&link).ok().as_deref() == Some(&target) => return Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link).at("removing", &link)?,
        Ok(_) => std::fs::remove_file(&link).at("removing", &link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&target, &link).at("creating symlink", &link)
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
    fn clear_removes_contents_but_never_follows_links() {
        let (replica, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir_all(replica.path().join("base/1")).unwrap();
        std::fs::write(replica.path().join("base/1/123"), b"x").unwrap();
        std::fs::write(replica.path().join("PG_VERSION"), b"15").unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), replica.path().join("pg_wal")).unwrap();
        assert_eq!(clear(replica.path()).unwrap(), 3);
        assert!(replica.path().is_dir());
        assert_eq!(std::fs::read_dir(replica.path()).unwrap().count(), 0);
        assert!(outside.path().join("keep").exists(), "a symlink's target is not ours to delete");
        assert_eq!(clear(&replica.path().join("absent")).unwrap(), 0);
    }

    #[test]
    fn a_standbys_own_settings_are_its_signal_files_and_auto_conf() {
        let (d, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(d.path().join("postgresql.auto.conf"), "primary_conninfo = 'host=a'\n").unwrap();
        assert!(recovery_settings(d.path()).is_empty(), "no signal file: not a standby");
        std::fs::write(outside.path().join("x"), "").unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), d.path().join("standby.signal")).unwrap();
        assert!(recovery_settings(d.path()).is_empty(), "a link is nobody's signal");
        std::fs::remove_file(d.path().join("standby.signal")).unwrap();
        std::fs::write(d.path().join("standby.signal"), "").unwrap();
        let kept = recovery_settings(d.path());
        assert_eq!(kept, [PathBuf::from("postgresql.auto.conf"), PathBuf::from("standby.signal")]);
    }

    #[test]
    fn waldir_link_is_absolute() {
        let (replica, wal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        link_waldir(replica.path(), &wal.path().join("wal")).unwrap();
        let t = std::fs::read_link(replica.path().join("pg_wal")).unwrap();
        assert!(t.is_absolute());
        assert!(replica.path().join("pg_wal").is_dir());
    }
}
