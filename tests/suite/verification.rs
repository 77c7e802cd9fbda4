//! Data page checksums: a page the primary's storage corrupted fails the clone, naming file and block, as
//! pg_basebackup does, with either transport (rsync: a read pass over the copy; native: checked as the pages
//! land); `--no-verify-checksums` clones anyway.

use crate::support::*;
use std::os::unix::fs::FileExt;

#[test]
fn corrupt_page_on_the_primary_fails_the_clone_naming_file_and_block() {
    // PostgreSQL 18 initialises clusters with data checksums on.
    let s = Setup::with_install("badpage", PgInstall::of(18), &["autovacuum = off"]);
    s.primary.pgbench_init(1);
    assert_eq!(s.primary.psql("show data_checksums"), "on");
    let rel = s.primary.psql("select pg_relation_filepath('pgbench_accounts')");
    // Everything on disk first, so that nothing rewrites the page we damage.
    s.primary.psql("checkpoint");
    let file = std::fs::OpenOptions::new().write(true).open(s.primary.data.join(&rel)).unwrap();
    file.write_all_at(b"storage went bad here", 3 * 8192 + 4000).unwrap();
    file.sync_all().unwrap();

    for transport in ["rsync", "native"] {
        let mut run = s.pgclone();
        run.args(["--transport", transport, "--remote-pgclone", s.lab.pgclone_bin().to_str().unwrap()]);
        let out = run.run();
        out.assert_error(&format!("fail their checksum on the primary: {rel} block 3"));
        println!("{transport}: {}", out.stderr.lines().last().unwrap_or_default());
        s.assert_clean();
    }

    let mut run = s.pgclone();
    run.arg("--no-verify-checksums");
    run.run().assert_success();
}
