//! How a re-run brings the replica directory up to date, chosen once the backup has started and before anything
//! here changes. A fresh clone moves everything. A replica of the same cluster that was shut down cleanly (or
//! stopped as a standby) fetches only what changed since its last restartpoint when the primary's WAL summaries
//! can say what that is (`transfer::changed`); else every file here is compared with the primary's.
//!
//! Why summaries are enough: a restartpoint (or checkpoint) at redo pointer R has written every page change
//! from WAL before R to disk, and a server writes no page whose LSN lies beyond what it has replayed, which a
//! standby records as minRecoveryPoint (xlog.c) and a primary shut down cleanly ends with its shutdown
//! checkpoint. So every page here is the primary's page as of R, or one WAL after R changed, provided that WAL
//! is the primary's own: the replica's history up to its end must be on the primary's. The pages WAL in
//! [R, backup start) changed are what the summaries list; changes after the backup start are replayed over
//! full-page images, as for any base backup. What the summaries cannot see is damage done here by anything but
//! PostgreSQL (a disk, a stray write): those pages are not read, and --paranoid compares them all.

use std::time::Duration;

use super::preflight::{Primary, ReplicaState};
use super::CloneConfig;
use crate::pg::backup_session::BackupSession;
use crate::pg::control_file::{self, CONTROL_FILE, DB_IN_ARCHIVE_RECOVERY, DB_SHUTDOWNED, DB_SHUTDOWNED_IN_RECOVERY};
use crate::pg::lsn::Lsn;
use crate::pg::timeline::{self, Span};
use crate::pg::wal_summary::{self, Changes};
use crate::transport::Transport;

/// How long the WAL summarizer may take to reach the backup's start before a re-sync compares instead.
const SUMMARIZER_WAIT: Duration = Duration::from_secs(60);

pub enum Resync {
    /// Nothing is here yet (an empty directory, or one --drop-existing emptied).
    Fresh,
    /// Every file here is compared with the primary's, for the reason given.
    Compare { why: String },
    /// Only what WAL from `from` (the replica's last redo pointer) up to the backup's start changed is fetched.
    Summaries { changes: Changes, from: Lsn },
}

impl Resync {
    /// The method's name in --json.
    pub fn name(&self, transport: &dyn Transport) -> &'static str {
        match self {
            Resync::Fresh => "none",
            Resync::Compare { .. } if transport.split_size().is_none() => "rsync-checksums",
            Resync::Compare { .. } => "page-hashes",
            Resync::Summaries { .. } => "wal-summaries",
        }
    }

    /// Why the replica was compared rather than re-synced by summaries.
    pub fn why(&self) -> Option<&str> {
        match self {
            Resync::Compare { why } => Some(why),
            _ => None,
        }
    }
}

/// This run's method (see the module), logged with its reason; `history` is the primary's timeline history.
pub fn choose(
    config: &CloneConfig,
    state: ReplicaState,
    primary: Primary,
    transport: &dyn Transport,
    backup: &mut BackupSession,
    history: &[Span],
) -> Resync {
    let resync = match state {
        ReplicaState::Empty | ReplicaState::Dropped => return Resync::Fresh,
        ReplicaState::Unfinished => {
            Resync::Compare { why: "an interrupted clone has no pg_control to start from".into() }
        }
        ReplicaState::Cluster(_) => match by_summaries(config, primary, transport, backup, history) {
            Ok((changes, from)) => Resync::Summaries { changes, from },
            Err(why) => Resync::Compare { why },
        },
    };
    match &resync {
        Resync::Summaries { changes, from } => tracing::info!(
            "re-sync by the primary's WAL summaries from the replica's redo point {from}: {} relation forks changed",
            changes.forks.len()
        ),
        Resync::Compare { why } => tracing::info!("re-sync compares every file already here: {why}"),
        Resync::Fresh => {}
    }
    resync
}

/// The changes since the replica's redo pointer, or why summaries cannot tell them.
fn by_summaries(
    config: &CloneConfig,
    primary: Primary,
    transport: &dyn Transport,
    backup: &mut BackupSession,
    history: &[Span],
) -> Result<(Changes, Lsn), String> {
    if config.paranoid {
        return Err("--paranoid compares every page".into());
    }
    if transport.split_size().is_none() {
        return Err("the rsync transport compares whole files".into());
    }
    if primary.major < 17 {
        return Err(format!(
            "PostgreSQL {} keeps no WAL summaries (17 and later do, with summarize_wal = on)",
            primary.major
        ));
    }
    // control_file's offsets are those of 15 to 18.
    if primary.major > 18 {
        return Err(format!("pgclone does not know PostgreSQL {}'s pg_control layout", primary.major));
    }
    let path = config.replica.join(CONTROL_FILE);
    let control = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !control_file::crc_ok(&control, primary.major) {
        return Err("the replica's pg_control fails its CRC check".into());
    }
    let (redo, redo_tli) = (control_file::redo(&control), control_file::checkpoint_timeline(&control));
    // One byte into the checkpoint record: its WAL reaches at least that far.
    let checkpoint = Lsn(control_file::checkpoint(&control).0 + 1);
    let (end, end_tli) = match control_file::state(&control) {
        DB_SHUTDOWNED => (checkpoint, redo_tli),
        DB_SHUTDOWNED_IN_RECOVERY | DB_IN_ARCHIVE_RECOVERY => match control_file::min_recovery_point(&control) {
            (Lsn(0), _) => return Err("the replica's pg_control has no minimum recovery point".into()),
            (min, tli) => (min.max(checkpoint), tli),
        },
        state => {
            return Err(format!(
                "the replica was not shut down cleanly, or never ran (pg_control state {state}): its files may hold \
                 WAL the primary's history does not have"
            ))
        }
    };
    if !timeline::reaches(history, redo_tli, redo) || !timeline::reaches(history, end_tli, end) {
        return Err(format!(
            "the replica's WAL (up to {end} on timeline {end_tli}) is not on the primary's history: it went its own \
             way, as an old primary's does after a failover"
        ));
    }
    let start = backup.start_lsn;
    if end > start {
        return Err(format!("the replica's WAL reaches {end}, beyond the backup's start {start}"));
    }
    let conn = backup.session();
    let sql = |e: wal_summary::SummaryError| format!("reading the primary's WAL summaries failed: {e}");
    if !wal_summary::enabled(conn).map_err(sql)? {
        return Err("summarize_wal is off on the primary".into());
    }
    let current = history.last().map_or(1, |s| s.tli);
    wal_summary::wait_for(conn, current, start, SUMMARIZER_WAIT).map_err(sql)?;
    let have = wal_summary::available(conn).map_err(sql)?;
    let mut needed = Vec::new();
    for (tli, from, to) in timeline::pieces(history, redo, start) {
        if let Some(gap) = wal_summary::first_gap(&have, tli, from, to) {
            return Err(format!(
                "the primary's WAL summaries do not cover {gap} on timeline {tli} (the replica needs {from} to \
                 {to}): summarize_wal was turned on later, or wal_summary_keep_time removed them"
            ));
        }
        needed.extend(have.iter().filter(|s| s.tli == tli && s.end > from && s.start < to));
    }
    let changes = wal_summary::changes(conn, &needed).map_err(sql)?;
    Ok((changes, redo))
}
