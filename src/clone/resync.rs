//! How a re-run brings the replica directory up to date, chosen once the backup has started and before anything
//! here changes. A fresh clone moves everything. A replica of the same cluster whose pages stand at a known point
//! of the primary's history (a standby or primary shut down, a standby stopped anyhow, a clone never started,
//! an old primary after a failover) fetches only the blocks WAL changed since then, as the primary's WAL
//! summaries or its WAL itself name them (`transfer::changed`); else every file here is compared with the
//! primary's, but for the relation pages whose LSN says the primary has not changed them since, when page LSNs
//! can be trusted.
//!
//! Why summaries are enough: a restartpoint (or checkpoint) at redo pointer R has written every page change
//! from WAL before R to disk, and a server writes no page whose LSN lies beyond what it has replayed, which a
//! standby records as minRecoveryPoint (xlog.c) and a primary shut down cleanly ends with its shutdown
//! checkpoint. So every page here is the primary's page as of R, or one WAL after R changed, provided that WAL
//! is the primary's own: the replica's history up to its end must be on the primary's. The pages WAL in
//! [R, backup start) changed are what the summaries list, or the WAL's own block references
//! (`pg::wal_records`); changes after the backup start are replayed over full-page images, as for any base
//! backup. A clone that never started holds pages copied between its backup's start (its R) and the end record
//! of that backup in its WAL. An old primary's pages are the primary's as of the fork but for those its own WAL
//! names since the last checkpoint before it (`OwnWal`). What neither can see is damage done here by anything but
//! PostgreSQL (a disk, a stray write): those pages are not read, and --paranoid compares them all.
//!
//! Why page LSNs are enough, with data checksums on: on the same conditions, a page the primary's files hold
//! (read after pg_backup_start's checkpoint wrote out every change before the backup's start) whose LSN is at
//! or before R was last changed by WAL before R, so the copy here has that change and every earlier one: it is
//! the primary's page. Every WAL-logged change sets the page's LSN to the record's end (PageSetLSN). What
//! changes a page without WAL is a hint: with checksums on, the first hint after a checkpoint logs a full-page
//! image (MarkBufferDirtyHint), and setting PD_ALL_VISIBLE sets the page's LSN (visibilitymap_set), which
//! without checksums (or wal_log_hints) it does not: a standby would keep a page without the flag under a
//! visibility map bit that says it, and after a promotion an update would leave the bit set for a changed page.
//! Checksums cannot change while a server runs (up to 18: `position` refuses later majors); pg_checksums,
//! offline, asks for all members of a replication setup to be switched together (its documentation), which is
//! what the replica's pg_control is compared with. The other exception is CREATE DATABASE ... STRATEGY FILE_COPY (and ALTER DATABASE SET TABLESPACE),
//! which copy files with their pages' LSNs as they are: a database dropped and created again under the same OID
//! while the replica was stale would pass for the old one. Only databases whose pg_database row (OID and the
//! XID that wrote it) the replica's own catalog holds are trusted (`pg::databases`); the others, and every
//! non-relation file, free space map and visibility map, are compared whole. A page damaged here is not read
//! either, as with summaries.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::preflight::{Primary, ReplicaState};
use super::{divergence, CloneConfig};
use crate::pg::backup_session::BackupSession;
use crate::pg::control_file::{self, CONTROL_FILE, DB_IN_ARCHIVE_RECOVERY, DB_SHUTDOWNED, DB_SHUTDOWNED_IN_RECOVERY};
use crate::pg::databases;
use crate::pg::lsn::{Lsn, SegSize};
use crate::pg::timeline::{self, Span};
use crate::pg::wal_records::{self, Scanned, Stretch};
use crate::pg::wal_stream::WalStream;
use crate::pg::wal_summary::{self, Changes};
use crate::pg::Conn;
use crate::sys::cancel::Cancel;
use crate::sys::files;
use crate::transfer::changed::Unchanged;
use crate::transport::Transport;

