//! Frames on the mesh's control stream: length-prefixed MessagePack.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// Largest mesh frame: bigger than any client frame, and than a channel's whole state
/// (history is bounded by `history.max_bytes`, which the configuration keeps below
/// [`MAX_STATE_BYTES`]), so a snapshot for a new copy holder always fits.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The most `history.max_bytes` may be: a snapshot also carries remembered ids.
pub const MAX_STATE_BYTES: usize = MAX_FRAME / 2;

/// What a node tells others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: String,
    pub region: String,
    /// Where the node's mesh endpoint listens (UDP).
    pub mesh: SocketAddr,
    /// Where the node serves clients (WebSocket and REST).
    pub client: SocketAddr,
    /// Where the node accepts bridges from other regions, if it does.
    #[serde(default)]
    pub bridge: Option<SocketAddr>,
    /// Grows each time the node process starts, so news of an old life never
    /// overrides the new one.
    pub incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Each message is moved once per hop; boxing the big variants would cost an
// allocation per message on the publish path to save a memcpy.
#[allow(clippy::large_enum_variant)]
pub enum MeshMsg {
    /// First frame in each direction: who I am and who I know.
    Hello {
        me: MemberInfo,
        members: Vec<MemberInfo>,
    },
    /// Periodic spread of the members a node is linked to.
    Gossip { members: Vec<MemberInfo> },
    /// The sender is leaving the region on purpose; do not dial it again.
    Leave { id: String, incarnation: u64 },
    /// Channel traffic between ChannelClients, masters and copy holders.
    Channel(crate::region::msg::ChannelMsg),
    /// TokenRequest nonce claims, so a nonce is accepted once per region.
    Nonce(crate::auth::nonce_claims::NonceMsg),
}

pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

pub fn encode(msg: &MeshMsg) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(msg).expect("mesh messages serialise"))
}

pub fn decode(frame: &BytesMut) -> Result<MeshMsg, rmp_serde::decode::Error> {
    rmp_serde::from_slice(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let me = MemberInfo {
            id: "n1".into(),
            region: "eu".into(),
            mesh: "127.0.0.1:1".parse().unwrap(),
            client: "127.0.0.1:2".parse().unwrap(),
            bridge: Some("127.0.0.1:3".parse().unwrap()),
            incarnation: 7,
        };
        let msg = MeshMsg::Hello {
            me: me.clone(),
            members: vec![me],
        };
        let bytes = encode(&msg);
        assert_eq!(decode(&BytesMut::from(&bytes[..])).unwrap(), msg);
    }
}
