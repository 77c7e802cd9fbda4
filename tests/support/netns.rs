//! Fixtures for the standby-flag and fault tests (tests/standby.rs, tests/faults.rs), kept out of
//! tests/common/mod.rs: include with `#[path = "common/netns.rs"] mod netns;` next to `mod common;`.
//!
//! - `Run`/`Proc`: a pgclone invocation with any extra flags, run to completion or in the background
//!   (signals, waiting for a log line), environment as the harness's (lab user, lab tag, own TMPDIR).
//! - `Server`: starts a cloned data directory with `pg_ctl` *without* touching what pgclone wrote
//!   (no conninfo, no port of ours: only `-c listen_addresses=127.0.0.1` on the command line), with
//!   the password source under the test's control.
//! - `Netns` + `NsPostgres` + `NsSshd` = `Host`: a primary on "its own host": a network namespace with
//!   one end of a veth pair (10.231.x.y/30), PostgreSQL and sshd bound to its address, reached by
//!   pgclone from the root namespace over the veth; the link can be cut and restored.
//! - `Tmpfs`: a small filesystem for the replica (ENOSPC tests).
//!
//! Everything a fixture creates (namespace, veth, processes in the namespace, mounts) is removed by its
//! Drop. Names are unique per fixture, so tests run in parallel.
#![allow(dead_code)]

use super::*;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

const TAG_VAR: &str = "PGCLONE_TEST_TAG";
/// Metric of the per-namespace blackhole route (see `Netns::new`).
const BLACKHOLE_METRIC: &str = "1000";

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    u32::from_ne_bytes(b)
}

/// Run a root-side command (ip, mount, ...) and panic with its output unless it succeeds.
fn root_run(program: &str, args: &[&str]) -> String {
    let out = run_bounded(Command::new(program).args(args), Duration::from_secs(60));
    assert!(out.success(), "{}", out.report());
    out.stdout
}

// ---------------------------------------------------------------------------------------------
// SQL endpoints and checks shared by harness primaries, namespace primaries and our standbys
// ---------------------------------------------------------------------------------------------

/// Anything we can run SQL on as the superuser.
pub trait Sql {
    fn label(&self) -> String;
    fn try_sql(&self, sql: &str) -> Result<String, String>;
    fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("SQL on {} failed: {e}\nSQL: {sql}", self.label()))
    }
}

impl Sql for Postgres {
    fn label(&self) -> String {
        self.name.clone()
    }
    fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_psql(sql)
    }
}

/// psql (PG15 client) as the lab user to `host:port`, `-At`, stop on error.
pub fn psql_at(lab: &Lab, host: &str, port: u16, sql: &str) -> Result<String, String> {
    let out =
        run_bounded(
            lab.cmd(Path::new(PG15_BIN).join("psql"))
                .args(["-h", host, "-p", &port.to_string(), "-U", SUPERUSER])
                .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql]),
            Duration::from_secs(60),
        );
    if out.success() {
        Ok(out.stdout.trim_end().to_string())
    } else {
        Err(format!("psql to {host}:{port} failed: {}", out.stderr.trim()))
    }
}

/// The harness's fingerprint, for servers the harness did not start.
pub fn fingerprint(db: &dyn Sql) -> String {
    db.sql(&fingerprint_sql())
}

/// Wait until `upstream`'s pg_stat_replication shows `app` streaming.
pub fn wait_streaming_on(upstream: &dyn Sql, app: &str, timeout: Duration, log: Option<&Path>) {
    let sql = format!("select state from pg_stat_replication where application_name = '{app}'");
    wait_for(&format!("{app} to stream from {}", upstream.label()), timeout, || match upstream.try_sql(&sql)? {
        s if s == "streaming" => Ok(()),
        s => Err(format!("state {s:?}\n{}", log.map(log_tail).unwrap_or_default())),
    });
}

