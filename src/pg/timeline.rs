//! A server's timeline history (src/backend/access/transam/timeline.c): which timelines its WAL passed through,
//! and the LSN at which each ancestor ended and its child began. Whether a position of another copy of the
//! cluster lies on this history decides whether WAL this server has seen can stand for what that copy holds.

use crate::pg::lsn::Lsn;

/// One timeline of a history: WAL in [begin, end) was written on it; `end` None for the server's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub tli: u32,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// The spans of `current`, oldest first, from the content of its history file (`TIMELINE_HISTORY current`;
/// empty for timeline 1, which has none). Each line names an ancestor and the LSN where it was left
/// (`parentTLI <tab> switchpoint <tab> reason`); '#' starts a comment. None if a line does not parse.
pub fn parse_history(current: u32, content: &str) -> Option<Vec<Span>> {
    let mut spans = Vec::new();
    let mut begin = Lsn(0);
    for line in content.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let tli: u32 = fields.next()?.parse().ok()?;
        let end: Lsn = fields.next()?.parse().ok()?;
        spans.push(Span { tli, begin, end: Some(end) });
        begin = end;
    }
    spans.push(Span { tli: current, begin, end: None });
    Some(spans)
}

/// Whether the WAL position `lsn` on timeline `tli` is one this history went through: `tli` is on it and
/// `lsn` lies within its span. A position exactly at an ancestor's end is on it too: WAL up to there is
/// shared with the child (the end of the last record replayed before the switch).
pub fn reaches(history: &[Span], tli: u32, lsn: Lsn) -> bool {
    history.iter().any(|s| s.tli == tli && s.begin <= lsn && s.end.is_none_or(|end| lsn <= end))
}

/// The part of [from, to) each timeline of `history` holds, oldest first, skipping empty ones: where WAL
/// summaries must cover that range, they must cover these pieces, each on its own timeline.
pub fn pieces(history: &[Span], from: Lsn, to: Lsn) -> Vec<(u32, Lsn, Lsn)> {
    history
        .iter()
        .filter_map(|s| {
            let (a, b) = (s.begin.max(from), s.end.map_or(to, |e| e.min(to)));
            (a < b).then_some((s.tli, a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn history_spans_positions_and_pieces() {
        let content = "1\t0/3000158\tno recovery target specified\n\n# a comment\n2\t0/5000000\tat restore point\n";
        let h = parse_history(3, content).unwrap();
        assert_eq!(
            h,
            vec![
                Span { tli: 1, begin: Lsn(0), end: Some(lsn("0/3000158")) },
                Span { tli: 2, begin: lsn("0/3000158"), end: Some(lsn("0/5000000")) },
                Span { tli: 3, begin: lsn("0/5000000"), end: None },
            ]
        );
        assert!(reaches(&h, 1, lsn("0/3000158")), "up to the switch is shared");
        assert!(!reaches(&h, 1, lsn("0/3000159")), "past it timeline 1 went elsewhere");
        assert!(reaches(&h, 3, lsn("9/0")));
        assert!(!reaches(&h, 4, lsn("0/6000000")), "a timeline not on the history");
        assert_eq!(
            pieces(&h, lsn("0/2000000"), lsn("0/6000000")),
            vec![
                (1, lsn("0/2000000"), lsn("0/3000158")),
                (2, lsn("0/3000158"), lsn("0/5000000")),
                (3, lsn("0/5000000"), lsn("0/6000000"))
            ]
        );
        assert_eq!(pieces(&h, lsn("0/5800000"), lsn("0/6000000")), vec![(3, lsn("0/5800000"), lsn("0/6000000"))]);
        assert_eq!(parse_history(1, ""), Some(vec![Span { tli: 1, begin: Lsn(0), end: None }]));
        assert_eq!(parse_history(2, "1\tnot an lsn\n"), None);
    }
}
