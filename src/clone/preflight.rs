//! Preflight: everything that can be checked before anything is written, here or on the primary.
//! Each failure is one line that names the problem and what fixes it.

use std::path::{Path, PathBuf};

use super::config::CloneConfig;
use super::standby::{self, Recovery};
use super::CloneError;
use crate::error::{IoAt, IoContext};
use crate::pg::control_file::{self, CONTROL_FILE};
use crate::pg::lsn::{Lsn, SegSize};
use crate::pg::{Conn, PgError};
use crate::sys::ssh::{last_line, quote, Forward, SshError, SshTarget};
use crate::transport::{PgdataError, PGDATA_PROBE};

/// Oldest supported major: pg_backup_start/pg_backup_stop replaced the exclusive-backup API in 15.
const MIN_MAJOR: u32 = 15;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("pgclone must not run as root: run it as the OS user that will own the replica (usually postgres)")]
    Root,
    #[error("a postmaster is running in {dir} (pid {pid}): stop it, or choose another --replica-pgdata")]
    PostmasterRunning { dir: PathBuf, pid: i32 },
    #[error(
        "{what} {} is not empty: pgclone clones only into an absent or empty directory; empty it, give another \
         {flag}, or add --drop-existing to delete everything in it",
        dir.display()
    )]
    NotEmpty { what: &'static str, flag: &'static str, dir: PathBuf },
    #[error(
        "{what} {} is not empty: it holds only lost+found, so it is the top directory of a filesystem (a fresh \
         mount); give {flag} a subdirectory of it instead, such as {}",
        dir.display(), dir.join("data").display()
    )]
    MountPoint { what: &'static str, flag: &'static str, dir: PathBuf },
    #[error(
        "replica directory {dir} holds a different cluster (system identifier {found}, the primary's is \
         {expected}): use --drop-existing to replace it, or give another --replica-pgdata"
    )]
    OtherReplica { dir: PathBuf, found: u64, expected: u64 },
    #[error("--drop-existing refuses to empty {0}: it is / or a home directory; clone into a directory of its own")]
    WontDrop(PathBuf),
    #[error("{0}{fix}", fix = io_fix(.0))]
    ReplicaDir(#[from] IoAt),
    #[error("cannot connect to the primary: {0}; {1}")]
    Connect(PgError, &'static str),
    #[error(
        "PostgreSQL {0} is not supported: the primary must run PostgreSQL {MIN_MAJOR} or newer (clone older servers \
         with their own pg_basebackup)"
    )]
    Unsupported(u32),
    #[error(
        "checking the primary's settings failed: {0}; the role must be able to read pg_roles, pg_settings, \
         pg_stat_replication and pg_replication_slots, as every role can unless that was revoked"
    )]
    Query(PgError),
    #[error("role \"{0}\" lacks the REPLICATION attribute: ALTER ROLE \"{0}\" REPLICATION")]
    NoReplication(String),
    #[error(
        "role \"{0}\" may not execute pg_backup_start/pg_backup_stop: GRANT EXECUTE ON FUNCTION \
         pg_backup_start(text, boolean), pg_backup_stop(boolean) TO \"{0}\""
    )]
    NoBackupPrivilege(String),
    #[error("wal_level is minimal on the primary: set wal_level = replica and restart it")]
    WalLevelMinimal,
    #[error(
        "no free WAL sender on the primary: max_wal_senders = {max} and {used} in use; raise max_wal_senders \
         (it takes a restart) or end a replication connection you do not need (pg_stat_replication)"
    )]
    NoWalSender { max: i64, used: i64 },
    #[error(
        "no free replication slot on the primary: max_replication_slots = {max} and {used} in use; raise \
         max_replication_slots (it takes a restart) or drop a slot you do not need (pg_replication_slots)"
    )]
    NoSlot { max: i64, used: i64 },
    #[error(
        "replication slot \"{0}\" already exists on the primary: choose another --create-slot name or drop it \
         (SELECT pg_drop_replication_slot('{0}'))"
    )]
    SlotExists(String),
    #[error("-S {name}: {problem} (create it with SELECT pg_create_physical_replication_slot('{name}'), or use --create-slot)")]
    StreamSlot { name: String, problem: &'static str },
    #[error("the primary reported an invalid wal_segment_size: {0:?}")]
    SegSize(String),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(
        "not enough space for the streamed WAL in {}: {} free, the clone needs at least {} there while it runs \
         (choose another place with --temp-waldir)",
        dir.display(), crate::progress::bytes(*free), crate::progress::bytes(*need)
    )]
    WalSpace { dir: PathBuf, need: u64, free: u64 },
    #[error(transparent)]
    Pgdata(#[from] PgdataError),
    #[error(
        "role \"{0}\" may not read the server's data_directory: give --primary-pgdata DIR (the primary's data \
         directory), or GRANT pg_read_all_settings TO \"{0}\""
    )]
    NoDataDirectory(String),
    #[error(
        "checking --primary-pgdata on {host} failed: {reason}; the ssh login must be able to run sh and od \
         (coreutils) there"
    )]
    Probe { host: String, reason: String },
    #[error(
        "--primary-pgdata {dir} on {host} is not the live data directory of the server pgclone backs up: its \
         pg_control has REDO {redo} (state {state}), the server's backup started at {start}; give the running \
         server's own data directory (SHOW data_directory)"
    )]
    NotLive { dir: PathBuf, host: String, redo: Lsn, state: u32, start: Lsn },
    #[error(
        "--primary-pgdata {dir} belongs to another cluster (system identifier {found}) than the server \
         pgclone connected to ({expected}); give that server's own data directory (SHOW data_directory), or \
         point -h and -p at the server this directory belongs to"
    )]
    OtherCluster { dir: PathBuf, found: u64, expected: u64 },
}

