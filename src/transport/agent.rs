//! `pgclone agent`: the primary's side of the native transport. One agent per connection serves one client
//! worker over stdin/stdout, one request after the other; the client pipelines requests so the link never
//! waits for a round trip per file. The agent ends when its input ends, so it dies with its ssh session.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::pg::lsn::{Lsn, SegSize};
use crate::pg::page_checksum::BLCKSZ;
use crate::pg::wal_records::{self, Stretch};
use crate::replica::direct_io::read_at_full;

use super::auto_codec::AutoCodec;
use super::channel::{self, Offer};
use super::protocol::{compress, read_msg, write_data, write_msg, Codec, Msg, DATA_CHUNK, PROTOCOL_VERSION};
use super::{EntryKind, RemoteEntry};

/// How often a client speaks up on a connection that has nothing else to send (see `Msg::Ping`).
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// How long an agent goes on without a word from its client: six Pings missed.
pub const CLIENT_SILENCE: Duration = Duration::from_secs(60);

pub fn serve(pgdata: &Path, input: impl Read + Send + 'static, output: impl Write) -> io::Result<()> {
    let alive = Alive::watch();
    let noted = Noted { inner: output, alive: alive.clone(), written: 0, blocked: Duration::ZERO };
    let mut w = BufWriter::with_capacity(1 << 20, noted);
    let (mut buf, mut auto, mut last) = (Vec::new(), AutoCodec::default(), None);
    let requests = listen(input, alive.clone());
    for msg in &requests {
        let msg = match msg? {
            Some(m) => m,
            None => break,
        };
        match msg {
            Msg::Hello { .. } => write_msg(
                &mut w,
                &Msg::Hello { protocol: PROTOCOL_VERSION, version: env!("CARGO_PKG_VERSION").into() },
            )?,
            Msg::List => {
                for chunk in list(pgdata)?.chunks(1000) {
                    write_msg(&mut w, &Msg::Entries(chunk.to_vec()))?;
                }
                write_msg(&mut w, &Msg::ListDone)?;
            }
            Msg::Read { id, path, runs, codec, level } => {
                let want = Want::Data(&runs, codec, level, &mut auto);
                let answered = answer(pgdata, &mut last, &mut w, &mut buf, id, &path, want);
                answered.or_else(|e| answer_error(&mut w, id, &path, e))?;
            }
            Msg::Sums { id, path, offset, len, block, unread_to } => {
                let want = Want::Hashes((offset, len), block, unread_to);
                let answered = answer(pgdata, &mut last, &mut w, &mut buf, id, &path, want);
                answered.or_else(|e| answer_error(&mut w, id, &path, e))?;
            }
            Msg::Listen { token, streams, tls } => match data_channel(pgdata, token, streams, tls) {
                Ok(offer) => write_msg(&mut w, &Msg::Listening(offer))?,
                Err(e) => write_msg(&mut w, &Msg::Error { id: 0, message: format!("opening the data channel: {e}") })?,
            },
            Msg::WalChanges { id, system_id, seg, pieces } => {
                wal_changes(&pgdata.join("pg_wal"), &mut w, &alive, id, (system_id, seg), pieces)?
            }
            Msg::Quit => break,
            other => write_msg(&mut w, &Msg::Error { id: 0, message: format!("unexpected request {other:?}") })?,
        }
        // Answers to a batch of requests (thousands of changed pages of a re-sync) leave in large writes; the
        // last one goes out as soon as nothing more is asked.
        if requests.is_empty() {
            w.flush()?;
        }
    }
    w.flush()
}

