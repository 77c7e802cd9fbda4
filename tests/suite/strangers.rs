//! What pgclone takes from others and does not trust blindly ("Prove before trusting"): a host from
//! Patroni's connection string (the leader's entry in the DCS) or `-d`, PostgreSQL connections that fell back
//! to clear text, a run directory left by a killed run, a standby that cannot log in to the primary.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// An `ssh` first on PATH that leaves `ran` behind, then runs the real one: whether pgclone ran ssh at all.
/// Returns the PATH to give pgclone, and `ran`.
fn ssh_witness(lab: &Lab) -> (String, PathBuf) {
    let bin = lab.mkdir("witness-bin");
    let ran = lab.path().join("ssh-ran");
    let script =
        lab.write("witness-bin/ssh", &format!("#!/bin/sh\ntouch '{}'\nexec /usr/bin/ssh \"$@\"\n", ran.display()));
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    (format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()), ran)
}

/// A host that is not a host name or IP address, from -d or from Patroni's --connstring, is refused with one
/// line (exit 3, `refused`) before any ssh runs, so ssh never expands it into a shell command (ProxyCommand's
/// %h). Before, it went to ssh as it was. The same run with a plain host does run ssh: the witness works.
#[test]
fn a_host_that_is_no_name_never_reaches_ssh() {
    let s = Setup::new("st-host", &[]);
    let (path, ran) = ssh_witness(&s.lab);
    let owned = s.lab.path().join("owned");

    let mut plain = s.pgclone();
    plain.env("PATH", Some(&path)).arg("--check");
    plain.run().assert_success();
    assert!(ran.exists(), "the witness did not see the ssh of a valid run");
    fs::remove_file(&ran).unwrap();

    let port = s.primary.port.to_string();
    let hostile = format!("host='$(touch {})' port={port} user={SUPERUSER}", owned.display());
    let mut run = s.pgclone();
    run.pghost = String::new();
    // Through the tunnel: ssh is the first thing such a run starts, before libpq looks the host up.
    run.env("PATH", Some(&path)).args(["-d", &hostile, "--bypass-rep-traffic", "--json"]);
    let out = run.run();
    out.assert_refused("(from -d) is not handed to ssh: it contains '$'");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("--json");
    assert_eq!(v["class"], "refused", "{v}");

    // Patroni hands the leader's conn_url over as --connstring: pgclone patroni makes it -d.
    let ssh = plain.ssh.as_ref().unwrap();
    let mut patroni = s.lab.cmd(s.lab.pgclone_bin());
    patroni.env("PATH", &path).env("TMPDIR", s.lab.tmpdir()).env(TAG_VAR, s.lab.path());
    patroni.args(["patroni", "--scope=st", "--role=replica", "--insecure-ssh=false"]);
    patroni.arg(format!("--datadir={}", s.replica.display()));
    patroni.arg(format!("--primary_pgdata={}", s.primary.data.display()));
    patroni.arg(format!("--connstring=host=-oProxyCommand=touch${{IFS}}{} port={port}", owned.display()));
    patroni.arg(format!("--ssh_user={}", ssh.user)).arg(format!("--ssh_key={}", ssh.key.display()));
    patroni.arg(format!("--ssh_port={}", ssh.port)).arg(format!("--ssh_config={}", ssh.config.display()));
    let out = run_bounded(&mut patroni, std::time::Duration::from_secs(60));
    out.assert_refused("(from -d) is not handed to ssh: it contains '='");

    assert!(!ran.exists(), "pgclone ran ssh with a host that is no host name");
    assert!(!owned.exists(), "the host ran a command");
    assert!(!s.replica.exists(), "a refused run created the replica directory");
    s.assert_clean();
}

