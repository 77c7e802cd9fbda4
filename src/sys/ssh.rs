//! The system `ssh` client, so that ~/.ssh/config, the agent, known_hosts and ProxyJump all keep working.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sys::proc::{self, OwnedChild};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh to {target} failed: {reason}")]
    Connect { target: String, reason: String },
    #[error("could not run ssh: {0}; install the OpenSSH client (openssh-client)")]
    Spawn(#[from] std::io::Error),
    #[error("{} is too long for a Unix socket (108 bytes at most): set TMPDIR to a shorter directory", .0.display())]
    SocketPath(PathBuf),
}

/// Why a host or login name is not handed to ssh (see `check_host`, `check_user`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("it starts with '-', which ssh would read as an option")]
    Option,
    #[error("it contains {0:?}, which is not part of a host name or IP address")]
    NotHostChar(char),
    #[error("it contains {0:?}, which is not part of a login name")]
    NotUserChar(char),
}

/// The primary's host as ssh gets it: a host name (letters, digits, `.`, `-`, `_`) or an IP address literal
/// (IPv6 with an optional `%zone`), nothing else. The host can come from far away: Patroni's `--connstring` is
/// the leader's `conn_url` in the DCS, written by another machine. ssh puts the host into commands it runs
/// through the shell (`%h` in a `ProxyCommand`, `Match exec`, `LocalCommand`; readconf.c, ssh.c), so a
/// host carrying `$(...)` or `;` would run code on this host; OpenSSH 9.6 and later refuse some of
/// these themselves (ssh.c `valid_hostname`), older clients do not. A leading `-` is harmless after our `--`, but is no host
/// either. `user@host` is refused too: the login is `--ssh-user`'s.
pub fn check_host(host: &str) -> Result<(), NameError> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    // An IPv6 literal, with an optional zone (fe80::1%eth0).
    let (addr, zone) = host.split_once('%').unwrap_or((host, ""));
    if addr.parse::<std::net::Ipv6Addr>().is_ok() && zone.chars().all(name_char) {
        return Ok(());
    }
    // Else a host name or an IPv4 literal.
    if let Some(c) = host.chars().find(|&c| !name_char(c)) {
        return Err(NameError::NotHostChar(c));
    }
    match host.chars().next() {
        None => Err(NameError::Empty),
        Some('-') => Err(NameError::Option),
        Some(_) => Ok(()),
    }
}

/// The ssh login (`-l`): the same shell-safety as `check_host` (ssh expands it as `%r` and `%u`), letters,
/// digits, `.`, `-`, `_` and `@` (a directory login, `user@DOMAIN`).
pub fn check_user(user: &str) -> Result<(), NameError> {
    if let Some(c) = user.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))) {
        return Err(NameError::NotUserChar(c));
    }
    match user.chars().next() {
        None => Err(NameError::Empty),
        Some('-') => Err(NameError::Option),
        Some(_) => Ok(()),
    }
}

/// Where and how to reach the primary host.
#[derive(Clone, Debug)]
pub struct SshTarget {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// Skip host-key verification; only when the user asked for it.
    pub insecure: bool,
    /// `Ciphers=` for this connection (see `prefer_fast_ciphers`); None: ssh's own choice.
    pub ciphers: Option<String>,
    /// Whether the user's ssh configuration sets ServerAliveInterval itself (read once, see `options`).
    pub user_keepalive: OnceLock<bool>,
}

impl SshTarget {
    /// `user@host:port` as a DBA would write it in a message.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }

    /// An `ssh` command that runs `remote` (a shell command line) on the primary host.
    /// BatchMode: never prompt, a missing key must fail, not hang.
    pub fn command(&self, remote: &str) -> Command {
        let mut cmd = self.options();
        cmd.arg("--").arg(&self.host).arg(remote);
        cmd
    }

