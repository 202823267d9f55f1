//! A raw WebSocket client of the Ably protocol, in JSON or MessagePack.
//!
//! Frames go out and come back as `serde_json::Value`. In MessagePack mode a value is
//! encoded through [`wire::json_to_msgpack`], so `{"$bin": [..]}` travels as a real
//! msgpack `bin`; received binary frames are decoded to [`rmpv::Value`] and viewed as
//! JSON the same way (see [`crate::wire`]).
//!
//! Frames that a wait skips are not lost: they stay in a backlog that later receives
//! search first, in arrival order. So a test can wait for an ACK and still see the
//! MESSAGE that arrived before it.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::wire::{self, action, Format};
use crate::{Node, WAIT};

/// What a socket runs over: plain TCP, or TLS (see [`crate::tls`]).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

type Socket = WebSocketStream<Box<dyn Transport>>;

/// One decoded frame: its JSON view (MESSAGE frames filled in from the frame as a
/// client fills them) and, for MessagePack frames, the value as sent.
#[derive(Debug, Clone)]
pub struct Frame {
    pub value: Value,
    pub msgpack: Option<rmpv::Value>,
}

pub struct Client {
    socket: Socket,
    format: Format,
    /// The CONNECTED frame, once one was received by `connect`.
    connected: Option<Value>,
    /// Frames received while waiting for something else, oldest first.
    backlog: VecDeque<Frame>,
    next_msg_serial: i64,
}

