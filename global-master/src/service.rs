//! The gRPC services a member serves on `listen.raft`: the `Raft` service its peers
//! call, and the `Control` API of region nodes and operators.
//!
//! Control semantics:
//! - `Write` commits a [`Command`] through the raft log on the leader and answers the
//!   state machine's [`crate::state::Response`]. A follower answers an empty payload
//!   with `leader_hint`, the leader's raft address (which serves Control too), so the
//!   caller retries there. With no leader known, or when the command is not committed
//!   within `cluster.request_timeout_ms` (no quorum, an election under way), the call
//!   fails with `UNAVAILABLE`: retriable, and in the timeout case the command may still
//!   be applied later, so callers resend only commands that are safe to repeat (every
//!   command is, except that a second `CreateApp` answers `AppExists`).
//! - `Read` answers a query; a linearizable read is served by the leader after it
//!   confirmed its leadership with a quorum (followers redirect like `Write`), a local
//!   read by any member from its applied state.
//! - `Watch` streams this member's applied changes (followers serve it too): a full
//!   catalog first when `from_version` is 0 or older than the change log reaches, then
//!   every change in version order.
//! - `Status` is this member's view of the group.
//! - `ChangeMembers` adds or removes a raft member on the leader (see
//!   [`crate::membership`]); followers redirect like `Write`, and a step that does not
//!   finish within `cluster.request_timeout_ms` fails as `UNAVAILABLE`, to be resent.

use std::pin::Pin;
use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use starling_proto::global::control_server::Control;
use starling_proto::global::raft_server::Raft as RaftRpc;
use starling_proto::global::{
    CommandBytes, MembershipBytes, RaftBytes, ReadRequest as ReadBytes, ResponseBytes, StatusReply,
    StatusRequest, WatchEvent, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::{self, Consistency, ReadReply};
use crate::member::Member;
use crate::membership::{self, MembershipError};
use crate::state::{Catalog, Change, ChangesSince, Command};
use crate::store::{NodeId, StateReader};

/// Events buffered towards one watcher before its task waits for it to read.
const WATCH_BUFFER: usize = 256;

/// The `Raft` service: hands each RPC to the local raft and returns its whole result.
pub struct RaftService {
    member: Arc<Member>,
}

impl RaftService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

fn decode_request<T: DeserializeOwned>(request: Request<RaftBytes>) -> Result<T, Status> {
    api::decode("raft request", &request.into_inner().payload)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode_reply<T: Serialize>(result: &T) -> Result<Response<RaftBytes>, Status> {
    let payload = api::encode("raft reply", result).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftBytes { payload }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, request: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc = decode_request(request)?;
        encode_reply(&self.member.raft.vote(rpc).await)
    }

    async fn append_entries(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let rpc = decode_request(request)?;
        encode_reply(&self.member.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let rpc = decode_request(request)?;
        encode_reply(&self.member.raft.install_snapshot(rpc).await)
    }
}

/// The `Control` service.
pub struct ControlService {
    member: Arc<Member>,
}

impl ControlService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }

    fn timeout_status(&self, what: &str) -> Status {
        Status::unavailable(format!(
            "{what} not confirmed by a quorum within {} ms (no quorum, or an election is \
             under way); retry",
            self.member.request_timeout.as_millis()
        ))
    }
}

/// The answer of a member that is not the leader: the leader's address, or
/// `UNAVAILABLE` when it knows of none.
fn redirect(
    forward: ForwardToLeader<NodeId, BasicNode>,
) -> Result<Response<ResponseBytes>, Status> {
    match forward.leader_node {
        Some(node) => Ok(Response::new(ResponseBytes {
            payload: Vec::new(),
            leader_hint: node.addr,
        })),
        None => Err(Status::unavailable("no leader known yet; retry")),
    }
}

