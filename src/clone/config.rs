//! One clone's settings, resolved once from the flags and the environment: every default, every environment
//! variable pgclone itself reads, and every rule between flags lives here, so that nothing below `main` sees
//! clap and a setting has one meaning everywhere.
//!
//! libpq's own variables (PGUSER, PGPASSWORD, PGSSLMODE, service files, ~/.pgpass) are not read here: libpq
//! applies them itself, and pgclone passes on only what the user gave as flags. The few read here are those
//! pgclone needs for decisions of its own: the ssh host is PGHOST, a tunnel's far end is PGPORT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{Args, Checkpoint};
use crate::progress;
use crate::replica::tablespace::Mapping;
use crate::sys::cancel::Cancel;
use crate::sys::files::SyncMethod;
use crate::sys::ssh::{self, NameError, SshTarget};
use crate::sys::tty::{self, PasswordError};
use crate::transport::{DataChannel, TransportConfig, TransportKind};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "-D/--replica-pgdata is required when --primary-pgdata is not given (the replica's directory defaults to the \
         primary's path only when that is given)"
    )]
    NoReplica,
    #[error("no primary host: give --pghost (or set PGHOST) to a host name or address, it is also the ssh host")]
    NoHost,
    #[error("the rsync transport has no TLS: its data moves over ssh (--data-channel ssh) or in clear text (tcp)")]
    RsyncHasNoTls,
    #[error("-d/--dbname: {0}")]
    Dbname(String),
    #[error("the primary is one host, also for ssh: -d names {0:?}; give one of them with -h")]
    ManyHosts(String),
    #[error(
        "--slot takes no name (it is pgclone.sh's switch; pgclone always streams through a temporary slot): to make \
         a slot {0:?} for the standby give --create-slot {0}"
    )]
    SlotName(String),
    #[error("-C/--create-slot needs the slot's name: --create-slot NAME, or -C -S NAME as pg_basebackup takes it")]
    UnnamedSlot,
    #[error(
        "name the slot to create once: --create-slot {0}, or -C -S {0} (-S alone streams through an existing slot)"
    )]
    SlotNamedTwice(String),
    #[error("{what} {value:?} (from {from}) is not handed to ssh: {why}; give {}", name_fix(what))]
    SshName { what: &'static str, value: String, from: &'static str, why: NameError },
}

/// What `ConfigError::SshName` asks for instead.
fn name_fix(what: &str) -> &'static str {
    if what == LOGIN {
        "--ssh-user a plain login name"
    } else {
        "a plain host name or IP address (the ssh login goes in --ssh-user)"
    }
}

/// `ConfigError::SshName`'s names for what it refuses.
const HOST: &str = "the primary's host";
const LOGIN: &str = "the ssh login";

/// The environment variables pgclone reads for decisions of its own.
const VARS: [&str; 5] = ["PGHOST", "PGPORT", "PGDATABASE", "PGCONNECT_TIMEOUT", "PGAPPNAME"];

