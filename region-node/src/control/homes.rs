//! Channel homes asked of the global master in batches.
//!
//! Every channel's first use on a node needs its home, and a burst of first uses (a
//! reconnect storm, an app that opens a channel per user) once cost one raft write per
//! channel, queued in front of the region's lease heartbeat. Now the region task
//! queues its [`HomeRequest`]s here and returns at once; one writer task takes what is
//! queued (up to [`MAX_HOMES_PER_WRITE`] channels) into one batched command, writes
//! it, and takes the next. So N first uses at once cost about N / batch writes, and
//! the queue itself batches: while one write is under way the next one fills.
//!
//! A channel already queued, or in the write under way, is not queued again. Nobody
//! waits here for an answer: homes reach the region task through the catalog copy
//! (`HomeEvent`), and a failed write is not retried here, because the region state
//! asks again for any home still unknown after `HOME_RETRY_MS`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use starling_global::state::{Command, Outcome, MAX_HOMES_PER_COMMAND};
use tokio::sync::Notify;
use tracing::debug;

use super::{ControlPlane, Lane};
use crate::node::now_ms;
use crate::region::HomeRequest;

/// The most channels one home write carries: a write of a thousand channels takes
/// tens of milliseconds, which is as long as a heartbeat may wait behind it.
const MAX_HOMES_PER_WRITE: usize = 1_000;

const _: () = assert!(MAX_HOMES_PER_WRITE <= MAX_HOMES_PER_COMMAND);

/// The two kinds of home write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HomeWrite {
    /// Learn the channels' homes, assigning this region on first use.
    Assign,
    /// Keep the channels' homes from expiring.
    Touch,
}

impl HomeWrite {
    /// As metrics label it.
    fn label(self) -> &'static str {
        match self {
            HomeWrite::Assign => "assign",
            HomeWrite::Touch => "touch",
        }
    }

    fn command(self, channels: Vec<String>, region: &str) -> Command {
        let now_ms = now_ms() as u64;
        match self {
            HomeWrite::Assign => Command::GetOrAssignHomes {
                channels,
                preferred_region: region.to_owned(),
                now_ms,
            },
            HomeWrite::Touch => Command::TouchHomes { channels, now_ms },
        }
    }
}

/// What waits to be written, shared by the region task (which queues) and the writer.
#[derive(Default)]
pub(super) struct HomeQueue {
    assign: Mutex<Pending>,
    touch: Mutex<Pending>,
    /// Woken when something is queued; keeps a permit while the writer is busy, so a
    /// request queued during a write is never left waiting.
    queued: Notify,
}

/// One kind's channels: those waiting, in the order asked, and which are queued or
/// being written.
#[derive(Default)]
struct Pending {
    waiting: VecDeque<String>,
    /// Every channel in `waiting` or in the write under way.
    held: HashSet<String>,
}

impl Pending {
    /// Queues `channel` unless it is queued or being written already.
    fn push(&mut self, channel: String) -> bool {
        if !self.held.insert(channel.clone()) {
            return false;
        }
        self.waiting.push_back(channel);
        true
    }

    /// The next batch; its channels stay held until [`Pending::done`].
    fn take(&mut self) -> Vec<String> {
        let n = self.waiting.len().min(MAX_HOMES_PER_WRITE);
        self.waiting.drain(..n).collect()
    }

    fn done(&mut self, channels: &[String]) {
        for channel in channels {
            self.held.remove(channel);
        }
    }
}

impl HomeQueue {
    fn pending(&self, kind: HomeWrite) -> &Mutex<Pending> {
        match kind {
            HomeWrite::Assign => &self.assign,
            HomeWrite::Touch => &self.touch,
        }
    }
}

impl ControlPlane {
    /// Queues home requests for the writer and returns at once. A channel whose home
    /// the catalog copy already holds is not asked for: the region task learns it
    /// from the copy.
    pub fn ask_homes(&self, requests: Vec<HomeRequest>) {
        if requests.is_empty() {
            return;
        }
        let mut queued = false;
        let catalog = self.catalog.lock();
        for request in requests {
            let (kind, channel) = match request {
                HomeRequest::Assign { channel } if catalog.home(&channel).is_some() => continue,
                HomeRequest::Assign { channel } => (HomeWrite::Assign, channel),
                HomeRequest::Touch { channel } => (HomeWrite::Touch, channel),
            };
            queued |= self.home_queue.pending(kind).lock().push(channel);
        }
        drop(catalog);
        if queued {
            self.home_queue.queued.notify_one();
        }
    }

    /// The one task that writes home requests: a batch of assignments, then one of
    /// touches, each with everything queued of its kind (up to the bound), until
    /// nothing is queued. Assignments go first: clients wait for them.
    pub(super) fn spawn_home_writer(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                let mut wrote = false;
                for kind in [HomeWrite::Assign, HomeWrite::Touch] {
                    let channels = self.home_queue.pending(kind).lock().take();
                    if channels.is_empty() {
                        continue;
                    }
                    self.write_homes(kind, &channels).await;
                    self.home_queue.pending(kind).lock().done(&channels);
                    wrote = true;
                }
                if !wrote {
                    self.home_queue.queued.notified().await;
                }
            }
        });
    }

    /// One batched write. Its answers reach the region task through the catalog copy,
    /// which `write` waits for; refusals and failures are only logged, since the
    /// region state asks again for homes it still lacks.
    async fn write_homes(&self, kind: HomeWrite, channels: &[String]) {
        crate::observe::home_write(kind.label(), channels.len());
        let command = kind.command(channels.to_vec(), &self.region);
        let answers = match self.write(Lane::Homes, command).await {
            Ok(Outcome::Homes { answers }) => answers,
            Ok(other) => return debug!(?other, "unexpected answer to a home batch"),
            Err(error) => {
                return debug!(
                    command = kind.label(),
                    channels = channels.len(),
                    "home batch not written: {error}"
                )
            }
        };

        let mut assigned = 0;
        for answer in &answers {
            match &answer.home {
                Ok(_) => assigned += usize::from(answer.assigned),
                Err(error) => debug!(
                    channel.name = %answer.channel,
                    command = kind.label(),
                    "no home: {error}"
                ),
            }
        }
        debug!(
            command = kind.label(),
            channels = channels.len(),
            assigned,
            "home batch written"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn a_channel_queued_or_being_written_is_not_queued_again() {
        let mut pending = Pending::default();
        assert!(pending.push("a".into()));
        assert!(!pending.push("a".into()), "already queued");

        let batch = pending.take();
        assert_eq!(batch, ["a"]);
        assert!(!pending.push("a".into()), "being written");

        pending.done(&batch);
        assert!(pending.push("a".into()), "asked again after its write");
    }

    #[test]
    fn batches_take_what_is_queued_in_order_up_to_the_bound() {
        let mut pending = Pending::default();
        for name in names("c", MAX_HOMES_PER_WRITE + 5) {
            pending.push(name);
        }

        let first = pending.take();
        let second = pending.take();

        assert_eq!(first, names("c", MAX_HOMES_PER_WRITE));
        assert_eq!(second.len(), 5);
        assert_eq!(second[0], format!("c{MAX_HOMES_PER_WRITE}"));
        assert!(pending.take().is_empty());
    }
}
