//! Presence in the region state machine.
//!
//! Masters sequence presence events like messages (see `crate::presence`) and keep,
//! beside the member set, who holds each member's connection and when a lost one
//! leaves. ChannelClients keep a copy of the set, built from the same entries, to
//! SYNC their attachments; they tell the master when a local connection with members
//! is gone (at once for CLOSE or DETACH, after its grace when lost) and when one is
//! here (again, after a resume), and they repeat both to every new master, so a
//! failover keeps the leave times that were not replicated.
//!
//! **Invariant:** a member leaves only by a LEAVE entry in the channel's order, so
//! every region and node sees the same set after the same position.
//! **Invariant:** a member's grace counts from its connection's last contact: the
//! last frame (reported by its node), or for a dead node the moment the mesh last
//! heard it (the failure timeout before the view dropped it).

use super::client::ClientSlot;
use super::RegionState;
use crate::channel_master::Publish;
use crate::channels::public_name;
use crate::outbox::Outbox;
use crate::position::Position;
use crate::presence::{Holder, Members, PresenceOp};
use crate::protocol::{action, codec, ProtocolMessage};

/// Members per SYNC page (protocol.md §5.4).
const SYNC_PAGE: usize = 100;

/// How long a ChannelClient keeps telling new masters about a gone connection after
/// its members were due to leave.
const GONE_KEPT_MS: i64 = 5_000;

/// When a detached connection's presence members leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// CLOSE or DETACH: at once.
    Now,
    /// The transport was lost: `grace_ms` after the connection's last frame, unless
    /// it resumes in time on any node.
    After { last_contact_ms: i64, grace_ms: u64 },
}

#[derive(Debug, Clone)]
pub(super) struct PresenceSettings {
    pub max_members: usize,
    /// The mesh's failure timeout: a dead node was last heard this long before its
    /// death was noticed.
    pub detect_ms: i64,
    /// Regions the global master stopped hearing from, and when it last did.
    pub silent_regions: Vec<(String, i64)>,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            max_members: 20_000,
            detect_ms: 3_000,
            silent_regions: Vec::new(),
        }
    }
}

/// A local connection with members that is gone, as its ChannelClient remembers it.
#[derive(Debug, Clone)]
pub(super) struct GoneConn {
    pub connection_id: String,
    pub lost_ms: i64,
    pub leave_at_ms: i64,
}

impl RegionState {
    pub fn set_presence(&mut self, max_members: usize, detect_ms: i64) {
        self.presence.max_members = max_members;
        self.presence.detect_ms = detect_ms;
    }

    /// Regions without a lease (see `ControlPlane::silent_regions`): their nodes sent
    /// their clients away, so the members they held leave here as if their nodes had
    /// died when the region was last heard from.
    ///
    /// Applied to every master when the list changes (rare), and from then on to each
    /// master whose members change (see `presence_changed`), not on every tick.
    pub fn set_silent_regions(&mut self, silent: Vec<(String, i64)>) {
        if silent == self.presence.silent_regions {
            return;
        }
        self.presence.silent_regions = silent;
        let masters: Vec<String> = self.masters.keys().cloned().collect();
        for channel in masters {
            self.presence_changed(&channel);
        }
    }

    fn holder(&self) -> Holder {
        Holder {
            region: self.region.clone(),
            node: self.me.clone(),
        }
    }