/// Answers WalChanges: the relation blocks the primary's WAL in `pieces` changed (`pg::wal_records`), read from
/// its `pg_wal`, in frames of at most about a MiB of runs each. Reading a long stretch may take a while with
/// nothing to say: the scan runs on a thread of its own, and the agent counts as heard from until it ends.
fn wal_changes<W: Write>(
    pg_wal: &Path,
    w: &mut W,
    alive: &Alive,
    id: u32,
    (system_id, seg): (u64, u64),
    pieces: Vec<(u32, u64, u64)>,
) -> io::Result<()> {
    let Some(seg) = SegSize::new(seg) else {
        return write_msg(w, &Msg::Error { id, message: format!("a WAL segment size of {seg} bytes") });
    };
    let pieces: Vec<(u32, Lsn, Lsn)> = pieces.into_iter().map(|(t, a, b)| (t, Lsn(a), Lsn(b))).collect();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let pg_wal = pg_wal.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(wal_records::changes(&pg_wal, &Stretch { pieces: &pieces, seg, system_id, hints: false }));
    });
    let scanned = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(result) => break result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => alive.now(),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                break Err(wal_records::ScanError("the WAL scan failed".into()))
            }
        }
    };
    let scanned = match scanned {
        Ok(s) => s,
        Err(e) => return write_msg(w, &Msg::Error { id, message: e.to_string() }),
    };
    let mut created: Vec<(u32, u32)> = scanned.changes.created.into_iter().collect();
    let mut forks = Vec::new();
    let mut runs = 0;
    for (fork, changes) in scanned.changes.forks {
        runs += changes.runs.len() + 1;
        forks.push((fork, changes));
        if runs >= 1 << 17 {
            let created = std::mem::take(&mut created);
            write_msg(
                w,
                &Msg::Changed { id, wal_bytes: scanned.wal_bytes, created, forks: std::mem::take(&mut forks) },
            )?;
            runs = 0;
        }
    }
    write_msg(w, &Msg::Changed { id, wal_bytes: scanned.wal_bytes, created, forks })?;
    write_msg(w, &Msg::Done { id, vanished: false })
}

/// Listens for the client's data connections (see `channel`) on the address its ssh connection reached: the one
/// address of this host we know the client can route to. Each connection is served like this one, on a thread
/// of its own; they all end with the process, which ends with this (the control) connection.
fn data_channel(pgdata: &Path, token: [u8; channel::TOKEN_LEN], streams: u32, tls: bool) -> io::Result<Offer> {
    let ssh = std::env::var("SSH_CONNECTION").unwrap_or_default();
    // "client address, client port, server address, server port" (ssh(1), ENVIRONMENT).
    let ip: IpAddr = ssh.split_whitespace().nth(2).and_then(|a| a.parse().ok()).ok_or_else(|| {
        io::Error::other(format!("SSH_CONNECTION is {ssh:?}: the agent cannot tell which address the client reached"))
    })?;
    let pgdata = pgdata.to_path_buf();
    channel::listen(ip, tls, token, streams, move |(r, w)| {
        if let Err(e) = serve(&pgdata, r, w) {
            eprintln!("pgclone agent: a data connection failed: {e}");
        }
    })
}

/// When the agent last heard from its client (a frame read) or got something to it (a write accepted): a
/// watcher thread ends the whole process, whatever it is blocked in, once neither happened for CLIENT_SILENCE.
/// A live client pings at least every PING_EVERY and drains what it is sent, however slowly; a client whose link
/// was cut for good does neither, and sshd may keep its dead session for hours.
#[derive(Clone)]
struct Alive {
    started: Instant,
    /// Milliseconds after `started`.
    last: Arc<AtomicU64>,
}