/// Everything the checks found, and what they opened and the clone keeps: the SQL session (it becomes the
/// backup session) and the ssh tunnel it may run through.
pub struct Checked {
    pub tunnel: Option<Forward>,
    /// The primary's data directory: --primary-pgdata, else the server's data_directory.
    pub pgdata: PathBuf,
    /// libpq keywords for every connection to the primary (through the tunnel, if any).
    pub params: Vec<(&'static str, String)>,
    pub sql: Conn,
    pub primary: Primary,
    pub replica: ReplicaState,
    /// The system identifier in --primary-pgdata's pg_control; None when the transport reads it as it starts
    /// (`TransportConfig::probes_pgdata`), in its one ssh login.
    pub system_id: Option<u64>,
    /// --start: pg_ctl of the primary's major.
    pub pg_ctl: Option<PathBuf>,
    /// -R: what the standby's configuration will say.
    pub recovery: Option<Recovery>,
}

/// Every check before anything is written: the replica directories here, the primary over SQL, and (at the
/// same time, as it is an ssh round trip, unless the server has to name it first) --primary-pgdata on the
/// primary host. `run_dir`: the run's private
/// directory, where a --bypass-rep-traffic tunnel has its socket.
pub fn run(config: &CloneConfig, run_dir: &Path) -> Result<Checked, CloneError> {
    let home = config.home.as_deref();
    let state = replica_dir(&config.replica, config.drop_existing, home)?;
    if let Some(w) = &config.replica_waldir {
        waldir(w, &config.replica, config.drop_existing, home)?;
    }
    let probe = |pgdata: &Path| match &config.ssh {
        _ if config.transport.probes_pgdata() => Ok(None),
        Some(ssh) => primary_pgdata(ssh, pgdata).map(Some),
        None => local_pgdata(pgdata).map(Some),
    };
    let ((tunnel, params, sql, primary, pg_ctl, recovery), pgdata, system_id) = match &config.primary_pgdata {
        Some(pgdata) => {
            let (checked, probed) = std::thread::scope(|s| {
                let probe = s.spawn(|| probe(pgdata));
                (check_primary(config, run_dir), probe.join().expect("the probe does not panic"))
            });
            (checked?, pgdata.clone(), probed?)
        }
        // The server names its data directory: the probe waits for the SQL session's answer.
        None => {
            let mut checked = check_primary(config, run_dir)?;
            let pgdata = data_directory(&mut checked.2)?;
            tracing::info!("the primary's data directory is {} (the server's data_directory)", pgdata.display());
            let probed = probe(&pgdata)?;
            (checked, pgdata, probed)
        }
    };
    if let Some(id) = system_id {
        replica_matches(&config.replica, state, id)?;
    }
    Ok(Checked { tunnel, pgdata, params, sql, primary, replica: state, system_id, pg_ctl, recovery })
}

/// The server's own data directory, for a run without --primary-pgdata. pg_settings shows data_directory only to
/// superusers and members of pg_read_all_settings (where SHOW would fail with an error); for anyone else the row
/// is not there.
pub fn data_directory(conn: &mut Conn) -> Result<PathBuf, PreflightError> {
    let rows = conn
        .query("SELECT current_user, (SELECT setting FROM pg_settings WHERE name = 'data_directory')")
        .map_err(PreflightError::Query)?;
    match rows.get(0, 1) {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Err(PreflightError::NoDataDirectory(rows.get(0, 0).unwrap_or_default().to_string())),
    }
}

type PrimaryChecked = (Option<Forward>, Vec<(&'static str, String)>, Conn, Primary, Option<PathBuf>, Option<Recovery>);

fn check_primary(config: &CloneConfig, run_dir: &Path) -> Result<PrimaryChecked, CloneError> {
    let tunnel = match (config.pg.tunnel_to, config.pg.tunnel_socket(run_dir), &config.ssh) {
        (Some(remote_port), Some(socket), Some(ssh)) => {
            let f = ssh.forward(&socket, remote_port).map_err(PreflightError::from)?;
            tracing::info!(
                "PostgreSQL connections go through ssh: {} -> primary's 127.0.0.1:{remote_port}",
                f.socket.display()
            );
            Some(f)
        }
        _ => None,
    };
    let params = config.pg.params(tunnel.as_ref().map(|_| run_dir));
    let mut sql_params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Some(db) = config.pg.sql_dbname {
        sql_params.push(("dbname", db));
    }
    let mut sql = Conn::connect(&sql_params).map_err(connect_error)?;
    // This session becomes the backup session and sits idle for the whole copy: a server whose
    // idle_session_timeout (or the role's statement_timeout) would end it would abort the backup.
    sql.query("SET idle_session_timeout = 0; SET statement_timeout = 0").map_err(PreflightError::Query)?;
    let primary = primary(&mut sql)?;
    tracing::info!("primary {}@{} runs PostgreSQL {}", sql.user(), sql.host(), primary.major);
    if let Some(name) = &config.create_slot {
        slot_free(&mut sql, name)?;
    }
    if let Some(name) = &config.stream_slot {
        slot_usable(&mut sql, name)?;
    }
    let pg_ctl = config
        .start
        .as_ref()
        .map(|s| standby::find_pg_ctl(s.pg_bindir.as_deref(), &s.search_path, primary.major))
        .transpose()?;
    // What -R writes: the primary as this run reached it, or, through a tunnel, its host and the port the
    // tunnel leads to there (not the tunnel's local end).
    let through = config.pg.tunnel_to.filter(|_| tunnel.is_some()).map(|port| (config.host.as_str(), port));
    let recovery = config.recovery.as_ref().map(|r| Recovery::new(r, &sql, through));
    Ok((tunnel, params, sql, primary, pg_ctl, recovery))
}

/// libpq says what failed, not where the fix is: the next step for the failures a DBA meets first.
pub fn connect_error(e: PgError) -> PreflightError {
    let m = e.message.as_str();
    let next = if m.contains("no password supplied") {
        "set PGPASSWORD, add the primary to ~/.pgpass (a line host:port:*:user:password, mode 0600), or type it \
         with -W"
    } else if m.contains("password authentication failed") {
        "give the right password in PGPASSWORD or ~/.pgpass (a line host:port:*:user:password, mode 0600), or \
         type it with -W"
    } else if m.contains("no pg_hba.conf entry") {
        "let this role in from this host in the primary's pg_hba.conf, for its databases and for replication, \
         then reload it (SELECT pg_reload_conf())"
    } else if m.contains("role") && m.contains("does not exist") {
        "give an existing role with -U"
    } else if m.contains("database") && m.contains("does not exist") {
        "name an existing database with -d or PGDATABASE"
    } else if m.contains("Connection refused") || m.contains("timeout expired") || m.contains("translate host name") {
        "check -h and -p, and that the primary's listen_addresses and the firewalls on the way let this host in"
    } else {
        "try the same connection with psql, which reads the same settings (-d, -h, -p, -U, PG* variables, ~/.pgpass)"
    };
    PreflightError::Connect(e, next)
}

/// The fix for an I/O error at the replica directories that has an obvious one.
fn io_fix(e: &IoAt) -> &'static str {
    match e.source.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "; pgclone's user must be able to enter and write it: check its owner and mode, and its parents'"
        }
        std::io::ErrorKind::NotADirectory => "; give a directory, or a path that does not exist yet",
        _ => "",
    }
}

