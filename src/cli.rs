//! Command line. Flag names and meanings follow pgclone.sh so that its users switch without relearning.

use std::path::PathBuf;

use clap::Parser;

use crate::progress;
use crate::transport::{Compression, DataChannel, TransportKind};

#[derive(Parser, Debug)]
#[command(
    name = "pgclone",
    version,
    about = "Turn an empty directory into a ready-to-start physical standby of a live PostgreSQL 15+ primary",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    // -h is pg_basebackup's (and psql's) host, as DBAs type it; help is -? and --help, as there.
    disable_help_flag = true,
    after_help = "Connection settings not given here come from libpq as usual: PGHOST, PGPORT, PGUSER, \
                  PGPASSWORD, PGDATABASE, PGSSLMODE..., ~/.pgpass and service files.\n\
                  ssh honours ~/.ssh/config, the ssh agent and known_hosts; host keys are checked strictly."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print help
    #[arg(short = '?', long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,

    /// Connection string or URI for the primary, as libpq reads it (host, port, user, sslmode, ...); the flags
    /// below win over it [default: libpq's environment]
    #[arg(help_heading = "Connection to the primary", short = 'd', long, value_name = "CONNSTR")]
    pub dbname: Option<String>,

    /// Primary's host name or address: used for PostgreSQL and as the ssh host [default: -d's host, $PGHOST]
    #[arg(help_heading = "Connection to the primary", short = 'h', long, value_name = "HOST")]
    pub pghost: Option<String>,

    /// Primary's PostgreSQL port [default: -d's port, $PGPORT or 5432]
    #[arg(help_heading = "Connection to the primary", short = 'p', long, value_name = "PORT")]
    pub pgport: Option<u16>,

    /// Role with REPLICATION that may run pg_backup_start/pg_backup_stop [default: -d's user, $PGUSER]
    #[arg(help_heading = "Connection to the primary", short = 'U', long, value_name = "USER")]
    pub pguser: Option<String>,

    /// Data directory of the primary, on the primary host (required to clone)
    #[arg(help_heading = "Directories", long, value_name = "DIR", required = true)]
    pub primary_pgdata: Option<PathBuf>,

    /// Data directory to create here; must be absent or empty [default: --primary-pgdata]
    #[arg(help_heading = "Directories", short = 'D', long, value_name = "DIR")]
    pub replica_pgdata: Option<PathBuf>,

    /// Put the tablespace at OLD on the primary at NEW here (repeatable; a literal = is written \=)
    /// [default: the same path as on the primary]
    #[arg(help_heading = "Directories", short = 'T', long, value_name = "OLD=NEW", value_parser = crate::replica::tablespace::parse_mapping)]
    pub tablespace_mapping: Vec<crate::replica::tablespace::Mapping>,

    /// Put the replica's WAL here and make pg_wal a symlink to it (must be absent or empty)
    #[arg(help_heading = "Directories", long, value_name = "DIR")]
    pub replica_waldir: Option<PathBuf>,

    /// Where streamed WAL waits during the clone [default: a private directory under $TMPDIR]. pgclone works
    /// in a private subdirectory and removes it afterwards; whatever else is in DIR is left alone
    #[arg(help_heading = "Directories", long, value_name = "DIR")]
    pub temp_waldir: Option<PathBuf>,

    /// DANGEROUS: first delete everything in --replica-pgdata and --replica-waldir (never the directories
    /// themselves, never anything outside them); refused for /, a home directory or a running cluster
    #[arg(help_heading = "Directories", long)]
    pub drop_existing: bool,

    /// A re-sync compares every page already in the replica with the primary's, even where the primary's WAL
    /// summaries (PostgreSQL 17+, summarize_wal = on) say which pages changed: it also repairs pages damaged
    /// here since the replica last ran, at the cost of reading everything on both hosts
    #[arg(help_heading = "Copy", long)]
    pub paranoid: bool,

    /// Accepted for pgclone.sh compatibility: pgclone always streams WAL through a temporary replication slot,
    /// visible in pg_replication_slots during the run and gone with the connection afterwards (a NAME after it
    /// is refused, with what to give instead)
    #[arg(help_heading = "Standby", long, num_args = 0..=1, value_name = "NAME")]
    pub slot: Option<Option<String>>,

    /// ssh login on the primary host; it must be able to read the primary's data directory
    #[arg(help_heading = "SSH and transport", long, value_name = "USER")]
    pub ssh_user: Option<String>,

    /// Private key for ssh [default: ssh's own choice: agent, ~/.ssh/config, ~/.ssh/id_*]
    #[arg(help_heading = "SSH and transport", long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,

    /// ssh port on the primary host [default: ssh's own choice]
    #[arg(help_heading = "SSH and transport", long, value_name = "PORT")]
    pub ssh_port: Option<u16>,

    /// ssh client configuration file used instead of ~/.ssh/config (ssh -F)
    #[arg(help_heading = "SSH and transport", long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,

    /// Send PostgreSQL connections through an ssh tunnel to the primary host's loopback (127.0.0.1:--pgport),
    /// for primaries that accept only local connections
    #[arg(help_heading = "Connection to the primary", long)]
    pub bypass_rep_traffic: bool,

    /// Do not check the primary's ssh host key (StrictHostKeyChecking=no); exposes the copy to a man in the middle
    #[arg(help_heading = "SSH and transport", long)]
    pub insecure_ssh: bool,

    /// How files travel: native (pgclone agents on the primary, over ssh; auto means the same), or rsync (a
    /// throwaway rsync daemon, as pgclone.sh: whole files only, data in clear text; only when asked for)
    #[arg(help_heading = "SSH and transport", long, value_enum, default_value_t = TransportKind::Auto)]
    pub transport: TransportKind,

    /// How file data travels: tls (TLS 1.3 over direct TCP to the agent, keyed through ssh; native transport),
    /// ssh (one ssh connection per worker), tcp (clear text, for a trusted network only: anyone on the path can
    /// read or change the copy); auto: tls, or ssh with a notice when the agent's port cannot be reached
    #[arg(help_heading = "SSH and transport", long, value_enum, default_value_t = DataChannel::Auto)]
    pub data_channel: DataChannel,

    /// A pgclone (or pgclone-agent) of this version installed on the primary host, for the native transport's
    /// agents [default: pgclone-agent from beside this binary, brought to the primary for the run and removed
    /// after it]
    #[arg(help_heading = "SSH and transport", long, value_name = "PATH")]
    pub remote_pgclone: Option<String>,

    /// The primary's data directory is on this host: native transport agents run as local processes, no ssh
    #[arg(help_heading = "SSH and transport", long, conflicts_with = "bypass_rep_traffic")]
    pub no_ssh: bool,

    /// Compression on the wire for the native transport: auto (lz4 where it makes the copy faster, as measured
    /// on each connection), none, lz4, zstd or zstd:LEVEL
    #[arg(help_heading = "Copy", long, value_name = "CODEC", default_value = "auto")]
    pub compress: Compression,

    /// Files larger than this are split into ranges that any worker may take (native transport; K, M, G)
    #[arg(help_heading = "Copy", long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub chunk_size: u64,

    /// Parallel copy workers, each its own connection [default: number of CPUs]
    #[arg(help_heading = "Copy", long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: Option<u16>,

    /// Cap on the network: bytes/s on the wire for all copy workers together, after compression, so
    /// compressed data moves faster than RATE (K, M, G: binary multiples; at least 10000); a worker that
    /// finishes leaves its share to the others. To spare the primary's disks, use -r
    #[arg(help_heading = "Copy", long, value_name = "RATE", value_parser = crate::sys::bandwidth::parse_rate)]
    pub limit_net_bw: Option<u64>,

    /// Cap on the primary's disks, as pg_basebackup's -r: data read from the primary's data directory per
    /// second, all workers together, counted before compression (pages compared in a re-sync count too); in
    /// kilobytes per second, or with a k or M suffix (32k to 1024M). With --transport rsync: the bytes its daemon
    /// sends (rsync's --checksum reads are not counted). Combines with --limit-net-bw
    #[arg(help_heading = "Copy", short = 'r', long, value_name = "RATE", value_parser = parse_max_rate)]
    pub max_rate: Option<u64>,

    /// How to show copy progress; -P alone (pg_basebackup's) is the bar
    #[arg(
        help_heading = "Output",
        short = 'P',
        long,
        value_enum,
        default_value_t = progress::Mode::Auto,
        num_args = 0..=1,
        default_missing_value = "bar"
    )]
    pub progress: progress::Mode,

    /// Seconds between progress lines in plain mode
    #[arg(help_heading = "Output", long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_interval: u64,

    /// Make the clone a standby of the primary: standby.signal, and primary_conninfo (host, port, user,
    /// sslmode, application_name of the connection pgclone used) in postgresql.auto.conf
    #[arg(help_heading = "Standby", short = 'R', long)]
    pub write_recovery_conf: bool,

    /// With -R: also write the password into primary_conninfo (otherwise the standby reads ~/.pgpass as libpq does)
    #[arg(help_heading = "Standby", long)]
    pub conninfo_password: bool,

    /// application_name the standby uses towards the primary, as seen in pg_stat_replication [default:
    /// $PGAPPNAME, else this host's name]
    #[arg(help_heading = "Standby", long, value_name = "NAME")]
    pub application_name: Option<String>,

    /// Stream the WAL through this existing physical replication slot (pg_basebackup's -S) instead of a temporary
    /// one; with -R the standby uses it too (primary_slot_name), so it holds the WAL from the clone's start on
    #[arg(help_heading = "Standby", short = 'S', long, value_name = "NAME", conflicts_with = "create_slot")]
    pub stream_slot: Option<String>,

    /// Create this permanent physical replication slot for the standby (and, with -R, use it): it keeps the
    /// WAL the standby needs between the clone and its first start; never left behind by a failed run
    #[arg(help_heading = "Standby", long, value_name = "NAME")]
    pub create_slot: Option<String>,

    /// Start the standby when the clone is done (implies -R) and wait until the primary sees it streaming
    #[arg(help_heading = "Standby", long)]
    pub start: bool,

    /// With -R: the standby's own port
    #[arg(help_heading = "Standby", long, value_name = "PORT")]
    pub replica_port: Option<u16>,

    /// With -R: one more setting for the standby's postgresql.auto.conf (repeatable), e.g. restore_command=...
    /// or recovery_min_apply_delay=5min
    #[arg(help_heading = "Standby", long, value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub recovery_option: Vec<(String, String)>,

    /// With --start: how long to wait for the standby to stream
    #[arg(help_heading = "Standby", long, value_name = "SECONDS", default_value_t = 120)]
    pub wait_streaming: u64,

    /// Directory holding pg_ctl of the primary's major, for --start [default: /usr/lib/postgresql/<major>/bin, then PATH]
    #[arg(help_heading = "Standby", long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,

    /// Do not verify data page checksums while copying (when the primary has them on, pages older than the
    /// backup start are checked and a corrupt one fails the clone)
    #[arg(help_heading = "Copy", long)]
    pub no_verify_checksums: bool,

    /// How the copy is made durable before global/pg_control goes in place (pg_basebackup's --sync-method):
    /// syncfs (one call per filesystem) where the kernel reports write-back errors through it (Linux 5.8 and
    /// later), else fsync (every file and directory, as initdb --sync-only) [default: syncfs on Linux 5.8+]
    #[arg(help_heading = "Copy", long, value_enum, value_name = "METHOD")]
    pub sync_method: Option<SyncMethod>,

    /// Do not write backup_manifest (the extra read pass that computes its checksums is then skipped unless
    /// page checksums are verified)
    #[arg(help_heading = "Copy", long)]
    pub no_manifest: bool,

    /// Make every check a clone makes before copying (replica directory, the primary over SQL and ssh, its data
    /// directory, a free WAL sender and slot, room for WAL and data) and exit without copying or changing anything
    #[arg(help_heading = "Copy", long)]
    pub check: bool,

    /// The checkpoint pg_backup_start waits for: fast (immediate; pgclone's default, unlike pg_basebackup's) or
    /// spread (paced by checkpoint_completion_target: gentler on a busy primary, up to checkpoint_timeout slower)
    #[arg(help_heading = "Connection to the primary", short = 'c', long, value_enum, default_value_t = Checkpoint::Fast)]
    pub checkpoint: Checkpoint,

    /// The backup's label (backup_label's LABEL, pg_stat_progress_basebackup) [default: "pgclone to <replica>"]
    #[arg(help_heading = "Connection to the primary", short = 'l', long, value_name = "LABEL")]
    pub label: Option<String>,

    /// Print a machine-readable summary (JSON) on stdout; human logs stay on stderr
    #[arg(help_heading = "Output", long)]
    pub json: bool,

    /// Keep the run's private temporary directory (streamed WAL, logs) for inspection
    #[arg(help_heading = "Directories", long)]
    pub keep_run_tmp: bool,

    /// Debug logging
    #[arg(help_heading = "Output", long, short)]
    pub verbose: bool,

    /// Trace logging: every protocol step (pgclone.sh's shell trace)
    #[arg(help_heading = "Output", long)]
    pub debug: bool,
}

