//! Presence: who is on a channel now.
//!
//! A channel's master keeps its member set, keyed by connectionId and clientId, and
//! sequences every change (ENTER, UPDATE, LEAVE) into the channel's one order like a
//! message, so copies, successors, relays and ChannelClients all rebuild the same set
//! by applying the same entries in the same order. What is not sequenced is who holds
//! each member's connection and when an abruptly lost one must leave: the master keeps
//! that beside the set, and the ChannelClients that hold the connections re-assert it
//! to a successor (see `region/presence.rs`).
//!
//! Plain data and rules here; no clock and no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::{Data, PresenceMessage};

/// Presence actions (spec TP2).
pub mod action {
    pub const ABSENT: i64 = 0;
    pub const PRESENT: i64 = 1;
    pub const ENTER: i64 = 2;
    pub const LEAVE: i64 = 3;
    pub const UPDATE: i64 = 4;
}

/// The node, in its region, whose connection a member belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Holder {
    pub region: String,
    pub node: String,
}

/// What a ChannelClient asks of the channel's master about presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PresenceOp {
    /// Enter, update or leave events of one connection, validated, with the clientId
    /// filled in. `grace_ms` is how long its members outlive an abrupt loss.
    Events {
        holder: Holder,
        grace_ms: u64,
        messages: Vec<PresenceMessage>,
    },
    /// The connection is gone from `holder`: its members leave at `leave_at_ms` (at
    /// once for CLOSE or DETACH), unless it is asserted somewhere after `lost_ms`.
    Gone {
        holder: Holder,
        connection_id: String,
        lost_ms: i64,
        leave_at_ms: i64,
    },
    /// The connection is attached at `holder` (again, after a resume): its members
    /// stay, and `holder` answers for them from now on.
    Here {
        holder: Holder,
        connection_id: String,
        at_ms: i64,
    },
    /// Only these nodes of `region` are alive: members held by its other nodes were
    /// last heard of at `lost_ms` and leave when their grace runs out.
    Alive {
        region: String,
        nodes: Vec<String>,
        lost_ms: i64,
    },
}

/// One member, as the master keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's latest ENTER or UPDATE.
    pub message: PresenceMessage,
    pub holder: Option<Holder>,
    pub grace_ms: u64,
    /// When its connection was last said to be attached (`Here`, on its holder's
    /// clock), so a late `Gone` about an earlier loss on the same node changes
    /// nothing; `i64::MIN` until then.
    pub here_ms: i64,
    /// When the master applied its latest ENTER or UPDATE (the master's clock).
    pub applied_ms: i64,
    /// When it leaves unless its connection is asserted again (wall clock, ms).
    pub leave_at_ms: Option<i64>,
}

/// A channel's members, in a stable order (so SYNC pages and REST pages are stable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Members {
    map: BTreeMap<(String, String), Member>,
}

/// A presence event as the master sequenced it, with who holds its connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub message: PresenceMessage,
    #[serde(default)]
    pub holder: Option<Holder>,
    #[serde(default)]
    pub grace_ms: u64,
}

