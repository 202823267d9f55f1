//! The channel param `rewind` (protocol.md §5, RTL): on a first attach, the client
//! gets the channel's last messages before live traffic — a count (`rewind=10`, at most
//! [`MAX_COUNT`]) or a duration (`rewind=30s`, `rewind=2m`).

use crate::channel_master::Entry;
use crate::error::AblyError;

/// The most messages a rewind by count delivers.
pub const MAX_COUNT: usize = 100;

/// Where a new attachment starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// The last `n` messages.
    Count(usize),
    /// The messages timestamped at or after this time (wall clock, ms).
    Since(i64),
}

impl Rewind {
    /// Reads a `rewind` value; `now_ms` anchors a duration.
    pub fn parse(text: &str, now_ms: i64) -> Result<Rewind, AblyError> {
        let invalid = || AblyError::InvalidParameter {
            name: "rewind",
            reason: format!("{text:?} is neither a count nor a duration like 30s or 2m"),
        };
        if let Ok(count) = text.parse::<usize>() {
            return Ok(Rewind::Count(count.min(MAX_COUNT)));
        }
        let (digits, unit_ms) = match text.char_indices().last() {
            Some((at, 's')) => (&text[..at], 1_000),
            Some((at, 'm')) => (&text[..at], 60_000),
            _ => return Err(invalid()),
        };
        let amount: i64 = digits.parse().map_err(|_| invalid())?;
        let span = amount
            .checked_mul(unit_ms)
            .filter(|s| *s >= 0)
            .ok_or_else(invalid)?;
        Ok(Rewind::Since(now_ms.saturating_sub(span)))
    }

    /// The tail of `entries` (oldest first) this rewind delivers.
    pub fn select(self, entries: &[Entry]) -> &[Entry] {
        let start = match self {
            Rewind::Count(n) => entries.len().saturating_sub(n),
            Rewind::Since(since) => entries
                .iter()
                .position(|e| e.body.timestamp().unwrap_or(0) >= since)
                .unwrap_or(entries.len()),
        };
        &entries[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Position;
    use crate::protocol::Message;

    fn entries(timestamps: &[i64]) -> Vec<Entry> {
        (timestamps.iter().enumerate())
            .map(|(i, ts)| Entry {
                position: Position::new(1, i as u64 + 1),
                body: crate::channel_master::Body::Message(Message {
                    timestamp: Some(*ts),
                    ..Message::default()
                }),
            })
            .collect()
    }

    #[test]
    fn counts_durations_and_garbage() {
        assert_eq!(Rewind::parse("3", 0), Ok(Rewind::Count(3)));
        assert_eq!(Rewind::parse("1000", 0), Ok(Rewind::Count(MAX_COUNT)));
        assert_eq!(Rewind::parse("30s", 100_000), Ok(Rewind::Since(70_000)));
        assert_eq!(Rewind::parse("2m", 200_000), Ok(Rewind::Since(80_000)));
        for bad in ["", "s", "-3", "3h", "abc", "1.5s", "99999999999999999999m"] {
            let error = Rewind::parse(bad, 0).expect_err(bad);
            assert_eq!(error.code(), 40003, "{bad}");
        }
    }

    #[test]
    fn selects_the_tail() {
        let all = entries(&[10, 20, 30, 40]);
        assert_eq!(Rewind::Count(2).select(&all).len(), 2);
        assert_eq!(Rewind::Count(9).select(&all).len(), 4);
        assert_eq!(Rewind::Count(0).select(&all).len(), 0);
        assert_eq!(Rewind::Since(25).select(&all)[0].body.timestamp(), Some(30));
        assert!(Rewind::Since(99).select(&all).is_empty());
    }
}
