//! The native transport end to end: `pgclone agent` processes on the primary (over the lab's real sshd, or as
//! local children with --no-ssh) against a real PostgreSQL 15 primary. Covers a clone under write load with
//! range splitting and compression, the block-hash delta of re-runs (including a corruption that keeps size and
//! mtime), resuming an interrupted clone, refusing an agent of another version or a missing one, and a pgclone
//! without its agent beside it (the static release binary) bringing itself.

use crate::support::*;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// Application names must not start with "pgclone": the clean check looks for those.
const STANDBY: &str = "native_standby";

/// `--transport native --remote-pgclone <the lab's copy of pgclone>`.
fn native(run: &mut Pgclone, lab: &Lab) {
    run.args(["--transport", "native", "--remote-pgclone"]).arg(lab.pgclone_bin());
}

/// `pg_verifybackup DIR` (PG15) and `pgclone verify DIR`, as the lab user, must both accept the clone.
fn verify_both(lab: &Lab, replica: &Path) {
    let tools: [(&str, Command); 2] = [
        ("pg_verifybackup", {
            let mut c = lab.cmd(Path::new(PG15_BIN).join("pg_verifybackup"));
            c.arg(replica);
            c
        }),
        ("pgclone verify", {
            let mut c = lab.cmd(lab.pgclone_bin());
            c.arg("verify").arg(replica);
            c
        }),
    ];
    for (name, mut cmd) in tools {
        let out = run_bounded(&mut cmd, Duration::from_secs(120));
        assert!(out.success(), "{name} rejects the clone\n{}", out.report());
        let said = format!("{} {}", out.stdout.trim(), out.stderr.trim());
        println!("{name} accepts the clone: {}", said.trim());
    }
}

/// Disk space actually allocated to the regular files under `dir` (a pre-sized, sparse file counts only what
/// was written into it).
fn allocated_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => allocated_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.blocks() * 512),
            _ => 0,
        })
        .sum()
}

/// Regular files under `root/base` and `root/global` that a clone copies (relative paths): everything but
/// global/pg_control (fetched after the backup, so it legitimately differs), relcache init files and temp files.
fn copied_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(root.join(rel)) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") {
                continue;
            }
            let rel = rel.join(&name);
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(root, &rel, out),
                Ok(t) if t.is_file() && rel != Path::new("global/pg_control") => out.push(rel),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for top in ["base", "global"] {
        walk(root, Path::new(top), &mut out);
    }
    out.sort();
    out
}

/// Every difference between the primary's and the replica's copied files (see `copied_files`): files only on
/// one side, and files whose bytes differ (first differing offset). Returns (differences, files, bytes).
fn compare_copied(primary: &Path, replica: &Path) -> (Vec<String>, usize, u64) {
    let (ours, theirs) = (copied_files(replica), copied_files(primary));
    let mut diffs: Vec<String> = Vec::new();
    for f in theirs.iter().filter(|f| !ours.contains(f)) {
        diffs.push(format!("{} missing in the replica", f.display()));
    }
    for f in ours.iter().filter(|f| !theirs.contains(f)) {
        diffs.push(format!("{} only in the replica", f.display()));
    }
    let mut bytes = 0;
    for f in theirs.iter().filter(|f| ours.contains(f)) {
        let a = fs::read(primary.join(f)).unwrap_or_else(|e| panic!("read primary's {}: {e}", f.display()));
        let b = fs::read(replica.join(f)).unwrap_or_else(|e| panic!("read replica's {}: {e}", f.display()));
        bytes += a.len() as u64;
        if a != b {
            let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            diffs.push(format!(
                "{} differs: primary {} bytes, replica {} bytes, first difference at offset {at}",
                f.display(),
                a.len(),
                b.len()
            ));
        }
    }
    (diffs, theirs.len(), bytes)
}

/// One native transport frame: kind, u32 LE payload length, u64 LE XXH3-64 of the payload, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

