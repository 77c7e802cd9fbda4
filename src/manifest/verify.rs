//! `pgclone verify DIR`: checks a copy against its backup_manifest the way pg_verifybackup does
//! (src/bin/pg_verifybackup): the manifest's own checksum, every listed file's size and checksum, no
//! unlisted files, and every WAL segment of the manifest's WAL range present in pg_wal.

use std::collections::HashMap;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::Digest;

use crate::error::{IoAt, IoContext};
use crate::manifest::crc_hex;
use crate::pg::lsn::{Lsn, SegSize};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error("backup_manifest is not valid: {0}")]
    Manifest(String),
}

/// What a check found: counts, and one line per problem.
#[derive(Debug)]
pub struct Report {
    pub files: usize,
    pub bytes: u64,
    pub wal_segments: u64,
    pub problems: Vec<String>,
}

/// Files a copy may hold without the manifest naming them (pg_verifybackup's ignore list): the manifest
/// itself, the settings and signal files -R writes, and WAL, which the WAL range covers instead.
const IGNORED: [&str; 5] = ["backup_manifest", "pg_wal", "postgresql.auto.conf", "recovery.signal", "standby.signal"];

pub fn verify(dir: &Path) -> Result<Report, VerifyError> {
    let path = dir.join("backup_manifest");
    let text = std::fs::read(&path).at("reading", &path)?;
    check_manifest_checksum(&text)?;
    let m: Value = serde_json::from_slice(&text).map_err(|e| VerifyError::Manifest(e.to_string()))?;
    let bad = |what: &str| VerifyError::Manifest(what.to_string());

    let mut report = Report { files: 0, bytes: 0, wal_segments: 0, problems: Vec::new() };
    let mut listed: HashMap<PathBuf, ()> = HashMap::new();
    for f in m["Files"].as_array().ok_or_else(|| bad("no Files array"))? {
        let rel = match (f["Path"].as_str(), f["Encoded-Path"].as_str()) {
            (Some(p), _) => PathBuf::from(p),
            (None, Some(hex)) => {
                PathBuf::from(std::ffi::OsString::from_vec(unhex(hex).ok_or_else(|| bad("bad Encoded-Path"))?))
            }
            _ => return Err(bad("a file without Path")),
        };
        let size = f["Size"].as_u64().ok_or_else(|| bad("a file without Size"))?;
        let algorithm = f["Checksum-Algorithm"].as_str().unwrap_or("NONE");
        listed.insert(rel.clone(), ());
        report.files += 1;
        let (len, actual) = match checksum(&dir.join(&rel), algorithm) {
            Ok(Some(found)) => found,
            Ok(None) => return Err(VerifyError::Manifest(format!("unknown checksum algorithm {algorithm}"))),
            Err(_) => {
                report.problems.push(format!("\"{}\" is in the manifest but not on disk", rel.display()));
                continue;
            }
        };
        report.bytes += len;
        if len != size {
            report.problems.push(format!("\"{}\" has size {len} on disk but {size} in the manifest", rel.display()));
            continue;
        }
        if algorithm == "NONE" {
            continue;
        }
        if Some(actual.as_str()) != f["Checksum"].as_str() {
            report.problems.push(format!("checksum mismatch for \"{}\"", rel.display()));
        }
    }
    for rel in walk(dir)? {
        if !listed.contains_key(&rel) && !IGNORED.iter().any(|i| rel.starts_with(i)) {
            report.problems.push(format!("\"{}\" is on disk but not in the manifest", rel.display()));
        }
    }
    for range in m["WAL-Ranges"].as_array().ok_or_else(|| bad("no WAL-Ranges array"))? {
        let tli = range["Timeline"].as_u64().ok_or_else(|| bad("a WAL range without Timeline"))? as u32;
        let lsn = |k: &str| -> Result<Lsn, VerifyError> {
            range[k].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("a WAL range without its LSNs"))
        };
        let (start, end) = (lsn("Start-LSN")?, lsn("End-LSN")?);
        report.wal_segments += check_wal(dir, tli, start, end, &mut report.problems)?;
    }
    Ok(report)
}

/// A file's size and its checksum in the manifest's notation (empty for NONE), read a MiB at a time: a relation
/// segment is up to 1 GiB. None: an algorithm the manifest format does not have.
fn checksum(path: &Path, algorithm: &str) -> std::io::Result<Option<(u64, String)>> {
    enum Sum {
        None,
        Crc(u32),
        Sha224(sha2::Sha224),
        Sha256(sha2::Sha256),
        Sha384(sha2::Sha384),
        Sha512(sha2::Sha512),
    }
    let mut sum = match algorithm {
        "NONE" => Sum::None,
        "CRC32C" => Sum::Crc(0),
        "SHA224" => Sum::Sha224(Default::default()),
        "SHA256" => Sum::Sha256(Default::default()),
        "SHA384" => Sum::Sha384(Default::default()),
        "SHA512" => Sum::Sha512(Default::default()),
        _ => return Ok(None),
    };
    let mut f = std::fs::File::open(path)?;
    let (mut buf, mut len) = (vec![0u8; 1 << 20], 0u64);
    loop {
        let n = match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n as u64;
        let data = &buf[..n];
        match &mut sum {
            Sum::None => {}
            Sum::Crc(c) => *c = crc32c::crc32c_append(*c, data),
            Sum::Sha224(h) => h.update(data),
            Sum::Sha256(h) => h.update(data),
            Sum::Sha384(h) => h.update(data),
            Sum::Sha512(h) => h.update(data),
        }
    }
    let text = match sum {
        Sum::None => String::new(),
        Sum::Crc(c) => crc_hex(c),
        Sum::Sha224(h) => hex(&h.finalize()),
        Sum::Sha256(h) => hex(&h.finalize()),
        Sum::Sha384(h) => hex(&h.finalize()),
        Sum::Sha512(h) => hex(&h.finalize()),
    };
    Ok(Some((len, text)))
}

