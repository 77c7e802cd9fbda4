//! Native transport: `pgclone agent` on the primary speaking docs/PROTOCOL.md. One agent started over ssh
//! controls the run; the workers' data moves over direct connections to it (TLS 1.3, see `channel`), or over
//! ssh connections of their own, each to an agent of its own (`--data-channel ssh`). When the data directory is
//! on this host, the agents are local child processes.
//!
//! Big files are split into ranges that any worker may take, so all workers finish together. A piece that
//! already has data here (a resumed or re-synced replica) is compared page by page (XXH3-64 of each 8 KiB
//! page) and only differing pages move: never size and mtime.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

use xxhash_rust::xxh3::xxh3_64;

use super::agent::PING_EVERY;
use super::channel::{self, Halves};
use super::protocol::{decompress_into, read_msg, write_msg, Codec, Msg, DATA_CHUNK, PROTOCOL_VERSION};
use super::{
    push, Copied, DataChannel, How, Piece, RemoteEntry, Sink, Transport, TransportError, Worker, LISTING_BUDGET,
};
use crate::error::{IoAt, IoContext};
use crate::pg::wal_records::{Scanned, Stretch};
use crate::replica::direct_io::{AlignedBuf, Target};
use crate::sys::bandwidth::Limits;
use crate::sys::cancel::Cancel;
use crate::sys::periodic::Periodic;
use crate::sys::proc::OwnedChild;
use crate::sys::ssh::{last_line, quote, SshTarget};

/// Delta granularity: PostgreSQL's page (BLCKSZ, 8 KiB), the unit in which relation files change, so a
/// re-sync moves the changed pages and nothing around them. Their hashes are 1/1024 of the data.
const DELTA_BLOCK: u32 = 8 << 10;
/// `fetch_file` brings pg_control (8 KiB); no more of any file is asked for, or taken.
const FETCH_FILE_MAX: u64 = 1 << 20;

/// Where agents run.
#[derive(Clone)]
pub enum Launch {
    /// On the primary host, over ssh: one control session, and file data over `channel`.
    Ssh { ssh: SshTarget, channel: DataChannel },
    /// The primary's data directory is on this host: agents are local child processes.
    Local,
}

#[derive(Clone)]
pub struct Options {
    pub launch: Launch,
    /// The pgclone binary on the primary host (--remote-pgclone); None: our own, brought along (see `push`).
    pub remote_bin: Option<String>,
    pub pgdata: PathBuf,
    pub codec: Codec,
    pub level: i32,
    pub split: u64,
    /// -r, taken as workers ask for data (see `pace`), and --limit-net-bw, taken as it arrives.
    pub limits: Limits,
    /// Copy workers to come: their connections are all made when the transport starts.
    pub workers: usize,
}

/// How long a data connection may take to reach the agent's port before `--data-channel auto` gives up on it:
/// on a network that lets it through it takes a round trip.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NativeTransport {
    /// Stopped first: it holds the pools below.
    _pinger: Periodic,
    opts: Options,
    /// The agent started over ssh (or locally) for the run: it lists, fetches single files and, for a data
    /// channel of our own, listens for the workers' connections. The run's remote processes end with it.
    control: Pool,
    /// Data connections not in use: given back by each worker that ends with nothing in flight.
    idle: Pool,
    /// Data connections made when the transport started, not greeted yet: each worker greets its own, so the
    /// ssh logins of `--data-channel ssh` go on while the backup starts and the primary is listed.
    starting: Pool,
    /// How to make another data connection when the pools run dry: an agent process (over ssh, or local);
    /// None for a data channel of our own, whose port admits the announced connections only.
    more: Option<String>,
    /// What the data travels over (see `Transport::data_channel`).
    channel: &'static str,
    /// Read by the control session as it started (see `Transport::system_id`).
    system_id: Option<u64>,
}

struct AgentConn {
    w: BufWriter<Box<dyn Write + Send>>,
    r: BufReader<Box<dyn Read + Send>>,
    /// The last frame's buffer, for the next one (see `read_msg`).
    spare: Vec<u8>,
    /// The process behind the connection (an ssh client or a local agent); None for a direct data connection.
    child: Option<OwnedChild>,
}

impl AgentConn {
    fn over(halves: Halves, child: Option<OwnedChild>) -> AgentConn {
        let (r, w) = halves;
        AgentConn { w: BufWriter::new(w), r: BufReader::with_capacity(1 << 20, r), spare: Vec::new(), child }
    }

