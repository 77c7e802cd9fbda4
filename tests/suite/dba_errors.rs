//! A DBA's first hour: a rate limit that protects the primary as pg_basebackup's does, ssh host-key failures
//! that say which failure it is and what to do, and refusals that name their fix, each in one line.

use crate::support::*;
use std::fs;
use std::time::{Duration, Instant};

/// The one `pgclone: error:` line of a run refused before anything changed (exit 3).
fn refusal(out: &CmdOutput) -> String {
    let line = assert_one_error_line(out);
    assert_eq!(out.status.code(), Some(3), "a refusal exits 3\n{}", out.report());
    println!("{line}");
    line
}

/// What a `--json` clone reports of its copy: (bytes, wire_bytes, compression, seconds of the copy phase).
fn copy_figures(out: &CmdOutput) -> (f64, Option<f64>, String, f64) {
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{}", out.report()));
    let secs = v["phases_seconds"]["copy"].as_f64().unwrap_or_else(|| panic!("no copy phase in {v}"));
    let bytes = v["bytes"].as_u64().unwrap_or_else(|| panic!("no bytes in {v}")) as f64;
    println!("--json: bytes={bytes} wire_bytes={} compression={} copy {secs:.2} s", v["wire_bytes"], v["compression"]);
    (bytes, v["wire_bytes"].as_u64().map(|w| w as f64), v["compression"].as_str().unwrap_or_default().to_string(), secs)
}

/// Bytes the run's agents on the primary have read so far: `rchar` of /proc/PID/io counts every read(2) and
/// pread(2), the data directory's files above all (their requests from us are a few bytes each).
fn agents_read(lab: &Lab) -> u64 {
    let dir = lab.path().display().to_string();
    let agents = fs::read_dir("/proc").unwrap().flatten().filter_map(|e| {
        let p = e.path();
        let comm = fs::read_to_string(p.join("comm")).ok()?;
        let cmdline = String::from_utf8_lossy(&fs::read(p.join("cmdline")).ok()?).into_owned();
        (comm.trim() == "pgclone-agent" && cmdline.contains(&dir)).then_some(())?;
        let io = fs::read_to_string(p.join("io")).ok()?;
        io.lines().find_map(|l| l.strip_prefix("rchar:"))?.trim().parse::<u64>().ok()
    });
    agents.sum()
}

