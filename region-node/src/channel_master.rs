//! The ChannelMaster: the one sequencer of a channel.
//!
//! It gives each published message its position (and so its `serial`), drops
//! messages whose id it has already sequenced (answering with the first serial), and
//! keeps the channel's recent history. It is a plain state machine: no sockets, no
//! tasks, no clock. Callers hand in the time and carry the results where they belong.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::HistoryConfig;
use crate::position::Position;
use crate::protocol::{action, Message, ProtocolMessage};

/// One publish as the master receives it. Messages are already validated and
/// normalised; any without an id get `<id_base>:<index>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    pub messages: Vec<Message>,
    /// `connectionId:msgSerial` for a realtime publish, a random base for REST.
    pub id_base: String,
    /// The publishing connection, for realtime publishes (stamped on messages and used
    /// by subscribers to honour `echo=false`).
    pub connection_id: Option<String>,
}

/// What sequencing one publish produced.
#[derive(Debug, Clone, Default)]
pub struct Sequenced {
    /// A serial per published message, in order; a duplicate gets its first serial.
    pub serials: Vec<Option<String>>,
    /// The MESSAGE frame for subscribers, holding only messages not seen before;
    /// `None` when every message was a duplicate.
    pub frame: Option<ProtocolMessage>,
    /// The newly stored messages with their positions, for the master's copies.
    pub entries: Vec<Entry>,
}

/// A sequenced message and its position, as history holds it and copies receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub position: Position,
    pub message: Message,
}

/// Everything a master knows, for a copy or a successor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub last: Position,
    /// The newest position dropped from history by retention.
    pub pruned: Position,
    pub entries: Vec<Entry>,
    /// Remembered message ids: (id, serial it got, when it was sequenced).
    pub seen: Vec<(String, Option<String>, i64)>,
}

/// A history read: bounds in ms (inclusive), a page size, a direction, and a cursor
/// that continues a previous page (exclusive).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub limit: usize,
    pub forwards: bool,
    pub cursor: Option<Position>,
    /// Only messages at or before this position (`untilAttach`).
    pub until: Option<Position>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// Where the next page starts (exclusive), when there is one.
    pub next: Option<Position>,
}

struct Stored {
    position: Position,
    message: Message,
    bytes: usize,
}

pub struct ChannelMaster {
    name: String,
    last: Position,
    history: VecDeque<Stored>,
    history_bytes: usize,
    /// The newest position retention has dropped: history is complete after it.
    pruned: Position,
    seen: HashMap<String, Option<String>>,
    seen_order: VecDeque<(i64, String)>,
    limits: HistoryConfig,
}

impl ChannelMaster {
    /// A master starting a channel under `epoch`, with nothing sequenced yet.
    pub fn new(name: &str, epoch: u64, limits: HistoryConfig) -> Self {
        Self {
            name: name.to_owned(),
            last: Position::new(epoch, 0),
            history: VecDeque::new(),
            history_bytes: 0,
            pruned: Position::default(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            limits,
        }
    }

    /// The position of the latest message (or the epoch's start when there is none).
    pub fn position(&self) -> Position {
        self.last
    }

    pub fn epoch(&self) -> u64 {
        self.last.epoch
    }

    /// A successor's master: the predecessor's history and remembered ids, sequencing on
    /// under a new, higher epoch so every position it gives sorts after the old ones.
    pub fn from_snapshot(
        name: &str,
        epoch: u64,
        snapshot: Snapshot,
        limits: HistoryConfig,
    ) -> Self {
        let mut master = Self::new(name, snapshot.last.epoch, limits);
        master.restore(snapshot);
        master.last = Position::new(epoch.max(master.last.epoch), 0);
        master
    }

    /// Replaces this state with a snapshot (a copy being brought up to date).
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.history.clear();
        self.history_bytes = 0;
        self.seen.clear();
        self.seen_order.clear();
        for (id, serial, at) in snapshot.seen {
            self.remember(id, serial, at);
        }
        for entry in snapshot.entries {
            self.store(entry.position, entry.message);
        }
        self.last = snapshot.last;
        self.pruned = snapshot.pruned;
    }