    /// Starts an agent running `bin`. In the thread that will outlive it: PR_SET_PDEATHSIG (see proc.rs) signals
    /// a child when the *thread* that forked it ends, not the process.
    fn spawn(o: &Options, bin: &str) -> Result<AgentConn, TransportError> {
        let mut cmd = match &o.launch {
            Launch::Ssh { ssh, .. } => ssh.command(&format!("{} agent --pgdata {}", quote(bin), quote(&o.pgdata))),
            Launch::Local => {
                let mut c = Command::new(bin);
                c.arg("agent").arg("--pgdata").arg(&o.pgdata);
                c
            }
        };
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = OwnedChild::spawn(cmd, "pgclone agent").map_err(io("starting the agent"))?;
        let w = child.child_mut().stdin.take().expect("piped");
        let r = child.child_mut().stdout.take().expect("piped");
        Ok(AgentConn::over((Box::new(r), Box::new(w)), Some(child)))
    }

    /// Versions must match exactly: client and agent then agree on every rule of the protocol.
    fn hello(mut self, o: &Options) -> Result<AgentConn, TransportError> {
        let conn = &mut self;
        let ours = env!("CARGO_PKG_VERSION");
        let hello = conn
            .send(&Msg::Hello { protocol: PROTOCOL_VERSION, version: ours.into() })
            .and_then(|()| conn.recv().map_err(|e| TransportError::Agent(e.to_string())));
        match hello {
            Ok(Msg::Hello { protocol, version }) if protocol == PROTOCOL_VERSION && version == ours => Ok(self),
            Ok(Msg::Hello { version, .. }) => Err(TransportError::AgentMissing(format!(
                "pgclone on the primary is version {version}, this one is {ours}: install the same version there"
            ))),
            _ => Err(conn.failure(o)),
        }
    }

    /// Why an agent ended: ssh could not connect, the binary is missing, or its own last words.
    fn failure(&mut self, o: &Options) -> TransportError {
        let Some(child) = &mut self.child else {
            return TransportError::Agent("the agent closed the data connection".into());
        };
        let _ = child.wait_timeout(Duration::from_secs(5));
        let mut err = Vec::new();
        if let Some(mut e) = child.child_mut().stderr.take() {
            let _ = e.read_to_end(&mut err);
        }
        match (child.child_mut().try_wait().ok().flatten().and_then(|s| s.code()), &o.launch, &o.remote_bin) {
            (Some(255), Launch::Ssh { ssh, .. }, _) => TransportError::Ssh(ssh.connect_error(&err)),
            (Some(126 | 127), _, None) => TransportError::AgentMissing(format!(
                "the pgclone brought to the primary host cannot run there ({}): install pgclone {} there and give \
                 --remote-pgclone PATH, or use --transport rsync",
                last_line(&err),
                env!("CARGO_PKG_VERSION")
            )),
            (Some(126 | 127), _, Some(bin)) => TransportError::AgentMissing(format!(
                "{bin} is not installed on the primary host ({}); install pgclone {} there or give --remote-pgclone PATH",
                last_line(&err),
                env!("CARGO_PKG_VERSION")
            )),
            _ => TransportError::Agent(format!("the agent on the primary ended: {}", last_line(&err))),
        }
    }

    fn send(&mut self, m: &Msg) -> Result<(), TransportError> {
        write_msg(&mut self.w, m).and_then(|()| self.w.flush()).map_err(io("sending to the agent"))
    }

    fn recv(&mut self) -> Result<Msg, TransportError> {
        read_msg(&mut self.r, &mut self.spare)
            .map_err(io("reading from the agent"))?
            .ok_or_else(|| TransportError::Agent("the agent closed the connection".into()))
    }

    /// Ends the control connection: its agent ends at the end of its input, and with it everything of ours on
    /// the primary (the data channel's threads, the binary we brought). Waits a little for that to happen.
    fn close(self) {
        let AgentConn { w, child, .. } = self;
        drop(w);
        if let Some(mut child) = child {
            if let Ok(None) = child.wait_timeout(Duration::from_secs(5)) {
                tracing::warn!("{} did not end within 5 s of closing it; killing it", child.what());
            }
        }
    }
}

type Pool = Arc<Mutex<Vec<AgentConn>>>;

