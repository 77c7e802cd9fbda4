//! The native transport's data channel over direct TCP (docs/PROTOCOL.md, "Data channel"): ssh authenticates
//! the user and starts the agent; the bulk data then goes over TCP connections of our own, which cost neither
//! an ssh process per stream nor ssh's copies through pipes.
//!
//! Keys travel over the authenticated ssh session, so nothing needs configuring and no CA is involved: the
//! client sends the agent a one-time token there, the agent answers with the address it listens on and a
//! certificate made for this run. A data connection is TLS 1.3 in which the client accepts only that certificate
//! (and checks the handshake's signature with its key), then proves itself by sending the token inside the
//! encrypted stream, where only the real agent can read it. The agent serves only connections that present the
//! token, at most as many as the client announced, and closes its port once they are there.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig, ServerConnection};

pub const TOKEN_LEN: usize = 32;
/// The name in the agent's one-time certificate; nobody resolves it, the certificate is pinned.
const SERVER_NAME: &str = "pgclone-agent";
/// Handshake and token, from the TCP connect on: on a link that works this takes milliseconds.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long an agent keeps its port open for the connections the client announced.
const ACCEPT_FOR: Duration = Duration::from_secs(60);
/// Refused connections and failed accepts the agent reports (on its stderr, which the client reads only when
/// the agent fails).
const REFUSALS_TOLD: u32 = 5;
/// The agent's port against strangers: the whole handshake and token within HANDSHAKE from the accept (a
/// deadline, which a peer that trickles a byte now and then cannot push back as it could a timeout per read),
/// and at most 16 connections in the handshake at once, each a thread and a few descriptors; one more ends the
/// oldest, so a stranger who opens many and holds them gives way to the client's, which take milliseconds.
const GATE: Gate = Gate { deadline: HANDSHAKE, waiting: 16 };
/// After an accept that failed for want of a resource (EMFILE, ENOBUFS) or for a peer gone before it was
/// accepted (ECONNABORTED): wait this long, and keep listening.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Tries of one data connection on the client's side before it gives up on it: a connection a stranger's crowd
/// pushed out of the agent's handshake, or one cut on the way, gets another chance.
const TRIES: u32 = 3;

pub type Halves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

/// What the agent tells the client (over ssh) about its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub addr: SocketAddr,
    /// The agent's one-time certificate (DER); empty: clear text (`--data-channel tcp`).
    pub cert: Vec<u8>,
}

/// A fresh random token for one run's data connections.
pub fn token() -> io::Result<[u8; TOKEN_LEN]> {
    let mut t = [0u8; TOKEN_LEN];
    let mut filled = 0;
    while filled < TOKEN_LEN {
        filled += rustix::rand::getrandom(&mut t[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(t)
}

/// TLS 1.3 only, AES-128-GCM first where the CPU has AES instructions (several GB/s per core), ChaCha20-Poly1305
/// first where it has not (faster in software).
fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    let cipher_suites = if aes_in_hardware() {
        vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256]
    };
    Arc::new(CryptoProvider { cipher_suites, ..ring::default_provider() })
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes");
    #[allow(unreachable_code)]
    false
}

fn tls_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The agent's side: listens on `ip` (the address the client's ssh connection reached), and hands each
/// connection that presents `token` to `serve` on a thread of its own, until `streams` have come or
/// ACCEPT_FOR has passed. Returns at once with what the client needs to connect.
pub fn listen(
    ip: IpAddr,
    tls: bool,
    token: [u8; TOKEN_LEN],
    streams: u32,
    serve: impl Fn(Halves) + Send + Sync + 'static,
) -> io::Result<Offer> {
    listen_gated(ip, tls, token, streams, GATE, serve)
}

/// What a listener allows connections that have not proven themselves yet (see GATE).
#[derive(Clone, Copy)]
struct Gate {
    /// From the accept to the token checked.
    deadline: Duration,
    /// Connections between the accept and the token checked, at most.
    waiting: usize,
}