/// What the process environment contributes, read once by `Env::from_process` (and built by hand in tests).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// Those of `VARS` that are set.
    pub vars: BTreeMap<&'static str, String>,
    /// $TMPDIR or /tmp: where the run directory goes.
    pub tmpdir: PathBuf,
    /// The user's home directory, which --drop-existing refuses to empty.
    pub home: Option<PathBuf>,
    /// $PATH, searched last for pg_ctl.
    pub path: Vec<PathBuf>,
    pub cpus: usize,
    /// This host's name: the standby's default application_name.
    pub hostname: String,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: VARS
                .into_iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?.to_string_lossy().into_owned())))
                .collect(),
            tmpdir: std::env::temp_dir(),
            home: std::env::home_dir(),
            path: std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(4, |n| n.get()),
            hostname: rustix::system::uname().nodename().to_string_lossy().into_owned(),
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// A clone, fully described.
#[derive(Debug, Clone)]
pub struct CloneConfig {
    /// --primary-pgdata; None: the server's data_directory, read by preflight in the SQL session.
    pub primary_pgdata: Option<PathBuf>,
    pub replica: PathBuf,
    pub replica_waldir: Option<PathBuf>,
    /// --temp-waldir: streamed WAL waits in a private directory there instead of in the run directory.
    pub temp_waldir: Option<PathBuf>,
    pub tmpdir: PathBuf,
    pub keep_run_tmp: bool,
    pub drop_existing: bool,
    /// --paranoid: a re-sync compares every page here with the primary's, even where WAL summaries could say
    /// which changed.
    pub paranoid: bool,
    pub home: Option<PathBuf>,
    pub tablespace_mapping: Vec<Mapping>,
    /// The primary's data directory is read over ssh (`Some`) or on this host (`None`, --no-ssh). Also the
    /// host the probe of --primary-pgdata and a --bypass-rep-traffic tunnel go to.
    pub ssh: Option<SshTarget>,
    /// The ssh host, which is also the PostgreSQL host (`localhost` with --no-ssh and no host given).
    pub host: String,
    pub pg: PgConfig,
    pub transport: TransportConfig,
    pub parallel: usize,
    pub progress: progress::Mode,
    pub progress_interval: Duration,
    /// Verify data page checksums while copying (when the primary has them on).
    pub verify_checksums: bool,
    pub manifest: bool,
    /// How finalize makes the copy durable (--sync-method, or what this kernel allows).
    pub sync_method: SyncMethod,
    /// -R (or --start): make the copy a standby.
    pub recovery: Option<RecoveryConfig>,
    /// --create-slot.
    pub create_slot: Option<String>,
    /// -S: an existing slot the WAL stream uses instead of a temporary one of its own.
    pub stream_slot: Option<String>,
    /// --start.
    pub start: Option<StartConfig>,
    /// -c fast (the default) or spread.
    pub fast_checkpoint: bool,
    /// -l: the backup's label.
    pub label: String,
}

/// How pgclone reaches PostgreSQL on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// libpq keywords from our flags only; everything else stays libpq's business.
    pub params: Vec<(&'static str, String)>,
    /// The SQL session needs some database; libpq's default (the user name) rarely exists on a primary.
    pub sql_dbname: Option<&'static str>,
    /// --bypass-rep-traffic: connections go through an ssh tunnel to this port on the primary's loopback (the
    /// primary's port, which -R writes).
    pub tunnel_to: Option<u16>,
}

impl PgConfig {
    /// The connection keywords, with the local end of the tunnel in place of host and port when there is one:
    /// the directory of its Unix socket, which libpq finds there as `.s.PGSQL.<port>` of the port the tunnel
    /// leads to. libpq does not ask for TLS on a Unix socket (ssh encrypts the tunnel), so the primary's
    /// pg_hba.conf must let the role in from 127.0.0.1 by a `host` line, not only `hostssl`.
    pub fn params(&self, tunnel_dir: Option<&Path>) -> Vec<(&'static str, String)> {
        let mut p = self.params.clone();
        if let (Some(dir), Some(port)) = (tunnel_dir, self.tunnel_to) {
            p.retain(|(k, _)| *k != "host" && *k != "port");
            p.insert(0, ("port", port.to_string()));
            p.insert(0, ("host", dir.display().to_string()));
        }
        p
    }

    /// With --bypass-rep-traffic, the tunnel's socket in `dir`, named as libpq looks for it there (see `params`).
    pub fn tunnel_socket(&self, dir: &Path) -> Option<PathBuf> {
        self.tunnel_to.map(|port| dir.join(format!(".s.PGSQL.{port}")))
    }
}

/// What -R writes besides what the connection tells (host, port, user, sslmode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    pub password: bool,
    pub application_name: String,
    pub slot: Option<String>,
    pub replica_port: Option<u16>,
    /// --recovery-option settings, in order.
    pub options: Vec<(String, String)>,
}

/// --start: where pg_ctl of the primary's major is looked for, and how long to wait for streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartConfig {
    pub pg_bindir: Option<PathBuf>,
    pub search_path: Vec<PathBuf>,
    pub wait_streaming: u64,
}

