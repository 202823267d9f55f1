//! Handing a channel from its previous home to its new one, in the region state
//! machine.
//!
//! When an operator moves a channel's home, or declares its region lost, the global
//! master records the new home with a higher epoch and the region it came from. The
//! new home's master does not start sequencing on its own: it first asks the previous
//! home over the bridge, which answers only once its own view shows the move (its
//! master has stepped down, so it no longer acknowledges anything), with the state it
//! held. The new master continues from there under its higher epoch: the same order,
//! nothing lost, no message applied twice (the remembered ids travel too).
//!
//! A previous home that cannot be reached (a lost region) cannot answer; the new home
//! waits out the previous home's sequencing lease (see `[global] lease_ms`), after which
//! a previous home cut off from the global master has stopped on its own, then proceeds
//! with what its own region holds, and says so in the log.

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::msg::ChannelMsg;
use super::relay::BridgeOut;
use super::{HomeView, NodeId, RegionState};
use crate::channel_master::Snapshot;

/// Default for [`RegionState::set_handoff_wait_ms`] (the default lease plus a margin).
pub(super) const DEFAULT_HANDOFF_WAIT_MS: i64 = 17_000;
/// How often the request is repeated while unanswered (links can be replaced).
const HANDOFF_RESEND_MS: i64 = 1_000;
/// How long the previous home's side keeps an unanswered state request.
const HANDOFF_REQUEST_TTL_MS: i64 = 10_000;

/// Where a takeover stands with the previous home's handover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    NotAsked,
    Asked {
        req: u64,
        since_ms: i64,
        sent_ms: i64,
    },
    Done,
}

/// A state request on the previous home's side, waiting for its master's node.
pub(super) struct HandoffWait {
    reply: oneshot::Sender<Result<Option<Snapshot>, ()>>,
    since_ms: i64,
}

impl RegionState {
    /// Whether the takeover of `channel`, homed here now, must still wait for the
    /// previous home to hand it over; asks (again) when due.
    pub(super) fn handover_pending(&mut self, channel: &str, home: &HomeView) -> bool {
        let Some(previous) = home.previous.clone().filter(|p| *p != self.region) else {
            return false;
        };
        if self.bridges.is_none() {
            return false;
        }
        let now = self.now_ms;
        let req = self.next_req();
        let acquire = self.acquiring.get_mut(channel).expect("caller checked");
        // Already sequenced under this home (a failover inside the new home): this
        // region's copies hold everything.
        let sequenced_here = acquire.max_epoch >= home.epoch
            || acquire
                .best
                .as_ref()
                .is_some_and(|b| b.last.epoch >= home.epoch);
        if sequenced_here {
            return false;
        }
        let ask = match acquire.handover.clone() {
            Handover::Done => return false,
            Handover::Asked { since_ms, .. } if now - since_ms > self.handoff_wait_ms => {
                warn!(channel.name = channel, home.previous = %previous, "previous home did not hand over in time; continuing from this region's state");
                acquire.handover = Handover::Done;
                return false;
            }
            Handover::Asked {
                req,
                since_ms,
                sent_ms,
            } => {
                let due = now - sent_ms >= HANDOFF_RESEND_MS;
                if due {
                    acquire.handover = Handover::Asked {
                        req,
                        since_ms,
                        sent_ms: now,
                    };
                }
                due.then_some(req)
            }
            Handover::NotAsked => {
                acquire.handover = Handover::Asked {
                    req,
                    since_ms: now,
                    sent_ms: now,
                };
                Some(req)
            }
        };
        if let Some(req) = ask {
            self.bridge_out.push(BridgeOut::Handoff {
                region: previous,
                channel: channel.to_owned(),
                req,
                epoch: home.epoch,
            });
        }
        true
    }

    /// The previous home handed the channel over: its state joins what the takeover
    /// heard from this region's peers, and the takeover completes if nothing else
    /// holds it back.
    pub(super) fn on_handed_over(&mut self, req: u64, state: Option<Snapshot>) {
        let found = (self.acquiring.iter_mut()).find(|(_, acquire)| {
            matches!(acquire.handover, Handover::Asked { req: asked, .. } if asked == req)
        });
        let Some((channel, acquire)) = found else {
            return;
        };
        let channel = channel.clone();
        if let Some(state) = state {
            acquire.max_epoch = acquire.max_epoch.max(state.last.epoch);
            if acquire.best.as_ref().is_none_or(|b| state.last > b.last) {
                acquire.best = Some(state);
            }
        }
        acquire.handover = Handover::Done;
        info!(channel.name = %channel, "previous home handed the channel over");
        self.finish_acquire_if_done(&channel);
    }

    /// On the previous home: asks the node that mastered `channel` here for its state,
    /// once that node's view shows the move to a home under `epoch`.
    pub fn handoff(
        &mut self,
        channel: &str,
        epoch: u64,
        reply: oneshot::Sender<Result<Option<Snapshot>, ()>>,
    ) {
        let Some(owner) = self.ring.owner(channel).map(str::to_owned) else {
            let _ = reply.send(Err(()));
            return;
        };
        let req = self.next_req();
        let wait = HandoffWait {
            reply,
            since_ms: self.now_ms,
        };
        self.handoffs.insert(req, wait);
        let msg = ChannelMsg::HandoffRequest {
            channel: channel.to_owned(),
            req,
            epoch,
        };
        self.send(owner, msg);
    }

    pub(super) fn on_handoff_request(&mut self, from: NodeId, channel: &str, req: u64, epoch: u64) {
        let moved = self.homes.get(channel).is_some_and(|h| h.epoch >= epoch);
        // A takeover in progress holds the state it took from the copy here (it goes
        // back to being a copy when the takeover finds the channel homed elsewhere):
        // answer once it has.
        let settled = !self.masters.contains_key(channel) && !self.acquiring.contains_key(channel);
        let ready = moved && settled;
        let state = ready
            .then(|| self.replicas.get(channel).map(|r| r.core.snapshot()))
            .flatten();
        self.send(from, ChannelMsg::HandoffState { req, ready, state });
    }

    pub(super) fn on_handoff_state(&mut self, req: u64, ready: bool, state: Option<Snapshot>) {
        if let Some(wait) = self.handoffs.remove(&req) {
            let _ = wait.reply.send(if ready { Ok(state) } else { Err(()) });
        }
    }

    /// Forgets state requests nobody answered (their asker gave up long ago). There
    /// are only as many as home moves in progress.
    pub(super) fn expire_handoffs(&mut self) {
        self.schedule.visits += self.handoffs.len();
        let now = self.now_ms;
        self.handoffs
            .retain(|_, wait| now - wait.since_ms <= HANDOFF_REQUEST_TTL_MS);
    }
}