// ---------------------------------------------------------------------------------------------------------------

/// Case 1: A native clone with 1M ranges, zstd and 4 workers while pgbench writes: the result passes
/// pg_verifybackup and pgclone verify, starts as a standby, streams, catches up and holds the primary's data.
#[test]
fn native_clone_under_write_load() {
    let started = Instant::now();
    let s = Setup::with_pgbench("native-load", 5);
    let load = s.primary.pgbench_load(2);
    s.primary.wait_for_pgbench_writes();
    let rows_before = s.primary.history_rows();

    let mut run = s.pgclone();
    run.parallel = 4;
    run.timeout = Duration::from_secs(300);
    native(&mut run, &s.lab);
    run.args(["--chunk-size", "1M", "--compress", "zstd", "--json"]);
    let out = run.run();
    out.assert_success();
    println!("pgclone summary: {}", out.stderr.lines().rev().find(|l| l.starts_with("pgclone: ")).unwrap_or(""));
    assert!(!out.stderr.contains("rsync"), "--transport native mentions rsync:\n{}", out.report());
    let f = json_figures(&out);
    assert!(f.bytes > 0 && f.moved > 0, "a fresh clone moved nothing: {f:?}");
    assert!(f.files > 0, "a fresh clone copied no files: {f:?}");

    let rows_after = s.primary.history_rows();
    assert!(rows_after > rows_before, "no pgbench writes while pgclone ran ({rows_before} -> {rows_after})");
    println!("pgbench wrote {} history rows while pgclone ran", rows_after - rows_before);
    assert!(s.replica.join("global/pg_control").exists(), "clone lacks global/pg_control");

    verify_both(&s.lab, &s.replica);
    assert_primary_clean(&s.lab, &s.primary);
    let _standby = s.assert_standby(&s.replica, STANDBY, Some(load));
    assert_primary_clean(&s.lab, &s.primary);
    println!("native clone under write load passed in {:.1?}", started.elapsed());
}

/// Case 2: --no-ssh: agents are local processes; no sshd exists at all and no ssh flag is given. Run with at
/// most 128 open files, far fewer than the files of one batch.
#[test]
fn native_no_ssh_clones_locally() {
    let started = Instant::now();
    let lab = Lab::new("native-nossh");
    let primary = Postgres::primary(&lab, "primary", &[]);
    primary.pgbench_init(2);
    let load = primary.pgbench_load(1);
    let replica = lab.path().join("replica");
    let mut run = Pgclone::without_ssh(&lab, "127.0.0.1", primary.port, &primary.data, &replica);
    run.args(["--transport", "native", "--json"]);
    run.timeout = Duration::from_secs(180);
    // A batch of small files is ~1000 files here: a worker must not hold them all open (a common soft limit
    // is 1024 descriptors).
    run.max_open_files = Some(128);
    let out = run.run();
    out.assert_success();
    let f = json_figures(&out);
    assert!(f.bytes > 0 && f.moved > 0, "nothing copied: {f:?}");
    assert!(!out.stderr.contains("ssh: "), "--no-ssh run mentions ssh:\n{}", out.report());
    verify_both(&lab, &replica);
    assert_primary_clean(&lab, &primary);
    let _standby = assert_standby_matches(&lab, &primary, &replica, STANDBY, Some(load));
    assert_primary_clean(&lab, &primary);
    println!("--no-ssh native clone passed in {:.1?}", started.elapsed());
}

