//! What ChannelClients, ChannelMasters and copy holders say to each other over the
//! mesh. A message to the node itself takes the same path without touching a socket.

use serde::{Deserialize, Serialize};

use crate::channel_master::{Entry, HistoryPage, HistoryQuery, Publish, Snapshot};
use crate::position::Position;
use crate::protocol::{ErrorInfo, PresenceMessage, ProtocolMessage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Each message is moved once per hop; boxing the big variants would cost an
// allocation per message on the publish path to save a memcpy.
#[allow(clippy::large_enum_variant)]
pub enum ChannelMsg {
    /// Client → master: send me this channel's frames, and what I missed after `from`.
    Subscribe {
        channel: String,
        from: Option<Position>,
    },
    /// Client → master: this node has no attachments left.
    Unsubscribe { channel: String },
    /// Client → master: sequence this publish.
    Publish {
        channel: String,
        req: u64,
        publish: Publish,
    },
    /// Any node → master: read history.
    History {
        channel: String,
        req: u64,
        query: HistoryQuery,
    },

    /// Master → client: subscribed at `position`; `missed` holds what came after the
    /// requested position, or `lost` says retention no longer reaches back that far.
    Subscribed {
        channel: String,
        position: Position,
        missed: Vec<Entry>,
        lost: bool,
        /// The channel's members as of `position`.
        #[serde(default)]
        members: Vec<PresenceMessage>,
    },
    /// Master → subscribed clients: a committed frame, the last position it holds,
    /// and the position of the frame committed before it (to detect a lost frame).
    Sequenced {
        after: Position,
        channel: String,
        position: Position,
        frame: ProtocolMessage,
    },
    /// Master → publisher's node: the outcome of a publish.
    Published {
        req: u64,
        result: Result<Vec<Option<String>>, ErrorInfo>,
    },
    HistoryPage {
        req: u64,
        result: Result<HistoryPage, ErrorInfo>,
    },
    /// The receiver is not (yet) this channel's master in the sender's view; retry.
    NotMaster { channel: String },
    /// Master → requester: the channel is homed in another region, so no node of this
    /// region sequences it or serves its history.
    HomedElsewhere { channel: String, region: String },

    /// Master → copy holder: the entries that follow position `after`, or the whole
    /// state when `snapshot` is set. A copy that does not hold `after` applies nothing
    /// and reports where it stands, and the master sends it the whole state.
    Replicate {
        after: Position,
        channel: String,
        epoch: u64,
        entries: Vec<Entry>,
        snapshot: Option<Snapshot>,
    },
    /// Copy holder → master: I hold everything up to `upto`.
    Replicated {
        channel: String,
        epoch: u64,
        upto: Position,
    },
    /// Copy holder → master: a master with a higher epoch exists; stop sequencing.
    Fenced { channel: String, epoch: u64 },

    /// Any node of a channel's previous home → the node that mastered it there: once
    /// your view shows the home moved under `epoch`, what do you hold of it?
    HandoffRequest {
        channel: String,
        req: u64,
        epoch: u64,
    },
    /// Reply: `ready` is false while the node's view still names this region home.
    HandoffState {
        req: u64,
        ready: bool,
        state: Option<Snapshot>,
    },

    /// New master → every peer: what do you hold of this channel?
    StateRequest { channel: String },
    /// Reply: `ready` is false while the peer still sequences the channel itself (its
    /// view has not caught up yet); the asker tries again.
    StateReply {
        channel: String,
        ready: bool,
        epoch: u64,
        state: Option<Snapshot>,
    },
}
