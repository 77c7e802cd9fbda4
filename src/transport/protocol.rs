//! The native transport's wire format (docs/PROTOCOL.md): length-prefixed frames, each with an XXH3-64 checked
//! before anything acts on it, so a damaged stream fails loudly instead of writing bad bytes. A Data frame's
//! hash covers its fields only: its bytes are checked once, against the XXH3-64 of the raw data, after
//! decompression (hashing them twice would cost both ends CPU that the copy needs).

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use xxhash_rust::xxh3::xxh3_64;

use super::channel::{Offer, TOKEN_LEN};
use super::{os, EntryKind, RemoteEntry};
use crate::pg::wal_summary::{Fork, ForkChanges};

/// Bumped on any incompatible change; client and agent must agree exactly (see Hello).
pub const PROTOCOL_VERSION: u32 = 7;
/// Largest frame accepted: bounds memory whatever the peer sends.
pub const MAX_FRAME: usize = 8 << 20;
/// Raw bytes per Data frame.
pub const DATA_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Lz4 = 1,
    Zstd = 2,
    /// In a Read only: the agent picks lz4 or none for each chunk (see `auto_codec`).
    Auto = 3,
}

/// Messages. Requests carry an id the answers repeat, so a client can send many before reading any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Both ways first: protocol version and the pgclone version (they must match).
    Hello {
        protocol: u32,
        version: String,
    },
    /// List the data directory (entries follow in `Entries` frames, then `ListDone`).
    List,
    Entries(Vec<RemoteEntry>),
    ListDone,
    /// Send each run's `len` bytes of `path` from its `offset` (less if the file is shorter now), in order.
    Read {
        id: u32,
        path: PathBuf,
        runs: Vec<(u64, u64)>,
        codec: Codec,
        level: i32,
    },
    /// Bytes of a Read: `raw_len` bytes at `offset`, XXH3-64 `raw_hash` of them before compression. On the
    /// wire the bytes come first and the fields after them, so a reader can keep the bytes where they landed.
    Data {
        id: u32,
        offset: u64,
        raw_len: u32,
        raw_hash: u64,
        codec: Codec,
        bytes: Vec<u8>,
    },
    /// XXH3-64 of each `block`-sized block of `path` in [offset, offset+len); with `unread_to` (not 0, and
    /// `block` PostgreSQL's page size), none for a page whose LSN is in (0, unread_to].
    Sums {
        id: u32,
        path: PathBuf,
        offset: u64,
        len: u64,
        block: u32,
        unread_to: u64,
    },
    /// One per block, in order: its hash, or None for a page left unread (see Sums).
    Hashes {
        id: u32,
        hashes: Vec<Option<u64>>,
    },
    /// A request is answered completely; `vanished`: the file no longer exists.
    Done {
        id: u32,
        vanished: bool,
    },
    /// The agent could not do something (other than a vanished file).
    Error {
        id: u32,
        message: String,
    },
    Quit,
    /// Open a data channel (see `channel`): listen for `streams` connections that present `token`, with TLS
    /// (`tls`) or in clear text. Sent over ssh only: the token is a secret.
    Listen {
        token: [u8; TOKEN_LEN],
        streams: u32,
        tls: bool,
    },
    /// The answer to Listen: where to connect, and the certificate to accept there (empty: clear text).
    Listening(Offer),
    /// The relation blocks the primary's WAL changed in `pieces` ((timeline, from, to), `pg::wal_records`), read
    /// from its pg_wal: answered by `Changed` frames, then Done; or by an Error saying why the WAL could not tell.
    WalChanges {
        id: u32,
        system_id: u64,
        seg: u64,
        pieces: Vec<(u32, u64, u64)>,
    },
    /// Part of the answer to WalChanges: WAL bytes read, databases created (tablespace, database), forks.
    Changed {
        id: u32,
        wal_bytes: u64,
        created: Vec<(u32, u32)>,
        forks: Vec<(Fork, ForkChanges)>,
    },
    /// The client is still there: sent on every connection that has had nothing else to say for a while, so an
    /// agent whose client is gone (a link cut for good, which its sshd may not notice for hours) can tell.
    Ping,
}