/// -r is pg_basebackup's: data read from the primary's data directory per second, whatever compression does on
/// the wire (before, it counted compressed bytes: `-r 100M` read at several times that). --limit-net-bw caps
/// the wire instead, so compressible data is read faster than it; with the rsync transport -r holds rsync's
/// stream. Rates are the copy phase's, from --json.
#[test]
fn max_rate_caps_the_data_read_on_the_primary_and_limit_net_bw_the_wire() {
    const MIB: f64 = (1 << 20) as f64;
    let s = Setup::new("maxrate", &[]);
    // About 24 MB of text pages lz4 shrinks many times over, beside the cluster's own 23 MB.
    s.primary.psql("create table filler as select g, repeat('pgclone ', 100) as pad from generate_series(1, 25000) g");

    let mut run = s.pgclone_into("data-capped");
    run.args(["-r", "6M", "--json"]);
    let mut running = run.spawn();
    running.wait_for_log("copying ", Duration::from_secs(60));
    // What the agents read of the primary's files while the copy runs: the budget is taken here, as data
    // arrives, and holds their reads through the connection's backpressure.
    std::thread::sleep(Duration::from_millis(1500));
    let (t0, read0) = (Instant::now(), agents_read(&s.lab));
    std::thread::sleep(Duration::from_secs(3));
    let (read, took) = (agents_read(&s.lab) - read0, t0.elapsed().as_secs_f64());
    assert!(!running.stderr_so_far().contains("backup stopped"), "the copy ended before the agents were sampled");
    let out = running.wait();
    let primary_rate = read as f64 / took / MIB;
    println!("-r 6M: the agents read {primary_rate:.2} MiB/s of the primary's files");
    assert!(primary_rate <= 6.0 * 1.25, "-r 6M: the agents read {primary_rate:.2} MiB/s on the primary");
    let (bytes, wire, compression, secs) = copy_figures(&out);
    assert!(bytes > 40e6, "precondition: at least 40 MB to copy, found {bytes}");
    let rate = bytes / secs / MIB;
    println!("-r 6M: {rate:.2} MiB/s of data");
    // Upper bounds only: a busy machine makes any copy slower, never one faster than its cap.
    assert!(rate <= 6.0 * 1.25, "-r 6M read {rate:.2} MiB/s of data on the primary");
    assert_eq!(compression, "auto");
    let wire = wire.expect("--json reports wire_bytes");
    assert!(wire < bytes, "with --compress auto the wire carried less than the data ({wire} of {bytes})");

    // A re-sync of that copy asks the agents for page hashes (Sums) and then for the pages that differ: -r paces
    // both kinds of request, and the run completes.
    let mut run = s.pgclone_into("data-capped");
    run.args(["-r", "64M"]);
    run.run().assert_success();

    let mut run = s.pgclone_into("wire-capped");
    run.args(["--limit-net-bw", "2M", "--json"]);
    let (bytes, wire, _, secs) = copy_figures(&run.run());
    let wire = wire.expect("--json reports wire_bytes");
    let (data_rate, wire_rate) = (bytes / secs / MIB, wire / secs / MIB);
    println!("--limit-net-bw 2M: {wire_rate:.2} MiB/s on the wire, {data_rate:.2} MiB/s of data");
    assert!(wire_rate <= 2.0 * 1.25, "--limit-net-bw 2M put {wire_rate:.2} MiB/s on the wire");
    assert!(wire * 1.5 < bytes, "compressed, the data ({data_rate:.2} MiB/s) outruns the wire's cap");

    // The rsync transport's daemon sends file data as it reads it, uncompressed: -r holds that stream.
    let mut run = s.pgclone_into("rsync-capped");
    run.args(["--transport", "rsync", "-r", "6M", "--json"]);
    let (bytes, _, compression, secs) = copy_figures(&run.run());
    let rate = bytes / secs / MIB;
    println!("--transport rsync -r 6M: {rate:.2} MiB/s of data");
    assert!(rate <= 6.0 * 1.25, "--transport rsync -r 6M read {rate:.2} MiB/s of data on the primary");
    assert_eq!(compression, "none");
    assert_primary_clean(&s.lab, &s.primary);
}

/// An unknown host key and a changed one are different failures with different next steps: ssh explains
/// which before its last line ("Host key verification failed."), and pgclone keeps that explanation.
#[test]
fn host_key_failures_say_which_and_what_to_do() {
    let s = Setup::new("hostkeys", &[]);
    let (addr, port, user) = (&s.sshd.addr, s.sshd.port, &s.lab.user().name);
    let target = format!("{user}@{addr}:{port}");

    let config = s.sshd.config_without_host_key();
    let known_hosts = s.sshd.dir.join("known_hosts_empty");
    let mut run = s.pgclone();
    run.ssh_mut().config = config.clone();
    assert_eq!(
        refusal(&run.run()),
        format!(
            "pgclone: error: ssh to {target} failed: No ED25519 host key is known for [{addr}]:{port} and you have \
             requested strict checking: accept the primary's host key once, as this user, with `ssh -F {} -p {port} \
             -l {user} {addr}`, or check its fingerprint with the primary's administrator and add it with \
             `ssh-keyscan -p {port} {addr} >> {}`",
            config.display(),
            known_hosts.display()
        )
    );
    s.assert_clean();

    let (config, known_hosts) = s.sshd.config_with_another_host_key();
    let mut run = s.pgclone();
    run.ssh_mut().config = config.clone();
    assert_eq!(
        refusal(&run.run()),
        format!(
            "pgclone: error: ssh to {target} failed: REMOTE HOST IDENTIFICATION HAS CHANGED: the primary's host sent \
             ED25519 key {}, not the one in {kh}:1; this can be an attack (someone between here and the primary) or \
             a reinstalled host: verify the new key with the primary's administrator, then remove the old one with \
             `ssh-keygen -f \"{kh}\" -R \"[{addr}]:{port}\"` and accept the new one with `ssh -F {} -p {port} -l \
             {user} {addr}`",
            s.sshd.host_key_fingerprint(),
            config.display(),
            kh = known_hosts.display(),
        )
    );
    s.assert_clean();
}

