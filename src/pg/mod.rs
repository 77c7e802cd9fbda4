//! PostgreSQL as pgclone meets it: the libpq session, the replication protocol's messages, and the on-disk
//! facts (LSNs and segment names, `pg_control`, data page checksums) the clone depends on. The two sessions a
//! clone holds open on the primary live here too: the WAL stream and the backup session.

pub mod backup_session;
mod conn;
pub mod control_file;
pub mod databases;
pub mod lsn;
pub mod page_checksum;
pub mod relfile;
pub mod replication;
pub mod timeline;
pub mod wal_read;
pub mod wal_records;
pub mod wal_summary;

pub mod wal_stream;

pub use conn::{parse_conninfo, Conn, CopyData, PgError, Wire};
