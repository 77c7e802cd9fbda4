//! The private directory a run owns.

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// Run directories are `pgclone-*`; those kept for inspection (--keep-run-tmp) `pgclone-kept-*`.
const PREFIX: &str = "pgclone-";
const KEPT: &str = "pgclone-kept-";

/// A private (0700) directory for one run (streamed WAL, the rsync secret, the fetched pg_control, the Unix
/// sockets of ssh forwards and bandwidth proxies),
/// removed when the run ends, however it ends.
///
/// Drop removes it on every path Rust unwinds through. For the one it cannot (`kill -9`), a reaper
/// waits on a pipe whose only writer is pgclone: the kernel closes it when pgclone dies, and the reaper
/// then removes the directory. The reaper is deliberately not tied to our life (no PDEATHSIG). When the
/// reaper dies too (the whole process tree killed at once, as Patroni cancels a replica method or a container
/// stops), the directory's lock is what tells later runs it is nobody's any more (see `reap_stale`).
pub struct RunDir {
    path: PathBuf,
    keep: bool,
    /// flock(2) on the directory for as long as the run lives; the kernel releases it however the run ends.
    _lock: File,
    /// Write end of the reaper's pipe; closing it lets the reaper finish.
    _reaper: Option<std::process::ChildStdin>,
}

impl RunDir {
    /// Creates it in `parent`. `keep`: leave it for inspection (--keep-run-tmp).
    pub fn create(parent: &Path, keep: bool) -> io::Result<RunDir> {
        let path = tempfile::Builder::new().prefix(if keep { KEPT } else { PREFIX }).tempdir_in(parent)?.keep();
        let lock = File::open(&path)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        if keep {
            tracing::info!("keeping the run directory {}", path.display());
            return Ok(RunDir { path, keep, _lock: lock, _reaper: None });
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
        Ok(RunDir { _reaper: reaper.stdin.take(), path, keep, _lock: lock })
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

/// Removes the run directories in `parent` that no run holds any more: ours (same owner), not kept for
/// inspection, unlocked, and older than a minute (a run locks its directory right after creating it). Their runs
/// were killed together with their reapers and left their streamed WAL behind. Returns how many went.
pub fn reap_stale(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let me = rustix::process::geteuid().as_raw();
    let recent = SystemTime::now() - Duration::from_secs(60);
    let mut reaped = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(PREFIX) || name.starts_with(KEPT) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() || meta.uid() != me || meta.modified().map_or(true, |m| m > recent) {
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        if rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
            && std::fs::remove_dir_all(&path).is_ok()
        {
            tracing::info!("removed {}, left behind by a run that was killed", path.display());
            reaped += 1;
        }
    }
    reaped
}

/// The directories a run created on its way to one it was given (--temp-waldir), removed again when the run
/// ends, deepest first and only while empty: a run leaves the file system as it found it, no more.
pub struct MadeDirs(Vec<PathBuf>);

impl MadeDirs {
    /// Creates `path` and its missing parents, private to the owner.
    pub fn create(path: &Path) -> io::Result<MadeDirs> {
        let missing = path.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists());
        let made = MadeDirs(missing.map(Path::to_path_buf).collect());
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        Ok(made)
    }
}

impl Drop for MadeDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_is_removed_on_drop_and_by_the_reaper() {
        let r = RunDir::create(&std::env::temp_dir(), false).unwrap();
        let p = r.path().to_path_buf();
        assert!(p.is_dir());
        drop(r);
        assert!(!p.exists());
        // The reaper's pipe closing (as when pgclone is killed) removes the directory too.
        let mut r = RunDir::create(&std::env::temp_dir(), false).unwrap();
        let p = r.path().to_path_buf();
        r.keep = true;
        drop(r);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while p.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!p.exists(), "reaper did not remove {}", p.display());
    }

    #[test]
    fn only_unlocked_old_run_dirs_are_reaped() {
        let top = tempfile::tempdir().unwrap();
        let make = |name: &str, age: u64| {
            let d = top.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("000000010000000000000002"), "wal").unwrap();
            File::open(&d).unwrap().set_modified(SystemTime::now() - Duration::from_secs(age)).unwrap();
            d
        };
        let stale = make("pgclone-abc123", 3600);
        let young = make("pgclone-def456", 0);
        let kept = make("pgclone-kept-ghi789", 3600);
        let other = make("not-ours", 3600);
        let live = RunDir::create(top.path(), false).unwrap();
        File::open(live.path()).unwrap().set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
        assert_eq!(reap_stale(top.path()), 1);
        assert!(!stale.exists(), "nobody's: reaped");
        for d in [&young, &kept, &other, &live.path().to_path_buf()] {
            assert!(d.exists(), "{} must stay", d.display());
        }
    }

    #[test]
    fn made_dirs_go_and_found_ones_stay() {
        let top = tempfile::tempdir().unwrap();
        let made = MadeDirs::create(&top.path().join("a/b/c")).unwrap();
        assert!(top.path().join("a/b/c").is_dir());
        std::fs::write(top.path().join("a/keep"), "x").unwrap();
        drop(made);
        assert!(!top.path().join("a/b").exists(), "made and empty: removed");
        assert!(top.path().join("a/keep").exists(), "a directory holding something stays");
        let found = MadeDirs::create(&top.path().join("a")).unwrap();
        drop(found);
        assert!(top.path().join("a").is_dir(), "found, so kept");
    }
}
