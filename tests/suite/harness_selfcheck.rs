//! Checks of the test harness itself, independent of pgclone: pg_basebackup stands in for pgclone.
//! When these fail, the harness or the machine is broken, not pgclone.

use crate::support::*;
use std::time::Duration;

/// Primary + sshd + pgbench load + replica (from pg_basebackup) started as a standby through the
/// same path the end-to-end test uses, caught up, with equal fingerprints.
#[test]
fn basebackup_replica_streams_and_matches() {
    let lab = Lab::new("selfcheck");
    let primary = Postgres::primary(&lab, "primary", &[]);
    primary.pgbench_init(2);
    let sshd = Sshd::start(&lab);

    // The ssh path pgclone uses: our config file and key, the lab tag set by sshd, remote tools.
    let remote = sshd.ssh("echo \"$PGCLONE_TEST_TAG\"; id -un; for c in find sh rsync; do command -v $c; done");
    assert!(remote.contains(&lab.path().display().to_string()), "sshd SetEnv tag missing: {remote}");
    assert!(remote.contains(&lab.user().name) && remote.contains("rsync"), "remote side: {remote}");
    // The copied pgclone binary is executable by the lab user.
    lab.run(lab.cmd(lab.pgclone_bin()).arg("--help"));

    let load = primary.pgbench_load(2);
    primary.wait_for_pgbench_writes();
    let replica = lab.path().join("replica");
    lab.run(primary.client("pg_basebackup", SUPERUSER).arg("-D").arg(&replica).args(["-X", "stream", "-c", "fast"]));

    let standby = assert_standby_matches(&lab, &primary, &replica, "selfcheck_standby", Some(load));
    assert!(standby.history_rows() > 0);
    // pg_basebackup's temporary slot is gone with its connection.
    assert_primary_clean(&lab, &primary);
}

/// The fingerprint notices a single changed row (so equal fingerprints mean something).
#[test]
fn fingerprint_detects_one_changed_row() {
    let lab = Lab::new("fingerprint");
    let primary = Postgres::primary(&lab, "primary", &[]);
    primary.pgbench_init(1);
    let before = primary.fingerprint();
    primary.psql("update pgbench_accounts set filler = 'x' where aid = 500");
    assert_ne!(primary.fingerprint(), before);
}

/// The leftover-process check sees a process started over this lab's sshd (it carries the tag
/// sshd sets with SetEnv), and the wait ends once it is gone.
#[test]
fn leftover_check_sees_remote_processes() {
    let lab = Lab::new("leftover");
    let sshd = Sshd::start(&lab);
    let client = lab.spawn("ssh-sleep", sshd.ssh_cmd(&sshd.config, "exec sleep 4"));
    let found = wait_for("the remote sleep to show up", Duration::from_secs(10), || {
        let v = lab.leftover_processes();
        if v.iter().any(|p| p.contains("[sleep]")) {
            Ok(v)
        } else {
            Err(format!("{v:?}"))
        }
    });
    println!("leftovers seen: {found:?}");
    drop(client);
    wait_for("the remote sleep to end", Duration::from_secs(15), || match lab.leftover_processes() {
        v if v.is_empty() => Ok(()),
        v => Err(v.join("\n")),
    });
}

/// The PostgreSQL 14 primary used by the version-rejection test really is 14, runs as the lab
/// user, and Debian's PG15 psql talks to it.
#[test]
fn pg14_primary_starts() {
    let lab = Lab::new("pg14");
    let primary = Postgres::primary_with(&lab, "primary14", PgInstall::of(14), &[]);
    let version = primary.psql("show server_version_num");
    assert!(version.starts_with("14"), "server_version_num {version}");
}
