//! Finalize: turn the copied files into a data directory that starts, and only then.
//!
//! Order matters. `global/pg_control` goes in last, after everything else is durable: a directory without
//! it cannot start, so an interrupted clone can never be mistaken for a complete one. backup_label tells
//! recovery to begin at the backup's checkpoint rather than at pg_control's (backup.sgml), and the
//! streamed WAL in pg_wal carries recovery from there to a consistent state past the stop position.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{IoAt, IoContext};
use crate::manifest::{self, FileSum};
use crate::pg::backup_session::BackupEnd;
use crate::pg::control_file::{self, CONTROL_FILE};
use crate::pg::lsn::{history_file_name, Lsn, SegSize};
use crate::replica::tablespace::{self, Mapping};
use crate::sys::files::{self, SyncMethod};
use crate::transfer::Tablespace;

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error("streamed WAL lacks segment {0}: the WAL stream did not deliver everything from the backup start")]
    MissingSegment(String),
    #[error("the fetched pg_control belongs to system {found}, not to the streamed cluster {expected}")]
    ControlMismatch { found: u64, expected: u64 },
    #[error(transparent)]
    Io(#[from] IoAt),
}

pub struct Finalize<'a> {
    pub replica: &'a Path,
    /// Where the WAL stream wrote its segments.
    pub streamed: &'a Path,
    pub seg: SegSize,
    pub timeline: u32,
    pub system_id: u64,
    pub start: Lsn,
    pub end: &'a BackupEnd,
    /// WAL is laid in through this position: the stop position, or beyond it from a standby (minRecoveryPoint).
    pub wal_end: Lsn,
    /// pg_control as fetched from the primary after pg_backup_stop.
    pub control: &'a Path,
    pub tablespaces: &'a [Tablespace],
    /// The primary's data directory grants its group read access: ours gets 0750 instead of 0700.
    pub group_access: bool,
    pub mappings: &'a [Mapping],
    /// Write backup_manifest: the primary's major (which decides the format version) and the checksums of the
    /// copied files.
    pub manifest: Option<(u32, Vec<FileSum>)>,
    /// How the copy is made durable before pg_control goes in place.
    pub sync: SyncMethod,
}

