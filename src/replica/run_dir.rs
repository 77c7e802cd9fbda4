//! The private directory a run owns.

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Run directories are `pgclone-` and `RAND` random letters and digits (tempfile's alphabet); those kept for
/// inspection (--keep-run-tmp) `pgclone-kept-*`. Nothing else pgclone makes in a $TMPDIR has that shape (the
/// agent's `pgclone-agent.*` and the rsync daemon's `pgclone-rsyncd.*`, which a primary on this host puts here
/// too), so `reap_stale` touches nothing but run directories.
const PREFIX: &str = "pgclone-";
const KEPT: &str = "pgclone-kept-";
const RAND: usize = 6;

/// A private (0700) directory for one run (streamed WAL, the rsync secret, the fetched pg_control, the Unix
/// sockets of ssh forwards and bandwidth proxies),
/// removed when the run ends, however it ends.
///
/// Drop removes it on every path Rust unwinds through. For the one it cannot (`kill -9`), a reaper
/// waits on a pipe whose only writer is pgclone: the kernel closes it when pgclone dies, and the reaper
/// then removes the directory. The reaper is deliberately not tied to our life (no PDEATHSIG). When the
/// reaper dies too (the whole process tree killed at once, as Patroni cancels a replica method or a container
/// stops), the directory's lock is what tells later runs it is nobody's any more (see `reap_stale`): the run
/// holds it from before the directory is of any use until the run's last instant, so a free lock proves the
/// directory abandoned, however young it is.
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
        let (path, lock) = make_locked(parent, if keep { KEPT } else { PREFIX })?;
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

/// A new directory `prefix` + random in `parent`, and the flock(2) that marks it as a live run's. mkdir and
/// flock are two steps: in between, another run's `reap_stale` can lock the directory first and remove it. Then
/// the name no longer leads to the directory we locked (or the lock is taken), and we make another; once the
/// name is checked to be ours under our lock, no reaper can take it until we die.
fn make_locked(parent: &Path, prefix: &str) -> io::Result<(PathBuf, File)> {
    const TRIES: u32 = 10;
    for _ in 0..TRIES {
        let path = tempfile::Builder::new().prefix(prefix).rand_bytes(RAND).tempdir_in(parent)?.keep();
        let lock = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(e.into()),
        }
        let locked = lock.metadata()?;
        if std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == (locked.dev(), locked.ino())) {
            return Ok((path, lock));
        }
    }
    Err(io::Error::other(format!("{TRIES} new run directories in a row were removed as they were made")))
}

/// Whether `name` is a run directory's (`pgclone-` and `RAND` letters or digits), not one kept for inspection.
fn is_run_dir_name(name: &str) -> bool {
    name.strip_prefix(PREFIX).is_some_and(|r| r.len() == RAND && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Removes the run directories in `parent` that no run holds any more: ours (same owner), not kept for
/// inspection, and unlocked. A run holds its directory's lock from before it uses it to its death (see
/// `make_locked`), so an unlocked one was left by a run killed together with its reaper, however recently:
/// Patroni retries a failed replica method within seconds. Returns how many went.
pub fn reap_stale(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let me = rustix::process::geteuid().as_raw();
    let mut reaped = 0;
    for e in entries.flatten() {
        if !is_run_dir_name(&e.file_name().to_string_lossy()) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() || meta.uid() != me {
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
    use std::time::Duration;

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
    fn only_unlocked_run_dirs_are_reaped_however_young() {
        let top = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let d = top.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("000000010000000000000002"), "wal").unwrap();
            d
        };
        let stale = make("pgclone-abc123");
        let kept = make("pgclone-kept-ghi789");
        let agent = make("pgclone-agent.Xy12ab");
        let rsyncd = make("pgclone-rsyncd.Q1w2e3");
        let other = make("not-ours");
        let live = RunDir::create(top.path(), false).unwrap();
        let inspected = RunDir::create(top.path(), true).unwrap();
        assert!(is_run_dir_name(&live.path().file_name().unwrap().to_string_lossy()), "{}", live.path().display());
        assert_eq!(reap_stale(top.path()), 1);
        assert!(!stale.exists(), "nobody's, made a moment ago: reaped");
        for d in [&kept, &agent, &rsyncd, &other, &live.path().to_path_buf(), &inspected.path().to_path_buf()] {
            assert!(d.exists(), "{} must stay", d.display());
        }
        std::fs::remove_dir_all(inspected.path()).unwrap();
    }

    /// A reaper in a loop against runs making their directories: whenever it wins the race between a mkdir and
    /// its flock, the run must make another directory, never be handed one that is gone.
    #[test]
    fn a_run_dir_reaped_before_its_lock_is_made_again() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let top = tempfile::tempdir().unwrap();
        let (done, won) = (AtomicBool::new(false), AtomicUsize::new(0));
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    won.fetch_add(reap_stale(top.path()), Ordering::Relaxed);
                }
            });
            while std::time::Instant::now() < deadline && won.load(Ordering::Relaxed) < 3 {
                let (path, lock) = make_locked(top.path(), PREFIX).expect("a run directory");
                assert!(path.is_dir(), "a run was handed {}, which a reaper removed", path.display());
                std::fs::remove_dir(&path).unwrap();
                drop(lock);
            }
            done.store(true, Ordering::Relaxed);
        });
        println!("the reaper won the race {} times", won.load(Ordering::Relaxed));
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
