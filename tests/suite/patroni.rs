//! pgclone as a Patroni replica method, under a live Patroni (Debian's 3.0.x) with a live etcd (3.4): one etcd
//! and two members on loopback with their own ports, and an sshd for pgclone. Member 2 is built by pgclone
//! (`create_replica_methods: [pgclone]`, `command: pgclone patroni`, its keys as pgclone's flags) and streams;
//! `patronictl reinit` of member 2 (`keep_data: true`) re-syncs its directory with pgclone, moving only what
//! differs. A first method with a misspelled key fails, so that Patroni goes on to the next. After a failover
//! that leaves the old leader with WAL the new one never got, Patroni (no pg_rewind,
//! `remove_data_directory_on_diverged_timelines`) hands the old leader's directory to pgclone, which re-syncs it.
//! Patroni's replication role gets the backup functions in the `post_bootstrap` script docs/patroni.md gives.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SCOPE: &str = "pgc_test";
const REPLICATION_PASSWORD: &str = "rep-secret";
const T: Duration = Duration::from_secs(180);

/// One Patroni member; stopped (SIGTERM, which stops its PostgreSQL) when dropped, its server stopped
/// immediately after that should it still run.
struct Member {
    name: String,
    conf: PathBuf,
    data: PathBuf,
    port: u16,
    rest: u16,
    process: Bg,
    server: Server,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.process.pid() as i32) {
            let _ = rustix::process::kill_process(p, Signal::TERM);
        }
        for _ in 0..200 {
            if !self.data.join("postmaster.pid").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Member {
    fn log(&self) -> String {
        fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// One statement on this member's PostgreSQL as the superuser.
    fn psql(&self, lab: &Lab, sql: &str) -> String {
        let mut cmd = lab.cmd(Path::new(PG15_BIN).join("psql"));
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
        cmd.args(["-U", SUPERUSER, "-d", "postgres", "-c", sql]);
        lab.run(&mut cmd).trim().to_string()
    }
}

/// The post_bootstrap script of docs/patroni.md: Patroni creates its replication role only after it runs.
const POST_BOOTSTRAP: &str = r#"#!/bin/sh
exec psql -X -v ON_ERROR_STOP=1 "$1" -c "
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') THEN
    CREATE ROLE replicator LOGIN REPLICATION;
  END IF;
END \$\$;
GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO replicator;"
"#;

fn member(lab: &Lab, sshd: &Sshd, etcd: u16, n: u32, primary_data: &Path) -> Member {
    let name = format!("m{n}");
    let (port, rest) = (free_port(), free_port());
    let conf = write_conf(lab, sshd, etcd, &name, (port, rest), primary_data);
    let data = lab.path().join(&name);
    let server = Server::adopt(lab, &data, &name, port);
    let process = start_patroni(lab, &name, &conf);
    Member { name, conf, data, port, rest, process, server }
}

fn start_patroni(lab: &Lab, name: &str, conf: &Path) -> Bg {
    let mut cmd = lab.cmd("patroni");
    cmd.arg(conf);
    lab.spawn(name, cmd)
}

/// Writes member `name`'s Patroni configuration (`<lab>/<name>.yml`, its data in `<lab>/<name>`) and returns its
/// path; `primary_data` is the leader's data directory, for pgclone's `primary-pgdata` (all members live on one
/// host here, each in its own directory). Every member may rejoin through pgclone: no pg_rewind,
/// `remove_data_directory_on_diverged_timelines`, `keep_data` in every method before pgclone's.
fn write_conf(lab: &Lab, sshd: &Sshd, etcd: u16, name: &str, (port, rest): (u16, u16), primary_data: &Path) -> PathBuf {
    let data = lab.path().join(name);
    lab.write(
        format!("{name}.yml"),
        &format!(
            "scope: {SCOPE}\nname: {name}\n\
             restapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\n\
             etcd3:\n  hosts: 127.0.0.1:{etcd}\n\
             bootstrap:\n  dcs:\n    ttl: 30\n    loop_wait: 2\n    retry_timeout: 10\n\
             \x20 initdb:\n    - encoding: UTF8\n    - locale: C\n    - data-checksums\n\
             \x20 pg_hba:\n    - local all all trust\n    - host all all 127.0.0.1/32 scram-sha-256\n\
             \x20   - host replication replicator 127.0.0.1/32 scram-sha-256\n\
             \x20 post_bootstrap: {post}\n\
             postgresql:\n  listen: 127.0.0.1:{port}\n  connect_address: 127.0.0.1:{port}\n\
             \x20 data_dir: {data}\n  bin_dir: {PG15_BIN}\n  pgpass: {pgpass}\n\
             \x20 use_pg_rewind: false\n  remove_data_directory_on_diverged_timelines: true\n\
             \x20 authentication:\n    replication:\n      username: replicator\n      password: {REPLICATION_PASSWORD}\n\
             \x20   superuser:\n      username: {SUPERUSER}\n      password: {PASSWORD}\n\
             \x20 parameters:\n    unix_socket_directories: {dir}\n\
             \x20 create_replica_methods:\n    - pgclone_typo\n    - pgclone\n\
             \x20 pgclone_typo:\n    command: {pgclone} patroni\n    keep_data: true\n    paralel: 2\n\
             \x20 pgclone:\n    command: {pgclone} patroni\n    keep_data: true\n\
             \x20   ssh-user: {user}\n    ssh-port: {ssh_port}\n    ssh-config: {ssh_config}\n\
             \x20   primary-pgdata: {primary}\n    parallel: 2\n    check: false\n",
            post = lab.path().join("post_bootstrap.sh").display(),
            data = data.display(),
            pgpass = lab.path().join(format!("{name}.pgpass")).display(),
            dir = lab.path().display(),
            pgclone = lab.pgclone_bin().display(),
            user = lab.user().name,
            ssh_port = sshd.port,
            ssh_config = sshd.config.display(),
            primary = primary_data.display(),
        ),
    )
}

/// Waits until `log` holds `needle` `times` times.
fn wait_log(m: &Member, needle: &str, times: usize) {
    wait_for(&format!("{} to log {needle:?} ({times}x)", m.name), T, || match m.log().matches(needle).count() {
        n if n >= times => Ok(()),
        n => Err(format!("{n} so far; last lines:\n{}", m.log().lines().rev().take(8).collect::<Vec<_>>().join("\n"))),
    });
}

fn wait_streaming(leader: &Member, lab: &Lab, name: &str) {
    let sql = format!("select state from pg_stat_replication where application_name = '{name}'");
    wait_for(&format!("{name} streaming from the leader"), T, || match leader.psql(lab, &sql).as_str() {
        "streaming" => Ok(()),
        other => Err(format!("state {other:?}")),
    });
}

/// pgclone's own summary lines in a member's log: a clone's, a re-sync's.
fn summaries(m: &Member) -> Vec<String> {
    let ours = |l: &&str| l.starts_with("pgclone: cloned") || l.starts_with("pgclone: re-synced");
    m.log().lines().filter(ours).map(str::to_string).collect()
}

/// The post_bootstrap script in place, and one etcd member on loopback: (its process, its client port).
fn start_etcd(lab: &Lab) -> (Bg, u16) {
    let post = lab.write("post_bootstrap.sh", POST_BOOTSTRAP);
    fs::set_permissions(&post, fs::Permissions::from_mode(0o755)).unwrap();
    let (etcd_port, peer_port) = (free_port(), free_port());
    let mut etcd = lab.cmd("etcd");
    etcd.args(["--name", "e1", "--data-dir"]).arg(lab.path().join("etcd"));
    etcd.args(["--listen-client-urls", &format!("http://127.0.0.1:{etcd_port}")]);
    etcd.args(["--advertise-client-urls", &format!("http://127.0.0.1:{etcd_port}")]);
    etcd.args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")]);
    etcd.args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer_port}")]);
    etcd.args(["--initial-cluster", &format!("e1=http://127.0.0.1:{peer_port}")]);
    (lab.spawn("etcd", etcd), etcd_port)
}

#[test]
fn patroni_builds_and_reinits_a_member_with_pgclone() {
    let lab = Lab::new("patroni");
    let sshd = Sshd::start(&lab);
    let (_etcd, etcd_port) = start_etcd(&lab);

    let m1_data = lab.path().join("m1");
    let m1 = member(&lab, &sshd, etcd_port, 1, &m1_data);
    wait_log(&m1, "the leader with the lock", 1);
    m1.psql(&lab, "create table before_m2 as select g from generate_series(1, 10000) g");

    let m2 = member(&lab, &sshd, etcd_port, 2, &m1_data);
    wait_log(&m2, "replica has been created using pgclone", 1);
    wait_streaming(&m1, &lab, "m2");
    let built = summaries(&m2);
    println!("m2 built: {built:?}");
    assert_eq!(built.len(), 1, "{}", m2.log());
    // The misspelled method failed (exit 2, one line naming the key) and Patroni went on to the next one.
    let typo = "pgclone: error: patroni: unknown key \"paralel\" in the method's section";
    assert!(m2.log().contains(typo), "no {typo:?} in m2's log");
    assert!(m2.log().contains("Error creating replica using method pgclone_typo"), "{}", m2.log());
    for line in m2.log().lines().filter(|l| l.contains("using pgclone") || l.contains("bootstrap from leader")) {
        println!("patroni: {line}");
    }

    // reinit: Patroni keeps the stale directory (keep_data) and pgclone re-syncs it.
    m1.psql(&lab, "create table after_m2 as select g from generate_series(1, 200000) g");
    let mut reinit = lab.cmd("patronictl");
    reinit.args(["-c"]).arg(&m2.conf).args(["reinit", SCOPE, "m2", "--force"]);
    println!("{}", lab.run(&mut reinit));
    wait_log(&m2, "replica has been created using pgclone", 2);
    wait_streaming(&m1, &lab, "m2");
    let resynced = summaries(&m2);
    println!("m2 re-synced: {:?}", resynced.last());
    assert_eq!(resynced.len(), 2);
    let last = resynced.last().unwrap();
    assert!(last.contains("already in place") && last.contains("moved over the link"), "not a re-sync: {last}");
    wait_for("m2 to have replayed after_m2", T, || {
        match m2.psql(&lab, "select to_regclass('after_m2') is not null").as_str() {
            "t" => Ok(()),
            other => Err(other.to_string()),
        }
    });
    assert_eq!(m2.psql(&lab, "select count(*) from after_m2"), "200000");
    drop((m2, m1));
}

/// `pgbench` against a member, as the superuser; the caller adds the options and the database.
fn pgbench(lab: &Lab, m: &Member) -> Command {
    let mut cmd = lab.cmd(Path::new(PG15_BIN).join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &m.port.to_string(), "-U", SUPERUSER]);
    cmd
}