fn lock(pool: &Pool) -> std::sync::MutexGuard<'_, Vec<AgentConn>> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pings the agents of the connections waiting in the pools (see `Msg::Ping`): the control connection waits
/// there for the whole copy, for the final fetch of pg_control.
fn pinger(pools: Vec<Pool>) -> Periodic {
    Periodic::start(PING_EVERY, move || {
        for pool in &pools {
            for c in lock(pool).iter_mut() {
                // A connection that fails here fails its next user with the reason.
                let _ = c.send(&Msg::Ping);
            }
        }
        true
    })
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> TransportError {
    move |source| TransportError::Io { what, source }
}

impl NativeTransport {
    pub fn start(opts: Options) -> Result<NativeTransport, TransportError> {
        let (control, bin, system_id) = match &opts.launch {
            Launch::Ssh { ssh, .. } => {
                let started = push::start_agent(ssh, &opts.pgdata, opts.remote_bin.as_deref())?;
                (AgentConn::over(started.halves, Some(started.child)), started.bin, Some(started.system_id))
            }
            Launch::Local => {
                let ours = std::env::current_exe().map_err(io("finding our own binary"))?;
                let ours = ours.to_string_lossy().into_owned();
                (AgentConn::spawn(&opts, &ours)?, ours, None)
            }
        };
        let mut control = control.hello(&opts)?;
        let workers = opts.workers.max(1);
        let direct = match &opts.launch {
            Launch::Ssh { channel, .. } => data_channel(&mut control, *channel, workers)?,
            Launch::Local => None,
        };
        let channel = match (&opts.launch, &direct) {
            (Launch::Local, _) => "local",
            (Launch::Ssh { .. }, None) => "ssh",
            (Launch::Ssh { channel: DataChannel::Tcp, .. }, Some(_)) => "tcp",
            (Launch::Ssh { .. }, Some(_)) => "tls",
        };
        let (mut starting, more) = match direct {
            Some(conns) => (conns, None),
            None => (Vec::new(), Some(bin.clone())),
        };
        // The workers without a direct connection: each ssh connection costs a key exchange and a login, so all
        // start now, at once, rather than one after the other or only when the copy begins.
        let over_ssh = workers - starting.len();
        starting.extend((0..over_ssh).map(|_| AgentConn::spawn(&opts, &bin)).collect::<Result<Vec<_>, _>>()?);
        let (control, idle, starting) =
            (Arc::new(Mutex::new(vec![control])), Arc::default(), Arc::new(Mutex::new(starting)));
        let _pinger = pinger(vec![control.clone(), Arc::clone(&idle), starting.clone()]);
        Ok(NativeTransport { _pinger, opts, control, idle, starting, more, channel, system_id })
    }

    fn take(&self) -> Result<AgentConn, TransportError> {
        if let Some(c) = lock(&self.idle).pop() {
            return Ok(c);
        }
        let started = lock(&self.starting).pop();
        match (started, &self.more) {
            (Some(c), _) => c.hello(&self.opts),
            (None, Some(bin)) => AgentConn::spawn(&self.opts, bin)?.hello(&self.opts),
            (None, None) => Err(TransportError::Agent("every data connection to the agent has failed".into())),
        }
    }

    /// Only a connection with no answer still to come: the next user must not read someone else's.
    fn give_back(&self, c: AgentConn) {
        lock(&self.idle).push(c);
    }

    /// The control connection, for one request and its answers; given back only when they were all read.
    fn control(&self) -> Result<AgentConn, TransportError> {
        lock(&self.control)
            .pop()
            .ok_or_else(|| TransportError::Agent("the control connection to the agent failed earlier".into()))
    }

    fn give_back_control(&self, c: AgentConn) {
        lock(&self.control).push(c);
    }

    /// The agent's answer to WalChanges, gathered within LISTING_BUDGET: whatever the primary's side sends, no
    /// more than that is held here.
    fn ask_wal_changes(&self, stretch: &Stretch) -> Result<Scanned, TransportError> {
        let mut c = self.control()?;
        let pieces = stretch.pieces.iter().map(|(t, a, b)| (*t, a.0, b.0)).collect();
        c.send(&Msg::WalChanges { id: 0, system_id: stretch.system_id, seg: stretch.seg.bytes(), pieces })?;
        let (mut scanned, mut footprint) = (Scanned::default(), 0u64);
        loop {
            match c.recv()? {
                Msg::Changed { wal_bytes, created, forks, .. } => {
                    footprint += 8 * created.len() as u64;
                    footprint += forks.iter().map(|(_, c)| 32 + 8 * c.runs.len() as u64).sum::<u64>();
                    if footprint > LISTING_BUDGET {
                        return Err(TransportError::Agent(format!(
                            "the primary's answer of changed blocks exceeds {} MiB",
                            LISTING_BUDGET >> 20
                        )));
                    }
                    scanned.wal_bytes = wal_bytes;
                    scanned.changes.created.extend(created);
                    scanned.changes.forks.extend(forks);
                }
                Msg::Done { .. } => {
                    self.give_back_control(c);
                    return Ok(scanned);
                }
                Msg::Error { message, .. } => {
                    self.give_back_control(c);
                    return Err(TransportError::Agent(message));
                }
                other => return Err(TransportError::Agent(format!("unexpected answer {other:?}"))),
            }
        }
    }
}

impl Drop for NativeTransport {
    /// Data connections first, then the control agent, whose end removes what we brought to the primary.
    fn drop(&mut self) {
        lock(&self.idle).clear();
        lock(&self.starting).clear();
        if let Some(c) = lock(&self.control).pop() {
            c.close();
        }
    }
}

/// Data connections opened at once (see `data_channel`).
const AT_ONCE: usize = 8;

/// Opens up to `workers` direct data connections to the control agent for `channel`, or None for ssh connections
/// of their own (`--data-channel ssh`, or `auto` when the agent's port cannot be reached from here: a firewall
/// between the hosts, or an ssh connection through a jump host to an address only it can route to). Once the
/// first has come through, one that still fails after its tries (`channel::connect_tried`) does not fail the
/// clone: the connections made so far are returned, and the workers without one move their data over ssh.
fn data_channel(
    control: &mut AgentConn,
    channel: DataChannel,
    workers: usize,
) -> Result<Option<Vec<AgentConn>>, TransportError> {
    let tls = match channel {
        DataChannel::Ssh => return Ok(None),
        DataChannel::Auto | DataChannel::Tls => true,
        DataChannel::Tcp => false,
    };
    let token = channel::token().map_err(io("drawing a random token"))?;
    control.send(&Msg::Listen { token, streams: workers as u32, tls })?;
    let offer = match control.recv()? {
        Msg::Listening(offer) => Ok(offer),
        Msg::Error { message, .. } => Err(message),
        other => return Err(TransportError::Agent(format!("unexpected answer {other:?}"))),
    };
    let reached = offer.and_then(|offer| match channel::connect_tried(&offer, &token, REACH_TIMEOUT) {
        Ok(first) => Ok((offer, first)),
        Err(e) => Err(format!("{}: {e}", offer.addr)),
    });
    let (offer, first) = match reached {
        Ok(reached) => reached,
        Err(why) if channel == DataChannel::Auto => {
            tracing::warn!("the data channel to the primary could not be opened ({why}); moving the data over ssh");
            return Ok(None);
        }
        Err(why) => return Err(TransportError::DataChannel(why)),
    };
    // The others at once, each handshake a round trip or two: at most half as many at a time as the agent lets
    // wait for their handshake (channel's GATE), which ends the oldest beyond that.
    let mut conns = vec![AgentConn::over(first, None)];
    let mut failed = None;
    while conns.len() < workers && failed.is_none() {
        let wave = (workers - conns.len()).min(AT_ONCE);
        let reached: Vec<_> = std::thread::scope(|s| {
            let tries: Vec<_> =
                (0..wave).map(|_| s.spawn(|| channel::connect_tried(&offer, &token, REACH_TIMEOUT))).collect();
            tries.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(std::io::Error::other("panicked")))).collect()
        });
        for r in reached {
            match r {
                Ok(halves) => conns.push(AgentConn::over(halves, None)),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
    }
    if let Some(e) = failed {
        let missing = workers - conns.len();
        tracing::warn!(
            "{missing} of {workers} data connections to {} could not be opened ({e}); {missing} worker(s) move their \
             data over ssh",
            offer.addr
        );
    }
    tracing::debug!(
        "{} data connections to {} ({})",
        conns.len(),
        offer.addr,
        if tls { "TLS 1.3" } else { "clear text" }
    );
    Ok(Some(conns))
}

impl Transport for NativeTransport {
    fn list(&self) -> Result<Vec<RemoteEntry>, TransportError> {
        let mut c = self.control()?;
        c.send(&Msg::List)?;
        let (mut out, mut footprint) = (Vec::new(), 0);
        loop {
            match c.recv()? {
                Msg::Entries(e) => {
                    footprint += e.iter().map(RemoteEntry::footprint).sum::<u64>();
                    if footprint > LISTING_BUDGET {
                        return Err(TransportError::List {
                            dir: self.opts.pgdata.display().to_string(),
                            reason: format!(
                                "the listing exceeds {} MiB of memory after {} entries",
                                LISTING_BUDGET >> 20,
                                out.len() + e.len()
                            ),
                        });
                    }
                    out.extend(e)
                }
                Msg::ListDone => {
                    self.give_back_control(c);
                    return Ok(out);
                }
                Msg::Error { message, .. } => {
                    return Err(TransportError::List { dir: self.opts.pgdata.display().to_string(), reason: message })
                }
                other => return Err(TransportError::Agent(format!("unexpected answer {other:?}"))),
            }
        }
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>, TransportError> {
        Ok(Box::new(NativeWorker {
            conn: Some(self.take()?),
            transport: self,
            clean: true,
            buf: AlignedBuf::new(DATA_CHUNK),
        }))
    }

    fn fetch_file(&self, rel: &Path, to: &Path) -> Result<(), TransportError> {
        let mut c = self.control()?;
        let runs = vec![(0, FETCH_FILE_MAX)];
        c.send(&Msg::Read { id: 0, path: rel.into(), runs, codec: Codec::None, level: 0 })?;
        let f = File::create(to).at("creating", to)?;
        let mut raw = Vec::new();
        loop {
            match c.recv()? {
                Msg::Data { offset, raw_len, raw_hash, codec, bytes, .. } => {
                    raw.resize(chunk_len(raw_len)?, 0);
                    if offset.saturating_add(raw.len() as u64) > FETCH_FILE_MAX {
                        return Err(TransportError::Agent(format!("{} sent past what was asked", rel.display())));
                    }
                    decompress_into(codec, raw_hash, &bytes, &mut raw).map_err(io("checking fetched data"))?;
                    f.write_all_at(&raw, offset).at("writing", to)?;
                }
                Msg::Done { vanished: false, .. } => {
                    self.give_back_control(c);
                    return Ok(f.sync_all().at("syncing", to)?);
                }
                Msg::Done { vanished: true, .. } => {
                    return Err(TransportError::Fetch { file: rel.display().to_string(), reason: "it vanished".into() })
                }
                Msg::Error { message, .. } => {
                    return Err(TransportError::Fetch { file: rel.display().to_string(), reason: message })
                }
                other => return Err(TransportError::Agent(format!("unexpected answer {other:?}"))),
            }
        }
    }

    fn wal_changes(&self, stretch: &Stretch) -> Option<Result<Scanned, TransportError>> {
        Some(self.ask_wal_changes(stretch))
    }

    /// With -r, ranges of at most about a second of its rate (whole MiB, at least one): a range is asked for at
    /// once, so this bounds how far the primary's reads can run ahead of the rate (see `pace`).
    fn split_size(&self) -> Option<u64> {
        const MIB: u64 = 1 << 20;
        let paced = self.opts.limits.data.as_ref().map_or(u64::MAX, |b| (b.rate() / MIB * MIB).max(MIB));
        Some(self.opts.split.min(paced))
    }

    fn name(&self) -> &'static str {
        "native"
    }

    fn data_channel(&self) -> &'static str {
        self.channel
    }

    fn compression(&self) -> String {
        super::Compression { codec: self.opts.codec, level: self.opts.level }.to_string()
    }

    fn system_id(&self) -> Option<u64> {
        self.system_id
    }
}

