//! What a finished clone reports: the summary line for people (stderr) and the `--json` object for machines.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::manifest::json;
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
    /// Where the streamed WAL waited until finalize laid it into pg_wal.
    pub wal_dir: PathBuf,
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

/// A re-sync's method (`clone::resync`), why it compared rather than used WAL summaries, and what it read.
pub struct Resynced {
    pub method: &'static str,
    pub why: Option<String>,
    pub read_primary: u64,
    pub read_replica: u64,
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "cloned {} files, {} in {secs:.1} s ({}/s) into {}; WAL {}..{} on timeline {} ({} segments)",
            self.files,
            progress::bytes(self.bytes),
            progress::bytes((self.bytes as f64 / secs.max(0.001)) as u64),
            self.replica.display(),
            self.start_lsn,
            self.stop_lsn,
            self.timeline,
            self.wal_segments,
        )?;
        if self.reused > 0 {
            write!(f, "; {} of it was already in place", progress::bytes(self.reused))?;
        }
        if let Some(r) = &self.resynced {
            write!(
                f,
                "; re-synced by {}: read {} on the primary and {} here",
                r.method,
                progress::bytes(r.read_primary),
                progress::bytes(r.read_replica)
            )?;
            if let Some(why) = &r.why {
                write!(f, " (no WAL summaries: {why})")?;
            }
            if !r.kept.is_empty() {
                write!(f, "; kept the replica's {}", r.kept.join(", "))?;
            }
        }
        if self.moved < self.bytes {
            write!(f, "; {} moved over the link, the rest was identical", progress::bytes(self.moved))?;
        }
        if let Some((name, lag)) = &self.standby {
            write!(f, "; standby {name} is streaming, replay lag {}", progress::bytes(*lag))?;
        }
        let phases: Vec<String> =
            self.phases.iter().map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64())).collect();
        write!(f, "; time: {}", phases.join(", "))?;
        write!(f, "; streamed WAL waited in {}", self.wal_dir.display())?;
        if self.vanished > 0 {
            write!(
                f,
                "; {} files vanished on the primary during the copy (normal; WAL replay covers them)",
                self.vanished
            )?;
        }
        Ok(())
    }
}

impl Summary {
    /// The summary for machines (--json): one object on stdout.
    pub fn json(&self) -> String {
        let phases: Vec<String> =
            self.phases.iter().map(|(n, d)| format!("{}:{:.3}", json::string(n), d.as_secs_f64())).collect();
        let standby = match &self.standby {
            Some((name, lag)) => format!("{{\"application_name\":{},\"replay_lag_bytes\":{lag}}}", json::string(name)),
            None => "null".into(),
        };
        let resync = match &self.resynced {
            Some(r) => format!(
                "{{\"method\":\"{}\",\"why\":{},\"read_primary_bytes\":{},\"read_replica_bytes\":{},\"kept\":[{}]}}",
                r.method,
                r.why.as_deref().map_or("null".into(), json::string),
                r.read_primary,
                r.read_replica,
                r.kept.iter().map(|k| json::string(k)).collect::<Vec<_>>().join(",")
            ),
            None => "null".into(),
        };
        let (wire, compression) = (self.wire, json::string(&self.compression));
        let vanished = format!("{} files vanished on the primary during the copy", self.vanished);
        let clear = format!("PostgreSQL connections in clear text: {}", self.clear_text.join(", "));
        let warnings: Vec<String> = [(self.vanished > 0, vanished), (!self.clear_text.is_empty(), clear)]
            .into_iter()
            .filter_map(|(warn, text)| warn.then(|| json::string(&text)))
            .collect();
        format!(
            "{{\"ok\":true,\"replica\":{},\"wal_dir\":{},\"files\":{},\"bytes\":{},\"reused_bytes\":{},\"moved_bytes\":{},\"vanished_files\":{},\
             \"wire_bytes\":{wire},\"compression\":{compression},\
             \"elapsed_seconds\":{:.3},\"start_lsn\":\"{}\",\"stop_lsn\":\"{}\",\"timeline\":{},\"wal_segments\":{},\
             \"data_channel\":\"{}\",\"postgres_clear_text\":{},\"peak_rss_kb\":{},\"phases\":{{{}}},\"standby\":{standby},\"resync\":{resync},\"warnings\":[{}]}}",
            json::string(&self.replica.to_string_lossy()),
            json::string(&self.wal_dir.to_string_lossy()),
            self.files,
            self.bytes,
            self.reused,
            self.moved,
            self.vanished,
            self.elapsed.as_secs_f64(),
            self.start_lsn,
            self.stop_lsn,
            self.timeline,
            self.wal_segments,
            self.data_channel,
            json::names(&self.clear_text),
            peak_rss_kb(),
            phases.join(","),
            warnings.join(","),
        )
    }
}
