//! What pgclone guarantees however a run ends: one run per replica directory, nothing left on the
//! primary or here after a signal or a fault mid-copy, a re-run that resumes, and one clear line for
//! each failure a pgclone.sh user meets. Copies are slowed with --limit-net-bw so that they can be
//! interrupted mid-copy.

use crate::support::*;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// At 1 MiB/s a pgbench scale 2 clone (about 35 MB) copies for half a minute: plenty of time to interrupt it.
const SLOW: &str = "1M";

// ---------------------------------------------------------------------------------------------
// One run per replica directory
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_run_into_the_same_dir_fails_at_once_while_other_dirs_clone_concurrently() {
    let s = Setup::with_pgbench("lock", 1);
    let mut first = s.pgclone().spawn_slowly("4M");

    let asked = Instant::now();
    let second = s.pgclone().run();
    let took = asked.elapsed();
    second.assert_error("is already cloning into");
    second.assert_error(&format!("(pid {})", first.pid()));
    assert!(took < Duration::from_secs(5), "the second run took {took:?} to fail: not at once");
    assert!(first.is_running(), "the first run ended when the second was refused\n{}", first.stderr_so_far());
    println!("second run into the same dir refused in {took:.1?}");

    let other_replica = s.lab.path().join("replica2");
    let other = Pgclone::new(&s.primary, &s.sshd, &other_replica).run();
    other.assert_success();
    assert!(first.is_running(), "the first run ended before the run into another dir: they did not overlap");
    println!("a run into another dir finished while the first still ran: {}", other.summary_line());

    let first = first.wait();
    first.assert_success();
    println!("first run: {}", first.summary_line());
    assert_primary_clean(&s.lab, &s.primary);
    let _a = s.assert_standby(&s.replica, "lock_first", None);
    let _b = s.assert_standby(&other_replica, "lock_other", None);
}

// ---------------------------------------------------------------------------------------------
// Signals mid-copy
// ---------------------------------------------------------------------------------------------

#[test]
fn sigint_mid_copy_leaves_nothing_behind_and_a_rerun_resumes() {
    interrupted_mid_copy("sigint", Signal::INT, Some("interrupted by SIGINT"));
}

#[test]
fn sigterm_mid_copy_leaves_nothing_behind_and_a_rerun_resumes() {
    interrupted_mid_copy("sigterm", Signal::TERM, Some("interrupted by SIGTERM"));
}

#[test]
fn sigkill_mid_copy_leaves_nothing_behind_and_a_rerun_resumes() {
    interrupted_mid_copy("sigkill", Signal::KILL, None);
}

/// Interrupt a clone of a primary under write load with `sig` once some data has arrived; within 10 s
/// nothing of pgclone may remain anywhere. `message`: its last line (exit 1), or None for a kill by the
/// signal. Then a re-run (load still running) resumes the unfinished clone into a matching standby.
fn interrupted_mid_copy(name: &str, sig: Signal, message: Option<&str>) {
    let s = Setup::with_pgbench(name, 2);
    let load = s.primary.pgbench_load(2);
    let running = s.pgclone().spawn_slowly(SLOW);
    wait_for("some data to arrive in the replica", Duration::from_secs(30), || match dir_bytes(&s.replica) {
        n if n >= 2 << 20 => Ok(n),
        n => Err(format!("{n} bytes")),
    });
    let copied = dir_bytes(&s.replica);
    let signalled = Instant::now();
    running.signal(sig);
    wait_primary_clean(&s.lab, &s.primary, Duration::from_secs(10));
    println!(
        "{copied} bytes were in the replica; everything of pgclone was gone {:.1?} after the signal",
        signalled.elapsed()
    );
    assert_no_control_file(&s.replica);
    let out = running.wait();
    match message {
        Some(m) => {
            out.assert_error(m);
            assert_eq!(out.status.code(), Some(1), "exit code\n{}", out.report());
        }
        None => assert_eq!(out.status.signal(), Some(Signal::KILL.as_raw()), "{}", out.report()),
    }

    let rerun = s.pgclone().run();
    rerun.assert_success();
    let summary = rerun.summary_line();
    println!("re-run: {summary}");
    assert!(
        rerun.stderr.contains("holds an unfinished clone of this primary: re-syncing it"),
        "the re-run did not say it resumes the unfinished clone\n{}",
        rerun.report()
    );
    assert!(summary.contains("already in place"), "the re-run's summary reuses nothing: {summary}");
    assert_primary_clean(&s.lab, &s.primary);
    s.assert_standby(&s.replica, &format!("{name}_standby"), Some(load));
}

