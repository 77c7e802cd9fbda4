//! A re-sync by what WAL changed (the primary's WAL summaries, or its WAL's own block references): which bytes
//! of each planned file to fetch, when every page the replica holds is the primary's page as of the replica's
//! last restartpoint, or newer on the primary's own history (the conditions `clone::resync` checks). The rules
//! are those PostgreSQL's incremental backup applies to a file of the prior backup
//! (src/backend/backup/basebackup_incremental.c, GetFileBackupMethod), here applied to the replica's file in
//! place: whole files where the summaries cannot speak for them (and the visibility map, whose cleared bits they
//! never name), else the blocks they name as modified or beyond a truncation, and whatever lies past the end of
//! the replica's copy.
//!
//! Without summaries, a re-sync by page LSNs (also chosen in `clone::resync`) compares every file, but leaves
//! unread here the relation pages the primary last changed before the replica's redo point: `unread` says
//! which files may skip pages, and how much of each is here to skip.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{IoAt, IoContext};
use crate::pg::lsn::Lsn;
use crate::pg::page_checksum::{BLCKSZ, RELSEG_BLOCKS};
use crate::pg::relfile::{relation_file, relation_segment};
use crate::pg::wal_summary::{Changes, Fork};
use crate::sys::files;
use crate::transport::Unread;

/// The default and global tablespaces' OIDs (pg_tablespace.dat), as summaries name them.
const DEFAULTTABLESPACE_OID: u32 = 1663;
const GLOBALTABLESPACE_OID: u32 = 1664;

/// What a re-sync by page LSNs may take as the replica's already: the relation pages whose LSN on the primary is
/// at or before `before`, in `global/` and in these databases (by OID) only.
#[derive(Debug)]
pub struct Unchanged {
    pub before: Lsn,
    pub databases: HashSet<u32>,
}

/// What a re-sync fetches of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// All of it, as it is: the summaries cannot vouch for the copy here.
    Whole,
    /// Only these byte ranges (offset, len), in order; none when the copy here is current. The file here has
    /// been given the primary's size.
    Ranges(Vec<(u64, u64)>),
}

/// The fork and segment a relation file's path names: `global/<rel>`, `base/<db>/<rel>`,
/// `pg_tblspc/<ts>/PG_<version>/<db>/<rel>`, each `[_fork][.segment]`.
fn fork_of(path: &Path) -> Option<(Fork, u64)> {
    let segment = relation_segment(path)?;
    let (rel, fork) = relation_file(path.file_name()?.to_str()?)?;
    let fork = match fork {
        None => 0,
        Some("fsm") => 1,
        Some("vm") => 2,
        _ => 3,
    };
    let dirs: Vec<&str> = path.parent()?.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    let (tablespace, database) = match dirs.as_slice() {
        ["global"] => (GLOBALTABLESPACE_OID, 0),
        ["base", db] => (DEFAULTTABLESPACE_OID, db.parse().ok()?),
        ["pg_tblspc", ts, _, db] => (ts.parse().ok()?, db.parse().ok()?),
        _ => return None,
    };
    Some((Fork { tablespace, database, relfilenode: rel.parse().ok()?, fork }, segment))
}

/// What to fetch of the planned file `path`, `size` bytes on the primary, of which the replica holds `local`.
fn fetch(changes: &Changes, path: &Path, size: u64, local: u64) -> Fetch {
    let block = BLCKSZ as u64;
    // Not a relation file (pg_xact, pg_filenode.map, ...), nothing here, or a size no relation segment has.
    let Some((fork, segment)) = fork_of(path) else { return Fetch::Whole };
    if local == 0 || !size.is_multiple_of(block) || size / block > RELSEG_BLOCKS {
        return Fetch::Whole;
    }
    // The free space map is not WAL-logged page by page. Nor is the visibility map when a bit is cleared:
    // heap_delete, heap_update and heap_lock_tuple clear it through visibilitymap_clear, and their WAL record
    // names the heap block only (the redo clears the bit from a flag in the heap record), so no summary names
    // the map's page, and a map kept here would still say all-visible for a page with a deleted row: an
    // index-only scan would return that row. They are about 1/4000 and 1/32768 of the heap: fetched whole, past a
    // truncation too. A database created within the range is all new.
    if matches!(fork.fork, 1 | 2) || changes.created.contains(&(fork.tablespace, fork.database)) {
        return Fetch::Whole;
    }
    let first = segment * RELSEG_BLOCKS;
    let blocks = size / block;
    let mut want: Vec<(u64, u64)> = Vec::new();
    if let Some(c) = changes.forks.get(&fork) {
        // Truncated (or created) at or before this segment's start: nothing here is known to be current.
        if c.limit.is_some_and(|l| u64::from(l) <= first) {
            return Fetch::Whole;
        }
        for &(start, count) in &c.runs {
            let (a, b) = (u64::from(start).max(first), (u64::from(start) + u64::from(count)).min(first + blocks));
            if a < b {
                want.push((a - first, b - a));
            }
        }
        // Blocks at or past a truncation were cut off and may have come back without being summarized as
        // modified (bulk extension writes zero pages unlogged): fetched all.
        if let Some(l) = c.limit.map(|l| u64::from(l) - first).filter(|l| *l < blocks) {
            want.push((l, blocks - l));
        }
    }
    // Past the end of the copy here.
    let have = local / block;
    if have < blocks {
        want.push((have, blocks - have));
    }
    want.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (a, n) in want {
        match runs.last_mut() {
            Some((o, l)) if a <= *o + *l => *l = (*l).max(a + n - *o),
            _ => runs.push((a, n)),
        }
    }
    // Nearly all of it: one read of the whole file beats many.
    if runs.iter().map(|(_, n)| n).sum::<u64>() * 10 > blocks * 9 {
        return Fetch::Whole;
    }
    Fetch::Ranges(runs.into_iter().map(|(a, n)| (a * block, n * block)).collect())
}

