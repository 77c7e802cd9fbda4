//! From copy to running standby (issue 5): -R, --conninfo-password, --application-name, --replica-port,
//! --start, --create-slot, --json, and cloning from a standby. Each against a real PostgreSQL 15
//! primary under a little pgbench write load; every standby is started by the test (or by pgclone
//! --start) exactly as pgclone left the directory and must stream and end with the primary's data.

use crate::support::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

// Application names must not start with "pgclone": the clean checks look for those sessions.
const WAIT: Duration = Duration::from_secs(120);

/// Primary (PG15, pgbench scale `scale`), sshd, and a running 1-client pgbench that has written.
fn setup(name: &str, scale: u32) -> (Lab, Postgres, Sshd, Bg) {
    let lab = Lab::new(name);
    let primary = Postgres::primary(&lab, "primary", &[]);
    primary.pgbench_init(scale);
    let sshd = Sshd::start(&lab);
    let load = primary.pgbench_load(1);
    primary.wait_for_pgbench_writes();
    (lab, primary, sshd, load)
}

/// A valid clone of `primary` over `sshd` into `replica`, allowed 180 s.
fn run_into(primary: &Postgres, sshd: &Sshd, replica: &Path) -> Pgclone {
    let mut run = Pgclone::new(primary, sshd, replica);
    run.timeout = Duration::from_secs(180);
    run
}

fn auto_conf(replica: &Path) -> String {
    fs::read_to_string(replica.join("postgresql.auto.conf")).expect("clone has postgresql.auto.conf")
}

/// primary_conninfo as pgclone wrote it (the last assignment), parsed.
fn conninfo(replica: &Path) -> Vec<(String, String)> {
    let conf = auto_conf(replica);
    let ci = conf_value(&conf, "primary_conninfo").unwrap_or_else(|| panic!("no primary_conninfo in:\n{conf}"));
    parse_conninfo(&ci)
}

fn get<'a>(ci: &'a [(String, String)], key: &str) -> Option<&'a str> {
    ci.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Stops the load, waits until every `(upstream, app)` replayed the primary's position and checks each
/// server's pgbench tables equal the primary's.
fn assert_caught_up(primary: &Postgres, load: Bg, standbys: &[(&dyn Sql, &str, &dyn Sql)]) {
    stop_load(load, primary);
    let lsn = primary.psql("select pg_current_wal_lsn()");
    let expected = primary.fingerprint();
    for (upstream, app, standby) in standbys {
        wait_replayed(*upstream, app, &lsn, WAIT);
        assert_eq!(standby.psql("select pg_is_in_recovery()"), "t", "{app} is not in recovery");
        assert_eq!(standby.fingerprint(), expected, "{app}'s pgbench tables differ from the primary's");
        println!("{app} replayed {lsn} and matches the primary");
    }
    println!("fingerprint:\n{expected}");
}

