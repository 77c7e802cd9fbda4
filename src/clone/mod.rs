//! One clone, as the list of its phases. `run` reads top to bottom as what happens on the primary and here;
//! each phase is a function of its own (most in a file of their own) returning a typed result.

pub mod config;
mod connect;
mod copy;
mod divergence;
pub mod finalize;
pub mod preflight;
mod resync;
pub mod standby;
mod summary;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Cancelled, IoAt, IoContext};
use crate::pg::backup_session::{BackupEnd, BackupError, BackupSession};
use crate::pg::control_file::{self, CONTROL_FILE};
use crate::pg::lsn::Lsn;
use crate::pg::wal_stream::WalStreamError;
use crate::pg::Conn;
use crate::replica::run_dir::{self, MadeDirs, RunDir};
use crate::replica::{self, ReplicaError, ReplicaLock};
use crate::sys::cancel::Cancel;
use crate::transfer::TransferError;
use crate::transport::{Transport, TransportError};
pub use config::{CloneConfig, ConfigError, Env};
use connect::{Connect, Connected};
use finalize::{Finalize, FinalizeError};
use preflight::{Checked, PreflightError, ReplicaState};
use resync::Resync;
use standby::{Recovery, StandbyError};
pub use summary::Summary;

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    WalStream(#[from] WalStreamError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error("reading the standby's minimum recovery point failed: {0}")]
    MinRecovery(crate::pg::PgError),
    #[error("global/pg_control fetched from the primary failed its CRC check {tries} times in a row")]
    ControlCrc { tries: u32 },
    #[error("backup started at {start}, before the WAL stream's start {stream}: the stream would miss WAL")]
    StreamTooLate { start: Lsn, stream: Lsn },
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Standby(#[from] StandbyError),
    #[error("{error}; {slot}")]
    AfterSlot { error: String, slot: String },
    #[error("{0}; the copy would carry the corruption (--no-verify-checksums clones anyway)")]
    BadPages(String),
    #[error(transparent)]
    Password(#[from] crate::sys::tty::PasswordError),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// How a failed run ended, for scripts and orchestrators (the exit status, and `class` in --json): whether
/// anything was changed, and whether running again can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Bad flags or flag combinations.
    Usage,
    /// A check refused the run before anything in the replica directory changed: running again fails the same
    /// way until the cause is fixed.
    Refused,
    /// Failed during the run: what was copied stays, and a re-run resumes from it.
    Failed,
    /// The clone is complete, but the standby --start started did not come up streaming.
    Standby,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Failed => 1,
            Outcome::Usage => 2,
            Outcome::Refused => 3,
            Outcome::Standby => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Failed => "failed",
            Outcome::Usage => "usage",
            Outcome::Refused => "refused",
            Outcome::Standby => "standby",
        }
    }
}

impl CloneError {
    pub fn outcome(&self) -> Outcome {
        use TransportError as T;
        match self {
            CloneError::Config(ConfigError::SshName { .. })
            | CloneError::Preflight(_)
            | CloneError::Replica(ReplicaError::Locked { .. })
            | CloneError::Standby(StandbyError::NoPgCtl { .. })
            | CloneError::Transport(
                T::Ssh(_) | T::Pgdata(_) | T::AgentMissing(_) | T::DataChannel(_) | T::RsyncNeedsSsh,
            )
            | CloneError::Transfer(
                TransferError::NoSpace { .. }
                | TransferError::Listing(_)
                | TransferError::TablespaceNotEmpty(_)
                | TransferError::TablespaceMoved { .. },
            ) => Outcome::Refused,
            CloneError::Standby(StandbyError::Start { .. } | StandbyError::NotStreaming { .. }) => Outcome::Standby,
            CloneError::Config(_) | CloneError::Password(crate::sys::tty::PasswordError::NotATerminal) => {
                Outcome::Usage
            }
            _ => Outcome::Failed,
        }
    }
}

