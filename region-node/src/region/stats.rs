//! What the region task reports about itself: `/health`, `/metrics` and the dashboard
//! read it through `Region::stats`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use super::RegionState;
use crate::channels::public_name;

/// How many channels the dashboard ranks per node.
const BUSIEST: usize = 10;

/// How a channel ranks: messages delivered, then attachments, then the name first in
/// alphabetical order (hence reversed).
type Rank<'a> = (u64, usize, Reverse<&'a str>);

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
    /// This node's channels with the most messages delivered locally (empty unless
    /// asked for: `Region::stats_with_busiest`).
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
            busiest: Vec::new(),
        }
    }

    /// The [`BUSIEST`] channels by messages delivered, then attachments, then name.
    /// Only the dashboard asks (the gauges' `stats` every second leave it out: at
    /// 100,000 channels ranking copies of every channel took a quarter of the node's
    /// CPU). It keeps only the leaders while it walks the channels (a heap of
    /// `BUSIEST`) and copies names for those alone.
    pub fn busiest(&self) -> Vec<ChannelActivity> {
        let mut top: BinaryHeap<Reverse<(Rank, &String)>> = BinaryHeap::new();
        for (key, slot) in &self.clients {
            let rank = (
                slot.local.delivered(),
                slot.local.subscribers().len(),
                Reverse(public_name(key)),
            );
            let beaten = top.len() == BUSIEST
                && top
                    .peek()
                    .is_some_and(|Reverse(lowest)| (rank, key) <= *lowest);
            if beaten {
                continue;
            }
            top.push(Reverse((rank, key)));
            if top.len() > BUSIEST {
                top.pop();
            }
        }
        // Ascending order of `Reverse` is the busiest first.
        (top.into_sorted_vec().into_iter())
            .map(
                |Reverse(((delivered, attachments, _), key))| ChannelActivity {
                    app: key.split_once('/').map_or("", |(app, _)| app).to_owned(),
                    channel: public_name(key).to_owned(),
                    attachments,
                    delivered,
                    master: self.masters.contains_key(key),
                },
            )
            .collect()
    }
}
