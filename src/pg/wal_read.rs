//! Short stretches of WAL, read to compare two copies of a cluster's history byte for byte: from the server over
//! a replication connection of their own (no slot: nothing is held on the server, and WAL it no longer has is
//! an error, not a wait), and from a stopped data directory's `pg_wal`; and where a record ends in that layout.
//!
//! Layout (src/include/access/xlog_internal.h): WAL is a sequence of XLOG_BLCKSZ pages, each starting with a
//! page header, long (XLogLongPageHeaderData, 40 bytes) on a segment's first page and short (XLogPageHeaderData,
//! MAXALIGN(20) = 24 bytes) on the others. A record (XLogRecord) starts MAXALIGNed after a header, so its first
//! field, xl_tot_len, is always on the record's first page; its bytes then run on across page headers.
//! walsender.c sends the segment files' bytes as they are, page headers included, and walreceiver.c writes
//! them so: a standby's WAL equals its upstream's byte for byte.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::pg::lsn::{Lsn, SegSize};
use crate::pg::replication::ServerMessage;
use crate::pg::{Conn, CopyData, PgError};
use crate::sys::files;

pub(crate) const SHORT_HEADER: u64 = 24;
pub(crate) const LONG_HEADER: u64 = 40;
/// No record pgclone compares (a checkpoint's, the end of WAL) comes near this; a larger length is not a
/// record start.
const MAX_RECORD: u64 = 1 << 20;
/// How long the server may take to send a stretch it has on disk.
const FETCH_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WalReadError {
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Local(String),
}

/// Where the WAL pages of a cluster break: its segment size and page size (wal_block_size, fixed at build).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub seg: SegSize,
    pub page: u64,
}

impl Layout {
    /// The size of the header of the page that starts at `page_start`.
    pub(crate) fn header_at(&self, page_start: u64) -> u64 {
        if page_start.is_multiple_of(self.seg.bytes()) {
            LONG_HEADER
        } else {
            SHORT_HEADER
        }
    }

    /// The end of the record of `tot_len` bytes (its xl_tot_len) that starts at `start`: its bytes fill the
    /// rest of each page and go on after the next page's header.
    pub fn record_end(&self, start: Lsn, tot_len: u64) -> Lsn {
        let (mut pos, mut left) = (start.0, tot_len);
        loop {
            let page_end = (pos / self.page + 1) * self.page;
            let take = left.min(page_end - pos);
            (pos, left) = (pos + take, left - take);
            if left == 0 {
                return Lsn(pos);
            }
            pos = page_end + self.header_at(page_end);
        }
    }
}

/// A stopped data directory's `pg_wal`, read without following a link planted in it.
pub struct LocalWal<'a> {
    pub pg_wal: &'a Path,
    pub layout: Layout,
}

impl LocalWal<'_> {
    /// The segment file holding `lsn` on timeline `tli`: its own name, or `.partial` (a promoted server renames
    /// the last segment of the timeline it left so).
    fn segment(&self, tli: u32, lsn: Lsn) -> Result<File, WalReadError> {
        let name = self.layout.seg.file_name(tli, self.layout.seg.segno(lsn));
        let open = |n: &str| files::open_read(&self.pg_wal.join(n));
        open(&name).or_else(|_| open(&format!("{name}.partial"))).map_err(|e| {
            WalReadError::Local(format!("the replica's WAL segment {name} (for {lsn}) cannot be read: {e}"))
        })
    }

    /// The bytes [from, to) on timeline `tli`, segment by segment.
    pub fn read(&self, tli: u32, from: Lsn, to: Lsn) -> Result<Vec<u8>, WalReadError> {
        let seg = self.layout.seg;
        let mut buf = vec![0u8; to.0.saturating_sub(from.0) as usize];
        let mut at = from;
        while at < to {
            let n = (seg.bytes() - seg.offset(at)).min(to.0 - at.0);
            let piece = &mut buf[(at.0 - from.0) as usize..][..n as usize];
            self.segment(tli, at)?
                .read_exact_at(piece, seg.offset(at))
                .map_err(|e| WalReadError::Local(format!("reading the replica's WAL at {at}: {e}")))?;
            at = Lsn(at.0 + n);
        }
        Ok(buf)
    }

    /// The end of the record that starts at `start` on timeline `tli`, from its xl_tot_len here.
    pub fn record_end(&self, tli: u32, start: Lsn) -> Result<Lsn, WalReadError> {
        let len = self.read(tli, start, Lsn(start.0 + 4))?;
        let tot_len = u64::from(u32::from_ne_bytes(len[..4].try_into().expect("4 bytes")));
        if !(24..=MAX_RECORD).contains(&tot_len) || start.0 % self.layout.page < SHORT_HEADER {
            return Err(WalReadError::Local(format!("no WAL record starts at {start} in the replica's WAL")));
        }
        Ok(self.layout.record_end(start, tot_len))
    }

    /// The page size this WAL was written with: xlp_xlog_blcksz of the long header of the segment holding
    /// `lsn` on `tli`, which also carries the segment size and the system identifier to check.
    pub fn page_size(pg_wal: &Path, seg: SegSize, tli: u32, lsn: Lsn, system_id: u64) -> Result<u64, WalReadError> {
        let probe = LocalWal { pg_wal, layout: Layout { seg, page: 8192 } };
        let start = seg.segment_start(lsn);
        let h = probe.read(tli, start, Lsn(start.0 + LONG_HEADER))?;
        let u32_at = |at: usize| u64::from(u32::from_ne_bytes(h[at..at + 4].try_into().expect("4 bytes")));
        let sysid = u64::from_ne_bytes(h[24..32].try_into().expect("8 bytes"));
        if sysid != system_id || u32_at(32) != seg.bytes() {
            return Err(WalReadError::Local(format!(
                "the replica's WAL segment for {lsn} is not of this cluster (its header names system {sysid})"
            )));
        }
        match u32_at(36) {
            page if page.is_power_of_two() && (1024..=65536).contains(&page) => Ok(page),
            page => Err(WalReadError::Local(format!("the replica's WAL names a page size of {page}"))),
        }
    }
}

