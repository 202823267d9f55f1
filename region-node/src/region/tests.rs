//! Deterministic simulations of the region state machine: several [`RegionState`]s
//! joined by in-memory FIFO links, one per (from, to) pair, with crashes, partitions
//! and view changes injected between any two messages. No sockets, no tasks, no wall
//! clock: every run is the same run.
//!
//! Each test reads as phases. When one fails, the simulation prints the tail of its
//! trace (views, publishes and every message delivered or dropped) to show how it got
//! there.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::sync::oneshot::{self, error::TryRecvError};

use super::msg::ChannelMsg;
use super::{HomeRequest, HomeView, NodeId, RegionState, TICK_MS};
use crate::channel_client::Subscriber;
use crate::channel_master::{Entry, HistoryQuery, Publish};
use crate::config::HistoryConfig;
use crate::outbox::{self, Inbox, Outgoing};
use crate::position::Position;
use crate::protocol::{
    action, codec, flags, Data, Encoded, ErrorInfo, Format, Message, ProtocolMessage,
};
use crate::ring::{Ring, DEFAULT_VNODES};

const START_MS: i64 = 1_000_000;
/// The region every simulated node belongs to.
const REGION: &str = "local";
const REPLICATION: usize = 2;
/// How long a local publish waits for a master before it is refused (mirrors
/// `client::PUBLISH_TIMEOUT_MS`).
const CLIENT_PUBLISH_TIMEOUT_MS: i64 = 15_000;
/// The Ably code for "try again, elsewhere or later" (`AblyError::Timeout` and
/// `AblyError::NoQuorum`).
const UNAVAILABLE_CODE: i64 = 50003;

type Link = (NodeId, NodeId);
/// A position's epoch.
type Epoch = u64;
type PublishOutcome = Result<Vec<Option<String>>, ErrorInfo>;

// ---------------------------------------------------------------------------------
// The simulated region
// ---------------------------------------------------------------------------------

struct Sim {
    nodes: BTreeMap<NodeId, RegionState>,
    /// Messages on their way, per link, in the order they were sent.
    links: BTreeMap<Link, VecDeque<ChannelMsg>>,
    /// Links whose traffic waits (a slow or stalled peer); released later.
    held: BTreeSet<Link>,
    /// Links whose traffic is lost (a broken connection).
    cut: BTreeSet<Link>,
    now: i64,
    /// Every message delivered, in delivery order.
    delivered: Vec<(NodeId, NodeId, ChannelMsg)>,
    /// Which node sequenced each (channel, epoch): never two.
    sequencers: BTreeMap<(String, Epoch), NodeId>,
    /// The simulated global master's channel homes. An assignment reaches every
    /// running node at once, as the catalog watch would.
    homes: BTreeMap<String, HomeView>,
    /// While set, home requests go unanswered (the global master has no quorum).
    homes_unreachable: bool,
    trace: Vec<String>,
}

impl Sim {
    /// Nodes that do not know each other yet: each sees only itself.
    fn start(names: &[&str]) -> Sim {
        let mut sim = Sim {
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
            held: BTreeSet::new(),
            cut: BTreeSet::new(),
            now: START_MS,
            delivered: Vec::new(),
            sequencers: BTreeMap::new(),
            homes: BTreeMap::new(),
            homes_unreachable: false,
            trace: Vec::new(),
        };
        for name in names {
            let mut state = RegionState::new(name, REGION, REPLICATION, HistoryConfig::default());
            state.set_clock(START_MS);
            sim.nodes.insert(name.to_string(), state);
        }
        sim
    }

    /// Nodes that all see each other.
    fn region(names: &[&str]) -> Sim {
        let mut sim = Sim::start(names);
        sim.set_views(names, names, names.len());
        sim
    }

    fn phase(&mut self, title: &str) {
        eprintln!("=== {title}");
        self.note(format!("=== {title}"));
    }

    fn note(&mut self, line: String) {
        self.trace.push(line);
    }

    fn state(&mut self, node: &str) -> &mut RegionState {
        self.nodes
            .get_mut(node)
            .unwrap_or_else(|| panic!("{node} is not running"))
    }

    /// Hands what `node` wants to send to the network (messages to itself were
    /// already handled by `drain`), and checks that no other node ever sequenced a
    /// channel under an epoch this node sequences it under, and that the node's kept
    /// channel count is what its maps hold.
    fn flush(&mut self, node: &str) {
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        let out = state.drain();
        let names: BTreeSet<&String> = state.masters.keys().chain(state.clients.keys()).collect();
        assert_eq!(
            state.channel_count(),
            names.len(),
            "{node} counts its channels"
        );
        let masters: Vec<(String, Epoch)> = state
            .masters
            .iter()
            .map(|(channel, slot)| (channel.clone(), slot.core.epoch()))
            .collect();
        for (to, msg) in out {
            let link = (node.to_owned(), to.clone());
            if !self.nodes.contains_key(&to) || self.cut.contains(&link) {
                self.note(format!("  lost {node}->{to}: {}", describe(&msg)));
                continue;
            }
            self.links.entry(link).or_default().push_back(msg);
        }
        for key in masters {
            let first = self
                .sequencers
                .entry(key.clone())
                .or_insert_with(|| node.to_owned());
            assert_eq!(
                first, node,
                "two nodes sequence {} under epoch {}",
                key.0, key.1
            );
        }
        self.answer_home_requests(node);
    }

    /// The simulated global master answers `node`'s home requests: a channel without
    /// a home is homed in the asker's region, under an epoch from the clock.
    fn answer_home_requests(&mut self, node: &str) {
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        let requests = state.take_home_requests();
        if self.homes_unreachable {
            return;
        }
        for request in requests {
            // Touches only keep a home from expiring, and nothing expires here.
            let HomeRequest::Assign { channel } = request else {
                continue;
            };
            if self.homes.contains_key(&channel) {
                continue;
            }
            let home = HomeView {
                region: REGION.to_owned(),
                epoch: self.now as u64,
                previous: None,
            };
            self.set_home(&channel, home);
        }
    }

    /// The global master records a home (an assignment or an operator's move), and
    /// every running node's catalog copy follows.
    fn set_home(&mut self, channel: &str, home: HomeView) {
        self.note(format!(
            "home of {channel}: {} epoch {}",
            home.region, home.epoch
        ));
        self.homes.insert(channel.to_owned(), home.clone());
        let names: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for name in names {
            self.state(&name).set_home(channel, Some(home.clone()));
            self.flush(&name);
        }
    }

    fn set_view(&mut self, node: &str, live: &[&str], known: usize) {
        self.note(format!("{node}: view {live:?} of {known}"));
        let live = live.iter().map(|n| n.to_string()).collect();
        self.state(node).set_view(live, known);
        self.flush(node);
    }

    fn set_views(&mut self, nodes: &[&str], live: &[&str], known: usize) {
        for node in nodes {
            self.set_view(node, live, known);
        }
    }

    /// Delivers the oldest message on one link; false when there is none.
    fn deliver_one(&mut self, from: &str, to: &str) -> bool {
        let link = (from.to_owned(), to.to_owned());
        let Some(msg) = self.links.get_mut(&link).and_then(VecDeque::pop_front) else {
            return false;
        };
        self.note(format!("  {from}->{to}: {}", describe(&msg)));
        self.delivered
            .push((from.to_owned(), to.to_owned(), msg.clone()));
        self.state(to).on_msg(from.to_owned(), msg);
        self.flush(to);
        true
    }

    /// Delivers what is queued on one link now (held or not), and nothing else.
    fn deliver_link(&mut self, from: &str, to: &str) {
        let queued = self
            .links
            .get(&(from.to_owned(), to.to_owned()))
            .map_or(0, VecDeque::len);
        for _ in 0..queued {
            self.deliver_one(from, to);
        }
    }

    fn ready_links(&self) -> Vec<Link> {
        self.links
            .iter()
            .filter(|(link, queue)| !queue.is_empty() && !self.held.contains(*link))
            .map(|(link, _)| link.clone())
            .collect()
    }

