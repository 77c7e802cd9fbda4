//! Which relation blocks a stretch of WAL changed, read from the WAL itself, on every major pgclone serves: the
//! block references each record names in its generic headers (src/include/access/xlogrecord.h; DecodeXLogRecord
//! in src/backend/access/transam/xlogreader.c), and the records that change relation files other than block by
//! block, taken as PostgreSQL 17's WAL summarizer takes them (src/backend/postmaster/walsummarizer.c,
//! SummarizeSmgrRecord, SummarizeDbaseRecord, SummarizeXactRecord): a fork created (XLOG_SMGR_CREATE), or dropped
//! with its transaction (the relation lists of commit and abort records), is new from block 0; a truncation
//! (XLOG_SMGR_TRUNCATE) makes everything from its new length new; a database created or dropped (XLOG_DBASE_*)
//! makes every file of it new (CREATE DATABASE ... STRATEGY FILE_COPY copies files without logging a block).
//! The answer has the shape `wal_summary` reads from the summaries, and `transfer::changed` applies either.
//!
//! WAL written with wal_level = minimal may leave a new relation's blocks unlogged altogether; a server started
//! with that setting logs XLOG_PARAMETER_CHANGE first (XLogReportParameters), and a stretch holding one is refused,
//! as the summarizer skips such WAL.
//!
//! The WAL is read from segment files (the primary's pg_wal through its agent, the WAL this run streamed, the
//! replica's own pg_wal) and believed only as far as it proves itself: each page header names its own position,
//! a segment's first page the cluster's system identifier, each record's CRC-32C matches and its xl_prev names
//! the record before. A recycled segment, a torn end or another cluster's file ends the scan with an error,
//! never with a partial answer.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::pg::lsn::{Lsn, SegSize};
use crate::pg::wal_read::{Layout, LONG_HEADER};
use crate::pg::wal_summary::{Changes, Fork, ForkChanges};
use crate::sys::files;

/// SizeOfXLogRecord: xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, 2 bytes of padding, xl_crc.
const RECORD_HEADER: usize = 24;
/// XLogRecordMaxSize (xlogrecord.h).
const MAX_RECORD: u64 = 1020 << 20;
/// Bytes read from a segment file at a time.
const WINDOW: u64 = 1 << 20;

/// xlp_info bits (xlog_internal.h).
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_ALL_FLAGS: u16 = 0x000F;

/// Resource managers (src/include/access/rmgrlist.h), and the record types of theirs read here.
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const RM_SMGR_ID: u8 = 2;
const RM_DBASE_ID: u8 = 4;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_BACKUP_END: u8 = 0x50;
const XLOG_PARAMETER_CHANGE: u8 = 0x60;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 0x1;
const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
const XLOG_DBASE_DROP: u8 = 0x20;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1;
const XACT_XINFO_HAS_SUBXACTS: u32 = 2;
const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 4;

/// Block reference headers (xlogrecord.h): ids up to XLR_MAX_BLOCK_ID name blocks, the others say what follows.
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// BKPIMAGE_COMPRESS_PGLZ, _LZ4 and _ZSTD of PostgreSQL 15 and later.
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

/// Why a stretch of WAL could not say what it changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScanError(pub String);

fn fail<T>(msg: String) -> Result<T, ScanError> {
    Err(ScanError(msg))
}

/// A stretch of WAL to read: the records that start in [from, to) of each piece, each on its own timeline, the
/// pieces in order and adjoining (`timeline::pieces`). `from` is the start of a record, or a page's start, where
/// a record that began earlier is skipped.
pub struct Stretch<'a> {
    pub pieces: &'a [(u32, Lsn, Lsn)],
    pub seg: SegSize,
    pub system_id: u64,
    /// Every change must be in the WAL, hint bits included (see `clone::resync`, a former primary without data
    /// checksums): a server restarted within the stretch (XLOG_PARAMETER_CHANGE) may have run without
    /// wal_log_hints for a while, and the stretch is refused.
    pub hints: bool,
}

/// What a scan found: the blocks changed, and how many bytes of WAL segment files it read.
#[derive(Debug, Default)]
pub struct Scanned {
    pub changes: Changes,
    pub wal_bytes: u64,
}

/// Every change the WAL of `stretch`, in the segment files of `dir`, makes to relation files.
pub fn changes(dir: &Path, stretch: &Stretch) -> Result<Scanned, ScanError> {
    let mut wal = Records::new(dir, stretch)?;
    let mut acc = Acc { hints: stretch.hints, ..Acc::default() };
    while let Some(r) = wal.next()? {
        acc.record(&r).map_err(|e| ScanError(format!("the WAL record at {}: {e}", r.start)))?;
    }
    Ok(Scanned { changes: acc.finish(), wal_bytes: wal.read })
}

/// The end of the backup that started at `start` on timeline `tli`: the end of its XLOG_BACKUP_END record
/// (written by pg_backup_stop on a primary, do_pg_backup_stop in xlog.c, naming the backup's start), the first
/// position by which every file copied during the backup was complete, as recovery takes it.
pub fn backup_end(dir: &Path, seg: SegSize, system_id: u64, tli: u32, start: Lsn) -> Result<Lsn, ScanError> {
    let pieces = [(tli, start, Lsn(u64::MAX))];
    let stretch = Stretch { pieces: &pieces, seg, system_id, hints: false };
    let mut wal = Records::new(dir, &stretch)?;
    while let Some(r) = wal.next()? {
        if r.rmid() == RM_XLOG_ID && r.info() == XLOG_BACKUP_END && r.main()?.get(..8) == Some(&start.0.to_ne_bytes()) {
            return Ok(r.end);
        }
    }
    fail(format!("no end of the backup started at {start} in the WAL"))
}

