//! The CopyData messages of a physical replication stream, typed (protocol-replication.sgml, "START_REPLICATION
//! ... PHYSICAL"; walsender.c XLogSendPhysical and WalSndKeepalive; walreceiver.c XLogWalRcvSendReply). All integers
//! are big-endian; times are microseconds since the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::pg::lsn::Lsn;

/// What the server sends inside the copy stream.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// 'w': WAL bytes that start at `start`; `wal_end` is the end of WAL on the server when it sent them.
    XLogData { start: Lsn, wal_end: Lsn, sent_at: i64, data: &'a [u8] },
    /// 'k': the server is alive; with `reply_requested` it wants a status update now (it is about to time us
    /// out under wal_sender_timeout).
    Keepalive { wal_end: Lsn, sent_at: i64, reply_requested: bool },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("empty CopyData message")]
    Empty,
    #[error("{kind} message of {len} bytes is too short")]
    Short { kind: char, len: usize },
    #[error("unexpected CopyData message type {0:?}")]
    Unknown(char),
}

impl<'a> ServerMessage<'a> {
    pub fn parse(m: &'a [u8]) -> Result<ServerMessage<'a>, MessageError> {
        let kind = *m.first().ok_or(MessageError::Empty)? as char;
        let need = match kind {
            'w' => 25,
            'k' => 18,
            other => return Err(MessageError::Unknown(other)),
        };
        if m.len() < need {
            return Err(MessageError::Short { kind, len: m.len() });
        }
        Ok(match kind {
            'w' => ServerMessage::XLogData {
                start: Lsn(be_u64(&m[1..9])),
                wal_end: Lsn(be_u64(&m[9..17])),
                sent_at: be_u64(&m[17..25]) as i64,
                data: &m[25..],
            },
            _ => ServerMessage::Keepalive {
                wal_end: Lsn(be_u64(&m[1..9])),
                sent_at: be_u64(&m[9..17]) as i64,
                reply_requested: m[17] == 1,
            },
        })
    }
}

/// 'r', the standby status update: how far WAL is written and flushed here. The server advances the slot to
/// `flushed`, so only WAL that is safely on our disk is released. A receiver that replays nothing reports
/// `applied` as InvalidXLogRecPtr (0), as pg_receivewal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatus {
    pub written: Lsn,
    pub flushed: Lsn,
    pub applied: Lsn,
    pub reply_requested: bool,
}

impl StandbyStatus {
    pub fn encode(&self, now: SystemTime) -> [u8; 34] {
        let mut m = [0u8; 34];
        m[0] = b'r';
        m[1..9].copy_from_slice(&self.written.0.to_be_bytes());
        m[9..17].copy_from_slice(&self.flushed.0.to_be_bytes());
        m[17..25].copy_from_slice(&self.applied.0.to_be_bytes());
        m[25..33].copy_from_slice(&pg_time(now).to_be_bytes());
        m[33] = u8::from(self.reply_requested);
        m
    }
}

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's TimestampTz epoch).
fn pg_time(t: SystemTime) -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let unix = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    unix.as_micros() as i64 - PG_EPOCH_UNIX_SECS * 1_000_000
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn xlogdata_carries_its_start_and_bytes() {
        let mut m = vec![b'w'];
        m.extend_from_slice(&0x1_0000_0028u64.to_be_bytes());
        m.extend_from_slice(&0x2_0000_0000u64.to_be_bytes());
        m.extend_from_slice(&7i64.to_be_bytes());
        m.extend_from_slice(b"wal");
        assert_eq!(
            ServerMessage::parse(&m),
            Ok(ServerMessage::XLogData {
                start: Lsn(0x1_0000_0028),
                wal_end: Lsn(0x2_0000_0000),
                sent_at: 7,
                data: b"wal"
            })
        );
        assert_eq!(ServerMessage::parse(&m[..24]), Err(MessageError::Short { kind: 'w', len: 24 }));
    }

    #[test]
    fn keepalive_and_its_reply_request() {
        let mut m = vec![b'k'];
        m.extend_from_slice(&0x30u64.to_be_bytes());
        m.extend_from_slice(&9i64.to_be_bytes());
        m.push(1);
        assert_eq!(
            ServerMessage::parse(&m),
            Ok(ServerMessage::Keepalive { wal_end: Lsn(0x30), sent_at: 9, reply_requested: true })
        );
        m[17] = 0;
        assert!(matches!(ServerMessage::parse(&m), Ok(ServerMessage::Keepalive { reply_requested: false, .. })));
        assert_eq!(ServerMessage::parse(b""), Err(MessageError::Empty));
        assert_eq!(ServerMessage::parse(b"x"), Err(MessageError::Unknown('x')));
    }

    #[test]
    fn status_update_layout() {
        let s =
            StandbyStatus { written: Lsn(0x1_0000_0010), flushed: Lsn(0x20), applied: Lsn(0), reply_requested: false };
        let at = UNIX_EPOCH + Duration::from_secs(946_684_800 + 1);
        let m = s.encode(at);
        assert_eq!(m[0], b'r');
        assert_eq!(be_u64(&m[1..9]), 0x1_0000_0010);
        assert_eq!(be_u64(&m[9..17]), 0x20);
        assert_eq!(be_u64(&m[17..25]), 0);
        assert_eq!(be_u64(&m[25..33]), 1_000_000, "one second after the PostgreSQL epoch");
        assert_eq!(m[33], 0);
    }
}