/// The manifest's last line holds the SHA-256 of everything up to and including the newline before it.
fn check_manifest_checksum(text: &[u8]) -> Result<(), VerifyError> {
    let bad = |what: &str| VerifyError::Manifest(what.to_string());
    if text.last() != Some(&b'\n') {
        return Err(bad("it does not end in a newline"));
    }
    let body = &text[..text.len() - 1];
    let cut = body.iter().rposition(|b| *b == b'\n').ok_or_else(|| bad("it has fewer than two lines"))? + 1;
    let last = String::from_utf8_lossy(&text[cut..]);
    let expected = hex(&sha2::Sha256::digest(&text[..cut]));
    if !last.contains(&expected) {
        return Err(bad("its Manifest-Checksum does not match its contents"));
    }
    Ok(())
}

/// Every segment from the range's start through the one holding its last byte must be in pg_wal. The segment
/// size is that of the WAL files present (all of a cluster's segments have its wal_segment_size).
fn check_wal(dir: &Path, tli: u32, start: Lsn, end: Lsn, problems: &mut Vec<String>) -> Result<u64, VerifyError> {
    let pg_wal = dir.join("pg_wal");
    let size = std::fs::read_dir(&pg_wal)
        .at("reading", &pg_wal)?
        .flatten()
        .filter(|e| e.file_name().len() == 24)
        .find_map(|e| e.metadata().ok().and_then(|m| SegSize::new(m.len())));
    let Some(seg) = size else {
        problems.push("pg_wal holds no WAL segment".into());
        return Ok(0);
    };
    let (first, last) = (seg.segno(start), seg.segno(Lsn(end.0.saturating_sub(1))));
    for segno in first..=last {
        let name = seg.file_name(tli, segno);
        if std::fs::metadata(pg_wal.join(&name)).map(|m| m.len()).ok() != Some(seg.bytes()) {
            problems.push(format!("WAL segment {name} of the range {start}..{end} is missing or short"));
        }
    }
    Ok(last - first + 1)
}

/// Regular files under `dir`, relative to it; tablespace links in pg_tblspc are followed, as the server does.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, VerifyError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let entries = std::fs::read_dir(&abs).at("reading", &abs)?;
        for e in entries.flatten() {
            let child = rel.join(e.file_name());
            let follow = rel == Path::new("pg_tblspc");
            let meta = if follow { std::fs::metadata(e.path()) } else { std::fs::symlink_metadata(e.path()) };
            match meta {
                Ok(m) if m.is_dir() => stack.push(child),
                Ok(m) if m.is_file() => out.push(child),
                _ => {}
            }
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{render, FileSum, Header};

    fn backup() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("pg_wal")).unwrap();
        std::fs::create_dir_all(d.path().join("base/1")).unwrap();
        std::fs::write(d.path().join("base/1/100"), b"relation").unwrap();
        std::fs::write(d.path().join("PG_VERSION"), b"15\n").unwrap();
        std::fs::write(d.path().join("standby.signal"), b"").unwrap();
        std::fs::write(d.path().join("pg_wal/000000010000000000000002"), vec![0u8; 1 << 20]).unwrap();
        let files: Vec<FileSum> = ["PG_VERSION", "base/1/100"]
            .iter()
            .map(|p| {
                let bytes = std::fs::read(d.path().join(p)).unwrap();
                FileSum { path: p.into(), size: bytes.len() as u64, mtime: 0, crc32c: Some(crc32c::crc32c(&bytes)) }
            })
            .collect();
        let h = Header { version: 1, system_id: 1, timeline: 1, start: Lsn(0x200028), end: Lsn(0x200100) };
        std::fs::write(d.path().join("backup_manifest"), render(&h, &files)).unwrap();
        d
    }

    #[test]
    fn a_faithful_copy_passes() {
        let d = backup();
        let r = verify(d.path()).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.files, r.wal_segments), (2, 1));
    }

    #[test]
    fn changed_missing_extra_files_and_wal_gaps_are_reported() {
        let d = backup();
        std::fs::write(d.path().join("base/1/100"), b"relatioN").unwrap();
        std::fs::remove_file(d.path().join("PG_VERSION")).unwrap();
        std::fs::write(d.path().join("base/1/999"), b"x").unwrap();
        std::fs::remove_file(d.path().join("pg_wal/000000010000000000000002")).unwrap();
        std::fs::write(d.path().join("pg_wal/000000010000000000000003"), vec![0u8; 1 << 20]).unwrap();
        let r = verify(d.path()).unwrap();
        let all = r.problems.join("\n");
        assert!(all.contains("checksum mismatch for \"base/1/100\""), "{all}");
        assert!(all.contains("\"PG_VERSION\" is in the manifest but not on disk"), "{all}");
        assert!(all.contains("\"base/1/999\" is on disk but not in the manifest"), "{all}");
        assert!(all.contains("WAL segment 000000010000000000000002"), "{all}");
    }

    #[test]
    fn a_tampered_manifest_is_rejected() {
        let d = backup();
        let m =
            std::fs::read_to_string(d.path().join("backup_manifest")).unwrap().replace("\"Size\": 3", "\"Size\": 4");
        std::fs::write(d.path().join("backup_manifest"), m).unwrap();
        assert!(verify(d.path()).unwrap_err().to_string().contains("Manifest-Checksum"));
    }
}