/// A steady write load on a member (two clients, 200 transactions a second in all, for up to 10 minutes); ends
/// when dropped.
fn write_load(lab: &Lab, m: &Member) -> Bg {
    let mut cmd = pgbench(lab, m);
    cmd.args(["-n", "-c", "2", "-j", "2", "-R", "200", "-T", "600", "postgres"]);
    lab.spawn(&format!("{}-pgbench", m.name), cmd)
}

fn signal(pid: u32, sig: Signal) {
    let p = rustix::process::Pid::from_raw(pid as i32).expect("a process id");
    rustix::process::kill_process(p, sig).unwrap_or_else(|e| panic!("kill -{sig:?} {pid}: {e}"));
}

/// Whether `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    proc_stat(&Path::new("/proc").join(pid.to_string())).is_some_and(|(state, _)| state != 'Z')
}

/// A member's PostgreSQL dies at once, as in a power loss: SIGKILL for its postmaster and every process it
/// started, nothing written after. Its Patroni is already gone, so the postmaster is an orphan whose zombie
/// PID 1 may keep for a while (in a container, forever): postmaster.pid is removed once the processes are dead,
/// or the next Patroni would take that zombie, whose pid and start time match the file, for a running
/// postmaster. After a real crash that pid is simply gone.
fn kill_postgres(m: &Member) {
    let pidfile = m.data.join("postmaster.pid");
    let text = fs::read_to_string(&pidfile).unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
    let postmaster: u32 = text.lines().next().and_then(|l| l.trim().parse().ok()).expect("a pid in postmaster.pid");
    let mut pids: Vec<u32> = children_of(postmaster).into_iter().map(|(pid, _)| pid).collect();
    pids.insert(0, postmaster);
    for &pid in &pids {
        let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), Signal::KILL);
    }
    wait_for(&format!("{}'s PostgreSQL processes to die", m.name), T, || match pids.iter().find(|&&p| alive(p)) {
        None => Ok(()),
        Some(p) => Err(format!("pid {p} still alive")),
    });
    fs::remove_file(&pidfile).unwrap();
}

