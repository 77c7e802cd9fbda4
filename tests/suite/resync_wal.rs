//! Re-syncing by the primary's WAL block references (`wal-blocks`): where PostgreSQL keeps no WAL summaries (15,
//! 16, or 17 and 18 with summarize_wal off), the agent reads the primary's WAL from the replica's redo point to
//! the backup's start and the re-sync fetches only the blocks that WAL names, plus what block references cannot
//! vouch for: every non-relation file, every free space and visibility map whole, the whole files of databases
//! created (or moved) in that range, what lies past a truncation or past the end of the copy here. It serves a
//! cleanly stopped standby whose WAL is the primary's, with or without data checksums, and a clone pgclone made
//! that never started (its redo point is backup_label's START WAL LOCATION).
//!
//! These tests attack the shortcut: each makes the primary change pages in a way that block references alone do
//! not show (or show in an unusual shape), re-syncs, and starts the result as a standby that must stream and
//! hold the primary's data; each also asserts the method and that both hosts read little. The primaries keep
//! 1 GB of WAL (`wal_keep_size`) so the proof that the replica's WAL is the primary's, and the agent, can read it.

use super::resync::{index_only_count, pgclone_verify, resync, resync_from, run_and_stop, stale_standby};
use crate::support::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The primary keeps the WAL a stale standby's re-sync reads.
const KEEP_WAL: &str = "wal_keep_size = '1GB'";

/// A re-sync by the primary's WAL block references, without a reason for a slower method.
#[track_caller]
fn assert_wal_blocks(out: &CmdOutput, r: &Value) {
    assert_eq!(r["method"].as_str().unwrap_or_default(), "wal-blocks", "{r}\n{}", out.report());
    assert!(r["why"].is_null(), "a re-sync by WAL blocks gives no reason: {r}");
}

/// Both hosts read little: on the primary less than 1/`primary_share` of the data (the named blocks, the files
/// fetched whole), here less than a tenth (nothing needs comparing).
#[track_caller]
fn assert_small_reads(out: &CmdOutput, r: &Value, primary_share: u64) {
    let total = json_figures(out).bytes;
    let there = r["read_primary_bytes"].as_u64().unwrap_or_else(|| panic!("no read_primary_bytes: {r}"));
    let here = r["read_replica_bytes"].as_u64().unwrap_or_else(|| panic!("no read_replica_bytes: {r}"));
    println!("read {there} bytes on the primary, {here} here, of {total}");
    assert!(there * primary_share < total, "read {there} of {total} bytes on the primary: {r}");
    assert!(here * 10 < total, "read {here} of {total} bytes here: {r}");
}

/// `psql -At` in database `db` of `pg`.
fn sql_in(lab: &Lab, pg: &Postgres, db: &str, sql: &str) -> String {
    let out = lab.run(pg.client("psql", SUPERUSER).args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]));
    out.trim_end().to_string()
}

/// A table's rows: how many, and the md5 of all of them in order.
fn digest(lab: &Lab, pg: &Postgres, db: &str, table: &str) -> String {
    sql_in(
        lab,
        pg,
        db,
        &format!(
            "select count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' order by t::text)), '-') from {table} t"
        ),
    )
}

/// A table of `rows` rows (`id`, `pad`) in database `db`.
fn table_in(lab: &Lab, pg: &Postgres, db: &str, table: &str, rows: u32) {
    sql_in(
        lab,
        pg,
        db,
        &format!(
            "create table {table} (id int, pad text); \
             insert into {table} select g, md5(g::text) from generate_series(1, {rows}) g"
        ),
    );
}

/// Per heap page of `table` (pg_visibility): its visibility map bits and its own PD_ALL_VISIBLE flag.
fn visibility(pg: &Postgres, table: &str) -> String {
    pg.psql(&format!(
        "select string_agg(format('%s:%s%s%s', blkno, all_visible, all_frozen, pd_all_visible), ' ' order by blkno) \
         from pg_visibility('{table}')"
    ))
}

/// An LSN `X/Y` as a number.
fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The LSN of every page of a relation file.
fn page_lsns(file: &Path) -> Vec<u64> {
    let bytes = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let word = |p: &[u8], at: usize| u64::from(u32::from_ne_bytes(p[at..at + 4].try_into().unwrap()));
    bytes.chunks_exact(8192).map(|p| (word(p, 0) << 32) | word(p, 4)).collect()
}