/// `dir` holds something: with nothing but lost+found, it is a filesystem's top directory, which initdb too
/// refuses to use ("It contains a lost+found directory, perhaps due to it being a mount point. [...] Create a
/// subdirectory under the mount point.", initdb.c): emptying it would not help.
fn not_empty(what: &'static str, flag: &'static str, dir: &Path) -> PreflightError {
    let mut entries = std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok);
    let only = entries.next().filter(|_| entries.next().is_none());
    let dir = dir.to_path_buf();
    match only {
        Some(e) if e.file_name() == "lost+found" => PreflightError::MountPoint { what, flag, dir },
        _ => PreflightError::NotEmpty { what, flag, dir },
    }
}

/// PostgreSQL refuses to run as root, so a replica made by root would have to be re-owned by hand.
pub fn not_root() -> Result<(), PreflightError> {
    if rustix::process::geteuid().is_root() {
        return Err(PreflightError::Root);
    }
    Ok(())
}

/// What the replica directory (existing, locked by us) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    Empty,
    /// An interrupted clone: a clone lays out the tree (global/ among it) first and writes
    /// global/pg_control last, so global/ without pg_control is one. It cannot start; a re-run resumes it.
    Unfinished,
    /// A complete data directory of the cluster with this system identifier: a re-run re-syncs it, but only
    /// from the same cluster.
    Cluster(u64),
    /// Emptied by --drop-existing before the copy.
    Dropped,
}

