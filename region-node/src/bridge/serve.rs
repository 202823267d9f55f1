//! The accepting side of a bridge: another region's node declares interest in
//! channels homed here and forwards its publishes; this node serves them through its
//! own region exactly as it serves a connection. Each interest is an attachment of this
//! node's ChannelClient (with its own outbox, so it gets ATTACHED, replays and live
//! frames in order), and each forward a publish through it, answered once the home
//! master sequenced and copied it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use starling_proto::bridge as pb;
use starling_proto::bridge::bridge_frame::Body;
use starling_proto::bridge::bridge_server::{Bridge, BridgeServer};
use starling_proto::tls::{server_tls, TlsFiles};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::frames::{
    self, decode_message, decode_value, encode_message, encode_value, to_pb, Numbering,
};
use super::{MAX_FRAME_BYTES, PROTOCOL_VERSION};
use crate::channel_client::Subscriber;
use crate::channel_master::{HistoryQuery, Publish};
use crate::channels::{channel_key, validate_name};
use crate::error::AblyError;
use crate::node::Node;
use crate::outbox::{self, Inbox, Outgoing};
use crate::position::Position;
use crate::presence::{self, PresenceOp};
use crate::protocol::{
    action, codec, flags, Encoded, Format, Message, PresenceMessage, ProtocolMessage,
};
use crate::region::{Leave, Start};

/// Bytes queued toward one remote region per channel before its interest is cut off
/// (it declares interest again from where it was, and the home replays the rest).
const INTEREST_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Serves bridges on `listener` until the process ends.
pub fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    tls: &TlsFiles,
) -> anyhow::Result<()> {
    let service = BridgeServer::new(Acceptor {
        node,
        links: AtomicU64::new(1),
    })
    .max_decoding_message_size(MAX_FRAME_BYTES)
    .max_encoding_message_size(MAX_FRAME_BYTES);
    let router = Server::builder()
        .tls_config(server_tls(tls)?)?
        .add_service(service);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        if let Err(error) = router.serve_with_incoming(incoming).await {
            tracing::error!("bridge listener stopped: {error}");
        }
    });
    Ok(())
}

struct Acceptor {
    node: Arc<Node>,
    links: AtomicU64,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::BridgeFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Bridge for Acceptor {
    type LinkStream = FrameStream;

    async fn link(
        &self,
        request: Request<Streaming<pb::BridgeFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let peer: Option<SocketAddr> = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let number = self.links.fetch_add(1, Ordering::Relaxed);
        let link = ServedLink::new(self.node.clone(), tx, number);
        tokio::spawn(link.run(inbound, peer));
        let frames = UnboundedReceiverStream::new(rx).map(Ok::<_, Status>);
        Ok(Response::new(Box::pin(frames)))
    }
}

/// One accepted stream and the interests it holds.
struct ServedLink {
    node: Arc<Node>,
    tx: mpsc::UnboundedSender<pb::BridgeFrame>,
    numbering: Arc<parking_lot::Mutex<Numbering>>,
    /// A prefix for the pseudo-connection ids of this link's attachments.
    id: String,
    /// Per channel key: the attachment's connection id and the task pumping its frames.
    interests: HashMap<String, (String, JoinHandle<()>)>,
    remote: String,
    next_attachment: u64,
    /// Counts this link among the node's accepted links once its hello named the
    /// remote node; dropping it uncounts it.
    counted: Option<crate::observe::AcceptedLink>,
}

impl ServedLink {
    fn new(node: Arc<Node>, tx: mpsc::UnboundedSender<pb::BridgeFrame>, number: u64) -> Self {
        let region = node.config.node.region.clone();
        Self {
            id: format!("bridge-{}-{number}", node.config.node.id),
            node,
            tx,
            numbering: Arc::new(parking_lot::Mutex::new(Numbering::new(&region))),
            interests: HashMap::new(),
            remote: String::new(),
            next_attachment: 1,
            counted: None,
        }
    }

