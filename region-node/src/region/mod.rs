//! Channels across a region: where each channel's master lives, how ChannelClients
//! reach it, and how masters keep copies and hand channels over.
//!
//! [`RegionState`] holds every decision and does no I/O: it is fed local commands,
//! messages from peers, membership views and clock ticks, and it answers with
//! messages to send (`out`) and frames queued to local connections. [`Region`] is the
//! one task per node that drives it, so the state needs no locks and every event is
//! applied in a single order.

mod client;
mod handoff;
mod home;
mod master;
pub mod msg;
mod presence;
mod relay;
mod schedule;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use client::ClientSlot;
pub use client::{PublishReply, Start};
pub use home::{HomeRequest, HomeView};
use master::{Acquire, MasterSlot, Replica};
use msg::ChannelMsg;
pub use presence::Leave;
pub use relay::{BridgeIn, BridgeOut};
use schedule::Schedule;
pub use stats::{ChannelActivity, RegionStats};

use crate::channel_client::{Occupancy, Subscriber};
use crate::channel_master::{HistoryPage, HistoryQuery, Publish};
use crate::config::HistoryConfig;
use crate::control::{ControlPlane, HomeEvent};
use crate::error::AblyError;
use crate::mesh::{Mesh, MeshView};
use crate::node::now_ms;
use crate::protocol::{ErrorInfo, ProtocolMessage};
use crate::ring::{Ring, DEFAULT_VNODES};

pub type NodeId = String;

/// Bounds on publishes held for a home region whose bridge link is down.
#[derive(Debug, Clone)]
struct BridgeLimits {
    max_held: usize,
    hold_ms: i64,
}

/// How often the state machine retries what waits on others and expires what is old.
const TICK_MS: u64 = 200;
const HISTORY_TIMEOUT_MS: i64 = 10_000;
/// Default for [`RegionState::set_home_touch_ms`]: well inside the global master's
/// default idle expiry of a day.
const DEFAULT_HOME_TOUCH_MS: i64 = 60 * 60 * 1000;

pub type HistoryReply = oneshot::Sender<Result<HistoryPage, ErrorInfo>>;

struct HistoryRequest {
    channel: String,
    query: HistoryQuery,
    reply: HistoryReply,
    since_ms: i64,
    sent: bool,
}

pub struct RegionState {
    me: NodeId,
    /// The region this node belongs to: it sequences only channels homed here.
    region: String,
    replication: usize,
    limits: HistoryConfig,
    now_ms: i64,
    live: BTreeSet<NodeId>,
    known: usize,
    /// Fewer live nodes than configured copies: publishes are acknowledged with fewer.
    degraded: bool,
    /// Whether the mesh says this node has met its region (see `MeshView::settled`);
    /// a node that has not takes over no channel.
    settled: bool,
    ring: Ring,
    masters: HashMap<String, MasterSlot>,
    replicas: HashMap<String, Replica>,
    acquiring: HashMap<String, Acquire>,
    clients: HashMap<String, ClientSlot>,
    /// Channels with both a master and a ChannelClient here, kept as either map
    /// gains or loses one (`insert_master`, `forget_master`, `client_slot`,
    /// `forget_client`), so counting channels needs no walk over them.
    both: usize,
    /// The channel whose ChannelClient holds each in-flight publish, by request id,
    /// so an answer finds its publish without visiting every channel.
    inflight_channels: HashMap<u64, String>,
    history: HashMap<u64, HistoryRequest>,
    next_req: u64,
    /// Every channel home of this node's catalog copy.
    homes: HashMap<String, HomeView>,
    /// When each unknown home was last asked for.
    home_asked: HashMap<String, i64>,
    /// What to ask the global master, drained by the region task.
    home_requests: Vec<HomeRequest>,
    /// How often a master reports its channel in use, so its home does not expire.
    home_touch_ms: i64,
    /// Channels homed elsewhere that this node relays (see `relay`).
    relays: HashMap<String, relay::RelaySlot>,
    /// The relay of each bridge request in flight (a forward or a read), so an
    /// answer finds its relay without visiting every relay.
    bridge_reqs: HashMap<u64, String>,
    /// What to send over bridges, drained by the region task.
    bridge_out: Vec<BridgeOut>,
    /// Remote regions whose bridge link is up.
    links_up: BTreeSet<String>,
    /// Set when the node has bridges; without them channels homed elsewhere are refused.
    bridges: Option<BridgeLimits>,
    /// State requests of a handoff this node serves as the previous home, by request.
    handoffs: HashMap<u64, handoff::HandoffWait>,
    /// How long a new home waits for a previous home that does not answer.
    handoff_wait_ms: i64,
    /// Whether the region holds its sequencing lease from the global master.
    lease: bool,
    /// Presence limits and timings.
    presence: presence::PresenceSettings,
    /// What the periodic work visits: deadlines and the channels that may be waiting.
    schedule: Schedule,
    /// Messages to send, in order. Those addressed to this node are handled locally.
    pub out: Vec<(NodeId, ChannelMsg)>,
}

