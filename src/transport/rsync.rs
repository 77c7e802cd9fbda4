//! rsync transport: a throwaway rsync daemon on the primary, as pgclone.sh runs it, fed by parallel
//! local rsync clients.
//!
//! The daemon is started by a shell over one ssh session and lives exactly as long as that session:
//! the shell waits for end-of-file on its standard input, which comes when we close it, when pgclone
//! dies (the kernel closes the pipe) or when the link drops (sshd closes the session). It then kills
//! the daemon and removes its private directory. Its port is random, and it requires a secret made for this
//! run that never appears on a command line.
//!
//! rsync's daemon protocol is clear text: anyone on the path could read the cluster (pg_authid's hashes
//! among it) or rewrite what arrives. So by default the daemon listens on the primary's loopback only, and each
//! worker reaches it through an ssh port forward of its own: the data is encrypted and authenticated by ssh.
//! Only with `--data-channel tcp` (a trusted network) does the daemon bind to the address ssh reached and
//! accept the address we came from, as pgclone.sh's does.
//!
//! Here, the forwards (and --limit-net-bw's proxies) listen on Unix sockets in the run's private directory, not
//! on ports of 127.0.0.1 that any local user could connect to (and ride our ssh login to the primary's
//! loopback) or bind first. The rsync client cannot connect to a Unix socket itself; it runs the program in
//! RSYNC_CONNECT_PROG instead of connecting and speaks over its standard input and output: `pgclone
//! connect-unix SOCKET` (`connect_unix`), so that nothing besides rsync and ssh needs installing here.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{os, Copied, EntryKind, How, Piece, RemoteEntry, Sink, Transport, TransportError, Worker};
use crate::error::IoContext;
use crate::sys::bandwidth::{Limits, Proxy, Target};
use crate::sys::cancel::Cancel;
use crate::sys::periodic::Periodic;
use crate::sys::proc::{heartbeat, holder_wait, OwnedChild};
use crate::sys::ssh::{last_line, quote, Forward, SshTarget};

/// The remote half. `$1` is the data directory, `$2` `ssh` (listen on the loopback, for port forwards) or `tcp`
/// (listen on the address ssh reached, for our address only), `$3` the loop it waits in (`holder_wait`), `$4` how
/// many connections the run makes at most. Prints `PGCLONE-RSYNCD <addr> <port> [<tablespace oid>...]` once
/// listening.
///
/// rsyncd.conf is line-based and expands `%VAR%` in values: a path written into it with a newline (or any control
/// character) would add directives of its own (another module, `hosts allow`, `read only = no`), one with `%`
/// would be rewritten. The data directory and every tablespace's target are refused with such characters
/// (`conf_value`) rather than written; no quoting exists in that format. `max connections` (per module, counted
/// in `lock file`) is what the run opens at most: a connection beyond that is nobody's of ours.
const DAEMON_SCRIPT: &str = r#"
set -u
umask 077
pgdata=$1 channel=$2 wait_in=$3 connections=$4
command -v rsync >/dev/null 2>&1 || { echo "rsync is not installed on the primary host" >&2; exit 11; }
# A link's target, trailing newlines and all.
target() { t=$(readlink -- "$1"; echo .); t=${t%?.}; }
conf_value() {
  case $2 in
    *[[:cntrl:]%]*)
      echo "$1 $(printf %s "$2" | tr '[:cntrl:]' '?') has a control character or % in its path, which rsyncd.conf cannot hold: use --transport native" >&2
      exit 16;;
  esac
}
conf_value "the data directory" "$pgdata"
for l in "$pgdata"/pg_tblspc/*; do
  [ -L "$l" ] || continue
  target "$l"
  conf_value "the directory of tablespace ${l##*/}," "$t"
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/pgclone-rsyncd.XXXXXX") || exit 12
# sshd runs the session in a process group of its own: on the way out, KILL the whole group (this shell
# included, last), which takes the daemon and every per-connection child it forked, not just the listener. Not
# TERM: a child blocked writing to a dead link would try to say goodbye on it and linger.
trap 'trap "" HUP INT TERM; rm -rf "$dir"; kill -KILL 0' EXIT
trap 'exit 1' HUP INT TERM PIPE
IFS= read -r secret || exit 13
if [ "$channel" = ssh ]; then
  client=127.0.0.1 addr=127.0.0.1
