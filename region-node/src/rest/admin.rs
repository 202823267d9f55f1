//! The admin API: `POST /apps` and `DELETE /apps/{appId}` (design.md, "Admin API").
//!
//! The request body follows Ably's sandbox provisioning, so test suites written for the
//! sandbox can create their apps here unchanged.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

use super::auth::{authorize_admin, Peer};
use super::request::RestBody;
use super::response::{Negotiation, Reply};
use crate::apps::{App, Namespace, NewApp, NewKey};
use crate::error::AblyError;
use crate::node::Node;

/// Starling has no accounts; every app reports this one.
const ACCOUNT_ID: &str = "starling";

/// The provisioning body. Unknown members are ignored.
#[derive(Debug, Default, Deserialize)]
struct AppSpec {
    #[serde(default)]
    keys: Vec<KeySpec>,
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

/// The sandbox takes the capability as a JSON string; an object is accepted as well.
#[derive(Debug, Default, Deserialize)]
struct KeySpec {
    #[serde(default)]
    capability: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedApp {
    app_id: String,
    account_id: &'static str,
    keys: Vec<CreatedKey>,
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedKey {
    key_name: String,
    key_secret: String,
    key_str: String,
    capability: String,
}

pub async fn create(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    peer: Peer,
    headers: HeaderMap,
    body: RestBody,
) -> Response {
    negotiation.respond(try_create(&node, &headers, peer, &body).await)
}

pub async fn delete(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    peer: Peer,
    headers: HeaderMap,
    app_id: Result<Path<String>, PathRejection>,
) -> Response {
    negotiation.respond(try_delete(&node, &headers, peer, app_id).await)
}

async fn try_create(
    node: &Node,
    headers: &HeaderMap,
    peer: Peer,
    body: &RestBody,
) -> Result<Reply<CreatedApp>, AblyError> {
    authorize_admin(node, headers, peer)?;
    let spec = if body.is_empty() {
        AppSpec::default()
    } else {
        body.decode()?
    };

    // An empty key list still yields one key that may do anything (see AppRegistry).
    let app = node.control.create_app(new_app(spec)?).await?;
    info!(app.id = %app.id, keys = app.keys.len(), "app created");
    Ok(Reply::created(describe(&app)))
}

async fn try_delete(
    node: &Node,
    headers: &HeaderMap,
    peer: Peer,
    app_id: Result<Path<String>, PathRejection>,
) -> Result<Reply<()>, AblyError> {
    authorize_admin(node, headers, peer)?;
    let Path(app_id) = app_id.map_err(|e| AblyError::NotFound(e.body_text()))?;

    // The control plane's copy tells this node's connections of the app once the
    // deletion is applied here (and every other node's when it reaches them).
    node.control.delete_app(&app_id).await?;

    Ok(Reply {
        status: StatusCode::NO_CONTENT,
        ..Reply::ok(())
    })
}

fn new_app(spec: AppSpec) -> Result<NewApp, AblyError> {
    let keys = spec
        .keys
        .into_iter()
        .map(|key| {
            Ok(NewKey {
                capability: capability_text(key.capability)?,
            })
        })
        .collect::<Result<_, AblyError>>()?;
    Ok(NewApp {
        keys,
        namespaces: spec.namespaces,
    })
}

fn capability_text(capability: Option<Value>) -> Result<Option<String>, AblyError> {
    match capability {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(object @ Value::Object(_)) => Ok(Some(object.to_string())),
        Some(other) => Err(AblyError::InvalidBody(format!(
            "capability must be a JSON string or object, not {other}"
        ))),
    }
}

fn describe(app: &App) -> CreatedApp {
    let keys = app
        .keys
        .iter()
        .map(|key| CreatedKey {
            key_name: key.name.clone(),
            key_secret: key.secret.clone(),
            key_str: key.key_str(),
            capability: key.capability_text.clone(),
        })
        .collect();
    CreatedApp {
        app_id: app.id.clone(),
        account_id: ACCOUNT_ID,
        keys,
        namespaces: app.namespaces.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(body: Value) -> AppSpec {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn sandbox_bodies_are_understood_and_extras_ignored() {
        let app = new_app(spec(json!({
            "keys": [{}, {"capability": "{\"a\":[\"publish\"]}", "expires": 1}],
            "namespaces": [{"id": "persisted", "persisted": true}],
            "channels": [{"name": "x"}],
        })))
        .unwrap();
        assert_eq!(app.keys.len(), 2);
        assert_eq!(app.keys[0].capability, None);
        assert_eq!(
            app.keys[1].capability.as_deref(),
            Some(r#"{"a":["publish"]}"#)
        );
        assert!(app.namespaces[0].persisted);
    }

    #[test]
    fn capability_objects_become_their_json_text() {
        let app = new_app(spec(
            json!({"keys": [{"capability": {"*": ["subscribe"]}}]}),
        ))
        .unwrap();
        assert_eq!(
            app.keys[0].capability.as_deref(),
            Some(r#"{"*":["subscribe"]}"#)
        );
        let err = new_app(spec(json!({"keys": [{"capability": 5}]}))).unwrap_err();
        assert_eq!(err.code(), 40001);
    }
}
