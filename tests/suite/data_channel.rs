//! The native transport's data channels (`--data-channel tls|ssh|tcp|auto`) against a real PostgreSQL 15
//! primary and a real sshd: a clone under write load over each becomes a streaming standby with the primary's
//! data; over a real link (a network namespace) the default is TLS, a firewalled agent port makes `auto` fall back
//! to ssh with a notice and `tls` fail in one line; a killed client leaves no agent, no port and no binary. The
//! agent's port itself is probed by strangers: a real agent, started over ssh and driven by hand through
//! docs/PROTOCOL.md, serves only the token holder, and only as many connections as announced.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

// Application names must not start with "pgclone": the clean check looks for those.
const STANDBY: &str = "channel_standby";

/// `data_channel` of a run's --json summary (the run succeeded: see `json_figures`).
fn data_channel_of(out: &CmdOutput) -> String {
    json_figures(out);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    v["data_channel"].as_str().unwrap_or_else(|| panic!("--json lacks data_channel: {v}")).to_string()
}

#[test]
fn every_data_channel_clones_under_write_load_into_a_streaming_standby() {
    let s = Setup::with_pgbench("channel-load", 5);
    for channel in ["tls", "ssh", "tcp"] {
        let load = s.primary.pgbench_load(2);
        s.primary.wait_for_pgbench_writes();
        let replica = s.lab.path().join(format!("replica-{channel}"));
        let mut run = s.pgclone_into(&format!("replica-{channel}"));
        run.parallel = 3;
        run.timeout = Duration::from_secs(300);
        run.args(["--data-channel", channel, "--chunk-size", "1M", "--json"]);
        let out = run.run();
        out.assert_success();
        assert_eq!(data_channel_of(&out), channel, "the data did not travel as asked\n{}", out.report());
        assert!(!out.stderr.contains("moving the data over ssh"), "{channel}: a fallback\n{}", out.report());
        let standby = s.assert_standby(&replica, STANDBY, Some(load));
        drop(standby);
        assert_primary_clean(&s.lab, &s.primary);
        println!("--data-channel {channel}: a streaming standby with the primary's data");
    }
}

/// TCP sockets in the primary's namespace, listening or connected, on ports other than its sshd's and
/// PostgreSQL's: the agent's data port and its connections. (A closed connection's TIME-WAIT belongs to no
/// process and does not count.)
fn strange_sockets(h: &Host) -> Vec<String> {
    let out = run_bounded(std::process::Command::new("ip").args(["netns", "exec", &h.ns.name, "ss", "-Htan"]), T30);
    let ours = [format!(":{}", h.sshd.port), format!(":{}", h.primary.port)];
    out.stdout
        .lines()
        .filter(|l| l.starts_with("LISTEN") || l.starts_with("ESTAB"))
        .filter(|l| !l.split_whitespace().nth(3).is_some_and(|local| ours.iter().any(|p| local.ends_with(p.as_str()))))
        .map(str::to_string)
        .collect()
}

const T30: Duration = Duration::from_secs(30);

#[test]
fn over_a_real_link_tls_is_the_default_and_a_firewalled_port_falls_back_to_ssh() {
    if !root_or_skip("over_a_real_link_tls_is_the_default_and_a_firewalled_port_falls_back_to_ssh", "netns") {
        return;
    }
    let h = Host::new("h-channel", 3, &[]);
    let run_into = |name: &str, flags: &[&str]| {
        let mut run = h.pgclone(&h.lab.path().join(name));
        run.args(flags).arg("--json");
        run
    };

    let out = run_into("default", &[]).run();
    out.assert_success();
    assert_eq!(data_channel_of(&out), "tls", "the default over a reachable link\n{}", out.report());
    h.wait_clean(T30);

    // kill -9 of the client mid-copy: within seconds no agent, no listening port, no binary on the primary.
    let mut run = run_into("killed", &[]);
    let running = run.spawn_slowly("1M");
    wait_for("the data connections to the agent", T30, || match strange_sockets(&h) {
        p if p.is_empty() => Err("none yet".to_string()),
        p => Ok(p),
    });
    std::thread::sleep(Duration::from_secs(1));
    running.signal(Signal::KILL);
    let killed = std::time::Instant::now();
    drop(running.wait());
    wait_for("nothing of the killed run on the primary", T30, || {
        let mut left = h.lab.leftover_processes();
        left.extend(entries_starting_with(&h.lab.remote_tmpdir(), "pgclone-").iter().map(|d| d.display().to_string()));
        left.extend(strange_sockets(&h));
        left.is_empty().then_some(()).ok_or(left.join("; "))
    });
    println!("kill -9: agent, port and pushed binary gone {:.1?} after the kill", killed.elapsed());
    h.wait_clean(Duration::from_secs(90));

    // A firewall on the primary's host that lets through ssh and PostgreSQL only (new connections to any
    // other port are dropped, as most firewalls do, so connecting times out rather than being refused).
    let rules = h.lab.write(
        "firewall.nft",
        &format!(
            "table inet pgclone_test {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
             tcp dport != {{ {}, {} }} tcp flags & (syn | ack) == syn drop\n  }}\n}}\n",
            h.sshd.port, h.primary.port
        ),
    );
    let mut nft = std::process::Command::new("ip");
    nft.args(["netns", "exec", &h.ns.name, "nft", "-f"]).arg(&rules);
    let nft = run_bounded(&mut nft, T30);
    assert!(nft.success(), "nft\n{}", nft.report());

    let out = run_into("fallback", &[]).run();
    out.assert_success();
    assert_eq!(data_channel_of(&out), "ssh", "auto behind a firewall\n{}", out.report());
    let notice = out.stderr.lines().find(|l| l.contains("moving the data over ssh"));
    println!("the notice: {}", notice.unwrap_or_else(|| panic!("no notice of the fallback\n{}", out.report())));
    h.wait_clean(T30);

    let out = run_into("tls-only", &["--data-channel", "tls"]).run();
    let line = assert_one_error_line(&out);
    assert!(line.contains("--data-channel ssh"), "the error names no way out: {line}");
    h.wait_clean(T30);
    assert!(strange_sockets(&h).is_empty(), "a port left open: {:?}", strange_sockets(&h));
}

