//! The ChannelMaster: the one sequencer of a channel.
//!
//! It gives each published message its position (and so its `serial`), drops
//! messages whose id it has already sequenced (answering with the first serial), and
//! keeps the channel's recent history. It is a plain state machine: no sockets, no
//! tasks, no clock. Callers hand in the time and carry the results where they belong.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::HistoryConfig;
use crate::error::AblyError;
use crate::position::Position;
use crate::presence::{self, Holder, Member, Members, PresenceEntry, PresenceOp};
use crate::protocol::{action, Message, PresenceMessage, ProtocolMessage};

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
    /// A presence operation instead of messages (`messages` is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceOp>,
}

impl Publish {
    /// A publish of messages.
    pub fn messages(
        messages: Vec<Message>,
        id_base: String,
        connection_id: Option<String>,
    ) -> Self {
        Self {
            messages,
            id_base,
            connection_id,
            presence: None,
        }
    }

    /// A presence operation, which the master answers like a publish.
    pub fn presence(op: PresenceOp, id_base: String, connection_id: Option<String>) -> Self {
        Self {
            messages: Vec::new(),
            id_base,
            connection_id,
            presence: Some(op),
        }
    }
}

/// What sequencing one publish produced.
#[derive(Debug, Clone, Default)]
pub struct Sequenced {
    /// A serial per published message, in order; a duplicate gets its first serial.
    pub serials: Vec<Option<String>>,
    /// The frames for subscribers, in order: one MESSAGE frame holding the messages
    /// not seen before, or one PRESENCE frame per presence event (each names its own
    /// position); empty when nothing new was sequenced.
    pub frames: Vec<(Position, ProtocolMessage)>,
    /// The newly stored messages with their positions, for the master's copies.
    pub entries: Vec<Entry>,
}

/// A sequenced message or presence event and its position, as history holds it and
/// copies receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub position: Position,
    pub body: Body,
}

/// What a channel position holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Message(Message),
    Presence(PresenceEntry),
}

impl Body {
    pub fn timestamp(&self) -> Option<i64> {
        match self {
            Body::Message(m) => m.timestamp,
            Body::Presence(p) => p.message.timestamp,
        }
    }

    pub fn connection_id(&self) -> Option<&str> {
        match self {
            Body::Message(m) => m.connection_id.as_deref(),
            Body::Presence(p) => p.message.connection_id.as_deref(),
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Body::Message(m) => m.id.as_deref(),
            Body::Presence(p) => p.message.id.as_deref(),
        }
    }

    fn size(&self) -> usize {
        match self {
            Body::Message(m) => m.size(),
            Body::Presence(p) => presence::size(&p.message),
        }
    }

    pub fn as_message(&self) -> Option<&Message> {
        match self {
            Body::Message(m) => Some(m),
            Body::Presence(_) => None,
        }
    }
}

impl Entry {
    /// The entry as the frame a subscriber gets for it on its own: MESSAGE or PRESENCE.
    pub fn frame(self, channel: &str) -> ProtocolMessage {
        let serial = Some(self.position.to_string());
        match self.body {
            Body::Message(message) => ProtocolMessage {
                channel_serial: serial,
                connection_id: message.connection_id.clone(),
                timestamp: message.timestamp,
                messages: Some(vec![message]),
                ..ProtocolMessage::for_channel(action::MESSAGE, channel)
            },
            Body::Presence(entry) => presence_frame(channel, serial, entry.message),
        }
    }
}

