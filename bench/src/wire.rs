//! The three protocols the generator speaks over WebSocket: Ably (to Starling), enough
//! of NATS (to nats-server), and none at all (to the bare broadcast server).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// How long a handshake (upgrade, CONNECTED, ATTACHED, PONG) may take.
const HANDSHAKE: Duration = Duration::from_secs(300);

const ACTION_ACK: i64 = 1;
const ACTION_NACK: i64 = 2;
const ACTION_CONNECTED: i64 = 4;
const ACTION_DISCONNECTED: i64 = 6;
const ACTION_ERROR: i64 = 9;
const ACTION_ATTACH: i64 = 10;
const ACTION_ATTACHED: i64 = 11;
const ACTION_MESSAGE: i64 = 15;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proto {
    /// Ably realtime protocol v6 with key authentication.
    Ably {
        key: String,
        msgpack: bool,
    },
    Nats,
    /// Frames in, the same frames out to every other socket.
    Bare,
}

/// Where one server takes WebSocket clients.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub proto: Proto,
}

impl Endpoint {
    fn url(&self) -> String {
        match &self.proto {
            Proto::Ably { key, msgpack } => {
                let format = if *msgpack { "msgpack" } else { "json" };
                let key: String = key
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!(
                    "ws://{}/?key={key}&format={format}&v=6&heartbeats=false&echo=false",
                    self.addr
                )
            }
            Proto::Nats | Proto::Bare => format!("ws://{}/", self.addr),
        }
    }
}

/// tungstenite zeroes its whole read buffer (128 KiB by default) before every read,
/// even one that finds nothing: with thousands of sockets that is most of a core and
/// of their memory. Reads of 16 KiB still take a busy socket's backlog in few calls.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// Opens a WebSocket, from `source` when given (to spread many sockets over
/// 127.0.0.x addresses and their port ranges).
pub async fn open(endpoint: &Endpoint, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(HANDSHAKE, socket.connect(endpoint.addr))
        .await
        .context("TCP connect timed out")?
        .with_context(|| format!("connecting to {}", endpoint.addr))?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio::time::timeout(
        HANDSHAKE,
        tokio_tungstenite::client_async_with_config(endpoint.url(), stream, Some(config())),
    )
    .await
    .context("WebSocket upgrade timed out")?
    .context("WebSocket upgrade")?;
    Ok(ws)
}

/// Opens a socket and subscribes it to `channels` (none for a publisher), returning
/// once the server confirmed it: ATTACHED for every channel, a PONG after the SUBs,
/// or the bare server's greeting.
pub async fn connect(
    endpoint: &Endpoint,
    channels: &[String],
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let mut ws = open(endpoint, source).await?;
    let ready = async {
        match &endpoint.proto {
            Proto::Ably { msgpack, .. } => ably_handshake(&mut ws, channels, *msgpack).await,
            Proto::Nats => nats_handshake(&mut ws, channels).await,
            Proto::Bare => next_data(&mut ws).await.map(drop),
        }
    };
    tokio::time::timeout(HANDSHAKE, ready)
        .await
        .context("handshake timed out")??;
    Ok(ws)
}

async fn next_data(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    while let Some(frame) = ws.next().await {
        match frame? {
            Message::Binary(b) => return Ok(b.to_vec()),
            Message::Text(t) => return Ok(t.as_bytes().to_vec()),
            Message::Close(close) => bail!("closed by the server: {close:?}"),
            _ => {}
        }
    }
    bail!("socket ended during the handshake")
}

/// The fields of an Ably ProtocolMessage the generator looks at.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AblyHeader {
    #[serde(default)]
    pub action: i64,
    #[serde(default)]
    pub msg_serial: Option<i64>,
    #[serde(default)]
    pub count: Option<i64>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

pub fn ably_header(frame: &[u8], msgpack: bool) -> anyhow::Result<AblyHeader> {
    if msgpack {
        Ok(rmp_serde::from_slice(frame)?)
    } else {
        Ok(serde_json::from_slice(frame)?)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AblyFrame<'a> {
    action: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_serial: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<AblyMessage<'a>>>,
}

#[derive(Serialize)]
struct AblyMessage<'a> {
    data: &'a str,
}

fn ably_encode(frame: &AblyFrame<'_>, msgpack: bool) -> Message {
    if msgpack {
        let bytes = rmp_serde::to_vec_named(frame).expect("a benchmark frame encodes");
        Message::Binary(bytes.into())
    } else {
        let text = serde_json::to_string(frame).expect("a benchmark frame encodes");
        Message::Text(text.into())
    }
}

