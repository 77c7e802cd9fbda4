//! Error policy.
//!
//! Each module that a caller crosses returns its own `thiserror` enum whose messages a DBA can act on: what
//! failed, on which host or file, and, where there is one, the fix. Context is added where it is known, once:
//! a file-system error carries the operation and the path ([`IoAt`], built with [`IoContext::at`]); a libpq
//! error carries the step that failed. `main` prints the chain as one line, `pgclone: error: ...`, and exits 1;
//! nothing below `main` prints an error or exits. A run stopped on purpose (a signal, a failure seen by another
//! thread) is [`Cancelled`] with the first reason, the one the user needs.

use std::fmt;
use std::path::{Path, PathBuf};

/// A local file-system operation that failed, with what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct IoAt {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoAt {
    pub fn new(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> IoAt {
        IoAt { what, path: path.into(), source }
    }
}

/// `.at("reading", &path)` on any `io::Result`: the one way an I/O error gets its context.
pub trait IoContext<T> {
    fn at(self, what: &'static str, path: impl AsRef<Path>) -> Result<T, IoAt>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, what: &'static str, path: impl AsRef<Path>) -> Result<T, IoAt> {
        self.map_err(|source| IoAt::new(what, path.as_ref(), source))
    }
}

/// The run was stopped: by a signal, or because another thread (the WAL stream, the backup session's
/// watcher, a copy worker) failed first and said why. The reason is that first cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Cancelled(pub String);

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
