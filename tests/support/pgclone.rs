//! The one way the tests run pgclone: `Pgclone` is an invocation (a valid clone by default, the flags
//! under test added), `Running` the process. Every run gets the same surroundings, because the clean
//! checks depend on them: the lab user and its clean environment, the lab's tag (to find its processes
//! later), TMPDIR=`Lab::tmpdir` (to find its run directory), its output in files of the work dir (not
//! pipes, which a leaked child could hold open), and a deadline after which it is killed.

use super::lab::*;
use super::postgres::*;
use super::process::*;
use super::sshd::*;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

/// How pgclone logs in to the primary's host (`--ssh-*`).
pub struct SshLogin {
    pub user: String,
    pub key: PathBuf,
    pub port: u16,
    pub config: PathBuf,
}

/// One pgclone invocation; fields default to a valid clone of a primary over an sshd.
pub struct Pgclone {
    lab: Lab,
    pub pghost: String,
    /// `--pgport`, or None to leave the port to PGPORT.
    pub pgport: Option<u16>,
    pub pguser: String,
    pub primary_pgdata: PathBuf,
    pub replica_pgdata: PathBuf,
    /// `--ssh-*`, or `--no-ssh` for None.
    pub ssh: Option<SshLogin>,
    pub parallel: u32,
    pub verbose: bool,
    /// More arguments after the ones above: the flags under test.
    pub extra: Vec<OsString>,
    /// Environment changes on top of the lab's clean environment: `Some` sets, `None` removes.
    pub env: Vec<(String, Option<OsString>)>,
    /// Run as root instead of the lab user (only meaningful when the test runs as root).
    pub as_root: bool,
    /// RLIMIT_NOFILE (soft and hard) of the pgclone process.
    pub max_open_files: Option<u64>,
    /// From the start to the kill (see `Running::wait`).
    pub timeout: Duration,
    /// Run under `strace -f`, logging the file-system calls of pgclone and its threads to this file.
    pub strace: Option<PathBuf>,
    /// Standard input (a terminal, for -W); /dev/null when None.
    pub stdin: Option<fs::File>,
}

impl Pgclone {
    /// A clone of `primary` over `sshd` (which is also the host pgclone connects to PostgreSQL on) into
    /// `replica`.
    pub fn new(primary: &Postgres, sshd: &Sshd, replica: &Path) -> Pgclone {
        Self::over_ssh(&primary.lab, primary.port, &primary.data, sshd, replica)
    }

    /// A clone of the PostgreSQL on `sshd.addr:pgport` with data directory `primary_pgdata` into `replica`.
    pub fn over_ssh(lab: &Lab, pgport: u16, primary_pgdata: &Path, sshd: &Sshd, replica: &Path) -> Pgclone {
        Pgclone {
            ssh: Some(SshLogin {
                user: lab.user().name.clone(),
                key: sshd.key.clone(),
                port: sshd.port,
                config: sshd.config.clone(),
            }),
            ..Self::without_ssh(lab, &sshd.addr, pgport, primary_pgdata, replica)
        }
    }

    /// A `--no-ssh` clone (agents run here) of the PostgreSQL on `pghost:pgport` into `replica`.
    pub fn without_ssh(lab: &Lab, pghost: &str, pgport: u16, primary_pgdata: &Path, replica: &Path) -> Pgclone {
        Pgclone {
            lab: lab.clone(),
            pghost: pghost.to_string(),
            pgport: Some(pgport),
            pguser: SUPERUSER.into(),
            primary_pgdata: primary_pgdata.to_path_buf(),
            replica_pgdata: replica.to_path_buf(),
            ssh: None,
            parallel: 2,
            verbose: true,
            extra: Vec::new(),
            env: Vec::new(),
            as_root: false,
            max_open_files: None,
            timeout: Duration::from_secs(120),
            strace: None,
            stdin: None,
        }
    }

    /// The `--ssh-*` settings; panics for a `--no-ssh` run.
    pub fn ssh_mut(&mut self) -> &mut SshLogin {
        self.ssh.as_mut().expect("a run over ssh")
    }

