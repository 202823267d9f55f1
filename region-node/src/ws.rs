//! The WebSocket edge: accepts the upgrade, authenticates inside the socket, sends
//! CONNECTED, then runs the connection's one task until the socket ends.
//!
//! Every refusal happens after the upgrade, as an ERROR frame followed by a close:
//! an HTTP error on the upgrade would only make ably-js retry forever without ever
//! seeing the error code (protocol.md §1.5).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures_util::SinkExt;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, debug_span, Instrument};

use crate::auth::{self, Identity};
use crate::connection::{ack_frame, fatal, Connection, Next, Outcome, PendingAck, Replies};
use crate::connection_key::ConnectionKey;
use crate::data_dir::random_string;
use crate::error::AblyError;
use crate::node::{now_ms, Node};
use crate::outbox::{self, Inbox, Outgoing};
use crate::protocol::{
    action, codec, ConnectionDetails, Encoded, ErrorInfo, Format, ProtocolMessage,
};

/// Largest number of queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Bytes a socket read asks for. tungstenite zeroes this much before every read, even
/// one that finds nothing, and every wake-up of a connection's loop polls a read: at
/// the 128 KiB default that was 43% of a node's CPU under fan-out and 149 KB of
/// resident memory per idle connection (16.6 KB at 4 KiB, 13.5 KB at 1 KiB). Client
/// frames are mostly small; a larger one grows the buffer to its length.
const READ_BUFFER: usize = 1024;

/// Query parameters of the WebSocket URL (protocol.md §1.1), read leniently.
#[derive(Debug, Default)]
pub struct ConnectParams {
    pub key: Option<String>,
    pub access_token: Option<String>,
    pub client_id: Option<String>,
    pub echo: bool,
    pub format: Format,
    pub heartbeats: bool,
    pub resume: Option<String>,
    pub recover: Option<String>,
    /// `remainPresentFor`: how long presence members outlive an abrupt loss.
    pub remain_present_for_ms: Option<u64>,
}

impl ConnectParams {
    pub fn parse(query: Option<&str>) -> Self {
        let mut params = ConnectParams {
            echo: true,
            ..Self::default()
        };
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        for (name, value) in pairs {
            let value = value.into_owned();
            match name.as_ref() {
                "key" => params.key = Some(value),
                "access_token" => params.access_token = Some(value),
                "clientId" => params.client_id = Some(value),
                "echo" => params.echo = value != "false",
                "format" => params.format = Format::from_query(Some(&value)),
                "heartbeats" => params.heartbeats = value == "true",
                "resume" => params.resume = Some(value),
                "recover" => params.recover = Some(value),
                "remainPresentFor" => params.remain_present_for_ms = value.parse().ok(),
                _ => {}
            }
        }
        params
    }
}

pub async fn upgrade(
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    RawQuery(query): RawQuery,
    State(node): State<Arc<Node>>,
) -> Response {
    let Ok(ws) = ws else {
        let error = AblyError::MalformedFrame("expected a WebSocket upgrade on /".into());
        return crate::rest::error_response(Format::Json, &error);
    };
    let limit = node.config.limits.max_frame_size;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| serve(socket, query, node))
}

async fn serve(mut socket: WebSocket, query: Option<String>, node: Arc<Node>) {
    let params = ConnectParams::parse(query.as_deref());
    // The slot is held until this socket ends, authenticating or not, so a node at
    // its limit turns clients away before spending anything on their credentials.
    let limit = node.config.limits.max_connections;
    let Some(_slot) = node.connections.admit(limit) else {
        metrics::counter!("starling_limit_refusals", "limit" => "connections").increment(1);
        debug!(limit, "refusing connection: the node is full");
        let full = AblyError::NodeFull { limit }.to_info();
        let _ = last_word(&mut socket, action::DISCONNECTED, full, params.format).await;
        return;
    };
    let identity = match authenticate(&node, &params) {
        Ok(identity) => identity,
        Err(error) => {
            debug!(code = error.code(), "refusing connection: {error}");
            let _ = send(&mut socket, &fatal(&error), params.format).await;
            let _ = socket.close().await;
            return;
        }
    };

    // A node cut off from its region's majority sends clients elsewhere (DISCONNECTED
    // is retriable, unlike ERROR).
    if !*node.region.quorum().borrow() {
        let _ = last_word(
            &mut socket,
            action::DISCONNECTED,
            AblyError::NoQuorum.to_info(),
            params.format,
        )
        .await;
        return;
    }

    let (connection_id, lost) = continuity(&node, &params);
    if lost.is_none() && (params.resume.is_some() || params.recover.is_some()) {
        // The same client on a transport this node still holds: that one is over.
        node.connections.supersede(&connection_id).await;
    }
    let span = debug_span!("connection", connection.id = %connection_id, app.id = %identity.app.id);
    run(socket, params, identity, (connection_id, lost), node)
        .instrument(span)
        .await;
}

