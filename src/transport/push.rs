//! The agent brought along: this very binary, copied for one run into a private directory on the primary host,
//! so that the native transport needs nothing installed there but what any PostgreSQL host has (see the README's
//! requirements) and client and agent are always the same version.
//!
//! One ssh session holds the copy. Its shell makes the directory (0700, under the session's $TMPDIR), reads the
//! binary from standard input, prints its SHA-256 for us to compare with what we sent, and then waits for the
//! end of its input, which comes when we close it, when pgclone dies (the kernel closes the pipe) or when the
//! link drops (sshd closes the session), or for our heartbeat to stop (a link cut for good). It then removes
//! the directory. Agents started from the copy keep
//! running if it goes first: Linux keeps an executing file's contents until its last user ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStderr, Stdio};

use sha2::{Digest, Sha256};

use super::TransportError;
use crate::sys::periodic::Periodic;
use crate::sys::proc::{heartbeat, holder_wait, OwnedChild};
use crate::sys::ssh::{last_line, quote, SshTarget};

/// The remote half. `$1` is the binary's size in bytes, `$2` the loop it then waits in (`holder_wait`). Prints
/// `<machine> <dir>`, then, once the binary is in `<dir>/pgclone`, its SHA-256.
const HOLDER_SCRIPT: &str = r#"
set -u
umask 077
dir=$(mktemp -d "${TMPDIR:-/tmp}/pgclone-agent.XXXXXX") || exit 12
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' HUP INT TERM PIPE
echo "$(uname -m) $dir"
head -c "$1" > "$dir/pgclone" || exit 13
chmod 700 "$dir/pgclone"
sha256sum "$dir/pgclone" || exit 14
eval "$2"
"#;

/// The copy of our binary on the primary host, there as long as this value lives.
pub struct Pushed {
    /// Where the agents are started from.
    pub bin: String,
    /// Its end ends the holder session, which removes the copy; dropped before `holder` is waited for.
    heartbeat: Option<Periodic>,
    /// Kept open: a holder whose stderr went away would die of SIGPIPE at its first word, and take the copy.
    _stderr: ChildStderr,
    holder: OwnedChild,
}

impl Pushed {
    pub fn push(ssh: &SshTarget) -> Result<Pushed, TransportError> {
        let fail = |what: &str| TransportError::Agent(format!("bringing pgclone to the primary host: {what}"));
        let exe = std::env::current_exe().map_err(|e| fail(&format!("finding our own binary: {e}")))?;
        let binary = std::fs::read(&exe).map_err(|e| fail(&format!("reading {}: {e}", exe.display())))?;
        let remote =
            format!("sh -c {} pgclone-agent-holder {} {}", quote(HOLDER_SCRIPT), binary.len(), quote(holder_wait()));
        let mut cmd = ssh.command(&remote);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut holder = OwnedChild::spawn(cmd, "pgclone agent holder over ssh")
            .map_err(|source| TransportError::Io { what: "starting ssh", source })?;
        let mut stdin = holder.child_mut().stdin.take().expect("piped");
        let mut out = BufReader::new(holder.child_mut().stdout.take().expect("piped"));
        let mut stderr = holder.child_mut().stderr.take().expect("piped");
        let mut line = String::new();
        let said = |out: &mut BufReader<_>, line: &mut String| {
            line.clear();
            out.read_line(line).map(|n| n > 0)
        };
        if !said(&mut out, &mut line).unwrap_or(false) {
            let mut err = Vec::new();
            let _ = stderr.read_to_end(&mut err);
            let _ = holder.wait_timeout(std::time::Duration::from_secs(5));
            return Err(match holder.child_mut().try_wait().ok().flatten().and_then(|s| s.code()) {
                Some(255) => TransportError::Ssh(ssh.connect_error(&err)),
                _ => fail(&last_line(&err)),
            });
        }
        let (machine, dir) = line.trim_end().split_once(' ').ok_or_else(|| fail(&format!("unexpected {line:?}")))?;
        let ours = rustix::system::uname().machine().to_string_lossy().into_owned();
        if machine != ours {
            return Err(TransportError::AgentMissing(format!(
                "the primary host is {machine}, this pgclone is built for {ours}: install pgclone {} for {machine} \
                 there and give --remote-pgclone PATH, or use --transport rsync",
                env!("CARGO_PKG_VERSION")
            )));
        }
        let bin = format!("{dir}/pgclone");
        stdin.write_all(&binary).and_then(|()| stdin.flush()).map_err(|e| fail(&format!("sending it: {e}")))?;
        if !said(&mut out, &mut line).unwrap_or(false) {
            let mut err = Vec::new();
            let _ = stderr.read_to_end(&mut err);
            return Err(fail(&format!("no checksum of the copy ({})", last_line(&err))));
        }
        let sent: String = Sha256::digest(&binary).iter().map(|b| format!("{b:02x}")).collect();
        if line.split_whitespace().next() != Some(sent.as_str()) {
            return Err(fail(&format!("the copy's SHA-256 is {}, not {sent}", line.trim())));
        }
        tracing::debug!("pgclone {} brought to the primary host as {bin}", env!("CARGO_PKG_VERSION"));
        Ok(Pushed { bin, heartbeat: Some(heartbeat(stdin)), _stderr: stderr, holder })
    }
}

impl Drop for Pushed {
    fn drop(&mut self) {
        self.heartbeat.take();
        if let Ok(None) = self.holder.wait_timeout(std::time::Duration::from_secs(5)) {
            tracing::warn!("{} did not end within 5 s of closing it; killing it", self.holder.what());
        }
    }
}
