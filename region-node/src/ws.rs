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
use futures_util::future::BoxFuture;
use futures_util::SinkExt;
use tokio::time::Instant;
use tracing::{debug, debug_span, Instrument};

use crate::auth::{self, Identity};
use crate::connection::{ack_frame, fatal, Connection, Next, Outcome, PendingAck, Replies};
use crate::connection_key::ConnectionKey;
use crate::data_dir::random_string;
use crate::error::AblyError;
use crate::node::{now_ms, Node, SocketSlot};
use crate::outbox::{self, Inbox, Outgoing};
use crate::protocol::{
    action, codec, ConnectionDetails, Encoded, ErrorInfo, Format, ProtocolMessage,
};

/// Largest number of queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Bytes a socket read asks for. tungstenite zeroes this much before every read, even
/// one that finds nothing, and every wake-up of a connection's loop polls a read: at
/// the 128 KiB default that was 43% of a node's CPU under fan-out and 149 KB of
/// resident memory per idle connection (16.6 KB at 4 KiB, 13.5 KB at 1 KiB, before
/// the connection task and its queue were slimmed). Client frames are mostly small;
/// a larger one grows the buffer to its length.
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

/// Admits and authenticates the socket, then hands it to a task of its own. This
/// future (held by axum's upgrade task) ends there, so what a connection holds for
/// its life is that one task, whose future is laid out for the largest state it
/// awaits: the rare, large waits in it (a last word, a close) are boxed.
async fn serve(mut socket: WebSocket, query: Option<String>, node: Arc<Node>) {
    let params = ConnectParams::parse(query.as_deref());
    drop(query);
    // The slot is held until this socket ends, authenticating or not, so a node at
    // its limit turns clients away before spending anything on their credentials.
    let limit = node.config.limits.max_connections;
    let Some(slot) = node.connections.admit(limit) else {
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
        let no_quorum = AblyError::NoQuorum.to_info();
        let _ = last_word(&mut socket, action::DISCONNECTED, no_quorum, params.format).await;
        return;
    }

    let (connection_id, lost) = continuity(&node, &params);
    if lost.is_none() && (params.resume.is_some() || params.recover.is_some()) {
        // The same client on a transport this node still holds: that one is over.
        node.connections.supersede(&connection_id).await;
    }
    let span = debug_span!("connection", connection.id = %connection_id, app.id = %identity.app.id);
    let wire = Wire::of(&params);
    let setup = Setup {
        identity,
        connection_id,
        lost,
        remain_present_for_ms: params.remain_present_for_ms,
        echo: params.echo,
        slot,
    };
    tokio::spawn(run(socket, wire, setup, node).instrument(span));
}

/// How frames go to this client, for the life of the connection.
#[derive(Debug, Clone, Copy)]
struct Wire {
    format: Format,
    /// The client asked for HEARTBEAT frames rather than pings.
    heartbeats: bool,
}

impl Wire {
    fn of(params: &ConnectParams) -> Self {
        Wire {
            format: params.format,
            heartbeats: params.heartbeats,
        }
    }
}