    /// `ssh` with our options, before the host. ServerAlive*: a dead link ends our side of the session within
    /// a minute (the primary's side ends by itself, see transport::agent and proc::heartbeat), unless the
    /// user's configuration has its own keepalive, which then stands (an ssh option on the command line would
    /// override it).
    fn options(&self) -> Command {
        let mut cmd = self.base();
        cmd.args(["-o", "BatchMode=yes"]);
        if !*self.user_keepalive.get_or_init(|| self.configured("serveraliveinterval").is_some_and(|v| v != "0")) {
            cmd.args(["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]);
        }
        cmd
    }

    /// An effective setting of ssh's configuration for this host, as `ssh -G` shows it, with BatchMode off: a
    /// BatchMode in the configuration would show its implied keepalive of 300 s as if it had been set.
    fn configured(&self, name: &str) -> Option<String> {
        let mut cmd = self.base();
        cmd.args(["-o", "BatchMode=no", "-G"]).arg("--").arg(&self.host).stdin(Stdio::null()).stderr(Stdio::null());
        let out = cmd.output().ok()?;
        let prefix = format!("{name} ");
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    /// `ssh` with the options that do not depend on its configuration.
    fn base(&self) -> Command {
        let mut cmd = Command::new("ssh");
        let mut opt = |o: &str| {
            cmd.arg("-o").arg(o);
        };
        if self.insecure {
            opt("StrictHostKeyChecking=no");
            opt("UserKnownHostsFile=/dev/null");
        } else {
            opt("StrictHostKeyChecking=yes");
        }
        if let Some(cfg) = &self.config {
            cmd.arg("-F").arg(cfg);
        }
        if let Some(key) = &self.key {
            cmd.arg("-i").arg(key).arg("-o").arg("IdentitiesOnly=yes");
        }
        if let Some(p) = self.port {
            cmd.arg("-p").arg(p.to_string());
        }
        if let Some(u) = &self.user {
            cmd.arg("-l").arg(u);
        }
        if let Some(c) = &self.ciphers {
            cmd.arg("-o").arg(format!("Ciphers={c}"));
        }
        cmd
    }

    /// For connections that carry the data itself: on a CPU with AES instructions, AES-GCM encrypts and
    /// decrypts far faster than ChaCha20-Poly1305, which OpenSSH prefers by default (measured here: one
    /// ssh stream 660 MB/s with aes128-gcm against 415 MB/s with chacha20-poly1305, and both ends share
    /// the CPU with the copy). Only the order of the ciphers this ssh would offer anyway changes (read with
    /// `ssh -G`, so ~/.ssh/config still decides which are allowed); the server still picks among them.
    pub fn prefer_fast_ciphers(&mut self) {
        if !cpu_has_aes() {
            return;
        }
        if let Some(list) = self.configured("ciphers") {
            self.ciphers = gcm_first(&list);
        }
    }

    /// Forwards the Unix socket `socket` here to `remote_port` on the primary host's loopback (the rsync daemon,
    /// or PostgreSQL for --bypass-rep-traffic). A socket, not a port on 127.0.0.1: any local user can connect to
    /// a loopback port, or bind it first when it is picked before ssh binds it, and would then ride our ssh login
    /// to the primary or see what we send. ssh makes the socket 0600 (StreamLocalBindMask's default) in
    /// `socket`'s directory, which must be the run's private one (0700). The forward lives as long as the
    /// returned value.
    pub fn forward(&self, socket: &Path, remote_port: u16) -> Result<Forward, SshError> {
        // sun_path holds 108 bytes, the terminating NUL included.
        if socket.as_os_str().len() > 107 {
            return Err(SshError::SocketPath(socket.to_path_buf()));
        }
        let mut cmd = self.options();
        cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("{}:127.0.0.1:{remote_port}", socket.display()))
            .arg("--")
            .arg(&self.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = OwnedChild::spawn(cmd, "ssh port forward")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.child_mut().try_wait()? {
                let mut err = Vec::new();
                if let Some(mut e) = child.child_mut().stderr.take() {
                    let _ = std::io::Read::read_to_end(&mut e, &mut err);
                }
                if status.code() == Some(255) && !String::from_utf8_lossy(&err).contains("forwarding") {
                    return Err(self.connect_error(&err));
                }
                break;
            }
            if UnixStream::connect(socket).is_ok() {
                return Ok(Forward { _child: child, socket: socket.to_path_buf() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut err = Vec::new();
        if let Some(mut e) = child.child_mut().stderr.take() {
            let _ = std::io::Read::read_to_end(&mut e, &mut err);
        }
        let reason = format!(
            "port forward failed: {}; the primary's sshd must allow it (AllowTcpForwarding in its sshd_config)",
            last_line(&err)
        );
        Err(SshError::Connect { target: self.describe(), reason })
    }

    /// Runs `remote` to completion, feeding `input` on its standard input. ssh's own failures
    /// (exit 255: unreachable, key refused, unknown host key) become `SshError::Connect`.
    pub fn run(&self, remote: &str, input: &[u8]) -> Result<Output, SshError> {
        let mut cmd = self.command(remote);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        proc::prepare(&mut cmd);
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A remote command that exits without reading gives EPIPE here: its exit status tells more.
        let _ = stdin.write_all(input);
        drop(stdin);
        let out = child.wait_with_output()?;
        if out.status.code() == Some(255) {
            return Err(self.connect_error(&out.stderr));
        }
        Ok(out)
    }

    /// ssh's own failure (exit 255) as one line: the reason ssh gave and what to do about it.
    pub fn connect_error(&self, stderr: &[u8]) -> SshError {
        let text = String::from_utf8_lossy(stderr);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        SshError::Connect { target: self.describe(), reason: self.explain(&lines) }
    }

    /// ssh's last line, with the next step for the failures a DBA meets first. A host key ssh cannot verify ends
    /// in "Host key verification failed." whatever the cause, and the cause is in the lines before it
    /// (sshconnect.c, check_host_key): a key not known yet ("No ED25519 host key is known for HOST and you
    /// have requested strict checking."), to accept once, or a known key that differs ("WARNING: REMOTE HOST
    /// IDENTIFICATION HAS CHANGED!"), which can be a man in the middle and must never be accepted blindly.
    fn explain(&self, lines: &[&str]) -> String {
        let last = lines.last().copied().unwrap_or("no message");
        if lines.iter().any(|l| l.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")) {
            return self.changed_key(lines);
        }
        if let Some(unknown) = lines.iter().find(|l| l.starts_with("No ") && l.contains(" host key is known for ")) {
            return format!(
                "{}: accept the primary's host key once, as this user, with `{}`, or check its fingerprint with \
                 the primary's administrator and add it with `ssh-keyscan {}{} >> {}`",
                unknown.trim_end_matches('.'),
                self.login_example(),
                self.port.map_or(String::new(), |p| format!("-p {p} ")),
                self.host,
                self.known_hosts()
            );
        }
        let next = if last.contains("Host key verification failed") {
            format!("check the primary's entry in {} (`ssh -v` shows why)", self.known_hosts())
        } else if last.contains("Permission denied") {
            "the primary's sshd refused the login: give --ssh-user a login whose ~/.ssh/authorized_keys there \
             holds the public half of --ssh-key (or of a key in your ssh agent)"
                .into()
        } else if last.contains("Connection refused") {
            "no sshd answers on that port: check --ssh-port (or Port in your ssh configuration) and that sshd runs \
             on the primary"
                .into()
        } else if last.contains("Could not resolve hostname") {
            "check the host name (-h, -d's host or PGHOST)".into()
        } else if last.contains("timed out") || last.contains("No route to host") {
            "the primary does not answer on its ssh port: check the address, --ssh-port and firewalls on the way".into()
        } else {
            format!("log in once by hand with `{}` to see why", self.login_example())
        };
        format!("{}: {next}", last.trim_end_matches('.'))
    }

    /// A changed host key: the key ssh was sent, the known_hosts line it contradicts and ssh's own command to
    /// remove that line, from what ssh printed.
    fn changed_key(&self, lines: &[&str]) -> String {
        let at = lines.iter().position(|l| l.starts_with("The fingerprint for the "));
        // "The fingerprint for the ED25519 key sent by the remote host is", then "SHA256:....".
        let sent = at
            .and_then(|i| Some((lines[i].split_whitespace().nth(4)?, lines.get(i + 1)?.trim_end_matches('.'))))
            .map_or("another key".to_string(), |(kind, fingerprint)| format!("{kind} key {fingerprint}"));
        // "Offending ED25519 key in FILE:LINE".
        let offending =
            lines.iter().find_map(|l| l.strip_prefix("Offending ")?.split_once(" key in ")).map(|(_, at)| at);
        let held = offending.map_or("the one in known_hosts".to_string(), |at| format!("the one in {at}"));
        // ssh's own "ssh-keygen -f FILE -R HOST" line where it prints one, else the same made here.
        let remove = lines.iter().find(|l| l.starts_with("ssh-keygen -f ")).map_or_else(
            || {
                let file = offending.and_then(|at| at.rsplit_once(':')).map(|(file, _)| format!("-f {file} "));
                let host = self.port.map_or(self.host.clone(), |p| format!("'[{}]:{p}'", self.host));
                format!("ssh-keygen {}-R {host}", file.unwrap_or_default())
            },
            |l| l.to_string(),
        );
        format!(
            "REMOTE HOST IDENTIFICATION HAS CHANGED: the primary's host sent {sent}, not {held}; this can be an \
             attack (someone between here and the primary) or a reinstalled host: verify the new key with the \
             primary's administrator, then remove the old one with `{remove}` and accept the new one with `{}`",
            self.login_example()
        )
    }

    /// The ssh login a DBA can type to see or settle what failed, with the flags pgclone was given.
    fn login_example(&self) -> String {
        let mut s = String::from("ssh");
        if let Some(c) = &self.config {
            s.push_str(&format!(" -F {}", c.display()));
        }
        if let Some(p) = self.port {
            s.push_str(&format!(" -p {p}"));
        }
        if let Some(u) = &self.user {
            s.push_str(&format!(" -l {u}"));
        }
        s.push(' ');
        s.push_str(&self.host);
        s
    }

    /// The known_hosts file ssh writes to for this host: the first of UserKnownHostsFile.
    fn known_hosts(&self) -> String {
        let configured = self.configured("userknownhostsfile");
        configured
            .and_then(|v| v.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "~/.ssh/known_hosts".into())
    }
}

fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    aes
}

/// The cipher list `list` (comma-separated) with its AES-GCM ciphers moved to the front; None when it has
/// none (nothing to reorder).
fn gcm_first(list: &str) -> Option<String> {
    let (gcm, rest): (Vec<&str>, Vec<&str>) = list.trim().split(',').partition(|c| c.contains("-gcm@"));
    (!gcm.is_empty()).then(|| [gcm, rest].concat().join(","))
}

/// A local Unix socket forwarded to the primary host; the forward ends when this drops, and the socket goes
/// with it (ssh leaves it behind when killed).
pub struct Forward {
    _child: OwnedChild,
    pub socket: PathBuf,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The last non-empty line of a program's stderr: where ssh, rsync and find put the reason.
pub fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr).lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("no message").to_string()
}

/// Quotes one word for a POSIX shell: ssh hands the remote side a single command line.
pub fn quote(word: impl Into<OsString>) -> String {
    let word = word.into().to_string_lossy().into_owned();
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(config: Option<PathBuf>) -> SshTarget {
        SshTarget {
            host: "db1.example".into(),
            user: None,
            port: None,
            key: None,
            config,
            insecure: false,
            ciphers: None,
            user_keepalive: OnceLock::new(),
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn keepalive_is_ours_unless_the_users_config_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let (theirs, none) = (dir.path().join("theirs"), dir.path().join("none"));
        std::fs::write(&theirs, "Host *\n  ServerAliveInterval 7\n").unwrap();
        std::fs::write(&none, "Host *\n  BatchMode yes\n").unwrap();
        assert!(args(&target(Some(none)).options()).contains(&"ServerAliveInterval=15".to_string()));
        assert!(!args(&target(Some(theirs)).options()).iter().any(|a| a.starts_with("ServerAlive")));
    }

    #[test]
    fn quote_survives_a_shell() {
        for w in ["plain", "with space", "it's", "$(rm -rf /)", "ümlaut dir", "a\nb", ""] {
            let out = Command::new("sh").arg("-c").arg(format!("printf %s {}", quote(w))).output().unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), w);
        }
    }

    #[test]
    fn gcm_ciphers_go_first_and_nothing_is_added() {
        assert_eq!(
            gcm_first("chacha20-poly1305@openssh.com,aes128-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com\n")
                .as_deref(),
            Some("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr")
        );
        assert_eq!(gcm_first("chacha20-poly1305@openssh.com,aes256-ctr"), None);
    }

    #[test]
    fn only_host_names_and_ip_literals_reach_ssh() {
        for ok in ["db1", "db-1.example.com", "pg_primary.local", "10.0.0.1", "::1", "fe80::1%eth0", "2001:db8::5"] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        let refused = [
            ("-oProxyCommand=touch /tmp/x", NameError::NotHostChar('=')),
            ("-oProxyCommand=id", NameError::NotHostChar('=')),
            ("-db1", NameError::Option),
            ("db1 -p 2222", NameError::NotHostChar(' ')),
            ("$(touch /tmp/x)", NameError::NotHostChar('$')),
            ("db1;id", NameError::NotHostChar(';')),
            ("db1`id`", NameError::NotHostChar('`')),
            ("db1\nid", NameError::NotHostChar('\n')),
            ("db1\tx", NameError::NotHostChar('\t')),
            ("db1\u{7}", NameError::NotHostChar('\u{7}')),
            ("root@db1", NameError::NotHostChar('@')),
            ("db1:22", NameError::NotHostChar(':')),
            ("fe80::1%eth0;id", NameError::NotHostChar(':')),
            ("", NameError::Empty),
        ];
        for (bad, why) in refused {
            assert_eq!(check_host(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn logins_are_names() {
        for ok in ["postgres", "svc_pg-1", "dba.smith", "pg@CORP.EXAMPLE"] {
            assert_eq!(check_user(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_user("-oProxyCommand=id"), Err(NameError::NotUserChar('=')));
        assert_eq!(check_user("-root"), Err(NameError::Option));
        assert_eq!(check_user("pg $(id)"), Err(NameError::NotUserChar(' ')));
        assert_eq!(check_user("pg\n"), Err(NameError::NotUserChar('\n')));
        assert_eq!(check_user(""), Err(NameError::Empty));
    }

    #[test]
    fn host_key_failures_keep_ssh_s_reason_and_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(&config, "UserKnownHostsFile /srv/kh\n").unwrap();
        let mut t = target(Some(config.clone()));
        (t.port, t.user) = (Some(2222), Some("postgres".into()));
        let login = format!("ssh -F {} -p 2222 -l postgres db1.example", config.display());
        let said = |stderr: &str| t.connect_error(stderr.as_bytes()).to_string();
        assert_eq!(
            said(
                "No ED25519 host key is known for [db1.example]:2222 and you have requested strict checking.\r\n\
                 Host key verification failed.\r\n"
            ),
            format!(
                "ssh to postgres@db1.example:2222 failed: No ED25519 host key is known for [db1.example]:2222 and you \
                 have requested strict checking: accept the primary's host key once, as this user, with `{login}`, \
                 or check its fingerprint with the primary's administrator and add it with `ssh-keyscan -p 2222 \
                 db1.example >> /srv/kh`"
            )
        );
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n\
                       @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n\
                       @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n\
                       IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n\
                       The fingerprint for the ED25519 key sent by the remote host is\r\n\
                       SHA256:abcDEF123.\r\n\
                       Please contact your system administrator.\r\n\
                       Offending ED25519 key in /srv/kh:3\r\n\
                       Host key for [db1.example]:2222 has changed and you have requested strict checking.\r\n\
                       Host key verification failed.\r\n";
        assert_eq!(
            said(changed),
            format!(
                "ssh to postgres@db1.example:2222 failed: REMOTE HOST IDENTIFICATION HAS CHANGED: the primary's host \
                 sent ED25519 key SHA256:abcDEF123, not the one in /srv/kh:3; this can be an attack (someone between \
                 here and the primary) or a reinstalled host: verify the new key with the primary's administrator, \
                 then remove the old one with `ssh-keygen -f /srv/kh -R '[db1.example]:2222'` and accept the new one \
                 with `{login}`"
            ),
            "without ssh's own `ssh-keygen -f` line, one made of the file, host and port"
        );
        assert_eq!(
            said("postgres@db1.example: Permission denied (publickey).\r\n"),
            "ssh to postgres@db1.example:2222 failed: postgres@db1.example: Permission denied (publickey): the \
             primary's sshd refused the login: give --ssh-user a login whose ~/.ssh/authorized_keys there holds the \
             public half of --ssh-key (or of a key in your ssh agent)"
        );
    }

    #[test]
    fn last_line_skips_blank_lines() {
        assert_eq!(last_line(b"Warning: x\nPermission denied (publickey).\n\n"), "Permission denied (publickey).");
        assert_eq!(last_line(b""), "no message");
    }
}
