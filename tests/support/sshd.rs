//! A real sshd per test, on its own port, as the lab user: pgclone's transport is ssh, so the tests use
//! the real thing, never the machine's sshd or the user's ~/.ssh (every client runs with `-F` and a
//! config of the lab's). Its sessions carry the lab's tag and TMPDIR, which is how the clean checks find
//! what pgclone left on "the primary's host".

use super::lab::*;
use super::netns::*;
use super::process::*;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A real sshd on `addr:<free port>` (a loopback address, or a network namespace's), running as the lab
/// user (a non-root sshd can only log in as itself, which is all pgclone needs). Its sessions get the lab's
/// tag and TMPDIR=`Lab::remote_tmpdir`. Killed when dropped.
pub struct Sshd {
    lab: Lab,
    /// The address it listens on, and the host in known_hosts and `ssh_cmd`.
    pub addr: String,
    pub port: u16,
    pub dir: PathBuf,
    /// Authorized client private key.
    pub key: PathBuf,
    /// ssh client config for `ssh -F` / `pgclone --ssh-config` using `key`.
    pub config: PathBuf,
    _process: Bg,
}

impl Sshd {
    pub fn start(lab: &Lab) -> Sshd {
        Self::start_on(lab, "127.0.0.1")
    }

    pub fn start_on(lab: &Lab, addr: &str) -> Sshd {
        Self::launch(lab, addr, lab.cmd("/usr/sbin/sshd"), "")
    }

    /// An sshd on loopback whose sessions find programs in `bin` first (`PATH=<bin>:/usr/bin:/bin`): a primary
    /// host where a command behaves otherwise than it should.
    pub fn start_with_path(lab: &Lab, bin: &Path) -> Sshd {
        Self::launch(lab, "127.0.0.1", lab.cmd("/usr/sbin/sshd"), &format!(" PATH={}:/usr/bin:/bin", bin.display()))
    }

    /// An sshd on loopback whose sessions see no PostgreSQL client library: a mount namespace of its own (root
    /// only) where libpq's file is /dev/null, as on a host without libpq. Returns it with that file's path.
    pub fn start_without_libpq(lab: &Lab) -> (Sshd, PathBuf) {
        let libpq = fs::canonicalize("/usr/lib/x86_64-linux-gnu/libpq.so.5").expect("libpq5 is installed here");
        let user = lab.user();
        let mut cmd = lab.base_cmd("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind /dev/null {} && exec setpriv --reuid={} --regid={} --clear-groups /usr/sbin/sshd \"$@\"",
                libpq.display(),
                user.uid,
                user.gid
            ))
            .arg("sshd");
        (Self::launch(lab, "127.0.0.1", cmd, ""), libpq)
    }

    /// An sshd inside `ns`, on its address.
    pub fn start_in(lab: &Lab, ns: &Netns) -> Sshd {
        Self::launch(lab, &ns.ns_addr, ns_cmd(&ns.name, lab, "/usr/sbin/sshd"), "")
    }

    /// Keys and configs in `<work dir>/ssh`, then `sshd` (a command that runs /usr/sbin/sshd where it must
    /// run) in the foreground, logging to `<work dir>/sshd.log`; returns once a login with the key works.
    /// `setenv`: more ` NAME=value` words for its sessions' environment.
    fn launch(lab: &Lab, addr: &str, mut sshd: Command, setenv: &str) -> Sshd {
        let dir = lab.mkdir("ssh");
        let port = free_port();
        let keygen = |file: &Path| {
            lab.run(
                lab.cmd("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "pgclone-test", "-f"]).arg(file),
            );
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
                 SetEnv {tag} TMPDIR={tmp}{setenv}\n",
                hk = host_key.display(),
                d = dir.display(),
                user = lab.user().name,
                tag = lab.tag(),
                tmp = lab.remote_tmpdir().display(),
            ),
        );
        sshd.args(["-D", "-e", "-f"]).arg(&sshd_config);
        let mut process = lab.spawn("sshd", sshd);
        wait_for(&format!("sshd on {addr}:{port} to accept connections"), Duration::from_secs(20), || {
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
    fn write_client_config(lab: &Lab, known_hosts: &Path, key: &Path, name: &str) -> PathBuf {
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

    /// A client config with the authorized key whose known_hosts file holds another key for this sshd, as after
    /// the primary's host keys were made anew (or with a man in the middle): (config, known_hosts).
    pub fn config_with_another_host_key(&self) -> (PathBuf, PathBuf) {
        let other = self.dir.join("other_host_ed25519");
        self.lab.run(self.lab.cmd("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other));
        let line = fs::read_to_string(other.with_extension("pub")).unwrap();
        let line = line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let known_hosts =
            self.lab.write(self.dir.join("known_hosts_other"), &format!("[{}]:{} {line}\n", self.addr, self.port));
        (Self::write_client_config(&self.lab, &known_hosts, &self.key, "ssh_config_other_host_key"), known_hosts)
    }

    /// The SHA256 fingerprint of this sshd's host key, as ssh prints it (`SHA256:...`).
    pub fn host_key_fingerprint(&self) -> String {
        let out = self.lab.run(self.lab.cmd("ssh-keygen").arg("-lf").arg(self.dir.join("host_ed25519.pub")));
        out.split_whitespace().nth(1).expect("ssh-keygen -l prints bits, fingerprint, comment, type").to_string()
    }

    /// `ssh -F CONFIG -p PORT -l USER ADDR REMOTE_CMD` as the lab user.
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