impl RegionState {
    pub fn new(me: &str, region: &str, replication: usize, limits: HistoryConfig) -> Self {
        let mut state = Self {
            me: me.to_owned(),
            region: region.to_owned(),
            replication: replication.max(1),
            limits,
            now_ms: now_ms(),
            live: BTreeSet::new(),
            known: 1,
            degraded: false,
            settled: true,
            ring: Ring::new(DEFAULT_VNODES),
            masters: HashMap::new(),
            replicas: HashMap::new(),
            acquiring: HashMap::new(),
            clients: HashMap::new(),
            both: 0,
            inflight_channels: HashMap::new(),
            history: HashMap::new(),
            next_req: 1,
            homes: HashMap::new(),
            home_asked: HashMap::new(),
            home_requests: Vec::new(),
            home_touch_ms: DEFAULT_HOME_TOUCH_MS,
            relays: HashMap::new(),
            bridge_reqs: HashMap::new(),
            bridge_out: Vec::new(),
            links_up: BTreeSet::new(),
            bridges: None,
            handoffs: HashMap::new(),
            handoff_wait_ms: handoff::DEFAULT_HANDOFF_WAIT_MS,
            lease: true,
            presence: presence::PresenceSettings::default(),
            schedule: Schedule::default(),
            out: Vec::new(),
        };
        state.set_view([me.to_owned()].into_iter().collect(), 1);
        state
    }

    /// Applies a new membership view: the ring is rebuilt over the live members,
    /// masters that moved step down, clients whose master moved follow it.
    pub fn set_view(&mut self, live: BTreeSet<NodeId>, known: usize) {
        let degraded = live.len() < self.replication;
        if degraded && !self.degraded {
            warn!(
                nodes.live = live.len(),
                copies.wanted = self.replication,
                "fewer live nodes than configured copies; acknowledging with the copies there are"
            );
        }
        metrics::gauge!("starling_copies_degraded").set(if degraded { 1.0 } else { 0.0 });
        self.degraded = degraded;
        self.live = live;
        self.known = known.max(1);
        self.ring = Ring::with_nodes(&self.live, DEFAULT_VNODES);
        crate::observe::ring_changed();
        self.rebalance_masters();
        self.reroute_clients();
        self.on_view_presence();
    }

    pub fn set_settled(&mut self, settled: bool) {
        self.settled = settled;
    }

    /// How often masters keep their channels' homes from expiring.
    pub fn set_home_touch_ms(&mut self, every_ms: i64) {
        self.home_touch_ms = every_ms.max(TICK_MS as i64);
        self.reschedule_touches();
    }

    /// Whether the region holds its sequencing lease: without it no channel is
    /// sequenced or relayed here (masters step down, publishes are refused).
    pub fn set_lease(&mut self, held: bool) {
        if self.lease == held {
            return;
        }
        self.lease = held;
        self.rebalance_masters();
        self.reroute_clients();
    }

    /// How long a new home waits for a previous home that does not hand over: at
    /// least the lease, so a previous home cut off from everything has stopped.
    pub fn set_handoff_wait_ms(&mut self, wait_ms: i64) {
        self.handoff_wait_ms = wait_ms;
    }

