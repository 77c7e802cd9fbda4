//! The command line as a user types it, before any server is involved: a refused command line is one
//! `pgclone: error:` line and exit 2, with --json also the object scripts read on stdout; pg_basebackup's habits
//! are understood or answered with what to do instead; --help and the man page show what a packager ships.

use crate::support::*;
use std::time::Duration;

fn pgclone(lab: &Lab, args: &[&str]) -> CmdOutput {
    run_bounded(lab.cmd(lab.pgclone_bin()).args(args), Duration::from_secs(30))
}

/// Exit 2, stderr exactly `pgclone: error: <line>`, and on stdout the usage object with --json, else nothing.
fn assert_usage(out: &CmdOutput, line: &str) {
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2\n{}", out.report());
    assert_eq!(out.stderr.trim_end(), format!("pgclone: error: {line}"), "\n{}", out.report());
    if out.what.contains("\"--json\"") {
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{}", out.report()));
        assert_eq!(v, serde_json::json!({"ok": false, "class": "usage", "exit_code": 2, "error": line}));
    } else {
        assert_eq!(out.stdout, "", "without --json nothing goes to stdout");
    }
    println!("{}", out.stderr.trim_end());
}

/// Before, clap's own errors (a misspelled flag, a value out of range, a missing flag) printed its usage block
/// and nothing on stdout even with --json.
#[test]
fn a_refused_command_line_is_one_error_line_and_with_json_the_usage_object() {
    let lab = Lab::new("usage");
    let misspelled = "unexpected argument '--paralel' found; a similar argument exists: '--parallel'";
    let cases: [(&[&str], &str); 4] = [
        (&["--json", "--paralel", "3"], misspelled),
        (&["--pghost", "db1", "--paralel", "3"], misspelled),
        (
            &["--json", "--parallel", "0", "-D", "/srv/r"],
            "invalid value '0' for '--parallel <N>': 0 is not in 1..=256; see pgclone --help",
        ),
        (
            &["--json", "--pghost", "db1"],
            "-D/--replica-pgdata is required when --primary-pgdata is not given (the replica's directory defaults to \
             the primary's path only when that is given)",
        ),
    ];
    for (args, line) in cases {
        assert_usage(&pgclone(&lab, args), line);
    }
    for (flag, starts) in [("--help", "Turn an empty directory"), ("--version", "pgclone ")] {
        let out = pgclone(&lab, &[flag, "--json"]);
        out.assert_success();
        assert!(out.stdout.starts_with(starts) && out.stderr.is_empty(), "{flag}\n{}", out.report());
    }
}

/// pg_basebackup's flags that mean nothing here are refused in one line that says what to do instead (before:
/// "unexpected argument"); -C without a name, two names, and -W without a terminal likewise.
#[test]
fn pg_basebackup_habits_without_a_meaning_here_are_answered_in_one_line() {
    let lab = Lab::new("pgbb-usage");
    let cases: [(&[&str], &str); 9] = [
        (
            &["-X", "fetch"],
            "invalid value 'fetch' for '--wal-method <METHOD>': pgclone always streams the WAL from before the backup \
             starts (-X stream), so none can be recycled before it is fetched: leave -X out or give -X stream; see \
             pgclone --help",
        ),
        (
            &["--wal-method=none"],
            "invalid value 'none' for '--wal-method <METHOD>': pgclone always puts the WAL a clone needs into it, so \
             that it can start (-X stream); for a copy without WAL, restored from a WAL archive, use pg_basebackup -X \
             none; see pgclone --help",
        ),
        (
            &["-Ft"],
            "invalid value 't' for '--format <FORMAT>': pgclone makes a plain data directory, ready to start as a \
             standby; for tar files use pg_basebackup -Ft; see pgclone --help",
        ),
        (
            &["-z"],
            "-z/--gzip/-Z is pg_basebackup's and has no use here: pg_basebackup's compression of tar output: pgclone \
             makes a plain data directory, and --compress compresses on the wire",
        ),
        (
            &["--no-sync"],
            "-N/--no-sync is pg_basebackup's and has no use here: pgclone makes the copy durable before pg_control \
             goes in place, so that a crash never leaves a copy that starts with missing data; --sync-method chooses \
             how",
        ),
        (
            &["--incremental=/backups/manifest"],
            "-i/--incremental is pg_basebackup's and has no use here: run pgclone again into the existing replica: \
             it re-syncs it, moving only what changed",
        ),
        (
            &["-C"],
            "-C/--create-slot needs the slot's name: --create-slot NAME, or -C -S NAME as pg_basebackup takes it",
        ),
        (
            &["--create-slot", "a", "-S", "b"],
            "name the slot to create once: --create-slot a, or -C -S a (-S alone streams through an existing slot)",
        ),
        (
            &["-W", "--json"],
            "-W/--password asks for the password on a terminal, and standard input is not one: give it in \
             ~/.pgpass, in the file PGPASSFILE names, or in PGPASSWORD instead",
        ),
    ];
    for (args, line) in cases {
        assert_usage(&pgclone(&lab, &[&["--pghost", "db1", "-D", "/srv/replica"], args].concat()), line);
    }
}

