//! The client side of the region state machine: one ChannelClient per channel with
//! local attachments or publishes in flight. It subscribes to the channel's master,
//! fans committed frames out to local connections in order and exactly once, and
//! carries local publishes to the master, resending them when the master changes or an
//! answer is overdue (mesh links can drop messages when they are replaced).

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::oneshot;
use tracing::debug;

use super::msg::ChannelMsg;
use super::presence::{send_sync, GoneConn, Leave};
use super::{NodeId, RegionState};
use crate::channel_client::{ChannelClient, Subscriber};
use crate::channel_master::{Body, Entry, Publish};
use crate::channels::public_name;
use crate::error::AblyError;
use crate::position::Position;
use crate::presence::{Members, PresenceOp};
use crate::protocol::{action, codec, flags, ErrorInfo, PresenceMessage, ProtocolMessage};
use crate::rewind::Rewind;

pub type PublishReply = oneshot::Sender<Result<Vec<Option<String>>, ErrorInfo>>;

/// How long a local publish may wait for its master before it is refused.
const PUBLISH_TIMEOUT_MS: i64 = 15_000;

/// How long a request to a master may go unanswered before it is sent again. Masters
/// treat repeats as harmless: subscriptions are sets, publishes are deduplicated.
pub(super) const RESEND_MS: i64 = 1_000;

#[derive(Default)]
pub(super) struct ClientSlot {
    pub local: ChannelClient,
    /// The master this client follows, as the ring named it; `None` after the master
    /// said it is not (or no longer) master, until the next routing step.
    pub master: Option<NodeId>,
    /// Whether the master confirmed the subscription.
    pub subscribed: bool,
    /// Whether a subscription is wanted (local attachments exist).
    pub wants_frames: bool,
    /// When the last Subscribe went out, to send it again if it was lost.
    pub subscribe_sent_ms: Option<i64>,
    /// The last position delivered to local connections.
    pub last: Option<Position>,
    /// Attachments waiting for the subscription.
    pub waiting: Vec<Waiting>,
    /// Publishes not yet answered, by request id (so in the order they were made).
    pub inflight: BTreeMap<u64, Inflight>,
    /// The channel's members as of `last`, for SYNC.
    pub members: Members,
    /// Local connections that sent presence events here (their members may not have
    /// come back sequenced yet).
    pub presence_conns: BTreeSet<String>,
    /// Local connections with members that are gone, told again to every new master.
    pub gone: Vec<GoneConn>,
}

/// An attachment waiting for the subscription, with its ATTACHED frame and where it
/// starts.
pub(super) struct Waiting {
    pub subscriber: Subscriber,
    pub attached: ProtocolMessage,
    pub start: Start,
}

/// Where a new attachment starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With live traffic.
    Live,
    /// Right after this channel serial: a resume (or recover).
    After(Position),
    /// With the channel's last messages, by count or age (a first attach's `rewind`).
    Rewind(Rewind),
}

/// A subscription from this position asks for everything the master retains. Real
/// positions never have epoch 0 (epochs are at least the clock in ms).
pub(super) const FROM_RETAINED: Position = Position::new(0, 0);

pub(super) struct Inflight {
    pub publish: Publish,
    pub reply: PublishReply,
    pub since_ms: i64,
    /// When it was last sent to a master; `None` when it must be (re)sent.
    pub sent_ms: Option<i64>,
}

impl RegionState {
    /// A local connection attaches. Its ATTACHED frame goes out through its own queue
    /// once the subscription stands, so it always precedes the channel's messages. An
    /// attachment that resumes `from` a channel serial gets ATTACHED with RESUMED and
    /// then exactly what it missed; unless it is where this node already is, that
    /// takes a fresh subscription from the earliest position asked for.
    pub fn attach(
        &mut self,
        channel: &str,
        subscriber: Subscriber,
        attached: ProtocolMessage,
        start: Start,
    ) {
        let slot = self.client_slot(channel);
        slot.wants_frames = true;
        // A connection attaching again replaces its earlier attachment: it must not
        // get a replay and the live frames besides, or two ATTACHED.
        let id = subscriber.outbox.connection_id.clone();
        slot.waiting
            .retain(|w| w.subscriber.outbox.connection_id != id);
        if start != Start::Live {
            slot.local.detach(&id);
        }
        if slot.subscribed {
            let position = slot.last.unwrap_or_default();
            let resume = match start {
                Start::Live => Some(Resume::No),
                Start::After(from) if from == position => Some(Resume::Kept),
                Start::After(_) | Start::Rewind(_) => None,
            };
            if let Some(resume) = resume {
                admit(slot, subscriber, attached, position, resume);
                return self.presence_admitted(channel, &id);
            }
            slot.subscribed = false;
            slot.subscribe_sent_ms = None;
        }
        slot.waiting.push(Waiting {
            subscriber,
            attached,
            start,
        });
        self.follow(channel);
    }

