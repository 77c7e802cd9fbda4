//! Names of relation files in a data directory, as PostgreSQL's base backup recognizes them
//! (src/backend/backup/basebackup.c sendDir, src/common/relpath.c): which files hold data pages, which belong
//! to temporary relations, and which fork a file is.

use std::ffi::OsStr;
use std::path::{Component, Path};

/// Database directories hold relation files: `global/`, `base/<oid>/` and a tablespace's
/// `pg_tblspc/<oid>/PG_<version>/<oid>/` (basebackup.c sendDir isDbDir).
pub fn in_db_dir(path: &Path) -> bool {
    let dir: Vec<Component> = path.parent().map(|p| p.components().collect()).unwrap_or_default();
    match dir.as_slice() {
        [Component::Normal(g)] => *g == "global",
        [Component::Normal(b), Component::Normal(oid)] => *b == "base" && all_digits(oid),
        [Component::Normal(t), Component::Normal(_), Component::Normal(v), Component::Normal(oid)] => {
            *t == "pg_tblspc" && v.to_string_lossy().starts_with("PG_") && all_digits(oid)
        }
        _ => false,
    }
}

fn all_digits(s: &OsStr) -> bool {
    let s = s.as_encoded_bytes();
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// The segment number of a relation data file (a file whose pages carry checksums: basebackup.c
/// is_checksummed_file), None for anything else.
pub fn relation_segment(path: &Path) -> Option<u64> {
    if !in_db_dir(path) {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    relation_file(name)?;
    Some(name.split_once('.').and_then(|(_, seg)| seg.parse().ok()).unwrap_or(0))
}

/// `<relfilenode>[_<fork>][.<segment>]` → (relfilenode, fork) (parse_filename_for_nontemp_relation).
pub fn relation_file(name: &str) -> Option<(&str, Option<&str>)> {
    let base = match name.split_once('.') {
        Some((b, seg)) if !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_digit()) => b,
        Some(_) => return None,
        None => name,
    };
    let (rel, fork) = match base.split_once('_') {
        Some((r, f)) if ["fsm", "vm", "init"].contains(&f) => (r, Some(f)),
        Some(_) => return None,
        None => (base, None),
    };
    (!rel.is_empty() && rel.bytes().all(|c| c.is_ascii_digit())).then_some((rel, fork))
}

/// `t<backend>_<relfilenode>[_<fork>][.<segment>]`: a temporary relation (looks_like_temp_rel_name).
pub fn looks_like_temp_rel(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    let Some((backend, relfile)) = rest.split_once('_') else { return false };
    !backend.is_empty() && backend.bytes().all(|c| c.is_ascii_digit()) && relation_file(relfile).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_segments_only_in_database_dirs() {
        assert_eq!(relation_segment(Path::new("base/5/16384")), Some(0));
        assert_eq!(relation_segment(Path::new("base/5/16384.3")), Some(3));
        assert_eq!(relation_segment(Path::new("global/1262_vm")), Some(0));
        assert_eq!(relation_segment(Path::new("pg_tblspc/1/PG_15_2/5/77")), Some(0));
        assert_eq!(relation_segment(Path::new("base/5/pg_filenode.map")), None);
        assert_eq!(relation_segment(Path::new("pg_xact/0000")), None);
    }

    #[test]
    fn relation_file_names() {
        assert_eq!(relation_file("16384"), Some(("16384", None)));
        assert_eq!(relation_file("16384.12"), Some(("16384", None)));
        assert_eq!(relation_file("16384_vm"), Some(("16384", Some("vm"))));
        assert_eq!(relation_file("16384_init.1"), Some(("16384", Some("init"))));
        assert_eq!(relation_file("16384_foo"), None);
        assert_eq!(relation_file("16384."), None);
        assert_eq!(relation_file("PG_VERSION"), None);
        assert!(looks_like_temp_rel("t3_16400_fsm.1"));
        assert!(!looks_like_temp_rel("t_16400"));
        assert!(!looks_like_temp_rel("ta_16400"));
    }
}
