//! WAL summaries (PostgreSQL 17+ with `summarize_wal = on`; src/backend/postmaster/walsummarizer.c and
//! src/backend/backup/walsummaryfuncs.c): for each range of WAL on one timeline, the blocks of every relation
//! fork that WAL modified, and each fork's "limit block": the length it was truncated to within the range
//! (0 for a fork created there). A summary for (tablespace, database, relfilenode 0) with limit 0 says the
//! whole database was created there (CREATE DATABASE ... STRATEGY FILE_COPY copies files without logging
//! their blocks). The SQL functions reading them are executable by every role.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::pg::lsn::Lsn;
use crate::pg::{Conn, PgError};

/// One summary file: blocks modified by WAL in [start, end) on timeline `tli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub tli: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// A relation fork, as summaries and relation file paths name it (fork 0 main, 1 fsm, 2 vm, 3 init).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fork {
    pub tablespace: u32,
    pub database: u32,
    pub relfilenode: u32,
    pub fork: u8,
}

/// What the summaries of a range say about one fork.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForkChanges {
    /// Runs of modified blocks, (first block, count), in block order, not overlapping.
    pub runs: Vec<(u32, u32)>,
    /// The lowest length the fork was truncated to (0: created) within the range.
    pub limit: Option<u32>,
}

/// Everything the summaries of a range say changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub forks: HashMap<Fork, ForkChanges>,
    /// (tablespace, database) pairs created within the range: none of their files existed before.
    pub created: HashSet<(u32, u32)>,
}

