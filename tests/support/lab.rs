//! The lab: one work directory per test, under /tmp, owned by the lab user, holding everything the test
//! makes (data directories, logs, keys, pgclone's TMPDIRs, its own copy of the pgclone binary). It is what
//! keeps tests apart when they run in parallel, and what the clean checks search for leftovers: processes
//! carrying the lab's tag, run directories in the lab's TMPDIRs.

use super::process::*;
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Environment variable marking this test's pgclone processes and ssh sessions (see `Lab::tag`).
pub const TAG_VAR: &str = "PGCLONE_TEST_TAG";

/// Per-test work directory, shared by all fixtures of a test (cheap to clone).
#[derive(Clone)]
pub struct Lab(Arc<LabInner>);

struct LabInner {
    dir: tempfile::TempDir,
    user: &'static OsUser,
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
        // pgclone brings the agent beside it to the primary, as an installation has it.
        let agent = lab.0.pgclone.with_file_name("pgclone-agent");
        for (from, to) in
            [(env!("CARGO_BIN_EXE_pgclone"), &lab.0.pgclone), (env!("CARGO_BIN_EXE_pgclone-agent"), &agent)]
        {
            fs::copy(from, to).expect("copy pgclone's binaries");
            fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
            lab.chown(to);
        }
        println!("[{name}] work dir {} (user {})", lab.path().display(), user.name);
        lab
    }

    pub fn path(&self) -> &Path {
        self.0.dir.path()
    }

    pub fn user(&self) -> &'static OsUser {
        self.0.user
    }

    /// The pgclone under test: a copy of the binary cargo built for this test run, never one on PATH.
    pub fn pgclone_bin(&self) -> &Path {
        &self.0.pgclone
    }

    /// The number of this test's next pgclone run, from 1.
    pub fn next_run(&self) -> u32 {
        self.0.runs.fetch_add(1, Ordering::Relaxed) + 1
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

    /// Where pgclone's run directories go, here and on the primary's side: `(dir, name prefix)`.
    pub fn run_dirs(&self) -> Vec<(PathBuf, &'static str)> {
        vec![(self.tmpdir(), "pgclone-"), (self.remote_tmpdir(), "pgclone-")]
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
        let mut f =
            fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(contents.as_bytes()).unwrap();
    }

    /// Create `<work dir>/<name>` (and its parents), mode 0700, owned by the lab user.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        self.chown(&path);
        path
    }

    /// A command with a clean environment, cwd = work dir, not yet switched to the lab user.
    pub fn base_cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let user = self.0.user;
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", PATH)
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("LANG", "C.UTF-8")
            .env("PGPASSWORD", super::postgres::PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(self.path());
        for var in ["RUST_BACKTRACE", "RUST_LOG", "PGCLONE_LOG"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        cmd
    }

    /// A command that runs as the lab user, with a clean environment (HOME/USER/LOGNAME/PATH set
    /// explicitly) in the work dir.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
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

/// Entries of `dir` whose names start with `prefix` (pgclone's temporary directories).
pub fn entries_starting_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).map(|e| e.path()).collect();
    v.sort();
    v
}

/// A tmpfs of `bytes` at `<work dir>/<name>`, owned by the lab user: a small filesystem for a replica
/// that must run out of space (root only). Unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(lab: &Lab, name: &str, bytes: u64) -> Tmpfs {
        let path = lab.mkdir(name);
        let user = lab.user();
        let opts = format!("size={}k,mode=0700,uid={},gid={}", bytes.div_ceil(1024), user.uid, user.gid);
        root_run("mount", &["-t", "tmpfs", "-o", &opts, "pgclone-test", &path.to_string_lossy()]);
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
