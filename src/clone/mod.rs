//! One clone, phase by phase. Every resource a phase opens is a value owned here, so any early return
//! (error, signal, WAL stream failure) drops them in reverse order: rsync daemon gone, backup aborted by
//! closing its session, temporary slot gone with the replication connection, run directory removed.

pub mod finalize;
pub mod preflight;
pub mod standby;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::cli::TransportKind;
use crate::error::{Cancelled, IoAt, IoContext};
use crate::manifest::json;
use crate::manifest::{self, FileSum};
use crate::pg::backup_session::{BackupError, BackupSession};
use crate::pg::control_file::CONTROL_FILE;
use crate::pg::lsn::Lsn;
use crate::pg::wal_stream::{WalStream, WalStreamError};
use crate::pg::Conn;
use crate::progress::{self, Progress};
use crate::replica::run_dir::RunDir;
use crate::replica::{self, ReplicaError, ReplicaLock};
use crate::sys::bandwidth::Budget;
use crate::sys::cancel::Cancel;
use crate::sys::ssh::{Forward, SshTarget};
use crate::transfer::{self, TransferError};
use crate::transport::native::{self, Launch, NativeTransport};
use crate::transport::rsync::RsyncTransport;
use crate::transport::{IgnoreSink, Piece, Transport, TransportError};
use finalize::{Finalize, FinalizeError};
use preflight::{PreflightError, ReplicaState};
use standby::{Recovery, StandbyError};

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
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
    #[error("the rsync transport needs ssh: drop --no-ssh or use --transport native")]
    RsyncNeedsSsh,
    #[error("--primary-pgdata is required")]
    NoPgdata,
    #[error("no primary host: give --pghost (or set PGHOST) to a host name or address, it is also the ssh host")]
    NoHost,
    #[error("backup started at {start}, before the WAL stream's start {stream}: the stream would miss WAL")]
    StreamTooLate { start: Lsn, stream: Lsn },
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Standby(#[from] StandbyError),
    #[error("{0}; the copy would carry the corruption (--no-verify-checksums clones anyway)")]
    BadPages(String),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub vanished: u64,
    /// Bytes a re-run found already in place (a resumed or re-synced replica).
    pub reused: u64,
    /// Bytes that crossed the link (a block-hash delta moves only what differs).
    pub moved: u64,
    pub wal_segments: u64,
    pub elapsed: Duration,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: u32,
    pub replica: PathBuf,
    pub phases: Vec<(&'static str, Duration)>,
    /// With --start: the standby's application_name and its replay lag in bytes when first seen streaming.
    pub standby: Option<(String, u64)>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "cloned {} files, {} in {secs:.1} s ({}/s) into {}; WAL {}..{} on timeline {} ({} segments)",
            self.files,
            progress::bytes(self.bytes),
            progress::bytes((self.bytes as f64 / secs.max(0.001)) as u64),
            self.replica.display(),
            self.start_lsn,
            self.stop_lsn,
            self.timeline,
            self.wal_segments,
        )?;
        if self.reused > 0 {
            write!(f, "; {} of it was already in place", progress::bytes(self.reused))?;
        }
        if self.moved < self.bytes {
            write!(f, "; {} moved over the link, the rest was identical", progress::bytes(self.moved))?;
        }
        if let Some((name, lag)) = &self.standby {
            write!(f, "; standby {name} is streaming, replay lag {}", progress::bytes(*lag))?;
        }
        let phases: Vec<String> =
            self.phases.iter().map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64())).collect();
        write!(f, "; time: {}", phases.join(", "))?;
        if self.vanished > 0 {
            write!(
                f,
                "; {} files vanished on the primary during the copy (normal; WAL replay covers them)",
                self.vanished
            )?;
        }
        Ok(())
    }
}

impl Summary {
    /// The summary for machines (--json): one object on stdout.
    pub fn json(&self) -> String {
        let phases: Vec<String> =
            self.phases.iter().map(|(n, d)| format!("{}:{:.3}", json::string(n), d.as_secs_f64())).collect();
        let standby = match &self.standby {
            Some((name, lag)) => format!("{{\"application_name\":{},\"replay_lag_bytes\":{lag}}}", json::string(name)),
            None => "null".into(),
        };
        let warnings: Vec<String> = (self.vanished > 0)
            .then(|| json::string(&format!("{} files vanished on the primary during the copy", self.vanished)))
            .into_iter()
            .collect();
        format!(
            "{{\"ok\":true,\"replica\":{},\"files\":{},\"bytes\":{},\"reused_bytes\":{},\"moved_bytes\":{},\"vanished_files\":{},\
             \"elapsed_seconds\":{:.3},\"start_lsn\":\"{}\",\"stop_lsn\":\"{}\",\"timeline\":{},\"wal_segments\":{},\
             \"phases\":{{{}}},\"standby\":{standby},\"warnings\":[{}]}}",
            json::string(&self.replica.to_string_lossy()),
            self.files,
            self.bytes,
            self.reused,
            self.moved,
            self.vanished,
            self.elapsed.as_secs_f64(),
            self.start_lsn,
            self.stop_lsn,
            self.timeline,
            self.wal_segments,
            phases.join(","),
            warnings.join(","),
        )
    }
}

