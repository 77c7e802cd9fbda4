//! Transfer phase: lay out the directory tree, then copy the planned files with N parallel workers
//! fed largest-first from one shared queue.

pub mod changed;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crossbeam_channel::select;

use crate::error::{Cancelled, IoAt, IoContext};
use crate::pg::lsn::Lsn;
use crate::pg::page_checksum::{check_pages, BadPage, BLCKSZ, RELSEG_BLOCKS};
use crate::pg::relfile::relation_segment;
use crate::progress::{self, Progress};
use crate::sys::cancel::Cancel;
use crate::transport::{Copied, How, Piece, Sink, Transport, TransportError, Unread};
pub use changed::Fetch;
pub use plan::{check_listing, plan, Plan, Tablespace};

/// Small files travel together so that thousands of catalog files do not cost a request each.
const BATCH_BYTES: u64 = 16 << 20;
const BATCH_FILES: usize = 2000;
const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error(
        "not enough space for the clone in {}: it needs about {} more, the filesystem has {} free; free that much \
         there, or clone onto a larger filesystem (--replica-pgdata, -T for tablespaces)",
        dir.display(), progress::bytes(*need), progress::bytes(*free)
    )]
    NoSpace { dir: PathBuf, need: u64, free: u64 },
    #[error(
        "{0}: refusing to copy from this primary; no data directory lists so: check what answers there for pgclone \
         (--remote-pgclone, or rsync with --transport rsync)"
    )]
    Listing(String),
    #[error("tablespace location {0} is not empty (map it elsewhere with -T OLD=NEW)")]
    TablespaceNotEmpty(PathBuf),
    #[error(
        "tablespace {} was copied to {} here and is now to go to {}: remove {} (a stale copy of it) first, or map \
         it back there with -T",
        link.display(), old.display(), new.display(), copy.display()
    )]
    TablespaceMoved { link: PathBuf, old: PathBuf, new: PathBuf, copy: PathBuf },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Files the primary keeps private in a group-readable data directory stay private here (see `Plan::private`);
/// the umask gave every copied file the group's read access. Files gone since (vanished) are skipped.
pub fn keep_private(plan: &Plan, dest: &Path) -> Result<(), TransferError> {
    for rel in &plan.private {
        let path = dest.join(rel);
        // Through the file itself (fchmod), never a link in its place.
        match crate::sys::files::open_read(&path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r.at("setting permissions of", &path)?,
        }
    }
    Ok(())
}

/// Refuses, before anything here changes, a tablespace location that is not this replica's to fill: one its
/// link here does not already point at must be empty (as pg_basebackup asks). A location is shared by the
/// clusters of several majors, each in its own `PG_<major>_<catversion>` directory (tablespace.c,
/// TABLESPACE_VERSION_DIRECTORY; pg_upgrade keeps the old one), so what is there may be anybody's. And when a
/// mapping moves a tablespace this replica already holds elsewhere, its copy at the old place would stay
/// behind unnoticed: the run names it instead of leaving it or deleting what it cannot prove is its own.
pub fn check_tablespaces(plan: &Plan, dest: &Path) -> Result<(), TransferError> {
    for ts in &plan.tablespaces {
        let link = dest.join(&ts.link);
        let old = std::fs::read_link(&link).ok();
        if old.as_deref() == Some(&ts.local) {
            continue;
        }
        if std::fs::read_dir(&ts.local).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(TransferError::TablespaceNotEmpty(ts.local.clone()));
        }
        let ours = plan.dirs.iter().find(|(d, _)| d.parent() == Some(&ts.link)).and_then(|(d, _)| d.file_name());
        if let (Some(old), Some(ours)) = (old, ours) {
            let copy = old.join(ours);
            if std::fs::symlink_metadata(&copy).is_ok() {
                return Err(TransferError::TablespaceMoved { link: ts.link.clone(), old, new: ts.local.clone(), copy });
            }
        }
    }
    Ok(())
}