    /// Delivers until nothing is left but held traffic.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some((from, to)) = self.ready_links().into_iter().next() else {
                return;
            };
            self.deliver_one(&from, &to);
        }
        panic!("the network never settled");
    }

    /// Delivers up to `count` messages, each from a link picked at random: every
    /// link stays FIFO, but links interleave in any order.
    fn deliver_random(&mut self, rng: &mut Rng, count: usize) {
        for _ in 0..count {
            let ready = self.ready_links();
            if ready.is_empty() {
                return;
            }
            let (from, to) = ready[rng.below(ready.len())].clone();
            self.deliver_one(&from, &to);
        }
    }

    fn settle_random(&mut self, rng: &mut Rng) {
        while !self.ready_links().is_empty() {
            self.deliver_random(rng, 1);
        }
    }

    fn hold(&mut self, from: &str, to: &str) {
        self.note(format!("hold {from}->{to}"));
        self.held.insert((from.to_owned(), to.to_owned()));
    }

    fn release(&mut self, from: &str, to: &str) {
        self.note(format!("release {from}->{to}"));
        self.held.remove(&(from.to_owned(), to.to_owned()));
    }

    /// Breaks the connection between two nodes: what is on its way is lost, and so is
    /// whatever they send each other until `mend`.
    fn cut(&mut self, x: &str, y: &str) {
        self.note(format!("cut {x}<->{y}"));
        for link in [(x.to_owned(), y.to_owned()), (y.to_owned(), x.to_owned())] {
            if let Some(queue) = self.links.remove(&link) {
                for msg in queue {
                    self.note(format!("  lost {}->{}: {}", link.0, link.1, describe(&msg)));
                }
            }
            self.cut.insert(link);
        }
    }

    fn mend(&mut self, x: &str, y: &str) {
        self.note(format!("mend {x}<->{y}"));
        self.cut.remove(&(x.to_owned(), y.to_owned()));
        self.cut.remove(&(y.to_owned(), x.to_owned()));
    }

    /// The node crashes: its state and all traffic to or from it are gone, and every
    /// survivor's view drops it (each keeps its known count, so quorum still counts it).
    fn kill(&mut self, node: &str) {
        self.note(format!("kill {node}"));
        self.nodes.remove(node);
        let dead: Vec<Link> = self
            .links
            .keys()
            .filter(|(from, to)| from == node || to == node)
            .cloned()
            .collect();
        for link in dead {
            for msg in self.links.remove(&link).unwrap_or_default() {
                self.note(format!("  lost {}->{}: {}", link.0, link.1, describe(&msg)));
            }
        }
        let survivors: Vec<String> = self.nodes.keys().cloned().collect();
        let live: Vec<&str> = survivors.iter().map(String::as_str).collect();
        for survivor in &live {
            let known = self.nodes[*survivor].known;
            self.set_view(survivor, &live, known);
        }
    }

    /// Advances the clock by one tick on every node.
    fn tick(&mut self) {
        self.now += TICK_MS as i64;
        let names: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for name in names {
            let now = self.now;
            let state = self.state(&name);
            state.set_clock(now);
            state.tick();
            self.flush(&name);
        }
    }

    /// Lets `ms` pass, tick by tick, delivering everything after each tick.
    fn run_for(&mut self, ms: i64) {
        let end = self.now + ms;
        while self.now < end {
            self.tick();
            self.settle();
        }
    }

    /// A connection on `node` attaches to `channel`, in `format`.
    fn attach(&mut self, node: &str, channel: &str, conn: &str, format: Format) -> Conn {
        self.note(format!("{node}: {conn} attaches"));
        let (outbox, inbox) = outbox::channel(conn.into(), "app".into(), format, 1 << 24);
        let subscriber = Subscriber {
            outbox,
            modes: flags::SUBSCRIBE | flags::PUBLISH,
            echo: true,
            sync_always: false,
        };
        let attached = ProtocolMessage::for_channel(action::ATTACHED, channel);
        self.state(node)
            .attach(channel, subscriber, attached, super::Start::Live);
        self.flush(node);
        Conn {
            label: format!("{conn}@{node}"),
            inbox,
            frames: Vec::new(),
        }
    }

    /// Connection `conn` on `node` publishes its message number `n`, named `conn#n`
    /// with id `conn:n:0`.
    fn publish(&mut self, node: &str, channel: &str, conn: &str, n: u32) -> Ack {
        let name = format!("{conn}#{n}");
        self.note(format!("{node}: publish {name}"));
        let publish = Publish::messages(
            vec![Message {
                name: Some(name.clone()),
                data: Some(Data::Text(name.clone())),
                ..Message::default()
            }],
            format!("{conn}:{n}"),
            Some(conn.to_owned()),
        );
        let (reply, rx) = oneshot::channel();
        self.state(node).publish(channel, publish, reply);
        self.flush(node);
        Ack {
            name,
            rx,
            outcome: None,
        }
    }

    /// The channel's history read through `node`, oldest first.
    fn history(&mut self, node: &str, channel: &str) -> Vec<Message> {
        let (reply, mut rx) = oneshot::channel();
        let query = HistoryQuery {
            limit: 1_000,
            forwards: true,
            ..HistoryQuery::default()
        };
        self.state(node).history(channel, query, reply);
        self.flush(node);
        self.settle();
        rx.try_recv()
            .expect("history answered")
            .expect("history read")
            .messages
    }

    /// The epoch `node` sequences `channel` under, if it is its master now.
    fn master_epoch(&self, node: &str, channel: &str) -> Option<Epoch> {
        self.nodes[node]
            .masters
            .get(channel)
            .map(|slot| slot.core.epoch())
    }

    /// How far `node`'s copy of `channel` reaches.
    fn copy_position(&self, node: &str, channel: &str) -> Option<Position> {
        self.nodes[node]
            .replicas
            .get(channel)
            .map(|replica| replica.core.position())
    }

    fn is_acquiring(&self, node: &str, channel: &str) -> bool {
        self.nodes[node].acquiring.contains_key(channel)
    }

    /// State replies `from` gave `to`, as (ready, last position of the state sent).
    fn state_replies(&self, from: &str, to: &str) -> Vec<(bool, Option<Position>)> {
        self.delivered
            .iter()
            .filter(|(f, t, _)| f == from && t == to)
            .filter_map(|(_, _, msg)| match msg {
                ChannelMsg::StateReply { ready, state, .. } => {
                    Some((*ready, state.as_ref().map(|s| s.last)))
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let skip = self.trace.len().saturating_sub(400);
            eprintln!(
                "--- simulation trace (last {} lines)",
                self.trace.len() - skip
            );
            for line in &self.trace[skip..] {
                eprintln!("{line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Connections and publish outcomes
// ---------------------------------------------------------------------------------

/// A local connection's end of its outbox: the frames the node queued for it.
struct Conn {
    label: String,
    inbox: Inbox,
    frames: Vec<ProtocolMessage>,
}

impl Conn {
    fn frames(&mut self) -> &[ProtocolMessage] {
        while let Some(item) = self.inbox.try_recv() {
            let frame = match item {
                Outgoing::Frame(Encoded::Text(text)) => codec::decode_json(text.as_str()),
                Outgoing::Frame(Encoded::Binary(bytes)) => codec::decode_msgpack(&bytes),
                other => panic!("{} was cut off: {other:?}", self.label),
            };
            let mut frame = frame.expect("a frame the node encoded decodes");
            frame.fill_from_parent();
            self.frames.push(frame);
        }
        &self.frames
    }

    /// The ATTACHED frame, which must come before anything else.
    fn attached(&mut self) -> ProtocolMessage {
        let label = self.label.clone();
        let first = self
            .frames()
            .first()
            .unwrap_or_else(|| panic!("{label} got no ATTACHED"))
            .clone();
        assert_eq!(first.action, action::ATTACHED, "{label}: first frame");
        let attached = self
            .frames()
            .iter()
            .filter(|f| f.action == action::ATTACHED);
        assert_eq!(attached.count(), 1, "{label}: one ATTACHED");
        first
    }

    /// Every message delivered, in delivery order.
    fn messages(&mut self) -> Vec<Message> {
        self.frames()
            .iter()
            .filter(|f| f.action == action::MESSAGE)
            .flat_map(|f| f.messages.clone().unwrap_or_default())
            .collect()
    }

    fn names(&mut self) -> Vec<String> {
        names(&self.messages())
    }
}

/// The reply to one publish, read without waiting.
struct Ack {
    name: String,
    rx: oneshot::Receiver<PublishOutcome>,
    outcome: Option<PublishOutcome>,
}

impl Ack {
    fn outcome(&mut self) -> Option<&PublishOutcome> {
        if self.outcome.is_none() {
            match self.rx.try_recv() {
                Ok(outcome) => self.outcome = Some(outcome),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Closed) => panic!("{}: dropped without an answer", self.name),
            }
        }
        self.outcome.as_ref()
    }

    fn is_pending(&mut self) -> bool {
        self.outcome().is_none()
    }

    fn is_acked(&mut self) -> bool {
        matches!(self.outcome(), Some(Ok(_)))
    }

    /// The serial of the acknowledged message.
    fn serial(&mut self) -> String {
        let name = self.name.clone();
        match self.outcome() {
            Some(Ok(serials)) => serials[0].clone().expect("a serial"),
            other => panic!("{name} is not acknowledged: {other:?}"),
        }
    }

    fn position(&mut self) -> Position {
        self.serial().parse().expect("a serial parses")
    }

    fn error(&mut self) -> ErrorInfo {
        let name = self.name.clone();
        match self.outcome() {
            Some(Err(error)) => error.clone(),
            other => panic!("{name} was not refused: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// A small deterministic generator (xorshift) to interleave links.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn ring(nodes: &[&str]) -> Ring {
    let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    Ring::with_nodes(&names, DEFAULT_VNODES)
}

/// The first channel name placed the way a test needs.
fn channel_where(fits: impl Fn(&str) -> bool) -> String {
    (0..100_000)
        .map(|i| format!("app/ch-{i}"))
        .find(|name| fits(name))
        .expect("some channel name fits")
}

/// A channel whose master and copy holders on the ring over `nodes` are `owners`.
fn channel_owned_by(nodes: &[&str], owners: &[&str]) -> String {
    let ring = ring(nodes);
    channel_where(|name| ring.owners(name, owners.len()) == owners)
}

fn pos(epoch: Epoch, seq: u64) -> Position {
    Position::new(epoch, seq)
}

fn serial(epoch: Epoch, seq: u64) -> String {
    pos(epoch, seq).to_string()
}

fn names(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.name.clone().unwrap_or_default())
        .collect()
}

fn serials(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.serial.clone().expect("a delivered message has a serial"))
        .collect()
}

/// Every connection saw the same messages with the same serials, each once, with
/// serials strictly increasing. Returns that one sequence.
fn assert_one_order(conns: &mut [&mut Conn]) -> Vec<Message> {
    let mut first: Option<(String, Vec<Message>)> = None;
    for conn in conns.iter_mut() {
        let messages = conn.messages();
        let ids: BTreeSet<_> = messages.iter().map(|m| m.id.clone()).collect();
        assert_eq!(
            ids.len(),
            messages.len(),
            "{} got a message twice: {:?}",
            conn.label,
            names(&messages)
        );
        let serials = serials(&messages);
        assert!(
            serials.windows(2).all(|w| w[0] < w[1]),
            "{}: serials not strictly increasing: {serials:?}",
            conn.label
        );
        match &first {
            None => first = Some((conn.label.clone(), messages)),
            Some((label, expected)) => {
                let seen: Vec<(Option<String>, Option<String>)> = messages
                    .iter()
                    .map(|m| (m.id.clone(), m.serial.clone()))
                    .collect();
                let wanted: Vec<(Option<String>, Option<String>)> = expected
                    .iter()
                    .map(|m| (m.id.clone(), m.serial.clone()))
                    .collect();
                assert_eq!(seen, wanted, "{} and {label} disagree", conn.label);
            }
        }
    }
    first.map(|(_, messages)| messages).unwrap_or_default()
}

/// The messages of publisher `conn` appear as `conn#1..=count`, in that order.
fn assert_publisher_order(messages: &[Message], conn: &str, count: u32) {
    let prefix = format!("{conn}#");
    let own: Vec<String> = names(messages)
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let wanted: Vec<String> = (1..=count).map(|n| format!("{conn}#{n}")).collect();
    assert_eq!(own, wanted, "{conn}'s messages out of its order");
}

fn short(position: &Position) -> String {
    format!("{}.{}", position.epoch, position.seq)
}

fn entry_names(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.body {
            crate::channel_master::Body::Message(m) => m.name.clone().unwrap_or_default(),
            crate::channel_master::Body::Presence(p) => format!("presence {}", p.message.action),
        })
        .collect()
}

/// One line per message for the trace.
fn describe(msg: &ChannelMsg) -> String {
    match msg {
        ChannelMsg::Subscribe { channel, from } => {
            format!("Subscribe {channel} from {:?}", from.as_ref().map(short))
        }
        ChannelMsg::Unsubscribe { channel } => format!("Unsubscribe {channel}"),
        ChannelMsg::HandoffRequest {
            channel,
            req,
            epoch,
        } => {
            format!("HandoffRequest {channel} req {req} epoch {epoch}")
        }
        ChannelMsg::HandoffState { req, ready, .. } => format!("HandoffState req {req} {ready}"),
        ChannelMsg::HomedElsewhere { channel, region } => {
            format!("HomedElsewhere {channel} in {region}")
        }
        ChannelMsg::Publish {
            channel,
            req,
            publish,
        } => format!("Publish {channel} req {req} {:?}", names(&publish.messages)),
        ChannelMsg::History { channel, req, .. } => format!("History {channel} req {req}"),
        ChannelMsg::Subscribed {
            channel,
            position,
            missed,
            lost,
            ..
        } => format!(
            "Subscribed {channel} at {} missed {:?} lost {lost}",
            short(position),
            entry_names(missed)
        ),
        ChannelMsg::Sequenced {
            channel,
            position,
            frame,
            ..
        } => format!(
            "Sequenced {channel} {} {:?}",
            short(position),
            names(frame.messages.as_deref().unwrap_or_default())
        ),
        ChannelMsg::Published { req, result } => format!("Published req {req} {result:?}"),
        ChannelMsg::HistoryPage { req, result } => format!(
            "HistoryPage req {req} {:?}",
            result.as_ref().map(|p| names(&p.messages))
        ),
        ChannelMsg::NotMaster { channel } => format!("NotMaster {channel}"),
        ChannelMsg::Replicate {
            channel,
            epoch,
            entries,
            snapshot,
            ..
        } => format!(
            "Replicate {channel} epoch {epoch} {:?} snapshot {:?}",
            entry_names(entries),
            snapshot.as_ref().map(|s| short(&s.last))
        ),
        ChannelMsg::Replicated {
            channel,
            epoch,
            upto,
        } => format!("Replicated {channel} epoch {epoch} upto {}", short(upto)),
        ChannelMsg::Fenced { channel, epoch } => format!("Fenced {channel} epoch {epoch}"),
        ChannelMsg::PresenceMeta { channel, epoch, op } => {
            format!("PresenceMeta {channel} epoch {epoch} {op:?}")
        }
        ChannelMsg::StateRequest { channel } => format!("StateRequest {channel}"),
        ChannelMsg::StateReply {
            channel,
            ready,
            epoch,
            state,
        } => format!(
            "StateReply {channel} ready {ready} epoch {epoch} state {:?}",
            state.as_ref().map(|s| short(&s.last))
        ),
    }
}

// ---------------------------------------------------------------------------------
// Scenarios
//
// Epochs are read from the masters rather than written out: a takeover picks an epoch
// above every one it heard of (and not below the clock), so tests compare them.
// ---------------------------------------------------------------------------------

#[test]
fn ack_waits_for_the_copy_holder() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);

    sim.phase("subscribers attach on a (JSON) and c (MessagePack); b becomes master");
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    let mut on_c = sim.attach("c", &ch, "sub-c", Format::Msgpack);
    sim.settle();
    let e = sim.master_epoch("b", &ch).expect("b masters the channel");
    for sub in [&mut on_a, &mut on_c] {
        assert_eq!(sub.attached().channel_serial, Some(serial(e, 0)));
    }

    sim.phase("a publishes three while c's confirmations to b are held");
    sim.hold("c", "b");
    let mut acks: Vec<Ack> = (1..=3).map(|n| sim.publish("a", &ch, "pub", n)).collect();
    sim.settle();
    // c holds every message, but b has not heard so: nothing may be acknowledged or
    // delivered yet.
    assert_eq!(sim.copy_position("c", &ch), Some(pos(e, 3)));
    for ack in &mut acks {
        assert!(
            ack.is_pending(),
            "{} acknowledged before b knew c holds it",
            ack.name
        );
    }
    assert!(on_a.messages().is_empty(), "delivered before the copy");
    assert!(on_c.messages().is_empty(), "delivered before the copy");

    sim.phase("c's Replicated reaches b: acknowledgements and deliveries follow");
    sim.release("c", "b");
    sim.settle();
    let acked: Vec<String> = acks.iter_mut().map(Ack::serial).collect();
    assert_eq!(acked, [serial(e, 1), serial(e, 2), serial(e, 3)]);
    let seen = assert_one_order(&mut [&mut on_a, &mut on_c]);
    assert_eq!(names(&seen), ["pub#1", "pub#2", "pub#3"]);
    assert_eq!(serials(&seen), acked);
    for sub in [&mut on_a, &mut on_c] {
        let actions: Vec<i64> = sub.frames().iter().map(|f| f.action).collect();
        assert_eq!(actions[0], action::ATTACHED, "ATTACHED comes first");
        assert!(actions[1..].iter().all(|a| *a == action::MESSAGE));
    }
}

#[test]
fn every_subscriber_sees_one_order_of_interleaved_publishers() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut rng = Rng(0x5eed_cafe);

    sim.phase("subscribers on every node, two on a");
    let mut subs = vec![
        sim.attach("a", &ch, "sub-a1", Format::Json),
        sim.attach("a", &ch, "sub-a2", Format::Msgpack),
        sim.attach("b", &ch, "sub-b", Format::Json),
        sim.attach("c", &ch, "sub-c", Format::Msgpack),
    ];
    sim.settle();

    sim.phase("pa on a and pc on c publish 50 each, interleaved; links deliver in random order");
    let mut acks = Vec::new();
    for n in 1..=50 {
        acks.push(sim.publish("a", &ch, "pa", n));
        sim.deliver_random(&mut rng, 3);
        acks.push(sim.publish("c", &ch, "pc", n));
        sim.deliver_random(&mut rng, 3);
    }
    sim.settle_random(&mut rng);

    sim.phase("one order everywhere, each publisher's in its own order");
    let mut refs: Vec<&mut Conn> = subs.iter_mut().collect();
    let seen = assert_one_order(&mut refs);
    assert_eq!(seen.len(), 100);
    assert_publisher_order(&seen, "pa", 50);
    assert_publisher_order(&seen, "pc", 50);
    for sub in &mut subs {
        sub.attached();
    }
    // Each acknowledgement carries the serial its message was delivered with.
    let delivered: BTreeMap<String, String> =
        names(&seen).into_iter().zip(serials(&seen)).collect();
    for ack in &mut acks {
        assert_eq!(
            Some(&ack.serial()),
            delivered.get(&ack.name),
            "{}",
            ack.name
        );
    }
}

#[test]
fn copy_holder_takes_over_a_crashed_master_without_loss_or_duplicates() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    let mut on_c = sim.attach("c", &ch, "sub-c", Format::Json);
    sim.settle();
    let e1 = sim.master_epoch("b", &ch).expect("b masters the channel");

    sim.phase("five publishes from a are acknowledged by b");
    let mut acked: Vec<Ack> = (1..=5).map(|n| sim.publish("a", &ch, "pub", n)).collect();
    sim.settle();
    for (seq, ack) in (1..).zip(&mut acked) {
        assert_eq!(ack.position(), pos(e1, seq));
    }

    sim.phase("four more are caught at different stages when b dies");
    // pub#6: committed by b and delivered on c; its ACK and a's copy of the frame are
    // still on the wire from b.
    let mut p6 = sim.publish("a", &ch, "pub", 6);
    sim.deliver_link("a", "b");
    sim.deliver_link("b", "c");
    sim.deliver_link("c", "b");
    sim.deliver_link("b", "c");
    // pub#7: c holds its copy; the confirmation to b is on the wire.
    let mut p7 = sim.publish("a", &ch, "pub", 7);
    sim.deliver_link("a", "b");
    sim.deliver_link("b", "c");
    // pub#8: sequenced by b; its copy to c is on the wire.
    let mut p8 = sim.publish("a", &ch, "pub", 8);
    sim.deliver_link("a", "b");
    // pub#9: on its way to b.
    let mut p9 = sim.publish("a", &ch, "pub", 9);
    assert_eq!(on_c.names().last().map(String::as_str), Some("pub#6"));
    assert_eq!(on_a.names().last().map(String::as_str), Some("pub#5"));
    for ack in [&mut p6, &mut p7, &mut p8, &mut p9] {
        assert!(ack.is_pending(), "{}", ack.name);
    }
    sim.kill("b");

    sim.phase("survivors a and c settle: c takes over under a higher epoch; a resends");
    sim.settle();
    sim.run_for(1_000);
    let e2 = sim.master_epoch("c", &ch).expect("c took the channel over");
    assert!(e2 > e1);
    // What c held keeps its old serial (the resend is a duplicate); what it never got
    // is sequenced anew, after everything older.
    assert_eq!(p6.position(), pos(e1, 6));
    assert_eq!(p7.position(), pos(e1, 7));
    assert_eq!(p8.position(), pos(e2, 1));
    assert_eq!(p9.position(), pos(e2, 2));
    assert!(p8.serial() > p7.serial(), "new serials sort after old ones");

    sim.phase("publishing continues under the new epoch from both survivors");
    let mut from_c = sim.publish("c", &ch, "pc", 1);
    let mut from_a = sim.publish("a", &ch, "pub", 10);
    sim.settle();
    assert_eq!(from_c.position(), pos(e2, 3));
    assert_eq!(from_a.position(), pos(e2, 4));

    sim.phase("every acknowledged message, once each, in order, on both survivors and in history");
    let seen = assert_one_order(&mut [&mut on_a, &mut on_c]);
    let wanted: Vec<String> = (1..=9)
        .map(|n| format!("pub#{n}"))
        .chain(["pc#1".to_owned(), "pub#10".to_owned()])
        .collect();
    assert_eq!(names(&seen), wanted);
    for node in ["a", "c"] {
        let history = sim.history(node, &ch);
        assert_eq!(names(&history), wanted, "history read through {node}");
        assert_eq!(serials(&history), serials(&seen));
    }
}

#[test]
fn acks_continue_with_a_new_copy_after_the_copy_holder_crashes() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    let mut on_b = sim.attach("b", &ch, "sub-b", Format::Msgpack);
    sim.settle();
    let e = sim.master_epoch("b", &ch).expect("b masters the channel");

    sim.phase("three publishes acknowledged with c as copy holder");
    for n in 1..=3 {
        let mut ack = sim.publish("a", &ch, "pub", n);
        sim.settle();
        assert_eq!(ack.position(), pos(e, n.into()));
    }

    sim.phase("c dies while pub#4 waits for its copy");
    let mut p4 = sim.publish("a", &ch, "pub", 4);
    sim.deliver_link("a", "b");
    assert!(p4.is_pending());
    sim.kill("c");
    sim.settle();

    sim.phase("b keeps the channel under its epoch, with a as its new copy holder");
    assert_eq!(sim.master_epoch("b", &ch), Some(e));
    assert_eq!(sim.nodes["b"].masters[&ch].copies, ["a"]);
    assert!(!sim.nodes["b"].degraded, "two live nodes hold two copies");
    assert_eq!(p4.position(), pos(e, 4));
    assert_eq!(sim.copy_position("a", &ch), Some(pos(e, 4)));

    sim.phase("the ACK now waits for a");
    sim.hold("a", "b");
    let mut p5 = sim.publish("a", &ch, "pub", 5);
    sim.settle();
    assert!(p5.is_pending(), "acknowledged before a confirmed its copy");
    sim.release("a", "b");
    sim.settle();
    assert_eq!(p5.position(), pos(e, 5));

    sim.phase("nothing was lost");
    let seen = assert_one_order(&mut [&mut on_a, &mut on_b]);
    let wanted: Vec<String> = (1..=5).map(|n| format!("pub#{n}")).collect();
    assert_eq!(names(&seen), wanted);
    assert_eq!(names(&sim.history("a", &ch)), wanted);
}