impl Members {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, connection_id: &str, client_id: &str) -> bool {
        self.map
            .contains_key(&(connection_id.to_owned(), client_id.to_owned()))
    }

    pub fn get(&self, connection_id: &str, client_id: &str) -> Option<&Member> {
        self.map
            .get(&(connection_id.to_owned(), client_id.to_owned()))
    }

    /// Whether `connection_id` has members here.
    pub fn has_connection(&self, connection_id: &str) -> bool {
        self.of_connection(connection_id).next().is_some()
    }

    fn of_connection<'a>(&'a self, connection_id: &'a str) -> impl Iterator<Item = &'a Member> {
        let from = (connection_id.to_owned(), String::new());
        self.map
            .range(from..)
            .take_while(move |((conn, _), _)| conn == connection_id)
            .map(|(_, m)| m)
    }

    /// The current members as SYNC and REST list them: action PRESENT.
    pub fn present(&self) -> Vec<PresenceMessage> {
        self.present_after(None).collect()
    }

    /// The members after the key `(connectionId, clientId)` (all for `None`), in key
    /// order, as PRESENT: a page that continues where the last one ended, whoever
    /// left or entered in between.
    pub fn present_after(
        &self,
        after: Option<&(String, String)>,
    ) -> impl Iterator<Item = PresenceMessage> + '_ {
        use std::ops::Bound;
        let from = match after {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        self.map
            .range((from, Bound::Unbounded))
            .map(|(_, m)| PresenceMessage {
                action: action::PRESENT,
                ..m.message.clone()
            })
    }

    /// Applies one sequenced event: ENTER, UPDATE and PRESENT set the member, LEAVE
    /// removes it.
    pub fn apply(&mut self, entry: &PresenceEntry, now_ms: i64) {
        let message = &entry.message;
        let key = member_key(message);
        if message.action == action::LEAVE {
            self.map.remove(&key);
            return;
        }
        // A member that changes is alive: whatever leave was pending is off.
        let here_ms = self.map.get(&key).map_or(i64::MIN, |m| m.here_ms);
        self.map.insert(
            key,
            Member {
                message: message.clone(),
                holder: entry.holder.clone(),
                grace_ms: entry.grace_ms,
                here_ms,
                applied_ms: now_ms,
                leave_at_ms: None,
            },
        );
    }

    /// Replaces the set with `present` (a SYNC, or a relay's start).
    pub fn replace(&mut self, present: Vec<PresenceMessage>) {
        self.map.clear();
        for message in present {
            let entry = PresenceEntry {
                message,
                holder: None,
                grace_ms: 0,
            };
            self.apply(&entry, 0);
        }
    }

    pub fn restore(&mut self, members: Vec<Member>) {
        self.map = members
            .into_iter()
            .map(|m| (member_key(&m.message), m))
            .collect();
    }

    pub fn snapshot(&self) -> Vec<Member> {
        self.map.values().cloned().collect()
    }

    /// The connection left `holder`: its members leave at `leave_at_ms`, unless the
    /// connection is held elsewhere now, or was said to be here again after it was
    /// lost (a resume on the same node whose report overtook this one).
    pub fn gone(&mut self, holder: &Holder, connection_id: &str, lost_ms: i64, leave_at_ms: i64) {
        for member in self.connection_members_mut(connection_id) {
            if member.holder.as_ref() != Some(holder) || member.here_ms > lost_ms {
                continue;
            }
            let at = member
                .leave_at_ms
                .map_or(leave_at_ms, |t| t.min(leave_at_ms));
            member.leave_at_ms = Some(at);
        }
    }

    /// The connection is attached at `holder`: its members stay.
    pub fn here(&mut self, holder: &Holder, connection_id: &str, at_ms: i64) {
        for member in self.connection_members_mut(connection_id) {
            member.holder = Some(holder.clone());
            member.here_ms = member.here_ms.max(at_ms);
            member.leave_at_ms = None;
        }
    }

    /// Members held by nodes of `region` not in `alive` leave when their grace,
    /// counted from `lost_ms` (or from their last change, if that came later), runs
    /// out. A member re-asserted by a live node has that node as its holder.
    pub fn alive(&mut self, region: &str, alive: &[String], lost_ms: i64) {
        for member in self.map.values_mut() {
            let Some(holder) = &member.holder else {
                continue;
            };
            if holder.region != region || alive.contains(&holder.node) {
                continue;
            }
            let last = lost_ms.max(member.applied_ms);
            let grace = i64::try_from(member.grace_ms).unwrap_or(i64::MAX);
            let at = last.saturating_add(grace);
            member.leave_at_ms = Some(member.leave_at_ms.map_or(at, |t| t.min(at)));
        }
    }

    /// Members whose leave time has come, as the LEAVE events that end them. A
    /// generated LEAVE has no id, so clients compare it by timestamp, which must be
    /// at least the member's last one (protocol.md §1.5).
    pub fn due(&self, now_ms: i64) -> Vec<PresenceMessage> {
        self.map
            .values()
            .filter(|m| m.leave_at_ms.is_some_and(|at| at <= now_ms))
            .map(|m| leave_of(&m.message, now_ms))
            .collect()
    }

    /// The earliest time a member is due to leave, if any member is.
    pub fn next_leave(&self) -> Option<i64> {
        self.map.values().filter_map(|m| m.leave_at_ms).min()
    }

    fn connection_members_mut<'a>(
        &'a mut self,
        connection_id: &'a str,
    ) -> impl Iterator<Item = &'a mut Member> {
        let from = (connection_id.to_owned(), String::new());
        self.map
            .range_mut(from..)
            .take_while(move |((conn, _), _)| conn == connection_id)
            .map(|(_, m)| m)
    }
}

