//! The private directory a run owns.

use std::io;
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
    /// Creates it in `parent`. `keep`: leave it for inspection (--keep-run-tmp).
    pub fn create(parent: &Path, keep: bool) -> io::Result<RunDir> {
        let path = tempfile::Builder::new().prefix("pgclone-").tempdir_in(parent)?.keep();
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
}
