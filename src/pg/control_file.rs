//! Facts about `global/pg_control` (src/include/catalog/pg_control.h) that several phases rely on. Fields are in
//! the byte order of the machine that wrote them; a physical replica always runs on the same architecture.

use std::io::Read;
use std::path::Path;

use crate::pg::lsn::Lsn;

/// Path of the control file inside a data directory (XLOG_CONTROL_FILE).
pub const CONTROL_FILE: &str = "global/pg_control";

/// PG_CONTROL_FILE_SIZE: the file is written as one 8 KiB block, of which ControlFileData is the start.
pub const CONTROL_FILE_SIZE: u64 = 8192;

/// The control file at `path`, at most its 8 KiB: whatever a stranger's directory holds under that name, no
/// more is read into memory.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(CONTROL_FILE_SIZE as usize);
    crate::sys::files::open_read(path)?.take(CONTROL_FILE_SIZE).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The system identifier: the first field of ControlFileData, in the byte order of the machine that
/// wrote it (a physical replica always runs on the same architecture).
pub fn system_id(control: &[u8]) -> u64 {
    u64_at(control, 0)
}

/// DBState values (pg_control.h) of a running server: a primary's file says DB_IN_PRODUCTION, a standby's
/// DB_IN_ARCHIVE_RECOVERY; a stopped copy says DB_SHUTDOWNED (a primary shut down cleanly),
/// DB_SHUTDOWNED_IN_RECOVERY (a standby shut down cleanly), or whatever its last writer left.
pub const DB_SHUTDOWNED: u32 = 1;
pub const DB_SHUTDOWNED_IN_RECOVERY: u32 = 2;
pub const DB_IN_ARCHIVE_RECOVERY: u32 = 5;
pub const DB_IN_PRODUCTION: u32 = 6;

/// What a DBState says, in pg_controldata's words (dbState in src/bin/pg_controldata/pg_controldata.c).
pub fn state_name(state: u32) -> &'static str {
    match state {
        0 => "starting up",
        DB_SHUTDOWNED => "shut down",
        DB_SHUTDOWNED_IN_RECOVERY => "shut down in recovery",
        3 => "shutting down",
        4 => "in crash recovery",
        DB_IN_ARCHIVE_RECOVERY => "in archive recovery",
        DB_IN_PRODUCTION => "in production",
        _ => "unrecognized status code",
    }
}

/// `state`, the fourth field (after system_identifier and two uint32 versions).
pub fn state(control: &[u8]) -> u32 {
    u32_at(control, 16)
}

/// checkPointCopy.redo: where recovery from the latest checkpoint (or restartpoint) starts. ControlFileData puts
/// `time` (int64) at 24 and `checkPoint` at 32; the CheckPoint copy, whose first field is `redo`, at 40.
pub fn redo(control: &[u8]) -> Lsn {
    Lsn(u64_at(control, 40))
}

/// `checkPoint`: where the latest checkpoint (or restartpoint) record starts.
pub fn checkpoint(control: &[u8]) -> Lsn {
    Lsn(u64_at(control, 32))
}

/// checkPointCopy.ThisTimeLineID: the timeline of that checkpoint record, and of its redo pointer.
pub fn checkpoint_timeline(control: &[u8]) -> u32 {
    u32_at(control, 48)
}

/// (minRecoveryPoint, minRecoveryPointTLI): a standby writes no data page whose LSN lies beyond
/// minRecoveryPoint without first moving it there (xlog.c UpdateMinRecoveryPoint), so no page in its files
/// holds WAL from later. They follow checkPointCopy (88 bytes from 15 to 18: PostgreSQL 17's `wal_level` took
/// padding after `fullPageWrites`) and unloggedLSN.
pub fn min_recovery_point(control: &[u8]) -> (Lsn, u32) {
    (Lsn(u64_at(control, 136)), u32_at(control, 144))
}

/// Whether the server was recovering from a base backup and had not reached the backup's end: backupStartPoint
/// (152, after minRecoveryPointTLI and its padding), backupEndPoint (160) or backupEndRequired (168) set.
/// StartupXLOG copies them from backup_label and clears them once replay passes the backup's end record
/// (xlogrecovery.c, ReachedEndOfBackup). Until then the files mix pages copied at different moments of the
/// backup, any of which can be newer than minRecoveryPoint: that point does not bound them.
pub fn backup_unfinished(control: &[u8]) -> Option<Lsn> {
    let (start, end, required) = (u64_at(control, 152), u64_at(control, 160), control.get(168).copied());
    (start != 0 || end != 0 || required.is_some_and(|b| b != 0)).then_some(Lsn(start))
}

/// `data_checksum_version`: 0 when data pages carry no checksums, else PG_DATA_CHECKSUM_VERSION (1). Only
/// pg_checksums, on a stopped cluster, changes it. At 252 from 15 to 18 (measured on initdb's files, with and
/// without -k).
/// wal_log_hints as the server last started with it: a bool after backupEndRequired (168) and wal_level (172).
pub fn wal_log_hints(control: &[u8]) -> bool {
    control.get(176).is_some_and(|b| *b != 0)
}

pub fn data_checksum_version(control: &[u8]) -> u32 {
    u32_at(control, 252)
}

fn u64_at(control: &[u8], at: usize) -> u64 {
    control.get(at..at + 8).map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
}

fn u32_at(control: &[u8], at: usize) -> u32 {
    control.get(at..at + 4).map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// offsetof(ControlFileData, crc): the CRC32C covers every byte before it, and `crc` is the struct's last field.
/// Measured on initdb's files: 288 for PostgreSQL 15 to 17, 292 from 18 (which added default_char_signedness).
/// A later major that moves it again fails the check with a clear error rather than passing a torn file.
fn crc_offset(major: u32) -> usize {
    if major >= 18 {
        292
    } else {
        288
    }
}

/// Whether `control` holds a complete, untorn ControlFileData of PostgreSQL `major`: its CRC32C matches (as
/// the server checks at startup, src/common/controldata_utils.c). The server rewrites the file in place with
/// a single write, so a copy read at that moment can mix old and new bytes.
pub fn crc_ok(control: &[u8], major: u32) -> bool {
    let at = crc_offset(major);
    match control.get(at..at + 4) {
        Some(stored) => crc32c::crc32c(&control[..at]).to_ne_bytes() == stored,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control file as PostgreSQL `major` writes one: 8 KiB, the CRC of the struct after it, zeros after.
    fn control(major: u32, fill: u8) -> Vec<u8> {
        let at = crc_offset(major);
        let mut c = vec![fill; at];
        c.extend(crc32c::crc32c(&c).to_ne_bytes());
        c.resize(8192, 0);
        c
    }

    #[test]
    fn crc_finds_torn_and_short_files() {
        for major in [15, 17, 18] {
            let good = control(major, 7);
            assert!(crc_ok(&good, major), "PostgreSQL {major}");
            // A read that caught the server's rewrite halfway: the first half new, the rest old.
            let mut torn = control(major, 9);
            torn[..100].copy_from_slice(&good[..100]);
            assert!(!crc_ok(&torn, major), "PostgreSQL {major}: torn");
            assert!(!crc_ok(&good[..200], major), "PostgreSQL {major}: short");
        }
        assert!(!crc_ok(&control(17, 7), 18), "the offset differs between 17 and 18");
    }
}
