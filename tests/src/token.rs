//! Token helpers for tests: TokenRequests signed as ably-js signs them, and the
//! `requestToken` / `revokeTokens` endpoints.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::rest::{self, basic, JSON};

/// What a test asks a token for; `None` fields are left out of the request.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub ttl: Option<i64>,
    pub capability: Option<String>,
    pub client_id: Option<String>,
}

/// Milliseconds since the Unix epoch on this machine (the nodes share its clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A TokenRequest for `ask`, signed with the secret of `key` (`name:secret`) at
/// `timestamp` with `nonce`, exactly as protocol.md §7.3 describes the mac.
pub fn signed_request(key: &str, ask: &Ask, timestamp: i64, nonce: &str) -> Value {
    let (name, secret) = key.split_once(':').expect("key is name:secret");
    let ttl = ask.ttl.map(|t| t.to_string()).unwrap_or_default();
    let capability = ask.capability.clone().unwrap_or_default();
    let client_id = ask.client_id.clone().unwrap_or_default();
    let text = format!("{name}\n{ttl}\n{capability}\n{client_id}\n{timestamp}\n{nonce}\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(text.as_bytes());

    let mut request = json!({
        "keyName": name,
        "timestamp": timestamp,
        "nonce": nonce,
        "mac": BASE64.encode(mac.finalize().into_bytes()),
    });
    if let Some(ttl) = ask.ttl {
        request["ttl"] = json!(ttl);
    }
    if let Some(capability) = &ask.capability {
        request["capability"] = json!(capability);
    }
    if let Some(client_id) = &ask.client_id {
        request["clientId"] = json!(client_id);
    }
    request
}

/// A nonce no other request of this process uses.
pub fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{:016}{}", now_ms(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// POSTs `body` to `/keys/{keyName}/requestToken` on `base` (`http://addr`), with
/// `auth` as the `Authorization` header if given; returns the status and JSON body.
pub async fn post_request(
    base: &str,
    key_name: &str,
    body: &Value,
    auth: Option<&str>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = rest::http()
        .post(format!("{base}/keys/{key_name}/requestToken"))
        .header(ACCEPT, JSON)
        .json(body);
    if let Some(auth) = auth {
        request = request.header(AUTHORIZATION, auth);
    }
    let response = request.send().await.context("POST requestToken")?;
    let status = response.status();
    let body = response.json().await.context("requestToken body")?;
    Ok((status, body))
}

/// A token for `ask` from a freshly signed request; fails unless the node issues one.
pub async fn token(base: &str, key: &str, ask: &Ask) -> anyhow::Result<Value> {
    let name = key.split_once(':').expect("key is name:secret").0;
    let request = signed_request(key, ask, now_ms(), &nonce());
    let (status, details) = post_request(base, name, &request, None).await?;
    anyhow::ensure!(status == StatusCode::OK, "requestToken: {status} {details}");
    Ok(details)
}

/// POSTs `revokeTokens` for `targets` with basic auth of `key`.
pub async fn revoke(
    base: &str,
    key: &str,
    targets: &[&str],
) -> anyhow::Result<(StatusCode, Value)> {
    let name = key.split_once(':').expect("key is name:secret").0;
    let response = rest::http()
        .post(format!("{base}/keys/{name}/revokeTokens"))
        .header(ACCEPT, JSON)
        .header(AUTHORIZATION, basic(key))
        .json(&json!({ "targets": targets }))
        .send()
        .await
        .context("POST revokeTokens")?;
    let status = response.status();
    Ok((status, response.json().await.context("revokeTokens body")?))
}
