//! Channels homed in another region, in the region state machine.
//!
//! The node the ring names master of such a channel does not sequence it: it is the
//! channel's **relay**. To this region's ChannelClients it looks like a master (they
//! subscribe, publish and read history the same way), but it forwards their publishes
//! to the home region over a bridge and passes on, in the home's order, what the home
//! sequenced. It keeps what it relayed, so ChannelClients that re-subscribe get what
//! they missed, and so history reads in this region answer without the home.
//!
//! No I/O here either: the relay asks the bridge for what it needs with
//! [`BridgeOut`] and is told what arrived with [`BridgeIn`]. The bridge keeps one
//! ordered stream per remote region; when it breaks, the relay holds its publishes
//! (bounded by count and time) and declares interest again from the last position it
//! holds, so the home replays exactly what the link lost.
//!
//! **Invariant:** a relay never assigns a position: every position it passes on came
//! from the home, and it passes each on at most once, in order.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info};

use super::msg::ChannelMsg;
use super::{NodeId, RegionState};
use crate::channel_master::{
    frames_of, ChannelMaster, Entry, HistoryPage, HistoryQuery, Publish, Snapshot,
};
use crate::channels::public_name;
use crate::error::AblyError;
use crate::position::Position;
use crate::protocol::{ErrorInfo, PresenceMessage};

/// How long an interest may go unconfirmed before it is declared again.
const INTEREST_RETRY_MS: i64 = 1_000;
/// How long a history read waits for the home before it is answered from what was
/// relayed (within the reader's own 10 s deadline).
const READ_WAIT_MS: i64 = 5_000;

/// What a relay asks of the bridge to the channel's home region.
#[derive(Debug, Clone)]
pub enum BridgeOut {
    /// Start (or stop) the channel's traffic toward this region, replaying what came
    /// after `from`.
    Interest {
        region: String,
        channel: String,
        from: Option<Position>,
        interested: bool,
    },
    /// Read history at the home; answered by [`BridgeIn::HistoryPage`] for `req`.
    History {
        region: String,
        channel: String,
        req: u64,
        query: HistoryQuery,
    },
    /// Ask the channel's previous home (`region`) to hand it over to this one, the new
    /// home under `epoch`; answered by [`BridgeIn::HandedOver`] for `req`.
    Handoff {
        region: String,
        channel: String,
        req: u64,
        epoch: u64,
    },
    /// Have the home sequence this publish; answered by [`BridgeIn::Ack`] for `req`.
    Forward {
        region: String,
        channel: String,
        req: u64,
        publish: Publish,
    },
}

/// What the bridge reports to the relays.
#[derive(Debug, Clone)]
pub enum BridgeIn {
    /// The link to `region` is up: everything sent before may have been lost.
    Up { region: String },
    /// The link to `region` broke.
    Down { region: String },
    /// The home confirmed interest: see the `Subscribed` bridge frame.
    Subscribed {
        channel: String,
        position: Position,
        resumed: bool,
        error: Option<ErrorInfo>,
        /// The channel's members as of `position`.
        members: Vec<PresenceMessage>,
    },
    /// Entries the home sequenced, and the position before the first of them.
    Sequenced {
        channel: String,
        previous: Option<Position>,
        entries: Vec<Entry>,
    },
    /// The home's answer to the forward `req`.
    Ack {
        req: u64,
        result: Result<Vec<Option<String>>, ErrorInfo>,
    },
    /// The home's answer to the history read `req`.
    HistoryPage {
        req: u64,
        result: Result<HistoryPage, ErrorInfo>,
    },
    /// The previous home's answer to the handoff `req`: its state, if it held any.
    HandedOver { req: u64, state: Option<Snapshot> },
    /// The region asked will not serve the channel (it is not, or no longer, its home).
    Refused { channel: String, error: ErrorInfo },
}

