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

/// Keeps the raft gauges current: when what they show changes (a new role, term,
/// leader or log position), and once a second for the commit index, which openraft's
/// metrics do not carry. Changes that show nothing new (openraft reports heartbeat
/// acknowledgements too, and the commit index read itself counts as one) are skipped:
/// following every one of them kept an idle node busy on a core. Ends with the raft.
pub async fn export_metrics(member: Arc<Member>) {
    let mut changes = member.raft.metrics();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let metrics = changes.borrow_and_update().clone();
        let index = |id: Option<openraft::LogId<u64>>| id.map_or(0.0, |id| id.index as f64);
        let shown = GaugeValues {
            state: metrics.state,
            term: metrics.current_term,
            leader: metrics.current_leader.unwrap_or(0),
            applied: index(metrics.last_applied),
            last_log: metrics.last_log_index.unwrap_or(0),
            snapshot: index(metrics.snapshot),
            voters: metrics.membership_config.voter_ids().count(),
        };
        shown.export();
        if let Ok(committed) = member.raft.with_raft_state(|st| st.committed).await {
            metrics::gauge!("starling_raft_commit_index").set(index(committed));
        }
        metrics::gauge!("starling_global_catalog_version")
            .set(member.reader.read(|s| s.version()) as f64);

        // Until the next second, or a change that shows something new.
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = ticker.tick() => break,
            }
            if !shown.matches(&changes.borrow()) {
                break;
            }
        }
    }
}

/// What the raft gauges show, to tell a change worth exporting from one that is not.
#[derive(PartialEq)]
struct GaugeValues {
    state: ServerState,
    term: u64,
    leader: u64,
    applied: f64,
    last_log: u64,
    snapshot: f64,
    voters: usize,
}

impl GaugeValues {
    fn export(&self) {
        for role in ROLES {
            let value = if role == self.state { 1.0 } else { 0.0 };
            metrics::gauge!("starling_raft_role", "role" => role_name(role)).set(value);
        }
        metrics::gauge!("starling_raft_term").set(self.term as f64);
        metrics::gauge!("starling_raft_applied_index").set(self.applied);
        metrics::gauge!("starling_raft_last_log_index").set(self.last_log as f64);
        metrics::gauge!("starling_raft_snapshot_index").set(self.snapshot);
        metrics::gauge!("starling_raft_leader_id").set(self.leader as f64);
        metrics::gauge!("starling_raft_voters").set(self.voters as f64);
    }

    /// Whether `metrics` would show the same.
    fn matches(&self, metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> bool {
        let index = |id: Option<openraft::LogId<u64>>| id.map_or(0.0, |id| id.index as f64);
        self.state == metrics.state
            && self.term == metrics.current_term
            && self.leader == metrics.current_leader.unwrap_or(0)
            && self.applied == index(metrics.last_applied)
            && self.last_log == metrics.last_log_index.unwrap_or(0)
            && self.snapshot == index(metrics.snapshot)
            && self.voters == metrics.membership_config.voter_ids().count()
    }
}