/// How long the WAL summarizer may take to reach the backup's start before a re-sync compares instead.
const SUMMARIZER_WAIT: Duration = Duration::from_secs(60);

pub enum Resync {
    /// Nothing is here yet (an empty directory, or one --drop-existing emptied).
    Fresh,
    /// Every file here is compared with the primary's, for the reason given (why WAL could not say what
    /// changed); with `unchanged`, but for the relation pages the primary has not changed since (page LSNs).
    Compare { why: String, unchanged: Option<Unchanged> },
    /// Only what WAL from `from` (the replica's last redo pointer) up to the backup's start changed is fetched,
    /// as the primary's WAL summaries (`by` "wal-summaries") or its WAL itself ("wal-blocks") name it.
    /// `wal_read`: bytes of WAL read to tell (none for summaries).
    Changed { changes: Changes, from: Lsn, by: &'static str, wal_read: u64 },
}

impl Resync {
    /// The method's name in --json.
    pub fn name(&self, transport: &dyn Transport) -> &'static str {
        match self {
            Resync::Fresh => "none",
            Resync::Compare { .. } if transport.name() == "rsync" => "rsync-checksums",
            Resync::Compare { unchanged: Some(_), .. } => "page-lsns",
            Resync::Compare { .. } => "page-hashes",
            Resync::Changed { by, .. } => by,
        }
    }

    /// Bytes of WAL read to tell what changed.
    pub fn wal_read(&self) -> u64 {
        match self {
            Resync::Changed { wal_read, .. } => *wal_read,
            _ => 0,
        }
    }

    /// Why the replica was compared rather than re-synced by what WAL changed.
    pub fn why(&self) -> Option<&str> {
        match self {
            Resync::Compare { why, .. } => Some(why),
            _ => None,
        }
    }
}

/// Where the replica's files stand: every page holds all changes of WAL before `redo`, and none of WAL after
/// `end`, which is the primary's own up to there (`divergence`); `control` is its pg_control.
pub struct Position {
    redo: Lsn,
    end: Lsn,
    control: Vec<u8>,
    /// A copy whose recovery never began (a clone never started): its files were copied while the primary wrote
    /// them, so no page LSN can speak for them (a database created by FILE_COPY during the copy holds pages
    /// torn between the template's old ones), only the WAL since the backup's start.
    copied: bool,
    /// A former primary's own changes after the fork (`OwnWal`), fetched from the primary too.
    own: Option<Scanned>,
    /// What the primary's WAL from `redo` up to the stream's start changed, read while that WAL is kept there
    /// (before pg_backup_start's checkpoint, or held through it, see clone::connect), or why it could not be
    /// read; None when the primary's WAL summaries are to say it.
    early: Option<Result<Scanned, String>>,
}

/// The primary's WAL a re-sync's `survey` will read there, known before it runs: for clone::connect to tell
/// whether pg_backup_start may come first.
pub struct WalToRead {
    stand: Stand,
    /// The replica's pg_wal, its segment size and system identifier: a former primary's own WAL tells where the
    /// survey's reads begin.
    pg_wal: PathBuf,
    seg: SegSize,
    system_id: u64,
}

impl WalToRead {
    /// None when the survey reads none of it: no cluster here, --paranoid, or a replica whose own files already
    /// say they must be compared (`Stand`). The system identifier of the replica's own WAL is its pg_control's
    /// (a replica of another cluster is refused before the survey).
    pub fn of(config: &CloneConfig, state: ReplicaState, primary: Primary) -> Option<WalToRead> {
        if !matches!(state, ReplicaState::Cluster(_)) || config.paranoid || primary.major > 18 {
            return None;
        }
        let control = control_file::read(&config.replica.join(CONTROL_FILE)).ok()?;
        let system_id = control_file::system_id(&control);
        let stand = Stand::of(&config.replica, &control, (primary.seg, system_id)).ok()?;
        Some(WalToRead { stand, pg_wal: config.replica.join("pg_wal"), seg: primary.seg, system_id })
    }