/// The frames local connections get for entries sequenced together: consecutive
/// messages share one MESSAGE frame, each presence event has its own PRESENCE frame.
pub fn frames_of(channel: &str, entries: &[Entry]) -> Vec<(Position, ProtocolMessage)> {
    let mut frames: Vec<(Position, ProtocolMessage)> = Vec::new();
    for entry in entries {
        let serial = Some(entry.position.to_string());
        match &entry.body {
            Body::Message(message) => {
                if let Some((last, frame)) = frames.last_mut() {
                    if let Some(messages) = frame.messages.as_mut() {
                        messages.push(message.clone());
                        frame.channel_serial = serial;
                        *last = entry.position;
                        continue;
                    }
                }
                frames.push((entry.position, entry.clone().frame(channel)));
            }
            Body::Presence(event) => {
                let frame = presence_frame(channel, serial, event.message.clone());
                frames.push((entry.position, frame));
            }
        }
    }
    frames
}

/// A PRESENCE frame holding one event.
pub fn presence_frame(
    channel: &str,
    serial: Option<String>,
    message: PresenceMessage,
) -> ProtocolMessage {
    ProtocolMessage {
        channel_serial: serial,
        connection_id: message.connection_id.clone(),
        timestamp: message.timestamp,
        presence: Some(vec![message]),
        ..ProtocolMessage::for_channel(action::PRESENCE, channel)
    }
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
    /// The members, with who holds them.
    #[serde(default)]
    pub members: Vec<Member>,
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
    /// What is read: messages (the default), presence events, or the members.
    #[serde(default)]
    pub kind: ReadKind,
}

/// What a history read reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum ReadKind {
    #[default]
    Messages,
    PresenceHistory,
    /// The current members, optionally of one clientId or connectionId, after the
    /// member key `(connectionId, clientId)` a previous page ended with (`cursor` is
    /// unused).
    Members {
        client_id: Option<String>,
        connection_id: Option<String>,
        after: Option<(String, String)>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// For presence reads: the events or members.
    #[serde(default)]
    pub presence: Vec<PresenceMessage>,
    /// For a members read with more to come: the key of the page's last member.
    #[serde(default)]
    pub next_member: Option<(String, String)>,
    /// Where the next page starts (exclusive), when there is one.
    pub next: Option<Position>,
}

