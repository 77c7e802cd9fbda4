//! Every flag a pgclone.sh user relies on, and re-runs into an existing replica, against real servers:
//! each clone is started as a standby and compared with the primary.

use crate::support::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Names of WAL segment files (24 hex digits) in `dir`.
fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Tablespaces and odd paths
// ---------------------------------------------------------------------------------------------

/// Tablespace `ts` at `location` holding table `ts_table`; returns the tablespace's oid.
fn tablespace_with_table(primary: &Postgres, location: &Path) -> String {
    primary.psql(&format!("create tablespace ts location '{}'", location.display()));
    primary.psql("create table ts_table tablespace ts as select g, md5(g::text) as h from generate_series(1, 20000) g");
    primary.psql("select oid from pg_tablespace where spcname = 'ts'")
}

fn ts_table_digest(pg: &Postgres) -> String {
    pg.psql("select count(*) || ' ' || md5(string_agg(h, ',' order by g)) from ts_table")
}

/// The clone's tablespace `oid` links to `location`, tablespace_map names it, the clone starts as a
/// matching standby and its `ts_table` equals the primary's.
fn assert_tablespace_clone(lab: &Lab, primary: &Postgres, replica: &Path, oid: &str, location: &Path, name: &str) {
    let link = fs::read_link(replica.join("pg_tblspc").join(oid)).expect("the clone's pg_tblspc/<oid> link");
    assert_eq!(link, location, "pg_tblspc/{oid} in the clone");
    let map = fs::read_to_string(replica.join("tablespace_map")).expect("the clone's tablespace_map");
    assert_eq!(map.trim_end(), format!("{oid} {}", location.display()), "tablespace_map");
    let version_dirs = entries_starting_with(location, "PG_");
    assert_eq!(version_dirs.len(), 1, "{} should hold one PG_<major>_* dir: {version_dirs:?}", location.display());
    println!("pg_tblspc/{oid} -> {}; tablespace_map: {}", link.display(), map.trim_end());
    let standby = assert_standby_matches(lab, primary, replica, name, None);
    let digest = ts_table_digest(primary);
    assert_eq!(ts_table_digest(&standby), digest, "ts_table on {name}");
    println!("ts_table on {name} equals the primary's: {digest}");
}

#[test]
fn tablespace_goes_to_the_mapped_location_and_by_default_to_the_same_path() {
    let s = Setup::with_pgbench("tblspc", 1);
    let ts = s.lab.mkdir("ts dir");
    let oid = tablespace_with_table(&s.primary, &ts);
    let new = s.lab.path().join("new ts dir");
    let mut run = s.pgclone();
    run.args(["-T", &format!("{}={}", ts.display(), new.display())]);
    let out = run.run();
    out.assert_success();
    println!("{}", out.summary_line());
    assert_primary_clean(&s.lab, &s.primary);
    assert_tablespace_clone(&s.lab, &s.primary, &s.replica, &oid, &new, "tblspc_standby");

    // Without -T the clone puts the tablespace at the primary's own path. On this single machine that is
    // the primary's live tablespace, so a full clone there is impossible; pgclone's refusal names the path
    // it would use, which shows the default.
    let replica = s.lab.path().join("replica default");
    let digest = ts_table_digest(&s.primary);
    let out = Pgclone::new(&s.primary, &s.sshd, &replica).run();
    out.assert_error(&format!("tablespace location {} is not empty", ts.display()));
    assert_clean_after_error(&s.lab, &s.primary, &replica);
    assert_eq!(ts_table_digest(&s.primary), digest, "the primary's ts_table after the refused run");
    assert_eq!(entries_starting_with(&ts, "PG_").len(), 1, "the primary's tablespace dir changed");
}