/// Clones into `config.replica`, holding its lock for the whole run. A directory this run created is removed
/// again when the run fails before copying anything into it, so a failed preflight changes nothing.
pub fn run(config: &CloneConfig, cancel: &Cancel) -> Result<Summary, CloneError> {
    preflight::not_root()?;
    // What pgclone creates is its owner's alone (PostgreSQL's modes: 0700 directories, 0600 files) until the
    // primary's listing says its group may read it too.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let replica = &config.replica;
    let created = !replica.exists();
    replica::mkdir(replica)?;
    let result = ReplicaLock::acquire(replica).map_err(CloneError::from).and_then(|lock| phases(config, lock, cancel));
    // remove_dir leaves a non-empty directory alone.
    if result.is_err() && created {
        let _ = std::fs::remove_dir(replica);
    }
    result
}

/// What a `--check` run found: a clone of `files` files, `bytes` bytes, would start now.
pub struct CheckReport {
    pub files: u64,
    pub bytes: u64,
    pub major: u32,
    /// A replica already there would be re-synced.
    pub resync: bool,
    /// The PostgreSQL connections in clear text (`--json`'s `postgres_clear_text`).
    pub clear_text: Vec<&'static str>,
    /// The primary's data directory that was checked.
    pub pgdata: PathBuf,
    /// The data directory was reached over ssh (not --no-ssh).
    pub ssh: bool,
    pub replica: PathBuf,
    /// -S: the existing slot the check streamed through, instead of a temporary one of its own.
    pub stream_slot: Option<String>,
}

/// The line a passed --check ends with: what a run would do, and what the check did to find out, each word of
/// it true. The check did stream WAL and list the data directory: "changed nothing" would not be.
impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.resync { "re-sync" } else { "clone" };
        let slot = match &self.stream_slot {
            Some(name) => format!("through slot {name}"),
            None => "on a temporary slot, gone with it".into(),
        };
        let reached = if self.ssh { "the ssh login and " } else { "" };
        write!(
            f,
            "check passed: a {what} of {} files, {} from PostgreSQL {} into {} can start. Checked: the replica \
             directory, the role's privileges and the primary's WAL settings, a WAL stream ({slot}), {reached}the \
             primary's data directory {}, room for the WAL and the data. No backup was started and the replica \
             directory was left as it was",
            self.files,
            crate::progress::bytes(self.bytes),
            self.major,
            self.replica.display(),
            self.pgdata.display()
        )
    }
}

/// --check: every check a clone makes before it starts copying (the replica directory, the primary over SQL,
/// ssh and the data directory there, a WAL sender and slot, room for the streamed WAL and for the data), then
/// nothing else. No backup is started; the replica directory is neither created nor changed; what the checks
/// open (the run directory under $TMPDIR, the WAL stream's temporary slot, the agent) ends with them.
pub fn check(config: &CloneConfig, cancel: &Cancel) -> Result<CheckReport, CloneError> {
    preflight::not_root()?;
    let dirs = RunDirs::create(config)?;
    let Checked { tunnel, pgdata, params, sql, primary, replica: state, system_id, .. } =
        preflight::run(config, dirs.run.path())?;
    preflight::wal_space(&dirs.streamed, primary.seg)?;
    let resync = matches!(state, ReplicaState::Unfinished | ReplicaState::Cluster(_));
    let connect = Connect {
        config,
        params: &params,
        primary,
        pgdata: &pgdata,
        system_id,
        streamed: &dirs.streamed,
        run_dir: dirs.run.path(),
        resync,
        tunnel: tunnel.is_some(),
        backup: None,
    };
    let Connected { transport, system_id: found, clear_text, .. } = connect.run(sql, cancel)?;
    preflight::replica_matches(&config.replica, state, found)?;
    let (files, bytes) = copy::check(config, &*transport, primary, resync)?;
    Ok(CheckReport {
        files,
        bytes,
        major: primary.major,
        resync,
        clear_text,
        pgdata,
        ssh: config.ssh.is_some(),
        replica: config.replica.clone(),
        stream_slot: config.stream_slot.clone(),
    })
}