/// A channel owned by a (copy b) on the ring over {a, b}, and by c once c joins.
fn channel_moving_to_c() -> String {
    let two = ring(&["a", "b"]);
    let three = ring(&["a", "b", "c"]);
    channel_where(|name| two.owners(name, 2) == ["a", "b"] && three.owner(name) == Some("c"))
}

#[test]
fn a_joining_node_takes_over_the_channels_it_now_owns() {
    let ch = channel_moving_to_c();
    let mut sim = Sim::start(&["a", "b", "c"]);
    sim.set_views(&["a", "b"], &["a", "b"], 2);
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    let mut on_b = sim.attach("b", &ch, "sub-b", Format::Json);
    sim.settle();
    let e1 = sim.master_epoch("a", &ch).expect("a masters the channel");

    sim.phase("a region of two: a sequences for both");
    let mut acks = Vec::new();
    for n in 1..=3 {
        acks.push(sim.publish("a", &ch, "pa", n));
        acks.push(sim.publish("b", &ch, "pb", n));
    }
    sim.settle();
    for ack in &mut acks {
        assert_eq!(ack.position().epoch, e1);
    }

    sim.phase("c joins: every view becomes {a, b, c}, and c owns the channel");
    sim.set_views(&["a", "b", "c"], &["a", "b", "c"], 3);
    sim.settle();
    sim.run_for(1_000);
    assert_eq!(
        sim.master_epoch("a", &ch),
        None,
        "a handed the channel over"
    );
    let e2 = sim.master_epoch("c", &ch).expect("c took the channel over");
    assert!(e2 > e1);
    assert!(
        sim.state_replies("a", "c")
            .contains(&(true, Some(pos(e1, 6)))),
        "c acquired a's state: {:?}",
        sim.state_replies("a", "c")
    );

    sim.phase("publishing continues at c under the higher epoch");
    let mut on_c = sim.attach("c", &ch, "sub-c", Format::Msgpack);
    let mut a4 = sim.publish("a", &ch, "pa", 4);
    let mut b4 = sim.publish("b", &ch, "pb", 4);
    sim.settle();
    assert_eq!(on_c.attached().channel_serial, Some(serial(e2, 0)));
    assert_eq!(a4.position(), pos(e2, 1));
    assert_eq!(b4.position(), pos(e2, 2));

    sim.phase("no gaps, no duplicates, history intact");
    let seen = assert_one_order(&mut [&mut on_a, &mut on_b]);
    assert_eq!(seen.len(), 8);
    assert_publisher_order(&seen, "pa", 4);
    assert_publisher_order(&seen, "pb", 4);
    assert_eq!(on_c.messages(), seen[6..].to_vec());
    assert_eq!(names(&sim.history("c", &ch)), names(&seen));
}

