//! The connections the copy runs on, opened together because both mostly wait on the network: the WAL stream
//! (a replication connection on a temporary slot, which from its creation keeps every segment the clone needs)
//! and the transport (agents or an rsync daemon on the primary).

use std::path::Path;

use super::preflight::{self, Primary};
use super::{CloneConfig, CloneError};
use crate::pg::wal_stream::WalStream;
use crate::pg::Conn;
use crate::sys::cancel::Cancel;
use crate::transport::{self, Transport};

pub struct Connect<'a> {
    pub config: &'a CloneConfig,
    /// libpq keywords for the primary (through the tunnel, if any).
    pub params: &'a [(&'static str, String)],
    pub primary: Primary,
    /// The system identifier of --primary-pgdata, which must be the streamed cluster's; None: the transport
    /// reads it as it starts.
    pub system_id: Option<u64>,
    /// Where the stream writes its segments.
    pub streamed: &'a Path,
    pub run_dir: &'a Path,
    /// The replica holds an earlier copy to re-sync.
    pub resync: bool,
}

pub struct Connected {
    pub stream: WalStream,
    pub transport: Box<dyn Transport>,
    /// The stream's slot: its temporary one, which --create-slot copies at the end, or -S's.
    pub slot: String,
    /// The system identifier of --primary-pgdata (the streamed cluster's).
    pub system_id: u64,
}

impl Connect<'_> {
    /// `sql`: the checked SQL session, which the stream consults when the server is a standby.
    pub fn run(self, sql: &mut Conn, cancel: &Cancel) -> Result<Connected, CloneError> {
        let (slot, temporary) = match &self.config.stream_slot {
            Some(name) => (name.clone(), false),
            None => (format!("pgclone_{}_{:04x}", std::process::id(), rand_u16()), true),
        };
        let params: Vec<(&str, &str)> = self.params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let standby_session = self.primary.in_recovery.then_some(sql);
        let pgdata = &self.config.primary_pgdata;
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
        Ok(Connected { stream, transport, slot, system_id })
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u16::from_ne_bytes(b)
}