    pub fn detach(&mut self, channel: &str, connection_id: &str, leave: Leave) {
        self.presence_detached(channel, connection_id, leave);
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        slot.local.detach(connection_id);
        slot.waiting
            .retain(|w| &*w.subscriber.outbox.connection_id != connection_id);
        self.drop_client_if_idle(channel);
    }

    pub fn publish(&mut self, channel: &str, publish: Publish, reply: PublishReply) {
        // Without a majority no master can be trusted; the client should go elsewhere.
        if !self.has_quorum() {
            let _ = reply.send(Err(AblyError::NoQuorum.to_info()));
            return;
        }
        let req = self.next_req();
        let since_ms = self.now_ms;
        let events_of = match &publish.presence {
            Some(PresenceOp::Events { .. }) => publish.connection_id.clone(),
            _ => None,
        };
        let inflight = Inflight {
            publish,
            reply,
            since_ms,
            sent_ms: None,
        };
        let slot = self.client_slot(channel);
        if let Some(connection_id) = events_of {
            slot.presence_conns.insert(connection_id);
        }
        slot.inflight.insert(req, inflight);
        self.inflight_channels.insert(req, channel.to_owned());
        (self.schedule.publishes).schedule(publish_deadline(since_ms), req);
        self.follow(channel);
    }

    /// The one routing step of a ChannelClient (see `route`); a client left waiting
    /// for something is visited again on the next tick.
    fn follow(&mut self, channel: &str) {
        self.route(channel);
        self.mark_if_unsettled(channel);
    }

    /// Follows the master the ring names, (re)subscribes when needed, and sends every
    /// publish not yet sent to it, or sent too long ago.
    fn route(&mut self, channel: &str) {
        let owner = self.ring.owner(channel).map(str::to_owned);
        let now = self.now_ms;
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        if slot.master != owner {
            slot.master = owner;
            slot.subscribed = false;
            slot.subscribe_sent_ms = None;
            slot.inflight.values_mut().for_each(|i| i.sent_ms = None);
            if slot.master.is_some() {
                self.reassert_presence(channel);
            }
        }
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        let Some(master) = slot.master.clone() else {
            return;
        };

        let overdue = |sent: Option<i64>| sent.is_none_or(|t| now - t >= RESEND_MS);
        let mut sends = Vec::new();
        if slot.wants_frames && !slot.subscribed && overdue(slot.subscribe_sent_ms) {
            slot.subscribe_sent_ms = Some(now);
            sends.push(ChannelMsg::Subscribe {
                channel: channel.to_owned(),
                from: slot.subscribe_from(),
            });
        }
        for (req, inflight) in slot.inflight.iter_mut().filter(|(_, i)| overdue(i.sent_ms)) {
            inflight.sent_ms = Some(now);
            let publish = inflight.publish.clone();
            sends.push(ChannelMsg::Publish {
                channel: channel.to_owned(),
                req: *req,
                publish,
            });
        }
        for msg in sends {
            self.send(master.clone(), msg);
        }
    }