    /// The oldest position read, from the replica's redo point on (the divergence proof reads its checkpoint
    /// record and its end, both later); or why it cannot be known. A former primary (`OwnWal`) is read from the
    /// last checkpoint before the fork, which its own WAL tells: the proof reads the primary's WAL at that record,
    /// and the scan from the replica's redo point or the fork, whichever comes first.
    pub fn oldest(&self, history: &[Span]) -> Result<Lsn, String> {
        let s = &self.stand;
        if timeline::reaches(history, s.redo_tli, s.redo) && timeline::reaches(history, s.end_tli, s.end) {
            return Ok(s.redo);
        }
        let fork = s.fork(history).ok_or("the replica's WAL is not on the primary's history")?;
        let (checkpoint, _) =
            wal_records::checkpoint_before(&self.pg_wal, self.seg, self.system_id, s.end_tli, fork)
                .map_err(|e| format!("the replica's own WAL before the fork at {fork} cannot be read: {e}"))?;
        Ok(checkpoint.min(s.redo))
    }
}

/// Before pg_backup_start's checkpoint, or with the WAL it reads held through it (clone::connect): where a
/// replica of this cluster stands (see the module), or why its files cannot be taken for the primary's pages of
/// a point of its history. `params` reach the primary, `system_id` is the cluster's, `history` the primary's
/// timelines.
pub fn survey(
    config: &CloneConfig,
    state: ReplicaState,
    primary: Primary,
    transport: &dyn Transport,
    (params, system_id): (&[(&str, &str)], u64),
    (sql, stream): (&mut Conn, &WalStream),
) -> Result<Position, String> {
    let history = &stream.history;
    if !matches!(state, ReplicaState::Cluster(_)) {
        return Err("no cluster here".into());
    }
    if config.paranoid {
        return Err("--paranoid compares every page".into());
    }
    if transport.split_size().is_none() {
        return Err("the rsync transport compares whole files".into());
    }
    // control_file's offsets are those of 15 to 18.
    if primary.major > 18 {
        return Err(format!("pgclone does not know PostgreSQL {}'s pg_control layout", primary.major));
    }
    let path = config.replica.join(CONTROL_FILE);
    let control = control_file::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !control_file::crc_ok(&control, primary.major) {
        return Err("the replica's pg_control fails its CRC check".into());
    }
    let pg_wal = config.replica.join("pg_wal");
    let stand = Stand::of(&config.replica, &control, (primary.seg, system_id))?;
    let Stand { redo, redo_tli, checkpoint, end, end_tli, copied } = stand;
    if !timeline::reaches(history, redo_tli, redo) || !timeline::reaches(history, end_tli, end) {
        let went = format!(
            "the replica's WAL (up to {end} on timeline {end_tli}) is not on the primary's history: it went its own \
             way, as an old primary's does after a failover"
        );
        let Some(fork) = stand.fork(history) else { return Err(went) };
        let own = OwnWal { pg_wal: &pg_wal, tli: end_tli, fork, redo, end, control: &control };
        return own.position((config, primary, transport), (params, system_id), (sql, stream));
    }
    let claim = divergence::Claim { checkpoint, checkpoint_tli: redo_tli, end, end_tli };
    divergence::prove(&config.replica, &claim, (primary.seg, system_id), params, history)?;
    let early = early_wal(sql, primary, transport, (stream, system_id), redo);
    Ok(Position { redo, end, control, copied, own: None, early })
}

/// Where a replica's pages stand on its own WAL: every page holds all changes before `redo` (on `redo_tli`), none
/// after `end` (on `end_tli`); `checkpoint` is the checkpoint record `redo` comes from; `copied`: a copy whose
/// recovery never began (see `Position::copied`).
struct Stand {
    redo: Lsn,
    redo_tli: u32,
    checkpoint: Lsn,
    end: Lsn,
    end_tli: u32,
    copied: bool,
}