/// The connection id a new transport continues, and why continuity was lost when it
/// was. A resume or recover key names its connection and proves it was issued by this
/// cluster, so any node of the region continues it without asking the node that
/// issued it (which may be dead): what was already applied is known to the channel
/// masters by message id, and what was missed they replay from channel serials.
fn continuity(node: &Node, params: &ConnectParams) -> (Arc<str>, Option<ErrorInfo>) {
    let fresh = || -> Arc<str> { random_string(12).into() };
    let Some(text) = params.resume.as_ref().or(params.recover.as_ref()) else {
        return (fresh(), None);
    };
    let key = match node.keys.verify(text) {
        Ok(key) => key,
        Err(error) => {
            debug!("connection key refused: {error}");
            return (fresh(), Some(AblyError::InvalidConnectionKey.to_info()));
        }
    };
    // A key from another region of the federation continues here too: serials are
    // assigned by each channel's home, so this region's relays (or masters) continue
    // from them, and report a gap where what was missed is no longer retained.
    if key.region != node.config.node.region {
        debug!(key.region = %key.region, "continuing a connection from another region");
    }
    let age = now_ms().saturating_sub(i64::try_from(key.issued_ms).unwrap_or(i64::MAX));
    if age > resume_window_ms(node) {
        return (fresh(), Some(AblyError::ConnectionExpired.to_info()));
    }
    (key.connection_id.into(), None)
}

/// How old a connection key may be when it is presented. Keys are renewed every
/// quarter of the state TTL while the connection lives (see `pump`), so a key's age
/// is the time since the connection was last seen, give or take one renewal.
fn resume_window_ms(node: &Node) -> i64 {
    let ttl = node.config.connection.state_ttl_ms;
    i64::try_from(ttl + key_renewal(node).as_millis() as u64).unwrap_or(i64::MAX)
}

fn key_renewal(node: &Node) -> Duration {
    Duration::from_millis((node.config.connection.state_ttl_ms / 4).max(1_000))
}

async fn run(
    mut socket: WebSocket,
    params: ConnectParams,
    identity: Identity,
    (connection_id, lost): (Arc<str>, Option<ErrorInfo>),
    node: Arc<Node>,
) {
    let (outbox, inbox) = outbox::channel(
        connection_id.clone(),
        identity.app.id.as_str().into(),
        params.format,
        node.config.limits.max_connection_queue_bytes,
    );
    let connected = connected_frame(&node, &connection_id, &identity, lost);
    let holder = identity.token_holder();
    let mut connection = Connection::new(node.clone(), identity, outbox.clone(), params.echo);
    if let Some(grace_ms) = params.remain_present_for_ms {
        connection.set_presence_grace_ms(grace_ms);
    }

    node.connections.insert(outbox);
    node.connections.hold_token(&connection_id, holder);
    metrics::gauge!("starling_connections").increment(1.0);
    debug!("connected");

    let mut last_heard = Instant::now();
    if send(&mut socket, &connected, params.format).await.is_ok() {
        last_heard = pump(&mut socket, &mut connection, inbox, &node, &params).await;
    }

    // Presence grace counts from the last frame the client sent.
    let silent_ms = i64::try_from(last_heard.elapsed().as_millis()).unwrap_or(0);
    connection.detach_all(connection.leave_after(now_ms() - silent_ms));
    node.connections.remove(&connection_id);
    metrics::gauge!("starling_connections").decrement(1.0);
    debug!("disconnected");
}

