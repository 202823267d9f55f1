//! Channel positions: where a message sits in its channel's one global order.
//!
//! A position is an epoch and a sequence number. Only the channel's sequencer assigns
//! them, and the epoch grows whenever sequencing authority moves, so positions are
//! totally ordered everywhere. On the wire a position is an opaque string
//! (`channelSerial`, a message's `serial`) built to sort the same way as the position.
//! Epochs are at least the wall clock in milliseconds when a master takes a channel
//! over (see `region::master`), so twelve hex digits hold them for millennia.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }

    /// The position right after this one, under the same epoch.
    pub fn next(self) -> Self {
        Self {
            epoch: self.epoch,
            seq: self.seq + 1,
        }
    }
}

/// Fixed-width hex keeps string order equal to numeric order.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}-{:016x}", self.epoch, self.seq)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a channel serial: {0:?}")]
pub struct BadSerial(pub String);

impl FromStr for Position {
    type Err = BadSerial;

    fn from_str(s: &str) -> Result<Self, BadSerial> {
        let bad = || BadSerial(s.to_owned());
        let (epoch, seq) = s.split_once('-').ok_or_else(bad)?;
        if epoch.len() != 12 || seq.len() != 16 {
            return Err(bad());
        }
        Ok(Position {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| bad())?,
            seq: u64::from_str_radix(seq, 16).map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_strings_sort_like_positions() {
        let positions = [
            Position::new(1, 9),
            Position::new(1, 10),
            Position::new(1, 255),
            Position::new(2, 0),
            Position::new(10, 1),
        ];
        let serials: Vec<String> = positions.iter().map(|p| p.to_string()).collect();
        let mut sorted = serials.clone();
        sorted.sort();
        assert_eq!(serials, sorted);

        for p in positions {
            assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        }
        assert!("nope".parse::<Position>().is_err());
        assert!("1-2".parse::<Position>().is_err());
    }
}