pub use crate::sys::files::SyncMethod;

/// -c/--checkpoint, as pg_basebackup names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpoint {
    Fast,
    Spread,
}

/// pg_basebackup's --max-rate: kilobytes per second, `k` or `M` (kilobytes, megabytes) allowed, 32 kB/s to
/// 1024 MB/s (pg_basebackup.c, parse_max_rate). In bytes per second.
fn parse_max_rate(s: &str) -> Result<u64, String> {
    let (number, unit) = match s.strip_suffix('M') {
        Some(n) => (n, 1024 * 1024),
        None => (s.strip_suffix('k').unwrap_or(s), 1024),
    };
    let rate = number.trim().parse::<f64>().map_err(|_| format!("{s:?} is not a number of kilobytes per second"))?;
    let bytes = (rate * unit as f64) as u64;
    if !(32 * 1024..=1024 * 1024 * 1024).contains(&bytes) {
        return Err(format!("{s:?} is outside 32k..1024M"));
    }
    Ok(bytes)
}

/// KEY=VALUE of --recovery-option: a setting name, then anything.
fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("{s:?} is not SETTING=VALUE")),
    }
}

/// A size in bytes with an optional K, M or G (binary multiples), at least 1 MiB.
fn parse_size(s: &str) -> Result<u64, String> {
    let n = crate::sys::bandwidth::parse_rate(s)?;
    if n < 1 << 20 {
        return Err(format!("{s:?} is below 1M"));
    }
    Ok(n)
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// The primary's side of the native transport: serves the data directory on stdin/stdout
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        pgdata: PathBuf,
    },
    /// Check a clone (before its first start) against its backup_manifest, as pg_verifybackup does
    Verify {
        /// The clone's data directory
        dir: PathBuf,
    },
    /// Run as a Patroni replica method: the method's `command: pgclone patroni`, its keys as pgclone's flags
    /// (docs/patroni.md)
    Patroni {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// rsync's connect program (RSYNC_CONNECT_PROG) for the rsync transport: joins standard input and output to
    /// the Unix socket of a forward to the primary's rsync daemon
    #[command(hide = true)]
    ConnectUnix { socket: PathBuf },
    /// Print the manual page (roff), made from these very flags, for packages (scripts/package.sh)
    #[command(hide = true)]
    Man,
    /// Print shell completions for bash, zsh or fish
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}
