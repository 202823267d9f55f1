//! What the region task reports about itself: `/health`, `/metrics` and the dashboard
//! read it through `Region::stats`.

use serde::{Deserialize, Serialize};

use super::RegionState;
use crate::channels::public_name;

/// How many channels the dashboard ranks per node.
const BUSIEST: usize = 10;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegionStats {
    pub channels: usize,
    pub masters: usize,
    /// Channels homed in other regions that this node relays.
    pub relays: usize,
    pub live_nodes: usize,
    pub known_nodes: usize,
    pub quorum: bool,
    pub lease: bool,
    pub settled: bool,
    /// Attachments of this node's connections, over every channel.
    pub attachments: usize,
    /// Remote regions this node's bridge links reach now.
    pub links_up: Vec<String>,
    /// Publishes forwarded to remote homes and not yet answered.
    pub bridge_backlog: usize,
    /// This node's channels with the most messages delivered locally.
    pub busiest: Vec<ChannelActivity>,
}

/// One channel as the dashboard ranks it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelActivity {
    pub app: String,
    pub channel: String,
    pub attachments: usize,
    pub delivered: u64,
    /// Whether this node sequences the channel.
    pub master: bool,
}

impl RegionState {
    pub fn stats(&self) -> RegionStats {
        RegionStats {
            channels: self.channel_count(),
            masters: self.masters_count(),
            relays: self.relays.len(),
            live_nodes: self.live.len(),
            known_nodes: self.known,
            quorum: self.has_quorum(),
            lease: self.lease,
            settled: self.settled,
            attachments: self
                .clients
                .values()
                .map(|c| c.local.subscribers().len())
                .sum(),
            links_up: self.links_up.iter().cloned().collect(),
            bridge_backlog: self.relays.values().map(|r| r.forwarded.len()).sum(),
            busiest: self.busiest(),
        }
    }

    fn busiest(&self) -> Vec<ChannelActivity> {
        let mut channels: Vec<ChannelActivity> = self
            .clients
            .iter()
            .map(|(key, slot)| ChannelActivity {
                app: key.split_once('/').map_or("", |(app, _)| app).to_owned(),
                channel: public_name(key).to_owned(),
                attachments: slot.local.subscribers().len(),
                delivered: slot.local.delivered(),
                master: self.masters.contains_key(key),
            })
            .collect();
        channels.sort_by(|a, b| {
            (b.delivered, b.attachments, &a.channel).cmp(&(a.delivered, a.attachments, &b.channel))
        });
        channels.truncate(BUSIEST);
        channels
    }
}