#[test]
fn an_old_owner_keeps_sequencing_until_its_view_agrees() {
    let ch = channel_moving_to_c();
    let mut sim = Sim::start(&["a", "b", "c"]);
    sim.set_views(&["a", "b"], &["a", "b"], 2);
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    let mut on_b = sim.attach("b", &ch, "sub-b", Format::Json);
    sim.settle();
    let e1 = sim.master_epoch("a", &ch).expect("a masters the channel");
    let mut acks = Vec::new();
    for n in 1..=2 {
        acks.push(sim.publish("a", &ch, "pa", n));
        acks.push(sim.publish("b", &ch, "pb", n));
    }
    sim.settle();

    sim.phase("c's view changes first: it sees itself as owner and asks a and b for state");
    sim.set_view("c", &["a", "b", "c"], 3);
    let mut on_c = sim.attach("c", &ch, "sub-c", Format::Json);
    sim.settle();
    assert_eq!(
        sim.state_replies("a", "c"),
        [(false, None)],
        "a still sequences"
    );
    assert!(sim.is_acquiring("c", &ch));

    sim.phase("a keeps sequencing for a and b while c waits, asking again on every tick");
    acks.push(sim.publish("a", &ch, "pa", 3));
    acks.push(sim.publish("b", &ch, "pb", 3));
    sim.settle();
    sim.run_for(1_000);
    for ack in &mut acks {
        assert_eq!(ack.position().epoch, e1, "{}", ack.name);
    }
    assert!(sim.state_replies("a", "c").iter().all(|(ready, _)| !ready));
    assert!(sim.state_replies("a", "c").len() > 2, "c asked again");
    assert!(sim.is_acquiring("c", &ch));
    assert!(
        on_c.frames().is_empty(),
        "c attached before it holds the channel"
    );

    sim.phase("b's view changes: b's publishes wait at c, and b refuses to copy for a");
    sim.set_view("b", &["a", "b", "c"], 3);
    let mut b4 = sim.publish("b", &ch, "pb", 4);
    let mut a4 = sim.publish("a", &ch, "pa", 4);
    sim.settle();
    assert!(
        b4.is_pending(),
        "c acknowledged before it holds the channel"
    );
    assert!(
        a4.is_pending(),
        "a acknowledged without a copy on a node whose view names it master"
    );

    sim.phase("a's view changes: a steps down and hands over; c continues under a higher epoch");
    sim.set_view("a", &["a", "b", "c"], 3);
    sim.settle();
    sim.run_for(1_000);
    assert_eq!(sim.master_epoch("a", &ch), None);
    let e2 = sim.master_epoch("c", &ch).expect("c took the channel over");
    assert!(e2 > e1);
    assert_eq!(
        sim.state_replies("a", "c").last(),
        Some(&(true, Some(pos(e1, 7))))
    );
    assert_eq!(b4.position(), pos(e2, 1));
    // a sequenced pa#4 before it stepped down; c inherited it from a, and a's
    // resend got the same serial once c's copy held it.
    assert_eq!(a4.position(), pos(e1, 7));
    let mut a5 = sim.publish("a", &ch, "pa", 5);
    sim.settle();
    assert_eq!(a5.position(), pos(e2, 2));

    sim.phase("one sequencer per epoch, one order everywhere, history intact");
    let sequencers: Vec<(Epoch, &str)> = sim
        .sequencers
        .iter()
        .map(|((_, epoch), node)| (*epoch, node.as_str()))
        .collect();
    assert_eq!(sequencers, [(e1, "a"), (e2, "c")]);
    let seen = assert_one_order(&mut [&mut on_a, &mut on_b]);
    assert_eq!(seen.len(), 9);
    assert_publisher_order(&seen, "pa", 5);
    assert_publisher_order(&seen, "pb", 4);
    assert_eq!(on_c.attached().channel_serial, Some(serial(e2, 0)));
    assert_eq!(on_c.names(), ["pb#4", "pa#5"]);
    assert_eq!(names(&sim.history("c", &ch)), names(&seen));
}