/// Never a running cluster; never something that is not a data directory unless --drop-existing (and then
/// not / or a home directory).
pub fn replica_dir(replica: &Path, drop_existing: bool, home: Option<&Path>) -> Result<ReplicaState, PreflightError> {
    // A clone creates it before the checks; --check does not.
    if !replica.exists() {
        return Ok(ReplicaState::Empty);
    }
    if let Some(pid) = live_postmaster(replica) {
        return Err(PreflightError::PostmasterRunning { dir: replica.to_path_buf(), pid });
    }
    if drop_existing {
        return may_drop(replica, home).map(|()| ReplicaState::Dropped);
    }
    if is_empty(replica)? {
        return Ok(ReplicaState::Empty);
    }
    if !replica.join("global").is_dir() {
        return Err(not_empty("replica directory", "--replica-pgdata", replica));
    }
    match control_file::read(&replica.join(CONTROL_FILE)) {
        Ok(control) => Ok(ReplicaState::Cluster(control_file::system_id(&control))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReplicaState::Unfinished),
        Err(e) => Err(IoAt::new("replica directory", replica.join(CONTROL_FILE), e).into()),
    }
}

/// A re-run may only re-sync a replica of the same cluster.
pub fn replica_matches(replica: &Path, state: ReplicaState, primary: u64) -> Result<(), PreflightError> {
    match state {
        ReplicaState::Cluster(id) if id != primary => {
            Err(PreflightError::OtherReplica { dir: replica.to_path_buf(), found: id, expected: primary })
        }
        _ => Ok(()),
    }
}

