//! The master side of the region state machine: sequencing, copies before the ACK,
//! commit and broadcast, and taking over a channel from its previous holders.

use std::collections::{BTreeSet, HashMap, VecDeque};

use tracing::{debug, info, warn};

use super::msg::ChannelMsg;
use super::{NodeId, RegionState};
use crate::channel_master::{
    member_page, Body, ChannelMaster, Entry, HistoryQuery, Publish, ReadKind, Sequenced, Snapshot,
};
use crate::channels::public_name;
use crate::position::Position;
use crate::presence::{Members, PresenceEntry};
use crate::protocol::ProtocolMessage;

/// A channel this node sequences.
pub(super) struct MasterSlot {
    pub core: ChannelMaster,
    /// Nodes whose ChannelClient subscribed.
    pub subscribers: BTreeSet<NodeId>,
    /// Nodes that must hold a copy before a publish is acknowledged.
    pub copies: Vec<NodeId>,
    /// How far each copy holder has confirmed.
    pub confirmed: HashMap<NodeId, Position>,
    /// Sequenced publishes waiting for their copies, in sequence order.
    pub pending: VecDeque<Uncommitted>,
    /// The last position broadcast to subscribers.
    pub committed: Position,
    /// The home epoch this master took the channel under; it sequences only while the
    /// node's catalog copy still names this region home under it.
    pub home_epoch: u64,
    /// When the channel's home was last reported in use.
    pub touched_ms: i64,
    /// The members as of `committed`: what a new subscriber is told (the core's set
    /// also holds what is not committed yet).
    pub members: Members,
    /// The time of this slot's entry in the sweep queue, when it has one.
    pub sweep_at: Option<i64>,
}

impl MasterSlot {
    /// Whether nothing but its history keeps the channel here: no node subscribed and
    /// nothing waits for copies. Such a master is forgotten once idle.
    pub fn may_forget(&self) -> bool {
        self.subscribers.is_empty() && self.pending.is_empty()
    }
}

pub(super) struct Uncommitted {
    upto: Position,
    /// Each frame with its position, broadcast in order once committed.
    frames: Vec<(Position, ProtocolMessage)>,
    /// The presence events among them, applied to the committed members.
    presence: Vec<PresenceEntry>,
    serials: Vec<Option<String>>,
    reply_to: NodeId,
    req: u64,
    /// When it was sequenced: a copy is taken to lag only once a publish waited on it
    /// longer than a confirmation takes.
    since_ms: i64,
}

/// How long a publish may wait for a copy's confirmation before the copy counts as
/// lagging and is sent the whole state. A confirmation takes a round trip on the mesh
/// (well under a millisecond); without this wait, any publish still in flight at a
/// tick sent a full snapshot, several times a second under steady load.
const LAGGING_AFTER_MS: i64 = super::TICK_MS as i64;

/// A copy of a channel another node sequences, and the epoch of that master.
pub(super) struct Replica {
    pub core: ChannelMaster,
    pub epoch: u64,
    /// The time of this copy's entry in the sweep queue, when it has one.
    pub sweep_at: Option<i64>,
}

impl Replica {
    pub fn new(core: ChannelMaster, epoch: u64) -> Self {
        Self {
            core,
            epoch,
            sweep_at: None,
        }
    }
}

/// A channel this node is taking over: it asked every peer for its state and holds
/// back requests until all have answered.
pub(super) struct Acquire {
    /// Live peers that answered "ready" with what they hold. The takeover completes
    /// once every live peer is in here; the others are asked again on every tick, so
    /// a lost request or reply, or a peer that was not ready, only delays it.
    answered: BTreeSet<NodeId>,
    pub best: Option<Snapshot>,
    pub max_epoch: u64,
    pub queued: Vec<(NodeId, ChannelMsg)>,
    /// Where the previous home's handover stands, when the home moved here.
    pub handover: super::handoff::Handover,
}

