//! Turning protocol messages into frames and back, in JSON (text frames) or
//! MessagePack (binary frames).

use std::borrow::Cow;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;

use super::{action, data, Message, PresenceMessage, ProtocolMessage};

/// The wire format a peer asked for (`format=` on the WebSocket, `Accept` on REST).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    #[default]
    Json,
    Msgpack,
}

/// An encoded frame, ready to be cloned to any number of sockets without copying.
#[derive(Debug, Clone)]
pub enum Encoded {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Encoded {
    pub fn len(&self) -> usize {
        match self {
            Encoded::Text(t) => t.len(),
            Encoded::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_bytes(self) -> Bytes {
        match self {
            Encoded::Text(t) => Bytes::from(t),
            Encoded::Binary(b) => b,
        }
    }
}

/// Why an inbound frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON protocol message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid MessagePack protocol message: {0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
}

impl Format {
    pub fn from_query(value: Option<&str>) -> Format {
        match value {
            Some("msgpack") => Format::Msgpack,
            _ => Format::Json,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Msgpack => "application/x-msgpack",
        }
    }
}

pub fn decode_json(text: &str) -> Result<ProtocolMessage, DecodeError> {
    Ok(serde_json::from_str(text)?)
}

/// Deepest nesting accepted in a MessagePack frame, the same bound serde_json keeps
/// for JSON: deep enough for any real payload, shallow enough that decoding and
/// dropping a value never exhausts a task's stack.
const MAX_DEPTH: usize = 128;

pub fn decode_msgpack(bytes: &[u8]) -> Result<ProtocolMessage, DecodeError> {
    from_msgpack(bytes)
}

/// Decodes any MessagePack value (frames, REST bodies) with the nesting bound.
pub fn from_msgpack<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(MAX_DEPTH);
    Ok(T::deserialize(&mut deserializer)?)
}

/// Encodes a protocol message for one format. Binary payloads are rendered for JSON
/// peers here, so callers always hand in canonical messages.
pub fn encode(pm: &ProtocolMessage, format: Format) -> Encoded {
    let pm = wire_view(pm);
    let pm = pm.as_ref();
    match format {
        Format::Json => {
            let pm = json_view(pm);
            // Serialising plain data into a Vec cannot fail: every map key is a string.
            let text = serde_json::to_string(pm.as_ref()).expect("protocol message serialises");
            Encoded::Text(Utf8Bytes::from(text))
        }
        Format::Msgpack => Encoded::Binary(Bytes::from(to_msgpack(pm))),
    }
}

/// Encodes any serialisable value (REST bodies) in the given format.
pub fn encode_value<T: Serialize + ?Sized>(value: &T, format: Format) -> Bytes {
    match format {
        Format::Json => Bytes::from(serde_json::to_vec(value).expect("value serialises")),
        Format::Msgpack => Bytes::from(to_msgpack(value)),
    }
}

fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Named encoding writes structs as maps, which is what ably-js expects.
    rmp_serde::to_vec_named(value).expect("value serialises to msgpack")
}

/// A MESSAGE frame as it goes on the wire: a message's `id`, `connectionId` and
/// `timestamp` are left out where the receiver derives the same value from the frame
/// (`<frame id>:<index>`, the frame's own; ably-js `populateFieldsFromParent`, and
/// [`ProtocolMessage::fill_from_parent`] here). For 100-byte messages that is about
/// 65 of each message's 230 bytes, which every subscriber's socket no longer copies.
/// The frame in memory keeps every field; only the bytes are trimmed.
fn wire_view(pm: &ProtocolMessage) -> Cow<'_, ProtocolMessage> {
    let Some(messages) = pm
        .messages
        .as_ref()
        .filter(|_| pm.action == action::MESSAGE)
    else {
        return Cow::Borrowed(pm);
    };
    let derivable = |(index, m): (usize, &Message)| {
        derivable_id(pm, index, m)
            || (m.connection_id.is_some() && m.connection_id == pm.connection_id)
            || (m.timestamp.is_some() && m.timestamp == pm.timestamp)
    };
    if !messages.iter().enumerate().any(derivable) {
        return Cow::Borrowed(pm);
    }

    let mut owned = pm.clone();
    for (index, m) in owned.messages.iter_mut().flatten().enumerate() {
        if derivable_id(pm, index, m) {
            m.id = None;
        }
        if m.connection_id == pm.connection_id {
            m.connection_id = None;
        }
        if m.timestamp == pm.timestamp {
            m.timestamp = None;
        }
    }
    Cow::Owned(owned)
}

