//! Re-syncing a replica directory that is already there: by the primary's WAL summaries (PostgreSQL 17+ with
//! summarize_wal = on) when every condition holds, reading only what changed; else by comparing every file
//! (with data checksums on, but the pages whose LSN says they did not change), with the reason in the log and
//! in --json. The re-synced directories start as standbys that stream and hold
//! the primary's data; a diverged old primary is compared, never trusted; a page damaged here is left by the
//! summaries (they cannot see it) and repaired by --paranoid, as the README says.

use crate::support::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The `resync` object of a successful `--json` run.
pub(super) fn resync(out: &CmdOutput) -> serde_json::Value {
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    println!("resync: {}", v["resync"]);
    v["resync"].clone()
}

fn method(r: &serde_json::Value) -> &str {
    r["method"].as_str().unwrap_or_default()
}

/// `pgclone verify` of a clone before its first start.
pub(super) fn pgclone_verify(lab: &Lab, replica: &Path) {
    lab.run(lab.cmd(lab.pgclone_bin()).arg("verify").arg(replica));
}

/// A standby that ran, made a restartpoint past its clone's start, and was shut down cleanly.
pub(super) fn run_and_stop(s: &Setup, name: &str) {
    let standby = s.assert_standby(&s.replica, name, None);
    s.primary.psql("checkpoint");
    let lsn = s.primary.psql("select pg_current_wal_lsn()");
    wait_replayed(&s.primary, name, &lsn, std::time::Duration::from_secs(60));
    standby.psql("checkpoint");
    standby.stop_fast();
}

/// A clone, made with --json by the `Pgclone` returned (to run again for the re-sync), that ran as standby `name`,
/// was stopped, and fell `transactions` pgbench transactions (of each of two clients) behind the primary.
pub(super) fn stale_standby(s: &Setup, name: &str, transactions: u32) -> Pgclone {
    let mut run = s.pgclone();
    run.arg("--json");
    run.run().assert_success();
    run_and_stop(s, name);
    s.primary.pgbench_transactions(transactions);
    run
}

/// PostgreSQL 18: a standby stopped, 300 pgbench transactions on the primary, and a re-sync that reads on
/// the primary a small part of the data (what the summaries list, and the files they cannot speak for)
/// and nothing here; the manifest checks out and the standby catches up with the primary's data.
#[test]
fn a_stale_pg18_standby_resyncs_by_wal_summaries() {
    let s = Setup::with_install("resync-pg18", PgInstall::of(18), &["summarize_wal = on"]);
    s.primary.pgbench_init(5);
    let mut run = s.pgclone();
    run.arg("--json");
    let fresh = run.run();
    assert_eq!(resync(&fresh), serde_json::Value::Null, "a fresh clone is no re-sync");
    run_and_stop(&s, "resync_standby");
    s.primary.pgbench_transactions(150);

    let out = run.run();
    let r = resync(&out);
    let f = json_figures(&out);
    assert_eq!(method(&r), "wal-summaries", "{}", out.report());
    assert!(r["why"].is_null());
    assert_eq!(r["read_replica_bytes"], 0, "nothing here is read");
    let read = r["read_primary_bytes"].as_u64().unwrap();
    assert!(read * 5 < f.bytes, "read {read} of {} bytes on the primary", f.bytes);
    assert!(out.stderr.contains("re-sync by the primary's WAL summaries"), "{}", out.report());
    pgclone_verify(&s.lab, &s.replica);
    s.assert_standby(&s.replica, "resync_standby", None);
}