impl Finalize<'_> {
    /// Returns the number of WAL segments laid into pg_wal.
    pub fn run(&self) -> Result<u64, FinalizeError> {
        let control = control_file::read(self.control).at("reading", self.control)?;
        let found = control_file::system_id(&control);
        if found != self.system_id {
            return Err(FinalizeError::ControlMismatch { found, expected: self.system_id });
        }
        let segments = self.lay_wal()?;
        self.write_file("backup_label", &self.end.backup_label)?;
        if !self.end.tablespace_map.is_empty() {
            self.write_file("tablespace_map", &tablespace::rewrite_map(self.mappings, &self.end.tablespace_map))?;
        }
        if let Some((major, sums)) = &self.manifest {
            self.write_manifest(*major, sums, &control)?;
        }
        // The copy itself does not fsync: one syncfs per filesystem makes every copied file durable, far faster
        // than a per-file walk (PostgreSQL offers the same choice as recovery_init_sync_method), where the
        // kernel reports write-back errors through it; else every file is fsynced (`SyncMethod`). pg_wal
        // (--replica-waldir, a link) and tablespaces may live on other filesystems: those too (an fsync walk of
        // the data directory does not follow those links either).
        let pg_wal = self.replica.join("pg_wal");
        let waldir = pg_wal.is_symlink().then_some(pg_wal);
        for dir in std::iter::once(self.replica.to_path_buf())
            .chain(waldir)
            .chain(self.tablespaces.iter().map(|t| t.local.clone()))
        {
            self.sync.sync(&dir)?;
        }
        self.install_control(&control)?;
        let mode = if self.group_access { 0o750 } else { 0o700 };
        std::fs::set_permissions(self.replica, std::fs::Permissions::from_mode(mode))
            .at("setting permissions of", self.replica)?;
        Ok(segments)
    }

    /// Moves the segments from the backup's start through the one holding the last byte before the stop
    /// position into pg_wal. The last may still be `.partial` when the stream ended mid-segment (a primary
    /// forces a segment switch in pg_backup_stop; a standby does not): its remaining bytes are zeros,
    /// which recovery reads as the end of WAL, exactly as pg_basebackup's last segment.
    fn lay_wal(&self) -> Result<u64, FinalizeError> {
        let pg_wal = self.replica.join("pg_wal");
        let first = self.seg.segno(self.start);
        let last = self.seg.segno(Lsn(self.wal_end.0.saturating_sub(1)));
        for segno in first..=last {
            let name = self.seg.file_name(self.timeline, segno);
            let complete = self.streamed.join(&name);
            let partial = self.streamed.join(format!("{name}.partial"));
            let src = if complete.exists() {
                complete
            } else if segno == last && partial.exists() {
                partial
            } else {
                return Err(FinalizeError::MissingSegment(name));
            };
            move_file(&src, &pg_wal.join(&name))?;
            archived(&pg_wal, &name)?;
        }
        let history = history_file_name(self.timeline);
        if self.streamed.join(&history).exists() {
            move_file(&self.streamed.join(&history), &pg_wal.join(&history))?;
            archived(&pg_wal, &history)?;
        }
        Ok(last - first + 1)
    }

    /// The manifest lists every file of the copy but WAL: the scanned ones, plus those written after the scan
    /// (backup_label, tablespace_map, the -R settings) and pg_control, which is about to be put in place.
    fn write_manifest(&self, major: u32, scanned: &[FileSum], control: &[u8]) -> Result<(), FinalizeError> {
        const LATE: [&str; 4] = ["backup_label", "tablespace_map", "postgresql.auto.conf", "standby.signal"];
        let mut files: Vec<FileSum> =
            scanned.iter().filter(|f| !LATE.iter().any(|l| f.path == Path::new(l))).cloned().collect();
        // Read as the scan reads (the primary's postgresql.auto.conf can be of any size); missing ones skipped.
        let late: Vec<PathBuf> = LATE.iter().map(PathBuf::from).collect();
        files.extend(manifest::scan(self.replica, &late, None, 1)?.0);
        files.push(manifest::sum_bytes(self.control, CONTROL_FILE, control));
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let header = manifest::Header {
            version: if major >= 17 { 2 } else { 1 },
            system_id: self.system_id,
            timeline: self.timeline,
            start: self.start,
            end: self.end.stop_lsn,
        };
        Ok(manifest::write(self.replica, &manifest::render(&header, &files))?)
    }

    fn write_file(&self, name: &str, content: &str) -> Result<(), FinalizeError> {
        let path = self.replica.join(name);
        let mut f = private_file(&path)?;
        Ok(f.write_all(content.as_bytes()).and_then(|()| f.sync_all()).at("writing", &path)?)
    }

    /// Writes pg_control under a temporary name, syncs it, renames it into place and syncs the directory:
    /// the real name appears only complete and durable.
    fn install_control(&self, control: &[u8]) -> Result<(), FinalizeError> {
        let target = self.replica.join(CONTROL_FILE);
        let tmp = target.with_extension("pgclone-new");
        let mut f = private_file(&tmp)?;
        f.write_all(control).and_then(|()| f.sync_all()).at("writing", &tmp)?;
        std::fs::rename(&tmp, &target).at("renaming into place", &target)?;
        let dir = target.parent().expect("global/");
        Ok(File::open(dir).and_then(|d| d.sync_all()).at("syncing", dir)?)
    }
}

/// A new file readable by its owner only (0600), as PostgreSQL creates its files (pg_file_create_mode), made
/// anew and never through a link in its place (`sys::files`).
fn private_file(path: &Path) -> Result<File, IoAt> {
    files::create_new(path)
}

/// Marks a WAL file laid into pg_wal as archived (`archive_status/<name>.done`), as pg_basebackup and the
/// walreceiver do: it came from the primary, whose own archiver handles it. Without the mark, a clone promoted
/// with archive_mode on archives it again: XLogArchiveCheckDone (xlogarchive.c) makes a `.ready` for every
/// segment a checkpoint would remove that has no status, and an archive_command that refuses to overwrite
/// (`test ! -f`) then fails on it forever while pg_wal grows.
fn archived(pg_wal: &Path, name: &str) -> Result<(), IoAt> {
    private_file(&pg_wal.join("archive_status").join(format!("{name}.done"))).map(drop)
}

