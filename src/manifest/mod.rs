//! backup_manifest, in PostgreSQL's format (src/backend/backup/backup_manifest.c; read by pg_verifybackup),
//! and the read pass over the copied files that produces its checksums and verifies data page checksums.

pub mod json;
pub mod verify;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::{IoAt, IoContext};
use crate::pg::lsn::Lsn;
use crate::pg::page_checksum::{check_pages, BadPage, BLCKSZ, RELSEG_BLOCKS};
use crate::pg::relfile::relation_segment;
use crate::replica::direct_io::{AlignedBuf, Target};

/// One file as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSum {
    pub path: PathBuf,
    pub size: u64,
    pub mtime: i64,
    /// None: the file is listed with its size only (in place unread after a re-sync by WAL summaries).
    pub crc32c: Option<u32>,
}

/// Reads each of `files` (relative to `dest`; missing ones vanished on the primary and are skipped) once,
/// with `parallel` threads: CRC32C for the manifest and, with `pages_before` set (data checksums on), the
/// checksum of every page of a relation file whose LSN is older than the backup start. Newer pages may be
/// torn by concurrent writes and are restored from WAL anyway (basebackup.c verifies the same pages).
pub fn scan(
    dest: &Path,
    files: &[PathBuf],
    pages_before: Option<Lsn>,
    parallel: usize,
) -> Result<(Vec<FileSum>, Vec<BadPage>), IoAt> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new((Vec::new(), Vec::new(), None));
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(rel) = files.get(i) else { return };
                let checks = pages_before.and_then(|lsn| relation_segment(rel).map(|seg| (lsn, seg)));
                let r = sum_file(dest, rel, checks);
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(Some((sum, bad))) => {
                        o.0.push(sum);
                        o.1.extend(bad);
                    }
                    Ok(None) => {}
                    Err(e) => o.2 = Some(e),
                }
            });
        }
    });
    let (mut sums, bad, err) = out.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = err {
        return Err(e);
    }
    sums.sort_by(|a: &FileSum, b| a.path.cmp(&b.path));
    Ok((sums, bad))
}

type Checked = (FileSum, Vec<BadPage>);

/// Bytes per read of the scan: whole pages, large enough that direct reads keep the disk busy.
const SCAN_CHUNK: usize = 128 * BLCKSZ;

fn sum_file(dest: &Path, rel: &Path, checks: Option<(Lsn, u64)>) -> Result<Option<Checked>, IoAt> {
    let path = dest.join(rel);
    // Directly from the disk where possible: the copy was written past the page cache, and reading it back
    // through the cache would cost what writing past it saved.
    let f = match Target::open_read(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IoAt::new("opening", path, e)),
    };
    let meta = f.file.metadata().at("reading", &path)?;
    let mut crc = 0u32;
    let mut bad = Vec::new();
    let mut buf = AlignedBuf::new(SCAN_CHUNK);
    let buf = buf.get(SCAN_CHUNK);
    let mut block = 0u64;
    let mut pos = 0u64;
    loop {
        let n = f.read_at(buf, pos).at("reading", &path)?;
        if n == 0 {
            break;
        }
        pos += n as u64;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        if let Some((start, seg)) = checks {
            check_pages(rel, seg * RELSEG_BLOCKS + block, &buf[..n], start, &mut bad);
            block += (n / BLCKSZ) as u64;
        }
        if n < SCAN_CHUNK {
            break;
        }
    }
    Ok(Some((FileSum { path: rel.to_path_buf(), size: meta.len(), mtime: meta.mtime(), crc32c: Some(crc) }, bad)))
}

/// The manifest entries of those `files` (relative to `dest`) whose every byte was seen landing: `ranges`
/// (offset, len, CRC32C) tile the file exactly as it is now. The others are returned for `scan`; files
/// that are gone (vanished on the primary) are in neither.
pub fn from_landed(
    dest: &Path,
    files: &[PathBuf],
    ranges: &mut HashMap<PathBuf, Vec<(u64, u64, u32)>>,
) -> Result<(Vec<FileSum>, Vec<PathBuf>), IoAt> {
    let (mut sums, mut rest) = (Vec::new(), Vec::new());
    for rel in files {
        let path = dest.join(rel);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IoAt::new("reading", path, e)),
        };
        let mut parts = ranges.remove(rel).unwrap_or_default();
        parts.sort_unstable();
        let (mut pos, mut crc) = (0u64, 0u32);
        for (offset, len, c) in parts {
            if offset != pos {
                break;
            }
            crc = crc_concat(crc, c, len);
            pos += len;
        }
        if pos == meta.len() {
            sums.push(FileSum { path: rel.clone(), size: pos, mtime: meta.mtime(), crc32c: Some(crc) });
        } else {
            rest.push(rel.clone());
        }
    }
    Ok((sums, rest))
}