/// The phases of one clone. Every resource a phase opens is a local variable here, declared in the order it is
/// acquired, so any early return (an error, a signal, a WAL stream that failed on its own thread) drops them in
/// reverse: the transport's agents or rsync daemon end, the backup session closes (the server aborts a
/// non-exclusive backup whose session ends), the WAL stream's connection closes and its temporary slot goes with
/// it, the ssh tunnel ends, the run directories (which held its socket) are removed, and the replica lock is
/// released last.
fn phases(config: &CloneConfig, _lock: ReplicaLock, cancel: &Cancel) -> Result<Summary, CloneError> {
    let started = Instant::now();
    let mut timing = Phases::new();

    // The run's private directory first: a --bypass-rep-traffic tunnel, opened by preflight, has its socket there.
    let dirs = RunDirs::create(config)?;
    let Checked { tunnel, pgdata, params, sql, primary, replica: state, system_id, pg_ctl, recovery } =
        preflight::run(config, dirs.run.path())?;
    cancel.check()?;
    timing.end("preflight");

    let streamed = dirs.streamed.clone();
    preflight::wal_space(&streamed, primary.seg)?;
    let existing = matches!(state, ReplicaState::Unfinished | ReplicaState::Cluster(_));
    let connect = Connect {
        config,
        params: &params,
        primary,
        pgdata: &pgdata,
        system_id,
        streamed: &streamed,
        run_dir: dirs.run.path(),
        resync: existing,
        tunnel: tunnel.is_some(),
        backup: config.fast_checkpoint.then(|| connect::Backup { wal: resync::WalToRead::of(config, state, primary) }),
    };
    let Connected { mut stream, transport, slot, system_id: found, clear_text, session } = connect.run(sql, cancel)?;
    if system_id.is_none() {
        preflight::replica_matches(&config.replica, state, found)?;
    }
    let system_id = found;
    cancel.check()?;
    timing.end("connect");

    // Before pg_control goes: how a replica already here is brought up to date depends on it. What the survey
    // reads of the primary's WAL is kept there until it is done: by the stream's slot or wal_keep_size through
    // the backup's checkpoint, or by starting the backup after it (`connect::Backup`).
    let pq: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let survey = |sql: &mut Conn| resync::survey(config, state, primary, &*transport, (&pq, system_id), (sql, &stream));
    let (surveyed, mut backup) = match session {
        connect::Session::Started(mut backup) => (survey(backup.session()), backup),
        connect::Session::Idle(mut sql) => (survey(&mut sql), connect::backup_start(sql, &stream, config)?),
    };
    stream.unpin();
    confirm_live_pgdata(config, &pgdata, &*transport, dirs.run.path(), backup.start_lsn, primary)?;
    let resync = resync::choose(config, state, primary, &mut backup, (&stream, &streamed), surveyed, cancel);
    let plan = copy::plan(config, &*transport, primary)?;
    // --drop-existing frees its room only when it clears the directory; the copy checks again after that.
    if state != ReplicaState::Dropped {
        copy::room(config, &plan, primary, existing)?;
    }
    // The last check has passed: only now is anything in the replica directory changed.
    prepare_replica(config, state)?;
    timing.end("backup start");

    let copied = copy::run(config, &*transport, plan, &mut backup, primary, &resync, &mut timing, cancel)?;
    let resynced = (!matches!(resync, Resync::Fresh)).then(|| summary::Resynced {
        method: resync.name(&*transport),
        why: resync.why().map(str::to_string),
        read_primary: copied.totals.read_primary,
        read_replica: copied.totals.read_replica,
        read_wal: resync.wal_read(),
        kept: copied.plan.kept.iter().map(|p| p.display().to_string()).collect(),
    });

    let (end, mut sql, control, wal_end) = backup_stop(backup, &*transport, dirs.run.path(), primary)?;
    let (data_channel, compression) = (transport.data_channel(), transport.compression());
    let transport_name = transport.name();
    // The agents end (each waits for its ssh session to exit) while the WAL is reached and laid in place.
    let ending = Ending(Some(std::thread::spawn(move || drop(transport))));
    timing.end("backup stop");

    let timeline = stream.start.timeline;
    let received = stream.reach(wal_end, cancel)?;
    tracing::info!("WAL received through {received}");
    cancel.check()?;
    // Before pg_control: a copy that can start must never start as a second primary.
    if let Some(r) = &recovery {
        r.write(&config.replica)?;
    }
    let wal_segments = Finalize {
        replica: &config.replica,
        streamed: &streamed,
        seg: primary.seg,
        timeline,
        system_id,
        start: copied.start_lsn,
        end: &end,
        wal_end,
        control: &control,
        tablespaces: &copied.plan.tablespaces,
        group_access: copied.plan.group_access,
        mappings: &config.tablespace_mapping,
        manifest: config.manifest.then_some((primary.major, copied.sums)),
        sync: config.sync_method,
    }
    .run()?;
    drop(ending);
    timing.end("finalize");

    // Only now that the clone is complete does the standby get a permanent slot: a copy of the stream's
    // temporary one, which has held every segment since before the backup. A run that dies earlier leaves
    // no slot behind; the temporary one goes with the stream.
    if let Some(name) = &config.create_slot {
        standby::copy_slot(&mut sql, &slot, name)?;
        tracing::info!("created replication slot {name} for the standby");
    }
    let standby = stream
        .close()
        .map_err(CloneError::from)
        .and_then(|()| start_standby(config, pg_ctl.as_deref(), recovery.as_ref(), &mut sql, cancel))
        .map_err(|e| match &config.create_slot {
            Some(name) => standby::settle_slot(&mut sql, name, &config.replica, e.to_string()),
            None => e,
        })?;
    if standby.is_some() {
        timing.end("standby start");
    }
    Ok(Summary {
        files: copied.totals.files,
        bytes: copied.totals.bytes,
        vanished: copied.totals.vanished,
        reused: copied.reused,
        moved: copied.totals.moved,
        wire: copied.totals.wire,
        compression,
        wal_segments,
        elapsed: started.elapsed(),
        start_lsn: copied.start_lsn,
        stop_lsn: end.stop_lsn,
        timeline,
        replica: config.replica.clone(),
        primary: summary::PrimaryFacts { host: config.host.clone(), major: primary.major, system_id },
        transport: transport_name,
        temp_waldir: config.temp_waldir.as_ref().map(|_| streamed),
        phases: timing.done,
        standby,
        data_channel,
        resynced,
        clear_text,
    })
}