/// Wait until `upstream` saw `app` replay past `lsn`.
pub fn wait_replayed_on(upstream: &dyn Sql, app: &str, lsn: &str, timeout: Duration) {
    let sql = format!(
        "select replay_lsn >= '{lsn}'::pg_lsn, replay_lsn from pg_stat_replication where application_name = '{app}'"
    );
    wait_for(&format!("{app} to replay up to {lsn} on {}", upstream.label()), timeout, || {
        let row = upstream.try_sql(&sql)?;
        if row.starts_with("t|") {
            Ok(())
        } else {
            Err(format!("replay_lsn row {row:?}"))
        }
    });
}

/// What of pgclone is left on a primary and around it: replication slots other than `allowed_slots`,
/// `pgclone*` sessions, this lab's tagged or named processes (local and in ssh sessions), run directories
/// in `dirs` (each `(dir, prefix)`).
pub fn remains(lab: &Lab, primary: &dyn Sql, allowed_slots: &[&str], dirs: &[(PathBuf, &str)]) -> Vec<String> {
    let allowed: Vec<String> = allowed_slots.iter().map(|s| format!("'{s}'")).collect();
    let allowed = if allowed.is_empty() { "''".to_string() } else { allowed.join(", ") };
    let sql = format!(
        "select 'slot ' || concat_ws(' ', slot_name, slot_type, 'temporary=' || temporary, 'active=' || active) \
         from pg_replication_slots where slot_name not in ({allowed}) \
         union all select 'session ' || concat_ws(' ', pid, application_name, backend_type, state) \
         from pg_stat_activity where application_name like 'pgclone%'"
    );
    let mut found: Vec<String> = match primary.try_sql(&sql) {
        Ok(rows) => rows.lines().map(str::to_string).collect(),
        Err(e) => vec![e],
    };
    found.extend(lab.leftover_processes());
    for (dir, prefix) in dirs {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    found.push(format!("directory {}", e.path().display()));
                }
            }
        }
    }
    found
}

