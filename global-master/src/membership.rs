//! Raft membership changes an operator asks for (`global-master members add|remove`).
//!
//! A member joins in two steps, as raft requires for safety and availability: it is
//! added as a learner (it receives the log but does not vote), and promoted to voter
//! only once it has caught up, so the group never counts on a voter that would take a
//! long time to be useful. Each step is one committed membership entry; openraft moves
//! through a joint configuration in between, so there is never a moment where two
//! disjoint majorities exist.
//!
//! Every step is safe to repeat: adding a member that is already a learner goes on
//! waiting for it to catch up, adding a voter answers the membership as it is. That is
//! why a step that does not finish in time fails as retriable (`UNAVAILABLE`) and the
//! client simply sends the same change again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, Membership, RaftMetrics, ServerState};
use tracing::info;

use crate::api::{MembershipChange, MembershipReply};
use crate::store::{NodeId, Raft};

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// This member is not the leader; the caller retries at the leader, if one is known.
    #[error("not the leader")]
    NotLeader(ForwardToLeader<NodeId, BasicNode>),
    #[error("member {0} is not in the group")]
    NoSuchMember(NodeId),
    #[error(
        "member {id} is already in the group at {current}, not {wanted}: remove it first \
         to change its address"
    )]
    OtherAddress {
        id: NodeId,
        current: String,
        wanted: String,
    },
    /// Retriable: no quorum, an election, another change still committing, or a learner
    /// still catching up.
    #[error("{0}; retry")]
    NotYet(String),
    /// Raft refused the change for a reason retrying cannot fix.
    #[error("{0}")]
    Refused(String),
    #[error("this member's raft has stopped: {0}")]
    Stopped(String),
}

/// Applies `change` on the leader `raft`, giving each step up to `timeout`, and answers
/// the membership once the change is committed.
pub async fn change(
    raft: &Raft,
    change: MembershipChange,
    timeout: Duration,
) -> Result<MembershipReply, MembershipError> {
    let metrics = leader_metrics(raft)?;
    match change {
        MembershipChange::Add { id, raft_addr } => {
            add(raft, &metrics, id, raft_addr, timeout).await
        }
        MembershipChange::Remove { id } => remove(raft, &metrics, id, timeout).await,
    }
}

async fn add(
    raft: &Raft,
    metrics: &RaftMetrics<NodeId, BasicNode>,
    id: NodeId,
    raft_addr: String,
    timeout: Duration,
) -> Result<MembershipReply, MembershipError> {
    let membership = metrics.membership_config.membership();
    match membership.get_node(&id) {
        Some(node) if node.addr != raft_addr => {
            return Err(MembershipError::OtherAddress {
                id,
                current: node.addr.clone(),
                wanted: raft_addr,
            })
        }
        Some(_) if membership.voter_ids().any(|v| v == id) => return Ok(reply(membership)),
        Some(_) => {}
        None => {
            info!(member.id = id, member.raft_addr = %raft_addr, "adding a learner");
            let node = BasicNode::new(raft_addr);
            let added = raft.add_learner(id, node, false);
            bounded(timeout, "adding the learner", added).await?;
        }
    }

    wait_caught_up(raft, id, timeout).await?;

    info!(member.id = id, "promoting the learner to voter");
    let ids = BTreeSet::from([id]);
    let promoted = raft.change_membership(ChangeMembers::AddVoterIds(ids), false);
    let written = bounded(timeout, "promoting the learner", promoted).await?;
    Ok(written
        .membership
        .as_ref()
        .map_or_else(Default::default, reply))
}

async fn remove(
    raft: &Raft,
    metrics: &RaftMetrics<NodeId, BasicNode>,
    id: NodeId,
    timeout: Duration,
) -> Result<MembershipReply, MembershipError> {
    let membership = metrics.membership_config.membership();
    if membership.get_node(&id).is_none() {
        return Err(MembershipError::NoSuchMember(id));
    }
    let ids = BTreeSet::from([id]);
    // A voter leaves with `retain = false`, which also drops it as a node; a learner
    // only needs dropping.
    let changes = if membership.voter_ids().any(|v| v == id) {
        ChangeMembers::RemoveVoters(ids)
    } else {
        ChangeMembers::RemoveNodes(ids)
    };
    info!(member.id = id, "removing a member");
    let removed = raft.change_membership(changes, false);
    let written = bounded(timeout, "removing the member", removed).await?;
    Ok(written
        .membership
        .as_ref()
        .map_or_else(Default::default, reply))
}

/// The leader's metrics, or where the leader is.
fn leader_metrics(raft: &Raft) -> Result<RaftMetrics<NodeId, BasicNode>, MembershipError> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.state == ServerState::Leader {
        return Ok(metrics);
    }
    let leader_id = metrics.current_leader;
    let leader_node = leader_id.and_then(|leader| {
        let membership = metrics.membership_config.membership();
        membership.get_node(&leader).cloned()
    });
    Err(MembershipError::NotLeader(ForwardToLeader {
        leader_id,
        leader_node,
    }))
}

/// Waits until the leader has replicated to `id` everything it had logged when the
/// wait began: then promoting it cannot stall the group behind a slow newcomer.
async fn wait_caught_up(raft: &Raft, id: NodeId, timeout: Duration) -> Result<(), MembershipError> {
    let target = raft.metrics().borrow().last_log_index.unwrap_or(0);
    let caught_up = raft
        .wait(Some(timeout))
        .metrics(
            |m| {
                let matched = m.replication.as_ref().and_then(|r| r.get(&id)).cloned();
                matched
                    .flatten()
                    .is_some_and(|log_id| log_id.index >= target)
            },
            "the learner catching up",
        )
        .await;
    caught_up.map(|_| ()).map_err(|_| {
        MembershipError::NotYet(format!(
            "member {id} is a learner but has not caught up with log index {target} within \
             {} ms (is it running and reachable?)",
            timeout.as_millis()
        ))
    })
}

/// Runs one membership write with a deadline and sorts its errors into retriable and
/// final ones.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    write: impl std::future::Future<
        Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    >,
) -> Result<T, MembershipError> {
    let written = tokio::time::timeout(timeout, write).await.map_err(|_| {
        MembershipError::NotYet(format!(
            "{what} was not committed within {} ms (no quorum, or an election is under way)",
            timeout.as_millis()
        ))
    })?;
    match written {
        Ok(value) => Ok(value),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(MembershipError::NotLeader(forward))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => match error {
            ChangeMembershipError::InProgress(e) => {
                Err(MembershipError::NotYet(format!("{what}: {e}")))
            }
            other => Err(MembershipError::Refused(format!("{what}: {other}"))),
        },
        Err(RaftError::Fatal(fatal)) => Err(MembershipError::Stopped(fatal.to_string())),
    }
}

/// A membership as the reply reports it.
fn reply(membership: &Membership<NodeId, BasicNode>) -> MembershipReply {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let (voters, learners): (BTreeMap<_, _>, BTreeMap<_, _>) = membership
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .partition(|(id, _)| voters.contains(id));
    MembershipReply { voters, learners }
}
