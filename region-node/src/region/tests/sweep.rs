//! The periodic work at scale: a tick visits what is due, not every channel held, and
//! what is due still happens on time (history expiry, unused channels forgotten,
//! publish timeouts, presence leaves, home touches, publishes held for an unreachable
//! home).
//!
//! These drive one node's state machine directly, a region of one holding one copy:
//! `Sim` checks every master after every message, which is too slow for tens of
//! thousands of channels.

use super::*;
use crate::presence::{action as presence_action, Holder, PresenceOp};
use crate::protocol::PresenceMessage;
use crate::region::Leave;

/// One node alone in its region. The global master answers its home requests at once,
/// homing channels in `homes_in` (unanswered while that is `None`).
struct Lone {
    state: RegionState,
    now: i64,
    homes_in: Option<String>,
    /// Home touches the node asked for, with when.
    touches: Vec<(String, i64)>,
    /// One connection attached to every channel it attaches.
    outbox: std::sync::Arc<crate::outbox::Outbox>,
    inbox: Inbox,
}

impl Lone {
    fn new(limits: HistoryConfig) -> Lone {
        let mut state = RegionState::new("a", REGION, 1, limits);
        state.set_clock(START_MS);
        let (outbox, inbox) = outbox::channel("conn".into(), "app".into(), Format::Json, 1 << 30);
        Lone {
            state,
            now: START_MS,
            homes_in: Some(REGION.to_owned()),
            touches: Vec::new(),
            outbox,
            inbox,
        }
    }

    /// Handles what the node sent itself and what it asked the global master, until
    /// nothing is left; frames for the connection and bridge traffic are dropped.
    fn settle(&mut self) {
        loop {
            assert!(
                self.state.drain().is_empty(),
                "a region of one sends no one"
            );
            let requests = self.state.take_home_requests();
            if requests.is_empty() && self.state.out.is_empty() {
                break;
            }
            for request in requests {
                match request {
                    HomeRequest::Assign { channel } => self.answer_home(&channel),
                    HomeRequest::Touch { channel } => self.touches.push((channel, self.now)),
                }
            }
        }
        self.state.take_bridge_out();
        while self.inbox.try_recv().is_some() {}
    }

    fn answer_home(&mut self, channel: &str) {
        let Some(region) = self.homes_in.clone() else {
            return;
        };
        let home = HomeView {
            region,
            epoch: self.now as u64,
            previous: None,
        };
        self.state.set_home(channel, Some(home));
    }

    fn attach(&mut self, channel: &str) {
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            modes: flags::SUBSCRIBE | flags::PUBLISH,
            echo: true,
            sync_always: false,
        };
        let attached = ProtocolMessage::for_channel(action::ATTACHED, channel);
        (self.state).attach(channel, subscriber, attached, super::super::Start::Live);
        self.settle();
    }

    fn publish(&mut self, channel: &str, n: u64) -> Ack {
        let name = format!("conn#{n}");
        let message = Message {
            name: Some(name.clone()),
            data: Some(Data::Text(name.clone())),
            ..Message::default()
        };
        let publish = Publish::messages(vec![message], format!("conn:{n}"), Some("conn".into()));
        let (reply, rx) = oneshot::channel();
        self.state.publish(channel, publish, reply);
        self.settle();
        Ack {
            name,
            rx,
            outcome: None,
        }
    }

    /// `client` enters `channel` on connection `<client>-conn`, held by a node of
    /// `region`; the ENTER is sequenced.
    fn enter(&mut self, channel: &str, region: &str, client: &str, grace_ms: i64) {
        let connection_id = format!("{client}-conn");
        let op = PresenceOp::Events {
            holder: Holder {
                region: region.into(),
                node: "a".into(),
            },
            grace_ms: grace_ms as u64,
            messages: vec![PresenceMessage {
                action: presence_action::ENTER,
                client_id: Some(client.into()),
                connection_id: Some(connection_id.clone()),
                ..PresenceMessage::default()
            }],
        };
        let id_base = format!("{connection_id}:0");
        let publish = Publish::presence(op, id_base, Some(connection_id));
        let (reply, mut rx) = oneshot::channel();
        self.state.publish(channel, publish, reply);
        self.settle();
        assert!(
            matches!(rx.try_recv(), Ok(Ok(_))),
            "{client}'s ENTER is sequenced"
        );
    }

    /// `count` channels with an attachment, each with one message (`with_message`)
    /// or none.
    fn hold_channels(&mut self, count: usize, with_message: bool) {
        for i in 0..count {
            let channel = format!("app/idle-{i}");
            self.attach(&channel);
            if with_message {
                self.publish(&channel, i as u64);
            }
        }
    }

    /// One tick later; returns how many slots the tick visited.
    fn tick(&mut self) -> usize {
        self.now += TICK_MS as i64;
        self.state.set_clock(self.now);
        self.state.tick();
        let visits = self.state.schedule.visits;
        self.settle();
        visits
    }

    fn retained(&self, channel: &str) -> Option<usize> {
        let slot = self.state.masters.get(channel)?;
        Some(slot.core.retained().len())
    }
}