/// --replica-waldir: absent or empty, or anything but / and a home directory with --drop-existing.
/// A re-run may also reuse the directory the replica's pg_wal already links to.
pub fn waldir(waldir: &Path, replica: &Path, drop_existing: bool, home: Option<&Path>) -> Result<(), PreflightError> {
    let linked =
        |w: &Path| w.canonicalize().ok().is_some_and(|w| replica.join("pg_wal").canonicalize().ok() == Some(w));
    if !waldir.exists() || linked(waldir) {
        Ok(())
    } else if drop_existing {
        may_drop(waldir, home)
    } else if is_empty(waldir)? {
        Ok(())
    } else {
        Err(not_empty("WAL directory", "--replica-waldir", waldir))
    }
}

fn is_empty(dir: &Path) -> Result<bool, PreflightError> {
    let mut entries = std::fs::read_dir(dir).at("replica directory", dir)?;
    Ok(entries.next().is_none())
}

fn may_drop(dir: &Path, home: Option<&Path>) -> Result<(), PreflightError> {
    let real = dir.canonicalize().at("replica directory", dir)?;
    let home = home.and_then(|h| h.canonicalize().ok());
    if real == Path::new("/") || Some(&real) == home.as_ref() {
        return Err(PreflightError::WontDrop(dir.to_path_buf()));
    }
    Ok(())
}

/// The pid in `postmaster.pid` if that process exists (owned by anyone: EPERM still means alive).
pub fn live_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let p = rustix::process::Pid::from_raw(pid)?;
    match rustix::process::test_kill_process(p) {
        Ok(()) | Err(rustix::io::Errno::PERM) => Some(pid),
        Err(_) => None,
    }
}

/// What the rest of the clone needs to know about the primary.
#[derive(Debug, Clone, Copy)]
pub struct Primary {
    pub major: u32,
    pub seg: SegSize,
    /// Data page checksums are on (initdb -k; the default from PostgreSQL 18).
    pub checksums: bool,
    /// The server is itself a standby (cloning from a standby: pg_backup_start works in recovery).
    pub in_recovery: bool,
}