/// Wait up to `within` until `remains` is empty; returns how long that took.
pub fn wait_clean(
    lab: &Lab,
    primary: &dyn Sql,
    allowed_slots: &[&str],
    dirs: &[(PathBuf, &str)],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    wait_for("pgclone's slots, sessions, processes and run directories to be gone", within, || {
        match remains(lab, primary, allowed_slots, dirs) {
            v if v.is_empty() => Ok(()),
            v => Err(v.join("\n")),
        }
    });
    start.elapsed()
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
// pgclone runs
// ---------------------------------------------------------------------------------------------

static RUNS: AtomicU32 = AtomicU32::new(0);

/// One pgclone invocation: base arguments (from the harness's `Pgclone` or built for a `Host`) plus
/// the flags under test.
pub struct Run {
    lab: Lab,
    pub args: Vec<OsString>,
    /// Environment changes on top of the lab's: `Some` sets, `None` removes.
    pub env: Vec<(String, Option<String>)>,
    pub timeout: Duration,
}

impl Run {
    /// The harness's valid clone of its primary over its sshd (`Pgclone::args`), nothing added yet.
    pub fn from_harness(lab: &Lab, p: &Pgclone) -> Run {
        Run { lab: lab.clone(), args: p.args(), env: Vec::new(), timeout: p.timeout.max(Duration::from_secs(180)) }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Replace the value of `--flag` (which must be present).
    pub fn set(&mut self, flag: &str, value: impl AsRef<OsStr>) -> &mut Self {
        let i = self.args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag} in {:?}", self.args));
        self.args[i + 1] = value.as_ref().to_os_string();
        self
    }

    /// TMPDIR of pgclone runs: `<work dir>/g5-tmp`, where the run directories `pgclone-*` go.
    pub fn tmpdir(lab: &Lab) -> PathBuf {
        let dir = lab.path().join("g5-tmp");
        if !dir.exists() {
            lab.mkdir("g5-tmp");
        }
        dir
    }

    /// Start pgclone in the background as the lab user, with the lab's tag and our TMPDIR; stdout and
    /// stderr go to `<work dir>/g5-run-<n>.{stdout,stderr}`.
    pub fn spawn(&self) -> Proc {
        let lab = &self.lab;
        let (tag_k, tag_v) = {
            let t = lab.tag();
            let (k, v) = t.split_once('=').expect("tag is VAR=value");
            (k.to_string(), v.to_string())
        };
        assert_eq!(tag_k, TAG_VAR);
        let mut cmd = lab.cmd(lab.pgclone_bin());
        cmd.args(&self.args).env(&tag_k, &tag_v).env("TMPDIR", Self::tmpdir(lab));
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let n = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
        let stdout = lab.path().join(format!("g5-run-{n}.stdout"));
        let stderr = lab.path().join(format!("g5-run-{n}.stderr"));
        let file = |p: &Path| {
            let f = fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
            lab.chown(p);
            f
        };
        cmd.stdin(Stdio::null()).stdout(file(&stdout)).stderr(file(&stderr));
        let what = format!("pgclone {}", self.args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        println!("[run {n}] {what}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        Proc { n, what, child, stdout, stderr, started: Instant::now(), timeout: self.timeout }
    }

    pub fn run(&self) -> CmdOutput {
        self.spawn().wait()
    }
}

/// A pgclone running in the background; SIGKILLed if still running when dropped.
pub struct Proc {
    pub n: u32,
    what: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    pub started: Instant,
    timeout: Duration,
}

fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned()
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).unwrap_or_else(|e| panic!("kill {sig:?} {}: {e}", self.pid()));
        println!("[run {}] sent {sig:?} after {:.2?}", self.n, self.started.elapsed());
    }

    pub fn stderr_so_far(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The last non-empty stderr line so far.
    pub fn last_line(&self) -> String {
        self.stderr_so_far().lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Polls stderr every 10 ms until it holds `needle`; panics if pgclone exits first or after
    /// `timeout`. Returns the time since the start.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let err = self.stderr_so_far();
            if err.contains(needle) {
                let t = self.started.elapsed();
                println!("[run {}] logged {needle:?} after {t:.2?}", self.n);
                return t;
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "[run {}] exited ({st}) before logging {needle:?}\n{}",
                    self.n,
                    tail_lines(&self.stderr_so_far(), 40)
                );
            }
            if start.elapsed() > timeout {
                panic!("[run {}] did not log {needle:?} within {timeout:?}\n{}", self.n, tail_lines(&err, 40));
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Wait until it exits, at most until `deadline` after its start (panics then, after killing it).
    pub fn wait_until(mut self, deadline: Duration) -> CmdOutput {
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if self.started.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "[run {}] still running {deadline:?} after its start: {}\n--- stderr ---\n{}",
                    self.n,
                    self.what,
                    tail_lines(&self.stderr_so_far(), 40)
                );
            }
            sleep(Duration::from_millis(20));
        };
        println!("[run {}] finished after {:.2?}: {status}", self.n, self.started.elapsed());
        CmdOutput {
            what: self.what.clone(),
            status,
            stdout: read_lossy(&self.stdout),
            stderr: read_lossy(&self.stderr),
        }
    }

    /// Wait until it exits, bounded by the run's timeout.
    pub fn wait(self) -> CmdOutput {
        let t = self.timeout;
        self.wait_until(t)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// pgclone's failure contract, checked without assuming what failed: a normal exit with code 1, and
/// exactly one `pgclone: error: ` line, the last one of stderr. Returns that line.
pub fn assert_one_error_line(out: &CmdOutput) -> String {
    assert_eq!(out.status.code(), Some(1), "expected exit code 1\n{}", out.report());
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("pgclone: error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one `pgclone: error:` line, got {errors:?}\n{}", out.report());
    let last = out.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert_eq!(last, errors[0], "the error line is not stderr's last line\n{}", out.report());
    last.to_string()
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

/// A PostgreSQL server on a cloned data directory, started with `pg_ctl` as the lab user. Nothing is
/// written into the directory: its port is whatever the config files say (pgclone's `--replica-port`),
/// only `listen_addresses = 127.0.0.1` is given on pg_ctl's command line (the primary's value may be an
/// address of another namespace). Stopped (`-m immediate`) when dropped.
pub struct Server {
    lab: Lab,
    pub name: String,
    pub data: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    bin: PathBuf,
}

impl Server {
    pub fn start(lab: &Lab, data: &Path, name: &str, port: u16, creds: Creds) -> Server {
        let s = Server {
            lab: lab.clone(),
            name: name.to_string(),
            data: data.to_path_buf(),
            port,
            log: lab.path().join(format!("{name}.log")),
            bin: PathBuf::from(PG15_BIN),
        };
        let mut cmd = lab.cmd(s.bin.join("pg_ctl"));
        cmd.args(["start", "-w", "-t", "120", "-o", "-c listen_addresses=127.0.0.1", "-D"])
            .arg(data)
            .arg("-l")
            .arg(&s.log);
        match creds {
            Creds::Env => {}
            Creds::PassFile(f) => {
                cmd.env_remove("PGPASSWORD").env("PGPASSFILE", f);
            }
            Creds::Nothing => {
                cmd.env_remove("PGPASSWORD").env("PGPASSFILE", lab.path().join("no-such-pgpass"));
            }
        }
        let out = run_bounded(&mut cmd, Duration::from_secs(150));
        assert!(out.success(), "{name} did not start\n{}\n{}", out.report(), log_tail(&s.log));
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
            bin: PathBuf::from(PG15_BIN),
        }
    }

    /// `pg_ctl stop` (fast), asserting it worked.
    pub fn stop(&self) {
        let out = run_bounded(
            self.lab.cmd(self.bin.join("pg_ctl")).args(["stop", "-m", "fast", "-w", "-t", "60", "-D"]).arg(&self.data),
            Duration::from_secs(90),
        );
        assert!(out.success(), "stopping {}\n{}", self.name, out.report());
    }
}

impl Sql for Server {
    fn label(&self) -> String {
        self.name.clone()
    }
    fn try_sql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.lab, "127.0.0.1", self.port, sql)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = run_bounded(
                self.lab
                    .cmd(self.bin.join("pg_ctl"))
                    .args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"])
                    .arg(&self.data),
                Duration::from_secs(90),
            );
        }
    }
}

