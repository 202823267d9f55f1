//! Channel homes in the region state machine: a channel is sequenced only in the region
//! the global master names as its home, under the home epoch this node has seen.
//!
//! The state machine does no I/O here either. It asks for what it lacks through
//! [`HomeRequest`]s, which the region task carries to the control plane, and it is told
//! every home it must know of through [`RegionState::set_home`] (the answer to a request,
//! or a change the node's catalog copy followed).
//!
//! **Invariant:** a master sequences a channel only while this node's copy of the
//! catalog names this region as the channel's home, under the epoch the master took the
//! channel with; a home that moves or expires makes the master step down.

use tracing::{debug, info};

use super::msg::ChannelMsg;
use super::{NodeId, RegionState};

/// How long a home request may go unanswered before it is made again (the global
/// master may have had no quorum, or its leader changed).
pub(super) const HOME_RETRY_MS: i64 = 2_000;

/// What the state machine needs from the global master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeRequest {
    /// Learn the channel's home, assigning this region on first use.
    Assign { channel: String },
    /// The channel is in use here: keep its home from expiring.
    Touch { channel: String },
}

/// A channel's home as this node's catalog copy last showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeView {
    pub region: String,
    pub epoch: u64,
    /// The home before a move or a region loss, which hands the channel over.
    pub previous: Option<String>,
}

impl RegionState {
    /// Records the channel's home (`None`: it has none now). A master whose channel is
    /// no longer homed here under its epoch steps down; a takeover waiting for the home
    /// goes on.
    pub fn set_home(&mut self, channel: &str, home: Option<HomeView>) {
        let before = self.homes.get(channel).cloned();
        match home {
            Some(home) => {
                self.home_asked.remove(channel);
                self.homes.insert(channel.to_owned(), home)
            }
            None => self.homes.remove(channel),
        };
        let now = self.homes.get(channel).cloned();
        if before == now {
            return;
        }
        debug!(channel.name = channel, home = ?now, "channel home changed");

        let stale = self
            .masters
            .get(channel)
            .is_some_and(|slot| !self.homed_here(channel, slot.home_epoch));
        if stale {
            info!(channel.name = channel, home = ?now, "channel home moved; stepping down");
            self.step_down(channel);
        }
        let relay_stale = self.relays.get(channel).is_some_and(|relay| {
            now.as_ref()
                .is_none_or(|h| h.region != relay.region || h.epoch != relay.home_epoch)
        });
        if relay_stale {
            info!(channel.name = channel, home = ?now, "channel home moved; relaying stops");
            self.stop_relay(channel);
        }
        self.finish_acquire_if_done(channel);
    }

    /// Replaces every home this node knows (after its catalog copy was replaced).
    pub fn replace_homes(&mut self, homes: impl IntoIterator<Item = (String, HomeView)>) {
        let new: std::collections::HashMap<String, HomeView> = homes.into_iter().collect();
        let mut channels: Vec<String> = self.homes.keys().cloned().collect();
        channels.extend(new.keys().cloned());
        channels.sort();
        channels.dedup();
        for channel in channels {
            let home = new.get(&channel).cloned();
            self.set_home(&channel, home);
        }
    }

    /// What the region task must ask the global master, in order.
    pub fn take_home_requests(&mut self) -> Vec<HomeRequest> {
        std::mem::take(&mut self.home_requests)
    }

    /// Whether this node's view names this region the channel's home under `epoch`.
    pub(super) fn homed_here(&self, channel: &str, epoch: u64) -> bool {
        self.homes
            .get(channel)
            .is_some_and(|home| home.region == self.region && home.epoch == epoch)
    }

    /// Asks for the channel's home unless it is known or was asked for recently.
    pub(super) fn want_home(&mut self, channel: &str) {
        if self.homes.contains_key(channel) {
            return;
        }
        let now = self.now_ms;
        let asked = self.home_asked.get(channel);
        if asked.is_some_and(|at| now - at < HOME_RETRY_MS) {
            return;
        }
        self.home_asked.insert(channel.to_owned(), now);
        self.home_requests.push(HomeRequest::Assign {
            channel: channel.to_owned(),
        });
    }

    /// Keeps the homes of the channels this node sequences from expiring (on ticks),
    /// visiting only the masters whose touch is due.
    pub(super) fn touch_homes(&mut self) {
        let now = self.now_ms;
        let every = self.home_touch_ms;
        for (_, channel) in self.schedule.touches.take_due(now) {
            self.schedule.visits += 1;
            let Some(slot) = self.masters.get_mut(&channel) else {
                continue;
            };
            // Not due: the entry of an earlier master of the channel; this one has its
            // own, queued when it took the channel.
            if now - slot.touched_ms < every {
                continue;
            }
            slot.touched_ms = now;
            self.home_requests.push(HomeRequest::Touch {
                channel: channel.clone(),
            });
            self.schedule_touch(&channel);
        }
    }

    /// Queues a master's next home touch, one period after its last.
    pub(super) fn schedule_touch(&mut self, channel: &str) {
        let Some(slot) = self.masters.get(channel) else {
            return;
        };
        let at = slot.touched_ms.saturating_add(self.home_touch_ms);
        self.schedule.touches.schedule(at, channel.to_owned());
    }

    /// Queues every master's touch again (the period changed; at startup, before any).
    pub(super) fn reschedule_touches(&mut self) {
        self.schedule.touches.clear();
        let channels: Vec<String> = self.masters.keys().cloned().collect();
        for channel in channels {
            self.schedule_touch(&channel);
        }
    }

    /// Refuses the requests a takeover held back because the channel is homed in
    /// another region: no node of this region may sequence it.
    pub(super) fn refuse_homed_elsewhere(
        &mut self,
        channel: &str,
        region: &str,
        queued: Vec<(NodeId, ChannelMsg)>,
    ) {
        debug!(
            channel.name = channel,
            home.region = region,
            "channel homed in another region"
        );
        for (from, _) in queued {
            self.send(
                from,
                ChannelMsg::HomedElsewhere {
                    channel: channel.to_owned(),
                    region: region.to_owned(),
                },
            );
        }
    }
}
