//! The agent brought along: `pgclone-agent`, built with this binary and installed beside it (which needs no
//! library but glibc's), copied for one run into a private directory on the primary host, so that the native
//! transport needs nothing installed there (see the README's requirements) and client and agent are always the
//! same version. Without it beside us, this binary itself goes, which then needs libpq on the primary too.
//!
//! One ssh session (the run's only ssh login) does it all: its shell reads the system identifier of the data
//! directory (preflight's check), makes the directory (0700, under the session's $TMPDIR), reads the binary from
//! standard input (sent as the session starts, so that it travels while ssh logs in, not after), and runs it as
//! the run's control agent on the rest of its input only once the copy has the size and the SHA-256 we passed on
//! its command line: the verdict is the primary's own, taken before exec, so a copy cut short (a link that
//! dropped, a full $TMPDIR) or changed on the way never runs, not even for the moment it would take us to read a
//! checksum and object. With --remote-pgclone the same session runs the installed
//! agent instead. The agent ends when that input ends (we close it, pgclone dies and the kernel closes the pipe,
//! or the link drops and sshd closes the session) or when it has heard nothing from us for a minute (a link cut
//! for good); the shell then removes the directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;

use sha2::{Digest, Sha256};

use super::channel::Halves;
use super::{PgdataError, TransportError, PGDATA_PROBE};
use crate::sys::proc::OwnedChild;
use crate::sys::ssh::{last_line, quote, SshTarget};

/// The remote half. `$1` is the size in bytes of the binary we send, `$2` the data directory, `$3` an installed
/// agent (--remote-pgclone), or empty to bring ours, `$4` the SHA-256 (hex) of the binary we send, `$5` the
/// machine it is built for (`uname -m`). First reads the system identifier of `$2` (preflight's check, in this
/// same login). With an installed agent it prints that and becomes the agent; else it prints `<system id>
/// <machine> <dir>`, and exits OTHER_MACHINE on a machine other than `$5`, before reading anything; then, once the
/// binary is in `<dir>/pgclone-agent` and has `$1` bytes and the SHA-256 `$4`, `verified <sha-256>`; then the
/// agent speaks. A copy of another size exits SHORT_COPY, of another SHA-256 BAD_COPY, each with its reason on
/// stderr, and the binary is not run. `head -c` reads no further than the binary, and we send nothing more before
/// the verdict: the agent's input starts with our first request.
fn agent_script() -> String {
    format!(
        r#"set -u
{PGDATA_PROBE}
if [ -n "$3" ]; then echo "$system"; exec "$3" agent --pgdata "$2"; fi
umask 077
dir=$(mktemp -d "${{TMPDIR:-/tmp}}/pgclone-agent.XXXXXX") || exit 12
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' HUP INT TERM PIPE
echo "$system $(uname -m) $dir"
[ "$(uname -m)" = "$5" ] || exit {OTHER_MACHINE}
head -c "$1" > "$dir/pgclone-agent" || exit 13
got=$(wc -c < "$dir/pgclone-agent") || exit 14
if [ "$got" -ne "$1" ]; then echo "received $got of $1 bytes" >&2; exit {SHORT_COPY}; fi
sum=$(sha256sum "$dir/pgclone-agent") || exit 14
sum=${{sum%% *}}
if [ "$sum" != "$4" ]; then echo "its SHA-256 is $sum, not $4" >&2; exit {BAD_COPY}; fi
chmod 700 "$dir/pgclone-agent"
echo "verified $sum"
"$dir/pgclone-agent" agent --pgdata "$2"
"#
    )
}

/// The remote half's exit status for a copy of the agent with fewer (or more) bytes than we sent.
const SHORT_COPY: i32 = 16;
/// The remote half's exit status for a copy of the agent whose SHA-256 is not that of what we sent.
const BAD_COPY: i32 = 17;
/// The remote half's exit status on a machine the binary we send is not built for.
const OTHER_MACHINE: i32 = 18;

/// The run's control agent on the primary host: an installed one, or ours, brought along.
pub struct Started {
    /// The ssh session; its stderr is left for the caller to read should the agent fail.
    pub child: OwnedChild,
    pub halves: Halves,
    /// The agent's binary there, for more agents over ssh connections of their own.
    pub bin: String,
    /// The system identifier in the data directory's pg_control.
    pub system_id: u64,
}