/// A ~/.pgpass-format file (0600, lab user) with one line `host:port:*:user:password`.
pub fn pgpass_file(lab: &Lab, name: &str, host: &str, port: u16) -> PathBuf {
    let p = lab.write(name, &format!("{host}:{port}:*:{SUPERUSER}:{PASSWORD}\n"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Network namespace: the primary's own host
// ---------------------------------------------------------------------------------------------

/// A network namespace `g5ns<i>` with a veth pair: `g5h<i>` (root namespace, `host_addr`) and `g5n<i>`
/// (inside, `ns_addr`), a /30 of 10.231.0.0/16 chosen by `i`; loopback up inside; a blackhole route for
/// the /30 in the root namespace so that nothing for it ever leaves the machine. Creating the
/// namespace under a name derived from `i` is what reserves the subnet among parallel tests. Dropping it
/// kills what still runs inside, deletes the veth pair and the namespace.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: String,
    pub ns_addr: String,
}

impl Netns {
    pub fn new() -> Netns {
        assert!(
            running_as_root(),
            "the fault tests need root: they create network namespaces, veth pairs and tmpfs mounts"
        );
        let mut last = String::new();
        for _ in 0..100 {
            let i = random_u32() % 16384;
            let name = format!("g5ns{i}");
            let made = run_bounded(Command::new("ip").args(["netns", "add", &name]), Duration::from_secs(30));
            if !made.success() {
                last = made.stderr.trim().to_string();
                continue; // taken by a parallel test
            }
            let (a, b) = (i / 64, (i % 64) * 4);
            let ns = Netns {
                host_if: format!("g5h{i}"),
                ns_if: format!("g5n{i}"),
                host_addr: format!("10.231.{a}.{}", b + 1),
                ns_addr: format!("10.231.{a}.{}", b + 2),
                name,
            };
            let veth = run_bounded(
                Command::new("ip").args(["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.ns_if]),
                Duration::from_secs(30),
            );
            if !veth.success() {
                // A leftover of a killed earlier run; Drop removes the namespace, try another one.
                println!("veth {} not created ({}), trying another subnet", ns.host_if, veth.stderr.trim());
                continue;
            }
            // Safety net: while the veth's own route is gone (link cut), traffic to the /30 must vanish
            // here, never follow the default route out of this machine. Lower priority than the
            // link's route (metric 0), so it only matters while that one is absent.
            let guard = run_bounded(
                Command::new("ip").args(["route", "add", "blackhole", &ns.subnet(), "metric", BLACKHOLE_METRIC]),
                Duration::from_secs(30),
            );
            if !guard.success() {
                println!(
                    "blackhole route for {} not added ({}), trying another subnet",
                    ns.subnet(),
                    guard.stderr.trim()
                );
                continue;
            }
            root_run("ip", &["link", "set", &ns.ns_if, "netns", &ns.name]);
            root_run("ip", &["addr", "add", &format!("{}/30", ns.host_addr), "dev", &ns.host_if]);
            root_run("ip", &["link", "set", &ns.host_if, "up"]);
            let inside = |args: &[&str]| {
                let mut a = vec!["netns", "exec", &ns.name, "ip"];
                a.extend_from_slice(args);
                root_run("ip", &a);
            };
            inside(&["addr", "add", &format!("{}/30", ns.ns_addr), "dev", &ns.ns_if]);
            inside(&["link", "set", &ns.ns_if, "up"]);
            inside(&["link", "set", "lo", "up"]);
            wait_for("the veth pair to pass traffic", Duration::from_secs(10), || {
                // A TCP connect to a closed port inside answers at once with RST once the link is up.
                match std::net::TcpStream::connect_timeout(
                    &format!("{}:9", ns.ns_addr).parse().unwrap(),
                    Duration::from_millis(500),
                ) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
            println!("netns {}: {} ({}) <-> {} ({})", ns.name, ns.host_if, ns.host_addr, ns.ns_if, ns.ns_addr);
            return ns;
        }
        panic!("could not create a network namespace g5ns<N> with its veth pair after 100 tries (last: {last})");
    }

    /// The /30 of the veth pair.
    pub fn subnet(&self) -> String {
        let (base, last) = self.host_addr.rsplit_once('.').unwrap();
        format!("{base}.{}/30", last.parse::<u32>().unwrap() - 1)
    }

    /// A command that runs `program` inside the namespace as the lab user (`ip netns exec` + `setpriv`),
    /// with the lab's clean environment and working directory.
    pub fn cmd(&self, lab: &Lab, program: impl AsRef<OsStr>) -> Command {
        ns_cmd(&self.name, lab, program)
    }

    /// Cut the link: the root namespace's end of the veth goes down. Its route goes with it, and the
    /// blackhole route then swallows every packet for the /30 (silently, as a cut cable would).
    pub fn cut(&self) {
        root_run("ip", &["link", "set", &self.host_if, "down"]);
        // The primary's host must really be out of reach now.
        let probe = std::net::TcpStream::connect_timeout(
            &format!("{}:9", self.ns_addr).parse().unwrap(),
            Duration::from_millis(500),
        );
        assert!(
            probe.as_ref().is_err_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused),
            "{} still answers after the cut: {probe:?}",
            self.ns_addr
        );
        println!("netns {}: link {} down ({})", self.name, self.host_if, probe.unwrap_err());
    }

    pub fn restore(&self) {
        root_run("ip", &["link", "set", &self.host_if, "up"]);
        println!("netns {}: link {} up", self.name, self.host_if);
    }

    /// Pids of processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = run_bounded(Command::new("ip").args(["netns", "pids", &self.name]), Duration::from_secs(30));
        out.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Everything in the namespace was started by this test (its PostgreSQL, sshd, their children).
        for pid in self.pids() {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
        let _ = Command::new("ip")
            .args(["route", "del", "blackhole", &self.subnet(), "metric", BLACKHOLE_METRIC])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// `program` inside namespace `ns_name` as the lab user (`ip netns exec` + `setpriv`), with the lab's
/// clean environment and working directory.
fn ns_cmd(ns_name: &str, lab: &Lab, program: impl AsRef<OsStr>) -> Command {
    let template = lab.cmd("true");
    let user = lab.user();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns_name, "setpriv"])
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", "--"])
        .arg(program)
        .env_clear()
        .current_dir(lab.path());
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd
}

/// A PG15 primary inside a namespace, listening on `addr` only; pg_hba admits the /30 (and 127.0.0.1,
/// for the test's own queries to standbys that inherit this pg_hba.conf).
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
        assert_eq!(pg.sql("select current_setting('server_version_num')::int / 10000"), "15");
        pg
    }

    /// pg_ctl ACTION inside the namespace (a restart's new postmaster must live there).
    fn pg_ctl(&self, action: &[&str]) {
        let mut cmd = ns_cmd(&self.ns_name, &self.lab, Path::new(PG15_BIN).join("pg_ctl"));
        cmd.args(action).args(["-w", "-t", "120", "-D"]).arg(&self.data).arg("-l").arg(&self.log);
        let out = run_bounded(&mut cmd, Duration::from_secs(150));
        assert!(out.success(), "pg_ctl {action:?} {}\n{}\n{}", self.name, out.report(), log_tail(&self.log));
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

    /// Bytes of the files a clone copies, roughly: everything but pg_wal (the planned size).
    pub fn data_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let mut n = 0;
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                let Ok(m) = fs::symlink_metadata(e.path()) else { continue };
                if m.is_dir() {
                    n += walk(&e.path());
                } else if m.is_file() {
                    n += m.len();
                }
            }
            n
        }
        let mut n = 0;
        for e in fs::read_dir(&self.data).unwrap().flatten() {
            if e.file_name() == "pg_wal" {
                continue;
            }
            let m = fs::symlink_metadata(e.path()).unwrap();
            n += if m.is_dir() { walk(&e.path()) } else { m.len() };
        }
        n
    }
}

impl Sql for NsPostgres {
    fn label(&self) -> String {
        format!("{} ({}:{})", self.name, self.addr, self.port)
    }
    fn try_sql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.lab, &self.addr, self.port, sql)
    }
}