/// --start with a standby that has no password (no --conninfo-password, no ~/.pgpass; pgclone's PGPASSWORD is
/// not the standby's): the error quotes the walreceiver's failure from the standby's log and gives the way out,
/// whether the server logs into pg_ctl's startup.log or, with logging_collector on (copied from the primary),
/// into files of its own. Before, it said only that the standby did not show up streaming.
#[test]
fn a_standby_that_cannot_log_in_says_so() {
    let s = Setup::new("st-login", &[]);
    for (dir, collector) in [("replica-stderr", false), ("replica-collector", true)] {
        if collector {
            s.primary.psql("alter system set logging_collector = on");
            s.primary.restart();
        }
        let replica = s.lab.path().join(dir);
        let port = free_port();
        let _standby = Server::adopt(&s.lab, &replica, dir, port);
        let mut run = s.pgclone_into(dir);
        let home = s.lab.mkdir(&format!("home-{dir}"));
        run.env("HOME", Some(&home.to_string_lossy()));
        run.args(["--start", "--wait-streaming", "8", "--replica-port", &port.to_string()]);
        let out = run.run();
        assert_eq!(out.status.code(), Some(4), "the standby did not stream: exit 4\n{}", out.report());
        let line = assert_one_error_line(&out);
        println!("{dir}: {line}");
        let pgpass = format!("127.0.0.1:{}:*:{SUPERUSER}:PASSWORD", s.primary.port);
        assert!(
            line.contains("its log says: could not connect to the primary server")
                && line.contains("fe_sendauth: no password supplied")
                && line.contains("--conninfo-password")
                && line.contains(&pgpass),
            "{line}"
        );
        let startup = fs::read_to_string(replica.join("startup.log")).unwrap_or_default();
        assert_eq!(startup.contains("no password supplied"), !collector, "where the server logged:\n{startup}");
    }
}

/// The warning about clear-text PostgreSQL connections and `postgres_clear_text` in --json: both connections
/// named against a primary with ssl = off (libpq's sslmode=prefer falls back without a word), none through the
/// --bypass-rep-traffic tunnel, over a Unix socket, or to a primary with TLS. Before, nothing said so.
#[test]
fn clear_text_postgres_connections_are_named() {
    let s = Setup::new("st-clear", &[]);
    let tls = Postgres::primary_tls(&s.lab, "tls-primary", false);
    // The harness's pg_hba.conf admits only normal sessions over the socket.
    s.lab.append(&s.primary.data.join("pg_hba.conf"), "local replication all scram-sha-256\n");
    s.primary.psql("select pg_reload_conf()");
    let clear = ["sql_session", "wal_stream"];
    let tls_run = Pgclone::new(&tls, &s.sshd, &s.lab.path().join("from-tls"));
    let socket_run = Pgclone::without_ssh(
        &s.lab,
        &s.lab.path().to_string_lossy(),
        s.primary.port,
        &s.primary.data,
        &s.lab.path().join("over-socket"),
    );
    let mut tunnel_run = s.pgclone_into("through-tunnel");
    tunnel_run.arg("--bypass-rep-traffic");
    let runs: [(&str, Pgclone, &[&str]); 4] = [
        ("ssl = off", s.pgclone(), &clear),
        ("--bypass-rep-traffic", tunnel_run, &[]),
        ("Unix socket", socket_run, &[]),
        ("ssl = on", tls_run, &[]),
    ];
    for (what, mut run, expected) in runs {
        run.arg("--json");
        let out = run.run();
        out.assert_success();
        let warnings: Vec<&str> =
            out.stderr.lines().filter(|l| l.contains("PostgreSQL connections in clear text")).collect();
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("--json");
        println!("{what}: postgres_clear_text {}, warnings {warnings:?}", v["postgres_clear_text"]);
        assert_eq!(v["postgres_clear_text"], serde_json::json!(expected), "{what}: {v}");
        if expected.is_empty() {
            assert!(warnings.is_empty(), "{what}: {warnings:?}");
        } else {
            assert_eq!(warnings.len(), 1, "{what}: one warning line\n{}", out.report());
            for needle in
                ["the SQL session, the WAL stream (replication connection)", "sslmode=require", "--bypass-rep-traffic"]
            {
                assert!(warnings[0].contains(needle), "{what}: {needle:?} not in {:?}", warnings[0]);
            }
        }
    }
}