pub fn write_msg(w: &mut impl Write, m: &Msg) -> io::Result<()> {
    let mut p = Vec::new();
    let kind = match m {
        Msg::Hello { protocol, version } => {
            p.extend_from_slice(&protocol.to_le_bytes());
            p.extend_from_slice(version.as_bytes());
            b'H'
        }
        Msg::List => b'L',
        Msg::Entries(entries) => {
            for e in entries {
                let (k, target): (u8, &[u8]) = match &e.kind {
                    EntryKind::File => (b'f', b""),
                    EntryKind::Dir => (b'd', b""),
                    EntryKind::Symlink(t) => (b'l', t.as_os_str().as_encoded_bytes()),
                    EntryKind::Other => (b'o', b""),
                };
                p.push(k);
                p.extend_from_slice(&e.size.to_le_bytes());
                p.extend_from_slice(&e.mode.to_le_bytes());
                put_bytes(&mut p, e.path.as_os_str().as_encoded_bytes());
                put_bytes(&mut p, target);
            }
            b'E'
        }
        Msg::ListDone => b'Z',
        Msg::Read { id, path, runs, codec, level } => {
            p.extend_from_slice(&id.to_le_bytes());
            p.push(*codec as u8);
            p.extend_from_slice(&level.to_le_bytes());
            p.extend_from_slice(&(runs.len() as u32).to_le_bytes());
            for (offset, len) in runs {
                p.extend_from_slice(&offset.to_le_bytes());
                p.extend_from_slice(&len.to_le_bytes());
            }
            p.extend_from_slice(path.as_os_str().as_encoded_bytes());
            b'R'
        }
        Msg::Data { id, offset, raw_len, raw_hash, codec, bytes } => {
            return write_data(w, (*id, *offset, *raw_len, *raw_hash, *codec), bytes)
        }
        Msg::Sums { id, path, offset, len, block, unread_to } => {
            p.extend_from_slice(&id.to_le_bytes());
            p.extend_from_slice(&offset.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&block.to_le_bytes());
            p.extend_from_slice(&unread_to.to_le_bytes());
            p.extend_from_slice(path.as_os_str().as_encoded_bytes());
            b'S'
        }
        Msg::Hashes { id, hashes } => {
            p.extend_from_slice(&id.to_le_bytes());
            p.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
            // A bit per block, set for a block with no hash; then the hashes there are.
            let mut bits = vec![0u8; hashes.len().div_ceil(8)];
            for (i, _) in hashes.iter().enumerate().filter(|(_, h)| h.is_none()) {
                bits[i / 8] |= 1 << (i % 8);
            }
            p.extend_from_slice(&bits);
            hashes.iter().flatten().for_each(|h| p.extend_from_slice(&h.to_le_bytes()));
            b'B'
        }
        Msg::Done { id, vanished } => {
            p.extend_from_slice(&id.to_le_bytes());
            p.push(u8::from(*vanished));
            b'F'
        }
        Msg::Error { id, message } => {
            p.extend_from_slice(&id.to_le_bytes());
            p.extend_from_slice(message.as_bytes());
            b'X'
        }
        Msg::Quit => b'Q',
        Msg::Ping => b'P',
        Msg::Listen { token, streams, tls } => {
            p.extend_from_slice(token);
            p.extend_from_slice(&streams.to_le_bytes());
            p.push(u8::from(*tls));
            b'T'
        }
        Msg::WalChanges { id, system_id, seg, pieces } => {
            p.extend_from_slice(&id.to_le_bytes());
            p.extend_from_slice(&system_id.to_le_bytes());
            p.extend_from_slice(&seg.to_le_bytes());
            for (tli, from, to) in pieces {
                p.extend_from_slice(&tli.to_le_bytes());
                p.extend_from_slice(&from.to_le_bytes());
                p.extend_from_slice(&to.to_le_bytes());
            }
            b'W'
        }
        Msg::Changed { id, wal_bytes, created, forks } => {
            p.extend_from_slice(&id.to_le_bytes());
            p.extend_from_slice(&wal_bytes.to_le_bytes());
            p.extend_from_slice(&(created.len() as u32).to_le_bytes());
            for (ts, db) in created {
                p.extend_from_slice(&ts.to_le_bytes());
                p.extend_from_slice(&db.to_le_bytes());
            }
            for (f, c) in forks {
                for x in [f.tablespace, f.database, f.relfilenode] {
                    p.extend_from_slice(&x.to_le_bytes());
                }
                p.push(f.fork);
                p.push(u8::from(c.limit.is_some()));
                p.extend_from_slice(&c.limit.unwrap_or(0).to_le_bytes());
                p.extend_from_slice(&(c.runs.len() as u32).to_le_bytes());
                for (first, n) in &c.runs {
                    p.extend_from_slice(&first.to_le_bytes());
                    p.extend_from_slice(&n.to_le_bytes());
                }
            }
            b'C'
        }
        Msg::Listening(offer) => {
            put_bytes(&mut p, offer.addr.to_string().as_bytes());
            p.extend_from_slice(&offer.cert);
            b'O'
        }
    };
    write_frame(w, kind, &[&p], &p)
}