    /// Appends entries sequenced by the master (a copy keeping up). Entries at or
    /// before the copy's position are already held and skipped.
    pub fn apply(&mut self, entries: Vec<Entry>, now_ms: i64) {
        for entry in entries {
            if entry.position <= self.last {
                continue;
            }
            self.last = entry.position;
            if let Some(id) = entry.message.id.clone() {
                self.remember(id, entry.message.serial.clone(), now_ms);
            }
            self.store(entry.position, entry.message);
        }
        self.expire(now_ms);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            last: self.last,
            pruned: self.pruned,
            entries: self
                .history
                .iter()
                .map(|s| Entry {
                    position: s.position,
                    message: s.message.clone(),
                })
                .collect(),
            seen: self
                .seen_order
                .iter()
                .map(|(at, id)| (id.clone(), self.seen.get(id).cloned().flatten(), *at))
                .collect(),
        }
    }

    /// Entries after `position`, oldest first: what a re-subscribing client missed.
    /// `None` when retention already dropped some of them.
    /// Everything retained, oldest first.
    pub fn retained(&self) -> Vec<Entry> {
        (self.history.iter())
            .map(|s| Entry {
                position: s.position,
                message: s.message.clone(),
            })
            .collect()
    }

    pub fn since(&self, position: Position) -> Option<Vec<Entry>> {
        if self.pruned > position {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|s| s.position > position)
                .map(|s| Entry {
                    position: s.position,
                    message: s.message.clone(),
                })
                .collect(),
        )
    }

    /// Nothing happened within the retention windows: the newest message is older than
    /// the history age and every remembered id has expired. An idle channel with no
    /// attachments is forgotten whole, however many messages `min_messages` kept.
    pub fn is_idle(&self, now_ms: i64) -> bool {
        let max_age = self.limits.max_age_ms as i64;
        let window = self.limits.dedup_window_ms as i64;
        let quiet = self
            .history
            .back()
            .is_none_or(|s| now_ms.saturating_sub(s.message.timestamp.unwrap_or(0)) > max_age);
        let forgotten = self
            .seen_order
            .back()
            .is_none_or(|(at, _)| now_ms.saturating_sub(*at) > window);
        quiet && forgotten
    }

    /// Nothing left to keep: no history and no remembered ids.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty() && self.seen_order.is_empty()
    }

    pub fn sequence(&mut self, publish: Publish, now_ms: i64) -> Sequenced {
        let mut serials = Vec::with_capacity(publish.messages.len());
        let mut fresh = Vec::with_capacity(publish.messages.len());
        let mut entries = Vec::with_capacity(publish.messages.len());

        for (index, mut message) in publish.messages.into_iter().enumerate() {
            let id = message
                .id
                .get_or_insert_with(|| format!("{}:{index}", publish.id_base));
            if let Some(first) = self.seen.get(id.as_str()) {
                serials.push(first.clone());
                continue;
            }

            self.last = self.last.next();
            let serial = self.last.to_string();
            self.remember(id.clone(), Some(serial.clone()), now_ms);
            stamp(
                &mut message,
                &serial,
                publish.connection_id.as_deref(),
                now_ms,
            );
            self.store(self.last, message.clone());
            entries.push(Entry {
                position: self.last,
                message: message.clone(),
            });

            serials.push(Some(serial));
            fresh.push(message);
        }

        self.expire(now_ms);
        let frame = (!fresh.is_empty())
            .then(|| self.frame(fresh, &publish.id_base, publish.connection_id, now_ms));
        Sequenced {
            serials,
            frame,
            entries,
        }
    }

    /// Drops history and remembered ids that fell out of their windows.
    pub fn expire(&mut self, now_ms: i64) {
        let max_age = self.limits.max_age_ms as i64;
        while let Some(oldest) = self.history.front() {
            let len = self.history.len();
            let too_old = now_ms.saturating_sub(oldest.message.timestamp.unwrap_or(now_ms))
                > max_age
                && len > self.limits.min_messages;
            let too_many = len > self.limits.max_messages;
            let too_big = self.history_bytes > self.limits.max_bytes && len > 1;
            if !(too_old || too_many || too_big) {
                break;
            }
            let dropped = self.history.pop_front().expect("front exists");
            self.history_bytes -= dropped.bytes;
            self.pruned = dropped.position;
        }

        let window = self.limits.dedup_window_ms as i64;
        while let Some((at, _)) = self.seen_order.front() {
            if now_ms.saturating_sub(*at) <= window
                && self.seen_order.len() <= self.limits.dedup_max_ids
            {
                break;
            }
            let (_, id) = self.seen_order.pop_front().expect("front exists");
            self.seen.remove(&id);
        }
    }

    pub fn history(&self, query: &HistoryQuery) -> HistoryPage {
        let in_range = |s: &&Stored| {
            let ts = s.message.timestamp.unwrap_or(0);
            query.start.is_none_or(|start| ts >= start)
                && query.end.is_none_or(|end| ts <= end)
                && query.until.is_none_or(|until| s.position <= until)
                && query.cursor.is_none_or(|c| {
                    if query.forwards {
                        s.position > c
                    } else {
                        s.position < c
                    }
                })
        };

        let mut messages = Vec::with_capacity(query.limit.min(self.history.len()));
        let mut last = None;
        let mut more = false;
        let mut take = |s: &Stored| {
            if messages.len() == query.limit {
                more = true;
                return false;
            }
            messages.push(s.message.clone());
            last = Some(s.position);
            true
        };

        if query.forwards {
            for s in self.history.iter().filter(in_range) {
                if !take(s) {
                    break;
                }
            }
        } else {
            for s in self.history.iter().rev().filter(in_range) {
                if !take(s) {
                    break;
                }
            }
        }

        HistoryPage {
            messages,
            next: if more { last } else { None },
        }
    }

    fn remember(&mut self, id: String, serial: Option<String>, now_ms: i64) {
        self.seen_order.push_back((now_ms, id.clone()));
        self.seen.insert(id, serial);
    }

    fn store(&mut self, position: Position, message: Message) {
        let bytes = message.size();
        self.history_bytes += bytes;
        self.history.push_back(Stored {
            position,
            message,
            bytes,
        });
    }

    fn frame(
        &self,
        messages: Vec<Message>,
        id_base: &str,
        connection_id: Option<String>,
        now_ms: i64,
    ) -> ProtocolMessage {
        ProtocolMessage {
            id: connection_id.is_some().then(|| id_base.to_owned()),
            channel_serial: Some(self.last.to_string()),
            connection_id,
            timestamp: Some(now_ms),
            messages: Some(messages),
            ..ProtocolMessage::for_channel(action::MESSAGE, &self.name)
        }
    }
}

