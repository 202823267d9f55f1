//! A running member: its raft handle, its applied state, and what it reports about the
//! group. Shared by the gRPC services and the HTTP endpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::ServerState;
use starling_proto::global::{Member as MemberInfo, StatusReply};
use tokio::sync::watch;

use crate::store::{NodeId, Raft, StateReader};

pub struct Member {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: StateReader,
    /// The HTTP address of each configured member, for Status (raft's membership only
    /// records raft addresses).
    pub http_addrs: BTreeMap<NodeId, String>,
    /// How long a write or a linearizable read waits for the group.
    pub request_timeout: Duration,
    /// Becomes true when the member stops; long-lived streams end on it.
    pub stopping: watch::Receiver<bool>,
}

/// The lowercase name of a raft role, as Status and `/health` report it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Member {
    /// This member's view of the group. The commit index comes from the raft core (it
    /// is not among openraft's metrics), so this waits for the core briefly; a stopped
    /// core reports the applied index as committed.
    pub async fn status(&self) -> StatusReply {
        let metrics = self.raft.metrics().borrow().clone();
        let applied = metrics.last_applied.map_or(0, |id| id.index);
        let committed = self
            .raft
            .with_raft_state(|st| st.committed.map(|id| id.index))
            .await
            .ok()
            .flatten()
            .unwrap_or(applied);

        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberInfo {
                id: *id,
                raft_addr: node.addr.clone(),
                http_addr: self.http_addrs.get(id).cloned().unwrap_or_default(),
                voter: voters.contains(id),
            })
            .collect();
        StatusReply {
            id: self.id,
            role: role_name(metrics.state).to_owned(),
            term: metrics.current_term,
            commit_index: committed,
            applied_index: applied,
            leader_id: metrics.current_leader.unwrap_or(0),
            members,
        }
    }

    /// The raft address of the leader this member knows of, if any.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let membership = metrics.membership_config.membership();
        membership.get_node(&leader).map(|node| node.addr.clone())
    }
}

/// Status as JSON, for the `status` subcommand and `/health`.
pub fn status_json(status: &StatusReply) -> serde_json::Value {
    let members: Vec<serde_json::Value> = status
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "raft_addr": m.raft_addr,
                "http_addr": m.http_addr,
                "voter": m.voter,
            })
        })
        .collect();
    serde_json::json!({
        "id": status.id,
        "role": status.role,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "leader_id": status.leader_id,
        "members": members,
    })
}