/// A frame of `parts` (the payload in pieces), its hash taken over `hashed`.
fn write_frame(w: &mut impl Write, kind: u8, parts: &[&[u8]], hashed: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 13];
    header[0] = kind;
    header[1..5].copy_from_slice(&(parts.iter().map(|p| p.len()).sum::<usize>() as u32).to_le_bytes());
    header[5..13].copy_from_slice(&xxh3_64(hashed).to_le_bytes());
    w.write_all(&header)?;
    parts.iter().try_for_each(|p| w.write_all(p))
}

/// A Data frame straight from the caller's buffer: (id, offset, raw length, raw hash, codec) and the bytes.
pub fn write_data(w: &mut impl Write, fields: (u32, u64, u32, u64, Codec), bytes: &[u8]) -> io::Result<()> {
    let (id, offset, raw_len, raw_hash, codec) = fields;
    let mut f = Vec::with_capacity(DATA_FIELDS);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&offset.to_le_bytes());
    f.extend_from_slice(&raw_len.to_le_bytes());
    f.extend_from_slice(&raw_hash.to_le_bytes());
    f.push(codec as u8);
    write_frame(w, b'D', &[bytes, &f], &f)
}

/// Data frames end with these fields: id, offset, raw length, raw hash, codec.
const DATA_FIELDS: usize = 4 + 8 + 4 + 8 + 1;

/// The part of a payload the frame hash covers: all of it, but a Data frame's bytes (see the module).
fn hashed(kind: u8, p: &[u8]) -> &[u8] {
    if kind == b'D' && p.len() >= DATA_FIELDS {
        &p[p.len() - DATA_FIELDS..]
    } else {
        p
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames). The payload is read into `spare`,
/// a buffer the caller may hand back after a Data frame (its `bytes`), so that a stream of 1 MiB chunks
/// reuses one allocation instead of faulting in fresh memory for each.
pub fn read_msg(r: &mut impl Read, spare: &mut Vec<u8>) -> io::Result<Option<Msg>> {
    let mut header = [0u8; 13];
    match r.read_exact(&mut header[..1]) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    r.read_exact(&mut header[1..])?;
    let len = u32::from_le_bytes(header[1..5].try_into().expect("4")) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("frame of {len} bytes exceeds the limit")));
    }
    let mut p = std::mem::take(spare);
    p.clear();
    p.resize(len, 0);
    r.read_exact(&mut p)?;
    if xxh3_64(hashed(header[0], &p)).to_le_bytes() != header[5..13] {
        return Err(bad("frame checksum mismatch: the stream is damaged".into()));
    }
    if header[0] == b'D' {
        let mut c = Cursor(p.get(len.saturating_sub(DATA_FIELDS)..).unwrap_or_default());
        let (id, offset, raw_len, raw_hash, codec) = (c.u32()?, c.u64()?, c.u32()?, c.u64()?, codec(c.u8()?)?);
        p.truncate(len - DATA_FIELDS);
        return Ok(Some(Msg::Data { id, offset, raw_len, raw_hash, codec, bytes: p }));
    }
    let result = parse(header[0], &p);
    *spare = p;
    result.map(Some)
}

