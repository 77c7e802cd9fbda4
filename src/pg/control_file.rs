//! Facts about `global/pg_control` (src/include/catalog/pg_control.h) that several phases rely on.

/// Path of the control file inside a data directory (XLOG_CONTROL_FILE).
pub const CONTROL_FILE: &str = "global/pg_control";

/// The system identifier: the first field of ControlFileData, in the byte order of the machine that
/// wrote it (a physical replica always runs on the same architecture).
pub fn system_id(control: &[u8]) -> u64 {
    control.get(..8).map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
}
