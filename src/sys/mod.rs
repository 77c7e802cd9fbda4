//! Operating-system adapters: the ssh binary, child processes we own, cancellation across threads, and the
//! shared network budget.

pub mod bandwidth;
pub mod cancel;
pub mod periodic;
pub mod proc;
pub mod ssh;
