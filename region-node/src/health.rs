//! `GET /health` (ready) and `GET /health/live` (running).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::node::Node;

/// Ready once the node has joined its region's mesh (or has none) and sees a strict
/// majority of the region's known members, without which it may not sequence. The
/// body names what is missing and says when fewer copies than configured can exist.
pub async fn ready(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    let stats = node.region.stats().await;
    let joined = node.mesh.as_ref().is_none_or(|m| m.joined());
    let wanted = node.config.mesh.replication_factor;
    let available = wanted.min(stats.live_nodes);

    let mut missing = Vec::new();
    if !joined {
        missing.push("mesh: not linked to any seed yet");
    }
    if !stats.quorum {
        missing.push("quorum: fewer than a majority of the region's nodes are reachable");
    }
    let ready = missing.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "missing": missing,
        "node": node.config.node.id,
        "region": node.config.node.region,
        "connections": node.connections.len(),
        "channels": stats.channels,
        "masters": stats.masters,
        "mesh": {"live": stats.live_nodes, "known": stats.known_nodes, "joined": joined},
        "copies": {"wanted": wanted, "available": available, "degraded": available < wanted},
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

pub async fn live() -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!({"status": "live"})))
}

/// `GET /health/placement/{channel}`: which nodes master and copy a channel in this
/// node's view. An operator's (and a failover test's) way to find a channel's master.
pub async fn placement(
    State(node): State<Arc<Node>>,
    axum::extract::Path(channel): axum::extract::Path<String>,
) -> Json<Value> {
    Json(serde_json::to_value(node.region.placement(&channel).await).unwrap_or_default())
}
