//! TokenRequests (protocol.md §7.3): a client that holds a key signs the parameters
//! of the token it wants, and whoever holds the request can exchange it for a token
//! exactly once, within a few minutes.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::error::AblyError;

type HmacSha256 = Hmac<Sha256>;

/// How far a TokenRequest's timestamp may be from this node's clock.
pub const TIMESTAMP_WINDOW_MS: i64 = 2 * 60 * 1000;

/// The body of `POST /keys/{keyName}/requestToken`. Fields are kept as sent, since the
/// mac covers their text; ably-js sends `ttl` and `timestamp` as numbers and the
/// capability as JSON text.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub ttl: Option<Value>,
    #[serde(default)]
    pub capability: Option<Value>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<Value>,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

impl TokenRequest {
    pub fn is_signed(&self) -> bool {
        self.mac.is_some()
    }

    /// The text the mac covers: the fields in Ably's order, each followed by a
    /// newline, absent ones empty.
    fn sign_text(&self) -> String {
        let fields = [
            self.key_name.clone().unwrap_or_default(),
            text(self.ttl.as_ref()),
            text(self.capability.as_ref()),
            self.client_id.clone().unwrap_or_default(),
            text(self.timestamp.as_ref()),
            self.nonce.clone().unwrap_or_default(),
        ];
        fields.iter().map(|f| format!("{f}\n")).collect()
    }

    /// Checks the mac against `secret` in constant time.
    pub fn verify_mac(&self, secret: &str) -> Result<(), AblyError> {
        let bad = || AblyError::InvalidCredentials("token request mac does not match".into());
        let given = self.mac.as_deref().ok_or_else(bad)?;
        let given = BASE64.decode(given).map_err(|_| bad())?;
        mac(secret)
            .chain_update(self.sign_text())
            .verify_slice(&given)
            .map_err(|_| bad())
    }

    /// The timestamp, which must lie within the window around `now_ms`.
    pub fn check_timestamp(&self, now_ms: i64) -> Result<i64, AblyError> {
        let timestamp = self
            .timestamp
            .as_ref()
            .and_then(number)
            .ok_or(AblyError::TimestampOutsideWindow)?;
        // abs_diff: a hostile timestamp (i64::MIN) must not overflow.
        if timestamp.abs_diff(now_ms) > TIMESTAMP_WINDOW_MS.unsigned_abs() {
            return Err(AblyError::TimestampOutsideWindow);
        }
        Ok(timestamp)
    }

    /// The requested ttl in ms, if any.
    pub fn ttl_ms(&self) -> Result<Option<i64>, AblyError> {
        let invalid = || AblyError::InvalidParameter {
            name: "ttl",
            reason: "expected a positive number of milliseconds".into(),
        };
        match &self.ttl {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match number(value) {
                Some(ms) if ms > 0 => Ok(Some(ms)),
                _ => Err(invalid()),
            },
        }
    }

    /// The requested capability's JSON text, if any.
    pub fn capability_text(&self) -> Option<String> {
        match &self.capability {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.is_empty() => None,
            Some(value) => Some(text(Some(value))),
        }
    }
}

/// A field's text as it was signed: strings as they are, numbers in JSON form.
fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A number sent as a JSON number or as decimal text.
fn number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("hmac takes any key length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A request signed as ably-js signs one (auth.ts createTokenRequest), with the
    /// mac computed independently here from the documented text.
    fn signed(secret: &str) -> TokenRequest {
        let text = "app.key\n60000\n{\"*\":[\"*\"]}\nalice\n1700000000000\n1234567890123456\n";
        let mac = BASE64.encode(mac(secret).chain_update(text).finalize().into_bytes());
        serde_json::from_value(json!({
            "keyName": "app.key",
            "ttl": 60000,
            "capability": "{\"*\":[\"*\"]}",
            "clientId": "alice",
            "timestamp": 1_700_000_000_000_i64,
            "nonce": "1234567890123456",
            "mac": mac,
        }))
        .unwrap()
    }

    #[test]
    fn a_correct_mac_verifies() {
        let request = signed("secret");
        assert!(request.is_signed());
        assert_eq!(request.verify_mac("secret"), Ok(()));
        assert_eq!(request.ttl_ms(), Ok(Some(60_000)));
        assert_eq!(
            request.capability_text().as_deref(),
            Some("{\"*\":[\"*\"]}")
        );
    }

    #[test]
    fn a_wrong_secret_or_changed_field_fails_with_40101() {
        assert_eq!(
            signed("secret").verify_mac("other").unwrap_err().code(),
            40101
        );

        let mut changed = signed("secret");
        changed.client_id = Some("mallory".into());
        assert_eq!(changed.verify_mac("secret").unwrap_err().code(), 40101);

        let mut longer = signed("secret");
        longer.ttl = Some(json!(86_400_000));
        assert_eq!(longer.verify_mac("secret").unwrap_err().code(), 40101);

        let mut garbage = signed("secret");
        garbage.mac = Some("not base64!".into());
        assert_eq!(garbage.verify_mac("secret").unwrap_err().code(), 40101);
    }

    #[test]
    fn absent_fields_sign_as_empty_lines() {
        let request = TokenRequest {
            key_name: Some("app.key".into()),
            timestamp: Some(json!(5)),
            nonce: Some("n".into()),
            ..TokenRequest::default()
        };
        assert_eq!(request.sign_text(), "app.key\n\n\n\n5\nn\n");
    }

    #[test]
    fn timestamps_outside_two_minutes_fail_with_40104() {
        let request = signed("secret");
        let at = 1_700_000_000_000;
        assert_eq!(request.check_timestamp(at + 119_000), Ok(at));
        assert_eq!(request.check_timestamp(at - 119_000), Ok(at));
        assert_eq!(
            request.check_timestamp(at + 121_000).unwrap_err().code(),
            40104
        );
        assert_eq!(
            request.check_timestamp(at - 121_000).unwrap_err().code(),
            40104
        );
        assert_eq!(
            TokenRequest::default()
                .check_timestamp(at)
                .unwrap_err()
                .code(),
            40104
        );
    }

    #[test]
    fn ttl_must_be_positive() {
        let request = TokenRequest {
            ttl: Some(json!(-1)),
            ..TokenRequest::default()
        };
        assert_eq!(request.ttl_ms().unwrap_err().code(), 40003);
        assert_eq!(TokenRequest::default().ttl_ms(), Ok(None));
    }
}