/// backup_label's START WAL LOCATION.
fn label_start(replica: &Path) -> String {
    let label = fs::read_to_string(replica.join("backup_label")).expect("the clone's backup_label");
    let start = label.lines().find_map(|l| l.strip_prefix("START WAL LOCATION: ")).expect("START WAL LOCATION");
    start.split_whitespace().next().unwrap().to_string()
}

/// PostgreSQL 15 without data checksums (so page LSNs cannot be trusted and, before, every page was compared): a
/// stale standby re-syncs by WAL blocks, reading little on both hosts, and holds the primary's data. Two ways a
/// page changes that the block references alone do not show:
/// - A DELETE clears the visibility map bits of the heap pages it touches, but its WAL record names only the heap
///   block (heap_delete, visibilitymap_clear): a map kept here would still say all-visible, and an index-only
///   scan on the re-synced standby would count the deleted rows. The maps must be fetched whole.
/// - A plain VACUUM that finds nothing to freeze or prune sets PD_ALL_VISIBLE on the heap page with no record of
///   its own; without checksums (or wal_log_hints) the only record naming that page is XLOG_HEAP2_VISIBLE, as its
///   second block reference (after the map's page) with REGBUF_NO_IMAGE, no image and no LSN change. A reader
///   that takes only a record's first block, or only blocks with images, leaves the page here without the flag
///   under a map bit that says it, which after a promotion lets an update keep the bit for a changed page.
#[test]
fn a_stale_pg15_standby_without_checksums_resyncs_by_wal_blocks() {
    let s = Setup::with_install("walblocks-pg15", PgInstall::of(15), &[KEEP_WAL, "autovacuum = off"]);
    assert_eq!(s.primary.psql("show data_checksums"), "off");
    s.primary.pgbench_init(3);
    s.primary.psql("create extension pg_visibility");
    s.primary.psql("create table frozen (id int primary key, pad text)");
    s.primary.psql("insert into frozen select g, repeat('x', 50) from generate_series(1, 20000) g");
    s.primary.psql("vacuum (freeze, analyze) frozen");
    s.primary.psql("create table fresh (id int primary key, pad text)");
    s.primary.psql("insert into fresh select g, repeat('y', 50) from generate_series(1, 20000) g");
    s.primary.psql("analyze fresh");
    let fresh = s.primary.psql("select pg_relation_filepath('fresh')");
    let run = stale_standby(&s, "wal15_standby", 150);

    s.primary.psql("delete from frozen where id % 200 = 0");
    assert_eq!(index_only_count(&s.primary, "frozen"), "19900");
    s.primary.psql("vacuum fresh");
    assert_eq!(s.primary.psql("select count(*) from pg_visibility('fresh') where not pd_all_visible"), "0");
    assert_eq!(s.primary.psql("select count(*) from pg_visibility('fresh') where all_frozen"), "0", "nothing frozen");
    // The copy here has the pages without the flag (pd_flags, offset 10; PD_ALL_VISIBLE = 4).
    let mut header = [0u8; 12];
    fs::File::open(s.replica.join(&fresh)).unwrap().read_exact_at(&mut header, 0).unwrap();
    assert_eq!(u16::from_ne_bytes([header[10], header[11]]) & 4, 0, "PD_ALL_VISIBLE already set here");

    let out = run.run();
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    assert_small_reads(&out, &r, 4);
    pgclone_verify(&s.lab, &s.replica);
    let standby = s.assert_standby(&s.replica, "wal15_standby", None);
    assert_eq!(index_only_count(&standby, "frozen"), "19900", "the standby's visibility map is the primary's");
    assert_eq!(
        standby.psql("select count(*) from pg_visibility('fresh') where all_visible and not pd_all_visible"),
        "0",
        "heap pages without PD_ALL_VISIBLE under a map bit that says it"
    );
    for table in ["frozen", "fresh"] {
        assert_eq!(visibility(&standby, table), visibility(&s.primary, table), "{table}'s pages and map");
    }
}