fn stopped<E: std::fmt::Display>(error: E) -> Status {
    Status::unavailable(format!("this member's raft has stopped: {error}"))
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn write(
        &self,
        request: Request<CommandBytes>,
    ) -> Result<Response<ResponseBytes>, Status> {
        let command: Command = api::decode("command", &request.into_inner().payload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let member = &self.member;
        let written =
            tokio::time::timeout(member.request_timeout, member.raft.client_write(command)).await;
        match written {
            Err(_) => Err(self.timeout_status("the write was")),
            Ok(Ok(written)) => {
                let payload = api::encode("response", &written.data)
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(Response::new(ResponseBytes {
                    payload,
                    leader_hint: String::new(),
                }))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                redirect(forward)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(fatal))) => Err(stopped(fatal)),
        }
    }

    async fn read(&self, request: Request<ReadBytes>) -> Result<Response<ResponseBytes>, Status> {
        let read: api::ReadRequest = api::decode("read request", &request.into_inner().payload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let member = &self.member;
        if read.consistency == Consistency::Linearizable {
            let confirmed =
                tokio::time::timeout(member.request_timeout, member.raft.ensure_linearizable())
                    .await;
            match confirmed {
                Err(_) => return Err(self.timeout_status("leadership was")),
                Ok(Ok(_)) => {}
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                    return redirect(forward)
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                    return Err(Status::unavailable(format!("{e}; retry")))
                }
                Ok(Err(RaftError::Fatal(fatal))) => return Err(stopped(fatal)),
            }
        }
        let reply = member.reader.read(|state| ReadReply {
            version: state.version(),
            answer: read.query.answer(state.catalog()),
        });
        let payload =
            api::encode("read reply", &reply).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ResponseBytes {
            payload,
            leader_hint: String::new(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let from = request.into_inner().from_version;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let reader = self.member.reader.clone();
        let stopping = self.member.stopping.clone();
        tokio::spawn(follow(reader, from, tx, stopping));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(self.member.status().await))
    }

    async fn change_members(
        &self,
        request: Request<MembershipBytes>,
    ) -> Result<Response<ResponseBytes>, Status> {
        let change = api::decode("membership change", &request.into_inner().payload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let member = &self.member;
        let reply = match membership::change(&member.raft, change, member.request_timeout).await {
            Ok(reply) => reply,
            Err(MembershipError::NotLeader(forward)) => return redirect(forward),
            Err(error) => return Err(membership_status(error)),
        };
        let payload =
            api::encode("membership", &reply).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ResponseBytes {
            payload,
            leader_hint: String::new(),
        }))
    }
}

/// The gRPC status of a refused membership change: retriable ones as `UNAVAILABLE`.
fn membership_status(error: MembershipError) -> Status {
    let message = error.to_string();
    match error {
        MembershipError::NotLeader(_) | MembershipError::NotYet(_) => Status::unavailable(message),
        MembershipError::Stopped(_) => Status::unavailable(message),
        MembershipError::NoSuchMember(_) => Status::not_found(message),
        MembershipError::OtherAddress { .. } | MembershipError::Refused(_) => {
            Status::failed_precondition(message)
        }
    }
}

/// What a watcher is sent next.
enum Batch {
    Snapshot(Catalog),
    Changes(Vec<Change>),
}

/// Feeds one watcher until it goes away or the member stops: a snapshot when it has
/// nothing (version 0) or fell behind the change log, then every change after the
/// version it has, as the state machine applies them.
async fn follow(
    reader: StateReader,
    from: u64,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut versions = reader.subscribe();
    let mut have = from;
    let mut need_snapshot = from == 0;
    metrics::gauge!("starling_global_watchers").increment(1.0);
    loop {
        versions.borrow_and_update();
        // Copy under the lock, encode outside it: applying waits on the lock.
        let batch = reader.read(|state| match (need_snapshot, state.changes_since(have)) {
            (false, ChangesSince::Changes(changes)) => Batch::Changes(changes),
            _ => Batch::Snapshot(state.catalog().clone()),
        });
        need_snapshot = false;
        let events = match encode_batch(batch) {
            Ok(events) => events,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let mut gone = false;
        for event in events {
            have = event.version;
            if tx.send(Ok(event)).await.is_err() {
                gone = true;
                break;
            }
        }
        if gone || *stopping.borrow() {
            break;
        }
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { break },
            _ = stopping.changed() => break,
            _ = tx.closed() => break,
        }
    }
    metrics::gauge!("starling_global_watchers").decrement(1.0);
}

fn encode_batch(batch: Batch) -> Result<Vec<WatchEvent>, Status> {
    let internal = |e: api::CodecError| Status::internal(e.to_string());
    match batch {
        Batch::Snapshot(catalog) => Ok(vec![WatchEvent {
            version: catalog.version(),
            change: api::encode("catalog", &catalog).map_err(internal)?,
            snapshot: true,
        }]),
        Batch::Changes(changes) => changes
            .iter()
            .map(|change| {
                Ok(WatchEvent {
                    version: change.version,
                    change: api::encode("change", change).map_err(internal)?,
                    snapshot: false,
                })
            })
            .collect(),
    }
}