    pub(super) fn on_subscribed(
        &mut self,
        from: NodeId,
        channel: &str,
        position: Position,
        missed: Vec<Entry>,
        lost: bool,
        members: Vec<PresenceMessage>,
    ) {
        let now = self.now_ms;
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        if slot.master.as_deref() != Some(from.as_str()) {
            return;
        }
        if lost {
            debug!(
                channel.name = channel,
                "history no longer covers what this node missed"
            );
        }
        let error = lost.then(|| AblyError::ContinuityLost.to_info());
        let name = public_name(channel);

        // Resuming and rewinding attachments get what they asked for first, on their
        // own, so nothing reaches them twice; then the node's other attachments catch up.
        let waiting = std::mem::take(&mut slot.waiting);
        let mut admitted = Vec::new();
        for waiting in waiting {
            let resume = match (waiting.start, &error) {
                (Start::Live, _) => Resume::No,
                (Start::After(_), Some(error)) => Resume::Lost(error.clone()),
                (Start::After(from), None) => {
                    let after: Vec<Entry> = (missed.iter())
                        .filter(|e| e.position > from)
                        .cloned()
                        .collect();
                    let listed = waiting
                        .subscriber
                        .sync_always
                        .then_some((position, &members));
                    replay(&waiting, name, &after, from, flags::RESUMED, listed);
                    Resume::Replayed
                }
                (Start::Rewind(rewind), _) => {
                    // A rewind replays messages; the members come as a SYNC.
                    let messages: Vec<Entry> = (missed.iter())
                        .filter(|e| matches!(e.body, Body::Message(_)))
                        .cloned()
                        .collect();
                    let chosen = rewind.select(&messages);
                    // The serial before the first one replayed, so a client that drops
                    // during the replay resumes where it really is.
                    let before = messages.len() - chosen.len();
                    let from = before
                        .checked_sub(1)
                        .map_or(FROM_RETAINED, |i| messages[i].position);
                    let backlog = if chosen.is_empty() {
                        0
                    } else {
                        flags::HAS_BACKLOG
                    };
                    let listed = Some((position, &members));
                    replay(&waiting, name, chosen, from, backlog, listed);
                    Resume::Replayed
                }
            };
            admitted.push((waiting, resume));
        }
        for entry in missed {
            deliver_entry(slot, name, entry, now);
        }
        // The set as of `position`; the entries delivered just now are already in it.
        slot.members.replace(members);
        if let Some(error) = &error {
            tell_of_gap(slot, name, position, error);
        }
        if slot.last.is_none_or(|last| last < position) {
            slot.last = Some(position);
        }
        slot.subscribed = true;
        slot.subscribe_sent_ms = None;

        let position = slot.last.unwrap_or_default();
        let mut ids = Vec::with_capacity(admitted.len());
        for (waiting, resume) in admitted {
            ids.push(waiting.subscriber.outbox.connection_id.to_string());
            admit(slot, waiting.subscriber, waiting.attached, position, resume);
        }
        for id in ids {
            self.presence_admitted(channel, &id);
        }
    }

    /// A committed frame from the master. `after` is the position of the frame the
    /// master committed before it: when it is not the last one delivered here, a frame
    /// was lost on the way, and the client subscribes again from what it has.
    pub(super) fn on_sequenced(
        &mut self,
        from: NodeId,
        channel: &str,
        after: Position,
        position: Position,
        frame: ProtocolMessage,
    ) {
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        if slot.master.as_deref() != Some(from.as_str()) || !slot.subscribed {
            return;
        }
        if slot.last.is_some_and(|last| position <= last) {
            return;
        }
        if slot.last != Some(after) {
            debug!(
                channel.name = channel,
                "gap in committed frames; subscribing again"
            );
            slot.subscribed = false;
            slot.subscribe_sent_ms = None;
            self.follow(channel);
            return;
        }
        slot.last = Some(position);
        let now = self.now_ms;
        slot.apply_presence(&frame, now);
        slot.local.deliver(&frame);
    }

    pub(super) fn on_published(
        &mut self,
        req: u64,
        result: Result<Vec<Option<String>>, ErrorInfo>,
    ) {
        let Some(channel) = self.inflight_channels.remove(&req) else {
            return;
        };
        let found = self.clients.get_mut(&channel);
        let Some(inflight) = found.and_then(|slot| slot.inflight.remove(&req)) else {
            return;
        };
        if result.is_err() && is_presence_report(&inflight.publish) {
            // Nothing else would repeat a report of who holds members: it stays in
            // flight (under its first deadline) and goes again after the usual resend
            // delay, until it expires.
            let now = self.now_ms;
            if let Some(slot) = self.clients.get_mut(&channel) {
                let inflight = Inflight {
                    sent_ms: Some(now),
                    ..inflight
                };
                slot.inflight.insert(req, inflight);
                self.inflight_channels.insert(req, channel.clone());
                self.schedule.unsettled.mark(&channel);
            }
            return;
        }
        (self.schedule.publishes).cancel(publish_deadline(inflight.since_ms), req);
        let _ = inflight.reply.send(result);
        self.drop_client_if_idle(&channel);
    }

