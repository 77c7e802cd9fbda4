//! How file contents get from the primary's data directory to ours. The phases only see the `Transport` trait;
//! which transport runs (native agents, rsync daemon) is chosen and built here, by `open`, from the run's
//! `TransportConfig`.

pub mod agent;
mod auto_codec;
pub mod channel;
pub mod native;
pub mod protocol;
mod push;
pub mod rsync;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Cancelled, IoAt};
use crate::pg::lsn::Lsn;
use crate::pg::wal_records::{Scanned, Stretch};
use crate::sys::bandwidth::Limits;
use crate::sys::cancel::Cancel;
use crate::sys::ssh::{SshError, SshTarget};
use native::{Launch, NativeTransport};
use protocol::Codec;
use rsync::RsyncTransport;

/// --transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// Kept for scripts that name it: the native transport.
    Auto,
    Native,
    Rsync,
}

/// --data-channel: how file data travels between the hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataChannel {
    /// tls, or ssh (with a notice) when the agent's port cannot be reached from here.
    Auto,
    /// TLS 1.3 over direct TCP connections to the agent, keyed through ssh (native transport).
    Tls,
    /// Encrypted and authenticated by ssh, one ssh connection per worker.
    Ssh,
    /// Clear text over direct TCP, for a trusted network only.
    Tcp,
}

/// --compress: the native transport's codec on the wire, and its level for zstd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    pub level: i32,
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Compression, String> {
        let (codec, level) = match s.split_once(':') {
            None if s == "auto" => (Codec::Auto, 0),
            None if s == "none" => (Codec::None, 0),
            None if s == "lz4" => (Codec::Lz4, 0),
            None if s == "zstd" => (Codec::Zstd, 1),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(l) if (-7..=19).contains(&l) => (Codec::Zstd, l),
                _ => return Err(format!("zstd level {level:?} is not a number from -7 to 19")),
            },
            _ => return Err(format!("{s:?} is not auto, none, lz4, zstd or zstd:LEVEL")),
        };
        Ok(Compression { codec, level })
    }
}

/// As --compress takes it: auto, none, lz4, zstd:LEVEL (--json's `compression`).
impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.codec {
            Codec::Auto => f.write_str("auto"),
            Codec::None => f.write_str("none"),
            Codec::Lz4 => f.write_str("lz4"),
            Codec::Zstd => write!(f, "zstd:{}", self.level),
        }
    }
}

/// Everything a transport needs from the command line and the environment, resolved once.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub kind: TransportKind,
    pub data_channel: DataChannel,
    /// How to reach the primary host; None with --no-ssh (the data directory is on this host).
    pub ssh: Option<SshTarget>,
    /// The pgclone binary on the primary host (--remote-pgclone); None: bring our own for the run.
    pub remote_bin: Option<String>,
    pub compression: Compression,
    /// Files larger than this are split into ranges (native transport).
    pub chunk_size: u64,
    /// One budget of file data read on the primary for all workers together, bytes/s (-r/--max-rate).
    pub max_rate: Option<u64>,
    /// One network budget for all workers together, bytes/s on the wire (--limit-net-bw).
    pub limit_net_bw: Option<u64>,
    pub workers: usize,
}

impl TransportConfig {
    /// The native transport's control session over ssh reads --primary-pgdata's system identifier as it starts
    /// (see `PGDATA_PROBE`), so that a run needs one ssh login, not one more for preflight.
    pub fn probes_pgdata(&self) -> bool {
        self.ssh.is_some() && self.kind != TransportKind::Rsync
    }
}

/// Shell code that sets `system` to the system identifier in `$2/global/pg_control`, or exits 3 (the ssh user
/// cannot enter `$2`) or 4 (no readable pg_control there). od prints the first 8 bytes of ControlFileData
/// (`system_identifier`) as one unsigned number in the primary's byte order, the order PostgreSQL wrote it in.
pub const PGDATA_PROBE: &str = r#"system=$(cd -- "$2" 2>/dev/null || exit 3; test -r global/pg_control || exit 4;
  LC_ALL=C od -An -N8 -tu8 global/pg_control) || exit $?
system=$(echo $system)"#;

/// --primary-pgdata as the ssh user finds it.
#[derive(Debug, thiserror::Error)]
pub enum PgdataError {
    #[error(
        "--primary-pgdata {dir} does not exist on {host} or {user} may not enter it; give the running server's data \
         directory (SHOW data_directory) and an ssh login that can read it (--ssh-user, usually postgres)"
    )]
    Missing { dir: PathBuf, host: String, user: String },
    #[error(
        "--primary-pgdata {dir} on {host} is not a data directory {user} can read (no readable global/pg_control); \
         give the running server's data directory (SHOW data_directory) and an ssh login that can read it \
         (--ssh-user, usually postgres)"
    )]
    NotData { dir: PathBuf, host: String, user: String },
}