    pub fn set_clock(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// Periodic work: retry what waits on others, expire what waited too long, and
    /// forget channels with nothing left to keep. Each step visits only what is due
    /// or waiting (see `schedule`), never every channel.
    pub fn tick(&mut self) {
        self.schedule.visits = 0;
        self.retry_acquires();
        self.resend_to_lagging_copies();
        self.follow_unsettled();
        self.expire_publishes();
        self.retry_history();
        self.touch_homes();
        self.tick_relays();
        self.expire_handoffs();
        self.tick_presence();
        self.sweep();
    }

    /// Handles one message from a peer (or from this node to itself).
    pub fn on_msg(&mut self, from: NodeId, msg: ChannelMsg) {
        match msg {
            ChannelMsg::Subscribe { .. }
            | ChannelMsg::Unsubscribe { .. }
            | ChannelMsg::Publish { .. }
            | ChannelMsg::History { .. } => self.on_master_msg(from, msg),
            ChannelMsg::Subscribed {
                channel,
                position,
                missed,
                lost,
                members,
            } => self.on_subscribed(from, &channel, position, missed, lost, members),
            ChannelMsg::Sequenced {
                after,
                channel,
                position,
                frame,
            } => self.on_sequenced(from, &channel, after, position, frame),
            ChannelMsg::Published { req, result } => self.on_published(req, result),
            ChannelMsg::HistoryPage { req, result } => self.on_history_page(req, result),
            ChannelMsg::HomedElsewhere { channel, region } => {
                self.on_homed_elsewhere(from, &channel, &region);
                self.fail_history(&channel, &region);
            }
            ChannelMsg::NotMaster { channel } => {
                self.on_not_master(from, &channel);
                self.history
                    .values_mut()
                    .filter(|h| h.channel == channel)
                    .for_each(|h| h.sent = false);
            }
            ChannelMsg::Replicate {
                after,
                channel,
                epoch,
                entries,
                snapshot,
            } => self.on_replicate(from, &channel, epoch, after, entries, snapshot),
            ChannelMsg::Replicated {
                channel,
                epoch,
                upto,
            } => self.on_replicated(from, &channel, epoch, upto),
            ChannelMsg::Fenced { channel, epoch } => self.on_fenced(&channel, epoch),
            ChannelMsg::PresenceMeta { channel, epoch, op } => {
                self.on_presence_meta(&from, &channel, epoch, op)
            }
            ChannelMsg::StateRequest { channel } => self.on_state_request(from, &channel),
            ChannelMsg::HandoffRequest {
                channel,
                req,
                epoch,
            } => self.on_handoff_request(from, &channel, req, epoch),
            ChannelMsg::HandoffState { req, ready, state } => {
                self.on_handoff_state(req, ready, state)
            }
            ChannelMsg::StateReply {
                channel,
                ready,
                epoch,
                state,
            } => self.on_state_reply(from, &channel, ready, epoch, state),
        }
    }

    /// Reads history through the channel's master, wherever it is.
    pub fn history(&mut self, channel: &str, query: HistoryQuery, reply: HistoryReply) {
        let req = self.next_req();
        let request = HistoryRequest {
            channel: channel.to_owned(),
            query,
            reply,
            since_ms: self.now_ms,
            sent: false,
        };
        self.history.insert(req, request);
        self.retry_history();
    }

    /// Refuses the history reads of a channel homed in another region.
    fn fail_history(&mut self, channel: &str, region: &str) {
        let refused: Vec<u64> = (self.history.iter())
            .filter(|(_, h)| h.channel == channel && h.sent)
            .map(|(req, _)| *req)
            .collect();
        let error = AblyError::HomedElsewhere {
            channel: crate::channels::public_name(channel).to_owned(),
            region: region.to_owned(),
        };
        for req in refused {
            let request = self.history.remove(&req).expect("listed");
            let _ = request.reply.send(Err(error.to_info()));
        }
    }

    /// Times out and (re)sends pending history reads; there are only as many as
    /// readers wait for.
    fn retry_history(&mut self) {
        self.schedule.visits += self.history.len();
        let now = self.now_ms;
        let expired: Vec<u64> = self
            .history
            .iter()
            .filter(|(_, h)| now - h.since_ms > HISTORY_TIMEOUT_MS)
            .map(|(r, _)| *r)
            .collect();
        for req in expired {
            let request = self.history.remove(&req).expect("listed");
            let error = AblyError::Timeout("the channel's master did not answer".into());
            let _ = request.reply.send(Err(error.to_info()));
        }

        let mut sends = Vec::new();
        for (req, request) in self.history.iter_mut().filter(|(_, h)| !h.sent) {
            if let Some(owner) = self.ring.owner(&request.channel) {
                request.sent = true;
                let msg = ChannelMsg::History {
                    channel: request.channel.clone(),
                    req: *req,
                    query: request.query.clone(),
                };
                sends.push((owner.to_owned(), msg));
            }
        }
        for (to, msg) in sends {
            self.send(to, msg);
        }
    }

    fn on_history_page(&mut self, req: u64, result: Result<HistoryPage, ErrorInfo>) {
        if let Some(request) = self.history.remove(&req) {
            let _ = request.reply.send(result);
        }
    }

    /// Expires history, and forgets masters nobody uses and copies with nothing left,
    /// visiting only the channels whose next expiry or idle time has come.
    fn sweep(&mut self) {
        for (at, channel) in self.schedule.sweeps.take_due(self.now_ms) {
            self.schedule.visits += 1;
            self.sweep_master(&channel, at);
            self.sweep_replica(&channel, at);
            self.schedule_sweep(&channel);
        }
    }

    /// The sweep of a master, if the entry due `at` is its own (not a stale one).
    fn sweep_master(&mut self, channel: &str, at: i64) {
        let now = self.now_ms;
        let Some(slot) = self.masters.get_mut(channel) else {
            return;
        };
        if slot.sweep_at != Some(at) {
            return;
        }
        slot.sweep_at = None;
        slot.core.expire(now);
        if slot.may_forget() && slot.core.is_idle(now) {
            self.forget_master(channel);
        }
    }

    fn sweep_replica(&mut self, channel: &str, at: i64) {
        let now = self.now_ms;
        let Some(replica) = self.replicas.get_mut(channel) else {
            return;
        };
        if replica.sweep_at != Some(at) {
            return;
        }
        replica.sweep_at = None;
        replica.core.expire(now);
        if replica.core.is_idle(now) {
            self.replicas.remove(channel);
        }
    }

    /// Queues the next sweep of `channel`'s master and copy, when it comes before the
    /// one queued. Called after every change to either that can bring it forward: new
    /// entries, a restored state, the last subscriber or uncommitted publish gone.
    pub(super) fn schedule_sweep(&mut self, channel: &str) {
        // A master still used is not forgotten when idle: its idle time does not count
        // until it may be (the change that allows it schedules it again).
        let master = (self.masters.get_mut(channel)).and_then(|slot| {
            let due = slot.core.next_due(slot.may_forget());
            schedule::earlier(&mut slot.sweep_at, due)
        });
        let replica = (self.replicas.get_mut(channel)).and_then(|replica| {
            schedule::earlier(&mut replica.sweep_at, replica.core.next_due(true))
        });
        for at in master.into_iter().chain(replica) {
            self.schedule.sweeps.schedule(at, channel.to_owned());
        }
    }

    /// Channels with a master or a ChannelClient here (or both), without a walk: the
    /// gauges read it every second.
    pub fn channel_count(&self) -> usize {
        self.clients.len() + self.masters.len() - self.both
    }

    fn insert_master(&mut self, channel: &str, slot: MasterSlot) {
        let new = self.masters.insert(channel.to_owned(), slot).is_none();
        if new && self.clients.contains_key(channel) {
            self.both += 1;
        }
    }

    fn forget_master(&mut self, channel: &str) -> Option<MasterSlot> {
        let slot = self.masters.remove(channel)?;
        if self.clients.contains_key(channel) {
            self.both -= 1;
        }
        Some(slot)
    }

    fn forget_client(&mut self, channel: &str) {
        let had = self.clients.remove(channel).is_some();
        if had && self.masters.contains_key(channel) {
            self.both -= 1;
        }
    }

    pub fn masters_count(&self) -> usize {
        self.masters.len()
    }

    fn send(&mut self, to: NodeId, msg: ChannelMsg) {
        self.out.push((to, msg));
    }

    fn next_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Handles messages this node sent itself, until none are left, and returns what
    /// must go to peers.
    pub fn drain(&mut self) -> Vec<(NodeId, ChannelMsg)> {
        let mut remote = Vec::new();
        // Each round may produce more local messages; the loop ends because every
        // local exchange is a bounded request/reply chain.
        while !self.out.is_empty() {
            let batch = std::mem::take(&mut self.out);
            for (to, msg) in batch {
                if to == self.me {
                    let me = self.me.clone();
                    self.on_msg(me, msg);
                } else {
                    remote.push((to, msg));
                }
            }
        }
        remote
    }
}

/// A command from a connection or REST handler to the node's region task.
// Each message is moved once per hop; boxing the big variants would cost an
// allocation per message on the publish path to save a memcpy.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Attach {
        channel: String,
        subscriber: Subscriber,
        attached: ProtocolMessage,
        /// Where the attachment starts: live, after a serial, or rewound.
        start: Start,
    },
    Detach {
        channel: String,
        connection_id: String,
        /// When the connection's presence members leave.
        leave: Leave,
    },
    /// A client asks for the channel's members again (SYNC).
    Sync {
        channel: String,
        connection_id: String,
    },
    Publish {
        channel: String,
        publish: Publish,
        reply: PublishReply,
    },
    History {
        channel: String,
        query: HistoryQuery,
        reply: HistoryReply,
    },
    Occupancy {
        channel: String,
        reply: oneshot::Sender<Occupancy>,
    },
    Stats {
        /// Whether to rank the busiest channels too (a walk over every channel).
        busiest: bool,
        reply: oneshot::Sender<RegionStats>,
    },
    Placement {
        channel: String,
        reply: oneshot::Sender<Placement>,
    },
    Handoff {
        channel: String,
        epoch: u64,
        reply: oneshot::Sender<Result<Option<crate::channel_master::Snapshot>, ()>>,
    },
}

