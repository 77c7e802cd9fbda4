//! `pgclone patroni ...`: pgclone as a Patroni replica method (docs/patroni.md). Patroni runs the method's
//! `command` with `--scope=`, `--role=replica`, `--datadir=`, `--connstring=` (a libpq key=value string, its
//! password in the file `PGPASSFILE` names) and every other key of the method's section as `--key=value`
//! (postgresql/bootstrap.py, `create_replica`). This turns those into pgclone's own flags; what Patroni does
//! itself (recovery settings, starting the server) is left to Patroni.

use std::collections::BTreeSet;
use std::ffi::OsString;

/// Keys Patroni adds or reads itself.
const PATRONI_KEYS: [&str; 6] = ["scope", "role", "keep_data", "no_params", "no_leader", "no_master"];
/// pgclone flags a replica method must not set: Patroni owns the directory, the recovery settings and the start.
/// Ignored with a warning: what they would do, Patroni does.
const PATRONI_OWNS: [&str; 6] =
    ["replica-pgdata", "write-recovery-conf", "start", "replica-port", "application-name", "create-slot"];

/// pgclone flags that are no method key: with them the method would exit 0 without building the replica, and
/// Patroni would start an empty directory.
const NOT_A_METHOD: [&str; 2] = ["check", "help"];

/// pgclone's command line for Patroni's arguments, and a warning for each key it ignores. `flags`: pgclone's
/// long flags with whether each takes a value. A key that is neither Patroni's nor a pgclone flag is an error, not
/// a warning: a misspelled `paralel` must fail the method, so that Patroni tries its next one, rather than build
/// the replica without the setting the DBA meant.
pub fn translate(args: &[String], flags: &[(String, bool)]) -> Result<(Vec<OsString>, Vec<String>), String> {
    let mut out: Vec<OsString> = vec!["pgclone".into()];
    let (mut warnings, mut given) = (Vec::new(), BTreeSet::new());
    let (mut datadir, mut primary) = (None, None);
    for arg in args {
        let Some((key, value)) = arg.strip_prefix("--").and_then(|a| a.split_once('=')) else {
            warnings.push(format!("ignoring {arg:?}: Patroni passes --key=value"));
            continue;
        };
        let flag = key.replace('_', "-");
        match flag.as_str() {
            "datadir" => datadir = Some(value.to_string()),
            "connstring" => out.extend(["--dbname".into(), value.into()]),
            "primary-pgdata" => primary = Some(value.to_string()),
            "role" if value != "replica" => return Err(format!("--role={value}: a replica method makes replicas")),
            _ if PATRONI_KEYS.contains(&key) => {}
            f if PATRONI_OWNS.contains(&f) => warnings.push(format!("ignoring {key}: Patroni does that itself")),
            f if NOT_A_METHOD.contains(&f) && !is_false(value) => {
                return Err(format!(
                    "{key}={value}: a replica method must build the replica, and with --{f} pgclone would exit without \
                     one (run pgclone --{f} by hand instead)"
                ))
            }
            f if NOT_A_METHOD.contains(&f) => {}
            f => match flags.iter().find(|(name, _)| name == f) {
                Some((_, true)) => {
                    out.extend([format!("--{f}").into(), value.into()]);
                    given.insert(f.to_string());
                }
                Some((_, false)) => match value.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => out.push(format!("--{f}").into()),
                    _ if is_false(value) => {}
                    _ => return Err(format!("{key}={value}: a switch takes true or false")),
                },
                None => return Err(unknown(key, flags)),
            },
        }
    }
    let datadir = datadir.ok_or("Patroni gave no --datadir")?;
    // On a real cluster every member keeps its data directory at the same path.
    out.extend(["--primary-pgdata".into(), primary.unwrap_or_else(|| datadir.clone()).into()]);
    out.extend(["--replica-pgdata".into(), datadir.into()]);
    if !given.contains("progress") {
        out.extend(["--progress".into(), "plain".into()]);
    }
    out.push("--json".into());
    Ok((out, warnings))
}

fn is_false(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "false" | "no" | "off" | "0")
}

/// The one line for a key nobody knows: the key, and every key there is.
fn unknown(key: &str, flags: &[(String, bool)]) -> String {
    let theirs = PATRONI_KEYS.iter().chain(&["datadir", "connstring"]).map(|k| k.to_string());
    let ours = flags.iter().map(|(f, _)| f.clone()).filter(|f| !NOT_A_METHOD.contains(&f.as_str()));
    let known: Vec<String> = theirs.chain(ours).collect();
    format!(
        "unknown key {key:?} in the method's section: the keys are Patroni's and pgclone's flags ({})",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<(String, bool)> {
        [("ssh-user", true), ("parallel", true), ("insecure-ssh", false), ("progress", true), ("start", false)]
            .map(|(f, v)| (f.to_string(), v))
            .to_vec()
    }

    #[test]
    fn patronis_arguments_become_pgclones_flags() {
        let args: Vec<String> = [
            "--ssh_user=postgres",
            "--parallel=4",
            "--insecure-ssh=False",
            "--keep_data=True",
            "--no_leader=False",
            "--start=True",
            "--check=false",
            "--scope=demo",
            "--role=replica",
            "--datadir=/var/lib/pg/data",
            "--connstring=dbname=postgres user=replicator host=10.0.0.1 port=5432",
        ]
        .map(String::from)
        .to_vec();
        let (argv, warnings) = translate(&args, &flags()).unwrap();
        let argv: Vec<String> = argv.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "pgclone",
                "--ssh-user",
                "postgres",
                "--parallel",
                "4",
                "--dbname",
                "dbname=postgres user=replicator host=10.0.0.1 port=5432",
                "--primary-pgdata",
                "/var/lib/pg/data",
                "--replica-pgdata",
                "/var/lib/pg/data",
                "--progress",
                "plain",
                "--json"
            ]
        );
        assert_eq!(warnings, ["ignoring start: Patroni does that itself"]);
        let err = |args: &[&str]| translate(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), &flags());
        assert_eq!(
            err(&["--paralel=4", "--datadir=/d"]).unwrap_err(),
            "unknown key \"paralel\" in the method's section: the keys are Patroni's and pgclone's flags (scope, \
             role, keep_data, no_params, no_leader, no_master, datadir, connstring, ssh-user, parallel, insecure-ssh, \
             progress, start)",
            "a misspelled key fails the method"
        );
        let check = err(&["--check=True", "--datadir=/d"]).unwrap_err();
        assert!(check.starts_with("check=True: a replica method must build the replica"), "{check}");
        assert!(translate(&["--role=master".into(), "--datadir=/d".into()], &flags()).is_err());
        assert!(translate(&["--insecure-ssh=maybe".into(), "--datadir=/d".into()], &flags()).is_err());
        assert!(translate(&["--scope=x".into()], &flags()).is_err(), "no --datadir");
    }
}
