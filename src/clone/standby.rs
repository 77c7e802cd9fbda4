//! Standby setup: what turns a finished copy into a running standby (-R, --create-slot, --start).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::config::RecoveryConfig;
use super::CloneError;
use crate::error::{Cancelled, IoAt, IoContext};
use crate::pg::{Conn, PgError};
use crate::sys::cancel::Cancel;
use crate::sys::files;

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error("creating replication slot {slot} failed: {source}")]
    Slot { slot: String, source: PgError },
    #[error(
        "no pg_ctl for PostgreSQL {major} found (looked in --pg-bindir, /usr/lib/postgresql/{major}/bin and PATH): \
         install PostgreSQL {major}'s server binaries here, or give --pg-bindir DIR"
    )]
    NoPgCtl { major: u32 },
    #[error("pg_ctl could not start the standby in {dir}: {reason}")]
    Start { dir: PathBuf, reason: String },
    #[error("the standby did not show up streaming in the primary's pg_stat_replication within {secs} s{last}{why}")]
    NotStreaming { secs: u64, last: String, why: String },
    #[error("watching the standby failed: {0}")]
    Watch(PgError),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// What -R writes: how the standby reaches the primary.
pub struct Recovery {
    pub host: String,
    pub port: String,
    pub user: String,
    pub sslmode: Option<String>,
    pub password: Option<String>,
    /// What the flags say: application_name, slot, the standby's own port.
    pub standby: RecoveryConfig,
}

impl Recovery {
    /// The primary as `sql` reached it; `through`: the run went through an ssh tunnel to this host and port.
    pub fn new(config: &RecoveryConfig, sql: &Conn, through: Option<(&str, u16)>) -> Recovery {
        let (host, port) = match through {
            Some((host, port)) => (host.to_string(), port.to_string()),
            None => (sql.host(), sql.option("port").unwrap_or_default()),
        };
        Recovery {
            host,
            port,
            user: sql.user(),
            sslmode: sql.option("sslmode"),
            password: if config.password { sql.option("password") } else { None },
            standby: config.clone(),
        }
    }

    /// The lines appended to postgresql.auto.conf. primary_conninfo follows libpq's quoting (values in single
    /// quotes, \ and ' escaped), and the whole setting is a single-quoted GUC string ('' for ').
    pub fn settings(&self) -> String {
        let mut conninfo = vec![("host", self.host.as_str()), ("port", &self.port), ("user", &self.user)];
        if let Some(m) = &self.sslmode {
            conninfo.push(("sslmode", m));
        }
        if let Some(p) = &self.password {
            conninfo.push(("password", p));
        }
        conninfo.push(("application_name", &self.standby.application_name));
        let conninfo: Vec<String> =
            conninfo.iter().map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))).collect();
        let mut s = String::from("# Added by pgclone -R\n");
        s.push_str(&format!("primary_conninfo = '{}'\n", conninfo.join(" ").replace('\'', "''")));
        if let Some(slot) = &self.standby.slot {
            s.push_str(&format!("primary_slot_name = '{slot}'\n"));
        }
        if let Some(port) = self.standby.replica_port {
            s.push_str(&format!("port = {port}\n"));
        }
        for (key, value) in &self.standby.options {
            s.push_str(&format!("{key} = '{}'\n", value.replace('\'', "''")));
        }
        s
    }

    /// Appends the settings to postgresql.auto.conf (later lines win) and creates standby.signal: the server
    /// then starts as a standby streaming from the primary (high-availability.sgml, "Preparing for Standby").
    pub fn write(&self, replica: &Path) -> Result<(), StandbyError> {
        let conf = replica.join("postgresql.auto.conf");
        let mut f = files::append(&conf)?;
        f.write_all(self.settings().as_bytes()).and_then(|()| f.sync_all()).at("writing", &conf)?;
        let signal = replica.join("standby.signal");
        files::create_new(&signal)?.sync_all().at("creating", &signal)?;
        Ok(())
    }
}

