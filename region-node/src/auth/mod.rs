//! Who a client is: the holder of an API key, or of a token issued under one
//! (protocol.md §7.3).
//!
//! - `token`: Starling's own self-contained tokens, signed with the key's secret.
//! - `jwt`: Ably JWTs, HS256 under the key's secret, accepted as tokens too.
//! - `token_request`: the signed requests clients exchange for a token.
//! - `nonce`: the TokenRequest nonces this node remembers.
//! - `nonce_claims`: a nonce accepted once per region, claimed at its owner on the
//!   ring over the mesh.
//!
//! Every check of a credential is local: the key comes from the app registry,
//! revocations from the node's copy of the global master's catalog. The one question
//! a node asks another is whether a TokenRequest's nonce was used before.

pub mod jwt;
pub mod nonce;
pub mod nonce_claims;
pub mod token;
pub mod token_request;

use std::sync::Arc;

use serde::Serialize;

use crate::apps::{App, AppRegistry, Key};
use crate::capability::Capability;
use crate::error::AblyError;
use crate::node::{now_ms, Node, TokenHolder};

/// A token's lifetime when the request names none (Ably's default, RSA5).
pub const DEFAULT_TTL_MS: i64 = 60 * 60 * 1000;
/// The longest lifetime a token may be issued with.
pub const MAX_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Who is on the other end, as established by authentication.
#[derive(Debug, Clone)]
pub struct Identity {
    pub app: Arc<App>,
    pub key: Arc<Key>,
    /// What the client may do: the key's capability, or its token's.
    pub capability: Capability,
    pub client_id: Option<String>,
    /// The token presented, when the client used one rather than the key.
    pub token: Option<Grant>,
}

/// What a verified token grants, whichever form it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub key_name: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
    pub capability: Capability,
    /// `*` for a wildcard token, which may act as any clientId.
    pub client_id: Option<String>,
}

/// A token as Ably clients expect it back from `requestToken`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenDetails {
    pub token: String,
    pub key_name: String,
    pub issued: i64,
    pub expires: i64,
    /// JSON text, as Ably sends it.
    pub capability: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// What a token should grant, from a TokenRequest or an unsigned request.
#[derive(Debug, Default)]
pub struct TokenParams {
    pub ttl_ms: Option<i64>,
    pub capability: Option<String>,
    pub client_id: Option<String>,
}

impl Identity {
    /// When the token runs out (wall clock, ms); never for a key.
    pub fn expires_ms(&self) -> Option<i64> {
        self.token.as_ref().map(|t| t.expires_ms)
    }

    /// What the connection registry needs to find this client again on revocation.
    pub fn token_holder(&self) -> Option<TokenHolder> {
        let grant = self.token.as_ref()?;
        Some(TokenHolder {
            key_name: grant.key_name.clone(),
            client_id: grant.client_id.clone(),
            issued_ms: grant.issued_ms,
        })
    }
}

/// Authenticates a full key string `appId.keyId:secret`.
pub fn key_identity(
    apps: &AppRegistry,
    key_str: &str,
    client_id: Option<&str>,
) -> Result<Identity, AblyError> {
    let (app, key) = apps.authenticate(key_str)?;
    if client_id == Some("*") {
        return Err(AblyError::InvalidClientId(
            "a wildcard clientId needs a token".into(),
        ));
    }
    Ok(Identity {
        app,
        capability: key.capability.clone(),
        key,
        client_id: client_id.map(str::to_owned),
        token: None,
    })
}

/// Authenticates a token (Starling's or an Ably JWT): its signature, expiry and
/// revocation, and the clientId the client asked to act as.
pub fn token_identity(
    node: &Node,
    text: &str,
    client_id: Option<&str>,
) -> Result<Identity, AblyError> {
    let (app, key, grant) = verify_token(&node.apps, text, now_ms())?;
    check_revocation(node, &grant)?;
    let client_id = resolve_client_id(grant.client_id.as_deref(), client_id)?;
    Ok(Identity {
        app,
        key,
        capability: grant.capability.clone(),
        client_id,
        token: Some(grant),
    })
}

/// In-band AUTH: the new token must be for the same app and must not change an
/// established clientId.
pub fn reauthorise(node: &Node, current: &Identity, text: &str) -> Result<Identity, AblyError> {
    let renewed = token_identity(node, text, current.client_id.as_deref())?;
    if renewed.app.id != current.app.id {
        return Err(AblyError::IncompatibleCredentials(
            "the new token belongs to another app".into(),
        ));
    }
    Ok(renewed)
}

/// Checks a token's signature with the key it names, and its expiry at `now_ms`.
pub fn verify_token(
    apps: &AppRegistry,
    text: &str,
    now_ms: i64,
) -> Result<(Arc<App>, Arc<Key>, Grant), AblyError> {
    let (app, key, grant) = if token::is_ours(text) {
        let unverified = token::Unverified::parse(text)?;
        let (app, key) = find_key(apps, unverified.key_name())?;
        let grant = unverified.verify(&key.secret)?;
        (app, key, grant)
    } else if jwt::looks_like(text) {
        let name = jwt::key_name(text)?;
        let (app, key) = find_key(apps, &name)?;
        let grant = jwt::verify(text, &name, &key.secret, &key.capability)?;
        (app, key, grant)
    } else {
        return Err(AblyError::TokenInvalid(
            "not a token this service issues".into(),
        ));
    };

    if grant.expires_ms <= now_ms {
        return Err(AblyError::TokenExpired);
    }
    Ok((app, key, grant))
}

