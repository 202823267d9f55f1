//! The raft network: openraft's RPCs to the other members over the `Raft` gRPC
//! service, with mutual TLS under the cluster CA.
//!
//! Requests and replies are openraft's own serde types as MessagePack with field names
//! inside `RaftBytes`; a reply carries the callee's whole `Result`, so a raft error on
//! the other side comes back as [`RPCError::RemoteError`]. Transport failures (refused
//! or reset connections, handshakes that fail, deadlines) become
//! [`RPCError::Unreachable`], which makes openraft back off before it retries that peer.
//!
//! Each peer address has one lazily connected tonic [`Channel`], shared by every client
//! openraft makes for it (replication, votes), which reconnects by itself after the peer
//! comes back.

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use starling_proto::global::raft_client::RaftClient;
use starling_proto::global::RaftBytes;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::api;
use crate::store::{NodeId, TypeConfig};

/// Largest raft message either way. Snapshots travel in chunks of openraft's
/// `snapshot_max_chunk_size` (3 MiB by default), which MessagePack can inflate up to
/// twice; log batches are bounded by `max_payload_entries`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long dialing a peer may take before the RPC counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 pings on idle links, so a peer that vanished without a reset (a cut cable,
/// a frozen host) is noticed without waiting for an RPC deadline.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

/// Makes clients for openraft, one per peer it talks to; cheap to clone.
#[derive(Clone)]
pub struct Network {
    me: NodeId,
    tls: ClientTlsConfig,
    /// One channel per peer address, kept across the clients openraft makes.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// The pause after an unreachable peer before openraft tries it again.
    backoff: Duration,
}

impl Network {
    /// `tls` is the member's client side (`starling_proto::tls::client_tls`); `backoff`
    /// is how long replication to an unreachable peer pauses before the next attempt.
    pub fn new(me: NodeId, tls: ClientTlsConfig, backoff: Duration) -> Self {
        Self {
            me,
            tls,
            channels: Arc::default(),
            backoff,
        }
    }

    /// The channel to `addr`, created on first use. Fails only on an address that
    /// cannot be a URI or TLS settings tonic refuses.
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = endpoint(addr, self.tls.clone())
            .map_err(|e| format!("peer address {addr:?}: {e}"))?
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// A gRPC endpoint for a member's `listen.raft` address, with mutual TLS.
pub fn endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        let client = self.channel(&node.addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        Peer {
            me: self.me,
            target,
            node: node.clone(),
            client,
            backoff: self.backoff,
        }
    }
}

/// openraft's client for one peer.
pub struct Peer {
    me: NodeId,
    target: NodeId,
    node: BasicNode,
    /// Err when the peer's address is unusable; every RPC then fails as unreachable.
    client: Result<RaftClient<Channel>, String>,
    backoff: Duration,
}

impl Peer {
    /// Sends one RPC and decodes the callee's `Result`.
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(reason.clone()),
                )))
            }
        };
        let payload = api::encode("raft request", request)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = RaftBytes { payload };

        let ttl = option.hard_ttl();
        let call = async {
            match action {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(transport_error(&status)),
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.me,
                    target: self.target,
                    timeout: ttl,
                }))
            }
        };

        let result: Result<Resp, RaftError<NodeId, E>> = api::decode("raft reply", &reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// A failed call: when the peer could not be reached or did not answer, openraft should
/// back off; anything else (a refused or malformed request) is a network error it may
/// retry at once.
fn transport_error<E: Error>(status: &tonic::Status) -> RpcError<E> {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            RPCError::Unreachable(Unreachable::new(status))
        }
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
