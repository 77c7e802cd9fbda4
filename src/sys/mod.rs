//! Operating-system adapters: the ssh binary, child processes we own, cancellation across threads, the
//! shared rate budgets (-r, --limit-net-bw), the files pgclone writes itself, and the terminal -W reads a
//! password from.

pub mod bandwidth;
pub mod cancel;
pub mod files;
pub mod periodic;
pub mod proc;
pub mod ssh;
pub mod tty;