/// The connections in the handshake, oldest first: the accept loop ends those past the deadline, and the
/// oldest when one more comes than the gate allows, by shutting their socket down, which fails whatever
/// read or write their admitting thread is blocked in.
#[derive(Default)]
struct Waiting(Mutex<Vec<(u64, Instant, TcpStream)>>);

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Instant, TcpStream)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters connection `id`; ends the oldest one if there are already `gate.waiting`.
    fn enter(&self, id: u64, sock: TcpStream, gate: Gate) {
        let mut waiting = self.lock();
        if waiting.len() >= gate.waiting {
            let (_, _, oldest) = waiting.remove(0);
            let _ = oldest.shutdown(Shutdown::Both);
        }
        waiting.push((id, Instant::now(), sock));
    }

    /// Connection `id` is done with its handshake: whether it was still waiting (not ended meanwhile).
    fn leave(&self, id: u64) -> bool {
        let mut waiting = self.lock();
        let before = waiting.len();
        waiting.retain(|(i, _, _)| *i != id);
        waiting.len() < before
    }

    /// Ends the connections past the deadline; whether any are left waiting.
    fn reap(&self, gate: Gate) -> bool {
        let mut waiting = self.lock();
        waiting.retain(|(_, since, sock)| {
            let late = since.elapsed() >= gate.deadline;
            if late {
                let _ = sock.shutdown(Shutdown::Both);
            }
            !late
        });
        !waiting.is_empty()
    }
}

fn listen_gated(
    ip: IpAddr,
    tls: bool,
    token: [u8; TOKEN_LEN],
    streams: u32,
    gate: Gate,
    serve: impl Fn(Halves) + Send + Sync + 'static,
) -> io::Result<Offer> {
    let listener = TcpListener::bind((ip, 0))?;
    let addr = listener.local_addr()?;
    let (config, cert) = if tls {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).map_err(tls_error)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let cert = made.cert.der().to_vec();
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.clone())], key)
            .map_err(tls_error)?;
        // One session per connection, never resumed: no tickets to issue.
        config.send_tls13_tickets = 0;
        (Some(Arc::new(config)), cert)
    } else {
        (None, Vec::new())
    };
    listener.set_nonblocking(true)?;
    let (serve, accepted, refused) = (Arc::new(serve), Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let waiting = Arc::new(Waiting::default());
    std::thread::spawn(move || {
        let until = Instant::now() + ACCEPT_FOR;
        let mut id = 0;
        while accepted.load(Ordering::SeqCst) < streams && Instant::now() < until {
            waiting.reap(gate);
            let (sock, peer) = match listener.accept().and_then(|(s, peer)| Ok((s.try_clone()?, s, peer))) {
                Ok((watched, sock, peer)) => {
                    id += 1;
                    waiting.enter(id, watched, gate);
                    (sock, peer)
                }
                // Woken by the next connection at once (a sleep here held every wave of connections up to its
                // length); at least every 20 ms, to end handshakes past their deadline.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
                    let _ =
                        rustix::event::poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 20_000_000 }));
                    continue;
                }
                // The listener itself is fine: a failed accept is this one connection's, or a shortage that passes.
                Err(e) => {
                    if refused.fetch_add(1, Ordering::SeqCst) < REFUSALS_TOLD {
                        eprintln!("pgclone agent: accepting a data connection failed: {e}; listening on");
                    }
                    std::thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            let (config, serve, accepted, refused, waiting) =
                (config.clone(), serve.clone(), accepted.clone(), refused.clone(), waiting.clone());
            std::thread::spawn(move || {
                let admitted = admit(sock, config, &token);
                let admitted = match waiting.leave(id) {
                    true => admitted,
                    false => {
                        Err(io::Error::new(io::ErrorKind::TimedOut, "no token within the deadline, or crowded out"))
                    }
                };
                let admitted = admitted.and_then(|halves| {
                    // Counted only once proven: a stranger's connection never takes a worker's place.
                    match accepted.fetch_add(1, Ordering::SeqCst) < streams {
                        true => Ok(halves),
                        false => Err(io::Error::other("more connections than announced")),
                    }
                });
                match admitted {
                    Ok(halves) => serve(halves),
                    Err(e) if refused.fetch_add(1, Ordering::SeqCst) < REFUSALS_TOLD => {
                        eprintln!("pgclone agent: refused a data connection from {peer}: {e}")
                    }
                    Err(_) => {}
                }
            });
        }
        // The listener closes here: the port is gone once every announced connection came. Handshakes under way
        // keep their deadline.
        drop(listener);
        while waiting.reap(gate) {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Ok(Offer { addr, cert })
}

/// Handshake (if TLS) and token check of one accepted connection; the accept loop ends it at the gate's deadline.
fn admit(sock: TcpStream, config: Option<Arc<ServerConfig>>, token: &[u8; TOKEN_LEN]) -> io::Result<Halves> {
    sock.set_nonblocking(false)?;
    // The agent writes through a buffer of its own: what it sends goes out at once, never held back for an
    // acknowledgement of the last segment (Nagle's algorithm), which the client may delay.
    sock.set_nodelay(true)?;
    keep_alive(&sock)?;
    let (mut r, w): Halves = match config {
        Some(config) => {
            let conn = ServerConnection::new(config).map_err(tls_error)?;
            split(Connection::Server(conn), sock.try_clone()?)?
        }
        None => (Box::new(sock.try_clone()?), Box::new(sock.try_clone()?)),
    };
    let mut presented = [0u8; TOKEN_LEN];
    r.read_exact(&mut presented)?;
    // Constant time: how much of a guess matched must not show in how long the refusal takes.
    if presented.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "wrong token"));
    }
    Ok((r, w))
}