/// PostgreSQL 17: without summaries (summarize_wal off) a re-sync reads the primary's WAL itself; with the
/// primary's WAL at the standby's last checkpoint recycled (so nothing proves the standby's WAL is the primary's,
/// and summaries begin after it), a re-sync compares and says why; once summaries cover it, a re-sync uses them.
/// Each time the standby starts and holds the primary's data.
#[test]
fn without_covering_summaries_a_resync_compares_and_says_why() {
    let s = Setup::with_install("resync-fallback", PgInstall::of(17), &["summarize_wal = off", "wal_keep_size = 0"]);
    s.primary.pgbench_init(1);
    let run = stale_standby(&s, "fallback_standby", 100);
    let out = run.run();
    let r = resync(&out);
    assert_eq!(method(&r), "wal-blocks", "without summaries, the primary's WAL itself says what changed");
    assert_eq!(r["read_replica_bytes"], 0, "{r}");

    run_and_stop(&s, "fallback_standby");
    // The WAL from the standby's redo point on is recycled before summarizing starts: the summarizer begins
    // at the oldest segment still there, after it.
    for _ in 0..3 {
        s.primary.pgbench_transactions(50);
        s.primary.psql("select pg_switch_wal()");
        s.primary.psql("checkpoint");
    }
    s.primary.psql("alter system set summarize_wal = on");
    s.primary.psql("select pg_reload_conf()");
    let out = run.run();
    let r = resync(&out);
    assert_eq!(method(&r), "page-hashes");
    // The replica's WAL cannot be shown to be the primary's once the primary has recycled it.
    assert!(r["why"].as_str().unwrap().contains("no longer has it"), "{r}");
    assert!(r["why"].as_str().unwrap().contains("has already been removed"), "the server's reason: {r}");

    run_and_stop(&s, "fallback_standby");
    s.primary.pgbench_transactions(100);
    let r = resync(&run.run());
    assert_eq!(method(&r), "wal-summaries", "{r}");
    s.assert_standby(&s.replica, "fallback_standby", None);
}

/// PostgreSQL 15 with data checksums (initdb -k), where the primary's WAL cannot say what changed: it ran with
/// wal_level = minimal for a while, and a table created and filled in one transaction then was never WAL-logged
/// (the XLOG_PARAMETER_CHANGE its restart logged says so). A stale standby re-syncs by page LSNs, reading here
/// only the pages the primary changed since its redo point and the files LSNs cannot speak for, and starts with
/// the primary's data, that table's included. A database dropped and created again under its old OID by
/// STRATEGY FILE_COPY while the standby was stale holds template1's pages with their old LSNs; it is not the
/// database the standby knew, so it is compared whole and comes out as the primary's, without the table only
/// the old one had.
#[test]
fn a_stale_pg15_standby_with_checksums_resyncs_by_page_lsns() {
    let s = Setup::with_initdb("resync-lsn", PgInstall::of(15), &["--data-checksums"], &["wal_keep_size = '1GB'"]);
    s.primary.pgbench_init(5);
    s.primary.psql("create database reborn");
    let in_reborn =
        |pg: &Postgres, sql: &str| s.lab.run(pg.client("psql", SUPERUSER).args(["-d", "reborn", "-Atc", sql]));
    in_reborn(&s.primary, "create table only_in_the_old as select g from generate_series(1, 50000) g");
    let oid = s.primary.psql("select oid from pg_database where datname = 'reborn'");
    let run = stale_standby(&s, "lsn_standby", 150);
    s.primary.psql("drop database reborn");
    s.primary.psql(&format!("create database reborn oid {oid} strategy file_copy template template1"));
    s.primary.psql("alter system set wal_level = minimal");
    s.primary.psql("alter system set max_wal_senders = 0");
    s.primary.restart();
    s.primary.psql("begin; create table unlogged_by_minimal as select g from generate_series(1, 20000) g; commit");
    s.primary.psql("alter system reset wal_level");
    s.primary.psql("alter system reset max_wal_senders");
    s.primary.restart();

    let out = run.run();
    let r = resync(&out);
    let f = json_figures(&out);
    assert_eq!(method(&r), "page-lsns", "{}", out.report());
    assert!(r["why"].as_str().unwrap().contains("wal_level = minimal"), "{r}");
    let here = r["read_replica_bytes"].as_u64().unwrap();
    assert!(here * 4 < f.bytes, "read {here} of {} bytes here", f.bytes);
    pgclone_verify(&s.lab, &s.replica);
    let standby = s.assert_standby(&s.replica, "lsn_standby", None);
    assert_eq!(standby.psql("select count(*) from unlogged_by_minimal"), "20000");
    assert_eq!(in_reborn(&standby, "select count(*) from pg_class where relname = 'only_in_the_old'").trim(), "0");
    assert_eq!(
        in_reborn(&standby, "select count(*) from pg_class").trim(),
        in_reborn(&s.primary, "select count(*) from pg_class").trim()
    );
    assert!(out.stderr.contains("1 of the primary's 4 databases are not the ones here"), "{}", out.report());
}