impl Client {
    /// Opens a socket with `query` plus `format`, `v=6` and `heartbeats=false`, and
    /// returns as soon as the upgrade succeeded, before any frame is read. `query` is
    /// used verbatim (encode values with [`encode_component`]).
    pub async fn open(addr: SocketAddr, query: &str, format: Format) -> anyhow::Result<Client> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Client::open_over(Box::new(tcp), "ws", addr, query, format).await
    }

    /// Like [`Client::open`], over a transport already connected to `addr` (a TLS
    /// stream, with `scheme` `wss`).
    pub async fn open_over(
        transport: Box<dyn Transport>,
        scheme: &str,
        addr: SocketAddr,
        query: &str,
        format: Format,
    ) -> anyhow::Result<Client> {
        let mut full = String::new();
        if !query.is_empty() {
            write!(full, "{query}&")?;
        }
        write!(full, "format={}&v=6&heartbeats=false", format.query_value())?;
        let url = format!("{scheme}://{addr}/?{full}");

        let handshake = tokio_tungstenite::client_async(url.as_str(), transport);
        let (socket, response) = tokio::time::timeout(WAIT, handshake)
            .await
            .with_context(|| format!("upgrade of {url} timed out"))?
            .with_context(|| format!("WebSocket upgrade of {url}"))?;
        if response.status().as_u16() != 101 {
            bail!("upgrade answered {}", response.status());
        }
        Ok(Client {
            socket,
            format,
            connected: None,
            backlog: VecDeque::new(),
            next_msg_serial: 0,
        })
    }

    /// Connects with the node's key plus `query` (e.g. `echo=false`, or empty) and
    /// waits for CONNECTED. An ERROR instead is a failure carrying its error.
    pub async fn connect(node: &Node, query: &str, format: Format) -> anyhow::Result<Client> {
        Client::connect_with_key(node.addr(), node.key(), query, format).await
    }

    pub async fn connect_with_key(
        addr: SocketAddr,
        key: &str,
        query: &str,
        format: Format,
    ) -> anyhow::Result<Client> {
        let mut full = format!("key={}", encode_component(key));
        if !query.is_empty() {
            write!(full, "&{query}")?;
        }
        Client::connect_query(addr, &full, format).await
    }

    /// Connects with a token (`access_token`) plus `query`, and waits for CONNECTED.
    pub async fn connect_with_token(
        addr: SocketAddr,
        token: &str,
        query: &str,
        format: Format,
    ) -> anyhow::Result<Client> {
        let mut full = format!("access_token={}", encode_component(token));
        if !query.is_empty() {
            write!(full, "&{query}")?;
        }
        Client::connect_query(addr, &full, format).await
    }

    /// Opens with `query` (credentials included) and waits for CONNECTED.
    async fn connect_query(
        addr: SocketAddr,
        query: &str,
        format: Format,
    ) -> anyhow::Result<Client> {
        let client = Client::open(addr, query, format).await?;
        client.until_connected().await
    }

    /// Waits for the CONNECTED a freshly opened socket gets; an ERROR instead is a
    /// failure carrying its error.
    pub async fn until_connected(mut self) -> anyhow::Result<Client> {
        let first = self
            .recv_until(
                |f| is_action(f, action::CONNECTED) || is_action(f, action::ERROR),
                WAIT,
            )
            .await
            .context("waiting for CONNECTED")?;
        if !is_action(&first, action::CONNECTED) {
            bail!("expected CONNECTED, got {first}");
        }
        self.connected = Some(first);
        Ok(self)
    }

    /// Continues msgSerial numbering from `next` (a resumed connection keeps it).
    /// The msgSerial for the next publish-like frame (MESSAGE or PRESENCE), taken.
    pub fn take_msg_serial(&mut self) -> i64 {
        self.next_msg_serial += 1;
        self.next_msg_serial - 1
    }

    pub fn set_next_msg_serial(&mut self, next: i64) {
        self.next_msg_serial = next;
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The CONNECTED frame. Panics for a client made by `open`.
    pub fn connected(&self) -> &Value {
        self.connected
            .as_ref()
            .expect("connected() needs a client made by connect()")
    }

    pub fn connection_id(&self) -> &str {
        self.connected()["connectionId"]
            .as_str()
            .expect("CONNECTED has a string connectionId")
    }

    /// Sends a ProtocolMessage in this client's format.
    pub async fn send(&mut self, pm: &Value) -> anyhow::Result<()> {
        let frame = match self.format {
            Format::Json => WsMessage::text(serde_json::to_string(pm)?),
            Format::Msgpack => WsMessage::binary(wire::encode_msgpack(&wire::json_to_msgpack(pm))),
        };
        self.send_raw(frame).await
    }

    /// Sends any WebSocket message as is: malformed text, arbitrary bytes.
    pub async fn send_raw(&mut self, frame: WsMessage) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, self.socket.send(frame))
            .await
            .context("send timed out")?
            .context("sending a frame")
    }

    /// The next frame (from the backlog first), within [`WAIT`].
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        Ok(self.recv_frame(WAIT).await?.value)
    }

    pub async fn recv_frame(&mut self, timeout: Duration) -> anyhow::Result<Frame> {
        if let Some(frame) = self.backlog.pop_front() {
            return Ok(frame);
        }
        self.read_frame(Instant::now() + timeout).await
    }

    /// The first frame matching `predicate`, from the backlog first, then from the
    /// socket; frames that don't match go to the backlog.
    pub async fn recv_until(
        &mut self,
        predicate: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        Ok(self
            .recv_frame_until(|f| predicate(&f.value), timeout)
            .await?
            .value)
    }

    pub async fn recv_frame_until(
        &mut self,
        predicate: impl Fn(&Frame) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Frame> {
        if let Some(i) = self.backlog.iter().position(&predicate) {
            return Ok(self.backlog.remove(i).expect("index from position"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.read_frame(deadline).await.with_context(|| {
                format!(
                    "no matching frame; skipped: {}",
                    summarise(self.backlog.iter().map(|f| &f.value))
                )
            })?;
            if predicate(&frame) {
                return Ok(frame);
            }
            self.backlog.push_back(frame);
        }
    }

    /// Frames received but not yet returned, oldest first.
    pub fn backlog(&self) -> impl Iterator<Item = &Value> {
        self.backlog.iter().map(|f| &f.value)
    }

    /// Waits for the socket to close (a close frame or the end of the stream), skipping
    /// any frames before it.
    pub async fn expect_closed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "socket still open after {timeout:?}; skipped: {}",
                        summarise(self.backlog.iter().map(|f| &f.value))
                    )
                })?;
            match next {
                None | Some(Ok(WsMessage::Close(_))) => return Ok(()),
                // A reset after the server dropped the connection is a close too.
                Some(Err(_)) => return Ok(()),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(other)) => {
                    let frame = self.decode(other)?;
                    self.backlog.push_back(frame);
                }
            }
        }
    }

    /// Sends ATTACH with `extra` fields merged in (e.g. `{"params":{..}}`) and returns
    /// the reply for that channel: ATTACHED or ERROR.
    pub async fn attach_with(&mut self, channel: &str, extra: Value) -> anyhow::Result<Value> {
        let mut pm = json!({"action": action::ATTACH, "channel": channel});
        merge(&mut pm, extra);
        self.send(&pm).await?;
        self.recv_until(
            |f| {
                f["channel"] == channel
                    && (is_action(f, action::ATTACHED) || is_action(f, action::ERROR))
            },
            WAIT,
        )
        .await
        .with_context(|| format!("waiting for ATTACHED on {channel}"))
    }

    /// Attaches with default modes; anything but ATTACHED is an error.
    pub async fn attach(&mut self, channel: &str) -> anyhow::Result<Value> {
        let reply = self.attach_with(channel, json!({})).await?;
        if !is_action(&reply, action::ATTACHED) {
            bail!("attaching {channel}: {reply}");
        }
        Ok(reply)
    }

    /// Sends a MESSAGE with the next msgSerial and returns that msgSerial.
    pub async fn publish(&mut self, channel: &str, messages: Value) -> anyhow::Result<i64> {
        let msg_serial = self.next_msg_serial;
        self.next_msg_serial += 1;
        let pm = json!({
            "action": action::MESSAGE,
            "channel": channel,
            "msgSerial": msg_serial,
            "messages": messages,
        });
        self.send(&pm).await?;
        Ok(msg_serial)
    }

    /// Waits for the ACK or NACK that covers `msg_serial`.
    pub async fn ack_for(&mut self, msg_serial: i64) -> anyhow::Result<Value> {
        self.recv_until(
            |f| (is_action(f, action::ACK) || is_action(f, action::NACK)) && covers(f, msg_serial),
            WAIT,
        )
        .await
        .with_context(|| format!("waiting for the ACK of msgSerial {msg_serial}"))
    }

    /// Publishes one message named `name` and returns the ACK or NACK that answers it
    /// (within 20 s: a publish may wait for a remote home or a failover).
    pub async fn publish_answered(&mut self, channel: &str, name: &str) -> anyhow::Result<Value> {
        let msg_serial = self.publish(channel, json!([{ "name": name }])).await?;
        self.recv_until(
            |f| {
                (is_action(f, action::ACK) || is_action(f, action::NACK))
                    && f["msgSerial"] == msg_serial
            },
            Duration::from_secs(20),
        )
        .await
        .with_context(|| format!("the answer to publishing {name} on {channel}"))
    }

    /// Publishes and waits for the ACK; a NACK is an error.
    pub async fn publish_acked(&mut self, channel: &str, messages: Value) -> anyhow::Result<Value> {
        let msg_serial = self.publish(channel, messages).await?;
        let reply = self.ack_for(msg_serial).await?;
        if !is_action(&reply, action::ACK) {
            bail!("publish to {channel} refused: {reply}");
        }
        Ok(reply)
    }

    /// The next MESSAGE frame on `channel`.
    pub async fn next_message(&mut self, channel: &str) -> anyhow::Result<Value> {
        Ok(self.next_message_frame(channel).await?.value)
    }

    pub async fn next_message_frame(&mut self, channel: &str) -> anyhow::Result<Frame> {
        self.recv_frame_until(
            |f| is_action(&f.value, action::MESSAGE) && f.value["channel"] == channel,
            WAIT,
        )
        .await
        .with_context(|| format!("waiting for a MESSAGE on {channel}"))
    }

    /// Reads MESSAGE frames on `channel` until `count` messages have arrived, and
    /// returns the messages in arrival order.
    pub async fn collect_messages(
        &mut self,
        channel: &str,
        count: usize,
    ) -> anyhow::Result<Vec<Value>> {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            let frame = self
                .next_message(channel)
                .await
                .with_context(|| format!("after {} of {count} messages", messages.len()))?;
            let batch = frame["messages"]
                .as_array()
                .with_context(|| format!("MESSAGE without messages: {frame}"))?;
            messages.extend(batch.iter().cloned());
        }
        Ok(messages)
    }

    async fn read_frame(&mut self, deadline: Instant) -> anyhow::Result<Frame> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("no frame before the deadline"))?;
            match next {
                None => bail!("socket closed"),
                Some(Err(error)) => bail!("socket error: {error}"),
                Some(Ok(WsMessage::Close(frame))) => bail!("socket closed by server: {frame:?}"),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Ok(message)) => return self.decode(message),
            }
        }
    }

    /// Decodes a data frame, insisting on the frame type the format requires: text for
    /// JSON (browsers cannot parse binary), binary for MessagePack.
    fn decode(&self, message: WsMessage) -> anyhow::Result<Frame> {
        let mut frame = self.decode_raw(message)?;
        fill_from_parent(&mut frame.value);
        Ok(frame)
    }

    fn decode_raw(&self, message: WsMessage) -> anyhow::Result<Frame> {
        match (self.format, message) {
            (Format::Json, WsMessage::Text(text)) => Ok(Frame {
                value: serde_json::from_str(text.as_str())
                    .with_context(|| format!("server sent invalid JSON: {}", text.as_str()))?,
                msgpack: None,
            }),
            (Format::Msgpack, WsMessage::Binary(bytes)) => {
                let decoded = wire::decode_msgpack(&bytes).context("server sent bad msgpack")?;
                Ok(Frame {
                    value: wire::msgpack_to_json(&decoded)?,
                    msgpack: Some(decoded),
                })
            }
            (format, other) => bail!("{format:?} connection got the wrong frame type: {other:?}"),
        }
    }
}