/// The transport being ended on a thread of its own; waited for when dropped, on every path out of the run.
struct Ending(Option<std::thread::JoinHandle<()>>);

impl Drop for Ending {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// The run's private directory, and with --temp-waldir a private subdirectory there for the stream, so that
/// whatever else that directory holds can never be mistaken for streamed WAL. Fields drop in order: the
/// directories' contents go first, then the --temp-waldir path this run created, if it did.
struct RunDirs {
    _wal: Option<RunDir>,
    run: RunDir,
    _made: Option<MadeDirs>,
    /// Where the stream writes its segments.
    streamed: PathBuf,
}

impl RunDirs {
    fn create(config: &CloneConfig) -> Result<RunDirs, CloneError> {
        for parent in std::iter::once(&config.tmpdir).chain(&config.temp_waldir) {
            run_dir::reap_stale(parent);
        }
        let run =
            RunDir::create(&config.tmpdir, config.keep_run_tmp).at("creating a run directory in", &config.tmpdir)?;
        let (made, wal) = match &config.temp_waldir {
            Some(dir) => {
                let made = MadeDirs::create(dir).at("creating directory", dir)?;
                (Some(made), Some(RunDir::create(dir, config.keep_run_tmp).at("creating a directory in", dir)?))
            }
            None => (None, None),
        };
        let streamed = match &wal {
            Some(d) => d.path().to_path_buf(),
            None => {
                let p = run.path().join("wal");
                replica::mkdir(&p)?;
                p
            }
        };
        Ok(RunDirs { _wal: wal, run, _made: made, streamed })
    }
}

/// Destroys nothing before every check has passed: a failed preflight leaves an old replica alone.
fn prepare_replica(config: &CloneConfig, state: ReplicaState) -> Result<(), CloneError> {
    let replica = &config.replica;
    // PostgreSQL refuses a data directory that others may enter; nothing lands in it before this.
    std::fs::set_permissions(replica, std::fs::Permissions::from_mode(0o700)).at("setting permissions of", replica)?;
    // From here until finalize puts the new one in place, the directory must not start.
    if state != ReplicaState::Empty {
        replica::retire_control(replica)?;
    }
    match state {
        ReplicaState::Dropped => {
            let n = replica::clear(replica)? + config.replica_waldir.as_deref().map_or(Ok(0), replica::clear)?;
            replica::sync_filesystem(replica)?;
            tracing::info!("--drop-existing: removed {n} entries from the replica directories");
        }
        ReplicaState::Unfinished | ReplicaState::Cluster(_) => {
            let what = if state == ReplicaState::Unfinished { "an unfinished clone" } else { "a replica" };
            tracing::info!("{} holds {what} of this primary: re-syncing it", replica.display());
        }
        ReplicaState::Empty => {}
    }
    if let Some(w) = &config.replica_waldir {
        replica::link_waldir(replica, w)?;
    }
    Ok(())
}

/// The directory the transport reads must be the backed-up server's own (see `preflight::live_directory`):
/// its pg_control, read now that pg_backup_start's checkpoint has rewritten it, says so.
fn confirm_live_pgdata(
    config: &CloneConfig,
    pgdata: &Path,
    transport: &dyn Transport,
    run_dir: &Path,
    backup_start: Lsn,
    primary: preflight::Primary,
) -> Result<(), CloneError> {
    let to = run_dir.join("pg_control.start");
    fetch_control(transport, &to, primary.major)?;
    let control = control_file::read(&to).at("reading", &to)?;
    Ok(preflight::live_directory(pgdata, &config.host, &control, backup_start, primary.in_recovery)?)
}

/// pg_backup_stop, then `global/pg_control` into the run directory: taken after the stop, so it is at least
/// as new as every copied file. Returns also how far the clone needs WAL: to the stop position, and from a
/// standby to the fetched pg_control's minRecoveryPoint too, which can lie beyond it (replay went on after the
/// stop), and where the clone's recovery ends the backup (xlogrecovery.c: a backup from a standby ends at the
/// control file's minRecoveryPoint). The server's value read after the fetch is at least the file's.
fn backup_stop(
    backup: BackupSession,
    transport: &dyn Transport,
    run_dir: &Path,
    primary: preflight::Primary,
) -> Result<(BackupEnd, Conn, PathBuf, Lsn), CloneError> {
    let (end, mut sql) = backup.stop()?;
    tracing::info!("backup stopped at {}", end.stop_lsn);
    let control = run_dir.join("pg_control");
    fetch_control(transport, &control, primary.major)?;
    let mut wal_end = end.stop_lsn;
    if primary.in_recovery {
        let rows =
            sql.query("SELECT min_recovery_end_lsn FROM pg_control_recovery()").map_err(CloneError::MinRecovery)?;
        let min_recovery: Lsn = rows.get(0, 0).and_then(|l| l.parse().ok()).unwrap_or(wal_end);
        wal_end = wal_end.max(min_recovery);
    }
    Ok((end, sql, control, wal_end))
}

/// Fetches `global/pg_control` until a copy passes its CRC check: the server rewrites the file in place at
/// every checkpoint (and a standby's at every restartpoint and minRecoveryPoint advance), so a read can catch
/// it half-written, and the copy's pg_control is what its recovery trusts first.
fn fetch_control(transport: &dyn Transport, to: &Path, major: u32) -> Result<(), CloneError> {
    const TRIES: u32 = 5;
    for attempt in 1..=TRIES {
        transport.fetch_file(Path::new(CONTROL_FILE), to)?;
        if control_file::crc_ok(&control_file::read(to).at("reading", to)?, major) {
            return Ok(());
        }
        tracing::info!("the fetched pg_control failed its CRC check (a read during a rewrite); fetching it again");
        std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
    }
    Err(CloneError::ControlCrc { tries: TRIES })
}

/// --start: the standby started with pg_ctl of the primary's major, and its application_name and replay lag once
/// the primary sees it streaming.
fn start_standby(
    config: &CloneConfig,
    pg_ctl: Option<&Path>,
    recovery: Option<&Recovery>,
    sql: &mut Conn,
    cancel: &Cancel,
) -> Result<Option<(String, u64)>, CloneError> {
    let (Some(pg_ctl), Some(r), Some(start)) = (pg_ctl, recovery, &config.start) else { return Ok(None) };
    cancel.check()?;
    let log = config.replica.join("startup.log");
    standby::start(pg_ctl, &config.replica, &log)?;
    let lag = standby::wait_streaming(sql, r, &config.replica, &log, start.wait_streaming, cancel)?;
    Ok(Some((r.standby.application_name.clone(), lag)))
}

/// Wall-clock time per phase, for the summary: where a slow clone spent its time.
pub struct Phases {
    done: Vec<(&'static str, Duration)>,
    mark: Instant,
}

impl Phases {
    fn new() -> Phases {
        Phases { done: Vec::new(), mark: Instant::now() }
    }

