//! `GET /health` (ready) and `GET /health/live` (running).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::channels::channel_key;
use crate::node::Node;

/// Ready once the node has joined its region's mesh (or has none), sees a strict
/// majority of the region's known members, without which it may not sequence, and
/// follows the global master (which homes channels and holds the apps). The
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
    if !stats.settled {
        missing.push("mesh: still meeting members of the region");
    }
    if !stats.lease {
        missing.push("lease: the global master has not confirmed this region recently");
    } else if !stats.quorum {
        missing.push("quorum: fewer than a majority of the region's nodes are reachable");
    }
    let following = node.control.following();
    if !following {
        missing.push("global master: not reached (no watch stream open)");
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
        "global_master": {"following": following},
        "relays": stats.relays,
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

/// `GET /health/placement/{channel}?app=ID`: which nodes master and copy an app's
/// channel in this node's view; `app` may be left out when the node has one app. An
/// operator's (and a failover test's) way to find a channel's master.
pub async fn placement(
    State(node): State<Arc<Node>>,
    axum::extract::Path(channel): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let apps = node.apps.list();
    let app = match (query.get("app"), apps.as_slice()) {
        (Some(app), _) => app.clone(),
        (None, [only]) => only.id.clone(),
        (None, _) => {
            let error = json!({"error": "several apps: say which with ?app=ID"});
            return (StatusCode::BAD_REQUEST, Json(error));
        }
    };
    let placement = node.region.placement(&channel_key(&app, &channel)).await;
    (
        StatusCode::OK,
        Json(serde_json::to_value(placement).unwrap_or_default()),
    )
}
