//! Which databases a stopped cluster's files hold, read without a server: every tuple version in its
//! pg_database heap, as (database OID, xmin). A re-sync compares them with the primary's catalog to tell a
//! database the replica already has from one dropped and created again under the same OID while it was stale
//! (`clone::resync`). A row's xmin is the XID that wrote it, and an XID comes round again only after 2^32
//! others: a pg_database row whose (OID, xmin) the replica's heap also holds is the row, and so the database,
//! the replica knew.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;

use crate::pg::page_checksum::BLCKSZ;
use crate::pg::{Conn, PgError};

/// pg_database's OID (DatabaseRelationId, pg_database.h): a shared, mapped catalog, so its file is named by
/// the global relation map, not by pg_class.
const DATABASE_RELATION_ID: u32 = 1262;
/// The relation map file (src/backend/utils/cache/relmapper.c): int32 magic, int32 count, MAX_MAPPINGS (OID,
/// relfilenumber) pairs, then the CRC32C of all that. MAX_MAPPINGS is 62 up to PostgreSQL 15 (a 512-byte
/// file, padded after the CRC) and 64 from 16 (524 bytes, measured on initdb's files of 15 to 18).
const RELMAP_FILE: &str = "global/pg_filenode.map";
const RELMAP_MAGIC: u32 = 0x0059_2717;
/// More pg_database than a thousand databases need many times over; the heap is read whole.
const MAX_HEAP: u64 = 64 << 20;

/// MAX_MAPPINGS of a relation map file `len` bytes long.
fn relmap_slots(len: usize) -> Option<usize> {
    match len {
        512 => Some(62),
        524 => Some(64),
        _ => None,
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// (OID, xmin) of every tuple (live or dead) in the pg_database heap of the stopped cluster at `datadir`.
pub fn in_files(datadir: &Path) -> io::Result<HashSet<(u32, u32)>> {
    let mut map = Vec::new();
    crate::sys::files::open_read(&datadir.join(RELMAP_FILE))?.take(1024).read_to_end(&mut map)?;
    let slots = relmap_slots(map.len())
        .filter(|n| {
            u32_at(&map, 0) == Some(RELMAP_MAGIC) && u32_at(&map, 8 + n * 8) == Some(crc32c::crc32c(&map[..8 + n * 8]))
        })
        .ok_or_else(|| invalid(format!("{RELMAP_FILE} is not a relation map with a valid CRC")))?;
    let count = (u32_at(&map, 4).unwrap_or(0) as usize).min(slots);
    let file = (0..count)
        .map(|i| (u32_at(&map, 8 + 8 * i), u32_at(&map, 12 + 8 * i)))
        .find(|(oid, _)| *oid == Some(DATABASE_RELATION_ID))
        .and_then(|(_, file)| file)
        .ok_or_else(|| invalid(format!("{RELMAP_FILE} does not map pg_database")))?;
    // pg_database is a few pages; a cluster with so many databases that it needs a second segment has
    // more than 1 GiB of rows, which no check here is worth. A larger heap than MAX_HEAP is refused unread.
    let path = datadir.join("global").join(file.to_string());
    let mut heap = Vec::new();
    crate::sys::files::open_read(&path)?.take(MAX_HEAP + 1).read_to_end(&mut heap)?;
    if heap.len() as u64 > MAX_HEAP {
        return Err(invalid(format!("pg_database ({}) is larger than {} MiB", path.display(), MAX_HEAP >> 20)));
    }
    Ok(heap.chunks_exact(BLCKSZ).flat_map(tuples).collect())
}

/// (first attribute as OID, xmin) of each normal line pointer's tuple in one heap page (bufpage.h, itemid.h,
/// htup_details.h): pd_lower at 12, line pointers from 24 (lp_off 15 bits, lp_flags 2, lp_len 15), the
/// tuple header's t_xmin at 0 and t_hoff at 22. Anything out of bounds (a torn or zeroed page) is skipped:
/// a tuple missed only makes the caller trust less.
fn tuples(page: &[u8]) -> Vec<(u32, u32)> {
    const LP_NORMAL: u32 = 1;
    let lower = page.get(12..14).map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]) as usize).min(page.len());
    let mut out = Vec::new();
    for at in (24..lower).step_by(4) {
        let Some(lp) = u32_at(page, at) else { break };
        let (off, flags, len) = ((lp & 0x7fff) as usize, (lp >> 15) & 3, (lp >> 17) as usize);
        let Some(&hoff) = page.get(off + 22) else { continue };
        if flags != LP_NORMAL || len < usize::from(hoff) + 4 || off + len > page.len() {
            continue;
        }
        if let (Some(xmin), Some(oid)) = (u32_at(page, off), u32_at(page, off + usize::from(hoff))) {
            out.push((oid, xmin));
        }
    }
    out
}

