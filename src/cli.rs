//! Command line. Flag names and meanings follow pgclone.sh so that its users switch without relearning.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

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

    /// Data directory of the primary, on the primary host [default: the server's data_directory, which the role
    /// may read as a superuser or a member of pg_read_all_settings]
    #[arg(help_heading = "Directories", long, value_name = "DIR")]
    pub primary_pgdata: Option<PathBuf>,

    /// Data directory to create here; must be absent or empty [default: --primary-pgdata; required without it]
    #[arg(help_heading = "Directories", short = 'D', long, value_name = "DIR")]
    pub replica_pgdata: Option<PathBuf>,

    /// Put the tablespace at OLD on the primary at NEW here (repeatable; a literal = is written \=)
    /// [default: the same path as on the primary]
    #[arg(help_heading = "Directories", short = 'T', long, value_name = "OLD=NEW", value_parser = crate::replica::tablespace::parse_mapping)]
    pub tablespace_mapping: Vec<crate::replica::tablespace::Mapping>,

    /// Put the replica's WAL here and make pg_wal a symlink to it (must be absent or empty); --waldir is
    /// pg_basebackup's name for it
    #[arg(help_heading = "Directories", long, visible_alias = "waldir", value_name = "DIR")]
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
    /// (or its WAL summaries) says which pages changed: it also repairs pages damaged here since the replica
    /// last ran, at the cost of reading everything on both hosts
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

    /// Seconds between progress lines in plain and json mode
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
    /// one; with -R the standby uses it too (primary_slot_name), so it holds the WAL from the clone's start on.
    /// With -C it names the slot to create instead, as in pg_basebackup
    #[arg(help_heading = "Standby", short = 'S', long, value_name = "NAME")]
    pub stream_slot: Option<String>,

    /// Create this permanent physical replication slot for the standby (and, with -R, use it): it keeps the
    /// WAL the standby needs between the clone and its first start; never left behind by a failed run.
    /// pg_basebackup's spelling, -C -S NAME, means the same
    #[arg(help_heading = "Standby", short = 'C', long, value_name = "NAME", num_args = 0..=1)]
    pub create_slot: Option<Option<String>>,

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

    /// Ask for the password on the terminal (without echo) before connecting; it goes to libpq only, never onto
    /// a command line or into another program's environment
    #[arg(help_heading = "Connection to the primary", short = 'W', long)]
    pub password: bool,

    /// pg_basebackup's -X: pgclone always streams the WAL the clone needs (stream, the only method accepted)
    #[arg(help_heading = "Copy", short = 'X', long, value_name = "METHOD", value_parser = parse_wal_method)]
    pub wal_method: Option<WalMethod>,

    /// pg_basebackup's -F: pgclone always makes a plain data directory (plain, the only format accepted)
    #[arg(help_heading = "Copy", short = 'F', long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,

    /// Print a machine-readable summary (JSON) on stdout; human logs stay on stderr
    #[arg(help_heading = "Output", long)]
    pub json: bool,

    /// Keep the run's private temporary directory (streamed WAL, logs) for inspection
    #[arg(help_heading = "Directories", long)]
    pub keep_run_tmp: bool,

    /// Debug logging
    #[arg(help_heading = "Output", long, short, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Only warnings and errors on standard error: no progress, no log lines, no summary line (--json still
    /// prints its object on standard output)
    #[arg(help_heading = "Output", long, short)]
    pub quiet: bool,

    /// Trace logging: every protocol step (pgclone.sh's shell trace)
    #[arg(help_heading = "Output", long)]
    pub debug: bool,
}

pub use crate::sys::files::SyncMethod;

/// pg_basebackup's -X/--wal-method, accepted so that its users' command lines work: pgclone always streams the
/// WAL a clone needs over a replication connection of its own, which is pg_basebackup's `stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalMethod {
    Stream,
}

/// pg_basebackup's method names (and their initials, as it takes them); the methods pgclone does not have are
/// refused with why.
fn parse_wal_method(s: &str) -> Result<WalMethod, String> {
    match s {
        "s" | "stream" => Ok(WalMethod::Stream),
        "f" | "fetch" => Err("pgclone always streams the WAL from before the backup starts (-X stream), so none \
                              can be recycled before it is fetched: leave -X out or give -X stream"
            .into()),
        "n" | "none" => Err("pgclone always puts the WAL a clone needs into it, so that it can start (-X stream); \
                             for a copy without WAL, restored from a WAL archive, use pg_basebackup -X none"
            .into()),
        _ => Err("pg_basebackup's WAL methods are stream, fetch and none, and pgclone always streams".into()),
    }
}