impl CloneConfig {
    pub fn resolve(args: &Args, env: &Env) -> Result<CloneConfig, ConfigError> {
        let replica = match (&args.replica_pgdata, &args.primary_pgdata) {
            (Some(dir), _) | (None, Some(dir)) => dir.clone(),
            (None, None) => return Err(ConfigError::NoReplica),
        };
        let (create_slot, stream_slot) = slots(args)?;
        let conninfo = match &args.dbname {
            Some(d) => crate::pg::parse_conninfo(d).map_err(|e| ConfigError::Dbname(e.message))?,
            None => Vec::new(),
        };
        let from_d = |key: &str| conninfo.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        if let Some(hosts) = from_d("host").filter(|h| h.contains(',') && args.pghost.is_none()) {
            return Err(ConfigError::ManyHosts(hosts.to_string()));
        }
        // The ssh host is the PostgreSQL host; a socket directory is no host, and with --no-ssh there is none
        // to reach.
        let host = [("-h", args.pghost.as_deref()), ("-d", from_d("host")), ("PGHOST", env.var("PGHOST"))]
            .into_iter()
            .find_map(|(from, h)| Some((from, h?)))
            .filter(|(_, h)| !h.is_empty() && !h.starts_with('/'));
        let host = match host {
            Some((from, h)) if !args.no_ssh => {
                let refuse = |why| ConfigError::SshName { what: HOST, value: h.into(), from, why };
                ssh::check_host(h).map_err(refuse)?;
                h.to_string()
            }
            Some((_, h)) => h.to_string(),
            None if args.no_ssh => "localhost".into(),
            None => return Err(ConfigError::NoHost),
        };
        if let Some(u) = args.ssh_user.as_deref().filter(|_| !args.no_ssh) {
            let refuse = |why| ConfigError::SshName { what: LOGIN, value: u.into(), from: "--ssh-user", why };
            ssh::check_user(u).map_err(refuse)?;
        }
        let ssh = SshTarget {
            host: host.clone(),
            user: args.ssh_user.clone(),
            port: args.ssh_port,
            key: args.ssh_key.clone(),
            config: args.ssh_config.clone(),
            insecure: args.insecure_ssh,
            ciphers: None,
            user_keepalive: Default::default(),
        };
        let parallel = args.parallel.map_or(env.cpus, usize::from);
        if args.transport == TransportKind::Rsync && args.data_channel == DataChannel::Tls {
            return Err(ConfigError::RsyncHasNoTls);
        }
        let recovery = (args.write_recovery_conf || args.start).then(|| RecoveryConfig {
            password: args.conninfo_password,
            application_name: args
                .application_name
                .clone()
                .or_else(|| env.var("PGAPPNAME").map(str::to_string))
                .unwrap_or_else(|| env.hostname.clone()),
            options: args.recovery_option.clone(),
            slot: create_slot.clone().or_else(|| stream_slot.clone()),
            replica_port: args.replica_port,
        });
        Ok(CloneConfig {
            fast_checkpoint: args.checkpoint == Checkpoint::Fast,
            label: args.label.clone().unwrap_or_else(|| format!("pgclone to {}", replica.display())),
            replica,
            replica_waldir: args.replica_waldir.clone(),
            temp_waldir: args.temp_waldir.clone(),
            tmpdir: env.tmpdir.clone(),
            keep_run_tmp: args.keep_run_tmp,
            drop_existing: args.drop_existing,
            paranoid: args.paranoid,
            home: env.home.clone(),
            tablespace_mapping: args.tablespace_mapping.clone(),
            pg: pg_config(args, env, &from_d),
            transport: TransportConfig {
                kind: args.transport,
                data_channel: args.data_channel,
                ssh: (!args.no_ssh).then(|| ssh.clone()),
                remote_bin: args.remote_pgclone.clone(),
                compression: args.compress,
                chunk_size: args.chunk_size,
                max_rate: args.max_rate,
                limit_net_bw: args.limit_net_bw,
                workers: parallel,
            },
            ssh: (!args.no_ssh).then_some(ssh),
            host,
            parallel,
            // --quiet: no bar or progress lines either, unless asked for by name (json events are for machines).
            progress: if args.quiet && args.progress != progress::Mode::Json {
                progress::Mode::None
            } else {
                args.progress
            },
            progress_interval: Duration::from_secs(args.progress_interval),
            verify_checksums: !args.no_verify_checksums,
            manifest: !args.no_manifest,
            sync_method: args.sync_method.unwrap_or_else(SyncMethod::for_this_kernel),
            recovery,
            stream_slot,
            create_slot,
            start: args.start.then(|| StartConfig {
                pg_bindir: args.pg_bindir.clone(),
                search_path: env.path.clone(),
                wait_streaming: args.wait_streaming,
            }),
            primary_pgdata: args.primary_pgdata.clone(),
        })
    }