/// (OID, xmin) of the current row of each database on a running server.
pub fn on_server(conn: &mut Conn) -> Result<Vec<(u32, u32)>, PgError> {
    let rows = conn.query("SELECT oid::int8, xmin::text::int8 FROM pg_database")?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.first()?.as_deref()?.parse().ok()?, r.get(1)?.as_deref()?.parse().ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap page holding tuples (oid, xmin) the way PostgreSQL lays them out: line pointers growing from
    /// 24, tuples from the end, a 24-byte header padded to t_hoff 32.
    fn page(rows: &[(u32, u32)], dead: usize) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        let mut upper = BLCKSZ;
        let mut lps = Vec::new();
        for (i, (oid, xmin)) in rows.iter().enumerate() {
            let len = 32 + 68;
            upper -= 104;
            p[upper..upper + 4].copy_from_slice(&xmin.to_ne_bytes());
            p[upper + 22] = 32;
            p[upper + 32..upper + 36].copy_from_slice(&oid.to_ne_bytes());
            let flags = if i == dead { 3 } else { 1 };
            lps.push(upper as u32 | flags << 15 | (len as u32) << 17);
        }
        for (i, lp) in lps.iter().enumerate() {
            p[24 + 4 * i..28 + 4 * i].copy_from_slice(&lp.to_ne_bytes());
        }
        let lower = (24 + 4 * lps.len()) as u16;
        p[12..14].copy_from_slice(&lower.to_ne_bytes());
        p
    }

    #[test]
    fn tuples_of_a_heap_page() {
        assert_eq!(tuples(&page(&[(5, 722), (1, 719), (16384, 900)], 1)), vec![(5, 722), (16384, 900)]);
        assert_eq!(tuples(&vec![0u8; BLCKSZ]), vec![], "a new page");
        let mut wild = page(&[(5, 722)], 9);
        wild[24..28].copy_from_slice(&(8190u32 | 1 << 15 | 100 << 17).to_ne_bytes());
        assert_eq!(tuples(&wild), vec![], "a line pointer past the page's end");
    }

    #[test]
    fn rows_found_through_the_relation_map() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("global")).unwrap();
        let mut heap = page(&[(5, 722)], 9);
        heap.extend(page(&[(16384, 900), (16384, 950)], 9));
        std::fs::write(d.path().join("global/17000"), heap).unwrap();
        // PostgreSQL 15's 62 mappings in 512 bytes, 16's and later 64 in 524.
        for (slots, len) in [(62, 512), (64, 524)] {
            let mut map = Vec::new();
            map.extend(RELMAP_MAGIC.to_ne_bytes());
            map.extend(2u32.to_ne_bytes());
            for (oid, file) in [(1260u32, 1260u32), (DATABASE_RELATION_ID, 17000)] {
                map.extend(oid.to_ne_bytes());
                map.extend(file.to_ne_bytes());
            }
            map.resize(8 + slots * 8, 0);
            map.extend(crc32c::crc32c(&map).to_ne_bytes());
            map.resize(len, 0);
            std::fs::write(d.path().join(RELMAP_FILE), &map).unwrap();
            let rows = in_files(d.path()).unwrap();
            assert_eq!(rows, HashSet::from([(5, 722), (16384, 900), (16384, 950)]), "{len} bytes");
            map[20] ^= 1;
            std::fs::write(d.path().join(RELMAP_FILE), &map).unwrap();
            assert!(in_files(d.path()).is_err(), "a map failing its CRC");
        }
    }
}