impl Drop for NsPostgres {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = run_bounded(
                self.lab
                    .cmd(Path::new(PG15_BIN).join("pg_ctl"))
                    .args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"])
                    .arg(&self.data),
                Duration::from_secs(90),
            );
        }
    }
}

/// A real sshd inside a namespace on `addr:port`, as the lab user; its sessions carry the lab's tag
/// and TMPDIR=`remote_tmp` (where the rsync daemon makes its private directory). Killed when dropped.
pub struct NsSshd {
    pub addr: String,
    pub port: u16,
    pub key: PathBuf,
    pub config: PathBuf,
    pub remote_tmp: PathBuf,
    dir: PathBuf,
    host_pub: String,
    lab: Lab,
    _process: Bg,
}

impl NsSshd {
    pub fn start(lab: &Lab, ns: &Netns) -> NsSshd {
        let dir = lab.mkdir("ns-ssh");
        let remote_tmp = lab.mkdir("ns-remote-tmp");
        let port = free_port();
        let addr = ns.ns_addr.clone();
        let SshdFiles { host_key, key, config: sshd_config } = sshd_files(lab, &dir, &addr, port, &remote_tmp);
        let mut cmd = ns.cmd(lab, "/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"]).arg(&sshd_config);
        let mut process = lab.spawn("ns-sshd", cmd);
        wait_for("sshd in the namespace to accept connections", Duration::from_secs(20), || {
            process.check_running()?;
            std::net::TcpStream::connect((addr.as_str(), port)).map(|_| ()).map_err(|e| e.to_string())
        });
        let host_pub = fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_pub = host_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let known_hosts = lab.write(dir.join("known_hosts"), &format!("[{addr}]:{port} {host_pub}\n"));
        let config = Sshd::write_client_config(lab, &known_hosts, &key, "ssh_config");
        let sshd = NsSshd { addr, port, key, config, remote_tmp, dir, host_pub, lab: lab.clone(), _process: process };
        wait_for("ssh login into the namespace", Duration::from_secs(20), || {
            let out = run_bounded(&mut sshd.ssh_cmd("true"), Duration::from_secs(15));
            if out.success() {
                Ok(())
            } else {
                Err(out.report())
            }
        });
        sshd
    }

    pub fn ssh_cmd(&self, remote: &str) -> Command {
        let mut cmd = self.lab.cmd("ssh");
        cmd.arg("-F").arg(&self.config).args([
            "-p",
            &self.port.to_string(),
            "-l",
            &self.lab.user().name,
            &self.addr,
            remote,
        ]);
        cmd
    }
}

