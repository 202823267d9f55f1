//! The queue from the rest of the node to one connection's socket.
//!
//! Fan-out puts already-encoded frames here, so a frame is encoded once per wire format
//! and each subscriber only costs a reference-count bump and a queue slot. The queue is
//! bounded by bytes: a client that stops reading is cut off instead of growing the
//! node's memory without limit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::protocol::{Encoded, ErrorInfo, Format};

/// What a connection task can be asked to do from outside.
#[derive(Debug)]
pub enum Outgoing {
    /// Write this frame.
    Frame(Encoded),
    /// Send a connection-level ERROR with this error, then close: the client fails.
    Fail(ErrorInfo),
    /// Send DISCONNECTED with this error, then close: the client reconnects,
    /// elsewhere if it can.
    Disconnect(ErrorInfo),
}

/// The sending half of a connection's queue, shared by every channel it is attached
/// to. Dropping the receiver (the connection task ending) makes sends fail quietly.
#[derive(Debug)]
pub struct Outbox {
    pub connection_id: Arc<str>,
    pub app_id: Arc<str>,
    pub format: Format,
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
}

pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    outbox: Arc<Outbox>,
}

pub fn channel(
    connection_id: Arc<str>,
    app_id: Arc<str>,
    format: Format,
    limit: usize,
) -> (Arc<Outbox>, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let outbox = Arc::new(Outbox {
        connection_id,
        app_id,
        format,
        tx,
        queued: AtomicUsize::new(0),
        limit,
        overflowed: AtomicBool::new(false),
    });
    (outbox.clone(), Inbox { rx, outbox })
}

impl Outbox {
    /// Queues an encoded frame. Past the byte limit the connection is failed once and
    /// further frames are dropped: the client is told, the node keeps its memory.
    pub fn send_frame(&self, frame: Encoded) {
        if self.overflowed.load(Ordering::Relaxed) {
            return;
        }

        let len = frame.len();
        let queued = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.limit {
            self.overflowed.store(true, Ordering::Relaxed);
            metrics::counter!("starling_slow_consumers_disconnected_total").increment(1);
            // DISCONNECTED, not ERROR: the client may come back and read faster.
            let error = crate::error::AblyError::SlowConsumer.to_info();
            let _ = self.tx.send(Outgoing::Disconnect(error));
            return;
        }
        let _ = self.tx.send(Outgoing::Frame(frame));
    }

    /// Asks the connection to fail with `error` (for example, its app was deleted).
    pub fn fail(&self, error: ErrorInfo) {
        let _ = self.tx.send(Outgoing::Fail(error));
    }

    /// Asks the connection to go away and come back (for example, this node lost its
    /// region's quorum, or is shutting down).
    pub fn disconnect(&self, error: ErrorInfo) {
        let _ = self.tx.send(Outgoing::Disconnect(error));
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let item = self.rx.recv().await?;
        self.account(&item);
        Some(item)
    }

    /// Takes another queued item without waiting, so the writer can batch a burst
    /// into one flush.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let item = self.rx.try_recv().ok()?;
        self.account(&item);
        Some(item)
    }

    fn account(&self, item: &Outgoing) {
        if let Outgoing::Frame(frame) = item {
            self.outbox.queued.fetch_sub(frame.len(), Ordering::Relaxed);
        }
    }
}