/// Where a channel lives in this node's current view.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Placement {
    pub channel: String,
    /// The master first, then the copy holders.
    pub owners: Vec<NodeId>,
    /// The epoch this node sequences the channel under, when it is the master.
    pub epoch: Option<u64>,
    /// The channel's home region as this node knows it, if it has one.
    pub home: Option<String>,
    /// Whether this node relays the channel from its home (another region).
    pub relaying: bool,
}

/// The handle connections and REST use to reach the region task.
#[derive(Clone)]
pub struct Region {
    tx: mpsc::UnboundedSender<Command>,
    quorum: watch::Receiver<bool>,
}

impl Region {
    /// Starts the region task. Without a mesh, the node is a region of one. Channel
    /// homes come from (and are asked of) the control plane.
    pub fn start(
        settings: RegionSettings,
        control: Arc<ControlPlane>,
        mesh: Option<MeshLink>,
        bridges: Option<BridgeLink>,
    ) -> Region {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = RegionState::new(
            &settings.node_id,
            &settings.region,
            settings.replication,
            settings.limits,
        );
        state.set_home_touch_ms(settings.home_touch_ms);
        state.set_handoff_wait_ms(settings.handoff_wait_ms);
        state.set_presence(settings.max_presence_members, settings.failure_timeout_ms);
        if let Some(link) = &bridges {
            state.enable_bridges(link.max_held, link.hold_ms);
        }
        let (quorum_tx, quorum) = watch::channel(true);
        tokio::spawn(run(state, rx, mesh, control, bridges, quorum_tx));
        Region { tx, quorum }
    }