#[test]
fn an_isolated_master_stops_acking_while_the_majority_carries_on() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["a", "b"]);
    assert_eq!(ring(&["b", "c"]).owner(&ch), Some("b"));
    let mut sim = Sim::region(&nodes);
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    let mut on_b = sim.attach("b", &ch, "sub-b", Format::Json);
    let mut on_c = sim.attach("c", &ch, "sub-c", Format::Json);
    sim.settle();
    let e1 = sim.master_epoch("a", &ch).expect("a masters the channel");

    sim.phase("a masters the channel");
    for n in 1..=2 {
        let mut from_a = sim.publish("a", &ch, "pa", n);
        let mut from_c = sim.publish("c", &ch, "pc", n);
        sim.settle();
        assert_eq!(from_a.position().epoch, e1);
        assert_eq!(from_c.position().epoch, e1);
    }

    sim.phase("a is cut off while pa#3 waits for b's copy; a sees only itself");
    let mut a3 = sim.publish("a", &ch, "pa", 3);
    sim.cut("a", "b");
    sim.cut("a", "c");
    sim.set_view("a", &["a"], 3);
    sim.set_views(&["b", "c"], &["b", "c"], 3);
    sim.settle();
    assert_eq!(sim.master_epoch("a", &ch), None, "no quorum, no sequencing");
    let e2 = sim
        .master_epoch("b", &ch)
        .expect("the copy holder took over");
    assert!(e2 > e1);

    sim.phase("the majority carries on; a's publishes are not acknowledged");
    // A new publish on a is refused at once (retriable: the client should go to
    // another node); the one a had sequenced but not copied waits, then times out.
    let mut a4 = sim.publish("a", &ch, "pa", 4);
    assert_eq!(a4.error().code, UNAVAILABLE_CODE, "{}", a4.error().message);
    let mut c3 = sim.publish("c", &ch, "pc", 3);
    let mut c4 = sim.publish("c", &ch, "pc", 4);
    sim.settle();
    assert_eq!(c3.position(), pos(e2, 1));
    assert_eq!(c4.position(), pos(e2, 2));
    sim.run_for(CLIENT_PUBLISH_TIMEOUT_MS - 1_000);
    assert!(a3.is_pending(), "{:?}", a3.outcome());
    sim.run_for(2_000);
    assert_eq!(a3.error().code, UNAVAILABLE_CODE, "{}", a3.error().message);
    assert_eq!(on_a.names(), ["pa#1", "pc#1", "pa#2", "pc#2"]);

    sim.phase("healed: a owns the channel again and takes it over under a higher epoch");
    sim.mend("a", "b");
    sim.mend("a", "c");
    sim.set_views(&nodes, &nodes, 3);
    sim.settle();
    sim.run_for(1_000);
    assert_eq!(sim.master_epoch("b", &ch), None);
    let e3 = sim.master_epoch("a", &ch).expect("a took the channel back");
    assert!(e3 > e2);
    let mut a5 = sim.publish("a", &ch, "pa", 5);
    let mut c5 = sim.publish("c", &ch, "pc", 5);
    sim.settle();
    assert_eq!(a5.position(), pos(e3, 1));
    assert_eq!(c5.position(), pos(e3, 2));

    sim.phase("one order everywhere; what a could not get acknowledged never appears");
    let seen = assert_one_order(&mut [&mut on_a, &mut on_b, &mut on_c]);
    let wanted = [
        "pa#1", "pc#1", "pa#2", "pc#2", "pc#3", "pc#4", "pa#5", "pc#5",
    ];
    assert_eq!(names(&seen), wanted);
    assert_eq!(names(&sim.history("b", &ch)), wanted);
}

