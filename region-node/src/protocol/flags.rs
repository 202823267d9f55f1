//! ProtocolMessage flags (spec TR3): attach state bits and channel modes.

pub const HAS_PRESENCE: i64 = 1 << 0;
pub const HAS_BACKLOG: i64 = 1 << 1;
pub const RESUMED: i64 = 1 << 2;

pub const PRESENCE: i64 = 1 << 16;
pub const PUBLISH: i64 = 1 << 17;
pub const SUBSCRIBE: i64 = 1 << 18;
pub const PRESENCE_SUBSCRIBE: i64 = 1 << 19;
pub const ANNOTATION_PUBLISH: i64 = 1 << 21;
pub const ANNOTATION_SUBSCRIBE: i64 = 1 << 22;
pub const OBJECT_SUBSCRIBE: i64 = 1 << 24;
pub const OBJECT_PUBLISH: i64 = 1 << 25;

/// Every mode bit.
pub const ALL_MODES: i64 = PRESENCE
    | PUBLISH
    | SUBSCRIBE
    | PRESENCE_SUBSCRIBE
    | ANNOTATION_PUBLISH
    | ANNOTATION_SUBSCRIBE
    | OBJECT_SUBSCRIBE
    | OBJECT_PUBLISH;

/// Modes granted when the client asks for none: object modes and annotation_subscribe
/// are only granted on request (ably-js tests expect 3080192).
pub const DEFAULT_MODES: i64 =
    PRESENCE | PUBLISH | SUBSCRIBE | PRESENCE_SUBSCRIBE | ANNOTATION_PUBLISH;

/// The mode bit for a name used in the `modes` channel param.
pub fn mode_from_name(name: &str) -> Option<i64> {
    Some(match name {
        "presence" => PRESENCE,
        "publish" => PUBLISH,
        "subscribe" => SUBSCRIBE,
        "presence_subscribe" => PRESENCE_SUBSCRIBE,
        "annotation_publish" => ANNOTATION_PUBLISH,
        "annotation_subscribe" => ANNOTATION_SUBSCRIBE,
        "object_subscribe" => OBJECT_SUBSCRIBE,
        "object_publish" => OBJECT_PUBLISH,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_constants_match_the_wire_values() {
        assert_eq!(DEFAULT_MODES, 3_080_192);
        assert_eq!(ALL_MODES, 57_606_144);
        assert_eq!(PRESENCE | PUBLISH | SUBSCRIBE | PRESENCE_SUBSCRIBE, 983_040);
    }
}
