//! pgclone's integration tests, as one test binary: `support` is the harness (labs, servers, sshd,
//! network namespaces, the pgclone runner, the shared checks), `suite` holds the tests, one module per area.
//! One binary means one compile and link of the harness instead of one per area, and a dead-code lint
//! that sees every use of a helper.

mod support;

mod suite {
    mod clone_e2e;
    mod data_channel;
    mod dba_errors;
    mod exit_codes;
    mod faults;
    mod flags;
    mod guarantees;
    mod hardening;
    mod harness_selfcheck;
    mod native;
    mod patroni;
    mod preflight;
    mod resync;
    mod resync_wal;
    mod standby;
    mod strangers;
    mod transport_trust;
    mod usage;
    mod verification;
}