struct NativeWorker<'a> {
    /// Until the worker ends: then back to the transport if `clean`.
    conn: Option<AgentConn>,
    transport: &'a NativeTransport,
    /// Every request sent was answered.
    clean: bool,
    /// Where each chunk is restored before it is written: aligned, so it can go to the disk directly.
    buf: AlignedBuf,
}

impl Drop for NativeWorker<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take().filter(|_| self.clean) {
            self.transport.give_back(c);
        }
    }
}

/// A request in flight: its pieces (`pieces` of them from `piece` on: consecutive changed runs of one file go
/// in one request), the local file once an answer needs it, and for a delta the offset its next page hashes
/// stand for.
struct Open {
    piece: usize,
    pieces: usize,
    file: Option<Rc<Target>>,
    compared: Option<u64>,
}

/// Changed runs of one file asked for in one Read: far below MAX_FRAME (16 bytes each).
const RUNS_PER_READ: usize = 4096;

/// The local file the worker opened last: a re-sync's requests come run after run for one file.
type Last = Option<(PathBuf, Rc<Target>)>;

impl Open {
    /// The local file, opened (and given the primary's size) when the first answer needs it, unless it is the one
    /// opened `last`: requests all go out at once, and of a batch of thousands of small files only the one being
    /// written is open.
    fn file(&mut self, dest: &Path, p: &Piece, last: &mut Last) -> Result<&Rc<Target>, TransportError> {
        if self.file.is_none() {
            self.file = last.as_ref().filter(|(path, _)| *path == p.path).map(|(_, t)| Rc::clone(t));
        }
        if self.file.is_none() {
            let path = dest.join(&p.path);
            let t = Target::open(&path, p.size).at("opening", &path)?;
            // Truncated or extended; ranges of one file may be handled by several workers at once, all setting
            // the same length.
            if t.file.metadata().at("opening", &path)?.len() != p.size {
                t.file.set_len(p.size).at("sizing", &path)?;
            }
            let t = Rc::new(t);
            *last = Some((p.path.clone(), Rc::clone(&t)));
            self.file = Some(t);
        }
        Ok(self.file.as_ref().expect("opened above"))
    }
}

