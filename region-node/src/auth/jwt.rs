//! Ably JWTs as tokens: HS256, signed with a key's secret, the key named by the
//! header's `kid`, capability and clientId in `x-ably-capability` and
//! `x-ably-clientId`, lifetime in `iat` and `exp` (seconds) (protocol.md §7.3).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Grant;
use crate::capability::Capability;
use crate::error::AblyError;

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    iat: Option<i64>,
    exp: i64,
    #[serde(rename = "x-ably-capability", default)]
    capability: Option<String>,
    #[serde(rename = "x-ably-clientId", default)]
    client_id: Option<String>,
}

/// Whether `text` has a JWT's three segments.
pub fn looks_like(text: &str) -> bool {
    text.split('.').count() == 3
}

/// The key that signed the JWT, from its header (not yet checked).
pub fn key_name(text: &str) -> Result<String, AblyError> {
    let header =
        jsonwebtoken::decode_header(text).map_err(|e| AblyError::InvalidJwt(e.to_string()))?;
    if header.alg != Algorithm::HS256 {
        return Err(AblyError::InvalidJwt(format!(
            "algorithm {:?} is not HS256",
            header.alg
        )));
    }
    header
        .kid
        .ok_or_else(|| AblyError::InvalidJwt("the header names no key (kid)".into()))
}

/// Checks the signature with the secret of the key named `key_name` and returns what
/// the JWT grants. A JWT without a capability gets the key's.
pub fn verify(
    text: &str,
    key_name: &str,
    secret: &str,
    key_capability: &Capability,
) -> Result<Grant, AblyError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is exact, as for Starling's own tokens; audiences are not an Ably claim.
    validation.leeway = 0;
    validation.validate_aud = false;
    let key = DecodingKey::from_secret(secret.as_bytes());
    let claims = jsonwebtoken::decode::<Claims>(text, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AblyError::TokenExpired,
            _ => AblyError::InvalidJwt(e.to_string()),
        })?
        .claims;

    let capability = match &claims.capability {
        Some(text) => Capability::parse(text)
            .map_err(|e| AblyError::InvalidJwt(e.to_string()))?
            .intersect(key_capability)
            .ok_or(AblyError::CapabilityEmpty)?,
        None => key_capability.clone(),
    };
    Ok(Grant {
        key_name: key_name.to_owned(),
        issued_ms: claims.iat.map_or(0, |s| s.saturating_mul(1000)),
        expires_ms: claims.exp.saturating_mul(1000),
        capability,
        client_id: claims.client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::now_ms;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn jwt(kid: Option<&str>, secret: &str, exp_in_s: i64) -> String {
        let now = now_ms() / 1000;
        let header = Header {
            kid: kid.map(str::to_owned),
            ..Header::new(Algorithm::HS256)
        };
        let claims = json!({
            "iat": now,
            "exp": now + exp_in_s,
            "x-ably-capability": r#"{"chat":["publish","subscribe","presence"]}"#,
            "x-ably-clientId": "carol",
        });
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn key_capability() -> Capability {
        Capability::parse(r#"{"*":["publish","subscribe"]}"#).unwrap()
    }

    fn check(text: &str, secret: &str) -> Result<Grant, AblyError> {
        let name = key_name(text)?;
        verify(text, &name, secret, &key_capability())
    }

    #[test]
    fn a_valid_jwt_grants_its_capability_within_the_key() {
        let text = jwt(Some("app.key"), "secret", 60);
        assert!(looks_like(&text));
        let grant = check(&text, "secret").unwrap();
        assert_eq!(grant.key_name, "app.key");
        assert_eq!(grant.client_id.as_deref(), Some("carol"));
        assert_eq!(
            grant.capability.to_json(),
            r#"{"chat":["publish","subscribe"]}"#
        );
        assert_eq!(grant.expires_ms - grant.issued_ms, 60_000);
    }

    #[test]
    fn a_wrong_signature_is_refused() {
        let text = jwt(Some("app.key"), "not-the-secret", 60);
        assert_eq!(check(&text, "secret").unwrap_err().code(), 40144);
    }

    #[test]
    fn a_jwt_without_kid_is_refused() {
        let text = jwt(None, "secret", 60);
        assert_eq!(check(&text, "secret").unwrap_err().code(), 40144);
    }

    #[test]
    fn an_expired_jwt_is_a_token_expiry() {
        let text = jwt(Some("app.key"), "secret", -5);
        assert_eq!(check(&text, "secret").unwrap_err().code(), 40142);
    }

    #[test]
    fn other_algorithms_are_refused() {
        let header = Header {
            kid: Some("app.key".into()),
            ..Header::new(Algorithm::HS384)
        };
        let claims = json!({"exp": now_ms() / 1000 + 60});
        let text =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"secret")).unwrap();
        assert_eq!(check(&text, "secret").unwrap_err().code(), 40144);
    }
}