/// A primary on its own host: namespace, PG15 primary with pgbench data, sshd. Fields drop in order
/// (servers before the namespace, the namespace before the work dir).
pub struct Host {
    pub primary: NsPostgres,
    pub sshd: NsSshd,
    pub ns: Netns,
    pub lab: Lab,
}

impl Host {
    pub fn new(name: &str, scale: u32, conf: &[&str]) -> Host {
        let lab = Lab::new(name);
        let ns = Netns::new();
        let primary = NsPostgres::start(&lab, &ns, "primary", conf);
        if scale > 0 {
            primary.pgbench_init(scale);
        }
        let sshd = NsSshd::start(&lab, &ns);
        Host { primary, sshd, ns, lab }
    }

    /// A valid clone of the primary into `replica`, over the veth.
    pub fn pgclone(&self, replica: &Path) -> Run {
        let mut r = Run { lab: self.lab.clone(), args: Vec::new(), env: Vec::new(), timeout: Duration::from_secs(180) };
        r.args(["--pghost", &self.primary.addr, "--pgport", &self.primary.port.to_string(), "--pguser", SUPERUSER])
            .arg("--primary-pgdata")
            .arg(&self.primary.data)
            .arg("--replica-pgdata")
            .arg(replica)
            .args(["--ssh-user", &self.lab.user().name])
            .arg("--ssh-key")
            .arg(&self.sshd.key)
            .args(["--ssh-port", &self.sshd.port.to_string()])
            .arg("--ssh-config")
            .arg(&self.sshd.config)
            .args(["--parallel", "2", "--verbose"]);
        r
    }