/// The client's side: one data connection to the agent's `offer`, proven with `token`; fails within
/// `connect_timeout` when the port cannot be reached (a firewall that drops), within HANDSHAKE otherwise.
pub fn connect(offer: &Offer, token: &[u8; TOKEN_LEN], connect_timeout: Duration) -> io::Result<Halves> {
    let sock = TcpStream::connect_timeout(&offer.addr, connect_timeout)?;
    sock.set_nodelay(true)?;
    keep_alive(&sock)?;
    sock.set_read_timeout(Some(HANDSHAKE))?;
    sock.set_write_timeout(Some(HANDSHAKE))?;
    let (r, mut w): Halves = if offer.cert.is_empty() {
        (Box::new(sock.try_clone()?), Box::new(sock.try_clone()?))
    } else {
        let pinned = Pinned { cert: offer.cert.clone(), provider: provider() };
        let config = ClientConfig::builder_with_provider(pinned.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned))
            .with_no_client_auth();
        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        let conn = ClientConnection::new(Arc::new(config), name).map_err(tls_error)?;
        split(Connection::Client(conn), sock.try_clone()?)?
    };
    w.write_all(token)?;
    w.flush()?;
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;
    Ok((r, w))
}

/// `connect`, tried up to TRIES times while the port is there but the connection fails on the way (cut, or
/// crowded out of the agent's handshake by strangers); a port that cannot be reached or refuses at once is not
/// tried again: that does not pass in a second.
pub fn connect_tried(offer: &Offer, token: &[u8; TOKEN_LEN], connect_timeout: Duration) -> io::Result<Halves> {
    let mut tried = 1;
    loop {
        match connect(offer, token, connect_timeout) {
            Err(e)
                if tried < TRIES && !matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::ConnectionRefused) =>
            {
                tracing::debug!("data connection to {} failed ({e}); trying again", offer.addr);
                std::thread::sleep(Duration::from_millis(100 << tried));
                tried += 1;
            }
            done => return done,
        }
    }
}

/// A peer that vanishes without a word (a cut link, a powered-off host) is noticed by TCP itself: probes after
/// 10 s of silence, and a send not acknowledged within 30 s fails. The agent also ends on its own after a
/// minute without its client (see `agent::CLIENT_SILENCE`).
fn keep_alive(sock: &TcpStream) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(sock, true)?;
    sockopt::set_tcp_keepidle(sock, Duration::from_secs(10))?;
    sockopt::set_tcp_keepintvl(sock, Duration::from_secs(5))?;
    sockopt::set_tcp_keepcnt(sock, 4)?;
    sockopt::set_tcp_user_timeout(sock, 30_000)?;
    Ok(())
}