/// A tablespace location is shared with the clusters of other majors, each in its own `PG_<major>_*` directory:
/// a re-sync prunes only this cluster's (before, another cluster's directory there was deleted). A mapping that
/// moves the tablespace elsewhere is refused before anything changes, naming the copy left at the old place; a
/// non-empty location this replica does not use is refused too. Once the old copy is gone, the move clones.
#[test]
fn a_resync_touches_only_its_own_version_directory_in_a_tablespace_location() {
    let s = Setup::with_pgbench("tblspc-shared", 1);
    let ts = s.lab.mkdir("ts");
    let oid = tablespace_with_table(&s.primary, &ts);
    let map = |to: &Path| format!("{}={}", ts.display(), to.display());
    let (first, second) = (s.lab.path().join("ts first"), s.lab.path().join("ts second"));
    s.pgclone().args(["-T", &map(&first)]).run().assert_success();
    let ours = entries_starting_with(&first, "PG_15_");
    assert_eq!(ours.len(), 1, "{ours:?}");
    let other = first.join("PG_16_202307071/16384");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("16400"), "another cluster's").unwrap();
    for p in [other.parent().unwrap(), &other, &other.join("16400")] {
        s.lab.chown(p);
    }

    s.pgclone().args(["-T", &map(&first)]).run().assert_success();
    assert_eq!(fs::read_to_string(other.join("16400")).unwrap(), "another cluster's");

    let busy = s.lab.mkdir("ts busy");
    fs::write(busy.join("something"), "x").unwrap();
    s.pgclone()
        .args(["-T", &map(&busy)])
        .run()
        .assert_refused(&format!("tablespace location {} is not empty", busy.display()));
    let out = s.pgclone().args(["-T", &map(&second)]).run();
    out.assert_refused(&format!("remove {} (a stale copy of it)", ours[0].display()));
    assert!(s.replica.join("global/pg_control").exists(), "a refused run changes nothing");

    fs::remove_dir_all(&ours[0]).unwrap();
    s.pgclone().args(["-T", &map(&second)]).run().assert_success();
    assert_eq!(fs::read_to_string(other.join("16400")).unwrap(), "another cluster's");
    assert_tablespace_clone(&s.lab, &s.primary, &s.replica, &oid, &second, "tblspc_moved");
}

#[test]
fn paths_with_spaces_and_umlauts_clone_with_1_and_16_workers() {
    let lab = Lab::new("paths");
    let primary = Postgres::primary(&lab, "primary data ü dir", &[]);
    primary.pgbench_init(2);
    let ts = lab.mkdir("ts ü dir");
    let oid = tablespace_with_table(&primary, &ts);
    let sshd = Sshd::start(&lab);
    for parallel in [1, 16] {
        let replica = lab.path().join(format!("replica {parallel} ü dir"));
        let new = lab.path().join(format!("ts {parallel} ü new"));
        let mut run = Pgclone::new(&primary, &sshd, &replica);
        run.parallel = parallel;
        run.args(["-T", &format!("{}={}", ts.display(), new.display())]);
        let out = run.run();
        out.assert_success();
        println!("--parallel {parallel}: {}", out.summary_line());
        assert_primary_clean(&lab, &primary);
        assert_tablespace_clone(&lab, &primary, &replica, &oid, &new, &format!("paths_{parallel}"));
    }
}

#[test]
fn clones_a_de_de_primary_under_lang_de_de_and_under_lc_all_c() {
    const LOCALE: &str = "de_DE.UTF-8";
    if !locale_available(LOCALE) {
        println!("NOTE: skipped: locale {LOCALE} is not installed (scripts/install-deps.sh generates it as root)");
        return;
    }
    let lab = Lab::new("locale");
    let primary = Postgres::primary_in_locale(&lab, "primary", LOCALE, &[]);
    primary.pgbench_init(2);
    let grouped = primary.psql("select current_setting('lc_numeric') || ': ' || to_char(1234567.5, '9G999G999D9')");
    println!("primary's numbers: {grouped}");
    assert!(grouped.ends_with("1.234.567,5"), "the primary should group digits the German way: {grouped}");
    let sshd = Sshd::start(&lab);
    let runs: [(&str, &[(&str, &str)]); 2] =
        [("de", &[("LANG", LOCALE), ("LC_ALL", LOCALE)]), ("c", &[("LC_ALL", "C")])];
    for (name, env) in runs {
        let replica = lab.path().join(format!("replica_{name}"));
        let mut run = Pgclone::new(&primary, &sshd, &replica);
        for (k, v) in env {
            run.env(k, Some(v));
        }
        let out = run.run();
        out.assert_success();
        println!("{env:?}: {}", out.summary_line());
        assert_primary_clean(&lab, &primary);
        assert_standby_matches(&lab, &primary, &replica, &format!("locale_{name}"), None);
    }
}

// ---------------------------------------------------------------------------------------------
// WAL directories and the run directory
// ---------------------------------------------------------------------------------------------

