//! Message payloads and their `encoding` (protocol.md §3.4).
//!
//! Starling stores payloads canonically: binary as bytes with no trailing `base64`
//! step, text as text, and structured JSON as a JSON string with a `json` step. Each
//! wire format then renders binary its own way: MessagePack as `bin`, JSON as base64
//! with `/base64` appended. That is what lets a JSON publisher and a MessagePack
//! subscriber exchange binary data unchanged.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A payload as decoded from the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Text(String),
    Binary(Bytes),
    /// Structured data sent raw (a REST body with an object as `data`, or a msgpack
    /// map). Normalisation turns it into `Text` with a `json` encoding step.
    Json(serde_json::Value),
}

/// A payload whose declared encoding does not match its content.
#[derive(Debug, thiserror::Error)]
#[error("data is not valid base64 for its encoding {encoding:?}")]
pub struct InvalidEncoding {
    pub encoding: String,
}

impl Data {
    /// Bytes counted against the message size limit.
    pub fn size(&self) -> usize {
        match self {
            Data::Text(s) => s.len(),
            Data::Binary(b) => b.len(),
            Data::Json(v) => serde_json::to_vec(v).map_or(0, |v| v.len()),
        }
    }
}

/// Brings an inbound payload and its encoding to the canonical form.
pub fn normalise(
    data: Option<Data>,
    encoding: Option<String>,
) -> Result<(Option<Data>, Option<String>), InvalidEncoding> {
    match data {
        Some(Data::Text(text)) if last_step(encoding.as_deref()) == Some("base64") => {
            let decoded = BASE64
                .decode(text.as_bytes())
                .map_err(|_| InvalidEncoding {
                    encoding: encoding.clone().unwrap_or_default(),
                })?;
            let rest = drop_last_step(encoding.as_deref());
            Ok((Some(Data::Binary(Bytes::from(decoded))), rest))
        }
        Some(Data::Json(value)) => {
            let text = value.to_string();
            Ok((
                Some(Data::Text(text)),
                Some(push_step(encoding.as_deref(), "json")),
            ))
        }
        other => Ok((other, encoding)),
    }
}

/// Renders a canonical payload for a JSON peer: binary becomes base64 text and the
/// encoding gains a trailing `base64` step. Returns `None` when nothing changes.
pub fn for_json(data: Option<&Data>, encoding: Option<&str>) -> Option<(Data, Option<String>)> {
    match data {
        Some(Data::Binary(bytes)) => Some((
            Data::Text(BASE64.encode(bytes)),
            Some(push_step(encoding, "base64")),
        )),
        _ => None,
    }
}

fn last_step(encoding: Option<&str>) -> Option<&str> {
    encoding
        .filter(|e| !e.is_empty())
        .and_then(|e| e.rsplit('/').next())
}

fn drop_last_step(encoding: Option<&str>) -> Option<String> {
    let encoding = encoding?;
    encoding.rsplit_once('/').map(|(rest, _)| rest.to_owned())
}

fn push_step(encoding: Option<&str>, step: &str) -> String {
    match encoding {
        Some(e) if !e.is_empty() => format!("{e}/{step}"),
        _ => step.to_owned(),
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Text(s) => serializer.serialize_str(s),
            // JSON peers never see this arm: `for_json` turns binary into base64 first.
            Data::Binary(b) => serializer.serialize_bytes(b),
            Data::Json(v) => v.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, binary data, or a JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
        Ok(Data::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Data, E> {
        Ok(Data::Text(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Data, E> {
        Ok(Data::Binary(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Data, E> {
        Ok(Data::Binary(Bytes::from(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Data, E> {
        Ok(Data::Json(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Data, E> {
        Ok(Data::Json(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Data, E> {
        Ok(Data::Json(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Data, E> {
        Ok(Data::Json(serde_json::Value::from(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Data, A::Error> {
        let value = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Data::Json(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Data, A::Error> {
        let value = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Data::Json(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_text_becomes_binary_without_the_step() {
        let (data, enc) =
            normalise(Some(Data::Text("AAEC".into())), Some("base64".into())).unwrap();
        assert_eq!(data, Some(Data::Binary(Bytes::from_static(&[0, 1, 2]))));
        assert_eq!(enc, None);

        let (_, enc) =
            normalise(Some(Data::Text("AAEC".into())), Some("utf-8/base64".into())).unwrap();
        assert_eq!(enc.as_deref(), Some("utf-8"));
    }

    #[test]
    fn invalid_base64_is_refused() {
        assert!(normalise(Some(Data::Text("!!".into())), Some("base64".into())).is_err());
    }

    #[test]
    fn structured_data_becomes_a_json_string() {
        let (data, enc) = normalise(Some(Data::Json(serde_json::json!({"a": 1}))), None).unwrap();
        assert_eq!(data, Some(Data::Text("{\"a\":1}".into())));
        assert_eq!(enc.as_deref(), Some("json"));
    }

    #[test]
    fn binary_is_base64_for_json_peers() {
        let bin = Data::Binary(Bytes::from_static(&[0, 1, 2]));
        let (data, enc) = for_json(Some(&bin), Some("utf-8")).unwrap();
        assert_eq!(data, Data::Text("AAEC".into()));
        assert_eq!(enc.as_deref(), Some("utf-8/base64"));
        assert!(for_json(Some(&Data::Text("x".into())), None).is_none());
    }

    #[test]
    fn msgpack_bin_decodes_as_binary() {
        let bytes = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[9, 8])).unwrap();
        let data: Data = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(data, Data::Binary(Bytes::from_static(&[9, 8])));
    }
}