/// libpq keywords for the connections to the primary: only what the user gave on our command line, so
/// that everything else (PG* variables, service files, .pgpass, sslmode) stays libpq's business.
/// `forwarded`: the local end of an ssh tunnel to the primary's PostgreSQL port (--bypass-rep-traffic).
fn conn_params(args: &Args, forwarded: Option<u16>) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    if let Some(port) = forwarded {
        p.push(("host", "127.0.0.1".into()));
        p.push(("port", port.to_string()));
    } else {
        if let Some(h) = &args.pghost {
            p.push(("host", h.clone()));
        }
        if let Some(port) = args.pgport {
            p.push(("port", port.to_string()));
        }
    }
    if let Some(u) = &args.pguser {
        p.push(("user", u.clone()));
    }
    // An unreachable primary must fail in seconds, not after the kernel's TCP timeout.
    if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
        p.push(("connect_timeout", "10".into()));
    }
    p.push(("fallback_application_name", "pgclone".into()));
    p
}

fn borrowed<'a>(p: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn check(cancel: &Cancel) -> Result<(), CloneError> {
    Ok(cancel.check()?)
}

pub fn run(args: &Args, cancel: &Cancel) -> Result<Summary, CloneError> {
    preflight::not_root()?;
    // clap requires --primary-pgdata whenever no subcommand is given.
    let pgdata = args.primary_pgdata.as_deref().ok_or(CloneError::NoPgdata)?;
    let replica = args.replica_pgdata.clone().unwrap_or_else(|| pgdata.to_path_buf());
    let created = !replica.exists();
    replica::mkdir(&replica)?;
    let result = ReplicaLock::acquire(&replica)
        .map_err(CloneError::from)
        .and_then(|lock| run_locked(args, pgdata, &replica, lock, cancel));
    // A directory we made for a run that failed before copying anything is removed again, so a failed
    // preflight changes nothing; remove_dir leaves a non-empty one alone.
    if result.is_err() && created {
        let _ = std::fs::remove_dir(replica);
    }
    result
}