/// --create-slot: a permanent copy of the stream's temporary slot. The temporary slot has held every WAL
/// segment since before the backup started, so its copy keeps exactly what the standby will ask for at its
/// first start. Made once the clone is complete, not at the start, so that a run that dies (even by
/// `kill -9`) leaves no permanent slot behind.
pub fn copy_slot(conn: &mut Conn, temporary: &str, name: &str) -> Result<(), StandbyError> {
    conn.query_params("SELECT pg_copy_physical_replication_slot($1, $2, false)", &[temporary, name])
        .map(drop)
        .map_err(|source| StandbyError::Slot { slot: name.to_string(), source })
}

/// What becomes of the --create-slot slot when the run fails after making it: a slot nobody uses keeps WAL on
/// the primary until its disk fills, so it is dropped, unless the standby is running after all (pg_ctl started
/// it, but it did not stream in time, or the run was interrupted while waiting), which will use it. Either
/// way the error says which.
pub fn settle_slot(conn: &mut Conn, name: &str, replica: &Path, error: String) -> CloneError {
    let slot = if super::preflight::live_postmaster(replica).is_some() {
        format!("the standby in {} is running and keeps replication slot {name}", replica.display())
    } else {
        match conn.query_params("SELECT pg_drop_replication_slot($1)", &[name]) {
            Ok(_) => format!("replication slot {name} was dropped again"),
            Err(e) => format!("replication slot {name} is left on the primary, dropping it failed: {e}"),
        }
    };
    CloneError::AfterSlot { error, slot }
}

/// pg_ctl of the primary's major: the standby must run the same major as the primary.
pub fn find_pg_ctl(bindir: Option<&Path>, search_path: &[PathBuf], major: u32) -> Result<PathBuf, StandbyError> {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    bindir
        .map(Path::to_path_buf)
        .into_iter()
        .chain([debian])
        .chain(search_path.iter().cloned())
        .map(|d| d.join("pg_ctl"))
        .find(|p| pg_ctl_major(p) == Some(major))
        .ok_or(StandbyError::NoPgCtl { major })
}

/// "pg_ctl (PostgreSQL) 15.18" → 15.
fn pg_ctl_major(pg_ctl: &Path) -> Option<u32> {
    let out = Command::new(pg_ctl).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last()?.split('.').next()?.parse().ok()
}

/// Starts the standby with pg_ctl, logging to `log` (pg_ctl -w waits until it accepts connections or has
/// reached its consistent state as a hot standby).
///
/// Without pgclone's PG* variables: the server and its walreceiver's libpq read them, so a PGPASSWORD given to
/// pgclone would let this first start stream and the next start (by systemd, without it) fail, and a PGPORT
/// would move the server's default port. The standby must run on what the clone wrote, as it will later.
pub fn start(pg_ctl: &Path, replica: &Path, log: &Path) -> Result<(), StandbyError> {
    let mut cmd = Command::new(pg_ctl);
    for (name, _) in std::env::vars_os().filter(|(k, _)| k.as_encoded_bytes().starts_with(b"PG")) {
        cmd.env_remove(name);
    }
    let out = cmd
        .arg("-D")
        .arg(replica)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "300", "start"])
        .stdin(Stdio::null())
        .output()
        .at("running", pg_ctl)?;
    if out.status.success() {
        return Ok(());
    }
    let reason = std::fs::read_to_string(log)
        .ok()
        .and_then(|l| l.lines().rfind(|l| l.contains("FATAL") || l.contains("PANIC")).map(str::to_string))
        .unwrap_or_else(|| crate::sys::ssh::last_line(&out.stderr));
    Err(StandbyError::Start { dir: replica.to_path_buf(), reason })
}