/// A channel homed elsewhere that this node relays.
pub(super) struct RelaySlot {
    /// The home region.
    pub region: String,
    /// The home epoch the relay was started under.
    pub home_epoch: u64,
    /// What was relayed, for re-subscribing ChannelClients and history reads. Holds
    /// no position before the home first confirmed interest (`started`).
    pub core: ChannelMaster,
    pub started: bool,
    /// Nodes whose ChannelClient subscribed and was answered.
    pub subscribers: BTreeSet<NodeId>,
    /// Subscriptions waiting for the home to confirm interest, with their `from`.
    pub waiting: Vec<(NodeId, Option<Position>)>,
    /// Whether the home confirmed interest on the current link.
    pub linked: bool,
    pub interest_sent_ms: Option<i64>,
    /// Publishes forwarded to the home and not yet answered, by bridge request.
    pub forwarded: BTreeMap<u64, Forwarded>,
    /// History reads waiting for the home, by bridge request.
    pub reads: BTreeMap<u64, Read>,
}

/// A history read passed to the home: who asked, and what.
pub(super) struct Read {
    reply_to: NodeId,
    req: u64,
    query: HistoryQuery,
    since_ms: i64,
    sent: bool,
}

impl RelaySlot {
    /// Nobody left to relay for: no subscriber, none waiting, nothing in flight.
    fn is_idle(&self) -> bool {
        self.subscribers.is_empty()
            && self.waiting.is_empty()
            && self.forwarded.is_empty()
            && self.reads.is_empty()
    }

    /// Whether a tick has something to look at: publishes or reads waiting for the
    /// home, interest to declare again over a link that is up, or no one left. A
    /// relay whose link is down waits for `BridgeIn::Up`, which visits it.
    fn needs_ticks(&self, link_up: bool) -> bool {
        !self.forwarded.is_empty()
            || !self.reads.is_empty()
            || (!self.linked && link_up)
            || self.is_idle()
    }

    /// Whether `since` lies before what this relay holds (and is a real position, not
    /// the start of everything retained).
    fn predates(&self, since: Position) -> bool {
        since != super::client::FROM_RETAINED && self.started && self.core.since(since).is_none()
    }
}

pub(super) struct Forwarded {
    reply_to: NodeId,
    /// The ChannelClient's request id, to answer it.
    req: u64,
    publish: Publish,
    since_ms: i64,
}

impl RegionState {
    /// Lets the relay part work: without a bridge, channels homed elsewhere are refused.
    pub fn enable_bridges(&mut self, max_held: usize, hold_ms: i64) {
        self.bridges = Some(super::BridgeLimits { max_held, hold_ms });
    }

    /// What the region task must send over bridges, in order.
    pub fn take_bridge_out(&mut self) -> Vec<BridgeOut> {
        std::mem::take(&mut self.bridge_out)
    }

    /// Starts relaying `channel` from its home `region`, then handles the requests a
    /// takeover held back. The relay's first interest asks the home to replay from the
    /// earliest position a waiting ChannelClient holds, so a relay that replaces one
    /// on a dead node loses nothing those clients had not seen.
    pub(super) fn start_relay(
        &mut self,
        channel: &str,
        home: &super::HomeView,
        queued: Vec<(NodeId, ChannelMsg)>,
    ) {
        let from = (queued.iter())
            .filter_map(|(_, msg)| match msg {
                ChannelMsg::Subscribe { from, .. } => *from,
                _ => None,
            })
            .min();
        let mut core = ChannelMaster::new(public_name(channel), 0, self.limits.clone());
        if let Some(from) = from {
            core.restore(starting_at(from));
        }
        let slot = RelaySlot {
            region: home.region.clone(),
            home_epoch: home.epoch,
            core,
            started: from.is_some(),
            subscribers: BTreeSet::new(),
            waiting: Vec::new(),
            linked: false,
            interest_sent_ms: None,
            forwarded: BTreeMap::new(),
            reads: BTreeMap::new(),
        };
        debug!(channel.name = channel, home.region = %home.region, "relaying a channel homed elsewhere");
        self.relays.insert(channel.to_owned(), slot);
        self.schedule.relays.mark(channel);
        self.declare_interest(channel);
        // Members held by a node of this region that died before this relay began
        // (the previous relay's, say) leave at the home.
        // Known cost (docs/architecture.md, known gaps): for a home whose link is down,
        // an unused relay stops when idle and this report's repeats start it again
        // until the link is back, a few visits per tick per such channel.
        self.report_alive(channel);
        for (from, msg) in queued {
            self.on_relay_msg(from, msg);
        }
    }

