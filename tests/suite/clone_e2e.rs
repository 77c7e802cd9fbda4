//! End to end, for every supported PostgreSQL major: clone a primary that is being written to,
//! start the clone as a standby with the same major's binaries, and check it streams, catches up
//! and holds exactly the primary's data.

use crate::support::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

const STANDBY: &str = "e2e_standby"; // must not start with "pgclone": the clean check looks for those

#[test]
fn clones_pg15_primary_under_write_load() {
    clone_under_write_load(15, 10);
}

// Small datasets for the npm-packaged majors keep the whole suite short.
#[test]
fn clones_pg16_primary_under_write_load() {
    clone_under_write_load(16, 2);
}

#[test]
fn clones_pg17_primary_under_write_load() {
    clone_under_write_load(17, 2);
}

#[test]
fn clones_pg18_primary_under_write_load() {
    clone_under_write_load(18, 2);
}

/// Names of the entries of a directory of the clone, sorted; the directory must exist.
fn dir_entries(dir: &Path) -> Vec<String> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("clone lacks directory {}: {e}", dir.display()));
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Clone a PostgreSQL `major` primary with pgbench data of `scale` while pgbench writes to it.
fn clone_under_write_load(major: u32, scale: u32) {
    let started = std::time::Instant::now();
    let lab = Lab::new(&format!("e2e-pg{major}"));
    // A small max_wal_size makes the primary checkpoint and recycle WAL during the clone: the clone
    // must hold the WAL it needs itself.
    let conf = ["max_wal_size = 64MB", "min_wal_size = 32MB"];
    let primary = Postgres::primary_with(&lab, "primary", PgInstall::of(major), &conf);
    primary.pgbench_init(scale);
    let sshd = Sshd::start(&lab);

    let load = primary.pgbench_load(2);
    primary.wait_for_pgbench_writes();
    let rows_before = primary.history_rows();

    let replica = lab.path().join("replica");
    let mut run = Pgclone::new(&primary, &sshd, &replica);
    run.parallel = 4;
    run.verbose = true;
    run.timeout = Duration::from_secs(600);
    let out = run.run();
    out.assert_success();
    println!("pgclone summary: {}", out.summary_line());

    let rows_after = primary.history_rows();
    assert!(
        rows_after > rows_before,
        "no pgbench writes while pgclone ran ({rows_before} -> {rows_after} history rows)"
    );
    println!("pgbench wrote {} history rows while pgclone ran", rows_after - rows_before);
    for f in ["backup_label", "global/pg_control"] {
        assert!(replica.join(f).exists(), "clone lacks {f}");
    }
    let version = fs::read_to_string(replica.join("PG_VERSION")).expect("clone has PG_VERSION");
    assert_eq!(version.trim(), major.to_string(), "clone's PG_VERSION");
    let segments: Vec<String> = dir_entries(&replica.join("pg_wal"))
        .into_iter()
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert!(!segments.is_empty(), "clone's pg_wal holds no WAL segment");
    // As pg_basebackup -X stream does: every segment laid in is marked archived (the primary archives it).
    let done: Vec<String> = segments.iter().map(|s| format!("{s}.done")).collect();
    assert_eq!(dir_entries(&replica.join("pg_wal/archive_status")), done, "pg_wal/archive_status");
    // Like basebackup.c: from PG17 pg_wal/summaries, created empty.
    let summaries = replica.join("pg_wal/summaries");
    if major >= 17 {
        assert_eq!(dir_entries(&summaries), Vec::<String>::new(), "pg_wal/summaries");
    } else {
        assert!(!summaries.exists(), "PostgreSQL {major} has no pg_wal/summaries, the clone does");
    }
    // pgclone has ended: nothing of it may remain on the primary, even with the load still running.
    assert_primary_clean(&lab, &primary);

    let _standby = assert_standby_matches(&lab, &primary, &replica, STANDBY, Some(load));
    println!("replication: {}", primary.psql(&format!(
        "select application_name, state, sent_lsn, replay_lsn from pg_stat_replication where application_name = '{STANDBY}'"
    )));
    assert_primary_clean(&lab, &primary);
    println!("PostgreSQL {major}: end-to-end test passed in {:.1?}", started.elapsed());
}