    /// The master's part: events are sequenced; reports of connections gone and here,
    /// and of the live nodes of a region, change only who holds members and when they
    /// leave, and are answered at once.
    pub(super) fn sequence_presence(
        &mut self,
        from: String,
        channel: &str,
        req: u64,
        mut publish: Publish,
    ) {
        let now = self.now_ms;
        let max = self.presence.max_members;
        let op = publish.presence.take().expect("checked by caller");
        if !matches!(op, PresenceOp::Events { .. }) {
            self.copy_presence_meta(channel, &op);
        }
        let slot = self.masters.get_mut(channel).expect("checked by caller");
        let answer = match op {
            PresenceOp::Events {
                holder,
                grace_ms,
                messages,
            } => {
                let after = slot.core.position();
                match (slot.core).sequence_presence(&publish, &holder, grace_ms, messages, max, now)
                {
                    Ok(sequenced) => {
                        self.queue_sequenced(from, channel, req, after, sequenced);
                        return self.presence_changed(channel);
                    }
                    Err(error) => Err(error.to_info()),
                }
            }
            PresenceOp::Gone {
                holder,
                connection_id,
                lost_ms,
                leave_at_ms,
            } => {
                (slot.core.members_mut()).gone(&holder, &connection_id, lost_ms, leave_at_ms);
                Ok(Vec::new())
            }
            PresenceOp::Here {
                holder,
                connection_id,
                at_ms,
            } => {
                slot.core.members_mut().here(&holder, &connection_id, at_ms);
                Ok(Vec::new())
            }
            PresenceOp::Alive {
                region,
                nodes,
                lost_ms,
            } => {
                slot.core.members_mut().alive(&region, &nodes, lost_ms);
                Ok(Vec::new())
            }
        };
        self.send(
            from,
            super::msg::ChannelMsg::Published {
                req,
                result: answer,
            },
        );
        self.leave_due(channel);
        self.presence_changed(channel);
    }

    /// Sends a report that changed who holds members, or when they leave, to the
    /// channel's copy holders, which apply it as the master did.
    fn copy_presence_meta(&mut self, channel: &str, op: &PresenceOp) {
        let Some(slot) = self.masters.get(channel) else {
            return;
        };
        let epoch = slot.core.epoch();
        for copy in slot.copies.clone() {
            let msg = super::msg::ChannelMsg::PresenceMeta {
                channel: channel.to_owned(),
                epoch,
                op: op.clone(),
            };
            self.send(copy, msg);
        }
    }

    /// A copy holder applies its master's presence report to its copy, so that a
    /// successor built from it has the leave times and holders the master had.
    pub(super) fn on_presence_meta(
        &mut self,
        from: &str,
        channel: &str,
        epoch: u64,
        op: PresenceOp,
    ) {
        if self.ring.owner(channel) != Some(from) {
            return;
        }
        let Some(replica) = self.replicas.get_mut(channel) else {
            return;
        };
        if replica.epoch > epoch {
            return;
        }
        let members = replica.core.members_mut();
        match op {
            PresenceOp::Gone {
                holder,
                connection_id,
                lost_ms,
                leave_at_ms,
            } => members.gone(&holder, &connection_id, lost_ms, leave_at_ms),
            PresenceOp::Here {
                holder,
                connection_id,
                at_ms,
            } => members.here(&holder, &connection_id, at_ms),
            PresenceOp::Alive {
                region,
                nodes,
                lost_ms,
            } => members.alive(&region, &nodes, lost_ms),
            PresenceOp::Events { .. } => {}
        }
    }

    /// Members held by nodes of this region that are not alive any more leave once
    /// their grace, counted from when the mesh last heard the node, runs out.
    pub(super) fn mark_lost_holders(&mut self, channel: &str) {
        let lost_ms = self.now_ms - self.presence.detect_ms;
        let alive: Vec<String> = self.live.iter().cloned().collect();
        if let Some(slot) = self.masters.get_mut(channel) {
            (slot.core.members_mut()).alive(&self.region, &alive, lost_ms);
        }
    }

    /// After the members of a master's channel, or who holds them, changed: members
    /// held in silent regions get their leave times, and the earliest leave is queued.
    pub(super) fn presence_changed(&mut self, channel: &str) {
        self.leave_silent_regions(channel);
        self.schedule_leaves(channel);
    }

    /// Queues the master's earliest member leave. Earlier entries for leaves that were
    /// called off (the connection came back) are found stale when taken.
    fn schedule_leaves(&mut self, channel: &str) {
        let next = (self.masters.get(channel)).and_then(|slot| slot.core.members().next_leave());
        if let Some(at) = next {
            self.schedule.leaves.schedule(at, channel.to_owned());
        }
    }

