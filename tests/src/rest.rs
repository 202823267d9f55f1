//! Helpers for REST tests: Basic auth, `Link` headers, MessagePack bodies.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::wire;

pub const JSON: &str = "application/json";
pub const MSGPACK: &str = "application/x-msgpack";

/// An HTTP client for one test. No proxy: every request goes to loopback.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(crate::WAIT)
        .build()
        .expect("building an HTTP client")
}

/// `Authorization` value for a full key `appId.keyId:secret`, as ably-js sends it.
pub fn basic(key: &str) -> String {
    format!("Basic {}", BASE64.encode(key))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The query of the `rel="next"` link (`<./messages?QUERY>; rel="next"`), if any.
///
/// ably-js only follows links of the form `./<word>?<query>` and reuses the original
/// path with the link's query, so anything else counts as a malformed link.
pub fn next_link(headers: &HeaderMap) -> anyhow::Result<Option<String>> {
    for value in headers.get_all(reqwest::header::LINK) {
        let text = value.to_str().context("Link header is not ASCII")?;
        for link in text.split(',') {
            let Some((target, params)) = link.trim().split_once(';') else {
                bail!("malformed Link {link:?}");
            };
            if !params.contains("rel=\"next\"") {
                continue;
            }
            let target = target
                .trim()
                .strip_prefix('<')
                .and_then(|t| t.strip_suffix('>'))
                .with_context(|| format!("Link target {target:?} not in <>"))?;
            let Some((path, query)) = target.split_once('?') else {
                bail!("Link target {target:?} has no query");
            };
            let word = path.strip_prefix("./").unwrap_or("");
            if word.is_empty() || !word.chars().all(|c| c.is_alphanumeric() || c == '_') {
                bail!("Link target {target:?} is not ./<word>?<query>");
            }
            return Ok(Some(query.to_owned()));
        }
    }
    Ok(None)
}

/// The JSON view of a MessagePack body (see [`crate::wire`]).
pub fn msgpack_body(bytes: &[u8]) -> anyhow::Result<Value> {
    wire::msgpack_to_json(&wire::decode_msgpack(bytes)?)
}

/// A MessagePack body from a JSON value (`{"$bin": [..]}` becomes `bin`).
pub fn to_msgpack(value: &Value) -> Vec<u8> {
    wire::encode_msgpack(&wire::json_to_msgpack(value))
}

/// The `Content-Type` of a response, exactly as sent.
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn next_link_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            "link",
            HeaderValue::from_static(
                r#"<./messages?limit=2>; rel="first", <./messages?limit=2&cursor=x>; rel="next""#,
            ),
        );
        assert_eq!(
            next_link(&headers).unwrap().as_deref(),
            Some("limit=2&cursor=x")
        );
        assert_eq!(next_link(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn a_link_not_shaped_for_ably_js_is_an_error() {
        let mut headers = HeaderMap::new();
        headers.append(
            "link",
            HeaderValue::from_static(r#"</channels/c/messages?x=1>; rel="next""#),
        );
        assert!(next_link(&headers).is_err());
    }
}