fn run_locked(
    args: &Args,
    pgdata: &Path,
    replica: &Path,
    _lock: ReplicaLock,
    cancel: &Cancel,
) -> Result<Summary, CloneError> {
    let started = Instant::now();
    let mut phases = Phases::new();
    let state = preflight::replica_dir(replica, args.drop_existing)?;
    if let Some(w) = &args.replica_waldir {
        preflight::waldir(w, replica, args.drop_existing)?;
    }
    // The ssh host is the PostgreSQL host; with --no-ssh there is none to reach.
    let host =
        args.pghost.clone().or_else(|| std::env::var("PGHOST").ok()).filter(|h| !h.is_empty() && !h.starts_with('/'));
    let host = match host {
        Some(h) => h,
        None if args.no_ssh => "localhost".into(),
        None => return Err(CloneError::NoHost),
    };

    let ssh = SshTarget {
        host,
        user: args.ssh_user.clone(),
        port: args.ssh_port,
        key: args.ssh_key.clone(),
        config: args.ssh_config.clone(),
        insecure: args.insecure_ssh,
        ciphers: None,
    };
    // The probe of the primary's data directory (an ssh round trip) runs while the SQL checks do.
    let probe = || if args.no_ssh { preflight::local_pgdata(pgdata) } else { preflight::primary_pgdata(&ssh, pgdata) };
    let (checked, probed) = std::thread::scope(|s| {
        let probe = s.spawn(probe);
        (check_primary(args, &ssh), probe.join().expect("the probe does not panic"))
    });
    let Checked { forward: _tunnel, params, mut sql, primary, pg_ctl, recovery } = checked?;
    let pgdata_system_id = probed?;
    preflight::replica_matches(replica, state, pgdata_system_id)?;
    check(cancel)?;
    phases.end("preflight");

    let (run_dir, wal_run_dir) = run_dirs(args)?;
    let streamed = match &wal_run_dir {
        Some(d) => d.path().to_path_buf(),
        None => {
            let p = run_dir.path().join("wal");
            replica::mkdir(&p)?;
            p
        }
    };

    let slot = format!("pgclone_{}_{:04x}", std::process::id(), rand_u16());
    let standby_session = primary.in_recovery.then_some(&mut sql);
    let resync = matches!(state, ReplicaState::Unfinished | ReplicaState::Cluster(_));
    let parallel =
        args.parallel.map(usize::from).unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    // The WAL stream starts while the transport makes its ssh connections: both mostly wait on the network.
    // The transport on this thread: its child processes must not outlive the thread that started them.
    let (stream, transport) = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            WalStream::start(&borrowed(&params), &streamed, primary.seg, &slot, standby_session, cancel.clone())
        });
        let transport = start_transport(args, &ssh, pgdata, run_dir.path(), resync, parallel);
        (stream.join().expect("starting the WAL stream does not panic"), transport)
    });
    let mut stream = stream?;
    preflight::same_cluster(pgdata, pgdata_system_id, stream.start.system_id)?;
    tracing::info!("streaming WAL from {} on timeline {} into slot {slot}", stream.start.lsn, stream.start.timeline);
    let transport = transport?;
    check(cancel)?;
    phases.end("connect");

    // Destroy nothing before every check has passed: a failed preflight leaves the old replica alone.
    match state {
        ReplicaState::Dropped => {
            let n = replica::clear(replica)? + args.replica_waldir.as_deref().map_or(Ok(0), replica::clear)?;
            tracing::info!("--drop-existing: removed {n} entries from the replica directories");
        }
        ReplicaState::Unfinished | ReplicaState::Cluster(_) => {
            // From here until finalize puts the new one in place, the directory must not start.
            let control = replica.join(CONTROL_FILE);
            if control.exists() {
                std::fs::remove_file(&control).at("removing", &control)?;
            }
            let what = if state == ReplicaState::Unfinished { "an unfinished clone" } else { "a replica" };
            tracing::info!("{} holds {what} of this primary: re-syncing it", replica.display());
        }
        ReplicaState::Empty => {}
    }
    if let Some(w) = &args.replica_waldir {
        replica::link_waldir(replica, w)?;
    }

    let mut backup = BackupSession::start(sql, &format!("pgclone to {}", replica.display()))?;
    if backup.start_lsn < stream.start.lsn {
        return Err(CloneError::StreamTooLate { start: backup.start_lsn, stream: stream.start.lsn });
    }
    tracing::info!("backup started at {}", backup.start_lsn);
    phases.end("backup start");

    let plan = transfer::plan(&transport.list()?, primary.major, &args.tablespace_mapping);
    tracing::debug!("listed the primary's data directory");
    let reusable = if resync {
        let (removed, present) = transfer::prune(&plan, replica)?;
        tracing::info!(
            "re-sync: removed {removed} entries the primary does not have; {} already here",
            progress::bytes(present)
        );
        present
    } else {
        0
    };
    // Room for the WAL segments of the run and rsync's temporary copies besides the data itself.
    transfer::check_space(&plan, replica, reusable, 8 * primary.seg.bytes())?;
    transfer::lay_out(&plan, replica, resync)?;
    tracing::info!(
        "copying {} files, {}, with {parallel} workers",
        plan.files.len(),
        progress::bytes(plan.total_bytes)
    );
    let progress = Progress::new(plan.total_bytes, args.progress, Duration::from_secs(args.progress_interval));
    let pages_before = (primary.checksums && !args.no_verify_checksums).then_some(backup.start_lsn);
    let copied = std::thread::scope(|s| {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let (plan, transport, progress) = (&plan, &*transport, &progress);
        s.spawn(move || {
            done_tx.send(transfer::copy(plan, transport, replica, parallel, pages_before, progress, cancel))
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
    let (copied, landed) = copied?;
    check(cancel)?;
    phases.end("copy");

    // Before pg_backup_stop: a file fetched again must still be covered by the WAL the clone replays.
    let sums = if args.no_manifest && pages_before.is_none() {
        Vec::new()
    } else {
        let sums = verify_copy(&plan, replica, &*transport, landed, pages_before, parallel, cancel)?;
        phases.end("verify");
        sums
    };

    let start_lsn = backup.start_lsn;
    let (end, mut sql) = backup.stop()?;
    tracing::info!("backup stopped at {}", end.stop_lsn);
    // pg_control is taken after pg_backup_stop, so it is at least as new as every copied file.
    let control = run_dir.path().join("pg_control");
    transport.fetch_file(Path::new(CONTROL_FILE), &control)?;
    drop(transport);
    phases.end("backup stop");

    let timeline = stream.start.timeline;
    let received = stream.reach(end.stop_lsn, cancel)?;
    tracing::info!("WAL received through {received}");
    check(cancel)?;
    // Before pg_control: a copy that can start must never start as a second primary.
    if let Some(r) = &recovery {
        r.write(replica)?;
    }
    let wal_segments = Finalize {
        replica,
        streamed: &streamed,
        seg: primary.seg,
        timeline,
        system_id: pgdata_system_id,
        start: start_lsn,
        end: &end,
        control: &control,
        tablespaces: &plan.tablespaces,
        mappings: &args.tablespace_mapping,
        manifest: (!args.no_manifest).then_some((primary.major, sums)),
    }
    .run()?;
    phases.end("finalize");
    // Only now that the clone is complete does the standby get a permanent slot: a copy of the stream's
    // temporary one, which has held every segment since before the backup. A run that dies earlier leaves
    // no slot behind; the temporary one goes with the stream.
    if let Some(name) = &args.create_slot {
        standby::copy_slot(&mut sql, &slot, name)?;
        tracing::info!("created replication slot {name} for the standby");
    }
    stream.close()?;

    let standby = match (&pg_ctl, &recovery) {
        (Some(pg_ctl), Some(r)) => {
            check(cancel)?;
            standby::start(pg_ctl, replica, &replica.join("startup.log"))?;
            let lag = standby::wait_streaming(&mut sql, &r.application_name, args.wait_streaming, cancel)?;
            phases.end("standby start");
            Some((r.application_name.clone(), lag))
        }
        _ => None,
    };
    Ok(Summary {
        files: copied.files,
        bytes: copied.bytes,
        vanished: copied.vanished,
        reused: reusable,
        moved: copied.moved,
        wal_segments,
        elapsed: started.elapsed(),
        start_lsn,
        stop_lsn: end.stop_lsn,
        timeline,
        replica: replica.to_path_buf(),
        phases: phases.done,
        standby,
    })
}

/// The primary as the SQL checks found it: the session (it becomes the backup session), the connection
/// parameters (and the tunnel they may go through), and what -R and --start will need.
struct Checked {
    forward: Option<Forward>,
    params: Vec<(&'static str, String)>,
    sql: Conn,
    primary: preflight::Primary,
    pg_ctl: Option<PathBuf>,
    recovery: Option<Recovery>,
}

fn check_primary(args: &Args, ssh: &SshTarget) -> Result<Checked, CloneError> {
    let forward = if args.bypass_rep_traffic {
        let remote_port = args.pgport.or_else(|| std::env::var("PGPORT").ok()?.parse().ok()).unwrap_or(5432);
        let f = ssh.forward(remote_port).map_err(PreflightError::from)?;
        tracing::info!(
            "PostgreSQL connections go through ssh: 127.0.0.1:{} -> primary's 127.0.0.1:{remote_port}",
            f.port
        );
        Some(f)
    } else {
        None
    };
    let params = conn_params(args, forward.as_ref().map(|f| f.port));
    let mut sql_params = params.clone();
    // The SQL session needs some database; libpq's default (the user name) rarely exists on a primary.
    if std::env::var_os("PGDATABASE").is_none() {
        sql_params.push(("dbname", "postgres".into()));
    }
    let mut sql = Conn::connect(&borrowed(&sql_params)).map_err(preflight::connect_error)?;
    let primary = preflight::primary(&mut sql)?;
    tracing::info!("primary {}@{} runs PostgreSQL {}", sql.user(), sql.host(), primary.major);
    if let Some(name) = &args.create_slot {
        preflight::slot_free(&mut sql, name)?;
    }
    let pg_ctl = args.start.then(|| standby::find_pg_ctl(args.pg_bindir.as_deref(), primary.major)).transpose()?;
    let recovery = (args.write_recovery_conf || args.start).then(|| recovery(args, &sql, ssh, forward.is_some()));
    Ok(Checked { forward, params, sql, primary, pg_ctl, recovery })
}

/// What -R writes: the primary as this run reached it, or as its host when the run went through a tunnel.
fn recovery(args: &Args, sql: &Conn, ssh: &SshTarget, tunnelled: bool) -> Recovery {
    let port = sql.option("port").unwrap_or_default();
    Recovery {
        host: if tunnelled { ssh.host.clone() } else { sql.host() },
        port: if tunnelled { args.pgport.map_or(port, |p| p.to_string()) } else { port },
        user: sql.user(),
        sslmode: sql.option("sslmode"),
        password: if args.conninfo_password { sql.option("password") } else { None },
        application_name: args
            .application_name
            .clone()
            .unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned()),
        slot: args.create_slot.clone(),
        port_setting: args.replica_port,
    }
}

/// The run's private directory, and with --temp-waldir a private subdirectory there for the stream, so that
/// whatever else that directory holds can never be mistaken for streamed WAL.
fn run_dirs(args: &Args) -> Result<(RunDir, Option<RunDir>), CloneError> {
    let run_dir = RunDir::create(None, args.keep_run_tmp).at("creating a run directory in", std::env::temp_dir())?;
    let wal_dir = match &args.temp_waldir {
        Some(dir) => {
            replica::mkdir(dir)?;
            Some(RunDir::create(Some(dir), args.keep_run_tmp).at("creating a directory in", dir)?)
        }
        None => None,
    };
    Ok((run_dir, wal_dir))
}

/// The native transport when asked for, or when `auto` finds a matching pgclone on the primary; rsync otherwise
/// (and always rsync when asked for). Both share one --limit-net-bw budget across their workers.
fn start_transport(
    args: &Args,
    ssh: &SshTarget,
    pgdata: &Path,
    run_dir: &Path,
    resync: bool,
    workers: usize,
) -> Result<Box<dyn Transport>, CloneError> {
    let budget = args.limit_net_bw.map(Budget::new);
    let native = || {
        let launch = if args.no_ssh {
            Launch::Local
        } else {
            let mut bulk = ssh.clone();
            bulk.prefer_fast_ciphers();
            Launch::Ssh(bulk)
        };
        NativeTransport::start(native::Options {
            launch,
            remote_bin: args.remote_pgclone.clone(),
            pgdata: pgdata.to_path_buf(),
            codec: args.compress.0,
            level: args.compress.1,
            split: args.chunk_size,
            budget: budget.clone(),
            delta: resync,
            workers,
        })
    };
    let rsync = || RsyncTransport::start(ssh, pgdata, run_dir, budget.clone(), args.paranoid);
    let t: Box<dyn Transport> = match args.transport {
        TransportKind::Native => Box::new(native()?),
        TransportKind::Rsync if args.no_ssh => return Err(CloneError::RsyncNeedsSsh),
        TransportKind::Rsync => Box::new(rsync()?),
        TransportKind::Auto => match native() {
            Ok(t) => Box::new(t),
            Err(TransportError::AgentMissing(why)) if !args.no_ssh => {
                tracing::warn!("{why}; using the rsync transport");
                Box::new(rsync()?)
            }
            Err(e) => return Err(e.into()),
        },
    };
    Ok(t)
}

/// The manifest's checksums and, with `pages_before`, the data page checksums: from what the copy saw land
/// where it could (native transport), else by reading the copied files once. A page that fails may be a
/// torn read of a page the primary was writing at that moment (basebackup.c re-reads such pages), so its
/// file is fetched again and checked once more before it counts as corrupt.
fn verify_copy(
    plan: &transfer::Plan,
    replica: &Path,
    transport: &dyn Transport,
    mut landed: transfer::Landed,
    pages_before: Option<Lsn>,
    parallel: usize,
    cancel: &Cancel,
) -> Result<Vec<FileSum>, CloneError> {
    let files: Vec<PathBuf> = plan.files.iter().map(|(p, _)| p.clone()).collect();
    let (mut sums, rest) = manifest::from_landed(replica, &files, &mut landed.ranges)?;
    tracing::debug!("{} files summed as they landed, {} read again", sums.len(), rest.len());
    let (scanned, mut bad) = manifest::scan(replica, &rest, pages_before, parallel)?;
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
        .map(|(p, size)| Piece::whole(p.clone(), *size))
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

/// Wall-clock time per phase, for the summary: where a slow clone spent its time.
struct Phases {
    done: Vec<(&'static str, Duration)>,
    mark: Instant,
}

impl Phases {
    fn new() -> Phases {
        Phases { done: Vec::new(), mark: Instant::now() }
    }

    fn end(&mut self, name: &'static str) {
        self.done.push((name, self.mark.elapsed()));
        self.mark = Instant::now();
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u16::from_ne_bytes(b)
}
