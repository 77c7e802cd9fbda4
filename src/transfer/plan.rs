//! What a clone copies, creates empty, and skips, following PostgreSQL's own base backup
//! (src/backend/backup/basebackup.c: excludeDirContents, excludeFiles, sendDir) so that a pgclone copy
//! holds exactly what a pg_basebackup copy would.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use crate::pg::control_file::CONTROL_FILE;
use crate::pg::relfile::{in_db_dir, looks_like_temp_rel, relation_file};
use crate::replica::tablespace::{local_path, Mapping};
use crate::transport::{EntryKind, RemoteEntry};

/// Directories whose contents are runtime state, recreated by the server: copied empty
/// (basebackup.c excludeDirContents). Matched by name at any depth, as sendDir does.
const EMPTY_DIRS: &[&str] =
    &["pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans"];

/// Files never copied (basebackup.c excludeFiles): leftovers of running processes, and the files a
/// backup writes itself (backup_label, tablespace_map, backup_manifest come from pg_backup_stop, not
/// from a primary that may have them from an earlier restore).
const SKIP_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// Relation cache init files are rebuilt at startup; excluded by prefix (RELCACHE_INIT_FILENAME).
const SKIP_PREFIX: &str = "pg_internal.init";

/// Temporary files and directories of running queries (PG_TEMP_FILE_PREFIX), anywhere.
const TEMP_PREFIX: &str = "pgsql_tmp";

/// What finalize needs that the planner found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Directories to create, parents first, with PostgreSQL's mode (0700, or 0750 with group access).
    pub dirs: Vec<(PathBuf, u32)>,
    /// Symbolic links to recreate as they are.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// Files to copy, largest first, so the longest copies start first and workers finish together.
    pub files: Vec<(PathBuf, u64)>,
    pub total_bytes: u64,
    /// Tablespaces: the link pg_tblspc/<oid> and the local directory it is to point to.
    pub tablespaces: Vec<Tablespace>,
    /// The primary's data directory grants its group read access (initdb --allow-group-access): PostgreSQL
    /// then creates directories 0750 and files 0640, else 0700 and 0600 (src/common/file_perm.c; it tells by
    /// the data directory's mode, which `global/` shares).
    pub group_access: bool,
    /// With group access: files the primary keeps private to its owner all the same (a `server.key`, which
    /// the server refuses to load when its group may read it), to be made 0600 here too.
    pub private: Vec<PathBuf>,
    /// The replica's own files a re-sync leaves as they are (`Plan::keep`): neither copied nor pruned.
    pub kept: Vec<PathBuf>,
}

impl Plan {
    /// Leaves the replica's own `paths` as they are: the primary's files of those names are not copied, and
    /// prune does not remove them.
    pub fn keep(&mut self, paths: Vec<PathBuf>) {
        self.files.retain(|(p, size)| {
            let keep = paths.contains(p);
            self.total_bytes -= if keep { *size } else { 0 };
            !keep
        });
        self.private.retain(|p| !paths.contains(p));
        self.kept = paths;
    }

    /// The process umask under which the copy creates files and directories with PostgreSQL's modes.
    pub fn umask(&self) -> u32 {
        if self.group_access {
            0o027
        } else {
            0o077
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub link: PathBuf,
    pub local: PathBuf,
}

/// Refuses a listing no PostgreSQL data directory gives: a path that is absolute, empty or has `..` in it, a
/// path listed twice, or an entry beneath a symbolic link other than a tablespace's `pg_tblspc/<oid>`. The copy writes every listed
/// file at its path under the replica (or a mapped tablespace), so such an entry, from a compromised or
/// impersonated primary, would write outside them.
pub fn check_listing(entries: &[RemoteEntry]) -> Result<(), String> {
    let links: HashSet<&Path> =
        entries.iter().filter(|e| matches!(e.kind, EntryKind::Symlink(_))).map(|e| e.path.as_path()).collect();
    let mut seen: HashSet<&Path> = HashSet::with_capacity(entries.len());
    let mut total: u64 = 0;
    for e in entries {
        // Sizes are the primary's word: summed with a check, so that no total here wraps around.
        total = total
            .checked_add(e.size)
            .ok_or_else(|| format!("the primary listed sizes that add up to more than {} bytes", u64::MAX))?;
        // A directory lists each name once: a second entry of one path would be written twice, perhaps as
        // two kinds (a file where a link was made).
        if !seen.insert(e.path.as_path()) {
            return Err(format!("the primary listed {:?} twice", e.path));
        }
        let path = &e.path;
        if path.as_os_str().is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!("the primary listed {path:?}, which is not a path inside its data directory"));
        }
        let through = path.ancestors().skip(1).find(|a| links.contains(a) && parent(a) != Path::new("pg_tblspc"));
        if let Some(link) = through {
            return Err(format!("the primary listed {path:?} beneath the symbolic link {link:?}"));
        }
    }
    Ok(())
}

