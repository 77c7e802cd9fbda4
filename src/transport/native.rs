//! Native transport: `pgclone agent` processes on the primary (one per worker, each over its own ssh
//! connection, or local children when the data directory is on this host) speaking docs/PROTOCOL.md.
//!
//! Big files are split into ranges that any worker may take, so all workers finish together. A piece that
//! already has data here (a resumed or re-synced replica) is compared block by block (XXH3-64 of 128 KiB
//! blocks, aligned to 8 KiB pages) and only differing blocks move: never size and mtime.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use xxhash_rust::xxh3::xxh3_64;

use super::agent::read_at_full;
use super::protocol::{decompress, read_msg, write_msg, Codec, Msg, PROTOCOL_VERSION};
use super::{Copied, Piece, RemoteEntry, Transport, TransportError, Worker};
use crate::bandwidth::Budget;
use crate::cancel::Cancel;
use crate::proc::OwnedChild;
use crate::ssh::{last_line, quote, SshTarget};

/// Delta granularity: a multiple of PostgreSQL's 8 KiB page, small enough that a few changed pages move
/// little, large enough that the hashes are a tiny fraction of the data.
const DELTA_BLOCK: u32 = 128 << 10;

/// Where agents run.
#[derive(Clone)]
pub enum Launch {
    Ssh(SshTarget),
    /// The primary's data directory is on this host: agents are local child processes.
    Local,
}

#[derive(Clone)]
pub struct Options {
    pub launch: Launch,
    /// The pgclone binary on the primary host (--remote-pgclone).
    pub remote_bin: String,
    pub pgdata: PathBuf,
    pub codec: Codec,
    pub level: i32,
    pub split: u64,
    pub budget: Option<Arc<Budget>>,
    /// The replica already holds an earlier copy (a resumed or re-synced clone): compare blocks before
    /// moving them. Off for a fresh clone, where every byte must move anyway.
    pub delta: bool,
}

pub struct NativeTransport {
    opts: Options,
    /// For listing and single fetches; workers have their own.
    control: Mutex<AgentConn>,
}

struct AgentConn {
    w: BufWriter<ChildStdin>,
    r: BufReader<ChildStdout>,
    child: OwnedChild,
}

impl AgentConn {
    fn open(o: &Options) -> Result<AgentConn, TransportError> {
        let agent_args = format!("agent --pgdata {}", quote(&o.pgdata));
        let mut cmd = match &o.launch {
            Launch::Ssh(ssh) => ssh.command(&format!("{} {agent_args}", quote(&o.remote_bin))),
            Launch::Local => {
                let mut c = Command::new(std::env::current_exe().map_err(io("finding our own binary"))?);
                c.arg("agent").arg("--pgdata").arg(&o.pgdata);
                c
            }
        };
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = OwnedChild::spawn(cmd, "pgclone agent").map_err(io("starting the agent"))?;
        let w = BufWriter::new(child.child_mut().stdin.take().expect("piped"));
        let r = BufReader::with_capacity(1 << 20, child.child_mut().stdout.take().expect("piped"));
        let mut conn = AgentConn { w, r, child };
        let ours = env!("CARGO_PKG_VERSION");
        let hello = conn
            .send(&Msg::Hello { protocol: PROTOCOL_VERSION, version: ours.into() })
            .and_then(|()| conn.recv().map_err(|e| TransportError::Agent(e.to_string())));
        match hello {
            Ok(Msg::Hello { protocol, version }) if protocol == PROTOCOL_VERSION && version == ours => Ok(conn),
            Ok(Msg::Hello { version, .. }) => Err(TransportError::Agent(format!(
                "pgclone on the primary is version {version}, this one is {ours}: install the same version there"
            ))),
            _ => Err(conn.failure(o)),
        }
    }