impl RegionState {
    /// Handles a message addressed to the channel's master.
    pub(super) fn on_master_msg(&mut self, from: NodeId, msg: ChannelMsg) {
        let channel = master_channel(&msg).to_owned();
        if !self.may_sequence(&channel) {
            self.send(from, ChannelMsg::NotMaster { channel });
            return;
        }
        if let Some(acquire) = self.acquiring.get_mut(&channel) {
            acquire.queued.push((from, msg));
            return;
        }
        if self.relays.contains_key(&channel) {
            self.on_relay_msg(from, msg);
            return;
        }
        if let ChannelMsg::History { req, query, .. } = &msg {
            if !self.masters.contains_key(&channel) && !self.homes.contains_key(&channel) {
                // Reading never assigns a home, so a channel without one is read here.
                self.history_without_home(from, &channel, *req, query);
                return;
            }
        }
        if !self.masters.contains_key(&channel) {
            self.begin_acquire(&channel);
            self.acquiring
                .get_mut(&channel)
                .expect("just begun")
                .queued
                .push((from, msg));
            self.finish_acquire_if_done(&channel);
            return;
        }

        match msg {
            ChannelMsg::Subscribe {
                channel,
                from: since,
            } => self.subscribe(from, &channel, since),
            ChannelMsg::Unsubscribe { channel } => {
                if let Some(slot) = self.masters.get_mut(&channel) {
                    slot.subscribers.remove(&from);
                }
                // The last subscriber gone lets an idle master be forgotten.
                self.schedule_sweep(&channel);
            }
            ChannelMsg::Publish {
                channel,
                req,
                publish,
            } => self.sequence(from, &channel, req, publish),
            ChannelMsg::History {
                channel,
                req,
                query,
            } => self.read_history(from, &channel, req, &query),
            other => warn!(?other, "not a master message"),
        }
    }

    /// Whether this node may sequence `channel` now: it owns it on the ring of its
    /// current view, and it sees a strict majority of the region's known members, so
    /// at most one side of a partition can sequence.
    pub(super) fn may_sequence(&self, channel: &str) -> bool {
        self.settled && self.has_quorum() && self.ring.owner(channel) == Some(self.me.as_str())
    }

    /// Whether this node may serve its region's channels at all: it sees a strict
    /// majority of the region, and the region holds its lease from the global master.
    pub(super) fn has_quorum(&self) -> bool {
        self.lease && self.live.len() * 2 > self.known.max(self.live.len())
    }

    fn subscribe(&mut self, from: NodeId, channel: &str, since: Option<Position>) {
        let slot = self.masters.get_mut(channel).expect("checked by caller");
        slot.subscribers.insert(from.clone());

        let position = slot.committed;
        let (missed, lost) = match since {
            None => (Vec::new(), false),
            Some(super::client::FROM_RETAINED) => (
                (slot.core.retained().into_iter())
                    .filter(|e| e.position <= position)
                    .collect(),
                false,
            ),
            Some(since) => match slot.core.since(since) {
                Some(entries) => (
                    entries
                        .into_iter()
                        .filter(|e| e.position <= position)
                        .collect(),
                    false,
                ),
                None => (Vec::new(), true),
            },
        };
        let members = slot.members.present();
        let channel = channel.to_owned();
        self.send(
            from,
            ChannelMsg::Subscribed {
                channel,
                position,
                missed,
                lost,
                members,
            },
        );
    }

    fn sequence(&mut self, from: NodeId, channel: &str, req: u64, publish: Publish) {
        if publish.presence.is_some() {
            return self.sequence_presence(from, channel, req, publish);
        }
        let now = self.now_ms;
        let slot = self.masters.get_mut(channel).expect("checked by caller");
        let after = slot.core.position();
        let sequenced = slot.core.sequence(publish, now);
        self.queue_sequenced(from, channel, req, after, sequenced);
    }

    /// Queues what was sequenced until its copies confirm it, and sends them the new
    /// entries. Every message of a publish may have been a duplicate: its first copy
    /// may be one this master inherited and has not yet seen its own copy holders
    /// confirm, so the answer waits in line like any publish, with nothing to
    /// broadcast.
    pub(super) fn queue_sequenced(
        &mut self,
        from: NodeId,
        channel: &str,
        req: u64,
        after: Position,
        sequenced: Sequenced,
    ) {
        let slot = self.masters.get_mut(channel).expect("checked by caller");
        let upto = (sequenced.entries.last()).map_or(slot.core.position(), |e| e.position);
        let presence = (sequenced.entries.iter())
            .filter_map(|e| match &e.body {
                Body::Presence(p) => Some(p.clone()),
                Body::Message(_) => None,
            })
            .collect();
        slot.pending.push_back(Uncommitted {
            upto,
            frames: sequenced.frames,
            presence,
            serials: sequenced.serials,
            reply_to: from,
            req,
            since_ms: self.now_ms,
        });
        self.schedule.uncommitted.mark(channel);
        if sequenced.entries.is_empty() {
            self.commit_ready(channel);
            return;
        }

        let epoch = slot.core.epoch();
        let copies = slot.copies.clone();
        for copy in copies {
            let entries = sequenced.entries.clone();
            let msg = ChannelMsg::Replicate {
                after,
                channel: channel.to_owned(),
                epoch,
                entries,
                snapshot: None,
            };
            self.send(copy, msg);
        }
        self.commit_ready(channel);
    }

