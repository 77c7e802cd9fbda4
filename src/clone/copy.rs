//! The copy phase: plan what to copy from the primary's listing (basebackup.c's rules), make room for it, copy
//! it with parallel workers while the backup session is watched, and take the manifest's checksums and the data
//! page checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::preflight::Primary;
use super::resync::Resync;
use super::{CloneConfig, CloneError, Phases};
use crate::error::Cancelled;
use crate::manifest::{self, FileSum};
use crate::pg::backup_session::BackupSession;
use crate::pg::lsn::Lsn;
use crate::progress::{self, Progress};
use crate::replica;
use crate::sys::cancel::Cancel;
use crate::transfer::{self, Mode, Plan, TransferError};
use crate::transport::{Copied, How, IgnoreSink, Piece, Transport};

/// What the copy achieved.
pub struct Copy {
    pub plan: Plan,
    pub totals: Copied,
    /// Bytes a re-run found already in place.
    pub reused: u64,
    /// The manifest's entries (empty with --no-manifest when pages are not checked either).
    pub sums: Vec<FileSum>,
    pub start_lsn: Lsn,
}

/// For --check: what a copy would move, `(files, bytes)`, refused if it would not fit (`room`).
pub fn check(
    config: &CloneConfig,
    transport: &dyn Transport,
    primary: Primary,
    resync: bool,
) -> Result<(u64, u64), CloneError> {
    let plan = plan(config, transport, primary)?;
    room(config, &plan, primary, resync)?;
    Ok((plan.files.len() as u64, plan.total_bytes))
}

/// What to copy, from the primary's listing (taken once the backup has started), checked before anything here
/// changes: a listing no data directory gives, and tablespace locations that are not this replica's to fill,
/// refuse the run.
pub fn plan(config: &CloneConfig, transport: &dyn Transport, primary: Primary) -> Result<Plan, CloneError> {
    let entries = transport.list()?;
    transfer::check_listing(&entries).map_err(TransferError::Listing)?;
    let plan = transfer::plan(&entries, primary.major, &config.tablespace_mapping);
    tracing::debug!("listed the primary's data directory");
    transfer::check_tablespaces(&plan, &config.replica)?;
    Ok(plan)
}

/// Refuses, before anything here changes, a copy the replica's filesystem cannot hold (the sizes are the
/// primary's word: a file larger than the free space is one clear error, not a full disk hours later). The
/// replica directory a clone would create has the room of its nearest existing parent; a re-sync (`resync`)
/// reuses what is in place (`transfer::reusable`).
pub fn room(config: &CloneConfig, plan: &Plan, primary: Primary, resync: bool) -> Result<(), CloneError> {
    let room = config.replica.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
    let present = |(p, size): &(PathBuf, u64)| {
        let meta = std::fs::symlink_metadata(config.replica.join(p)).ok().filter(std::fs::Metadata::is_file);
        meta.map(|m| transfer::reusable(&m, *size))
    };
    let reused: u64 = if resync { plan.files.iter().filter_map(present).sum() } else { 0 };
    Ok(transfer::check_space(plan, room, reused, 8 * primary.seg.bytes())?)
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &CloneConfig,
    transport: &dyn Transport,
    mut plan: Plan,
    backup: &mut BackupSession,
    primary: Primary,
    resync: &Resync,
    timing: &mut Phases,
    cancel: &Cancel,
) -> Result<Copy, CloneError> {
    let replica = config.replica.as_path();
    let parallel = config.parallel;
    // A standby re-synced without -R stays the standby it was (-R writes settings of its own instead).
    if !matches!(resync, Resync::Fresh) && config.recovery.is_none() {
        plan.keep(replica::recovery_settings(replica));
    }
    let reused = if !matches!(resync, Resync::Fresh) {
        let (removed, present) = transfer::prune(&plan, replica)?;
        replica::sync_filesystem(replica)?;
        tracing::info!(
            "re-sync: removed {removed} entries the primary does not have; {} already here",
            progress::bytes(present)
        );
        present
    } else {
        0
    };
    // Room for the WAL segments of the run and rsync's temporary copies besides the data itself.
    transfer::check_space(&plan, replica, reused, 8 * primary.seg.bytes())?;
    // Every file the copy creates gets PostgreSQL's mode (0600, or 0640 with group access), whatever the
    // transport: PostgreSQL refuses a server.key others may read.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(plan.umask()));
    transfer::lay_out(&plan, replica)?;
    let fetches = match resync {
        Resync::Changed { changes, .. } => transfer::changed::fetches(changes, &plan.files, replica)?,
        _ => Vec::new(),
    };
    let unread = match resync {
        Resync::Compare { unchanged: Some(u), .. } => transfer::changed::unread(u, &plan.files, replica),
        _ => Vec::new(),
    };
    let mode = match resync {
        Resync::Fresh => Mode::Fresh,
        Resync::Compare { .. } => Mode::Compare(&unread),
        Resync::Changed { .. } => Mode::Changed(&fetches),
    };
    tracing::info!(
        "copying {} files, {}, with {parallel} workers",
        plan.files.len(),
        progress::bytes(plan.total_bytes)
    );
    let progress = Progress::new(plan.total_bytes, config.progress, config.progress_interval);
    let pages_before = (primary.checksums && config.verify_checksums).then_some(backup.start_lsn);
    let copied = std::thread::scope(|s| {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let (plan, progress) = (&plan, &progress);
        s.spawn(move || {
            // The supervisor below waits for this unless the scope is already unwinding.
            let copied = transfer::copy(plan, mode, transport, replica, parallel, pages_before, progress, cancel);
            let _ = done_tx.send(copied);
        });
        // This thread supervises: the backup session sits idle during the copy, and a server that ends
        // it (pg_terminate_backend, restart) must stop the clone now, not at pg_backup_stop.
        loop {
            match done_rx.recv_timeout(Duration::from_secs(1)) {
                Ok(result) => break result,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Err(e) = backup.check_alive() {
                        cancel.cancel(e.to_string());
                    }
                    progress.tick();
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    break Err(Cancelled("the copy thread died".into()).into())
                }
            }
        }
    });
    progress.finish();
    let (totals, landed) = copied?;
    cancel.check()?;
    transfer::keep_private(&plan, replica)?;
    timing.end("copy");

    // Before pg_backup_stop: a file fetched again must still be covered by the WAL the clone replays.
    let sums = if !config.manifest && pages_before.is_none() {
        Vec::new()
    } else {
        let read_rest = matches!(resync, Resync::Fresh | Resync::Compare { unchanged: None, .. });
        let sums = verify_copy(&plan, replica, transport, landed, (pages_before, read_rest), parallel, cancel)?;
        timing.end("verify");
        sums
    };
    Ok(Copy { plan, totals, reused, sums, start_lsn: backup.start_lsn })
}