/// A Data frame's raw length, refused beyond what the protocol allows (it sizes our buffers).
fn chunk_len(raw_len: u32) -> Result<usize, TransportError> {
    match raw_len as usize {
        n if n <= DATA_CHUNK => Ok(n),
        n => Err(TransportError::Agent(format!("a data chunk of {n} bytes exceeds the protocol's {DATA_CHUNK}"))),
    }
}

impl Worker for NativeWorker<'_> {
    fn copy(
        &mut self,
        pieces: &[Piece],
        dest: &Path,
        cancel: &Cancel,
        sink: &mut dyn Sink,
    ) -> Result<Copied, TransportError> {
        let opts = &self.transport.opts;
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let mut open: HashMap<u32, Open> = HashMap::new();
        let mut last: Last = None;
        let mut vanished = vec![false; pieces.len()];
        let mut outstanding = 0;
        let mut next_id = pieces.len() as u32;
        let (mut moved, mut wire, mut read_primary, mut read_replica) = (0u64, 0u64, 0u64, 0u64);
        self.clean = false;
        let AgentConn { w, r, spare, .. } = self.conn.as_mut().expect("a worker has its connection until dropped");
        let buf = &mut self.buf;
        std::thread::scope(|s| {
            // Requests go out on their own thread, so a long batch never waits on answers it is not reading.
            // With nothing to send it pings, so the agent knows we are there while we only receive.
            s.spawn(move || loop {
                let m = match rx.recv_timeout(PING_EVERY) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => Msg::Ping,
                    Err(RecvTimeoutError::Disconnected) => return drop(w.flush()),
                };
                let asked = pace(&opts.limits, &m, w);
                if asked.and_then(|()| write_msg(w, &m)).is_err() || (rx.is_empty() && w.flush().is_err()) {
                    return;
                }
            });
            let mut i = 0;
            while i < pieces.len() {
                let p = &pieces[i];
                let (offset, len) = p.range.unwrap_or((0, p.size));
                // Data already here (a resumed or re-synced clone) is compared before anything moves.
                let compare = matches!(p.how, How::Compare(_))
                    && std::fs::symlink_metadata(dest.join(&p.path)).is_ok_and(|m| m.is_file() && m.len() > offset);
                // A re-sync's changed runs of one file (in offset order) go in one request.
                let group = match p.how {
                    How::Changed => pieces[i..]
                        .iter()
                        .take(RUNS_PER_READ)
                        .take_while(|q| q.how == How::Changed && q.path == p.path)
                        .count(),
                    _ => 1,
                };
                let id = i as u32;
                let _ = tx.send(if compare {
                    let unread_to = match p.how {
                        How::Compare(Some(u)) => u.lsn.0,
                        _ => 0,
                    };
                    Msg::Sums { id, path: p.path.clone(), offset, len, block: DELTA_BLOCK, unread_to }
                } else {
                    let runs = pieces[i..i + group].iter().map(|q| q.range.unwrap_or((0, q.size))).collect();
                    Msg::Read { id, path: p.path.clone(), runs, codec: opts.codec, level: opts.level }
                });
                open.insert(id, Open { piece: i, pieces: group, file: None, compared: compare.then_some(offset) });
                outstanding += 1;
                i += group;
            }
            while outstanding > 0 {
                cancel.check()?;
                let m = read_msg(r, spare)
                    .map_err(io("reading from the agent"))?
                    .ok_or_else(|| TransportError::Worker("the agent on the primary ended".into()))?;
                match m {
                    Msg::Data { id, offset, raw_len, raw_hash, codec, bytes } => {
                        opts.limits.arrived(bytes.len());
                        wire += bytes.len() as u64;
                        let raw = buf.get(chunk_len(raw_len)?);
                        decompress_into(codec, raw_hash, &bytes, raw).map_err(io("checking received data"))?;
                        let o = open
                            .get_mut(&id)
                            .ok_or_else(|| TransportError::Agent(format!("data for unknown id {id}")))?;
                        // The piece of the request whose range starts at or before the data (runs are in order).
                        let asked = &pieces[o.piece..o.piece + o.pieces];
                        let k = asked.partition_point(|q| q.range.map_or(0, |(start, _)| start) <= offset);
                        let p = &asked[k.saturating_sub(1)];
                        let (start, len) = p.range.unwrap_or((0, p.size));
                        if offset < start || offset + raw.len() as u64 > start + len {
                            return Err(TransportError::Agent(format!(
                                "data for {} at {offset} (+{}) lies outside the range asked for, {start} (+{len})",
                                p.path.display(),
                                raw.len()
                            )));
                        }
                        o.file(dest, p, &mut last)?
                            .write_at(raw, offset)
                            .map_err(|e| IoAt::new("writing", dest.join(&p.path), e))?;
                        moved += u64::from(raw_len);
                        sink.moving(u64::from(raw_len));
                        sink.landed(&p.path, offset, raw);
                        *spare = bytes;
                    }
                    // Each frame of hashes is compared as it arrives, about a MiB of pages at a time, while the
                    // agent reads on: both hosts read at once, and the differing pages are asked for at once.
                    Msg::Hashes { id, hashes } => {
                        let o = open.get_mut(&id).filter(|o| o.compared.is_some()).ok_or_else(|| {
                            TransportError::Agent(format!("page hashes for {id}, which asked for none"))
                        })?;
                        read_primary += hashes.len() as u64 * u64::from(DELTA_BLOCK);
                        let p = &pieces[o.piece];
                        let at = o.compared.expect("filtered above");
                        o.compared = Some(at + hashes.len() as u64 * u64::from(DELTA_BLOCK));
                        let file = Rc::clone(o.file(dest, p, &mut last)?);
                        let mut same = |offset, bytes: &[u8]| sink.landed(&p.path, offset, bytes);
                        let here = match p.how {
                            How::Compare(Some(u)) => u.here,
                            _ => 0,
                        };
                        let (runs, read) =
                            differing(&file, (at, here), &hashes, buf, &mut same).at("reading", dest.join(&p.path))?;
                        read_replica += read;
                        // The differing runs of this frame, in one request; they lie in this piece's range.
                        if !runs.is_empty() {
                            let (id, path, (codec, level)) = (next_id, p.path.clone(), (opts.codec, opts.level));
                            let _ = tx.send(Msg::Read { id, path, runs, codec, level });
                            let (piece, file) = (o.piece, Some(Rc::clone(&file)));
                            open.insert(id, Open { piece, pieces: 1, file, compared: None });
                            next_id += 1;
                            outstanding += 1;
                        }
                    }
                    Msg::Done { id, vanished: gone } => {
                        outstanding -= 1;
                        let mut o = open
                            .remove(&id)
                            .ok_or_else(|| TransportError::Agent(format!("done for unknown id {id}")))?;
                        let p = &pieces[o.piece];
                        if gone {
                            vanished[o.piece..o.piece + o.pieces].fill(true);
                            sink.vanished(&p.path);
                            continue;
                        }
                        // Also a file that needed no data (empty, or identical) must exist with its size.
                        o.file(dest, p, &mut last)?;
                    }
                    Msg::Error { message, .. } => return Err(TransportError::Worker(message)),
                    other => return Err(TransportError::Agent(format!("unexpected answer {other:?}"))),
                }
            }
            drop(tx);
            Ok(())
        })?;
        self.clean = true;
        // What a Read moved was read on the primary; what a compare hashed there is counted as it arrives.
        let mut c = Copied { moved, wire, read_primary: read_primary + moved, read_replica, ..Copied::default() };
        for (p, gone) in pieces.iter().zip(&vanished) {
            if *gone {
                c.vanished += u64::from(p.counts_file());
            } else {
                c.files += u64::from(p.counts_file());
                c.bytes += p.counted_len();
            }
        }
        Ok(c)
    }
}