    /// Commits, in order, every publish that all copy holders confirmed: it is
    /// broadcast to subscribers and acknowledged to its publisher.
    pub(super) fn commit_ready(&mut self, channel: &str) {
        let Some(slot) = self.masters.get_mut(channel) else {
            return;
        };
        let mut committed = Vec::new();
        while let Some(head) = slot.pending.front() {
            let confirmed = slot
                .copies
                .iter()
                .all(|c| slot.confirmed.get(c).is_some_and(|p| *p >= head.upto));
            if !confirmed {
                break;
            }
            let head = slot.pending.pop_front().expect("front exists");
            let after = slot.committed;
            slot.committed = slot.committed.max(head.upto);
            committed.push((after, head));
        }

        let now = self.now_ms;
        for (_, done) in &committed {
            for event in &done.presence {
                slot.members.apply(event, now);
            }
        }
        let subscribers: Vec<NodeId> = slot.subscribers.iter().cloned().collect();
        for (mut after, done) in committed {
            for (position, frame) in done.frames {
                for node in &subscribers {
                    let msg = ChannelMsg::Sequenced {
                        after,
                        channel: channel.to_owned(),
                        position,
                        frame: frame.clone(),
                    };
                    self.send(node.clone(), msg);
                }
                after = position;
            }
            self.send(
                done.reply_to,
                ChannelMsg::Published {
                    req: done.req,
                    result: Ok(done.serials),
                },
            );
        }
        self.schedule_sweep(channel);
    }

    fn read_history(&mut self, from: NodeId, channel: &str, req: u64, query: &HistoryQuery) {
        let slot = self.masters.get(channel).expect("checked by caller");
        let idle = slot.subscribers.is_empty() && slot.pending.is_empty() && slot.core.is_empty();
        let mut query = query.clone();
        // Uncommitted messages are not history yet: they may still be lost.
        query.until = Some(
            query
                .until
                .map_or(slot.committed, |u| u.min(slot.committed)),
        );
        // Members are listed as committed, like messages.
        let page = match query.kind {
            ReadKind::Members { .. } => member_page(&slot.members, &query),
            _ => slot.core.history(&query),
        };
        self.send(
            from,
            ChannelMsg::HistoryPage {
                req,
                result: Ok(page),
            },
        );

        // Reading must not keep a channel alive that has nothing in it.
        if idle {
            self.forget_master(channel);
        }
    }

    /// History of a channel with no home: nothing was sequenced since its home was
    /// last assigned, so only a copy this node still holds can have anything.
    fn history_without_home(
        &mut self,
        from: NodeId,
        channel: &str,
        req: u64,
        query: &HistoryQuery,
    ) {
        let page = match self.replicas.get(channel) {
            Some(replica) => replica.core.history(query),
            None => ChannelMaster::new(public_name(channel), 0, self.limits.clone()).history(query),
        };
        self.send(
            from,
            ChannelMsg::HistoryPage {
                req,
                result: Ok(page),
            },
        );
    }

    /// A copy holder confirmed entries up to `upto`.
    pub(super) fn on_replicated(
        &mut self,
        from: NodeId,
        channel: &str,
        epoch: u64,
        upto: Position,
    ) {
        let Some(slot) = self.masters.get_mut(channel) else {
            return;
        };
        if slot.core.epoch() != epoch {
            return;
        }
        let entry = slot.confirmed.entry(from).or_default();
        *entry = (*entry).max(upto);
        self.commit_ready(channel);
    }

    /// A copy holder knows a newer master: this node must stop sequencing.
    pub(super) fn on_fenced(&mut self, channel: &str, epoch: u64) {
        let stale = self
            .masters
            .get(channel)
            .is_some_and(|s| s.core.epoch() < epoch);
        if stale {
            warn!(
                channel.name = channel,
                epoch, "fenced by a newer master; stepping down"
            );
            self.step_down(channel);
        }
    }