/// Creates the tablespace locations and their pg_tblspc links, then the planned directories (with
/// PostgreSQL's mode, through those links where they lead) and symbolic links under `dest`
/// (`check_tablespaces` has made sure each location is this replica's).
pub fn lay_out(plan: &Plan, dest: &Path) -> Result<(), TransferError> {
    for ts in &plan.tablespaces {
        let link = dest.join(&ts.link);
        if std::fs::read_link(&link).ok().as_deref() == Some(&ts.local) {
            continue;
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&ts.local).at("creating", &ts.local)?;
        let parent = link.parent().expect("pg_tblspc");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).at("creating", parent)?;
        std::os::unix::fs::symlink(&ts.local, &link).at("creating symlink", &link)?;
    }
    for (dir, mode) in &plan.dirs {
        let path = dest.join(dir);
        match std::fs::DirBuilder::new().mode(*mode).create(&path) {
            Ok(()) => {}
            // A directory, not a link to one (prune removed those), but pg_wal's to --replica-waldir, which
            // prepare made: its mode is set below, and files go in it.
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && (std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
                        || (dir == Path::new("pg_wal") && path.is_dir())) => {}
            Err(e) => return Err(IoAt::new("creating directory", path, e).into()),
        }
        // An existing directory (a re-sync) gets the mode too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).at("setting permissions of", &path)?;
    }
    for (link, target) in &plan.symlinks {
        let path = dest.join(link);
        // A re-sync keeps a link that already points where the primary's does (prune removed any other).
        if std::fs::read_link(&path).ok().as_ref() == Some(target) {
            continue;
        }
        std::os::unix::fs::symlink(target, &path).at("creating symlink", &path)?;
    }
    Ok(())
}

/// The bytes of a local copy of a file a re-sync can reuse: allocated bytes, not the length (an interrupted native
/// copy leaves files pre-sized but sparse), and no more than the primary's `size` (bytes past its end are not
/// reused but cut off).
pub fn reusable(meta: &std::fs::Metadata, size: u64) -> u64 {
    meta.len().min(meta.blocks() * 512).min(size)
}

/// Makes an existing replica (a re-run) hold nothing the plan does not: files the primary no longer has
/// (dropped tables), files a clone never copies (postmaster.pid, pg_internal.init), stale WAL and runtime
/// state, and entries of the wrong kind; but the files the plan keeps (`Plan::keep`) and what is not this
/// cluster's in a tablespace location. Never follows a symlink except pg_wal's (--replica-waldir), whose stale
/// contents go too, and a tablespace's. Returns how many entries went, and the bytes of planned files already
/// present (allocated), which the copy may reuse.
pub fn prune(plan: &Plan, dest: &Path) -> Result<(usize, u64), TransferError> {
    let files: HashMap<&Path, u64> = plan.files.iter().map(|(p, size)| (p.as_path(), *size)).collect();
    let dirs: HashSet<&Path> = plan.dirs.iter().map(|(p, _)| p.as_path()).collect();
    let links: HashMap<&Path, &Path> = plan.symlinks.iter().map(|(l, t)| (l.as_path(), t.as_path())).collect();
    let tablespaces: HashMap<&Path, &Path> =
        plan.tablespaces.iter().map(|t| (t.link.as_path(), t.local.as_path())).collect();
    let (mut removed, mut present) = (0, 0);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = dest.join(&rel);
        // A tablespace location holds this cluster's version directory among others' (see `check_tablespaces`):
        // only ours is pruned.
        let location = tablespaces.contains_key(rel.as_path());
        for entry in std::fs::read_dir(&dir).at("reading", &dir)? {
            let entry = entry.at("reading", &dir)?;
            let (rel, path) = (rel.join(entry.file_name()), entry.path());
            let meta = std::fs::symlink_metadata(&path).at("reading", &path)?;
            let wal_link = rel == Path::new("pg_wal") && meta.is_symlink() && path.is_dir();
            let planned_dir = dirs.contains(rel.as_path()) && (meta.is_dir() || wal_link);
            let planned_size = files.get(rel.as_path()).filter(|_| meta.is_file());
            let points_to = |map: &HashMap<&Path, &Path>| {
                meta.is_symlink()
                    && map.get(rel.as_path()).is_some_and(|t| std::fs::read_link(&path).ok().as_deref() == Some(*t))
            };
            let planned_link = points_to(&links);
            let kept = meta.is_file() && plan.kept.iter().any(|k| k == &rel);
            // Our version directory in a tablespace's location is ours to prune like the data directory; other
            // links' targets are not.
            if planned_dir || points_to(&tablespaces) {
                stack.push(rel);
            } else if location {
            } else if let Some(size) = planned_size {
                present += reusable(&meta, *size);
            } else if !planned_link && !kept {
                if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }
                    .at("removing", &path)?;
                removed += 1;
            }
        }
    }
    Ok((removed, present))
}