/// A wrong password: libpq's FATAL once (under sslmode=prefer libpq asks a TLS server again without TLS and
/// reports both refusals), and where the right password goes.
#[test]
fn a_wrong_password_is_said_once_with_where_the_right_one_goes() {
    let lab = Lab::new("badpass");
    let primary = Postgres::primary_tls(&lab, "primary", false);
    let sshd = Sshd::start(&lab);
    let s = Setup { replica: lab.path().join("replica"), primary, sshd, lab };
    let mut run = s.pgclone();
    run.env("PGPASSWORD", Some("not the password"));
    assert_eq!(
        refusal(&run.run()),
        format!(
            "pgclone: error: cannot connect to the primary: connection to server at \"127.0.0.1\", port {} failed: \
             FATAL:  password authentication failed for user \"{SUPERUSER}\"; give the right password in PGPASSWORD \
             or ~/.pgpass (a line host:port:*:user:password, mode 0600), or type it with -W",
            s.primary.port
        )
    );
    s.assert_clean();
}

/// A replica directory that holds something: the refusal names --drop-existing; when all it holds is
/// lost+found, it is a fresh mount's top directory, and the way out is a subdirectory.
#[test]
fn a_replica_directory_that_is_not_empty_names_the_way_out() {
    let s = Setup::new("inuse", &[]);
    let replica = s.lab.mkdir("replica");
    let notes = s.lab.write(replica.join("notes.txt"), "mine\n");
    assert_eq!(
        refusal(&s.pgclone().run()),
        format!(
            "pgclone: error: replica directory {} is not empty: pgclone clones only into an absent or empty \
             directory; empty it, give another --replica-pgdata, or add --drop-existing to delete everything in it",
            replica.display()
        )
    );
    assert_eq!(fs::read_to_string(&notes).unwrap(), "mine\n");

    fs::remove_file(&notes).unwrap();
    fs::create_dir(replica.join("lost+found")).unwrap();
    assert_eq!(
        refusal(&s.pgclone().run()),
        format!(
            "pgclone: error: replica directory {} is not empty: it holds only lost+found, so it is the top directory \
             of a filesystem (a fresh mount); give --replica-pgdata a subdirectory of it instead, such as {}/data",
            replica.display(),
            replica.display()
        )
    );
    assert!(replica.join("lost+found").is_dir());
    s.assert_clean();
}

/// The agent's binary travels while ssh logs in, before the primary's shell has checked --primary-pgdata: a data
/// directory that is not there, or not a data directory, is still one clear line (exit 3) naming it, and the
/// binary sent into the ended session leaves nothing on the primary (no agent directory, no process).
#[test]
fn a_wrong_primary_pgdata_is_one_line_while_the_agent_was_already_on_its_way() {
    let s = Setup::new("wrongpgdata", &[]);
    let missing = s.lab.path().join("no-such-pgdata");
    let mut run = s.pgclone();
    run.primary_pgdata = missing.clone();
    let line = refusal(&run.run());
    assert!(line.contains(&format!("--primary-pgdata {} does not exist", missing.display())), "{line}");
    let not_data = s.lab.mkdir("not-a-data-directory");
    run.primary_pgdata = not_data.clone();
    let line = refusal(&run.run());
    assert!(line.contains(&format!("--primary-pgdata {} on", not_data.display())), "{line}");
    assert!(line.contains("is not a data directory"), "{line}");
    s.assert_clean();
}
