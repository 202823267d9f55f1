//! Conversions between the relays' requests and events and the bridge's prost frames.
//! Messages travel as MessagePack (with field names), so a bridge never depends on a
//! client's wire format.

use std::collections::HashMap;

use starling_proto::bridge as pb;
use starling_proto::bridge::bridge_frame::Body;
use tracing::debug;

use crate::channel_master::{Body as EntryBody, Entry, HistoryPage};
use crate::channels::channel_key;
use crate::error::AblyError;
use crate::position::Position;
use crate::presence::{PresenceEntry, PresenceOp};
use crate::protocol::{ErrorInfo, Message, PresenceMessage};
use crate::region::{BridgeIn, BridgeOut};

/// Numbers the frames one side originates on a link, and remembers which request
/// each Forward or HistoryRead frame carried, so answers find their request.
pub struct Numbering {
    region: String,
    next: u64,
    forwards: HashMap<u64, u64>,
}

impl Numbering {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
            next: 1,
            forwards: HashMap::new(),
        }
    }

    pub fn frame(&mut self, body: Body) -> pb::BridgeFrame {
        let seq = self.next;
        self.next += 1;
        pb::BridgeFrame {
            origin_region: self.region.clone(),
            origin_seq: seq,
            body: Some(body),
        }
    }

    pub fn remember(&mut self, seq: u64, req: u64) {
        self.forwards.insert(seq, req);
    }
}

/// Splits a channel key (`appId/name`) into the bridge's two fields.
pub fn split_key(key: &str) -> (String, String) {
    match key.split_once('/') {
        Some((app, name)) => (app.to_owned(), name.to_owned()),
        None => (String::new(), key.to_owned()),
    }
}

pub fn to_pb(position: Position) -> pb::Position {
    pb::Position {
        epoch: position.epoch,
        seq: position.seq,
    }
}

pub fn from_pb(position: &pb::Position) -> Position {
    Position::new(position.epoch, position.seq)
}

pub fn encode_message(message: &Message) -> Vec<u8> {
    rmp_serde::to_vec_named(message).expect("messages serialise")
}

/// Presence events, members and operations travel as MessagePack too.
pub fn encode_value<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("presence values serialise")
}

pub fn decode_value<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, AblyError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| AblyError::MalformedFrame(format!("bridge {what}: {e}")))
}

pub fn decode_message(bytes: &[u8]) -> Result<Message, AblyError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| AblyError::MalformedFrame(format!("bridge message: {e}")))
}

/// A relay's request as a frame body, and the request an answer to it must name.
pub fn outgoing(out: BridgeOut) -> (Body, Option<u64>) {
    match out {
        BridgeOut::Handoff {
            channel,
            req,
            epoch,
            ..
        } => {
            let (app_id, channel) = split_key(&channel);
            let body = Body::HandoffRequest(pb::HandoffRequest {
                app_id,
                channel,
                epoch,
            });
            (body, Some(req))
        }
        BridgeOut::History {
            channel,
            req,
            query,
            ..
        } => {
            let (app_id, channel) = split_key(&channel);
            let query = rmp_serde::to_vec_named(&query).expect("queries serialise");
            let body = Body::HistoryRead(pb::HistoryRead {
                app_id,
                channel,
                query,
            });
            (body, Some(req))
        }
        BridgeOut::Interest {
            channel,
            from,
            interested,
            ..
        } => {
            let (app_id, channel) = split_key(&channel);
            let body = Body::Interest(pb::Interest {
                app_id,
                channel,
                interested,
                from: from.map(to_pb),
            });
            (body, None)
        }
        BridgeOut::Forward {
            channel,
            req,
            mut publish,
            ..
        } => {
            let (app_id, channel) = split_key(&channel);
            let presence = match publish.presence.take() {
                Some(op) => encode_value(&with_event_ids(op, &publish.id_base)),
                None => Vec::new(),
            };
            let messages = (publish.messages.iter().enumerate())
                .map(|(index, message)| {
                    // The id is fixed here, so a forward sent again is the same message.
                    let mut message = message.clone();
                    let id = message
                        .id
                        .get_or_insert_with(|| format!("{}:{index}", publish.id_base))
                        .clone();
                    pb::Publish {
                        id,
                        payload: encode_message(&message),
                        kind: pb::EntryKind::Message as i32,
                    }
                })
                .collect();
            let body = Body::Forward(pb::Forward {
                app_id,
                channel,
                messages,
                connection_id: publish.connection_id.unwrap_or_default(),
                presence,
            });
            (body, Some(req))
        }
    }
}

