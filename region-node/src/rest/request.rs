//! Reading a REST request: query parameters, and a size-limited body decoded by its
//! content type.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::response::{error_response, Negotiation};
use crate::error::AblyError;
use crate::node::Node;
use crate::protocol::Format;

/// Query parameters in the order given. The first occurrence of a name wins.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        Self(pairs.into_owned().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request body read whole, no larger than the node's `max_frame_size`.
#[derive(Debug, Clone)]
pub struct RestBody {
    pub bytes: Bytes,
    /// From `Content-Type`: MessagePack when it says so, JSON otherwise.
    pub format: Format,
}

impl RestBody {
    pub fn is_empty(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }

    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, AblyError> {
        match self.format {
            Format::Json => serde_json::from_slice(&self.bytes)
                .map_err(|e| AblyError::InvalidBody(format!("invalid JSON: {e}"))),
            Format::Msgpack => crate::protocol::codec::from_msgpack(&self.bytes)
                .map_err(|e| AblyError::InvalidBody(format!("invalid MessagePack: {e}"))),
        }
    }

    /// Whether the body's top-level value is an array, judged from its first byte.
    pub fn is_array(&self) -> bool {
        match self.format {
            Format::Json => self
                .bytes
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|&b| b == b'['),
            // fixarray, array 16 and array 32 markers.
            Format::Msgpack => self
                .bytes
                .first()
                .is_some_and(|&b| (0x90..=0x9f).contains(&b) || b == 0xdc || b == 0xdd),
        }
    }
}

/// The limit comes from the node's configuration, which the router does not have when
/// it is built, so the body is read here rather than under axum's `DefaultBodyLimit`.
impl FromRequest<Arc<Node>> for RestBody {
    type Rejection = Response;

    async fn from_request(request: Request, node: &Arc<Node>) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let limit = node.config.limits.max_frame_size;
        let answer_in = Negotiation::new(&parts.headers, &Params::parse(parts.uri.query())).format;

        let bytes = read_limited(&parts.headers, body, limit)
            .await
            .map_err(|e| error_response(answer_in, &e))?;
        Ok(Self {
            bytes,
            format: content_format(&parts.headers),
        })
    }
}

fn content_format(headers: &HeaderMap) -> Format {
    let msgpack = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(Format::Msgpack.content_type()));
    if msgpack {
        Format::Msgpack
    } else {
        Format::Json
    }
}

async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, AblyError> {
    let too_large = || AblyError::BodyTooLarge { limit };

    // A declared length over the limit is refused before reading anything.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }

    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| AblyError::InvalidBody(format!("reading the body failed: {e}")))?;
        if buffer.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(format: Format, bytes: &'static [u8]) -> RestBody {
        RestBody {
            bytes: Bytes::from_static(bytes),
            format,
        }
    }

    #[test]
    fn params_are_url_decoded_and_the_first_wins() {
        let p = Params::parse(Some("key=a.b%3Ac&limit=5&limit=9&x"));
        assert_eq!(p.get("key"), Some("a.b:c"));
        assert_eq!(p.get("limit"), Some("5"));
        assert_eq!(p.get("x"), Some(""));
        assert_eq!(p.get("y"), None);
        assert_eq!(Params::parse(None).get("key"), None);
    }

    #[test]
    fn arrays_are_recognised_in_both_formats() {
        assert!(body(Format::Json, b" \n[{}]").is_array());
        assert!(!body(Format::Json, b"{\"a\":[]}").is_array());
        assert!(body(Format::Msgpack, &[0x91, 0x80]).is_array());
        assert!(!body(Format::Msgpack, &[0x81, 0xa1, b'a', 0x01]).is_array());
        assert!(!body(Format::Json, b"").is_array());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_with_40009() {
        let ok = read_limited(&HeaderMap::new(), Body::from("12345"), 5).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"12345"));

        let err = read_limited(&HeaderMap::new(), Body::from("123456"), 5)
            .await
            .unwrap_err();
        assert_eq!(err.code_and_status(), (40009, 413));

        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, 100.into());
        let err = read_limited(&declared, Body::empty(), 5).await.unwrap_err();
        assert_eq!(err.code(), 40009);
    }
}