struct Stored {
    position: Position,
    body: Body,
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
    /// The members after every entry held (committed or not).
    members: Members,
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
            members: Members::default(),
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
            self.store(entry.position, entry.body);
        }
        self.members.restore(snapshot.members);
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
            match &entry.body {
                Body::Message(message) => {
                    if let Some(id) = message.id.clone() {
                        self.remember(id, message.serial.clone(), now_ms);
                    }
                }
                Body::Presence(event) => {
                    if let Some(id) = event.message.id.clone() {
                        self.remember(id, Some(entry.position.to_string()), now_ms);
                    }
                    self.members.apply(event, now_ms);
                }
            }
            self.store(entry.position, entry.body);
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
                    body: s.body.clone(),
                })
                .collect(),
            members: self.members.snapshot(),
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
                body: s.body.clone(),
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
                    body: s.body.clone(),
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
            .is_none_or(|s| now_ms.saturating_sub(s.body.timestamp().unwrap_or(0)) > max_age);
        let forgotten = self
            .seen_order
            .back()
            .is_none_or(|(at, _)| now_ms.saturating_sub(*at) > window);
        // Members are kept until they leave, which is an entry of its own.
        quiet && forgotten && self.members.is_empty()
    }

    /// When this state next changes by time alone: the earliest time (ms) at which
    /// [`expire`](Self::expire) would drop something or, with `idle`,
    /// [`is_idle`](Self::is_idle) would hold. `None` when only a new entry or a
    /// member leaving could change either. What the region's sweep waits for.
    pub fn next_due(&self, idle: bool) -> Option<i64> {
        let idle_at = idle.then(|| self.idle_at()).flatten();
        [self.next_expiry(), idle_at].into_iter().flatten().min()
    }

    /// When `expire` next drops something. Only the oldest entry and the oldest id are
    /// ever looked at, so only their times matter. Bounds by count or size are kept
    /// by every call that adds; one exceeded (a restored snapshot) is due at once.
    fn next_expiry(&self) -> Option<i64> {
        let len = self.history.len();
        let over = len > self.limits.max_messages
            || (self.history_bytes > self.limits.max_bytes && len > 1)
            || self.seen_order.len() > self.limits.dedup_max_ids;
        if over {
            return Some(i64::MIN);
        }
        let aged = (self.history.front())
            .filter(|_| len > self.limits.min_messages)
            .and_then(|oldest| oldest.body.timestamp())
            .map(|at| ran_out(at, self.limits.max_age_ms));
        let forgotten =
            (self.seen_order.front()).map(|(at, _)| ran_out(*at, self.limits.dedup_window_ms));
        aged.into_iter().chain(forgotten).min()
    }

    /// When `is_idle` holds, counted from the newest entry and id; `None` while there
    /// are members (they leave only by an entry of their own).
    fn idle_at(&self) -> Option<i64> {
        if !self.members.is_empty() {
            return None;
        }
        let quiet = (self.history.back()).map_or(i64::MIN, |newest| {
            ran_out(newest.body.timestamp().unwrap_or(0), self.limits.max_age_ms)
        });
        let forgotten = (self.seen_order.back()).map_or(i64::MIN, |(at, _)| {
            ran_out(*at, self.limits.dedup_window_ms)
        });
        Some(quiet.max(forgotten))
    }

    /// Nothing left to keep: no history, no remembered ids and no members.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty() && self.seen_order.is_empty() && self.members.is_empty()
    }

    /// The members after every entry held, committed or not.
    pub fn members(&self) -> &Members {
        &self.members
    }

    pub fn members_mut(&mut self) -> &mut Members {
        &mut self.members
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
            self.store(self.last, Body::Message(message.clone()));
            entries.push(Entry {
                position: self.last,
                body: Body::Message(message.clone()),
            });

            serials.push(Some(serial));
            fresh.push(message);
        }

        self.expire(now_ms);
        let frames = if fresh.is_empty() {
            Vec::new()
        } else {
            let frame = self.frame(fresh, &publish.id_base, publish.connection_id, now_ms);
            vec![(self.last, frame)]
        };
        Sequenced {
            serials,
            frames,
            entries,
        }
    }

    /// Sequences a connection's presence events: each gets the next position and an id
    /// `connectionId:msgSerial:index`, ENTER for a member already present becomes
    /// UPDATE, and a LEAVE of no member changes nothing and is not broadcast.
    pub fn sequence_presence(
        &mut self,
        publish: &Publish,
        holder: &Holder,
        grace_ms: u64,
        events: Vec<PresenceMessage>,
        max_members: usize,
        now_ms: i64,
    ) -> Result<Sequenced, AblyError> {
        let entering = (events.iter())
            .filter(|m| m.action != presence::action::LEAVE)
            .filter(|m| {
                let (conn, client) = presence::member_key(m);
                !self.members.contains(&conn, &client)
            })
            .count();
        if entering > 0 && self.members.len() + entering > max_members {
            return Err(AblyError::TooManyMembers { limit: max_members });
        }

        let mut sequenced = Sequenced::default();
        for (index, mut message) in events.into_iter().enumerate() {
            let id = message
                .id
                .get_or_insert_with(|| format!("{}:{index}", publish.id_base))
                .clone();
            // Not deduplicated by id like messages: a client re-enters with the id its
            // member was given (after a re-attach, or after its member left, which
            // must enter it again). The member's state makes repeats harmless: a
            // member present with the same id is left as it is.
            let (conn, client) = presence::member_key(&message);
            let present = self.members.get(&conn, &client);
            if present.is_some_and(|m| m.message.id.as_deref() == Some(id.as_str())) {
                sequenced.serials.push(None);
                continue;
            }
            message.action = match (message.action, present) {
                (presence::action::LEAVE, None) => {
                    sequenced.serials.push(None);
                    continue;
                }
                (presence::action::LEAVE, Some(member)) => {
                    if message.data.is_none() {
                        message.data = member.message.data.clone();
                        message.encoding = member.message.encoding.clone();
                    }
                    presence::action::LEAVE
                }
                (_, Some(_)) => presence::action::UPDATE,
                (_, None) => presence::action::ENTER,
            };
            message.timestamp = Some(now_ms);
            let entry = PresenceEntry {
                message,
                holder: Some(holder.clone()),
                grace_ms,
            };
            let position = self.append_presence(entry, Some(id), now_ms, &mut sequenced);
            sequenced.serials.push(Some(position.to_string()));
        }
        self.expire(now_ms);
        Ok(sequenced)
    }

    /// Sequences the LEAVE events of members whose connections are gone.
    pub fn sequence_leaves(&mut self, leaves: Vec<PresenceMessage>, now_ms: i64) -> Sequenced {
        let mut sequenced = Sequenced::default();
        for message in leaves {
            let entry = PresenceEntry {
                message,
                holder: None,
                grace_ms: 0,
            };
            self.append_presence(entry, None, now_ms, &mut sequenced);
        }
        self.expire(now_ms);
        sequenced
    }

    fn append_presence(
        &mut self,
        entry: PresenceEntry,
        id: Option<String>,
        now_ms: i64,
        sequenced: &mut Sequenced,
    ) -> Position {
        self.last = self.last.next();
        let serial = self.last.to_string();
        if let Some(id) = id {
            self.remember(id, Some(serial.clone()), now_ms);
        }
        self.members.apply(&entry, now_ms);
        let frame = presence_frame(&self.name, Some(serial), entry.message.clone());
        sequenced.frames.push((self.last, frame));
        let body = Body::Presence(entry);
        self.store(self.last, body.clone());
        sequenced.entries.push(Entry {
            position: self.last,
            body,
        });
        self.last
    }

    /// Drops history and remembered ids that fell out of their windows.
    pub fn expire(&mut self, now_ms: i64) {
        let max_age = self.limits.max_age_ms as i64;
        while let Some(oldest) = self.history.front() {
            let len = self.history.len();
            let too_old = now_ms.saturating_sub(oldest.body.timestamp().unwrap_or(now_ms))
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
        if let ReadKind::Members { .. } = query.kind {
            return member_page(&self.members, query);
        }
        let presence = query.kind == ReadKind::PresenceHistory;
        let in_range = |s: &&Stored| {
            let ts = s.body.timestamp().unwrap_or(0);
            matches!(s.body, Body::Presence(_)) == presence
                && query.start.is_none_or(|start| ts >= start)
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

        let mut messages = Vec::new();
        let mut events = Vec::new();
        let mut last = None;
        let mut more = false;
        let mut take = |s: &Stored| {
            if messages.len() + events.len() == query.limit {
                more = true;
                return false;
            }
            match &s.body {
                Body::Message(m) => messages.push(m.clone()),
                Body::Presence(p) => events.push(p.message.clone()),
            }
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
            presence: events,
            next: if more { last } else { None },
            next_member: None,
        }
    }

    fn remember(&mut self, id: String, serial: Option<String>, now_ms: i64) {
        self.seen_order.push_back((now_ms, id.clone()));
        self.seen.insert(id, serial);
    }

    fn store(&mut self, position: Position, body: Body) {
        let bytes = body.size();
        self.history_bytes += bytes;
        self.history.push_back(Stored {
            position,
            body,
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

/// A page of `members` for a members read, continuing after the key the last page
/// ended with, so members who leave or enter between pages shift nothing.
pub fn member_page(members: &Members, query: &HistoryQuery) -> HistoryPage {
    let ReadKind::Members {
        client_id,
        connection_id,
        after,
    } = &query.kind
    else {
        return HistoryPage::default();
    };
    let mut matching = (members.present_after(after.as_ref()))
        .filter(|m| client_id.is_none() || m.client_id == *client_id)
        .filter(|m| connection_id.is_none() || m.connection_id == *connection_id);
    let page: Vec<PresenceMessage> = matching.by_ref().take(query.limit).collect();
    let more = matching.next().is_some();
    let next_member = (more)
        .then(|| page.last().map(presence::member_key))
        .flatten();
    HistoryPage {
        presence: page,
        next_member,
        ..HistoryPage::default()
    }
}

/// The first time `now` for which `now - since > window_ms`, the test `expire` and
/// `is_idle` apply (saturating like them, so far-off client timestamps stay far off).
fn ran_out(since: i64, window_ms: u64) -> i64 {
    let window = window_ms as i64;
    since.saturating_add(window).saturating_add(1)
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
        Publish::messages(
            names.iter().map(|n| named(n)).collect(),
            base.into(),
            Some("conn".into()),
        )
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

        let frame = first.frames[0].1.clone();
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
        assert!(again.frames.is_empty());
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
        assert!(resent.frames.is_empty());

        let next = new.sequence(publish(&["c"], "conn:1"), 12);
        let serial = next.serials[0].clone().unwrap();
        assert!(serial > first.serials[1].clone().unwrap());
        assert!(serial.starts_with("000000000002-"));

        let missed = new.since(first.entries[0].position).unwrap();
        let names: Vec<_> = missed
            .iter()
            .map(|e| e.body.as_message().unwrap().name.clone().unwrap())
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

    /// The same state, to try a time on without changing the original.
    fn copy_of(master: &ChannelMaster) -> ChannelMaster {
        let mut copy = ChannelMaster::new("c", 0, master.limits.clone());
        copy.restore(master.snapshot());
        copy
    }

    /// `expire` at `due - 1` changes nothing and at `due` drops something.
    fn assert_expires_at(master: &ChannelMaster, due: i64) {
        let mut before = copy_of(master);
        before.expire(due - 1);
        assert_eq!(
            before.snapshot(),
            master.snapshot(),
            "nothing expires before {due}"
        );
        let mut at = copy_of(master);
        at.expire(due);
        assert_ne!(
            at.snapshot(),
            master.snapshot(),
            "something expires at {due}"
        );
    }

    #[test]
    fn next_due_is_when_expiry_or_idleness_first_changes() {
        let limits = HistoryConfig {
            max_age_ms: 1_000,
            min_messages: 1,
            dedup_window_ms: 1_500,
            ..HistoryConfig::default()
        };
        let mut master = ChannelMaster::new("c", 1, limits);
        assert_eq!(master.next_due(false), None);
        assert_eq!(
            master.next_due(true),
            Some(i64::MIN),
            "nothing held: idle at once"
        );

        master.sequence(publish(&["a"], "conn:0"), 100);
        master.sequence(publish(&["b"], "conn:1"), 300);
        // "a" ages out (two messages, one kept); then each id; idle once "b" and its
        // id are both past their windows.
        assert_eq!(master.next_due(false), Some(1_101));
        assert_expires_at(&master, 1_101);
        master.expire(1_101);
        assert_eq!(
            master.next_due(false),
            Some(1_601),
            "one message is the minimum"
        );
        assert_expires_at(&master, 1_601);
        master.expire(1_601);
        assert_eq!(master.next_due(false), Some(1_801));
        assert_eq!(master.next_due(true), Some(1_801));
        assert!(!master.is_idle(1_800));
        assert!(master.is_idle(1_801));
    }

    #[test]
    fn a_state_over_its_bounds_is_due_at_once() {
        let limits = HistoryConfig {
            max_messages: 2,
            ..HistoryConfig::default()
        };
        let mut big = ChannelMaster::new("c", 1, HistoryConfig::default());
        for i in 0..3 {
            big.sequence(publish(&["m"], &format!("conn:{i}")), 100 + i);
        }
        let mut restored = ChannelMaster::new("c", 1, limits);
        restored.restore(big.snapshot());
        assert_eq!(restored.next_due(false), Some(i64::MIN));
        restored.expire(200);
        assert_ne!(restored.next_due(false), Some(i64::MIN));
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