/// Checks the primary over the SQL session: version, privileges, WAL settings, free sender and slot.
pub fn primary(conn: &mut Conn) -> Result<Primary, PreflightError> {
    // PQserverVersion needs no query, so even a server too old for the queries below gets a clear answer.
    let major = (conn.server_version() / 10000) as u32;
    if major < MIN_MAJOR {
        return Err(PreflightError::Unsupported(major));
    }
    let rows = conn
        .query(
            "SELECT current_user, r.rolreplication OR r.rolsuper, \
                    has_function_privilege('pg_backup_start(text, boolean)', 'EXECUTE') \
                    AND has_function_privilege('pg_backup_stop(boolean)', 'EXECUTE'), \
                    current_setting('wal_level'), \
                    current_setting('max_wal_senders')::bigint, \
                    (SELECT count(*) FROM pg_stat_replication), \
                    current_setting('max_replication_slots')::bigint, \
                    (SELECT count(*) FROM pg_replication_slots), \
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
                    current_setting('data_checksums'), \
                    pg_is_in_recovery() \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .map_err(PreflightError::Query)?;
    let get = |i| rows.get(0, i).unwrap_or_default();
    let num = |i| get(i).parse::<i64>().unwrap_or(0);
    let role = get(0).to_string();
    if get(1) != "t" {
        return Err(PreflightError::NoReplication(role));
    }
    if get(2) != "t" {
        return Err(PreflightError::NoBackupPrivilege(role));
    }
    if get(3) == "minimal" {
        return Err(PreflightError::WalLevelMinimal);
    }
    let (max, used) = (num(4), num(5));
    if used >= max {
        return Err(PreflightError::NoWalSender { max, used });
    }
    let (max, used) = (num(6), num(7));
    if used >= max {
        return Err(PreflightError::NoSlot { max, used });
    }
    // pg_settings reports wal_segment_size in bytes (unit "B"), unlike SHOW's "16MB".
    let seg = get(8).parse().ok().and_then(SegSize::new).ok_or_else(|| PreflightError::SegSize(get(8).into()))?;
    Ok(Primary { major, seg, checksums: get(9) == "on", in_recovery: get(10) == "t" })
}

/// --create-slot must name a slot that does not exist yet: finding out after the copy would waste it.
pub fn slot_free(conn: &mut Conn, name: &str) -> Result<(), PreflightError> {
    let rows = conn
        .query_params("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[name])
        .map_err(PreflightError::Query)?;
    match rows.get(0, 0) {
        Some("0") => Ok(()),
        _ => Err(PreflightError::SlotExists(name.to_string())),
    }
}

/// -S must name a physical slot that exists and that nobody streams from now.
pub fn slot_usable(conn: &mut Conn, name: &str) -> Result<(), PreflightError> {
    let rows = conn
        .query_params("SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = $1", &[name])
        .map_err(PreflightError::Query)?;
    let problem = match (rows.get(0, 0), rows.get(0, 1)) {
        (None, _) => "no such replication slot on the primary",
        (Some(t), _) if t != "physical" => "not a physical replication slot",
        (_, Some("t")) => "the slot is in use by another connection",
        _ => return Ok(()),
    };
    Err(PreflightError::StreamSlot { name: name.to_string(), problem })
}

/// Logs in over ssh and checks that --primary-pgdata is a data directory the ssh user can read (for the rsync
/// transport; the native one does this in its own login). Returns the system identifier stored in its
/// pg_control, to be matched with the server's.
pub fn primary_pgdata(ssh: &SshTarget, pgdata: &Path) -> Result<u64, PreflightError> {
    let script = format!("{PGDATA_PROBE}\necho \"$system\"");
    let out = ssh.run(&format!("sh -c {} pgclone-probe '' {}", quote(script), quote(pgdata)), b"")?;
    let code = out.status.code();
    if let Some(e) = PgdataError::from_probe(code, ssh, pgdata) {
        return Err(e.into());
    }
    let host = ssh.host.clone();
    match code {
        Some(0) => String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| PreflightError::Probe { host, reason: "could not read global/pg_control".into() }),
        _ => Err(PreflightError::Probe { host, reason: last_line(&out.stderr) }),
    }
}

/// --no-ssh: the same check as `primary_pgdata`, on this host.
pub fn local_pgdata(pgdata: &Path) -> Result<u64, PreflightError> {
    let host = "this host".to_string();
    let user = "pgclone's user".to_string();
    if !pgdata.is_dir() {
        return Err(PgdataError::Missing { dir: pgdata.to_path_buf(), host, user }.into());
    }
    control_file::read(&pgdata.join(CONTROL_FILE))
        .map(|c| control_file::system_id(&c))
        .map_err(|_| PgdataError::NotData { dir: pgdata.to_path_buf(), host, user }.into())
}

/// Room where the streamed WAL waits (the run directory under $TMPDIR, often a tmpfs, or --temp-waldir): a
/// busy primary writes segments for as long as the copy runs, and running out of room there fails the clone
/// only at its end. Eight segments at least, as for the replica (transfer::check_space).
pub fn wal_space(dir: &Path, seg: SegSize) -> Result<(), PreflightError> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from).at("checking free space of", dir)?;
    let (free, need) = (st.f_bavail * st.f_frsize, 8 * seg.bytes());
    if free < need {
        return Err(PreflightError::WalSpace { dir: dir.to_path_buf(), need, free });
    }
    Ok(())
}

/// --primary-pgdata must be the live data directory of the very server the backup runs on, not only one of the
/// same cluster: a standby's, a stopped copy's or an old primary's directory on the ssh host shares the system
/// identifier, and copying its files under this backup's backup_label and WAL would make a standby that starts
/// with wrong data and valid checksums. pg_backup_start's checkpoint (a restartpoint on a standby) rewrote the
/// live directory's pg_control before it returned, so that file's REDO is at least the backup's start, and its
/// state is the server's (in production, or in archive recovery when the server is a standby); an older
/// REDO or another state is another directory.
pub fn live_directory(
    dir: &Path,
    host: &str,
    control: &[u8],
    backup_start: Lsn,
    in_recovery: bool,
) -> Result<(), PreflightError> {
    let want = if in_recovery { control_file::DB_IN_ARCHIVE_RECOVERY } else { control_file::DB_IN_PRODUCTION };
    let (redo, state) = (control_file::redo(control), control_file::state(control));
    if redo >= backup_start && state == want {
        return Ok(());
    }
    Err(PreflightError::NotLive { dir: dir.to_path_buf(), host: host.to_string(), redo, state, start: backup_start })
}

