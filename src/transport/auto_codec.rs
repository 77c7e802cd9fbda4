//! `--compress auto`: lz4 where it makes the copy faster, nothing where it does not. Decided by the agent per
//! 1 MiB chunk from what it measures on its own connection: how long lz4 takes per byte and how much it shrinks
//! the data, against how long the link takes to drain a byte (the time the agent's writes spend blocked, which
//! includes the TLS or ssh encryption of what is sent). An agent compresses and then writes, one after the
//! other, so compressing pays when `lz4 + ratio × drain < drain`: on a slow link almost always for PostgreSQL's
//! pages, on a fast one (or when the CPU is the bottleneck) not at all. Chunks that lz4 barely shrinks (already
//! compressed data, TOAST'ed with pglz or lz4) go raw whatever the link.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use super::protocol::Codec;

/// A chunk goes compressed only if lz4 saves at least this share of it.
const MIN_SAVING: f64 = 0.10;
/// Even while compression does not pay, every this many chunks are compressed to measure it anew: the link
/// or the data may change (a table of random bytes, then one of text).
const PROBE_EVERY: u64 = 16;
/// Weight of the newest measurement in the running averages.
const WEIGHT: f64 = 0.25;

#[derive(Default)]
pub struct AutoCodec {
    /// Nanoseconds per byte: draining the link, and lz4 compressing.
    drain: Option<f64>,
    lz4: Option<f64>,
    /// Compressed size ÷ raw size.
    ratio: f64,
    chunks: u64,
    /// The connection's totals when last seen: bytes written, time blocked writing them.
    link: (u64, Duration),
}

fn average(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| o + WEIGHT * (new - o))
}

impl AutoCodec {
    /// Takes the connection's running totals of bytes written and time spent blocked writing them.
    pub fn link(&mut self, written: u64, blocked: Duration) {
        let (bytes, time) = (written - self.link.0, blocked.saturating_sub(self.link.1));
        // Small writes only fill a buffer: they say nothing about the link.
        if bytes >= 64 << 10 {
            self.drain = Some(average(self.drain, time.as_nanos() as f64 / bytes as f64));
            self.link = (written, blocked);
        }
    }

    fn pays(&self) -> bool {
        match (self.drain, self.lz4) {
            (Some(drain), Some(lz4)) => lz4 + self.ratio * drain < drain,
            // Nothing measured yet: compress what shrinks, and learn.
            _ => true,
        }
    }

    /// The codec for one chunk and its bytes on the wire.
    pub fn choose<'a>(&mut self, raw: &'a [u8]) -> (Codec, Cow<'a, [u8]>) {
        self.chunks += 1;
        let probe = self.chunks % PROBE_EVERY == 1;
        if raw.is_empty() || (!probe && !self.pays()) {
            return (Codec::None, Cow::Borrowed(raw));
        }
        let started = Instant::now();
        let packed = lz4_flex::compress(raw);
        let per_byte = started.elapsed().as_nanos() as f64 / raw.len() as f64;
        self.lz4 = Some(average(self.lz4, per_byte));
        let ratio = packed.len() as f64 / raw.len() as f64;
        self.ratio = if self.chunks == 1 { ratio } else { self.ratio + WEIGHT * (ratio - self.ratio) };
        if ratio > 1.0 - MIN_SAVING {
            return (Codec::None, Cow::Borrowed(raw));
        }
        // A probe's compression is paid for: send it compressed, it is smaller.
        (Codec::Lz4, Cow::Owned(packed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"pgbench filler row 0123456789 "[i % 30]).collect()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Feeds `chunks` chunks over a link that drains a byte in `drain_ns`; returns which went compressed.
    fn run(auto: &mut AutoCodec, data: &[u8], chunks: u64, drain_ns: f64) -> Vec<bool> {
        let (mut written, mut blocked) = (auto.link.0, auto.link.1.as_nanos() as f64);
        let mut compressed = Vec::new();
        for _ in 0..chunks {
            let (codec, bytes) = auto.choose(data);
            compressed.push(codec == Codec::Lz4);
            written += bytes.len() as u64;
            blocked += bytes.len() as f64 * drain_ns;
            auto.link(written, Duration::from_nanos(blocked as u64));
        }
        compressed
    }

    fn count(v: &[bool]) -> usize {
        v.iter().filter(|&&c| c).count()
    }

    #[test]
    fn compresses_for_a_slow_link_and_not_for_a_fast_one_nor_for_noise() {
        let page = text(1 << 20);
        // 1 MB/s: pays even for lz4 in a debug build.
        assert_eq!(count(&run(&mut AutoCodec::default(), &page, 64, 1000.0)), 64, "every chunk pays on a slow link");
        // Far faster than lz4: once the link is measured (64 KiB written), only the probes are compressed.
        let fast = run(&mut AutoCodec::default(), &page, 64, 0.01);
        assert_eq!(count(&fast[32..]), 32 / PROBE_EVERY as usize, "{fast:?}");
        assert_eq!(count(&run(&mut AutoCodec::default(), &noise(1 << 20), 64, 1000.0)), 0, "lz4 cannot shrink noise");
        // The link slows down: compression comes back once its drain rate is measured.
        let mut auto = AutoCodec::default();
        run(&mut auto, &page, 64, 0.01);
        let after = run(&mut auto, &page, 64, 1000.0);
        assert!(count(&after[8..]) == 56, "compression did not come back: {after:?}");
    }
}
