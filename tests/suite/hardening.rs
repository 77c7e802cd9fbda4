//! Defects a PostgreSQL reviewer found (issue 11), each shown by a scenario that fails on the code before its
//! fix: a standby that cannot start or starts with wrong data, a resource left on the primary, a setting that
//! leaks from pgclone's environment into the standby's.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
/// files 0644 and the standby failed with `private key file "server.key" has group or world access`.
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