/// PostgreSQL 18 with summarize_wal off: a stale standby re-syncs by the primary's WAL itself (18's page and
/// record layout), reading on the primary the WAL since its redo point and the blocks it names, nothing here,
/// and catches up with the primary's data.
#[test]
fn a_stale_pg18_standby_without_summaries_resyncs_by_the_primarys_wal() {
    let s = Setup::with_install("resync-wal18", PgInstall::of(18), &[]);
    s.primary.pgbench_init(5);
    let out = stale_standby(&s, "wal18_standby", 150).run();
    let r = resync(&out);
    assert_eq!(method(&r), "wal-blocks", "{}", out.report());
    assert!(r["why"].is_null(), "{r}");
    assert_eq!(r["read_replica_bytes"], 0, "nothing here is read");
    let read = r["read_primary_bytes"].as_u64().unwrap();
    assert!(read * 4 < json_figures(&out).bytes, "read {read} bytes on the primary");
    s.assert_standby(&s.replica, "wal18_standby", None);
}

/// The primary's clone, started as a standby and promoted: the new primary of a failover, on timeline 2.
fn failed_over(s: &Setup) -> Postgres {
    s.pgclone().run().assert_success();
    let new = s.assert_standby(&s.replica, "new_primary", None);
    new.promote();
    assert_eq!(new.psql("select pg_is_in_recovery()"), "f");
    new
}

/// A --json re-sync of `dir` from `primary` (another server than the setup's: a promoted one).
pub(super) fn resync_from(s: &Setup, primary: &Postgres, dir: &Path) -> CmdOutput {
    let mut run = Pgclone::new(primary, &s.sshd, dir);
    run.arg("--json");
    run.run()
}

/// An old primary after a failover, on PostgreSQL 17 without data checksums or wal_log_hints: its last WAL (written
/// after the standby was promoted) is not on the new primary's history, and the hint bits it set after the fork
/// are in no WAL, so its pages cannot be trusted to be the new primary's; the re-sync compares them all (with
/// summaries on at the new primary), and the old primary then follows the new one, without the table only it had.
#[test]
fn an_old_primary_after_a_failover_is_compared_not_trusted() {
    let s = Setup::with_install("resync-failover", PgInstall::of(17), &["summarize_wal = on"]);
    s.primary.pgbench_init(1);
    let new = failed_over(&s);
    s.primary.psql("create table only_on_the_old as select generate_series(1, 10000) g");
    s.primary.stop_fast();
    new.pgbench_transactions(100);

    let out = resync_from(&s, &new, &s.primary.data);
    let r = resync(&out);
    assert_eq!(method(&r), "page-hashes");
    assert!(r["why"].as_str().unwrap().contains("neither data checksums nor wal_log_hints"), "{r}");
    assert!(json_figures(&out).moved > 0);
    let old = assert_standby_matches(&s.lab, &new, &s.primary.data, "old_primary", None);
    assert_eq!(old.psql("select count(*) from pg_class where relname = 'only_on_the_old'"), "0");
    assert_eq!(old.psql("select timeline_id from pg_control_checkpoint()"), "2");
}