impl Alive {
    /// Watches until the returned value's last clone is gone (`serve` returned).
    fn watch() -> Alive {
        let alive = Alive { started: Instant::now(), last: Arc::new(AtomicU64::new(0)) };
        let watched = Arc::downgrade(&alive.last);
        let started = alive.started;
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let Some(last) = watched.upgrade() else { return };
            let last = Duration::from_millis(last.load(Ordering::Relaxed));
            let silent = started.elapsed().saturating_sub(last);
            if silent > CLIENT_SILENCE {
                eprintln!(
                    "pgclone agent: nothing from or to the client for {} s: it is gone; ending",
                    silent.as_secs()
                );
                std::process::exit(3);
            }
        });
        alive
    }

    fn now(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The agent's output, noting every write the client's side accepted, and how long writing took (the link's
/// drain rate, for `--compress auto`).
struct Noted<W> {
    inner: W,
    alive: Alive,
    written: u64,
    blocked: Duration,
}

impl<W: Write> Write for Noted<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let started = Instant::now();
        let n = self.inner.write(b)?;
        self.blocked += started.elapsed();
        self.written += n as u64;
        self.alive.now();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the client's frames on a thread of its own, so they are heard while the agent writes a long answer.
/// Pings are noted and dropped; everything else, and the end of the input, goes to the returned channel.
fn listen(input: impl Read + Send + 'static, alive: Alive) -> crossbeam_channel::Receiver<io::Result<Option<Msg>>> {
    let (tx, rx) = crossbeam_channel::bounded(64);
    std::thread::spawn(move || {
        let (mut r, mut spare) = (BufReader::new(input), Vec::new());
        loop {
            let m = read_msg(&mut r, &mut spare);
            alive.now();
            let end = !matches!(m, Ok(Some(_)));
            if matches!(m, Ok(Some(Msg::Ping))) {
                continue;
            }
            if tx.send(m).is_err() || end {
                return;
            }
        }
    });
    rx
}

/// A file removed since it was listed is normal on a live server: say so instead of failing.
fn answer_error(w: &mut impl Write, id: u32, path: &Path, e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        write_msg(w, &Msg::Done { id, vanished: true })
    } else {
        write_msg(w, &Msg::Error { id, message: format!("{}: {e}", path.display()) })
    }
}

/// Only plain relative paths: an agent serves its data directory (and tablespaces through pg_tblspc links),
/// never anything a crafted path could reach.
fn open(pgdata: &Path, rel: &Path) -> io::Result<File> {
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "path outside the data directory"));
    }
    File::open(pgdata.join(rel))
}

/// `rel`, opened again only when the previous request was for another file: a re-sync asks for run after run
/// of one file. A file removed in between still answers from the open descriptor; that is a removal after
/// the listing, so after the backup started, which WAL replay performs again.
fn reopen<'a>(pgdata: &Path, last: &'a mut Option<(PathBuf, File)>, rel: &Path) -> io::Result<&'a File> {
    if last.as_ref().is_none_or(|(p, _)| p != rel) {
        *last = None;
        *last = Some((rel.to_path_buf(), open(pgdata, rel)?));
    }
    Ok(&last.as_ref().expect("opened above").1)
}

/// What a request asks of a file: the bytes of its runs (with a codec and level, and the connection's choice for
/// `auto`), or the hashes of the blocks of a range, but for pages whose LSN is at or before the last field.
enum Want<'a> {
    Data(&'a [(u64, u64)], Codec, i32, &'a mut AutoCodec),
    Hashes((u64, u64), u32, u64),
}

/// A page's pd_lsn (bufpage.h PageXLogRecPtr: xlogid, then xrecoff, each a uint32 of this machine's order).
fn page_lsn(page: &[u8]) -> u64 {
    let half = |at: usize| u64::from(u32::from_ne_bytes(page[at..at + 4].try_into().expect("4 bytes")));
    half(0) << 32 | half(4)
}

/// Answers one Read (each of its runs in turn) or Sums request, then Done. `buf`: the agent's one read buffer,
/// reused by every request (a fresh MiB for each of thousands of small files would be zeroed each time).
fn answer<W: Write>(
    pgdata: &Path,
    last: &mut Option<(PathBuf, File)>,
    w: &mut BufWriter<Noted<W>>,
    buf: &mut Vec<u8>,
    id: u32,
    rel: &Path,
    want: Want,
) -> io::Result<()> {
    let f = reopen(pgdata, last, rel)?;
    match want {
        Want::Data(runs, codec, level, auto) => {
            for run in runs {
                each_chunk(f, buf, *run, DATA_CHUNK, |pos, raw| {
                    let (codec, bytes) = match codec {
                        Codec::Auto => {
                            auto.link(w.get_ref().written, w.get_ref().blocked);
                            auto.choose(raw)
                        }
                        codec => (codec, compress(codec, level, raw)?),
                    };
                    write_data(w, (id, pos, raw.len() as u32, xxh3_64(raw), codec), &bytes)
                })?;
            }
        }
        Want::Hashes(range, block, unread_to) => {
            // Blocks of at least 512 bytes keep a read's hashes (and so a frame) small.
            if !(512..=DATA_CHUNK as u32).contains(&block) || (unread_to != 0 && block as usize != BLCKSZ) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("block size {block} out of range")));
            }
            // A new page (LSN 0: extended, never written with WAL) is always compared.
            let unread = |b: &[u8]| b.len() == BLCKSZ && (1..=unread_to).contains(&page_lsn(b));
            // Whole blocks per read, about a MiB: one system call per page would dominate the hashing. Each
            // read's hashes go out at once, so the client compares its copy of these pages while we read on.
            let per_read = DATA_CHUNK / block as usize * block as usize;
            each_chunk(f, buf, range, per_read, |_, data| {
                let hashes = data.chunks(block as usize).map(|b| (!unread(b)).then(|| xxh3_64(b))).collect();
                write_msg(w, &Msg::Hashes { id, hashes })?;
                w.flush()
            })?;
        }
    }
    write_msg(w, &Msg::Done { id, vanished: false })
}

