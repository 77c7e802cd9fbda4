//! The budgets shared by every copy worker: file data read on the primary (-r/--max-rate) and bytes on the wire
//! (--limit-net-bw).
//!
//! A static split (rate / workers per rsync, as pgclone.sh did) wastes the share of every worker that is
//! idle or done, so the tail of a clone crawls. Here each worker takes from one bucket as it moves bytes:
//! whoever is still moving gets the whole rate.
//!
//! Both live here, on the replica's side, not in the agents on the primary: the workers' agents can be separate
//! processes (one per ssh connection with `--data-channel ssh`), so one budget for the run can only live here.
//! --limit-net-bw is taken as bytes arrive. -r is taken as the native transport's workers ask for data
//! (`before_reading`): an agent reads nothing it is not asked for, so asking at the rate caps the primary's
//! reads, ahead of the rate by at most one request per worker (the transport keeps its ranges to about a second
//! of the rate). Taking -r as data arrives would not: the connections' buffers (the kernel's socket buffers
//! grow to several MiB each way) hold compressed data, so an agent could read tens of MiB ahead of what
//! arrived; measured, a 46 MB copy at `-r 6M` was read whole on the primary in its first 4 of 7 seconds.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lowest accepted limit, as pgclone.sh: below it TCP and protocol overhead dominate.
pub const MIN_RATE: u64 = 10_000;