impl PgdataError {
    /// What `PGDATA_PROBE`'s exit `code` says, if it says anything.
    pub fn from_probe(code: Option<i32>, ssh: &SshTarget, dir: &Path) -> Option<PgdataError> {
        let (dir, host) = (dir.to_path_buf(), ssh.host.clone());
        let user = ssh.user.clone().unwrap_or_else(|| "the ssh user".into());
        match code {
            Some(3) => Some(PgdataError::Missing { dir, host, user }),
            Some(4) => Some(PgdataError::NotData { dir, host, user }),
            _ => None,
        }
    }
}

/// Starts the transport the configuration asks for: native (also for `auto`), with agents from --remote-pgclone
/// or from our own binary brought along, and its data over `config.data_channel`; rsync only when asked for, never as a silent fallback: it is the
/// pgclone.sh-compatible path, whole files only. `pgdata` is the primary's data
/// directory; `run_dir` the run's private directory here; `resync`: the replica already holds an earlier copy,
/// so comparing before moving pays.
pub fn open(
    config: &TransportConfig,
    pgdata: &Path,
    run_dir: &Path,
    resync: bool,
) -> Result<Box<dyn Transport>, TransportError> {
    let limits = Limits::new(config.max_rate, config.limit_net_bw);
    let native = || {
        let launch = match &config.ssh {
            None => Launch::Local,
            Some(ssh) => {
                let mut ssh = ssh.clone();
                ssh.prefer_fast_ciphers();
                Launch::Ssh { ssh, channel: config.data_channel }
            }
        };
        NativeTransport::start(native::Options {
            launch,
            remote_bin: config.remote_bin.clone(),
            pgdata: pgdata.to_path_buf(),
            codec: config.compression.codec,
            level: config.compression.level,
            split: config.chunk_size,
            limits: limits.clone(),
            workers: config.workers,
        })
    };
    let clear_text = config.data_channel == DataChannel::Tcp;
    let rsync = |ssh| RsyncTransport::start(ssh, pgdata, run_dir, limits.clone(), resync, clear_text, config.workers);
    Ok(match (config.kind, &config.ssh) {
        (TransportKind::Native | TransportKind::Auto, _) => Box::new(native()?),
        (TransportKind::Rsync, None) => return Err(TransportError::RsyncNeedsSsh),
        (TransportKind::Rsync, Some(ssh)) => Box::new(rsync(ssh)?),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(PathBuf),
    /// Sockets, FIFOs, devices: never part of a data directory's contents worth copying.
    Other,
}

/// One entry of the primary's data directory, path relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub path: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (st_mode & 0o7777).
    pub mode: u32,
}

impl RemoteEntry {
    /// About what the entry costs in memory: its paths and the fixed part (`LISTING_BUDGET`).
    pub fn footprint(&self) -> u64 {
        let target = match &self.kind {
            EntryKind::Symlink(t) => t.as_os_str().len(),
            _ => 0,
        };
        (std::mem::size_of::<RemoteEntry>() + self.path.as_os_str().len() + target) as u64
    }
}

/// The most memory the primary's listing may take here: what a data directory of ten million files needs.
/// A listing that grows past it (a stranger's endless answer) is refused as it arrives, before it exhausts
/// this host's memory.
pub const LISTING_BUDGET: u64 = 2 << 30;

/// A unit of copy work: a whole file, or a byte range of one when the transport splits big files (so that a
/// 1 GB relation segment is not one worker's job while the others idle) or a re-sync fetches changed blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub path: PathBuf,
    /// The file's size when listed.
    pub size: u64,
    /// `(offset, len)`, or None for the whole file.
    pub range: Option<(u64, u64)>,
    pub how: How,
}

/// What a worker does with bytes of a piece the replica already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Nothing: it fetches the piece (a fresh clone, or a file a re-sync fetches whole).
    Fetch,
    /// Compares them with the primary's first (page hashes; rsync: whole-file checksums) and fetches only what
    /// differs: a re-sync that cannot know what changed. With `Unread`, pages the primary last changed early
    /// enough are not compared at all.
    Compare(Option<Unread>),
    /// Blocks WAL summaries name as changed, fetched as they are. The rest of the file is in place and
    /// unread; the planner counts the file (`Copied::files`, `bytes`), so the piece does not.
    Changed,
}

/// For a relation file of a re-sync by page LSNs (`clone::resync`): pages whose LSN on the primary is at or
/// before `lsn` are taken as the replica's already, and not read here, as long as they lie within the `here`
/// bytes the file had before the copy began (past them, anything not fetched would be a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread {
    pub lsn: Lsn,
    pub here: u64,
}

impl Piece {
    pub fn whole(path: PathBuf, size: u64, how: How) -> Piece {
        Piece { path, size, range: None, how }
    }

    pub fn len(&self) -> u64 {
        self.range.map_or(self.size, |(_, len)| len)
    }

    /// The piece a file is counted with: the whole file, or its first range; never a changed block run.
    pub fn counts_file(&self) -> bool {
        self.how != How::Changed && self.range.is_none_or(|(offset, _)| offset == 0)
    }

    /// The bytes this piece puts in place for `Copied::bytes`.
    pub fn counted_len(&self) -> u64 {
        if self.how == How::Changed {
            0
        } else {
            self.len()
        }
    }
}

