//! PostgreSQL data page checksums (src/include/storage/checksum_impl.h), to find pages the primary's storage
//! corrupted before they spread to the clone, as pg_basebackup does while it sends relation files.

use std::path::{Path, PathBuf};

use crate::pg::lsn::Lsn;

/// PostgreSQL's block size (BLCKSZ); pgclone refuses nothing else because nothing else is built in practice.
pub const BLCKSZ: usize = 8192;
/// Blocks per relation segment file (RELSEG_SIZE at its default of 1 GB): block numbers continue across
/// a relation's segment files, and the checksum mixes in the block number.
pub const RELSEG_BLOCKS: u64 = 131_072;

const LANES: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// Per-lane seeds (checksumBaseOffsets): part of the on-disk format.
const SEEDS: [u32; LANES] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// pg_checksum_page: the page read as native-endian 32-bit words in 32 lanes, with pd_checksum (bytes 8..10)
/// counted as zero, two extra rounds of zeros, lanes XORed, block number mixed in, reduced to 1..=65535.
pub fn page_checksum(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut lanes = SEEDS;
    for (i, word) in page.chunks_exact(4).enumerate() {
        let mut w = [word[0], word[1], word[2], word[3]];
        if i == 2 {
            // The word holding pd_checksum (bytes 8..10) and pd_flags: only pd_checksum counts as zero.
            w[0] = 0;
            w[1] = 0;
        }
        lanes[i % LANES] = mix(lanes[i % LANES], u32::from_ne_bytes(w));
    }
    for _ in 0..2 {
        for l in lanes.iter_mut() {
            *l = mix(*l, 0);
        }
    }
    let sum = lanes.iter().fold(0u32, |a, l| a ^ l) ^ blkno;
    (sum % 65535 + 1) as u16
}

/// pd_lsn, the first field of the page header: {xlogid, xrecoff} as two native 32-bit words.
pub fn page_lsn(page: &[u8; BLCKSZ]) -> u64 {
    let hi = u32::from_ne_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_ne_bytes(page[4..8].try_into().expect("4 bytes"));
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn stored_checksum(page: &[u8; BLCKSZ]) -> u16 {
    u16::from_ne_bytes(page[8..10].try_into().expect("2 bytes"))
}

/// PageIsNew: pd_upper (offset 14) is zero for a page never initialised; such pages carry no checksum.
pub fn is_new(page: &[u8; BLCKSZ]) -> bool {
    page[14..16] == [0, 0]
}

/// A data page whose stored checksum does not match its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPage {
    pub path: PathBuf,
    pub block: u64,
}

/// Verifies the checksum of each whole page of `data`, the relation file `rel`'s blocks from `first_block`
/// on, that is older than `start`: newer pages may be torn by concurrent writes and are restored from WAL
/// anyway (basebackup.c verifies the same pages). New (all-zero) pages carry no checksum.
pub fn check_pages(rel: &Path, first_block: u64, data: &[u8], start: Lsn, bad: &mut Vec<BadPage>) {
    for (i, page) in data.chunks_exact(BLCKSZ).enumerate() {
        let page: &[u8; BLCKSZ] = page.try_into().expect("one block");
        let blkno = first_block + i as u64;
        if !is_new(page) && page_lsn(page) < start.0 && stored_checksum(page) != page_checksum(page, blkno as u32) {
            bad.push(BadPage { path: rel.to_path_buf(), block: blkno });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ignores_its_own_field_and_depends_on_block_and_content() {
        let mut page = [0u8; BLCKSZ];
        page[14] = 0x20; // pd_upper: not a new page
        page[100] = 7;
        let c = page_checksum(&page, 3);
        page[8..10].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(page_checksum(&page, 3), c, "the stored checksum is not part of the sum");
        assert_eq!(stored_checksum(&page), c);
        assert_ne!(page_checksum(&page, 4), c);
        page[5000] ^= 1;
        assert_ne!(page_checksum(&page, 3), c);
        assert!(!is_new(&page));
        assert!(is_new(&[0u8; BLCKSZ]));
    }
}