/// Accepts exactly the certificate the agent sent over ssh, and checks that the handshake was signed with its
/// key (a copy of the certificate alone proves nothing).
#[derive(Debug)]
struct Pinned {
    cert: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match end_entity.as_ref() == self.cert.as_slice() && intermediates.is_empty() {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Completes the handshake, then splits the connection into a reading and a writing half for two threads (the
/// protocol reads requests while it writes answers). They share the TLS state under a lock held only to
/// encrypt or decrypt, never while waiting on the socket.
fn split(mut conn: Connection, mut sock: TcpStream) -> io::Result<Halves> {
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    // We always hand what it encrypted to the socket at once: no need for rustls to bound it.
    conn.set_buffer_limit(None);
    let tls = Arc::new(Mutex::new(conn));
    let reader = TlsReader { tls: tls.clone(), sock: sock.try_clone()?, raw: vec![0; 1 << 18], start: 0, end: 0 };
    Ok((Box::new(reader), Box::new(TlsWriter { tls, sock, out: Vec::new() })))
}

fn lock(tls: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    tls.lock().unwrap_or_else(|e| e.into_inner())
}

struct TlsReader {
    tls: Arc<Mutex<Connection>>,
    sock: TcpStream,
    /// Received from the socket, `start..end` not yet given to rustls.
    raw: Vec<u8>,
    start: usize,
    end: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut c = lock(&self.tls);
                match c.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // Ok(0): the peer closed with close_notify; UnexpectedEof: it closed without.
                    done => return done,
                }
                if self.start < self.end {
                    self.start += c.read_tls(&mut &self.raw[self.start..self.end])?;
                    c.process_new_packets().map_err(tls_error)?;
                    continue;
                }
            }
            let n = self.sock.read(&mut self.raw)?;
            (self.start, self.end) = (0, n);
            if n == 0 {
                // Tells rustls the stream ended; its reader then says how.
                lock(&self.tls).read_tls(&mut io::empty())?;
            }
        }
    }
}

struct TlsWriter {
    tls: Arc<Mutex<Connection>>,
    sock: TcpStream,
    /// Encrypted records on their way to the socket.
    out: Vec<u8>,
}

impl TlsWriter {
    /// Takes what rustls has encrypted (ours, and any answer of its own such as a key update) under the lock,
    /// and sends it without.
    fn send(&mut self, plain: &[u8]) -> io::Result<usize> {
        self.out.clear();
        let n = {
            let mut c = lock(&self.tls);
            let n = c.writer().write(plain)?;
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
            n
        };
        self.sock.write_all(&self.out)?;
        Ok(n)
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send(&[]).map(drop)
    }
}

impl Drop for TlsWriter {
    /// A close_notify: the peer can tell our end of the stream from a cut.
    fn drop(&mut self) {
        lock(&self.tls).send_close_notify();
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent-side listener on loopback whose connections echo what they read.
    fn echo_agent(tls: bool, token: [u8; TOKEN_LEN], streams: u32) -> Offer {
        gated_echo_agent(tls, token, streams, GATE)
    }

    fn gated_echo_agent(tls: bool, token: [u8; TOKEN_LEN], streams: u32, gate: Gate) -> Offer {
        let ip = IpAddr::from([127, 0, 0, 1]);
        listen_gated(ip, tls, token, streams, gate, |(mut r, mut w)| {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                if w.write_all(&buf[..n]).and_then(|()| w.flush()).is_err() {
                    return;
                }
            }
        })
        .unwrap()
    }

