//! A one-member global master driven by real openraft over the redb store: commands
//! commit, a snapshot compacts the log, and a member restarted on the same file comes
//! back with everything. No network is needed, since a lone member never calls a peer.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, RaftNetwork, RaftNetworkFactory, SnapshotPolicy};
use starling_global::state::{Command, Outcome, Response};
use starling_global::store::{
    self, LogStore, NodeId, Raft, StateMachine, StateReader, StoreError, TypeConfig,
};

const ME: NodeId = 1;
const DEADLINE: Option<Duration> = Some(Duration::from_secs(10));

/// The network of a member with no peers: every call fails as unreachable.
struct NoPeers;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

// The error type is openraft's, fixed by the `RaftNetwork` trait.
#[allow(clippy::result_large_err)]
fn unreachable<T, E: std::error::Error>() -> RpcResult<T, E> {
    let error = io::Error::other("a single member has no peers");
    Err(RPCError::Unreachable(Unreachable::new(&error)))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        unreachable()
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        unreachable()
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        unreachable()
    }
}

fn config() -> anyhow::Result<Arc<Config>> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        // The test decides when to snapshot, and nothing is kept behind a snapshot.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Opens the store, waiting for a previous member on the same file to let go of it:
/// after `Raft::shutdown` returns, openraft's state machine task still drops its handle
/// (and with it redb's file lock) on its own schedule.
async fn open_when_free(path: &Path) -> anyhow::Result<(LogStore, StateMachine)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store::open(path) {
            Err(StoreError::Db(redb::Error::DatabaseAlreadyOpen)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            opened => return Ok(opened?),
        }
    }
}

/// Starts the member on `path`.
async fn start(path: &Path) -> anyhow::Result<(Raft, StateReader)> {
    let (log, sm) = open_when_free(path).await?;
    let reader = sm.reader();
    let raft = Raft::new(ME, config()?, NoPeers, log, sm).await?;
    Ok((raft, reader))
}

async fn write(raft: &Raft, command: Command) -> anyhow::Result<Response> {
    Ok(raft.client_write(command).await?.data)
}

fn assign(channel: &str, now_ms: u64) -> Command {
    Command::GetOrAssignHome {
        channel: channel.into(),
        preferred_region: "eu".into(),
        now_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_commits_compacts_and_resumes_after_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("global-master.redb");

    // Phase 1: bootstrap, commit commands, snapshot and purge the log.
    let (home, snapshot_at) = {
        let (raft, _reader) = start(&path).await?;
        let members = BTreeMap::from([(ME, BasicNode::new("127.0.0.1:0"))]);
        raft.initialize(members).await?;
        raft.wait(DEADLINE)
            .current_leader(ME, "leads alone")
            .await?;

        let register = Command::RegisterRegion {
            name: "eu".into(),
            bridges: vec!["eu:7000".into()],
            now_ms: 1_000,
        };
        assert_eq!(write(&raft, register).await?.outcome, Ok(Outcome::Done));
        let written = raft.client_write(assign("app/chat", 2_000)).await?;
        let Ok(Outcome::Home {
            home,
            assigned: true,
        }) = written.data.outcome
        else {
            panic!("expected a new home, got {:?}", written.data);
        };

        // The snapshot covers everything applied so far, the assignment included.
        raft.trigger().snapshot().await?;
        let applied = written.log_id;
        raft.wait(DEADLINE)
            .snapshot(applied, "snapshot built")
            .await?;
        raft.trigger().purge_log(applied.index).await?;
        raft.wait(DEADLINE)
            .purged(Some(applied), "log purged")
            .await?;
        raft.shutdown().await?;
        (home, applied)
    };

    // Phase 2: restart on the same file; state, snapshot and purge point are all there.
    let (raft, reader) = start(&path).await?;
    raft.wait(DEADLINE)
        .current_leader(ME, "leads again")
        .await?;
    let restored = reader.read(|s| s.catalog().home("app/chat").cloned());
    assert_eq!(restored.as_ref(), Some(&home));

    let again = write(&raft, assign("app/chat", 3_000)).await?;
    let Ok(Outcome::Home {
        home: same,
        assigned: false,
    }) = again.outcome
    else {
        panic!("expected the existing home, got {again:?}");
    };
    assert_eq!((same.region, same.epoch), (home.region, home.epoch));

    let metrics = raft.metrics().borrow().clone();
    assert_eq!(metrics.snapshot, Some(snapshot_at));
    assert_eq!(metrics.purged, Some(snapshot_at));
    raft.shutdown().await?;
    Ok(())
}