pub fn start_agent(ssh: &SshTarget, pgdata: &Path, installed: Option<&str>) -> Result<Started, TransportError> {
    let fail = |what: &str| TransportError::Agent(format!("bringing pgclone to the primary host: {what}"));
    let binary = match installed {
        Some(_) => None,
        None => {
            let exe = std::env::current_exe().map_err(|e| fail(&format!("finding our own binary: {e}")))?;
            let agent = exe.with_file_name("pgclone-agent");
            let exe = if agent.is_file() { agent } else { exe };
            let bytes = std::fs::read(&exe).map_err(|e| fail(&format!("reading {}: {e}", exe.display())))?;
            tracing::debug!("bringing {} ({}) to the primary host", exe.display(), env!("CARGO_PKG_VERSION"));
            Some(bytes)
        }
    };
    let sent: String =
        binary.as_ref().map_or_else(String::new, |b| Sha256::digest(b).iter().map(|b| format!("{b:02x}")).collect());
    let ours = rustix::system::uname().machine().to_string_lossy().into_owned();
    let remote = format!(
        "sh -c {} pgclone-agent {} {} {} {} {}",
        quote(agent_script()),
        binary.as_ref().map_or(0, Vec::len),
        quote(pgdata),
        quote(installed.unwrap_or_default()),
        quote(&sent),
        quote(&ours)
    );
    let mut cmd = ssh.command(&remote);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = OwnedChild::spawn(cmd, "pgclone agent over ssh")
        .map_err(|source| TransportError::Io { what: "starting ssh", source })?;
    let stdin = child.child_mut().stdin.take().expect("piped");
    // The binary goes now, on a thread of its own: ssh holds what the remote shell has not read yet, and the
    // shell reads it only once the data directory and the machine have passed. A session that ends before
    // reading it fails the write (EPIPE: Rust ignores SIGPIPE), and the thread ends.
    let (stdin, sending) = match binary {
        None => (Some(stdin), None),
        Some(binary) => {
            let mut stdin = stdin;
            let send = move || stdin.write_all(&binary).and_then(|()| stdin.flush()).map(|()| stdin);
            (None, Some(std::thread::spawn(send)))
        }
    };
    let mut out = BufReader::new(child.child_mut().stdout.take().expect("piped"));
    let mut line = String::new();
    let said = |out: &mut BufReader<_>, line: &mut String| {
        line.clear();
        out.read_line(line).map(|n| n > 0)
    };
    let last_words = |child: &mut OwnedChild| {
        let mut err = Vec::new();
        if let Some(mut e) = child.child_mut().stderr.take() {
            let _ = e.read_to_end(&mut err);
        }
        let _ = child.wait_timeout(std::time::Duration::from_secs(5));
        err
    };
    if !said(&mut out, &mut line).unwrap_or(false) {
        let err = last_words(&mut child);
        let code = child.child_mut().try_wait().ok().flatten().and_then(|s| s.code());
        return Err(match (code, PgdataError::from_probe(code, ssh, pgdata)) {
            (Some(255), _) => TransportError::Ssh(ssh.connect_error(&err)),
            (_, Some(e)) => TransportError::Pgdata(e),
            _ => fail(&last_line(&err)),
        });
    }
    let mut words = line.split_whitespace();
    let system_id = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| fail(&format!("unexpected {line:?}")))?;
    let Some(sending) = sending else {
        let bin = installed.expect("one or the other").to_string();
        let stdin = stdin.expect("kept when nothing is sent");
        return Ok(Started { child, halves: (Box::new(out), Box::new(stdin)), bin, system_id });
    };
    let (Some(machine), Some(dir)) = (words.next(), words.next()) else {
        return Err(fail(&format!("unexpected {line:?}")));
    };
    if machine != ours {
        return Err(TransportError::AgentMissing(format!(
            "the primary host is {machine}, this pgclone is built for {ours}: install pgclone {} for {machine} \
             there and give --remote-pgclone PATH, or use --transport rsync",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let bin = format!("{dir}/pgclone-agent");
    let stdin = match sending.join().expect("writing to a pipe does not panic") {
        Ok(stdin) => stdin,
        Err(e) => {
            let err = last_words(&mut child);
            return Err(fail(&format!("sending it: {e} ({})", last_line(&err))));
        }
    };
    if !said(&mut out, &mut line).unwrap_or(false) {
        let err = last_words(&mut child);
        let refused = match child.child_mut().try_wait().ok().flatten().and_then(|s| s.code()) {
            Some(SHORT_COPY) => "the copy there is incomplete",
            Some(BAD_COPY) => "the copy there is not what was sent",
            _ => return Err(fail(&format!("no verdict on the copy ({})", last_line(&err)))),
        };
        return Err(fail(&format!("{refused} ({}); it was not run", last_line(&err))));
    }
    if line.trim() != format!("verified {sent}") {
        return Err(fail(&format!("unexpected verdict {:?} on the copy; it was not run", line.trim())));
    }
    tracing::debug!("brought to the primary host as {bin}");
    Ok(Started { child, halves: (Box::new(out), Box::new(stdin)), bin, system_id })
}