    /// Why an agent ended: ssh could not connect, the binary is missing, or its own last words.
    fn failure(&mut self, o: &Options) -> TransportError {
        let _ = self.child.wait_timeout(std::time::Duration::from_secs(5));
        let mut err = Vec::new();
        if let Some(mut e) = self.child.child_mut().stderr.take() {
            let _ = e.read_to_end(&mut err);
        }
        match (self.child.child_mut().try_wait().ok().flatten().and_then(|s| s.code()), &o.launch) {
            (Some(255), Launch::Ssh(ssh)) => TransportError::Ssh(ssh.connect_error(&err)),
            (Some(126 | 127), _) => TransportError::AgentMissing(format!(
                "{} is not installed on the primary host ({}); install pgclone {} there or give --remote-pgclone PATH",
                o.remote_bin,
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
        read_msg(&mut self.r)
            .map_err(io("reading from the agent"))?
            .ok_or_else(|| TransportError::Agent("the agent closed the connection".into()))
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> TransportError {
    move |source| TransportError::Io { what: what.into(), source }
}

impl NativeTransport {
    pub fn start(opts: Options) -> Result<NativeTransport, TransportError> {
        let control = AgentConn::open(&opts)?;
        Ok(NativeTransport { opts, control: Mutex::new(control) })
    }
}

impl Transport for NativeTransport {
    fn list(&self) -> Result<Vec<RemoteEntry>, TransportError> {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        c.send(&Msg::List)?;
        let mut out = Vec::new();
        loop {
            match c.recv()? {
                Msg::Entries(e) => out.extend(e),
                Msg::ListDone => return Ok(out),
                Msg::Error { message, .. } => {
                    return Err(TransportError::List { dir: self.opts.pgdata.display().to_string(), reason: message })
                }
                other => return Err(TransportError::Agent(format!("unexpected answer {other:?}"))),
            }
        }
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>, TransportError> {
        Ok(Box::new(NativeWorker { conn: AgentConn::open(&self.opts)?, opts: &self.opts }))
    }

    fn fetch_file(&self, rel: &Path, to: &Path) -> Result<(), TransportError> {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        c.send(&Msg::Read { id: 0, path: rel.into(), offset: 0, len: u64::MAX / 2, codec: Codec::None, level: 0 })?;
        let f = File::create(to).map_err(io("creating the fetched file"))?;
        loop {
            match c.recv()? {
                Msg::Data { offset, raw_len, raw_hash, codec, bytes, .. } => {
                    let raw = decompress(codec, raw_len, raw_hash, bytes).map_err(io("checking fetched data"))?;
                    f.write_all_at(&raw, offset).map_err(io("writing the fetched file"))?;
                }
                Msg::Done { vanished: false, .. } => return f.sync_all().map_err(io("syncing the fetched file")),
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

    fn split_size(&self) -> Option<u64> {
        Some(self.opts.split)
    }
}

struct NativeWorker<'a> {
    conn: AgentConn,
    opts: &'a Options,
}

/// A piece being copied: its local file, and for a delta, the remote block hashes received so far.
struct Open {
    piece: usize,
    file: File,
    offset: u64,
    hashes: Option<Vec<u64>>,
}

impl Worker for NativeWorker<'_> {
    fn copy(
        &mut self,
        pieces: &[Piece],
        dest: &Path,
        cancel: &Cancel,
        moving: &dyn Fn(u64),
    ) -> Result<Copied, TransportError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let mut open: HashMap<u32, Open> = HashMap::new();
        let mut vanished = vec![false; pieces.len()];
        for (i, p) in pieces.iter().enumerate() {
            let path = dest.join(&p.path);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| TransportError::Io { what: format!("opening {}", path.display()), source })?;
            let had = file.metadata().map(|m| m.len()).unwrap_or(0);
            // The local file takes the primary's size (truncated or extended); ranges of one file may be
            // handled by several workers at once, all setting the same length.
            if had != p.size {
                file.set_len(p.size).map_err(io("sizing a local file"))?;
            }
            let (offset, len) = p.range.unwrap_or((0, p.size));
            let id = i as u32;
            let delta = self.opts.delta && had > offset;
            let _ = tx.send(if delta {
                Msg::Sums { id, path: p.path.clone(), offset, len, block: DELTA_BLOCK }
            } else {
                Msg::Read { id, path: p.path.clone(), offset, len, codec: self.opts.codec, level: self.opts.level }
            });
            open.insert(id, Open { piece: i, file, offset, hashes: delta.then(Vec::new) });
        }
        let mut outstanding = pieces.len();
        let mut next_id = pieces.len() as u32;
        let mut moved = 0u64;
        let AgentConn { w, r, .. } = &mut self.conn;
        std::thread::scope(|s| {
            // Requests go out on their own thread, so a long batch never waits on answers it is not reading.
            s.spawn(move || {
                while let Ok(m) = rx.recv() {
                    if write_msg(w, &m).is_err() {
                        return;
                    }
                    if rx.is_empty() && w.flush().is_err() {
                        return;
                    }
                }
                let _ = w.flush();
            });
            while outstanding > 0 {
                if cancel.is_cancelled() {
                    return Err(TransportError::Cancelled);
                }
                let m = read_msg(r)
                    .map_err(io("reading from the agent"))?
                    .ok_or_else(|| TransportError::Worker("the agent on the primary ended".into()))?;
                match m {
                    Msg::Data { id, offset, raw_len, raw_hash, codec, bytes } => {
                        if let Some(b) = &self.opts.budget {
                            b.take(bytes.len());
                        }
                        let raw = decompress(codec, raw_len, raw_hash, bytes).map_err(io("checking received data"))?;
                        let o =
                            open.get(&id).ok_or_else(|| TransportError::Agent(format!("data for unknown id {id}")))?;
                        o.file.write_all_at(&raw, offset).map_err(io("writing received data"))?;
                        moved += u64::from(raw_len);
                        moving(u64::from(raw_len));
                    }
                    Msg::Hashes { id, hashes } => {
                        if let Some(Open { hashes: Some(h), .. }) = open.get_mut(&id) {
                            h.extend(hashes);
                        }
                    }
                    Msg::Done { id, vanished: gone } => {
                        outstanding -= 1;
                        let o = open
                            .remove(&id)
                            .ok_or_else(|| TransportError::Agent(format!("done for unknown id {id}")))?;
                        if gone {
                            vanished[o.piece] = true;
                        } else if let Some(remote) = &o.hashes {
                            for (offset, len) in differing(&o.file, o.offset, remote)? {
                                let p = &pieces[o.piece];
                                let (codec, level) = (self.opts.codec, self.opts.level);
                                let _ =
                                    tx.send(Msg::Read { id: next_id, path: p.path.clone(), offset, len, codec, level });
                                let file = o.file.try_clone().map_err(io("reopening a local file"))?;
                                open.insert(next_id, Open { piece: o.piece, file, offset, hashes: None });
                                next_id += 1;
                                outstanding += 1;
                            }
                        }
                    }
                    Msg::Error { message, .. } => return Err(TransportError::Worker(message)),
                    other => return Err(TransportError::Agent(format!("unexpected answer {other:?}"))),
                }
            }
            drop(tx);
            Ok(())
        })?;
        let mut c = Copied { moved, ..Copied::default() };
        for (p, gone) in pieces.iter().zip(&vanished) {
            if *gone {
                c.vanished += u64::from(p.counts_file());
            } else {
                c.files += u64::from(p.counts_file());
                c.bytes += p.len();
            }
        }
        Ok(c)
    }
}

/// The runs of local blocks (from `offset`) whose hashes differ from the primary's, as (offset, len).
fn differing(file: &File, offset: u64, remote: &[u64]) -> Result<Vec<(u64, u64)>, TransportError> {
    let mut buf = vec![0u8; DELTA_BLOCK as usize];
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, h) in remote.iter().enumerate() {
        let at = offset + i as u64 * u64::from(DELTA_BLOCK);
        let n = read_at_full(file, &mut buf, at).map_err(io("reading a local file"))?;
        if n > 0 && xxh3_64(&buf[..n]) == *h {
            continue;
        }
        match runs.last_mut() {
            Some((o, l)) if *o + *l == at => *l += u64::from(DELTA_BLOCK),
            _ => runs.push((at, u64::from(DELTA_BLOCK))),
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_blocks_coalesce_into_runs() {
        let d = tempfile::tempdir().unwrap();
        let b = DELTA_BLOCK as usize;
        let local: Vec<u8> = (0..5 * b).map(|i| (i % 7) as u8).collect();
        std::fs::write(d.path().join("f"), &local).unwrap();
        let f = File::open(d.path().join("f")).unwrap();
        let mut remote: Vec<u64> = local.chunks(b).map(xxh3_64).collect();
        remote[1] ^= 1;
        remote[2] ^= 1;
        remote[4] ^= 1;
        remote.push(42); // the primary's file is longer than ours
        let b = u64::from(DELTA_BLOCK);
        assert_eq!(differing(&f, 0, &remote).unwrap(), vec![(b, 2 * b), (4 * b, 2 * b)]);
        assert_eq!(differing(&f, 0, &remote[..1]).unwrap(), vec![]);
    }
}
