//! A client of the Control API that finds the leader by itself: it follows
//! `leader_hint` redirects and, when a member is unreachable or has no leader, tries the
//! next one until its deadline. The operator subcommands use it, and so can anything
//! that writes to the control plane.

use std::collections::HashMap;
use std::time::Duration;

use starling_proto::global::control_client::ControlClient;
use starling_proto::global::{
    CommandBytes, MembershipBytes, ReadRequest as ReadBytes, ResponseBytes, StatusReply,
    StatusRequest, WatchEvent, WatchRequest,
};
use starling_proto::tls::{client_tls, TlsError, TlsFiles, SERVER_NAME};
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status, Streaming};

use crate::api::{self, CodecError, MembershipChange, MembershipReply, ReadReply, ReadRequest};
use crate::network::{endpoint, MAX_MESSAGE_BYTES};
use crate::state::{Command, Response};

/// Pause between attempts when no member could take the request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS material: {0}")]
    Tls(#[from] TlsError),
    #[error("member address {addr:?}: {source}")]
    Address {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// Refused for a reason retrying cannot fix.
    #[error("refused: {0}")]
    Refused(Status),
    /// The deadline passed while every member was unreachable or without a leader.
    #[error("no member took the request before the deadline; last error: {0}")]
    GaveUp(String),
}

/// Whether a failed call may succeed on another member or a little later.
pub fn retriable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

#[derive(Clone, Copy)]
enum Rpc {
    Write,
    Read,
    ChangeMembers,
}

/// A Control API client for a group of members.
pub struct Client {
    tls: ClientTlsConfig,
    /// The members' raft addresses as configured; redirects may add others.
    members: Vec<String>,
    channels: HashMap<String, Channel>,
    /// Where the last request succeeded: most likely the leader still.
    leader: Option<String>,
    /// How long one attempt on one member may take.
    attempt_timeout: Duration,
}

impl Client {
    /// A client of the members at `members` (`host:port` of their `listen.raft`),
    /// presenting the certificate in `tls`.
    pub fn new(members: Vec<String>, tls: &TlsFiles) -> Result<Self, ClientError> {
        Ok(Self {
            tls: client_tls(tls, SERVER_NAME)?,
            members,
            channels: HashMap::new(),
            leader: None,
            attempt_timeout: Duration::from_secs(10),
        })
    }

    /// How long one attempt on one member may take (default 10 s; a member gives up on a
    /// write after its `cluster.request_timeout_ms`).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    fn control(&mut self, addr: &str) -> Result<ControlClient<Channel>, ClientError> {
        let channel = match self.channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = endpoint(addr, self.tls.clone())
                    .map_err(|source| ClientError::Address {
                        addr: addr.to_owned(),
                        source,
                    })?
                    .connect_lazy();
                self.channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(ControlClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// This member's view of the group; one attempt, no redirect.
    pub async fn status(&mut self, addr: &str) -> Result<StatusReply, ClientError> {
        let mut control = self.control(addr)?;
        let call = control.status(StatusRequest {});
        match tokio::time::timeout(self.attempt_timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(ClientError::Refused(status)),
            Err(_) => Err(ClientError::GaveUp(format!("{addr} did not answer"))),
        }
    }

    /// Commits `command` on the leader and returns the state machine's answer.
    pub async fn write(
        &mut self,
        command: &Command,
        deadline: Duration,
    ) -> Result<Response, ClientError> {
        let payload = api::encode("command", command)?;
        let reply = self.call_leader(Rpc::Write, payload, deadline).await?;
        Ok(api::decode("response", &reply)?)
    }

    /// A read through the leader (linearizable) or, with `Consistency::Local`, from the
    /// first member that answers.
    pub async fn read(
        &mut self,
        request: &ReadRequest,
        deadline: Duration,
    ) -> Result<ReadReply, ClientError> {
        let payload = api::encode("read request", request)?;
        let reply = self.call_leader(Rpc::Read, payload, deadline).await?;
        Ok(api::decode("read reply", &reply)?)
    }

    /// Adds or removes a raft member through the leader, resending the change while a
    /// step is not finished yet (a learner catching up), until `deadline`.
    pub async fn change_members(
        &mut self,
        change: &MembershipChange,
        deadline: Duration,
    ) -> Result<MembershipReply, ClientError> {
        let payload = api::encode("membership change", change)?;
        let reply = self
            .call_leader(Rpc::ChangeMembers, payload, deadline)
            .await?;
        Ok(api::decode("membership", &reply)?)
    }

    /// A read answered by the member at `addr` itself; one attempt. A linearizable read
    /// on a follower fails as `Refused` with the leader named in the message.
    pub async fn read_at(
        &mut self,
        addr: &str,
        request: &ReadRequest,
    ) -> Result<ReadReply, ClientError> {
        let payload = api::encode("read request", request)?;
        let mut control = self.control(addr)?;
        let call = control.read(ReadBytes { payload });
        let reply = match tokio::time::timeout(self.attempt_timeout, call).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(ClientError::Refused(status)),
            Err(_) => return Err(ClientError::GaveUp(format!("{addr} did not answer"))),
        };
        if reply.payload.is_empty() {
            return Err(ClientError::Refused(Status::failed_precondition(format!(
                "not the leader; the leader is at {}",
                reply.leader_hint
            ))));
        }
        Ok(api::decode("read reply", &reply.payload)?)
    }

    /// Follows the changes `addr` applies after `from_version` (0: a snapshot first).
    pub async fn watch(
        &mut self,
        addr: &str,
        from_version: u64,
    ) -> Result<Streaming<WatchEvent>, ClientError> {
        let mut control = self.control(addr)?;
        let call = control.watch(WatchRequest { from_version });
        match tokio::time::timeout(self.attempt_timeout, call).await {
            Ok(Ok(stream)) => Ok(stream.into_inner()),
            Ok(Err(status)) => Err(ClientError::Refused(status)),
            Err(_) => Err(ClientError::GaveUp(format!("{addr} did not answer"))),
        }
    }

    /// Sends a Write or Read to the leader, wherever it is, until `deadline` passes.
    async fn call_leader(
        &mut self,
        rpc: Rpc,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let give_up = Instant::now() + deadline;
        let mut next_member = 0;
        let mut target = self
            .leader
            .clone()
            .or_else(|| self.members.first().cloned())
            .ok_or_else(|| ClientError::GaveUp("no member address given".into()))?;
        let mut last_error = String::from("the deadline passed before any attempt");
        let mut redirects_in_a_row = 0;

        while Instant::now() < give_up {
            let left = give_up.saturating_duration_since(Instant::now());
            let limit = left.min(self.attempt_timeout);
            let attempt = self.attempt(rpc, &target, payload.clone());
            let outcome = tokio::time::timeout(limit, attempt).await;
            match outcome {
                Ok(Ok(reply)) if !reply.payload.is_empty() => {
                    self.leader = Some(target);
                    return Ok(reply.payload);
                }
                Ok(Ok(reply)) if !reply.leader_hint.is_empty() => {
                    tracing::debug!(from = %target, to = %reply.leader_hint, "redirected to the leader");
                    last_error = format!("{target} redirected to {}", reply.leader_hint);
                    target = reply.leader_hint;
                    redirects_in_a_row += 1;
                    // Two members naming each other during an election: let it settle.
                    if redirects_in_a_row > 2 {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    continue;
                }
                Ok(Ok(_)) => last_error = format!("{target} answered nothing"),
                Ok(Err(ClientError::Refused(status))) if retriable(&status) => {
                    last_error = format!("{target}: {}", status.message());
                }
                Ok(Err(error)) => return Err(error),
                Err(_) => last_error = format!("{target} did not answer in time"),
            }
            redirects_in_a_row = 0;
            self.leader = None;
            // Try the next configured member (skipping the one that just failed).
            if !self.members.is_empty() {
                let candidate = self.members[next_member % self.members.len()].clone();
                next_member += 1;
                target = if candidate == target && self.members.len() > 1 {
                    let other = self.members[next_member % self.members.len()].clone();
                    next_member += 1;
                    other
                } else {
                    candidate
                };
            }
            tokio::time::sleep(RETRY_PAUSE.min(give_up.saturating_duration_since(Instant::now())))
                .await;
        }
        Err(ClientError::GaveUp(last_error))
    }

    async fn attempt(
        &mut self,
        rpc: Rpc,
        addr: &str,
        payload: Vec<u8>,
    ) -> Result<ResponseBytes, ClientError> {
        let mut control = self.control(addr)?;
        let reply = match rpc {
            Rpc::Write => control.write(CommandBytes { payload }).await,
            Rpc::Read => control.read(ReadBytes { payload }).await,
            Rpc::ChangeMembers => control.change_members(MembershipBytes { payload }).await,
        };
        reply
            .map(tonic::Response::into_inner)
            .map_err(ClientError::Refused)
    }
}