    async fn run(mut self, mut inbound: Streaming<pb::BridgeFrame>, peer: Option<SocketAddr>) {
        loop {
            let frame = match inbound.message().await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(status) => {
                    debug!(?peer, "bridge stream ended: {}", status.message());
                    break;
                }
            };
            self.on_frame(frame);
        }
        for (key, (connection_id, pump)) in self.interests.drain() {
            pump.abort();
            self.node.region.detach(&key, &connection_id, Leave::Now);
        }
        info!(region.id = %self.remote, "bridge link closed");
    }

    fn send(&self, body: Body) {
        let frame = self.numbering.lock().frame(body);
        let _ = self.tx.send(frame);
    }

    fn on_frame(&mut self, frame: pb::BridgeFrame) {
        let origin_seq = frame.origin_seq;
        match frame.body {
            Some(Body::Hello(hello)) => {
                self.remote = frame.origin_region.clone();
                info!(region.id = %self.remote, peer.node = %hello.node_id, "bridge link accepted");
                self.counted = Some(crate::observe::AcceptedLink::new(
                    &self.remote,
                    &hello.node_id,
                ));
                self.send(Body::Hello(pb::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    node_id: self.node.config.node.id.clone(),
                    registry_version: 0,
                }));
            }
            Some(Body::Interest(interest)) => self.on_interest(interest),
            Some(Body::Forward(forward)) => self.on_forward(forward, origin_seq),
            Some(Body::HistoryRead(read)) => self.on_history(read, origin_seq),
            Some(Body::HandoffRequest(request)) => self.on_handoff(request, origin_seq),
            Some(other) => debug!(?other, "unexpected bridge frame"),
            None => debug!("empty bridge frame"),
        }
    }

    /// Whether this region is the channel's home, as this node's catalog copy says:
    /// only then does it serve the channel (split horizon).
    fn homed_here(&self, key: &str) -> Result<(), AblyError> {
        let here = &self.node.config.node.region;
        match self.node.control.known_home(key) {
            Some(home) if &home.region == here => Ok(()),
            Some(home) => Err(AblyError::HomedElsewhere {
                channel: key.to_owned(),
                region: home.region,
            }),
            None => Err(AblyError::HomedElsewhere {
                channel: key.to_owned(),
                region: "(none yet)".into(),
            }),
        }
    }

    fn refuse(&self, app_id: String, channel: String, error: &AblyError) {
        self.send(Body::Refused(pb::Refused {
            app_id,
            channel,
            error_code: error.code() as u32,
            error_message: error.to_string(),
        }));
    }

    fn on_interest(&mut self, interest: pb::Interest) {
        let key = channel_key(&interest.app_id, &interest.channel);
        if let Some((connection_id, pump)) = self.interests.remove(&key) {
            pump.abort();
            self.node.region.detach(&key, &connection_id, Leave::Now);
        }
        if !interest.interested {
            return;
        }
        let checked = validate_name(&interest.channel).and_then(|()| self.homed_here(&key));
        if let Err(error) = checked {
            debug!(channel.name = %key, "bridge interest refused: {error}");
            return self.refuse(interest.app_id, interest.channel, &error);
        }

        let connection_id = format!("{}-{}", self.id, self.next_attachment);
        self.next_attachment += 1;
        let (outbox, inbox) = outbox::channel(
            connection_id.clone().into(),
            interest.app_id.clone().into(),
            Format::Msgpack,
            INTEREST_QUEUE_BYTES,
        );
        // The remote region's relay keeps the members too: it gets them listed on
        // every (re)start and then every presence event.
        let subscriber = Subscriber {
            outbox,
            modes: flags::SUBSCRIBE | flags::PRESENCE_SUBSCRIBE,
            echo: true,
            sync_always: true,
        };
        let attached = ProtocolMessage::for_channel(action::ATTACHED, &interest.channel);
        let start = match interest.from.as_ref().map(frames::from_pb) {
            Some(from) => Start::After(from),
            None => Start::Live,
        };
        self.node.region.attach(&key, subscriber, attached, start);

        let pump = Pump {
            app_id: interest.app_id,
            channel: interest.channel,
            numbering: self.numbering.clone(),
            tx: self.tx.clone(),
            last: None,
            confirming: None,
        };
        let task = tokio::spawn(pump.run(inbox));
        self.interests.insert(key, (connection_id, task));
    }

    fn on_forward(&self, forward: pb::Forward, origin_seq: u64) {
        let key = channel_key(&forward.app_id, &forward.channel);
        let ack = move |positions: Vec<pb::Position>, error: Option<&AblyError>| pb::Ack {
            acked_seq: origin_seq,
            positions,
            error_code: error.map_or(0, |e| e.code() as u32),
            error_message: error.map(ToString::to_string).unwrap_or_default(),
        };
        let publish = validate_name(&forward.channel)
            .and_then(|()| self.homed_here(&key))
            .and_then(|()| {
                let limit = self.node.config.limits.max_message_size;
                forwarded_publish(&forward, &self.remote, origin_seq, limit)
            });
        let publish = match publish {
            Ok(publish) => publish,
            Err(error) => return self.send(Body::Ack(ack(Vec::new(), Some(&error)))),
        };

        // Handed to the region now, in the order the frames came: a publisher's
        // messages keep their order. Only the wait for the outcome runs apart.
        let outcome = self.node.region.publish(&key, publish);
        let numbering = self.numbering.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let outcome = outcome.await;
            let body = match outcome {
                Ok(Ok(serials)) => {
                    let positions = (serials.iter())
                        .map(|s| {
                            s.as_deref()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or_default()
                        })
                        .map(to_pb)
                        .collect();
                    Body::Ack(ack(positions, None))
                }
                Ok(Err(info)) => Body::Ack(pb::Ack {
                    acked_seq: origin_seq,
                    positions: Vec::new(),
                    error_code: info.code as u32,
                    error_message: info.message,
                }),
                Err(_) => {
                    let error = AblyError::Internal("region task ended".into());
                    Body::Ack(ack(Vec::new(), Some(&error)))
                }
            };
            let frame = numbering.lock().frame(body);
            let _ = tx.send(frame);
        });
    }
}

