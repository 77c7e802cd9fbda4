//! The files pgclone writes itself into a data directory (backup_label, tablespace_map, backup_manifest,
//! pg_control and its temporary name, standby.signal, postgresql.auto.conf, archive status marks). Their names
//! are known to anyone, and a stranger's symbolic link may stand in their place: recreated from the primary's
//! listing (basebackup.c sends links as links) or left in a stale directory. Writing through it would write
//! wherever it points, as this host's user. So these files are made anew without following a link.

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