    /// The node asked is not master (any more, or not yet): forget it; the next
    /// routing step asks whoever the ring names then, possibly the same node again.
    pub(super) fn on_not_master(&mut self, from: NodeId, channel: &str) {
        if let Some(slot) = self.clients.get_mut(channel) {
            if slot.master.as_deref() == Some(from.as_str()) {
                slot.master = None;
                slot.subscribed = false;
                self.schedule.unsettled.mark(channel);
            }
        }
    }

    /// The master says the channel is homed in another region: nothing local can be
    /// served. Publishes are refused and attachments end with a channel ERROR, all
    /// with a retriable error, so clients try again (the home may move here).
    // Only a node without bridges (`[bridge] listen` unset) says so: with bridges the
    // master's node relays the channel from its home instead.
    pub(super) fn on_homed_elsewhere(&mut self, from: NodeId, channel: &str, region: &str) {
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        if slot.master.as_deref() != Some(from.as_str()) {
            return;
        }
        let error = AblyError::HomedElsewhere {
            channel: public_name(channel).to_owned(),
            region: region.to_owned(),
        }
        .to_info();

        for (req, inflight) in std::mem::take(&mut slot.inflight) {
            self.inflight_channels.remove(&req);
            let _ = inflight.reply.send(Err(error.clone()));
        }
        let failed = ProtocolMessage {
            error: Some(error),
            ..ProtocolMessage::for_channel(action::ERROR, public_name(channel))
        };
        for waiting in std::mem::take(&mut slot.waiting) {
            let outbox = &waiting.subscriber.outbox;
            outbox.send_frame(codec::encode(&failed, outbox.format));
        }
        slot.local.fail_all(&failed);
        slot.master = None;
        slot.subscribed = false;
        slot.wants_frames = false;
        self.forget_client(channel);
    }

    /// After a view or lease change: every ChannelClient takes its routing step (the
    /// ring may name another master for any of them).
    pub(super) fn reroute_clients(&mut self) {
        let channels: Vec<String> = self.clients.keys().cloned().collect();
        for channel in channels {
            self.follow(&channel);
        }
    }

    /// On a tick: the routing step of every ChannelClient that still waits for
    /// something (a subscription, an answer, a master). The others follow the ring,
    /// which only changes with the view, when `reroute_clients` visits them all.
    /// The waiting ones are those marked since the last tick (see `follow`), not found
    /// by looking at every client.
    pub(super) fn follow_unsettled(&mut self) {
        for channel in self.schedule.unsettled.take() {
            self.schedule.visits += 1;
            if self.is_unsettled(&channel) {
                self.follow(&channel);
            }
        }
    }

    /// Marks a client that waits for something, so the next tick takes its routing
    /// step again.
    fn mark_if_unsettled(&mut self, channel: &str) {
        if self.is_unsettled(channel) {
            self.schedule.unsettled.mark(channel);
        }
    }

    fn is_unsettled(&self, channel: &str) -> bool {
        self.clients.get(channel).is_some_and(ClientSlot::unsettled)
    }

    /// Refuses local publishes that waited too long for any master, taking only the
    /// deadlines that came due (those answered in time were cancelled).
    pub(super) fn expire_publishes(&mut self) {
        let error = AblyError::Timeout("no channel master acknowledged in time".into()).to_info();
        for (_, req) in self.schedule.publishes.take_due(self.now_ms) {
            self.schedule.visits += 1;
            let Some(channel) = self.inflight_channels.remove(&req) else {
                continue;
            };
            let found = self.clients.get_mut(&channel);
            let Some(inflight) = found.and_then(|slot| slot.inflight.remove(&req)) else {
                continue;
            };
            let _ = inflight.reply.send(Err(error.clone()));
            // As after an answer: a client kept only for this publish is forgotten.
            self.drop_client_if_idle(&channel);
        }
    }