else
  set -- ${SSH_CONNECTION:-}
  [ $# -eq 4 ] || { echo "SSH_CONNECTION is not set by sshd" >&2; exit 14; }
  client=$1 addr=$3
fi
printf 'pgclone:%s\n' "$secret" > "$dir/secrets"
# As root the daemon would switch to "nobody" and fail to read the data directory; as anyone else
# naming a uid makes it call setgroups(), which fails.
ids=
[ "$(id -u)" -eq 0 ] && ids="uid = 0
gid = 0"
cat > "$dir/rsyncd.conf" <<EOF
$ids
use chroot = no
reverse lookup = no
max connections = $connections
lock file = $dir/lock
[pgdata]
path = $pgdata
read only = yes
timeout = 300
list = no
auth users = pgclone
secrets file = $dir/secrets
hosts allow = $client
EOF
# A daemon resolves module paths without following symlinks, so each tablespace (a pg_tblspc link) is
# a module of its own; the list of them is announced with the port.
mods=
for l in "$pgdata"/pg_tblspc/*; do
  [ -L "$l" ] || continue
  oid=${l##*/}
  target "$l"
  printf '[ts_%s]\npath = %s\nread only = yes\ntimeout = 300\nlist = no\nauth users = pgclone\nsecrets file = %s\nhosts allow = %s\n' \
    "$oid" "$t" "$dir/secrets" "$client" >> "$dir/rsyncd.conf"
  mods="$mods $oid"
done
tries=0
while [ $tries -lt 20 ]; do
  tries=$((tries + 1))
  port=$(( $(od -An -N2 -tu2 /dev/urandom) % 40000 + 20000 ))
  rsync --daemon --no-detach --address="$addr" --port="$port" --config="$dir/rsyncd.conf" \
        --log-file="$dir/log" </dev/null >/dev/null 2>&1 &
  pid=$!
  sleep 0.3
  if kill -0 "$pid" 2>/dev/null; then
    echo "PGCLONE-RSYNCD $addr $port$mods"
    eval "$wait_in"
    exit 0
  fi
  wait "$pid" 2>/dev/null
done
echo "no free port found for the rsync daemon after $tries tries" >&2
exit 15
"#;

pub struct RsyncTransport {
    ssh: SshTarget,
    pgdata: PathBuf,
    /// The daemon's address and port on the primary.
    daemon: SocketAddr,
    /// Reached through an ssh port forward per connection (the default), or directly (`--data-channel tcp`).
    forwarded: bool,
    /// -r and --limit-net-bw: every rsync connection runs through a proxy holding them all to one rate. rsync
    /// sends file data as it reads it (no `-z`), so both count the same bytes; what the daemon reads to
    /// checksum a file in a re-sync (`--checksum`) and does not send is not counted.
    limits: Limits,
    tablespaces: HashSet<String>,
    /// Our private (0700) directory: the secret, and the sockets of the forwards and proxies.
    run_dir: PathBuf,
    /// Links made so far, which name their sockets.
    links: AtomicUsize,
    /// This program, run by rsync to reach a socket (see the module comment).
    connect_prog: PathBuf,
    password_file: PathBuf,
    /// A re-sync: compare files already present by content (rsync --checksum), never by size and mtime. rsync
    /// stamps a copy with the mtime it read at listing time, so a page the server writes later within the same
    /// second leaves size and mtime equal; skipping that file would keep the old page, and WAL replay, which
    /// starts at the new backup's redo point, would not repair it (backup.sgml: rsync needs --checksum).
    resync: bool,
    /// Its end ends the daemon (see the module comment); dropped before `holder` is waited for.
    heartbeat: Option<Periodic>,
    holder: OwnedChild,
}

/// One way to the daemon: through this connection's own port forward (and bandwidth proxy), which end when it
/// drops, at the Unix socket `socket`; or, with --data-channel tcp and no proxy, straight to `url`'s address.
/// Modules `pgdata` and `ts_<oid>` for each tablespace link.
struct Link {
    url: String,
    socket: Option<PathBuf>,
    _proxy: Option<Proxy>,
    _forward: Option<Forward>,
}

