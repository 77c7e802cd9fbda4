//! The connections the copy runs on, opened together because both mostly wait on the network: the WAL stream
//! (a replication connection on a temporary slot, which from its creation keeps every segment the clone needs)
//! and the transport (agents or an rsync daemon on the primary). The backup starts as soon as the stream runs,
//! while the transport still logs in, when nothing it does can take WAL a re-sync has yet to read (`Backup`).

use std::path::Path;

use super::preflight::{self, Primary};
use super::resync::WalToRead;
use super::{CloneConfig, CloneError};
use crate::pg::backup_session::BackupSession;
use crate::pg::lsn::{Lsn, SegSize};
use crate::pg::wal_stream::WalStream;
use crate::pg::{Conn, Wire};
use crate::sys::cancel::Cancel;
use crate::transport::{self, Transport};

pub struct Connect<'a> {
    pub config: &'a CloneConfig,
    /// libpq keywords for the primary (through the tunnel, if any).
    pub params: &'a [(&'static str, String)],
    pub primary: Primary,
    /// The primary's data directory (--primary-pgdata, or the server's data_directory).
    pub pgdata: &'a Path,
    /// The system identifier of --primary-pgdata, which must be the streamed cluster's; None: the transport
    /// reads it as it starts.
    pub system_id: Option<u64>,
    /// Where the stream writes its segments.
    pub streamed: &'a Path,
    pub run_dir: &'a Path,
    /// The replica holds an earlier copy to re-sync.
    pub resync: bool,
    /// PostgreSQL connections go through the run's ssh tunnel (--bypass-rep-traffic).
    pub tunnel: bool,
    /// Start the backup too: a run (not --check) with a fast checkpoint. A spread one takes minutes, which the
    /// overlap would not shorten, and a transport that fails meanwhile would be reported only after it.
    pub backup: Option<Backup>,
}

/// pg_backup_start as soon as the stream runs, so that its checkpoint (a restartpoint on a standby) takes place
/// while the transport's ssh login and agent start, not after them. A re-sync then still reads the primary's WAL
/// from the replica's redo point, a former primary's from its last checkpoint before the fork (`WalToRead`,
/// resync::survey), and a checkpoint removes or recycles the segments before its redo pointer but for those a
/// replication slot or wal_keep_size keeps (xlog.c, CreateCheckPoint and KeepLogSeg). So then the backup starts
/// early only when one of them keeps that WAL (`wal_kept`); else after the survey has read it, as when nothing
/// overlapped.
pub struct Backup {
    pub wal: Option<WalToRead>,
}

/// The SQL session as the connections leave it: the backup already started in it, or not yet.
pub enum Session {
    Idle(Conn),
    Started(BackupSession),
}

pub struct Connected {
    pub stream: WalStream,
    pub transport: Box<dyn Transport>,
    /// The stream's slot: its temporary one, which --create-slot copies at the end, or -S's.
    pub slot: String,
    /// The system identifier of --primary-pgdata (the streamed cluster's).
    pub system_id: u64,
    /// The PostgreSQL connections that travel in clear text (see `clear_text`).
    pub clear_text: Vec<&'static str>,
    pub session: Session,
}

impl Connect<'_> {
    /// `sql`: the checked SQL session, which the stream consults when the server is a standby, and where the
    /// backup starts.
    pub fn run(self, sql: Conn, cancel: &Cancel) -> Result<Connected, CloneError> {
        let (slot, temporary) = match &self.config.stream_slot {
            Some(name) => (name.clone(), false),
            None => (format!("pgclone_{}_{:04x}", std::process::id(), rand_u16()), true),
        };
        let params: Vec<(&str, &str)> = self.params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sql_wire = sql.wire();
        let pgdata = self.pgdata;
        let (config, primary, streamed, backup) = (self.config, self.primary, self.streamed, self.backup);
        let slot_name = slot.as_str();
        // The transport on this thread: its child processes must not outlive the thread that started them
        // (PR_SET_PDEATHSIG fires when the forking thread ends).
        let (stream, transport) = std::thread::scope(|s| {
            let stream = s.spawn(move || {
                let mut sql = sql;
                let standby_session = primary.in_recovery.then_some(&mut sql);
                let stream = WalStream::start(
                    &params,
                    streamed,
                    primary.seg,
                    (slot_name, temporary),
                    standby_session,
                    cancel.clone(),
                )?;
                let session = match backup {
                    Some(b) => b.start_early(sql, &stream, (slot_name, primary.seg), config)?,
                    None => Session::Idle(sql),
                };
                Ok::<_, CloneError>((stream, session))
            });
            let transport = transport::open(&config.transport, pgdata, self.run_dir, self.resync);
            (stream.join().expect("starting the WAL stream does not panic"), transport)
        });
        let (stream, session) = stream?;
        let transport = transport?;
        let system_id = self.system_id.or(transport.system_id()).expect("read by preflight or by the transport");
        preflight::same_cluster(pgdata, system_id, stream.start.system_id)?;
        tracing::info!(
            "streaming WAL from {} on timeline {} into slot {slot}",
            stream.start.lsn,
            stream.start.timeline
        );
        let clear_text = clear_text(&[(SQL_SESSION, sql_wire), (WAL_STREAM, stream.wire)], self.tunnel);
        Ok(Connected { stream, transport, slot, system_id, clear_text, session })
    }
}

