//! pgclone as a Patroni replica method, under a live Patroni (Debian's 3.0.x) with a live etcd (3.4): one etcd
//! and two members on loopback with their own ports, and an sshd for pgclone. Member 2 is built by pgclone
//! (`create_replica_methods: [pgclone]`, `command: pgclone patroni`, its keys as pgclone's flags) and streams;
//! `patronictl reinit` of member 2 (`keep_data: true`) re-syncs its directory with pgclone, moving only what
//! differs. A first method with a misspelled key fails, so that Patroni goes on to the next. Patroni's replication role gets the backup functions in the `post_bootstrap` script docs/patroni.md
//! gives.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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
    process: Bg,
    _server: Server,
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
    let data = lab.path().join(&name);
    let conf = lab.write(
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
    );
    let mut cmd = lab.cmd("patroni");
    cmd.arg(&conf);
    let process = lab.spawn(&name, cmd);
    let _server = Server::adopt(lab, &data, &name, port);
    Member { name, conf, data, port, process, _server }
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

#[test]
fn patroni_builds_and_reinits_a_member_with_pgclone() {
    let lab = Lab::new("patroni");
    let sshd = Sshd::start(&lab);
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
    let _etcd = lab.spawn("etcd", etcd);

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