impl ServedLink {
    /// This region was the channel's home and the new home asks for it: once this
    /// node's view, and then that of the node that mastered the channel here, show the
    /// move (so nothing here acknowledges publishes of it any more), the state goes
    /// to the new home.
    fn on_handoff(&self, request: pb::HandoffRequest, origin_seq: u64) {
        let key = channel_key(&request.app_id, &request.channel);
        let node = self.node.clone();
        let remote = self.remote.clone();
        let numbering = self.numbering.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let reply = handed_over(&node, &key, request.epoch, &remote, origin_seq).await;
            let frame = numbering.lock().frame(Body::HandoffReply(reply));
            let _ = tx.send(frame);
        });
    }

    /// Reads history here, the home, through this node's region like a REST read.
    fn on_history(&self, read: pb::HistoryRead, origin_seq: u64) {
        let key = channel_key(&read.app_id, &read.channel);
        let refused = |error: &AblyError| pb::HistoryPage {
            read_seq: origin_seq,
            page: Vec::new(),
            error_code: error.code() as u32,
            error_message: error.to_string(),
        };
        let query = validate_name(&read.channel)
            .and_then(|()| self.homed_here(&key))
            .and_then(|()| {
                rmp_serde::from_slice::<HistoryQuery>(&read.query)
                    .map_err(|e| AblyError::MalformedFrame(format!("bridge history query: {e}")))
            });
        let query = match query {
            Ok(query) => query,
            Err(error) => return self.send(Body::HistoryPage(refused(&error))),
        };
        let region = self.node.region.clone();
        let numbering = self.numbering.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let page = match region.history(&key, query).await {
                Ok(page) => pb::HistoryPage {
                    read_seq: origin_seq,
                    page: rmp_serde::to_vec_named(&page).expect("pages serialise"),
                    error_code: 0,
                    error_message: String::new(),
                },
                Err(info) => pb::HistoryPage {
                    read_seq: origin_seq,
                    page: Vec::new(),
                    error_code: info.code as u32,
                    error_message: info.message,
                },
            };
            let frame = numbering.lock().frame(Body::HistoryPage(page));
            let _ = tx.send(frame);
        });
    }
}

/// How long the previous home tries to confirm the move before it answers no.
const HANDOFF_CONFIRM: std::time::Duration = std::time::Duration::from_secs(4);