/// -R writes standby.signal and primary_conninfo (host, port, user, application_name) plus the
/// --replica-port; without --conninfo-password there is no password in it and the standby needs one
/// from elsewhere (here: PGPASSFILE); with it the password is there and the standby connects with
/// nothing else (no PGPASSWORD, no pgpass file). Both are started by the test as pgclone left them.
#[test]
fn recovery_conf_with_and_without_password_streams_as_application_name() {
    let (lab, primary, sshd, load) = setup("g5-recovery", 2);
    let mut standbys = Vec::new();
    for (app, with_password) in [("g5_nopw", false), ("g5_pw", true)] {
        let replica = lab.path().join(app);
        let port = free_port();
        let mut run = run_into(&primary, &sshd, &replica);
        run.args(["-R", "--application-name", app, "--replica-port", &port.to_string()]);
        if with_password {
            run.arg("--conninfo-password");
        }
        let out = run.run();
        out.assert_success();
        println!("{}", out.summary_line());

        let signal = replica.join("standby.signal");
        assert!(signal.is_file(), "-R did not create {}", signal.display());
        let conf = auto_conf(&replica);
        println!("{app}: postgresql.auto.conf:\n{conf}");
        let ci = conninfo(&replica);
        assert_eq!(get(&ci, "host"), Some("127.0.0.1"), "{ci:?}");
        assert_eq!(get(&ci, "port"), Some(primary.port.to_string().as_str()), "{ci:?}");
        assert_eq!(get(&ci, "user"), Some(SUPERUSER), "{ci:?}");
        assert_eq!(get(&ci, "application_name"), Some(app), "{ci:?}");
        assert_eq!(conf_value(&conf, "port"), Some(port.to_string()), "--replica-port not the effective port");
        if with_password {
            assert_eq!(get(&ci, "password"), Some(PASSWORD), "--conninfo-password: {ci:?}");
        } else {
            assert_eq!(get(&ci, "password"), None, "password in primary_conninfo without --conninfo-password");
            assert!(!conf.contains(PASSWORD), "the password is in postgresql.auto.conf:\n{conf}");
        }

        let creds = if with_password {
            Creds::Nothing
        } else {
            Creds::PassFile(pgpass_file(&lab, &format!("{app}.pgpass"), "127.0.0.1", primary.port))
        };
        let standby = Server::start(&lab, &replica, app, port, creds);
        wait_streaming(&primary, &standby, app, WAIT);
        assert_eq!(standby.psql("show port"), port.to_string());
        let receiver = standby.psql("select status || ' ' || conninfo from pg_stat_wal_receiver");
        println!("{app}: wal receiver: {receiver}");
        assert!(receiver.starts_with("streaming "), "{receiver}");
        standbys.push(standby);
    }
    assert_caught_up(&primary, load, &[(&primary, "g5_nopw", &standbys[0]), (&primary, "g5_pw", &standbys[1])]);
    drop(standbys);
    assert_primary_clean(&lab, &primary);
}

/// --start: pgclone starts the standby itself with PG15's pg_ctl and exits 0 only once the primary
/// shows it streaming; the summary says so.
#[test]
fn start_exits_once_the_standby_streams() {
    let (lab, primary, sshd, load) = setup("g5-start", 2);
    let replica = lab.path().join("replica");
    let port = free_port();
    let app = "g5_started";
    // Stops the standby whatever happens below (pgclone started it; we own it from here).
    let standby = Server::adopt(&lab, &replica, app, port);
    let mut run = run_into(&primary, &sshd, &replica);
    run.args(["--start", "--replica-port", &port.to_string(), "--application-name", app]);
    // The standby starts without pgclone's PGPASSWORD: its password comes from ~/.pgpass, as a DBA's would.
    let home = lab.mkdir("home");
    pgpass_file(&lab, "home/.pgpass", "127.0.0.1", primary.port);
    run.env("HOME", Some(&home.to_string_lossy()));
    let out = run.run();
    let state = primary.psql(&format!("select state from pg_stat_replication where application_name = '{app}'"));
    out.assert_success();
    let summary = out.summary_line();
    println!("{summary}");
    assert_eq!(state, "streaming", "pgclone --start exited 0 before {app} streamed\n{}", out.report());
    assert!(summary.contains(&format!("standby {app} is streaming")), "summary: {summary}");
    assert!(replica.join("standby.signal").is_file(), "--start implies -R");
    assert_eq!(standby.psql("show port"), port.to_string());
    // Started with PG15's own binaries (pg_ctl from /usr/lib/postgresql/15/bin).
    let pid = fs::read_to_string(replica.join("postmaster.pid")).expect("postmaster.pid");
    let exe = fs::read_link(format!("/proc/{}/exe", pid.lines().next().unwrap().trim())).expect("postmaster exe");
    assert_eq!(exe, Path::new(PG15_BIN).join("postgres"), "standby runs {}", exe.display());
    assert_caught_up(&primary, load, &[(&primary, app, &standby)]);
    standby.stop();
    assert_primary_clean(&lab, &primary);
}

/// The row of slot `name`: type, temporary, active.
fn slot_row(primary: &Postgres, name: &str) -> String {
    primary.psql(&format!(
        "select concat_ws('|', slot_type, temporary, active) from pg_replication_slots where slot_name = '{name}'"
    ))
}

