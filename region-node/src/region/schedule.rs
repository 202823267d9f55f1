//! What the region's periodic work visits, so that a tick costs what is due and not
//! what is held.
//!
//! A node may hold a hundred thousand channels of which a handful have anything to do
//! in a given tick. Timed work (history expiry and forgetting idle channels, publish
//! timeouts, home touches, presence leaves) is kept in [`Deadlines`]: a tick takes the
//! entries whose time has come. Work that waits on others (a ChannelClient without its
//! subscription or answers, a master whose copies have not confirmed, a relay without
//! its link) is kept in a [`ChannelSet`] of the channels that may be waiting: a tick
//! visits those, and each visit puts back the ones still waiting.
//!
//! Neither is cleaned when what an entry stands for changes or goes away. Whoever
//! takes an entry checks that it still applies (lazy invalidation): every update stays
//! a single insert, at the price of a stale entry visited once.
//!
//! **Invariant:** every channel with work due in a tick has an entry due by then: a
//! deadline at or before the work's time, or its name in the waiting set.

use std::collections::BTreeSet;

/// Keys by the time (ms) they fall due, earliest first; a key queued twice for the
/// same time is held once. Ordered (not hashed) so simulations replay identically.
pub(super) struct Deadlines<K> {
    queue: BTreeSet<(i64, K)>,
}

impl<K: Ord> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            queue: BTreeSet::new(),
        }
    }
}

impl<K: Ord> Deadlines<K> {
    pub fn schedule(&mut self, at: i64, key: K) {
        self.queue.insert((at, key));
    }

    /// Forgets one entry (when removing it is as cheap as leaving it stale).
    pub fn cancel(&mut self, at: i64, key: K) {
        self.queue.remove(&(at, key));
    }

    /// Takes every entry due at `now`, earliest first.
    pub fn take_due(&mut self, now: i64) -> Vec<(i64, K)> {
        let mut due = Vec::new();
        while self.queue.first().is_some_and(|(at, _)| *at <= now) {
            due.push(self.queue.pop_first().expect("first exists"));
        }
        due
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

/// Channels that may be waiting for something; a superset of those that are.
#[derive(Default)]
pub(super) struct ChannelSet {
    channels: BTreeSet<String>,
}

impl ChannelSet {
    pub fn mark(&mut self, channel: &str) {
        // Looked up first so a channel marked again allocates nothing.
        if !self.channels.contains(channel) {
            self.channels.insert(channel.to_owned());
        }
    }

    /// Takes every channel marked; a visit marks again the ones still waiting.
    pub fn take(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.channels)
    }
}

/// The periodic work's queues, and what the last tick cost.
#[derive(Default)]
pub(super) struct Schedule {
    /// When each master's or copy's history next expires or the channel may be
    /// forgotten (see `MasterSlot::sweep_at`).
    pub sweeps: Deadlines<String>,
    /// When each local publish times out, by request id.
    pub publishes: Deadlines<u64>,
    /// When each master next reports its channel's home in use.
    pub touches: Deadlines<String>,
    /// When members of a master's channel may be due to leave.
    pub leaves: Deadlines<String>,
    /// When a ChannelClient next forgets a gone connection.
    pub gone: Deadlines<String>,
    /// ChannelClients that may wait for a master, a subscription or an answer.
    pub unsettled: ChannelSet,
    /// Masters that may hold publishes their copies have not confirmed.
    pub uncommitted: ChannelSet,
    /// Relays that may have publishes or reads waiting, interest to declare, or no
    /// one left to relay for.
    pub relays: ChannelSet,
    /// Slots (channels, requests) the last tick looked at: what it cost.
    pub visits: usize,
}

/// Lowers a slot's queued time to `due` when that is earlier; returns the time to
/// queue, if any. A slot keeps one entry at its earliest time: a later entry left
/// behind is found stale when taken (its time is not the slot's).
pub(super) fn earlier(queued: &mut Option<i64>, due: Option<i64>) -> Option<i64> {
    let at = due?;
    if queued.is_some_and(|q| q <= at) {
        return None;
    }
    *queued = Some(at);
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_due_in_time_order_and_once() {
        let mut deadlines = Deadlines::default();
        deadlines.schedule(30, "c");
        deadlines.schedule(10, "a");
        deadlines.schedule(10, "a");
        deadlines.schedule(20, "b");

        assert!(deadlines.take_due(9).is_empty());
        assert_eq!(deadlines.take_due(20), [(10, "a"), (20, "b")]);
        deadlines.cancel(30, "c");
        assert!(deadlines.take_due(i64::MAX).is_empty());
    }

    #[test]
    fn a_slot_is_queued_again_only_for_an_earlier_time() {
        let mut queued = None;
        assert_eq!(earlier(&mut queued, Some(50)), Some(50));
        assert_eq!(earlier(&mut queued, Some(60)), None);
        assert_eq!(earlier(&mut queued, None), None);
        assert_eq!(earlier(&mut queued, Some(40)), Some(40));
        assert_eq!(queued, Some(40));
    }
}