/// Case 3: Re-runs into a finished clone move only what differs: (a) after some writes, much less than the whole
/// (by the primary's WAL since the clone's backup start); (b) a block corrupted in place with size and mtime kept
/// is found by the block hashes of --paranoid (no WAL names it), and afterwards every copied file is
/// byte-identical to the primary's.
#[test]
fn native_delta_rerun_moves_little_and_repairs_silent_corruption() {
    let started = Instant::now();
    let s = Setup::new("native-delta", &["autovacuum = off"]);
    s.primary.pgbench_init(8);
    let native_run = |extra: &[&str]| {
        let mut run = s.pgclone();
        run.timeout = Duration::from_secs(300);
        native(&mut run, &s.lab);
        run.arg("--json").args(extra);
        let out = run.run();
        out.assert_success();
        println!("pgclone summary: {}", out.stderr.lines().rev().find(|l| l.starts_with("pgclone: ")).unwrap_or(""));
        json_figures(&out)
    };
    let first = native_run(&[]);
    assert!(first.moved > 0 && first.reused == 0, "a fresh clone: {first:?}");

    // (a) some writes, then the primary stays idle: hint bits set by VACUUM and everything flushed, so nothing
    // pgclone's own queries read can make the server write to base/ or global/ later.
    let accounts = s.primary.psql("select pg_relation_filepath('pgbench_accounts')");
    s.lab.run(s.primary.client("pgbench", SUPERUSER).args(["-n", "-c", "1", "-t", "200", "postgres"]));
    s.primary.psql("vacuum");
    s.primary.psql("checkpoint");
    let a = native_run(&[]);
    assert!(a.reused > 0, "(a) the re-run found nothing in place: {a:?}");
    // 200 random account updates dirty a few hundred pages (accounts, its primary key, tellers, branches,
    // history, visibility maps): a few percent of the data (2.7% measured). Moving whole changed files would
    // be ~85%, everything 100%.
    assert!(
        a.moved * 10 < a.bytes,
        "(a) after 200 pgbench transactions the re-run moved {} of {} (10% or more): {a:?}",
        mib(a.moved),
        mib(a.bytes)
    );
    println!("(a) after 200 transactions the re-run moved {} of {}", mib(a.moved), mib(a.bytes));

    // (b) overwrite 16 bytes in the middle of pgbench_accounts in the replica, keeping size and times.
    let victim = s.replica.join(&accounts);
    let meta = fs::metadata(&victim).unwrap();
    let (len, mtime, atime) = (meta.len(), meta.modified().unwrap(), meta.accessed().unwrap());
    let at = len / 2 + 1234;
    let file = fs::OpenOptions::new().read(true).write(true).open(&victim).unwrap();
    let mut orig = [0u8; 16];
    file.read_exact_at(&mut orig, at).unwrap();
    let bad: Vec<u8> = orig.iter().map(|b| !b).collect();
    file.write_all_at(&bad, at).unwrap();
    file.sync_all().unwrap();
    file.set_times(fs::FileTimes::new().set_modified(mtime).set_accessed(atime)).unwrap();
    drop(file);
    let after = fs::metadata(&victim).unwrap();
    assert_eq!((after.len(), after.modified().unwrap()), (len, mtime), "corruption changed size or mtime");
    let mut primary_bytes = [0u8; 16];
    fs::File::open(s.primary.data.join(&accounts)).unwrap().read_exact_at(&mut primary_bytes, at).unwrap();
    assert_ne!(primary_bytes.to_vec(), bad, "the corruption must differ from the primary's bytes");
    println!(
        "corrupted {} at offset {at} ({len} bytes, mtime kept at {mtime:?}): {:02x?} -> {:02x?}",
        accounts, orig, bad
    );

    let b = native_run(&["--paranoid"]);
    assert!(b.moved > 0, "(b) the corrupted block was not fetched: {b:?}");
    // 16 bytes lie in one 8 KiB page (two at most), the delta's unit; nothing else changed on the idle primary.
    assert!(b.moved <= 2 << 13, "(b) re-run after a 16-byte corruption moved {} bytes: {b:?}", b.moved);
    // The primary has been idle since the re-run started (no load, autovacuum off, no SQL of ours).
    let (diffs, n, bytes) = compare_copied(&s.primary.data, &s.replica);
    assert!(diffs.is_empty(), "after the re-run {} of {n} copied files differ:\n{}", diffs.len(), diffs.join("\n"));
    println!("all {n} copied files under base/ and global/ ({}) are byte-identical to the primary's", mib(bytes));

    verify_both(&s.lab, &s.replica);
    assert_primary_clean(&s.lab, &s.primary);
    let _standby = s.assert_standby(&s.replica, STANDBY, None);
    println!("native delta test passed in {:.1?}", started.elapsed());
}