/// PostgreSQL 16 with data checksums: while the standby is stale the primary changes files in every way block
/// references do not simply list, and the re-synced standby must hold exactly the primary's tables, catalogs
/// and databases:
/// - `TRUNCATE` after an UPDATE, then a smaller refill: the UPDATE's blocks name a relation file the TRUNCATE's
///   commit drops (a new relfilenode takes its place); a table created and filled in a transaction that rolls
///   back; an UPDATE then `DROP TABLE`. Blocks named in the WAL whose file the primary no longer has must be
///   passed over, not fetched (and the dropped files must not stay here).
/// - A VACUUM that truncates a table's empty end (XLOG_SMGR_TRUNCATE), then rows appended again: the copy here
///   is longer, and its pages past the new end hold the deleted rows as live ones. A scan reads to the file's
///   end, so they would come back.
/// - `ALTER TABLE SET TABLESPACE`, `VACUUM FULL` (new relfilenodes, logged page by page), and `VACUUM FULL
///   pg_class` (a mapped catalog: its new file is named only in pg_filenode.map, a non-relation file).
/// - `CREATE INDEX ... USING gin`: the build writes the index unlogged and logs it afterwards with
///   log_newpage_range, up to 32 block references in one record.
/// - A multixact (a row locked FOR KEY SHARE, then updated in a subtransaction): the old row version's xmax is a
///   multixact whose update XID lives only in pg_multixact, a non-relation file; kept stale here, the old
///   version would show beside the new one.
/// - `CREATE DATABASE ... STRATEGY FILE_COPY` copies the template's files without logging a block of them; a
///   database dropped and created again under the same OID that way from template1 has files under the old
///   names with other contents (the old one's pg_class lists a table the new one lacks); `ALTER DATABASE SET
///   TABLESPACE` to another tablespace and back copies files unlogged too, and the UPDATE made in between names
///   blocks in the other tablespace, so the files back under base/ are changed by no block reference. Each
///   such database must be fetched whole. `STRATEGY WAL_LOG` logs every page and must come out equal as well.
#[test]
fn wal_blocks_follow_truncations_drops_file_copies_and_rewrites_on_pg16() {
    let s =
        Setup::with_initdb("walblocks-ddl", PgInstall::of(16), &["--data-checksums"], &[KEEP_WAL, "autovacuum = off"]);
    let p = &s.primary;
    let sql = |db: &str, q: &str| sql_in(&s.lab, p, db, q);
    p.pgbench_init(5);
    let ts = s.lab.mkdir("ts");
    let ts_here = s.lab.path().join("ts replica");
    p.psql(&format!("create tablespace ts location '{}'", ts.display()));
    for table in ["refilled", "shrunk", "dropped", "moved", "packed"] {
        table_in(&s.lab, p, "postgres", table, 20000);
    }
    p.psql("create table docs (id int, tags int[])");
    p.psql("insert into docs select g, array[g % 10, g % 13] from generate_series(1, 20000) g");
    p.psql("create table locked (id int primary key, pad text)");
    p.psql("insert into locked select g, 'before' from generate_series(1, 100) g");
    p.psql("create database tmpl");
    table_in(&s.lab, p, "tmpl", "seed", 20000);
    p.psql("create database reborn");
    sql("reborn", "create table only_in_the_old as select g from generate_series(1, 50000) g");
    let reborn_oid = p.psql("select oid from pg_database where datname = 'reborn'");
    let old_file = sql("reborn", "select pg_relation_filepath('only_in_the_old')");
    p.psql("create database wander");
    table_in(&s.lab, p, "wander", "w", 20000);
    let dropped_file = p.psql("select pg_relation_filepath('dropped')");

    let mut run = s.pgclone();
    run.args(["--json", "-T", &format!("{}={}", ts.display(), ts_here.display())]);
    run.run().assert_success();
    run_and_stop(&s, "ddl_standby");

    p.pgbench_transactions(100);
    p.psql("update refilled set pad = 'changed' where id % 10 = 0");
    p.psql("truncate refilled");
    p.psql("insert into refilled select g, 'refilled' from generate_series(1, 3000) g");
    let long = p.psql("select pg_relation_size('shrunk')").parse::<u64>().unwrap();
    p.psql("delete from shrunk where id > 5000");
    p.psql("vacuum shrunk");
    let short = p.psql("select pg_relation_size('shrunk')").parse::<u64>().unwrap();
    assert!(short * 2 < long, "VACUUM truncated shrunk from {long} to {short} bytes only");
    p.psql("insert into shrunk select g, 'after the truncation' from generate_series(20001, 21000) g");
    p.psql("update dropped set pad = 'changed' where id % 7 = 0");
    p.psql("drop table dropped");
    p.psql("begin; create table aborted as select g from generate_series(1, 20000) g; rollback");
    p.psql("alter table moved set tablespace ts");
    p.psql("delete from packed where id % 2 = 0");
    p.psql("vacuum full packed");
    p.psql("create index docs_tags on docs using gin (tags)");
    let pg_class = p.psql("select pg_relation_filenode('pg_class')");
    p.psql("vacuum full pg_class");
    assert_ne!(p.psql("select pg_relation_filenode('pg_class')"), pg_class, "pg_class rewritten");
    p.psql(
        "begin; select id from locked where id = 1 for key share; \
         savepoint s; update locked set pad = 'after' where id = 1; commit",
    );
    assert_eq!(p.psql("select count(*) from pg_get_multixact_members('1')"), "2", "a multixact of locker and updater");
    p.psql("create database copied template tmpl strategy file_copy");
    p.psql("create database logged template tmpl strategy wal_log");
    p.psql("drop database reborn");
    p.psql(&format!("create database reborn oid {reborn_oid} strategy file_copy template template1"));
    p.psql("alter database wander set tablespace ts");
    sql("wander", "update w set pad = 'while away' where id % 3 = 0");
    p.psql("alter database wander set tablespace pg_default");

    let out = run.run();
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    assert_small_reads(&out, &r, 2);
    let size_here = |f: &str| fs::metadata(s.replica.join(f)).map_or(0, |m| m.len());
    assert_eq!(size_here(&dropped_file), 0, "the dropped table's {dropped_file} is still here");
    assert_eq!(size_here(&old_file), 0, "the old reborn's {old_file} is still here");
    pgclone_verify(&s.lab, &s.replica);

    let standby = s.assert_standby(&s.replica, "ddl_standby", None);
    let both = |db: &str, q: &str| (sql_in(&s.lab, &standby, db, q), sql_in(&s.lab, p, db, q));
    for (db, table) in [
        ("postgres", "refilled"),
        ("postgres", "shrunk"),
        ("postgres", "moved"),
        ("postgres", "packed"),
        ("postgres", "docs"),
        ("postgres", "locked"),
        ("copied", "seed"),
        ("logged", "seed"),
        ("wander", "w"),
    ] {
        let (here, there) = (digest(&s.lab, &standby, db, table), digest(&s.lab, p, db, table));
        assert_eq!(here, there, "{db}.{table} on the standby");
        let (here, there) = both(db, &format!("select pg_relation_size('{table}')"));
        assert_eq!(here, there, "{db}.{table}'s size on the standby");
    }
    assert_eq!(
        sql_in(&s.lab, &standby, "postgres", "select count(*) || ' ' || max(pad) from locked where id = 1"),
        "1 after",
        "one version of the row locked and updated"
    );
    let gin = "select count(*) from docs where tags @> array[7]";
    let (here, there) = both("postgres", &format!("set enable_seqscan = off; {gin}"));
    assert_eq!(here.lines().last(), there.lines().last(), "rows found through the GIN index");
    let plan = sql_in(&s.lab, &standby, "postgres", &format!("set enable_seqscan = off; explain {gin}"));
    assert!(plan.contains("docs_tags"), "the standby's plan uses the GIN index: {plan}");
    assert!(sql_in(&s.lab, &standby, "postgres", "select pg_relation_filepath('moved')").starts_with("pg_tblspc/"));
    for db in ["postgres", "copied", "logged", "reborn", "wander", "tmpl"] {
        let catalog = "select count(*) || ' ' || md5(string_agg(relname || ':' || relfilenode, ',' order by relname)) \
                       from pg_class";
        let (here, there) = both(db, catalog);
        assert_eq!(here, there, "pg_class of {db} on the standby");
    }
    assert_eq!(
        sql_in(&s.lab, &standby, "reborn", "select count(*) from pg_class where relname = 'only_in_the_old'"),
        "0"
    );
    let databases = "select string_agg(datname || ':' || oid || ':' || dattablespace, ',' order by datname) \
                     from pg_database";
    assert_eq!(standby.psql(databases), p.psql(databases));
}