/// What `serve` learned that the connection task starts from.
struct Setup {
    identity: Identity,
    connection_id: Arc<str>,
    /// Why the connection this client asked to continue could not be.
    lost: Option<ErrorInfo>,
    remain_present_for_ms: Option<u64>,
    echo: bool,
    /// The node's count of open sockets, given back when the task ends.
    slot: SocketSlot,
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

async fn run(mut socket: WebSocket, wire: Wire, setup: Setup, node: Arc<Node>) {
    let Setup {
        identity,
        connection_id,
        lost,
        remain_present_for_ms,
        echo,
        slot: _slot,
    } = setup;
    let (outbox, inbox) = outbox::channel(
        connection_id.clone(),
        identity.app.id.as_str().into(),
        wire.format,
        node.config.limits.max_connection_queue_bytes,
    );
    let connected = encode(
        &connected_frame(&node, &connection_id, &identity, lost),
        wire.format,
    );
    let holder = identity.token_holder();
    let mut connection = Connection::new(node.clone(), identity, outbox.clone(), echo);
    if let Some(grace_ms) = remain_present_for_ms {
        connection.set_presence_grace_ms(grace_ms);
    }

    node.connections.insert(outbox);
    node.connections.hold_token(&connection_id, holder);
    metrics::gauge!("starling_connections").increment(1.0);
    debug!("connected");

    let mut last_heard = Instant::now();
    if write(&mut socket, connected).await.is_ok() {
        last_heard = pump(&mut socket, &mut connection, inbox, &node, wire).await;
    }

    // Presence grace counts from the last frame the client sent.
    let silent_ms = i64::try_from(last_heard.elapsed().as_millis()).unwrap_or(0);
    connection.detach_all(connection.leave_after(now_ms() - silent_ms));
    node.connections.remove(&connection_id);
    metrics::gauge!("starling_connections").decrement(1.0);
    debug!("disconnected");
}

/// The connection's loop: inbound frames, publish outcomes, queued outbound frames
/// and its deadlines. Returns when the client was last heard from.
async fn pump(
    socket: &mut WebSocket,
    connection: &mut Connection,
    mut inbox: Inbox,
    node: &Node,
    wire: Wire,
) -> Instant {
    let idle = node.config.connection.max_idle_interval();
    let mut expires_ms = connection.identity().expires_ms();
    let mut deadlines = Deadlines::new(Instant::now(), idle, key_renewal(node), expires_ms);
    let timer = tokio::time::sleep_until(deadlines.next());
    tokio::pin!(timer);
    let mut last_heard = Instant::now();
    let mut replies = Replies::default();
    let mut acks: VecDeque<PendingAck> = VecDeque::new();

    loop {
        tokio::select! {
            () = &mut timer => {
                while let Some(due) = deadlines.take_due(Instant::now()) {
                    if !on_deadline(due, socket, connection, node, wire, last_heard).await {
                        return last_heard;
                    }
                }
                timer.as_mut().reset(deadlines.next());
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
                    let frame = reply_frame(connection, reply, wire.format);
                    if write(socket, frame).await.is_err() {
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
                    deadlines.token_renewed(expires_ms);
                    timer.as_mut().reset(deadlines.next());
                }
            }
            outcome = first_outcome(&mut acks), if !acks.is_empty() => {
                let written = send_acks(socket, outcome, &mut acks, wire.format);
                if !within(idle, written).await {
                    return last_heard;
                }
            }
            first = inbox.recv() => {
                // A client that stops reading blocks the write; it gets an idle
                // interval to drain, then the connection is dropped.
                let written = write_queued(socket, first, &mut inbox, wire.format);
                if !within(idle, written).await {
                    return last_heard;
                }
            }
        }
    }
}

/// Acts on a deadline that came due; `false` when the connection is over.
async fn on_deadline(
    due: Due,
    socket: &mut WebSocket,
    connection: &Connection,
    node: &Node,
    wire: Wire,
    last_heard: Instant,
) -> bool {
    let idle = node.config.connection.max_idle_interval();
    match due {
        Due::TokenExpired => {
            debug!("token expired");
            let expired = AblyError::TokenExpired.to_info();
            let _ = last_word(socket, action::DISCONNECTED, expired, wire.format).await;
            false
        }
        Due::RenewKey => {
            let id = connection.outbox_id();
            let update = encode(
                &connected_frame(node, &id, connection.identity(), None),
                wire.format,
            );
            write(socket, update).await.is_ok()
        }
        // A client that has sent nothing, not even a pong, for three idle intervals
        // is gone; the link is how we learn it.
        Due::KeepAlive if last_heard.elapsed() > idle * 3 => {
            debug!("closing silent connection");
            false
        }
        Due::KeepAlive => keep_alive(socket, wire).await.is_ok(),
    }
}

/// What a connection's deadlines ask for when they come due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The token ran out: DISCONNECTED (40142), so the client renews it.
    TokenExpired,
    /// A ping or HEARTBEAT, and the check for a client gone silent.
    KeepAlive,
    /// A fresh connection key (an unsolicited CONNECTED, which clients take as a
    /// details update), so a key's age tells how long ago the connection was last
    /// alive, on whichever node it is presented.
    RenewKey,
}