#[test]
fn replica_waldir_becomes_the_target_of_pg_wal() {
    let s = Setup::with_pgbench("waldir", 1);
    let waldir = s.lab.path().join("wal ü dir");
    let mut run = s.pgclone();
    run.arg("--replica-waldir").arg(&waldir);
    run.run().assert_success();
    assert_primary_clean(&s.lab, &s.primary);
    let link = fs::read_link(s.replica.join("pg_wal")).expect("the clone's pg_wal should be a symlink");
    assert_eq!(link, waldir, "pg_wal's target");
    let segs = segments(&waldir);
    println!("pg_wal -> {}, holding {segs:?}", link.display());
    assert!(!segs.is_empty(), "{} holds no WAL segment", waldir.display());
    let _standby = s.assert_standby(&s.replica, "waldir_standby", None);
    assert_eq!(fs::read_link(s.replica.join("pg_wal")).ok(), Some(waldir), "pg_wal after the standby started");
}

/// Relative path → contents (None for a directory) of everything under `dir`.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

#[test]
fn temp_waldir_is_used_and_its_other_contents_are_left_alone() {
    const JUNK: &[u8] = b"junk, not WAL: pgclone must neither use nor remove this\n";
    let s = Setup::with_pgbench("tempwal", 1);
    let dir = s.lab.mkdir("temp wal");
    s.lab.write(dir.join("000000010000000000000001"), std::str::from_utf8(JUNK).unwrap());
    s.lab.write(dir.join("notes.txt"), "keep me\n");
    s.lab.mkdir("temp wal/old");
    s.lab.write(dir.join("old/000000010000000000000002"), std::str::from_utf8(JUNK).unwrap());
    let before = tree(&dir);

    let mut run = s.pgclone();
    run.arg("--temp-waldir").arg(&dir);
    let running = run.spawn_slowly("8M");
    let private = wait_for("WAL in a private pgclone-* dir under --temp-waldir", Duration::from_secs(20), || {
        let dirs = entries_starting_with(&dir, "pgclone-");
        match dirs.as_slice() {
            [d] if fs::read_dir(d).map_or(0, |e| e.count()) > 0 => Ok(d.clone()),
            _ => Err(format!("{dirs:?}")),
        }
    });
    let during: Vec<String> =
        fs::read_dir(&private).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    println!("during the copy {} holds {during:?}", private.display());
    running.wait().assert_success();
    assert_primary_clean(&s.lab, &s.primary);

    assert_eq!(tree(&dir), before, "{} differs from what the test put there", dir.display());
    println!("{} holds exactly the garbage again: {:?}", dir.display(), before.keys().collect::<Vec<_>>());
    let wal = s.replica.join("pg_wal");
    for seg in segments(&wal) {
        assert_ne!(fs::read(wal.join(&seg)).unwrap(), JUNK, "the clone's pg_wal/{seg} is the test's junk");
    }
    println!("the clone's pg_wal: {:?}", segments(&wal));
    s.assert_standby(&s.replica, "tempwal_standby", None);
}

#[test]
fn keep_run_tmp_keeps_the_run_dir_and_the_default_removes_it() {
    let s = Setup::new("keeptmp", &[]);
    s.pgclone().run().assert_success();
    assert_eq!(
        entries_starting_with(&s.lab.tmpdir(), "pgclone-"),
        Vec::<PathBuf>::new(),
        "run dir after a default run"
    );

    let mut run = s.pgclone_into("replica kept");
    run.arg("--keep-run-tmp");
    let out = run.run();
    out.assert_success();
    let kept = entries_starting_with(&s.lab.tmpdir(), "pgclone-");
    assert_eq!(kept.len(), 1, "expected one kept run dir in {}: {kept:?}", s.lab.tmpdir().display());
    let contents: Vec<String> =
        fs::read_dir(&kept[0]).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    println!("kept {} holding {contents:?}", kept[0].display());
    assert!(!contents.is_empty(), "the kept run dir is empty");
    assert!(out.stderr.contains(&kept[0].display().to_string()), "pgclone did not say where it kept the run dir");
    fs::remove_dir_all(&kept[0]).unwrap();
    assert_primary_clean(&s.lab, &s.primary);
}

// ---------------------------------------------------------------------------------------------
// --drop-existing
// ---------------------------------------------------------------------------------------------