fn parse(kind: u8, p: &[u8]) -> io::Result<Msg> {
    let mut c = Cursor(p);
    let m = match kind {
        b'H' => Msg::Hello { protocol: c.u32()?, version: String::from_utf8_lossy(c.rest()).into_owned() },
        b'L' => Msg::List,
        b'E' => {
            let mut entries = Vec::new();
            while !c.0.is_empty() {
                let k = c.u8()?;
                let (size, mode) = (c.u64()?, c.u32()?);
                let path = PathBuf::from(os(c.bytes()?));
                let target = PathBuf::from(os(c.bytes()?));
                let kind = match k {
                    b'f' => EntryKind::File,
                    b'd' => EntryKind::Dir,
                    b'l' => EntryKind::Symlink(target),
                    _ => EntryKind::Other,
                };
                entries.push(RemoteEntry { path, kind, size, mode });
            }
            Msg::Entries(entries)
        }
        b'Z' => Msg::ListDone,
        b'R' => {
            let (id, codec, level) = (c.u32()?, codec(c.u8()?)?, c.u32()? as i32);
            let n = c.u32()? as usize;
            // Each run takes 16 bytes: a count the frame cannot hold is refused before anything is allocated.
            if n > c.0.len() / 16 {
                return Err(bad(format!("a read of {n} runs in a frame of {} bytes", c.0.len())));
            }
            let runs = (0..n).map(|_| Ok((c.u64()?, c.u64()?))).collect::<io::Result<_>>()?;
            Msg::Read { id, codec, level, runs, path: PathBuf::from(os(c.rest())) }
        }
        b'S' => Msg::Sums {
            id: c.u32()?,
            offset: c.u64()?,
            len: c.u64()?,
            block: c.u32()?,
            unread_to: c.u64()?,
            path: PathBuf::from(os(c.rest())),
        },
        b'B' => {
            let (id, n) = (c.u32()?, c.u32()? as usize);
            // At least a bit each: a count the frame cannot hold is refused before anything is allocated.
            if n > c.0.len() * 8 {
                return Err(bad(format!("{n} hashes in a frame of {} bytes", c.0.len())));
            }
            let bits = c.take(n.div_ceil(8))?;
            let mut hashes = Vec::with_capacity(n);
            for i in 0..n {
                hashes.push(if bits[i / 8] & (1 << (i % 8)) != 0 { None } else { Some(c.u64()?) });
            }
            Msg::Hashes { id, hashes }
        }
        b'F' => Msg::Done { id: c.u32()?, vanished: c.u8()? != 0 },
        b'X' => Msg::Error { id: c.u32()?, message: String::from_utf8_lossy(c.rest()).into_owned() },
        b'Q' => Msg::Quit,
        b'P' => Msg::Ping,
        b'T' => Msg::Listen {
            token: c.take(TOKEN_LEN)?.try_into().expect("TOKEN_LEN"),
            streams: c.u32()?,
            tls: c.u8()? != 0,
        },
        b'O' => {
            let addr = String::from_utf8_lossy(c.bytes()?).parse().map_err(|e| bad(format!("an address: {e}")))?;
            Msg::Listening(Offer { addr, cert: c.rest().to_vec() })
        }
        b'W' => {
            let (id, system_id, seg) = (c.u32()?, c.u64()?, c.u64()?);
            let mut pieces = Vec::new();
            while !c.0.is_empty() {
                pieces.push((c.u32()?, c.u64()?, c.u64()?));
            }
            Msg::WalChanges { id, system_id, seg, pieces }
        }
        b'C' => {
            let (id, wal_bytes, n) = (c.u32()?, c.u64()?, c.u32()? as usize);
            // Each takes 8 bytes: a count the frame cannot hold is refused before anything is allocated.
            if n > c.0.len() / 8 {
                return Err(bad(format!("{n} databases in a frame of {} bytes", c.0.len())));
            }
            let created = (0..n).map(|_| Ok((c.u32()?, c.u32()?))).collect::<io::Result<_>>()?;
            let mut forks = Vec::new();
            while !c.0.is_empty() {
                let fork = Fork { tablespace: c.u32()?, database: c.u32()?, relfilenode: c.u32()?, fork: c.u8()? };
                let (has_limit, limit, n) = (c.u8()? != 0, c.u32()?, c.u32()? as usize);
                if n > c.0.len() / 8 {
                    return Err(bad(format!("{n} runs in a frame of {} bytes", c.0.len())));
                }
                let runs = (0..n).map(|_| Ok((c.u32()?, c.u32()?))).collect::<io::Result<_>>()?;
                forks.push((fork, ForkChanges { runs, limit: has_limit.then_some(limit) }));
            }
            Msg::Changed { id, wal_bytes, created, forks }
        }
        k => return Err(bad(format!("unknown frame kind {k}"))),
    };
    Ok(m)
}

