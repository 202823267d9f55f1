//! Every error a client can be told about, and its Ably code and HTTP status.
//!
//! This is the one place where Starling's failures meet Ably's error registry
//! (protocol.md §6): the WebSocket edge turns an [`AblyError`] into an ErrorInfo
//! inside ERROR, NACK or CONNECTED frames, and REST turns it into a status and body.

use crate::protocol::ErrorInfo;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AblyError {
    #[error("invalid protocol message: {0}")]
    MalformedFrame(String),
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    #[error("message too large: {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("a publish may hold at most {limit} messages, this one holds {count}")]
    TooManyMessages { count: usize, limit: usize },
    #[error("frame too large: the limit is {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("invalid channel name: {0}")]
    InvalidChannelName(String),
    #[error("invalid clientId: {0}")]
    InvalidClientId(String),
    #[error("invalid message data: {0}")]
    InvalidData(String),
    #[error("invalid credentials: {0}")]
    InvalidCredentials(String),
    #[error("no credentials given")]
    NoCredentials,
    #[error("the admin api requires the admin token as a bearer token")]
    AdminUnauthorized,
    #[error("channel {channel:?} is homed in region {region}, which this region cannot reach yet")]
    HomedElsewhere { channel: String, region: String },
    #[error("the channel's home region {0} cannot be reached")]
    HomeUnreachable(String),
    #[error("credentials are incompatible: {0}")]
    IncompatibleCredentials(String),
    #[error("token request timestamp is outside the allowed window")]
    TimestampOutsideWindow,
    #[error("token request nonce was already used")]
    NonceReplayed,
    #[error("token revoked")]
    TokenRevoked,
    #[error("token expired")]
    TokenExpired,
    #[error("token not recognised: {0}")]
    TokenInvalid(String),
    #[error("invalid JWT: {0}")]
    InvalidJwt(String),
    #[error("the requested capability grants nothing the key allows")]
    CapabilityEmpty,
    #[error("operation {op} on channel {channel:?} is not permitted by the capability")]
    CapabilityDenied { op: &'static str, channel: String },
    #[error("channel mode {mode} was not requested when attaching {channel:?}")]
    ModeNotRequested { mode: &'static str, channel: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("connection queue full: the client is not reading fast enough")]
    SlowConsumer,
    #[error("publish rate exceeded: a connection may publish {rate} times a second")]
    PublishRateExceeded { rate: u32 },
    #[error("disconnected for flooding: frames arrived far faster than the rate of {rate} publishes a second allows")]
    InboundFlood { rate: u32 },
    #[error("a connection may be attached to at most {limit} channels")]
    TooManyChannels { limit: usize },
    #[error("this node holds its maximum of {limit} connections; try again later")]
    NodeFull { limit: usize },
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    #[error("presence requires a clientId: the connection has none, or the event names none")]
    PresenceWithoutClientId,
    #[error("a channel may hold at most {limit} presence members")]
    TooManyMembers { limit: usize },
    #[error("invalid connection key; a new connection was started")]
    InvalidConnectionKey,
    #[error("unable to resume the connection: its state expired")]
    ConnectionExpired,
    #[error(
        "messages were lost: the channel's history no longer reaches back to the resume point"
    )]
    ContinuityLost,
    #[error("the connection continues on a newer transport")]
    Superseded,
    #[error("channel {0:?} is not attached")]
    ChannelNotAttached(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("this node cannot serve now (no majority of its region, or no lease from the global master); try another node")]
    NoQuorum,
    #[error("this node is shutting down; reconnect to another node")]
    Draining,
    /// An error another node already mapped, passed on unchanged.
    #[error("{}", .0.message)]
    Remote(ErrorInfo),
}

impl AblyError {
    /// The Ably error code and HTTP status for this error.
    pub fn code_and_status(&self) -> (i64, u16) {
        use AblyError::*;
        match self {
            MalformedFrame(_) => (40000, 400),
            InvalidBody(_) => (40001, 400),
            InvalidParameter { .. } => (40003, 400),
            MessageTooLarge { .. }
            | BodyTooLarge { .. }
            | TooManyMessages { .. }
            | FrameTooLarge { .. } => (40009, 413),
            InvalidChannelName(_) => (40010, 400),
            InvalidClientId(_) => (40012, 400),
            InvalidData(_) => (40013, 400),
            InvalidCredentials(_) | NoCredentials => (40101, 401),
            AdminUnauthorized => (40100, 401),
            IncompatibleCredentials(_) => (40102, 401),
            // Retriable (5xx): the home may move here, or bridges may come up.
            HomedElsewhere { .. } => (50001, 503),
            HomeUnreachable(_) => (50003, 503),
            TimestampOutsideWindow => (40104, 401),
            NonceReplayed => (40105, 401),
            TokenRevoked => (40141, 401),
            TokenExpired => (40142, 401),
            TokenInvalid(_) => (40143, 401),
            InvalidJwt(_) => (40144, 401),
            CapabilityEmpty => (40160, 401),
            CapabilityDenied { .. } => (40160, 401),
            ModeNotRequested { .. } => (40165, 401),
            Forbidden(_) => (40300, 403),
            NotFound(_) => (40400, 404),
            MethodNotAllowed => (40500, 405),
            SlowConsumer => (80003, 400),
            // 42911 is Ably's per-connection publish rate; a flood of frames of any
            // kind (pings, attaches, publishes) is its generic rate limit, 42910.
            PublishRateExceeded { .. } => (42911, 429),
            InboundFlood { .. } => (42910, 429),
            TooManyChannels { .. } => (90010, 400),
            // 503 and 80003 are both retriable, so ably-js waits and tries again
            // rather than failing the connection (protocol.md §6).
            NodeFull { .. } => (80003, 503),
            Unsupported(_) => (40000, 400),
            PresenceWithoutClientId => (91000, 400),
            TooManyMembers { .. } => (91003, 400),
            InvalidConnectionKey => (80018, 400),
            ConnectionExpired => (80008, 400),
            Superseded => (80003, 400),
            ContinuityLost => (80008, 400),
            ChannelNotAttached(_) => (90001, 400),
            Internal(_) => (50000, 500),
            Timeout(_) => (50003, 503),
            NoQuorum | Draining => (50003, 503),
            Remote(info) => (info.code, u16::try_from(info.status_code).unwrap_or(500)),
        }
    }

    pub fn code(&self) -> i64 {
        self.code_and_status().0
    }

    pub fn status(&self) -> u16 {
        self.code_and_status().1
    }

    pub fn to_info(&self) -> ErrorInfo {
        let (code, status) = self.code_and_status();
        ErrorInfo {
            code,
            status_code: i64::from(status),
            message: self.to_string(),
            href: Some(format!("https://help.ably.io/error/{code}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_info_always_has_the_three_mandatory_fields() {
        let info = AblyError::MessageTooLarge {
            size: 70_000,
            limit: 65_536,
        }
        .to_info();
        assert_eq!((info.code, info.status_code), (40009, 413));
        assert!(info.message.contains("70000"));
    }

    #[test]
    fn limits_map_to_their_ably_codes() {
        let cases = [
            (AblyError::PublishRateExceeded { rate: 50 }, (42911, 429)),
            (AblyError::InboundFlood { rate: 50 }, (42910, 429)),
            (AblyError::TooManyChannels { limit: 200 }, (90010, 400)),
            (AblyError::NodeFull { limit: 10_000 }, (80003, 503)),
        ];
        for (error, expected) in cases {
            assert_eq!(error.code_and_status(), expected, "{error}");
        }
    }
}
