//! WAL stream: receives the primary's WAL over a physical replication connection from before
//! pg_backup_start until past the backup's stop position, into segment files of our own.
//!
//! Protocol: protocol-replication.sgml (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, START_REPLICATION,
//! XLogData 'w', keepalive 'k', standby status update 'r'); client behaviour as in
//! src/bin/pg_basebackup/receivelog.c.
//!
//! The stream holds a TEMPORARY physical slot: from its creation the primary keeps every segment we have
//! not confirmed, so a checkpoint (pg_backup_start's fast one included) cannot remove WAL the clone needs,
//! and the slot disappears with the connection whatever happens to pgclone. It confirms nothing until `unpin`:
//! until then the slot holds the WAL from where it reserved it (the redo pointer at its creation), which a
//! re-sync may still read on the primary (see clone::connect).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Cancelled, IoAt, IoContext};
use crate::pg::lsn::{history_file_name, Lsn, SegSize};
use crate::pg::replication::{ServerMessage, StandbyStatus};
use crate::pg::timeline::{parse_history, Span};
use crate::pg::{Conn, CopyData, PgError, Wire};
use crate::sys::cancel::Cancel;

/// Standby status updates keep wal_sender_timeout (60 s by default) from killing us and let the slot
/// advance; pg_receivewal's default is 10 s, we answer faster.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How long the stream may make no progress towards the stop position before we give up.
const STALL_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum WalStreamError {
    #[error("cannot open a replication connection to the primary: {0}")]
    Connect(PgError),
    #[error("{what} failed on the replication connection: {source}")]
    Command { what: &'static str, source: PgError },
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error("starting the WAL stream thread: {0}")]
    Thread(std::io::Error),
    #[error("the primary ended the WAL stream at {0} (timeline switch or shutdown)")]
    ServerEnded(Lsn),
    #[error("WAL stream stalled at {at} for {secs} s while waiting for {want}")]
    Stalled { at: Lsn, want: Lsn, secs: u64 },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Where the stream began, as the server reported it.
#[derive(Debug, Clone, Copy)]
pub struct StreamStart {
    pub system_id: u64,
    pub timeline: u32,
    /// Start of the segment holding the server's position when we connected.
    pub lsn: Lsn,
}

pub struct WalStream {
    pub start: StreamStart,
    /// The server's timeline history, oldest timeline first, its current one (`start.timeline`) last.
    pub history: Vec<Span>,
    /// How the replication connection travels (the connection itself lives on the stream's thread).
    pub wire: Wire,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Wakes the stream's thread from its wait on the server when `State` asks something of it (stop, close,
    /// quit): otherwise it would notice only at its next poll timeout, on an idle primary 100 ms later.
    wake: OwnedFd,
}

#[derive(Default)]
struct State {
    received: Lsn,
    /// Status updates confirm the flushed position (see `WalStream::unpin`); until then, none.
    unpinned: bool,
    stop_at: Option<Lsn>,
    /// Everything through `stop_at` is written; the stream now only holds its slot.
    held: bool,
    /// End the stream properly (CopyDone) rather than just dropping the connection.
    close: bool,
    quit: bool,
    outcome: Option<Result<Lsn, String>>,
}

impl Shared {
    fn new() -> Result<Shared, WalStreamError> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        let wake = rustix::event::eventfd(0, flags).map_err(|e| WalStreamError::Thread(e.into()))?;
        Ok(Shared { state: Mutex::default(), changed: Condvar::new(), wake })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state and wakes the stream's thread to act on it.
    fn tell(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
        // An eventfd counts; a full count (never, at one write per request) only means it is already readable.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Clears the wake-up once the thread is awake, before it looks at the state again.
    fn woken(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut count);
    }
}

impl WalStream {
    /// Connects (replication=true), creates the temporary slot, and starts streaming into `dir`.
    /// Returns once the server has accepted START_REPLICATION, so the caller may run pg_backup_start.
    /// A failure later on cancels the clone through `cancel` with the reason.
    ///
    /// `standby_session`: the SQL session, given when the server is a standby. There pg_backup_start
    /// starts the backup at the last restartpoint's redo (do_pg_backup_start in recovery), which may lie
    /// before the replay position IDENTIFY_SYSTEM reports; the stream then starts where the slot reserved WAL
    /// from (the redo pointer at its creation, no later than any restartpoint the backup can use).
    pub fn start(
        params: &[(&str, &str)],
        dir: &Path,
        seg: SegSize,
        (slot, temporary): (&str, bool),
        standby_session: Option<&mut Conn>,
        cancel: Cancel,
    ) -> Result<WalStream, WalStreamError> {
        let mut p = params.to_vec();
        p.push(("replication", "true"));
        let mut conn = Conn::connect(&p).map_err(WalStreamError::Connect)?;
        let cmd = |what| move |source| WalStreamError::Command { what, source };

        // The slot first, then the position: the slot reserves WAL from the last checkpoint's redo
        // pointer, which lies at or before any position the server reports afterwards. An existing slot (-S)
        // holds WAL from the position streamed from on, once START_REPLICATION has moved it there.
        if temporary {
            conn.query(&format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY PHYSICAL (RESERVE_WAL)"))
                .map_err(cmd("CREATE_REPLICATION_SLOT"))?;
        }
        let rows = conn.query("IDENTIFY_SYSTEM").map_err(cmd("IDENTIFY_SYSTEM"))?;
        let field = |i| rows.get(0, i).ok_or_else(|| WalStreamError::Protocol("short IDENTIFY_SYSTEM answer".into()));
        let system_id: u64 = field(0)?.parse().map_err(|_| WalStreamError::Protocol("bad system identifier".into()))?;
        let timeline: u32 = field(1)?.parse().map_err(|_| WalStreamError::Protocol("bad timeline".into()))?;
        let xlogpos: Lsn = field(2)?.parse().map_err(|e| WalStreamError::Protocol(format!("{e}")))?;
        let from = match standby_session {
            Some(sql) => sql
                .query_params("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = $1", &[slot])
                .map_err(cmd("reading the slot's reserved position"))?
                .get(0, 0)
                .and_then(|l| l.parse().ok())
                .map_or(xlogpos, |reserved: Lsn| reserved.min(xlogpos)),
            None => xlogpos,
        };
        let start = StreamStart { system_id, timeline, lsn: seg.segment_start(from) };

        // Recovery of the clone reads the history of its timeline from pg_wal (receivelog.c fetches it too).
        let mut content = String::new();
        if timeline > 1 {
            let rows = conn.query(&format!("TIMELINE_HISTORY {timeline}")).map_err(cmd("TIMELINE_HISTORY"))?;
            content = rows.get(0, 1).unwrap_or_default().to_string();
            let path = dir.join(history_file_name(timeline));
            std::fs::write(&path, &content).at("writing", &path)?;
        }
        let history = parse_history(timeline, &content)
            .ok_or_else(|| WalStreamError::Protocol(format!("timeline {timeline}'s history does not parse")))?;
        conn.start_copy_both(&format!("START_REPLICATION SLOT {slot} PHYSICAL {} TIMELINE {timeline}", start.lsn))
            .map_err(cmd("START_REPLICATION"))?;
        tracing::debug!(%start.lsn, timeline, slot, "WAL stream started");

        let wire = conn.wire();
        let shared = Arc::new(Shared::new()?);
        shared.lock().received = start.lsn;
        let writer = SegmentWriter { dir: dir.to_path_buf(), seg, timeline, open: None };
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wal-stream".into())
            .spawn(move || {
                let outcome = receive(conn, writer, &thread_shared, start.lsn).map_err(|e| e.to_string());
                let mut st = thread_shared.lock();
                if let Err(e) = &outcome {
                    if !st.quit {
                        cancel.cancel(format!("WAL stream from the primary failed: {e}"));
                    }
                }
                st.outcome = Some(outcome);
                thread_shared.changed.notify_all();
            })
            .map_err(WalStreamError::Thread)?;
        Ok(WalStream { start, history, wire, shared, thread: Some(thread) })
    }

    /// From now on the stream confirms the positions it has flushed, as a standby does, and its slot moves on
    /// with them. Before, each standby status update confirms none (an invalid flush position moves no slot:
    /// walsender.c, ProcessStandbyReplyMessage), so the slot holds the WAL from where it reserved it.
    pub fn unpin(&self) {
        self.shared.tell(|st| st.unpinned = true);
    }

    /// Waits until everything through `stop` (pg_backup_stop's position) is written (finalize's sync makes it
    /// durable). The stream then stays connected, holding its temporary slot and writing nothing more, until
    /// `close`: WAL the standby will need after the clone stays on the primary while the clone is finished.
    pub fn reach(&mut self, stop: Lsn, cancel: &Cancel) -> Result<Lsn, WalStreamError> {
        self.shared.tell(|st| st.stop_at = Some(stop));
        self.wait(stop, cancel, |st| st.held)
    }

    /// Waits until everything before `lsn` is written here, streaming on.
    pub fn wait_for(&self, lsn: Lsn, cancel: &Cancel) -> Result<(), WalStreamError> {
        self.wait(lsn, cancel, |st| st.received >= lsn).map(drop)
    }

    /// Waits until `done` holds of the stream's state, returning the position received; fails when the stream
    /// failed or ended, `cancel` fires, or nothing arrives for STALL_LIMIT on the way to `want`.
    fn wait(&self, want: Lsn, cancel: &Cancel, done: impl Fn(&State) -> bool) -> Result<Lsn, WalStreamError> {
        let mut st = self.shared.lock();
        let (mut seen, mut since) = (st.received, Instant::now());
        loop {
            if done(&st) {
                return Ok(st.received);
            }
            if let Some(o) = &st.outcome {
                return Err(WalStreamError::Failed(o.clone().err().unwrap_or_else(|| "the stream ended early".into())));
            }
            cancel.check()?;
            if st.received > seen {
                (seen, since) = (st.received, Instant::now());
            } else if since.elapsed() > STALL_LIMIT {
                return Err(WalStreamError::Stalled { at: seen, want, secs: STALL_LIMIT.as_secs() });
            }
            st = self.shared.changed.wait_timeout(st, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Ends the stream as the protocol asks (CopyDone, then the server's CommandComplete; done already once it
    /// reached its stop, see `hold`); the temporary slot goes with the connection.
    pub fn close(mut self) -> Result<(), WalStreamError> {
        self.shared.tell(|st| st.close = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let outcome = self.shared.lock().outcome.take();
        outcome.map_or(Ok(()), |o| o.map(drop).map_err(WalStreamError::Failed))
    }
}

impl Drop for WalStream {
    /// Abandons the stream (on failure paths): the thread drops the connection, and with it the slot.
    fn drop(&mut self) {
        self.shared.tell(|st| st.quit = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The receive loop, on its own thread. Returns the position received up to when asked to stop.
fn receive(mut conn: Conn, mut writer: SegmentWriter, shared: &Shared, start: Lsn) -> Result<Lsn, WalStreamError> {
    let mut received = start;
    let mut flushed = start;
    let mut last_status: Option<Instant> = None;
    loop {
        {
            let st = shared.lock();
            if st.quit {
                return Ok(received);
            }
            if st.close {
                drop(st);
                end_streaming(&mut conn, shared)?;
                return Ok(received);
            }
            if st.stop_at.is_some_and(|stop| received >= stop) {
                drop(st);
                return hold(conn, shared, received);
            }
        }
        let mut reply_now = false;
        match conn.get_copy_data().map_err(|source| WalStreamError::Command { what: "receiving WAL", source })? {
            CopyData::Message(m) => {
                match ServerMessage::parse(&m).map_err(|e| WalStreamError::Protocol(e.to_string()))? {
                    ServerMessage::XLogData { start, data, .. } => {
                        if start != received {
                            return Err(WalStreamError::Protocol(format!("WAL data at {start}, expected {received}")));
                        }
                        writer.write(start, data)?;
                        received = Lsn(start.0 + data.len() as u64);
                        shared.lock().received = received;
                        shared.changed.notify_all();
                    }
                    ServerMessage::Keepalive { reply_requested, .. } => reply_now = reply_requested,
                }
            }
            CopyData::WouldBlock => {
                conn.wait_readable_or(Duration::from_millis(100), Some(shared.wake.as_fd()))
                    .map_err(|source| WalStreamError::Command { what: "waiting for WAL", source })?;
                shared.woken();
            }
            CopyData::Done => return Err(WalStreamError::ServerEnded(received)),
        }
        if reply_now || last_status.is_none_or(|t| t.elapsed() >= STATUS_INTERVAL) {
            if received > flushed {
                writer.sync()?;
                flushed = received;
            }
            let confirmed = if shared.lock().unpinned { flushed } else { Lsn(0) };
            let status =
                StandbyStatus { written: received, flushed: confirmed, applied: Lsn(0), reply_requested: false };
            conn.put_copy_data(&status.encode(SystemTime::now()))
                .map_err(|source| WalStreamError::Command { what: "sending status", source })?;
            last_status = Some(Instant::now());
        }
    }
}

/// The clone has its WAL through the stop position: streaming ends now (CopyDone), while finalize runs, and the
/// session stays until `close` or `quit`, holding the slot where we last reported (a temporary slot lives as long
/// as its session, released but kept, slot.c ReplicationSlotCleanup): WAL the standby will ask for at its first
/// start stays on the primary. Ending here rather than at `close` takes the server's last messages off the
/// run's path: its CopyDone comes after whatever WAL it had already sent, megabytes of padding after a segment
/// switch, at the link's pace. Not synced here either: finalize lays the segments into the clone's pg_wal and
/// makes them durable with every copied file in its one sync, before pg_control goes in place.
fn hold(mut conn: Conn, shared: &Shared, received: Lsn) -> Result<Lsn, WalStreamError> {
    {
        let mut st = shared.lock();
        st.held = true;
        shared.changed.notify_all();
    }
    end_streaming(&mut conn, shared)?;
    let mut st = shared.lock();
    while !st.close && !st.quit {
        st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    Ok(received)
}

/// Ends streaming as the protocol asks (protocol-replication: our CopyDone, then the server's last CopyData, its
/// CopyDone and CommandComplete), giving way to `quit`: a run that fails or is interrupted does not wait on the
/// server.
fn end_streaming(conn: &mut Conn, shared: &Shared) -> Result<(), WalStreamError> {
    let ending = |source| WalStreamError::Command { what: "ending the stream", source };
    conn.send_copy_done().map_err(ending)?;
    loop {
        if shared.lock().quit {
            return Ok(());
        }
        match conn.get_copy_data().map_err(ending)? {
            CopyData::Message(_) => {}
            CopyData::WouldBlock => {
                conn.wait_readable_or(Duration::from_millis(100), Some(shared.wake.as_fd())).map_err(ending)?;
                shared.woken();
            }
            CopyData::Done => return conn.copy_ended().map_err(ending),
        }
    }
}

/// Writes streamed WAL into segment files: `NAME.partial` while open, pre-sized to the segment size,
/// renamed to `NAME` once its last byte is written and synced (as pg_receivewal does).
struct SegmentWriter {
    dir: PathBuf,
    seg: SegSize,
    timeline: u32,
    open: Option<(u64, File)>,
}

impl SegmentWriter {
    fn write(&mut self, mut pos: Lsn, mut data: &[u8]) -> Result<(), WalStreamError> {
        while !data.is_empty() {
            let segno = self.seg.segno(pos);
            let offset = self.seg.offset(pos);
            let file = match &self.open {
                Some((n, f)) if *n == segno => f,
                _ => {
                    let path = self.partial(segno);
                    // 0600, as PostgreSQL creates its files (pg_file_create_mode), whatever our umask.
                    let f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .at("creating", &path)?;
                    f.set_len(self.seg.bytes()).at("sizing", &path)?;
                    &self.open.insert((segno, f)).1
                }
            };
            let n = data.len().min((self.seg.bytes() - offset) as usize);
            file.write_all_at(&data[..n], offset).map_err(|e| IoAt::new("writing", self.partial(segno), e))?;
            pos = Lsn(pos.0 + n as u64);
            data = &data[n..];
            if offset + n as u64 == self.seg.bytes() {
                self.complete(segno)?;
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalStreamError> {
        if let Some((segno, f)) = &self.open {
            f.sync_data().map_err(|e| IoAt::new("syncing", self.partial(*segno), e))?;
        }
        Ok(())
    }

    fn complete(&mut self, segno: u64) -> Result<(), WalStreamError> {
        self.sync()?;
        self.open = None;
        let done = self.dir.join(self.seg.file_name(self.timeline, segno));
        std::fs::rename(self.partial(segno), &done).at("renaming into place", &done)?;
        Ok(File::open(&self.dir).and_then(|d| d.sync_all()).at("syncing", &self.dir)?)
    }

    fn partial(&self, segno: u64) -> PathBuf {
        self.dir.join(format!("{}.partial", self.seg.file_name(self.timeline, segno)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_partial_until_complete() {
        let dir = tempfile::tempdir().unwrap();
        let seg = SegSize::new(1 << 20).unwrap();
        let mut w = SegmentWriter { dir: dir.path().into(), seg, timeline: 1, open: None };
        let start = Lsn(3 << 20);
        w.write(start, &vec![7u8; 600 << 10]).unwrap();
        assert!(dir.path().join("000000010000000000000003.partial").exists());
        // Crosses into the next segment: the first completes and is renamed.
        w.write(Lsn(start.0 + (600 << 10)), &vec![9u8; 600 << 10]).unwrap();
        let done = std::fs::read(dir.path().join("000000010000000000000003")).unwrap();
        assert_eq!(done.len(), 1 << 20);
        assert_eq!(done[0], 7);
        assert_eq!(done[(1 << 20) - 1], 9);
        let next = dir.path().join("000000010000000000000004.partial");
        assert_eq!(std::fs::metadata(&next).unwrap().len(), 1 << 20, "pre-sized");
        assert!(!dir.path().join("000000010000000000000003.partial").exists());
    }
}