/// `man` and `completions` are for packagers and listed in --help (man was hidden). The man page has EXIT STATUS
/// and EXAMPLES sections and names only pages that exist (clap_mangen named pgclone-verify(1) and the like).
#[test]
fn help_lists_man_and_the_man_page_has_exit_status_examples_and_no_missing_pages() {
    let lab = Lab::new("man");
    let help = pgclone(&lab, &["--help"]);
    help.assert_success();
    for line in ["  man          Print the manual page", "  completions  Print shell completions"] {
        assert!(help.stdout.lines().any(|l| l.starts_with(line)), "--help lacks {line:?}\n{}", help.stdout);
    }
    let page = pgclone(&lab, &["man"]);
    page.assert_success();
    let file = lab.write("pgclone.1", &page.stdout);
    let mut man = lab.cmd("man");
    man.arg("-l").arg(&file).env("MANWIDTH", "100");
    let text = run_bounded(&mut man, Duration::from_secs(30));
    text.assert_success();
    let lines: Vec<&str> = text.stdout.lines().collect();
    for section in ["EXIT STATUS", "EXAMPLES", "COMMANDS", "SEE ALSO"] {
        assert!(lines.contains(&section), "no {section} section\n{}", text.stdout);
    }
    for status in ["0 (success)", "1 (class failed)", "2 (class usage)", "3 (class refused)", "4 (class standby)"] {
        assert!(lines.iter().any(|l| l.trim() == status), "EXIT STATUS lacks {status:?}\n{}", text.stdout);
    }
    assert!(text.stdout.contains("pgclone verify DIR"), "{}", text.stdout);
    // Every page the text names, name(section), must exist here, but for this page itself (its header).
    let mut named = Vec::new();
    for word in text.stdout.split(|c: char| c.is_whitespace() || c == ',') {
        let Some((name, rest)) = word.split_once('(') else { continue };
        let section = rest.trim_end_matches(|c: char| !c.is_ascii_digit());
        let page_like = name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !name.is_empty()
            && name != "pgclone"
            && page_like
            && section.len() == 1
            && rest.starts_with(section)
            && rest[1..].starts_with(')')
        {
            named.push((name.to_string(), section.to_string()));
        }
    }
    println!("pages named: {named:?}");
    assert!(!named.is_empty(), "the man page names no other page\n{}", text.stdout);
    for (name, section) in named {
        let mut whereis = lab.cmd("man");
        whereis.args(["-w", &section, &name]);
        let found = run_bounded(&mut whereis, Duration::from_secs(30));
        assert!(found.success(), "the man page names {name}({section}), which does not exist\n{}", found.report());
    }
}