/// The server's WAL bytes [from, to) on timeline `tli`, over a replication connection opened for it with
/// `params` (START_REPLICATION PHYSICAL without a slot; protocol-replication.sgml). The server refuses a
/// timeline not on its history, a position past that timeline's end on it, and a segment it has removed.
pub fn fetch(params: &[(&str, &str)], tli: u32, from: Lsn, to: Lsn) -> Result<Vec<u8>, WalReadError> {
    let fail = |what: &str, e: PgError| WalReadError::Server(format!("{what}: {e}"));
    let mut p = params.to_vec();
    p.push(("replication", "true"));
    let mut conn = Conn::connect(&p).map_err(|e| fail("opening a replication connection", e))?;
    conn.start_copy_both(&format!("START_REPLICATION PHYSICAL {from} TIMELINE {tli}"))
        .map_err(|e| fail(&format!("asking for WAL at {from} on timeline {tli}"), e))?;
    let mut got = Vec::with_capacity((to.0 - from.0) as usize);
    let until = Instant::now() + FETCH_LIMIT;
    while (got.len() as u64) < to.0 - from.0 {
        match conn.get_copy_data().map_err(|e| fail("receiving WAL", e))? {
            CopyData::Message(m) => {
                if let ServerMessage::XLogData { start, data, .. } =
                    ServerMessage::parse(&m).map_err(|e| WalReadError::Server(e.to_string()))?
                {
                    if start.0 != from.0 + got.len() as u64 {
                        return Err(WalReadError::Server(format!("WAL data at {start} out of order")));
                    }
                    let want = (to.0 - start.0).min(data.len() as u64) as usize;
                    got.extend_from_slice(&data[..want]);
                }
            }
            CopyData::WouldBlock if Instant::now() < until => {
                conn.wait_readable(Duration::from_millis(100)).map_err(|e| fail("waiting for WAL", e))?
            }
            CopyData::WouldBlock => {
                return Err(WalReadError::Server(format!("the server sent no WAL up to {to} within 30 s")))
            }
            CopyData::Done => {
                conn.copy_ended().map_err(|e| fail("reading WAL", e))?;
                return Err(WalReadError::Server(format!("timeline {tli} ends before {to} on the server")));
            }
        }
    }
    // CopyDone, as the protocol asks; the connection closes either way.
    let _ = conn.end_copy();
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_run_on_past_page_headers() {
        let layout = Layout { seg: SegSize::new(1 << 20).unwrap(), page: 8192 };
        // Within a page.
        assert_eq!(layout.record_end(Lsn(0x2028), 114), Lsn(0x2028 + 114));
        // Ends exactly at the page's end.
        assert_eq!(layout.record_end(Lsn(8192 - 16), 16), Lsn(8192));
        // Crosses into the next page: its short header lies between.
        assert_eq!(layout.record_end(Lsn(8192 - 16), 40), Lsn(8192 + 24 + 24));
        // Crosses into a new segment: a long header.
        assert_eq!(layout.record_end(Lsn((1 << 20) - 8), 20), Lsn((1 << 20) + 40 + 12));
        // Spans two page boundaries.
        assert_eq!(layout.record_end(Lsn(8192 - 8), 8 + 8168 + 10), Lsn(2 * 8192 + 24 + 10));
    }

    #[test]
    fn local_wal_is_read_by_segment_and_never_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let seg = SegSize::new(1 << 20).unwrap();
        let layout = Layout { seg, page: 8192 };
        let mut page = vec![0u8; 1 << 20];
        page[24..32].copy_from_slice(&42u64.to_ne_bytes());
        page[32..36].copy_from_slice(&(1u32 << 20).to_ne_bytes());
        page[36..40].copy_from_slice(&8192u32.to_ne_bytes());
        // A record of 114 bytes at 0/300028: segment 3's first, right after the long page header.
        page[0x28..0x2C].copy_from_slice(&114u32.to_ne_bytes());
        std::fs::write(d.path().join("000000020000000000000003.partial"), &page).unwrap();
        let wal = LocalWal { pg_wal: d.path(), layout };
        assert_eq!(LocalWal::page_size(d.path(), seg, 2, Lsn(0x30_0100), 42).unwrap(), 8192);
        assert!(LocalWal::page_size(d.path(), seg, 2, Lsn(0x30_0100), 7).is_err(), "another cluster's WAL");
        assert_eq!(wal.record_end(2, Lsn(0x30_0028)).unwrap(), Lsn(0x30_0028 + 114));
        assert!(wal.record_end(2, Lsn(0x30_0030)).is_err(), "a length of 0 is no record");
        assert!(wal.read(1, Lsn(0x30_0028), Lsn(0x30_0030)).is_err(), "no such timeline's segment");
        assert!(wal.read(2, Lsn(0x3F_FFF0), Lsn(0x40_0010)).is_err(), "the next segment is not here");
        assert_eq!(wal.read(2, Lsn(0x3F_FFF0), Lsn(0x40_0000)).unwrap().len(), 16);

        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), &page).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("000000020000000000000004")).unwrap();
        assert!(wal.read(2, Lsn(0x40_0028), Lsn(0x40_0030)).is_err(), "a planted link is not followed");
    }
}