impl Stand {
    /// Where the primary's timeline left the replica's, for a replica whose WAL went on past it on one timeline
    /// since its redo point (`OwnWal`): the end of that timeline in the primary's history.
    fn fork(&self, history: &[Span]) -> Option<Lsn> {
        let fork = history.iter().find(|s| s.tli == self.end_tli).and_then(|s| s.end);
        fork.filter(|_| self.redo_tli == self.end_tli && !self.copied)
    }

    /// From the replica's pg_control (`control`), or, for a copy whose recovery never began, from its
    /// backup_label and the WAL it keeps; or why its files may hold changes nothing here accounts for.
    fn of(replica: &Path, control: &[u8], (seg, system_id): (SegSize, u64)) -> Result<Stand, String> {
        let (pg_wal, label) = (replica.join("pg_wal"), replica.join("backup_label"));
        if std::fs::symlink_metadata(&label).is_ok() {
            // Recovery from a backup has not begun (a clone never started): its pg_control is the primary's as
            // the copy ended and says nothing of the copied pages. The backup_label says where the backup
            // began; the backup's end record, in the WAL the copy keeps, where every copied page was complete.
            let l = BackupLabel::read(&label)?;
            let state = control_file::state(control);
            if state != control_file::DB_IN_PRODUCTION || control_file::backup_unfinished(control).is_some() {
                return Err(format!(
                    "the replica holds a backup_label and a pg_control that says \"{}\": its recovery began and \
                     stopped before the backup's end, so its pages may be newer than anything it recorded",
                    control_file::state_name(state)
                ));
            }
            let end = wal_records::backup_end(&pg_wal, seg, system_id, l.timeline, l.start).map_err(|e| {
                format!("the replica is a copy that never started, and its pg_wal does not show the backup's end ({e})")
            })?;
            return Ok(Stand {
                redo: l.start,
                redo_tli: l.timeline,
                checkpoint: l.checkpoint,
                end,
                end_tli: l.timeline,
                copied: true,
            });
        }
        if let Some(start) = control_file::backup_unfinished(control) {
            return Err(format!(
                "the replica's recovery from a backup (started at {start}) never reached the backup's end, so its \
                 pages may be newer than its minimum recovery point"
            ));
        }
        let (redo, redo_tli) = (control_file::redo(control), control_file::checkpoint_timeline(control));
        let checkpoint = control_file::checkpoint(control);
        // One byte into the checkpoint record: its WAL reaches at least that far.
        let (end, end_tli) = match control_file::state(control) {
            DB_SHUTDOWNED => (Lsn(checkpoint.0 + 1), redo_tli),
            DB_SHUTDOWNED_IN_RECOVERY | DB_IN_ARCHIVE_RECOVERY => match control_file::min_recovery_point(control) {
                (Lsn(0), _) => return Err("the replica's pg_control has no minimum recovery point".into()),
                (min, tli) => (min.max(Lsn(checkpoint.0 + 1)), tli),
            },
            state => {
                return Err(format!(
                    "the replica's pg_control says \"{}\", not shut down cleanly: its files may hold changes its \
                     pg_control does not account for",
                    control_file::state_name(state)
                ))
            }
        };
        Ok(Stand { redo, redo_tli, checkpoint, end, end_tli, copied: false })
    }
}

/// A replica whose WAL went on past the point where the primary's timeline left its own, `fork`: a former
/// primary after a failover, or a standby that replayed past the promotion. Its pages are the primary's as of the
/// fork but for those its own WAL after the fork changed; and, as pg_rewind takes it (src/bin/pg_rewind: the
/// last common checkpoint, findLastCheckpoint, and the pages the target's WAL names from its redo on,
/// extractPageMap), but for those it changed from the redo point of the last checkpoint before the fork: a hint
/// bit set after the fork, for a transaction whose fate the primary's timeline decided otherwise, is WAL-logged
/// only as the first change of a page after a checkpoint (MarkBufferDirtyHint), and only with data checksums or
/// wal_log_hints. Without either, such a page changes unseen, and every page is compared.
struct OwnWal<'a> {
    pg_wal: &'a Path,
    tli: u32,
    fork: Lsn,
    /// The replica's redo pointer, and how far its WAL went, on `tli`.
    redo: Lsn,
    end: Lsn,
    control: &'a [u8],
}