impl RsyncTransport {
    /// Starts the daemon on the primary. `run_dir` is our private (0700) directory for the secret; `resync`: the
    /// replica holds an earlier copy; `clear_text`: reach the daemon directly (--data-channel tcp); `workers`: the
    /// copy workers to come, which bound the daemon's connections.
    pub fn start(
        ssh: &SshTarget,
        pgdata: &Path,
        run_dir: &Path,
        limits: Limits,
        resync: bool,
        clear_text: bool,
        workers: usize,
    ) -> Result<RsyncTransport, TransportError> {
        let secret = random_secret()?;
        let password_file = run_dir.join("rsync.secret");
        let io = |what: &'static str| move |source| TransportError::Io { what, source };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&password_file)
            .and_then(|mut f| f.write_all(secret.as_bytes()))
            .at("writing", &password_file)?;

        let stderr_path = run_dir.join("rsyncd-ssh.stderr");
        let stderr = std::fs::File::create(&stderr_path).at("creating", &stderr_path)?;
        let channel = if clear_text { "tcp" } else { "ssh" };
        // Each worker keeps one rsync client running at a time; a single file fetched besides (pg_control) adds one.
        let connections = workers.max(1) + 1;
        let remote = format!(
            "sh -c {} pgclone-rsyncd {} {channel} {} {connections}",
            quote(DAEMON_SCRIPT),
            quote(pgdata),
            quote(holder_wait())
        );
        let mut cmd = ssh.command(&remote);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        let mut daemon = OwnedChild::spawn(cmd, "rsync daemon over ssh").map_err(io("starting ssh"))?;
        let mut stdin = daemon.child_mut().stdin.take().expect("piped stdin");
        writeln!(stdin, "{secret}").map_err(io("sending the rsync secret"))?;
        stdin.flush().map_err(io("sending the rsync secret"))?;

        let stdout = daemon.child_mut().stdout.take().expect("piped stdout");
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let failed = |daemon: &mut OwnedChild| {
            let _ = daemon.wait_timeout(Duration::from_secs(2));
            let err = std::fs::read(&stderr_path).unwrap_or_default();
            if daemon.child_mut().try_wait().ok().flatten().and_then(|s| s.code()) == Some(255) {
                TransportError::Ssh(ssh.connect_error(&err))
            } else {
                TransportError::Daemon(last_line(&err))
            }
        };
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => return Err(TransportError::Daemon("no answer within 60 s".into())),
        };
        let mut words = line.split_whitespace();
        let (Some("PGCLONE-RSYNCD"), Some(addr), Some(port)) = (words.next(), words.next(), words.next()) else {
            return Err(failed(&mut daemon));
        };
        tracing::debug!(addr, port, "rsync daemon listening on the primary");
        let daemon_addr: SocketAddr = format!("{}:{port}", bracket(addr))
            .parse()
            .map_err(|_| TransportError::Daemon(format!("unusable daemon address {addr} port {port}")))?;
        Ok(RsyncTransport {
            ssh: ssh.clone(),
            pgdata: pgdata.to_path_buf(),
            daemon: daemon_addr,
            forwarded: !clear_text,
            limits,
            tablespaces: words.map(str::to_string).collect(),
            run_dir: run_dir.to_path_buf(),
            links: AtomicUsize::new(0),
            connect_prog: std::env::current_exe().map_err(io("finding our own binary"))?,
            password_file,
            resync,
            heartbeat: Some(heartbeat(stdin)),
            holder: daemon,
        })
    }

    /// A way to the daemon for one connection's use: its own ssh port forward (its own ssh connection, so
    /// workers do not share one stream's encryption), or the daemon's address itself with --data-channel tcp;
    /// behind the bandwidth proxy with -r or --limit-net-bw.
    fn link(&self) -> Result<Link, TransportError> {
        let n = self.links.fetch_add(1, Ordering::Relaxed);
        let socket = |what: &str| self.run_dir.join(format!("rsync-{n}-{what}.sock"));
        let forward = self.forwarded.then(|| self.ssh.forward(&socket("forward"), self.daemon.port())).transpose()?;
        let target = match &forward {
            Some(f) => Target::Unix(f.socket.clone()),
            None => Target::Tcp(self.daemon),
        };
        let proxy = self
            .limits
            .is_set()
            .then(|| Proxy::start(socket("limited"), target, self.limits.clone()))
            .transpose()
            .map_err(|source| TransportError::Io { what: "starting the bandwidth proxy", source })?;
        let socket = proxy.as_ref().map(|p| p.socket.clone()).or_else(|| forward.as_ref().map(|f| f.socket.clone()));
        let url = match socket {
            // The host is rsync's to pass to the connect program, which ignores it.
            Some(_) => "rsync://pgclone@localhost/".to_string(),
            None => format!("rsync://pgclone@{}:{}/", bracket(&self.daemon.ip().to_string()), self.daemon.port()),
        };
        Ok(Link { url, socket, _proxy: proxy, _forward: forward })
    }

    /// An rsync client that reaches the daemon through `link`.
    fn rsync(&self, link: &Link) -> Command {
        let mut cmd = Command::new("rsync");
        if let Some(socket) = &link.socket {
            // rsync runs it with sh -c, after replacing %H by the host and %% by %.
            let prog = format!("{} connect-unix {}", quote(&self.connect_prog), quote(socket)).replace('%', "%%");
            cmd.env("RSYNC_CONNECT_PROG", prog);
        }
        cmd.arg(format!("--password-file={}", self.password_file.display()))
            // A stalled link fails the worker instead of hanging the clone.
            .arg("--timeout=120")
            .arg("--contimeout=30");
        if self.resync {
            cmd.arg("--checksum");
        }
        cmd
    }
}