/// Renames, or copies when the streamed WAL lives on another filesystem.
fn move_file(from: &Path, to: &Path) -> Result<(), IoAt> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            std::fs::copy(from, to).at("copying", to)?;
            std::fs::remove_file(from).at("removing", from)
        }
        Err(e) => Err(IoAt::new("moving", to, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(stop: Lsn, files: &[&str]) -> (tempfile::TempDir, tempfile::TempDir, BackupEnd) {
        let (replica, streamed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir_all(replica.path().join("pg_wal/archive_status")).unwrap();
        std::fs::create_dir_all(replica.path().join("global")).unwrap();
        for f in files {
            std::fs::write(streamed.path().join(f), b"wal").unwrap();
        }
        std::fs::write(streamed.path().join("pg_control"), 42u64.to_ne_bytes()).unwrap();
        let end =
            BackupEnd { stop_lsn: stop, backup_label: "START WAL LOCATION: x\n".into(), tablespace_map: String::new() };
        (replica, streamed, end)
    }

    fn finalize<'a>(r: &'a Path, s: &'a Path, c: &'a Path, end: &'a BackupEnd, sysid: u64) -> Finalize<'a> {
        let seg = SegSize::new(1 << 20).unwrap();
        Finalize {
            replica: r,
            streamed: s,
            seg,
            timeline: 1,
            system_id: sysid,
            start: Lsn(2 << 20),
            end,
            wal_end: end.stop_lsn,
            control: c,
            tablespaces: &[],
            group_access: false,
            mappings: &[],
            manifest: None,
            sync: SyncMethod::Fsync,
        }
    }

    #[test]
    fn lays_start_through_stop_segment_and_control_last() {
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004.partial",
        ];
        let (r, s, end) = setup(Lsn((4 << 20) + 100), &names);
        let c = s.path().join("pg_control");
        assert_eq!(finalize(r.path(), s.path(), &c, &end, 42).run().unwrap(), 3);
        let listing = |dir: &str| {
            let mut names: Vec<_> = std::fs::read_dir(r.path().join(dir))
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| e.file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let laid = ["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"];
        assert_eq!(listing("pg_wal"), laid);
        assert_eq!(listing("pg_wal/archive_status"), laid.map(|n| format!("{n}.done")), "archived by the primary");
        assert_eq!(std::fs::read(r.path().join("global/pg_control")).unwrap(), 42u64.to_ne_bytes());
        assert!(r.path().join("backup_label").exists());
        assert!(!r.path().join("tablespace_map").exists());
    }

    #[test]
    fn stop_at_a_segment_boundary_needs_no_next_segment() {
        let (r, s, end) = setup(Lsn(4 << 20), &["000000010000000000000002", "000000010000000000000003"]);
        let c = s.path().join("pg_control");
        assert_eq!(finalize(r.path(), s.path(), &c, &end, 42).run().unwrap(), 2);
    }

    #[test]
    fn from_a_standby_wal_goes_on_to_its_min_recovery_point() {
        let names = ["000000010000000000000002", "000000010000000000000003", "000000010000000000000004.partial"];
        let (r, s, end) = setup(Lsn((2 << 20) + 100), &names);
        let c = s.path().join("pg_control");
        let mut f = finalize(r.path(), s.path(), &c, &end, 42);
        f.wal_end = Lsn((4 << 20) + 8);
        assert_eq!(f.run().unwrap(), 3, "through the segment holding minRecoveryPoint, not only the stop's");
        assert!(r.path().join("pg_wal/000000010000000000000004").exists());
    }

    #[test]
    fn a_gap_or_a_foreign_control_file_fails_without_pg_control() {
        let (r, s, end) = setup(Lsn((4 << 20) + 1), &["000000010000000000000002", "000000010000000000000004"]);
        let c = s.path().join("pg_control");
        let err = finalize(r.path(), s.path(), &c, &end, 42).run().unwrap_err();
        assert!(err.to_string().contains("lacks segment 000000010000000000000003"), "{err}");
        assert!(!r.path().join("global/pg_control").exists());
        let err = finalize(r.path(), s.path(), &c, &end, 7).run().unwrap_err();
        assert!(matches!(err, FinalizeError::ControlMismatch { found: 42, expected: 7 }));
        assert!(!r.path().join("global/pg_control").exists());
    }
}
