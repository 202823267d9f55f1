//! The benchmark payload: fixed-size bytes that carry their own send time.
//!
//! Every message holds a marker, the step it belongs to, its monotonic send time and a
//! sequence number, all as hex so they pass through JSON strings, MessagePack strings and
//! NATS bodies unchanged. Receivers never decode a protocol frame: they scan it for
//! markers, so one frame carrying several messages (an Ably `messages` array, several
//! NATS `MSG`s, a batched bare frame) counts every message in it.

use std::sync::OnceLock;
use std::time::Instant;

use memchr::memmem;

/// Bytes of every payload, as in benchmarks.md.
pub const SIZE: usize = 100;

const MARKER: &[u8] = b"~Bk";
/// Marker, step (2 hex), send time (16 hex), sequence (10 hex).
const HEADER: usize = MARKER.len() + 2 + 16 + 10;

/// Nanoseconds on the process's monotonic clock, shared by senders and receivers.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One message's identity as a receiver reads it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub step: u8,
    pub sent_ns: u64,
    pub seq: u64,
}

/// Writes a payload for `stamp` into `out` (exactly [`SIZE`] bytes).
pub fn write(out: &mut Vec<u8>, stamp: Stamp) {
    let start = out.len();
    out.extend_from_slice(MARKER);
    push_hex(out, u64::from(stamp.step), 2);
    push_hex(out, stamp.sent_ns, 16);
    push_hex(out, stamp.seq, 10);
    out.resize(start + SIZE, b'.');
}

pub fn make(stamp: Stamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE);
    write(&mut out, stamp);
    out
}

fn push_hex(out: &mut Vec<u8>, value: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 0xf) as usize]);
    }
}

fn parse_hex(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for &b in bytes {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

/// Calls `found` for every payload in `frame`, in order.
pub fn scan(frame: &[u8], mut found: impl FnMut(Stamp)) {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let finder = FINDER.get_or_init(|| memmem::Finder::new(MARKER));
    for at in finder.find_iter(frame) {
        let Some(header) = frame.get(at..at + HEADER) else {
            continue;
        };
        let fields = &header[MARKER.len()..];
        let stamp = (|| {
            Some(Stamp {
                step: parse_hex(&fields[..2])? as u8,
                sent_ns: parse_hex(&fields[2..18])?,
                seq: parse_hex(&fields[18..28])?,
            })
        })();
        if let Some(stamp) = stamp {
            found(stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_through_a_frame_holding_several() {
        let a = Stamp {
            step: 3,
            sent_ns: 123_456_789,
            seq: 42,
        };
        let b = Stamp {
            step: 255,
            sent_ns: u64::MAX,
            seq: 0xff_ffff_ffff,
        };
        let mut frame = b"MSG s 1 100\r\n".to_vec();
        write(&mut frame, a);
        frame.extend_from_slice(b"\r\n{\"data\":\"");
        write(&mut frame, b);
        assert_eq!(make(a).len(), SIZE);

        let mut seen = Vec::new();
        scan(&frame, |s| seen.push(s));
        assert_eq!(seen, vec![a, b]);
    }

    #[test]
    fn truncated_or_garbled_markers_are_skipped() {
        let mut seen = 0;
        scan(b"~Bk12zz", |_| seen += 1);
        scan(b"~Bk0000000000000000000000000g..", |_| seen += 1);
        assert_eq!(seen, 0);
    }
}