impl Drop for RsyncTransport {
    fn drop(&mut self) {
        self.heartbeat.take();
        if let Ok(None) = self.holder.wait_timeout(Duration::from_secs(5)) {
            tracing::warn!("{} did not end within 5 s of closing it; killing it", self.holder.what());
        }
    }
}

impl Transport for RsyncTransport {
    fn name(&self) -> &'static str {
        "rsync"
    }

    fn data_channel(&self) -> &'static str {
        if self.forwarded {
            "ssh"
        } else {
            "tcp"
        }
    }

    fn list(&self) -> Result<Vec<RemoteEntry>, TransportError> {
        // Tablespaces are walked through their pg_tblspc links (a trailing slash makes find follow a link
        // given as a starting point); in-place tablespaces are plain directories, found anyway.
        // LC_ALL=C: find's messages are matched below and must not be translated. A file removed while
        // find walks the tree is normal on a live server; any other complaint is a real failure.
        let remote = format!(
            "cd -- {} || exit 3; set --; for l in pg_tblspc/*; do [ -L \"$l\" ] && set -- \"$@\" \"$l/\"; done; \
                 LC_ALL=C exec find . \"$@\" -mindepth 1 -printf '%y\\0%s\\0%m\\0%p\\0%l\\0'",
            quote(&self.pgdata)
        );
        let out = self.ssh.run(&remote, b"")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let real_errors: Vec<&str> =
            stderr.lines().filter(|l| !l.trim().is_empty() && !l.ends_with("No such file or directory")).collect();
        if !out.status.success() && (out.stdout.is_empty() || !real_errors.is_empty()) {
            let reason = real_errors.last().copied().unwrap_or("find failed").to_string();
            return Err(TransportError::List { dir: self.pgdata.display().to_string(), reason });
        }
        parse_listing(&out.stdout)
            .map_err(|reason| TransportError::List { dir: self.pgdata.display().to_string(), reason })
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>, TransportError> {
        Ok(Box::new(RsyncWorker { transport: self, link: self.link()? }))
    }

    fn fetch_file(&self, rel: &Path, to: &Path) -> Result<(), TransportError> {
        let link = self.link()?;
        let mut cmd = self.rsync(&link);
        // Small files only (pg_control): rsync skips a larger one, and the caller finds it missing.
        cmd.args(["--times", "--max-size=1m"]).arg(format!("{}pgdata/{}", link.url, rel.display())).arg(to);
        let (status, stderr) = run_rsync(cmd, None, &Cancel::default())?;
        if status.success() {
            Ok(())
        } else {
            Err(TransportError::Fetch { file: rel.display().to_string(), reason: rsync_reason(&stderr) })
        }
    }
}