impl Backup {
    fn start_early(
        self,
        mut sql: Conn,
        stream: &WalStream,
        (slot, seg): (&str, SegSize),
        config: &CloneConfig,
    ) -> Result<Session, CloneError> {
        if let Some(wal) = &self.wal {
            // The server's position lies within the stream's first segment.
            let now = Lsn(stream.start.lsn.0 + seg.bytes());
            let kept = wal.oldest(&stream.history).and_then(|oldest| wal_kept(&mut sql, slot, oldest, now));
            if let Err(why) = kept {
                tracing::info!("the backup starts after the re-sync has read the primary's WAL: {why}");
                return Ok(Session::Idle(sql));
            }
        }
        Ok(Session::Started(backup_start(sql, stream, config)?))
    }
}

/// pg_backup_start in the session the checks used; the stream must already hold the WAL from the backup's start.
pub fn backup_start(sql: Conn, stream: &WalStream, config: &CloneConfig) -> Result<BackupSession, CloneError> {
    let backup = BackupSession::start(sql, &config.label, config.fast_checkpoint)?;
    if backup.start_lsn < stream.start.lsn {
        return Err(CloneError::StreamTooLate { start: backup.start_lsn, stream: stream.start.lsn });
    }
    tracing::info!("backup started at {}", backup.start_lsn);
    Ok(backup)
}

/// Whether the primary keeps its WAL from `oldest` through a checkpoint that starts now (`now`: no earlier than
/// the server's position), or why that is not known: our slot holds it (it reserved WAL from the redo pointer at
/// its creation, slot.c ReplicationSlotReserveWal, and confirms nothing until `WalStream::unpin`), or
/// wal_keep_size does (it keeps that much WAL behind the checkpoint's own record, xlog.c KeepLogSeg); half of it,
/// for the WAL the primary writes until the checkpoint.
fn wal_kept(sql: &mut Conn, slot: &str, oldest: Lsn, now: Lsn) -> Result<(), String> {
    let rows = sql
        .query_params(
            "SELECT (SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = $1), \
             pg_size_bytes(current_setting('wal_keep_size'))",
            &[slot],
        )
        .map_err(|e| format!("reading the slot's reserved position and wal_keep_size: {e}"))?;
    let reserved: Option<Lsn> = rows.get(0, 0).and_then(|l| l.parse().ok());
    let keep: u64 = rows.get(0, 1).and_then(|k| k.parse().ok()).unwrap_or(0);
    let since = now.0.saturating_sub(oldest.0);
    if reserved.is_some_and(|r| r <= oldest) || since <= keep / 2 {
        return Ok(());
    }
    Err(format!(
        "slot {slot} holds the WAL from {} on, and wal_keep_size ({}) is less than twice the {} written since",
        reserved.map_or("nowhere".into(), |r| r.to_string()),
        crate::progress::bytes(keep),
        crate::progress::bytes(since)
    ))
}

/// The run's PostgreSQL connections, by the names `--json` gives them (`postgres_clear_text`).
const SQL_SESSION: &str = "sql_session";
const WAL_STREAM: &str = "wal_stream";

/// Those of `connections` whose bytes anyone on the path can read (and change), named in one warning line.
/// libpq's default sslmode, `prefer`, falls back to clear text without a word when the server has `ssl = off`;
/// the WAL stream then carries every change the primary makes, `pg_authid`'s password hashes included, and
/// the SQL session the backup's commands. Encrypted connections, Unix-domain sockets and the run's own ssh
/// tunnel are not.
fn clear_text(connections: &[(&'static str, Wire)], tunnel: bool) -> Vec<&'static str> {
    let clear: Vec<&'static str> =
        connections.iter().filter(|(_, w)| *w == Wire::Clear && !tunnel).map(|(name, _)| *name).collect();
    let described: Vec<&str> = clear
        .iter()
        .map(|name| match *name {
            SQL_SESSION => "the SQL session",
            _ => "the WAL stream (replication connection)",
        })
        .collect();
    if !clear.is_empty() {
        tracing::warn!(
            "PostgreSQL connections in clear text (no TLS): {}. Anyone on the path can read them (the WAL carries \
             every change to the primary's data) or change them; sslmode=require in -d or PGSSLMODE insists on TLS, \
             --bypass-rep-traffic sends them through ssh",
            described.join(", ")
        );
    }
    clear
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u16::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clear_tcp_outside_the_tunnel_is_clear_text() {
        let both = [(SQL_SESSION, Wire::Clear), (WAL_STREAM, Wire::Clear)];
        assert_eq!(clear_text(&both, false), [SQL_SESSION, WAL_STREAM]);
        assert!(clear_text(&both, true).is_empty(), "the ssh tunnel encrypts them");
        let mixed = [(SQL_SESSION, Wire::UnixSocket), (WAL_STREAM, Wire::Clear)];
        assert_eq!(clear_text(&mixed, false), [WAL_STREAM]);
        assert!(clear_text(&[(SQL_SESSION, Wire::Encrypted), (WAL_STREAM, Wire::UnixSocket)], false).is_empty());
    }
}
