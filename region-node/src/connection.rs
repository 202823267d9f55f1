//! One client connection's protocol logic: what each inbound ProtocolMessage does and
//! what the client is told in return. The socket task in `ws` drives it; this module
//! never touches the socket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use crate::auth::Identity;
use crate::channel_client::Subscriber;
use crate::channel_master::Publish;
use crate::channels::{channel_key, validate_name};
use crate::config::LimitsConfig;
use crate::error::AblyError;
use crate::inbound_rate::{InboundGuard, Verdict};
use crate::node::Node;
use crate::outbox::Outbox;
use crate::presence::{Holder, PresenceOp};
use crate::protocol::{action, data, flags, ErrorInfo, Message, ProtocolMessage, PublishResult};
use crate::region::{Leave, Start};
use crate::rewind::Rewind;

struct Attachment {
    modes: i64,
}

/// What the socket task should do after a frame was handled.
#[derive(Debug, PartialEq)]
pub enum Next {
    Continue,
    /// Send the replies, then close the socket; the connection's state is discarded.
    Close,
}

/// The outcome of one publish, as the channel's master will report it.
pub type Outcome = Result<Vec<Option<String>>, ErrorInfo>;

/// A publish waiting for its outcome. ACKs and NACKs go out in msgSerial order,
/// because ably-js completes its queue cumulatively (protocol.md §1.5).
pub struct PendingAck {
    pub msg_serial: i64,
    pub outcome: oneshot::Receiver<Outcome>,
    /// When the publish was read, for the ACK latency histogram.
    pub received: tokio::time::Instant,
}

/// Replies of one inbound frame: frames to send now, and publishes whose ACK or NACK
/// must wait its turn.
#[derive(Default)]
pub struct Replies {
    pub now: Vec<ProtocolMessage>,
    pub acks: VecDeque<PendingAck>,
}

pub struct Connection {
    node: Arc<Node>,
    identity: Identity,
    outbox: Arc<Outbox>,
    echo: bool,
    attached: HashMap<String, Attachment>,
    /// How fast this client may send; see `inbound_rate`.
    inbound: InboundGuard,
    /// How long this connection's presence members outlive an abrupt loss.
    presence_grace_ms: u64,
    /// Whether the connection ended for good (the client's CLOSE, or a fatal ERROR):
    /// its members leave at once rather than after the grace.
    ended_for_good: bool,
}

impl Connection {
    pub fn new(node: Arc<Node>, identity: Identity, outbox: Arc<Outbox>, echo: bool) -> Self {
        let inbound = InboundGuard::new(&node.config.limits, Instant::now());
        Self {
            identity,
            outbox,
            echo,
            attached: HashMap::new(),
            inbound,
            presence_grace_ms: node.config.connection.presence_grace_ms,
            ended_for_good: false,
            node,
        }
    }

    /// The client's `remainPresentFor` transport parameter, at most the connection
    /// state TTL: past that the connection cannot resume, so its members could never
    /// be claimed again.
    pub fn set_presence_grace_ms(&mut self, grace_ms: u64) {
        self.presence_grace_ms = grace_ms.min(self.node.config.connection.state_ttl_ms);
    }

    /// The connection was sent a fatal ERROR: it will not resume, so its members
    /// leave at once.
    pub fn mark_failed(&mut self) {
        self.ended_for_good = true;
    }

    /// When this connection's members leave, now that its transport ended.
    pub fn leave_after(&self, last_contact_ms: i64) -> Leave {
        if self.ended_for_good {
            return Leave::Now;
        }
        Leave::After {
            last_contact_ms,
            grace_ms: self.presence_grace_ms,
        }
    }

    pub fn id(&self) -> &str {
        &self.outbox.connection_id
    }

    /// The region-wide key of this connection's app's channel `name`.
    fn key(&self, name: &str) -> String {
        channel_key(&self.identity.app.id, name)
    }

    /// Handles one inbound frame, once its rate allows.
    pub fn handle(&mut self, pm: ProtocolMessage, replies: &mut Replies) -> Next {
        let now = Instant::now();
        let verdict = if carries_publish(&pm) {
            self.inbound.publish(now)
        } else {
            self.inbound.frame(now)
        };
        match verdict {
            Verdict::Allowed => self.dispatch(pm, replies),
            Verdict::OverRate => self.refuse_over_rate(pm, replies),
            Verdict::Flooding => self.disconnect_flood(replies),
        }
    }