struct RsyncWorker<'a> {
    transport: &'a RsyncTransport,
    link: Link,
}

impl Worker for RsyncWorker<'_> {
    /// rsync copies whole files only (split_size is None, so pieces never carry a range), and shows no bytes
    /// before a batch is done.
    fn copy(
        &mut self,
        pieces: &[Piece],
        dest: &Path,
        cancel: &Cancel,
        _: &mut dyn Sink,
    ) -> Result<Copied, TransportError> {
        // rsync reads (to checksum, or as the basis of its delta) the copy a re-sync finds here.
        let read_replica: u64 = pieces
            .iter()
            .filter(|p| matches!(p.how, How::Compare(_)))
            .filter_map(|p| std::fs::metadata(dest.join(&p.path)).ok())
            .map(|m| m.len())
            .sum();
        // Files inside a tablespace go through its module, into the local pg_tblspc/<oid> link.
        let mut by_module: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for f in pieces.iter().map(|p| &p.path) {
            let (module, rel) = match tablespace_file(f) {
                Some((oid, rest)) if self.transport.tablespaces.contains(oid) => (format!("ts_{oid}"), rest),
                _ => ("pgdata".to_string(), f.clone()),
            };
            by_module.entry(module).or_default().push(rel);
        }
        for (module, rels) in &by_module {
            let local = match module.strip_prefix("ts_") {
                Some(oid) => dest.join("pg_tblspc").join(oid),
                None => dest.to_path_buf(),
            };
            self.copy_module(module, rels, &local, cancel)?;
        }
        Ok(count_copied(pieces, dest, read_replica))
    }
}

/// Counts what a finished copy of whole files left in `dest`: files the primary removed meanwhile are absent.
/// rsync reads every file it is given on the primary, to send it or to checksum it.
fn count_copied(pieces: &[Piece], dest: &Path, read_replica: u64) -> Copied {
    let mut c = Copied { read_replica, ..Copied::default() };
    for p in pieces {
        match std::fs::symlink_metadata(dest.join(&p.path)) {
            Ok(m) => {
                c.files += 1;
                c.bytes += m.len();
                c.moved += m.len();
                // rsync's stream carries file data as it is (we give rsync no -z).
                c.wire += m.len();
                c.read_primary += m.len();
            }
            Err(_) => c.vanished += 1,
        }
    }
    c
}

/// `pg_tblspc/<oid>/<rest>` → (oid, rest).
fn tablespace_file(path: &Path) -> Option<(&str, PathBuf)> {
    let rest = path.strip_prefix("pg_tblspc").ok()?;
    let oid = rest.components().next()?.as_os_str().to_str()?;
    Some((oid, rest.strip_prefix(oid).ok()?.to_path_buf()))
}

impl RsyncWorker<'_> {
    fn copy_module(&self, module: &str, files: &[PathBuf], dest: &Path, cancel: &Cancel) -> Result<(), TransportError> {
        let mut cmd = self.transport.rsync(&self.link);
        // -t: times; never owners (we are not root) nor devices, nor the primary's exact permissions: a new file
        // gets the primary's bits masked by our umask, which the clone set to PostgreSQL's modes. Never links
        // (no -l): every symlink of the copy is one the primary's listing showed, made by transfer::lay_out; a
        // path the daemon sends as a symlink (changed on the primary since the listing, or a daemon that lies) is
        // skipped ("skipping non-regular file") and counts as vanished. rsync 3.2.5+ also refuses names it did not
        // ask for (its receiver checks them against --files-from).
        // --delete-missing-args: a listed file the primary dropped since the listing is no error (see
        // Copied::vanished), and a re-sync's old copy of it is deleted here.
        // --inplace: an interrupted copy leaves its partial file, the basis rsync's delta transfer resumes
        // from on a re-run; nothing can start from the directory meanwhile (no pg_control).
        cmd.args(["-t", "--inplace", "--files-from=-", "--from0", "--no-implied-dirs", "--delete-missing-args"])
            .arg(format!("{}{module}/", self.link.url))
            .arg(format!("{}/", dest.display()));
        let mut list = Vec::new();
        for f in files {
            list.extend_from_slice(f.as_os_str().as_encoded_bytes());
            list.push(0);
        }
        let (status, stderr) = run_rsync(cmd, Some(&list), cancel)?;
        // Exit 24: "some files vanished before they could be transferred"; exit 23 when a file shrank while
        // it was read (VACUUM truncating a relation): both normal while PostgreSQL runs.
        match status.code() {
            Some(0) | Some(24) => Ok(()),
            Some(23) if only_files_that_changed(&stderr) => {
                tracing::debug!("rsync: files changed while read: {}", rsync_reason(&stderr));
                Ok(())
            }
            _ => Err(TransportError::Worker(format!("rsync {status}: {}", rsync_reason(&stderr)))),
        }
    }
}