/// The last checkpoint record before `fork` on timeline `tli` (where another server's timeline left this one),
/// and its redo pointer, found by walking back the xl_prev chain from the first record at or after the fork, as
/// pg_rewind's findLastCheckpoint does (src/bin/pg_rewind/parsexlog.c).
pub fn checkpoint_before(
    dir: &Path,
    seg: SegSize,
    system_id: u64,
    tli: u32,
    fork: Lsn,
) -> Result<(Lsn, Lsn), ScanError> {
    const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
    const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
    let pieces = [(tli, fork, Lsn(u64::MAX))];
    let stretch = Stretch { pieces: &pieces, seg, system_id, hints: false };
    let mut wal = Records::new(dir, &stretch)?;
    let mut at = wal.next_start(fork);
    loop {
        let r = wal.read_at(at)?;
        if r.start < fork
            && r.rmid() == RM_XLOG_ID
            && matches!(r.info(), XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE)
        {
            // CheckPoint begins with redo.
            let redo = r.main()?.get(..8).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
            return redo.map(|redo| (r.start, Lsn(redo))).ok_or_else(|| ScanError("a short checkpoint record".into()));
        }
        at = r.prev();
        if at.0 == 0 {
            return fail(format!("no checkpoint record before {fork} in the WAL"));
        }
    }
}

/// One record, whole.
pub struct Record<'a> {
    pub start: Lsn,
    pub end: Lsn,
    bytes: &'a [u8],
}

impl Record<'_> {
    /// xl_prev: where the record before starts.
    fn prev(&self) -> Lsn {
        Lsn(u64::from_ne_bytes(self.bytes[8..16].try_into().expect("8 bytes")))
    }

    fn rmid(&self) -> u8 {
        self.bytes[17]
    }

    /// xl_info's resource manager bits (XLR_RMGR_INFO_MASK).
    fn info(&self) -> u8 {
        self.bytes[16] & 0xF0
    }

    /// The record's block references, (relation, fork, block), and its main data, walking the headers as
    /// DecodeXLogRecord does: block headers, then the data header that says how long the main data is, which
    /// comes last, after every block's image and data.
    fn decode(&self, mut block: impl FnMut([u32; 3], u8, u32)) -> Result<&[u8], ScanError> {
        let rec = self.bytes;
        let mut c = Cursor { b: rec, at: RECORD_HEADER };
        let (mut datatotal, mut main) = (0usize, 0usize);
        let mut last_rel: Option<[u32; 3]> = None;
        while rec.len() - c.at > datatotal {
            match c.u8()? {
                XLR_BLOCK_ID_DATA_SHORT => {
                    main = usize::from(c.u8()?);
                    datatotal += main;
                    break;
                }
                XLR_BLOCK_ID_DATA_LONG => {
                    main = c.u32()? as usize;
                    datatotal += main;
                    break;
                }
                XLR_BLOCK_ID_ORIGIN => c.skip(2)?,
                XLR_BLOCK_ID_TOPLEVEL_XID => c.skip(4)?,
                id if id <= XLR_MAX_BLOCK_ID => {
                    let flags = c.u8()?;
                    let data_len = usize::from(c.u16()?);
                    if (flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
                        return fail(format!("block {id} has data of {data_len} bytes against its flags"));
                    }
                    datatotal += data_len;
                    if flags & BKPBLOCK_HAS_IMAGE != 0 {
                        let image_len = usize::from(c.u16()?);
                        c.skip(2)?;
                        let info = c.u8()?;
                        if info & BKPIMAGE_COMPRESSED != 0 && info & BKPIMAGE_HAS_HOLE != 0 {
                            c.skip(2)?;
                        }
                        datatotal += image_len;
                    }
                    let rel = if flags & BKPBLOCK_SAME_REL != 0 {
                        last_rel
                            .ok_or_else(|| ScanError(format!("block {id} names the relation before, and none is")))?
                    } else {
                        [c.u32()?, c.u32()?, c.u32()?]
                    };
                    last_rel = Some(rel);
                    block(rel, flags & BKPBLOCK_FORK_MASK, c.u32()?);
                }
                id => return fail(format!("an unknown block id {id}")),
            }
        }
        if rec.len() - c.at != datatotal {
            return fail(format!("headers that do not add up to its length {}", rec.len()));
        }
        Ok(&rec[rec.len() - main..])
    }

    fn main(&self) -> Result<&[u8], ScanError> {
        self.decode(|_, _, _| {})
    }
}