/// `fetch` for every planned file, giving each file fetched in ranges the primary's size here first (a copy
/// longer than the primary's is cut off; a shorter one has its missing end among the ranges).
pub fn fetches(changes: &Changes, files: &[(PathBuf, u64)], dest: &Path) -> Result<Vec<Fetch>, IoAt> {
    files
        .iter()
        .map(|(rel, size)| {
            let path = dest.join(rel);
            let local = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => m.len(),
                _ => 0,
            };
            let f = fetch(changes, rel, *size, local);
            if matches!(f, Fetch::Ranges(_)) && local != *size {
                files::set_len(&path, *size).at("sizing", &path)?;
            }
            Ok(f)
        })
        .collect()
}

/// For each planned file, what a compare need not read here (see `Unread`): the main and init forks of
/// relations in trusted databases, as much of each as is here. The free space map is not WAL-logged page by
/// page, and a visibility map page's LSN stays as it is when a bit is cleared (visibilitymap_clear): both are
/// compared whole.
pub fn unread(unchanged: &Unchanged, files: &[(PathBuf, u64)], dest: &Path) -> Vec<Option<Unread>> {
    files
        .iter()
        .map(|(rel, _)| {
            let (fork, _) = fork_of(rel)?;
            let trusted = fork.tablespace == GLOBALTABLESPACE_OID || unchanged.databases.contains(&fork.database);
            let here = std::fs::symlink_metadata(dest.join(rel)).ok().filter(|m| m.is_file())?.len();
            (trusted && matches!(fork.fork, 0 | 3) && here > 0).then_some(Unread { lsn: unchanged.before, here })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::wal_summary::ForkChanges;

    const B: u64 = BLCKSZ as u64;

    fn changes(fork: Fork, runs: &[(u32, u32)], limit: Option<u32>) -> Changes {
        let mut c = Changes::default();
        c.forks.insert(fork, ForkChanges { runs: runs.to_vec(), limit });
        c
    }

    #[test]
    fn relation_paths_name_their_fork() {
        let f = |ts, db, rel, fork| Fork { tablespace: ts, database: db, relfilenode: rel, fork };
        assert_eq!(fork_of(Path::new("base/5/16384")), Some((f(1663, 5, 16384, 0), 0)));
        assert_eq!(fork_of(Path::new("base/5/16384_vm.2")), Some((f(1663, 5, 16384, 2), 2)));
        assert_eq!(fork_of(Path::new("global/1262_fsm")), Some((f(1664, 0, 1262, 1), 0)));
        assert_eq!(
            fork_of(Path::new("pg_tblspc/16390/PG_17_202406281/5/16400_init")),
            Some((f(16390, 5, 16400, 3), 0))
        );
        assert_eq!(fork_of(Path::new("base/5/pg_filenode.map")), None);
        assert_eq!(fork_of(Path::new("pg_xact/0000")), None);
    }

    #[test]
    fn what_a_compare_by_page_lsns_leaves_unread() {
        let d = tempfile::tempdir().unwrap();
        let files: Vec<(PathBuf, u64)> =
            ["base/5/16384", "base/5/16384_fsm", "base/5/16384_vm", "base/5/16385_init", "base/6/16384", "global/1262"]
                .iter()
                .chain(&["base/5/pg_filenode.map", "base/5/16386", "base/5/16387", "pg_xact/0000"])
                .map(|p| (PathBuf::from(p), 3 * B))
                .collect();
        for (rel, _) in &files {
            std::fs::create_dir_all(d.path().join(rel).parent().unwrap()).unwrap();
            if !rel.ends_with("16386") {
                std::fs::write(d.path().join(rel), vec![0u8; 2 * B as usize]).unwrap();
            }
        }
        std::fs::write(d.path().join("base/5/16387"), b"").unwrap();
        let unchanged = Unchanged { before: Lsn(77), databases: HashSet::from([5]) };
        let got: Vec<bool> = unread(&unchanged, &files, d.path()).iter().map(Option::is_some).collect();
        // Main and init forks in database 5 and global/; not the FSM or VM, not database 6 (not trusted), not
        // a file missing or empty here, not a non-relation file.
        assert_eq!(got, [true, false, false, true, false, true, false, false, false, false]);
        assert_eq!(unread(&unchanged, &files[..1], d.path()), vec![Some(Unread { lsn: Lsn(77), here: 2 * B })]);
    }

    #[test]
    fn what_a_summary_fetches() {
        let main = Fork { tablespace: 1663, database: 5, relfilenode: 16384, fork: 0 };
        let p = Path::new("base/5/16384");
        // Blocks 2-3 and 7 changed; the copy here is complete.
        let c = changes(main, &[(2, 2), (7, 1)], None);
        assert_eq!(fetch(&c, p, 100 * B, 100 * B), Fetch::Ranges(vec![(2 * B, 2 * B), (7 * B, B)]));
        // Nothing changed: nothing moves, whatever the summary says of other forks.
        assert_eq!(fetch(&Changes::default(), p, 100 * B, 100 * B), Fetch::Ranges(vec![]));
        // The primary's file grew past ours: the new end comes too, merged with a run it touches.
        let grown = changes(main, &[(2, 2), (58, 3)], None);
        assert_eq!(fetch(&grown, p, 100 * B, 60 * B), Fetch::Ranges(vec![(2 * B, 2 * B), (58 * B, 42 * B)]));
        // Truncated to 50 within the range, then grown again: everything from 50.
        let t = changes(main, &[(2, 1)], Some(50));
        assert_eq!(fetch(&t, p, 80 * B, 100 * B), Fetch::Ranges(vec![(2 * B, B), (50 * B, 30 * B)]));
        // Created (limit 0) or truncated before the segment: all of it.
        assert_eq!(fetch(&changes(main, &[], Some(0)), p, 10 * B, 10 * B), Fetch::Whole);
        let seg2 = Path::new("base/5/16384.2");
        assert_eq!(fetch(&changes(main, &[], Some(2 * RELSEG_BLOCKS as u32)), seg2, 10 * B, 10 * B), Fetch::Whole);
        // A later segment takes only its own blocks, relative to its start.
        let s = (2 * RELSEG_BLOCKS) as u32;
        assert_eq!(
            fetch(&changes(main, &[(3, 2), (s + 1, 2)], None), seg2, 10 * B, 10 * B),
            Fetch::Ranges(vec![(B, 2 * B)])
        );
        // Nearly every block: the whole file.
        assert_eq!(fetch(&changes(main, &[(0, 95)], None), p, 100 * B, 100 * B), Fetch::Whole);
        // Whatever the summaries say: a file not here, an FSM, a new database, a non-relation file, odd sizes.
        assert_eq!(fetch(&c, p, 100 * B, 0), Fetch::Whole);
        let fsm = Fork { fork: 1, ..main };
        assert_eq!(fetch(&changes(fsm, &[], None), Path::new("base/5/16384_fsm"), 3 * B, 3 * B), Fetch::Whole);
        // A visibility map, even one the summaries name no block of (a bit cleared by a heap record).
        let vm = Path::new("base/5/16384_vm");
        assert_eq!(fetch(&c, vm, 3 * B, 3 * B), Fetch::Whole);
        assert_eq!(fetch(&changes(Fork { fork: 2, ..main }, &[(0, 1)], None), vm, 3 * B, 3 * B), Fetch::Whole);
        let mut created = changes(main, &[], None);
        created.created.insert((1663, 5));
        assert_eq!(fetch(&created, p, 100 * B, 100 * B), Fetch::Whole);
        assert_eq!(fetch(&c, Path::new("pg_xact/0000"), 8 * B, 8 * B), Fetch::Whole);
        assert_eq!(fetch(&c, p, 100 * B + 1, 100 * B), Fetch::Whole);
    }
}