/// `pgclone connect-unix SOCKET`, rsync's RSYNC_CONNECT_PROG: joins our standard input and output to the Unix
/// socket of a forward or proxy to the daemon, until the daemon's side ends.
pub fn connect_unix(socket: &Path) -> std::io::Result<()> {
    let sock = UnixStream::connect(socket)?;
    let mut up = sock.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(Shutdown::Write);
    });
    let mut down = &sock;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Flushed at once: rsync waits for each answer of the daemon's.
        match std::io::Read::read(&mut down, &mut buf)? {
            0 => return Ok(()),
            n => out.write_all(&buf[..n]).and_then(|()| out.flush())?,
        }
    }
}

/// Runs one rsync client to completion (or until cancelled) and returns its status and what it said on stderr.
fn run_rsync(
    mut cmd: Command,
    input: Option<&[u8]>,
    cancel: &Cancel,
) -> Result<(std::process::ExitStatus, Vec<u8>), TransportError> {
    let io = |source| TransportError::Io { what: "running rsync", source };
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = OwnedChild::spawn(cmd, "rsync").map_err(io)?;
    if let Some(input) = input {
        let mut stdin = child.child_mut().stdin.take().expect("piped stdin");
        // rsync reads the whole list before it starts; a write error means it died, which its status tells.
        let _ = stdin.write_all(input);
    }
    let mut stderr = child.child_mut().stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    loop {
        if let Err(c) = cancel.check() {
            drop(child);
            return Err(c.into());
        }
        if let Some(status) = child.wait_timeout(Duration::from_millis(100)).map_err(io)? {
            // A client that died (killed, say) may leave its forked receiver running, holding stderr open;
            // ending the group lets the failure surface now rather than when that file is done.
            if !status.success() {
                child.kill_group();
            }
            return Ok((status, reader.join().unwrap_or_default()));
        }
    }
}

/// rsync's last line is a generic "rsync error: ... (code N)"; the daemon's own "@ERROR: ..." line or
/// the first "rsync: ..." line says what went wrong.
fn rsync_reason(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("@ERROR") || l.starts_with("rsync: "))
        .map_or_else(|| last_line(stderr), str::to_string)
}

/// Whether every error rsync reported is about a file that changed on the primary while it was read: one that
/// shrank ("read errors mapping": fewer bytes than listed), vanished, or whose whole-file check failed because it
/// changed during the transfer. On a live server that is normal, as it is for pg_basebackup (basebackup.c pads a
/// file that shrank): the change is in the WAL the clone replays. Any other error is the clone's to report.
fn only_files_that_changed(stderr: &[u8]) -> bool {
    const CHANGED: [&str; 3] = ["read errors mapping", "file has vanished", "failed verification"];
    let text = String::from_utf8_lossy(stderr);
    let errors: Vec<&str> =
        text.lines().filter(|l| ["rsync: ", "ERROR: ", "WARNING: "].iter().any(|p| l.starts_with(p))).collect();
    !errors.is_empty() && errors.iter().all(|l| CHANGED.iter().any(|c| l.contains(c)))
}