/// pg_basebackup's -F/--format, accepted like -X: pgclone makes a plain data directory, ready to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "p" | "plain" => Ok(Format::Plain),
        "t" | "tar" => Err("pgclone makes a plain data directory, ready to start as a standby; for tar files \
                            use pg_basebackup -Ft"
            .into()),
        _ => Err("pg_basebackup's formats are plain and tar, and pgclone makes a plain data directory".into()),
    }
}

/// -c/--checkpoint, as pg_basebackup names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpoint {
    Fast,
    Spread,
}

/// pg_basebackup's --max-rate: kilobytes per second, `k` or `M` (kilobytes, megabytes) allowed, 32 kB/s to
/// 1024 MB/s (pg_basebackup.c, parse_max_rate), the suffixes also spelled `kB`, `MB`, `MiB`
/// (`bandwidth::split_multiple`). In bytes per second.
fn parse_max_rate(s: &str) -> Result<u64, String> {
    // pg_basebackup's unit without a suffix is the kilobyte.
    let (number, unit) = match crate::sys::bandwidth::split_multiple(s) {
        (n, 1) => (n, 1024),
        other => other,
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
    ///
    /// Patroni runs the method's command with --scope=, --role=replica, --datadir= and --connstring=, and every
    /// other key of the method's section as --KEY=VALUE. --connstring becomes -d (its host is also the ssh host),
    /// --datadir becomes -D and, unless the section gives primary-pgdata, --primary-pgdata. Every other key must
    /// be a pgclone flag (see pgclone --help), `_` and `-` alike; a switch takes true or false. A key that is none
    /// of these, or check (a method must build the replica), fails the method with exit 2, naming it, so that
    /// Patroni goes on to its next method. What Patroni does itself (-R, --start, --replica-port,
    /// --application-name, --create-slot) is ignored with a warning. Progress goes to Patroni's log as plain
    /// lines, then the --json summary.
    #[command(
        override_usage = "pgclone patroni --datadir=DIR --connstring=CONNSTR [--KEY=VALUE]...",
        disable_help_flag = true
    )]
    Patroni {
        /// Patroni's arguments, each --KEY=VALUE
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "--KEY=VALUE")]
        args: Vec<String>,
    },
    /// rsync's connect program (RSYNC_CONNECT_PROG) for the rsync transport: joins standard input and output to
    /// the Unix socket of a forward to the primary's rsync daemon
    #[command(hide = true)]
    ConnectUnix { socket: PathBuf },
    /// Print the manual page (roff), made from these very flags, for packages (scripts/package.sh)
    Man,
    /// Print shell completions for bash, zsh or fish
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// pg_basebackup's flags that have no meaning for a clone into a ready-to-start directory, with what to do
/// instead: clap alone would answer a pg_basebackup habit with "unexpected argument".
const PG_BASEBACKUP_ONLY: [(&[&str], &str); 6] = [
    (
        &["-z", "--gzip", "-Z"],
        "pg_basebackup's compression of tar output: pgclone makes a plain data directory, and --compress compresses \
         on the wire",
    ),
    (
        &["-N", "--no-sync"],
        "pgclone makes the copy durable before pg_control goes in place, so that a crash never leaves a copy that \
         starts with missing data; --sync-method chooses how",
    ),
    (
        &["-n", "--no-clean"],
        "pgclone never removes what a failed clone copied: it stays, without pg_control, and the next run resumes \
         from it",
    ),
    (&["--no-slot"], "pgclone's temporary slot ends with its connection: it never outlives the run"),
    (&["-i", "--incremental"], "run pgclone again into the existing replica: it re-syncs it, moving only what changed"),
    (&["-t", "--target"], "pgclone writes the clone into -D on this host"),
];

/// A command-line error as the one line every pgclone error is, `pgclone: error: ` and this: clap's message and
/// its hint ("a similar argument exists: ..."), without the usage block that would follow it; a pg_basebackup
/// flag pgclone has no use for is answered with what to do instead.
pub fn error_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidArg) {
        let flag = given.split('=').next().unwrap_or(given);
        let short = flag.get(..2).filter(|_| !flag.starts_with("--"));
        let known = PG_BASEBACKUP_ONLY.iter().find(|(names, _)| names.contains(&short.unwrap_or(flag)));
        if let Some((names, why)) = known.filter(|_| e.kind() == clap::error::ErrorKind::UnknownArgument) {
            return format!("{} is pg_basebackup's and has no use here: {why}", names.join("/"));
        }
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut message: Vec<&str> = Vec::new();
    let mut tips: Vec<&str> = Vec::new();
    for line in lines.by_ref() {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        match line.strip_prefix("tip: ") {
            Some(tip) => tips.push(tip),
            None => message.push(line.strip_prefix("error: ").unwrap_or(line)),
        }
    }
    let next = if tips.is_empty() { "see pgclone --help".to_string() } else { tips.join("; ") };
    format!("{}; {next}", message.join(" "))
}

