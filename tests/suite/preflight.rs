//! pgclone refuses to start when something is wrong, says why on its last stderr line, and leaves
//! the primary clean. Each test builds a setup that is valid except for the one defect it tests
//! (and checks that defect is really there before running pgclone).

use crate::support::*;
use std::fs;
use std::time::Duration;

#[test]
fn refuses_root() {
    if !root_or_skip("refuses_root", "the tests do not run as root, so pgclone cannot be run as root") {
        return;
    }
    let s = Setup::new("root", &[]);
    let mut run = s.pgclone();
    run.as_root = true;
    run.run().assert_refused("must not run as root");
    s.assert_clean();
}

#[test]
fn refuses_postgresql_14() {
    let s = Setup::with_install("pg14", PgInstall::of(14), &[]);
    let version = s.primary.psql("show server_version_num");
    assert!(version.starts_with("14"), "primary should be PostgreSQL 14, is {version}");
    s.pgclone().run().assert_refused("PostgreSQL 14 is not supported");
    s.assert_clean();
}

/// A clone as `role`, made by `create` and lacking what `probe` shows it lacks, fails with `error` and leaves
/// nothing behind.
fn refuses_role(role: &str, create: &str, probe: &str, error: &str) {
    let s = Setup::new(role, &[]);
    s.primary.psql(create);
    assert_eq!(s.primary.try_psql_as(role, probe), Ok("f".into()));
    let mut run = s.pgclone();
    run.pguser = role.into();
    run.run().assert_refused(error);
    s.assert_clean();
}

#[test]
fn refuses_role_without_replication() {
    // Everything but REPLICATION: may log in, run the backup functions, read settings and stats.
    refuses_role(
        "norepl",
        &format!(
            "create role norepl login password '{PASSWORD}';
             grant pg_monitor to norepl;
             grant execute on function pg_backup_start(text, boolean), pg_backup_stop(boolean) to norepl"
        ),
        "select rolreplication from pg_roles where rolname = current_user",
        "lacks the REPLICATION attribute",
    );
}

#[test]
fn refuses_role_without_backup_privilege() {
    refuses_role(
        "nobackup",
        &format!("create role nobackup login replication password '{PASSWORD}'; grant pg_monitor to nobackup"),
        "select has_function_privilege('pg_backup_start(text, boolean)', 'execute')",
        "may not execute pg_backup_start",
    );
}

#[test]
fn refuses_wal_level_minimal() {
    let s = Setup::new("minimal", &["wal_level = minimal", "max_wal_senders = 0"]);
    assert_eq!(s.primary.psql("show wal_level"), "minimal");
    s.pgclone().run().assert_refused("wal_level is minimal");
    s.assert_clean();
}

#[test]
fn refuses_when_no_wal_sender_is_free() {
    let s = Setup::new("senders", &["max_wal_senders = 1"]);
    // Hold the only WAL sender with an idle replication connection (psql waits on its stdin).
    let mut holder = s.primary.client("psql", SUPERUSER);
    holder.args(["-X", "-d", "dbname=postgres replication=true application_name=sender_holder"]);
    let mut holder = s.lab.spawn_with_stdin("sender-holder", holder);
    wait_for("the holder to occupy the only WAL sender", Duration::from_secs(20), || {
        holder.check_running()?;
        match s.primary.try_psql("select count(*) from pg_stat_replication where application_name = 'sender_holder'")? {
            n if n == "1" => Ok(()),
            n => Err(format!("{n} holder walsenders")),
        }
    });
    assert_eq!(s.primary.psql("show max_wal_senders"), "1");
    s.pgclone().run().assert_refused(
        "no free WAL sender on the primary: max_wal_senders = 1 and 1 in use; raise max_wal_senders (it takes a \
         restart) or end a replication connection you do not need (pg_stat_replication)",
    );
    holder.check_running().expect("the holder connection should still be open");
    s.assert_clean();
}

#[test]
fn refuses_non_empty_replica_dir() {
    let s = Setup::new("notempty", &[]);
    s.lab.mkdir("replica");
    let precious = s.lab.write(s.replica.join("precious.txt"), "do not delete\n");
    s.pgclone().run().assert_refused("is not empty");
    assert_eq!(
        fs::read_to_string(&precious).ok().as_deref(),
        Some("do not delete\n"),
        "pgclone touched a non-empty replica dir"
    );
    s.assert_clean();
}

#[test]
fn refuses_replica_dir_of_a_running_postmaster() {
    let s = Setup::new("live", &[]);
    let live = Postgres::primary(&s.lab, "live", &[]);
    let mut run = s.pgclone();
    run.replica_pgdata = live.data.clone();
    run.run().assert_refused("a postmaster is running");
    assert_primary_clean(&s.lab, &s.primary);
    // The running cluster is untouched.
    for f in ["PG_VERSION", "postmaster.pid", "global/pg_control", "postgresql.conf"] {
        assert!(live.data.join(f).exists(), "{f} vanished from the live cluster's data dir");
    }
    assert_eq!(live.psql("select count(*) > 0 from pg_class"), "t");
}

#[test]
fn reports_ssh_failure() {
    let s = Setup::new("sshkey", &[]);
    let (key, config) = s.sshd.unauthorized_key("wrong_key");
    // Precondition: this key really is refused.
    let probe = run_bounded(&mut s.sshd.ssh_cmd(&config, "true"), Duration::from_secs(30));
    assert!(!probe.success(), "the unauthorized key logged in:\n{}", probe.report());
    let mut run = s.pgclone();
    run.ssh_mut().key = key;
    run.ssh_mut().config = config;
    run.run().assert_refused("ssh to");
    s.assert_clean();
}

/// Without --primary-pgdata the server names its data directory, which only superusers and members of
/// pg_read_all_settings may read: a role that may not is refused in one line with both ways out, and passes once
/// granted the role.
#[test]
fn without_primary_pgdata_a_role_that_cannot_read_data_directory_is_told_what_to_do() {
    let s = Setup::new("datadir", &[]);
    s.primary.psql(&format!(
        "create role rep login replication password '{PASSWORD}';
         grant execute on function pg_backup_start(text, boolean), pg_backup_stop(boolean) to rep"
    ));
    let mut run = s.pgclone();
    (run.pguser, run.primary_pgdata) = ("rep".into(), Default::default());
    run.arg("--check");
    run.run().assert_refused(
        "role \"rep\" may not read the server's data_directory: give --primary-pgdata DIR (the primary's data \
         directory), or GRANT pg_read_all_settings TO \"rep\"",
    );
    s.assert_clean();
    s.primary.psql("grant pg_read_all_settings to rep");
    let out = run.run();
    out.assert_success();
    let said = format!("the primary's data directory is {} (the server's data_directory)", s.primary.data.display());
    assert!(out.stderr.contains(&said), "{}", out.report());
    assert_primary_clean(&s.lab, &s.primary);
}
