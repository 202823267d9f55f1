//! The Ably wire protocol (version 6) as ably-js 2.28 speaks it: protocol messages,
//! messages, error info, and their JSON and MessagePack encodings.
//!
//! Types here are plain data. Deciding what to do with a message is the job of the
//! connection and channel modules; this module only knows shapes and bytes.

pub mod action;
pub mod codec;
pub mod data;
pub mod flags;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use codec::{Encoded, Format};
pub use data::Data;

/// One frame of the realtime protocol, in either direction.
///
/// Every field is optional on the wire; absent and nil mean the same thing, and absent
/// fields are left out when encoding (ably-js encodes msgpack sparsely as well).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolMessage {
    pub action: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_details: Option<ConnectionDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_serial: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<PresenceMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub res: Option<Vec<PublishResult>>,
}

impl ProtocolMessage {
    pub fn new(action: i64) -> Self {
        Self {
            action,
            ..Self::default()
        }
    }

    /// A frame scoped to one channel.
    pub fn for_channel(action: i64, channel: &str) -> Self {
        Self {
            action,
            channel: Some(channel.to_owned()),
            ..Self::default()
        }
    }

    /// What a receiver does with a MESSAGE frame before reading its messages (ably-js
    /// `populateFieldsFromParent`): a message without `connectionId` or `timestamp`
    /// takes the frame's, one without `id` gets `<frame id>:<index>`. The encoder
    /// leaves those out of the bytes where they are the same (`codec::encode`), so
    /// anything here that decodes frames a node sent (the bridge, tests) calls this.
    pub fn fill_from_parent(&mut self) {
        if self.action != action::MESSAGE {
            return;
        }
        for (index, m) in self.messages.iter_mut().flatten().enumerate() {
            if m.connection_id.is_none() {
                m.connection_id.clone_from(&self.connection_id);
            }
            if m.timestamp.is_none() {
                m.timestamp = self.timestamp;
            }
            if m.id.is_none() {
                m.id = self.id.as_ref().map(|base| format!("{base}:{index}"));
            }
        }
    }
}

/// `connectionDetails` of CONNECTED. ably-js throws without `connectionKey`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionDetails {
    pub connection_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub max_message_size: u64,
    pub max_frame_size: u64,
    pub max_inbound_rate: u64,
    pub connection_state_ttl: u64,
    pub max_idle_interval: u64,
    pub server_id: String,
    pub site_code: String,
}

/// Ably's ErrorInfo. ably-js drops the whole frame if `code`, `statusCode` or
/// `message` is missing or mistyped, so all three are always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    pub code: i64,
    pub status_code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthDetails {
    #[serde(default)]
    pub access_token: Option<String>,
}

/// One entry of an ACK's `res`: the serials given to the messages of one publish, in order.
/// A `None` serial marks a message that was dropped as a duplicate without a known serial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    pub serials: Vec<Option<String>>,
}

/// A message on a channel (spec TM2). `size` from ably-js is not a field here, so
/// it is dropped on decode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl Message {
    /// The size Ably counts against the message size limit: name, clientId, data and
    /// extras (as JSON), in bytes.
    pub fn size(&self) -> usize {
        let name = self.name.as_deref().map_or(0, str::len);
        let client_id = self.client_id.as_deref().map_or(0, str::len);
        let data = self.data.as_ref().map_or(0, Data::size);
        let extras = self
            .extras
            .as_ref()
            .map_or(0, |e| serde_json::to_vec(e).map_or(0, |v| v.len()));
        name + client_id + data + extras
    }
}

/// A presence event (spec TP); its actions are in `crate::presence::action`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub action: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Value>,
}