// ---------------------------------------------------------------------------------------------
// The temporary slot (--slot)
// ---------------------------------------------------------------------------------------------

#[test]
fn slot_flag_shows_one_temporary_pgclone_slot_during_the_run_and_none_after() {
    let s = Setup::new("slot", &[]);
    let mut run = s.pgclone();
    run.args(["--slot", "--transport", "rsync"]);
    let running = run.spawn_slowly("4M");
    let slots = s.primary.psql("select slot_name, temporary, slot_type, active from pg_replication_slots");
    println!("pg_replication_slots during the copy:\n{slots}");
    let rows: Vec<Vec<&str>> = slots.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 1, "expected exactly one slot during the run: {slots:?}");
    let row = &rows[0];
    assert!(row[0].starts_with("pgclone_"), "slot name {:?}", row[0]);
    assert_eq!(&row[1..], ["t", "physical", "t"], "slot {:?}: temporary, physical, active", row[0]);
    // The run's directories are where the clean check looks for them.
    let run_dirs = entries_starting_with(&s.lab.tmpdir(), "pgclone-");
    let daemon_dirs = entries_starting_with(&s.lab.remote_tmpdir(), "pgclone-rsyncd.");
    println!("during the copy: run dir {run_dirs:?}, rsync daemon dir {daemon_dirs:?}");
    assert_eq!((run_dirs.len(), daemon_dirs.len()), (1, 1), "run dir and rsync daemon dir during the copy");

    running.wait().assert_success();
    assert_primary_clean(&s.lab, &s.primary);
    println!("after the run: no slot");
}

// ---------------------------------------------------------------------------------------------
// Faults mid-copy
// ---------------------------------------------------------------------------------------------

/// Start a slow clone (with `args`), inject `fault` mid-copy; pgclone must exit 1 within 30 s with one
/// of `messages` and leave nothing behind.
fn fault_mid_copy(name: &str, args: &[&str], messages: &[&str], fault: impl FnOnce(&Setup, &Running)) {
    let s = Setup::with_pgbench(name, 2);
    let running = s.pgclone().args(args).spawn_slowly(SLOW);
    sleep(Duration::from_secs(1));
    let injected = Instant::now();
    fault(&s, &running);
    let out = running.wait();
    let took = injected.elapsed();
    println!("pgclone ended {took:.1?} after the fault");
    out.assert_error_any(messages);
    assert_eq!(out.status.code(), Some(1), "exit code\n{}", out.report());
    assert!(took < Duration::from_secs(30), "pgclone took {took:?} to notice the fault");
    s.assert_clean();
}

/// Terminate the one `application_name = 'pgclone'` backend of `backend_type`.
fn terminate(s: &Setup, backend_type: &str) {
    let sql = format!(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where application_name = 'pgclone' and backend_type = '{backend_type}'"
    );
    assert_eq!(s.primary.psql(&sql), "t", "expected to terminate exactly one pgclone {backend_type}");
    println!("terminated pgclone's {backend_type}");
}

#[test]
fn terminated_backup_session_fails_the_clone() {
    fault_mid_copy("killbackup", &[], &["the backup session on the primary ended"], |s, _| {
        terminate(s, "client backend")
    });
}

#[test]
fn terminated_walsender_fails_the_clone() {
    fault_mid_copy("killwalsender", &[], &["WAL stream from the primary failed"], |s, _| terminate(s, "walsender"));
}

#[test]
fn primary_restart_fails_the_clone() {
    let messages = ["WAL stream from the primary failed", "the backup session on the primary ended"];
    fault_mid_copy("restart", &[], &messages, |s, _| {
        let t = Instant::now();
        s.primary.restart();
        println!("primary restarted (-m fast) in {:.1?}", t.elapsed());
    });
}