/// The LEAVE the server makes for a member whose connection is gone.
pub fn leave_of(member: &PresenceMessage, now_ms: i64) -> PresenceMessage {
    PresenceMessage {
        id: None,
        action: action::LEAVE,
        timestamp: Some(now_ms.max(member.timestamp.unwrap_or(0))),
        ..member.clone()
    }
}

/// `(connectionId, clientId)`: the member key (Ably's is `clientId:connectionId`).
pub fn member_key(message: &PresenceMessage) -> (String, String) {
    (
        message.connection_id.clone().unwrap_or_default(),
        message.client_id.clone().unwrap_or_default(),
    )
}

/// Validates and normalises a connection's presence events: the action (ENTER, UPDATE
/// or LEAVE), the clientId (the connection's own, or any for a wildcard connection;
/// none at all is 91000), the payload encoding and the size over all of them. The
/// connectionId is the connection's.
pub fn prepare(
    events: Vec<PresenceMessage>,
    own_client_id: Option<&str>,
    connection_id: &str,
    limits: &crate::config::LimitsConfig,
) -> Result<Vec<PresenceMessage>, crate::error::AblyError> {
    use crate::error::AblyError;
    if events.len() > limits.max_messages_per_publish {
        return Err(AblyError::TooManyMessages {
            count: events.len(),
            limit: limits.max_messages_per_publish,
        });
    }
    let mut total = 0;
    events
        .into_iter()
        .map(|mut m| {
            if !matches!(m.action, action::ENTER | action::UPDATE | action::LEAVE) {
                return Err(AblyError::InvalidData(format!(
                    "presence action {} is not enter (2), leave (3) or update (4)",
                    m.action
                )));
            }
            m.client_id = Some(client_id_for(own_client_id, m.client_id.take())?);
            let (data, encoding) =
                crate::protocol::data::normalise(m.data.take(), m.encoding.take())
                    .map_err(|e| AblyError::InvalidData(e.to_string()))?;
            m.data = data;
            m.encoding = encoding;
            m.connection_id = Some(connection_id.to_owned());
            // Ids and times are the master's to give, but for an id this connection
            // was given before: ably-js re-enters its own members with their old ids
            // after every re-attach, and the same id makes that a no-op.
            m.id = m.id.take().filter(|id| is_own_id(id, connection_id));
            m.timestamp = None;

            total += size(&m);
            if total > limits.max_message_size {
                return Err(AblyError::MessageTooLarge {
                    size: total,
                    limit: limits.max_message_size,
                });
            }
            Ok(m)
        })
        .collect()
}

/// Whether `id` has the form `connectionId:msgSerial:index` for this connection.
fn is_own_id(id: &str, connection_id: &str) -> bool {
    let Some(rest) = id
        .strip_prefix(connection_id)
        .and_then(|r| r.strip_prefix(':'))
    else {
        return false;
    };
    let mut parts = rest.split(':');
    let numbers = parts
        .by_ref()
        .take(2)
        .filter(|p| p.parse::<u64>().is_ok())
        .count();
    numbers == 2 && parts.next().is_none()
}