/// Parses `find -printf '%y\0%s\0%m\0%p\0%l\0'`: type letter, size, octal mode, path, link target.
fn parse_listing(bytes: &[u8]) -> Result<Vec<RemoteEntry>, String> {
    let fields: Vec<&[u8]> = bytes.split(|b| *b == 0).collect();
    // A trailing NUL leaves one empty field at the end.
    let fields = &fields[..fields.len().saturating_sub(1)];
    if !fields.len().is_multiple_of(5) {
        return Err("truncated listing".into());
    }
    fields
        .chunks(5)
        .map(|f| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let size = text(f[1]).parse::<u64>().map_err(|_| format!("bad size {:?}", text(f[1])))?;
            let mode = u32::from_str_radix(&text(f[2]), 8).map_err(|_| format!("bad mode {:?}", text(f[2])))?;
            let kind = match f[0] {
                b"f" => EntryKind::File,
                b"d" => EntryKind::Dir,
                b"l" => EntryKind::Symlink(PathBuf::from(os(f[4]))),
                _ => EntryKind::Other,
            };
            // find prints paths under "." as "./x" and under a tablespace link as "pg_tblspc/<oid>/x".
            let path = f[3].strip_prefix(b"./").unwrap_or(f[3]);
            Ok(RemoteEntry { path: PathBuf::from(os(path)), kind, size, mode })
        })
        .collect()
}

/// IPv6 addresses need brackets in host:port forms.
fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

fn random_secret() -> Result<String, TransportError> {
    let mut raw = [0u8; 24];
    rustix::rand::getrandom(&mut raw, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| TransportError::Io { what: "reading random bytes", source: e.into() })?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_shrank_while_read_is_no_error_but_others_are() {
        let shrank = b"rsync: [sender] read errors mapping \"/pg/base/5/16384\": No data available (61)\n\
            rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394)\n";
        assert!(only_files_that_changed(shrank));
        let denied = b"rsync: [sender] send_files failed to open \"/pg/x\": Permission denied (13)\n\
            rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394)\n";
        assert!(!only_files_that_changed(denied));
        let mixed = [&shrank[..], &denied[..]].concat();
        assert!(!only_files_that_changed(&mixed));
        assert!(!only_files_that_changed(b"rsync error: some files/attrs were not transferred (code 23)\n"));
    }

    #[test]
    fn listing_parses_every_kind_and_odd_names() {
        let raw = b"d\x004096\x00700\x00./base\x00\x00\
f\x008192\x00600\x00base/1/1259\x00\x00\
l\x0018\x00777\x00pg_tblspc/16390\x00/srv/ts one\x00\
f\x000\x00600\x00dir with space/\xc3\xbc\x00\x00\
s\x000\x00777\x00sock\x00\x00";
        let l = parse_listing(raw).unwrap();
        assert_eq!(l.len(), 5);
        assert_eq!(l[0], RemoteEntry { path: "base".into(), kind: EntryKind::Dir, size: 4096, mode: 0o700 });
        assert_eq!(l[1].size, 8192);
        assert_eq!(l[2].kind, EntryKind::Symlink("/srv/ts one".into()));
        assert_eq!(l[3].path, PathBuf::from("dir with space/ü"));
        assert_eq!(l[4].kind, EntryKind::Other);
        assert!(parse_listing(b"f\x001\x00600\x00x\x00").is_err());
        assert!(parse_listing(b"").unwrap().is_empty());
    }

    #[test]
    fn tablespace_files_split_into_oid_and_rest() {
        assert_eq!(
            tablespace_file(Path::new("pg_tblspc/16406/PG_15_202209061/5/16407")),
            Some(("16406", PathBuf::from("PG_15_202209061/5/16407")))
        );
        assert_eq!(tablespace_file(Path::new("base/5/16407")), None);
    }

    #[test]
    fn rsync_reason_prefers_the_specific_line() {
        let err =
            b"@ERROR: auth failed on module pgdata\nrsync error: error starting client-server protocol (code 5)\n";
        assert_eq!(rsync_reason(err), "@ERROR: auth failed on module pgdata");
        assert_eq!(rsync_reason(b"something else\n"), "something else");
    }

    #[test]
    fn secrets_are_random_hex() {
        let (a, b) = (random_secret().unwrap(), random_secret().unwrap());
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