    /// A WebSocket ping or pong arrived: it only counts towards a flood, so a client
    /// cannot flood with frames the protocol layer never sees.
    pub fn handle_control_frame(&mut self, replies: &mut Replies) -> Next {
        match self.inbound.frame(Instant::now()) {
            Verdict::Flooding => self.disconnect_flood(replies),
            Verdict::Allowed | Verdict::OverRate => Next::Continue,
        }
    }

    /// A publish over the rate is NACKed in its turn; the connection carries on.
    fn refuse_over_rate(&mut self, pm: ProtocolMessage, replies: &mut Replies) -> Next {
        // Without a msgSerial there is nothing to NACK; the usual handling applies.
        let Some(msg_serial) = pm.msg_serial else {
            return self.dispatch(pm, replies);
        };
        metrics::counter!("starling_limit_refusals", "limit" => "inbound_rate").increment(1);
        debug!(connection.id = %self.id(), msg_serial, "publish over the rate refused");
        let error = AblyError::PublishRateExceeded {
            rate: self.inbound.rate(),
        };
        replies.acks.push_back(refused(msg_serial, &error));
        Next::Continue
    }

    /// A client that keeps sending far past its rate is sent away. DISCONNECTED, not
    /// ERROR: a client flushing a backlog may resume and carry on at the rate.
    fn disconnect_flood(&mut self, replies: &mut Replies) -> Next {
        metrics::counter!("starling_limit_refusals", "limit" => "inbound_flood").increment(1);
        warn!(connection.id = %self.id(), "disconnecting a connection that floods");
        let error = AblyError::InboundFlood {
            rate: self.inbound.rate(),
        };
        replies.now.push(ProtocolMessage {
            error: Some(error.to_info()),
            ..ProtocolMessage::new(action::DISCONNECTED)
        });
        Next::Close
    }