    /// Watches whether this node sees a majority of its region (and so may serve).
    pub fn quorum(&self) -> watch::Receiver<bool> {
        self.quorum.clone()
    }

    pub fn attach(
        &self,
        channel: &str,
        subscriber: Subscriber,
        attached: ProtocolMessage,
        start: Start,
    ) {
        let _ = self.tx.send(Command::Attach {
            channel: channel.to_owned(),
            subscriber,
            attached,
            start,
        });
    }

    pub fn detach(&self, channel: &str, connection_id: &str, leave: Leave) {
        let _ = self.tx.send(Command::Detach {
            channel: channel.to_owned(),
            connection_id: connection_id.to_owned(),
            leave,
        });
    }

    /// Sends the attachment of `connection_id` a full SYNC of the channel's members.
    pub fn sync(&self, channel: &str, connection_id: &str) {
        let _ = self.tx.send(Command::Sync {
            channel: channel.to_owned(),
            connection_id: connection_id.to_owned(),
        });
    }

    pub fn publish(
        &self,
        channel: &str,
        publish: Publish,
    ) -> oneshot::Receiver<Result<Vec<Option<String>>, ErrorInfo>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Publish {
            channel: channel.to_owned(),
            publish,
            reply,
        });
        rx
    }

    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ErrorInfo> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::History {
            channel: channel.to_owned(),
            query,
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err(AblyError::Internal("region task ended".into()).to_info()))
    }

    pub async fn occupancy(&self, channel: &str) -> Occupancy {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Occupancy {
            channel: channel.to_owned(),
            reply,
        });
        rx.await.unwrap_or_default()
    }

    pub async fn placement(&self, channel: &str) -> Placement {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Placement {
            channel: channel.to_owned(),
            reply,
        });
        rx.await.unwrap_or_default()
    }

    /// As the channel's previous home: its state once this region's master of it has
    /// seen the move to a home under `epoch`; `Err` while it has not.
    pub async fn handoff(
        &self,
        channel: &str,
        epoch: u64,
    ) -> Result<Option<crate::channel_master::Snapshot>, ()> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Handoff {
            channel: channel.to_owned(),
            epoch,
            reply,
        });
        rx.await.unwrap_or(Err(()))
    }

    /// The node's counts, without `busiest` (the gauges read this every second).
    pub async fn stats(&self) -> RegionStats {
        self.ask_stats(false).await
    }

    /// The counts and the busiest channels, for the dashboard.
    pub async fn stats_with_busiest(&self) -> RegionStats {
        self.ask_stats(true).await
    }

    async fn ask_stats(&self, busiest: bool) -> RegionStats {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Stats { busiest, reply });
        rx.await.unwrap_or_default()
    }
}

