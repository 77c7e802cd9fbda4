//! Running things without hanging the suite: every command is bounded (killed and reported after a
//! timeout), every background process is owned by a value whose Drop kills it, and every wait polls with
//! a deadline. Also the OS user all of it runs as: PostgreSQL and pgclone refuse root, so a root test run
//! switches every child to the unprivileged `pgclonetest`.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

const TEST_OS_USER: &str = "pgclonetest";
/// Default bound for short helper commands (initdb, psql, pgbench -i, pg_basebackup, ssh).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// The OS user
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

/// Looked up (and as root created) once per test process; every test shares it.
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
pub fn lookup_user(key: &str) -> Option<OsUser> {
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

// ---------------------------------------------------------------------------------------------
// Bounded commands
// ---------------------------------------------------------------------------------------------

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

/// The last `n` lines of `s`, saying how many came before them.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "[... {skip} earlier lines ...]");
    }
    out.push_str(&lines[skip..].join("\n"));
    out
}

/// Last lines of a log file, for failure messages.
pub fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(s) => format!("--- {} ---\n{}", path.display(), tail(&s, 40)),
        Err(e) => format!("--- {}: {e} ---", path.display()),
    }
}

/// A file's contents so far as text (empty if it cannot be read).
pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
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
pub fn wait_bounded(
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

/// Run a root-side command (ip, mount, ...) and panic with its output unless it succeeds.
pub fn root_run(program: &str, args: &[&str]) -> String {
    let out = run_bounded(Command::new(program).args(args), Duration::from_secs(60));
    assert!(out.success(), "{}", out.report());
    out.stdout
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

// ---------------------------------------------------------------------------------------------
// Background processes
// ---------------------------------------------------------------------------------------------

/// A background process, killed (SIGKILL) and reaped when dropped.
pub struct Bg {
    pub name: String,
    pub log: PathBuf,
    pub(super) child: Child,
}

impl Bg {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// State letter and parent pid from /proc/PID/stat (`pid (comm) S ppid ...`; comm may hold spaces).
pub fn proc_stat(proc_dir: &Path) -> Option<(char, u32)> {
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