    /// A ChannelClient's request to the relay of `channel`. Each may leave the relay
    /// with something to wait for (a publish, a read, interest) or with no one to
    /// relay for, so the next tick looks at it.
    pub(super) fn on_relay_msg(&mut self, from: NodeId, msg: ChannelMsg) {
        self.schedule
            .relays
            .mark(super::master::master_channel(&msg));
        match msg {
            ChannelMsg::Subscribe {
                channel,
                from: since,
            } => {
                let slot = self.relays.get_mut(&channel).expect("checked by caller");
                if let Some(since) = since.filter(|s| slot.predates(*s)) {
                    // The home may still hold what this relay never had: it is asked to
                    // replay from there, and the subscriber waits for it. Subscribers
                    // further on drop what they already have.
                    debug!(channel.name = %channel, "subscription from before the relay began; asking the home to replay");
                    slot.core.restore(starting_at(since));
                    slot.linked = false;
                    slot.waiting.push((from, Some(since)));
                    self.declare_interest(&channel);
                    return;
                }
                if slot.linked {
                    slot.subscribers.insert(from.clone());
                    self.answer_subscribe(&channel, from, since);
                } else {
                    slot.waiting.push((from, since));
                }
            }
            ChannelMsg::Unsubscribe { channel } => {
                let slot = self.relays.get_mut(&channel).expect("checked by caller");
                slot.subscribers.remove(&from);
                slot.waiting.retain(|(node, _)| *node != from);
            }
            ChannelMsg::Publish {
                channel,
                req,
                publish,
            } => self.forward(from, &channel, req, publish),
            ChannelMsg::History {
                channel,
                req,
                query,
            } => self.read_at_home(from, &channel, req, query),
            other => debug!(?other, "not a relay message"),
        }
    }

    /// History is read at the home, which holds all of it in its order; the reader
    /// waits for the link if it is down, and gets what was relayed if it stays down.
    fn read_at_home(&mut self, from: NodeId, channel: &str, req: u64, query: HistoryQuery) {
        let bridge_req = self.next_req();
        let now = self.now_ms;
        let up = self
            .relays
            .get(channel)
            .is_some_and(|s| self.links_up.contains(&s.region));
        let slot = self.relays.get_mut(channel).expect("checked by caller");
        if up {
            self.bridge_out.push(BridgeOut::History {
                region: slot.region.clone(),
                channel: channel.to_owned(),
                req: bridge_req,
                query: query.clone(),
            });
        }
        let read = Read {
            reply_to: from,
            req,
            query,
            since_ms: now,
            sent: up,
        };
        slot.reads.insert(bridge_req, read);
        self.bridge_reqs.insert(bridge_req, channel.to_owned());
    }

    /// Answers a read from what was relayed (the home could not be asked in time).
    fn read_locally(&mut self, channel: &str, read: Read) {
        let Some(slot) = self.relays.get(channel) else {
            return;
        };
        let mut query = read.query;
        let held = slot.core.position();
        query.until = Some(query.until.map_or(held, |u| u.min(held)));
        let page = slot.core.history(&query);
        let msg = ChannelMsg::HistoryPage {
            req: read.req,
            result: Ok(page),
        };
        self.send(read.reply_to, msg);
    }

    /// Answers a subscription from what the relay holds.
    fn answer_subscribe(&mut self, channel: &str, to: NodeId, since: Option<Position>) {
        let slot = self.relays.get(channel).expect("checked by caller");
        let position = slot.core.position();
        let (missed, lost) = match since {
            None => (Vec::new(), false),
            Some(super::client::FROM_RETAINED) => (slot.core.retained(), false),
            Some(since) => match slot.core.since(since) {
                Some(entries) => (entries, false),
                None => (Vec::new(), true),
            },
        };
        let members = slot.core.members().present();
        let msg = ChannelMsg::Subscribed {
            channel: channel.to_owned(),
            position,
            missed,
            lost,
            members,
        };
        self.send(to, msg);
    }

