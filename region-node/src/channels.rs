//! Channel names: what Ably accepts as one (protocol.md §8).

use crate::error::AblyError;

/// The region-wide key of an app's channel. Apps share nothing: two apps' channels of
/// the same name are different channels. App ids never contain `/`.
pub fn channel_key(app_id: &str, name: &str) -> String {
    format!("{app_id}/{name}")
}

/// The name clients know a channel by, from its key.
pub fn public_name(key: &str) -> &str {
    key.split_once('/').map_or(key, |(_, name)| name)
}

/// Checks a channel name against Ably's rules (protocol.md §8).
pub fn validate_name(name: &str) -> Result<(), AblyError> {
    let bad = |why: &str| Err(AblyError::InvalidChannelName(format!("{name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.starts_with(':') {
        return bad("starts with ':'");
    }
    if name.contains(['\n', '\r', '\0']) {
        return bad("contains a control character");
    }
    if name.len() > 2048 {
        return bad("is longer than 2048 bytes");
    }
    if name.starts_with("[?") {
        // Such a channel is a view of `name` with params; ably-js expects its frames
        // under the qualified name, which fan-out does not do yet.
        return bad("carries channel params in its name, which is not supported yet");
    }
    if let Some(rest) = name.strip_prefix('[') {
        // Only a closed qualifier followed by a real name is allowed.
        match rest.split_once(']') {
            Some((qualifier, base)) if !qualifier.is_empty() && !base.is_empty() => {}
            _ => return bad("has a malformed qualifier"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_ably_rules() {
        for good in ["a", "ns:chan", "[meta]channel.lifecycle", "with space"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ":hell",
            "[unclosed",
            "[]x",
            "[meta]",
            "new\nline",
            "[?rewind=1]x",
        ] {
            assert_eq!(validate_name(bad).unwrap_err().code(), 40010, "{bad:?}");
        }
    }
}