/// A number and its multiple: pgclone's one rule for sizes and rates given to it, `K`, `M`, `G` are binary
/// multiples (1024), as rsync's --bwlimit and pg_basebackup's --max-rate take them, whichever way they are spelled
/// (`k`, `K`, `KB`, `kB`, `KiB`; `M`, `MB`, `MiB`; ...). On display, sizes are decimal, as disks and rates are
/// quoted (`progress::bytes`).
pub fn split_multiple(s: &str) -> (&str, u64) {
    let s = s.trim();
    let unit = s.strip_suffix("iB").or_else(|| s.strip_suffix('B')).unwrap_or(s);
    match unit.char_indices().last() {
        Some((i, 'k' | 'K')) => (&unit[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&unit[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&unit[..i], 1 << 30),
        _ => (s, 1),
    }
}

/// Parses `5000000`, `500k`, `200M`, `200MB`, `1GiB` (`split_multiple`) into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = split_multiple(s);
    let n: u64 = num.parse().map_err(|_| format!("not a rate: {s:?} (bytes/s, optionally with K, M or G)"))?;
    let rate = n.checked_mul(mult).ok_or_else(|| format!("rate too large: {s:?}"))?;
    if rate < MIN_RATE {
        return Err(format!("{s:?} is below the minimum of {MIN_RATE} bytes/s"));
    }
    Ok(rate)
}

/// A token bucket that may go into debt: a taker pays for its bytes by sleeping until the debt is repaid,
/// so many takers together never exceed the rate, and one alone gets all of it.
pub struct Budget {
    rate: f64,
    /// Unused allowance (positive) or debt (negative), in bytes, as of `at`.
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    pub fn new(rate: u64) -> Arc<Budget> {
        Arc::new(Budget { rate: rate as f64, state: Mutex::new((0.0, Instant::now())) })
    }

    /// Accounts for `n` bytes, sleeping as long as the budget requires.
    pub fn take(&self, n: usize) {
        std::thread::sleep(self.reserve(n as u64));
    }

    /// Accounts for `n` bytes and returns how long the taker must wait before using them.
    pub fn reserve(&self, n: u64) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Unused time is not saved up beyond a tenth of a second: no bursts after idling.
        let allowance = (st.0 + now.duration_since(st.1).as_secs_f64() * self.rate).min(self.rate / 10.0);
        *st = (allowance - n as f64, now);
        if st.0 < 0.0 {
            Duration::from_secs_f64(-st.0 / self.rate)
        } else {
            Duration::ZERO
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

/// The run's two budgets, either or both unset.
#[derive(Clone, Default)]
pub struct Limits {
    /// -r/--max-rate: bytes of file data read on the primary per second (pg_basebackup's meaning: its
    /// `--max-rate` limits "the transfer rate at which data is collected from the source server", to limit the
    /// impact on the running server). Uncompressed bytes: what the primary's disks deliver.
    pub data: Option<Arc<Budget>>,
    /// --limit-net-bw: bytes on the wire per second, after compression.
    pub wire: Option<Arc<Budget>>,
}

impl Limits {
    pub fn new(data: Option<u64>, wire: Option<u64>) -> Limits {
        Limits { data: data.map(Budget::new), wire: wire.map(Budget::new) }
    }

    pub fn is_set(&self) -> bool {
        self.data.is_some() || self.wire.is_some()
    }

    /// Accounts for `raw` bytes read on the primary that crossed the link as `wire` bytes, sleeping as long as
    /// either budget requires.
    pub fn take(&self, raw: usize, wire: usize) {
        if let Some(b) = &self.data {
            b.take(raw);
        }
        self.arrived(wire);
    }

    /// Accounts for `wire` bytes that arrived, sleeping as long as --limit-net-bw requires.
    pub fn arrived(&self, wire: usize) {
        if let Some(b) = &self.wire {
            b.take(wire);
        }
    }

    /// Accounts for asking the primary to read `raw` bytes, and returns how long to wait before asking (-r).
    pub fn before_reading(&self, raw: u64) -> Duration {
        self.data.as_ref().map_or(Duration::ZERO, |b| b.reserve(raw))
    }
}

/// Where a proxy's connections go: the rsync daemon itself (`--data-channel tcp`), or an ssh forward's socket.
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A local proxy to `target` whose server-to-client direction draws from `limits`: the way to hold programs we
/// do not control (rsync) to one shared rate. What passes is rsync's stream, file data uncompressed (we give
/// rsync no `-z`), so each byte counts as one of data and one on the wire. It listens on a Unix socket in the
/// run's private directory, not on a port of 127.0.0.1 that any local user could reach (see
/// `ssh::SshTarget::forward`). Ends its listener when dropped; connections end when either side closes.
pub struct Proxy {
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(socket: PathBuf, target: Target, limits: Limits) -> std::io::Result<Proxy> {
        let listener = UnixListener::bind(&socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new().name("bw-proxy".into()).spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let server = match &target {
                    Target::Tcp(addr) => TcpStream::connect(addr).map(Stream::Tcp),
                    Target::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
                };
                match server {
                    Ok(server) => relay(Stream::Unix(client), server, limits.clone()),
                    Err(e) => tracing::warn!("bandwidth proxy cannot reach the rsync daemon: {e}"),
                }
            }
        })?;
        Ok(Proxy { socket, stop })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One end of a relayed connection.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn relay(client: Stream, server: Stream, limits: Limits) {
    let pair = client.try_clone().and_then(|c| server.try_clone().map(|s| (c, s)));
    let Ok((client2, server2)) = pair else { return };
    std::thread::spawn(move || pump(client2, server2, None));
    std::thread::spawn(move || pump(server, client, Some(limits)));
}

fn pump(mut from: Stream, mut to: Stream, limits: Option<Limits>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(l) = &limits {
            l.take(n, n);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    to.shutdown(Shutdown::Write);
    from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_suffixes_and_a_minimum() {
        assert_eq!(parse_rate("5000000"), Ok(5_000_000));
        assert_eq!(parse_rate("500k"), Ok(512_000));
        assert_eq!(parse_rate("200M"), Ok(200 << 20));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        for same in ["200M", "200MB", "200MiB", "200m"] {
            assert_eq!(parse_rate(same), Ok(200 << 20), "{same}");
        }
        assert_eq!(parse_rate("500KiB"), Ok(512_000));
        assert_eq!(parse_rate("500kB"), Ok(512_000));
        assert!(parse_rate("5B").is_err(), "B alone is no multiple pgclone takes");
        assert!(parse_rate("9999").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("").is_err());
    }

    #[test]
    fn takers_share_one_rate() {
        let b = Budget::new(2_000_000);
        let t = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..10).for_each(|_| b.take(25_000)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // 1 MB at 2 MB/s with at most a tenth of a second of allowance: about 0.45 s, not 0.5/4.
        let secs = t.elapsed().as_secs_f64();
        assert!((0.4..1.5).contains(&secs), "{secs}");
    }

    #[test]
    fn each_limit_counts_its_own_bytes() {
        // 400 kB of data that crossed as 40 kB: -r at 1 MB/s holds it to about 0.4 s, --limit-net-bw at 1 MB/s
        // lets it through in a tenth of that.
        let timed = |limits: Limits| {
            let t = Instant::now();
            (0..10).for_each(|_| limits.take(40_000, 4_000));
            t.elapsed().as_secs_f64()
        };
        let data = timed(Limits::new(Some(1_000_000), None));
        assert!((0.3..1.0).contains(&data), "{data}");
        let wire = timed(Limits::new(None, Some(1_000_000)));
        assert!(wire < 0.15, "{wire}");
        assert!(!Limits::default().is_set());
        // Asking to read is what -r paces: half a second's worth at 1 MB/s waits about that long.
        let wait = Limits::new(Some(1_000_000), Some(1_000)).before_reading(500_000).as_secs_f64();
        assert!((0.4..=0.5).contains(&wait), "{wait}");
        assert_eq!(Limits::new(None, Some(1_000)).before_reading(500_000), Duration::ZERO, "only -r paces reads");
    }

    #[test]
    fn proxy_relays_both_ways() {
        use std::net::TcpListener;
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).unwrap();
            s.write_all(&[got, got].concat()).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::new(None, Some(1 << 20));
        let proxy = Proxy::start(dir.path().join("proxy.sock"), Target::Tcp(target), limits).unwrap();
        let mut c = UnixStream::connect(&proxy.socket).unwrap();
        c.write_all(b"ping").unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"pingping");
    }
}
