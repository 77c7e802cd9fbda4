//! The connections the copy runs on, opened together because both mostly wait on the network: the WAL stream
//! (a replication connection on a temporary slot, which from its creation keeps every segment the clone needs)
//! and the transport (agents or an rsync daemon on the primary).

use std::path::Path;

use super::preflight::{self, Primary};
use super::{CloneConfig, CloneError};
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
}

impl Connect<'_> {
    /// `sql`: the checked SQL session, which the stream consults when the server is a standby.
    pub fn run(self, sql: &mut Conn, cancel: &Cancel) -> Result<Connected, CloneError> {
        let (slot, temporary) = match &self.config.stream_slot {
            Some(name) => (name.clone(), false),
            None => (format!("pgclone_{}_{:04x}", std::process::id(), rand_u16()), true),
        };
        let params: Vec<(&str, &str)> = self.params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sql_wire = sql.wire();
        let standby_session = self.primary.in_recovery.then_some(sql);
        let pgdata = self.pgdata;
        // The transport on this thread: its child processes must not outlive the thread that started them
        // (PR_SET_PDEATHSIG fires when the forking thread ends).
        let (stream, transport) = std::thread::scope(|s| {
            let stream = s.spawn(|| {
                let slot = (slot.as_str(), temporary);
                WalStream::start(&params, self.streamed, self.primary.seg, slot, standby_session, cancel.clone())
            });
            let transport = transport::open(&self.config.transport, pgdata, self.run_dir, self.resync);
            (stream.join().expect("starting the WAL stream does not panic"), transport)
        });
        let stream = stream?;
        let transport = transport?;
        let system_id = self.system_id.or(transport.system_id()).expect("read by preflight or by the transport");
        preflight::same_cluster(pgdata, system_id, stream.start.system_id)?;
        tracing::info!(
            "streaming WAL from {} on timeline {} into slot {slot}",
            stream.start.lsn,
            stream.start.timeline
        );
        let clear_text = clear_text(&[(SQL_SESSION, sql_wire), (WAL_STREAM, stream.wire)], self.tunnel);
        Ok(Connected { stream, transport, slot, system_id, clear_text })
    }
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