fn stamp(message: &mut Message, serial: &str, connection_id: Option<&str>, now_ms: i64) {
    message.serial = Some(serial.to_owned());
    message.action.get_or_insert(0);
    message.timestamp.get_or_insert(now_ms);
    if message.connection_id.is_none() {
        message.connection_id = connection_id.map(str::to_owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Data;

    fn limits() -> HistoryConfig {
        HistoryConfig {
            max_age_ms: 1_000,
            min_messages: 3,
            ..HistoryConfig::default()
        }
    }

    fn named(name: &str) -> Message {
        Message {
            name: Some(name.into()),
            data: Some(Data::Text(name.into())),
            ..Message::default()
        }
    }

    fn publish(names: &[&str], base: &str) -> Publish {
        Publish {
            messages: names.iter().map(|n| named(n)).collect(),
            id_base: base.into(),
            connection_id: Some("conn".into()),
        }
    }

    #[test]
    fn messages_get_increasing_serials_and_ids() {
        let mut master = ChannelMaster::new("c", 1, limits());
        let first = master.sequence(publish(&["a", "b"], "conn:0"), 10);
        let second = master.sequence(publish(&["c"], "conn:1"), 11);

        let serials: Vec<String> = first
            .serials
            .iter()
            .chain(&second.serials)
            .map(|s| s.clone().unwrap())
            .collect();
        assert!(serials.windows(2).all(|w| w[0] < w[1]), "{serials:?}");

        let frame = first.frame.unwrap();
        assert_eq!(frame.id.as_deref(), Some("conn:0"));
        assert_eq!(frame.channel_serial.as_deref(), Some(serials[1].as_str()));
        let ids: Vec<_> = frame
            .messages
            .unwrap()
            .into_iter()
            .map(|m| m.id.unwrap())
            .collect();
        assert_eq!(ids, ["conn:0:0", "conn:0:1"]);
    }

    #[test]
    fn a_republished_id_is_dropped_and_answered_with_the_first_serial() {
        let mut master = ChannelMaster::new("c", 1, limits());
        let first = master.sequence(publish(&["a"], "conn:0"), 10);
        let again = master.sequence(publish(&["a"], "conn:0"), 11);

        assert_eq!(again.serials, first.serials);
        assert!(again.frame.is_none());
        assert_eq!(
            master
                .history(&HistoryQuery {
                    limit: 10,
                    ..Default::default()
                })
                .messages
                .len(),
            1
        );
    }

    #[test]
    fn a_successor_continues_under_a_higher_epoch_with_history_and_ids() {
        let mut old = ChannelMaster::new("c", 1, limits());
        let first = old.sequence(publish(&["a", "b"], "conn:0"), 10);

        let mut copy = ChannelMaster::new("c", 1, limits());
        copy.apply(first.entries.clone(), 10);
        assert_eq!(copy.position(), old.position());

        let mut new = ChannelMaster::from_snapshot("c", 2, copy.snapshot(), limits());
        let resent = new.sequence(publish(&["a", "b"], "conn:0"), 11);
        assert_eq!(
            resent.serials, first.serials,
            "a resend after failover is applied once"
        );
        assert!(resent.frame.is_none());

        let next = new.sequence(publish(&["c"], "conn:1"), 12);
        let serial = next.serials[0].clone().unwrap();
        assert!(serial > first.serials[1].clone().unwrap());
        assert!(serial.starts_with("000000000002-"));

        let missed = new.since(first.entries[0].position).unwrap();
        let names: Vec<_> = missed
            .iter()
            .map(|e| e.message.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn since_reports_when_retention_dropped_what_was_missed() {
        let mut master = ChannelMaster::new("c", 1, limits());
        let first = master.sequence(publish(&["m"], "conn:0"), 0);
        for i in 1..6 {
            master.sequence(publish(&["m"], &format!("conn:{i}")), i);
        }
        master.expire(10_000);
        assert!(master.since(first.entries[0].position).is_none());
        assert_eq!(master.since(master.position()).unwrap().len(), 0);
    }

    #[test]
    fn history_keeps_the_minimum_count_past_the_age_limit() {
        let mut master = ChannelMaster::new("c", 1, limits());
        for i in 0..5 {
            master.sequence(publish(&["m"], &format!("conn:{i}")), i);
        }
        master.expire(10_000);
        let page = master.history(&HistoryQuery {
            limit: 100,
            ..Default::default()
        });
        assert_eq!(page.messages.len(), 3, "min_messages survive the age limit");
    }

    #[test]
    fn history_pages_in_both_directions() {
        let mut master = ChannelMaster::new("c", 1, HistoryConfig::default());
        for i in 0..5 {
            master.sequence(publish(&[&format!("m{i}")], &format!("conn:{i}")), 100 + i);
        }
        let names = |p: &HistoryPage| -> Vec<String> {
            p.messages.iter().map(|m| m.name.clone().unwrap()).collect()
        };

        let back = master.history(&HistoryQuery {
            limit: 2,
            ..Default::default()
        });
        assert_eq!(names(&back), ["m4", "m3"]);
        let back2 = master.history(&HistoryQuery {
            limit: 2,
            cursor: back.next,
            ..Default::default()
        });
        assert_eq!(names(&back2), ["m2", "m1"]);

        let fwd = master.history(&HistoryQuery {
            limit: 10,
            forwards: true,
            start: Some(102),
            ..Default::default()
        });
        assert_eq!(names(&fwd), ["m2", "m3", "m4"]);
        assert!(fwd.next.is_none());

        let until = Some(Position::new(1, 3));
        let fwd = master.history(&HistoryQuery {
            limit: 10,
            forwards: true,
            until,
            ..Default::default()
        });
        assert_eq!(names(&fwd), ["m0", "m1", "m2"]);
        let back = master.history(&HistoryQuery {
            limit: 10,
            until,
            ..Default::default()
        });
        assert_eq!(names(&back), ["m2", "m1", "m0"]);
    }
}
