//! The scenes most tests start from, built in one call: `Setup` is a primary and an sshd on this
//! machine's loopback, `Host` a primary with its sshd on a host of its own (a network namespace). Both
//! keep their parts in drop order: servers stop before the namespace goes, all of it before the work dir.

use super::assertions::*;
use super::lab::*;
use super::netns::*;
use super::pgclone::*;
use super::postgres::*;
use super::process::*;
use super::sshd::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A valid clone setup: PG primary (with `conf` lines), sshd, replica path that does not exist yet.
pub struct Setup {
    pub primary: Postgres,
    pub sshd: Sshd,
    pub replica: PathBuf,
    pub lab: Lab,
}

impl Setup {
    pub fn new(name: &str, conf: &[&str]) -> Setup {
        Self::with_install(name, PgInstall::of(15), conf)
    }

    /// A PG15 primary with pgbench data of `scale`.
    pub fn with_pgbench(name: &str, scale: u32) -> Setup {
        let s = Self::new(name, &[]);
        s.primary.pgbench_init(scale);
        s
    }

    pub fn with_install(name: &str, install: PgInstall, conf: &[&str]) -> Setup {
        Self::with_initdb(name, install, &[], conf)
    }

    /// Like `with_install`, the primary initdb'd with `initdb` flags besides the usual ones.
    pub fn with_initdb(name: &str, install: PgInstall, initdb: &[&str], conf: &[&str]) -> Setup {
        let lab = Lab::new(name);
        let primary = Postgres::primary_initdb(&lab, "primary", install, initdb, conf);
        let sshd = Sshd::start(&lab);
        let replica = lab.path().join("replica");
        Setup { primary, sshd, replica, lab }
    }

    /// A run into `self.replica`.
    pub fn pgclone(&self) -> Pgclone {
        Pgclone::new(&self.primary, &self.sshd, &self.replica)
    }

    /// A run into `<work dir>/<dir>`.
    pub fn pgclone_into(&self, dir: &str) -> Pgclone {
        Pgclone::new(&self.primary, &self.sshd, &self.lab.path().join(dir))
    }

    pub fn assert_clean(&self) {
        assert_clean_after_error(&self.lab, &self.primary, &self.replica);
    }

    /// `assert_standby_matches` for `replica`.
    pub fn assert_standby(&self, replica: &Path, name: &str, load: Option<Bg>) -> Postgres {
        assert_standby_matches(&self.lab, &self.primary, replica, name, load)
    }
}

/// A primary on its own host: namespace, PG15 primary with pgbench data, sshd.
pub struct Host {
    pub primary: NsPostgres,
    pub sshd: Sshd,
    pub ns: Netns,
    pub lab: Lab,
}

impl Host {
    pub fn new(name: &str, scale: u32, conf: &[&str]) -> Host {
        let lab = Lab::new(name);
        let ns = Netns::new();
        let primary = NsPostgres::start(&lab, &ns, "primary", conf);
        if scale > 0 {
            primary.pgbench_init(scale);
        }
        let sshd = Sshd::start_in(&lab, &ns);
        Host { primary, sshd, ns, lab }
    }

    /// A valid clone of the primary into `replica`, over the veth.
    pub fn pgclone(&self, replica: &Path) -> Pgclone {
        let mut run = Pgclone::over_ssh(&self.lab, self.primary.port, &self.primary.data, &self.sshd, replica);
        run.pghost = self.primary.addr.clone();
        run.timeout = Duration::from_secs(180);
        run
    }

    /// Wait up to `within` until nothing of pgclone remains (see `wait_primary_clean`); returns how long it took.
    pub fn wait_clean(&self, within: Duration) -> Duration {
        wait_primary_clean(&self.lab, &self.primary, within)
    }
}