/// Reads little structs of a record, in the byte order of the machine that wrote it (this one's: a physical
/// replica and its primary share an architecture, and the agent runs on the primary).
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ScanError> {
        let s =
            self.b.get(self.at..self.at + n).ok_or_else(|| ScanError("data shorter than its headers say".into()))?;
        self.at += n;
        Ok(s)
    }

    fn skip(&mut self, n: usize) -> Result<(), ScanError> {
        self.take(n).map(drop)
    }

    fn u8(&mut self) -> Result<u8, ScanError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ScanError> {
        Ok(u16::from_ne_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, ScanError> {
        Ok(u32::from_ne_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

/// The changes gathered so far, per fork: blocks named (sorted and deduplicated as they pile up) and the
/// lowest length the fork was cut to.
#[derive(Default)]
struct Acc {
    forks: HashMap<Fork, (Vec<u32>, Option<u32>)>,
    created: HashSet<(u32, u32)>,
    /// See `Stretch::hints`.
    hints: bool,
}

impl Acc {
    fn block(&mut self, [tablespace, database, relfilenode]: [u32; 3], fork: u8, block: u32) {
        let blocks = &mut self.forks.entry(Fork { tablespace, database, relfilenode, fork }).or_default().0;
        blocks.push(block);
        if blocks.len() >= 1 << 16 && blocks.len().is_power_of_two() {
            blocks.sort_unstable();
            blocks.dedup();
        }
    }

    fn limit(&mut self, [tablespace, database, relfilenode]: [u32; 3], fork: u8, length: u32) {
        let limit = &mut self.forks.entry(Fork { tablespace, database, relfilenode, fork }).or_default().1;
        *limit = Some(limit.map_or(length, |l| l.min(length)));
    }

    fn record(&mut self, r: &Record) -> Result<(), ScanError> {
        let main = r.decode(|rel, fork, block| self.block(rel, fork, block))?;
        let mut c = Cursor { b: main, at: 0 };
        match (r.rmid(), r.info()) {
            (RM_XLOG_ID, XLOG_PARAMETER_CHANGE) => {
                // xl_parameter_change: five ints, then wal_level (WAL_LEVEL_MINIMAL is 0).
                c.skip(20)?;
                if c.u32()? == 0 {
                    return fail("the server ran with wal_level = minimal, which leaves changes unlogged".into());
                }
                if self.hints {
                    return fail(
                        "the server was restarted with other settings, and may have run without \
                                 wal_log_hints, which leaves hint bits unlogged"
                            .into(),
                    );
                }
            }
            (RM_SMGR_ID, XLOG_SMGR_CREATE) => {
                // xl_smgr_create: the relation, then the fork.
                let rel = [c.u32()?, c.u32()?, c.u32()?];
                let fork = c.u32()?;
                self.limit(rel, u8::try_from(fork).map_err(|_| ScanError(format!("fork {fork}")))?, 0);
            }
            (RM_SMGR_ID, XLOG_SMGR_TRUNCATE) => {
                // xl_smgr_truncate: the new length in blocks, the relation, which forks.
                let blocks = c.u32()?;
                let rel = [c.u32()?, c.u32()?, c.u32()?];
                if c.u32()? & SMGR_TRUNCATE_HEAP != 0 {
                    self.limit(rel, 0, blocks);
                }
            }
            (RM_SMGR_ID, info) => return fail(format!("an unknown storage record type {info:#x}")),
            (RM_DBASE_ID, XLOG_DBASE_CREATE_FILE_COPY | XLOG_DBASE_CREATE_WAL_LOG) => {
                // Both begin with the database's OID, then its tablespace's.
                let db = c.u32()?;
                self.created.insert((c.u32()?, db));
            }
            (RM_DBASE_ID, XLOG_DBASE_DROP) => {
                // xl_dbase_drop_rec: the database, how many tablespaces, their OIDs.
                let db = c.u32()?;
                for _ in 0..c.u32()? {
                    self.created.insert((c.u32()?, db));
                }
            }
            (RM_DBASE_ID, info) => return fail(format!("an unknown database record type {info:#x}")),
            (RM_XACT_ID, _) => {
                for rel in dropped(r.bytes[16], main)? {
                    for fork in 0..=3 {
                        self.limit(rel, fork, 0);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Changes {
        let mut changes = Changes { created: self.created, ..Changes::default() };
        for (fork, (mut blocks, limit)) in self.forks {
            blocks.sort_unstable();
            blocks.dedup();
            let mut runs: Vec<(u32, u32)> = Vec::new();
            for b in blocks {
                match runs.last_mut() {
                    Some((first, n)) if u64::from(*first) + u64::from(*n) == u64::from(b) => *n += 1,
                    _ => runs.push((b, 1)),
                }
            }
            changes.forks.insert(fork, ForkChanges { runs, limit });
        }
        changes
    }
}

/// The relations a commit or abort record (also of a prepared transaction) drops, as ParseCommitRecord and
/// ParseAbortRecord (src/backend/access/rmgrdesc/xactdesc.c) find them: after the time, the xinfo flags say which
/// parts follow, in order: database, subtransactions, relations.
fn dropped(xl_info: u8, main: &[u8]) -> Result<Vec<[u32; 3]>, ScanError> {
    const COMMIT: u8 = 0x00;
    const ABORT: u8 = 0x20;
    const COMMIT_PREPARED: u8 = 0x30;
    const ABORT_PREPARED: u8 = 0x40;
    if !matches!(xl_info & XLOG_XACT_OPMASK, COMMIT | ABORT | COMMIT_PREPARED | ABORT_PREPARED)
        || xl_info & XLOG_XACT_HAS_INFO == 0
    {
        return Ok(Vec::new());
    }
    let mut c = Cursor { b: main, at: 8 };
    let xinfo = c.u32()?;
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        c.skip(8)?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = c.u32()? as usize;
        c.skip(n.checked_mul(4).ok_or_else(|| ScanError("too many subtransactions".into()))?)?;
    }
    let mut rels = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        for _ in 0..c.u32()? {
            rels.push([c.u32()?, c.u32()?, c.u32()?]);
        }
    }
    Ok(rels)
}

/// The fields of XLogPageHeaderData (xlog_internal.h) a page is checked by: xlp_magic, xlp_info, xlp_pageaddr
/// (after xlp_tli) and xlp_rem_len.
struct PageHeader {
    magic: u16,
    info: u16,
    addr: u64,
    rem_len: u64,
}

impl PageHeader {
    fn of(page: &[u8]) -> PageHeader {
        PageHeader {
            magic: u16::from_ne_bytes([page[0], page[1]]),
            info: u16::from_ne_bytes([page[2], page[3]]),
            addr: u64::from_ne_bytes(page[8..16].try_into().expect("8 bytes")),
            rem_len: u64::from(u32::from_ne_bytes(page[16..20].try_into().expect("4 bytes"))),
        }
    }
}

/// Reads the records of a stretch in order, from segment files, checking every page and record (see the
/// module).
struct Records<'a> {
    dir: &'a Path,
    stretch: &'a Stretch<'a>,
    /// The segment size, and XLOG_BLCKSZ from the first segment's long header (0 until it is read).
    layout: Layout,
    /// xlp_magic of the first page read: every page of one cluster's WAL has the same.
    magic: Option<u16>,
    /// The open segment file: its timeline and number, and a window of its bytes (position, bytes).
    open: Option<(u32, u64, File)>,
    window: (u64, Vec<u8>),
    /// Bytes read from segment files.
    read: u64,
    /// Where the next record starts, and where the last one started (for xl_prev).
    at: Lsn,
    prev: Option<Lsn>,
    buf: Vec<u8>,
}

impl<'a> Records<'a> {
    fn new(dir: &'a Path, stretch: &'a Stretch<'a>) -> Result<Records<'a>, ScanError> {
        let Some(&(tli, from, _)) = stretch.pieces.first() else { return fail("no WAL to read".into()) };
        let mut r = Records {
            dir,
            stretch,
            layout: Layout { seg: stretch.seg, page: 0 },
            magic: None,
            open: None,
            window: (0, Vec::new()),
            read: 0,
            at: from,
            prev: None,
            buf: Vec::new(),
        };
        r.open(tli, from)?;
        if from.0.is_multiple_of(r.layout.page) {
            r.at = r.first_record(tli, from)?;
        }
        Ok(r)
    }

    /// The timeline whose segment files hold `lsn`: the piece's that holds it.
    fn tli_at(&self, lsn: Lsn) -> u32 {
        let pieces = self.stretch.pieces;
        pieces.iter().find(|p| lsn < p.2).or(pieces.last()).map_or(1, |p| p.0)
    }

    /// Opens the segment holding `lsn` on `tli`, or on a later timeline of the stretch (a promoted server keeps
    /// the segment where its timeline began under the new timeline's name only, with the old timeline's WAL
    /// before the switch in it), and checks its long header.
    fn open(&mut self, tli: u32, lsn: Lsn) -> Result<(), ScanError> {
        let seg = self.stretch.seg;
        let segno = seg.segno(lsn);
        if self.open.as_ref().is_some_and(|(t, n, _)| *t == tli && *n == segno) {
            return Ok(());
        }
        let tlis = std::iter::once(tli).chain(self.stretch.pieces.iter().map(|p| p.0).filter(|t| *t > tli));
        let mut found = None;
        'search: for t in tlis {
            let name = seg.file_name(t, segno);
            // A streamed segment is renamed from .partial once complete: its name again after that.
            for n in [name.clone(), format!("{name}.partial"), name] {
                if let Ok(f) = files::open_read(&self.dir.join(n)) {
                    found = Some(f);
                    break 'search;
                }
            }
        }
        let Some(file) = found else {
            return fail(format!(
                "the WAL segment {} (for {lsn}) is not in {}: removed or recycled since",
                seg.file_name(tli, segno),
                self.dir.display()
            ));
        };
        let mut h = [0u8; LONG_HEADER as usize];
        file.read_exact_at(&mut h, 0).map_err(|e| ScanError(format!("reading the WAL segment for {lsn}: {e}")))?;
        // XLogLongPageHeaderData: the short header, then system identifier, segment size and page size.
        let PageHeader { magic, info, addr, .. } = PageHeader::of(&h);
        let u32_at = |at: usize| u64::from(u32::from_ne_bytes(h[at..at + 4].try_into().expect("4 bytes")));
        let (sysid, seg_size, page) =
            (u64::from_ne_bytes(h[24..32].try_into().expect("8 bytes")), u32_at(32), u32_at(36));
        let start = seg.segment_start(lsn).0;
        if info & XLP_LONG_HEADER == 0 || addr != start {
            return fail(format!("the WAL segment for {lsn} begins with another segment's page: it was recycled"));
        }
        if sysid != self.stretch.system_id || seg_size != seg.bytes() {
            return fail(format!("the WAL segment for {lsn} is of another cluster (system {sysid})"));
        }
        let known = self.layout.page;
        if !(page.is_power_of_two() && (1024..=65536).contains(&page)) || (known != 0 && page != known) {
            return fail(format!("the WAL segment for {lsn} names a page size of {page}"));
        }
        if *self.magic.get_or_insert(magic) != magic {
            return fail(format!("the WAL segment for {lsn} is of another PostgreSQL version (magic {magic:#x})"));
        }
        self.layout.page = page;
        self.open = Some((tli, segno, file));
        self.window = (0, Vec::new());
        Ok(())
    }

    /// The page starting at `page_start` on `tli`, its header checked: it must be the page of that position (a
    /// recycled segment's pages name older ones, the unwritten end of a segment is zeros).
    fn page(&mut self, tli: u32, page_start: u64) -> Result<&[u8], ScanError> {
        self.open(tli, Lsn(page_start))?;
        let seg = self.stretch.seg;
        let offset = seg.offset(Lsn(page_start));
        let (wstart, wbytes) = &self.window;
        if !(offset >= *wstart && offset + self.layout.page <= *wstart + wbytes.len() as u64) {
            let wstart = offset / WINDOW * WINDOW;
            let len = WINDOW.min(seg.bytes() - wstart) as usize;
            let mut bytes = std::mem::take(&mut self.window.1);
            bytes.resize(len, 0);
            let file = &self.open.as_ref().expect("opened above").2;
            file.read_exact_at(&mut bytes, wstart)
                .map_err(|e| ScanError(format!("reading the WAL at {}: {e}", Lsn(page_start))))?;
            self.read += len as u64;
            self.window = (wstart, bytes);
        }
        let at = (offset - self.window.0) as usize;
        let page = &self.window.1[at..at + self.layout.page as usize];
        let PageHeader { magic, info, addr, .. } = PageHeader::of(page);
        let long = page_start.is_multiple_of(seg.bytes());
        if addr != page_start
            || Some(magic) != self.magic
            || info & !XLP_ALL_FLAGS != 0
            || (info & XLP_LONG_HEADER != 0) != long
        {
            return fail(format!(
                "the WAL ends at {} on timeline {tli} (the page there is not its own)",
                Lsn(page_start)
            ));
        }
        Ok(page)
    }

    /// The first record that starts on the page at `page_start`, after the end of one continued from before.
    fn first_record(&mut self, tli: u32, page_start: Lsn) -> Result<Lsn, ScanError> {
        let mut pos = page_start.0;
        let PageHeader { info, rem_len, .. } = PageHeader::of(self.page(tli, pos)?);
        let mut left = if info & XLP_FIRST_IS_CONTRECORD != 0 { rem_len } else { 0 };
        let Layout { page, .. } = self.layout;
        pos += self.layout.header_at(pos);
        loop {
            let take = left.min(page - pos % page);
            (pos, left) = (pos + take, left - take);
            if left == 0 {
                return Ok(self.next_start(Lsn(pos)));
            }
            self.page(tli, pos)?;
            pos += self.layout.header_at(pos);
        }
    }

    /// Where the record after one ending at `end` starts: MAXALIGNed, past a page header when that is where it
    /// falls.
    fn next_start(&self, end: Lsn) -> Lsn {
        let pos = end.0.next_multiple_of(8);
        Lsn(if pos.is_multiple_of(self.layout.page) { pos + self.layout.header_at(pos) } else { pos })
    }

    /// The record at `lsn`, read on its own: nothing to check its xl_prev against.
    fn read_at(&mut self, lsn: Lsn) -> Result<Record<'_>, ScanError> {
        (self.at, self.prev) = (lsn, None);
        self.next()?.ok_or_else(|| ScanError(format!("no WAL at {lsn}")))
    }

    /// The next record of the stretch, whole and checked, or None past its end.
    fn next(&mut self) -> Result<Option<Record<'_>>, ScanError> {
        let start = self.at;
        if self.stretch.pieces.last().is_none_or(|p| start >= p.2) {
            return Ok(None);
        }
        let tli = self.tli_at(start);
        let page = self.layout.page;
        let mut pos = start.0;
        let first = self.page(tli, pos / page * page)?;
        let off = (pos % page) as usize;
        let tot_len = u64::from(u32::from_ne_bytes(first[off..off + 4].try_into().expect("4 bytes")));
        if !(RECORD_HEADER as u64..=MAX_RECORD).contains(&tot_len) {
            return fail(format!("the WAL ends at {start} on timeline {tli}: no record starts there"));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        while (buf.len() as u64) < tot_len {
            let page_start = pos / page * page;
            let header = self.layout.header_at(page_start);
            let left = tot_len - buf.len() as u64;
            let p = self.page(tli, page_start)?;
            if pos == page_start {
                let PageHeader { info, rem_len, .. } = PageHeader::of(p);
                if info & XLP_FIRST_IS_CONTRECORD == 0 || rem_len != left {
                    return fail(format!("the record at {start} on timeline {tli} does not go on at {}", Lsn(pos)));
                }
                pos += header;
            }
            let at = (pos - page_start) as usize;
            let take = left.min(page - pos % page) as usize;
            buf.extend_from_slice(&p[at..at + take]);
            pos += take as u64;
        }
        self.buf = buf;
        let rec = &self.buf;
        let prev = u64::from_ne_bytes(rec[8..16].try_into().expect("8 bytes"));
        let crc = u32::from_ne_bytes(rec[20..24].try_into().expect("4 bytes"));
        if crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..20]) != crc {
            return fail(format!("the record at {start} on timeline {tli} fails its CRC: the WAL ends there"));
        }
        if self.prev.is_some_and(|p| p.0 != prev) {
            return fail(format!("the record at {start} on timeline {tli} does not follow the one before"));
        }
        let end = Lsn(pos);
        self.prev = Some(start);
        self.at = if rec[17] == RM_XLOG_ID && rec[16] & 0xF0 == XLOG_SWITCH {
            // The rest of the segment is the switch's: the next record starts on the next segment's first page.
            let next = self.stretch.seg.segment_start(Lsn(start.0)).0 + self.stretch.seg.bytes();
            Lsn(next + LONG_HEADER)
        } else {
            self.next_start(end)
        };
        Ok(Some(Record { start, end, bytes: &self.buf }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::wal_read::SHORT_HEADER;

    const SEG: u64 = 1 << 20;
    const PAGE: u64 = 8192;
    const SYSID: u64 = 7_000_000_000_000_000_042;
    const MAGIC: u16 = 0xD110;

    /// Lays records out as XLogInsert does: MAXALIGNed, running on after page headers, each page's header
    /// saying how much of a record continues on it.
    struct Wal {
        bytes: Vec<u8>,
        pos: u64,
        prev: u64,
    }

    impl Wal {
        /// WAL from the start of segment 1 on.
        fn new() -> Wal {
            let mut w = Wal { bytes: Vec::new(), pos: SEG, prev: 0 };
            w.header(SEG, 0);
            w.pos = SEG + LONG_HEADER;
            w
        }

        fn byte(&mut self, at: u64) -> &mut u8 {
            let i = (at - SEG) as usize;
            if self.bytes.len() <= i {
                self.bytes.resize(i + 1, 0);
            }
            &mut self.bytes[i]
        }

        fn put(&mut self, at: u64, b: &[u8]) {
            for (i, x) in b.iter().enumerate() {
                *self.byte(at + i as u64) = *x;
            }
        }

        fn header(&mut self, page: u64, rem: u32) {
            let long = page.is_multiple_of(SEG);
            let info = u16::from(rem > 0) | if long { XLP_LONG_HEADER } else { 0 };
            let mut h = Vec::new();
            h.extend(MAGIC.to_ne_bytes());
            h.extend(info.to_ne_bytes());
            h.extend(1u32.to_ne_bytes());
            h.extend(page.to_ne_bytes());
            h.extend(rem.to_ne_bytes());
            h.extend(0u32.to_ne_bytes());
            if long {
                h.extend(SYSID.to_ne_bytes());
                h.extend((SEG as u32).to_ne_bytes());
                h.extend((PAGE as u32).to_ne_bytes());
            }
            self.put(page, &h);
        }

        /// Appends a record of `rmid` and `info` with `body` (block headers, data, main data); returns its start.
        fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> Lsn {
            let start = self.pos;
            let mut rec = Vec::new();
            rec.extend(((RECORD_HEADER + body.len()) as u32).to_ne_bytes());
            rec.extend(0u32.to_ne_bytes());
            rec.extend(self.prev.to_ne_bytes());
            rec.extend([info, rmid, 0, 0]);
            rec.extend([0u8; 4]);
            rec.extend(body);
            let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..20]);
            rec[20..24].copy_from_slice(&crc.to_ne_bytes());
            let mut left = &rec[..];
            let mut pos = start;
            loop {
                let take = left.len().min((PAGE - pos % PAGE) as usize);
                self.put(pos, &left[..take]);
                (pos, left) = (pos + take as u64, &left[take..]);
                if left.is_empty() {
                    break;
                }
                self.header(pos, left.len() as u32);
                pos += if pos.is_multiple_of(SEG) { LONG_HEADER } else { SHORT_HEADER };
            }
            self.prev = start;
            let next = pos.next_multiple_of(8);
            self.pos = next;
            if next.is_multiple_of(PAGE) {
                self.header(next, 0);
                self.pos += if next.is_multiple_of(SEG) { LONG_HEADER } else { SHORT_HEADER };
            }
            Lsn(start)
        }

        /// XLOG_SWITCH: the next record begins the next segment.
        fn switch(&mut self) -> Lsn {
            let at = self.record(RM_XLOG_ID, XLOG_SWITCH, &[]);
            let next = (at.0 / SEG + 1) * SEG;
            self.header(next, 0);
            self.pos = next + LONG_HEADER;
            at
        }

        /// Writes whole segments of timeline `tli` into `dir`.
        fn write(&self, dir: &Path, tli: u32) {
            let seg = SegSize::new(SEG).unwrap();
            for (i, chunk) in self.bytes.chunks(SEG as usize).enumerate() {
                let mut s = chunk.to_vec();
                s.resize(SEG as usize, 0);
                std::fs::write(dir.join(seg.file_name(tli, 1 + i as u64)), s).unwrap();
            }
        }
    }

    /// A block reference header: block `id`, `fork`, a new relation or the one before, the block number.
    fn block(id: u8, fork: u8, rel: Option<[u32; 3]>, blk: u32, data: u16) -> Vec<u8> {
        let mut b = vec![id, fork | if rel.is_none() { BKPBLOCK_SAME_REL } else { 0 }];
        if data > 0 {
            b[1] |= BKPBLOCK_HAS_DATA;
        }
        b.extend(data.to_ne_bytes());
        for x in rel.into_iter().flatten() {
            b.extend(x.to_ne_bytes());
        }
        b.extend(blk.to_ne_bytes());
        b
    }

    /// A body of `headers`, then `data` (block data), then `main` under a short data header.
    fn body(headers: &[Vec<u8>], data: usize, main: &[u8]) -> Vec<u8> {
        let mut b: Vec<u8> = headers.concat();
        if !main.is_empty() {
            b.extend([XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
        }
        b.extend(vec![0xAB; data]);
        b.extend(main);
        b
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    const REL: [u32; 3] = [1663, 5, 16384];

    fn fork(rel: [u32; 3], fork: u8) -> Fork {
        Fork { tablespace: rel[0], database: rel[1], relfilenode: rel[2], fork }
    }

    fn scan(dir: &Path, pieces: &[(u32, Lsn, Lsn)]) -> Result<Changes, ScanError> {
        let stretch = Stretch { pieces, seg: SegSize::new(SEG).unwrap(), system_id: SYSID, hints: false };
        changes(dir, &stretch).map(|s| s.changes)
    }

    #[test]
    fn block_references_and_relation_records_become_changes() {
        let mut w = Wal::new();
        let from = w.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[99]))); // XLOG_NEXTOID
                                                                             // Heap records: blocks 3 and 4 (the second on the same relation), a big one across pages, then block 9
                                                                             // with a compressed full-page image that has a hole.
        w.record(10, 0, &body(&[block(0, 0, Some(REL), 3, 10), block(1, 0, None, 4, 0)], 10, &[1, 2]));
        w.record(10, 0, &body(&[block(0, 0, Some(REL), 5, 18000)], 18000, &[]));
        let mut image = block(0, BKPBLOCK_HAS_IMAGE, Some(REL), 9, 0);
        image.splice(
            4..4,
            [100u16.to_ne_bytes(), 0u16.to_ne_bytes()]
                .concat()
                .into_iter()
                .chain([0x04 | BKPIMAGE_HAS_HOLE])
                .chain(8u16.to_ne_bytes()),
        );
        w.record(10, 0, &body(&[image], 100, &[7]));
        // A visibility map block of another relation, created in this stretch (XLOG_SMGR_CREATE of its main fork).
        let other = [1663, 5, 16390];
        w.record(RM_SMGR_ID, XLOG_SMGR_CREATE, &body(&[], 0, &words(&[1663, 5, 16390, 0])));
        w.record(9, 0, &body(&[block(0, 2, Some(other), 0, 0), block(1, 0, Some(other), 1, 0)], 0, &[]));
        // Truncated to 6 blocks, then to 8: the lower limit holds.
        w.record(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &body(&[], 0, &words(&[6, 1663, 5, 16384, 7])));
        w.record(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &body(&[], 0, &words(&[8, 1663, 5, 16384, 1])));
        // A database created by FILE_COPY, another dropped in two tablespaces.
        w.record(RM_DBASE_ID, XLOG_DBASE_CREATE_FILE_COPY, &body(&[], 0, &words(&[16400, 1663, 1, 1663])));
        w.record(RM_DBASE_ID, XLOG_DBASE_DROP, &body(&[], 0, &words(&[16401, 2, 1663, 16500])));
        // A commit with database info, two subtransactions and a dropped relation.
        let dropped = [1663, 5, 16395];
        let mut commit = 0u64.to_ne_bytes().to_vec();
        commit.extend(words(&[XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILELOCATORS]));
        commit.extend(words(&[5, 1663, 2, 700, 701, 1, 1663, 5, 16395]));
        w.record(RM_XACT_ID, XLOG_XACT_HAS_INFO, &body(&[], 0, &commit));
        let to = w.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[100])));
        // Past the stretch: not read.
        w.record(10, 0, &body(&[block(0, 0, Some(REL), 77, 0)], 0, &[]));
        let d = tempfile::tempdir().unwrap();
        w.write(d.path(), 1);

        let c = scan(d.path(), &[(1, from, to)]).unwrap();
        assert_eq!(c.forks[&fork(REL, 0)], ForkChanges { runs: vec![(3, 3), (9, 1)], limit: Some(6) });
        assert_eq!(c.forks[&fork(other, 0)], ForkChanges { runs: vec![(1, 1)], limit: Some(0) });
        assert_eq!(c.forks[&fork(other, 2)].runs, vec![(0, 1)]);
        for f in 0..=3 {
            assert_eq!(c.forks[&fork(dropped, f)].limit, Some(0));
        }
        assert_eq!(c.created, HashSet::from([(1663, 16400), (1663, 16401), (16500, 16401)]));
        assert_eq!(c.forks.len(), 7, "{:?}", c.forks.keys());
    }

    #[test]
    fn a_scan_from_a_segment_start_skips_the_record_continued_there_and_follows_a_switch() {
        let mut w = Wal::new();
        let mut last = Lsn(0);
        // Records up to and across the end of segment 1.
        while w.pos < 2 * SEG - 3 * PAGE {
            last = w.record(10, 0, &body(&[block(0, 0, Some(REL), 1, 2000)], 2000, &[]));
        }
        let across = w.record(10, 0, &body(&[block(0, 0, Some(REL), 2, 5 * PAGE as u16)], 5 * PAGE as usize, &[]));
        assert!(across.0 < 2 * SEG && w.pos > 2 * SEG + PAGE, "{across} {}", w.pos);
        w.record(10, 0, &body(&[block(0, 0, Some(REL), 3, 0)], 0, &[]));
        w.switch();
        let after = w.record(10, 0, &body(&[block(0, 0, Some(REL), 4, 0)], 0, &[]));
        assert_eq!(after, Lsn(3 * SEG + LONG_HEADER));
        let end = w.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[1])));
        let d = tempfile::tempdir().unwrap();
        w.write(d.path(), 1);

        let c = scan(d.path(), &[(1, Lsn(2 * SEG), end)]).unwrap();
        assert_eq!(c.forks[&fork(REL, 0)].runs, vec![(3, 2)], "block 2's record began before the stretch");
        let c = scan(d.path(), &[(1, last, Lsn(2 * SEG))]).unwrap();
        assert_eq!(c.forks[&fork(REL, 0)].runs, vec![(1, 2)], "a record starting before the end is read whole");
    }

    #[test]
    fn timelines_are_read_from_their_own_segments() {
        let mut w = Wal::new();
        let from = w.record(10, 0, &body(&[block(0, 0, Some(REL), 1, 0)], 0, &[]));
        while w.pos < SEG + SEG / 2 {
            w.record(10, 0, &body(&[block(0, 0, Some(REL), 2, 3000)], 3000, &[]));
        }
        let switch = w.pos;
        w.record(10, 0, &body(&[block(0, 0, Some(REL), 3, 0)], 0, &[]));
        while w.pos < 2 * SEG + 100 {
            w.record(10, 0, &body(&[block(0, 0, Some(REL), 4, 3000)], 3000, &[]));
        }
        let to = w.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[1])));
        let d = tempfile::tempdir().unwrap();
        // Timeline 2 began in segment 1, which the promoted server holds under timeline 2's name only.
        w.write(d.path(), 2);
        let seg = SegSize::new(SEG).unwrap();
        std::fs::remove_file(d.path().join(seg.file_name(2, 1))).unwrap();
        assert!(scan(d.path(), &[(1, from, Lsn(switch)), (2, Lsn(switch), to)]).is_err(), "segment 1 is gone");
        w.write(d.path(), 2);
        std::fs::rename(d.path().join(seg.file_name(2, 2)), d.path().join(seg.file_name(2, 2) + ".partial")).unwrap();
        let c = scan(d.path(), &[(1, from, Lsn(switch)), (2, Lsn(switch), to)]).unwrap();
        assert_eq!(c.forks[&fork(REL, 0)].runs, vec![(1, 4)]);
    }

    #[test]
    fn wal_that_does_not_prove_itself_ends_the_scan() {
        let mut w = Wal::new();
        let from = w.record(10, 0, &body(&[block(0, 0, Some(REL), 1, 0)], 0, &[]));
        let second = w.record(10, 0, &body(&[block(0, 0, Some(REL), 2, 0)], 0, &[]));
        let to = w.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[1])));
        let d = tempfile::tempdir().unwrap();
        let err = |w: &Wal, to: Lsn| {
            w.write(d.path(), 1);
            scan(d.path(), &[(1, from, to)]).unwrap_err().to_string()
        };
        assert!(err(&w, Lsn(SEG + PAGE)).contains("no record starts there"), "the WAL ends before the stretch");
        let mut bad = Wal { bytes: w.bytes.clone(), ..w };
        let crc_at = second.0 + 30;
        *bad.byte(crc_at) ^= 1;
        assert!(err(&bad, to).contains("fails its CRC"));
        let mut recycled = Wal { bytes: w.bytes.clone(), pos: 0, prev: 0 };
        recycled.put(SEG + 8, &(SEG * 9).to_ne_bytes());
        assert!(err(&recycled, to).contains("recycled"));
        let mut other = Wal { bytes: w.bytes.clone(), pos: 0, prev: 0 };
        other.put(SEG + 24, &1u64.to_ne_bytes());
        assert!(err(&other, to).contains("another cluster"));
        let mut minimal = Wal::new();
        minimal.record(RM_XLOG_ID, XLOG_PARAMETER_CHANGE, &body(&[], 0, &words(&[100, 8, 10, 0, 64, 0, 0])));
        let to = minimal.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[1])));
        assert!(err(&minimal, to).contains("wal_level = minimal"));
        assert!(scan(&d.path().join("nothing"), &[(1, from, to)]).unwrap_err().to_string().contains("is not in"));
        // A link where a segment should be is not followed.
        let elsewhere = tempfile::tempdir().unwrap();
        w.write(elsewhere.path(), 1);
        let seg = SegSize::new(SEG).unwrap();
        std::fs::remove_file(d.path().join(seg.file_name(1, 1))).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join(seg.file_name(1, 1)), d.path().join(seg.file_name(1, 1)))
            .unwrap();
        assert!(scan(d.path(), &[(1, from, to)]).is_err());
    }

    #[test]
    fn the_last_checkpoint_before_a_fork_is_found_walking_back() {
        let mut w = Wal::new();
        let checkpoint = |w: &mut Wal, redo: u64| {
            let mut c = redo.to_ne_bytes().to_vec();
            c.extend([0u8; 80]);
            w.record(RM_XLOG_ID, 0x10, &body(&[], 0, &c))
        };
        checkpoint(&mut w, SEG);
        let redo = w.record(10, 0, &body(&[block(0, 0, Some(REL), 1, 0)], 0, &[]));
        let online = checkpoint(&mut w, redo.0);
        while w.pos < SEG + 3 * PAGE {
            w.record(10, 0, &body(&[block(0, 0, Some(REL), 2, 3000)], 3000, &[]));
        }
        let last_common = w.record(10, 0, &body(&[block(0, 0, Some(REL), 3, 0)], 0, &[]));
        let fork = Lsn(w.pos - 4);
        assert!(fork > last_common);
        // A checkpoint that began before the fork but ends after it is not one the primary has.
        checkpoint(&mut w, last_common.0);
        let d = tempfile::tempdir().unwrap();
        w.write(d.path(), 1);
        let seg = SegSize::new(SEG).unwrap();
        assert_eq!(checkpoint_before(d.path(), seg, SYSID, 1, fork).unwrap(), (online, redo));
        assert!(checkpoint_before(d.path(), seg, SYSID, 1, Lsn(SEG + 60)).is_err(), "none before it");
    }

    #[test]
    fn a_restart_is_refused_where_every_hint_must_be_logged() {
        let mut w = Wal::new();
        let from = w.record(RM_XLOG_ID, XLOG_PARAMETER_CHANGE, &body(&[], 0, &words(&[100, 8, 10, 0, 64, 1, 1])));
        let to = w.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[1])));
        let d = tempfile::tempdir().unwrap();
        w.write(d.path(), 1);
        let pieces = [(1, from, to)];
        let stretch = |hints| Stretch { pieces: &pieces, seg: SegSize::new(SEG).unwrap(), system_id: SYSID, hints };
        assert!(changes(d.path(), &stretch(false)).is_ok());
        assert!(changes(d.path(), &stretch(true)).unwrap_err().to_string().contains("wal_log_hints"));
    }

    #[test]
    fn the_backup_end_record_naming_the_start_ends_the_backup() {
        let mut w = Wal::new();
        let start = w.record(RM_XLOG_ID, 0x30, &body(&[], 0, &words(&[1])));
        // Another backup's end first, then this one's.
        w.record(RM_XLOG_ID, XLOG_BACKUP_END, &body(&[], 0, &(start.0 - 8).to_ne_bytes()));
        let end = w.record(RM_XLOG_ID, XLOG_BACKUP_END, &body(&[], 0, &start.0.to_ne_bytes()));
        let after = w.pos;
        let d = tempfile::tempdir().unwrap();
        w.write(d.path(), 1);
        let seg = SegSize::new(SEG).unwrap();
        let got = backup_end(d.path(), seg, SYSID, 1, start).unwrap();
        assert!(got > end && got.0 <= after, "{got} after {end}");
        assert!(backup_end(d.path(), seg, SYSID, 1, Lsn(start.0 + 8)).is_err(), "no end for that start");
    }
}