/// Whether a message's id is `<frame id>:<index>`, as a receiver would derive it.
fn derivable_id(pm: &ProtocolMessage, index: usize, message: &Message) -> bool {
    let (Some(base), Some(id)) = (pm.id.as_deref(), message.id.as_deref()) else {
        return false;
    };
    let Some(digits) = id.strip_prefix(base).and_then(|r| r.strip_prefix(':')) else {
        return false;
    };
    // Compared as text, without formatting the index: same length and same value
    // rules out leading zeros ("01" is not derived from index 1).
    let len = index.checked_ilog10().map_or(1, |l| l as usize + 1);
    digits.len() == len && digits.parse::<usize>() == Ok(index)
}

/// The protocol message as a JSON peer must see it: binary payloads as base64.
fn json_view(pm: &ProtocolMessage) -> Cow<'_, ProtocolMessage> {
    let binary = |d: &Option<data::Data>| matches!(d, Some(data::Data::Binary(_)));
    let in_messages = (pm.messages.iter().flatten()).any(|m| binary(&m.data));
    let in_presence = (pm.presence.iter().flatten()).any(|m| binary(&m.data));
    if !in_messages && !in_presence {
        return Cow::Borrowed(pm);
    }

    let mut owned = pm.clone();
    if let Some(messages) = owned.messages.as_mut() {
        messages.iter_mut().for_each(render_for_json);
    }
    if let Some(presence) = owned.presence.as_mut() {
        presence.iter_mut().for_each(render_presence_for_json);
    }
    Cow::Owned(owned)
}

/// Rewrites one canonical presence event for a JSON peer, in place.
pub fn render_presence_for_json(message: &mut PresenceMessage) {
    if let Some((data, encoding)) =
        data::for_json(message.data.as_ref(), message.encoding.as_deref())
    {
        message.data = Some(data);
        message.encoding = encoding;
    }
}