/// Case 4: A native clone killed (SIGKILL) half-way leaves no pg_control; the re-run reuses what arrived and moves
/// only the rest, and the result is a working standby.
#[test]
fn native_interrupted_clone_rerun_moves_only_the_rest() {
    let started = Instant::now();
    let s = Setup::with_pgbench("native-resume", 15);
    let total = dir_bytes(&s.primary.data.join("base")) + dir_bytes(&s.primary.data.join("global"));
    println!("primary's base/ and global/ hold {}", mib(total));

    let mut run = s.pgclone();
    run.timeout = Duration::from_secs(300);
    native(&mut run, &s.lab);
    let mut running = run.spawn_slowly("8M");
    let copy_started = Instant::now();
    let half = total / 2;
    wait_for("the interrupted clone to get half-way", Duration::from_secs(120), || {
        if !running.is_running() {
            panic!("pgclone ended before it was half-way:\n{}", running.stderr_so_far());
        }
        match allocated_bytes(&s.replica) {
            n if n >= half => Ok(n),
            n => Err(format!("{} of {} written", mib(n), mib(total))),
        }
    });
    running.signal(Signal::KILL);
    let killed = running.wait();
    assert!(!killed.success(), "pgclone survived SIGKILL:\n{}", killed.report());
    let written = allocated_bytes(&s.replica);
    println!(
        "killed after {:.1?} of copying; the replica holds {} written ({} apparent)",
        copy_started.elapsed(),
        mib(written),
        mib(dir_bytes(&s.replica))
    );
    assert_no_control_file(&s.replica);
    wait_primary_clean(&s.lab, &s.primary, Duration::from_secs(30));

    let mut rerun = s.pgclone();
    rerun.timeout = Duration::from_secs(300);
    native(&mut rerun, &s.lab);
    rerun.arg("--json");
    let out = rerun.run();
    out.assert_success();
    println!("pgclone summary: {}", out.stderr.lines().rev().find(|l| l.starts_with("pgclone: ")).unwrap_or(""));
    let f = json_figures(&out);
    assert!(f.reused > 0, "the re-run reused nothing: {f:?}");
    assert!(
        f.moved * 4 < f.bytes * 3,
        "the re-run moved {} of {} although about half was already there: {f:?}",
        mib(f.moved),
        mib(f.bytes)
    );
    assert!(f.moved > 0, "the re-run moved nothing although the clone was interrupted: {f:?}");
    // "Already in place" counts what the killed run really wrote (allocated blocks), not the length it had
    // pre-sized: together with what moved it is the whole copy.
    assert!(
        f.reused + f.moved <= f.bytes + f.bytes / 50,
        "reused_bytes {} + moved_bytes {} exceed bytes {}: 'already in place' counts unwritten pre-sized space",
        f.reused,
        f.moved,
        f.bytes
    );
    verify_both(&s.lab, &s.replica);
    assert_primary_clean(&s.lab, &s.primary);
    let _standby = s.assert_standby(&s.replica, STANDBY, None);
    println!("interrupted native clone test passed in {:.1?}", started.elapsed());
}