    /// -W: the password, read from the terminal once every flag rule has passed and before the first connection,
    /// goes to libpq as the `password` keyword of every connection (after -d's, so it wins): never onto a command
    /// line or into the environment of a child process, where other users could read it.
    pub fn ask_password(mut self, ask: bool, cancel: &Cancel) -> Result<CloneConfig, PasswordError> {
        if ask {
            let password = tty::read_password(cancel)?;
            self.pg.params.push(("password", password));
        }
        Ok(self)
    }
}

/// The slot to create (--create-slot) and the existing one to stream through (-S). pg_basebackup names the slot
/// to create with -S (or --slot) after -C, which takes no name there: `-C -S NAME` is `--create-slot NAME`. -S
/// alone is an existing slot, as in pg_basebackup; --slot alone is pgclone.sh's switch and takes no name.
fn slots(args: &Args) -> Result<(Option<String>, Option<String>), ConfigError> {
    let slot = args.slot.clone().flatten();
    match (args.create_slot.clone(), args.stream_slot.clone(), slot) {
        (None, _, Some(name)) => Err(ConfigError::SlotName(name)),
        (None, stream, None) => Ok((None, stream)),
        (Some(Some(name)), None, None) | (Some(None), Some(name), None) | (Some(None), None, Some(name)) => {
            Ok((Some(name), None))
        }
        (Some(None), None, None) => Err(ConfigError::UnnamedSlot),
        (Some(named), stream, slot) => {
            Err(ConfigError::SlotNamedTwice(named.or(stream).or(slot).expect("two of them are given")))
        }
    }
}