    /// Stops sequencing `channel`. Its state is kept as a copy so a successor can
    /// take it; publishes not yet committed are refused so their publishers resend
    /// them to the successor, where their ids make the resend harmless.
    pub(super) fn step_down(&mut self, channel: &str) {
        let Some(slot) = self.forget_master(channel) else {
            return;
        };
        crate::observe::master_changed("stepped_down");
        // Subscribers are told too, so they subscribe afresh to whoever masters the
        // channel next, even if that is this node again.
        for node in &slot.subscribers {
            self.send(
                node.clone(),
                ChannelMsg::NotMaster {
                    channel: channel.to_owned(),
                },
            );
        }
        for pending in slot.pending {
            self.send(
                pending.reply_to,
                ChannelMsg::NotMaster {
                    channel: channel.to_owned(),
                },
            );
        }
        let epoch = slot.core.epoch();
        (self.replicas).insert(channel.to_owned(), Replica::new(slot.core, epoch));
        self.schedule_sweep(channel);
        debug!(channel.name = channel, "stepped down as master");
    }

    /// After a view change: step down from channels owned elsewhere now, and bring
    /// new copy holders of the channels still owned up to date.
    pub(super) fn rebalance_masters(&mut self) {
        let channels: Vec<String> = self.masters.keys().cloned().collect();
        let mut moved = 0;
        for channel in channels {
            if !self.may_sequence(&channel) {
                self.step_down(&channel);
                moved += 1;
                continue;
            }
            self.refresh_copies(&channel);
        }
        let relays: Vec<String> = self.relays.keys().cloned().collect();
        for channel in relays {
            if !self.may_sequence(&channel) {
                self.stop_relay(&channel);
                moved += 1;
            }
        }
        if moved > 0 {
            info!(
                channels.moved = moved,
                "channel masters moved away after a membership change"
            );
        }

        let acquiring: Vec<String> = self.acquiring.keys().cloned().collect();
        for channel in acquiring {
            if !self.may_sequence(&channel) {
                let acquire = self.acquiring.remove(&channel).expect("listed");
                for (from, _) in acquire.queued {
                    self.send(
                        from,
                        ChannelMsg::NotMaster {
                            channel: channel.clone(),
                        },
                    );
                }
                continue;
            }
            // Peers that died need not answer; new ones are asked on the next tick.
            self.finish_acquire_if_done(&channel);
        }
    }

    /// Recomputes the copy holders of a channel and sends new ones the full state.
    pub(super) fn refresh_copies(&mut self, channel: &str) {
        let wanted: Vec<NodeId> = self
            .ring
            .owners(channel, self.replication)
            .into_iter()
            .skip(1)
            .collect();
        let slot = self.masters.get_mut(channel).expect("caller checked");
        if slot.copies == wanted {
            return;
        }
        let new: Vec<NodeId> = wanted
            .iter()
            .filter(|n| !slot.copies.contains(n))
            .cloned()
            .collect();
        slot.copies = wanted;
        slot.confirmed.retain(|n, _| slot.copies.contains(n));
        for node in new {
            self.send_snapshot(channel, node);
        }
        self.commit_ready(channel);
    }

    fn send_snapshot(&mut self, channel: &str, node: NodeId) {
        let Some(slot) = self.masters.get(channel) else {
            return;
        };
        let msg = ChannelMsg::Replicate {
            after: Position::default(),
            channel: channel.to_owned(),
            epoch: slot.core.epoch(),
            entries: Vec::new(),
            snapshot: Some(slot.core.snapshot()),
        };
        self.send(node, msg);
    }

    /// A copy holder that missed entries (it refused them while its view disagreed,
    /// or a link flapped) holds back every publish; on each tick, once the oldest
    /// publish waited on it for `LAGGING_AFTER_MS`, it is sent the whole state again. Only masters that sequenced something since they last had nothing
    /// pending are looked at.
    pub(super) fn resend_to_lagging_copies(&mut self) {
        let mut resends = Vec::new();
        for channel in self.schedule.uncommitted.take() {
            self.schedule.visits += 1;
            let Some(slot) = self.masters.get(&channel) else {
                continue;
            };
            let Some(head) = slot.pending.front() else {
                continue;
            };
            // Still marked: the next tick looks again.
            self.schedule.uncommitted.mark(&channel);
            if self.now_ms - head.since_ms < LAGGING_AFTER_MS {
                continue;
            }
            for copy in &slot.copies {
                if slot.confirmed.get(copy).is_none_or(|p| *p < head.upto) {
                    resends.push((channel.clone(), copy.clone()));
                }
            }
        }
        for (channel, copy) in resends {
            self.send_snapshot(&channel, copy);
        }
    }