    fn dispatch(&mut self, pm: ProtocolMessage, replies: &mut Replies) -> Next {
        match pm.action {
            action::HEARTBEAT => replies.now.push(ProtocolMessage {
                id: pm.id,
                ..ProtocolMessage::new(action::HEARTBEAT)
            }),
            action::CLOSE => {
                self.ended_for_good = true;
                replies.now.push(ProtocolMessage::new(action::CLOSED));
                return Next::Close;
            }
            action::DISCONNECT => return Next::Close,
            action::ATTACH => self.attach(pm, replies),
            action::DETACH => replies.now.push(self.detach(pm)),
            action::MESSAGE => return self.publish(pm, replies),
            action::PRESENCE => return self.presence(pm, replies),
            action::SYNC => self.sync_request(pm, replies),
            action::ANNOTATION | action::OBJECT => match pm.msg_serial {
                Some(serial) => replies
                    .acks
                    .push_back(refused(serial, &AblyError::Unsupported("this operation"))),
                None => debug!(connection.id = %self.id(), action = pm.action, "ignoring frame"),
            },
            action::AUTH => return self.reauthorise(pm, replies),
            other => debug!(connection.id = %self.id(), action = other, "ignoring frame"),
        }
        Next::Continue
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn outbox_id(&self) -> Arc<str> {
        self.outbox.connection_id.clone()
    }

    /// In-band AUTH with a new token: on success the connection carries on under the
    /// new token (same connectionId, fresh CONNECTED); channels the new capability
    /// no longer allows fail. A refused token ends the connection.
    fn reauthorise(&mut self, pm: ProtocolMessage, replies: &mut Replies) -> Next {
        let token = pm.auth.and_then(|auth| auth.access_token);
        let renewed = match token {
            Some(token) => crate::auth::reauthorise(&self.node, &self.identity, &token),
            None => Err(AblyError::NoCredentials),
        };
        let identity = match renewed {
            Ok(identity) => identity,
            Err(error) => {
                debug!(connection.id = %self.id(), error.code = error.code(), "re-auth refused");
                replies.now.push(fatal(&error));
                return Next::Close;
            }
        };

        self.identity = identity;
        self.node
            .connections
            .hold_token(&self.outbox.connection_id, self.identity.token_holder());
        let id = self.id().to_owned();
        replies.now.push(crate::ws::connected_frame(
            &self.node,
            &id,
            &self.identity,
            None,
        ));
        self.fail_disallowed_channels(replies);
        debug!(connection.id = %id, expires = self.identity.expires_ms(), "re-authorised");
        Next::Continue
    }

    /// Detaches, with a channel ERROR (40160), every channel the capability no longer
    /// allows, or no longer allows to receive on.
    fn fail_disallowed_channels(&mut self, replies: &mut Replies) {
        let capability = &self.identity.capability;
        let lost: Vec<String> = (self.attached.iter())
            .filter(|(name, attachment)| {
                !capability.allows_any(name)
                    || (attachment.modes & flags::SUBSCRIBE != 0
                        && !capability.allows(name, "subscribe"))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in lost {
            self.attached.remove(&name);
            self.node
                .region
                .detach(&self.key(&name), self.id(), Leave::Now);
            let error = AblyError::CapabilityDenied {
                op: "attach",
                channel: name.clone(),
            };
            replies.now.push(channel_error(&name, &error));
        }
    }

    /// Leaves every channel; called once when the connection ends, however it ends.
    /// Its presence members leave as `leave` says.
    pub fn detach_all(&mut self, leave: Leave) {
        for name in self.attached.keys() {
            self.node.region.detach(&self.key(name), self.id(), leave);
        }
        self.attached.clear();
    }

    /// Attaching is answered by the region task through the connection's queue, once
    /// the channel's subscription stands, so ATTACHED always precedes its messages.
    fn attach(&mut self, pm: ProtocolMessage, replies: &mut Replies) {
        let name = pm.channel.clone().unwrap_or_default();
        match self.try_attach(&name, &pm) {
            Ok(()) => {}
            Err(error) => replies.now.push(channel_error(&name, &error)),
        }
    }

    fn try_attach(&mut self, name: &str, pm: &ProtocolMessage) -> Result<(), AblyError> {
        validate_name(name)?;
        let capability = &self.identity.capability;
        if !capability.allows_any(name) {
            return Err(AblyError::CapabilityDenied {
                op: "attach",
                channel: name.into(),
            });
        }
        self.check_channel_limit(name)?;

        let params = pm.params.clone().unwrap_or_default();
        let modes = granted_modes(pm.flags.unwrap_or(0), &params, |op| {
            capability.allows(name, op)
        })?;
        let echo = self.echo && params.get("echo").map(String::as_str) != Some("false");
        let start = attach_start(pm, &params)?;

        let attached = ProtocolMessage {
            flags: Some(modes),
            params: accepted_params(&params),
            ..ProtocolMessage::for_channel(action::ATTACHED, name)
        };
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            modes,
            echo,
            sync_always: false,
        };
        self.node
            .region
            .attach(&self.key(name), subscriber, attached, start);
        self.attached.insert(name.to_owned(), Attachment { modes });
        debug!(connection.id = %self.id(), channel.name = name, modes, "attaching");
        Ok(())
    }

    /// Attaching a channel again takes no new slot; a new one must fit.
    fn check_channel_limit(&self, name: &str) -> Result<(), AblyError> {
        let limit = self.node.config.limits.max_channels_per_connection;
        if self.attached.contains_key(name) || self.attached.len() < limit {
            return Ok(());
        }
        metrics::counter!("starling_limit_refusals", "limit" => "channels").increment(1);
        Err(AblyError::TooManyChannels { limit })
    }

    fn detach(&mut self, pm: ProtocolMessage) -> ProtocolMessage {
        let name = pm.channel.unwrap_or_default();
        if self.attached.remove(&name).is_some() {
            self.node
                .region
                .detach(&self.key(&name), self.id(), Leave::Now);
        }
        ProtocolMessage::for_channel(action::DETACHED, &name)
    }

    fn publish(&mut self, pm: ProtocolMessage, replies: &mut Replies) -> Next {
        let channel = pm.channel.unwrap_or_default();
        let messages = pm.messages.unwrap_or_default();
        self.acked("MESSAGE", pm.msg_serial, replies, |connection, serial| {
            connection.try_publish(&channel, messages, serial)
        })
    }

    /// A frame answered with an ACK or NACK in its turn (MESSAGE, PRESENCE): without
    /// a msgSerial there is nothing to answer, which is fatal.
    fn acked(
        &mut self,
        kind: &str,
        msg_serial: Option<i64>,
        replies: &mut Replies,
        attempt: impl FnOnce(&mut Self, i64) -> Result<oneshot::Receiver<Outcome>, AblyError>,
    ) -> Next {
        let Some(msg_serial) = msg_serial else {
            let error = AblyError::MalformedFrame(format!("{kind} without msgSerial"));
            replies.now.push(fatal(&error));
            return Next::Close;
        };
        let pending = match attempt(self, msg_serial) {
            Ok(outcome) => PendingAck {
                msg_serial,
                outcome,
                received: tokio::time::Instant::now(),
            },
            Err(error) => refused(msg_serial, &error),
        };
        replies.acks.push_back(pending);
        Next::Continue
    }

    fn try_publish(
        &mut self,
        name: &str,
        messages: Vec<Message>,
        msg_serial: i64,
    ) -> Result<oneshot::Receiver<Outcome>, AblyError> {
        self.may(name, "publish", flags::PUBLISH)?;

        let limits = &self.node.config.limits;
        let messages = prepare_messages(messages, self.identity.client_id.as_deref(), limits)?;
        crate::observe::messages_in("realtime", messages.len());
        let publish = Publish::messages(
            messages,
            format!("{}:{msg_serial}", self.id()),
            Some(self.id().to_owned()),
        );
        Ok(self.node.region.publish(&self.key(name), publish))
    }

    /// Whether the connection may do `op` (`publish` or `presence`) on `name`: its
    /// capability allows it (40160), and an attachment requested its `mode` (40165).
    /// Publishing without attaching is allowed (RTL6c5).
    fn may(&self, name: &str, op: &'static str, mode: i64) -> Result<(), AblyError> {
        validate_name(name)?;
        if !self.identity.capability.allows(name, op) {
            return Err(AblyError::CapabilityDenied {
                op,
                channel: name.into(),
            });
        }
        match self.attached.get(name) {
            Some(attachment) if attachment.modes & mode == 0 => Err(AblyError::ModeNotRequested {
                mode: op,
                channel: name.into(),
            }),
            _ => Ok(()),
        }
    }

    /// Enter, update or leave (for this connection's clientId, or any clientId for a
    /// wildcard one), acknowledged like a publish.
    fn presence(&mut self, pm: ProtocolMessage, replies: &mut Replies) -> Next {
        let channel = pm.channel.unwrap_or_default();
        let events = pm.presence.unwrap_or_default();
        self.acked("PRESENCE", pm.msg_serial, replies, |connection, serial| {
            connection.try_presence(&channel, events, serial)
        })
    }

    fn try_presence(
        &mut self,
        name: &str,
        events: Vec<crate::protocol::PresenceMessage>,
        msg_serial: i64,
    ) -> Result<oneshot::Receiver<Outcome>, AblyError> {
        self.may(name, "presence", flags::PRESENCE)?;
        // A member lives as long as its connection's attachment: without one it would
        // outlive every CLOSE and DETACH.
        if !self.attached.contains_key(name) {
            return Err(AblyError::PresenceNotAttached(name.to_owned()));
        }
        // A wildcard token that chose no clientId may act as any (enterClient).
        let wildcard =
            (self.identity.token.as_ref()).is_some_and(|t| t.client_id.as_deref() == Some("*"));
        let own = match self.identity.client_id.as_deref() {
            None if wildcard => Some("*"),
            own => own,
        };
        let limits = &self.node.config.limits;
        let messages = crate::presence::prepare(events, own, self.id(), limits)?;
        let config = &self.node.config.node;
        let op = PresenceOp::Events {
            holder: Holder {
                region: config.region.clone(),
                node: config.id.clone(),
            },
            grace_ms: self.presence_grace_ms,
            messages,
        };
        let publish = Publish::presence(
            op,
            format!("{}:{msg_serial}", self.id()),
            Some(self.id().to_owned()),
        );
        Ok(self.node.region.publish(&self.key(name), publish))
    }

    /// A client asks for the members again: a full SYNC, if it is attached with
    /// presence subscribe.
    fn sync_request(&mut self, pm: ProtocolMessage, replies: &mut Replies) {
        let name = pm.channel.unwrap_or_default();
        match self.attached.get(&name) {
            Some(a) if a.modes & flags::PRESENCE_SUBSCRIBE != 0 => {
                self.node.region.sync(&self.key(&name), self.id());
            }
            Some(_) => {
                let error = AblyError::ModeNotRequested {
                    mode: "presence_subscribe",
                    channel: name.clone(),
                };
                replies.now.push(channel_error(&name, &error));
            }
            None => {
                let error = AblyError::ChannelNotAttached(name.clone());
                replies.now.push(channel_error(&name, &error));
            }
        }
    }
}

/// Whether a frame is a publish: what `maxInboundRate` limits.
fn carries_publish(pm: &ProtocolMessage) -> bool {
    matches!(
        pm.action,
        action::MESSAGE | action::PRESENCE | action::ANNOTATION | action::OBJECT
    )
}

/// The ACK or NACK frame for a publish's outcome.
pub fn ack_frame(msg_serial: i64, outcome: Outcome) -> ProtocolMessage {
    match outcome {
        Ok(serials) => ProtocolMessage {
            msg_serial: Some(msg_serial),
            count: Some(1),
            res: Some(vec![PublishResult { serials }]),
            ..ProtocolMessage::new(action::ACK)
        },
        Err(error) => ProtocolMessage {
            msg_serial: Some(msg_serial),
            count: Some(1),
            error: Some(error),
            ..ProtocolMessage::new(action::NACK)
        },
    }
}

/// A publish refused before it reached a master, queued behind earlier publishes.
fn refused(msg_serial: i64, error: &AblyError) -> PendingAck {
    let (tx, outcome) = oneshot::channel();
    let _ = tx.send(Err(error.to_info()));
    PendingAck {
        msg_serial,
        outcome,
        received: tokio::time::Instant::now(),
    }
}

/// Validates and normalises the messages of one publish, realtime or REST: payload
/// encodings, clientId rules, and the size limit over the whole publish.
pub fn prepare_messages(
    messages: Vec<Message>,
    client_id: Option<&str>,
    limits: &LimitsConfig,
) -> Result<Vec<Message>, AblyError> {
    let (max_size, max_count) = (limits.max_message_size, limits.max_messages_per_publish);
    if messages.len() > max_count {
        return Err(AblyError::TooManyMessages {
            count: messages.len(),
            limit: max_count,
        });
    }
    let mut total = 0;
    messages
        .into_iter()
        .map(|mut m| {
            let (data, encoding) = data::normalise(m.data.take(), m.encoding.take())
                .map_err(|e| AblyError::InvalidData(e.to_string()))?;
            m.data = data;
            m.encoding = encoding;

            match (client_id, m.client_id.as_deref()) {
                (Some(own), Some(given)) if own != given => {
                    return Err(AblyError::InvalidClientId(format!(
                        "message clientId {given:?} does not match the connection's {own:?}"
                    )));
                }
                (Some(own), None) => m.client_id = Some(own.to_owned()),
                _ => {}
            }

            // The connection's identity is stamped by the master; a client may not forge it.
            m.connection_id = None;
            m.serial = None;
            // So is what kind of message it is (a create; updates and deletes are not
            // served), which ably-js would otherwise act on.
            m.action = None;

            total += m.size();
            if total > max_size {
                return Err(AblyError::MessageTooLarge {
                    size: total,
                    limit: max_size,
                });
            }
            Ok(m)
        })
        .collect()
}

/// Modes to grant: those requested (by flags or the `modes` param; the defaults when
/// none are), less those the capability does not allow.
fn granted_modes(
    requested_flags: i64,
    params: &BTreeMap<String, String>,
    allows: impl Fn(&str) -> bool,
) -> Result<i64, AblyError> {
    let mut requested = requested_flags & flags::ALL_MODES;
    if let Some(list) = params.get("modes") {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            requested |=
                flags::mode_from_name(name).ok_or_else(|| AblyError::InvalidParameter {
                    name: "modes",
                    reason: format!("unknown mode {name:?}"),
                })?;
        }
    }
    if requested == 0 {
        requested = flags::DEFAULT_MODES;
    }

    let permitted = [
        (flags::PUBLISH, "publish"),
        (flags::SUBSCRIBE, "subscribe"),
        (flags::PRESENCE, "presence"),
        (flags::PRESENCE_SUBSCRIBE, "subscribe"),
        (flags::ANNOTATION_PUBLISH, "annotation-publish"),
        (flags::ANNOTATION_SUBSCRIBE, "annotation-subscribe"),
        (flags::OBJECT_PUBLISH, "object-publish"),
        (flags::OBJECT_SUBSCRIBE, "object-subscribe"),
    ];
    Ok(permitted
        .iter()
        .filter(|(mode, op)| requested & mode != 0 && allows(op))
        .fold(0, |granted, (mode, _)| granted | mode))
}

/// The channel params Starling understands, echoed back in ATTACHED.
/// Where an attachment starts: after the channel serial a resuming client sends, else
/// as its `rewind` param says (first attach only), else live. A serial this cluster
/// did not write cannot be continued, so it attaches afresh.
fn attach_start(
    pm: &ProtocolMessage,
    params: &BTreeMap<String, String>,
) -> Result<Start, AblyError> {
    let from = (pm.channel_serial.as_deref()).and_then(|serial| serial.parse().ok());
    if let Some(from) = from {
        return Ok(Start::After(from));
    }
    match params.get("rewind") {
        Some(text) => Ok(Start::Rewind(Rewind::parse(text, crate::node::now_ms())?)),
        None => Ok(Start::Live),
    }
}

fn accepted_params(params: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    const UNDERSTOOD: &[&str] = &["modes", "echo", "rewind"];
    let accepted: BTreeMap<_, _> = params
        .iter()
        .filter(|(k, _)| UNDERSTOOD.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!accepted.is_empty()).then_some(accepted)
}

/// A connection-level ERROR: fatal to the connection (no `channel` field).
pub fn fatal(error: &AblyError) -> ProtocolMessage {
    ProtocolMessage {
        error: Some(error.to_info()),
        ..ProtocolMessage::new(action::ERROR)
    }
}

/// A channel-scoped ERROR: the channel fails, the connection carries on.
fn channel_error(name: &str, error: &AblyError) -> ProtocolMessage {
    ProtocolMessage {
        error: Some(error.to_info()),
        ..ProtocolMessage::for_channel(action::ERROR, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Data;

    fn limits(max_message_size: usize) -> LimitsConfig {
        LimitsConfig {
            max_message_size,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn empty_messages_are_bounded_by_count() {
        let many = vec![Message::default(); 1001];
        let err = prepare_messages(many, None, &limits(1000)).unwrap_err();
        assert_eq!(err.code(), 40009);
        assert!(prepare_messages(vec![Message::default(); 1000], None, &limits(10)).is_ok());
    }

    #[test]
    fn default_modes_when_none_are_requested() {
        let modes = granted_modes(0, &BTreeMap::new(), |_| true).unwrap();
        assert_eq!(modes, flags::DEFAULT_MODES);
    }

    #[test]
    fn modes_param_and_capability_narrow_the_grant() {
        let params = BTreeMap::from([("modes".to_owned(), "subscribe,publish".to_owned())]);
        let modes = granted_modes(0, &params, |op| op == "subscribe").unwrap();
        assert_eq!(modes, flags::SUBSCRIBE);

        let bad = BTreeMap::from([("modes".to_owned(), "fly".to_owned())]);
        assert_eq!(granted_modes(0, &bad, |_| true).unwrap_err().code(), 40003);
    }

    #[test]
    fn publish_size_counts_the_whole_array() {
        let m = |n: usize| Message {
            data: Some(Data::Text("x".repeat(n))),
            ..Message::default()
        };
        assert!(prepare_messages(vec![m(600), m(400)], None, &limits(1000)).is_ok());
        let err = prepare_messages(vec![m(600), m(401)], None, &limits(1000)).unwrap_err();
        assert_eq!(err.code(), 40009);
    }

    #[test]
    fn client_ids_are_filled_in_and_checked() {
        let given = |c: Option<&str>| Message {
            client_id: c.map(str::to_owned),
            ..Message::default()
        };
        let out = prepare_messages(vec![given(None)], Some("alice"), &limits(100)).unwrap();
        assert_eq!(out[0].client_id.as_deref(), Some("alice"));

        let err =
            prepare_messages(vec![given(Some("bob"))], Some("alice"), &limits(100)).unwrap_err();
        assert_eq!(err.code(), 40012);
    }
}
