//! The harness of pgclone's integration tests.
//!
//! Every test builds its own lab: a work directory under /tmp, a PostgreSQL primary on a free
//! loopback port (or on a host of its own, a network namespace), a real sshd on another free port, and
//! (for end-to-end tests) a standby started from the clone. Tests never touch the real ~/.ssh: ssh always
//! runs with `-F <lab>/ssh/ssh_config`. Nothing is shared between tests but the OS user, so they run in
//! parallel threads of one process.
//!
//! PostgreSQL and pgclone refuse to run as root. When the tests run as root, every process runs as
//! the unprivileged OS user `pgclonetest` (created on demand), via `Command::uid/gid`, with a
//! clean environment (HOME/USER/LOGNAME/PATH set explicitly).
//!
//! Ownership: every process is owned by a value whose Drop ends it (`Bg` and `Running` kill their child,
//! servers run `pg_ctl stop -m immediate`, `Netns` kills what runs inside it). Fixtures hold a clone of
//! the `Lab`, so the work directory is removed only after the last fixture is gone. Set
//! PGCLONE_KEEP_TEST_DIR=1 to keep it.
//!
//! pgclone runs with TMPDIR=<lab>/tmp and the lab's ssh sessions get TMPDIR=<lab>/remote-tmp, so the clean
//! checks can see its run directory (`pgclone-*`) and the rsync daemon's (`pgclone-rsyncd.*`) per test.

mod assertions;
mod lab;
mod netns;
mod pgclone;
mod postgres;
mod process;
mod setup;
mod sshd;

pub use assertions::*;
pub use lab::*;
pub use pgclone::*;
pub use postgres::*;
pub use process::*;
pub use setup::*;
pub use sshd::*;