/// Reads `[offset, offset+len)` of `f` (less when the file is shorter now) into `buf`, at most `step` bytes at a
/// time, handing each piece with its offset to `each`.
fn each_chunk(
    f: &File,
    buf: &mut Vec<u8>,
    (offset, len): (u64, u64),
    step: usize,
    mut each: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    buf.resize(step, 0);
    let (mut pos, end) = (offset, offset.saturating_add(len));
    while pos < end {
        let want = ((end - pos) as usize).min(step);
        let n = read_at_full(f, &mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        each(pos, &buf[..n])?;
        pos += n as u64;
        if n < want {
            break;
        }
    }
    Ok(())
}

/// The data directory's entries, not following symlinks, plus the contents of each tablespace reached
/// through its pg_tblspc link (listed under that link's path). Entries that vanish while listed are skipped.
fn list(pgdata: &Path) -> io::Result<Vec<RemoteEntry>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = pgdata.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let Ok(e) = e else { continue };
            let child = rel.join(e.file_name());
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
            let kind = if meta.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                if rel == Path::new("pg_tblspc") {
                    stack.push(child.clone());
                }
                EntryKind::Symlink(target)
            } else if meta.is_dir() {
                stack.push(child.clone());
                EntryKind::Dir
            } else if meta.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            out.push(RemoteEntry { path: child, kind, size: meta.len(), mode: meta.mode() & 0o7777 });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_are_heard_and_never_answered() {
        let d = tempfile::tempdir().unwrap();
        let answers =
            ask(d.path(), &[Msg::Ping, Msg::Hello { protocol: PROTOCOL_VERSION, version: "x".into() }, Msg::Ping]);
        assert!(matches!(answers[..], [Msg::Hello { .. }]), "{answers:?}");
    }

    fn ask(pgdata: &Path, requests: &[Msg]) -> Vec<Msg> {
        let mut input = Vec::new();
        requests.iter().for_each(|m| write_msg(&mut input, m).unwrap());
        let mut output = Vec::new();
        serve(pgdata, std::io::Cursor::new(input), &mut output).unwrap();
        let mut r = output.as_slice();
        std::iter::from_fn(|| read_msg(&mut r, &mut Vec::new()).unwrap()).collect()
    }

    #[test]
    fn pages_changed_at_or_before_the_lsn_asked_for_go_unhashed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("base/1")).unwrap();
        // Pages with LSNs 0 (new), 100, 0/200 exactly, 1/0 (xlogid 1), 150; then a short tail.
        let lsns: [u64; 5] = [0, 100, 200, 1 << 32, 150];
        let mut data = Vec::new();
        for lsn in lsns {
            let mut page = vec![7u8; BLCKSZ];
            page[..4].copy_from_slice(&((lsn >> 32) as u32).to_ne_bytes());
            page[4..8].copy_from_slice(&(lsn as u32).to_ne_bytes());
            data.extend(page);
        }
        data.extend([1u8; 100]);
        std::fs::write(d.path().join("base/1/5"), &data).unwrap();
        let sums =
            |id, block, unread_to| Msg::Sums { id, path: "base/1/5".into(), offset: 0, len: 1 << 20, block, unread_to };
        let answers = ask(d.path(), &[sums(1, 8192, 200), sums(2, 1024, 200)]);
        let Msg::Hashes { id: 1, hashes } = &answers[0] else { panic!("{answers:?}") };
        let want: Vec<Option<u64>> = data.chunks(BLCKSZ).map(|b| Some(xxh3_64(b))).collect();
        assert_eq!(hashes, &[want[0], None, None, want[3], None, want[5]]);
        assert!(matches!(answers[2], Msg::Error { id: 2, .. }), "LSNs only with pages: {answers:?}");
    }

    #[test]
    fn lists_reads_hashes_and_reports_vanished_files() {
        let d = tempfile::tempdir().unwrap();
        let ts = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("base/1")).unwrap();
        std::fs::create_dir_all(d.path().join("pg_tblspc")).unwrap();
        std::fs::write(ts.path().join("in_ts"), b"t").unwrap();
        std::os::unix::fs::symlink(ts.path(), d.path().join("pg_tblspc/99")).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(d.path().join("base/1/100"), &data).unwrap();
        let answers = ask(
            d.path(),
            &[
                Msg::List,
                Msg::Read {
                    id: 1,
                    path: "base/1/100".into(),
                    runs: vec![(10, 2_500_000)],
                    codec: Codec::Lz4,
                    level: 0,
                },
                Msg::Read { id: 2, path: "gone".into(), runs: vec![(0, 1)], codec: Codec::None, level: 0 },
                Msg::Read { id: 3, path: "../etc/passwd".into(), runs: vec![(0, 1)], codec: Codec::None, level: 0 },
                Msg::Sums { id: 4, path: "base/1/100".into(), offset: 0, len: 3_000_000, block: 1 << 20, unread_to: 0 },
                Msg::Sums {
                    id: 5,
                    path: "base/1/100".into(),
                    offset: 8192,
                    len: u64::MAX / 2,
                    block: 8192,
                    unread_to: 0,
                },
                Msg::Sums { id: 6, path: "base/1/100".into(), offset: 0, len: 1, block: 1, unread_to: 0 },
                Msg::Read {
                    id: 7,
                    path: "base/1/100".into(),
                    runs: vec![(0, 100), (2_999_000, 5000)],
                    codec: Codec::None,
                    level: 0,
                },
            ],
        );
        let Msg::Entries(entries) = &answers[0] else { panic!("{:?}", answers[0]) };
        let paths: Vec<_> = entries.iter().map(|e| e.path.to_str().unwrap().to_string()).collect();
        assert!(paths.contains(&"pg_tblspc/99/in_ts".to_string()), "{paths:?}");
        assert!(paths.contains(&"base/1/100".to_string()));
        let mut got = Vec::new();
        for a in &answers {
            if let Msg::Data { id: 1, offset, raw_len, raw_hash, codec, bytes } = a {
                assert_eq!(*offset, 10 + got.len() as u64);
                let mut raw = vec![0u8; *raw_len as usize];
                crate::transport::protocol::decompress_into(*codec, *raw_hash, bytes, &mut raw).unwrap();
                got.extend(raw);
            }
        }
        assert_eq!(got, &data[10..2_500_010]);
        assert!(answers.contains(&Msg::Done { id: 2, vanished: true }));
        assert!(answers.iter().any(|a| matches!(a, Msg::Error { id: 3, .. })));
        let hashes = |want: u32| -> Vec<u64> {
            answers
                .iter()
                .filter_map(|a| match a {
                    Msg::Hashes { id, hashes } if *id == want => Some(hashes.iter().map(|h| h.unwrap())),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        assert_eq!(hashes(4), data.chunks(1 << 20).map(xxh3_64).collect::<Vec<_>>());
        assert_eq!(hashes(5), data[8192..].chunks(8192).map(xxh3_64).collect::<Vec<_>>(), "pages, to the end");
        assert!(answers.iter().any(|a| matches!(a, Msg::Error { id: 6, .. })), "a block size below 512");
        // Several runs in one request: each run's bytes, in order, the last cut at the end of the file.
        let runs: Vec<(u64, Vec<u8>)> = answers
            .iter()
            .filter_map(|a| match a {
                Msg::Data { id: 7, offset, bytes, .. } => Some((*offset, bytes.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(runs, vec![(0, data[..100].to_vec()), (2_999_000, data[2_999_000..].to_vec())]);
        assert!(answers.contains(&Msg::Done { id: 7, vanished: false }));
    }
}