/// PostgreSQL 15 without checksums: a clone pgclone made and nobody started (its backup_label still there,
/// before, compared page by page) re-syncs by WAL blocks from backup_label's START WAL LOCATION after pgbench
/// writes on the primary, reads little, and starts as a standby with the primary's data.
#[test]
fn a_never_started_clone_resyncs_by_wal_blocks_from_its_backup_label() {
    let s = Setup::with_install("walblocks-unstarted", PgInstall::of(15), &[KEEP_WAL]);
    s.primary.pgbench_init(3);
    let mut run = s.pgclone();
    run.arg("--json");
    assert_eq!(resync(&run.run()), Value::Null, "a fresh clone is no re-sync");
    let first = label_start(&s.replica);
    s.primary.pgbench_transactions(150);

    let out = run.run();
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    assert_small_reads(&out, &r, 4);
    assert!(lsn(&label_start(&s.replica)) > lsn(&first), "the re-sync's backup_label is its own");
    pgclone_verify(&s.lab, &s.replica);
    s.assert_standby(&s.replica, "unstarted_standby", None);
}

/// A never-started clone whose copy spanned writes and a checkpoint: pgbench writes while the copy runs (pages
/// copied before a write hold the older version), then `CREATE DATABASE ... STRATEGY FILE_COPY` (which
/// checkpoints, and copies the template's files without logging their blocks), then the copy ends. The clone's
/// pg_control, fetched after the backup's stop, then has a redo point past backup_label's START WAL LOCATION:
/// a re-sync that started reading WAL there, rather than at the backup's start, would miss the writes to pages
/// already copied and the database's creation. Re-synced without a start in between, it must hold the
/// primary's pgbench data and the new database's table.
#[test]
fn a_never_started_clone_copied_across_a_checkpoint_and_a_file_copy_resyncs_from_its_backup_start() {
    let s = Setup::with_install("walblocks-unstarted-cp", PgInstall::of(15), &[KEEP_WAL]);
    s.primary.pgbench_init(3);
    s.primary.psql("create database tmpl");
    table_in(&s.lab, &s.primary, "tmpl", "seed", 20000);
    let size: u64 = s.primary.psql("select sum(pg_database_size(oid)) from pg_database").parse().unwrap();

    let mut first = s.pgclone();
    first.arg("--json");
    let mut slow = first.spawn_slowly("8M");
    // Writes at a modest rate, so that some pages are written after their copy and few twice.
    let mut writes = s.primary.client("pgbench", SUPERUSER);
    writes.args(["-n", "-c", "2", "-j", "2", "-R", "40", "-T", "600", "postgres"]);
    let load = s.lab.spawn("slow-writes", writes);
    let began = Instant::now();
    wait_for("most of the copy", Duration::from_secs(60), || match dir_bytes(&s.replica.join("base")) {
        n if n * 5 > size * 3 => Ok(()),
        n => Err(format!("{n} of {size} bytes copied")),
    });
    stop_load(load, &s.primary);
    println!("writes during the copy's first {:.1?}", began.elapsed());
    assert!(slow.is_running(), "the copy ended before the database was created: slow it down");
    s.primary.psql("create database copied template tmpl strategy file_copy");
    let out = slow.wait();
    assert_eq!(resync(&out), Value::Null);
    let start = label_start(&s.replica);
    let controldata = s.lab.run(s.lab.cmd(Path::new(PG15_BIN).join("pg_controldata")).arg(&s.replica));
    let redo = controldata.lines().find_map(|l| l.strip_prefix("Latest checkpoint's REDO location:")).unwrap();
    println!("backup_label START WAL LOCATION {start}, pg_control's REDO {}", redo.trim());
    let (start, redo) = (lsn(&start), lsn(redo));
    assert!(redo > start, "no checkpoint during the copy: the test proves nothing");
    assert!(s.replica.join("backup_label").exists());
    // Pages the copy took before a write that came before pg_control's redo point, and that nothing wrote since:
    // what WAL from that redo point on does not name.
    s.primary.psql("checkpoint");
    let accounts = s.primary.psql("select pg_relation_filepath('pgbench_accounts')");
    let (here, there) = (page_lsns(&s.replica.join(&accounts)), page_lsns(&s.primary.data.join(&accounts)));
    let behind = here.iter().zip(&there).filter(|(h, t)| (start..redo).contains(*t) && h < t).count();
    println!("{behind} pgbench_accounts pages here miss a write made between the backup's start and pg_control's redo");
    assert!(behind > 0, "no page copied before a write made before pg_control's redo: the test proves nothing");

    sql_in(&s.lab, &s.primary, "copied", "insert into seed select g, 'later' from generate_series(20001, 21000) g");
    s.primary.pgbench_transactions(50);
    let mut run = s.pgclone();
    run.arg("--json");
    let out = run.run();
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    assert_small_reads(&out, &r, 2);
    pgclone_verify(&s.lab, &s.replica);
    let standby = s.assert_standby(&s.replica, "unstarted_cp_standby", None);
    assert_eq!(digest(&s.lab, &standby, "copied", "seed"), digest(&s.lab, &s.primary, "copied", "seed"));
}