    /// Run directories pgclone may leave: locally in our TMPDIR, remotely in the sessions' TMPDIR.
    pub fn run_dirs(&self) -> Vec<(PathBuf, &'static str)> {
        vec![(Run::tmpdir(&self.lab), "pgclone-"), (self.sshd.remote_tmp.clone(), "pgclone-rsyncd.")]
    }

    pub fn remains(&self, allowed_slots: &[&str]) -> Vec<String> {
        remains(&self.lab, &self.primary, allowed_slots, &self.run_dirs())
    }

    /// Wait up to `within` until nothing of pgclone remains; returns how long it took.
    pub fn wait_clean(&self, within: Duration) -> Duration {
        wait_clean(&self.lab, &self.primary, &[], &self.run_dirs(), within)
    }
}

// ---------------------------------------------------------------------------------------------
// A small filesystem for the replica
// ---------------------------------------------------------------------------------------------

/// A tmpfs of `bytes` at `<work dir>/<name>`, owned by the lab user; unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(lab: &Lab, name: &str, bytes: u64) -> Tmpfs {
        let path = lab.mkdir(name);
        let user = lab.user();
        let opts = format!("size={}k,mode=0700,uid={},gid={}", bytes.div_ceil(1024), user.uid, user.gid);
        root_run("mount", &["-t", "tmpfs", "-o", &opts, "g5tmpfs", &path.to_string_lossy()]);
        println!("tmpfs of {} MB at {}", bytes >> 20, path.display());
        Tmpfs { path }
    }

    pub fn free_bytes(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.path).expect("statvfs");
        st.f_bavail * st.f_frsize
    }

    /// Fill the filesystem (as root) with `<mount>/filler` until ENOSPC; returns the bytes written.
    pub fn fill(&self) -> u64 {
        let mut f = fs::File::create(self.path.join("filler")).expect("create filler");
        let chunk = vec![0x5au8; 1 << 20];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(w) => n += w as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        n
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.path.to_string_lossy().into_owned();
        let ok = Command::new("umount").arg(&p).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", &p]).status();
        }
    }
}
