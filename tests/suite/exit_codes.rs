//! What scripts and orchestrators act on: `--check`, which makes every check a clone makes and changes nothing,
//! and an exit status (and `--json` class) for each way a run can end, against a real PostgreSQL 15 primary and
//! a real sshd. A failure during the copy exits 1 (see `guarantees::fault_mid_copy`).

use crate::support::*;
use std::fs;
use std::time::Duration;

/// `--json`'s object on stdout.
fn json(out: &CmdOutput) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{}", out.report()))
}

/// The exit status and, from --json, the class and exit code it reports.
fn assert_ended(out: &CmdOutput, code: i32, class: &str) {
    assert_eq!(out.status.code(), Some(code), "expected exit {code} ({class})\n{}", out.report());
    let v = json(out);
    assert_eq!(
        (v["ok"].as_bool(), v["class"].as_str(), v["exit_code"].as_i64()),
        (Some(false), Some(class), Some(code.into())),
        "{v}"
    );
    println!("exit {code} ({class}): {}", v["error"]);
}

#[test]
fn check_changes_nothing_and_each_ending_has_its_exit_status() {
    let s = Setup::with_pgbench("exit-codes", 1);

    // --check into a directory that does not exist yet: passes, creates nothing, leaves nothing on the primary.
    let mut run = s.pgclone();
    run.args(["--check", "--json"]);
    let out = run.run();
    out.assert_success();
    let v = json(&out);
    assert_eq!(v["check"].as_bool(), Some(true), "{v}");
    assert!(v["files"].as_u64().unwrap_or(0) > 0 && v["bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    // Its last line says what it checked, and no more than is true: it did stream WAL on a slot (before, it
    // said "nothing was changed").
    let last = out.stderr.lines().last().unwrap_or("");
    let start = format!("pgclone: check passed: a clone of {} files, ", v["files"]);
    let end = format!(
        " from PostgreSQL 15 into {} can start. Checked: the replica directory, the role's privileges and the \
         primary's WAL settings, a WAL stream (on a temporary slot, gone with it), the ssh login and the primary's \
         data directory {}, room for the WAL and the data. No backup was started and the replica directory was left \
         as it was",
        s.replica.display(),
        s.primary.data.display()
    );
    assert!(last.starts_with(&start) && last.ends_with(&end), "last line: {last:?}\nwanted: {start}...{end}");
    println!("{last}");
    assert!(!s.replica.exists(), "--check created {}", s.replica.display());
    assert_primary_clean(&s.lab, &s.primary);

    // Usage: a flag combination pgclone refuses itself.
    let mut run = s.pgclone();
    run.args(["--transport", "rsync", "--data-channel", "tls", "--json"]);
    assert_ended(&run.run(), 2, "usage");

    // Refused: a replica directory that holds something else; with and without --check, and left as it was.
    fs::create_dir_all(&s.replica).unwrap();
    s.lab.write(s.replica.join("notes.txt"), "mine\n");
    for flags in [&["--json"][..], &["--json", "--check"][..]] {
        let mut run = s.pgclone();
        run.args(flags);
        let out = run.run();
        assert_ended(&out, 3, "refused");
        out.assert_error("is not empty");
        assert_eq!(fs::read_to_string(s.replica.join("notes.txt")).unwrap(), "mine\n");
        assert_eq!(fs::read_dir(&s.replica).unwrap().count(), 1, "the refused run changed the directory");
    }
    fs::remove_dir_all(&s.replica).unwrap();
    assert_primary_clean(&s.lab, &s.primary);

    // Standby: the clone is complete, but the standby cannot start (its port is the primary's, in use).
    let mut run = s.pgclone();
    run.args(["--start", "--replica-port", &s.primary.port.to_string(), "--wait-streaming", "20", "--json"]);
    run.timeout = Duration::from_secs(240);
    let out = run.run();
    assert_ended(&out, 4, "standby");
    assert!(s.replica.join("global/pg_control").is_file(), "the clone itself is not complete");
    assert_primary_clean(&s.lab, &s.primary);
}