#[test]
fn killed_rsync_client_fails_the_clone() {
    fault_mid_copy("killrsync", &["--transport", "rsync"], &["copy worker failed"], |_, running| {
        let (pid, comm) = wait_for("a local rsync client of the run", Duration::from_secs(20), || {
            children_of(running.pid()).into_iter().find(|(_, c)| c == "rsync").ok_or("none yet".to_string())
        });
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(p, Signal::KILL).unwrap();
        println!("killed pgclone's child {pid} [{comm}] with SIGKILL");
    });
}

// ---------------------------------------------------------------------------------------------
// Failures with one clear line
// ---------------------------------------------------------------------------------------------

#[test]
fn no_password_source_is_one_clear_line() {
    let s = Setup::new("nopass", &[]);
    let methods = s.primary.psql("select distinct auth_method from pg_hba_file_rules");
    assert_eq!(methods, "scram-sha-256", "the primary must require a password");
    let home = s.lab.mkdir("home without pgpass");
    let mut run = s.pgclone();
    run.env("PGPASSWORD", None).env("PGPASSFILE", None).env("HOME", Some(&home.to_string_lossy()));
    let out = run.run();
    out.assert_error("cannot connect to the primary");
    out.assert_error("no password");
    s.assert_clean();
}

#[test]
fn unknown_host_key_is_one_clear_line_and_insecure_ssh_gets_past_it() {
    let s = Setup::new("hostkey", &[]);
    let config = s.sshd.config_without_host_key();
    let probe = run_bounded(&mut s.sshd.ssh_cmd(&config, "true"), Duration::from_secs(30));
    assert!(
        !probe.success() && probe.stderr.contains("Host key verification failed"),
        "precondition: ssh with an empty known_hosts should fail host key verification\n{}",
        probe.report()
    );
    let mut run = s.pgclone();
    run.ssh_mut().config = config;
    let out = run.run();
    out.assert_error("ssh to");
    out.assert_error("No ED25519 host key is known for");
    s.assert_clean();

    run.arg("--insecure-ssh");
    let out = run.run();
    out.assert_success();
    println!("with --insecure-ssh: {}", out.summary_line());
    assert!(s.replica.join("global/pg_control").exists(), "the clone with --insecure-ssh is not complete");
    assert_primary_clean(&s.lab, &s.primary);
}

/// A clone the replica's filesystem cannot hold is refused with one clear line, before anything changes.
#[test]
fn not_enough_space_is_one_clear_line() {
    if !root_or_skip("not_enough_space_is_one_clear_line", "mounting a small tmpfs needs root") {
        return;
    }
    let s = Setup::new("space", &[]);
    let small = Tmpfs::mount(&s.lab, "small", 32 << 20);
    let replica = small.path.join("replica");
    let mut run = s.pgclone();
    run.replica_pgdata = replica.clone();
    run.run().assert_error("not enough space for the clone in");
    println!(
        "replica filesystem: {}",
        run_bounded(std::process::Command::new("df").arg("-h").arg(&small.path), Duration::from_secs(10)).stdout.trim()
    );
    assert_clean_after_error(&s.lab, &s.primary, &replica);

    // A re-sync the filesystem cannot hold (the primary grew by more than the free room) is refused before
    // anything in the replica changes: it still has its pg_control (before, it was removed first).
    let roomy = Tmpfs::mount(&s.lab, "roomy", 256 << 20);
    let mut run = s.pgclone();
    run.replica_pgdata = roomy.path.join("replica");
    run.run().assert_success();
    s.primary.psql("create table big as select g, repeat('x', 200) as pad from generate_series(1, 600000) g");
    run.run().assert_refused("not enough space for the clone in");
    assert!(roomy.path.join("replica/global/pg_control").exists(), "the refused re-sync changed the replica");
}

#[test]
fn drop_existing_refuses_root_and_home() {
    let s = Setup::new("dropguard", &[]);
    let home = s.lab.mkdir("home");
    let marker = s.lab.write(home.join("precious"), "keep\n");
    for dir in [Path::new("/"), home.as_path()] {
        let mut run = s.pgclone();
        run.replica_pgdata = dir.to_path_buf();
        // Safety net: nothing listens on this port, so a broken refusal fails at connect, before emptying.
        run.pgport = Some(free_port());
        run.arg("--drop-existing").env("HOME", Some(&home.to_string_lossy()));
        run.run().assert_error("refuses to empty");
    }
    assert!(marker.exists(), "the home directory was emptied");
    assert_primary_clean(&s.lab, &s.primary);
}
