//! Presence in the simulated region: members leave after their grace when their node
//! dies, a master failover keeps the set without inventing LEAVEs, and a connection
//! that resumes on another node keeps its members.

use super::*;
use crate::presence::{action as presence_action, Holder, PresenceOp};
use crate::protocol::PresenceMessage;
use crate::region::Leave;

const GRACE_MS: u64 = 15_000;
/// `PresenceSettings::default().detect_ms`: a dead node was last heard this long
/// before the view dropped it.
const DETECT_MS: i64 = 3_000;

impl Sim {
    /// A connection that subscribes to messages and presence.
    fn attach_present(
        &mut self,
        node: &str,
        channel: &str,
        conn: &str,
        start: super::super::Start,
    ) -> Conn {
        self.note(format!("{node}: {conn} attaches for presence"));
        let (outbox, inbox) = outbox::channel(conn.into(), "app".into(), Format::Json, 1 << 24);
        let subscriber = Subscriber {
            outbox,
            modes: flags::SUBSCRIBE | flags::PRESENCE | flags::PRESENCE_SUBSCRIBE,
            echo: true,
            sync_always: false,
        };
        let attached = ProtocolMessage::for_channel(action::ATTACHED, channel);
        self.state(node)
            .attach(channel, subscriber, attached, start);
        self.flush(node);
        Conn {
            label: format!("{conn}@{node}"),
            inbox,
            frames: Vec::new(),
        }
    }

    /// `conn` on `node` enters as `client`.
    fn enter(&mut self, node: &str, channel: &str, conn: &str, client: &str) -> Ack {
        self.note(format!("{node}: {client} enters on {conn}"));
        let op = PresenceOp::Events {
            holder: Holder {
                region: REGION.into(),
                node: node.into(),
            },
            grace_ms: GRACE_MS,
            messages: vec![PresenceMessage {
                action: presence_action::ENTER,
                client_id: Some(client.into()),
                connection_id: Some(conn.into()),
                ..PresenceMessage::default()
            }],
        };
        let publish = Publish::presence(op, format!("{conn}:0"), Some(conn.into()));
        let (reply, rx) = oneshot::channel();
        self.state(node).publish(channel, publish, reply);
        self.flush(node);
        Ack {
            name: format!("{client} enters"),
            rx,
            outcome: None,
        }
    }

    fn detach_conn(&mut self, node: &str, channel: &str, conn: &str, leave: Leave) {
        self.note(format!("{node}: {conn} detaches ({leave:?})"));
        self.state(node).detach(channel, conn, leave);
        self.flush(node);
    }
}

impl Conn {
    /// (action, clientId) of every presence event received, in order.
    fn presence_events(&mut self) -> Vec<(i64, String)> {
        self.frames()
            .iter()
            .filter(|f| f.action == action::PRESENCE)
            .flat_map(|f| f.presence.clone().unwrap_or_default())
            .map(|m| (m.action, m.client_id.unwrap_or_default()))
            .collect()
    }

    fn left(&mut self) -> Vec<String> {
        (self.presence_events().into_iter())
            .filter(|(a, _)| *a == presence_action::LEAVE)
            .map(|(_, c)| c)
            .collect()
    }

    /// The clientIds of the SYNC pages received, sorted.
    fn synced(&mut self) -> Vec<String> {
        let mut ids: Vec<String> = (self.frames().iter())
            .filter(|f| f.action == action::SYNC)
            .flat_map(|f| f.presence.clone().unwrap_or_default())
            .map(|m| m.client_id.unwrap_or_default())
            .collect();
        ids.sort();
        ids
    }
}

#[test]
fn a_dead_nodes_members_leave_after_their_grace_and_a_failover_keeps_the_rest() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);

    sim.phase("a watcher on a; alice on a, carol on b (the master), dave on c");
    let mut watcher = sim.attach_present("a", &ch, "watch", super::super::Start::Live);
    sim.settle();
    let mut acks = [
        sim.enter("a", &ch, "alice-conn", "alice"),
        sim.enter("b", &ch, "carol-conn", "carol"),
        sim.enter("c", &ch, "dave-conn", "dave"),
    ];
    sim.settle();
    assert!(acks.iter_mut().all(Ack::is_acked));
    let entered: Vec<(i64, String)> = watcher.presence_events();
    assert_eq!(entered.len(), 3, "{entered:?}");
    assert!(entered.iter().all(|(a, _)| *a == presence_action::ENTER));

    sim.run_for(5_000);
    sim.phase("b (master and carol's node) dies; c takes over");
    sim.kill("b");
    sim.run_for(GRACE_MS as i64 - DETECT_MS - 1_000);
    assert!(watcher.left().is_empty(), "nobody leaves within the grace");
    assert!(
        sim.master_epoch("c", &ch).is_some(),
        "c masters the channel"
    );

    sim.run_for(2_000);
    assert_eq!(
        watcher.left(),
        ["carol"],
        "carol leaves once, when her grace ends"
    );
    sim.run_for(GRACE_MS as i64);
    assert_eq!(watcher.left(), ["carol"], "no one else leaves");

    sim.phase("a new attachment is told alice and dave");
    let mut late = sim.attach_present("c", &ch, "late", super::super::Start::Live);
    sim.settle();
    assert_ne!(late.attached().flags.unwrap_or(0) & flags::HAS_PRESENCE, 0);
    assert_eq!(late.synced(), ["alice", "dave"]);
}

#[test]
fn a_connection_that_resumes_elsewhere_keeps_its_members_and_one_that_does_not_leaves() {
    let nodes = ["a", "b", "c"];
    let ch = channel_owned_by(&nodes, &["b", "c"]);
    let mut sim = Sim::region(&nodes);
    let mut watcher = sim.attach_present("b", &ch, "watch", super::super::Start::Live);
    let _alice = sim.attach_present("a", &ch, "alice-conn", super::super::Start::Live);
    let _erin = sim.attach_present("a", &ch, "erin-conn", super::super::Start::Live);
    sim.settle();
    let mut acks = [
        sim.enter("a", &ch, "alice-conn", "alice"),
        sim.enter("a", &ch, "erin-conn", "erin"),
    ];
    sim.settle();
    assert!(acks.iter_mut().all(Ack::is_acked));

    sim.phase("both transports drop on a; alice's resumes on c 5 s later");
    let now = sim.now;
    for conn in ["alice-conn", "erin-conn"] {
        let leave = Leave::After {
            last_contact_ms: now,
            grace_ms: GRACE_MS,
        };
        sim.detach_conn("a", &ch, conn, leave);
    }
    sim.settle();
    sim.run_for(5_000);
    let position: Position = (watcher.frames().iter().rev())
        .find_map(|f| f.channel_serial.as_deref()?.parse().ok())
        .expect("the watcher saw a serial");
    let _resumed = sim.attach_present("c", &ch, "alice-conn", super::super::Start::After(position));
    sim.settle();

    sim.run_for(GRACE_MS as i64);
    assert_eq!(
        watcher.left(),
        ["erin"],
        "only the connection that never came back leaves"
    );

    sim.phase("alice closes: she leaves at once");
    sim.detach_conn("c", &ch, "alice-conn", Leave::Now);
    sim.settle();
    sim.tick();
    sim.settle();
    assert_eq!(watcher.left(), ["erin", "alice"]);
}