    pub fn local_occupancy(&self, channel: &str) -> crate::channel_client::Occupancy {
        self.clients
            .get(channel)
            .map(|s| crate::channel_client::Occupancy {
                presence_members: s.members.len(),
                ..s.local.occupancy()
            })
            .unwrap_or_default()
    }

    fn client_slot(&mut self, channel: &str) -> &mut ClientSlot {
        if !self.clients.contains_key(channel) {
            if self.masters.contains_key(channel) {
                self.both += 1;
            }
            self.clients
                .insert(channel.to_owned(), ClientSlot::default());
        }
        self.clients.get_mut(channel).expect("inserted above")
    }

    pub(super) fn drop_client_if_idle(&mut self, channel: &str) {
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        if !slot.local.is_empty() || !slot.waiting.is_empty() {
            return;
        }
        if slot.wants_frames {
            slot.wants_frames = false;
            if let Some(master) = slot.master.clone() {
                self.send(
                    master,
                    ChannelMsg::Unsubscribe {
                        channel: channel.to_owned(),
                    },
                );
            }
        }
        let slot = self.clients.get_mut(channel).expect("present");
        slot.subscribed = false;
        // Gone connections stay until their members had time to leave, so a new
        // master still hears of them.
        if slot.inflight.is_empty() && slot.gone.is_empty() {
            self.forget_client(channel);
        }
    }
}

/// When a publish made at `since_ms` has waited longer than `PUBLISH_TIMEOUT_MS`.
fn publish_deadline(since_ms: i64) -> i64 {
    since_ms
        .saturating_add(PUBLISH_TIMEOUT_MS)
        .saturating_add(1)
}

impl ClientSlot {
    /// Whether the client waits for something: a master, its subscription, or answers
    /// to its publishes.
    fn unsettled(&self) -> bool {
        self.master.is_none()
            || (self.wants_frames && !self.subscribed)
            || !self.inflight.is_empty()
    }

    /// Where a (re)subscription starts: the last position delivered here, or earlier
    /// when a resuming attachment continues from further back.
    fn subscribe_from(&self) -> Option<Position> {
        if (self.waiting.iter()).any(|w| matches!(w.start, Start::Rewind(_))) {
            return Some(FROM_RETAINED);
        }
        let resumes = self.waiting.iter().filter_map(|w| match w.start {
            Start::After(from) => Some(from),
            _ => None,
        });
        match (self.last, resumes.min()) {
            (Some(last), Some(from)) => Some(last.min(from)),
            (last, from) => last.or(from),
        }
    }
}

/// Whether a publish is a report of who holds presence members (not a client's own
/// events, which the client retries itself).
fn is_presence_report(publish: &Publish) -> bool {
    matches!(
        &publish.presence,
        Some(PresenceOp::Gone { .. } | PresenceOp::Here { .. } | PresenceOp::Alive { .. })
    )
}

/// How an attachment continues what its connection had before.
enum Resume {
    /// A first attach, or a re-attach that asked for nothing.
    No,
    /// Resumed where this node already is: nothing was missed.
    Kept,
    /// Resumed from further back; ATTACHED and what it missed went out already.
    Replayed,
    /// Asked to resume, but what it missed is no longer retained.
    Lost(ErrorInfo),
}

/// Lets an attachment in: its ATTACHED frame first, then it receives frames.
fn admit(
    slot: &mut ClientSlot,
    subscriber: Subscriber,
    mut attached: ProtocolMessage,
    position: Position,
    resume: Resume,
) {
    attached.channel_serial = Some(position.to_string());
    let mut sync = subscriber.sync_always;
    match resume {
        Resume::No => sync = true,
        Resume::Kept => attached.flags = Some(attached.flags.unwrap_or(0) | flags::RESUMED),
        // The replay went out already, each message with its serial; this ATTACHED
        // went first (see `replay`), so only live frames follow now.
        Resume::Replayed => return slot.local.attach(subscriber),
        Resume::Lost(error) => {
            attached.error = Some(error);
            sync = true;
        }
    }
    // Without RESUMED the client starts its member set afresh: a SYNC follows when
    // there are members to list.
    let sync = sync && wants_sync(subscriber.modes, &slot.members);
    if sync {
        attached.flags = Some(attached.flags.unwrap_or(0) | flags::HAS_PRESENCE);
    }
    let outbox = &subscriber.outbox;
    outbox.send_frame(codec::encode(&attached, outbox.format));
    if sync {
        send_sync(
            outbox,
            attached.channel.as_deref().unwrap_or(""),
            &slot.members,
            position,
        );
    }
    slot.local.attach(subscriber);
}