    fn begin_acquire(&mut self, channel: &str) {
        let own = self.replicas.remove(channel);
        let max_epoch = own.as_ref().map_or(0, |r| r.epoch);
        let acquire = Acquire {
            answered: BTreeSet::new(),
            best: own.map(|r| r.core.snapshot()),
            max_epoch,
            queued: Vec::new(),
            handover: super::handoff::Handover::NotAsked,
        };
        self.acquiring.insert(channel.to_owned(), acquire);
        self.ask_for_state(channel);
        self.want_home(channel);
    }

    /// Live peers that have not yet answered a takeover "ready".
    fn unanswered(&self, channel: &str) -> Vec<NodeId> {
        let Some(acquire) = self.acquiring.get(channel) else {
            return Vec::new();
        };
        self.live
            .iter()
            .filter(|n| **n != self.me && !acquire.answered.contains(*n))
            .cloned()
            .collect()
    }

    fn ask_for_state(&mut self, channel: &str) {
        for node in self.unanswered(channel) {
            self.send(
                node,
                ChannelMsg::StateRequest {
                    channel: channel.to_owned(),
                },
            );
        }
    }

    /// Another node asks what this node holds of `channel` because it now owns it.
    pub(super) fn on_state_request(&mut self, from: NodeId, channel: &str) {
        let owner_agrees = self.ring.owner(channel) == Some(from.as_str());
        if !owner_agrees {
            // Until this node's view agrees that `from` owns the channel, it neither
            // hands over what it sequences nor what it copies for another master:
            // otherwise two sides of a partial partition could both take over.
            let msg = ChannelMsg::StateReply {
                channel: channel.to_owned(),
                ready: false,
                epoch: 0,
                state: None,
            };
            self.send(from, msg);
            return;
        }
        if self.masters.contains_key(channel) {
            self.step_down(channel);
        }

        let held = self.replicas.get(channel);
        let msg = ChannelMsg::StateReply {
            channel: channel.to_owned(),
            ready: true,
            epoch: held.map_or(0, |r| r.epoch),
            state: held.map(|r| r.core.snapshot()),
        };
        self.send(from, msg);
    }

    pub(super) fn on_state_reply(
        &mut self,
        from: NodeId,
        channel: &str,
        ready: bool,
        epoch: u64,
        state: Option<Snapshot>,
    ) {
        let Some(acquire) = self.acquiring.get_mut(channel) else {
            return;
        };
        if !ready || !acquire.answered.insert(from) {
            return;
        }
        acquire.max_epoch = acquire.max_epoch.max(epoch);
        if let Some(state) = state {
            if acquire.best.as_ref().is_none_or(|b| state.last > b.last) {
                acquire.best = Some(state);
            }
        }
        self.finish_acquire_if_done(channel);
    }

    /// Asks again every live peer that has not answered "ready" (on every tick).
    pub(super) fn retry_acquires(&mut self) {
        let channels: Vec<String> = self.acquiring.keys().cloned().collect();
        self.schedule.visits += channels.len();
        for channel in channels {
            self.ask_for_state(&channel);
            self.want_home(&channel);
            self.finish_acquire_if_done(&channel);
        }
    }