/// Entries without a checksum for `files` (relative to `dest`) as they are now; missing ones vanished on the
/// primary and are skipped.
pub fn unread(dest: &Path, files: &[PathBuf]) -> Result<Vec<FileSum>, IoAt> {
    let mut sums = Vec::new();
    for rel in files {
        let path = dest.join(rel);
        match std::fs::metadata(&path) {
            Ok(m) => sums.push(FileSum { path: rel.clone(), size: m.len(), mtime: m.mtime(), crc32c: None }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoAt::new("reading", path, e)),
        }
    }
    Ok(sums)
}

/// CRC-32C's polynomial, bit-reversed: the CRC runs least significant bit first, so bit 31 stands for x^0.
const POLY: u32 = 0x82F6_3B78;

/// a·b modulo the polynomial, in that reversed bit order.
const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let (mut product, mut bit) = (0, 1u32 << 31);
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        bit >>= 1;
    }
    product
}

/// POWERS[k] = x^(2^k) modulo the polynomial, for every power a length in bits can need.
const POWERS: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < t.len() {
        t[k] = p;
        p = mul_mod(p, p);
        k += 1;
    }
    t
};

/// The CRC-32C of A followed by B, from the CRCs of both and B's length: A's CRC moved past B's bits
/// (multiplied by x^(8·len_b)) plus B's CRC. A delta lands a file in thousands of ranges; this costs a few
/// dozen multiplications per range where crc32c's combine squares 32×32 matrices for every bit of length.
fn crc_concat(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    let (mut shift, mut n, mut k) = (1u32 << 31, len_b, 3);
    while n != 0 {
        if n & 1 != 0 {
            shift = mul_mod(POWERS[k], shift);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod(shift, crc_a) ^ crc_b
}

/// Sums bytes written by pgclone itself (backup_label, pg_control, ...), with the file's current mtime.
pub fn sum_bytes(path: &Path, rel: &str, bytes: &[u8]) -> FileSum {
    let mtime = std::fs::metadata(path).map(|m| m.mtime()).unwrap_or_else(|_| now_secs());
    FileSum { path: rel.into(), size: bytes.len() as u64, mtime, crc32c: Some(crc32c::crc32c(bytes)) }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64
}

/// What the manifest says about the backup as a whole.
pub struct Header {
    /// 1 up to PostgreSQL 16; 2 from 17, which adds the system identifier.
    pub version: u32,
    pub system_id: u64,
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// The manifest text. Its last line carries the SHA-256 of everything before it; pg_verifybackup requires
/// the text to end in a newline and hashes up to and including the one before the last line.
pub fn render(h: &Header, files: &[FileSum]) -> String {
    let mut s = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": {},\n", h.version);
    if h.version >= 2 {
        s.push_str(&format!("\"System-Identifier\": {},\n", h.system_id));
    }
    s.push_str("\"Files\": [");
    for (i, f) in files.iter().enumerate() {
        s.push_str(if i == 0 { "\n" } else { ",\n" });
        s.push_str(&format!(
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{}\"",
            json::string(&f.path.to_string_lossy()),
            f.size,
            gmt(f.mtime),
        ));
        // Without a checksum the entry names no algorithm, as pg_basebackup --manifest-checksums=NONE writes it.
        if let Some(crc) = f.crc32c {
            s.push_str(&format!(", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\"", crc_hex(crc)));
        }
        s.push_str(" }");
    }
    s.push_str(&format!(
        " ],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        h.timeline, h.start, h.end
    ));
    let digest = Sha256::digest(s.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    s.push_str(&format!("\"Manifest-Checksum\": \"{hex}\"}}\n"));
    s
}

pub fn write(replica: &Path, text: &str) -> Result<(), IoAt> {
    let path = replica.join("backup_manifest");
    let mut f = crate::sys::files::create_new(&path)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).at("writing", &path)
}

/// PostgreSQL hex-encodes the CRC's bytes as they lie in memory (pg_checksum_final copies the pg_crc32c), so
/// the text is the native, not the numeric, byte order.
pub fn crc_hex(crc: u32) -> String {
    crc.to_ne_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// "YYYY-MM-DD HH:MM:SS GMT" for a Unix time, as the manifest's Last-Modified.
fn gmt(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (the proleptic Gregorian calendar, as in Howard Hinnant's
    // days_from_civil inverse).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} GMT", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmt_dates() {
        assert_eq!(gmt(0), "1970-01-01 00:00:00 GMT");
        assert_eq!(gmt(951_782_400), "2000-02-29 00:00:00 GMT");
        assert_eq!(gmt(1_795_500_000), "2026-11-24 06:00:00 GMT");
    }

    #[test]
    fn manifest_checksum_covers_everything_before_its_line() {
        let h = Header { version: 2, system_id: 7, timeline: 1, start: Lsn(0x2000028), end: Lsn(0x2000100) };
        let files = vec![
            FileSum { path: "PG_VERSION".into(), size: 3, mtime: 0, crc32c: Some(0xabcd) },
            FileSum { path: "base/1/1259".into(), size: 8192, mtime: 0, crc32c: None },
        ];
        let m = render(&h, &files);
        assert!(m.ends_with("}\n"));
        assert!(m.contains("\"System-Identifier\": 7,\n"));
        assert!(m.contains(&format!("\"Checksum\": \"{}\"", crc_hex(0xabcd))));
        assert!(
            m.contains("{ \"Path\": \"base/1/1259\", \"Size\": 8192, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\" }")
        );
        let last = m[..m.len() - 1].rfind('\n').unwrap();
        let digest: String = Sha256::digest(&m.as_bytes()[..=last]).iter().map(|b| format!("{b:02x}")).collect();
        assert!(m[last..].contains(&digest));
    }

    #[test]
    fn scan_sums_files_and_finds_bad_pages() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("base/5")).unwrap();
        let mut good = [0u8; BLCKSZ];
        good[14] = 0x20;
        let c = crate::pg::page_checksum::page_checksum(&good, 1);
        good[8..10].copy_from_slice(&c.to_ne_bytes());
        let mut bad = good;
        bad[3000] = 1;
        let newer = {
            let mut p = bad;
            p[0..4].copy_from_slice(&5u32.to_ne_bytes());
            p
        };
        let data = [[0u8; BLCKSZ], good, bad, newer].concat();
        std::fs::write(d.path().join("base/5/16384"), &data).unwrap();
        std::fs::write(d.path().join("PG_VERSION"), b"15\n").unwrap();
        let files = vec![PathBuf::from("base/5/16384"), PathBuf::from("PG_VERSION"), PathBuf::from("gone")];
        let (sums, bad_pages) = scan(d.path(), &files, Some(Lsn(1 << 32)), 2).unwrap();
        assert_eq!(sums.len(), 2);
        assert_eq!(sums[0].crc32c, Some(crc32c::crc32c(b"15\n")));
        // Block 1 carries its own checksum (computed for block number 1); block 2 is corrupt; block 3 is
        // newer than the backup start and not judged; block 0 is new.
        assert_eq!(bad_pages, vec![BadPage { path: "base/5/16384".into(), block: 2 }]);
    }

    #[test]
    fn concatenated_crcs_match_the_crc_of_the_whole() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for cut in [0, 1, 7, 8192, 65_537, 299_999, 300_000] {
            let (a, b) = data.split_at(cut);
            let whole = crc_concat(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64);
            assert_eq!(whole, crc32c::crc32c(&data), "cut at {cut}");
        }
        let huge = 5u64 << 40;
        assert_eq!(crc_concat(7, 9, huge), crc32c::crc32c_combine(7, 9, huge as usize), "lengths beyond 4 GiB");
    }

    #[test]
    fn landed_ranges_give_the_checksum_of_files_they_tile() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
        for f in ["whole", "gap", "short", "empty"] {
            std::fs::write(d.path().join(f), if f == "empty" { &data[..0] } else { &data[..] }).unwrap();
        }
        let crc = |r: std::ops::Range<usize>| (r.start as u64, r.len() as u64, crc32c::crc32c(&data[r]));
        let mut ranges: HashMap<PathBuf, Vec<(u64, u64, u32)>> = HashMap::new();
        // Out of order, as several workers land them.
        ranges.insert("whole".into(), vec![crc(60_000..100_000), crc(0..10), crc(10..60_000)]);
        ranges.insert("gap".into(), vec![crc(0..10), crc(20..100_000)]);
        ranges.insert("short".into(), vec![crc(0..99_999)]);
        let files: Vec<PathBuf> = ["whole", "gap", "short", "empty", "gone"].iter().map(PathBuf::from).collect();
        let (sums, rest) = from_landed(d.path(), &files, &mut ranges).unwrap();
        let got: Vec<(&str, Option<u32>)> = sums.iter().map(|s| (s.path.to_str().unwrap(), s.crc32c)).collect();
        assert_eq!(got, vec![("whole", Some(crc32c::crc32c(&data))), ("empty", Some(0))]);
        assert_eq!(rest, vec![PathBuf::from("gap"), PathBuf::from("short")]);
    }
}
