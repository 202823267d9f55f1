//! What travels inside the Control API's opaque byte fields, and how it is encoded.
//!
//! Every payload is MessagePack with field names (`rmp_serde::to_vec_named`), so a
//! newer member or client that adds optional fields still reads an older one's bytes:
//!
//! | RPC | request payload | reply payload |
//! |---|---|---|
//! | `Control.Write` | [`Command`] | [`Response`] (empty when `leader_hint` redirects) |
//! | `Control.Read` | [`ReadRequest`] | [`ReadReply`] (empty when `leader_hint` redirects) |
//! | `Control.Watch` | — | each `WatchEvent.change` is a [`Change`], or a [`Catalog`] when `snapshot` is set |
//! | `Control.ChangeMembers` | [`MembershipChange`] | [`MembershipReply`] (empty when `leader_hint` redirects) |
//! | `Raft.*` | openraft's request | `Result<openraft response, RaftError>` |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::state::{App, Catalog, Change, Home};
use crate::store::NodeId;

// Re-exported so clients name every payload type through this module.
pub use crate::state::{Command, Response};

/// A payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: rmp_serde::encode::Error,
    },
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        source: rmp_serde::decode::Error,
    },
}

/// Encodes a payload as MessagePack with field names.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|source| CodecError::Encode { what, source })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|source| CodecError::Decode { what, source })
}

/// The payload of `Control.Read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub query: Query,
    #[serde(default)]
    pub consistency: Consistency,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Answered by the leader once it confirmed its leadership with a quorum and applied
    /// everything committed before the read: no acknowledged write is missing. A
    /// follower redirects with `leader_hint`.
    #[default]
    Linearizable,
    /// Answered from this member's applied state, whatever its role: possibly behind the
    /// leader, never ahead of what the group committed. Operators and tests use it to
    /// see what one member holds.
    Local,
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// The whole catalog.
    Catalog,
    /// One channel's home (`appId/name`), without assigning one.
    Home { channel: String },
    /// One app.
    App { app_id: String },
}

/// The payload of a `Control.Read` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReply {
    /// The catalog version the answer was read at.
    pub version: u64,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Catalog(Catalog),
    Home(Option<Home>),
    App(Option<App>),
}

impl Query {
    /// Answers from a catalog.
    pub fn answer(&self, catalog: &Catalog) -> Answer {
        match self {
            Query::Catalog => Answer::Catalog(catalog.clone()),
            Query::Home { channel } => Answer::Home(catalog.home(channel).cloned()),
            Query::App { app_id } => Answer::App(catalog.app(app_id).cloned()),
        }
    }
}

/// The payload of `Control.ChangeMembers`: an operator's change to the raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a member as a learner, waits until it has caught up with the log, then
    /// promotes it to voter. Repeating it after a partial failure finishes the job.
    Add { id: NodeId, raft_addr: String },
    /// Removes a voter or a learner from the group.
    Remove { id: NodeId },
}

/// The payload of a `Control.ChangeMembers` reply: the membership once the change is
/// committed, raft addresses by member id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReply {
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
}

/// One event of the watch stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// Replace the copy with this catalog.
    Snapshot(Catalog),
    /// Apply this change (`Catalog::apply_change`).
    Change(Change),
}

impl WatchItem {
    pub fn decode(event: &starling_proto::global::WatchEvent) -> Result<Self, CodecError> {
        if event.snapshot {
            Ok(WatchItem::Snapshot(decode("catalog", &event.change)?))
        } else {
            Ok(WatchItem::Change(decode("change", &event.change)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_with_field_names() {
        let request = ReadRequest {
            query: Query::Home {
                channel: "app/chat".into(),
            },
            consistency: Consistency::Local,
        };
        let bytes = encode("read", &request).unwrap();
        // Named encoding: the field names are in the bytes.
        assert!(bytes.windows(7).any(|w| w == b"channel"));
        assert_eq!(decode::<ReadRequest>("read", &bytes).unwrap(), request);

        let command = Command::RegisterRegion {
            name: "eu".into(),
            bridges: vec![],
            now_ms: 1,
        };
        let bytes = encode("command", &command).unwrap();
        assert_eq!(decode::<Command>("command", &bytes).unwrap(), command);
    }

    #[test]
    fn a_batch_of_homes_round_trips_with_each_channels_answer() {
        use crate::state::{CommandError, HomeAnswer, Outcome};

        let home = Home {
            region: "eu".into(),
            epoch: 7,
            last_used_ms: 9,
            previous_region: None,
        };
        let response = Response {
            version: 3,
            outcome: Ok(Outcome::Homes {
                answers: vec![
                    HomeAnswer {
                        channel: "app/a".into(),
                        home: Ok(home),
                        assigned: true,
                    },
                    HomeAnswer {
                        channel: "bad".into(),
                        home: Err(CommandError::InvalidChannel("bad".into())),
                        assigned: false,
                    },
                ],
            }),
        };

        let bytes = encode("response", &response).unwrap();

        assert_eq!(decode::<Response>("response", &bytes).unwrap(), response);
    }
}