#[test]
fn drop_existing_replaces_another_cluster_and_garbage_which_is_refused_without_it() {
    let s = Setup::with_pgbench("drop", 1);
    let other = Postgres::primary(&s.lab, "other", &[]);
    let other_id = other.psql("select system_identifier from pg_control_system()");
    let dir = other.data.clone();
    drop(other);
    s.lab.write(dir.join("garbage.txt"), "garbage\n");
    s.lab.mkdir("other/junk dir");
    s.lab.write(dir.join("junk dir/x"), "x\n");
    let control = fs::read(dir.join("global/pg_control")).unwrap();

    let mut run = s.pgclone();
    run.replica_pgdata = dir.clone();
    run.run().assert_error("holds a different cluster");
    assert!(dir.join("garbage.txt").exists() && dir.join("junk dir/x").exists(), "the refused run removed garbage");
    assert_eq!(fs::read(dir.join("global/pg_control")).unwrap(), control, "the refused run changed pg_control");
    assert_primary_clean(&s.lab, &s.primary);
    println!("without --drop-existing the cluster {other_id} in {} was refused and left alone", dir.display());

    run.arg("--drop-existing");
    let out = run.run();
    out.assert_success();
    println!("{}", out.summary_line());
    assert!(!dir.join("garbage.txt").exists() && !dir.join("junk dir").exists(), "garbage survived --drop-existing");
    assert_primary_clean(&s.lab, &s.primary);
    let standby = s.assert_standby(&dir, "drop_standby", None);
    assert_eq!(
        standby.psql("select system_identifier from pg_control_system()"),
        s.primary.psql("select system_identifier from pg_control_system()")
    );
}

// ---------------------------------------------------------------------------------------------
// --limit-net-bw, --progress
// ---------------------------------------------------------------------------------------------

#[test]
fn limit_net_bw_is_a_lower_bound_on_the_copy_time() {
    const RATE: f64 = (2 << 20) as f64;
    let s = Setup::new("bwlimit", &[]); // a fresh cluster: about 23 MB
    let mut run = s.pgclone();
    // The budget counts wire bytes: without compression they are the data's.
    run.args(["--limit-net-bw", "2M", "--compress", "none"]);
    let started = Instant::now();
    let out = run.run();
    let took = started.elapsed().as_secs_f64();
    out.assert_success();
    assert_primary_clean(&s.lab, &s.primary);
    // Everything but pg_wal (streamed over the replication connection) came through the limited copy.
    let bytes = dir_bytes(&s.replica) - dir_bytes(&s.replica.join("pg_wal"));
    let budget = bytes as f64 / RATE;
    println!("{bytes} bytes at 2 MiB/s need {budget:.1} s; pgclone took {took:.1} s: {}", out.summary_line());
    assert!(bytes > 15_000_000, "precondition: at least 15 MB to copy, found {bytes}");
    assert!(took >= 0.9 * budget, "{bytes} bytes in {took:.1} s is faster than 2 MiB/s allows ({budget:.1} s)");
}

#[test]
fn limit_net_bw_below_the_minimum_is_a_usage_error() {
    let lab = Lab::new("bwmin");
    let out = run_bounded(
        lab.cmd(lab.pgclone_bin()).args(["--primary-pgdata", "/nonexistent", "--limit-net-bw", "1000"]),
        Duration::from_secs(30),
    );
    println!("exit {}: {}", out.status, out.stderr.trim());
    assert_eq!(out.status.code(), Some(2), "a bad flag value should exit 2\n{}", out.report());
    assert!(out.stderr.contains("minimum") && out.stderr.contains("10000"), "{}", out.report());
}

fn progress_lines(out: &CmdOutput) -> Vec<String> {
    let all = format!("{}\n{}", out.stdout, out.stderr);
    all.lines().filter(|l| l.contains("copied") || l.contains("ETA")).map(str::to_string).collect()
}

#[test]
fn progress_plain_prints_lines_and_progress_none_prints_none() {
    let s = Setup::new("progress", &[]); // a fresh cluster: about 23 MB, 6 s at 4 MiB/s
    let mut run = s.pgclone();
    run.verbose = false;
    run.args(["--compress", "none", "--limit-net-bw", "4M", "--progress", "plain", "--progress-interval", "1"]);
    let out = run.run();
    out.assert_success();
    let lines = progress_lines(&out);
    println!("--progress plain --progress-interval 1:\n{}", lines.join("\n"));
    assert!(lines.len() >= 2, "expected a progress line every second\n{}", out.report());
    assert!(lines.iter().all(|l| l.contains("copied") && l.contains("ETA")), "{lines:#?}");

    let mut run = s.pgclone_into("replica quiet");
    run.verbose = false;
    run.args(["--compress", "none", "--limit-net-bw", "4M", "--progress", "none", "--progress-interval", "1"]);
    let out = run.run();
    out.assert_success();
    assert_eq!(progress_lines(&out), Vec::<String>::new(), "--progress none printed progress\n{}", out.report());
    println!("--progress none: no progress lines; {}", out.summary_line());
    assert_primary_clean(&s.lab, &s.primary);
}