/// What must be equal on two members holding the same data: the pgbench tables' fingerprint and the names of
/// the tables in `public`.
fn data_of(m: &Member) -> String {
    let tables = "select string_agg(relname, ',' order by relname) from pg_class \
                  where relnamespace = 'public'::regnamespace and relkind = 'r'";
    format!("{}\ntables: {}", m.server.fingerprint(), m.server.psql(tables))
}

/// A failover with a diverged former leader, rejoining through pgclone: with `use_pg_rewind: false`,
/// `remove_data_directory_on_diverged_timelines: true` and `keep_data: true` in every method, Patroni (3.0.2:
/// `Ha._handle_rewind_or_reinitialize` -> `Ha._do_reinitialize`, which stops PostgreSQL and keeps the directory;
/// `Bootstrap.create_replica` leaves it uncleaned) hands the old leader's directory to pgclone, which re-syncs it
/// from the new leader.
///
/// Under write load on m1 (the leader), m1's Patroni is killed, then its walsender to m2 is frozen (SIGSTOP) and
/// m1 goes on writing (the load, and a table `only_old_leader`) WAL that m2 never receives; then m1's PostgreSQL is
/// killed. m2 takes the leader key once m1's lapses (ttl) and promotes onto timeline 2, forking before m1's last
/// WAL; the load moves to m2. m1's Patroni comes back: it starts m1 as a replica, finds its replayed WAL past the
/// fork (rewind.py, `Rewind._check_timeline_and_lsn`), reinitializes it with pgclone keeping the directory
/// (pgclone's summary: "re-synced ..."), and m1 streams from m2 with m2's data, without `only_old_leader`.
#[test]
fn a_former_leader_rejoins_through_pgclone_after_a_failover() {
    let started = std::time::Instant::now();
    let lab = Lab::new("patroni-failover");
    let sshd = Sshd::start(&lab);
    let (_etcd, etcd_port) = start_etcd(&lab);

    let m1_data = lab.path().join("m1");
    let mut m1 = member(&lab, &sshd, etcd_port, 1, &m1_data);
    wait_log(&m1, "the leader with the lock", 1);
    lab.run(pgbench(&lab, &m1).args(["-i", "-q", "-s", "2", "postgres"]));
    let m2 = member(&lab, &sshd, etcd_port, 2, &m1_data);
    wait_log(&m2, "replica has been created using pgclone", 1);
    wait_streaming(&m1, &lab, "m2");
    assert_eq!(summaries(&m2).len(), 1, "{}", m2.log());

    let load = write_load(&lab, &m1);
    wait_for("m2 to replay pgbench's writes", T, || {
        match m2.psql(&lab, "select count(*) from pgbench_history").as_str() {
            "0" => Err("no history rows on m2 yet".to_string()),
            _ => Ok(()),
        }
    });

    // The leader's Patroni dies first: the leader key then lapses after the ttl, and the position m1 last published
    // is one m2 has (maximum_lag_on_failover). Then m1 writes what m2 never gets, and its PostgreSQL dies.
    signal(m1.process.pid(), Signal::KILL);
    let walsender: u32 = m1
        .psql(&lab, "select pid from pg_stat_replication where application_name = 'm2'")
        .parse()
        .expect("m1's walsender to m2");
    signal(walsender, Signal::STOP);
    m1.psql(&lab, "create table only_old_leader as select g from generate_series(1, 1000) g");
    std::thread::sleep(Duration::from_secs(2));
    let m1_end = m1.psql(&lab, "select pg_current_wal_lsn()");
    kill_postgres(&m1);
    drop(load);
    println!("m1 killed at {m1_end} ({:.0?} in)", started.elapsed());

    wait_for("m2 to be promoted", T, || match m2.psql(&lab, "select pg_is_in_recovery()").as_str() {
        "f" => Ok(()),
        other => Err(format!("in recovery: {other}")),
    });
    let fork = m2.psql(&lab, "select pg_current_wal_lsn()");
    println!("m2 promoted ({:.0?} in), at {fork}", started.elapsed());
    // The divergence the test is about: m1 has WAL (and a table) that m2's timeline never had.
    assert_eq!(m2.psql(&lab, "select to_regclass('only_old_leader') is null"), "t", "m2 received m1's last WAL");
    let load = write_load(&lab, &m2);

    // m1's Patroni comes back, its method's primary-pgdata now m2's directory (one host here).
    write_conf(&lab, &sshd, etcd_port, &m1.name, (m1.port, m1.rest), &m2.data);
    m1.process = start_patroni(&lab, &m1.name, &m1.conf);
    wait_log(&m1, "replica has been created using pgclone", 1);
    wait_streaming(&m2, &lab, "m1");
    println!("m1 rejoined ({:.0?} in)", started.elapsed());
    for line in m1.log().lines().filter(|l| {
        ["Local timeline", "primary_timeline", "diverged", "uncleaned", "using pgclone", "from leader"]
            .iter()
            .any(|n| l.contains(n))
    }) {
        println!("patroni: {line}");
    }
    let log = m1.log();
    assert!(log.contains("reinitializing due to diverged timelines"), "Patroni did not reinitialize m1:\n{log}");
    assert!(log.contains("Leaving data directory uncleaned"), "Patroni did not keep m1's directory:\n{log}");
    assert!(!log.contains("Removing data directory"), "Patroni removed m1's directory:\n{log}");
    let resync = summaries(&m1);
    println!("m1: {resync:?}");
    assert_eq!(resync.len(), 1, "{log}");
    assert!(resync[0].starts_with("pgclone: re-synced"), "not a re-sync of m1's directory: {}", resync[0]);
    // Data checksums are on: the old leader's own WAL since the last checkpoint before the fork names what it
    // changed, and the new leader's WAL what changed there.
    assert!(resync[0].contains(" by wal-blocks "), "m1 was not re-synced by the WAL of both: {}", resync[0]);

    // Same data as the new leader once the load stops, and its timeline.
    drop(load);
    let sql = "select count(*) from pg_stat_activity where application_name = 'pgbench'";
    wait_for("the load on m2 to end", T, || match m2.psql(&lab, sql).as_str() {
        "0" => Ok(()),
        n => Err(format!("{n} pgbench sessions")),
    });
    let end = m2.psql(&lab, "select pg_current_wal_lsn()");
    wait_for(&format!("m1 to replay up to {end}"), T, || {
        match m1.psql(&lab, &format!("select pg_last_wal_replay_lsn() >= '{end}'::pg_lsn")).as_str() {
            "t" => Ok(()),
            other => Err(other.to_string()),
        }
    });
    assert_eq!(m1.psql(&lab, "select received_tli from pg_stat_wal_receiver"), "2");
    let (on_m1, on_m2) = (data_of(&m1), data_of(&m2));
    assert_eq!(on_m1, on_m2, "m1's data differs from the new leader's");
    assert!(!on_m1.contains("only_old_leader"), "{on_m1}");
    println!("m1 = m2:\n{on_m1}\n({:.0?} in all)", started.elapsed());
    drop((m1, m2));
}