/// Refuses to start a copy the replica's filesystem cannot hold: failing after hours on ENOSPC helps
/// nobody. `reusable` bytes are already there; some room is kept for the WAL segments and rsync's
/// temporary copies.
pub fn check_space(plan: &Plan, dest: &Path, reusable: u64, margin: u64) -> Result<(), TransferError> {
    let st = rustix::fs::statvfs(dest).map_err(std::io::Error::from).at("checking free space of", dest)?;
    let free = st.f_bavail * st.f_frsize;
    let need = plan.total_bytes.saturating_sub(reusable).saturating_add(margin);
    if need > free {
        return Err(TransferError::NoSpace { dir: dest.to_path_buf(), need, free });
    }
    Ok(())
}

/// The range size for splitting big files: at most `max`, and small enough that each of the `workers` gets
/// about sixteen ranges, so the last ones end close together (on a link that caps each flow, a 64 MiB range is
/// seconds of one connection's time). Whole MiB: ranges stay aligned to pages and to direct I/O.
fn fair_split(max: u64, total: u64, workers: usize) -> u64 {
    let fair = (total / (workers.max(1) as u64 * 16)).max(4 * MIB);
    (fair.min(max) / MIB * MIB).max(max.min(MIB))
}

/// What the copy does with the files a replica already has.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// Nothing is here yet: every byte moves.
    Fresh,
    /// Whatever is here is compared with the primary's first (a re-sync that cannot know what changed); with
    /// one `changed::unread` for each of `Plan::files`, pages of some relation files are not (empty: none).
    Compare(&'a [Option<Unread>]),
    /// Only what WAL summaries say changed moves (`changed::fetches`, one for each of `Plan::files`).
    Changed(&'a [Fetch]),
}

/// Groups the plan's files (largest first) into jobs: a file larger than `split` becomes ranges of that size,
/// each a job of its own; other large files go alone, small ones (and short runs of changed blocks) in
/// batches. Also returns what is counted before any job runs: the files fetched in changed runs, in place.
fn jobs(plan: &Plan, split: Option<u64>, mode: Mode, workers: usize) -> (Vec<Vec<Piece>>, Copied) {
    let mut jobs = Vec::new();
    // Ranges of split files, queued before the other jobs.
    let mut head: Vec<Piece> = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut counted = Copied::default();
    let mut add = |piece: Piece, jobs: &mut Vec<Vec<Piece>>| {
        if piece.len() >= BATCH_BYTES {
            return jobs.push(vec![piece]);
        }
        batch_bytes += piece.len();
        batch.push(piece);
        if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_FILES {
            jobs.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
    };
    // Ranges of at most `split` bytes covering (offset, len).
    let ranges = |r: (u64, u64)| cut(r, split.unwrap_or(r.1));
    for (i, (path, size)) in plan.files.iter().enumerate() {
        let piece = |range, how| Piece { path: path.clone(), size: *size, range, how };
        let how = match mode {
            Mode::Fresh => How::Fetch,
            Mode::Compare(unread) => How::Compare(unread.get(i).copied().flatten()),
            Mode::Changed(fetches) => match &fetches[i] {
                Fetch::Whole => How::Fetch,
                Fetch::Ranges(runs) => {
                    counted.files += 1;
                    counted.bytes += size;
                    for r in runs.iter().flat_map(|r| ranges(*r)) {
                        add(piece(Some(r), How::Changed), &mut jobs);
                    }
                    continue;
                }
            },
        };
        match split {
            Some(chunk) if *size > chunk => head.extend(ranges((0, *size)).map(|r| piece(Some(r), how))),
            _ => add(piece(None, how), &mut jobs),
        }
    }
    if !batch.is_empty() {
        jobs.push(batch);
    }
    // The ranges taken last end the copy, each worker's at its own time: a range is seconds of one flow's time on
    // a link that caps each flow, while the others sit idle. The last `workers` ranges' worth goes last, in
    // pieces an eighth of a range long, so the workers' final pieces end close together.
    let mut last: Vec<Piece> = Vec::new();
    let mut small = 0;
    if let Some(chunk) = split.filter(|c| *c >= 2 * MIB) {
        small = (chunk / 8 / MIB * MIB).max(MIB);
        while last.iter().map(Piece::len).sum::<u64>() < workers as u64 * chunk {
            let Some(p) = head.pop() else { break };
            last.push(p);
        }
    }
    let tail = last.into_iter().rev().flat_map(|p| {
        cut(p.range.expect("split files are ranges"), small).map(move |r| vec![Piece { range: Some(r), ..p.clone() }])
    });
    let head = head.into_iter().map(|p| vec![p]);
    (head.chain(jobs).chain(tail).collect(), counted)
}

/// Ranges of at most `chunk` bytes covering (offset, len).
fn cut((offset, len): (u64, u64), chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let chunk = chunk.max(1);
    (0..len.div_ceil(chunk)).map(move |i| (offset + i * chunk, chunk.min(len - i * chunk)))
}

/// What the workers saw land in the replica (see `Sink::landed`).
#[derive(Debug, Default)]
pub struct Landed {
    /// Per file, (offset, len, CRC32C) of contiguous ranges: the manifest's checksum without a second read.
    pub ranges: HashMap<PathBuf, Vec<(u64, u64, u32)>>,
    /// Data pages that failed their checksum as they landed (with `pages_before`).
    pub bad: Vec<BadPage>,
    /// Files the primary removed during the copy.
    pub vanished: Vec<PathBuf>,
}

/// One worker thread's sink: live progress, and what landed.
struct Landing<'a> {
    progress: &'a Progress,
    /// Bytes of the current job already shown as they arrived.
    shown: u64,
    pages_before: Option<Lsn>,
    landed: Landed,
}

impl Sink for Landing<'_> {
    fn moving(&mut self, n: u64) {
        self.shown += n;
        self.progress.moving(n);
    }

    fn landed(&mut self, path: &Path, offset: u64, bytes: &[u8]) {
        if let Some((start, seg)) = self.pages_before.and_then(|lsn| relation_segment(path).map(|seg| (lsn, seg))) {
            // Only whole pages can be verified; a file that lands otherwise is left to the read pass.
            if !offset.is_multiple_of(BLCKSZ as u64) || !bytes.len().is_multiple_of(BLCKSZ) {
                return;
            }
            let first = seg * RELSEG_BLOCKS + offset / BLCKSZ as u64;
            check_pages(path, first, bytes, start, &mut self.landed.bad);
        }
        let len = bytes.len() as u64;
        match self.landed.ranges.get_mut(path) {
            Some(ranges) => match ranges.last_mut() {
                // The usual case, chunk after chunk of one piece: the CRC simply goes on.
                Some((o, l, c)) if *o + *l == offset => {
                    *c = crc32c::crc32c_append(*c, bytes);
                    *l += len;
                }
                _ => ranges.push((offset, len, crc32c::crc32c(bytes))),
            },
            None => drop(self.landed.ranges.insert(path.to_path_buf(), vec![(offset, len, crc32c::crc32c(bytes))])),
        }
    }

    fn vanished(&mut self, path: &Path) {
        self.landed.vanished.push(path.to_path_buf());
    }
}