#[test]
fn a_single_node_region_acks_at_once_in_degraded_mode() {
    let ch = "app/solo";
    let mut sim = Sim::region(&["a"]);
    assert!(sim.nodes["a"].degraded, "one node cannot hold two copies");

    sim.phase("attach: the node masters the channel itself");
    let mut sub = sim.attach("a", ch, "sub", Format::Json);
    let e = sim.master_epoch("a", ch).expect("a masters the channel");
    let attached = sub.attached();
    assert_eq!(attached.channel_serial, Some(serial(e, 0)));
    assert_eq!(attached.channel.as_deref(), Some("app/solo"));

    sim.phase("publish: acknowledged at once, with the one copy there is");
    let mut ack = sim.publish("a", ch, "pub", 1);
    assert_eq!(ack.serial(), serial(e, 1));
    assert_eq!(sub.names(), ["pub#1"]);
    assert_eq!(sub.frames()[1].channel.as_deref(), Some("solo"));
    assert_eq!(names(&sim.history("a", ch)), ["pub#1"]);
    assert!(
        sim.links.values().all(VecDeque::is_empty),
        "nothing to send"
    );
}

/// What a two-node region does when one node dies: the survivor sees one of two known
/// members, not a majority, so it stops sequencing and refuses publishes (retriable)
/// rather than risk a second sequencer on the other side of a partition.
#[test]
fn a_two_node_region_stops_acking_when_one_node_dies() {
    let nodes = ["a", "b"];
    let ch = channel_owned_by(&nodes, &["a", "b"]);
    let mut sim = Sim::region(&nodes);
    let mut on_b = sim.attach("b", &ch, "sub-b", Format::Json);
    sim.settle();
    let mut p1 = sim.publish("b", &ch, "pub", 1);
    sim.settle();
    assert!(p1.is_acked());

    sim.phase("a dies: b sees one of two");
    sim.kill("a");
    sim.settle();
    assert!(!sim.nodes["b"].has_quorum());
    let mut p2 = sim.publish("b", &ch, "pub", 2);
    assert_eq!(p2.error().code, UNAVAILABLE_CODE, "{}", p2.error().message);
    sim.run_for(1_000);
    assert_eq!(
        sim.master_epoch("b", &ch),
        None,
        "b does not take the channel"
    );
    assert_eq!(on_b.names(), ["pub#1"]);
}

// ---------------------------------------------------------------------------------
// Edge cases past the scenarios above
// ---------------------------------------------------------------------------------

/// A publisher resends a publish that its master still holds uncommitted (here: the
/// publisher's link to the master flapped). The duplicate must not be acknowledged
/// before the copy exists, or a crash of the master loses an acknowledged message.
#[test]
fn a_resent_publish_is_not_acked_before_its_copy_exists() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    sim.settle();

    sim.phase("b's copies to c stall; a publishes pub#1, which b sequences");
    sim.hold("b", "c");
    let mut p1 = sim.publish("a", &ch, "pub", 1);
    sim.settle();
    assert!(p1.is_pending());

    sim.phase("a's link to b flaps: a turns to c (not master yet), then back to b");
    sim.set_view("a", &["a", "c"], 3);
    sim.settle();
    sim.set_view("a", &nodes, 3);
    sim.settle();
    let acked_before_copy = p1.is_acked();

    sim.phase("b dies before its copy reached c");
    sim.kill("b");
    sim.settle();
    sim.run_for(1_000);
    assert!(
        sim.master_epoch("c", &ch).is_some(),
        "c took the channel over"
    );

    sim.phase("pub#1 was acknowledged only if it survived");
    let history = names(&sim.history("c", &ch));
    assert!(
        !p1.is_acked() || history.contains(&"pub#1".to_owned()),
        "pub#1 was acknowledged ({}) but the new master lost it: {history:?}",
        p1.serial()
    );
    assert!(
        !acked_before_copy,
        "the resent duplicate was acknowledged while its copy was still held"
    );
    assert!(p1.is_acked());
    assert_eq!(on_a.names(), ["pub#1"]);
}

