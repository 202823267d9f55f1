//! The ChannelClient: a node's local end of a channel.
//!
//! Each node runs one per channel that has local attachments. It knows which of the
//! node's connections are attached and in which modes, and fans each sequenced frame
//! out to them. Connections never talk to a master; they talk to their ChannelClient.

use std::sync::Arc;
use std::sync::OnceLock;

use serde::Serialize;

use crate::outbox::Outbox;
use crate::protocol::{action, codec, flags, Encoded, Format, ProtocolMessage};

/// One attached connection.
pub struct Subscriber {
    pub outbox: Arc<Outbox>,
    /// Granted mode flags.
    pub modes: i64,
    /// Whether the connection wants its own messages back on this channel.
    pub echo: bool,
    /// Whether it gets the members listed (SYNC) even when it continues where it was:
    /// a bridge's attachment, whose relay may have restarted from an earlier position.
    pub sync_always: bool,
}

#[derive(Default)]
pub struct ChannelClient {
    subscribers: Vec<Subscriber>,
    /// Messages delivered to local subscribers, one per message and subscriber: what
    /// ranks the busiest channels on the dashboard.
    delivered: u64,
}

/// Occupancy counts (the `metrics` of ChannelDetails).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Occupancy {
    pub connections: usize,
    pub presence_connections: usize,
    pub presence_members: usize,
    pub presence_subscribers: usize,
    pub publishers: usize,
    pub subscribers: usize,
}

impl ChannelClient {
    /// Adds or replaces a connection's attachment (a re-ATTACH may change modes).
    pub fn attach(&mut self, subscriber: Subscriber) {
        let id = &subscriber.outbox.connection_id;
        self.subscribers.retain(|s| &s.outbox.connection_id != id);
        self.subscribers.push(subscriber);
    }

    pub fn detach(&mut self, connection_id: &str) {
        self.subscribers
            .retain(|s| &*s.outbox.connection_id != connection_id);
    }

    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Ends every local attachment with `frame` (a channel ERROR): the channel can no
    /// longer be served here.
    pub fn fail_all(&mut self, frame: &ProtocolMessage) {
        for sub in self.subscribers.drain(..) {
            sub.outbox
                .send_frame(codec::encode(frame, sub.outbox.format));
        }
    }

    /// Sends a sequenced frame to every local subscriber, encoding it at most once per
    /// wire format.
    pub fn deliver(&mut self, frame: &ProtocolMessage) {
        // Connections that ended without detaching are dropped here rather than kept.
        self.subscribers.retain(|s| !s.outbox.is_closed());

        let json = OnceLock::new();
        let msgpack = OnceLock::new();
        let origin = frame.connection_id.as_deref();
        // Presence goes to presence subscribers, echo or not; messages to subscribers.
        let presence = frame.action == action::PRESENCE;
        let mode = if presence {
            flags::PRESENCE_SUBSCRIBE
        } else {
            flags::SUBSCRIBE
        };

        // A presence frame counts its presence messages.
        let messages = match presence {
            true => frame.presence.as_ref().map_or(1, Vec::len),
            false => frame.messages.as_ref().map_or(1, Vec::len),
        };
        let mut frames = 0;
        for sub in &self.subscribers {
            if sub.modes & mode == 0 {
                continue;
            }
            if !presence && !sub.echo && origin == Some(&*sub.outbox.connection_id) {
                continue;
            }
            let encoded = match sub.outbox.format {
                Format::Json => json.get_or_init(|| codec::encode(frame, Format::Json)),
                Format::Msgpack => msgpack.get_or_init(|| codec::encode(frame, Format::Msgpack)),
            };
            sub.outbox.send_frame(Encoded::clone(encoded));
            frames += 1;
        }
        let delivered = frames * messages as u64;
        crate::observe::delivered(frames, delivered);
        self.delivered += delivered;
    }

    /// Messages delivered to local subscribers so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn occupancy(&self) -> Occupancy {
        let count = |mode: i64| {
            self.subscribers
                .iter()
                .filter(|s| s.modes & mode != 0)
                .count()
        };
        Occupancy {
            connections: self.subscribers.len(),
            presence_connections: count(flags::PRESENCE),
            presence_members: 0,
            presence_subscribers: count(flags::PRESENCE_SUBSCRIBE),
            publishers: count(flags::PUBLISH),
            subscribers: count(flags::SUBSCRIBE),
        }
    }
}