/// Waits until the primary's pg_stat_replication shows the standby streaming; returns its replay lag in bytes.
/// When it does not within `secs`, the error carries what the standby's log says about its walreceiver's last
/// failed connection (see `walreceiver_failure`).
pub fn wait_streaming(
    conn: &mut Conn,
    recovery: &Recovery,
    replica: &Path,
    startup_log: &Path,
    secs: u64,
    cancel: &Cancel,
) -> Result<u64, StandbyError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        let rows = conn
            .query_params(
                // sent_lsn rather than pg_current_wal_lsn(): the latter fails on a standby (cascading).
                "SELECT state, pg_wal_lsn_diff(sent_lsn, replay_lsn)::bigint \
                 FROM pg_stat_replication WHERE application_name = $1",
                &[&recovery.standby.application_name],
            )
            .map_err(StandbyError::Watch)?;
        if let Some(state) = rows.get(0, 0) {
            if state == "streaming" {
                return Ok(rows.get(0, 1).and_then(|l| l.parse().ok()).unwrap_or(0));
            }
            last = format!(" (last state: {state})");
        }
        cancel.check()?;
        if Instant::now() >= deadline {
            let why = walreceiver_failure(&log_files(replica, startup_log))
                .map(|line| format!("; its log says: {line}{}", login_hint(&line, recovery)))
                .unwrap_or_default();
            return Err(StandbyError::NotStreaming { secs, last, why });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Where the standby logs: the file `pg_ctl -l` gave its stderr, and, with `logging_collector = on` (copied from
/// the primary's configuration, as RHEL's packages set it), the files its syslogger writes, which the server
/// names in `current_logfiles` in its data directory as `FORMAT PATH` lines, PATH relative to the data
/// directory unless log_directory is absolute (src/backend/postmaster/syslogger.c, update_metainfo_datafile).
fn log_files(replica: &Path, startup_log: &Path) -> Vec<PathBuf> {
    let listed = std::fs::read_to_string(replica.join("current_logfiles")).unwrap_or_default();
    let collected = listed.lines().filter_map(|l| l.split_once(' ')).map(|(_, file)| replica.join(file));
    std::iter::once(startup_log.to_path_buf()).chain(collected).collect()
}

/// The last failed connection of the walreceiver in `logs` (read in order, the collector's files after
/// pg_ctl's): "could not connect to the primary server: <libpq's message>" (src/backend/replication/
/// walreceiver.c; from PostgreSQL 17 prefixed `streaming replication receiver "NAME"`), from that phrase on.
fn walreceiver_failure(logs: &[PathBuf]) -> Option<String> {
    const PHRASE: &str = "could not connect to the primary server";
    logs.iter()
        .filter_map(|f| std::fs::read(f).ok())
        .flat_map(|text| {
            let text = String::from_utf8_lossy(&text).into_owned();
            text.lines().filter_map(|l| l.find(PHRASE).map(|at| l[at..].trim().to_string())).collect::<Vec<_>>()
        })
        .last()
}

/// The way out when the walreceiver's libpq found no password ("fe_sendauth: no password supplied",
/// interfaces/libpq/fe-auth.c) or the primary refused it ("password authentication failed for user",
/// libpq/auth.c): --start runs the standby without pgclone's PGPASSWORD, as it will run after a restart.
fn login_hint(line: &str, r: &Recovery) -> String {
    let password = ["no password supplied", "password authentication failed"].iter().any(|p| line.contains(p));
    if !password {
        return String::new();
    }
    format!(
        " (the standby cannot log in to the primary: give it a password with --conninfo-password, written into \
         primary_conninfo, or a line {}:{}:*:{}:PASSWORD in ~/.pgpass, mode 0600, of the OS user it runs as)",
        r.host, r.port, r.user
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_quote_conninfo_for_libpq_and_the_config_file() {
        let r = Recovery {
            host: "db.example".into(),
            port: "5433".into(),
            user: "rep'l".into(),
            sslmode: Some("require".into()),
            password: None,
            standby: RecoveryConfig {
                password: false,
                application_name: "replica1".into(),
                slot: Some("standby1".into()),
                replica_port: Some(5434),
                options: vec![
                    ("restore_command".into(), "cp '/arch/%f' %p".into()),
                    ("recovery_min_apply_delay".into(), "5min".into()),
                ],
            },
        };
        assert_eq!(
            r.settings(),
            "# Added by pgclone -R\n\
             primary_conninfo = 'host=''db.example'' port=''5433'' user=''rep\\''l'' sslmode=''require'' \
             application_name=''replica1'''\n\
             primary_slot_name = 'standby1'\n\
             port = 5434\n\
             restore_command = 'cp ''/arch/%f'' %p'\n\
             recovery_min_apply_delay = '5min'\n"
        );
    }

    fn recovery() -> Recovery {
        Recovery {
            host: "db1".into(),
            port: "5432".into(),
            user: "replicator".into(),
            sslmode: None,
            password: None,
            standby: RecoveryConfig {
                password: false,
                application_name: "replica1".into(),
                slot: None,
                replica_port: None,
                options: Vec::new(),
            },
        }
    }

    #[test]
    fn the_walreceivers_last_failure_comes_from_pg_ctls_log_or_the_collectors() {
        let d = tempfile::tempdir().unwrap();
        let (replica, startup) = (d.path().join("data"), d.path().join("startup.log"));
        std::fs::create_dir_all(replica.join("log")).unwrap();
        std::fs::write(
            &startup,
            "2026-12-06 12:00:00.100 UTC [77] LOG:  database system is ready to accept read-only connections\n\
             2026-12-06 12:00:00.200 UTC [78] FATAL:  could not connect to the primary server: connection to server \
             at \"db1\" (10.0.0.1), port 5432 failed: Connection refused\n\
             2026-12-06 12:00:05.200 UTC [79] FATAL:  could not connect to the primary server: connection to server \
             at \"db1\" (10.0.0.1), port 5432 failed: fe_sendauth: no password supplied\n",
        )
        .unwrap();
        let only_startup = log_files(&replica, &startup);
        let line = walreceiver_failure(&only_startup).unwrap();
        assert_eq!(
            line,
            "could not connect to the primary server: connection to server at \"db1\" (10.0.0.1), port 5432 failed: \
             fe_sendauth: no password supplied"
        );
        let hint = login_hint(&line, &recovery());
        assert!(hint.contains("--conninfo-password") && hint.contains("db1:5432:*:replicator:PASSWORD"), "{hint}");

        // logging_collector = on: the server lists its files in current_logfiles, relative to the data directory.
        std::fs::write(
            replica.join("current_logfiles"),
            "stderr log/postgresql-12.log\ncsvlog log/postgresql-12.csv\n",
        )
        .unwrap();
        std::fs::write(
            replica.join("log/postgresql-12.log"),
            "2026-12-06 12:00:10.000 UTC [80] FATAL:  streaming replication receiver \"walreceiver\" could not connect \
             to the primary server: connection to server at \"db1\" (10.0.0.1), port 5432 failed: FATAL:  password \
             authentication failed for user \"replicator\"\n",
        )
        .unwrap();
        let line = walreceiver_failure(&log_files(&replica, &startup)).unwrap();
        assert!(line.starts_with("could not connect") && line.ends_with("for user \"replicator\""), "{line}");
        assert!(!login_hint(&line, &recovery()).is_empty(), "a refused password is a login problem too");

        let refused =
            "could not connect to the primary server: connection to server at \"db1\" failed: Connection refused";
        assert_eq!(login_hint(refused, &recovery()), "", "not a login problem");
        assert_eq!(walreceiver_failure(&[d.path().join("no-such.log")]), None);
    }

    #[test]
    fn write_appends_and_signals() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("postgresql.auto.conf"), "work_mem = '4MB'\n").unwrap();
        let r = Recovery {
            host: "h".into(),
            port: "1".into(),
            user: "u".into(),
            sslmode: None,
            password: Some("p w".into()),
            standby: RecoveryConfig {
                password: true,
                application_name: "a".into(),
                slot: None,
                replica_port: None,
                options: Vec::new(),
            },
        };
        r.write(d.path()).unwrap();
        let conf = std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap();
        assert!(conf.starts_with("work_mem = '4MB'\n# Added by pgclone -R\n"), "{conf}");
        assert!(conf.contains("password=''p w''"), "{conf}");
        assert!(d.path().join("standby.signal").exists());
    }
}