/// A former primary after a failover, with data checksums (PostgreSQL 16, initdb -k): after the standby was
/// promoted it went on writing (rows of pgbench_accounts updated in pages the new primary never touches, a table
/// created) and was shut down; the new primary wrote on. The re-sync takes the blocks the old primary's own WAL
/// changed since the last checkpoint before the fork and those the new primary's WAL changed since the fork:
/// the old primary's updates are undone (its pages fetched again), and it follows the new primary with its data,
/// having read a small part of the data on either host. Killed, it is first refused that shortcut, with the
/// reason (its files may hold changes its pg_control does not account for); started again (it recovers from the
/// crash) and shut down, it rejoins.
#[test]
fn a_former_primary_rejoins_by_its_own_wal_and_the_new_primarys() {
    let s = Setup::with_initdb("resync-rejoin", PgInstall::of(16), &["--data-checksums"], &["wal_keep_size = '1GB'"]);
    s.primary.pgbench_init(5);
    let new = failed_over(&s);
    s.primary.psql("update pgbench_accounts set abalance = abalance + 1000 where aid % 50000 < 500");
    s.primary.psql("create table only_on_the_old as select generate_series(1, 10000) g");
    s.primary.psql("checkpoint");
    s.primary.psql("update pgbench_accounts set abalance = abalance + 7 where aid % 50000 between 600 and 700");
    s.primary.kill();
    new.pgbench_transactions(100);
    let killed = s.lab.path().join("killed");
    s.lab.run(std::process::Command::new("cp").arg("-a").arg(&s.primary.data).arg(&killed));
    let r = resync(&resync_from(&s, &new, &killed));
    assert_eq!(method(&r), "page-hashes", "{r}");
    assert!(r["why"].as_str().unwrap().contains("not shut down cleanly"), "{r}");
    s.primary.start();
    s.primary.stop_fast();

    let out = resync_from(&s, &new, &s.primary.data);
    let r = resync(&out);
    let f = json_figures(&out);
    assert_eq!(method(&r), "wal-blocks", "{}", out.report());
    assert!(r["why"].is_null(), "{r}");
    assert!(out.stderr.contains("the replica's WAL left the primary's timeline"), "{}", out.report());
    assert!(!out.stderr.contains("the backup starts after"), "wal_keep_size keeps it all\n{}", out.report());
    assert_eq!(r["read_replica_bytes"], 0, "nothing here is read");
    let read = r["read_primary_bytes"].as_u64().unwrap();
    assert!(read * 4 < f.bytes, "read {read} of {} bytes on the primary", f.bytes);
    let old = assert_standby_matches(&s.lab, &new, &s.primary.data, "old_primary", None);
    assert_eq!(old.psql("select count(*) from pg_class where relname = 'only_on_the_old'"), "0");
    assert_eq!(old.psql("select timeline_id from pg_control_checkpoint()"), "2");
}