impl OwnWal<'_> {
    fn position(
        self,
        (config, primary, transport): (&CloneConfig, Primary, &dyn Transport),
        (params, system_id): (&[(&str, &str)], u64),
        (sql, stream): (&mut Conn, &WalStream),
    ) -> Result<Position, String> {
        let fork = self.fork;
        let checksums = control_file::data_checksum_version(self.control) != 0;
        if !checksums && !control_file::wal_log_hints(self.control) {
            return Err(format!(
                "the replica's WAL went its own way after {fork} (a former primary), and with neither data checksums \
                 nor wal_log_hints on there, the pages it set hint bits on after that are named by no WAL"
            ));
        }
        let (checkpoint, common_redo) =
            wal_records::checkpoint_before(self.pg_wal, primary.seg, system_id, self.tli, fork).map_err(|e| {
                format!(
                    "the replica's WAL went its own way after {fork}, and its own WAL before that cannot be read: {e}"
                )
            })?;
        // Both copies' WAL up to the fork must be the same history (see `divergence`).
        let claim = divergence::Claim { checkpoint, checkpoint_tli: self.tli, end: fork, end_tli: self.tli };
        divergence::prove(&config.replica, &claim, (primary.seg, system_id), params, &stream.history)?;
        let from = common_redo.min(self.redo);
        let pieces = [(self.tli, from, self.end)];
        let stretch = Stretch { pieces: &pieces, seg: primary.seg, system_id, hints: !checksums };
        let own = wal_records::changes(self.pg_wal, &stretch).map_err(|e| {
            format!(
                "the replica's WAL went its own way after {fork}, and what it changed since {from} cannot be told: {e}"
            )
        })?;
        tracing::info!(
            "the replica's WAL left the primary's timeline at {fork}: its own WAL from {from} names {} relation forks \
             changed here, fetched from the primary",
            own.changes.forks.len()
        );
        // The pages here hold every change before the replica's redo pointer, and before the fork all of them are
        // the primary's too.
        let redo = self.redo.min(fork);
        let early = early_wal(sql, primary, transport, (stream, system_id), redo);
        Ok(Position { redo, end: fork, control: self.control.to_vec(), copied: false, own: Some(own), early })
    }
}

/// What a backup_label (do_pg_backup_stop in xlog.c writes it; read_backup_label in xlogrecovery.c reads it) says:
/// where the backup's WAL starts, its checkpoint record, and on which timeline.
struct BackupLabel {
    start: Lsn,
    checkpoint: Lsn,
    timeline: u32,
}

impl BackupLabel {
    /// The label at `path`, at most its first 64 KiB, never through a link; only one of a backup taken on a
    /// primary (a standby's backup ends at its minimum recovery point, with no record of its end).
    fn read(path: &Path) -> Result<BackupLabel, String> {
        let mut text = String::new();
        let bad = |why: String| format!("the replica's backup_label {}: {why}", path.display());
        files::open_read(path)
            .and_then(|f| f.take(64 << 10).read_to_string(&mut text))
            .map_err(|e| bad(format!("cannot be read ({e})")))?;
        let field =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next());
        let lsn = |name: &str| field(name).and_then(|v| v.parse::<Lsn>().ok());
        let (Some(start), Some(checkpoint)) = (lsn("START WAL LOCATION: "), lsn("CHECKPOINT LOCATION: ")) else {
            return Err(bad("names no start and checkpoint location".into()));
        };
        if field("BACKUP FROM: ") != Some("primary") {
            return Err(bad("is not of a backup taken on a primary".into()));
        }
        let timeline = field("START TIMELINE: ").and_then(|t| t.parse().ok()).unwrap_or(1);
        Ok(BackupLabel { start, checkpoint, timeline })
    }
}