    pub fn end(&mut self, name: &'static str) {
        self.done.push((name, self.mark.elapsed()));
        self.mark = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{RemoteEntry, Worker};
    use std::sync::Mutex;

    /// A primary whose pg_control reads come out as given, one per fetch.
    struct Reads(Mutex<Vec<Vec<u8>>>);

    impl Transport for Reads {
        fn list(&self) -> Result<Vec<RemoteEntry>, TransportError> {
            Ok(Vec::new())
        }
        fn worker(&self) -> Result<Box<dyn Worker + '_>, TransportError> {
            Err(TransportError::Worker("this primary only serves pg_control".into()))
        }
        fn fetch_file(&self, _: &Path, to: &Path) -> Result<(), TransportError> {
            let next = self.0.lock().unwrap().remove(0);
            Ok(std::fs::write(to, next).at("writing", to)?)
        }
        fn name(&self) -> &'static str {
            "native"
        }
        fn data_channel(&self) -> &'static str {
            "local"
        }
    }

    fn control(major_crc_at: usize, fill: u8) -> Vec<u8> {
        let mut c = vec![fill; major_crc_at];
        c.extend(crc32c::crc32c(&c).to_ne_bytes());
        c.resize(8192, 0);
        c
    }

    #[test]
    fn a_torn_pg_control_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("pg_control");
        let good = control(288, 7);
        let mut torn = good.clone();
        torn[..64].fill(9);
        let primary = Reads(Mutex::new(vec![torn.clone(), torn.clone(), good.clone()]));
        fetch_control(&primary, &to, 15).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), good, "the untorn copy is the one kept");

        let always_torn = Reads(Mutex::new(vec![torn; 5]));
        let err = fetch_control(&always_torn, &to, 15).unwrap_err();
        assert!(err.to_string().contains("failed its CRC check 5 times"), "{err}");
    }
}