/// What the region task is started with.
pub struct RegionSettings {
    pub node_id: String,
    pub handoff_wait_ms: i64,
    pub region: String,
    pub replication: usize,
    pub limits: HistoryConfig,
    pub home_touch_ms: i64,
    /// Presence members a channel may hold.
    pub max_presence_members: usize,
    /// How long after a peer's last sign of life the mesh declares it dead.
    pub failure_timeout_ms: i64,
}

/// The region task's links to other regions: where to send relays' requests, and
/// what the links report.
pub struct BridgeLink {
    pub dialer: crate::bridge::Dialer,
    pub events: mpsc::UnboundedReceiver<BridgeIn>,
    pub max_held: usize,
    pub hold_ms: i64,
}

/// The region task's connection to the mesh.
pub struct MeshLink {
    pub mesh: Mesh,
    pub inbound: mpsc::UnboundedReceiver<(NodeId, ChannelMsg)>,
}

async fn run(
    mut state: RegionState,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mesh: Option<MeshLink>,
    control: Arc<ControlPlane>,
    bridges: Option<BridgeLink>,
    quorum: watch::Sender<bool>,
) {
    let (mut dialer, mut bridge_events) = match bridges {
        Some(link) => (Some(link.dialer), Some(link.events)),
        None => (None, None),
    };
    let mut lease = control.lease();
    state.set_lease(*lease.borrow_and_update());
    quorum.send_replace(state.has_quorum());
    let (homes, mut home_events) = control.follow_homes();
    state.replace_homes(homes);

    let (mesh, mut inbound, mut views) = match mesh {
        Some(link) => {
            let views = link.mesh.watch();
            (Some(link.mesh), Some(link.inbound), Some(views))
        }
        None => (None, None, None),
    };
    if let Some(views) = &mut views {
        apply_view(&mut state, &views.borrow_and_update());
    }
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(TICK_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                state.set_clock(now_ms());
                handle_command(&mut state, command);
            }
            Some((from, msg)) = recv_inbound(&mut inbound) => {
                state.set_clock(now_ms());
                state.on_msg(from, msg);
            }
            Ok(()) = changed(&mut views) => {
                state.set_clock(now_ms());
                let view = views.as_mut().expect("changed implies a watch").borrow_and_update().clone();
                apply_view(&mut state, &view);
                quorum.send_if_modified(|q| std::mem::replace(q, state.has_quorum()) != *q);
            }
            Some(event) = home_events.recv() => {
                state.set_clock(now_ms());
                match event {
                    HomeEvent::Set(channel, home) => state.set_home(&channel, home),
                    HomeEvent::Replace(homes) => state.replace_homes(homes),
                }
            }
            Ok(()) = lease.changed() => {
                state.set_clock(now_ms());
                state.set_lease(*lease.borrow_and_update());
                quorum.send_if_modified(|q| std::mem::replace(q, state.has_quorum()) != *q);
            }
            Some(event) = recv_bridge(&mut bridge_events) => {
                state.set_clock(now_ms());
                state.on_bridge(event);
            }
            _ = ticker.tick() => {
                state.set_clock(now_ms());
                state.set_silent_regions(control.silent_regions());
                state.tick();
            }
        }

        for out in state.take_bridge_out() {
            match &mut dialer {
                Some(dialer) => dialer.send(out),
                None => debug!(?out, "no bridges; dropped"),
            }
        }

        control.ask_homes(state.take_home_requests());

        for (to, msg) in state.drain() {
            match &mesh {
                Some(mesh) => {
                    if !mesh.send(&to, msg) {
                        debug!(peer.id = %to, "no link to peer; message dropped");
                    }
                }
                None => debug!(peer.id = %to, "no mesh; message dropped"),
            }
        }
    }
}

