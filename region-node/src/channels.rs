//! The node's channel table. On a one-node region every channel's master and client
//! live here side by side; the region mesh will place masters on other nodes.
//!
//! Each channel sits behind its own lock, held while a publish is sequenced and fanned
//! out, so that every subscriber receives a channel's frames in sequence order. Fan-out
//! only queues already-encoded frames, so the lock is never held across I/O.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::channel_client::{ChannelClient, Occupancy, Subscriber};
use crate::channel_master::{ChannelMaster, HistoryPage, HistoryQuery, Publish, Sequenced};
use crate::config::HistoryConfig;
use crate::error::AblyError;
use crate::position::Position;

/// Epoch of channels sequenced by this node. There is one sequencer per channel and it
/// never moves on a one-node region; failover and home moves will raise it.
const LOCAL_EPOCH: u32 = 1;

struct Channel {
    master: ChannelMaster,
    client: ChannelClient,
}

pub struct Channels {
    table: RwLock<HashMap<String, Arc<Mutex<Channel>>>>,
    limits: HistoryConfig,
}

/// Checks a channel name against Ably's rules (protocol.md §8).
pub fn validate_name(name: &str) -> Result<(), AblyError> {
    let bad = |why: &str| Err(AblyError::InvalidChannelName(format!("{name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.starts_with(':') {
        return bad("starts with ':'");
    }
    if name.contains(['\n', '\r', '\0']) {
        return bad("contains a control character");
    }
    if name.len() > 2048 {
        return bad("is longer than 2048 bytes");
    }
    if let Some(rest) = name.strip_prefix('[') {
        // Only a closed qualifier followed by a real name is allowed.
        match rest.split_once(']') {
            Some((qualifier, base)) if !qualifier.is_empty() && !base.is_empty() => {}
            _ => return bad("has a malformed qualifier"),
        }
    }
    Ok(())
}

impl Channels {
    pub fn new(limits: HistoryConfig) -> Self {
        Self {
            table: RwLock::new(HashMap::new()),
            limits,
        }
    }

    /// Sequences a publish and fans the result out to local subscribers.
    pub fn publish(&self, name: &str, publish: Publish, now_ms: i64) -> Sequenced {
        let channel = self.get_or_create(name);
        let mut channel = channel.lock();
        let sequenced = channel.master.sequence(publish, now_ms);
        if let Some(frame) = &sequenced.frame {
            channel.client.deliver(frame);
        }
        sequenced
    }

    /// Attaches a connection and returns the channel's current position: the point
    /// after which the subscriber will receive everything.
    pub fn attach(&self, name: &str, subscriber: Subscriber) -> Position {
        let channel = self.get_or_create(name);
        let mut channel = channel.lock();
        channel.client.attach(subscriber);
        channel.master.position()
    }

    pub fn detach(&self, name: &str, connection_id: &str) {
        if let Some(channel) = self.get(name) {
            channel.lock().client.detach(connection_id);
        }
    }

    /// Reads history. Reading never creates a channel.
    pub fn history(&self, name: &str, query: &HistoryQuery) -> HistoryPage {
        match self.get(name) {
            Some(channel) => channel.lock().master.history(query),
            None => HistoryPage::default(),
        }
    }

    pub fn occupancy(&self, name: &str) -> Occupancy {
        self.get(name)
            .map(|c| c.lock().client.occupancy())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expires history and forgets channels with no attachments and nothing to keep.
    pub fn sweep(&self, now_ms: i64) {
        let mut table = self.table.write();
        table.retain(|_, channel| {
            let mut channel = channel.lock();
            channel.master.expire(now_ms);
            !(channel.client.is_empty() && channel.master.is_empty())
        });
    }

    fn get(&self, name: &str) -> Option<Arc<Mutex<Channel>>> {
        self.table.read().get(name).cloned()
    }

    fn get_or_create(&self, name: &str) -> Arc<Mutex<Channel>> {
        if let Some(channel) = self.get(name) {
            return channel;
        }
        let mut table = self.table.write();
        table
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Channel {
                    master: ChannelMaster::new(name, LOCAL_EPOCH, self.limits.clone()),
                    client: ChannelClient::default(),
                }))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_ably_rules() {
        for good in [
            "a",
            "ns:chan",
            "[meta]channel.lifecycle",
            "[?rewind=1]x",
            "with space",
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ":hell", "[unclosed", "[]x", "[meta]", "new\nline"] {
            assert_eq!(validate_name(bad).unwrap_err().code(), 40010, "{bad:?}");
        }
    }
}
