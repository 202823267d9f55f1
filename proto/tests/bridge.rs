//! A region bridge link over mutual TLS on loopback: both sides talk on one
//! bidirectional stream, interleaving requests and answers.

mod common;

use std::pin::Pin;
use std::time::Duration;

use starling_proto::bridge::bridge_client::BridgeClient;
use starling_proto::bridge::bridge_frame::Body;
use starling_proto::bridge::bridge_server::{Bridge, BridgeServer};
use starling_proto::bridge::{
    Ack, BridgeFrame, EntryKind, Forward, Hello, Interest, Position, Publish, Sequenced,
    SequencedEntry,
};
use starling_proto::tls::server_tls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

const HOME: &str = "eu";
const EPOCH: u64 = 4;

/// A toy home region: greets back, and sequences each forwarded publish from position
/// (EPOCH, 1) on, relaying the result and then acknowledging the Forward.
struct Home;

#[tonic::async_trait]
impl Bridge for Home {
    type LinkStream = Pin<Box<dyn Stream<Item = Result<BridgeFrame, Status>> + Send>>;

    async fn link(
        &self,
        request: Request<Streaming<BridgeFrame>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);

        // The task ends when the peer closes its half (message() yields None) or the
        // response stream is dropped (send fails): either way the link is gone.
        tokio::spawn(async move {
            let mut out_seq = 0;
            let mut next = 1;
            while let Ok(Some(frame)) = inbound.message().await {
                for body in answer(frame, &mut next) {
                    out_seq += 1;
                    let reply = BridgeFrame {
                        origin_region: HOME.to_owned(),
                        origin_seq: out_seq,
                        body: Some(body),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What the toy home sends back for one inbound frame.
fn answer(frame: BridgeFrame, next: &mut u64) -> Vec<Body> {
    match frame.body {
        Some(Body::Hello(_)) => vec![Body::Hello(Hello {
            protocol_version: 1,
            node_id: "eu-1".to_owned(),
            registry_version: 9,
        })],
        Some(Body::Forward(forward)) => {
            let previous = (*next > 1).then(|| Position {
                epoch: EPOCH,
                seq: *next - 1,
            });
            let entries: Vec<SequencedEntry> = forward
                .messages
                .into_iter()
                .map(|publish| {
                    let position = Position {
                        epoch: EPOCH,
                        seq: *next,
                    };
                    *next += 1;
                    SequencedEntry {
                        position: Some(position),
                        id: publish.id,
                        kind: publish.kind,
                        payload: publish.payload,
                    }
                })
                .collect();
            let positions = entries.iter().filter_map(|e| e.position).collect();
            vec![
                Body::Sequenced(Sequenced {
                    app_id: forward.app_id,
                    channel: forward.channel,
                    previous,
                    entries,
                }),
                Body::Ack(Ack {
                    acked_seq: frame.origin_seq,
                    positions,
                    ..Default::default()
                }),
            ]
        }
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn a_bridge_link_carries_frames_both_ways() {
    let ca = common::new_ca();
    let router = Server::builder()
        .tls_config(server_tls(&common::issue(ca.path(), "eu-1")).unwrap())
        .unwrap()
        .add_service(BridgeServer::new(Home));
    let addr = common::spawn(router).await;
    let channel = common::connect(addr, &common::issue(ca.path(), "us-1"))
        .await
        .unwrap();

    // The outbound half stays open while we wait for answers: a real link is
    // conversational, not a batch sent and then closed.
    let (tx, rx) = mpsc::channel(16);
    let mut inbound = BridgeClient::new(channel)
        .link(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let frame = |origin_seq, body| BridgeFrame {
        origin_region: "us".to_owned(),
        origin_seq,
        body: Some(body),
    };

    let hello = Hello {
        protocol_version: 1,
        node_id: "us-1".to_owned(),
        registry_version: 9,
    };
    tx.send(frame(1, Body::Hello(hello))).await.unwrap();
    let greeting = receive(&mut inbound).await;
    assert_eq!(greeting.origin_region, HOME);
    assert!(matches!(
        greeting.body,
        Some(Body::Hello(Hello {
            protocol_version: 1,
            ..
        }))
    ));

    let interest = Interest {
        app_id: "app".to_owned(),
        channel: "rooms:1".to_owned(),
        interested: true,
        from: None,
    };
    tx.send(frame(2, Body::Interest(interest))).await.unwrap();
    let publishes = ["a", "b"].map(|id| Publish {
        id: format!("conn:0:{id}"),
        payload: id.as_bytes().to_vec(),
        kind: EntryKind::Message.into(),
    });
    let forward = Forward {
        app_id: "app".to_owned(),
        channel: "rooms:1".to_owned(),
        messages: publishes.to_vec(),
        connection_id: "conn".to_owned(),
        presence: Vec::new(),
    };
    tx.send(frame(3, Body::Forward(forward))).await.unwrap();

    let Some(Body::Sequenced(sequenced)) = receive(&mut inbound).await.body else {
        panic!("expected the sequenced relay first");
    };
    assert_eq!(sequenced.channel, "rooms:1");
    assert_eq!(sequenced.previous, None);
    let ids: Vec<&str> = sequenced.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["conn:0:a", "conn:0:b"]);
    assert_eq!(sequenced.entries[1].payload, b"b");
    assert_eq!(sequenced.entries[1].kind(), EntryKind::Message);

    let ack = receive(&mut inbound).await;
    let Some(Body::Ack(ack_body)) = ack.body else {
        panic!("expected the ack after the relay");
    };
    assert_eq!(ack.origin_seq, 3, "the home numbers its own frames");
    assert_eq!(ack_body.acked_seq, 3, "the ack names the forward frame");
    let seqs: Vec<(u64, u64)> = ack_body
        .positions
        .iter()
        .map(|p| (p.epoch, p.seq))
        .collect();
    assert_eq!(seqs, [(EPOCH, 1), (EPOCH, 2)]);

    // Closing our half ends the home's side cleanly.
    drop(tx);
    assert!(receive_end(&mut inbound).await);
}

/// The next frame from the peer, which must come within the deadline.
async fn receive(inbound: &mut Streaming<BridgeFrame>) -> BridgeFrame {
    tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("the home answers within the deadline")
        .unwrap()
        .expect("the link stays open")
}

/// True once the peer ends its half of the stream without an error.
async fn receive_end(inbound: &mut Streaming<BridgeFrame>) -> bool {
    let end = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
    matches!(end, Ok(Ok(None)))
}