/// -r: waits until the run's budget of data read on the primary allows what `m` asks the agent to read (a Read's
/// runs, the range a Sums hashes), having sent what was written before, and pinging the agent while it waits
/// long (see `Msg::Ping`). The agent reads nothing it is not asked for, so asking at the rate holds its reads
/// to it (see `bandwidth`).
fn pace(limits: &Limits, m: &Msg, w: &mut impl Write) -> std::io::Result<()> {
    let asked = match m {
        Msg::Read { runs, .. } => runs.iter().map(|(_, len)| len).sum(),
        Msg::Sums { len, .. } => *len,
        _ => return Ok(()),
    };
    let mut wait = limits.before_reading(asked);
    if !wait.is_zero() {
        w.flush()?;
    }
    while !wait.is_zero() {
        let nap = wait.min(PING_EVERY);
        std::thread::sleep(nap);
        wait -= nap;
        if !wait.is_zero() {
            write_msg(w, &Msg::Ping).and_then(|()| w.flush())?;
        }
    }
    Ok(())
}

/// The runs of local pages (from `offset`) whose hashes differ from the primary's, as (offset, len), and how
/// many bytes of the local file it read; runs of pages that match go to `same` with their bytes. A page the
/// primary sent no hash for is not read: it stands as it is, if the first `here` bytes of the file (its length
/// before the copy) hold it, else it is fetched.
fn differing(
    file: &Target,
    (offset, here): (u64, u64),
    remote: &[Option<u64>],
    buf: &mut AlignedBuf,
    same: &mut dyn FnMut(u64, &[u8]),
) -> std::io::Result<(Vec<(u64, u64)>, u64)> {
    let (b, block) = (DELTA_BLOCK as usize, u64::from(DELTA_BLOCK));
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut differs = |page_at: u64| match runs.last_mut() {
        Some((o, l)) if *o + *l == page_at => *l += block,
        _ => runs.push((page_at, block)),
    };
    let mut read = 0;
    let per_read = DATA_CHUNK / b;
    let mut i = 0;
    while i < remote.len() {
        let at = offset + (i * b) as u64;
        if remote[i].is_none() {
            if at + block > here {
                differs(at);
            }
            i += 1;
            continue;
        }
        // The pages with hashes from here on, read at once.
        let hashes: Vec<u64> = remote[i..].iter().take(per_read).map_while(|h| *h).collect();
        let local = buf.get(hashes.len() * b);
        let n = file.read_at(local, at)?;
        read += n as u64;
        let page = |j: usize| &local[(j * b).min(n)..((j + 1) * b).min(n)];
        // Pages [first_same, j) match the primary's.
        let mut first_same = 0;
        for (j, h) in hashes.iter().enumerate() {
            if !page(j).is_empty() && xxh3_64(page(j)) == *h {
                continue;
            }
            if first_same < j {
                same(at + (first_same * b) as u64, &local[first_same * b..j * b]);
            }
            first_same = j + 1;
            differs(at + (j * b) as u64);
        }
        let end = (hashes.len() * b).min(n);
        if first_same * b < end {
            same(at + (first_same * b) as u64, &local[first_same * b..end]);
        }
        i += hashes.len();
    }
    Ok((runs, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::direct_io::ALIGN;

    #[test]
    fn differing_blocks_coalesce_into_runs() {
        let d = tempfile::tempdir().unwrap();
        let b = DELTA_BLOCK as usize;
        let local: Vec<u8> = (0..5 * b).map(|i| (i % 7) as u8).collect();
        std::fs::write(d.path().join("f"), &local).unwrap();
        let f = Target::open(&d.path().join("f"), 0).unwrap();
        let mut remote: Vec<Option<u64>> = local.chunks(b).map(|p| Some(xxh3_64(p))).collect();
        for k in [1, 2, 4] {
            remote[k] = remote[k].map(|h| h ^ 1);
        }
        remote.push(Some(42)); // the primary's file is longer than ours
        let mut buf = AlignedBuf::new(DATA_CHUNK);
        let b = u64::from(DELTA_BLOCK);
        let mut same = Vec::new();
        let mut record = |at, bytes: &[u8]| same.push((at, bytes.len() as u64));
        assert_eq!(
            differing(&f, (0, 0), &remote, &mut buf, &mut record).unwrap(),
            (vec![(b, 2 * b), (4 * b, 2 * b)], 5 * b)
        );
        assert_eq!(same, vec![(0, b), (3 * b, b)], "the matching pages landed");
        assert_eq!(differing(&f, (0, 0), &remote[..1], &mut buf, &mut |_, _| ()).unwrap(), (vec![], b));
        // From an offset, and across more than one read of the local file.
        let many = DATA_CHUNK / DELTA_BLOCK as usize + 3;
        let local: Vec<u8> = (0..(many + 1) * DELTA_BLOCK as usize).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("g"), &local).unwrap();
        let g = Target::open(&d.path().join("g"), local.len() as u64).unwrap();
        let mut remote: Vec<Option<u64>> =
            local[DELTA_BLOCK as usize..].chunks(DELTA_BLOCK as usize).map(|p| Some(xxh3_64(p))).collect();
        remote[many - 1] = remote[many - 1].map(|h| h ^ 1);
        let mut same = Vec::new();
        let mut record = |at, bytes: &[u8]| same.push((at, bytes.len() as u64));
        assert_eq!(
            differing(&g, (b, 0), &remote, &mut buf, &mut record).unwrap(),
            (vec![(many as u64 * b, b)], many as u64 * b)
        );
        let per_read = (DATA_CHUNK / DELTA_BLOCK as usize) as u64;
        assert_eq!(same, vec![(b, per_read * b), ((per_read + 1) * b, (many as u64 - per_read - 1) * b)]);
        // Pages sent without a hash are not read: they stand within the first `here` bytes, else are fetched.
        // Of 5 pages here: 0 unread, 1 differs, 2 unread, 3 same, 4 unread (but not here before the copy).
        let mut remote: Vec<Option<u64>> =
            local.chunks(DELTA_BLOCK as usize).take(5).map(|p| Some(xxh3_64(p))).collect();
        remote[1] = remote[1].map(|h| h ^ 1);
        for k in [0, 2, 4] {
            remote[k] = None;
        }
        let mut same = Vec::new();
        let mut record = |at, bytes: &[u8]| same.push((at, bytes.len() as u64));
        assert_eq!(
            differing(&g, (0, 4 * b), &remote, &mut buf, &mut record).unwrap(),
            (vec![(b, b), (4 * b, b)], 2 * b),
            "read pages 1 and 3 only"
        );
        assert_eq!(same, vec![(3 * b, b)]);
        // Direct and buffered writes of the same file agree.
        let big = 32 * ALIGN;
        buf.get(big).fill(5);
        g.write_at(buf.get(big), 0).unwrap();
        g.write_at(&[7u8; 3], big as u64).unwrap();
        let back = std::fs::read(d.path().join("g")).unwrap();
        assert!(back[..big].iter().all(|&b| b == 5));
        assert_eq!(&back[big..big + 4], &[7, 7, 7, local[big + 3]]);
    }
}