/// A failover while the standby was stale: the WAL from its redo point to the re-sync's backup start begins on
/// timeline 1 (the old primary's writes after the standby stopped, streamed to the other standby) and goes on
/// on timeline 2 (what the promoted one wrote since). Its block references must be read along the new primary's
/// timeline history, through the segment of the switch (which the new primary holds on timeline 2); reading
/// timeline 2 alone from the redo point finds nothing, and stopping at the switch misses what came after. The
/// re-synced standby follows the new primary with its data.
#[test]
fn a_stale_standby_resyncs_by_wal_blocks_across_a_timeline_switch() {
    let s = Setup::with_install("walblocks-failover", PgInstall::of(16), &[KEEP_WAL]);
    s.primary.pgbench_init(3);
    s.pgclone().run().assert_success();
    s.pgclone_into("b").run().assert_success();
    let b = s.assert_standby(&s.lab.path().join("b"), "b", None);
    run_and_stop(&s, "a");
    s.primary.pgbench_transactions(100);
    s.primary.psql("create table before_the_switch as select generate_series(1, 10000) g");
    let lsn = s.primary.psql("select pg_current_wal_lsn()");
    wait_replayed(&s.primary, "b", &lsn, Duration::from_secs(60));
    s.primary.stop_fast();
    b.promote();
    assert_eq!(b.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), "00000002", "timeline 2");
    b.pgbench_transactions(100);
    b.psql("create table after_the_switch as select generate_series(1, 10000) g");

    let out = resync_from(&s, &b, &s.replica);
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    assert_small_reads(&out, &r, 4);
    let a = assert_standby_matches(&s.lab, &b, &s.replica, "a_again", None);
    assert_eq!(a.psql("select count(*) from before_the_switch"), "10000");
    assert_eq!(a.psql("select count(*) from after_the_switch"), "10000");
}