/// History bounds short enough to run out within a test.
fn short_history() -> HistoryConfig {
    HistoryConfig {
        max_age_ms: 10_000,
        min_messages: 0,
        dedup_window_ms: 10_000,
        ..HistoryConfig::default()
    }
}

#[test]
fn a_tick_visits_only_what_is_due_however_many_channels_are_held() {
    let mut costs = Vec::new();
    for count in [1_000, 50_000] {
        eprintln!("=== {count} attached channels with a message each");
        let mut lone = Lone::new(HistoryConfig::default());
        lone.hold_channels(count, true);
        assert_eq!(lone.state.masters.len(), count);
        assert_eq!(lone.state.clients.len(), count);

        // The first tick looks once more at every channel that just published; after
        // that nothing is due for minutes (history lasts 2 minutes, touches an hour).
        let first = lone.tick();
        assert!(first <= 2 * count, "{first} visits after {count} publishes");
        let idle: Vec<usize> = (0..10).map(|_| lone.tick()).collect();
        assert_eq!(idle, [0; 10], "idle ticks over {count} channels");

        eprintln!("=== three channels publish");
        let mut acks: Vec<Ack> = (0..3)
            .map(|i| lone.publish(&format!("app/idle-{i}"), 1_000_000 + i))
            .collect();
        assert!(acks.iter_mut().all(Ack::is_acked));
        assert_eq!(
            lone.state.schedule.publishes.len(),
            0,
            "answered: no timeouts left"
        );
        let busy = lone.tick();
        assert!(busy <= 6, "{busy} visits after 3 publishes");
        assert_eq!(lone.tick(), 0);
        costs.push((idle, busy));
    }
    assert_eq!(
        costs[0], costs[1],
        "the same cost at 1,000 and 50,000 channels"
    );
}

#[test]
fn history_expires_at_its_ttl_and_an_unused_channel_is_forgotten() {
    let mut lone = Lone::new(short_history());
    lone.hold_channels(5_000, false);
    lone.tick();

    eprintln!("=== one attached channel and one without attachments get a message");
    let t0 = lone.now;
    lone.attach("app/kept");
    assert!(lone.publish("app/kept", 1).is_acked());
    assert!(lone.publish("app/unused", 2).is_acked());
    assert!(
        !lone.state.clients.contains_key("app/unused"),
        "a client kept only for a publish goes with its answer"
    );
    lone.tick();

    eprintln!("=== ticks up to the TTL keep both; the first after it expires and forgets");
    while lone.now + (TICK_MS as i64) - t0 <= 10_000 {
        assert_eq!(lone.tick(), 0, "nothing is due before the TTL");
        assert_eq!(lone.retained("app/kept"), Some(1), "at {}", lone.now - t0);
        assert_eq!(lone.retained("app/unused"), Some(1), "at {}", lone.now - t0);
    }
    let due = lone.tick();
    assert!(lone.now - t0 > 10_000);
    assert_eq!(due, 2, "only the two channels with history are visited");
    assert_eq!(lone.retained("app/kept"), Some(0), "the message expired");
    assert!(!lone.state.masters.contains_key("app/unused"), "forgotten");
    assert_eq!(lone.state.masters.len(), 5_001, "attached channels stay");

    eprintln!("=== with nothing left to expire, nothing is visited");
    assert_eq!(lone.tick(), 0);
}