    fn echoes(offer: &Offer, token: &[u8; TOKEN_LEN]) -> io::Result<Vec<u8>> {
        let (mut r, mut w) = connect(offer, token, Duration::from_secs(2))?;
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || w.write_all(&sent).and_then(|()| w.flush()).map(|()| w))
        };
        let mut back = vec![0u8; sent.len()];
        r.read_exact(&mut back)?;
        drop(writer.join().unwrap()?);
        assert_eq!(back, sent);
        Ok(back)
    }

    #[test]
    fn only_the_token_holder_gets_served_and_only_as_many_as_announced() {
        for tls in [true, false] {
            let t = token().unwrap();
            let offer = echo_agent(tls, t, 2);
            assert_eq!(offer.cert.is_empty(), !tls);
            let mut wrong = t;
            wrong[0] ^= 1;
            assert!(echoes(&offer, &wrong).is_err(), "a wrong token is refused (tls {tls})");
            echoes(&offer, &t).unwrap();
            echoes(&offer, &t).unwrap();
            let third = echoes(&offer, &t);
            assert!(third.is_err(), "more connections than announced (tls {tls})");
        }
    }

    #[test]
    fn the_client_accepts_only_the_pinned_certificate() {
        let t = token().unwrap();
        let offer = echo_agent(true, t, 2);
        let other = echo_agent(true, t, 1);
        assert_ne!(offer.cert, other.cert, "each listener makes its own certificate");
        // Somebody else's server at the announced address: its certificate is not the one pinned.
        let impostor = Offer { addr: other.addr, cert: offer.cert.clone() };
        let e = echoes(&impostor, &t).unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
        echoes(&offer, &t).unwrap();
    }

    /// Whether the agent ended `sock` (end of file or reset) within `within`.
    fn cut_within(sock: &mut TcpStream, within: Duration) -> bool {
        sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }

    /// A stranger that keeps the TLS handshake going with a byte every 200 ms (the start of a record it never
    /// finishes) is cut at the deadline, which no trickle pushes back; before, each byte restarted a 10 s read
    /// timeout, and the connection (a thread, descriptors) was held for as long as the stranger liked.
    #[test]
    fn a_trickling_stranger_is_cut_at_the_deadline() {
        let t = token().unwrap();
        let offer = gated_echo_agent(true, t, 1, Gate { deadline: Duration::from_secs(1), waiting: 16 });
        let mut stranger = TcpStream::connect(offer.addr).unwrap();
        let mut trickle = stranger.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in [0x16u8, 3, 1, 0x40, 0].into_iter().chain(std::iter::repeat(0)) {
                if trickle.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let since = Instant::now();
        assert!(cut_within(&mut stranger, Duration::from_secs(4)), "the stranger was not cut");
        assert!(since.elapsed() < Duration::from_secs(3), "cut after {:?}", since.elapsed());
        echoes(&offer, &t).unwrap();
    }

    /// Strangers that open more connections than the gate allows and hold them silent: the oldest are ended, at
    /// most `waiting` stay in the handshake, and the client's connections still get through at once. Before,
    /// every one was held (a thread each) until its read timed out.
    #[test]
    fn strangers_holding_the_handshake_are_capped_and_the_client_gets_through() {
        let t = token().unwrap();
        let gate = Gate { deadline: Duration::from_secs(30), waiting: 4 };
        let offer = gated_echo_agent(true, t, 2, gate);
        let mut strangers: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(offer.addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        let since = Instant::now();
        echoes(&offer, &t).unwrap();
        echoes(&offer, &t).unwrap();
        assert!(since.elapsed() < Duration::from_secs(3), "the client waited {:?}", since.elapsed());
        let held = strangers.iter_mut().map(|s| cut_within(s, Duration::from_millis(300))).filter(|cut| !cut).count();
        assert!(held <= gate.waiting, "{held} strangers still in the handshake");
    }

    /// A data connection cut on the way (here by a relay that drops the first two connections it gets) is tried
    /// again; a single try fails. Before, the clone failed with it.
    #[test]
    fn a_data_connection_cut_on_the_way_is_tried_again() {
        let t = token().unwrap();
        let offer = echo_agent(true, t, 2);
        let relay = TcpListener::bind("127.0.0.1:0").unwrap();
        let via = Offer { addr: relay.local_addr().unwrap(), cert: offer.cert.clone() };
        let agent = offer.addr;
        std::thread::spawn(move || {
            for (n, conn) in relay.incoming().enumerate() {
                let Ok(client) = conn else { return };
                if n < 2 {
                    continue; // dropped: the client sees its connection end in the handshake
                }
                let server = TcpStream::connect(agent).unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                std::thread::spawn(move || io::copy(&mut c2, &mut s2));
                std::thread::spawn(move || io::copy(&mut s, &mut c));
            }
        });
        assert!(connect(&via, &t, Duration::from_secs(2)).is_err(), "the relay's first connection is dropped");
        let (mut r, mut w) = connect_tried(&via, &t, Duration::from_secs(2)).unwrap();
        w.write_all(b"ping").and_then(|()| w.flush()).unwrap();
        let mut back = [0u8; 4];
        r.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
    }
}
