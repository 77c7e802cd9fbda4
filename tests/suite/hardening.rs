//! Defects a PostgreSQL reviewer found (issue 11), each shown by a scenario that fails on the code before its
//! fix: a standby that cannot start or starts with wrong data, a resource left on the primary, a setting that
//! leaks from pgclone's environment into the standby's.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// Every entry under `dir` whose permission bits are not `dir_mode` (directories) or one of `file_modes`
/// (files), as `path mode`, except the files named in `private`, which must be 0600.
fn wrong_modes(dir: &Path, dir_mode: u32, file_modes: &[u32], private: &[&str]) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let allowed = if meta.is_dir() {
                stack.push(path.clone());
                vec![dir_mode]
            } else if meta.is_file() {
                if private.contains(&rel.as_str()) {
                    vec![0o600]
                } else {
                    file_modes.to_vec()
                }
            } else {
                continue;
            };
            if !allowed.contains(&mode) {
                wrong.push(format!("{rel} {mode:o}"));
            }
        }
    }
    wrong.sort();
    wrong
}

/// A TLS primary with `server.key` in its data directory (the PGDG/RHEL layout), cloned by each transport and
/// started by pgclone: PostgreSQL refuses a key its group or others may read, so the standby starts only when
/// the clone gives every file PostgreSQL's own mode. Before pgclone made them so, the native transport created
/// files 0644 and the standby failed with `private key file "server.key" has group or world access`. The
/// standby runs without pgclone's PG* environment (it streams with the password -R wrote, as it will after
/// its next restart).
fn tls_primary_clone_starts(name: &str, group_access: bool) {
    let lab = Lab::new(name);
    let primary = Postgres::primary_tls(&lab, "primary", group_access);
    assert_eq!(primary.psql("show ssl"), "on");
    let sshd = Sshd::start(&lab);
    // With group access, what pgclone writes itself before it has seen the primary's mode (streamed WAL)
    // stays 0600, which PostgreSQL accepts there too.
    let (dir_mode, file_modes) = if group_access { (0o750, &[0o640, 0o600][..]) } else { (0o700, &[0o600][..]) };
    for transport in ["native", "rsync"] {
        let replica = lab.path().join(format!("replica-{transport}"));
        let app = format!("{}_{transport}", name.replace('-', "_"));
        let port = free_port();
        let standby = Server::adopt(&lab, &replica, &app, port);
        let mut run = Pgclone::new(&primary, &sshd, &replica);
        run.args(["--transport", transport, "--start", "--conninfo-password", "--application-name", &app]);
        run.args(["--replica-port", &port.to_string(), "--remote-pgclone"]).arg(lab.pgclone_bin());
        let out = run.run();
        out.assert_success();
        assert!(out.summary_line().contains("is streaming"), "{}", out.report());
        assert_eq!(standby.psql("show ssl"), "on", "{transport}: the standby serves TLS with its own key");
        // pgclone ran with PGPASSWORD and PGCONNECT_TIMEOUT (the harness gives it both): the standby must not
        // inherit them (PGDATA, PGLOCALEDIR and the like are the server's own).
        let pid = fs::read_to_string(replica.join("postmaster.pid")).unwrap();
        let environ = fs::read(format!("/proc/{}/environ", pid.lines().next().unwrap().trim())).unwrap();
        let pg_vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| v.starts_with("PGPASSWORD=") || v.starts_with("PGCONNECT_TIMEOUT="))
            .collect();
        assert!(pg_vars.is_empty(), "{transport}: the standby inherited {pg_vars:?}");
        let wrong = wrong_modes(&replica, dir_mode, file_modes, &["server.key"]);
        assert!(wrong.is_empty(), "{transport}: entries without PostgreSQL's modes: {wrong:?}");
        let top = fs::metadata(&replica).unwrap().permissions().mode() & 0o777;
        assert_eq!(top, dir_mode, "{transport}: the data directory's own mode");
        standby.stop();
    }
    assert_primary_clean(&lab, &primary);
}

#[test]
fn tls_primary_clone_starts_with_private_modes() {
    tls_primary_clone_starts("h-tls", false);
}

#[test]
fn tls_primary_with_group_access_keeps_its_key_private() {
    tls_primary_clone_starts("h-tls-group", true);
}