async fn handed_over(
    node: &Node,
    key: &str,
    epoch: u64,
    remote: &str,
    origin_seq: u64,
) -> pb::HandoffReply {
    let deadline = tokio::time::Instant::now() + HANDOFF_CONFIRM;
    while tokio::time::Instant::now() < deadline {
        // Only the new home, under the epoch it was given, gets the state.
        let seen = (node.control.known_home(key))
            .is_some_and(|h| epoch > 0 && h.epoch >= epoch && h.region == remote);
        if seen {
            if let Ok(state) = node.region.handoff(key, epoch).await {
                let snapshot = state
                    .map(|s| rmp_serde::to_vec_named(&s).expect("snapshots serialise"))
                    .unwrap_or_default();
                return pb::HandoffReply {
                    request_seq: origin_seq,
                    snapshot,
                    error_code: 0,
                    error_message: String::new(),
                };
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let error = AblyError::Timeout("the move has not reached this region yet".into());
    pb::HandoffReply {
        request_seq: origin_seq,
        snapshot: Vec::new(),
        error_code: error.code() as u32,
        error_message: error.to_string(),
    }
}

/// A forwarded publish as this region's master takes it: the messages with the ids
/// the relay fixed, stamped with the publishing connection.
pub(super) fn forwarded_publish(
    forward: &pb::Forward,
    remote: &str,
    origin_seq: u64,
    limit: usize,
) -> Result<Publish, AblyError> {
    let connection_id = (!forward.connection_id.is_empty()).then(|| forward.connection_id.clone());
    if !forward.presence.is_empty() {
        let op = forwarded_presence(&forward.presence, remote, limit)?;
        let id_base = format!("bridge:{remote}:{origin_seq}");
        return Ok(Publish::presence(op, id_base, connection_id));
    }
    let messages = (forward.messages.iter())
        .map(|p| {
            let mut message = decode_message(&p.payload)?;
            message.id = Some(p.id.clone());
            Ok(message)
        })
        .collect::<Result<Vec<_>, AblyError>>()?;
    // The same bound as a client's publish: a peer's must not be larger.
    let size: usize = messages.iter().map(Message::size).sum();
    if size > limit {
        return Err(AblyError::MessageTooLarge { size, limit });
    }
    Ok(Publish::messages(
        messages,
        format!("bridge:{remote}:{origin_seq}"),
        connection_id,
    ))
}

/// A presence operation from another region: it may speak only for its own nodes'
/// connections, and its events are bounded like a client's.
fn forwarded_presence(bytes: &[u8], remote: &str, limit: usize) -> Result<PresenceOp, AblyError> {
    let op: PresenceOp = decode_value(bytes, "presence operation")?;
    let region = match &op {
        PresenceOp::Events { holder, .. }
        | PresenceOp::Gone { holder, .. }
        | PresenceOp::Here { holder, .. } => &holder.region,
        PresenceOp::Alive { region, .. } => region,
    };
    if region != remote {
        return Err(AblyError::Forbidden(format!(
            "region {remote} may not report presence held in region {region}"
        )));
    }
    if let PresenceOp::Events { messages, .. } = &op {
        let size: usize = messages.iter().map(presence::size).sum();
        if size > limit {
            return Err(AblyError::MessageTooLarge { size, limit });
        }
        if messages
            .iter()
            .any(|m| m.client_id.is_none() || m.connection_id.is_none())
        {
            return Err(AblyError::PresenceWithoutClientId);
        }
    }
    Ok(op)
}

/// Carries one interest's frames from its outbox onto the stream.
struct Pump {
    app_id: String,
    channel: String,
    numbering: Arc<parking_lot::Mutex<Numbering>>,
    tx: mpsc::UnboundedSender<pb::BridgeFrame>,
    /// The last position sent, named as `previous` in the next Sequenced frame.
    last: Option<Position>,
    /// A confirmation held back while the members are listed (SYNC pages).
    confirming: Option<(pb::Subscribed, Vec<PresenceMessage>)>,
}

impl Pump {
    async fn run(mut self, mut inbox: Inbox) {
        loop {
            let body = match inbox.recv().await {
                Outgoing::Frame(Encoded::Binary(bytes)) => match codec::decode_msgpack(&bytes) {
                    Ok(mut frame) => {
                        // The bytes leave out what a receiver derives from the frame.
                        frame.fill_from_parent();
                        self.translate(frame)
                    }
                    Err(error) => {
                        debug!("undecodable frame for a bridge: {error}");
                        None
                    }
                },
                Outgoing::Frame(Encoded::Text(_)) => None,
                // The attachment was cut off (its queue overflowed): the remote region
                // declares interest again from what it holds.
                Outgoing::Fail(info) | Outgoing::Disconnect(info) => {
                    Some(Body::Refused(pb::Refused {
                        app_id: self.app_id.clone(),
                        channel: self.channel.clone(),
                        error_code: info.code as u32,
                        error_message: info.message,
                    }))
                }
            };
            if let Some(body) = body {
                let frame = self.numbering.lock().frame(body);
                if self.tx.send(frame).is_err() {
                    return;
                }
            }
        }
    }

    fn translate(&mut self, frame: ProtocolMessage) -> Option<Body> {
        let position = frame
            .channel_serial
            .as_deref()
            .and_then(|s| s.parse::<Position>().ok());
        match frame.action {
            action::ATTACHED => {
                let position = position.unwrap_or_default();
                self.last = Some(position);
                let frame_flags = frame.flags.unwrap_or(0);
                let subscribed = pb::Subscribed {
                    app_id: self.app_id.clone(),
                    channel: self.channel.clone(),
                    position: Some(to_pb(position)),
                    resumed: frame_flags & flags::RESUMED != 0,
                    error_code: frame.error.as_ref().map_or(0, |e| e.code as u32),
                    error_message: frame.error.map(|e| e.message).unwrap_or_default(),
                    members: Vec::new(),
                };
                if frame_flags & flags::HAS_PRESENCE != 0 {
                    self.confirming = Some((subscribed, Vec::new()));
                    return None;
                }
                Some(Body::Subscribed(subscribed))
            }
            action::SYNC => {
                let (_, members) = self.confirming.as_mut()?;
                members.extend(frame.presence.unwrap_or_default());
                let last_page = (frame.channel_serial.as_deref()).is_none_or(|s| {
                    s.split_once(':')
                        .is_none_or(|(_, cursor)| cursor.is_empty())
                });
                if !last_page {
                    return None;
                }
                let (mut subscribed, members) = self.confirming.take()?;
                subscribed.members = encode_value(&members);
                Some(Body::Subscribed(subscribed))
            }
            action::PRESENCE => {
                let entries: Vec<pb::SequencedEntry> = (frame.presence.unwrap_or_default().iter())
                    .map(|m| pb::SequencedEntry {
                        position: position.map(to_pb),
                        id: m.id.clone().unwrap_or_default(),
                        kind: pb::EntryKind::Presence as i32,
                        payload: encode_value(m),
                    })
                    .collect();
                let previous = self.last.map(to_pb);
                if let Some(position) = position {
                    self.last = Some(position);
                }
                Some(Body::Sequenced(pb::Sequenced {
                    app_id: self.app_id.clone(),
                    channel: self.channel.clone(),
                    previous,
                    entries,
                }))
            }
            action::MESSAGE => {
                let entries: Vec<pb::SequencedEntry> = (frame.messages.unwrap_or_default().iter())
                    .filter_map(|m| {
                        let position: Position = m.serial.as_deref()?.parse().ok()?;
                        Some(pb::SequencedEntry {
                            position: Some(to_pb(position)),
                            id: m.id.clone().unwrap_or_default(),
                            kind: pb::EntryKind::Message as i32,
                            payload: encode_message(m),
                        })
                    })
                    .collect();
                let previous = self.last.map(to_pb);
                if let Some(last) = entries.last().and_then(|e| e.position.as_ref()) {
                    self.last = Some(frames::from_pb(last));
                }
                Some(Body::Sequenced(pb::Sequenced {
                    app_id: self.app_id.clone(),
                    channel: self.channel.clone(),
                    previous,
                    entries,
                }))
            }
            action::ERROR => Some(Body::Refused(pb::Refused {
                app_id: self.app_id.clone(),
                channel: self.channel.clone(),
                error_code: frame.error.as_ref().map_or(50001, |e| e.code as u32),
                error_message: frame.error.map(|e| e.message).unwrap_or_default(),
            })),
            _ => None,
        }
    }
}
