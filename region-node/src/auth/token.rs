//! Starling's own tokens: self-contained and signed with the key they were issued
//! under, so any node of any region that knows the key verifies one locally, without
//! a shared database (design.md, "Tokens are self-contained").
//!
//! Shape: `st1.<claims>.<mac>`, where `claims` is unpadded base64url of a small JSON
//! object (key name, issued, expires, capability text, clientId) and `mac` is unpadded
//! base64url of HMAC-SHA256 under the key's secret over `st1.<claims>`. The prefix
//! tells these apart from JWTs, whose first segment is a base64url JSON header.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Grant;
use crate::capability::Capability;
use crate::error::AblyError;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "st1.";

/// The claims as they travel; short names keep tokens short in URLs.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(rename = "k")]
    key_name: String,
    #[serde(rename = "i")]
    issued_ms: i64,
    #[serde(rename = "x")]
    expires_ms: i64,
    #[serde(rename = "c")]
    capability: String,
    #[serde(rename = "ci", default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

/// A token whose claims were read but not yet checked against the key's secret.
#[derive(Debug)]
pub struct Unverified<'a> {
    signed: &'a str,
    mac: &'a str,
    claims: Claims,
}

/// Whether `text` claims to be a Starling token (it may still be forged).
pub fn is_ours(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Signs `grant` with `secret`, the secret of the key it names.
pub fn sign(grant: &Grant, secret: &str) -> String {
    let claims = Claims {
        key_name: grant.key_name.clone(),
        issued_ms: grant.issued_ms,
        expires_ms: grant.expires_ms,
        capability: grant.capability.to_json(),
        client_id: grant.client_id.clone(),
    };
    let json = serde_json::to_vec(&claims).expect("claims serialise");
    let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
    let mac = URL_SAFE_NO_PAD.encode(mac(secret).chain_update(&signed).finalize().into_bytes());
    format!("{signed}.{mac}")
}

impl<'a> Unverified<'a> {
    pub fn parse(text: &'a str) -> Result<Self, AblyError> {
        let malformed = || AblyError::TokenInvalid("malformed token".into());
        let (signed, mac) = text.rsplit_once('.').ok_or_else(malformed)?;
        let encoded = signed.strip_prefix(PREFIX).ok_or_else(malformed)?;
        let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
        let claims = serde_json::from_slice(&json).map_err(|_| malformed())?;
        Ok(Self {
            signed,
            mac,
            claims,
        })
    }

    /// The key the token says it was issued under: the one whose secret checks it.
    pub fn key_name(&self) -> &str {
        &self.claims.key_name
    }

    /// Checks the mac in constant time and returns what the token grants.
    pub fn verify(self, secret: &str) -> Result<Grant, AblyError> {
        let forged = || AblyError::TokenInvalid("token signature does not match".into());
        let given = URL_SAFE_NO_PAD.decode(self.mac).map_err(|_| forged())?;
        mac(secret)
            .chain_update(self.signed)
            .verify_slice(&given)
            .map_err(|_| forged())?;

        // Signed by the key, so a capability that does not parse is our own bug.
        let capability = Capability::parse(&self.claims.capability)
            .map_err(|e| AblyError::TokenInvalid(e.to_string()))?;
        Ok(Grant {
            key_name: self.claims.key_name,
            issued_ms: self.claims.issued_ms,
            expires_ms: self.claims.expires_ms,
            capability,
            client_id: self.claims.client_id,
        })
    }
}

fn mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("hmac takes any key length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            key_name: "app.key".into(),
            issued_ms: 1_700_000_000_000,
            expires_ms: 1_700_003_600_000,
            capability: Capability::parse(r#"{"chat:*":["publish","subscribe"]}"#).unwrap(),
            client_id: Some("alice".into()),
        }
    }

    fn verify(text: &str, secret: &str) -> Result<Grant, AblyError> {
        Unverified::parse(text)?.verify(secret)
    }

    #[test]
    fn a_signed_token_verifies_with_the_key_secret() {
        let text = sign(&grant(), "secret");
        assert!(is_ours(&text));
        assert_eq!(Unverified::parse(&text).unwrap().key_name(), "app.key");
        assert_eq!(verify(&text, "secret").unwrap(), grant());
    }

    #[test]
    fn tokens_are_url_safe() {
        let text = sign(&grant(), "secret");
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    }

    #[test]
    fn another_secret_is_refused() {
        let text = sign(&grant(), "secret");
        assert_eq!(verify(&text, "other").unwrap_err().code(), 40143);
    }

    #[test]
    fn tampered_claims_or_mac_are_refused() {
        let text = sign(&grant(), "secret");
        let (signed, mac) = text.rsplit_once('.').unwrap();

        // Claims of a wider grant, spliced in front of the original mac.
        let mut wider = grant();
        wider.capability = Capability::parse(r#"{"*":["*"]}"#).unwrap();
        let (forged_signed, _) = sign(&wider, "guess")
            .rsplit_once('.')
            .map(|(s, m)| (s.to_owned(), m.to_owned()))
            .unwrap();
        assert_eq!(
            verify(&format!("{forged_signed}.{mac}"), "secret")
                .unwrap_err()
                .code(),
            40143
        );

        let mut flipped = mac.to_owned().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            verify(&format!("{signed}.{flipped}"), "secret")
                .unwrap_err()
                .code(),
            40143
        );
    }

    #[test]
    fn garbage_is_refused_as_malformed() {
        for text in ["", "st1.", "st1.!!!.x", "abc", "st1.e30.AAAA"] {
            assert_eq!(
                verify(text, "secret").unwrap_err().code(),
                40143,
                "{text:?}"
            );
        }
    }
}