// ---------------------------------------------------------------------------------------------
// Re-runs into a finished replica
// ---------------------------------------------------------------------------------------------

#[test]
fn paranoid_rerun_repairs_a_file_changed_in_place_with_same_size_and_mtime() {
    rerun_repairs_a_file_changed_in_place("paranoid", &["--paranoid"]);
}

/// The same without --paranoid, by the rsync transport (issue 11): a re-sync compares content by default. rsync
/// stamps a copy with the mtime it listed, so a page the server writes within that second keeps size and mtime;
/// before, such a file was skipped and the standby kept the old page.
#[test]
fn rsync_rerun_repairs_a_file_changed_in_place_with_same_size_and_mtime() {
    rerun_repairs_a_file_changed_in_place("rsync-rerun", &["--transport", "rsync"]);
}

/// A finished clone whose copy of pgbench_accounts was changed in place with size and mtime kept is re-run with
/// `flags`: the re-run must make it byte-identical to the primary's again.
fn rerun_repairs_a_file_changed_in_place(name: &str, flags: &[&str]) {
    let s = Setup::new(name, &["autovacuum = off"]);
    s.primary.pgbench_init(2);
    s.primary.psql("checkpoint");
    s.pgclone().run().assert_success();
    let rel = s.primary.psql("select pg_relation_filepath('pgbench_accounts')");
    let (theirs, ours) = (s.primary.data.join(&rel), s.replica.join(&rel));
    assert!(
        fs::read(&theirs).unwrap() == fs::read(&ours).unwrap(),
        "precondition: the clone's {rel} equals the primary's"
    );

    let meta = fs::metadata(&ours).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&ours).unwrap();
    let offset = 8192 * 10 + 100;
    f.write_all_at(b"corrupted by the test!", offset).unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
    drop(f);
    let after = fs::metadata(&ours).unwrap();
    assert_eq!((after.len(), after.modified().unwrap()), (meta.len(), meta.modified().unwrap()), "size and mtime kept");
    assert!(fs::read(&theirs).unwrap() != fs::read(&ours).unwrap(), "the corruption did not change the file");
    println!("corrupted {} at offset {offset}, size {} and mtime kept", ours.display(), meta.len());

    let mut run = s.pgclone();
    run.args(flags);
    let out = run.run();
    out.assert_success();
    println!("{flags:?} re-run: {}", out.summary_line());
    assert!(fs::read(&theirs).unwrap() == fs::read(&ours).unwrap(), "{rel} differs from the primary's after {flags:?}");
    println!("{rel} is byte-identical to the primary's again");
    assert_primary_clean(&s.lab, &s.primary);
    s.assert_standby(&s.replica, &format!("{}_standby", name.replace('-', "_")), None);
}

/// The files of the relation whose main fork is `rel` (relative to `dir`): main fork, its segments, forks.
fn relation_files(dir: &Path, rel: &str) -> Vec<PathBuf> {
    let path = dir.join(rel);
    let node = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<PathBuf> = entries_starting_with(path.parent().unwrap(), &node)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == node.as_str() || n[node.len()..].starts_with(['_', '.'])
        })
        .collect();
    v.sort();
    v
}

#[test]
fn rerun_into_a_finished_replica_removes_a_dropped_tables_files() {
    let s = Setup::with_pgbench("droptable", 1);
    s.primary.psql("create table doomed as select g, md5(g::text) as h from generate_series(1, 50000) g");
    s.primary.psql("create index doomed_idx on doomed (g)");
    s.primary.psql("vacuum doomed");
    let rels: Vec<String> = s
        .primary
        .psql("select pg_relation_filepath('doomed') union all select pg_relation_filepath('doomed_idx')")
        .lines()
        .map(str::to_string)
        .collect();
    s.pgclone().run().assert_success();
    let files: Vec<PathBuf> = rels.iter().flat_map(|r| relation_files(&s.replica, r)).collect();
    println!("the clone holds the table's files {files:?}");
    assert!(files.len() >= 3, "precondition: table, fsm/vm and index files in the clone: {files:?}");

    s.primary.psql("drop table doomed");
    s.primary.psql("checkpoint");
    let out = s.pgclone().run();
    out.assert_success();
    println!("re-run: {}", out.summary_line());
    assert!(out.stderr.contains("holds a replica of this primary: re-syncing it"), "{}", out.report());
    let left: Vec<PathBuf> = rels.iter().flat_map(|r| relation_files(&s.replica, r)).collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "files of the dropped table are still in the replica");
    assert_primary_clean(&s.lab, &s.primary);
    s.assert_standby(&s.replica, "droptable_standby", None);
}