/// PostgreSQL 16 with checksums, `wal_keep_size = 0`: the standby stays stale across several WAL switches and
/// checkpoints, which recycle the WAL from its redo point on. Nothing can read the block references any more
/// (nor prove the standby's WAL the primary's), so the re-sync must not claim `wal-blocks`: it compares, says the
/// primary no longer has that WAL, and the standby still comes out with the primary's data.
#[test]
fn a_standby_stale_past_the_primarys_wal_is_compared_and_says_why() {
    let s = Setup::with_initdb("walblocks-gone", PgInstall::of(16), &["--data-checksums"], &["wal_keep_size = 0"]);
    s.primary.pgbench_init(2);
    let run = stale_standby(&s, "gone_standby", 50);
    for _ in 0..3 {
        s.primary.pgbench_transactions(30);
        s.primary.psql("select pg_switch_wal()");
        s.primary.psql("checkpoint");
    }
    let out = run.run();
    let r = resync(&out);
    let method = r["method"].as_str().unwrap_or_default();
    assert!(matches!(method, "page-hashes" | "page-lsns"), "{r}\n{}", out.report());
    let why = r["why"].as_str().unwrap_or_default();
    assert!(why.contains("no longer has it"), "{r}");
    assert!(why.contains("has already been removed"), "the server's reason: {r}");
    s.assert_standby(&s.replica, "gone_standby", None);
}

/// PostgreSQL 18 (data checksums on by default): with summarize_wal off, WAL blocks are preferred to page LSNs
/// (which read every page on the primary); with summaries on and covering the standby's redo point, they stay
/// preferred to WAL blocks. Each time the standby holds the primary's data.
#[test]
fn on_pg18_wal_blocks_replace_page_lsns_and_wal_summaries_stay_preferred() {
    let s = Setup::with_install("walblocks-pg18", PgInstall::of(18), &[KEEP_WAL, "summarize_wal = off"]);
    assert_eq!(s.primary.psql("show data_checksums"), "on", "PostgreSQL 18's default");
    s.primary.pgbench_init(3);
    let run = stale_standby(&s, "pg18_standby", 100);
    let out = run.run();
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    assert_small_reads(&out, &r, 4);

    s.primary.psql("alter system set summarize_wal = on");
    s.primary.psql("select pg_reload_conf()");
    run_and_stop(&s, "pg18_standby");
    s.primary.pgbench_transactions(100);
    let out = run.run();
    let r = resync(&out);
    assert_eq!(r["method"], "wal-summaries", "{r}\n{}", out.report());
    s.assert_standby(&s.replica, "pg18_standby", None);
}