async fn ably_handshake(ws: &mut Ws, channels: &[String], msgpack: bool) -> anyhow::Result<()> {
    let first = ably_header(&next_data(ws).await?, msgpack)?;
    if first.action != ACTION_CONNECTED {
        bail!(
            "expected CONNECTED, got action {} {:?}",
            first.action,
            first.error
        );
    }
    // A few attaches in flight at a time: each new channel is a write to the global
    // master (its home), and a flood of them can delay the region's lease heartbeat.
    for chunk in channels.chunks(ATTACH_CHUNK) {
        for channel in chunk {
            let attach = AblyFrame {
                action: ACTION_ATTACH,
                channel: Some(channel),
                msg_serial: None,
                messages: None,
            };
            ws.feed(ably_encode(&attach, msgpack)).await?;
        }
        ws.flush().await?;

        let mut attached = 0;
        while attached < chunk.len() {
            let header = ably_header(&next_data(ws).await?, msgpack)?;
            match header.action {
                ACTION_ATTACHED => attached += 1,
                ACTION_ERROR | ACTION_DISCONNECTED => {
                    bail!(
                        "attach refused: action {} {:?}",
                        header.action,
                        header.error
                    )
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// ATTACHes one socket has in flight while subscribing.
const ATTACH_CHUNK: usize = 20;

async fn nats_handshake(ws: &mut Ws, subjects: &[String]) -> anyhow::Result<()> {
    let info = next_data(ws).await?;
    if !info.starts_with(b"INFO") {
        bail!("expected INFO, got {:?}", String::from_utf8_lossy(&info));
    }
    let mut hello = String::from(r#"CONNECT {"verbose":false,"pedantic":false,"protocol":1}"#);
    hello.push_str("\r\n");
    for (sid, subject) in subjects.iter().enumerate() {
        hello.push_str(&format!("SUB {subject} {}\r\n", sid + 1));
    }
    hello.push_str("PING\r\n");
    ws.send(Message::Binary(hello.into_bytes().into())).await?;

    loop {
        let frame = next_data(ws).await?;
        if memchr::memmem::find(&frame, b"-ERR").is_some() {
            bail!("nats-server refused: {}", String::from_utf8_lossy(&frame));
        }
        if memchr::memmem::find(&frame, b"PONG").is_some() {
            return Ok(());
        }
    }
}

/// Encodes publishes; for Ably it numbers them (msgSerial) so ACKs can be matched.
pub struct Publisher {
    proto: Proto,
    next_serial: i64,
}

impl Publisher {
    pub fn new(proto: Proto) -> Self {
        Publisher {
            proto,
            next_serial: 0,
        }
    }

    /// The msgSerial the next Ably publish gets.
    pub fn next_serial(&self) -> i64 {
        self.next_serial
    }

    /// One frame publishing every payload to `channel`: one ProtocolMessage with a
    /// `messages` array, several NATS PUBs, or the payloads back to back.
    pub fn frame(&mut self, channel: &str, payloads: &[Vec<u8>]) -> Message {
        match &self.proto {
            Proto::Ably { msgpack, .. } => {
                let messages = payloads
                    .iter()
                    .map(|p| AblyMessage {
                        data: std::str::from_utf8(p).expect("payloads are ASCII"),
                    })
                    .collect();
                let frame = AblyFrame {
                    action: ACTION_MESSAGE,
                    channel: Some(channel),
                    msg_serial: Some(self.next_serial),
                    messages: Some(messages),
                };
                self.next_serial += 1;
                ably_encode(&frame, *msgpack)
            }
            Proto::Nats => {
                let mut out = Vec::with_capacity(payloads.len() * (payloads[0].len() + 32));
                for p in payloads {
                    out.extend_from_slice(format!("PUB {channel} {}\r\n", p.len()).as_bytes());
                    out.extend_from_slice(p);
                    out.extend_from_slice(b"\r\n");
                }
                Message::Binary(out.into())
            }
            Proto::Bare => Message::Binary(payloads.concat().into()),
        }
    }
}

/// What a publisher's socket reads back: Ably ACKs and NACKs by msgSerial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ack { serial: i64, count: i64 },
    Nack { serial: i64, count: i64 },
    Other,
}

pub fn ably_reply(frame: &[u8], msgpack: bool) -> Reply {
    let Ok(header) = ably_header(frame, msgpack) else {
        return Reply::Other;
    };
    let serial = header.msg_serial.unwrap_or(-1);
    let count = header.count.unwrap_or(1);
    match header.action {
        ACTION_ACK => Reply::Ack { serial, count },
        ACTION_NACK => Reply::Nack { serial, count },
        _ => Reply::Other,
    }
}

/// Whether `frame` is a NATS server PING that must be answered with PONG.
pub fn is_nats_ping(frame: &[u8]) -> bool {
    frame.starts_with(b"PING")
}

pub fn nats_pong() -> Message {
    Message::Binary(b"PONG\r\n".to_vec().into())
}
