//! Progress of the copy: totals are known from the plan before the first byte moves, so the percentage
//! and ETA never jump backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::transport::Copied;

pub struct Progress {
    total_bytes: u64,
    bytes: AtomicU64,
    files: AtomicU64,
    started: Instant,
}

impl Progress {
    pub fn new(total_bytes: u64) -> Progress {
        Progress { total_bytes, bytes: AtomicU64::new(0), files: AtomicU64::new(0), started: Instant::now() }
    }

    pub fn add(&self, c: Copied) {
        self.bytes.fetch_add(c.bytes, Ordering::Relaxed);
        self.files.fetch_add(c.files, Ordering::Relaxed);
    }

    /// One plain line: for logs, not a terminal redraw.
    pub fn line(&self) -> String {
        let done = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let pct = if self.total_bytes > 0 { (done as f64 * 100.0 / self.total_bytes as f64).min(100.0) } else { 100.0 };
        let eta = if rate > 0.0 {
            format!("{:.0} s", self.total_bytes.saturating_sub(done) as f64 / rate)
        } else {
            "unknown".into()
        };
        format!(
            "copied {} of {} ({pct:.0}%), {} files, {}/s, ETA {eta}",
            bytes(done),
            bytes(self.total_bytes),
            self.files.load(Ordering::Relaxed),
            bytes(rate as u64)
        )
    }

    /// Logs a line every `interval` until `stop` fires (it is a cancel-style receiver: disconnect ends it).
    pub fn report_until(&self, interval: Duration, stop: &crossbeam_channel::Receiver<()>) {
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
            tracing::info!("{}", self.line());
        }
    }
}

/// Bytes in decimal units, as disk and network rates are quoted.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1500), "1.5 kB");
        assert_eq!(bytes(2_345_000_000), "2.3 GB");
    }

    #[test]
    fn line_counts_what_was_added() {
        let p = Progress::new(1000);
        p.add(Copied { files: 2, bytes: 500, vanished: 0 });
        let l = p.line();
        assert!(l.starts_with("copied 500 B of 1.0 kB (50%), 2 files"), "{l}");
    }
}
