//! Tablespace relocation (-T/--tablespace-mapping OLD=NEW, pg_basebackup's spelling and rules).
//!
//! A tablespace lives outside the data directory and is reached through the symlink pg_tblspc/<oid>.
//! The clone puts each one at its mapped location (by default the primary's path) and writes that
//! location into tablespace_map, from which PostgreSQL recreates the symlinks at its first start
//! (backup.sgml, "tablespace_map").

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub old: PathBuf,
    pub new: PathBuf,
}

/// Parses OLD=NEW; a literal `=` in a path is written `\=`. Both sides must be absolute.
pub fn parse_mapping(s: &str) -> Result<Mapping, String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'=') => parts.last_mut().expect("one part").push(chars.next().expect("=")),
            '=' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    let [old, new] = <[String; 2]>::try_from(parts).map_err(|_| format!("{s:?} is not OLD=NEW"))?;
    let (old, new) = (PathBuf::from(old), PathBuf::from(new));
    if !old.is_absolute() || !new.is_absolute() {
        return Err(format!("both directories of {s:?} must be absolute paths"));
    }
    Ok(Mapping { old, new })
}

/// Where a tablespace at `remote` on the primary goes here.
pub fn local_path(mappings: &[Mapping], remote: &Path) -> PathBuf {
    mappings.iter().find(|m| m.old == remote).map_or_else(|| remote.to_path_buf(), |m| m.new.clone())
}

/// Rewrites tablespace_map ("<oid> <path>" per line, as pg_backup_stop returns it) with mapped paths.
pub fn rewrite_map(mappings: &[Mapping], map: &str) -> String {
    map.lines()
        .map(|line| match line.split_once(' ') {
            Some((oid, path)) => format!("{oid} {}\n", local_path(mappings, Path::new(path)).display()),
            None => format!("{line}\n"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse_like_pg_basebackup() {
        assert_eq!(
            parse_mapping("/srv/ts=/data/ts").unwrap(),
            Mapping { old: "/srv/ts".into(), new: "/data/ts".into() }
        );
        assert_eq!(parse_mapping(r"/a\=b=/c").unwrap().old, PathBuf::from("/a=b"));
        assert!(parse_mapping("/a").is_err());
        assert!(parse_mapping("/a=/b=/c").is_err());
        assert!(parse_mapping("rel=/b").is_err());
    }

    #[test]
    fn map_file_gets_the_new_locations() {
        let m = vec![parse_mapping("/srv/ts one=/data/ts").unwrap()];
        assert_eq!(rewrite_map(&m, "16390 /srv/ts one\n16391 /srv/other\n"), "16390 /data/ts\n16391 /srv/other\n");
        assert_eq!(local_path(&m, Path::new("/srv/ts one")), PathBuf::from("/data/ts"));
    }
}
