//! `GET /health` (ready) and `GET /health/live` (running).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::node::Node;

/// A one-node region is ready as soon as it serves: there is no mesh to join and no
/// remote global master to reach yet. It holds a single copy of every message, which
/// the body says, since the design's replication factor counts copies.
pub async fn ready(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    let body = json!({
        "status": "ready",
        "node": node.config.node.id,
        "region": node.config.node.region,
        "connections": node.connections.len(),
        "channels": node.channels.len(),
        "mesh": {"peers": 0, "mode": "single-node"},
        "copies": {"available": 1, "degraded": false},
    });
    (StatusCode::OK, Json(body))
}

pub async fn live() -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!({"status": "live"})))
}