/// The manifest's checksums and, with `pages_before`, the data page checksums: from what the copy saw land
/// where it could (native transport), else by reading the copied files once; with `read_rest` false (a re-sync
/// by WAL summaries or page LSNs, which leaves most bytes in place unread) files not wholly landed get no checksum and
/// their pages no check, as reading them would cost what the re-sync saves. A page that fails may be a torn
/// read of a page the primary was writing at that moment (basebackup.c re-reads such pages), so its file is
/// fetched again and checked once more before it counts as corrupt.
fn verify_copy(
    plan: &transfer::Plan,
    replica: &Path,
    transport: &dyn Transport,
    mut landed: transfer::Landed,
    (pages_before, read_rest): (Option<Lsn>, bool),
    parallel: usize,
    cancel: &Cancel,
) -> Result<Vec<FileSum>, CloneError> {
    let files: Vec<PathBuf> = plan.files.iter().map(|(p, _)| p.clone()).collect();
    let (mut sums, rest) = manifest::from_landed(replica, &files, &mut landed.ranges)?;
    let (scanned, mut bad) = if read_rest {
        tracing::debug!("{} files summed as they landed, {} read again", sums.len(), rest.len());
        manifest::scan(replica, &rest, pages_before, parallel)?
    } else {
        tracing::debug!("{} files summed as they landed, {} in place unread", sums.len(), rest.len());
        (manifest::unread(replica, &rest)?, Vec::new())
    };
    sums.extend(scanned);
    sums.sort_by(|a, b| a.path.cmp(&b.path));
    // A file read again after a partial landing may report a page twice.
    bad.extend(landed.bad);
    bad.sort_by(|a, b| (&a.path, a.block).cmp(&(&b.path, b.block)));
    bad.dedup();
    if bad.is_empty() {
        return Ok(sums);
    }
    let suspect: Vec<PathBuf> = bad.iter().map(|b| b.path.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    tracing::info!("{} pages failed their checksum; fetching {} files again", bad.len(), suspect.len());
    for f in &suspect {
        let _ = std::fs::remove_file(replica.join(f));
    }
    let pieces: Vec<Piece> = plan
        .files
        .iter()
        .filter(|(p, _)| suspect.contains(p))
        .map(|(p, size)| Piece::whole(p.clone(), *size, How::Fetch))
        .collect();
    transport.worker()?.copy(&pieces, replica, cancel, &mut IgnoreSink)?;
    let (again, bad) = manifest::scan(replica, &suspect, pages_before, parallel)?;
    sums.retain(|s| !suspect.contains(&s.path));
    sums.extend(again);
    sums.sort_by(|a, b| a.path.cmp(&b.path));
    if !bad.is_empty() {
        let list: Vec<String> =
            bad.iter().take(10).map(|b| format!("{} block {}", b.path.display(), b.block)).collect();
        let more = if bad.len() > 10 { format!(" and {} more", bad.len() - 10) } else { String::new() };
        let what = format!("{} data pages fail their checksum on the primary: {}{more}", bad.len(), list.join(", "));
        return Err(CloneError::BadPages(what));
    }
    Ok(sums)
}