/// Rewrites one canonical message for a JSON peer, in place.
pub fn render_for_json(message: &mut Message) {
    if let Some((data, encoding)) =
        data::for_json(message.data.as_ref(), message.encoding.as_deref())
    {
        message.data = Some(data);
        message.encoding = encoding;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{action, Data};

    fn message_with(data: Data) -> ProtocolMessage {
        ProtocolMessage {
            messages: Some(vec![Message {
                data: Some(data),
                ..Message::default()
            }]),
            ..ProtocolMessage::for_channel(action::MESSAGE, "c")
        }
    }

    /// A connection id and a time as the node makes them (12 characters, ms).
    const CONN: &str = "bHq25v9CZdHX";
    const AT: i64 = 1_796_382_924_933;

    /// A frame of four messages from the publish `CONN:7` at `AT`, the second from
    /// another connection and time, the fourth with an id no index derives ("03").
    fn merged_frame() -> ProtocolMessage {
        let message = |id: String, connection: &str, timestamp: i64| Message {
            serial: Some(format!("01a240c41fb9-{:016x}", timestamp)),
            id: Some(id),
            name: Some("n".into()),
            data: Some(Data::Text("d".repeat(100))),
            connection_id: Some(connection.into()),
            timestamp: Some(timestamp),
            action: Some(0),
            ..Message::default()
        };
        ProtocolMessage {
            id: Some(format!("{CONN}:7")),
            connection_id: Some(CONN.into()),
            timestamp: Some(AT),
            messages: Some(vec![
                message(format!("{CONN}:7:0"), CONN, AT),
                message("Zz9otherconn:1:0".into(), "Zz9otherconn", AT + 1),
                message(format!("{CONN}:7:2"), CONN, AT),
                message(format!("{CONN}:7:03"), CONN, AT),
            ]),
            ..ProtocolMessage::for_channel(action::MESSAGE, "c")
        }
    }

    fn decoded(encoded: Encoded) -> ProtocolMessage {
        match encoded {
            Encoded::Text(text) => decode_json(text.as_str()).unwrap(),
            Encoded::Binary(bytes) => decode_msgpack(&bytes).unwrap(),
        }
    }

    #[test]
    fn a_message_frame_leaves_out_only_what_the_receiver_derives() {
        let pm = merged_frame();
        for format in [Format::Json, Format::Msgpack] {
            let mut sent = decoded(encode(&pm, format));

            let messages = sent.messages.as_ref().unwrap();
            let kept = |m: &Message| {
                (
                    m.id.is_some(),
                    m.connection_id.is_some(),
                    m.timestamp.is_some(),
                )
            };
            assert_eq!(kept(&messages[0]), (false, false, false), "{format:?}");
            assert_eq!(kept(&messages[1]), (true, true, true), "{format:?}");
            assert_eq!(kept(&messages[2]), (false, false, false), "{format:?}");
            assert_eq!(kept(&messages[3]), (true, false, false), "{format:?}");
            assert!(messages
                .iter()
                .all(|m| m.serial.is_some() && m.action == Some(0)));

            sent.fill_from_parent();
            assert_eq!(
                sent, pm,
                "{format:?}: filled in, the frame is what was encoded"
            );
        }
    }

    #[test]
    fn leaving_out_derived_fields_saves_a_quarter_of_a_100_byte_message() {
        let pm = merged_frame();
        let full = to_msgpack(&pm).len();
        let Encoded::Binary(trimmed) = encode(&pm, Format::Msgpack) else {
            panic!("msgpack is binary");
        };
        // Two messages drop id, connectionId and timestamp (65 bytes of about 230
        // each), the fourth its connectionId and timestamp.
        let saved = full - trimmed.len();
        assert!(saved >= 2 * 60 + 40, "{} of {full} bytes", trimmed.len());
    }

    #[test]
    fn other_frames_and_frames_without_a_parent_are_encoded_as_they_are() {
        let mut presence = merged_frame();
        presence.action = action::PRESENCE;
        let mut orphan = merged_frame();
        orphan.id = None;
        orphan.connection_id = None;
        orphan.timestamp = None;
        for pm in [presence, orphan] {
            let Encoded::Binary(bytes) = encode(&pm, Format::Msgpack) else {
                panic!("msgpack is binary");
            };
            assert_eq!(bytes.len(), to_msgpack(&pm).len());
            assert_eq!(decode_msgpack(&bytes).unwrap(), pm);
        }
    }

    #[test]
    fn binary_round_trips_through_both_formats() {
        let pm = message_with(Data::Binary(Bytes::from_static(b"\x00\xff")));

        let Encoded::Binary(bin) = encode(&pm, Format::Msgpack) else {
            panic!("binary frame")
        };
        assert_eq!(decode_msgpack(&bin).unwrap(), pm);

        let Encoded::Text(text) = encode(&pm, Format::Json) else {
            panic!("text frame")
        };
        let back = decode_json(text.as_str()).unwrap();
        let m = &back.messages.unwrap()[0];
        assert_eq!(m.data, Some(Data::Text("AP8=".into())));
        assert_eq!(m.encoding.as_deref(), Some("base64"));
    }

    #[test]
    fn absent_fields_are_left_out() {
        let Encoded::Text(text) = encode(&ProtocolMessage::new(action::CLOSED), Format::Json)
        else {
            panic!("text frame")
        };
        assert_eq!(text.as_str(), r#"{"action":8}"#);
    }

    #[test]
    fn client_size_field_and_unknown_fields_are_ignored() {
        let pm = decode_json(
            r#"{"action":15,"channel":"c","msgSerial":0,"future":1,
                "messages":[{"name":"ev","data":"{}","encoding":"json","size":9,"action":0}]}"#,
        )
        .unwrap();
        let json = serde_json::to_string(&pm.messages.unwrap()[0]).unwrap();
        assert!(!json.contains("size"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_json("{not json").is_err());
        assert!(decode_msgpack(&[0xc1, 0x00]).is_err());
        assert!(decode_json(r#"{"action":"fifteen"}"#).is_err());
    }

    #[test]
    fn deeply_nested_data_is_refused() {
        let mut data = serde_json::json!(1);
        for _ in 0..200 {
            data = serde_json::json!([data]);
        }
        let pm = serde_json::json!({"action": 15, "msgSerial": 0, "messages": [{"data": data}]});
        let bytes = rmp_serde::to_vec_named(&pm).unwrap();
        assert!(decode_msgpack(&bytes).is_err());
    }
}
