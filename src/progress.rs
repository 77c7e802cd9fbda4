//! Progress of the copy: totals are known from the plan before the first byte moves, so the percentage
//! and ETA never jump backwards.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::transport::Copied;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar on a terminal, plain lines otherwise
    Auto,
    /// A live bar (bytes, rate, ETA), redrawn in place
    Bar,
    /// A line every --progress-interval seconds, for logs
    Plain,
    /// A JSON object on a line of its own (standard error) every --progress-interval seconds and at the end of
    /// the copy, for orchestrators: {"event":"progress","done_bytes",...}
    Json,
    /// Nothing until the final summary
    None,
}

pub struct Progress {
    total_bytes: u64,
    bytes: AtomicU64,
    files: AtomicU64,
    started: Instant,
    view: View,
}

enum View {
    Bar(ProgressBar),
    Plain { every: Duration, last: std::sync::Mutex<Instant> },
    Json { every: Duration, last: std::sync::Mutex<Instant> },
    Silent,
}

impl Progress {
    pub fn new(total_bytes: u64, mode: Mode, interval: Duration) -> Progress {
        let bar = match mode {
            Mode::Auto => std::io::stderr().is_terminal(),
            Mode::Bar => true,
            Mode::Plain | Mode::Json | Mode::None => false,
        };
        let view = if bar {
            let b = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(250));
            View::Bar(b)
        } else if mode == Mode::None {
            View::Silent
        } else if mode == Mode::Json {
            View::Json { every: interval, last: std::sync::Mutex::new(Instant::now()) }
        } else {
            View::Plain { every: interval, last: std::sync::Mutex::new(Instant::now()) }
        };
        Progress { total_bytes, bytes: AtomicU64::new(0), files: AtomicU64::new(0), started: Instant::now(), view }
    }

    /// Bytes arriving while a job runs.
    pub fn moving(&self, n: u64) {
        self.advance(n);
    }

    /// A finished job; `shown` of its bytes were already reported as they arrived.
    pub fn add(&self, c: Copied, shown: u64) {
        self.advance(c.bytes.saturating_sub(shown));
        self.files.fetch_add(c.files, Ordering::Relaxed);
    }

    fn advance(&self, n: u64) {
        let done = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if let View::Bar(b) = &self.view {
            b.set_position(done);
        }
    }

    /// Called about once a second by the supervising thread: plain mode logs when its interval is up.
    pub fn tick(&self) {
        let (View::Plain { every, last } | View::Json { every, last }) = &self.view else { return };
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= *every {
            *last = Instant::now();
            match self.view {
                View::Json { .. } => eprintln!("{}", self.json()),
                _ => tracing::info!("{}", self.line()),
            }
        }
    }

    pub fn finish(&self) {
        match &self.view {
            View::Bar(b) => b.finish_and_clear(),
            View::Json { .. } => eprintln!("{}", self.json()),
            _ => {}
        }
    }

    /// One progress event for machines: what `line` says, in numbers (bytes, seconds).
    pub fn json(&self) -> String {
        let done = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        format!(
            "{{\"event\":\"progress\",\"done_bytes\":{done},\"total_bytes\":{},\"done_files\":{},\
             \"elapsed_seconds\":{secs:.3},\"bytes_per_second\":{rate:.0}}}",
            self.total_bytes,
            self.files.load(Ordering::Relaxed),
        )
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
        let p = Progress::new(1000, Mode::None, Duration::from_secs(1));
        p.moving(200);
        p.add(Copied { files: 2, bytes: 500, moved: 500, ..Copied::default() }, 200);
        let l = p.line();
        assert!(l.starts_with("copied 500 B of 1.0 kB (50%), 2 files"), "{l}");
        let j: serde_json::Value = serde_json::from_str(&p.json()).unwrap();
        assert_eq!(
            (j["event"].as_str(), j["done_bytes"].as_u64(), j["total_bytes"].as_u64()),
            (Some("progress"), Some(500), Some(1000))
        );
        assert_eq!(j["done_files"], 2);
    }
}