/// Case 5: An agent answering Hello with another pgclone version is refused with both versions named, and the
/// failed run leaves nothing on the primary.
#[test]
fn native_agent_version_mismatch_refused() {
    let s = Setup::new("native-version", &[]);
    let mut payload = 1u32.to_le_bytes().to_vec();
    payload.extend_from_slice(b"0.0.0-other");
    let hello = s.lab.path().join("hello.bin");
    fs::write(&hello, frame(b'H', &payload)).unwrap();
    s.lab.chown(&hello);
    let marker = s.lab.path().join("fake-agent.args");
    let script = s.lab.write(
        "fake-pgclone",
        &format!("#!/bin/sh\necho \"$*\" >> '{}'\ncat '{}'\ncat >/dev/null\n", marker.display(), hello.display()),
    );
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

    let mut run = s.pgclone();
    run.args(["--transport", "native", "--remote-pgclone"]).arg(&script);
    let out = run.run();
    out.assert_refused("version 0.0.0-other");
    let last = out.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.contains("install the same version"), "no advice to install the same version: {last:?}");
    let invoked = fs::read_to_string(&marker).unwrap_or_default();
    assert!(!invoked.is_empty(), "the fake agent was never started\n{}", out.report());
    println!("the fake agent was started with: {}", invoked.trim());
    s.assert_clean();
}

/// Case 6: an agent named by --remote-pgclone that is not there is named in the error, by `native` and `auto`
/// alike (rsync is never a silent fallback: issue 11); without --remote-pgclone pgclone brings its own binary to
/// the primary host for the run: the clone runs native, and no file of ours stays there.
#[test]
fn native_missing_agent_is_named_and_a_brought_one_clones() {
    let s = Setup::with_pgbench("native-missing", 1);
    for kind in ["native", "auto"] {
        let mut run = s.pgclone();
        run.args(["--transport", kind, "--remote-pgclone", "/nonexistent/pgclone"]);
        run.run().assert_error("is not installed on the primary host");
        s.assert_clean();
    }
    let out = s.pgclone().run();
    out.assert_success();
    assert!(out.stderr.contains("pgclone-agent ("), "no pgclone-agent brought along\n{}", out.report());
    assert!(!out.stderr.contains("rsync"), "the default mentions rsync:\n{}", out.report());
    println!("pgclone summary: {}", out.summary_line());
    verify_both(&s.lab, &s.replica);
    assert_primary_clean(&s.lab, &s.primary);
    // A lone pgclone (scripts/release.sh's static binary) brings itself.
    fs::remove_file(s.lab.pgclone_bin().with_file_name("pgclone-agent")).unwrap();
    let out = s.pgclone().run();
    out.assert_success();
    let itself = format!("bringing {} (", s.lab.pgclone_bin().display());
    assert!(out.stderr.contains(&itself), "pgclone did not bring itself\n{}", out.report());
    verify_both(&s.lab, &s.replica);
    assert_primary_clean(&s.lab, &s.primary);
}

/// The agent pgclone brings to a primary that has no pgclone needs no library but glibc's: over an sshd whose
/// sessions cannot load libpq (its file is /dev/null there), a clone with default flags succeeds, and the
/// binary it brought is `pgclone-agent`.
#[test]
fn the_brought_agent_runs_on_a_host_without_libpq() {
    if !root_or_skip("the_brought_agent_runs_on_a_host_without_libpq", "a mount namespace needs root") {
        return;
    }
    let lab = Lab::new("native-nolibpq");
    let primary = Postgres::primary(&lab, "primary", &[]);
    primary.pgbench_init(1);
    let (sshd, libpq) = Sshd::start_without_libpq(&lab);
    // The control: a program that needs libpq cannot start in that sshd's sessions.
    let psql = run_bounded(&mut sshd.ssh_cmd(&sshd.config, &format!("{PG15_BIN}/psql --version")), T60);
    assert!(!psql.success(), "psql started where libpq is hidden:\n{}", psql.report());
    println!("psql over that sshd: {} ({} hidden)", psql.stderr.trim(), libpq.display());
    let replica = lab.path().join("replica");
    let out = Pgclone::new(&primary, &sshd, &replica).run();
    out.assert_success();
    assert!(out.stderr.contains("pgclone-agent ("), "not pgclone-agent brought along\n{}", out.report());
    verify_both(&lab, &replica);
    assert_primary_clean(&lab, &primary);
}

const T60: Duration = Duration::from_secs(60);