    /// Add an argument (a flag under test).
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.extra.push(arg.as_ref().to_os_string());
        self
    }

    /// Add arguments (flags under test).
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Set (`Some`) or remove (`None`) an environment variable.
    pub fn env(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        self.env.push((name.to_string(), value.map(OsString::from)));
        self
    }

    /// pgclone's command line.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        // Empty: not given (a test driving the connection with -d).
        if !self.pghost.is_empty() {
            opt("--pghost", self.pghost.clone().into());
        }
        if let Some(port) = self.pgport {
            opt("--pgport", port.to_string().into());
        }
        if !self.pguser.is_empty() {
            opt("--pguser", self.pguser.clone().into());
        }
        // Empty: not given (the server names it).
        if !self.primary_pgdata.as_os_str().is_empty() {
            opt("--primary-pgdata", self.primary_pgdata.clone().into());
        }
        opt("--replica-pgdata", self.replica_pgdata.clone().into());
        match &self.ssh {
            Some(ssh) => {
                opt("--ssh-user", ssh.user.clone().into());
                opt("--ssh-key", ssh.key.clone().into());
                opt("--ssh-port", ssh.port.to_string().into());
                opt("--ssh-config", ssh.config.clone().into());
            }
            None => a.push("--no-ssh".into()),
        }
        a.push("--parallel".into());
        a.push(self.parallel.to_string().into());
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
        let program = if self.strace.is_some() { Path::new("strace") } else { bin };
        let mut cmd = if self.as_root {
            let root = lookup_user("0").expect("getent passwd 0");
            let mut cmd = lab.base_cmd(program);
            cmd.env("HOME", &root.home).env("USER", &root.name).env("LOGNAME", &root.name);
            cmd
        } else {
            lab.cmd(program)
        };
        if let Some(log) = &self.strace {
            cmd.args(["-f", "-qq", "-e", "trace=unlink,unlinkat,openat,fsync,fdatasync,syncfs", "-o"]);
            cmd.arg(log).arg("--").arg(bin);
        }
        cmd.args(self.argv()).env(TAG_VAR, lab.path()).env("TMPDIR", lab.tmpdir());
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(n) = self.max_open_files {
            let limit = rustix::process::Rlimit { current: Some(n), maximum: Some(n) };
            // SAFETY: setrlimit is a plain system call, safe between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).map_err(Into::into)
                });
            }
        }
        let n = lab.next_run();
        let (stdout, stderr) =
            (lab.path().join(format!("pgclone-{n}.stdout")), lab.path().join(format!("pgclone-{n}.stderr")));
        let file = |p: &Path| {
            let f = fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
            lab.chown(p);
            f
        };
        match &self.stdin {
            Some(f) => cmd.stdin(f.try_clone().expect("duplicating pgclone's stdin")),
            None => cmd.stdin(Stdio::null()),
        };
        cmd.stdout(file(&stdout)).stderr(file(&stderr));
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| v.as_ref().map_or(format!("-u {k}"), |v| format!("{k}={}", v.to_string_lossy())))
            .chain(self.max_open_files.map(|n| format!("(ulimit -n {n})")))
            .collect();
        let what = format!(
            "{}{} {}",
            env.iter().map(|e| format!("{e} ")).collect::<String>(),
            bin.display(),
            self.argv().iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        );
        println!("running pgclone #{n}: {what}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        Running { n, what, child, stdout, stderr, started: Instant::now(), timeout: self.timeout }
    }

    /// Start it with `--limit-net-bw RATE` and return once it logs that it is copying. Without compression: the
    /// budget counts wire bytes, and compressed pages would make the copy several times faster than RATE.
    pub fn spawn_slowly(&mut self, rate: &str) -> Running {
        self.args(["--limit-net-bw", rate, "--compress", "none"]);
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
    pub started: Instant,
    timeout: Duration,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).unwrap_or_else(|e| panic!("kill {sig:?} {}: {e}", self.pid()));
        println!("sent {sig:?} to pgclone #{} (pid {}) after {:.2?}", self.n, self.pid(), self.started.elapsed());
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

    /// Polls stderr every 10 ms (a signal meant for one phase must land in it) until it holds `needle`;
    /// panics if pgclone exits first or after `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let err = self.stderr_so_far();
            if err.contains(needle) {
                println!("pgclone #{} logged {needle:?} after {:.2?}", self.n, self.started.elapsed());
                return;
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "pgclone #{} exited ({st}) before logging {needle:?}\n{}",
                    self.n,
                    tail(&self.stderr_so_far(), 40)
                );
            }
            if start.elapsed() > timeout {
                panic!("pgclone #{} did not log {needle:?} within {timeout:?}\n{}", self.n, tail(&err, 40));
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Wait until it exits, at most until `deadline` after its start (kills it and panics then); returns
    /// its output.
    pub fn wait_until(mut self, deadline: Duration) -> CmdOutput {
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let status = wait_bounded(&mut self.child, &self.what, self.started, deadline, || {
            (read_lossy(&stdout), read_lossy(&stderr))
        });
        println!("pgclone #{} finished in {:.2?}: {status}", self.n, self.started.elapsed());
        CmdOutput { what: self.what.clone(), status, stdout: read_lossy(&stdout), stderr: read_lossy(&stderr) }
    }

    /// Wait until it exits, bounded by the run's timeout.
    pub fn wait(self) -> CmdOutput {
        let t = self.timeout;
        self.wait_until(t)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The figures of a successful run's `--json` summary.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub files: u64,
    pub bytes: u64,
    pub moved: u64,
    pub reused: u64,
}

/// stdout of a `--json` run must be exactly one JSON object with ok=true; returns its figures.
pub fn json_figures(out: &CmdOutput) -> Figures {
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{}", out.report()));
    assert!(v.is_object(), "--json printed {v}, not an object");
    assert_eq!(v["ok"], serde_json::Value::Bool(true), "--json: {v}");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("--json lacks a number {k:?}: {v}"));
    let f = Figures { files: n("files"), bytes: n("bytes"), moved: n("moved_bytes"), reused: n("reused_bytes") };
    println!(
        "--json: files={} bytes={} moved_bytes={} reused_bytes={} ({:.1}% moved); phases {}",
        f.files,
        f.bytes,
        f.moved,
        f.reused,
        100.0 * f.moved as f64 / f.bytes.max(1) as f64,
        v["phases_seconds"]
    );
    f
}