/// A connection's deadlines, served by one timer rather than one each: an idle
/// connection then costs the timer wheel one entry.
#[derive(Debug)]
struct Deadlines {
    keepalive_every: Duration,
    renew_every: Duration,
    keepalive: Instant,
    renew_key: Instant,
    /// When the token runs out, on tokio's clock; `None` for a key.
    token: Option<Instant>,
}

impl Deadlines {
    fn new(now: Instant, idle: Duration, renew_every: Duration, expires_ms: Option<i64>) -> Self {
        let keepalive_every = idle / 2;
        Deadlines {
            keepalive_every,
            renew_every,
            keepalive: now + keepalive_every,
            renew_key: now + renew_every,
            token: expires_ms.map(token_deadline),
        }
    }

    /// The earliest deadline.
    fn next(&self) -> Instant {
        let next = self.keepalive.min(self.renew_key);
        self.token.map_or(next, |token| token.min(next))
    }

    /// The first deadline due at `now`, which is then moved on (a missed period is
    /// not made up: the next one counts from now).
    fn take_due(&mut self, now: Instant) -> Option<Due> {
        if self.token.is_some_and(|token| token <= now) {
            self.token = None;
            return Some(Due::TokenExpired);
        }
        if self.keepalive <= now {
            self.keepalive = now + self.keepalive_every;
            return Some(Due::KeepAlive);
        }
        if self.renew_key <= now {
            self.renew_key = now + self.renew_every;
            return Some(Due::RenewKey);
        }
        None
    }

    /// In-band AUTH gave the connection a new token (or a key).
    fn token_renewed(&mut self, expires_ms: Option<i64>) {
        self.token = expires_ms.map(token_deadline);
    }
}

/// When a token expiring at `expires_ms` (wall clock) runs out, on tokio's clock.
fn token_deadline(expires_ms: i64) -> Instant {
    let left = u64::try_from(expires_ms - now_ms()).unwrap_or(0);
    Instant::now() + Duration::from_millis(left)
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
    let frame = encode(&ack_frame(head.msg_serial, outcome), format);
    socket.feed(frame).await?;

    while let Some(next) = acks.front_mut() {
        let Ok(outcome) = next.outcome.try_recv() else {
            break;
        };
        let next = acks.pop_front().expect("front exists");
        crate::observe::ack_latency(next.received.elapsed());
        metrics::counter!("starling_frames_out").increment(1);
        let frame = encode(&ack_frame(next.msg_serial, outcome), format);
        socket.feed(frame).await?;
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
            Outgoing::Fail(error) => return last_word(socket, action::ERROR, *error, format).await,
            Outgoing::Disconnect(error) => {
                return last_word(socket, action::DISCONNECTED, *error, format).await;
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
/// Boxed, as rare waits are (see `serve`).
fn last_word(
    socket: &mut WebSocket,
    action: i64,
    error: ErrorInfo,
    format: Format,
) -> BoxFuture<'_, Result<(), axum::Error>> {
    let pm = ProtocolMessage {
        error: Some(error),
        ..ProtocolMessage::new(action)
    };
    let frame = encode(&pm, format);
    Box::pin(async move {
        socket.feed(frame).await?;
        socket.flush().await?;
        let _ = socket.close().await;
        drain_briefly(socket, false).await;
        Err(axum::Error::new(AblyError::Internal(
            "connection ended by the node".into(),
        )))
    })
}

/// Reads (and drops) what the client still sends, for a moment, before the socket is
/// dropped: closing a TCP socket with unread input resets it, and the reset can reach
/// the client before the last frame it was sent, which it would then never read.
/// A socket that can no longer be read (`unreadable`: a frame over the limit left the
/// rest of itself unread) is held open for that moment instead, so the client reads
/// the last frame before the reset.
/// Boxed, as rare waits are (see `serve`).
fn drain_briefly(socket: &mut WebSocket, unreadable: bool) -> BoxFuture<'_, ()> {
    const DRAIN: Duration = Duration::from_millis(500);
    Box::pin(async move {
        let deadline = Instant::now() + DRAIN;
        if unreadable {
            return tokio::time::sleep_until(deadline).await;
        }
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, socket.recv()).await {}
    })
}