/// --create-slot S -R: a permanent physical slot S, used by the standby (primary_slot_name) and active
/// once it runs; a second run naming S fails before copying; runs interrupted by SIGKILL or SIGTERM
/// during the copy, or by SIGTERM once S was made, leave no slot behind.
#[test]
fn create_slot_is_permanent_used_and_never_left_by_a_failed_run() {
    let (lab, primary, sshd, load) = setup("g5-slot", 2);
    let slot = "g5_slot";
    let app = "g5_slotted";
    let replica = lab.path().join("replica");
    let port = free_port();
    let mut run = run_into(&primary, &sshd, &replica);
    run.args(["-R", "--create-slot", slot, "--application-name", app, "--replica-port", &port.to_string()]);
    let out = run.run();
    out.assert_success();
    println!("{}", out.summary_line());
    assert_eq!(slot_row(&primary, slot), "physical|f|f", "slot {slot} after the run");
    assert_eq!(conf_value(&auto_conf(&replica), "primary_slot_name").as_deref(), Some(slot));
    wait_clean(&lab, &primary, &[slot], &[(lab.tmpdir(), "pgclone-")], Duration::from_secs(10));

    let standby = Server::start(&lab, &replica, app, port, Creds::Env);
    wait_streaming(&primary, &standby, app, WAIT);
    let used = primary.psql(&format!(
        "select s.active, s.active_pid = r.pid from pg_replication_slots s, pg_stat_replication r \
         where s.slot_name = '{slot}' and r.application_name = '{app}'"
    ));
    assert_eq!(used, "t|t", "{app} does not stream through slot {slot}");
    assert_eq!(standby.psql("select slot_name from pg_stat_wal_receiver"), slot);

    // Same name again: refused before anything is copied.
    let again = lab.path().join("again");
    let mut run = run_into(&primary, &sshd, &again);
    run.args(["-R", "--create-slot", slot]);
    let out = run.run();
    out.assert_error("already exists");
    assert!(!out.stderr.contains("copying"), "refused only after copying:\n{}", out.stderr);
    assert!(!again.join("global").exists(), "{} was filled", again.display());
    println!("second run with --create-slot {slot}: {}", out.summary_line());

    // Interrupted runs: no slot of their own left, temporary or permanent. The first two are slowed
    // down (1 MiB/s for ~30 MB) so that the signal lands mid-copy.
    let cases: [(&str, Signal, &str, bool); 3] = [
        ("g5_killed", Signal::KILL, "copying", true),
        ("g5_termed", Signal::TERM, "copying", true),
        ("g5_late", Signal::TERM, "created replication slot", false),
    ];
    for (name, sig, after, slow) in cases {
        let dir = lab.path().join(name);
        let mut run = run_into(&primary, &sshd, &dir);
        run.args(["-R", "--create-slot", name, "--application-name", name]);
        if slow {
            run.args(["--compress", "none", "--limit-net-bw", "1M"]);
        }
        let mut p = run.spawn();
        p.wait_for_log(after, Duration::from_secs(60));
        if slow {
            std::thread::sleep(Duration::from_millis(1500));
            assert!(!p.stderr_so_far().contains("backup stopped"), "the copy was over before the signal");
        }
        p.signal(sig);
        let out = p.wait_until(Duration::from_secs(120));
        println!("{name}: {sig:?} after {after:?}: {} / {}", out.status, out.summary_line());
        if sig == Signal::KILL {
            assert_eq!(out.status.code(), None, "{}", out.report());
        } else if out.status.success() {
            // SIGTERM after the slot was made may come too late to stop the run: then it is complete.
            assert!(dir.join("global/pg_control").exists(), "exit 0 without pg_control\n{}", out.report());
            assert_eq!(slot_row(&primary, name), "physical|f|f");
            primary.psql(&format!("select pg_drop_replication_slot('{name}')"));
            println!("{name}: SIGTERM came after the finish; the run completed");
        } else {
            out.assert_error("interrupted by SIGTERM");
            assert!(!dir.join("global/pg_control").exists(), "failed run left pg_control");
        }
        let took = wait_clean(&lab, &primary, &[slot], &[(lab.tmpdir(), "pgclone-")], Duration::from_secs(10));
        println!("{name}: clean {took:.1?} after the end (no slot {name}, no temporary slot)");
        assert_eq!(slot_row(&primary, name), "", "slot {name} left behind");
    }
    assert_caught_up(&primary, load, &[(&primary, app, &standby)]);
    drop(standby);
    primary.psql(&format!("select pg_drop_replication_slot('{slot}')"));
    assert_primary_clean(&lab, &primary);
}