/// What one copy request achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    /// Bytes now in place, whether moved or found identical.
    pub bytes: u64,
    /// Bytes that crossed the link (before compression): less than `bytes` when a delta found blocks in place.
    pub moved: u64,
    /// What `moved` took on the wire, after compression (file data only, without framing and encryption).
    pub wire: u64,
    /// Files listed earlier that the primary has since removed (dropped relations, temp files): normal on a
    /// live server, and WAL replay recreates whatever must exist.
    pub vanished: u64,
    /// Bytes read from files on the primary: what moved, and what was only hashed there to compare.
    pub read_primary: u64,
    /// Bytes of the replica's own files read to compare them.
    pub read_replica: u64,
}

impl std::ops::AddAssign for Copied {
    fn add_assign(&mut self, o: Copied) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.moved += o.moved;
        self.wire += o.wire;
        self.vanished += o.vanished;
        self.read_primary += o.read_primary;
        self.read_replica += o.read_replica;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Pgdata(#[from] PgdataError),
    #[error("listing {dir} on the primary failed: {reason}")]
    List { dir: String, reason: String },
    #[error("could not start the rsync daemon on the primary: {0}")]
    Daemon(String),
    #[error("copy worker failed: {0}")]
    Worker(String),
    #[error("{0}")]
    AgentMissing(String),
    #[error("the rsync transport needs ssh: drop --no-ssh or use --transport native")]
    RsyncNeedsSsh,
    #[error("the data channel to the agent on the primary failed ({0}); --data-channel ssh moves the data over ssh")]
    DataChannel(String),
    #[error("native transport: {0}")]
    Agent(String),
    #[error("fetching {file} from the primary failed: {reason}")]
    Fetch { file: String, reason: String },
    /// Talking to a child process (ssh, rsync, an agent) failed.
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Local(#[from] IoAt),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

pub trait Transport: Send + Sync {
    /// Every entry under the primary's data directory (not following symlinks).
    fn list(&self) -> Result<Vec<RemoteEntry>, TransportError>;

    /// A copy worker: its own connection to the primary, used by one thread.
    fn worker(&self) -> Result<Box<dyn Worker + '_>, TransportError>;

    /// Fetches one small file (pg_control; path relative to the primary's data directory) to the local path
    /// `to`: at most its first MiB.
    fn fetch_file(&self, rel: &Path, to: &Path) -> Result<(), TransportError>;

    /// Which transport this is, as --json reports it: native or rsync.
    fn name(&self) -> &'static str;

    /// How the file data travels, as --json reports it: tls, ssh, tcp (clear text) or local (pipes).
    fn data_channel(&self) -> &'static str;

    /// The compression on the wire, as --compress names it (--json's `compression`): none unless the
    /// transport compresses.
    fn compression(&self) -> String {
        "none".into()
    }

    /// The system identifier in --primary-pgdata's pg_control, when the transport read it as it started (see
    /// `TransportConfig::probes_pgdata`).
    fn system_id(&self) -> Option<u64> {
        None
    }

    /// What the primary's WAL in `stretch` changed, read on the primary from its pg_wal (`pg::wal_records`), so
    /// that only the answer crosses the link; None when this transport has no agent there to read it.
    fn wal_changes(&self, _stretch: &Stretch) -> Option<Result<Scanned, TransportError>> {
        None
    }

    /// Files larger than this are copied as ranges by several workers; None: whole files only, and no
    /// re-sync by WAL summaries, which fetches runs of blocks.
    fn split_size(&self) -> Option<u64> {
        None
    }
}

/// What a worker tells as it goes, where its transport can see it.
pub trait Sink {
    /// `n` bytes arrived over the link (live progress).
    fn moving(&mut self, n: u64);
    /// `bytes` of the file `path` (relative to the data directory) are now in place at `offset` in the
    /// replica, received or found identical. The transfer takes the manifest's checksums and verifies data
    /// pages from these, instead of reading the whole copy back once more.
    fn landed(&mut self, path: &Path, offset: u64, bytes: &[u8]);
    /// The primary no longer has the file `path`: whatever copy of it the replica holds (a re-sync's old one, or
    /// ranges that landed before it went) goes too, once every worker is done with it.
    fn vanished(&mut self, path: &Path);
}

/// For a lone re-fetch of files that are read again anyway.
pub struct IgnoreSink;

impl Sink for IgnoreSink {
    fn moving(&mut self, _: u64) {}
    fn landed(&mut self, _: &Path, _: u64, _: &[u8]) {}
    fn vanished(&mut self, _: &Path) {}
}

pub trait Worker: Send {
    /// Copies the given pieces (paths relative to the data directory) into `dest`, whose directories exist,
    /// telling `sink` what it sees. Returns early with `Cancelled` once `cancel` fires.
    fn copy(
        &mut self,
        pieces: &[Piece],
        dest: &Path,
        cancel: &Cancel,
        sink: &mut dyn Sink,
    ) -> Result<Copied, TransportError>;
}

pub fn os(bytes: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(bytes.to_vec())
}