/// While the primary keeps it (see `Position::early`): what the primary's WAL from `redo` to the stream's start
/// changed, read there by the agent; nothing to read when the replica's redo point lies past the stream's start.
/// Not read when the primary keeps WAL summaries that reach back to `redo`: they say the same for less.
fn early_wal(
    sql: &mut Conn,
    primary: Primary,
    transport: &dyn Transport,
    (stream, system_id): (&WalStream, u64),
    redo: Lsn,
) -> Option<Result<Scanned, String>> {
    let to = stream.start.lsn;
    let pieces = timeline::pieces(&stream.history, redo, to);
    if primary.major >= 17 && wal_summary::enabled(sql).unwrap_or(false) {
        let covered = wal_summary::available(sql)
            .is_ok_and(|have| pieces.iter().all(|(t, a, b)| wal_summary::first_gap(&have, *t, *a, *b).is_none()));
        if covered {
            return None;
        }
    }
    if pieces.is_empty() {
        return Some(Ok(Scanned::default()));
    }
    let stretch = Stretch { pieces: &pieces, seg: primary.seg, system_id, hints: false };
    let scanned = transport
        .wal_changes(&stretch)?
        .map_err(|e| format!("the primary's WAL from the replica's redo point {redo} on cannot be read there: {e}"));
    if let Ok(s) = &scanned {
        tracing::info!(
            "read {} of the primary's WAL from the replica's redo point {redo} to {to} on the primary: {} relation \
             forks changed",
            crate::progress::bytes(s.wal_bytes),
            s.changes.forks.len()
        );
    }
    Some(scanned)
}

/// This run's method (see the module), logged with its reason; `stream` the run's WAL stream (the primary's
/// timeline history, and the WAL since its start in `streamed`), `surveyed` what `survey` found.
pub fn choose(
    config: &CloneConfig,
    state: ReplicaState,
    primary: Primary,
    backup: &mut BackupSession,
    (stream, streamed): (&WalStream, &Path),
    surveyed: Result<Position, String>,
    cancel: &Cancel,
) -> Resync {
    let start = backup.start_lsn;
    let history = &stream.history;
    let surveyed = surveyed.and_then(|at| match at.end > start {
        true => Err(format!("the replica's WAL reaches {}, beyond the backup's start {start}", at.end)),
        false => Ok(at),
    });
    let resync = match state {
        ReplicaState::Empty | ReplicaState::Dropped => return Resync::Fresh,
        ReplicaState::Unfinished => {
            Resync::Compare { why: "an interrupted clone has no pg_control to start from".into(), unchanged: None }
        }
        ReplicaState::Cluster(_) => match surveyed {
            Err(why) => Resync::Compare { why, unchanged: None },
            Ok(mut at) => {
                let by_wal = |at: &mut Position, why: String| match at.early.take() {
                    None => Err(why),
                    Some(early) => by_wal_records(early, (stream, streamed, primary.seg), at.redo, start, cancel),
                };
                let mut own = at.own.take();
                let (redo, rejoin) = (at.redo, own.is_some());
                let mut with_own = |mut changes: Changes, mut wal_read: u64, by| {
                    if let Some(own) = own.take() {
                        changes.merge(own.changes);
                        wal_read += own.wal_bytes;
                    }
                    Resync::Changed { changes, from: redo, by, wal_read }
                };
                match by_summaries(primary, backup, history, at.redo) {
                    Ok(changes) => with_own(changes, 0, "wal-summaries"),
                    Err(why) => match by_wal(&mut at, why) {
                        Ok((changes, wal_read)) => with_own(changes, wal_read, "wal-blocks"),
                        // Page LSNs cannot tell the pages a former primary changed after the fork.
                        Err(why) if rejoin => Resync::Compare { why, unchanged: None },
                        Err(why) => match by_page_lsns(config, primary, backup, &at) {
                            Ok(unchanged) => Resync::Compare { why, unchanged: Some(unchanged) },
                            Err(not) => Resync::Compare { why: format!("{why}; {not}"), unchanged: None },
                        },
                    },
                }
            }
        },
    };
    match &resync {
        Resync::Changed { changes, from, by: "wal-summaries", .. } => tracing::info!(
            "re-sync by the primary's WAL summaries from the replica's redo point {from}: {} relation forks changed",
            changes.forks.len()
        ),
        Resync::Changed { changes, from, .. } => tracing::info!(
            "re-sync by the primary's WAL from the replica's redo point {from}: {} relation forks changed",
            changes.forks.len()
        ),
        Resync::Compare { why, unchanged: Some(u) } => tracing::info!(
            "re-sync compares every file already here but the relation pages the primary last changed before the \
             replica's redo point {} (page LSNs): {why}",
            u.before
        ),
        Resync::Compare { why, unchanged: None } => tracing::info!("re-sync compares every file already here: {why}"),
        Resync::Fresh => {}
    }
    resync
}