#[test]
fn a_publish_no_master_answers_times_out_with_its_error() {
    let mut lone = Lone::new(HistoryConfig::default());
    lone.hold_channels(5_000, true);
    lone.tick();

    eprintln!("=== the global master stops answering; a publish waits for a home");
    lone.homes_in = None;
    let t0 = lone.now;
    let mut ack = lone.publish("app/stuck", 1);
    while lone.now + (TICK_MS as i64) - t0 <= CLIENT_PUBLISH_TIMEOUT_MS {
        let visits = lone.tick();
        // The takeover waiting for its home, and the client waiting for its answer.
        assert!(visits <= 2, "{visits} visits while one publish waits");
        assert!(ack.is_pending(), "at {}", lone.now - t0);
    }

    eprintln!("=== the first tick past the timeout refuses it");
    lone.tick();
    assert_eq!(ack.error().code, UNAVAILABLE_CODE);
    assert!(
        !lone.state.clients.contains_key("app/stuck"),
        "a client kept only for the publish is forgotten"
    );
}

#[test]
fn a_master_touches_its_home_once_a_period() {
    let mut lone = Lone::new(HistoryConfig::default());
    lone.state.set_home_touch_ms(1_000);
    lone.hold_channels(1_000, false);
    lone.tick();
    lone.tick();
    lone.attach("app/later");
    let created = lone.now;

    for _ in 0..25 {
        lone.tick();
    }
    let later: Vec<i64> = (lone.touches.iter())
        .filter(|(channel, _)| channel == "app/later")
        .map(|(_, at)| at - created)
        .collect();
    assert_eq!(later, [1_000, 2_000, 3_000, 4_000, 5_000]);
    let idle = (lone.touches.iter()).filter(|(channel, _)| channel == "app/idle-0");
    assert_eq!(idle.count(), 5, "every master, once a second");
}

#[test]
fn a_publish_held_for_an_unreachable_home_is_refused_after_the_hold() {
    const HOLD_MS: i64 = 5_000;
    let mut lone = Lone::new(HistoryConfig::default());
    lone.state.enable_bridges(10, HOLD_MS);
    lone.hold_channels(5_000, true);
    lone.tick();

    eprintln!("=== a channel homed in another region, whose link is down");
    lone.homes_in = Some("far".to_owned());
    let t0 = lone.now;
    let mut ack = lone.publish("app/remote", 1);
    assert!(lone.state.relays.contains_key("app/remote"));
    while lone.now + (TICK_MS as i64) - t0 <= HOLD_MS {
        let visits = lone.tick();
        // The relay holding the publish, and the client waiting for its answer.
        assert!(visits <= 2, "{visits} visits while one publish is held");
        assert!(ack.is_pending(), "at {}", lone.now - t0);
    }

    eprintln!("=== past the hold it is refused");
    lone.tick();
    assert_eq!(ack.error().code, UNAVAILABLE_CODE);

    eprintln!("=== what stays costs what it holds, not what the node holds");
    // The relay's report of this region's live nodes is repeated like any presence
    // report, so the relay comes back while the home stays unreachable.
    for _ in 0..50 {
        let visits = lone.tick();
        assert!(visits <= 3, "{visits} visits at {}", lone.now - t0);
    }
}

