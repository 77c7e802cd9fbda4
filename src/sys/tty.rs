//! -W: the password typed at the terminal, as pg_basebackup's -W asks for it. Echo is off while it is typed, and
//! the terminal gets its settings back whatever ends the prompt: Enter, an error, or a Ctrl-C (which cancels the
//! run, and the prompt with it, through `Cancel`).

use std::os::fd::{AsFd, BorrowedFd};

use rustix::termios::{self, LocalModes, OptionalActions, Termios};

use crate::error::Cancelled;
use crate::sys::cancel::Cancel;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "-W/--password asks for the password on a terminal, and standard input is not one: give it in ~/.pgpass, \
         in the file PGPASSFILE names, or in PGPASSWORD instead"
    )]
    NotATerminal,
    #[error("reading the password from the terminal failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Asks on stderr, reads one line from standard input, a terminal, without echo.
pub fn read_password(cancel: &Cancel) -> Result<String, PasswordError> {
    let stdin = std::io::stdin();
    if !termios::isatty(stdin.as_fd()) {
        return Err(PasswordError::NotATerminal);
    }
    eprint!("Password: ");
    let password = read_without_echo(stdin.as_fd(), cancel);
    // The Enter the user typed was not echoed either.
    eprintln!();
    password
}

/// The terminal's settings before echo was turned off, put back when dropped.
struct EchoOff<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, OptionalActions::Now, &self.saved);
    }
}

/// One line from the terminal `fd` with echo off, without its newline. The terminal stays in canonical mode, so
/// the line arrives whole (with the user's own editing) once Enter is pressed; until then the wait wakes every
/// 200 ms to see whether the run was cancelled.
fn read_without_echo(fd: BorrowedFd<'_>, cancel: &Cancel) -> Result<String, PasswordError> {
    let saved = termios::tcgetattr(fd).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    termios::tcsetattr(fd, OptionalActions::Now, &quiet).map_err(std::io::Error::from)?;
    let _restore = EchoOff { fd, saved };
    let mut line = Vec::new();
    loop {
        cancel.check()?;
        let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
        let mut buf = [0u8; 1024];
        let n = match rustix::io::read(fd, &mut buf) {
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            r => r.map_err(std::io::Error::from)?,
        };
        line.extend_from_slice(&buf[..n]);
        if n == 0 || line.ends_with(b"\n") {
            break;
        }
    }
    if line.ends_with(b"\n") {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| std::io::Error::other("the password is not UTF-8").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    /// A pseudo-terminal: (the side a user types into, the side pgclone reads as its terminal).
    fn pty() -> (OwnedFd, OwnedFd) {
        let user = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        rustix::pty::grantpt(&user).unwrap();
        rustix::pty::unlockpt(&user).unwrap();
        let name = rustix::pty::ptsname(&user, Vec::new()).unwrap();
        let terminal = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY, Mode::empty()).unwrap();
        (user, terminal)
    }

    fn echo(fd: &OwnedFd) -> bool {
        termios::tcgetattr(fd).unwrap().local_modes.contains(LocalModes::ECHO)
    }

    /// Waits until the terminal's echo is off (the prompt is reading).
    fn wait_echo_off(fd: &OwnedFd) {
        let start = Instant::now();
        while echo(fd) {
            assert!(start.elapsed() < Duration::from_secs(10), "echo was never turned off");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the terminal showed the user: everything readable on their side now.
    fn shown(user: &OwnedFd) -> String {
        let mut out = Vec::new();
        let mut fds = [rustix::event::PollFd::new(user, rustix::event::PollFlags::IN)];
        let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        while rustix::event::poll(&mut fds, Some(&timeout)).unwrap() > 0 {
            let mut buf = [0u8; 256];
            let n = rustix::io::read(user, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn the_password_is_read_without_echo_and_the_terminal_restored() {
        let (user, terminal) = pty();
        assert!(echo(&terminal), "a fresh terminal echoes");
        let cancel = Cancel::default();
        let password = std::thread::scope(|s| {
            let reader = s.spawn(|| read_without_echo(terminal.as_fd(), &cancel));
            wait_echo_off(&terminal);
            rustix::io::write(&user, b"s3cr et\n").unwrap();
            reader.join().unwrap()
        });
        assert_eq!(password.unwrap(), "s3cr et");
        assert!(!shown(&user).contains("s3cr"), "the password was echoed");
        assert!(echo(&terminal), "echo is back on after the prompt");
    }

    #[test]
    fn a_cancelled_prompt_ends_and_restores_the_terminal() {
        let (_user, terminal) = pty();
        let cancel = Cancel::default();
        let result = std::thread::scope(|s| {
            let reader = s.spawn(|| read_without_echo(terminal.as_fd(), &cancel));
            wait_echo_off(&terminal);
            cancel.cancel("interrupted by SIGINT");
            reader.join().unwrap()
        });
        assert!(matches!(result, Err(PasswordError::Cancelled(Cancelled(r))) if r == "interrupted by SIGINT"));
        assert!(echo(&terminal), "echo is back on after Ctrl-C at the prompt");
    }
}