    /// Members held in regions the global master no longer hears from leave their
    /// grace after it last did.
    fn leave_silent_regions(&mut self, channel: &str) {
        let Some(slot) = self.masters.get_mut(channel) else {
            return;
        };
        for (region, heard_ms) in &self.presence.silent_regions {
            slot.core.members_mut().alive(region, &[], *heard_ms);
        }
    }

    /// Sequences the LEAVE of every member whose time has come.
    fn leave_due(&mut self, channel: &str) {
        let now = self.now_ms;
        let Some(slot) = self.masters.get_mut(channel) else {
            return;
        };
        let due = slot.core.members().due(now);
        if due.is_empty() {
            return;
        }
        let after = slot.core.position();
        let sequenced = slot.core.sequence_leaves(due, now);
        let me = self.me.clone();
        self.queue_sequenced(me, channel, 0, after, sequenced);
    }

    /// After a view change: masters learn which holders died, and relays tell each
    /// channel's home which of this region's nodes are alive.
    pub(super) fn on_view_presence(&mut self) {
        let masters: Vec<String> = self.masters.keys().cloned().collect();
        for channel in masters {
            self.mark_lost_holders(&channel);
            self.schedule_leaves(&channel);
        }
        let relays: Vec<String> = self.relays.keys().cloned().collect();
        for channel in relays {
            self.report_alive(&channel);
        }
    }

    /// A relay tells the home which of this region's nodes are alive, through this
    /// node's ChannelClient like any presence report (so it is repeated until the
    /// home answers).
    pub(super) fn report_alive(&mut self, channel: &str) {
        let op = PresenceOp::Alive {
            region: self.region.clone(),
            nodes: self.live.iter().cloned().collect(),
            lost_ms: self.now_ms - self.presence.detect_ms,
        };
        self.send_presence_op(channel, op);
    }

    /// Periodic presence work: members whose grace ran out leave; ChannelClients
    /// forget connections whose members have had time to leave. Both visit only the
    /// channels with a leave, or a gone connection to forget, due.
    pub(super) fn tick_presence(&mut self) {
        let now = self.now_ms;
        for (_, channel) in self.schedule.leaves.take_due(now) {
            self.schedule.visits += 1;
            self.leave_due(&channel);
            self.schedule_leaves(&channel);
        }
        for (_, channel) in self.schedule.gone.take_due(now) {
            self.schedule.visits += 1;
            let Some(slot) = self.clients.get_mut(&channel) else {
                continue;
            };
            let before = slot.gone.len();
            slot.gone.retain(|g| gone_until(g) > now);
            if slot.gone.len() < before {
                self.drop_client_if_idle(&channel);
            }
        }
    }

    /// The ChannelClient's part, when a local connection detaches: if it has (or may
    /// have) members, the master is told when they leave.
    pub(super) fn presence_detached(&mut self, channel: &str, connection_id: &str, leave: Leave) {
        let now = self.now_ms;
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        let had = slot.presence_conns.remove(connection_id);
        if !had && !slot.members.has_connection(connection_id) {
            return;
        }
        let (lost_ms, leave_at_ms) = match leave {
            Leave::Now => (now, now),
            Leave::After {
                last_contact_ms,
                grace_ms,
            } => (
                last_contact_ms,
                last_contact_ms.saturating_add(i64::try_from(grace_ms).unwrap_or(i64::MAX)),
            ),
        };
        let gone = GoneConn {
            connection_id: connection_id.to_owned(),
            lost_ms,
            leave_at_ms,
        };
        slot.gone.retain(|g| g.connection_id != connection_id);
        slot.gone.push(gone.clone());
        (self.schedule.gone).schedule(gone_until(&gone), channel.to_owned());
        let op = PresenceOp::Gone {
            holder: self.holder(),
            connection_id: gone.connection_id,
            lost_ms,
            leave_at_ms,
        };
        self.send_presence_op(channel, op);
    }

