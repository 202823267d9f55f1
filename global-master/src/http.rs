//! The member's HTTP endpoints on `listen.http`: `GET /health` (ready),
//! `GET /health/live` (running) and `GET /metrics` (Prometheus text), plus the raft
//! gauges `/metrics` reports.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::ServerState;
use serde_json::{json, Value};

use crate::member::{role_name, status_json, Member};

pub fn router(member: Arc<Member>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/health", get(ready))
        .route("/health/live", get(live))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .with_state(member)
}

/// Ready when this member is part of the group and knows its leader: then writes sent
/// to it are either committed or redirected. The body names what is missing.
pub async fn ready(State(member): State<Arc<Member>>) -> (StatusCode, Json<Value>) {
    let status = member.status().await;
    let in_cluster = status.members.iter().any(|m| m.id == status.id && m.voter);

    let mut missing = Vec::new();
    if status.members.is_empty() {
        missing.push("cluster: not initialized yet (waiting for the lowest-id member)");
    } else if !in_cluster {
        missing.push("cluster: this member is not a voter of the group");
    }
    if status.leader_id == 0 {
        missing.push("leader: no leader known (an election is under way, or no quorum)");
    }
    let ready = missing.is_empty();
    let mut body = status_json(&status);
    body["status"] = json!(if ready { "ready" } else { "not ready" });
    body["missing"] = json!(missing);
    body["catalog_version"] = json!(member.reader.read(|s| s.version()));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

pub async fn live() -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!({"status": "live"})))
}

const ROLES: [ServerState; 5] = [
    ServerState::Leader,
    ServerState::Follower,
    ServerState::Candidate,
    ServerState::Learner,
    ServerState::Shutdown,
];

/// Keeps the raft gauges current, once a second. Not on every change of openraft's
/// metrics: they change on every heartbeat and on every `with_raft_state` call (which
/// the commit index needs), so following them kept an idle node busy on a core. Ends
/// with the raft.
pub async fn export_metrics(member: Arc<Member>) {
    let mut changes = member.raft.metrics();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let metrics = changes.borrow_and_update().clone();
        for role in ROLES {
            let value = if role == metrics.state { 1.0 } else { 0.0 };
            metrics::gauge!("starling_raft_role", "role" => role_name(role)).set(value);
        }
        let index = |id: Option<openraft::LogId<u64>>| id.map_or(0.0, |id| id.index as f64);
        metrics::gauge!("starling_raft_term").set(metrics.current_term as f64);
        metrics::gauge!("starling_raft_applied_index").set(index(metrics.last_applied));
        metrics::gauge!("starling_raft_last_log_index")
            .set(metrics.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("starling_raft_snapshot_index").set(index(metrics.snapshot));
        metrics::gauge!("starling_raft_leader_id").set(metrics.current_leader.unwrap_or(0) as f64);
        metrics::gauge!("starling_raft_voters")
            .set(metrics.membership_config.voter_ids().count() as f64);
        if let Ok(committed) = member.raft.with_raft_state(|st| st.committed).await {
            metrics::gauge!("starling_raft_commit_index").set(index(committed));
        }
        metrics::gauge!("starling_global_catalog_version")
            .set(member.reader.read(|s| s.version()) as f64);

        ticker.tick().await;
        if changes.has_changed().is_err() {
            return;
        }
    }
}