/// `from_d`: what -d sets, by keyword.
fn pg_config<'a>(args: &Args, env: &Env, from_d: &dyn Fn(&str) -> Option<&'a str>) -> PgConfig {
    let mut params = Vec::new();
    // First: libpq expands it in its place, and the flags after it win (see `Conn::connect`).
    if let Some(d) = &args.dbname {
        params.push(("dbname", d.clone()));
    }
    if let Some(h) = &args.pghost {
        params.push(("host", h.clone()));
    }
    if let Some(port) = args.pgport {
        params.push(("port", port.to_string()));
    }
    if let Some(u) = &args.pguser {
        params.push(("user", u.clone()));
    }
    // An unreachable primary must fail in seconds, not after the kernel's TCP timeout.
    if env.var("PGCONNECT_TIMEOUT").is_none() {
        params.push(("connect_timeout", "10".into()));
    }
    params.push(("fallback_application_name", "pgclone".into()));
    // The backup session is idle for the whole copy: TCP keepalives keep an idle-connection timeout of a
    // firewall or NAT on the way from dropping it, and notice a dead primary within minutes, not hours.
    params.extend(
        [("keepalives_idle", "30"), ("keepalives_interval", "10"), ("keepalives_count", "6")]
            .map(|(k, v)| (k, v.to_string())),
    );
    let port = || args.pgport.or_else(|| from_d("port")?.parse().ok()).or_else(|| env.var("PGPORT")?.parse().ok());
    let tunnel_to = args.bypass_rep_traffic.then(|| port().unwrap_or(5432));
    let sql_dbname = (env.var("PGDATABASE").is_none() && from_d("dbname").is_none()).then_some("postgres");
    PgConfig { params, sql_dbname, tunnel_to }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::protocol::Codec;
    use clap::{CommandFactory, Parser};

    fn env() -> Env {
        Env { tmpdir: "/tmp".into(), cpus: 2, hostname: "replica1".into(), ..Env::default() }
    }

    fn resolve(flags: &[&str], env: &Env) -> Result<CloneConfig, ConfigError> {
        let args = Args::try_parse_from([&["pgclone"], flags].concat()).expect("valid flags");
        CloneConfig::resolve(&args, env)
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let c = resolve(&["--pghost", "db1", "--primary-pgdata", "/pg"], &env()).unwrap();
        assert_eq!(c.replica, PathBuf::from("/pg"), "the replica defaults to the primary's path");
        assert_eq!(c.host, "db1");
        assert_eq!(c.ssh.as_ref().map(|s| s.host.as_str()), Some("db1"));
        assert_eq!(c.parallel, 2, "one worker per CPU");
        assert_eq!(c.transport.workers, 2);
        assert!(c.verify_checksums && c.manifest);
        assert!(c.recovery.is_none() && c.start.is_none());
        assert_eq!(
            c.pg.params,
            vec![
                ("host", "db1".to_string()),
                ("connect_timeout", "10".into()),
                ("fallback_application_name", "pgclone".into()),
                ("keepalives_idle", "30".into()),
                ("keepalives_interval", "10".into()),
                ("keepalives_count", "6".into())
            ]
        );
        assert_eq!(c.pg.sql_dbname, Some("postgres"));
    }

    #[test]
    fn data_travels_over_tls_by_default_and_the_rsync_transport_has_none() {
        let base = ["--pghost", "db1", "--primary-pgdata", "/pg"];
        let c = resolve(&base, &env()).unwrap();
        assert_eq!((c.transport.data_channel, c.transport.compression.codec), (DataChannel::Auto, Codec::Auto));
        assert!(c.transport.probes_pgdata(), "the native transport's login reads --primary-pgdata");
        let rsync = resolve(&[&base[..], &["--transport", "rsync"]].concat(), &env()).unwrap();
        assert!(!rsync.transport.probes_pgdata());
        let tls = resolve(&[&base[..], &["--transport", "rsync", "--data-channel", "tls"]].concat(), &env());
        assert_eq!(tls.unwrap_err(), ConfigError::RsyncHasNoTls);
    }

    #[test]
    fn pg_basebackups_vocabulary() {
        let d = "host=db3 port=5555 user=rep sslmode=require dbname=app";
        let c = resolve(&["-d", d, "--primary-pgdata", "/pg", "-D", "/srv/r"], &env()).unwrap();
        assert_eq!(
            (c.host.as_str(), c.replica.as_path()),
            ("db3", std::path::Path::new("/srv/r")),
            "-d's host is the ssh host"
        );
        assert_eq!(c.pg.params[0], ("dbname", d.to_string()), "libpq expands -d first, the flags win over it");
        assert_eq!(c.pg.sql_dbname, None, "-d names the database");
        let c =
            resolve(&["-d", d, "-h", "db4", "-p", "6000", "-U", "u2", "--primary-pgdata", "/pg", "-r", "100k"], &env());
        let c = c.unwrap();
        assert_eq!(c.host, "db4");
        assert!(c.pg.params.contains(&("port", "6000".into())) && c.pg.params.contains(&("user", "u2".into())));
        assert_eq!(c.transport.max_rate, Some(100 * 1024), "-r is kilobytes per second");
        assert_eq!(c.transport.limit_net_bw, None, "-r caps the data read on the primary, not the wire");
        let both = ["--pghost", "db1", "--primary-pgdata", "/pg", "-r", "2M", "--limit-net-bw", "1M"];
        let both = resolve(&both, &env()).unwrap().transport;
        assert_eq!((both.max_rate, both.limit_net_bw), (Some(2 << 20), Some(1 << 20)), "each its own budget");
        let bad = resolve(&["-d", "host=a,b", "--primary-pgdata", "/pg"], &env()).unwrap_err();
        assert_eq!(bad, ConfigError::ManyHosts("a,b".into()));
        let bad = resolve(&["-d", "hots=a", "--primary-pgdata", "/pg"], &env()).unwrap_err();
        assert!(matches!(&bad, ConfigError::Dbname(m) if m.contains("hots")), "libpq's own message: {bad}");
        let bad = resolve(&["--pghost", "db1", "--primary-pgdata", "/pg", "--slot", "s1"], &env()).unwrap_err();
        assert_eq!(bad, ConfigError::SlotName("s1".into()));
        assert!(
            resolve(&["--pghost", "db1", "--primary-pgdata", "/pg", "--slot"], &env()).is_ok(),
            "pgclone.sh's --slot"
        );
        assert!(Args::try_parse_from(["pgclone", "--primary-pgdata", "/pg", "-r", "10"]).is_err(), "below 32k");
        // One rule for units given: K, M, G are binary, however they are spelled.
        for same in ["2M", "2MB", "2MiB", "2048k", "2048"] {
            let r = resolve(&["--pghost", "db1", "--primary-pgdata", "/pg", "-r", same], &env()).unwrap();
            assert_eq!(r.transport.max_rate, Some(2 << 20), "-r {same}");
        }
        let mut e = env();
        e.vars.insert("PGAPPNAME", "from_env".into());
        let flags =
            ["--pghost", "db1", "--primary-pgdata", "/pg", "-R", "--recovery-option", "recovery_min_apply_delay=5min"];
        let r = resolve(&flags, &e).unwrap().recovery.unwrap();
        assert_eq!(r.application_name, "from_env");
        assert_eq!(r.options, vec![("recovery_min_apply_delay".to_string(), "5min".to_string())]);
        assert!(Args::try_parse_from(["pgclone", "--primary-pgdata", "/pg", "--recovery-option", "=x"]).is_err());
        let c = resolve(&["--pghost", "db1", "--primary-pgdata", "/pg", "-P"], &env()).unwrap();
        assert_eq!(c.progress, progress::Mode::Bar, "-P alone");
        let c = resolve(&["--pghost", "db1", "--primary-pgdata", "/pg", "-S", "s2", "-R"], &env()).unwrap();
        assert_eq!((c.stream_slot.as_deref(), c.recovery.unwrap().slot.as_deref()), (Some("s2"), Some("s2")));
    }

    /// pg_basebackup names the slot -C creates with -S (or --slot); pgclone's own spelling is --create-slot NAME.
    #[test]
    fn create_slot_as_pg_basebackup_and_pgclone_spell_it() {
        let slots = |flags: &[&str]| {
            resolve(&[&["--pghost", "db1", "-D", "/r"], flags].concat(), &env()).map(|c| (c.create_slot, c.stream_slot))
        };
        let made = |name: &str| Ok((Some(name.to_string()), None));
        assert_eq!(slots(&["-C", "-S", "s1"]), made("s1"), "pg_basebackup's -C -S NAME");
        assert_eq!(slots(&["--create-slot", "--slot=s2"]), made("s2"), "pg_basebackup's long spelling");
        assert_eq!(slots(&["--create-slot", "s3"]), made("s3"));
        assert_eq!(slots(&["-S", "s4"]), Ok((None, Some("s4".to_string()))), "-S alone: an existing slot");
        assert_eq!(slots(&["-C"]), Err(ConfigError::UnnamedSlot));
        assert_eq!(slots(&["--create-slot", "a", "-S", "b"]), Err(ConfigError::SlotNamedTwice("a".into())));
        assert_eq!(slots(&["--slot", "s5"]), Err(ConfigError::SlotName("s5".into())));
    }

    #[test]
    fn primary_pgdata_is_optional_and_then_d_is_required() {
        let c = resolve(&["--pghost", "db1", "-D", "/r"], &env()).unwrap();
        assert_eq!((c.primary_pgdata, c.replica), (None, PathBuf::from("/r")), "the server will name it");
        assert_eq!(resolve(&["--pghost", "db1"], &env()).unwrap_err(), ConfigError::NoReplica);
    }

    #[test]
    fn host_from_pghost_unless_a_socket_directory() {
        let mut e = env();
        e.vars.insert("PGHOST", "db2".into());
        assert_eq!(resolve(&["--primary-pgdata", "/pg"], &e).unwrap().host, "db2");
        assert!(resolve(&["--primary-pgdata", "/pg"], &e).unwrap().pg.params.iter().all(|(k, _)| *k != "host"));
        e.vars.insert("PGHOST", "/var/run/postgresql".into());
        assert_eq!(resolve(&["--primary-pgdata", "/pg"], &e).unwrap_err(), ConfigError::NoHost);
        let local = resolve(&["--primary-pgdata", "/pg", "--no-ssh"], &e).unwrap();
        assert_eq!(local.host, "localhost");
        assert!(local.ssh.is_none() && local.transport.ssh.is_none());
    }

    #[test]
    fn the_ssh_host_and_login_are_plain_names_wherever_they_come_from() {
        let refused = |flags: &[&str], e: &Env| match resolve(&[flags, &["--primary-pgdata", "/pg"]].concat(), e) {
            Err(ConfigError::SshName { from, why, .. }) => (from, why),
            other => panic!("{flags:?}: {other:?}"),
        };
        let d = "host='$(touch /tmp/owned)' user=replicator";
        assert_eq!(refused(&["-d", d], &env()), ("-d", NameError::NotHostChar('$')));
        assert_eq!(refused(&["-d", "host=-oProxyCommand=id"], &env()), ("-d", NameError::NotHostChar('=')));
        assert_eq!(refused(&["--pghost=-db1"], &env()), ("-h", NameError::Option));
        let mut e = env();
        e.vars.insert("PGHOST", "db1;id".into());
        assert_eq!(refused(&[], &e), ("PGHOST", NameError::NotHostChar(';')));
        let login = refused(&["-h", "db1", "--ssh-user=-oProxyCommand=id"], &env());
        assert_eq!(login, ("--ssh-user", NameError::NotUserChar('=')));
        let err = resolve(&["-d", d, "--primary-pgdata", "/pg"], &env()).unwrap_err().to_string();
        assert_eq!(
            err,
            "the primary's host \"$(touch /tmp/owned)\" (from -d) is not handed to ssh: it contains '$', which is \
             not part of a host name or IP address; give a plain host name or IP address (the ssh login goes in \
             --ssh-user)"
        );
        for ok in ["host=db-1.example_net", "host=10.0.0.7", "host=::1", "postgresql://[2001:db8::7]:5433/postgres"] {
            assert!(resolve(&["-d", ok, "--primary-pgdata", "/pg", "--ssh-user", "pg@CORP"], &env()).is_ok(), "{ok}");
        }
        let local = resolve(&["-d", d, "--primary-pgdata", "/pg", "--no-ssh"], &env());
        assert!(local.is_ok(), "with --no-ssh the host never reaches ssh");
    }

    #[test]
    fn libpq_variables_of_our_own_leave_libpq_alone() {
        let mut e = env();
        e.vars.insert("PGCONNECT_TIMEOUT", "3".into());
        e.vars.insert("PGDATABASE", "app".into());
        let c = resolve(&["--pghost", "db1", "--primary-pgdata", "/pg", "--pguser", "rep"], &e).unwrap();
        assert!(c.pg.params.iter().all(|(k, _)| *k != "connect_timeout"));
        assert!(c.pg.params.contains(&("user", "rep".into())));
        assert_eq!(c.pg.sql_dbname, None);
    }

    #[test]
    fn tunnel_goes_to_pgport_then_env_then_5432() {
        let base = ["--pghost", "db1", "--primary-pgdata", "/pg", "--bypass-rep-traffic"];
        let mut e = env();
        assert_eq!(resolve(&base, &e).unwrap().pg.tunnel_to, Some(5432));
        e.vars.insert("PGPORT", "5433".into());
        assert_eq!(resolve(&base, &e).unwrap().pg.tunnel_to, Some(5433));
        let c = resolve(&[&base[..], &["--pgport", "6000"]].concat(), &e).unwrap();
        assert_eq!(c.pg.tunnel_to, Some(6000));
        assert_eq!(
            c.pg.params(Some(Path::new("/tmp/pgclone-x")))[..2],
            [("host", "/tmp/pgclone-x".to_string()), ("port", "6000".to_string())],
            "through the tunnel's socket, .s.PGSQL.6000 in the run directory"
        );
    }

    #[test]
    fn start_implies_recovery_settings() {
        let c = resolve(
            &["--pghost", "db1", "--primary-pgdata", "/pg", "--start", "--create-slot", "s1", "--replica-port", "5444"],
            &env(),
        )
        .unwrap();
        let r = c.recovery.unwrap();
        assert_eq!(r.application_name, "replica1", "this host's name by default");
        assert_eq!(r.slot.as_deref(), Some("s1"));
        assert_eq!(r.replica_port, Some(5444));
        assert_eq!(c.start.unwrap().wait_streaming, 120);
        let plain = resolve(&["--pghost", "db1", "--primary-pgdata", "/pg", "-R", "--application-name", "x"], &env());
        assert_eq!(plain.unwrap().recovery.unwrap().application_name, "x");
    }
}