async fn keep_alive(socket: &mut WebSocket, wire: Wire) -> Result<(), axum::Error> {
    if wire.heartbeats {
        send(
            socket,
            &ProtocolMessage::new(action::HEARTBEAT),
            wire.format,
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
    write(socket, encode(pm, format)).await
}

/// Writes one encoded frame. The connection's loop encodes before it waits, in
/// plain functions, so its future holds a frame's handle across the wait and not
/// the message (about 500 bytes) that every connection would then keep room for.
async fn write(socket: &mut WebSocket, frame: WsMessage) -> Result<(), axum::Error> {
    metrics::counter!("starling_frames_out").increment(1);
    socket.send(frame).await
}

fn encode(pm: &ProtocolMessage, format: Format) -> WsMessage {
    to_ws(codec::encode(pm, format))
}

/// A reply to the client's frame, encoded; a fatal ERROR marks the connection failed
/// first, as it cannot resume.
fn reply_frame(connection: &mut Connection, reply: ProtocolMessage, format: Format) -> WsMessage {
    if reply.action == action::ERROR && reply.channel.is_none() {
        connection.mark_failed();
    }
    encode(&reply, format)
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

    fn deadlines(expires_in_ms: Option<i64>) -> (Instant, Deadlines) {
        let now = Instant::now();
        let idle = Duration::from_secs(10);
        let renew = Duration::from_secs(30);
        let expires_ms = expires_in_ms.map(|ms| now_ms() + ms);
        (now, Deadlines::new(now, idle, renew, expires_ms))
    }

    #[test]
    fn one_timer_serves_keepalives_and_key_renewals_each_at_its_period() {
        let (start, mut d) = deadlines(None);
        assert_eq!(d.next(), start + Duration::from_secs(5));
        assert_eq!(d.take_due(start + Duration::from_secs(4)), None);

        let at = start + Duration::from_secs(5);
        assert_eq!(d.take_due(at), Some(Due::KeepAlive));
        assert_eq!(d.take_due(at), None, "each period comes due once");
        assert_eq!(d.next(), at + Duration::from_secs(5));

        // Both due at once (the timer fired late): each is served, the keep-alive first.
        let late = start + Duration::from_secs(31);
        assert_eq!(d.take_due(late), Some(Due::KeepAlive));
        assert_eq!(d.take_due(late), Some(Due::RenewKey));
        assert_eq!(d.take_due(late), None);
        assert_eq!(
            d.next(),
            late + Duration::from_secs(5),
            "missed periods are not made up"
        );
    }

    #[test]
    fn a_tokens_expiry_comes_first_and_once_and_follows_a_renewal() {
        let (start, mut d) = deadlines(Some(2_000));
        let expiry = d.next();
        let from_start = expiry - start;
        assert!(
            from_start <= Duration::from_millis(2_100) && from_start > Duration::from_millis(1_500),
            "{from_start:?}"
        );

        d.token_renewed(Some(now_ms() + 60_000));
        assert_eq!(
            d.next(),
            start + Duration::from_secs(5),
            "the renewed token expires later"
        );

        let late = start + Duration::from_secs(120);
        assert_eq!(d.take_due(late), Some(Due::TokenExpired));
        assert_eq!(d.take_due(late), Some(Due::KeepAlive));
        assert_eq!(d.take_due(late), Some(Due::RenewKey));
        assert_eq!(d.take_due(late), None, "an expiry is reported once");

        d.token_renewed(None);
        assert_eq!(
            d.next(),
            late + Duration::from_secs(5),
            "a key never expires"
        );
    }
}