    fn forward(&mut self, from: NodeId, channel: &str, req: u64, publish: Publish) {
        let limits = self
            .bridges
            .clone()
            .expect("relays exist only with bridges");
        let bridge_req = self.next_req();
        let now = self.now_ms;
        let slot = self.relays.get_mut(channel).expect("checked by caller");
        // A ChannelClient resends what stays unanswered; the first forward stands.
        let repeat = (slot.forwarded.values()).any(|f| f.reply_to == from && f.req == req);
        if repeat {
            return;
        }
        if slot.forwarded.len() >= limits.max_held {
            let error = AblyError::HomeUnreachable(slot.region.clone()).to_info();
            self.send(
                from,
                ChannelMsg::Published {
                    req,
                    result: Err(error),
                },
            );
            return;
        }
        let out = BridgeOut::Forward {
            region: slot.region.clone(),
            channel: channel.to_owned(),
            req: bridge_req,
            publish: publish.clone(),
        };
        let forwarded = Forwarded {
            reply_to: from,
            req,
            publish,
            since_ms: now,
        };
        slot.forwarded.insert(bridge_req, forwarded);
        if self.links_up.contains(&slot.region) {
            self.bridge_out.push(out);
        }
        self.bridge_reqs.insert(bridge_req, channel.to_owned());
    }

    fn declare_interest(&mut self, channel: &str) {
        let now = self.now_ms;
        let Some(slot) = self.relays.get_mut(channel) else {
            return;
        };
        slot.interest_sent_ms = Some(now);
        let from = slot.started.then(|| slot.core.position());
        self.bridge_out.push(BridgeOut::Interest {
            region: slot.region.clone(),
            channel: channel.to_owned(),
            from,
            interested: true,
        });
    }

    /// Handles what the bridge reports.
    pub fn on_bridge(&mut self, event: BridgeIn) {
        match event {
            BridgeIn::Up { region } => self.on_link_up(&region),
            BridgeIn::Down { region } => {
                info!(region.id = %region, "bridge link down");
                self.links_up.remove(&region);
                for slot in self.relays.values_mut().filter(|s| s.region == region) {
                    slot.linked = false;
                }
            }
            BridgeIn::Subscribed {
                channel,
                position,
                resumed,
                error,
                members,
            } => self.on_home_subscribed(&channel, position, resumed, error, members),
            BridgeIn::Sequenced {
                channel,
                previous,
                entries,
            } => self.on_home_sequenced(&channel, previous, entries),
            BridgeIn::Ack { req, result } => self.on_home_ack(req, result),
            BridgeIn::HandedOver { req, state } => self.on_handed_over(req, state),
            BridgeIn::HistoryPage { req, result } => {
                let Some((channel, read)) = self.take_bridge_req(req, |slot| &mut slot.reads)
                else {
                    return;
                };
                let msg = ChannelMsg::HistoryPage {
                    req: read.req,
                    result,
                };
                self.send(read.reply_to, msg);
                self.schedule.relays.mark(&channel);
            }
            BridgeIn::Refused { channel, error } => {
                // The home's view may be ahead of (or behind) this node's catalog copy;
                // interest is declared again from a tick, and a home change that
                // reaches this node stops the relay.
                debug!(channel.name = %channel, error.code = error.code, "home refused interest");
                if let Some(slot) = self.relays.get_mut(&channel) {
                    slot.linked = false;
                    self.schedule.relays.mark(&channel);
                }
            }
        }
    }

    /// A (new) link to `region`: interest in every channel relayed from it is declared
    /// again from the last position held, and every unanswered publish is sent again
    /// (the home drops what it already sequenced, by message id).
    fn on_link_up(&mut self, region: &str) {
        info!(region.id = %region, "bridge link up");
        self.links_up.insert(region.to_owned());
        let channels: Vec<String> = (self.relays.iter())
            .filter(|(_, slot)| slot.region == region)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in channels {
            self.schedule.relays.mark(&channel);
            let slot = self.relays.get_mut(&channel).expect("listed");
            slot.linked = false;
            let resends: Vec<BridgeOut> = (slot.forwarded.iter())
                .map(|(req, f)| BridgeOut::Forward {
                    region: region.to_owned(),
                    channel: channel.clone(),
                    req: *req,
                    publish: f.publish.clone(),
                })
                .collect();
            let reads: Vec<BridgeOut> = (slot.reads.iter_mut())
                .map(|(req, read)| {
                    read.sent = true;
                    BridgeOut::History {
                        region: region.to_owned(),
                        channel: channel.clone(),
                        req: *req,
                        query: read.query.clone(),
                    }
                })
                .collect();
            self.declare_interest(&channel);
            self.bridge_out.extend(resends);
            self.bridge_out.extend(reads);
        }
    }

