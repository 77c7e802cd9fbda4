//! What pgclone promises after every run, as checks the tests share: a failure is one clear
//! `pgclone: error:` line and a normal exit; nothing of a run is left behind (slot, session, process, run
//! directory) and a failed clone never looks startable; a finished clone starts as a standby that
//! streams and holds the primary's data.

use super::lab::*;
use super::postgres::*;
use super::process::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

impl CmdOutput {
    /// pgclone's error contract: a normal non-zero exit (not a crash) and stderr's last line is
    /// `pgclone: error: <one line>` containing `needle` (case-sensitive).
    pub fn assert_error(&self, needle: &str) {
        self.assert_error_any(&[needle]);
    }

    /// Refused by a check before anything changed: exit code 3, and the last line contains `needle`.
    pub fn assert_refused(&self, needle: &str) {
        self.assert_error(needle);
        assert_eq!(self.status.code(), Some(3), "a refusal exits 3\n{}", self.report());
    }

    /// Like `assert_error`, with the last line containing at least one of `needles`; prints that line.
    pub fn assert_error_any(&self, needles: &[&str]) {
        let code = self.status.code();
        assert!(
            code.is_some() && code != Some(0),
            "expected pgclone to exit non-zero with one of {needles:?}\n{}",
            self.report()
        );
        let last = self.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            last.starts_with("pgclone: error: ") && needles.iter().any(|n| last.contains(n)),
            "stderr's last line should be `pgclone: error: ...` with one of {needles:?}, got {last:?}\n{}",
            self.report()
        );
        println!("pgclone exited {}: {last}", self.status);
    }
}

/// pgclone's failure contract, checked without assuming what failed: a normal exit with the code of a failed
/// (1), refused (3) or standby (4) run, and exactly one `pgclone: error: ` line, the last one of stderr. Returns
/// that line.
pub fn assert_one_error_line(out: &CmdOutput) -> String {
    assert!(matches!(out.status.code(), Some(1 | 3 | 4)), "expected exit code 1, 3 or 4\n{}", out.report());
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("pgclone: error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one `pgclone: error:` line, got {errors:?}\n{}", out.report());
    let last = out.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert_eq!(last, errors[0], "the error line is not stderr's last line\n{}", out.report());
    last.to_string()
}

/// What of pgclone is left on a primary and around it: replication slots other than `allowed_slots`,
/// `pgclone*` sessions, this lab's tagged or named processes (here and in ssh sessions: rsync daemon, its
/// children, shells; rsync, ssh, pgclone), entries of `dirs` (each `(dir, name prefix)`).
fn remains(lab: &Lab, primary: &dyn Sql, allowed_slots: &[&str], dirs: &[(PathBuf, &str)]) -> Vec<String> {
    let allowed: Vec<String> = allowed_slots.iter().map(|s| format!("'{s}'")).collect();
    let allowed = if allowed.is_empty() { "''".to_string() } else { allowed.join(", ") };
    let sql = format!(
        "select 'slot ' || concat_ws(' ', slot_name, slot_type, 'temporary=' || temporary, 'active=' || active) \
         from pg_replication_slots where slot_name not in ({allowed}) \
         union all select 'session ' || concat_ws(' ', pid, application_name, backend_type, state) \
         from pg_stat_activity where application_name like 'pgclone%'"
    );
    let mut found: Vec<String> = match primary.try_psql(&sql) {
        Ok(rows) => rows.lines().map(str::to_string).collect(),
        Err(e) => vec![e],
    };
    found.extend(lab.leftover_processes());
    for (dir, prefix) in dirs {
        found.extend(entries_starting_with(dir, prefix).iter().map(|p| format!("directory {}", p.display())));
    }
    found
}

/// Wait up to `within` until nothing of pgclone remains (see `remains`); returns how long that took.
pub fn wait_clean(
    lab: &Lab,
    primary: &dyn Sql,
    allowed_slots: &[&str],
    dirs: &[(PathBuf, &str)],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    wait_for("pgclone's slots, sessions, processes and run directories to be gone", within, || {
        match remains(lab, primary, allowed_slots, dirs) {
            v if v.is_empty() => Ok(()),
            v => Err(v.join("\n")),
        }
    });
    start.elapsed()
}

/// Wait up to `within` until nothing of pgclone remains: no slot at all, and no run directory in
/// `Lab::run_dirs`; returns how long that took.
pub fn wait_primary_clean(lab: &Lab, primary: &dyn Sql, within: Duration) -> Duration {
    wait_clean(lab, primary, &[], &lab.run_dirs(), within)
}

/// After a pgclone run: within 10 s nothing of it remains (see `wait_primary_clean`).
pub fn assert_primary_clean(lab: &Lab, primary: &dyn Sql) {
    wait_primary_clean(lab, primary, Duration::from_secs(10));
}

/// `assert_primary_clean` plus: the replica dir holds no global/pg_control (a failed clone must
/// never look startable).
pub fn assert_clean_after_error(lab: &Lab, primary: &dyn Sql, replica: &Path) {
    assert_primary_clean(lab, primary);
    assert_no_control_file(replica);
}

pub fn assert_no_control_file(replica: &Path) {
    let control = replica.join("global/pg_control");
    assert!(!control.exists(), "failed clone left {} behind", control.display());
}

/// Start the clone in `replica` as a standby of `primary` (application_name `name`); once it streams, stop
/// `load` (if any), wait until it replayed the primary's current WAL position and check it is in recovery
/// and its pgbench tables equal the primary's. Returns the running standby.
pub fn assert_standby_matches(lab: &Lab, primary: &Postgres, replica: &Path, name: &str, load: Option<Bg>) -> Postgres {
    let standby = Postgres::standby(lab, replica, primary, name);
    wait_streaming(primary, &standby, name, Duration::from_secs(120));
    if let Some(load) = load {
        stop_load(load, primary);
    }
    let lsn = primary.psql("select pg_current_wal_lsn()");
    wait_replayed(primary, name, &lsn, Duration::from_secs(120));
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t", "{name} is not in recovery");
    let fingerprint = primary.fingerprint();
    assert_eq!(standby.fingerprint(), fingerprint, "{name}'s pgbench tables differ from the primary's");
    println!("{name} streams, replayed {lsn}, fingerprint equals the primary's:\n{fingerprint}");
    standby
}