fn codec(b: u8) -> io::Result<Codec> {
    match b {
        0 => Ok(Codec::None),
        1 => Ok(Codec::Lz4),
        2 => Ok(Codec::Zstd),
        3 => Ok(Codec::Auto),
        _ => Err(bad(format!("unknown codec {b}"))),
    }
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_le_bytes());
    p.extend_from_slice(b);
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated frame".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Compresses a chunk for the wire.
pub fn compress(codec: Codec, level: i32, raw: &[u8]) -> io::Result<Cow<'_, [u8]>> {
    match codec {
        Codec::None => Ok(Cow::Borrowed(raw)),
        Codec::Lz4 => Ok(Cow::Owned(lz4_flex::compress(raw))),
        Codec::Zstd => zstd::bulk::compress(raw, level).map(Cow::Owned),
        Codec::Auto => Err(bad("auto is no codec of a data chunk".into())),
    }
}

/// Restores a chunk into `out` (exactly its raw length) and checks it against the hash the agent took
/// before compressing. Into the caller's buffer: a worker reuses one, aligned for direct I/O.
pub fn decompress_into(codec: Codec, raw_hash: u64, bytes: &[u8], out: &mut [u8]) -> io::Result<()> {
    let n = match codec {
        Codec::None if bytes.len() == out.len() => {
            out.copy_from_slice(bytes);
            out.len()
        }
        Codec::None => bytes.len(),
        Codec::Lz4 => lz4_flex::decompress_into(bytes, out).map_err(|e| bad(e.to_string()))?,
        Codec::Zstd => zstd::bulk::decompress_to_buffer(bytes, out)?,
        Codec::Auto => return Err(bad("auto is no codec of a data chunk".into())),
    };
    if n != out.len() || xxh3_64(out) != raw_hash {
        return Err(bad("data chunk does not match its checksum".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Msg) {
        let mut buf = Vec::new();
        write_msg(&mut buf, &m).unwrap();
        assert_eq!(read_msg(&mut buf.as_slice(), &mut Vec::new()).unwrap(), Some(m));
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Msg::Hello { protocol: 1, version: "0.1.0".into() });
        round_trip(Msg::List);
        round_trip(Msg::Entries(vec![
            RemoteEntry { path: "base/1/2".into(), kind: EntryKind::File, size: 8192, mode: 0o600 },
            RemoteEntry {
                path: "pg_tblspc/5".into(),
                kind: EntryKind::Symlink("/srv/ts ü".into()),
                size: 7,
                mode: 0o777,
            },
            RemoteEntry { path: "base".into(), kind: EntryKind::Dir, size: 4096, mode: 0o700 },
        ]));
        round_trip(Msg::ListDone);
        round_trip(Msg::Read {
            id: 7,
            path: "base/1/2".into(),
            runs: vec![(1 << 33, 64 << 20), (8192, 16384)],
            codec: Codec::Zstd,
            level: -3,
        });
        round_trip(Msg::Data { id: 7, offset: 5, raw_len: 3, raw_hash: 9, codec: Codec::None, bytes: vec![1, 2, 3] });
        round_trip(Msg::Sums { id: 1, path: "x".into(), offset: 0, len: 10, block: 131072, unread_to: 0 });
        round_trip(Msg::Sums { id: 1, path: "x".into(), offset: 8192, len: 10, block: 8192, unread_to: 1 << 40 });
        round_trip(Msg::Hashes { id: 1, hashes: vec![Some(1), Some(u64::MAX)] });
        round_trip(Msg::Hashes { id: 1, hashes: (0..19).map(|i| (i % 3 != 1).then_some(i)).collect() });
        round_trip(Msg::Hashes { id: 1, hashes: vec![None; 9] });
        round_trip(Msg::Hashes { id: 1, hashes: vec![] });
        round_trip(Msg::Done { id: 3, vanished: true });
        round_trip(Msg::Error { id: 3, message: "permission denied".into() });
        round_trip(Msg::Quit);
        round_trip(Msg::Ping);
        round_trip(Msg::Listen { token: [7; TOKEN_LEN], streams: 8, tls: true });
        round_trip(Msg::Listening(Offer { addr: "[fe80::1]:40000".parse().unwrap(), cert: vec![1, 2, 3] }));
        round_trip(Msg::Listening(Offer { addr: "10.0.0.1:5".parse().unwrap(), cert: vec![] }));
        round_trip(Msg::WalChanges { id: 4, system_id: 77, seg: 16 << 20, pieces: vec![(1, 10, 20), (2, 20, 90)] });
        let fork = Fork { tablespace: 1663, database: 5, relfilenode: 16384, fork: 2 };
        round_trip(Msg::Changed {
            id: 4,
            wal_bytes: 1 << 33,
            created: vec![(1663, 16400)],
            forks: vec![
                (fork, ForkChanges { runs: vec![(0, 3), (9, 1)], limit: None }),
                (Fork { fork: 0, ..fork }, ForkChanges { runs: vec![], limit: Some(0) }),
            ],
        });
        assert_eq!(read_msg(&mut [].as_slice(), &mut Vec::new()).unwrap(), None);
        // A recycled buffer: its old contents never leak into the next message.
        let mut spare = vec![9u8; 100];
        let mut buf = Vec::new();
        write_msg(
            &mut buf,
            &Msg::Data { id: 1, offset: 2, raw_len: 2, raw_hash: 3, codec: Codec::None, bytes: vec![4, 5] },
        )
        .unwrap();
        write_msg(&mut buf, &Msg::Done { id: 1, vanished: false }).unwrap();
        let mut r = buf.as_slice();
        let Some(Msg::Data { bytes, .. }) = read_msg(&mut r, &mut spare).unwrap() else { panic!() };
        assert_eq!(bytes, vec![4, 5]);
        spare = bytes;
        assert_eq!(read_msg(&mut r, &mut spare).unwrap(), Some(Msg::Done { id: 1, vanished: false }));
    }

    #[test]
    fn damage_is_detected() {
        let mut buf = Vec::new();
        write_msg(&mut buf, &Msg::Done { id: 3, vanished: false }).unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert!(read_msg(&mut buf.as_slice(), &mut Vec::new()).unwrap_err().to_string().contains("checksum"));
        // A Data frame's fields are covered by the frame hash, its bytes by the raw hash.
        let raw = b"some bytes".to_vec();
        let data = Msg::Data { id: 1, offset: 0, raw_len: 10, raw_hash: xxh3_64(&raw), codec: Codec::None, bytes: raw };
        let mut buf = Vec::new();
        write_msg(&mut buf, &data).unwrap();
        let mut fields = buf.clone();
        fields[13 + 10 + 4] ^= 1; // the offset
        assert!(read_msg(&mut fields.as_slice(), &mut Vec::new()).unwrap_err().to_string().contains("checksum"));
        buf[13] ^= 1; // the first data byte
        let Some(Msg::Data { raw_hash, bytes, codec, .. }) = read_msg(&mut buf.as_slice(), &mut Vec::new()).unwrap()
        else {
            panic!()
        };
        assert!(decompress_into(codec, raw_hash, &bytes, &mut [0u8; 10]).is_err());
        let mut huge = vec![b'D'];
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        assert!(read_msg(&mut huge.as_slice(), &mut Vec::new()).is_err());
        let mut short = Vec::new();
        write_msg(&mut short, &Msg::Quit).unwrap();
        short[0] = b'D';
        assert!(read_msg(&mut short.as_slice(), &mut Vec::new()).is_err(), "a Data frame without its fields");
    }

    #[test]
    fn codecs_round_trip_and_check_the_raw_hash() {
        let raw: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            let c = compress(codec, 3, &raw).unwrap();
            let mut back = vec![0u8; raw.len()];
            decompress_into(codec, xxh3_64(&raw), &c, &mut back).unwrap();
            assert_eq!(back, raw);
            assert!(decompress_into(codec, xxh3_64(&raw) ^ 1, &c, &mut back).is_err());
            assert!(decompress_into(codec, xxh3_64(&raw), &c, &mut back[1..]).is_err(), "a wrong raw length");
        }
    }
}