/// Issues a token under `key` for `params`, never granting more than `allowed` (the
/// key's capability, or the capability of the token that asked).
pub fn issue(
    key: &Key,
    allowed: &Capability,
    params: TokenParams,
    now_ms: i64,
) -> Result<TokenDetails, AblyError> {
    let ttl_ms = params.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(AblyError::InvalidParameter {
            name: "ttl",
            reason: format!("must be between 1 and {MAX_TTL_MS} ms"),
        });
    }
    let capability = match &params.capability {
        Some(text) => Capability::parse(text)
            .map_err(|e| AblyError::InvalidParameter {
                name: "capability",
                reason: e.to_string(),
            })?
            .intersect(allowed)
            .ok_or(AblyError::CapabilityEmpty)?,
        None => allowed.clone(),
    };

    let grant = Grant {
        key_name: key.name.clone(),
        issued_ms: now_ms,
        expires_ms: now_ms + ttl_ms,
        capability,
        client_id: params.client_id,
    };
    Ok(TokenDetails {
        token: token::sign(&grant, &key.secret),
        key_name: grant.key_name,
        issued: grant.issued_ms,
        expires: grant.expires_ms,
        capability: grant.capability.to_json(),
        client_id: grant.client_id,
    })
}

/// Whether a revocation of tokens issued before `issued_before_ms` covers a token
/// issued at `issued_ms`.
pub fn revoked(issued_ms: i64, issued_before_ms: u64) -> bool {
    i128::from(issued_ms) < i128::from(issued_before_ms)
}

/// The revocation target a token's clientId answers to.
pub fn client_target(client_id: &str) -> String {
    format!("clientId:{client_id}")
}

fn check_revocation(node: &Node, grant: &Grant) -> Result<(), AblyError> {
    let Some(client_id) = &grant.client_id else {
        return Ok(());
    };
    let before = node
        .control
        .revoked_before(&grant.key_name, &client_target(client_id));
    match before {
        Some(before) if revoked(grant.issued_ms, before) => Err(AblyError::TokenRevoked),
        _ => Ok(()),
    }
}

/// The clientId a token holder acts as. An identified token fixes it; a wildcard
/// token lets the client choose; a token without one allows none.
fn resolve_client_id(
    token: Option<&str>,
    asked: Option<&str>,
) -> Result<Option<String>, AblyError> {
    let mismatch = |asked: &str| {
        AblyError::IncompatibleCredentials(format!(
            "clientId {asked:?} does not match the token's {:?}",
            token.unwrap_or("")
        ))
    };
    match (token, asked) {
        (Some("*"), asked) => Ok(asked.filter(|a| *a != "*").map(str::to_owned)),
        (Some(own), None) => Ok(Some(own.to_owned())),
        (Some(own), Some(asked)) if own == asked => Ok(Some(own.to_owned())),
        (_, Some(asked)) => Err(mismatch(asked)),
        (None, None) => Ok(None),
    }
}