// ---------------------------------------------------------------------------------------------
// --bypass-rep-traffic
// ---------------------------------------------------------------------------------------------

#[test]
fn bypass_rep_traffic_reaches_a_primary_listening_only_on_its_loopback() {
    let lab = Lab::new("bypass");
    let primary = Postgres::primary(&lab, "primary", &[]);
    primary.pgbench_init(1);
    assert_eq!(primary.psql("show listen_addresses"), "127.0.0.1");
    let sshd = Sshd::start_on(&lab, "127.0.0.2");
    assert!(
        std::net::TcpStream::connect(("127.0.0.2", primary.port)).is_err(),
        "precondition: PostgreSQL must not be reachable on 127.0.0.2"
    );
    let replica = lab.path().join("replica");
    let mut run = Pgclone::new(&primary, &sshd, &replica);
    assert_eq!(run.pghost, "127.0.0.2");
    run.run().assert_error("cannot connect to the primary");
    assert_clean_after_error(&lab, &primary, &replica);

    run.arg("--bypass-rep-traffic");
    let out = run.run();
    out.assert_success();
    println!("with --bypass-rep-traffic: {}", out.summary_line());
    assert_primary_clean(&lab, &primary);
    assert_standby_matches(&lab, &primary, &replica, "bypass_standby", None);
}

// ---------------------------------------------------------------------------------------------
// pg_basebackup's -c/--checkpoint and -l/--label
// ---------------------------------------------------------------------------------------------

/// `-c spread -l LABEL`: pg_backup_start waits for a spread checkpoint (the primary's log says "checkpoint
/// starting: force wait", without "immediate"), and the label is backup_label's; the default is fast.
#[test]
fn checkpoint_spread_and_label_as_pg_basebackup_takes_them() {
    // A short checkpoint_timeout bounds how long a spread checkpoint paces itself.
    let s = Setup::new("checkpoint", &["checkpoint_timeout = 30s", "log_checkpoints = on"]);
    s.primary.pgbench_init(1);
    let log_lines = || fs::read_to_string(&s.primary.log).unwrap_or_default().lines().count();
    let starts = |from: usize| -> Vec<String> {
        let log = fs::read_to_string(&s.primary.log).unwrap_or_default();
        log.lines().skip(from).filter(|l| l.contains("checkpoint starting:")).map(str::to_string).collect()
    };
    for (flags, immediate, label) in [
        (&["-c", "spread", "-l", "nightly rebuild of db2"][..], false, "nightly rebuild of db2"),
        (&[][..], true, "pgclone to "),
    ] {
        let before = log_lines();
        let replica = s.lab.path().join(format!("replica-{}", if immediate { "fast" } else { "spread" }));
        let mut run = s.pgclone_into(replica.file_name().unwrap().to_str().unwrap());
        run.args(flags);
        run.timeout = Duration::from_secs(240);
        run.run().assert_success();
        let checkpoints = starts(before);
        println!("{flags:?}: {checkpoints:?}");
        let forced: Vec<&String> = checkpoints.iter().filter(|l| l.contains("force wait")).collect();
        assert!(!forced.is_empty(), "no checkpoint of pg_backup_start in the log: {checkpoints:?}");
        assert_eq!(forced.iter().all(|l| l.contains("immediate")), immediate, "{flags:?}: {forced:?}");
        let backup_label = fs::read_to_string(replica.join("backup_label")).unwrap();
        assert!(backup_label.contains(&format!("LABEL: {label}")), "{backup_label}");
    }
    assert_primary_clean(&s.lab, &s.primary);
}

