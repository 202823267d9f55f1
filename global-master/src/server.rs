//! Runs one member: opens its store, starts raft, serves the gRPC services on
//! `listen.raft` and the HTTP endpoints on `listen.http`, forms the group when it is the
//! bootstrapper, writes the describe file, and stops cleanly on shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use metrics_exporter_prometheus::PrometheusBuilder;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use starling_proto::global::control_server::ControlServer;
use starling_proto::global::raft_server::RaftServer;
use starling_proto::tls::{client_tls, server_tls, SERVER_NAME};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::config::{ClusterConfig, Config};
use crate::files::atomic_write;
use crate::member::Member;
use crate::network::{Network, MAX_MESSAGE_BYTES};
use crate::service::{ControlService, RaftService};
use crate::store::{self, NodeId, Raft, StateReader};
use crate::timers::LeaderTimers;

/// The store's file inside `member.data_dir`.
pub const STORE_FILE: &str = "global-master.redb";
/// Records which member owns a data directory, so a directory is never reused under
/// another id (raft would then hold two members' votes in one log).
const MEMBER_FILE: &str = "member.json";

/// How long stopping may wait for in-flight RPCs before the process goes anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The describe file of a member: `{"global_masters": [{"id", "pid", "raft", "http",
/// "argv"}]}`, the shape of design.md's describe file (`id` is text there, since the
/// same list describes embedded masters).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Describe {
    pub global_masters: Vec<DescribedMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedMember {
    pub id: String,
    pub pid: u32,
    pub raft: String,
    pub http: String,
    pub argv: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MemberMarker {
    id: NodeId,
}

/// Serves until `shutdown` resolves, then stops raft and the listeners.
pub async fn serve(
    config: Config,
    describe_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::config::validate(&config)?;
    let id = config.member.id;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing metrics")?;

    let tls = config.tls.files().context("tls files are required")?;
    let server_tls = server_tls(&tls)?;
    let client_tls = client_tls(&tls, SERVER_NAME)?;

    let raft_listener = TcpListener::bind(config.listen.raft)
        .await
        .with_context(|| format!("binding listen.raft {}", config.listen.raft))?;
    let raft_addr = raft_listener.local_addr()?;
    let http_listener = TcpListener::bind(config.listen.http)
        .await
        .with_context(|| format!("binding listen.http {}", config.listen.http))?;
    let http_addr = http_listener.local_addr()?;

    let network = Network::new(id, client_tls, backoff_for(&config.cluster));
    let (raft, reader) = start_raft(id, &config.member.data_dir, &config.cluster, network).await?;
    let cluster = &config.cluster;

    // The initial voters: the configured members, or this member alone where it bound.
    let (voters, http_addrs) = if cluster.members.is_empty() {
        (
            BTreeMap::from([(id, BasicNode::new(raft_addr.to_string()))]),
            BTreeMap::from([(id, http_addr.to_string())]),
        )
    } else {
        let voters = (cluster.members.iter())
            .map(|m| (m.id, BasicNode::new(m.raft_addr.clone())))
            .collect();
        let http = (cluster.members.iter())
            .map(|m| (m.id, m.http_addr.clone()))
            .collect();
        (voters, http)
    };

    let (stop, stopping) = watch::channel(false);
    let member = Arc::new(Member {
        id,
        raft: raft.clone(),
        reader,
        http_addrs,
        request_timeout: cluster.request_timeout(),
        stopping: stopping.clone(),
    });

    let grpc = {
        let mut stopping = stopping.clone();
        let incoming = TcpIncoming::from(raft_listener).with_nodelay(Some(true));
        let router = Server::builder()
            .tls_config(server_tls)
            .context("raft listener TLS")?
            .add_service(
                RaftServer::new(RaftService::new(member.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ControlServer::new(ControlService::new(member.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }))
    };
    let http = {
        let mut stopping = stopping.clone();
        let app = crate::http::router(member.clone(), metrics);
        let serving = axum::serve(http_listener, app).with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        tokio::spawn(async move { serving.await })
    };
    tokio::spawn(crate::http::export_metrics(member.clone()));
    let timers = LeaderTimers {
        raft: raft.clone(),
        reader: member.reader.clone(),
        homes: config.homes.clone(),
        regions: config.regions.clone(),
        request_timeout: cluster.request_timeout(),
    };
    tokio::spawn(timers.run(stopping.clone()));

    if cluster.is_bootstrapper(id) {
        bootstrap(&raft, voters).await?;
    } else {
        info!("waiting for the group's lowest-id member to form it (or for the leader)");
    }

    if let Some(path) = &describe_path {
        write_describe(path, id, raft_addr, http_addr)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    info!(
        member.id = id,
        listen.raft = %raft_addr,
        listen.http = %http_addr,
        voters = cluster.members.len().max(1),
        "global master member serving"
    );

    let mut grpc = grpc;
    tokio::select! {
        _ = shutdown => info!("stopping"),
        ended = &mut grpc => bail!("the raft listener stopped: {ended:?}"),
        fatal = raft_failed(&raft) => bail!("raft stopped: {fatal}"),
    }

    let _ = stop.send(true);
    match tokio::time::timeout(STOP_TIMEOUT, grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => warn!("raft listener: {error}"),
        Ok(Err(error)) => warn!("raft listener task: {error}"),
        Err(_) => warn!("in-flight RPCs did not finish in time; stopping anyway"),
    }
    if let Err(error) = raft.shutdown().await {
        warn!("raft shutdown: {error}");
    }
    if tokio::time::timeout(STOP_TIMEOUT, http).await.is_err() {
        warn!("the HTTP listener did not stop in time");
    }
    info!("global master member stopped");
    Ok(())
}

/// Opens (or creates) a member's store in `data_dir` and starts its raft core, which
/// talks to the other members through `network`. Shared by the standalone member and
/// the one a region node embeds.
pub async fn start_raft(
    id: NodeId,
    data_dir: &Path,
    cluster: &ClusterConfig,
    network: Network,
) -> anyhow::Result<(Raft, StateReader)> {
    claim_data_dir(data_dir, id)?;
    let (log, state_machine) = store::open(data_dir.join(STORE_FILE))
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let reader = state_machine.reader();

    let raft_config = openraft::Config {
        cluster_name: "starling-global-master".into(),
        heartbeat_interval: cluster.heartbeat_ms,
        election_timeout_min: cluster.election_timeout_min_ms,
        election_timeout_max: cluster.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cluster.snapshot_logs),
        max_in_snapshot_log_to_keep: cluster.snapshot_keep_logs,
        ..Default::default()
    }
    .validate()
    .context("raft timers")?;
    let raft = Raft::new(id, Arc::new(raft_config), network, log, state_machine)
        .await
        .context("starting raft")?;
    Ok((raft, reader))
}

/// How long the network waits before retrying an unreachable peer.
pub fn backoff_for(cluster: &ClusterConfig) -> Duration {
    Duration::from_millis((cluster.heartbeat_ms * 2).clamp(100, 1_000))
}

/// Forms the group from the initial voters, unless this member's log already holds a
/// membership (a restart, or a group another member formed).
pub async fn bootstrap(raft: &Raft, voters: BTreeMap<NodeId, BasicNode>) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        info!("the group is already formed; resuming");
        return Ok(());
    }
    info!(voters = ?voters.keys().collect::<Vec<_>>(), "forming the group");
    match raft.initialize(voters).await {
        Ok(()) => Ok(()),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(error) => Err(error).context("forming the group"),
    }
}

/// Resolves when raft stops by itself (a storage failure, a panic in its core).
async fn raft_failed(raft: &Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft metrics ended".into();
        }
    }
}

/// Creates the data directory on first start and refuses one another member owns.
fn claim_data_dir(dir: &Path, id: NodeId) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let marker = dir.join(MEMBER_FILE);
    match std::fs::read(&marker) {
        Ok(bytes) => {
            let owner: MemberMarker = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", marker.display()))?;
            if owner.id != id {
                bail!(
                    "{} belongs to member {}, not member {id}: give each member its own \
                     data directory",
                    dir.display(),
                    owner.id
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            atomic_write(&marker, &serde_json::to_vec(&MemberMarker { id })?)
                .with_context(|| format!("writing {}", marker.display()))
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", marker.display())),
    }
}

fn write_describe(
    path: &Path,
    id: NodeId,
    raft: SocketAddr,
    http: SocketAddr,
) -> std::io::Result<()> {
    let describe = Describe {
        global_masters: vec![DescribedMember {
            id: id.to_string(),
            pid: std::process::id(),
            raft: raft.to_string(),
            http: http.to_string(),
            argv: std::env::args().collect(),
        }],
    };
    let json = serde_json::to_vec_pretty(&describe).map_err(std::io::Error::other)?;
    atomic_write(path, &json)
}