/// Finds the key named `appId.keyId`. App ids may themselves hold dots, so each
/// split is tried; the registry has no index by key name alone.
pub fn find_key(apps: &AppRegistry, key_name: &str) -> Result<(Arc<App>, Arc<Key>), AblyError> {
    let found = key_name
        .match_indices('.')
        .filter_map(|(at, _)| apps.get(&key_name[..at]))
        .find_map(|app| {
            let key = app.keys.iter().find(|k| k.name == key_name)?.clone();
            Some((app, key))
        });
    found.ok_or_else(|| AblyError::InvalidCredentials(format!("no such key {key_name}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppConfig, KeyConfig};

    const NOW: i64 = 1_700_000_000_000;

    fn registry() -> AppRegistry {
        let key = |id: &str, capability: &str| KeyConfig {
            id: id.into(),
            secret: format!("{id}-secret"),
            capability: capability.into(),
        };
        AppRegistry::open(&[AppConfig {
            id: "app".into(),
            keys: vec![
                key("all", r#"{"*":["*"]}"#),
                key("narrow", r#"{"chat:*":["subscribe","publish"]}"#),
            ],
        }])
        .unwrap()
    }

    fn key(apps: &AppRegistry, name: &str) -> Arc<Key> {
        find_key(apps, name).unwrap().1
    }

    fn params(ttl_ms: i64, capability: Option<&str>, client_id: Option<&str>) -> TokenParams {
        TokenParams {
            ttl_ms: Some(ttl_ms),
            capability: capability.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_their_grant() {
        let apps = registry();
        let narrow = key(&apps, "app.narrow");
        let asked = params(60_000, Some(r#"{"*":["*"]}"#), Some("alice"));
        let details = issue(&narrow, &narrow.capability, asked, NOW).unwrap();
        assert_eq!(details.expires - details.issued, 60_000);
        assert_eq!(details.capability, r#"{"chat:*":["subscribe","publish"]}"#);

        let (app, key, grant) = verify_token(&apps, &details.token, NOW + 1).unwrap();
        assert_eq!((app.id.as_str(), key.name.as_str()), ("app", "app.narrow"));
        assert_eq!(grant.client_id.as_deref(), Some("alice"));
        assert!(grant.capability.allows("chat:x", "publish"));
        assert!(!grant.capability.allows("other", "subscribe"));
    }

    #[test]
    fn default_and_maximum_ttl() {
        let apps = registry();
        let all = key(&apps, "app.all");
        let details = issue(&all, &all.capability, TokenParams::default(), NOW).unwrap();
        assert_eq!(details.expires - details.issued, DEFAULT_TTL_MS);

        let too_long = issue(
            &all,
            &all.capability,
            params(MAX_TTL_MS + 1, None, None),
            NOW,
        );
        assert_eq!(too_long.unwrap_err().code(), 40003);
    }

    #[test]
    fn capabilities_beyond_the_key_or_malformed_are_refused() {
        let apps = registry();
        let narrow = key(&apps, "app.narrow");
        let outside = params(1_000, Some(r#"{"elsewhere":["*"]}"#), None);
        let err = issue(&narrow, &narrow.capability, outside, NOW).unwrap_err();
        assert_eq!(err.code_and_status(), (40160, 401));

        let broken = params(1_000, Some("not json"), None);
        let err = issue(&narrow, &narrow.capability, broken, NOW).unwrap_err();
        assert_eq!(err.code_and_status(), (40003, 400));
    }

    #[test]
    fn expired_tokens_are_refused_with_40142() {
        let apps = registry();
        let all = key(&apps, "app.all");
        let details = issue(&all, &all.capability, params(1_000, None, None), NOW).unwrap();
        assert!(verify_token(&apps, &details.token, NOW + 999).is_ok());
        let err = verify_token(&apps, &details.token, NOW + 1_000).unwrap_err();
        assert_eq!(err.code(), 40142);
    }

    #[test]
    fn a_token_naming_an_unknown_key_is_refused() {
        let apps = registry();
        let all = key(&apps, "app.all");
        let mut grant = verify_token(
            &apps,
            &issue(&all, &all.capability, TokenParams::default(), NOW)
                .unwrap()
                .token,
            NOW,
        )
        .unwrap()
        .2;
        grant.key_name = "app.gone".into();
        let text = token::sign(&grant, "app.all-secret");
        assert_eq!(verify_token(&apps, &text, NOW).unwrap_err().code(), 40101);
    }

    #[test]
    fn jwts_name_their_key_by_kid() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let apps = registry();
        let jwt_for = |kid: &str, secret: &str| {
            let header = Header {
                kid: Some(kid.into()),
                ..Header::new(Algorithm::HS256)
            };
            let now = now_ms() / 1000;
            let claims = serde_json::json!({"iat": now, "exp": now + 60});
            let key = EncodingKey::from_secret(secret.as_bytes());
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        };

        let good = jwt_for("app.narrow", "narrow-secret");
        let (_, key, grant) = verify_token(&apps, &good, now_ms()).unwrap();
        assert_eq!(key.name, "app.narrow");
        assert_eq!(grant.capability, key.capability);

        // Signed by one key but naming another: the named key's secret refuses it.
        let wrong_kid = jwt_for("app.all", "narrow-secret");
        assert_eq!(
            verify_token(&apps, &wrong_kid, now_ms())
                .unwrap_err()
                .code(),
            40144
        );
        let unknown_kid = jwt_for("app.nope", "narrow-secret");
        assert_eq!(
            verify_token(&apps, &unknown_kid, now_ms())
                .unwrap_err()
                .code(),
            40101
        );
    }

    #[test]
    fn unknown_token_formats_are_not_recognised() {
        let apps = registry();
        assert_eq!(verify_token(&apps, "abc", NOW).unwrap_err().code(), 40143);
    }

    #[test]
    fn client_ids_follow_the_token() {
        assert_eq!(resolve_client_id(Some("a"), None), Ok(Some("a".into())));
        assert_eq!(
            resolve_client_id(Some("a"), Some("a")),
            Ok(Some("a".into()))
        );
        assert_eq!(
            resolve_client_id(Some("a"), Some("b")).unwrap_err().code(),
            40102
        );
        assert_eq!(
            resolve_client_id(Some("*"), Some("b")),
            Ok(Some("b".into()))
        );
        assert_eq!(resolve_client_id(Some("*"), None), Ok(None));
        assert_eq!(resolve_client_id(None, None), Ok(None));
        assert_eq!(
            resolve_client_id(None, Some("b")).unwrap_err().code(),
            40102
        );
    }

    #[test]
    fn revocation_covers_tokens_issued_strictly_before() {
        assert!(revoked(NOW - 1, NOW as u64));
        assert!(!revoked(NOW, NOW as u64));
        assert!(!revoked(NOW + 1, NOW as u64));
    }
}