/// The connection's loop: inbound frames, publish outcomes, queued outbound frames
/// and keep-alives. Returns when the client was last heard from.
async fn pump(
    socket: &mut WebSocket,
    connection: &mut Connection,
    mut inbox: Inbox,
    node: &Node,
    params: &ConnectParams,
) -> Instant {
    let idle = node.config.connection.max_idle_interval();
    let mut keepalive = tokio::time::interval(idle / 2);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut replies = Replies::default();
    let mut acks: VecDeque<PendingAck> = VecDeque::new();

    // The token's expiry, on tokio's clock; re-armed when in-band AUTH renews it.
    let mut expires_ms = connection.identity().expires_ms();
    let expiry = tokio::time::sleep_until(token_deadline(expires_ms));
    tokio::pin!(expiry);

    // A fresh connection key now and then (an unsolicited CONNECTED, which clients
    // take as a details update), so a key's age tells how long ago the connection
    // was last alive, on whichever node it is presented.
    let renewal = key_renewal(node);
    let mut renew_key = tokio::time::interval_at(Instant::now() + renewal, renewal);
    renew_key.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = renew_key.tick() => {
                let id = connection.outbox_id();
                let update = connected_frame(node, &id, connection.identity(), None);
                if send(socket, &update, params.format).await.is_err() {
                    return last_heard;
                }
            }
            () = &mut expiry, if expires_ms.is_some() => {
                debug!("token expired");
                let expired = AblyError::TokenExpired.to_info();
                let _ = last_word(socket, action::DISCONNECTED, expired, params.format).await;
                return last_heard;
            }
            inbound = socket.recv() => {
                last_heard = Instant::now();
                let unreadable = matches!(inbound, Some(Err(_)));
                let next = match inbound {
                    Some(Ok(frame)) => on_frame(frame, connection, &mut replies),
                    Some(Err(error)) => on_read_error(&error, &mut replies, node),
                    None => return last_heard,
                };
                acks.append(&mut replies.acks);
                for reply in replies.now.drain(..) {
                    if reply.action == action::ERROR && reply.channel.is_none() {
                        // A fatal ERROR fails the connection: it cannot resume.
                        connection.mark_failed();
                    }
                    if send(socket, &reply, params.format).await.is_err() {
                        return last_heard;
                    }
                }
                if next == Next::Close {
                    let _ = socket.close().await;
                    drain_briefly(socket, unreadable).await;
                    return last_heard;
                }
                if connection.identity().expires_ms() != expires_ms {
                    expires_ms = connection.identity().expires_ms();
                    expiry.as_mut().reset(token_deadline(expires_ms));
                }
            }
            outcome = first_outcome(&mut acks), if !acks.is_empty() => {
                let written = send_acks(socket, outcome, &mut acks, params.format);
                if !within(idle, written).await {
                    return last_heard;
                }
            }
            queued = inbox.recv() => {
                let Some(first) = queued else { return last_heard };
                // A client that stops reading blocks the write; it gets an idle
                // interval to drain, then the connection is dropped.
                let written = write_queued(socket, first, &mut inbox, params.format);
                if !within(idle, written).await {
                    return last_heard;
                }
            }
            _ = keepalive.tick() => {
                // A client that has sent nothing, not even a pong, for three idle
                // intervals is gone; the link is how we learn it.
                if last_heard.elapsed() > idle * 3 {
                    debug!("closing silent connection");
                    return last_heard;
                }
                if keep_alive(socket, params).await.is_err() {
                    return last_heard;
                }
            }
        }
    }
}

/// When a token expiring at `expires_ms` (wall clock) runs out; far away for none.
fn token_deadline(expires_ms: Option<i64>) -> Instant {
    const NEVER: Duration = Duration::from_secs(365 * 24 * 60 * 60);
    let left = expires_ms.map_or(NEVER, |at| {
        Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))
    });
    Instant::now() + left
}