    /// Completes a takeover once every live peer answered and the channel's home is
    /// known; a channel homed in another region is refused instead.
    pub(super) fn finish_acquire_if_done(&mut self, channel: &str) {
        let done = self.acquiring.contains_key(channel) && self.unanswered(channel).is_empty();
        if !done {
            return;
        }
        let Some(home) = self.homes.get(channel).cloned() else {
            return;
        };
        if home.region == self.region && self.handover_pending(channel, &home) {
            return;
        }
        let acquire = self.acquiring.remove(channel).expect("checked");
        if home.region != self.region {
            // What this node held stays a copy: the new home may ask for it (handoff).
            if let Some(best) = acquire.best {
                let mut core = ChannelMaster::new(public_name(channel), 0, self.limits.clone());
                let epoch = best.last.epoch.max(acquire.max_epoch);
                core.restore(best);
                (self.replicas).insert(channel.to_owned(), Replica::new(core, epoch));
                self.schedule_sweep(channel);
            }
            match self.bridges {
                Some(_) => self.start_relay(channel, &home, acquire.queued),
                None => self.refuse_homed_elsewhere(channel, &home.region, acquire.queued),
            }
            return;
        }

        // Above every epoch heard of, at least the wall clock in milliseconds, and at
        // least the home epoch (which the global master draws from its clock too), so
        // a channel whose state was lost (all holders restarted, or evicted when idle)
        // or whose home moved never reuses a position given before.
        let heard = acquire
            .max_epoch
            .max(acquire.best.as_ref().map_or(0, |b| b.last.epoch));
        let clock = u64::try_from(self.now_ms).unwrap_or(0);
        let epoch = (heard + 1).max(clock).max(home.epoch);
        let core = match acquire.best {
            Some(state) => ChannelMaster::from_snapshot(
                public_name(channel),
                epoch,
                state,
                self.limits.clone(),
            ),
            None => ChannelMaster::new(public_name(channel), epoch, self.limits.clone()),
        };
        let committed = core.position();
        let members = core.members().clone();
        if epoch > 1 {
            info!(channel.name = channel, epoch, "took over as channel master");
        }
        crate::observe::master_changed("acquired");
        self.insert_master(
            channel,
            MasterSlot {
                core,
                subscribers: BTreeSet::new(),
                copies: Vec::new(),
                confirmed: HashMap::new(),
                pending: VecDeque::new(),
                committed,
                home_epoch: home.epoch,
                touched_ms: self.now_ms,
                members,
                sweep_at: None,
            },
        );
        self.schedule_touch(channel);
        self.refresh_copies(channel);
        self.mark_lost_holders(channel);
        // Inherited members may be held in regions gone silent, or due to leave.
        self.presence_changed(channel);
        for (from, msg) in acquire.queued {
            self.on_master_msg(from, msg);
        }
        // After the requests it held: a master taken for a subscriber is not forgotten
        // when idle, so only its history's expiry is queued.
        self.schedule_sweep(channel);
    }

    /// A copy holder receives entries or a full state from a master.
    pub(super) fn on_replicate(
        &mut self,
        from: NodeId,
        channel: &str,
        epoch: u64,
        after: Position,
        entries: Vec<Entry>,
        snapshot: Option<Snapshot>,
    ) {
        // A copy serves only the master its own view names: a master on the other
        // side of a partial partition cannot get its publishes acknowledged here.
        if self.ring.owner(channel) != Some(from.as_str()) {
            debug!(channel.name = channel, master = %from, "refusing copies from a master this view does not name");
            return;
        }
        let held_epoch = self
            .masters
            .get(channel)
            .map(|m| m.core.epoch())
            .or_else(|| self.replicas.get(channel).map(|r| r.epoch));
        if held_epoch.is_some_and(|held| held > epoch) {
            let msg = ChannelMsg::Fenced {
                channel: channel.to_owned(),
                epoch: held_epoch.unwrap_or(0),
            };
            self.send(from, msg);
            return;
        }
        if self.masters.contains_key(channel) {
            // An equal or newer master exists elsewhere; this node's own mastership is
            // stale (it will also be fenced by its copies).
            self.step_down(channel);
        }

        let now = self.now_ms;
        let limits = self.limits.clone();
        let replica = (self.replicas.entry(channel.to_owned())).or_insert_with(|| {
            Replica::new(
                ChannelMaster::new(public_name(channel), epoch, limits),
                epoch,
            )
        });
        replica.epoch = epoch;
        if let Some(snapshot) = snapshot {
            replica.core.restore(snapshot);
        } else if replica.core.position() == after {
            replica.core.apply(entries, now);
        }
        // Otherwise entries are missing in between: applying these would leave a
        // hole, so the copy reports where it stands and gets the whole state instead.
        let upto = replica.core.position();
        self.schedule_sweep(channel);
        self.send(
            from,
            ChannelMsg::Replicated {
                channel: channel.to_owned(),
                epoch,
                upto,
            },
        );
    }
}

/// The channel a request for a master (or relay) is about.
pub(super) fn master_channel(msg: &ChannelMsg) -> &str {
    match msg {
        ChannelMsg::Subscribe { channel, .. }
        | ChannelMsg::Unsubscribe { channel }
        | ChannelMsg::Publish { channel, .. }
        | ChannelMsg::History { channel, .. } => channel,
        _ => "",
    }
}