/// The primary's `pg_stat_archiver` row as `archived|failed|last archived`.
fn archiver(pg: &dyn Sql) -> (u64, u64, String) {
    let row = pg.psql(
        "select concat_ws('|', archived_count, failed_count, coalesce(last_archived_wal, '')) from pg_stat_archiver",
    );
    let f: Vec<&str> = row.split('|').collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_string())
}

/// A clone of an archiving primary (archive_mode = on, an archive_command that refuses to overwrite, as the
/// docs' example does), promoted, must not archive again the WAL it got from the primary: that WAL is the
/// primary's to archive, and is already. Before the clone marked each segment it laid into pg_wal as archived,
/// the first checkpoint after the promotion marked them `.ready` and the archiver failed on them forever.
#[test]
fn promoted_clone_does_not_archive_the_primarys_wal_again() {
    let lab = Lab::new("h-archive");
    let archive = lab.mkdir("archive");
    let command = format!("archive_command = 'test ! -f {0}/%f && cp %p {0}/%f'", archive.display());
    let primary = Postgres::primary(&lab, "primary", &["archive_mode = on", &command]);
    primary.pgbench_init(1);
    let sshd = Sshd::start(&lab);
    let replica = lab.path().join("replica");
    Pgclone::new(&primary, &sshd, &replica).run().assert_success();
    let mut laid: Vec<String> = fs::read_dir(replica.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    laid.sort();
    let last = laid.last().expect("the clone has WAL").clone();
    // The primary archives the backup's segments before the clone could.
    primary.psql("select pg_switch_wal()");
    wait_for("the primary to archive the clone's WAL", WAIT, || {
        let (_, _, archived) = archiver(&primary);
        (archived >= last).then_some(()).ok_or(archived)
    });

    let standby = Postgres::standby(&lab, &replica, &primary, "h_archive");
    wait_streaming(&primary, &standby, "h_archive", WAIT);
    standby.psql("select pg_promote()");
    standby.psql("checkpoint");
    let switched = standby.psql("select pg_walfile_name(pg_switch_wal())");
    // Archived in order: the promoted clone's own segment comes only after whatever it marked before it.
    wait_for("the promoted clone to archive its own WAL", WAIT, || {
        let (_, failed, archived) = archiver(&standby);
        if failed > 0 {
            panic!("the promoted clone's archiver failed {failed} times; archive_status: {:?}", status(&replica));
        }
        (archived >= switched).then_some(()).ok_or(archived)
    });
    assert_eq!(archiver(&standby).1, 0, "the archiver never failed");
}

fn status(replica: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(replica.join("pg_wal/archive_status"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A re-sync into a replica whose copy of a file is larger than the primary's (here PG_VERSION, grown by 64
/// MiB): the summary counts as already in place only what the primary has, never more than the total, and the
/// file ends as the primary's.
#[test]
fn reused_bytes_never_exceed_the_total() {
    let s = Setup::with_pgbench("h-reused", 1);
    s.pgclone().run().assert_success();
    let version = s.replica.join("PG_VERSION");
    let mut grown = fs::read(&version).unwrap();
    grown.extend(std::iter::repeat_n(7u8, 64 << 20));
    fs::write(&version, grown).unwrap();
    let mut run = s.pgclone();
    run.args(["--json", "--transport", "native", "--remote-pgclone"]).arg(s.lab.pgclone_bin());
    let out = run.run();
    out.assert_success();
    let f = json_figures(&out);
    assert!(f.reused <= f.bytes, "{} bytes reused of {} in all\n{}", f.reused, f.bytes, out.report());
    assert_eq!(fs::read(&version).unwrap(), fs::read(s.primary.data.join("PG_VERSION")).unwrap());
}

/// A primary with `idle_session_timeout = 1s` (set by a DBA for application sessions): pgclone's backup session
/// idles for the whole copy and must not be ended by it, or the backup is aborted mid-copy ("the backup session
/// on the primary ended").
#[test]
fn idle_session_timeout_does_not_end_the_backup() {
    let s = Setup::new("h-idle", &["idle_session_timeout = '1s'"]);
    s.primary.pgbench_init(1);
    let mut run = s.pgclone();
    // About 40 MB at 8 MiB/s: the copy lasts several times the timeout.
    run.args(["--compress", "none", "--limit-net-bw", "8M"]);
    let out = run.run();
    out.assert_success();
    s.assert_standby(&s.replica, "h_idle", None);
}

/// --bypass-rep-traffic -R with the primary's port from PGPORT (no --pgport): primary_conninfo names the
/// primary's host and port, not the local end of pgclone's tunnel, which is gone once pgclone ends.
#[test]
fn bypass_rep_traffic_writes_the_primarys_port() {
    let lab = Lab::new("h-bypass");
    let primary = Postgres::primary(&lab, "primary", &[]);
    let sshd = Sshd::start_on(&lab, "127.0.0.2");
    let replica = lab.path().join("replica");
    let mut run = Pgclone::new(&primary, &sshd, &replica);
    run.pgport = None;
    run.env("PGPORT", Some(&primary.port.to_string())).args(["--bypass-rep-traffic", "-R"]);
    run.run().assert_success();
    let conf = fs::read_to_string(replica.join("postgresql.auto.conf")).unwrap();
    let conninfo = parse_conninfo(&conf_value(&conf, "primary_conninfo").expect("primary_conninfo"));
    let get = |k: &str| conninfo.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("host").as_deref(), Some("127.0.0.2"), "{conf}");
    assert_eq!(get("port"), Some(primary.port.to_string()), "{conf}");
    assert_primary_clean(&lab, &primary);
}

/// A --temp-waldir that did not exist is created for the run and removed with it (parents included), on success
/// and on failure; the summary's details say where the WAL waited.
#[test]
fn temp_waldir_pgclone_created_is_removed() {
    let s = Setup::new("h-tempwal", &[]);
    let top = s.lab.path().join("made");
    let dir = top.join("by/pgclone");
    let mut run = s.pgclone();
    run.arg("--temp-waldir").arg(&dir);
    let out = run.run();
    out.assert_success();
    assert!(out.stderr.contains(&format!("streamed WAL waited in {}/pgclone-", dir.display())), "{}", out.report());
    assert!(!top.exists(), "{} is left behind", top.display());
    // A failing run (into a directory holding something else) removes it too.
    let mut failing = s.pgclone_into("not-empty");
    s.lab.mkdir("not-empty");
    s.lab.write("not-empty/file", "x");
    failing.arg("--temp-waldir").arg(&dir);
    failing.run().assert_error("is not empty");
    assert!(!top.exists(), "{} is left behind by a failed run", top.display());
}

/// Streamed WAL waits on a filesystem too small for it (a tmpfs of 32 MiB: two 16 MiB segments): the run
/// refuses at once, naming the directory and --temp-waldir, instead of failing after the copy.
#[test]
fn too_little_room_for_streamed_wal_is_one_clear_line_before_copying() {
    if !root_or_skip("too_little_room_for_streamed_wal", "mounting a small tmpfs needs root") {
        return;
    }
    let s = Setup::with_pgbench("h-walspace", 1);
    let fs = Tmpfs::mount(&s.lab, "small-tmp", 32 << 20);
    let load = s.primary.pgbench_load(2);
    let mut run = s.pgclone();
    run.arg("--temp-waldir").arg(&fs.path).args(["--compress", "none", "--limit-net-bw", "4M"]);
    let out = run.run();
    stop_load(load, &s.primary);
    let line = assert_one_error_line(&out);
    assert!(line.contains("not enough space for the streamed WAL") && line.contains("--temp-waldir"), "{line}");
    assert!(!out.stderr.contains("copying "), "refused before copying\n{}", out.report());
    s.assert_clean();
}

/// A primary whose data directory holds a symbolic link that is no tablespace (`log -> /var/log/...`, Debian's
/// `server.crt` links): a re-run into its finished clone re-syncs it. Before, prune kept the link and laying
/// out the tree made it again: EEXIST, with the old pg_control already gone.
#[test]
fn rerun_keeps_a_symlink_of_the_primary() {
    let s = Setup::with_pgbench("h-symlink", 1);
    let logs = s.lab.mkdir("pglogs");
    std::os::unix::fs::symlink(&logs, s.primary.data.join("log")).unwrap();
    for round in ["first", "re-run"] {
        let out = s.pgclone().run();
        out.assert_success();
        println!("{round}: {}", out.summary_line());
        assert_eq!(fs::read_link(s.replica.join("log")).unwrap(), logs, "{round}");
    }
    s.assert_standby(&s.replica, "h_symlink", None);
}

/// A file that shrinks on the primary while the rsync transport reads it (as VACUUM truncates a relation):
/// normal on a live server, and WAL replay covers it. Before, rsync's exit 23 ("read errors mapping") failed
/// the whole clone.
#[test]
fn rsync_file_shrinking_mid_read_is_no_error() {
    let s = Setup::with_pgbench("h-shrink", 1);
    let blob = s.primary.data.join("shrinking.bin");
    fs::write(&blob, vec![1u8; 64 << 20]).unwrap();
    s.lab.chown(&blob);
    let mut run = s.pgclone();
    run.parallel = 1;
    run.args(["--transport", "rsync"]);
    // Largest first: the 64 MiB file is the first rsync reads, for about 16 s at 4 MiB/s.
    let running = run.spawn_slowly("4M");
    std::thread::sleep(Duration::from_secs(2));
    fs::OpenOptions::new().write(true).open(&blob).unwrap().set_len(1 << 20).unwrap();
    let out = running.wait();
    out.assert_success();
    println!("{}", out.summary_line());
    s.assert_standby(&s.replica, "h_shrink", None);
}

/// A re-sync during which the primary removes a file the replica still has from the earlier copy: the replica
/// must not keep it (a fresh clone would not have it), by either transport. Before, the native transport and
/// rsync's --ignore-missing-args both left the old copy in place.
#[test]
fn file_vanishing_during_a_resync_is_removed_here() {
    let s = Setup::with_pgbench("h-vanish", 1);
    let (big, gone) = (s.primary.data.join("big.bin"), s.primary.data.join("vanishing.bin"));
    for transport in ["native", "rsync"] {
        fs::write(&big, vec![1u8; 24 << 20]).unwrap();
        fs::write(&gone, vec![2u8; 4 << 20]).unwrap();
        s.lab.chown(&big);
        s.lab.chown(&gone);
        let mut run = s.pgclone();
        run.parallel = 1;
        run.args(["--transport", transport, "--remote-pgclone"]).arg(s.lab.pgclone_bin());
        run.run().assert_success();
        assert!(s.replica.join("vanishing.bin").exists(), "{transport}: the first run copies it");
        // The re-sync moves big.bin again (new content) at 4 MiB/s with one worker, largest first: the file
        // that vanishes meanwhile is listed, and gone by the time its turn comes.
        fs::write(&big, vec![3u8; 24 << 20]).unwrap();
        let running = run.spawn_slowly("4M");
        fs::remove_file(&gone).unwrap();
        let out = running.wait();
        out.assert_success();
        println!("{transport}: {}", out.summary_line());
        assert!(!s.replica.join("vanishing.bin").exists(), "{transport}: the old copy outlived the primary's file");
        assert_eq!(fs::read(s.replica.join("big.bin")).unwrap(), vec![3u8; 24 << 20], "{transport}");
    }
    s.assert_standby(&s.replica, "h_vanish", None);
}

/// The file-system calls of a successful run with `flags`, under strace, and a search in them: the index of
/// the first line from `from` on that `what` accepts.
#[allow(clippy::type_complexity)]
fn traced(s: &Setup, flags: &[&str]) -> (Vec<String>, impl Fn(usize, &dyn Fn(&str) -> bool) -> Option<usize>) {
    let trace = s.lab.path().join("pgclone.strace");
    let mut run = s.pgclone();
    run.args(flags);
    run.strace = Some(trace.clone());
    run.run().assert_success();
    let lines: Vec<String> = fs::read_to_string(&trace).unwrap().lines().map(str::to_string).collect();
    let shared = lines.clone();
    let find = move |from: usize, what: &dyn Fn(&str) -> bool| {
        shared.iter().skip(from).position(|l| what(l)).map(|i| i + from)
    };
    (lines, find)
}

/// A re-sync removes the old pg_control first, and that removal reaches the disk (its directory synced)
/// before any file of the new copy is written: after a power loss mid-copy the directory must not start as
/// the old cluster over half-new files. Watched with strace: unlink of global/pg_control, then fsync of
/// global/, then the first file created under the replica.
#[test]
fn resync_makes_the_old_pg_control_gone_durably_before_writing() {
    let s = Setup::with_pgbench("h-durable", 1);
    s.pgclone().run().assert_success();
    let (lines, find) = traced(&s, &[]);
    let replica = s.replica.to_string_lossy().into_owned();
    let unlink = find(0, &|l| l.contains("unlink") && l.contains(&format!("\"{replica}/global/pg_control\"")))
        .expect("the re-sync removes the old pg_control");
    let open_global = find(unlink, &|l| l.contains("openat(") && l.contains(&format!("\"{replica}/global\"")))
        .expect("global/ opened after the removal");
    let fd = lines[open_global].rsplit("= ").next().unwrap().trim().to_string();
    let synced = find(open_global, &|l| l.contains(&format!("fsync({fd})"))).expect("global/ synced after the removal");
    let first_write =
        find(0, &|l| l.contains("openat(") && l.contains(&format!("\"{replica}/")) && l.contains("O_CREAT"))
            .expect("the re-sync writes files");
    assert!(
        unlink < synced && synced < first_write,
        "unlink at line {unlink}, sync at {synced}, first file created at {first_write}:\n{}",
        lines[first_write]
    );
}

/// --create-slot when the run fails after making the slot: a standby that could not start (its port is taken)
/// leaves no slot behind; a standby that started but did not stream in time (it has no password: no
/// --conninfo-password, no ~/.pgpass) keeps it, and the error says so. Before, the slot stayed either way,
/// silently, holding WAL on the primary.
#[test]
fn create_slot_is_dropped_or_reported_when_start_fails() {
    let s = Setup::new("h-slot", &[]);
    let slots = || s.primary.psql("select string_agg(slot_name, ',') from pg_replication_slots");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut run = s.pgclone();
    run.args(["--start", "--create-slot", "h_slot_busy", "--replica-port", &port.to_string()]);
    let out = run.run();
    let line = assert_one_error_line(&out);
    assert!(line.contains("could not start the standby") && line.contains("was dropped again"), "{line}");
    assert_eq!(slots(), "", "no slot is left behind");
    drop(busy);

    let replica = s.lab.path().join("replica-nopass");
    let port = free_port();
    let standby = Server::adopt(&s.lab, &replica, "h_slot_nopass", port);
    let mut run = s.pgclone_into("replica-nopass");
    let home = s.lab.mkdir("home-without-pgpass");
    run.env("HOME", Some(&home.to_string_lossy()));
    run.args(["--start", "--create-slot", "h_slot_kept", "--wait-streaming", "3", "--replica-port", &port.to_string()]);
    let out = run.run();
    let line = assert_one_error_line(&out);
    assert!(line.contains("is running and keeps replication slot h_slot_kept"), "{line}");
    assert_eq!(slots(), "h_slot_kept", "the running standby's slot stays");
    standby.stop();
    s.primary.psql("select pg_drop_replication_slot('h_slot_kept')");
}

/// The whole process tree of a run killed at once (as Patroni cancels a replica method, or a container stops):
/// pgclone and the reaper that would have removed its run directory both die, and the directory, with its
/// streamed WAL, stays under $TMPDIR. The next run, started at once as Patroni retries, finds it (unlocked, so
/// nobody's) and removes it. Before, such directories stayed forever, and then until they were a minute old.
#[test]
fn a_killed_runs_directory_is_removed_by_the_next_run() {
    let s = Setup::with_pgbench("h-reap", 2);
    let mut run = s.pgclone();
    let running = run.spawn_slowly("2M");
    // The children first: pgclone's death wakes its reaper, which could remove the directory before a kill
    // sent right after reached it (seen on a loaded machine).
    let mut tree: Vec<u32> = children_of(running.pid()).into_iter().map(|(pid, _)| pid).collect();
    tree.push(running.pid());
    for pid in &tree {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    let _ = running.wait();
    let killed = std::time::Instant::now();
    let left = entries_starting_with(&s.lab.tmpdir(), "pgclone-");
    assert_eq!(left.len(), 1, "the killed run's directory is left: {left:?}");
    // At once, as Patroni retries: the directory is seconds old, and its free lock alone says it is nobody's.
    let next = s.pgclone().spawn();
    assert!(killed.elapsed() < Duration::from_secs(2), "the next run started {:?} after the kill", killed.elapsed());
    next.wait().assert_success();
    assert!(!left[0].exists(), "{} is still there", left[0].display());
    s.assert_standby(&s.replica, "h_reap", None);
}

/// --primary-pgdata naming a stopped copy of the very cluster (same system identifier) instead of the running
/// server's directory: the clone refuses, naming both positions, instead of copying the old files under the
/// live server's backup_label and WAL (a standby that starts, with wrong data).
#[test]
fn a_copy_of_the_cluster_is_not_the_live_directory() {
    let s = Setup::with_pgbench("h-live", 1);
    let copy = s.lab.path().join("old-copy");
    Pgclone::new(&s.primary, &s.sshd, &copy).run().assert_success();
    s.primary.psql("update pgbench_accounts set abalance = abalance + 1 where aid < 100");
    let mut run = s.pgclone();
    run.primary_pgdata = copy.clone();
    let out = run.run();
    let line = assert_one_error_line(&out);
    assert!(line.contains(&format!("{} on", copy.display())) && line.contains("not the live data directory"), "{line}");
    s.assert_clean();
}

/// The rsync transport's data goes through ssh: its daemon listens on the primary's loopback only, reached by a
/// port forward per worker, unless --data-channel tcp asks for clear text over direct TCP (pgclone.sh's way),
/// where it listens on the primary's own address. The native transport refuses clear text. Before, rsync
/// always moved the cluster in clear text.
#[test]
fn rsync_data_goes_through_ssh_unless_clear_text_is_asked_for() {
    if !root_or_skip("rsync_data_goes_through_ssh", "network namespaces need root") {
        return;
    }
    let h = Host::new("h-rsync-ssh", 2, &[]);
    for (channel, bound) in [("ssh", "127.0.0.1"), ("tcp", h.primary.addr.as_str())] {
        let replica = h.lab.path().join(format!("replica-{channel}"));
        let mut run = h.pgclone(&replica);
        run.args(["--transport", "rsync", "--data-channel", channel, "--limit-net-bw", "64M"]);
        let out = run.run();
        out.assert_success();
        let line = out.stderr.lines().find(|l| l.contains("rsync daemon listening on the primary")).unwrap_or_default();
        assert!(line.contains(bound), "--data-channel {channel}: the daemon must listen on {bound}: {line:?}");
        println!("--data-channel {channel}: {line}");
        h.wait_clean(Duration::from_secs(10));
    }
    // The rsync daemon speaks no TLS: asking for it is an error, not a silent downgrade.
    let mut run = h.pgclone(&h.lab.path().join("replica-tls"));
    run.args(["--transport", "rsync", "--data-channel", "tls"]);
    run.run().assert_error("the rsync transport has no TLS");
}

/// A link cut for good in the middle of a copy (the primary on a host of its own): pgclone fails, and on the
/// primary's side everything of the run ends by itself within a minute or so (the agents, the binary brought for
/// them, the rsync daemon and the shells that hold them), although that host's sshd keeps the dead sessions for
/// hours. Before, they ran on until sshd noticed. PostgreSQL's own sessions are the server's to time out.
#[test]
fn a_link_cut_for_good_leaves_nothing_running_on_the_primary() {
    if !root_or_skip("a_link_cut_for_good_leaves_nothing_running_on_the_primary", "network namespaces need root") {
        return;
    }
    let h = Host::new("h-cut", 5, &[]);
    for transport in ["native", "rsync"] {
        let mut run = h.pgclone(&h.lab.path().join(format!("replica-{transport}")));
        run.args(["--transport", transport]);
        let running = run.spawn_slowly("1M");
        std::thread::sleep(Duration::from_secs(2));
        h.ns.cut();
        let cut = std::time::Instant::now();
        let out = running.wait_until(Duration::from_secs(240));
        assert!(!out.status.success(), "{transport}: a clone over a cut link succeeded\n{}", out.report());
        println!(
            "{transport}: pgclone failed {:.0?} after the cut: {}",
            cut.elapsed(),
            out.stderr.lines().last().unwrap_or("")
        );
        wait_for("nothing of the run on the primary's side", Duration::from_secs(150), || {
            let mut left = h.lab.leftover_processes();
            left.extend(
                entries_starting_with(&h.lab.remote_tmpdir(), "pgclone-").iter().map(|d| d.display().to_string()),
            );
            left.is_empty().then_some(()).ok_or(left.join("; "))
        });
        println!("{transport}: the primary's side was clean {:.0?} after the cut", cut.elapsed());
        h.ns.restore();
    }
}

/// A primary whose data directory holds links named like the files a clone writes itself (as whoever controls
/// its `postgres` account can plant): the clone with -R and a manifest writes its backup_label, tablespace_map,
/// backup_manifest, standby.signal, postgresql.auto.conf and pg_control as files of its own, never through the
/// links into the files they point at on this host. Before, the first four were recreated as links and
/// written through.
#[test]
fn links_named_like_the_files_a_clone_writes_never_lead_outside_the_replica() {
    let s = Setup::with_pgbench("h-planted", 1);
    let outside = s.lab.mkdir("outside");
    let names = [
        "backup_label",
        "tablespace_map",
        "backup_manifest",
        "standby.signal",
        "postgresql.auto.conf",
        "global/pg_control.pgclone-new",
    ];
    let target = |name: &str| outside.join(name.replace('/', "_"));
    for name in names {
        // A comment: the primary itself reads its postgresql.auto.conf through the link.
        s.lab.write(target(name), "# untouched\n");
        let _ = fs::remove_file(s.primary.data.join(name));
        std::os::unix::fs::symlink(target(name), s.primary.data.join(name)).unwrap();
    }
    let out = s.pgclone().args(["-R"]).run();
    out.assert_success();
    for name in names {
        assert_eq!(fs::read_to_string(target(name)).unwrap(), "# untouched\n", "{name} was written through");
        if let Ok(m) = fs::symlink_metadata(s.replica.join(name)) {
            assert!(!m.is_symlink(), "{name} is a link in the clone");
        }
    }
    assert!(fs::read_to_string(s.replica.join("backup_label")).unwrap().contains("START WAL LOCATION"));
    assert!(fs::symlink_metadata(s.replica.join("standby.signal")).unwrap().is_file());
    s.assert_standby(&s.replica, "h_planted", None);
}

/// --sync-method fsync (the default on kernels before Linux 5.8, whose syncfs reports no write-back error): every
/// copied file is fsynced, through no link, before pg_control goes in place, and syncfs is not used.
#[test]
fn sync_method_fsync_syncs_every_file_before_pg_control() {
    let s = Setup::with_pgbench("h-fsync", 1);
    let (lines, find) = traced(&s, &["--sync-method", "fsync"]);
    let replica = s.replica.to_string_lossy().into_owned();
    // pg_control is written under a temporary name, then renamed into place (rename is not traced).
    let in_place =
        find(0, &|l| l.contains(&format!("\"{replica}/global/pg_control.pgclone-new\""))).expect("pg_control written");
    for file in ["PG_VERSION", "backup_label", "pgbench_accounts"] {
        let path = match file {
            "pgbench_accounts" => s.replica.join(s.primary.psql("select pg_relation_filepath('pgbench_accounts')")),
            f => s.replica.join(f),
        };
        let opened = find(0, &|l| {
            l.contains("openat(")
                && l.contains(&format!("\"{}\"", path.display()))
                && l.contains("O_NOFOLLOW")
                && !l.contains("O_CREAT")
                && !l.contains("O_WRONLY")
                && !l.contains("O_RDWR")
        })
        .unwrap_or_else(|| panic!("{file} opened to be synced"));
        let fd = lines[opened].rsplit("= ").next().unwrap().trim().to_string();
        let synced = find(opened, &|l| l.contains(&format!("fsync({fd})"))).expect("and fsynced");
        assert!(synced < in_place, "{file} synced at line {synced}, pg_control in place at {in_place}");
    }
    assert!(!lines.iter().any(|l| l.contains("syncfs(")), "no syncfs with --sync-method fsync");
}
