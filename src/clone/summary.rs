//! What a finished clone reports: the summary line for people (stderr) and the `--json` object for machines.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::pg::lsn::Lsn;
use crate::progress;

pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub vanished: u64,
    /// Bytes a re-run found already in place (a resumed or re-synced replica).
    pub reused: u64,
    /// Bytes that crossed the link (a block-hash delta moves only what differs).
    pub moved: u64,
    /// What `moved` took on the wire, after `compression`.
    pub wire: u64,
    pub compression: String,
    pub wal_segments: u64,
    pub elapsed: Duration,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: u32,
    pub replica: PathBuf,
    /// The primary, as --json names it.
    pub primary: PrimaryFacts,
    /// Which transport moved the files (`native`, `rsync`).
    pub transport: &'static str,
    /// With --temp-waldir: where the streamed WAL waited until finalize laid it into pg_wal.
    pub temp_waldir: Option<PathBuf>,
    pub phases: Vec<(&'static str, Duration)>,
    /// With --start: the standby's application_name and its replay lag in bytes when first seen streaming.
    pub standby: Option<(String, u64)>,
    /// What the file data travelled over (see `Transport::data_channel`): `auto` may have fallen back to ssh.
    pub data_channel: &'static str,
    /// How a replica already here was brought up to date; None for a fresh clone.
    pub resynced: Option<Resynced>,
    /// The PostgreSQL connections that travelled in clear text (`clone::connect`).
    pub clear_text: Vec<&'static str>,
}

/// The primary a run cloned: the host it reached, its major, its cluster's system identifier.
pub struct PrimaryFacts {
    pub host: String,
    pub major: u32,
    pub system_id: u64,
}

/// A re-sync's method (`clone::resync`), why it compared rather than used WAL summaries, and what it read.
pub struct Resynced {
    pub method: &'static str,
    pub why: Option<String>,
    pub read_primary: u64,
    pub read_replica: u64,
    /// WAL read to tell what changed (`pg::wal_records`), on the primary and of the WAL streamed here.
    pub read_wal: u64,
    /// The replica's own recovery settings and signal files left in place (`replica::recovery_settings`).
    pub kept: Vec<String>,
}

/// This process's peak resident memory in KiB (VmHWM), for --json: the bound on memory is checked by
/// the benchmark from it.
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
    hwm.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

impl fmt::Display for Summary {
    /// The one line a DBA reads at a glance: what was done, how much moved, how long.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        match &self.resynced {
            None => write!(
                f,
                "cloned {} in {} into {} in {secs:.1} s",
                progress::bytes(self.bytes),
                count(self.files, "file"),
                self.replica.display()
            )?,
            Some(r) => write!(
                f,
                "re-synced {} by {} in {secs:.1} s: {} moved over the link, {} already in place, of {} in {}",
                self.replica.display(),
                r.method,
                progress::bytes(self.moved),
                progress::bytes(self.reused),
                progress::bytes(self.bytes),
                count(self.files, "file")
            )?,
        }
        if let Some((name, lag)) = &self.standby {
            write!(f, "; standby {name} is streaming, replay lag {}", progress::bytes(*lag))?;
        }
        Ok(())
    }
}

/// `n thing` or `n things`.
fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

impl Summary {
    /// What the summary line leaves out, a line each, logged before it: WAL, the re-sync's reading and reason,
    /// what it kept, where the time went, files that vanished.
    pub fn details(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "WAL {}..{} on timeline {}: {} laid into pg_wal",
            self.start_lsn,
            self.stop_lsn,
            self.timeline,
            count(self.wal_segments, "segment")
        )];
        if let Some(r) = &self.resynced {
            let mut line = format!(
                "re-sync by {}: read {} on the primary and {} here",
                r.method,
                progress::bytes(r.read_primary),
                progress::bytes(r.read_replica)
            );
            if r.read_wal > 0 {
                line.push_str(&format!(", and {} of WAL to tell what changed", progress::bytes(r.read_wal)));
            }
            if let Some(why) = &r.why {
                line.push_str(&format!(", not by the primary's WAL: {why}"));
            }
            lines.push(line);
            if !r.kept.is_empty() {
                lines.push(format!(
                    "kept the replica's {} (it was a standby; -R writes new settings)",
                    r.kept.join(", ")
                ));
            }
        }
        let phases: Vec<String> =
            self.phases.iter().map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64())).collect();
        lines.push(format!("time: {}", phases.join(", ")));
        if let Some(dir) = &self.temp_waldir {
            lines.push(format!("streamed WAL waited in {} (removed with the run)", dir.display()));
        }
        if self.vanished > 0 {
            lines.push(format!(
                "{} vanished on the primary during the copy (normal; WAL replay covers them)",
                count(self.vanished, "file")
            ));
        }
        lines
    }

    /// The summary for machines (--json): one object on stdout, its schema in the README ("--json").
    pub fn json(&self) -> String {
        let phases: serde_json::Map<String, serde_json::Value> = self
            .phases
            .iter()
            .map(|(n, d)| (n.replace(' ', "_"), serde_json::json!((d.as_secs_f64() * 1000.0).round() / 1000.0)))
            .collect();
        let standby = self
            .standby
            .as_ref()
            .map(|(name, lag)| serde_json::json!({"application_name": name, "replay_lag_bytes": lag}));
        let resync = self.resynced.as_ref().map(|r| {
            serde_json::json!({
                "method": r.method,
                "why": r.why,
                "read_primary_bytes": r.read_primary,
                "read_replica_bytes": r.read_replica,
                "read_wal_bytes": r.read_wal,
                "kept": r.kept,
            })
        });
        let vanished = format!("{} files vanished on the primary during the copy", self.vanished);
        let clear = format!("PostgreSQL connections in clear text: {}", self.clear_text.join(", "));
        let warnings: Vec<String> = [(self.vanished > 0, vanished), (!self.clear_text.is_empty(), clear)]
            .into_iter()
            .filter_map(|(warn, text)| warn.then_some(text))
            .collect();
        serde_json::json!({
            "ok": true,
            "pgclone_version": env!("CARGO_PKG_VERSION"),
            "operation": if self.resynced.is_some() { "re-sync" } else { "clone" },
            "replica": self.replica.to_string_lossy(),
            "primary": {
                "host": self.primary.host,
                "major": self.primary.major,
                // A string: 64 bits do not fit a JSON number exactly (JavaScript's stop at 53).
                "system_identifier": self.primary.system_id.to_string(),
            },
            "transport": self.transport,
            "data_channel": self.data_channel,
            "files": self.files,
            "bytes": self.bytes,
            "reused_bytes": self.reused,
            "moved_bytes": self.moved,
            "wire_bytes": self.wire,
            "compression": self.compression,
            "vanished_files": self.vanished,
            "elapsed_seconds": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "start_lsn": self.start_lsn.to_string(),
            "stop_lsn": self.stop_lsn.to_string(),
            "timeline": self.timeline,
            "wal_segments": self.wal_segments,
            "postgres_clear_text": self.clear_text,
            "peak_rss_kb": peak_rss_kb(),
            "phases_seconds": phases,
            "standby": standby,
            "resync": resync,
            "warnings": warnings,
        })
        .to_string()
    }
}