/// Fields of a JSON object, checked and flattened by python3 (no JSON crate in the tests):
/// `key<TAB>python type<TAB>json value` per line; nested objects as `key.sub`.
fn json_fields(lab: &Lab, name: &str, json: &str) -> Vec<(String, String, String)> {
    let file = lab.write(format!("{name}.json"), json);
    let script = r#"
import json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)        # one JSON value and nothing else
assert isinstance(d, dict), type(d)
def out(prefix, o):
    for k, v in o.items():
        print("%s%s\t%s\t%s" % (prefix, k, type(v).__name__, json.dumps(v)))
        if isinstance(v, dict):
            out(prefix + k + ".", v)
out("", d)
"#;
    let out = run_bounded(std::process::Command::new("/usr/bin/python3").args(["-c", script]).arg(&file), WAIT);
    assert!(out.success(), "stdout is not one JSON object:\n{json}\n{}", out.report());
    out.stdout
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            (f.next().unwrap().into(), f.next().unwrap().into(), f.next().unwrap_or("").into())
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String, String)], key: &str) -> (&'a str, &'a str) {
    fields
        .iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, t, v)| (t.as_str(), v.as_str()))
        .unwrap_or_else(|| panic!("no {key:?} in {fields:?}"))
}

fn lsn(s: &str) -> u64 {
    let s = s.trim_matches('"');
    let (hi, lo) = s.split_once('/').unwrap_or_else(|| panic!("not an LSN: {s}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// --json: stdout is exactly one JSON object, with the run's numbers on success and
/// {"ok":false,"error":...} (the error line's text) with exit code 1 on failure.
#[test]
fn json_summary_on_success_and_failure() {
    let (lab, primary, sshd, load) = setup("g5-json", 2);
    let replica = lab.path().join("replica");
    let mut run = run_into(&primary, &sshd, &replica);
    run.arg("--json");
    let out = run.run();
    out.assert_success();
    println!("stdout: {}", out.stdout.trim());
    assert_eq!(out.stdout.trim().lines().count(), 1, "stdout holds more than the JSON line:\n{}", out.stdout);
    let f = json_fields(&lab, "success", &out.stdout);
    assert_eq!(field(&f, "ok"), ("bool", "true"));
    // The schema the README documents ("--json"), pinned: a key added, renamed or removed fails here first.
    let mut keys: Vec<&str> =
        f.iter().map(|(k, _, _)| k.as_str()).filter(|k| !k.contains('.') || k.starts_with("primary.")).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes",
            "compression",
            "data_channel",
            "elapsed_seconds",
            "files",
            "moved_bytes",
            "ok",
            "operation",
            "peak_rss_kb",
            "pgclone_version",
            "phases_seconds",
            "postgres_clear_text",
            "primary",
            "primary.host",
            "primary.major",
            "primary.system_identifier",
            "replica",
            "resync",
            "reused_bytes",
            "standby",
            "start_lsn",
            "stop_lsn",
            "timeline",
            "transport",
            "vanished_files",
            "wal_segments",
            "warnings",
            "wire_bytes",
        ]
    );
    assert_eq!((field(&f, "operation"), field(&f, "transport")), (("str", "\"clone\""), ("str", "\"native\"")));
    assert_eq!(field(&f, "primary.system_identifier").0, "str", "64 bits do not fit a JSON number");
    for key in ["files", "bytes", "timeline"] {
        let (t, v) = field(&f, key);
        assert_eq!(t, "int", "{key}");
        assert!(v.parse::<u64>().unwrap() > 0, "{key} = {v}");
    }
    assert_eq!(field(&f, "timeline").1, "1");
    let (start, stop) = (field(&f, "start_lsn"), field(&f, "stop_lsn"));
    assert_eq!((start.0, stop.0), ("str", "str"));
    assert!(lsn(stop.1) >= lsn(start.1), "stop_lsn {} < start_lsn {}", stop.1, start.1);
    assert_eq!(field(&f, "phases_seconds").0, "dict");
    for phase in ["preflight", "connect", "backup_start", "copy", "backup_stop", "finalize"] {
        let (t, v) = field(&f, &format!("phases_seconds.{phase}"));
        assert!(t == "float" || t == "int", "phases_seconds.{phase} is {t}: {v}");
    }
    // Human logs went to stderr, and the summary line with them.
    assert!(out.stderr.contains("pgclone: cloned "), "{}", out.stderr);
    drop(load);

    // Failure: a key sshd does not accept.
    let (key, config) = sshd.unauthorized_key("g5_wrong_key");
    let mut run = run_into(&primary, &sshd, &lab.path().join("failed"));
    run.ssh_mut().key = key;
    run.ssh_mut().config = config;
    run.arg("--json");
    let out = run.run();
    println!("failure stdout: {}", out.stdout.trim());
    assert_eq!(out.status.code(), Some(3), "an ssh login refused is a refusal\n{}", out.report());
    let last = out.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let message = last.strip_prefix("pgclone: error: ").unwrap_or_else(|| panic!("last stderr line {last:?}"));
    assert_eq!(out.stdout.trim().lines().count(), 1, "{}", out.stdout);
    let f = json_fields(&lab, "failure", &out.stdout);
    assert_eq!(field(&f, "ok"), ("bool", "false"));
    assert_eq!((field(&f, "class"), field(&f, "exit_code")), (("str", "\"refused\""), ("int", "3")), "JSON-encoded");
    let (t, err) = field(&f, "error");
    assert_eq!(t, "str");
    let err = run_bounded(
        std::process::Command::new("/usr/bin/python3").args([
            "-c",
            "import json,sys; print(json.loads(sys.argv[1]))",
            err,
        ]),
        WAIT,
    )
    .stdout;
    assert_eq!(err.trim_end(), message, "JSON error differs from the error line");
    assert!(message.contains("ssh"), "{message}");
    assert_primary_clean(&lab, &primary);
}

/// Cloning FROM a standby: pg_basebackup makes a standby of the primary, pgclone clones that standby
/// (its port, its data directory) while the primary takes writes, and the result, started as a
/// cascading standby of the standby, streams and ends with the primary's data.
#[test]
fn clones_from_a_standby_into_a_cascading_standby() {
    let lab = Lab::new("g5-from-standby");
    let primary = Postgres::primary(&lab, "primary", &[]);
    primary.pgbench_init(2);
    let sshd = Sshd::start(&lab);
    let mid_data = lab.path().join("mid");
    lab.run(primary.client("pg_basebackup", SUPERUSER).arg("-D").arg(&mid_data).args(["-X", "stream", "-c", "fast"]));
    let mid = Postgres::standby(&lab, &mid_data, &primary, "g5_mid");
    wait_streaming(&primary, &mid, "g5_mid", WAIT);
    let load = primary.pgbench_load(1);
    primary.wait_for_pgbench_writes();

    let replica = lab.path().join("cascade");
    let port = free_port();
    let app = "g5_cascade";
    let mut run = run_into(&mid, &sshd, &replica);
    run.args(["-R", "--application-name", app, "--replica-port", &port.to_string()]);
    let out = run.run();
    out.assert_success();
    println!("{}", out.summary_line());
    let ci = conninfo(&replica);
    assert_eq!(get(&ci, "port"), Some(mid.port.to_string().as_str()), "-R should point at the standby cloned");
    let label = fs::read_to_string(replica.join("backup_label")).expect("backup_label");
    println!("backup_label:\n{label}");
    assert!(label.contains("BACKUP FROM: standby"), "{label}");
    // Recovery of a backup from a standby ends at its pg_control's minRecoveryPoint, which replay may have
    // moved past the stop position by the time pgclone read the file: the WAL laid in must reach it.
    let controldata = lab.run(lab.cmd(Path::new(PG15_BIN).join("pg_controldata")).arg(&replica));
    let min_recovery = controldata
        .lines()
        .find_map(|l| l.strip_prefix("Minimum recovery ending location:"))
        .map(|v| v.trim().to_string())
        .expect("pg_controldata shows the minimum recovery ending location");
    let (hi, lo) = min_recovery.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let needed =
        format!("00000001{:08X}{:08X}", (lsn.saturating_sub(1) >> 24) >> 8, (lsn.saturating_sub(1) >> 24) & 0xff);
    assert!(replica.join("pg_wal").join(&needed).exists(), "minRecoveryPoint {min_recovery} needs {needed} in pg_wal");

    let cascade = Server::start(&lab, &replica, app, port, Creds::Env);
    wait_streaming(&mid, &cascade, app, WAIT);
    stop_load(load, &primary);
    let lsn = primary.psql("select pg_current_wal_lsn()");
    wait_replayed(&primary, "g5_mid", &lsn, WAIT);
    wait_replayed(&mid, app, &lsn, WAIT);
    let expected = primary.fingerprint();
    assert_eq!(mid.fingerprint(), expected, "the standby cloned from differs from the primary");
    assert_eq!(cascade.fingerprint(), expected, "the cascading clone differs from the primary");
    assert_eq!(cascade.psql("select pg_is_in_recovery()"), "t");
    println!("cascade replayed {lsn}; fingerprint:\n{expected}");
    drop(cascade);
    assert_primary_clean(&lab, &mid);
    assert_primary_clean(&lab, &primary);
}

/// `kill -9` while the clone is being finished (after "WAL received through", before the clone is complete):
/// the --create-slot slot is only made once pg_control is in place, so the killed run leaves no slot at all
/// (neither the permanent one nor the stream's temporary one).
#[test]
fn create_slot_not_left_by_kill_during_finalize() {
    let (lab, primary, sshd, load) = setup("g5-slot-kill", 2);
    for attempt in 1..=3 {
        let name = format!("g5_fin_kill{attempt}");
        let dir = lab.path().join(&name);
        let mut run = run_into(&primary, &sshd, &dir);
        run.args(["-R", "--create-slot", &name]);
        let mut p = run.spawn();
        p.wait_for_log("WAL received through", Duration::from_secs(60));
        p.signal(Signal::KILL);
        let out = p.wait_until(Duration::from_secs(60));
        if out.status.success() || out.stderr.contains("created replication slot") {
            // The kill came after the clone was complete: then the slot is the finished standby's. Try again.
            let _ = primary.try_psql(&format!("select pg_drop_replication_slot('{name}')"));
            continue;
        }
        println!("{name}: killed at {:?}", out.stderr.lines().last());
        wait_clean(&lab, &primary, &[], &[(lab.tmpdir(), "pgclone-")], Duration::from_secs(10));
        drop(load);
        return;
    }
    println!("inconclusive: the kill never landed before the clone was complete");
}

/// `-S NAME` (pg_basebackup's): the WAL stream goes through an existing physical slot, no temporary slot of
/// pgclone's is made, -R makes the standby use the slot, which then serves the standby; a slot that does not
/// exist is refused before anything changes.
#[test]
fn stream_slot_is_used_by_the_stream_and_the_standby() {
    let (lab, primary, sshd, load) = setup("g5-stream-slot", 1);
    let replica = lab.path().join("replica");
    let mut run = run_into(&primary, &sshd, &replica);
    run.args(["-S", "not_there", "-R"]);
    run.run().assert_refused("no such replication slot");
    assert_no_control_file(&replica);
    primary.psql("select pg_create_physical_replication_slot('held')");
    let mut run = run_into(&primary, &sshd, &replica);
    run.args(["-S", "held", "-R"]);
    let running = run.spawn_slowly("8M");
    let during =
        primary.psql("select string_agg(slot_name || ':' || active, ',' order by slot_name) from pg_replication_slots");
    running.wait().assert_success();
    assert_eq!(during, "held:true", "the stream must use the slot and no temporary one");
    assert!(auto_conf(&replica).contains("primary_slot_name = 'held'"), "{}", auto_conf(&replica));
    wait_clean(&lab, &primary, &["held"], &lab.run_dirs(), WAIT);
    assert_eq!(slot_row(&primary, "held"), "physical|f|f", "the slot stays, unused between clone and start");
    let reserved = primary.psql("select restart_lsn is not null from pg_replication_slots where slot_name = 'held'");
    assert_eq!(reserved, "t", "the stream moved the slot: it holds the WAL the standby needs");
    let standby = Postgres::standby(&lab, &replica, &primary, "g5_held");
    wait_streaming(&primary, &standby, "g5_held", WAIT);
    assert_eq!(slot_row(&primary, "held"), "physical|f|t", "the standby streams through the slot");
    drop(load);
}