/// Whether an attachment gets a SYNC of `members`: it subscribes to presence and
/// there is someone to list.
fn wants_sync(modes: i64, members: &Members) -> bool {
    modes & flags::PRESENCE_SUBSCRIBE != 0 && !members.is_empty()
}

/// ATTACHED (with `flag`: RESUMED for a resume, HAS_BACKLOG for a rewind) at the
/// serial the attachment continues from, then `entries`, to this attachment alone.
/// With `members` (a rewind, or a bridge's attachment, whose relay may have restarted
/// from an earlier position), HAS_PRESENCE and a SYNC of the members as of its
/// position come first when there are any: applying the replayed events to them
/// again changes nothing.
fn replay(
    waiting: &Waiting,
    channel: &str,
    entries: &[Entry],
    from: Position,
    flag: i64,
    members: Option<(Position, &Vec<PresenceMessage>)>,
) {
    let sub = &waiting.subscriber;
    let mut listed = Members::default();
    if let Some((_, present)) = members {
        listed.replace(present.clone());
    }
    let with_sync = wants_sync(sub.modes, &listed);
    let mut attached = waiting.attached.clone();
    attached.channel_serial = Some(from.to_string());
    let presence = if with_sync { flags::HAS_PRESENCE } else { 0 };
    attached.flags = Some(attached.flags.unwrap_or(0) | flag | presence);
    sub.outbox
        .send_frame(codec::encode(&attached, sub.outbox.format));
    if let (true, Some((at, _))) = (with_sync, members) {
        send_sync(&sub.outbox, channel, &listed, at);
    }
    send_entries(sub, channel, entries);
}

/// Replayed entries to one attachment, each as its own frame, as its modes and echo
/// setting allow.
fn send_entries(sub: &Subscriber, channel: &str, entries: &[Entry]) {
    let outbox = &sub.outbox;
    for entry in entries {
        if !receives(sub, &entry.body) {
            continue;
        }
        let frame = entry.clone().frame(channel);
        outbox.send_frame(codec::encode(&frame, outbox.format));
    }
}

/// Whether an attachment receives an entry: messages need SUBSCRIBE (and echo for its
/// own), presence events PRESENCE_SUBSCRIBE.
fn receives(sub: &Subscriber, body: &Body) -> bool {
    match body {
        Body::Message(m) => {
            let own = m.connection_id.as_deref() == Some(&*sub.outbox.connection_id);
            sub.modes & flags::SUBSCRIBE != 0 && (sub.echo || !own)
        }
        Body::Presence(_) => sub.modes & flags::PRESENCE_SUBSCRIBE != 0,
    }
}

/// Tells every local attachment that messages were lost: ATTACHED again, without
/// RESUMED and with the error, which clients take as a discontinuity.
fn tell_of_gap(slot: &ClientSlot, channel: &str, position: Position, error: &ErrorInfo) {
    for sub in slot.local.subscribers() {
        let sync = wants_sync(sub.modes, &slot.members);
        let presence = if sync { flags::HAS_PRESENCE } else { 0 };
        let frame = ProtocolMessage {
            flags: Some(sub.modes | presence),
            channel_serial: Some(position.to_string()),
            error: Some(error.clone()),
            ..ProtocolMessage::for_channel(action::ATTACHED, channel)
        };
        sub.outbox
            .send_frame(codec::encode(&frame, sub.outbox.format));
        if sync {
            send_sync(&sub.outbox, channel, &slot.members, position);
        }
    }
}

/// Delivers one replayed history entry as its own frame.
fn deliver_entry(slot: &mut ClientSlot, channel: &str, entry: Entry, now_ms: i64) {
    if slot.last.is_some_and(|last| entry.position <= last) {
        return;
    }
    slot.last = Some(entry.position);
    let frame = entry.frame(channel);
    slot.apply_presence(&frame, now_ms);
    slot.local.deliver(&frame);
}