    /// The ChannelClient's part, when a local connection is admitted: if it has
    /// members (it resumed here), this node answers for them from now on.
    pub(super) fn presence_admitted(&mut self, channel: &str, connection_id: &str) {
        let Some(slot) = self.clients.get_mut(channel) else {
            return;
        };
        let was_gone = slot.gone.iter().any(|g| g.connection_id == connection_id);
        if !was_gone && !slot.members.has_connection(connection_id) {
            return;
        }
        slot.gone.retain(|g| g.connection_id != connection_id);
        slot.presence_conns.insert(connection_id.to_owned());
        let op = PresenceOp::Here {
            holder: self.holder(),
            connection_id: connection_id.to_owned(),
            at_ms: self.now_ms,
        };
        self.send_presence_op(channel, op);
    }

    /// Tells a new master what the last one knew only from this node: which local
    /// connections hold members, and which are gone and when their members leave.
    pub(super) fn reassert_presence(&mut self, channel: &str) {
        let now = self.now_ms;
        let holder = self.holder();
        let Some(slot) = self.clients.get(channel) else {
            return;
        };
        let mut ops: Vec<PresenceOp> = (slot.local.subscribers().iter())
            .map(|s| s.outbox.connection_id.to_string())
            .filter(|id| slot.presence_conns.contains(id) || slot.members.has_connection(id))
            .map(|connection_id| PresenceOp::Here {
                holder: holder.clone(),
                connection_id,
                at_ms: now,
            })
            .collect();
        ops.extend(slot.gone.iter().map(|g| PresenceOp::Gone {
            holder: holder.clone(),
            connection_id: g.connection_id.clone(),
            lost_ms: g.lost_ms,
            leave_at_ms: g.leave_at_ms,
        }));
        for op in ops {
            self.send_presence_op(channel, op);
        }
    }

    /// Queues a presence report like a publish (resent until a master answers); no
    /// one waits for the answer.
    fn send_presence_op(&mut self, channel: &str, op: PresenceOp) {
        let req = self.next_req();
        let publish = Publish::presence(op, format!("{}:presence:{req}", self.me), None);
        let (reply, _) = tokio::sync::oneshot::channel();
        self.publish(channel, publish, reply);
    }

    /// A client asked for the members again: a full SYNC to that attachment.
    pub fn sync(&mut self, channel: &str, connection_id: &str) {
        let Some(slot) = self.clients.get(channel) else {
            return;
        };
        let position = slot.last.unwrap_or_default();
        let found =
            (slot.local.subscribers().iter()).find(|s| &*s.outbox.connection_id == connection_id);
        if let Some(sub) = found {
            send_sync(&sub.outbox, public_name(channel), &slot.members, position);
        }
    }
}

/// When a ChannelClient stops telling new masters about a gone connection.
fn gone_until(gone: &GoneConn) -> i64 {
    gone.leave_at_ms.saturating_add(GONE_KEPT_MS)
}

impl ClientSlot {
    /// Keeps the member copy in step with a delivered frame.
    pub(super) fn apply_presence(&mut self, frame: &ProtocolMessage, now_ms: i64) {
        if frame.action != action::PRESENCE {
            return;
        }
        for message in frame.presence.iter().flatten() {
            let entry = crate::presence::PresenceEntry {
                message: message.clone(),
                holder: None,
                grace_ms: 0,
            };
            self.members.apply(&entry, now_ms);
        }
    }
}

/// The channel's members to one attachment, in pages of at most 100, each naming the
/// sync (`<syncId>:<cursor>`); the last page's cursor is empty.
pub(super) fn send_sync(outbox: &Outbox, channel: &str, members: &Members, at: Position) {
    let present = members.present();
    let sync_id = at.to_string();
    let pages: Vec<&[crate::protocol::PresenceMessage]> = if present.is_empty() {
        vec![&[]]
    } else {
        present.chunks(SYNC_PAGE).collect()
    };
    let count = pages.len();
    for (index, page) in pages.into_iter().enumerate() {
        let cursor = if index + 1 == count {
            String::new()
        } else {
            ((index + 1) * SYNC_PAGE).to_string()
        };
        let frame = ProtocolMessage {
            channel_serial: Some(format!("{sync_id}:{cursor}")),
            presence: Some(page.to_vec()),
            ..ProtocolMessage::for_channel(action::SYNC, channel)
        };
        outbox.send_frame(codec::encode(&frame, outbox.format));
    }
}