/// A former primary's re-sync reads the new primary's WAL from the last checkpoint before the fork (the divergence
/// proof reads that record there), which lies before the fork and before the old primary's own redo point: the
/// backup's checkpoint may come first only where it keeps the WAL from there. The old primary checkpoints and
/// writes 14 segments of WAL, which the standby replays; the standby is promoted, checkpoints, and writes 4
/// segments more, keeping 256 MB (16 segments). A checkpoint now would keep the WAL from about 2 segments after
/// the old primary's last checkpoint before the fork, well before the fork itself: a backup started early on the
/// strength of the fork's position or the old primary's redo point would take the WAL the proof reads, and the
/// re-sync would compare every page. It must start late, say why, and rejoin by WAL blocks.
#[test]
fn a_former_primarys_backup_starts_late_when_the_checkpoint_before_the_fork_would_go() {
    let conf = ["wal_keep_size = '256MB'", "checkpoint_timeout = '1h'", "max_wal_size = '4GB'"];
    let s = Setup::with_initdb("resync-rejoin-late", PgInstall::of(15), &["--data-checksums"], &conf);
    s.primary.pgbench_init(2);
    s.pgclone().run().assert_success();
    let new = s.assert_standby(&s.replica, "new_primary", None);
    s.primary.psql("checkpoint");
    for _ in 0..14 {
        s.primary.pgbench_transactions(5);
        s.primary.psql("select pg_switch_wal()");
    }
    let end = s.primary.psql("select pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while new.psql(&format!("select pg_last_wal_replay_lsn() >= '{end}'")) != "t" {
        assert!(Instant::now() < deadline, "the standby did not replay up to {end}");
        std::thread::sleep(Duration::from_millis(100));
    }
    new.promote();
    new.psql("checkpoint");
    s.primary.pgbench_transactions(20);
    s.primary.stop_fast();
    for _ in 0..4 {
        new.pgbench_transactions(5);
        new.psql("select pg_switch_wal()");
    }

    let out = resync_from(&s, &new, &s.primary.data);
    let r = resync(&out);
    assert_eq!(method(&r), "wal-blocks", "{}", out.report());
    let line = out.stderr.lines().find(|l| l.contains("the backup starts after")).unwrap_or_else(|| {
        panic!("no word of the backup starting late\n{}", out.report());
    });
    assert!(line.contains("wal_keep_size (268.4 MB)"), "{line}");
    assert_standby_matches(&s.lab, &new, &s.primary.data, "old_primary", None);
}

/// A page damaged here (size and modification time kept) while the primary's stays the same: --paranoid
/// compares every page and repairs it; a re-sync by summaries does not read it and leaves it damaged, as the
/// README documents.
#[test]
fn a_page_damaged_here_is_repaired_by_paranoid_and_left_by_summaries() {
    let s = Setup::with_install("resync-damage", PgInstall::of(17), &["summarize_wal = on"]);
    s.primary.pgbench_init(1);
    s.primary.psql("create table still as select g, repeat('x', 100) as pad from generate_series(1, 20000) g");
    // Hint bits set and logged now, so the table's pages do not change on the primary later.
    s.primary.psql("vacuum freeze still");
    let rel = s.primary.psql("select pg_relation_filepath('still')");
    let mut run = s.pgclone();
    run.arg("--json");
    run.run().assert_success();
    let block = |dir: &Path| {
        let mut b = vec![0u8; 8192];
        fs::File::open(dir.join(&rel)).unwrap().read_exact_at(&mut b, 8192).unwrap();
        b
    };
    let damage = |dir: &Path| {
        let path = dir.join(&rel);
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xAB; 512], 8192 + 4096).unwrap();
        f.set_modified(mtime).unwrap();
    };

    run_and_stop(&s, "damaged_standby");
    damage(&s.replica);
    s.primary.pgbench_transactions(100);
    let paranoid = {
        let mut p = s.pgclone();
        p.args(["--json", "--paranoid"]);
        p.run()
    };
    let r = resync(&paranoid);
    assert_eq!(method(&r), "page-hashes");
    assert_eq!(r["why"], "--paranoid compares every page");
    assert_eq!(block(&s.replica), block(&s.primary.data), "--paranoid repaired the page");

    run_and_stop(&s, "damaged_standby");
    damage(&s.replica);
    let damaged = block(&s.replica);
    s.primary.pgbench_transactions(100);
    let r = resync(&run.run());
    assert_eq!(method(&r), "wal-summaries");
    assert_eq!(block(&s.replica), damaged, "the summaries method reads no unchanged page, so it repairs none");
    assert_ne!(damaged, block(&s.primary.data));
}