    fn on_home_subscribed(
        &mut self,
        channel: &str,
        position: Position,
        resumed: bool,
        error: Option<ErrorInfo>,
        members: Vec<PresenceMessage>,
    ) {
        let Some(slot) = self.relays.get_mut(channel) else {
            return;
        };
        // The home lists the members on every confirmation, resumed or not: a relay
        // that restarted from an earlier position holds only what came after it.
        let members_now = members;
        if !resumed {
            // A fresh start, or the home no longer holds what came after the relay's
            // position: continue from the home's position. ChannelClients that held
            // more than the relay notice the gap when they subscribe again.
            let gap = slot.started && slot.core.position() < position;
            slot.core.restore(starting_at(position));
            slot.started = true;
            if gap {
                // ChannelClients held what the relay held; sent to subscribe again, they
                // hear that history no longer reaches back and tell their connections.
                debug!(channel.name = channel, error = ?error, "relay continues with a gap");
                self.schedule.relays.mark(channel);
                let told = std::mem::take(&mut slot.subscribers);
                for node in told {
                    let msg = ChannelMsg::NotMaster {
                        channel: channel.to_owned(),
                    };
                    self.out.push((node, msg));
                }
            }
        }
        slot.core.members_mut().replace(members_now);
        slot.linked = true;
        let waiting = std::mem::take(&mut slot.waiting);
        for (node, since) in waiting {
            if let Some(slot) = self.relays.get_mut(channel) {
                slot.subscribers.insert(node.clone());
            }
            self.answer_subscribe(channel, node, since);
        }
    }

    /// Entries from the home: kept, then passed on to the subscribed ChannelClients as
    /// one frame, after the last position they were given.
    fn on_home_sequenced(
        &mut self,
        channel: &str,
        previous: Option<Position>,
        entries: Vec<Entry>,
    ) {
        let now = self.now_ms;
        let Some(slot) = self.relays.get_mut(channel) else {
            return;
        };
        if !slot.linked {
            return;
        }
        let after = slot.core.position();
        let fresh: Vec<Entry> = entries.into_iter().filter(|e| e.position > after).collect();
        let Some(last) = fresh.last().map(|e| e.position) else {
            return;
        };
        if previous.is_some_and(|p| p > after) {
            // The home sequenced something this relay never received.
            debug!(
                channel.name = channel,
                "gap in relayed frames; declaring interest again"
            );
            slot.linked = false;
            self.schedule.relays.mark(channel);
            self.declare_interest(channel);
            return;
        }

        let _ = last;
        let frames = frames_of(public_name(channel), &fresh);
        slot.core.apply(fresh, now);
        let subscribers: Vec<NodeId> = slot.subscribers.iter().cloned().collect();
        for node in subscribers {
            let mut after = after;
            for (position, frame) in &frames {
                let msg = ChannelMsg::Sequenced {
                    after,
                    channel: channel.to_owned(),
                    position: *position,
                    frame: frame.clone(),
                };
                self.send(node.clone(), msg);
                after = *position;
            }
        }
    }

    fn on_home_ack(&mut self, req: u64, result: Result<Vec<Option<String>>, ErrorInfo>) {
        let Some((channel, forwarded)) = self.take_bridge_req(req, |slot| &mut slot.forwarded)
        else {
            return;
        };
        let msg = ChannelMsg::Published {
            req: forwarded.req,
            result,
        };
        self.send(forwarded.reply_to, msg);
        // The last answer may leave the relay with no one to relay for.
        self.schedule.relays.mark(&channel);
    }

    /// Takes the forward or read a bridge answer is for, from the relay that made it.
    fn take_bridge_req<T>(
        &mut self,
        req: u64,
        held: impl FnOnce(&mut RelaySlot) -> &mut BTreeMap<u64, T>,
    ) -> Option<(String, T)> {
        let channel = self.bridge_reqs.remove(&req)?;
        let slot = self.relays.get_mut(&channel)?;
        let taken = held(slot).remove(&req)?;
        Some((channel, taken))
    }

