//! Child processes we start, each owned by a value that ends it.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::periodic::Periodic;

/// A running child process that is killed when this value drops, and that the kernel kills if pgclone itself
/// dies (PR_SET_PDEATHSIG), so even `kill -9 pgclone` leaves none of our local processes behind.
/// The child also gets its own process group: a terminal's Ctrl-C reaches only pgclone, which then ends
/// the children in an order that leaves the primary clean.
pub struct OwnedChild {
    child: Child,
    what: String,
}

impl OwnedChild {
    pub fn spawn(mut cmd: Command, what: impl Into<String>) -> io::Result<OwnedChild> {
        prepare(&mut cmd);
        let child = cmd.spawn()?;
        Ok(OwnedChild { child, what: what.into() })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// Kills what is left of the child's process group: processes it forked (rsync's receiver) can outlive
    /// it and keep working, and keep its pipes open.
    pub fn kill_group(&self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnedChild {
    /// Kills the child's whole process group: rsync, for one, forks a receiver that would otherwise
    /// outlive the process we started and keep pulling data.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_group();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// How often a holder hears from us, and how long it waits for that before it concludes we are gone.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
pub const HOLDER_PATIENCE_SECS: u32 = 30;

/// A remote shell that holds something on the primary for the run (our agent binary, the rsync daemon) waits on
/// its input; this writes it a line every HEARTBEAT, and the shell gives up after HOLDER_PATIENCE_SECS without
/// one (`holder_wait`): a link cut for good, which the primary's sshd may not notice for hours, then still ends
/// the hold within a minute. Dropping the returned value closes the input (it goes with the thread), which
/// ends the hold at once.
pub fn heartbeat(mut input: ChildStdin) -> Periodic {
    Periodic::start(HEARTBEAT, move || input.write_all(b"\n").and_then(|()| input.flush()).is_ok())
}

/// The shell loop a holder waits in: one line at a time, each within HOLDER_PATIENCE_SECS (coreutils `timeout`);
/// it ends at the end of its input or when a line is late.
pub fn holder_wait() -> String {
    format!("while timeout {HOLDER_PATIENCE_SECS} sh -c 'IFS= read -r _'; do :; done")
}

/// Applies PDEATHSIG and a fresh process group to a command about to be spawned, for children
/// that are run to completion with `Command::output` rather than held as `OwnedChild`.
pub fn prepare(cmd: &mut Command) {
    cmd.process_group(0);
    let parent = rustix::process::getpid();
    // SAFETY: the closure only makes async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died between fork and prctl; then nobody would ever send the signal. Its
            // orphan has been re-parented (to init or a subreaper), so the parent is no longer the one we had.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}
