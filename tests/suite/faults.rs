//! Faults while cloning a primary on its own "host" (issue 5): the primary and its sshd live in a
//! network namespace behind a veth pair, pgclone runs in the root namespace and reaches them over the
//! veth. The link is cut, pgclone is killed in each phase, the primary restarts, the replica's
//! filesystem fills up. Each time: a bounded, clear outcome, nothing left on the primary, and a re-run
//! into the same directory that completes.

use crate::support::*;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// Start the clone in `replica` (made with -R, `--application-name app`, `--replica-port port`) as a
/// standby in the root namespace, and check it streams from the namespace's primary, catches up and
/// holds the primary's data.
fn assert_standby_over_veth(h: &Host, replica: &Path, app: &str, port: u16) {
    let standby = Server::start(&h.lab, replica, app, port, Creds::Env);
    wait_streaming(&h.primary, &standby, app, WAIT);
    let lsn = h.primary.psql("select pg_current_wal_lsn()");
    wait_replayed(&h.primary, app, &lsn, WAIT);
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    let expected = h.primary.fingerprint();
    assert_eq!(standby.fingerprint(), expected, "{app} differs from the primary");
    println!("{app} streams over the veth, replayed {lsn}, matches the primary");
}

/// A re-run into `replica` (unlimited, -R) that must complete, re-syncing what is there.
fn rerun_completes(h: &Host, replica: &Path, app: &str, port: u16) -> CmdOutput {
    let mut run = h.pgclone(replica);
    run.args(["-R", "--application-name", app, "--replica-port", &port.to_string()]);
    let out = run.run();
    out.assert_success();
    println!("re-run: {}", out.summary_line());
    assert!(out.stderr.contains("re-syncing"), "the re-run did not re-sync:\n{}", out.stderr);
    assert!(replica.join("global/pg_control").exists());
    out
}

/// Writes on the primary while pgclone runs (over the veth: pauses while the link is cut).
fn light_load(h: &Host) -> Bg {
    let mut cmd = h.primary.client("pgbench");
    cmd.args(["-n", "-c", "1", "-j", "1", "-R", "50", "-T", "600", "postgres"]);
    h.lab.spawn("primary-pgbench", cmd)
}

/// The link to the primary's host goes down for 20 s in the middle of the copy, then comes back.
/// pgclone must end by itself within 180 s of its start, either done or with one clear error line;
/// then nothing of it may remain on the primary (allowing for ssh's keepalive, 15 s x 4), and a re-run
/// into the same directory completes, says it re-synced and what was already in place, and the result
/// streams and matches.
#[test]
fn link_cut_mid_copy_then_restored() {
    let h = Host::new("g5-linkcut", 5, &[]);
    let load = light_load(&h);
    let replica = h.lab.path().join("replica");
    let (app, port) = ("g5_cut", free_port());
    let mut run = h.pgclone(&replica);
    // ~80 MB at 2 MiB/s: the copy takes ~40 s, the cut comes 5 s in.
    run.args([
        "--compress",
        "none",
        "--limit-net-bw",
        "2M",
        "-R",
        "--application-name",
        app,
        "--replica-port",
        &port.to_string(),
    ]);
    let mut p = run.spawn();
    p.wait_for_log("copying", Duration::from_secs(60));
    sleep(Duration::from_secs(5));
    assert!(p.is_running() && !p.stderr_so_far().contains("backup stopped"), "copy over before the cut");
    let cut = Instant::now();
    h.ns.cut();
    sleep(Duration::from_secs(20));
    h.ns.restore();
    let restored = Instant::now();
    let out = p.wait_until(Duration::from_secs(180));
    let ended = Instant::now();
    println!(
        "pgclone ended {:.1?} after the cut, {:.1?} after the restore: {}\n{}",
        ended - cut,
        ended - restored,
        out.status,
        out.summary_line()
    );
    if !out.status.success() {
        let line = assert_one_error_line(&out);
        println!("pgclone failed with: {line}");
        assert!(!replica.join("global/pg_control").exists(), "a failed clone left pg_control");
    }
    let took = h.wait_clean(Duration::from_secs(90));
    println!("primary clean {took:.1?} after pgclone ended");
    drop(load);

    let out = rerun_completes(&h, &replica, app, port);
    assert!(out.summary_line().contains("already in place"), "nothing reused: {}", out.summary_line());
    h.wait_clean(Duration::from_secs(10));
    assert_standby_over_veth(&h, &replica, app, port);
}

