//! Turning protocol messages into frames and back, in JSON (text frames) or
//! MessagePack (binary frames).

use std::borrow::Cow;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;

use super::{data, Message, PresenceMessage, ProtocolMessage};

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