/// One frame of docs/PROTOCOL.md: kind, payload length (u32 LE), XXH3-64 of the payload (LE), payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 13];
    r.read_exact(&mut header)?;
    let mut payload = vec![0u8; u32::from_le_bytes(header[1..5].try_into().unwrap()) as usize];
    r.read_exact(&mut payload)?;
    Ok((header[0], payload))
}

/// Hello, with the protocol version the agent speaks and our pgclone version; the agent answers with its own.
fn hello() -> Vec<u8> {
    let mut p = 4u32.to_le_bytes().to_vec();
    p.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    frame(b'H', &p)
}

/// Takes any certificate: the test checks by hand that it is the one the agent announced.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 connection to the agent's port that presents `token`; returns the stream once the agent answered
/// Hello, or why not. Checks that the agent shows the certificate it announced over ssh.
fn tls_hello(addr: SocketAddr, cert: &[u8], token: &[u8]) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("pgclone-agent").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect_timeout(&addr, T30).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(T30)).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(token).and_then(|()| tls.write_all(&hello())).map_err(|e| format!("sending: {e}"))?;
    let seen = tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    assert_eq!(seen.as_deref(), Some(cert), "the agent's port shows another certificate than announced");
    match read_frame(&mut tls) {
        Ok((b'H', _)) => Ok(()),
        Ok((kind, _)) => Err(format!("answered with frame {}", kind as char)),
        Err(e) => Err(format!("no answer: {e}")),
    }
}

#[test]
fn the_agents_port_serves_only_the_token_holder_and_only_as_many_as_announced() {
    let lab = Lab::new("channel-strangers");
    let sshd = Sshd::start(&lab);
    let pgdata = lab.mkdir("pgdata");
    let agent = format!("'{}' agent --pgdata '{}'", lab.pgclone_bin().display(), pgdata.display());
    let mut cmd = sshd.ssh_cmd(&sshd.config, &agent);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut ssh = cmd.spawn().unwrap();
    let (mut to, mut from) = (ssh.stdin.take().unwrap(), ssh.stdout.take().unwrap());
    to.write_all(&hello()).unwrap();
    assert_eq!(read_frame(&mut from).unwrap().0, b'H', "the agent over ssh greets");

    let token = [0x5a_u8; 32];
    let mut listen = token.to_vec();
    listen.extend_from_slice(&1u32.to_le_bytes()); // one connection announced
    listen.push(1); // TLS
    to.write_all(&frame(b'T', &listen)).unwrap();
    let (kind, offer) = read_frame(&mut from).unwrap();
    assert_eq!(kind, b'O', "Listen is answered with Listening");
    let n = u32::from_le_bytes(offer[..4].try_into().unwrap()) as usize;
    let addr: SocketAddr = std::str::from_utf8(&offer[4..4 + n]).unwrap().parse().unwrap();
    let cert = &offer[4 + n..];
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "the agent listens on the address ssh reached");
    println!("the agent listens on {addr}, certificate of {} bytes", cert.len());

    // A stranger speaking something else than TLS gets at most a TLS alert (content type 21), then the end.
    let mut stranger = TcpStream::connect(addr).unwrap();
    stranger.set_read_timeout(Some(T30)).unwrap();
    let _ = stranger.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut got = Vec::new();
    let end = stranger.read_to_end(&mut got);
    assert!(got.is_empty() || got[0] == 21, "a stranger got an answer: {got:?}");
    assert!(end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{end:?}");
    // A client with the right certificate but the wrong token.
    let refused = tls_hello(addr, cert, &[0x5b; 32]);
    assert!(refused.is_err(), "a wrong token was served");
    println!("a plain-TCP stranger and a wrong token are refused: {}", refused.unwrap_err());
    // The token holder is served, even after the strangers; a second one is more than was announced.
    tls_hello(addr, cert, &token).expect("the token holder is served");
    let second = tls_hello(addr, cert, &token);
    assert!(second.is_err(), "more connections than announced were served");

    // The control connection goes on; its end ends the agent.
    to.write_all(&hello()).unwrap();
    assert_eq!(read_frame(&mut from).unwrap().0, b'H');
    drop(to);
    let status = ssh.wait().unwrap();
    assert!(status.success(), "the agent's ssh session ended with {status}");
    wait_for("the agent to end", T30, || match lab.leftover_processes() {
        v if v.is_empty() => Ok(()),
        v => Err(v.join("; ")),
    });
    assert!(Path::new(&pgdata).exists());
}