/// The clientId a presence event is for.
fn client_id_for(
    own: Option<&str>,
    given: Option<String>,
) -> Result<String, crate::error::AblyError> {
    use crate::error::AblyError;
    match (own, given) {
        (_, Some(given)) if given == "*" || given.is_empty() => Err(AblyError::InvalidClientId(
            format!("{given:?} cannot be present"),
        )),
        (Some("*"), Some(given)) => Ok(given),
        (Some("*"), None) | (None, None) => Err(AblyError::PresenceWithoutClientId),
        (Some(own), Some(given)) if own != given => Err(AblyError::InvalidClientId(format!(
            "presence clientId {given:?} does not match the connection's {own:?}"
        ))),
        (Some(own), _) => Ok(own.to_owned()),
        (None, Some(given)) => Err(AblyError::InvalidClientId(format!(
            "an anonymous connection cannot act as {given:?}"
        ))),
    }
}

/// The size a presence event counts against the message size limit.
pub fn size(message: &PresenceMessage) -> usize {
    let client_id = message.client_id.as_deref().map_or(0, str::len);
    let data = message.data.as_ref().map_or(0, Data::size);
    let extras = message
        .extras
        .as_ref()
        .map_or(0, |e| serde_json::to_vec(e).map_or(0, |v| v.len()));
    client_id + data + extras
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str) -> Holder {
        Holder {
            region: "r".into(),
            node: node.into(),
        }
    }

    fn event(conn: &str, client: &str, act: i64, ts: i64) -> PresenceEntry {
        PresenceEntry {
            message: PresenceMessage {
                action: act,
                client_id: Some(client.into()),
                connection_id: Some(conn.into()),
                timestamp: Some(ts),
                ..Default::default()
            },
            holder: Some(holder("a")),
            grace_ms: 15_000,
        }
    }

    #[test]
    fn enter_update_and_leave_keep_one_member_per_key() {
        let mut members = Members::default();
        members.apply(&event("c1", "alice", action::ENTER, 1), 1);
        members.apply(&event("c1", "alice", action::UPDATE, 2), 2);
        members.apply(&event("c2", "alice", action::ENTER, 3), 3);
        assert_eq!(members.len(), 2);
        assert!(members
            .present()
            .iter()
            .all(|m| m.action == action::PRESENT));

        members.apply(&event("c1", "alice", action::LEAVE, 4), 4);
        assert_eq!(members.len(), 1);
        assert!(members.contains("c2", "alice"));
    }

    #[test]
    fn a_lost_connection_leaves_after_its_grace_unless_it_is_here_again() {
        let mut members = Members::default();
        members.apply(&event("c1", "alice", action::ENTER, 100), 100);
        members.apply(&event("c2", "bob", action::ENTER, 100), 100);

        members.gone(&holder("a"), "c1", 1_000, 16_000);
        members.gone(&holder("a"), "c2", 1_000, 16_000);
        members.here(&holder("b"), "c2", 2_000);
        assert!(members.due(15_999).is_empty());
        assert_eq!(members.next_leave(), Some(16_000));

        let due = members.due(16_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].client_id.as_deref(), Some("alice"));
        assert_eq!(due[0].action, action::LEAVE);
        assert!(due[0].timestamp >= Some(100));
        assert!(due[0].id.is_none());

        // The old holder's late report does not undo the resume.
        members.gone(&holder("a"), "c2", 1_500, 16_500);
        assert!(members
            .due(20_000)
            .iter()
            .all(|m| m.client_id.as_deref() != Some("bob")));
    }

    #[test]
    fn members_of_a_dead_node_leave_within_their_grace_of_last_contact() {
        let mut members = Members::default();
        members.apply(&event("c1", "alice", action::ENTER, 100), 100);
        members.alive("r", &["b".into()], 3_000);
        assert!(members.due(17_999).is_empty());
        assert_eq!(members.due(18_000).len(), 1);

        let mut others = Members::default();
        others.apply(&event("c1", "alice", action::ENTER, 100), 100);
        others.alive("other-region", &[], 3_000);
        others.alive("r", &["a".into()], 3_000);
        assert!(others.due(i64::MAX).is_empty());
    }
}
