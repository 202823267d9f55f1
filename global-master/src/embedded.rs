//! A one-member global master inside another process: what a region node runs when no
//! external group is configured, so a single node keeps its apps (and later its homes)
//! in the same replicated store a federation uses, without a second process.
//!
//! It is an ordinary raft group of one member whose network is never used: a single
//! voter elects itself and commits alone. It serves no gRPC; its owner writes through
//! [`Embedded::write`] and follows changes through [`Embedded::reader`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, ServerState};
use starling_proto::global::control_server::ControlServer;
use starling_proto::tls::{server_tls, TlsFiles};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{ClientTlsConfig, Server};

use crate::config::ClusterConfig;
use crate::member::Member;
use crate::network::{Network, MAX_MESSAGE_BYTES};
use crate::server::{backoff_for, bootstrap, start_raft};
use crate::service::ControlService;
use crate::state::{Command, Response};
use crate::store::{NodeId, Raft, StateReader};

/// The id of the only member.
const MEMBER_ID: NodeId = 1;

/// Placeholder address: nobody ever dials a group of one.
const NO_ADDRESS: &str = "embedded";

/// How long a write may wait for the member to be leader and commit.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("the embedded global master did not commit in time")]
    Timeout,
    #[error("the embedded global master failed: {0}")]
    Raft(String),
}

pub struct Embedded {
    raft: Raft,
    reader: StateReader,
    /// Ends the watch streams of served clients on shutdown.
    stop: watch::Sender<bool>,
}

impl Embedded {
    /// Opens (or creates) the store in `data_dir` and waits until the member leads.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let cluster = ClusterConfig::default();
        let network = Network::new(MEMBER_ID, ClientTlsConfig::new(), backoff_for(&cluster));
        let (raft, reader) = start_raft(MEMBER_ID, data_dir, &cluster, network).await?;

        let voters = BTreeMap::from([(MEMBER_ID, BasicNode::new(NO_ADDRESS))]);
        bootstrap(&raft, voters).await?;
        raft.wait(Some(WRITE_TIMEOUT))
            .state(ServerState::Leader, "embedded member leads")
            .await
            .context("waiting for the embedded global master to lead")?;
        Ok(Self {
            raft,
            reader,
            stop: watch::channel(false).0,
        })
    }

    /// Commits `command` and returns the state machine's answer.
    pub async fn write(&self, command: Command) -> Result<Response, EmbeddedError> {
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(command)).await;
        match written {
            Ok(Ok(reply)) => Ok(reply.data),
            Ok(Err(error)) => Err(EmbeddedError::Raft(error.to_string())),
            Err(_) => Err(EmbeddedError::Timeout),
        }
    }

    /// The applied state, and a way to be woken when it changes.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    /// Keeps the raft gauges (role, term, commit index, …) current in this process's
    /// metrics, as a standalone member's `/metrics` has them.
    pub fn export_metrics(&self) {
        let member = std::sync::Arc::new(self.member(BTreeMap::new()));
        tokio::spawn(crate::http::export_metrics(member));
    }

    /// This member's view of its group of one, as Status reports it.
    pub async fn status(&self) -> starling_proto::global::StatusReply {
        self.member(BTreeMap::new()).status().await
    }

    fn member(&self, http_addrs: BTreeMap<NodeId, String>) -> Member {
        Member {
            id: MEMBER_ID,
            raft: self.raft.clone(),
            reader: self.reader.clone(),
            http_addrs,
            request_timeout: WRITE_TIMEOUT,
            stopping: self.stop.subscribe(),
        }
    }

    /// Serves the Control API (writes, reads, watch, status) on `addr` under mutual
    /// TLS, so other processes (the nodes a dev launcher starts) share this member.
    /// Returns the bound address; serving stops when the process does.
    pub async fn serve_control(
        &self,
        addr: SocketAddr,
        tls: &TlsFiles,
    ) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the embedded global master on {addr}"))?;
        let bound = listener.local_addr()?;
        let member = Arc::new(self.member(BTreeMap::new()));

        let router = Server::builder()
            .tls_config(server_tls(tls)?)
            .context("embedded global master TLS")?
            .add_service(
                ControlServer::new(ControlService::new(member))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(router.serve_with_incoming(incoming));
        Ok(bound)
    }

    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!("embedded global master shutdown: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Outcome;

    fn register(name: &str) -> Command {
        Command::RegisterRegion {
            name: name.into(),
            bridges: vec![],
            now_ms: 1,
        }
    }

    #[tokio::test]
    async fn commits_alone_and_keeps_its_state_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();

        let member = Embedded::start(dir.path()).await.unwrap();
        let reply = member.write(register("local")).await.unwrap();
        assert_eq!(reply.outcome, Ok(Outcome::Done));
        assert!(member
            .reader()
            .read(|s| s.catalog().region("local").is_some()));
        member.shutdown().await;
        drop(member);

        let member = Embedded::start(dir.path()).await.unwrap();
        assert!(member
            .reader()
            .read(|s| s.catalog().region("local").is_some()));
        let again = member.write(register("other")).await.unwrap();
        assert!(again.version > reply.version);
        member.shutdown().await;
    }
}