/// Without a cluster: `pgclone patroni --help` prints the subcommand's help (before, it failed with "Patroni gave
/// no --datadir"); a misspelled key and `check: true` fail the method with exit 2 and one line naming the key
/// (before, both were ignored with a warning and a full clone ran), with the usage object on stdout (a method's
/// run is --json).
#[test]
fn patroni_help_is_help_and_a_wrong_method_key_fails_the_method() {
    let lab = Lab::new("patroni-keys");
    let run =
        |args: &[&str]| run_bounded(lab.cmd(lab.pgclone_bin()).arg("patroni").args(args), Duration::from_secs(30));
    let help = run(&["--help"]);
    help.assert_success();
    let usage = "Usage: pgclone patroni --datadir=DIR --connstring=CONNSTR [--KEY=VALUE]...";
    assert!(help.stdout.contains(usage) && help.stdout.contains("fails the method"), "{}", help.report());
    let base = ["--scope=s", "--role=replica", "--datadir=/srv/replica", "--connstring=host=db1 user=replicator"];
    for (key, line) in [
        (
            "--paralel=4",
            "pgclone: error: patroni: unknown key \"paralel\" in the method's section: the keys are Patroni's and \
             pgclone's flags (scope, role, keep_data, no_params, no_leader, no_master, datadir, connstring, dbname, ",
        ),
        (
            "--check=True",
            "pgclone: error: patroni: check=True: a replica method must build the replica, and with --check pgclone \
             would exit without one (run pgclone --check by hand instead)",
        ),
    ] {
        let out = run(&[&base[..], &[key]].concat());
        assert_eq!(out.status.code(), Some(2), "{}", out.report());
        let err = out.stderr.trim_end();
        assert!(err.starts_with(line) && !err.contains('\n'), "{key}: {err:?}");
        assert!(key != "--paralel=4" || err.contains(", parallel, "), "the known keys lack parallel: {err}");
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("--json's object");
        assert_eq!((v["class"].as_str(), v["exit_code"].as_i64()), (Some("usage"), Some(2)), "{v}");
        println!("{key}: {err}");
    }
}