/// Copies every planned file, as `mode` says, with `parallel` workers. Any worker's failure, or a cancel from
/// elsewhere (signal, WAL stream), stops all workers at once. With `pages_before` (data checksums on), data
/// pages older than it are verified as they land.
#[allow(clippy::too_many_arguments)]
pub fn copy(
    plan: &Plan,
    mode: Mode,
    transport: &dyn Transport,
    dest: &Path,
    parallel: usize,
    pages_before: Option<Lsn>,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<(Copied, Landed), TransferError> {
    let split = transport.split_size().map(|max| fair_split(max, plan.total_bytes, parallel));
    let (jobs, counted) = jobs(plan, split, mode, parallel);
    // Files in place but for their changed runs count now; the runs show as they arrive.
    progress.add(counted, jobs.iter().flatten().filter(|p| p.how == How::Changed).map(Piece::len).sum());
    let n_jobs = jobs.len();
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    for j in jobs {
        job_tx.send(j).expect("receiver alive");
    }
    drop(job_tx);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(Result<Copied, TransportError>, u64)>();
    let workers = parallel.min(n_jobs).max(1);
    let landed = std::sync::Mutex::new(Landed::default());

    let total = std::thread::scope(|s| {
        for _ in 0..workers {
            let (job_rx, done_tx, landed) = (job_rx.clone(), done_tx.clone(), &landed);
            s.spawn(move || {
                let mut worker = match transport.worker() {
                    Ok(w) => w,
                    Err(e) => return drop(done_tx.send((Err(e), 0))),
                };
                let mut sink = Landing { progress, shown: 0, pages_before, landed: Landed::default() };
                while let Ok(pieces) = job_rx.recv() {
                    if cancel.is_cancelled() {
                        break;
                    }
                    let result = worker.copy(&pieces, dest, cancel, &mut sink);
                    let _ = done_tx.send((result, std::mem::take(&mut sink.shown)));
                }
                let mut all = landed.lock().unwrap_or_else(|e| e.into_inner());
                for (path, ranges) in sink.landed.ranges {
                    all.ranges.entry(path).or_default().extend(ranges);
                }
                all.bad.extend(sink.landed.bad);
                all.vanished.extend(sink.landed.vanished);
            });
        }
        drop(done_tx);

        let mut total = counted;
        let mut finished = 0;
        while finished < n_jobs {
            select! {
                recv(done_rx) -> r => match r {
                    Ok((Ok(c), shown)) => {
                        finished += 1;
                        progress.add(c, shown);
                        total += c;
                    }
                    Ok((Err(TransportError::Cancelled(_)), _)) | Err(_) => break,
                    Ok((Err(e), _)) => {
                        cancel.cancel(e.to_string());
                        break;
                    }
                },
                recv(cancel.receiver()) -> _ => break,
            }
        }
        match cancel.reason() {
            Some(reason) => Err(TransferError::from(Cancelled(reason))),
            None if finished < n_jobs => Err(Cancelled("copy workers ended early".into()).into()),
            None => Ok(total),
        }
    })?;
    let landed = landed.into_inner().unwrap_or_else(|e| e.into_inner());
    remove_vanished(dest, &landed.vanished)?;
    Ok((total, landed))
}

/// A file the primary removed during the copy is removed here too, as a fresh clone would not have it: WAL
/// replay removes a dropped relation's files, but not every file that vanishes is a relation's (logical decoding
/// snapshots and mappings, pg_stat files), and a re-sync's old copy must not outlive the primary's.
fn remove_vanished(dest: &Path, vanished: &[PathBuf]) -> Result<(), TransferError> {
    for rel in vanished {
        let path = dest.join(rel);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r.at("removing", &path)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_only_what_the_plan_has() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["base/1", "pg_wal/archive_status", "pg_replslot/old"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        for (f, len) in
            [("base/1/100", 5), ("base/1/200", 7), ("postmaster.pid", 1), ("pg_wal/000000010000000000000001", 3)]
        {
            std::fs::write(r.join(f), vec![0u8; len]).unwrap();
        }
        std::fs::write(r.join("pg_replslot/old/state"), b"x").unwrap();
        std::os::unix::fs::symlink("/elsewhere", r.join("link")).unwrap();
        let plan = Plan {
            dirs: ["base", "base/1", "pg_wal", "pg_wal/archive_status", "pg_replslot"]
                .iter()
                .map(|d| (PathBuf::from(d), 0o700))
                .collect(),
            files: vec![("base/1/100".into(), 5), ("base/1/300".into(), 9)],
            ..Default::default()
        };
        let (removed, present) = prune(&plan, r).unwrap();
        assert_eq!(present, 5);
        assert_eq!(removed, 5, "base/1/200, postmaster.pid, the WAL segment, pg_replslot/old, link");
        assert!(r.join("base/1/100").exists() && r.join("pg_wal/archive_status").is_dir());
        assert!(!r.join("base/1/200").exists() && !r.join("pg_replslot/old").exists() && !r.join("link").exists());
    }

    #[test]
    fn space_check_counts_what_is_already_there() {
        let d = tempfile::tempdir().unwrap();
        let plan = Plan { total_bytes: u64::MAX / 2, ..Default::default() };
        let err = check_space(&plan, d.path(), 0, 0).unwrap_err().to_string();
        assert!(err.starts_with("not enough space for the clone in"), "{err}");
        check_space(&plan, d.path(), u64::MAX / 2, 0).unwrap();
    }

    #[test]
    fn ranges_give_every_worker_several() {
        assert_eq!(fair_split(64 * MIB, 2_000_000_000, 8), 14 * MIB);
        assert_eq!(fair_split(64 * MIB, 20 << 30, 2), 64 * MIB, "never above the maximum");
        assert_eq!(fair_split(64 * MIB, 10 * MIB, 2), 4 * MIB, "never below 4 MiB");
        assert_eq!(fair_split(MIB, 650_000_000, 2), MIB, "a small maximum stands");
        assert_eq!(fair_split(100_000, 650_000_000, 2), 100_000);
    }

    #[test]
    fn big_files_alone_small_files_batched_largest_first() {
        let mut p = Plan { files: vec![("big".into(), 40 << 20), ("mid".into(), 16 << 20)], ..Default::default() };
        p.files.extend((0..2500).map(|i| (PathBuf::from(format!("s{i}")), 1)));
        p.files.extend((0..3).map(|i| (PathBuf::from(format!("m{i}")), 6 << 20)));
        let (j, counted) = jobs(&p, None, Mode::Fresh, 1);
        assert_eq!(counted, Copied::default());
        assert_eq!(j[0], vec![Piece::whole("big".into(), 40 << 20, How::Fetch)]);
        assert_eq!(j[1], vec![Piece::whole("mid".into(), 16 << 20, How::Fetch)]);
        assert_eq!(j[2].len(), 2000);
        assert_eq!(j.iter().map(Vec::len).sum::<usize>(), 2505);
        // Split: "big" becomes three ranges, the last one short. The last ranges worth one range per worker go
        // last, in eighths (16 MiB and 8 MiB, here, for one worker); the rest is as before.
        let (j, _) = jobs(&p, Some(16 << 20), Mode::Compare(&[]), 1);
        assert_eq!(
            j[0],
            vec![Piece { range: Some((0, 16 << 20)), ..Piece::whole("big".into(), 40 << 20, How::Compare(None)) }]
        );
        assert!(j[0][0].counts_file());
        assert_eq!(j[1], vec![Piece::whole("mid".into(), 16 << 20, How::Compare(None))]);
        let tail: Vec<_> = j[j.len() - 12..].iter().map(|v| v[0].range.unwrap()).collect();
        assert_eq!(tail, (8..20).map(|i| (i * 2 * MIB, 2 * MIB)).collect::<Vec<_>>());
        assert!(j[j.len() - 12..].iter().all(|v| v.len() == 1 && !v[0].counts_file()));
        assert_eq!(j.len(), 1 + 1 + 2 + 12, "a range, mid, two batches (the small files, m0..m2), the tail");
        // With two workers, the whole file goes in eighths.
        let (j, _) = jobs(&p, Some(16 << 20), Mode::Compare(&[]), 2);
        assert_eq!(j[0], vec![Piece::whole("mid".into(), 16 << 20, How::Compare(None))]);
        assert!(j[j.len() - 20][0].counts_file(), "the first piece still counts the file");
        // Changed runs: "big" fetched in two runs (one split), "mid" whole, the small files untouched.
        let mut fetches = vec![Fetch::Ranges(vec![(0, 8192), (20 << 20, 17 << 20)]), Fetch::Whole];
        fetches.extend((0..2503).map(|_| Fetch::Ranges(vec![])));
        let (j, counted) = jobs(&p, Some(16 << 20), Mode::Changed(&fetches), 1);
        assert_eq!(counted.files, 2504);
        assert_eq!(counted.bytes, (40 << 20) + 2500 + 3 * (6 << 20));
        let runs: Vec<_> = j.iter().flatten().filter(|p| p.how == How::Changed).map(|p| p.range.unwrap()).collect();
        assert_eq!(
            runs,
            vec![(20 << 20, 16 << 20), (0, 8192), (36 << 20, 1 << 20)],
            "a full range alone, short ones batched"
        );
        assert!(j.iter().flatten().all(|p| p.how == How::Changed || p.path == Path::new("mid")));
        assert!(j.iter().flatten().filter(|p| p.how == How::Changed).all(|p| !p.counts_file() && p.counted_len() == 0));
    }
}