impl Changes {
    /// Adds what `other` (of an adjoining stretch of WAL) says changed: runs joined, the lower limit kept.
    pub fn merge(&mut self, other: Changes) {
        self.created.extend(other.created);
        for (fork, theirs) in other.forks {
            let ours = self.forks.entry(fork).or_default();
            ours.limit = match (ours.limit, theirs.limit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            ours.runs.extend(theirs.runs);
            ours.runs.sort_unstable();
            let mut joined: Vec<(u32, u32)> = Vec::with_capacity(ours.runs.len());
            for &(first, n) in &ours.runs {
                match joined.last_mut() {
                    Some((a, m)) if u64::from(first) <= u64::from(*a) + u64::from(*m) => {
                        let end = (u64::from(*a) + u64::from(*m)).max(u64::from(first) + u64::from(n));
                        *m = (end - u64::from(*a)) as u32;
                    }
                    _ => joined.push((first, n)),
                }
            }
            ours.runs = joined;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("{0}")]
    Query(#[from] PgError),
    #[error("unexpected answer from {0}")]
    Answer(&'static str),
    #[error("the WAL summarizer has not reached the backup's start {want} within {secs} s (it is at {at})")]
    Behind { want: Lsn, at: Lsn, secs: u64 },
}

fn field<T: std::str::FromStr>(row: &[Option<String>], i: usize, what: &'static str) -> Result<T, SummaryError> {
    row.get(i).and_then(|f| f.as_deref()).and_then(|f| f.parse().ok()).ok_or(SummaryError::Answer(what))
}

/// `summarize_wal` on the server.
pub fn enabled(conn: &mut Conn) -> Result<bool, SummaryError> {
    let rows = conn.query("SELECT current_setting('summarize_wal')")?;
    Ok(rows.get(0, 0) == Some("on"))
}

/// Waits until the summarizer has summarized WAL up to `lsn` on timeline `tli`: the backup's start, which
/// lies at a checkpoint's redo pointer, where the summarizer ends a summary (basebackup_incremental.c waits
/// the same way before it reads them).
pub fn wait_for(conn: &mut Conn, tli: u32, lsn: Lsn, timeout: Duration) -> Result<(), SummaryError> {
    let started = Instant::now();
    loop {
        let rows = conn.query("SELECT summarized_tli, summarized_lsn FROM pg_get_wal_summarizer_state()")?;
        let row = rows.iter().next().ok_or(SummaryError::Answer("pg_get_wal_summarizer_state"))?;
        let (at_tli, at): (u32, Lsn) =
            (field(row, 0, "pg_get_wal_summarizer_state")?, field(row, 1, "pg_get_wal_summarizer_state")?);
        if at_tli > tli || (at_tli == tli && at >= lsn) {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(SummaryError::Behind { want: lsn, at, secs: timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The summaries on the server.
pub fn available(conn: &mut Conn) -> Result<Vec<Summary>, SummaryError> {
    let rows = conn.query("SELECT tli, start_lsn, end_lsn FROM pg_available_wal_summaries()")?;
    let what = "pg_available_wal_summaries";
    rows.iter()
        .map(|r| Ok(Summary { tli: field(r, 0, what)?, start: field(r, 1, what)?, end: field(r, 2, what)? }))
        .collect()
}

/// The first position of [from, to) on timeline `tli` that no summary covers, None if they cover it all.
pub fn first_gap(summaries: &[Summary], tli: u32, from: Lsn, to: Lsn) -> Option<Lsn> {
    let mut on: Vec<&Summary> = summaries.iter().filter(|s| s.tli == tli && s.end > from && s.start < to).collect();
    on.sort_by_key(|s| s.start);
    let mut covered = from;
    for s in on {
        if s.start > covered {
            break;
        }
        covered = covered.max(s.end);
    }
    (covered < to).then_some(covered)
}

/// What `summaries` say changed. The server merges them and turns blocks into runs (consecutive block numbers
/// share `block - row_number()`), so the answer has a row per run, not per block.
pub fn changes(conn: &mut Conn, summaries: &[Summary]) -> Result<Changes, SummaryError> {
    let list =
        |f: &dyn Fn(&Summary) -> String| format!("{{{}}}", summaries.iter().map(f).collect::<Vec<_>>().join(","));
    let (tlis, starts, ends) =
        (list(&|s| s.tli.to_string()), list(&|s| s.start.to_string()), list(&|s| s.end.to_string()));
    let rows = conn.query_params(
        "WITH s(tli, a, b) AS (SELECT * FROM unnest($1::int8[], $2::pg_lsn[], $3::pg_lsn[])),
              c AS (SELECT DISTINCT c.reltablespace AS ts, c.reldatabase AS db, c.relfilenode AS rel,
                                    c.relforknumber AS fork, c.relblocknumber AS blk, c.is_limit_block AS lim
                      FROM s, pg_wal_summary_contents(s.tli, s.a, s.b) c)
         SELECT ts, db, rel, fork, min(blk), 0 FROM c WHERE lim GROUP BY ts, db, rel, fork
         UNION ALL
         SELECT ts, db, rel, fork, min(blk), count(*)
           FROM (SELECT *, blk - row_number() OVER (PARTITION BY ts, db, rel, fork ORDER BY blk) AS run
                   FROM c WHERE NOT lim) r
          GROUP BY ts, db, rel, fork, run",
        &[&tlis, &starts, &ends],
    )?;
    let what = "pg_wal_summary_contents";
    let mut c = Changes::default();
    for r in rows.iter() {
        let fork = Fork {
            tablespace: field(r, 0, what)?,
            database: field(r, 1, what)?,
            relfilenode: field(r, 2, what)?,
            fork: field(r, 3, what)?,
        };
        let (block, count): (u32, u32) = (field(r, 4, what)?, field(r, 5, what)?);
        if fork.relfilenode == 0 {
            c.created.insert((fork.tablespace, fork.database));
            continue;
        }
        let entry = c.forks.entry(fork).or_default();
        match count {
            0 => entry.limit = Some(entry.limit.map_or(block, |l| l.min(block))),
            n => entry.runs.push((block, n)),
        }
    }
    for f in c.forks.values_mut() {
        f.runs.sort_unstable();
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_adjoining_stretches_merge() {
        let f = Fork { tablespace: 1663, database: 5, relfilenode: 16384, fork: 0 };
        let g = Fork { fork: 2, ..f };
        let mut a = Changes::default();
        a.forks.insert(f, ForkChanges { runs: vec![(1, 2), (10, 1)], limit: Some(40) });
        a.created.insert((1663, 7));
        let mut b = Changes::default();
        b.forks.insert(f, ForkChanges { runs: vec![(2, 3), (11, 1), (20, 1)], limit: Some(30) });
        b.forks.insert(g, ForkChanges { runs: vec![(0, 1)], limit: None });
        b.created.insert((1663, 8));
        a.merge(b);
        assert_eq!(a.forks[&f], ForkChanges { runs: vec![(1, 4), (10, 2), (20, 1)], limit: Some(30) });
        assert_eq!(a.forks[&g], ForkChanges { runs: vec![(0, 1)], limit: None });
        assert_eq!(a.created, HashSet::from([(1663, 7), (1663, 8)]));
    }

    #[test]
    fn gaps_in_the_summaries_of_a_timeline() {
        let s = |tli, a: &str, b: &str| Summary { tli, start: a.parse().unwrap(), end: b.parse().unwrap() };
        let l = |x: &str| x.parse::<Lsn>().unwrap();
        let all = [s(1, "0/1000000", "0/2000000"), s(1, "0/2000000", "0/2500000"), s(2, "0/2500000", "0/4000000")];
        assert_eq!(first_gap(&all, 1, l("0/1800000"), l("0/2500000")), None);
        assert_eq!(first_gap(&all, 1, l("0/1800000"), l("0/3000000")), Some(l("0/2500000")), "on timeline 2 after");
        assert_eq!(first_gap(&all, 2, l("0/2500000"), l("0/3000000")), None);
        assert_eq!(first_gap(&all, 1, l("0/0800000"), l("0/2000000")), Some(l("0/0800000")), "starts too late");
        let holed = [s(1, "0/1000000", "0/1800000"), s(1, "0/1900000", "0/3000000")];
        assert_eq!(first_gap(&holed, 1, l("0/1000000"), l("0/3000000")), Some(l("0/1800000")));
        assert_eq!(first_gap(&[], 1, l("0/1000000"), l("0/3000000")), Some(l("0/1000000")));
    }
}