/// `pgclone patroni --help`: the subcommand's own help, under its full name.
pub fn patroni_help() -> String {
    let mut cmd = Args::command();
    cmd.build();
    let patroni = cmd.find_subcommand_mut("patroni").expect("the patroni subcommand");
    patroni.render_long_help().to_string()
}

/// The manual page: clap_mangen's sections for what the flags say, then pgclone's own: the commands, named as
/// they are typed (clap_mangen would name pgclone-verify(1) and the like, pages that do not exist), the
/// environment, EXIT STATUS (the README's table), EXAMPLES and SEE ALSO (pages that exist where PostgreSQL and
/// ssh are installed).
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cmd = Args::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let operands: Vec<String> = sub
            .get_positionals()
            .flat_map(|a| a.get_value_names().unwrap_or_default().iter().map(|v| format!("\\fI{}\\fR", roff(v))))
            .collect();
        writeln!(out, ".TP\n\\fBpgclone {}\\fR {}", sub.get_name(), operands.join(" "))?;
        writeln!(out, "{}", roff(&sub.get_about().map(|a| a.to_string()).unwrap_or_default()))?;
    }
    if let Some(after) = cmd.get_after_help() {
        writeln!(out, ".SH ENVIRONMENT\n{}", roff(&after.to_string()))?;
    }
    out.write_all(MAN_SECTIONS.as_bytes())?;
    man.render_version_section(out)
}

/// Text for a roff page: backslashes and hyphens as roff wants them, no line taken for a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| if l.starts_with('.') || l.starts_with('\'') { format!("\\&{l}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

const MAN_SECTIONS: &str = r#".SH "EXIT STATUS"
Every failure prints one line, \fBpgclone: error: \fR..., and with \fB\-\-json\fR the object
{"ok":false,"class":CLASS,"exit_code":STATUS,"error":MESSAGE} on standard output.
.TP
\fB0\fR (success)
The clone is complete (with \fB\-\-start\fR: the standby streams); with \fB\-\-check\fR: a clone can start.
.TP
\fB1\fR (class failed)
Failed during the run; what was copied stays, without global/pg_control, so it cannot start. Run again: it
resumes, moving only what is missing or differs.
.TP
\fB2\fR (class usage)
Bad flags or flag combinations: fix the command line.
.TP
\fB3\fR (class refused)
A check refused the run before anything in the replica directory changed (replica not empty, role without
privileges, ssh login, \fB\-\-primary\-pgdata\fR, space, another run on the same directory, ...). Fix the cause;
running again as is fails the same way.
.TP
\fB4\fR (class standby)
The clone is complete, but the standby \fB\-\-start\fR started did not come up streaming (or pg_ctl could not
start it). The error quotes the standby's log.
.SH EXAMPLES
Clone a primary into an empty directory, logging in over ssh as postgres (the password from ~/.pgpass or
PGPASSWORD):
.PP
.RS
.nf
pgclone \-h db1.example \-U replicator \-D /srv/replica \-\-ssh\-user postgres
.fi
.RE
.PP
The same, then start the clone as a standby and wait until it streams (\fB\-\-start\fR implies \fB\-R\fR;
\fB\-R\fR alone writes the standby's settings and leaves the start to you):
.PP
.RS
.nf
pgclone \-h db1.example \-U replicator \-D /srv/replica \-\-ssh\-user postgres \-R \-\-start
.fi
.RE
.PP
Re-sync a stopped standby that fell behind, or resume an interrupted clone: run the same command into the same
directory again; only what differs moves.
.PP
Make every check a clone makes (replica directory, role and WAL settings, ssh, the primary's data directory,
room) and copy nothing:
.PP
.RS
.nf
pgclone \-h db1.example \-U replicator \-D /srv/replica \-\-ssh\-user postgres \-\-check
.fi
.RE
.PP
As a Patroni replica method, in Patroni's configuration (README.md and docs/patroni.md in the sources tell
more):
.PP
.RS
.nf
postgresql:
  create_replica_methods: [pgclone, basebackup]
  pgclone:
    command: /usr/bin/pgclone patroni
    keep_data: true
    ssh\-user: postgres
.fi
.RE
.SH "SEE ALSO"
pg_basebackup(1), pg_verifybackup(1), ssh(1), ssh_config(5)
"#;