/// SIGKILL of pgclone in each phase: right after the WAL stream started (connect), during the copy,
/// and right after "backup stopped". Within 10 s nothing of it runs on either side, no slot is left
/// (also none named by --create-slot), no pgclone session (so no backup) on the primary, no
/// global/pg_control in the directory; a re-run into it completes.
#[test]
fn sigkill_in_each_phase_leaves_nothing_and_a_rerun_completes() {
    let h = Host::new("g5-kill", 8, &[]);
    let phases = [("connect", "streaming WAL from", 0), ("copy", "copying", 3), ("finish", "backup stopped", 0)];
    let mut last: Option<(std::path::PathBuf, &str, u16)> = None;
    for (phase, after, delay) in phases {
        let replica = h.lab.path().join(format!("replica_{phase}"));
        let slot = format!("g5_kill_{phase}");
        let mut run = h.pgclone(&replica);
        run.args(["--compress", "none", "--limit-net-bw", "16M", "--create-slot", &slot]);
        let mut p = run.spawn();
        p.wait_for_log(after, Duration::from_secs(60));
        sleep(Duration::from_secs(delay));
        assert!(p.is_running(), "{phase}: pgclone ended before the kill\n{}", p.stderr_so_far());
        let at = p.last_line();
        p.signal(Signal::KILL);
        let out = p.wait_until(Duration::from_secs(30));
        assert_eq!(out.status.code(), None, "{phase}: not killed\n{}", out.report());
        println!("{phase}: killed at: {at}");
        let took = h.wait_clean(Duration::from_secs(10));
        println!("{phase}: nothing left {took:.1?} after the kill");
        assert_eq!(
            h.primary.psql(&format!("select count(*) from pg_replication_slots where slot_name = '{slot}'")),
            "0"
        );
        assert!(!replica.join("global/pg_control").exists(), "{phase}: killed run left pg_control");

        let (app, port) = (format!("g5_after_{phase}"), free_port());
        let mut run = h.pgclone(&replica);
        run.args(["-R", "--application-name", &app, "--replica-port", &port.to_string()]);
        let out = run.run();
        out.assert_success();
        println!("{phase}: re-run: {}", out.summary_line());
        if phase != "connect" {
            assert!(out.stderr.contains("re-syncing"), "{phase}: no re-sync:\n{}", out.stderr);
        }
        h.wait_clean(Duration::from_secs(10));
        last = Some((replica, phase, port));
    }
    let (replica, phase, port) = last.unwrap();
    assert_standby_over_veth(&h, &replica, &format!("g5_after_{phase}"), port);
}

/// The primary restarts (pg_ctl restart -m fast) in the middle of the copy: pgclone fails quickly with
/// a line naming the WAL stream or the backup session, the primary is clean, and a re-run resumes
/// (reusing what was copied) and completes.
#[test]
fn primary_restart_mid_copy_fails_clearly_and_a_rerun_resumes() {
    let h = Host::new("g5-restart", 5, &[]);
    let replica = h.lab.path().join("replica");
    let (app, port) = ("g5_restarted", free_port());
    let mut run = h.pgclone(&replica);
    run.args(["--compress", "none", "--limit-net-bw", "4M"]);
    let mut p = run.spawn();
    p.wait_for_log("copying", Duration::from_secs(60));
    sleep(Duration::from_secs(3));
    assert!(p.is_running() && !p.stderr_so_far().contains("backup stopped"), "copy over before the restart");
    let bound = p.started.elapsed() + Duration::from_secs(90);
    let restart = Instant::now();
    h.primary.restart();
    println!("primary restarted in {:.1?}", restart.elapsed());
    let out = p.wait_until(bound);
    let ended = restart.elapsed();
    println!("pgclone ended {ended:.1?} after the restart began");
    assert!(ended < Duration::from_secs(30), "pgclone took {ended:.1?} to notice the restart");
    let line = assert_one_error_line(&out);
    println!("pgclone failed with: {line}");
    assert!(
        line.contains("WAL stream from the primary failed") || line.contains("the backup session on the primary ended"),
        "unclear reason: {line}"
    );
    assert!(!replica.join("global/pg_control").exists());
    let took = h.wait_clean(Duration::from_secs(10));
    println!("primary clean {took:.1?} after pgclone ended");

    let out = rerun_completes(&h, &replica, app, port);
    assert!(out.summary_line().contains("already in place"), "nothing reused: {}", out.summary_line());
    h.wait_clean(Duration::from_secs(10));
    assert_standby_over_veth(&h, &replica, app, port);
}

/// The replica's filesystem fills up in the middle of the copy: a tmpfs big enough for the up-front
/// space check, filled by the test once pgclone is copying. pgclone fails with one line naming the
/// lack of space, exit 1, the primary is clean.
#[test]
fn replica_filesystem_full_mid_copy() {
    let h = Host::new("g5-enospc", 5, &[]);
    // What a clone copies, roughly: everything but pg_wal (measured first: WAL growing meanwhile would
    // only make the estimate larger).
    let wal = dir_bytes(&h.primary.data.join("pg_wal"));
    let planned = dir_bytes(&h.primary.data) - wal;
    // pgclone wants the data plus 8 WAL segments (128 MB) free; give it that and a little more.
    let fs = Tmpfs::mount(&h.lab, "small-fs", planned + (128 << 20) + (32 << 20));
    println!("planned ~{} MB, tmpfs free {} MB", planned >> 20, fs.free_bytes() >> 20);
    let replica = fs.path.join("replica");
    let mut run = h.pgclone(&replica);
    run.args(["--compress", "none", "--limit-net-bw", "4M"]);
    let mut p = run.spawn();
    p.wait_for_log("copying", Duration::from_secs(60));
    sleep(Duration::from_secs(1));
    let filled = fs.fill();
    println!("filled the tmpfs with {} MB", filled >> 20);
    let out = p.wait_until(Duration::from_secs(150));
    let line = assert_one_error_line(&out);
    println!("pgclone failed with: {line}");
    assert!(
        line.contains("No space left on device") || line.contains("not enough space"),
        "the error does not say the disk is full: {line}"
    );
    assert!(!replica.join("global/pg_control").exists());
    let took = h.wait_clean(Duration::from_secs(10));
    println!("primary clean {took:.1?} after pgclone ended");
}
