//! The files pgclone writes itself into a data directory (backup_label, tablespace_map, backup_manifest,
//! pg_control and its temporary name, standby.signal, postgresql.auto.conf, archive status marks). Their names
//! are known to anyone, and a stranger's symbolic link may stand in their place: recreated from the primary's
//! listing (basebackup.c sends links as links) or left in a stale directory. Writing through it would write
//! wherever it points, as this host's user. So these files are made anew without following a link.
//!
//! And how a copy is made durable before pg_control goes in place: one syncfs(2) per filesystem, or an fsync
//! of every file and directory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{IoAt, IoContext};

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Creates `path` anew, readable by its owner only (0600, PostgreSQL's pg_file_create_mode): whatever is there
/// but a directory goes first (a link itself, never its target), then the file is made with O_EXCL and
/// O_NOFOLLOW, which fail rather than follow a link that appeared meanwhile.
pub fn create_new(path: &Path) -> Result<File, IoAt> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => std::fs::remove_file(path).at("removing", path)?,
        _ => {}
    }
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nofollow()).open(path).at("creating", path)
}

/// Opens the regular file `path` to append to (postgresql.auto.conf for -R); anything else in its place is
/// replaced by a new file, as `create_new` makes it.
pub fn append(path: &Path) -> Result<File, IoAt> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => OpenOptions::new().append(true).custom_flags(nofollow()).open(path).at("opening", path),
        _ => create_new(path),
    }
}

/// Opens an existing regular file of the replica to read, never through a link.
pub fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(nofollow()).open(path)
}

/// Gives an existing file of the replica the length `len`, never through a link.
pub fn set_len(path: &Path, len: u64) -> std::io::Result<()> {
    OpenOptions::new().write(true).custom_flags(nofollow()).open(path)?.set_len(len)
}

/// How the copy is made durable (pg_basebackup's --sync-method, recovery_init_sync_method).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMethod {
    /// fsync(2) of every file and directory of the tree.
    Fsync,
    /// One syncfs(2) per filesystem: far faster, but only Linux 5.8 and later report a write-back error
    /// through it (before, it flushed what it could and returned 0; Linux commit 735e4ae5ba28, "vfs: track per-sb
    /// writeback errors and report them to syncfs"), and a copy whose write-back failed must not get its
    /// pg_control.
    Syncfs,
}

impl SyncMethod {
    /// syncfs where this kernel reports write-back errors through it, else fsync.
    pub fn for_this_kernel() -> SyncMethod {
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        if reports_syncfs_errors(&release) {
            SyncMethod::Syncfs
        } else {
            tracing::info!(
                "Linux {release} reports no write-back error through syncfs (5.8 and later do): fsync of every file"
            );
            SyncMethod::Fsync
        }
    }

    /// Makes everything under `dir` durable: its filesystem (syncfs), or each file and directory of the tree,
    /// never through a link (fsync; the roots a caller gives are its own: the data directory, pg_wal's target,
    /// the tablespace locations).
    pub fn sync(self, dir: &Path) -> Result<(), IoAt> {
        match self {
            SyncMethod::Syncfs => {
                let f = File::open(dir).at("opening", dir)?;
                rustix::fs::syncfs(&f).map_err(std::io::Error::from).at("syncing the filesystem of", dir)
            }
            SyncMethod::Fsync => fsync_tree(dir),
        }
    }
}

/// Whether a kernel release (`uname -r`: "6.1.0-18-amd64", "5.8.0") is Linux 5.8 or later.
fn reports_syncfs_errors(release: &str) -> bool {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (5, 8)
}

/// fsync of every regular file and directory under `root` (directories after their contents, as
/// PostgreSQL's fsync_pgdata), descending into no link.
fn fsync_tree(root: &Path) -> Result<(), IoAt> {
    let mut dirs = vec![root.to_path_buf()];
    let mut synced = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).at("reading", &dir)? {
            let entry = entry.at("reading", &dir)?;
            let path = entry.path();
            let kind = entry.file_type().at("reading", &path)?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                open_read(&path).and_then(|f| f.sync_all()).at("syncing", &path)?;
            }
        }
        synced.push(dir);
    }
    for dir in synced.iter().rev() {
        File::open(dir).and_then(|d| d.sync_all()).at("syncing", dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn syncfs_reports_errors_from_linux_5_8() {
        for (release, yes) in [
            ("6.1.0-18-amd64", true),
            ("5.8.0", true),
            ("5.10.209", true),
            ("5.7.19", false),
            ("4.19.0-26-amd64", false),
        ] {
            assert_eq!(reports_syncfs_errors(release), yes, "{release}");
        }
        assert!(!reports_syncfs_errors("unknown"));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.path().join("a/link")).unwrap();
        SyncMethod::Fsync.sync(d.path()).unwrap();
        SyncMethod::Syncfs.sync(d.path()).unwrap();
    }

    #[test]
    fn a_link_in_the_place_of_a_file_is_replaced_not_written_through() {
        let (d, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let target = outside.path().join("authorized_keys");
        std::fs::write(&target, "untouched").unwrap();
        for name in ["backup_label", "postgresql.auto.conf"] {
            std::os::unix::fs::symlink(&target, d.path().join(name)).unwrap();
        }
        create_new(&d.path().join("backup_label")).unwrap().write_all(b"label").unwrap();
        append(&d.path().join("postgresql.auto.conf")).unwrap().write_all(b"x = 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        for name in ["backup_label", "postgresql.auto.conf"] {
            assert!(std::fs::symlink_metadata(d.path().join(name)).unwrap().is_file(), "{name}");
        }
        // A regular file is appended to; a file is replaced anew.
        append(&d.path().join("postgresql.auto.conf")).unwrap().write_all(b"y = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap(), "x = 1\ny = 2\n");
        create_new(&d.path().join("backup_label")).unwrap().write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("backup_label")).unwrap(), "new");
        std::os::unix::fs::symlink(&target, d.path().join("link")).unwrap();
        assert!(open_read(&d.path().join("link")).is_err());
    }
}