/// A new master inherits messages only it holds (its predecessor died before they
/// were committed). Answering a resend of one of them is an acknowledgement, so it
/// must wait until the new copy holder has the inherited state too.
#[test]
fn a_new_master_acks_what_it_inherited_only_once_its_copy_holds_it() {
    let nodes = ["a", "b", "c", "d"];
    let survivors = ring(&["a", "c", "d"]);
    let four = ring(&nodes);
    let ch = channel_where(|name| {
        four.owners(name, 2) == ["b", "c"] && survivors.owners(name, 2) == ["c", "a"]
    });
    let mut sim = Sim::region(&nodes);
    let mut on_d = sim.attach("d", &ch, "sub-d", Format::Json);
    sim.settle();
    let mut p1 = sim.publish("d", &ch, "pub", 1);
    sim.settle();
    assert!(p1.is_acked());

    sim.phase("pub#2 is copied to c; b dies before c's confirmation reaches it");
    let mut p2 = sim.publish("d", &ch, "pub", 2);
    sim.deliver_link("d", "b");
    sim.deliver_link("b", "c");
    sim.kill("b");

    sim.phase("c takes over (d's resend waits in the takeover) from a's and d's answers");
    sim.deliver_link("d", "c");
    assert!(sim.is_acquiring("c", &ch));
    sim.deliver_link("c", "a");
    sim.deliver_link("c", "d");
    sim.deliver_link("a", "c");
    sim.deliver_link("d", "c");
    assert!(
        sim.master_epoch("c", &ch).is_some(),
        "c took the channel over"
    );

    sim.phase("a, the new copy holder, is slow to confirm the inherited state");
    sim.hold("a", "c");
    sim.settle();
    assert!(
        p2.is_pending(),
        "pub#2 acknowledged while only c holds it: {:?}",
        p2.outcome()
    );

    sim.phase("a's confirmation arrives");
    sim.release("a", "c");
    sim.settle();
    assert!(p2.is_acked());
    assert_eq!(on_d.names(), ["pub#1", "pub#2"]);
}

/// The new owner waits for the old one, which answers "not ready"; then the old owner
/// dies. The takeover must finish with the survivors instead of asking the dead.
#[test]
fn a_takeover_does_not_wait_for_a_peer_that_died_before_answering() {
    let ch = channel_moving_to_c();
    let mut sim = Sim::start(&["a", "b", "c"]);
    sim.set_views(&["a", "b"], &["a", "b"], 2);
    let mut on_b = sim.attach("b", &ch, "sub-b", Format::Json);
    sim.settle();
    let e1 = sim.master_epoch("a", &ch).expect("a masters the channel");
    for n in 1..=2 {
        let mut ack = sim.publish("b", &ch, "pb", n);
        sim.settle();
        assert_eq!(ack.position(), pos(e1, n.into()));
    }

    sim.phase("b and c see c as owner; a does not yet, and answers not ready");
    sim.set_views(&["b", "c"], &["a", "b", "c"], 3);
    let mut on_c = sim.attach("c", &ch, "sub-c", Format::Json);
    let mut b3 = sim.publish("b", &ch, "pb", 3);
    sim.settle();
    assert_eq!(sim.state_replies("a", "c"), [(false, None)]);
    assert!(b3.is_pending());

    sim.phase("a dies; b and c see each other, still a majority of three");
    sim.kill("a");
    sim.settle();
    sim.run_for(2_000);

    sim.phase("c takes over from b's copy");
    assert!(!sim.is_acquiring("c", &ch), "c still waits for dead a");
    let e2 = sim.master_epoch("c", &ch).expect("c took the channel over");
    assert!(e2 > e1);
    assert_eq!(b3.position(), pos(e2, 1));
    assert_eq!(on_b.names(), ["pb#1", "pb#2", "pb#3"]);
    assert_eq!(on_c.names(), ["pb#3"]);
}

/// A partial partition: the link a-c breaks, b still sees both. a keeps the channel
/// (it sees b: two of three) with b as its new copy holder; c, the old copy holder,
/// sees b too and takes the channel over from what b held when it answered. A message
/// a acknowledges after b answered c must not be lost.
#[test]
fn a_message_acked_during_a_partial_partition_is_kept_by_the_next_master() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["a", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut on_a = sim.attach("a", &ch, "sub-a", Format::Json);
    let mut on_c = sim.attach("c", &ch, "sub-c", Format::Json);
    sim.settle();
    let e1 = sim.master_epoch("a", &ch).expect("a masters the channel");
    let mut p1 = sim.publish("a", &ch, "pa", 1);
    sim.settle();
    assert_eq!(p1.position(), pos(e1, 1));

    sim.phase("a-c breaks: a sees {a, b}, c sees {b, c}, b still sees all three");
    sim.cut("a", "c");
    sim.set_view("a", &["a", "b"], 3);
    sim.set_view("c", &["b", "c"], 3);
    // b's answer to c's state request is slow.
    sim.hold("b", "c");
    sim.settle();
    assert_eq!(sim.master_epoch("a", &ch), Some(e1), "a keeps the channel");
    assert!(sim.is_acquiring("c", &ch), "c takes it over");

    sim.phase("a acknowledges pa#2 with b's copy, after b answered c");
    let mut p2 = sim.publish("a", &ch, "pa", 2);
    sim.settle();
    assert_eq!(p2.position(), pos(e1, 2));

    sim.phase("b's answer reaches c; c's side publishes too");
    sim.release("b", "c");
    sim.settle();
    let mut c1 = sim.publish("c", &ch, "pc", 1);
    sim.settle();
    sim.run_for(1_000);

    sim.phase("every node that sequences holds every acknowledged message; one order");
    let masters: Vec<(&str, Epoch)> = nodes
        .into_iter()
        .filter_map(|n| sim.master_epoch(n, &ch).map(|e| (n, e)))
        .collect();
    sim.note(format!(
        "masters now: {masters:?}; pc#1: {:?}",
        c1.outcome()
    ));
    let mut acked = vec!["pa#1".to_owned(), "pa#2".to_owned()];
    if c1.is_acked() {
        acked.push("pc#1".to_owned());
    }
    for (node, _) in &masters {
        let history = names(&sim.history(node, &ch));
        for name in &acked {
            assert!(
                history.contains(name),
                "{name} was acknowledged but master {node} does not hold it: {history:?}"
            );
        }
    }
    // c is cut off from a, so its subscriber may lag, but never see another order.
    let (seen_a, seen_c) = (on_a.names(), on_c.names());
    assert!(
        seen_a.starts_with(&seen_c) || seen_c.starts_with(&seen_a),
        "subscribers diverged: a saw {seen_a:?}, c saw {seen_c:?}"
    );
}

// ---------------------------------------------------------------------------------
// Channel homes
// ---------------------------------------------------------------------------------

/// The Ably code a publish to a channel homed in an unreachable region gets.
const HOMED_ELSEWHERE_CODE: i64 = 50001;

#[test]
fn a_takeover_waits_for_the_channel_home() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);

    sim.phase("the global master cannot answer: the first publish waits");
    sim.homes_unreachable = true;
    let mut ack = sim.publish("a", &ch, "pub", 1);
    sim.run_for(3 * TICK_MS as i64);
    assert!(ack.is_pending(), "sequenced without a home");
    assert!(sim.is_acquiring("b", &ch), "b waits for the home");
    assert_eq!(sim.master_epoch("b", &ch), None);

    sim.phase("it answers again: the channel is homed here and the publish acknowledged");
    sim.homes_unreachable = false;
    sim.run_for(super::home::HOME_RETRY_MS + 2 * TICK_MS as i64);
    let home = sim.homes.get(&ch).cloned().expect("a home was assigned");
    assert_eq!(home.region, REGION);
    assert!(ack.is_acked(), "not acknowledged once the home was known");
    let epoch = ack.position().epoch;
    assert!(
        epoch >= home.epoch,
        "position epoch {epoch} below home epoch {}",
        home.epoch
    );
}

