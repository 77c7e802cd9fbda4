//! Whether the replica's WAL, up to where its files can reach, is the primary's own: proved from both servers'
//! records, never assumed from a timeline number and an LSN. Every re-sync shortcut (`clone::resync`) takes the
//! replica's pages as the primary's as of a point of a shared history; two servers promoted alike (a split
//! brain) both choose the next timeline number, with identical history files, and then write different WAL
//! under the same (timeline, LSN) names.
//!
//! The proof has two parts. The replica's timeline history (its `pg_wal/<tli>.history`, timeline.c) must be
//! a prefix of the primary's: the same timelines, left at the same switch points. And the WAL here must be the
//! primary's at the two places the shortcuts lean on: the replica's last checkpoint record (where its redo
//! pointer and its pages' state come from) and the last stretch before its end of WAL (minRecoveryPoint of a
//! standby, the shutdown checkpoint of a primary), compared byte for byte with what the primary's walsender
//! sends for the same positions. A record holds its predecessor's position (xl_prev), its transaction, and a
//! checkpoint its time, next XID and OID: two histories that went different ways do not write the same bytes
//! there. The primary's WAL at those places may be gone (recycled after its checkpoints); then nothing is
//! proved, and the re-sync compares every page.

use std::io::Read;
use std::path::Path;

use crate::pg::lsn::{history_file_name, Lsn, SegSize};
use crate::pg::timeline::{parse_history, Span};
use crate::pg::wal_read::{self, Layout, LocalWal};
use crate::sys::files;

/// A history file is one short line per timeline switch.
const MAX_HISTORY: u64 = 1 << 20;

/// What the replica's pg_control says its WAL holds: its last checkpoint record, and how far it went.
pub struct Claim {
    pub checkpoint: Lsn,
    pub checkpoint_tli: u32,
    pub end: Lsn,
    pub end_tli: u32,
}

/// Proves that the replica's WAL (see the module) is the primary's, whose history is `history`, reaching the
/// primary with `params`; or says why it could not.
pub fn prove(
    replica: &Path,
    claim: &Claim,
    (seg, system_id): (SegSize, u64),
    params: &[(&str, &str)],
    history: &[Span],
) -> Result<(), String> {
    let pg_wal = replica.join("pg_wal");
    let mine = own_history(&pg_wal, claim.end_tli)?;
    if let Some(i) = mine
        .iter()
        .zip(history)
        .position(|(m, p)| !same_span(m, p))
        .or_else(|| (mine.len() > history.len()).then_some(history.len()))
    {
        return Err(format!(
            "the replica's timeline history differs from the primary's at timeline {} (the replica's {} against \
             the primary's {}): they went different ways",
            mine[i].tli,
            describe(&mine),
            describe(history)
        ));
    }
    let page = LocalWal::page_size(&pg_wal, seg, claim.checkpoint_tli, claim.checkpoint, system_id)
        .or_else(|_| LocalWal::page_size(&pg_wal, seg, claim.end_tli, claim.checkpoint, system_id))
        .map_err(|e| e.to_string())?;
    let wal = LocalWal { pg_wal: &pg_wal, layout: Layout { seg, page } };
    let record_end = wal.record_end(claim.checkpoint_tli, claim.checkpoint).map_err(|e| e.to_string())?;
    same_wal(&wal, params, claim.checkpoint_tli, (claim.checkpoint, record_end), "its last checkpoint record")?;
    if claim.end > record_end {
        let from = Lsn(record_end.0.max(claim.end.0.saturating_sub(page)));
        same_wal(&wal, params, claim.end_tli, (from, claim.end), "the end of its WAL")?;
    }
    Ok(())
}

fn same_span(mine: &Span, primary: &Span) -> bool {
    mine.tli == primary.tli && mine.begin == primary.begin && (mine.end.is_none() || mine.end == primary.end)
}

fn describe(history: &[Span]) -> String {
    let spans: Vec<String> = history
        .iter()
        .map(|s| match s.end {
            Some(end) => format!("{} until {end}", s.tli),
            None => s.tli.to_string(),
        })
        .collect();
    spans.join(", ")
}

/// The replica's history of timeline `tli`, from its own `pg_wal/<tli>.history` (none for timeline 1).
fn own_history(pg_wal: &Path, tli: u32) -> Result<Vec<Span>, String> {
    let mut content = String::new();
    if tli > 1 {
        let path = pg_wal.join(history_file_name(tli));
        let missing = |e: std::io::Error| {
            format!("the replica's timeline history {} cannot be read ({e}), so its history cannot be compared with the primary's", path.display())
        };
        let f = files::open_read(&path).map_err(missing)?;
        f.take(MAX_HISTORY).read_to_string(&mut content).map_err(missing)?;
    }
    parse_history(tli, &content).ok_or_else(|| format!("the replica's timeline {tli} history does not parse"))
}

/// Compares the replica's WAL [from, to) on `tli` with the primary's.
fn same_wal(
    wal: &LocalWal,
    params: &[(&str, &str)],
    tli: u32,
    (from, to): (Lsn, Lsn),
    what: &str,
) -> Result<(), String> {
    let here = wal.read(tli, from, to).map_err(|e| e.to_string())?;
    let there = wal_read::fetch(params, tli, from, to).map_err(|e| {
        format!(
            "the replica's WAL at {what} ({from} on timeline {tli}) cannot be compared with the primary's, which \
             no longer has it or cannot send it: {e}"
        )
    })?;
    if here != there {
        return Err(format!(
            "the replica's WAL at {what} ({from} on timeline {tli}) is not the primary's: the two went different \
             ways under the same timeline number (a split brain)"
        ));
    }
    tracing::debug!("the replica's WAL {from}..{to} on timeline {tli} ({what}) is the primary's");
    Ok(())
}
