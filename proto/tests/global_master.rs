//! The global master's services over mutual TLS on loopback: a raft RPC, the watch
//! stream, and the refusal of clients the cluster CA did not certify.

mod common;

use std::pin::Pin;

use starling_proto::global::control_client::ControlClient;
use starling_proto::global::control_server::{Control, ControlServer};
use starling_proto::global::raft_client::RaftClient;
use starling_proto::global::raft_server::{Raft, RaftServer};
use starling_proto::global::{
    CommandBytes, MembershipBytes, RaftBytes, ReadRequest, ResponseBytes, StatusReply,
    StatusRequest, WatchEvent, WatchRequest,
};
use starling_proto::tls::{server_tls, TlsFiles, SERVER_NAME};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, ClientTlsConfig, Server};
use tonic::{Request, Response, Status};

/// Answers raft RPCs by echoing the payload behind a tag naming the RPC, and refuses any
/// request that arrived without a verified client certificate.
struct EchoRaft;

impl EchoRaft {
    fn echo(tag: &str, request: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        // With a client CA root set, tonic must never let an unauthenticated peer reach a
        // handler; this checks that the certificate really was presented and kept.
        if request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::unauthenticated("no client certificate"));
        }
        let mut payload = tag.as_bytes().to_vec();
        payload.extend_from_slice(&request.into_inner().payload);
        Ok(Response::new(RaftBytes { payload }))
    }
}

#[tonic::async_trait]
impl Raft for EchoRaft {
    async fn vote(&self, request: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        Self::echo("vote:", request)
    }

    async fn append_entries(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        Self::echo("append:", request)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        Self::echo("snapshot:", request)
    }
}

/// A control service whose state is three versions; only Watch and Status do anything.
struct ThreeVersions;

const LATEST: u64 = 3;

#[tonic::async_trait]
impl Control for ThreeVersions {
    async fn write(&self, _: Request<CommandBytes>) -> Result<Response<ResponseBytes>, Status> {
        Ok(Response::new(ResponseBytes {
            payload: Vec::new(),
            leader_hint: "127.0.0.1:1".to_owned(),
        }))
    }

    async fn read(&self, _: Request<ReadRequest>) -> Result<Response<ResponseBytes>, Status> {
        Err(Status::unimplemented("read"))
    }

    async fn change_members(
        &self,
        _: Request<MembershipBytes>,
    ) -> Result<Response<ResponseBytes>, Status> {
        Err(Status::unimplemented("change_members"))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    /// From version 0 a watcher gets the state as a snapshot, then every change after it.
    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let from = request.into_inner().from_version;
        let events = (from + 1..=LATEST).map(move |version| {
            Ok(WatchEvent {
                version,
                change: format!("change {version}").into_bytes(),
                snapshot: from == 0 && version == 1,
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(StatusReply {
            id: 1,
            role: "leader".to_owned(),
            leader_id: 1,
            ..Default::default()
        }))
    }
}

/// Starts both services with `server` as the server's certificate.
async fn start(server: &TlsFiles) -> std::net::SocketAddr {
    let router = Server::builder()
        .tls_config(server_tls(server).unwrap())
        .unwrap()
        .add_service(RaftServer::new(EchoRaft))
        .add_service(ControlServer::new(ThreeVersions));
    common::spawn(router).await
}

#[tokio::test]
async fn raft_call_and_watch_stream_work_over_mutual_tls() {
    let ca = common::new_ca();
    let addr = start(&common::issue(ca.path(), "gm-1")).await;
    let channel = common::connect(addr, &common::issue(ca.path(), "gm-2"))
        .await
        .unwrap();

    let reply = RaftClient::new(channel.clone())
        .vote(RaftBytes {
            payload: b"term 7".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, b"vote:term 7");

    let mut control = ControlClient::new(channel);
    let events: Vec<WatchEvent> = control
        .watch(WatchRequest { from_version: 0 })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    assert!(events[0].snapshot && !events[1].snapshot && !events[2].snapshot);
    assert_eq!(events[2].change, b"change 3");

    let resumed: Vec<u64> = control
        .watch(WatchRequest { from_version: 2 })
        .await
        .unwrap()
        .into_inner()
        .map(|event| event.unwrap().version)
        .collect()
        .await;
    assert_eq!(resumed, [3], "a watcher resumes after the version it has");

    let write = control
        .write(CommandBytes { payload: vec![1] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(write.leader_hint, "127.0.0.1:1");
}

/// Calls Status through a client built from `tls`; Err if the call cannot be made.
async fn status_with(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Result<(), String> {
    // The refusal may come at the handshake or, with TLS 1.3 where the server checks the
    // client certificate after the client considers the handshake done, at the first
    // call; either way no reply may come back.
    let channel = common::endpoint(addr)
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    ControlClient::new(channel)
        .status(StatusRequest {})
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_client_certified_by_another_ca_is_refused() {
    let ca = common::new_ca();
    let addr = start(&common::issue(ca.path(), "gm-1")).await;

    // The intruder trusts the real CA, so it would accept the server; only its own
    // certificate, signed by a CA of its making, gives it away. Both CAs bear the same
    // name, so the server finds the real CA as the issuer and it is the signature check
    // that refuses: the case of someone copying the CA's name.
    let other = common::new_ca();
    let forged = common::issue(other.path(), "gm-2");
    let intruder = TlsFiles {
        ca_cert: ca.path().join("ca.pem"),
        ..forged
    };
    let tls = starling_proto::tls::client_tls(&intruder, SERVER_NAME).unwrap();
    let refused = status_with(addr, tls).await;
    assert!(refused.is_err(), "a foreign certificate was accepted");

    // A client with no certificate at all fares no better.
    let ca_pem = std::fs::read(ca.path().join("ca.pem")).unwrap();
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(SERVER_NAME);
    assert!(
        status_with(addr, anonymous).await.is_err(),
        "a client without a certificate was accepted"
    );

    // The refusals cost the server nothing: a member still gets through.
    let member = common::issue(ca.path(), "gm-3");
    let tls = starling_proto::tls::client_tls(&member, SERVER_NAME).unwrap();
    status_with(addr, tls).await.unwrap();
}

#[tokio::test]
async fn a_client_refuses_a_server_certified_by_another_ca() {
    let ca = common::new_ca();
    let other = common::new_ca();

    // The impostor accepts cluster clients, so the only thing that can fail the call is
    // the client's check of the server certificate.
    let impostor = TlsFiles {
        ca_cert: ca.path().join("ca.pem"),
        ..common::issue(other.path(), "impostor")
    };
    let addr = start(&impostor).await;

    let member = common::issue(ca.path(), "gm-2");
    let tls = starling_proto::tls::client_tls(&member, SERVER_NAME).unwrap();
    assert!(status_with(addr, tls).await.is_err());
}