/// A clone driven by pg_basebackup's vocabulary alone for the connection: `-d 'host=... port=... user=...
/// sslmode=require'` (no --pghost/--pgport/--pguser), against a TLS primary. libpq parses it: the backup session
/// really is TLS (pg_stat_ssl, while the copy runs), -R writes what -d said plus `--recovery-option` settings, and
/// the standby's application_name comes from PGAPPNAME (which, as libpq's, also names pgclone's own sessions).
#[test]
fn a_clone_driven_by_a_connection_string_with_recovery_options() {
    let lab = Lab::new("dbname");
    let primary = Postgres::primary_tls(&lab, "primary", false);
    primary.pgbench_init(1);
    let sshd = Sshd::start(&lab);
    let replica = lab.path().join("replica");
    let mut run = Pgclone::new(&primary, &sshd, &replica);
    let conninfo = format!("host=127.0.0.1 port={} user={SUPERUSER} sslmode=require", primary.port);
    (run.pghost, run.pgport, run.pguser) = (String::new(), None, String::new());
    run.args(["-d", &conninfo, "-R", "--recovery-option", "recovery_min_apply_delay=2s"]);
    run.args(["--recovery-option", "restore_command=test -f '/nonexistent/%f'"]);
    run.env("PGAPPNAME", Some("from_pgappname"));
    let running = run.spawn_slowly("4M");
    let ssl = primary.psql(
        "select string_agg(s.ssl::text, ',') from pg_stat_ssl s join pg_stat_activity a using (pid) \
         where a.application_name = 'from_pgappname' and a.backend_type = 'client backend'",
    );
    let out = running.wait();
    out.assert_success();
    assert_eq!(ssl, "true", "the backup session is not TLS");
    let conf = fs::read_to_string(replica.join("postgresql.auto.conf")).unwrap();
    println!("{conf}");
    for want in [
        "host=''127.0.0.1''".to_string(),
        format!("port=''{}''", primary.port),
        "sslmode=''require''".into(),
        "application_name=''from_pgappname''".into(),
        "recovery_min_apply_delay = '2s'".into(),
        "restore_command = 'test -f ''/nonexistent/%f'''".into(),
    ] {
        assert!(conf.contains(&want), "postgresql.auto.conf lacks {want}");
    }
    assert_primary_clean(&lab, &primary);
}