/// The changes of the primary's WAL from the replica's redo point `redo` to the backup's `start`: what the agent
/// read before the backup started (`early`, up to the stream's start), and the rest from the WAL this run
/// streamed, once it is here.
fn by_wal_records(
    early: Result<Scanned, String>,
    (stream, streamed, seg): (&WalStream, &Path, SegSize),
    redo: Lsn,
    start: Lsn,
    cancel: &Cancel,
) -> Result<(Changes, u64), String> {
    let Scanned { mut changes, mut wal_bytes } = early?;
    let from = redo.max(stream.start.lsn);
    if from < start {
        stream
            .wait_for(start, cancel)
            .map_err(|e| format!("the WAL stream did not reach the backup's start {start}: {e}"))?;
        let pieces = [(stream.start.timeline, from, start)];
        let stretch = Stretch { pieces: &pieces, seg, system_id: stream.start.system_id, hints: false };
        let local = wal_records::changes(streamed, &stretch)
            .map_err(|e| format!("the WAL streamed from {from} to the backup's start cannot be read: {e}"))?;
        changes.merge(local.changes);
        wal_bytes += local.wal_bytes;
    }
    Ok((changes, wal_bytes))
}

/// The relation pages a compare may leave unread (see the module), or why page LSNs cannot say which.
fn by_page_lsns(
    config: &CloneConfig,
    primary: Primary,
    backup: &mut BackupSession,
    at: &Position,
) -> Result<Unchanged, String> {
    if at.copied {
        return Err("page LSNs cannot speak for pages copied while the primary wrote them".into());
    }
    if !primary.checksums {
        return Err("data checksums are off on the primary, so a page can change without its LSN (every page is \
                    compared; initdb -k or pg_checksums turn them on)"
            .into());
    }
    if control_file::data_checksum_version(&at.control) == 0 {
        return Err("the replica's pg_control says data checksums are off there, unlike on the primary".into());
    }
    let here =
        databases::in_files(&config.replica).map_err(|e| format!("reading the replica's pg_database failed: {e}"))?;
    let there =
        databases::on_server(backup.session()).map_err(|e| format!("reading the primary's pg_database failed: {e}"))?;
    let all = there.len();
    let databases: HashSet<u32> = there.into_iter().filter(|row| here.contains(row)).map(|(oid, _)| oid).collect();
    if databases.len() < all {
        tracing::info!(
            "{} of the primary's {all} databases are not the ones here under their OIDs (created again, moved or \
             altered while the replica was stale): their pages are all compared",
            all - databases.len()
        );
    }
    Ok(Unchanged { before: at.redo, databases })
}

/// The changes since the replica's redo pointer `redo`, or why summaries cannot tell them.
fn by_summaries(primary: Primary, backup: &mut BackupSession, history: &[Span], redo: Lsn) -> Result<Changes, String> {
    if primary.major < 17 {
        return Err(format!(
            "PostgreSQL {} keeps no WAL summaries (17 and later do, with summarize_wal = on)",
            primary.major
        ));
    }
    let start = backup.start_lsn;
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
    wal_summary::changes(conn, &needed).map_err(sql)
}