fn apply_view(state: &mut RegionState, view: &MeshView) {
    let live: BTreeSet<NodeId> = view.live.keys().cloned().collect();
    info!(
        nodes.live = live.len(),
        nodes.known = view.known,
        version = view.version,
        "region view changed"
    );
    state.set_settled(view.settled);
    state.set_view(live, view.known);
}

async fn recv_inbound(
    inbound: &mut Option<mpsc::UnboundedReceiver<(NodeId, ChannelMsg)>>,
) -> Option<(NodeId, ChannelMsg)> {
    match inbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_bridge(events: &mut Option<mpsc::UnboundedReceiver<BridgeIn>>) -> Option<BridgeIn> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn changed(
    views: &mut Option<watch::Receiver<MeshView>>,
) -> Result<(), watch::error::RecvError> {
    match views {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

fn handle_command(state: &mut RegionState, command: Command) {
    match command {
        Command::Attach {
            channel,
            subscriber,
            attached,
            start,
        } => state.attach(&channel, subscriber, attached, start),
        Command::Detach {
            channel,
            connection_id,
            leave,
        } => state.detach(&channel, &connection_id, leave),
        Command::Sync {
            channel,
            connection_id,
        } => state.sync(&channel, &connection_id),
        Command::Publish {
            channel,
            publish,
            reply,
        } => state.publish(&channel, publish, reply),
        Command::History {
            channel,
            query,
            reply,
        } => state.history(&channel, query, reply),
        Command::Occupancy { channel, reply } => {
            let _ = reply.send(state.local_occupancy(&channel));
        }
        Command::Placement { channel, reply } => {
            let placement = Placement {
                owners: state.ring.owners(&channel, state.replication),
                epoch: state.masters.get(&channel).map(|m| m.core.epoch()),
                home: state.homes.get(&channel).map(|h| h.region.clone()),
                relaying: state.relays.contains_key(&channel),
                channel: crate::channels::public_name(&channel).to_owned(),
            };
            let _ = reply.send(placement);
        }
        Command::Handoff {
            channel,
            epoch,
            reply,
        } => state.handoff(&channel, epoch, reply),
        Command::Stats { busiest, reply } => {
            let mut stats = state.stats();
            if busiest {
                stats.busiest = state.busiest();
            }
            let _ = reply.send(stats);
        }
    }
}