/// --quiet leaves standard error to warnings and errors: no log lines, no progress, no summary line; --json still
/// prints its object. --progress json (asked for by name, so --quiet keeps it) writes one JSON event a line, the
/// last with every byte of the copy done.
#[test]
fn quiet_says_only_warnings_and_progress_json_speaks_to_machines() {
    let s = Setup::with_pgbench("quiet-json", 1);
    let mut run = s.pgclone();
    run.verbose = false;
    run.args(["--quiet", "--json"]);
    let out = run.run();
    out.assert_success();
    for line in out.stderr.lines() {
        assert!(line.contains("WARN"), "--quiet printed {line:?}\n{}", out.report());
    }
    json_figures(&out);

    let mut run = s.pgclone_into("replica-events");
    run.verbose = false;
    run.args(["--quiet", "--progress", "json", "--progress-interval", "1"]);
    let out = run.run();
    out.assert_success();
    let events: Vec<serde_json::Value> =
        out.stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = events.last().unwrap_or_else(|| panic!("no progress event\n{}", out.report()));
    assert_eq!(last["event"], "progress");
    assert!(last["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(last["done_bytes"], last["total_bytes"], "{last}");
    assert!(out.stderr.lines().all(|l| l.starts_with('{') || l.contains("WARN")), "{}", out.report());
}

// ---------------------------------------------------------------------------------------------
// A pg_basebackup command line
// ---------------------------------------------------------------------------------------------

/// `-X stream -Fp --waldir W -C -S NAME -R`, as a pg_basebackup user types it, and no --primary-pgdata: the server
/// names its data directory (the log says which), pg_wal links to W, NAME is made a permanent physical slot and
/// the standby's settings use it. Before, each of these flags was an "unexpected argument" and --primary-pgdata
/// was required.
#[test]
fn a_pg_basebackup_command_line_clones_without_primary_pgdata() {
    let s = Setup::new("pgbb", &[]);
    let waldir = s.lab.path().join("waldir");
    let mut run = s.pgclone();
    run.primary_pgdata = PathBuf::new();
    run.args(["-X", "stream", "-Fp", "-C", "-S", "pgbb_slot", "-R", "--waldir"]).arg(&waldir);
    let out = run.run();
    out.assert_success();
    let data = s.primary.psql("show data_directory");
    let said = format!("the primary's data directory is {data} (the server's data_directory)");
    assert!(out.stderr.contains(&said), "the log does not say {said:?}\n{}", out.report());
    assert_eq!(fs::read_link(s.replica.join("pg_wal")).ok(), Some(waldir), "--waldir is --replica-waldir");
    let slot = "select slot_type || ' ' || temporary from pg_replication_slots where slot_name = 'pgbb_slot'";
    assert_eq!(s.primary.psql(slot), "physical false", "-C -S NAME is --create-slot NAME");
    let conf = fs::read_to_string(s.replica.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("primary_slot_name = 'pgbb_slot'"), "{conf}");
    println!("{said}; {}", out.summary_line());
}

/// -W asks for the password on the terminal, as pg_basebackup's does: typed into a pseudo-terminal that is
/// pgclone's standard input, without echo, it logs pgclone in (no PGPASSWORD, no password file).
#[test]
fn w_reads_the_password_from_the_terminal_without_echo() {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let s = Setup::new("password", &[]);
    let user = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    rustix::pty::grantpt(&user).unwrap();
    rustix::pty::unlockpt(&user).unwrap();
    let name = rustix::pty::ptsname(&user, Vec::new()).unwrap();
    let terminal = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY, Mode::empty()).unwrap();
    let echo =
        || rustix::termios::tcgetattr(&terminal).unwrap().local_modes.contains(rustix::termios::LocalModes::ECHO);
    let mut run = s.pgclone();
    run.env("PGPASSWORD", None).env("PGPASSFILE", Some(&s.lab.path().join("no-such-pgpass").to_string_lossy()));
    run.args(["-W", "--check"]);
    run.stdin = Some(fs::File::from(terminal.try_clone().unwrap()));
    let running = run.spawn();
    wait_for("pgclone to turn the terminal's echo off", Duration::from_secs(30), || match echo() {
        false => Ok(()),
        true => Err(running.stderr_so_far()),
    });
    rustix::io::write(&user, format!("{PASSWORD}\n").as_bytes()).unwrap();
    let out = running.wait();
    out.assert_success();
    assert!(out.stderr.starts_with("Password: \n"), "{}", out.report());
    // What the terminal showed the user: whatever is there to read on their side.
    let mut shown = [0u8; 4096];
    let mut ready = [rustix::event::PollFd::new(&user, rustix::event::PollFlags::IN)];
    let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 300_000_000 };
    let n = match rustix::event::poll(&mut ready, Some(&timeout)).unwrap() {
        0 => 0,
        _ => rustix::io::read(&user, &mut shown).unwrap(),
    };
    assert!(!String::from_utf8_lossy(&shown[..n]).contains(PASSWORD), "the terminal echoed the password");
    assert!(echo(), "the terminal's echo is back on");
    println!("{}", out.stderr.lines().last().unwrap_or(""));
}

/// The last line of a run is one short line a DBA reads at a glance: what was done, how much, how long; for a
/// re-sync, how much moved and how much was already in place (not the whole size as if it had been copied). The
/// details (WAL range, time per phase) come before it.
#[test]
fn the_summary_is_one_short_line_with_its_details_before_it() {
    let s = Setup::with_pgbench("summary-line", 1);
    let replica = s.replica.display().to_string();
    let words = |line: &str| line.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let out = s.pgclone().run();
    out.assert_success();
    let line = out.summary_line().to_string();
    let w = words(&line);
    assert!(line.len() < 160, "{} characters: {line}", line.len());
    assert_eq!(
        (w[0].as_str(), w[1].as_str(), w[3].as_str(), w[4].as_str()),
        ("pgclone:", "cloned", "MB", "in"),
        "{line}"
    );
    assert!(w[5].parse::<u64>().is_ok() && w[6] == "files" && w[7] == "into" && w[8] == replica, "{line}");
    assert!(w[9] == "in" && w[10].parse::<f64>().is_ok() && w[11] == "s" && w.len() == 12, "{line}");
    assert!(out.stderr.contains("laid into pg_wal") && out.stderr.contains("time: preflight"), "{}", out.report());

    let out = s.pgclone().run();
    out.assert_success();
    let line = out.summary_line().to_string();
    // A clone that never started is re-synced from its backup's start by the primary's WAL.
    let prefix = format!("pgclone: re-synced {replica} by wal-blocks in ");
    assert!(
        line.starts_with(&prefix) && line.contains(" moved over the link, ") && line.contains(" already in place, of "),
        "{line}"
    );
    assert!(line.len() < 200, "{} characters: {line}", line.len());
    assert!(out.stderr.contains("re-sync by wal-blocks: read "), "{}", out.report());
}