/// Whether a socket write finished in time and without error.
async fn within(
    limit: std::time::Duration,
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> bool {
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

/// Waits for the oldest pending publish's outcome.
async fn first_outcome(acks: &mut VecDeque<PendingAck>) -> Outcome {
    let head = acks.front_mut().expect("guarded by the select condition");
    (&mut head.outcome)
        .await
        .unwrap_or_else(|_| Err(AblyError::Internal("publish abandoned".into()).to_info()))
}

/// Sends the head's ACK or NACK, then those of every following publish whose outcome
/// is already known, keeping msgSerial order.
async fn send_acks(
    socket: &mut WebSocket,
    outcome: Outcome,
    acks: &mut VecDeque<PendingAck>,
    format: Format,
) -> Result<(), axum::Error> {
    let head = acks.pop_front().expect("an outcome came from the head");
    crate::observe::ack_latency(head.received.elapsed());
    metrics::counter!("starling_frames_out").increment(1);
    socket
        .feed(to_ws(codec::encode(
            &ack_frame(head.msg_serial, outcome),
            format,
        )))
        .await?;

    while let Some(next) = acks.front_mut() {
        let Ok(outcome) = next.outcome.try_recv() else {
            break;
        };
        let next = acks.pop_front().expect("front exists");
        crate::observe::ack_latency(next.received.elapsed());
        metrics::counter!("starling_frames_out").increment(1);
        socket
            .feed(to_ws(codec::encode(
                &ack_frame(next.msg_serial, outcome),
                format,
            )))
            .await?;
    }
    socket.flush().await
}

fn on_frame(frame: WsMessage, connection: &mut Connection, replies: &mut Replies) -> Next {
    let decoded = match frame {
        WsMessage::Text(text) => codec::decode_json(text.as_str()),
        WsMessage::Binary(bytes) => codec::decode_msgpack(&bytes),
        WsMessage::Close(_) => return Next::Close,
        WsMessage::Ping(_) | WsMessage::Pong(_) => return connection.handle_control_frame(replies),
    };
    metrics::counter!("starling_frames_in").increment(1);

    match decoded {
        Ok(pm) => connection.handle(pm, replies),
        Err(error) => {
            let logged = crate::redact::quoted(&error.to_string());
            debug!(connection.id = %connection.id(), "malformed frame: {logged}");
            replies
                .now
                .push(fatal(&AblyError::MalformedFrame(error.to_string())));
            Next::Close
        }
    }
}

/// A read error ends the connection; an oversized frame is first reported as such.
fn on_read_error(error: &axum::Error, replies: &mut Replies, node: &Node) -> Next {
    let text = error.to_string();
    if text.contains("too long") || text.contains("Space limit") || text.contains("Capacity") {
        let limit = node.config.limits.max_frame_size;
        replies.now.push(fatal(&AblyError::FrameTooLarge { limit }));
    }
    debug!("read error: {text}");
    Next::Close
}

async fn write_queued(
    socket: &mut WebSocket,
    first: Outgoing,
    inbox: &mut Inbox,
    format: Format,
) -> Result<(), axum::Error> {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(item) = next.take() {
        match item {
            Outgoing::Frame(frame) => socket.feed(to_ws(frame)).await?,
            Outgoing::Fail(error) => return last_word(socket, action::ERROR, error, format).await,
            Outgoing::Disconnect(error) => {
                return last_word(socket, action::DISCONNECTED, error, format).await;
            }
        }
        written += 1;
        if written < WRITE_BATCH {
            next = inbox.try_recv();
        }
    }
    metrics::counter!("starling_frames_out").increment(written as u64);
    socket.flush().await
}

/// Sends a final ERROR or DISCONNECTED and closes; the connection task then ends.
async fn last_word(
    socket: &mut WebSocket,
    action: i64,
    error: ErrorInfo,
    format: Format,
) -> Result<(), axum::Error> {
    let pm = ProtocolMessage {
        error: Some(error),
        ..ProtocolMessage::new(action)
    };
    socket.feed(to_ws(codec::encode(&pm, format))).await?;
    socket.flush().await?;
    let _ = socket.close().await;
    drain_briefly(socket, false).await;
    Err(axum::Error::new(AblyError::Internal(
        "connection ended by the node".into(),
    )))
}

/// Reads (and drops) what the client still sends, for a moment, before the socket is
/// dropped: closing a TCP socket with unread input resets it, and the reset can reach
/// the client before the last frame it was sent, which it would then never read.
/// A socket that can no longer be read (`unreadable`: a frame over the limit left the
/// rest of itself unread) is held open for that moment instead, so the client reads
/// the last frame before the reset.
async fn drain_briefly(socket: &mut WebSocket, unreadable: bool) {
    const DRAIN: Duration = Duration::from_millis(500);
    let deadline = Instant::now() + DRAIN;
    if unreadable {
        return tokio::time::sleep_until(deadline).await;
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, socket.recv()).await {}
}

async fn keep_alive(socket: &mut WebSocket, params: &ConnectParams) -> Result<(), axum::Error> {
    if params.heartbeats {
        send(
            socket,
            &ProtocolMessage::new(action::HEARTBEAT),
            params.format,
        )
        .await
    } else {
        socket.send(WsMessage::Ping(bytes::Bytes::new())).await
    }
}

async fn send(
    socket: &mut WebSocket,
    pm: &ProtocolMessage,
    format: Format,
) -> Result<(), axum::Error> {
    metrics::counter!("starling_frames_out").increment(1);
    socket.send(to_ws(codec::encode(pm, format))).await
}

fn to_ws(frame: Encoded) -> WsMessage {
    match frame {
        Encoded::Text(text) => WsMessage::Text(text),
        Encoded::Binary(bytes) => WsMessage::Binary(bytes),
    }
}

fn authenticate(node: &Node, params: &ConnectParams) -> Result<Identity, AblyError> {
    let client_id = params.client_id.as_deref();
    match (&params.key, &params.access_token) {
        (Some(key), _) => auth::key_identity(&node.apps, key, client_id),
        (None, Some(token)) => auth::token_identity(node, token, client_id),
        (None, None) => Err(AblyError::NoCredentials),
    }
}

/// CONNECTED for connection `id`: on connect, and again after an in-band AUTH.
pub fn connected_frame(
    node: &Node,
    id: &str,
    identity: &Identity,
    error: Option<ErrorInfo>,
) -> ProtocolMessage {
    let config = &node.config;
    let key = ConnectionKey {
        connection_id: id.to_owned(),
        region: config.node.region.clone(),
        node: config.node.id.clone(),
        issued_ms: now_ms() as u64,
    };

    ProtocolMessage {
        connection_id: Some(id.to_owned()),
        connection_details: Some(ConnectionDetails {
            connection_key: node.keys.issue(&key),
            client_id: identity.client_id.clone(),
            max_message_size: config.limits.max_message_size as u64,
            max_frame_size: config.limits.max_frame_size as u64,
            max_inbound_rate: u64::from(config.limits.max_inbound_rate),
            connection_state_ttl: config.connection.state_ttl_ms,
            max_idle_interval: config.connection.max_idle_interval_ms,
            server_id: config.node.id.clone(),
            site_code: config.node.region.clone(),
        }),
        error,
        ..ProtocolMessage::new(action::CONNECTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_read_leniently() {
        let p = ConnectParams::parse(Some(
            "key=app.k%3As&clientId=me&echo=false&format=msgpack&heartbeats=true&v=6&x=%zz",
        ));
        assert_eq!(p.key.as_deref(), Some("app.k:s"));
        assert_eq!(p.client_id.as_deref(), Some("me"));
        assert!(!p.echo);
        assert_eq!(p.format, Format::Msgpack);
        assert!(p.heartbeats);

        let empty = ConnectParams::parse(None);
        assert!(empty.echo);
        assert_eq!(empty.format, Format::Json);
    }
}