#[test]
fn a_channel_homed_in_another_region_is_never_sequenced_here() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);

    sim.phase("the channel's home is region far");
    let far = HomeView {
        region: "far".into(),
        epoch: START_MS as u64,
        previous: None,
    };
    sim.set_home(&ch, far);

    sim.phase("a publish and an attach through a are refused, retriably");
    let mut ack = sim.publish("a", &ch, "pub", 1);
    let mut sub = sim.attach("a", &ch, "sub", Format::Json);
    sim.settle();
    let error = ack.error();
    assert_eq!(error.code, HOMED_ELSEWHERE_CODE);
    assert_eq!(error.status_code, 503);
    let frames = sub.frames().to_vec();
    assert_eq!(frames.len(), 1, "one frame: {frames:?}");
    assert_eq!(frames[0].action, action::ERROR);
    assert_eq!(
        frames[0].error.as_ref().map(|e| e.code),
        Some(HOMED_ELSEWHERE_CODE)
    );
    for node in nodes {
        assert_eq!(sim.master_epoch(node, &ch), None, "{node} sequences it");
    }
    assert!(sim.sequencers.keys().all(|(channel, _)| *channel != ch));
}

#[test]
fn a_master_steps_down_when_the_home_moves_away_and_resumes_above_it_when_it_returns() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);

    sim.phase("b masters the channel, homed here");
    let mut sub = sim.attach("c", &ch, "sub", Format::Msgpack);
    let mut first = sim.publish("a", &ch, "pub", 1);
    sim.settle();
    let before = first.position();

    sim.phase("an operator moves the home to region far: b stops at once");
    sim.now += 1_000;
    let moved = HomeView {
        region: "far".into(),
        epoch: sim.now as u64,
        previous: None,
    };
    sim.set_home(&ch, moved);
    assert_eq!(
        sim.master_epoch("b", &ch),
        None,
        "b still sequences a channel homed elsewhere"
    );
    let mut refused = sim.publish("a", &ch, "pub", 2);
    sim.run_for(3 * TICK_MS as i64);
    assert_eq!(refused.error().code, HOMED_ELSEWHERE_CODE);
    let ended = sub.frames().last().cloned().expect("frames");
    assert_eq!(ended.action, action::ERROR, "the subscriber is told");

    sim.phase("the home comes back under a newer epoch: sequencing resumes above it");
    sim.now += 1_000;
    let back = HomeView {
        region: REGION.into(),
        epoch: sim.now as u64 + 5_000,
        previous: None,
    };
    sim.set_home(&ch, back.clone());
    let mut again = sim.publish("a", &ch, "pub", 3);
    sim.run_for(3 * TICK_MS as i64);
    let after = again.position();
    assert!(after > before, "{after:?} not after {before:?}");
    assert!(after.epoch >= back.epoch, "epoch below the home epoch");
    let history = names(&sim.history("a", &ch));
    assert_eq!(
        history,
        ["pub#1", "pub#3"],
        "nothing lost, the refused one absent"
    );
}

#[test]
fn reading_history_never_assigns_a_home() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);

    assert!(sim.history("a", &ch).is_empty());
    assert!(
        sim.homes.is_empty(),
        "history assigned a home: {:?}",
        sim.homes
    );
    assert_eq!(sim.master_epoch("b", &ch), None);
}

// ---------------------------------------------------------------------------------
// Resuming attachments
// ---------------------------------------------------------------------------------

/// A connection on `node` attaches again after a transport loss, continuing from
/// channel serial `from`.
fn resume_attach(sim: &mut Sim, node: &str, channel: &str, conn: &str, from: Position) -> Conn {
    let (outbox, inbox) = outbox::channel(conn.into(), "app".into(), Format::Json, 1 << 24);
    let subscriber = Subscriber {
        outbox,
        modes: flags::SUBSCRIBE | flags::PUBLISH,
        echo: true,
        sync_always: false,
    };
    let attached = ProtocolMessage::for_channel(action::ATTACHED, channel);
    sim.state(node)
        .attach(channel, subscriber, attached, super::Start::After(from));
    sim.flush(node);
    Conn {
        label: format!("{conn}@{node} (resumed)"),
        inbox,
        frames: Vec::new(),
    }
}

#[test]
fn a_resumed_attachment_gets_resumed_then_exactly_what_it_missed() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);

    sim.phase("a subscriber on a sees pub#1; its transport drops; pub#2..4 follow");
    let mut other = sim.attach("a", &ch, "other", Format::Msgpack);
    let mut first = sim.publish("c", &ch, "pub", 1);
    sim.settle();
    let seen = first.position();
    for n in 2..=4 {
        sim.publish("c", &ch, "pub", n);
    }
    sim.settle();

    sim.phase("it resumes on node a from pub#1's serial");
    let mut resumed = resume_attach(&mut sim, "a", &ch, "sub", seen);
    sim.run_for(2 * TICK_MS as i64);
    let frames = resumed.frames().to_vec();
    assert_eq!(frames[0].action, action::ATTACHED);
    assert_ne!(
        frames[0].flags.unwrap_or(0) & flags::RESUMED,
        0,
        "RESUMED set"
    );
    assert_eq!(frames[0].channel_serial, Some(seen.to_string()));
    assert_eq!(resumed.names(), ["pub#2", "pub#3", "pub#4"]);

    sim.phase("live traffic continues once, for it and for the node's other subscriber");
    sim.publish("b", &ch, "pub", 5);
    sim.settle();
    assert_eq!(resumed.names(), ["pub#2", "pub#3", "pub#4", "pub#5"]);
    assert_eq!(other.names(), ["pub#1", "pub#2", "pub#3", "pub#4", "pub#5"]);

    sim.phase("resuming where the node already is: RESUMED, nothing replayed");
    let now = first.position().epoch;
    let latest = sim.history("a", &ch).last().and_then(|m| m.serial.clone());
    let latest: Position = latest.expect("a serial").parse().expect("parses");
    assert_eq!(latest.epoch, now);
    let mut current = resume_attach(&mut sim, "a", &ch, "late", latest);
    sim.settle();
    let frames = current.frames().to_vec();
    assert_eq!(frames.len(), 1, "only ATTACHED: {frames:?}");
    assert_ne!(frames[0].flags.unwrap_or(0) & flags::RESUMED, 0);
}

#[test]
fn without_the_lease_nothing_is_sequenced_and_it_resumes_above_when_renewed() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut first = sim.publish("a", &ch, "pub", 1);
    sim.settle();
    let before = first.position();

    sim.phase("the global master stops confirming the region: every node loses its lease");
    for node in nodes {
        sim.state(node).set_lease(false);
        sim.flush(node);
    }
    sim.settle();
    assert_eq!(
        sim.master_epoch("b", &ch),
        None,
        "b sequences without a lease"
    );
    let mut refused = sim.publish("a", &ch, "pub", 2);
    sim.settle();
    assert_eq!(refused.error().code, UNAVAILABLE_CODE);

    sim.phase("the lease is renewed: sequencing resumes after what was there");
    sim.now += 1_000;
    for node in nodes {
        sim.state(node).set_lease(true);
        sim.flush(node);
    }
    let mut again = sim.publish("a", &ch, "pub", 3);
    sim.run_for(3 * TICK_MS as i64);
    assert!(again.position() > before);
    assert_eq!(names(&sim.history("a", &ch)), ["pub#1", "pub#3"]);
}

#[test]
fn an_attached_connection_attaching_again_from_a_serial_gets_each_message_once() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut first = sim.attach("a", &ch, "sub", Format::Json);
    let mut one = sim.publish("c", &ch, "pub", 1);
    sim.settle();
    let from = one.position();
    for n in 2..=3 {
        sim.publish("c", &ch, "pub", n);
    }
    sim.settle();
    assert_eq!(first.names(), ["pub#1", "pub#2", "pub#3"]);

    sim.phase("the same connection attaches again from pub#1's serial");
    let mut again = resume_attach(&mut sim, "a", &ch, "sub", from);
    sim.run_for(2 * TICK_MS as i64);
    sim.publish("c", &ch, "pub", 4);
    sim.settle();
    assert_eq!(
        again.names(),
        ["pub#2", "pub#3", "pub#4"],
        "replay, then live, once each"
    );
    assert_eq!(
        first.names(),
        ["pub#1", "pub#2", "pub#3"],
        "the old attachment was replaced"
    );
}

mod presence;
mod sweep;