/// What ably-js does to a MESSAGE frame before reading its messages
/// (`populateFieldsFromParent`): a message without `connectionId` or `timestamp` takes
/// the frame's, one without `id` gets `<frame id>:<index>`. The node leaves those out
/// of the bytes where they are the same, so tests read messages as a client would.
/// ([`Frame::msgpack`] keeps the bytes as sent.)
fn fill_from_parent(frame: &mut Value) {
    if !is_action(frame, crate::action::MESSAGE) {
        return;
    }
    let parent = |key: &str| frame.get(key).cloned();
    let (id, connection_id, timestamp) =
        (parent("id"), parent("connectionId"), parent("timestamp"));
    let Some(messages) = frame.get_mut("messages").and_then(Value::as_array_mut) else {
        return;
    };
    for (index, message) in messages.iter_mut().enumerate() {
        let Some(message) = message.as_object_mut() else {
            continue;
        };
        let mut fill = |key: &str, value: Option<Value>| {
            if let (false, Some(value)) = (message.contains_key(key), value) {
                message.insert(key.to_owned(), value);
            }
        };
        fill("connectionId", connection_id.clone());
        fill("timestamp", timestamp.clone());
        let derived = (id.as_ref().and_then(Value::as_str))
            .map(|base| Value::from(format!("{base}:{index}")));
        fill("id", derived);
    }
}

pub fn is_action(frame: &Value, action: i64) -> bool {
    frame["action"].as_i64() == Some(action)
}

/// Whether an ACK/NACK covers `msg_serial` (`msgSerial` ≤ it < `msgSerial + count`).
fn covers(frame: &Value, msg_serial: i64) -> bool {
    let (Some(first), count) = (frame["msgSerial"].as_i64(), frame["count"].as_i64()) else {
        return false;
    };
    let count = count.unwrap_or(1);
    (first..first + count).contains(&msg_serial)
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

/// A short description of skipped frames for error messages.
fn summarise<'a>(frames: impl Iterator<Item = &'a Value>) -> String {
    let mut out = String::from("[");
    for (i, frame) in frames.enumerate() {
        if i == 10 {
            out.push_str(", …");
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        let text = frame.to_string();
        let cut: String = text.chars().take(160).collect();
        out.push_str(&cut);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ranges_cover_their_serials() {
        let ack = json!({"action": 1, "msgSerial": 3, "count": 2});
        assert!(!covers(&ack, 2));
        assert!(covers(&ack, 3));
        assert!(covers(&ack, 4));
        assert!(!covers(&ack, 5));
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode_component("app.k:s/+="), "app.k%3As%2F%2B%3D");
    }
}
