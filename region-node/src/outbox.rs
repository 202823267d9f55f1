//! The queue from the rest of the node to one connection's socket.
//!
//! Fan-out puts already-encoded frames here, so a frame is encoded once per wire format
//! and each subscriber only costs a reference-count bump and a queue slot. The queue is
//! bounded by bytes: a client that stops reading is cut off instead of growing the
//! node's memory without limit.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::protocol::{Encoded, ErrorInfo, Format};

/// A drained queue keeps at most this many slots: a burst's backlog is not held for
/// the rest of an idle connection's life.
const KEPT_SLOTS: usize = 64;

/// What a connection task can be asked to do from outside.
#[derive(Debug)]
pub enum Outgoing {
    /// Write this frame.
    Frame(Encoded),
    /// Send a connection-level ERROR with this error, then close: the client fails.
    /// Boxed, like `Disconnect`: they are rare, and every queue slot is as large as
    /// the largest variant.
    Fail(Box<ErrorInfo>),
    /// Send DISCONNECTED with this error, then close: the client reconnects,
    /// elsewhere if it can.
    Disconnect(Box<ErrorInfo>),
}

/// The sending half of a connection's queue, shared by every channel it is attached
/// to. Once the receiver is dropped (the connection task ended), sends are dropped
/// quietly.
///
/// The queue is a locked `VecDeque` and one waker rather than a tokio channel: an
/// idle connection holds no slots at all (a tokio channel keeps a 32-slot block and
/// cache-padded counters, about 1.8 KB, per connection), and a burst is drained
/// under one lock per item with no allocation once the deque has grown.
#[derive(Debug)]
pub struct Outbox {
    pub connection_id: Arc<str>,
    pub app_id: Arc<str>,
    pub format: Format,
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    /// The receiver is gone. Set under the queue's lock, so a push (which looks under
    /// it) never queues after the receiver dropped the queue; read without the lock
    /// by fan-out, which drops closed subscribers.
    closed: AtomicBool,
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outgoing>,
}

pub struct Inbox {
    outbox: Arc<Outbox>,
}

pub fn channel(
    connection_id: Arc<str>,
    app_id: Arc<str>,
    format: Format,
    limit: usize,
) -> (Arc<Outbox>, Inbox) {
    let outbox = Arc::new(Outbox {
        connection_id,
        app_id,
        format,
        queue: Mutex::new(Queue::default()),
        waker: AtomicWaker::new(),
        closed: AtomicBool::new(false),
        queued: AtomicUsize::new(0),
        limit,
        overflowed: AtomicBool::new(false),
    });
    (outbox.clone(), Inbox { outbox })
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
            self.push(Outgoing::Disconnect(Box::new(error)));
            return;
        }
        self.push(Outgoing::Frame(frame));
    }

    /// Asks the connection to fail with `error` (for example, its app was deleted).
    pub fn fail(&self, error: ErrorInfo) {
        self.push(Outgoing::Fail(Box::new(error)));
    }

    /// Asks the connection to go away and come back (for example, this node lost its
    /// region's quorum, or is shutting down).
    pub fn disconnect(&self, error: ErrorInfo) {
        self.push(Outgoing::Disconnect(Box::new(error)));
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn push(&self, item: Outgoing) {
        {
            let mut queue = self.queue.lock();
            if self.closed.load(Ordering::Relaxed) {
                return;
            }
            queue.items.push_back(item);
        }
        self.waker.wake();
    }
}

impl Inbox {
    /// The next queued item, waiting for one.
    pub async fn recv(&mut self) -> Outgoing {
        poll_fn(|cx| {
            if let Some(item) = self.try_recv() {
                return Poll::Ready(item);
            }
            self.outbox.waker.register(cx.waker());
            // An item pushed between the look and the registration woke nobody.
            match self.try_recv() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Takes another queued item without waiting, so the writer can batch a burst
    /// into one flush.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let item = {
            let mut queue = self.outbox.queue.lock();
            let item = queue.items.pop_front();
            if queue.items.is_empty() && queue.items.capacity() > KEPT_SLOTS {
                queue.items.shrink_to(KEPT_SLOTS);
            }
            item
        }?;
        self.account(&item);
        Some(item)
    }

    fn account(&self, item: &Outgoing) {
        if let Outgoing::Frame(frame) = item {
            self.outbox.queued.fetch_sub(frame.len(), Ordering::Relaxed);
        }
    }
}

impl Drop for Inbox {
    /// Frees what is still queued and makes later sends no-ops, as dropping a
    /// channel's receiver would.
    fn drop(&mut self) {
        let items = {
            let mut queue = self.outbox.queue.lock();
            self.outbox.closed.store(true, Ordering::Relaxed);
            std::mem::take(&mut queue.items)
        };
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(text: &str) -> Encoded {
        Encoded::Text(text.to_owned().into())
    }

    fn text(item: Outgoing) -> String {
        match item {
            Outgoing::Frame(Encoded::Text(t)) => t.as_str().to_owned(),
            other => panic!("not a text frame: {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_a_waiting_receiver_is_woken() {
        let (outbox, mut inbox) = channel("c".into(), "a".into(), Format::Json, 1 << 20);
        let waiting = tokio::spawn(async move {
            let first = text(inbox.recv().await);
            let second = text(inbox.recv().await);
            (first, second, inbox)
        });
        tokio::task::yield_now().await;
        outbox.send_frame(frame("one"));
        outbox.send_frame(frame("two"));

        let (first, second, _inbox) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the receiver was woken")
            .expect("no panic");
        assert_eq!((first.as_str(), second.as_str()), ("one", "two"));
        assert_eq!(outbox.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn past_the_byte_limit_the_connection_is_told_once_and_frames_are_dropped() {
        let (outbox, mut inbox) = channel("c".into(), "a".into(), Format::Json, 5);
        outbox.send_frame(frame("1234"));
        outbox.send_frame(frame("5678"));
        outbox.send_frame(frame("9"));

        assert_eq!(text(inbox.try_recv().expect("the first fits")), "1234");
        let told = inbox.try_recv().expect("the overflow is reported");
        assert!(matches!(told, Outgoing::Disconnect(e) if e.code == 80003));
        assert!(inbox.try_recv().is_none(), "later frames are dropped");
    }

    #[test]
    fn a_dropped_receiver_closes_the_queue_and_frees_what_it_held() {
        let (outbox, inbox) = channel("c".into(), "a".into(), Format::Json, 1 << 20);
        outbox.send_frame(frame("held"));
        assert!(!outbox.is_closed());

        drop(inbox);
        assert!(outbox.is_closed());
        assert!(outbox.queue.lock().items.is_empty());
        outbox.send_frame(frame("late"));
        assert!(
            outbox.queue.lock().items.is_empty(),
            "sends after close are dropped"
        );
    }

    #[test]
    fn a_drained_queue_gives_back_a_bursts_slots() {
        let (outbox, mut inbox) = channel("c".into(), "a".into(), Format::Json, 1 << 20);
        for _ in 0..1_000 {
            outbox.send_frame(frame("x"));
        }
        assert!(outbox.queue.lock().items.capacity() >= 1_000);

        while inbox.try_recv().is_some() {}
        assert!(outbox.queue.lock().items.capacity() <= KEPT_SLOTS);
    }
}