/// The directory we copy from must be the cluster we stream WAL from and back up.
pub fn same_cluster(pgdata: &Path, found: u64, expected: u64) -> Result<(), PreflightError> {
    if found == expected {
        Ok(())
    } else {
        Err(PreflightError::OtherCluster { dir: pgdata.to_path_buf(), found, expected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(state: u32, redo: u64) -> Vec<u8> {
        let mut c = vec![0u8; 8192];
        c[16..20].copy_from_slice(&state.to_ne_bytes());
        c[40..48].copy_from_slice(&redo.to_ne_bytes());
        c
    }

    #[test]
    fn each_connection_failure_names_its_next_step() {
        let said = |m: &str| connect_error(PgError { message: m.into() }).to_string();
        let at = "connection to server at \"db1\" (10.0.0.7), port 5432 failed";
        assert_eq!(
            said(&format!("{at}: FATAL:  password authentication failed for user \"rep\"")),
            format!(
                "cannot connect to the primary: {at}: FATAL:  password authentication failed for user \"rep\"; give \
                 the right password in PGPASSWORD or ~/.pgpass (a line host:port:*:user:password, mode 0600), or \
                 type it with -W"
            )
        );
        let no_hba = said(&format!("{at}: FATAL:  no pg_hba.conf entry for replication connection from host \"x\""));
        assert!(no_hba.ends_with("then reload it (SELECT pg_reload_conf())"), "{no_hba}");
        assert!(said(&format!("{at}: FATAL:  role \"rp\" does not exist")).ends_with("give an existing role with -U"));
        let refused = said(&format!("{at}: Connection refused; Is the server running on that host?"));
        assert!(refused.ends_with("let this host in"), "{refused}");
    }

    #[test]
    fn a_directory_holding_only_lost_and_found_is_a_mount_point() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("lost+found")).unwrap();
        let mount = waldir(d.path(), Path::new("/nonexistent"), false, None).unwrap_err().to_string();
        assert_eq!(
            mount,
            format!(
                "WAL directory {0} is not empty: it holds only lost+found, so it is the top directory of a filesystem \
                 (a fresh mount); give --replica-waldir a subdirectory of it instead, such as {0}/data",
                d.path().display()
            )
        );
        std::fs::write(d.path().join("notes"), "").unwrap();
        let busy = waldir(d.path(), Path::new("/nonexistent"), false, None).unwrap_err().to_string();
        assert_eq!(
            busy,
            format!(
                "WAL directory {} is not empty: pgclone clones only into an absent or empty directory; empty it, give \
                 another --replica-waldir, or add --drop-existing to delete everything in it",
                d.path().display()
            )
        );
    }

    #[test]
    fn only_the_live_directory_of_the_backed_up_server_passes() {
        let (dir, start) = (Path::new("/pg"), Lsn(0x3000028));
        let live = |c: &[u8], in_recovery| live_directory(dir, "db1", c, start, in_recovery);
        assert!(live(&control(control_file::DB_IN_PRODUCTION, 0x3000028), false).is_ok());
        assert!(live(&control(control_file::DB_IN_PRODUCTION, 0x4000028), false).is_ok(), "a later checkpoint");
        let stale = live(&control(control_file::DB_IN_PRODUCTION, 0x2000028), false).unwrap_err();
        assert!(stale.to_string().contains("REDO 0/2000028") && stale.to_string().contains("0/3000028"), "{stale}");
        assert!(live(&control(1, 0x3000028), false).is_err(), "a stopped copy");
        assert!(live(&control(control_file::DB_IN_ARCHIVE_RECOVERY, 0x3000028), false).is_err(), "a standby's");
        assert!(live(&control(control_file::DB_IN_ARCHIVE_RECOVERY, 0x3000028), true).is_ok(), "from a standby");
    }
}
