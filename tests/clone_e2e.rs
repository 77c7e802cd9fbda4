//! End to end: clone a primary that is being written to, start the clone as a standby, and check
//! it streams, catches up and holds exactly the primary's data.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const STANDBY: &str = "e2e_standby"; // must not start with "pgclone": the clean check looks for those

fn history_rows(pg: &Postgres) -> u64 {
    pg.psql("select count(*) from pgbench_history").parse().unwrap()
}

#[test]
fn clones_primary_under_write_load() {
    let lab = Lab::new("e2e");
    // A small max_wal_size makes the primary checkpoint and recycle WAL during the clone: the clone
    // must hold the WAL it needs itself.
    let primary = Postgres::primary(&lab, "primary", &["max_wal_size = 64MB", "min_wal_size = 32MB"]);
    primary.pgbench_init(10);
    let sshd = Sshd::start(&lab);

    let load = primary.pgbench_load(2);
    wait_for("pgbench to write", Duration::from_secs(30), || match history_rows(&primary) {
        0 => Err("no pgbench_history rows yet".to_string()),
        _ => Ok(()),
    });
    let rows_before = history_rows(&primary);

    let replica = lab.path().join("replica");
    let mut run = Pgclone::new(&primary, &sshd, &replica);
    run.parallel = 4;
    run.verbose = true;
    run.timeout = Duration::from_secs(600);
    let out = run.run();
    out.assert_success();
    println!("pgclone summary: {}", out.summary_line());

    let rows_after = history_rows(&primary);
    assert!(
        rows_after > rows_before,
        "no pgbench writes while pgclone ran ({rows_before} -> {rows_after} history rows)"
    );
    println!("pgbench wrote {} history rows while pgclone ran", rows_after - rows_before);
    for f in ["backup_label", "global/pg_control", "PG_VERSION"] {
        assert!(replica.join(f).exists(), "clone lacks {f}");
    }
    let segments = fs::read_dir(replica.join("pg_wal"))
        .expect("clone has pg_wal")
        .flatten()
        .filter(|e| e.file_name().len() == 24 && e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_hexdigit()))
        .count();
    assert!(segments > 0, "clone's pg_wal holds no WAL segment");
    // pgclone has ended: nothing of it may remain on the primary, even with the load still running.
    assert_primary_clean(&lab, &primary);

    let standby = Postgres::standby(&lab, &replica, &primary, STANDBY);
    wait_streaming(&primary, &standby, STANDBY, Duration::from_secs(120));
    stop_load(load, &primary);
    let lsn = primary.psql("select pg_current_wal_lsn()");
    wait_replayed(&primary, STANDBY, &lsn, Duration::from_secs(120));

    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    let fingerprint = primary.fingerprint();
    println!("primary fingerprint:\n{fingerprint}");
    assert_eq!(standby.fingerprint(), fingerprint, "standby's pgbench tables differ from the primary's");
    println!("replication: {}", primary.psql(&format!(
        "select application_name, state, sent_lsn, replay_lsn from pg_stat_replication where application_name = '{STANDBY}'"
    )));
    assert_primary_clean(&lab, &primary);
}
