//! Backup session: the low-level non-exclusive backup API (backup.sgml, "Making a Base Backup Using the
//! Low Level API"). The session that called pg_backup_start must stay open until pg_backup_stop; if it
//! closes first (we fail, are killed, the link drops) the server aborts the backup by itself, so an
//! unfinished clone never leaves a backup in progress on the primary.

use crate::pg::lsn::Lsn;
use crate::pg::{Conn, PgError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("pg_backup_start failed: {0}")]
    Start(PgError),
    #[error("pg_backup_stop failed: {0}")]
    Stop(PgError),
    #[error("the backup session on the primary ended: {0}")]
    Lost(PgError),
    #[error("unexpected answer from {0}")]
    Answer(&'static str),
}

pub struct BackupSession {
    conn: Conn,
    pub start_lsn: Lsn,
}

/// What pg_backup_stop hands back: the stop position and the two files the copy must contain.
pub struct BackupEnd {
    pub stop_lsn: Lsn,
    pub backup_label: String,
    /// Empty when the primary has no tablespaces.
    pub tablespace_map: String,
}

impl BackupSession {
    /// Starts the backup labelled `label` (backup_label's LABEL). `fast`: with an immediate checkpoint, so the
    /// clone does not wait up to checkpoint_timeout × checkpoint_completion_target for its starting point; else
    /// with a spread one, which spares a busy primary the burst of writes.
    pub fn start(mut conn: Conn, label: &str, fast: bool) -> Result<BackupSession, BackupError> {
        let fast = if fast { "true" } else { "false" };
        let rows =
            conn.query_params("SELECT pg_backup_start($1, $2::boolean)", &[label, fast]).map_err(BackupError::Start)?;
        let start_lsn = rows.get(0, 0).and_then(|s| s.parse().ok()).ok_or(BackupError::Answer("pg_backup_start"))?;
        Ok(BackupSession { conn, start_lsn })
    }

    /// Fails once the server has ended our session: the backup is then already aborted on the primary,
    /// and copying on would only produce a clone that cannot be finished.
    pub fn check_alive(&mut self) -> Result<(), BackupError> {
        self.conn.check_alive().map_err(BackupError::Lost)
    }

    /// The session, for queries about this backup that must see what it started (WAL summaries up to its start).
    pub fn session(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Ends the backup. wait_for_archive = false: the clone carries its own streamed WAL and must not
    /// depend on the primary's archive_command.
    /// Returns the session's connection for what follows (slot, watching the standby).
    pub fn stop(mut self) -> Result<(BackupEnd, Conn), BackupError> {
        let rows = self
            .conn
            .query("SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(false)")
            .map_err(BackupError::Stop)?;
        let stop_lsn = rows.get(0, 0).and_then(|s| s.parse().ok()).ok_or(BackupError::Answer("pg_backup_stop"))?;
        let end = BackupEnd {
            stop_lsn,
            backup_label: rows.get(0, 1).ok_or(BackupError::Answer("pg_backup_stop"))?.to_string(),
            tablespace_map: rows.get(0, 2).unwrap_or_default().to_string(),
        };
        Ok((end, self.conn))
    }
}
