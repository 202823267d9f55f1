//! The bare broadcast server: every frame a socket sends goes to every other socket,
//! with no protocol, no parsing and no copies (frames are reference-counted). Nothing
//! that speaks a real protocol over the same WebSocket library can do much better, so
//! it stands for what this machine can do.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Frames written before one flush.
const WRITE_BATCH: usize = 64;

type Peers = Arc<RwLock<Vec<(u64, mpsc::UnboundedSender<Message>)>>>;

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let peers: Peers = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(connection(stream, next_id, peers.clone()));
    }
}

async fn connection(stream: TcpStream, id: u64, peers: Peers) {
    let _ = stream.set_nodelay(true);
    // Small reads, as region-node does: see `wire::config`.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    peers.write().expect("peers lock").push((id, tx.clone()));
    // The greeting tells the client it is registered and will get every frame.
    let _ = tx.send(Message::Text("ready".into()));

    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut written = 0;
            while let Some(frame) = next.take() {
                if sink.feed(frame).await.is_err() {
                    return;
                }
                written += 1;
                if written < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    while let Some(Ok(frame)) = source.next().await {
        if !(frame.is_binary() || frame.is_text()) {
            continue;
        }
        for (peer, tx) in peers.read().expect("peers lock").iter() {
            if *peer != id {
                let _ = tx.send(frame.clone());
            }
        }
    }
    peers
        .write()
        .expect("peers lock")
        .retain(|(peer, _)| *peer != id);
    writer.abort();
}
