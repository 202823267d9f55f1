//! Timers only the leader acts on: forgetting the homes of idle channels and,
//! when configured, declaring lost a region that stopped sending heartbeats.
//!
//! Every member runs the task, but only the member that is the leader when a timer
//! fires proposes anything, and it proposes an ordinary command carrying its own clock
//! (`now_ms`): the state machine stays deterministic, and a deposed leader's proposal
//! simply fails to commit. Followers' clocks never matter.
//!
//! A region is declared lost only when all of these hold: the timeout is configured
//! (it is off by default), none of its nodes sent a heartbeat for that long on the
//! leader's clock, this member has itself led for that long (a new leader has not yet
//! heard heartbeats that could not be committed while there was none), and at least
//! one live region is still heard from (when every region is silent, the global master
//! is more likely the one cut off, and re-homing everything would help no one).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::config::{HomesConfig, RegionsConfig};
use crate::state::{Catalog, Command, Outcome};
use crate::store::{Raft, StateReader};

/// What the leader's timers need; built by the server, run by [`LeaderTimers::run`].
pub struct LeaderTimers {
    pub raft: Raft,
    pub reader: StateReader,
    pub homes: HomesConfig,
    pub regions: RegionsConfig,
    /// How long a proposal may wait for the group before the timer gives up until its
    /// next tick.
    pub request_timeout: Duration,
}

/// The term this member leads in, and since when (as first noticed by a tick).
#[derive(Default)]
struct Leading {
    term: Option<u64>,
    since: Option<Instant>,
}

impl LeaderTimers {
    /// Runs until `stopping` turns true.
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        let mut expiry = every(self.homes.idle_expiry_ms, self.homes.expiry_interval_ms);
        let mut silence = every(self.regions.lost_after_ms, self.regions.check_interval_ms);
        let mut leading = Leading::default();
        loop {
            tokio::select! {
                changed = stopping.changed() => {
                    if changed.is_err() || *stopping.borrow() {
                        return;
                    }
                }
                _ = tick(&mut expiry) => {
                    if self.leading_for(&mut leading).is_some() {
                        self.expire_idle_homes().await;
                    }
                }
                _ = tick(&mut silence) => {
                    if let Some(led) = self.leading_for(&mut leading) {
                        self.declare_silent_regions_lost(led).await;
                    }
                }
            }
        }
    }

    /// How long this member has led in its current term, or `None` when it does not.
    fn leading_for(&self, leading: &mut Leading) -> Option<Duration> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            *leading = Leading::default();
            return None;
        }
        if leading.term != Some(metrics.current_term) {
            leading.term = Some(metrics.current_term);
            leading.since = Some(Instant::now());
        }
        leading.since.map(|since| since.elapsed())
    }

    async fn expire_idle_homes(&self) {
        let command = Command::ExpireIdleHomes {
            now_ms: now_ms(),
            idle_ms: self.homes.idle_expiry_ms,
        };
        if let Some(Outcome::Removed { count }) = self.propose(command).await {
            if count > 0 {
                info!(homes.expired = count, "forgot the homes of idle channels");
            }
        }
    }

    async fn declare_silent_regions_lost(&self, led: Duration) {
        let lost_after = self.regions.lost_after_ms;
        if led < Duration::from_millis(lost_after) {
            return;
        }
        let now = now_ms();
        let silent = self
            .reader
            .read(|state| silent_regions(state.catalog(), now, lost_after));
        for region in silent {
            let command = Command::DeclareRegionLost {
                region: region.clone(),
                now_ms: now,
            };
            if let Some(Outcome::Rehomed { channels }) = self.propose(command).await {
                warn!(
                    region.id = %region,
                    channels.rehomed = channels,
                    silent_for_ms = lost_after,
                    "declared a silent region lost"
                );
            }
        }
    }

    /// Commits `command` through the local raft, which only the leader can do. Failures
    /// are left to the next tick.
    async fn propose(&self, command: Command) -> Option<Outcome> {
        let written = tokio::time::timeout(self.request_timeout, self.raft.client_write(command));
        match written.await {
            Ok(Ok(written)) => match written.data.outcome {
                Ok(outcome) => Some(outcome),
                Err(refused) => {
                    debug!(%refused, "a timer's command was refused");
                    None
                }
            },
            Ok(Err(error)) => {
                debug!(%error, "a timer's command was not committed");
                None
            }
            Err(_) => {
                debug!("a timer's command was not committed in time");
                None
            }
        }
    }
}

/// The live regions silent for `lost_after_ms` at `now_ms`, unless every live region
/// is silent (see the module comment).
pub fn silent_regions(catalog: &Catalog, now_ms: u64, lost_after_ms: u64) -> Vec<String> {
    let live: Vec<(&String, bool)> = (catalog.regions())
        .filter(|(_, region)| !region.lost)
        .map(|(name, region)| {
            let silent = region.last_heartbeat_ms.saturating_add(lost_after_ms) <= now_ms;
            (name, silent)
        })
        .collect();
    if live.iter().all(|(_, silent)| *silent) {
        return Vec::new();
    }
    (live.into_iter())
        .filter(|(_, silent)| *silent)
        .map(|(name, _)| name.clone())
        .collect()
}

/// An interval of `period_ms`, or none when the feature it drives is off (`enabled_by`
/// is 0).
fn every(enabled_by: u64, period_ms: u64) -> Option<Interval> {
    if enabled_by == 0 {
        return None;
    }
    let period = Duration::from_millis(period_ms.max(1));
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(interval)
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The leader's clock, in milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    // A clock before 1970 is broken beyond what a timer can fix; 0 proposes nothing
    // harmful (nothing is idle or silent at time 0).
    since_epoch.map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ControlState;

    fn catalog(heartbeats: &[(&str, u64)], lost: &[&str]) -> Catalog {
        let mut state = ControlState::default();
        for (name, at) in heartbeats {
            state.apply(Command::RegisterRegion {
                name: (*name).into(),
                bridges: vec![],
                now_ms: *at,
            });
        }
        for name in lost {
            state.apply(Command::DeclareRegionLost {
                region: (*name).into(),
                now_ms: 1,
            });
        }
        state.catalog().clone()
    }

    #[test]
    fn regions_silent_longer_than_the_timeout_are_named() {
        let catalog = catalog(&[("eu", 1_000), ("us", 9_000), ("ap", 5_000)], &[]);
        assert_eq!(silent_regions(&catalog, 10_000, 5_000), vec!["ap", "eu"]);
        assert_eq!(silent_regions(&catalog, 9_999, 5_000), vec!["eu"]);
    }

    #[test]
    fn nothing_is_named_when_every_live_region_is_silent() {
        let catalog = catalog(&[("eu", 1_000), ("us", 2_000)], &[]);
        assert!(silent_regions(&catalog, 100_000, 5_000).is_empty());
    }

    #[test]
    fn regions_already_lost_are_not_named_again() {
        let catalog = catalog(&[("eu", 1_000), ("us", 9_000), ("ap", 1_000)], &["eu"]);
        assert_eq!(silent_regions(&catalog, 10_000, 5_000), vec!["ap"]);
    }
}
