//! Token endpoints: `POST /keys/{keyName}/requestToken` exchanges a signed
//! TokenRequest (or an authenticated unsigned one) for a token, and
//! `POST /keys/{keyName}/revokeTokens` revokes a key's tokens by clientId in every
//! region, through the global master (protocol.md §7.2, §7.3).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::auth::authenticate;
use super::request::{Params, RestBody};
use super::response::{Negotiation, Reply};
use crate::apps::Key;
use crate::auth::nonce_claims::NonceClaim;
use crate::auth::token_request::{TokenRequest, TIMESTAMP_WINDOW_MS};
use crate::auth::{find_key, issue, Identity, TokenDetails, TokenParams};
use crate::error::AblyError;
use crate::node::{now_ms, Node};
use crate::protocol::ErrorInfo;

/// The body of `revokeTokens`. `allowReauthMargin` is accepted and ignored: the
/// revocation applies at once.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeRequest {
    targets: Vec<String>,
    #[serde(default)]
    issued_before: Option<i64>,
}

/// Ably's batch result shape: one entry per target, each a success or an error.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RevokeResults {
    success_count: usize,
    failure_count: usize,
    results: Vec<RevokeResult>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum RevokeResult {
    #[serde(rename_all = "camelCase")]
    Revoked {
        target: String,
        issued_before: i64,
        applies_at: i64,
    },
    Failed {
        target: String,
        error: ErrorInfo,
    },
}

pub async fn request_token(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    key_name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: RestBody,
) -> Response {
    let params = Params::parse(query.as_deref());
    let result = try_request_token(&node, key_name, &headers, &params, &body).await;
    negotiation.respond(result.map(Reply::ok))
}

pub async fn revoke_tokens(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    key_name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: RestBody,
) -> Response {
    let params = Params::parse(query.as_deref());
    let result = try_revoke(&node, key_name, &headers, &params, &body).await;
    negotiation.respond(result.map(Reply::ok))
}

async fn try_request_token(
    node: &Node,
    key_name: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    params: &Params,
    body: &RestBody,
) -> Result<TokenDetails, AblyError> {
    let key_name = path_key_name(key_name)?;
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        body.decode()?
    };

    let now = now_ms();
    let details = if request.is_signed() {
        let key = check_signed(node, &key_name, &request, now).await?;
        issue(&key, &key.capability, token_params(&request)?, now)?
    } else {
        let caller = authenticate(node, headers, params)?;
        check_same_key(&caller, &key_name)?;
        issue(
            &caller.key,
            &caller.capability,
            unsigned_params(&caller, &request)?,
            now,
        )?
    };
    debug!(key.name = %key_name, expires = details.expires, "token issued");
    Ok(details)
}

/// A signed request: the mac first (nothing else is said to whoever lacks the key),
/// then the timestamp window, then the nonce, claimed for the region only for a
/// request that passed.
async fn check_signed(
    node: &Node,
    key_name: &str,
    request: &TokenRequest,
    now: i64,
) -> Result<Arc<Key>, AblyError> {
    if request.key_name.as_deref().is_some_and(|k| k != key_name) {
        return Err(AblyError::InvalidCredentials(
            "keyName does not match the path".into(),
        ));
    }
    let (_, key) = find_key(&node.apps, key_name)?;
    request.verify_mac(&key.secret)?;
    let timestamp = request.check_timestamp(now)?;

    let nonce = request.nonce.as_deref().unwrap_or_default();
    if nonce.is_empty() {
        return Err(AblyError::InvalidParameter {
            name: "nonce",
            reason: "a signed token request needs a nonce".into(),
        });
    }
    let claim = NonceClaim {
        key_name: key_name.to_owned(),
        nonce: nonce.to_owned(),
        forget_at_ms: timestamp.max(now) + TIMESTAMP_WINDOW_MS,
    };
    if !node.nonces.first_use(claim).await {
        return Err(AblyError::NonceReplayed);
    }
    Ok(key)
}

fn token_params(request: &TokenRequest) -> Result<TokenParams, AblyError> {
    Ok(TokenParams {
        ttl_ms: request.ttl_ms()?,
        capability: request.capability_text(),
        client_id: request.client_id.clone(),
    })
}

/// An unsigned request asks on the caller's own authority: a token holder with a
/// clientId can only ask for that clientId.
fn unsigned_params(caller: &Identity, request: &TokenRequest) -> Result<TokenParams, AblyError> {
    let mut params = token_params(request)?;
    if let Some(own) = caller.token.as_ref().and_then(|t| t.client_id.as_deref()) {
        match params.client_id.as_deref() {
            None => params.client_id = Some(own.to_owned()),
            Some(asked) if asked == own || own == "*" => {}
            Some(asked) => {
                return Err(AblyError::IncompatibleCredentials(format!(
                    "clientId {asked:?} does not match the caller's {own:?}"
                )))
            }
        }
    }
    Ok(params)
}

async fn try_revoke(
    node: &Node,
    key_name: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    params: &Params,
    body: &RestBody,
) -> Result<RevokeResults, AblyError> {
    let key_name = path_key_name(key_name)?;
    let caller = authenticate(node, headers, params)?;
    if caller.token.is_some() {
        return Err(AblyError::Forbidden(
            "revoking tokens needs basic auth with the key".into(),
        ));
    }
    check_same_key(&caller, &key_name)?;
    let request: RevokeRequest = body.decode()?;

    let now = now_ms();
    let issued_before = request.issued_before.unwrap_or(now);
    if issued_before > now {
        return Err(AblyError::InvalidParameter {
            name: "issuedBefore",
            reason: "must not be in the future".into(),
        });
    }

    let mut results = Vec::with_capacity(request.targets.len());
    for target in request.targets {
        results.push(revoke_one(node, &key_name, target, issued_before, now).await?);
    }
    let failure_count = (results.iter())
        .filter(|r| matches!(r, RevokeResult::Failed { .. }))
        .count();
    Ok(RevokeResults {
        success_count: results.len() - failure_count,
        failure_count,
        results,
    })
}

/// Revokes one target. Only `clientId:` targets exist here, since that is all a
/// token carries; any other kind fails on its own, and a control-plane failure
/// fails the whole request (it is retriable).
async fn revoke_one(
    node: &Node,
    key_name: &str,
    target: String,
    issued_before: i64,
    now: i64,
) -> Result<RevokeResult, AblyError> {
    let supported = target
        .strip_prefix("clientId:")
        .is_some_and(|id| !id.is_empty());
    if !supported {
        let error = AblyError::InvalidParameter {
            name: "targets",
            reason: format!("unsupported target {target:?}: only clientId:<id> is"),
        };
        return Ok(RevokeResult::Failed {
            target,
            error: error.to_info(),
        });
    }

    let before = u64::try_from(issued_before).unwrap_or(0);
    node.control
        .revoke_tokens(key_name, &target, before)
        .await?;
    debug!(key.name = %key_name, "tokens revoked");
    Ok(RevokeResult::Revoked {
        target,
        issued_before,
        applies_at: now,
    })
}

fn path_key_name(key_name: Result<Path<String>, PathRejection>) -> Result<String, AblyError> {
    let Path(key_name) = key_name.map_err(|e| AblyError::NotFound(e.body_text()))?;
    Ok(key_name)
}

/// A caller may only act on its own key.
fn check_same_key(caller: &Identity, key_name: &str) -> Result<(), AblyError> {
    if caller.key.name == key_name {
        return Ok(());
    }
    Err(AblyError::InvalidCredentials(format!(
        "the credentials are not those of key {key_name}"
    )))
}