/// What a frame from the home region means to the relays (nothing, for a Hello or a
/// frame that does not decode, which is logged: a peer's bad frame never panics).
pub fn incoming(frame: pb::BridgeFrame, numbering: &mut Numbering) -> Vec<BridgeIn> {
    let Some(body) = frame.body else {
        return Vec::new();
    };
    match body {
        Body::Subscribed(s) => {
            let members = if s.members.is_empty() {
                Ok(Vec::new())
            } else {
                decode_value::<Vec<PresenceMessage>>(&s.members, "members")
            };
            let Ok(members) = members else {
                debug!(region.id = %frame.origin_region, "undecodable members; ignoring the confirmation");
                return Vec::new();
            };
            vec![BridgeIn::Subscribed {
                channel: channel_key(&s.app_id, &s.channel),
                position: s.position.as_ref().map(from_pb).unwrap_or_default(),
                resumed: s.resumed,
                error: error_of(s.error_code, s.error_message),
                members,
            }]
        }
        Body::Sequenced(s) => match entries(&s.entries) {
            Ok(entries) => vec![BridgeIn::Sequenced {
                channel: channel_key(&s.app_id, &s.channel),
                previous: s.previous.as_ref().map(from_pb),
                entries,
            }],
            Err(error) => {
                debug!(region.id = %frame.origin_region, "undecodable sequenced frame: {error}");
                Vec::new()
            }
        },
        Body::Ack(ack) => {
            let Some(req) = numbering.forwards.remove(&ack.acked_seq) else {
                return Vec::new();
            };
            let result = match error_of(ack.error_code, ack.error_message) {
                Some(error) => Err(error),
                None => Ok(ack
                    .positions
                    .iter()
                    .map(|p| Some(from_pb(p).to_string()))
                    .collect()),
            };
            vec![BridgeIn::Ack { req, result }]
        }
        Body::Refused(r) => vec![BridgeIn::Refused {
            channel: channel_key(&r.app_id, &r.channel),
            error: error_of(r.error_code, r.error_message)
                .unwrap_or_else(|| AblyError::Internal("refused".into()).to_info()),
        }],
        Body::HistoryPage(page) => {
            let Some(req) = numbering.forwards.remove(&page.read_seq) else {
                return Vec::new();
            };
            let result = match error_of(page.error_code, page.error_message) {
                Some(error) => Err(error),
                None => rmp_serde::from_slice::<HistoryPage>(&page.page).map_err(|e| {
                    AblyError::MalformedFrame(format!("bridge history page: {e}")).to_info()
                }),
            };
            vec![BridgeIn::HistoryPage { req, result }]
        }
        Body::HandoffReply(reply) => handed_over(reply, numbering),
        Body::Hello(_)
        | Body::Interest(_)
        | Body::Forward(_)
        | Body::HistoryRead(_)
        | Body::HandoffRequest(_) => Vec::new(),
    }
}

fn handed_over(reply: pb::HandoffReply, numbering: &mut Numbering) -> Vec<BridgeIn> {
    let Some(req) = numbering.forwards.remove(&reply.request_seq) else {
        return Vec::new();
    };
    if reply.error_code != 0 {
        // Not handed over (the previous home could not confirm the move in time): the
        // new home asks again until its own bound runs out.
        debug!(
            code = reply.error_code,
            "handoff refused: {}", reply.error_message
        );
        return Vec::new();
    }
    let state = if reply.snapshot.is_empty() {
        None
    } else {
        match rmp_serde::from_slice(&reply.snapshot) {
            Ok(state) => Some(state),
            Err(error) => {
                debug!("undecodable handoff state: {error}");
                return Vec::new();
            }
        }
    };
    vec![BridgeIn::HandedOver { req, state }]
}

fn entries(entries: &[pb::SequencedEntry]) -> Result<Vec<Entry>, AblyError> {
    entries
        .iter()
        .map(|e| {
            let body = if e.kind == pb::EntryKind::Presence as i32 {
                EntryBody::Presence(PresenceEntry {
                    message: decode_value(&e.payload, "presence event")?,
                    holder: None,
                    grace_ms: 0,
                })
            } else {
                EntryBody::Message(decode_message(&e.payload)?)
            };
            Ok(Entry {
                position: e.position.as_ref().map(from_pb).unwrap_or_default(),
                body,
            })
        })
        .collect()
}

/// Presence events get their ids here, like forwarded messages, so a forward sent
/// again carries the same events.
fn with_event_ids(op: PresenceOp, id_base: &str) -> PresenceOp {
    match op {
        PresenceOp::Events {
            holder,
            grace_ms,
            mut messages,
        } => {
            for (index, message) in messages.iter_mut().enumerate() {
                message
                    .id
                    .get_or_insert_with(|| format!("{id_base}:{index}"));
            }
            PresenceOp::Events {
                holder,
                grace_ms,
                messages,
            }
        }
        other => other,
    }
}

/// An error carried as code and message (0: none). The status follows the code's
/// class, as the home's own error would have had it.
pub fn error_of(code: u32, message: String) -> Option<ErrorInfo> {
    (code != 0).then(|| {
        let code = i64::from(code);
        ErrorInfo {
            code,
            status_code: if code >= 50_000 {
                503
            } else {
                (code / 100).clamp(400, 599)
            },
            message,
            href: None,
        }
    })
}