    /// Stops relaying `channel` (its home moved, or another node relays it now): the
    /// ChannelClients go to whoever the ring and the home name next, and resend.
    pub(super) fn stop_relay(&mut self, channel: &str) {
        let Some(slot) = self.relays.remove(channel) else {
            return;
        };
        if self.links_up.contains(&slot.region) {
            self.bridge_out.push(BridgeOut::Interest {
                region: slot.region.clone(),
                channel: channel.to_owned(),
                from: None,
                interested: false,
            });
        }
        let not_master = || ChannelMsg::NotMaster {
            channel: channel.to_owned(),
        };
        for node in slot.subscribers {
            self.send(node, not_master());
        }
        for (node, _) in slot.waiting {
            self.send(node, not_master());
        }
        for (req, read) in slot.reads {
            self.bridge_reqs.remove(&req);
            self.send(read.reply_to, not_master());
        }
        for (req, forwarded) in slot.forwarded {
            self.bridge_reqs.remove(&req);
            self.send(forwarded.reply_to, not_master());
        }
        debug!(channel.name = channel, "stopped relaying");
    }

    /// Periodic relay work: refuse publishes held too long, answer reads the home did
    /// not answer in time, declare unconfirmed interest again, and stop relays nobody
    /// uses. Only relays marked since the last tick, or still waiting then, are
    /// visited: the others are linked, with nothing in flight, and someone to relay
    /// for.
    // The waits here (a held publish, a late read, unconfirmed interest) are visited on
    // every tick while they last rather than queued by deadline: a relay in that state
    // has a home to hear from, which is work in progress, not an idle channel.
    pub(super) fn tick_relays(&mut self) {
        let Some(limits) = self.bridges.clone() else {
            return;
        };
        for channel in self.schedule.relays.take() {
            if !self.relays.contains_key(&channel) {
                continue;
            }
            self.schedule.visits += 1;
            self.refuse_held_too_long(&channel, limits.hold_ms);
            self.answer_late_reads(&channel);

            let now = self.now_ms;
            let slot = self.relays.get(&channel).expect("checked");
            let overdue = !slot.linked
                && self.links_up.contains(&slot.region)
                && (slot.interest_sent_ms).is_none_or(|t| now - t >= INTEREST_RETRY_MS);
            if slot.is_idle() {
                self.stop_relay(&channel);
                continue;
            }
            if overdue {
                self.declare_interest(&channel);
            }
            let slot = self.relays.get(&channel).expect("checked");
            if slot.needs_ticks(self.links_up.contains(&slot.region)) {
                self.schedule.relays.mark(&channel);
            }
        }
    }

    fn refuse_held_too_long(&mut self, channel: &str, hold_ms: i64) {
        let now = self.now_ms;
        let slot = self.relays.get_mut(channel).expect("caller checked");
        let expired: Vec<u64> = (slot.forwarded.iter())
            .filter(|(_, f)| now - f.since_ms > hold_ms)
            .map(|(req, _)| *req)
            .collect();
        let error = AblyError::HomeUnreachable(slot.region.clone()).to_info();
        let refused: Vec<Forwarded> = (expired.iter())
            .filter_map(|req| slot.forwarded.remove(req))
            .collect();
        for req in &expired {
            self.bridge_reqs.remove(req);
        }
        for forwarded in refused {
            let msg = ChannelMsg::Published {
                req: forwarded.req,
                result: Err(error.clone()),
            };
            self.send(forwarded.reply_to, msg);
        }
    }

    fn answer_late_reads(&mut self, channel: &str) {
        let now = self.now_ms;
        let slot = self.relays.get_mut(channel).expect("caller checked");
        let late_reqs: Vec<u64> = (slot.reads.iter())
            .filter(|(_, r)| now - r.since_ms > READ_WAIT_MS)
            .map(|(req, _)| *req)
            .collect();
        let late: Vec<Read> = late_reqs
            .iter()
            .filter_map(|r| slot.reads.remove(r))
            .collect();
        for req in &late_reqs {
            self.bridge_reqs.remove(req);
        }
        for read in late {
            self.read_locally(channel, read);
        }
    }
}

/// A state that starts at `position` with nothing before it retained.
fn starting_at(position: Position) -> Snapshot {
    Snapshot {
        last: position,
        pruned: position,
        ..Snapshot::default()
    }
}