/// The replica's redo point (pg_controldata's), and the primary's last checkpoint's (where a slot created now
/// reserves WAL from), as LSNs.
fn redo_points(s: &Setup) -> (u64, u64) {
    let controldata = s.lab.run(s.lab.cmd(Path::new(PG15_BIN).join("pg_controldata")).arg(&s.replica));
    let replica = controldata.lines().find_map(|l| l.strip_prefix("Latest checkpoint's REDO location:")).unwrap();
    (lsn(replica), lsn(&s.primary.psql("select redo_lsn from pg_control_checkpoint()")))
}

/// The backup starts while ssh logs in, before the re-sync reads the primary's WAL from the replica's redo point,
/// only where its checkpoint cannot take that WAL. With `wal_keep_size = 0` and no checkpoint on the primary since
/// the standby's last restartpoint, only the stream's slot keeps it: the slot reserves WAL from the primary's last
/// redo point, which is the replica's, and must confirm no flush position until the WAL is read. The primary
/// writes during the re-sync, so the stream receives WAL at once and would confirm it (moving the slot to the
/// stream's start) before the checkpoint ends. Several WAL switches since make the checkpoint remove or recycle
/// those segments if nothing held them; the re-sync must still go by WAL blocks, without a word about starting
/// late.
#[test]
fn the_backups_early_checkpoint_keeps_the_wal_a_resync_reads() {
    let s = Setup::with_install("walblocks-early", PgInstall::of(15), &["wal_keep_size = 0"]);
    s.primary.pgbench_init(2);
    let run = stale_standby(&s, "early_standby", 30);
    for _ in 0..3 {
        s.primary.pgbench_transactions(20);
        s.primary.psql("select pg_switch_wal()");
    }
    let (replica, primary) = redo_points(&s);
    assert!(
        replica >= primary,
        "the primary checkpointed after the standby's last restartpoint: {replica:x} < {primary:x}"
    );
    let mut writes = s.primary.client("pgbench", SUPERUSER);
    writes.args(["-n", "-c", "2", "-j", "2", "-R", "100", "-T", "600", "postgres"]);
    let load = s.lab.spawn("writes", writes);
    std::thread::sleep(Duration::from_millis(500));
    let out = run.run();
    stop_load(load, &s.primary);
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    assert!(!out.stderr.contains("the backup starts after"), "the backup started late\n{}", out.report());
    s.assert_standby(&s.replica, "early_standby", None);
}

/// When neither the stream's slot nor wal_keep_size keeps the WAL from the replica's redo point through a
/// checkpoint that starts now, the backup starts only once the re-sync has read it, and says why. The primary
/// keeps 64 MB of WAL; it checkpoints once after the standby stopped (its slot would then reserve WAL from after
/// the replica's redo point; wal_keep_size still keeps that point), then writes 64 MB more: a checkpoint now would
/// move wal_keep_size's horizon past the replica's redo point. The re-sync must still go by WAL blocks.
#[test]
fn the_backup_starts_after_the_resync_read_wal_nothing_else_keeps() {
    let s = Setup::with_install("walblocks-late", PgInstall::of(15), &["wal_keep_size = 64MB"]);
    s.primary.pgbench_init(2);
    let run = stale_standby(&s, "late_standby", 30);
    s.primary.psql("select pg_switch_wal()");
    s.primary.psql("checkpoint");
    for _ in 0..5 {
        s.primary.pgbench_transactions(20);
        s.primary.psql("select pg_switch_wal()");
    }
    let (replica, primary) = redo_points(&s);
    assert!(replica < primary, "the primary did not checkpoint after the standby's last restartpoint");
    let out = run.run();
    let r = resync(&out);
    assert_wal_blocks(&out, &r);
    let line = out.stderr.lines().find(|l| l.contains("the backup starts after")).unwrap_or_else(|| {
        panic!("no word of the backup starting late\n{}", out.report());
    });
    assert!(line.contains("wal_keep_size (67.1 MB)"), "{line}");
    println!("{line}");
    s.assert_standby(&s.replica, "late_standby", None);
}