/// Builds the plan. `major` is the primary's major version: PG 17 added pg_wal/summaries, and a tablespace
/// holds one directory per major (PG_<major>_<catversion>) of which only ours is copied, as basebackup.c
/// sends only TABLESPACE_VERSION_DIRECTORY. `mappings` relocates tablespaces (-T).
pub fn plan(entries: &[RemoteEntry], major: u32, mappings: &[Mapping]) -> Plan {
    let version_dir = format!("PG_{major}_");
    // Unlogged relations: the relfilenodes of each database directory that have an init fork.
    let init_forks: HashSet<(PathBuf, &str)> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && in_db_dir(&e.path))
        .filter_map(|e| {
            let name = e.path.file_name()?.to_str()?;
            let rel = name.strip_suffix("_init")?;
            rel.bytes().all(|b| b.is_ascii_digit()).then(|| (parent(&e.path), rel))
        })
        .collect();

    let mut p = Plan::default();
    let mut emptied: BTreeSet<PathBuf> = BTreeSet::new();
    for e in entries {
        if excluded_by_ancestor(&e.path, &emptied) {
            continue;
        }
        let name = e.path.file_name().unwrap_or(OsStr::new("")).to_string_lossy();
        // By name, whatever the entry's type, before anything else (basebackup.c sendDir matches excludeFiles
        // before it looks at the type): a link named backup_label would otherwise be recreated here, and the
        // files pgclone writes under these names would go wherever it points.
        if name.starts_with(TEMP_PREFIX)
            || SKIP_FILES.contains(&name.as_ref())
            || name.starts_with(SKIP_PREFIX)
            || e.path == Path::new(CONTROL_FILE)
        {
            continue;
        }
        let top = e.path.components().count() == 1;
        // pg_wal may be a symlink on the primary (initdb -X); the copy gets a real directory that our own
        // WAL stream fills, never the primary's segments.
        if top && name == "pg_wal" {
            p.dirs.push((e.path.clone(), 0o700));
            p.dirs.push((e.path.join("archive_status"), 0o700));
            if major >= 17 {
                p.dirs.push((e.path.join("summaries"), 0o700));
            }
            emptied.insert(e.path.clone());
            continue;
        }
        if EMPTY_DIRS.contains(&name.as_ref()) && matches!(e.kind, EntryKind::Dir | EntryKind::Symlink(_)) {
            // A symlinked runtime directory (e.g. pg_stat_tmp on tmpfs) becomes a plain directory, as
            // basebackup.c's convert_link_to_directory does.
            p.dirs.push((e.path.clone(), 0o700));
            emptied.insert(e.path.clone());
            continue;
        }
        if let (Some(parent), EntryKind::Symlink(target)) = (e.path.parent(), &e.kind) {
            if parent == Path::new("pg_tblspc") {
                p.tablespaces.push(Tablespace { link: e.path.clone(), local: local_path(mappings, target) });
                continue;
            }
        }
        if let [Component::Normal(t), Component::Normal(_), Component::Normal(v), ..] =
            e.path.components().collect::<Vec<_>>()[..]
        {
            if t == "pg_tblspc" && !v.to_string_lossy().starts_with(&version_dir) {
                continue;
            }
        }
        match &e.kind {
            EntryKind::Dir => {
                if e.path == Path::new("global") {
                    p.group_access = e.mode & 0o070 != 0;
                }
                p.dirs.push((e.path.clone(), 0o700));
            }
            EntryKind::Symlink(target) => p.symlinks.push((e.path.clone(), target.clone())),
            EntryKind::Other => {}
            EntryKind::File => {
                if in_db_dir(&e.path) {
                    if looks_like_temp_rel(&name) {
                        continue;
                    }
                    if let Some((rel, fork)) = relation_file(&name) {
                        if fork != Some("init") && init_forks.contains(&(parent(&e.path), rel)) {
                            continue;
                        }
                    }
                }
                p.total_bytes += e.size;
                p.files.push((e.path.clone(), e.size));
                if e.mode & 0o040 == 0 {
                    p.private.push(e.path.clone());
                }
            }
        }
    }
    p.dirs.sort_by(|a, b| a.0.cmp(&b.0));
    p.files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if p.group_access {
        p.dirs.iter_mut().for_each(|(_, mode)| *mode = 0o750);
    } else {
        p.private.clear();
    }
    p
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn excluded_by_ancestor(path: &Path, emptied: &BTreeSet<PathBuf>) -> bool {
    path.ancestors().skip(1).any(|a| emptied.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> RemoteEntry {
        RemoteEntry { path: path.into(), kind: EntryKind::File, size, mode: 0o600 }
    }
    fn d(path: &str) -> RemoteEntry {
        RemoteEntry { path: path.into(), kind: EntryKind::Dir, size: 4096, mode: 0o700 }
    }
    fn files(p: &Plan) -> Vec<&str> {
        p.files.iter().map(|(f, _)| f.to_str().unwrap()).collect()
    }

    #[test]
    fn listings_that_would_write_outside_the_replica_are_refused() {
        let link = |path: &str, to: &str| RemoteEntry {
            path: path.into(),
            kind: EntryKind::Symlink(to.into()),
            size: 0,
            mode: 0o777,
        };
        let fine =
            [d("base"), f("base/1", 8192), link("pg_tblspc/16400", "/srv/ts"), f("pg_tblspc/16400/PG_15_1/5/1", 1)];
        assert_eq!(check_listing(&fine), Ok(()));
        for bad in ["/etc/passwd", "../outside", "base/../../x", ""] {
            assert!(check_listing(&[f(bad, 1)]).is_err(), "{bad:?}");
        }
        let planted = [link("log", "/home/u/.ssh"), f("log/authorized_keys", 10)];
        let err = check_listing(&planted).unwrap_err();
        assert!(err.contains("beneath the symbolic link"), "{err}");
        let twice = [f("base/1", 8192), link("base/1", "/home/u/.ssh/authorized_keys")];
        assert!(check_listing(&twice).unwrap_err().contains("twice"));
        let huge = [f("base/1", u64::MAX - 10), f("base/2", 11)];
        assert!(check_listing(&huge).unwrap_err().contains("add up to more than"));
    }

    #[test]
    fn modes_follow_postgresql_and_a_private_key_stays_private() {
        let dir = |path: &str, mode| RemoteEntry { path: path.into(), kind: EntryKind::Dir, size: 4096, mode };
        let file = |path: &str, mode| RemoteEntry { path: path.into(), kind: EntryKind::File, size: 1, mode };
        let private = [dir("global", 0o700), dir("pg_wal", 0o700), dir("base", 0o755), file("server.key", 0o600)];
        let p = plan(&private, 15, &[]);
        assert!(!p.group_access && p.private.is_empty());
        assert_eq!(p.umask(), 0o077);
        assert!(p.dirs.iter().all(|(_, m)| *m == 0o700), "never more than 0700: {:?}", p.dirs);

        let group = [dir("global", 0o750), dir("pg_wal", 0o750), file("server.key", 0o600), file("PG_VERSION", 0o640)];
        let p = plan(&group, 15, &[]);
        assert!(p.group_access);
        assert_eq!(p.umask(), 0o027);
        assert_eq!(p.private, vec![PathBuf::from("server.key")]);
        assert!(p.dirs.iter().all(|(_, m)| *m == 0o750), "{:?}", p.dirs);
    }

    #[test]
    fn runtime_dirs_are_created_empty_and_wal_is_ours() {
        let entries = vec![
            d("pg_wal"),
            f("pg_wal/000000010000000000000001", 16 << 20),
            d("pg_wal/archive_status"),
            d("pg_subtrans"),
            f("pg_subtrans/0000", 8192),
            RemoteEntry { path: "pg_stat_tmp".into(), kind: EntryKind::Symlink("/run/x".into()), size: 6, mode: 0o777 },
            d("pg_replslot"),
            d("pg_replslot/s1"),
            f("pg_replslot/s1/state", 200),
            d("pg_xact"),
            f("pg_xact/0000", 8192),
        ];
        let p = plan(&entries, 15, &[]);
        assert_eq!(files(&p), vec!["pg_xact/0000"]);
        let dirs: Vec<_> = p.dirs.iter().map(|(d, m)| (d.to_str().unwrap(), *m)).collect();
        assert_eq!(
            dirs,
            vec![
                ("pg_replslot", 0o700),
                ("pg_stat_tmp", 0o700),
                ("pg_subtrans", 0o700),
                ("pg_wal", 0o700),
                ("pg_wal/archive_status", 0o700),
                ("pg_xact", 0o700)
            ]
        );
        assert!(p.symlinks.is_empty());
        let p17 = plan(&entries, 17, &[]);
        assert!(p17.dirs.iter().any(|(d, _)| d == Path::new("pg_wal/summaries")));
    }

    #[test]
    fn skipped_files_and_control_file() {
        let entries = vec![
            f("postmaster.pid", 90),
            f("postmaster.opts", 30),
            f("backup_label", 200),
            f("backup_label.old", 200),
            f("tablespace_map", 0),
            f("backup_manifest", 0),
            f("postgresql.auto.conf.tmp", 1),
            f("postgresql.auto.conf", 100),
            f("current_logfiles.tmp", 1),
            f("global/pg_control", 8192),
            f("global/pg_internal.init", 100),
            f("base/1/pg_internal.init.1234", 100),
            d("base/pgsql_tmp"),
            f("base/pgsql_tmp/pgsql_tmp123.0", 1 << 20),
            f("base/1/pgsql_tmp999", 5),
            f("PG_VERSION", 3),
        ];
        let p = plan(&entries, 15, &[]);
        assert_eq!(files(&p), vec!["backup_label.old", "postgresql.auto.conf", "PG_VERSION"]);
        assert_eq!(p.total_bytes, 303);
        assert!(p.dirs.is_empty(), "pgsql_tmp directories are not created: {:?}", p.dirs);
        // The same names as links (or directories) are skipped too: never recreated to be written through.
        let link = |path: &str| RemoteEntry {
            path: path.into(),
            kind: EntryKind::Symlink("/home/u/.ssh/authorized_keys".into()),
            size: 0,
            mode: 0o777,
        };
        let planted: Vec<RemoteEntry> =
            ["backup_label", "tablespace_map", "backup_manifest", "global/pg_control", "postmaster.pid"]
                .into_iter()
                .map(link)
                .chain([d("backup_manifest")])
                .collect();
        let p = plan(&planted, 15, &[]);
        assert!(p.symlinks.is_empty() && p.dirs.is_empty() && p.files.is_empty(), "{p:?}");
    }

    #[test]
    fn unlogged_relations_keep_only_their_init_fork() {
        let entries = vec![
            d("base/5"),
            f("base/5/16384", 1 << 30),
            f("base/5/16384.1", 100),
            f("base/5/16384_fsm", 24576),
            f("base/5/16384_vm", 8192),
            f("base/5/16384_init", 0),
            f("base/5/16390", 8192),
            f("base/6/16384", 8192),
        ];
        let p = plan(&entries, 15, &[]);
        assert_eq!(files(&p), vec!["base/5/16390", "base/6/16384", "base/5/16384_init"]);
    }

    #[test]
    fn temporary_relations_are_skipped_only_in_database_dirs() {
        let entries = vec![
            f("base/5/t3_16400", 8192),
            f("base/5/t3_16400_fsm", 8192),
            f("base/5/t12_16401.2", 8192),
            f("base/5/t3_x", 1),
            f("global/t1_1", 1),
            f("t3_16400", 2),
        ];
        let p = plan(&entries, 15, &[]);
        assert_eq!(files(&p), vec!["t3_16400", "base/5/t3_x"]);
    }

    #[test]
    fn kept_files_are_neither_copied_nor_counted() {
        let mut p = plan(&[f("postgresql.auto.conf", 100), f("standby.signal", 0), f("PG_VERSION", 3)], 15, &[]);
        p.keep(vec!["postgresql.auto.conf".into(), "standby.signal".into()]);
        assert_eq!(files(&p), vec!["PG_VERSION"]);
        assert_eq!(p.total_bytes, 3);
        assert_eq!(p.kept.len(), 2);
    }

    #[test]
    fn largest_first_and_tablespaces_reported() {
        let entries = vec![
            f("a", 1),
            f("b", 300),
            f("c", 20),
            d("pg_tblspc"),
            RemoteEntry {
                path: "pg_tblspc/16390".into(),
                kind: EntryKind::Symlink("/srv/ts".into()),
                size: 7,
                mode: 0o777,
            },
            RemoteEntry { path: "logs".into(), kind: EntryKind::Symlink("/var/log/pg".into()), size: 11, mode: 0o777 },
        ];
        let p = plan(&entries, 15, &[]);
        assert_eq!(files(&p), vec!["b", "c", "a"]);
        assert_eq!(p.tablespaces, vec![Tablespace { link: "pg_tblspc/16390".into(), local: "/srv/ts".into() }]);
        assert_eq!(p.symlinks, vec![(PathBuf::from("logs"), PathBuf::from("/var/log/pg"))]);
    }

    #[test]
    fn tablespaces_copy_only_this_major_and_follow_mappings() {
        let link =
            |p: &str, t: &str| RemoteEntry { path: p.into(), kind: EntryKind::Symlink(t.into()), size: 0, mode: 0o777 };
        let entries = vec![
            d("pg_tblspc"),
            link("pg_tblspc/16390", "/srv/ts"),
            d("pg_tblspc/16390/PG_15_202209061"),
            d("pg_tblspc/16390/PG_15_202209061/5"),
            f("pg_tblspc/16390/PG_15_202209061/5/16400", 8192),
            f("pg_tblspc/16390/PG_15_202209061/5/t3_16401", 8192),
            d("pg_tblspc/16390/PG_14_202107181"),
            f("pg_tblspc/16390/PG_14_202107181/5/123", 8192),
            d("pg_tblspc/16391"),
            f("pg_tblspc/16391/PG_15_202209061/5/777", 1),
        ];
        let m = [crate::replica::tablespace::parse_mapping("/srv/ts=/data/ts").unwrap()];
        let p = plan(&entries, 15, &m);
        assert_eq!(p.tablespaces, vec![Tablespace { link: "pg_tblspc/16390".into(), local: "/data/ts".into() }]);
        assert_eq!(files(&p), vec!["pg_tblspc/16390/PG_15_202209061/5/16400", "pg_tblspc/16391/PG_15_202209061/5/777"]);
        assert!(
            p.dirs.iter().any(|(d, _)| d == Path::new("pg_tblspc/16391")),
            "an in-place tablespace is a plain directory"
        );
        assert!(!p.dirs.iter().any(|(d, _)| d.starts_with("pg_tblspc/16390/PG_14_202107181")));
    }
}