/// Rows an index-only scan counts: it trusts the visibility map and visits no heap page that the map says is
/// all-visible, so a stale map bit shows deleted rows as alive.
pub(super) fn index_only_count(pg: &Postgres, table: &str) -> String {
    let plan = pg.psql(&format!(
        "set enable_seqscan = off; set enable_bitmapscan = off; explain (costs off) select count(*) from {table}"
    ));
    assert!(plan.contains("Index Only Scan"), "{plan}");
    let out = pg.psql(&format!("set enable_seqscan = off; set enable_bitmapscan = off; select count(*) from {table}"));
    out.lines().last().unwrap_or_default().to_string()
}

/// PostgreSQL 17 with summaries: a DELETE clears the visibility map bits of the heap pages it touches, but its
/// WAL record names only the heap block (heap_delete, visibilitymap_clear), so the summaries never list the
/// map's page. A re-sync by summaries that trusted the map here would leave it saying all-visible, and an
/// index-only scan on the re-synced standby would count the deleted rows. The map is fetched whole.
#[test]
fn a_resync_by_summaries_never_keeps_a_stale_visibility_map() {
    let s = Setup::with_install("resync-vm", PgInstall::of(17), &["summarize_wal = on", "autovacuum = off"]);
    s.primary.pgbench_init(1);
    s.primary.psql("create table frozen (id int primary key, pad text)");
    s.primary.psql("insert into frozen select g, repeat('x', 50) from generate_series(1, 20000) g");
    s.primary.psql("vacuum (freeze, analyze) frozen");
    let run = stale_standby(&s, "vm_standby", 20);
    s.primary.psql("delete from frozen where id % 200 = 0");
    assert_eq!(index_only_count(&s.primary, "frozen"), "19900");

    let r = resync(&run.run());
    assert_eq!(method(&r), "wal-summaries", "{r}");
    let standby = s.assert_standby(&s.replica, "vm_standby", None);
    assert_eq!(index_only_count(&standby, "frozen"), "19900", "the standby's visibility map is the primary's");
}

/// Two standbys of one primary promoted alike (the primary stopped, both had replayed all of its WAL) choose
/// the same timeline 2 with the same history file, and then write different WAL under the same (timeline,
/// LSN) names. Re-syncing the first, which wrote and checkpointed on its own timeline 2, from the second must
/// not take its pages for the second's: its last checkpoint record is not the second's WAL at that position,
/// so every page is compared, and it comes out with the second's data, not its own.
#[test]
fn a_split_brain_on_one_timeline_number_is_compared_not_trusted() {
    let s = Setup::with_initdb("split-brain", PgInstall::of(15), &["--data-checksums"], &[]);
    s.primary.pgbench_init(2);
    let b_dir = s.lab.path().join("b");
    s.pgclone().run().assert_success();
    s.pgclone_into("b").run().assert_success();
    let a = s.assert_standby(&s.replica, "a", None);
    let b = s.assert_standby(&b_dir, "b", None);
    s.primary.stop_fast();
    a.promote();
    b.promote();
    let history = |dir: &Path| fs::read_to_string(dir.join("pg_wal/00000002.history")).unwrap();
    assert_eq!(history(&s.replica), history(&b_dir), "both chose timeline 2 with the same history");

    a.pgbench_transactions(50);
    a.psql("create table only_on_a as select generate_series(1, 1000) g");
    a.psql("checkpoint");
    a.stop_fast();
    b.pgbench_transactions(300);
    b.psql("create table only_on_b as select generate_series(1, 1000) g");
    b.psql("checkpoint");

    let out = resync_from(&s, &b, &s.replica);
    let r = resync(&out);
    assert_eq!(method(&r), "page-hashes", "{}", out.report());
    assert!(r["why"].as_str().unwrap().contains("split brain"), "{r}");
    let again = assert_standby_matches(&s.lab, &b, &s.replica, "a_again", None);
    assert_eq!(again.psql("select count(*) from pg_class where relname = 'only_on_a'"), "0");
    assert_eq!(again.psql("select count(*) from only_on_b"), "1000");
}

