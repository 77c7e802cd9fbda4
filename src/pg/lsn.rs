//! WAL positions and segment file names, as PostgreSQL defines them
//! (src/include/access/xlog_internal.h: XLByteToSeg, XLogFileName).

use std::fmt;
use std::str::FromStr;

/// A WAL position (XLogRecPtr). Text form `X/Y`: high and low 32 bits in hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a WAL position: {0:?}")]
pub struct BadLsn(String);

impl FromStr for Lsn {
    type Err = BadLsn;
    fn from_str(s: &str) -> Result<Self, BadLsn> {
        let bad = || BadLsn(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// The cluster's WAL segment size, read from the server (`wal_segment_size`, fixed at initdb):
/// a power of two between 1 MB and 1 GB, never assumed to be 16 MB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegSize(u64);

impl SegSize {
    pub fn new(bytes: u64) -> Option<SegSize> {
        (bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes)).then_some(SegSize(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn segno(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }

    pub fn offset(self, lsn: Lsn) -> u64 {
        lsn.0 % self.0
    }

    pub fn segment_start(self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - self.offset(lsn))
    }

    /// XLogFileName: timeline, then the segment number split into "log" and "seg" parts of
    /// 0x100000000 / segment-size segments each, 8 hex digits apiece.
    pub fn file_name(self, timeline: u32, segno: u64) -> String {
        let per_id = 0x1_0000_0000 / self.0;
        format!("{:08X}{:08X}{:08X}", timeline, segno / per_id, segno % per_id)
    }
}

/// Name of a timeline history file (TLHistoryFileName).
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names_follow_xlogfilename() {
        let s16 = SegSize::new(16 << 20).unwrap();
        let l: Lsn = "1/2A000028".parse().unwrap();
        assert_eq!(s16.file_name(1, s16.segno(l)), "00000001000000010000002A");
        assert_eq!(s16.segment_start(l).to_string(), "1/2A000000");
        let s1g = SegSize::new(1 << 30).unwrap();
        assert_eq!(s1g.file_name(3, s1g.segno(l)), "000000030000000100000000");
        let s1m = SegSize::new(1 << 20).unwrap();
        assert_eq!(s1m.file_name(2, s1m.segno(Lsn(0x1_0030_0000))), "000000020000000100000003");
        assert_eq!(history_file_name(10), "0000000A.history");
    }

    #[test]
    fn segment_size_must_be_valid() {
        assert!(SegSize::new(16 << 20).is_some());
        assert!(SegSize::new(3 << 20).is_none());
        assert!(SegSize::new(2 << 30).is_none());
        assert!(SegSize::new(512 << 10).is_none());
    }
}