#[test]
fn a_lost_connections_member_leaves_when_its_grace_runs_out() {
    const GRACE_MS: i64 = 15_000;
    /// How long a ChannelClient keeps a gone connection after its members left
    /// (mirrors `presence::GONE_KEPT_MS`).
    const GONE_KEPT_MS: i64 = 5_000;
    let mut lone = Lone::new(HistoryConfig::default());
    lone.hold_channels(5_000, false);
    lone.tick();

    eprintln!("=== alice attaches and enters, then her transport is lost");
    let (outbox, _inbox) =
        outbox::channel("alice-conn".into(), "app".into(), Format::Json, 1 << 20);
    let subscriber = Subscriber {
        outbox,
        modes: flags::PRESENCE | flags::PRESENCE_SUBSCRIBE,
        echo: true,
        sync_always: false,
    };
    let attached = ProtocolMessage::for_channel(action::ATTACHED, "app/room");
    (lone.state).attach("app/room", subscriber, attached, super::super::Start::Live);
    lone.settle();
    lone.enter("app/room", REGION, "alice", GRACE_MS);
    let members = |lone: &Lone| lone.state.masters["app/room"].core.members().len();
    assert_eq!(members(&lone), 1);

    let lost = lone.now;
    let leave = Leave::After {
        last_contact_ms: lost,
        grace_ms: GRACE_MS as u64,
    };
    lone.state.detach("app/room", "alice-conn", leave);
    lone.settle();
    lone.tick();

    eprintln!("=== she stays for her grace, then leaves on the first tick after it");
    while lone.now + (TICK_MS as i64) - lost < GRACE_MS {
        assert_eq!(lone.tick(), 0, "nothing is due during the grace");
        assert_eq!(members(&lone), 1, "at {}", lone.now - lost);
    }
    assert_eq!(lone.tick(), 1, "only her channel is visited");
    assert_eq!(members(&lone), 0, "left at {}", lone.now - lost);

    eprintln!("=== the node forgets her connection a while later");
    while lone.now + (TICK_MS as i64) - lost < GRACE_MS + GONE_KEPT_MS {
        lone.tick();
        assert!(lone.state.clients.contains_key("app/room"));
    }
    lone.tick();
    assert!(!lone.state.clients.contains_key("app/room"));
}

#[test]
fn members_held_in_a_silent_region_leave_their_grace_after_it_was_last_heard() {
    const GRACE_MS: i64 = 15_000;
    let mut lone = Lone::new(HistoryConfig::default());
    lone.hold_channels(5_000, false);
    lone.tick();
    let present = |lone: &Lone| -> Vec<String> {
        let members = lone.state.masters["app/room"].core.members().present();
        members.into_iter().filter_map(|m| m.client_id).collect()
    };

    eprintln!("=== alice, held in region far, is present; far goes silent");
    lone.enter("app/room", "far", "alice", GRACE_MS);
    let alice_in = lone.now;
    lone.tick();
    lone.state
        .set_silent_regions(vec![("far".into(), alice_in - 1_000)]);

    eprintln!("=== bob enters from far after it went silent");
    lone.tick();
    lone.enter("app/room", "far", "bob", GRACE_MS);
    let bob_in = lone.now;
    assert_eq!(present(&lone), ["alice", "bob"]);

    eprintln!("=== each leaves on the first tick after his grace, counted from his entry");
    while lone.now + (TICK_MS as i64) - alice_in < GRACE_MS {
        lone.tick();
        assert_eq!(
            present(&lone),
            ["alice", "bob"],
            "at {}",
            lone.now - alice_in
        );
    }
    lone.tick();
    assert_eq!(present(&lone), ["bob"]);
    while lone.now + (TICK_MS as i64) - bob_in < GRACE_MS {
        lone.tick();
        assert_eq!(present(&lone), ["bob"], "at {}", lone.now - bob_in);
    }
    lone.tick();
    assert!(present(&lone).is_empty());
}

#[test]
fn stats_rank_the_busiest_channels_and_count_each_channel_once() {
    let mut lone = Lone::new(HistoryConfig::default());
    lone.hold_channels(30, false);
    let deliveries = [("app/idle-5", 3), ("app/idle-7", 2), ("app/idle-20", 2)];
    let mut n = 100;
    for (channel, count) in deliveries {
        for _ in 0..count {
            n += 1;
            lone.publish(channel, n);
        }
    }

    let stats = lone.state.stats();
    let busiest = lone.state.busiest();

    assert_eq!(
        stats.channels, 30,
        "a master and a client of a channel count once"
    );
    assert_eq!(stats.masters, 30);
    assert!(stats.busiest.is_empty(), "ranked only when asked");
    let ranked: Vec<(&str, u64)> = (busiest.iter())
        .map(|a| (a.channel.as_str(), a.delivered))
        .collect();
    // Most delivered first; equal ones by name; then the quiet ones by name.
    let expected = [
        ("idle-5", 3),
        ("idle-20", 2),
        ("idle-7", 2),
        ("idle-0", 0),
        ("idle-1", 0),
        ("idle-10", 0),
        ("idle-11", 0),
        ("idle-12", 0),
        ("idle-13", 0),
        ("idle-14", 0),
    ];
    assert_eq!(ranked, expected);
    assert!(busiest.iter().all(|a| a.app == "app" && a.master));
}