/// A clone whose recovery from its backup was stopped before the backup's end (its WAL past the backup's start
/// segment taken away, so replay waits there): pg_control then holds the backup's start, and its pages, copied
/// at any moment of the backup, can be newer than its minimum recovery point. No shortcut: every page is
/// compared (PostgreSQL 18, data checksums on, summaries off: page LSNs would otherwise be trusted).
#[test]
fn a_recovery_stopped_before_the_backups_end_is_compared_not_trusted() {
    let s = Setup::with_install("resync-unfinished", PgInstall::of(18), &[]);
    s.primary.pgbench_init(3);
    let slow = s.pgclone().spawn_slowly("20M");
    // The backup's end lies segments past its start.
    for _ in 0..2 {
        s.primary.pgbench_transactions(20);
        s.primary.psql("select pg_switch_wal()");
    }
    slow.wait().assert_success();
    let label = fs::read_to_string(s.replica.join("backup_label")).unwrap();
    let start_file = label.lines().find_map(|l| l.split("(file ").nth(1)).unwrap().trim_end_matches(')').to_string();
    let start_lsn = label.lines().find_map(|l| l.strip_prefix("START WAL LOCATION: ")).unwrap();
    let start_lsn = start_lsn.split_whitespace().next().unwrap().to_string();
    let mut taken = 0;
    for e in fs::read_dir(s.replica.join("pg_wal")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.len() == 24 && name > start_file {
            fs::remove_file(s.replica.join("pg_wal").join(&name)).unwrap();
            taken += 1;
        }
    }
    assert!(taken > 0, "no segment after the backup's start {start_file}");
    let waiting = Postgres::standby_alone(&s.lab, &s.replica, &s.primary, "unfinished");
    std::thread::sleep(std::time::Duration::from_secs(2));
    waiting.stop_fast();
    let control = fs::read(s.replica.join("global/pg_control")).unwrap();
    let backup_start = u64::from_ne_bytes(control[152..160].try_into().unwrap());
    assert_eq!(format!("{:X}/{:X}", backup_start >> 32, backup_start & 0xFFFF_FFFF), start_lsn, "backupStartPoint");

    let mut run = s.pgclone();
    run.arg("--json");
    let r = resync(&run.run());
    assert_eq!(method(&r), "page-hashes", "{r}");
    assert!(r["why"].as_str().unwrap().contains("never reached the backup's end"), "{r}");
    s.assert_standby(&s.replica, "unfinished_again", None);
}

/// A re-sync without -R of a directory that was a standby keeps it one: its standby.signal and its own
/// postgresql.auto.conf (where its primary_conninfo lives) stay as they were, and it says so. Started as it is
/// afterwards, with nothing added, it is a standby that streams, not a second primary on the primary's
/// timeline.
#[test]
fn a_resync_without_r_keeps_a_standby_a_standby() {
    let s = Setup::new("resync-keeps-standby", &[]);
    s.primary.pgbench_init(1);
    let run = stale_standby(&s, "kept_standby", 50);
    let conf = fs::read(s.replica.join("postgresql.auto.conf")).unwrap();
    assert!(String::from_utf8_lossy(&conf).contains("primary_conninfo"), "the harness made it a standby");

    let out = run.run();
    let r = resync(&out);
    assert_eq!(r["kept"], serde_json::json!(["postgresql.auto.conf", "standby.signal"]), "{r}");
    assert!(out.stderr.contains("kept the replica's postgresql.auto.conf, standby.signal"), "{}", out.report());
    assert!(s.replica.join("standby.signal").is_file());
    assert_eq!(fs::read(s.replica.join("postgresql.auto.conf")).unwrap(), conf, "the replica's own settings");

    let port: u16 = conf_value(&String::from_utf8_lossy(&conf), "port").unwrap().parse().unwrap();
    let standby = Server::start(&s.lab, &s.replica, "kept_standby_again", port, Creds::Env);
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t", "started as a standby");
    wait_streaming(&s.primary, &standby, "kept_standby", std::time::Duration::from_secs(60));
}
