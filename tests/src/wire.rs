//! Protocol constants and conversions between MessagePack and JSON values.
//!
//! Tests describe frames as `serde_json::Value`. A MessagePack frame is decoded to an
//! [`rmpv::Value`] first and then viewed as JSON, with a msgpack `bin` shown as
//! `{"$bin": [bytes…]}` so that binary data can never be mistaken for a string or an
//! array in an assertion.

use anyhow::{bail, Context};
use serde_json::{Map, Number, Value};

/// The wire format of a WebSocket connection (`format=` in its URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Msgpack,
}

impl Format {
    pub fn query_value(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Msgpack => "msgpack",
        }
    }

    /// The other format, for tests that mix both.
    pub fn other(self) -> Format {
        match self {
            Format::Json => Format::Msgpack,
            Format::Msgpack => Format::Json,
        }
    }
}

/// ProtocolMessage actions (protocol.md §2.2).
pub mod action {
    pub const HEARTBEAT: i64 = 0;
    pub const ACK: i64 = 1;
    pub const NACK: i64 = 2;
    pub const CONNECTED: i64 = 4;
    pub const DISCONNECTED: i64 = 6;
    pub const CLOSE: i64 = 7;
    pub const CLOSED: i64 = 8;
    pub const ERROR: i64 = 9;
    pub const ATTACH: i64 = 10;
    pub const ATTACHED: i64 = 11;
    pub const DETACH: i64 = 12;
    pub const DETACHED: i64 = 13;
    pub const PRESENCE: i64 = 14;
    pub const MESSAGE: i64 = 15;
    pub const SYNC: i64 = 16;
    pub const AUTH: i64 = 17;
}

/// ProtocolMessage flags (protocol.md §2.3).
pub mod flags {
    pub const PRESENCE: i64 = 1 << 16;
    pub const PUBLISH: i64 = 1 << 17;
    pub const SUBSCRIBE: i64 = 1 << 18;
    pub const PRESENCE_SUBSCRIBE: i64 = 1 << 19;
    pub const ANNOTATION_PUBLISH: i64 = 1 << 21;
    pub const ANNOTATION_SUBSCRIBE: i64 = 1 << 22;
    pub const OBJECT_SUBSCRIBE: i64 = 1 << 24;
    pub const OBJECT_PUBLISH: i64 = 1 << 25;
    /// Every mode bit OR'd together.
    pub const ALL_MODES: i64 = 57_606_144;
    /// Modes granted to a `{"*":["*"]}` key that requests none.
    pub const DEFAULT_MODES: i64 = 3_080_192;
}

/// The key under which a msgpack `bin` appears in the JSON view of a frame.
pub const BIN_KEY: &str = "$bin";

/// The JSON view of a msgpack value: `bin` becomes `{"$bin": [bytes…]}`.
pub fn msgpack_to_json(value: &rmpv::Value) -> anyhow::Result<Value> {
    use rmpv::Value as M;
    Ok(match value {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(*b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(s)) => Value::from(s),
            _ => bail!("integer {i} out of range"),
        },
        M::F32(f) => float(f64::from(*f))?,
        M::F64(f) => float(*f)?,
        M::String(s) => match s.as_str() {
            Some(s) => Value::String(s.to_owned()),
            None => bail!("msgpack string is not UTF-8"),
        },
        M::Binary(bytes) => bin_json(bytes),
        M::Array(items) => Value::Array(
            items
                .iter()
                .map(msgpack_to_json)
                .collect::<anyhow::Result<_>>()?,
        ),
        M::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let key = key
                    .as_str()
                    .with_context(|| format!("msgpack map key {key} is not a string"))?;
                map.insert(key.to_owned(), msgpack_to_json(value)?);
            }
            Value::Object(map)
        }
        M::Ext(tag, _) => bail!("unexpected msgpack ext type {tag}"),
    })
}

/// The msgpack form of a JSON value; `{"$bin": [bytes…]}` becomes a `bin`.
pub fn json_to_msgpack(value: &Value) -> rmpv::Value {
    use rmpv::Value as M;
    match value {
        Value::Null => M::Nil,
        Value::Bool(b) => M::Boolean(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                M::from(u)
            } else if let Some(i) = n.as_i64() {
                M::from(i)
            } else {
                M::F64(n.as_f64().unwrap_or_default())
            }
        }
        Value::String(s) => M::from(s.as_str()),
        Value::Array(items) => M::Array(items.iter().map(json_to_msgpack).collect()),
        Value::Object(map) => {
            if let Some(bytes) = as_bin(value) {
                return M::Binary(bytes);
            }
            M::Map(
                map.iter()
                    .map(|(k, v)| (M::from(k.as_str()), json_to_msgpack(v)))
                    .collect(),
            )
        }
    }
}

/// The JSON view of binary data.
pub fn bin_json(bytes: &[u8]) -> Value {
    serde_json::json!({ BIN_KEY: bytes })
}

/// The bytes of a `{"$bin": [...]}` value, if it is one.
pub fn as_bin(value: &Value) -> Option<Vec<u8>> {
    let map = value.as_object()?;
    if map.len() != 1 {
        return None;
    }
    map.get(BIN_KEY)?
        .as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

/// Decodes exactly one msgpack value from `bytes`; trailing bytes are an error.
pub fn decode_msgpack(bytes: &[u8]) -> anyhow::Result<rmpv::Value> {
    let mut rest = bytes;
    let value = rmpv::decode::read_value(&mut rest).context("decoding msgpack")?;
    if !rest.is_empty() {
        bail!("{} trailing bytes after a msgpack value", rest.len());
    }
    Ok(value)
}

pub fn encode_msgpack(value: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    rmpv::encode::write_value(&mut out, value).expect("msgpack encodes into a Vec");
    out
}

fn float(f: f64) -> anyhow::Result<Value> {
    Number::from_f64(f)
        .map(Value::Number)
        .with_context(|| format!("float {f} has no JSON form"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bin_survives_the_json_view_and_back() {
        let original = rmpv::Value::Map(vec![
            ("data".into(), rmpv::Value::Binary(vec![0, 1, 2])),
            ("n".into(), rmpv::Value::from(-3)),
        ]);
        let view = msgpack_to_json(&original).unwrap();
        assert_eq!(view, json!({"data": {"$bin": [0, 1, 2]}, "n": -3}));
        assert_eq!(as_bin(&view["data"]), Some(vec![0, 1, 2]));

        let back = decode_msgpack(&encode_msgpack(&json_to_msgpack(&view))).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert!(decode_msgpack(&[0x01, 0x02]).is_err());
        // A two-element array holding one element.
        assert!(decode_msgpack(&[0x92, 0x01]).is_err());
    }
}
