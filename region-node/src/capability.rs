//! Capabilities: which operations a key or a token may perform on which channels
//! (protocol.md §7.3).
//!
//! A resource is a channel pattern, optionally behind a qualifier such as `[meta]`.
//! Inside a name, `*` as a whole `:`-segment matches exactly one segment, except as the
//! last segment, where it matches one or more. `*` on its own matches every ordinary
//! channel; `[*]*` matches every channel, qualified or not.

use serde_json::Value;

/// A parsed capability, with resources and operations kept in the order given, since
/// Ably clients compare op lists order-sensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    grants: Vec<(String, Vec<String>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid capability: {0}")]
pub struct InvalidCapability(pub String);

/// Operations that a capability can grant.
pub const OPERATIONS: &[&str] = &[
    "publish",
    "subscribe",
    "presence",
    "history",
    "stats",
    "channel-metadata",
    "push-subscribe",
    "push-admin",
    "object-subscribe",
    "object-publish",
    "annotation-subscribe",
    "annotation-publish",
    "message-update-own",
    "message-update-any",
    "message-delete-own",
    "message-delete-any",
    "privileged-headers",
];

impl Capability {
    pub fn parse(text: &str) -> Result<Self, InvalidCapability> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| InvalidCapability(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(InvalidCapability("capability must be a JSON object".into()));
        };

        let mut grants = Vec::with_capacity(map.len());
        for (resource, ops) in map {
            grants.push((resource.clone(), parse_ops(&resource, ops)?));
        }
        if grants.is_empty() {
            return Err(InvalidCapability("capability grants nothing".into()));
        }
        Ok(Self { grants })
    }

    /// Whether `op` is allowed on `channel`.
    pub fn allows(&self, channel: &str, op: &str) -> bool {
        self.grants
            .iter()
            .filter(|(resource, _)| resource_matches(resource, channel))
            .any(|(_, ops)| ops.iter().any(|o| o == "*" || o == op))
    }

    /// What both `self` (a request) and `allowed` (the key's or token's capability)
    /// grant; `None` when that is nothing. A resource of one that covers a resource of
    /// the other yields the narrower resource. Ops keep the order of the side that
    /// names them: a `*` request against `["publish","subscribe"]` gives that list.
    pub fn intersect(&self, allowed: &Capability) -> Option<Capability> {
        let mut grants: Vec<(String, Vec<String>)> = Vec::new();
        for (want_resource, want_ops) in &self.grants {
            for (have_resource, have_ops) in &allowed.grants {
                let Some(resource) = narrower(want_resource, have_resource) else {
                    continue;
                };
                let ops = intersect_ops(want_ops, have_ops);
                if !ops.is_empty() {
                    merge_grant(&mut grants, resource, ops);
                }
            }
        }
        (!grants.is_empty()).then_some(Self { grants })
    }

    /// The capability as Ably's JSON text, resources and ops in their order.
    pub fn to_json(&self) -> String {
        let entries: Vec<String> = self
            .grants
            .iter()
            .map(|(resource, ops)| {
                let resource = serde_json::to_string(resource).expect("strings serialise");
                let ops = serde_json::to_string(ops).expect("string lists serialise");
                format!("{resource}:{ops}")
            })
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    /// Whether any operation at all is allowed on `channel`.
    pub fn allows_any(&self, channel: &str) -> bool {
        self.grants
            .iter()
            .any(|(resource, ops)| !ops.is_empty() && resource_matches(resource, channel))
    }
}

fn parse_ops(resource: &str, ops: Value) -> Result<Vec<String>, InvalidCapability> {
    let Value::Array(ops) = ops else {
        return Err(InvalidCapability(format!(
            "operations for {resource:?} must be a list"
        )));
    };
    ops.into_iter()
        .map(|op| match op {
            Value::String(op) if op == "*" || OPERATIONS.contains(&op.as_str()) => Ok(op),
            other => Err(InvalidCapability(format!(
                "unknown operation {other} for {resource:?}"
            ))),
        })
        .collect()
}

/// Of two resources, the one that names fewer channels, when one covers the other.
/// A pattern covers another when it matches the other read as a literal name, since
/// a `*` segment matches a `*` segment as it matches any other.
fn narrower<'a>(a: &'a str, b: &'a str) -> Option<&'a str> {
    if resource_matches(b, a) {
        Some(a)
    } else if resource_matches(a, b) {
        Some(b)
    } else {
        None
    }
}

fn intersect_ops(want: &[String], have: &[String]) -> Vec<String> {
    let star = |ops: &[String]| ops.iter().any(|op| op == "*");
    if star(want) {
        return have.to_vec();
    }
    if star(have) {
        return want.to_vec();
    }
    want.iter()
        .filter(|op| have.contains(op))
        .cloned()
        .collect()
}

/// Adds `ops` to `resource`'s grant, keeping the first order seen.
fn merge_grant(grants: &mut Vec<(String, Vec<String>)>, resource: &str, ops: Vec<String>) {
    let Some((_, existing)) = grants.iter_mut().find(|(r, _)| r == resource) else {
        grants.push((resource.to_owned(), ops));
        return;
    };
    for op in ops {
        if !existing.contains(&op) {
            existing.push(op);
        }
    }
}

/// Splits `[qualifier]name` into its qualifier (if any) and name. A `[?params]`
/// prefix only carries channel params, so it does not make a channel special.
fn split_qualifier(name: &str) -> (Option<&str>, &str) {
    let Some(rest) = name.strip_prefix('[') else {
        return (None, name);
    };
    match rest.split_once(']') {
        Some((qualifier, base)) if qualifier.starts_with('?') => (None, base),
        Some((qualifier, base)) => (Some(qualifier), base),
        None => (None, name),
    }
}

fn resource_matches(resource: &str, channel: &str) -> bool {
    let (res_qualifier, res_name) = split_qualifier(resource);
    let (ch_qualifier, ch_name) = split_qualifier(channel);

    let qualifier_ok = match res_qualifier {
        Some("*") => true,
        Some(q) => ch_qualifier == Some(q),
        None => ch_qualifier.is_none(),
    };
    qualifier_ok && name_matches(res_name, ch_name)
}

fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<&str> = pattern.split(':').collect();
    let name: Vec<&str> = name.split(':').collect();
    let last = pattern.len() - 1;

    if pattern[last] == "*" {
        if name.len() < pattern.len() {
            return false;
        }
    } else if name.len() != pattern.len() {
        return false;
    }

    pattern.iter().zip(&name).all(|(p, n)| *p == "*" || p == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(text: &str) -> Capability {
        Capability::parse(text).unwrap()
    }

    #[test]
    fn star_matches_ordinary_channels_only() {
        let c = cap(r#"{"*":["*"]}"#);
        assert!(c.allows("anything", "publish"));
        assert!(c.allows("a:b:c", "subscribe"));
        assert!(!c.allows("[meta]channel.lifecycle", "subscribe"));
        assert!(cap(r#"{"[*]*":["*"]}"#).allows("[meta]x", "subscribe"));
    }

    #[test]
    fn namespace_and_segment_wildcards() {
        let c = cap(r#"{"ns:*":["publish"],"a:*:c":["subscribe"],"foo*":["history"]}"#);
        assert!(c.allows("ns:x", "publish"));
        assert!(c.allows("ns:x:y", "publish"));
        assert!(!c.allows("ns", "publish"));
        assert!(!c.allows("ns:x", "subscribe"));
        assert!(c.allows("a:b:c", "subscribe"));
        assert!(!c.allows("a:b:b:c", "subscribe"));
        assert!(c.allows("foo*", "history"));
        assert!(!c.allows("foobar", "history"));
    }

    #[test]
    fn intersection_keeps_the_narrower_resource_and_common_ops() {
        let key = cap(r#"{"ns:*":["publish","subscribe"],"other":["history"]}"#);

        let star = cap(r#"{"*":["*"]}"#).intersect(&key).unwrap();
        assert_eq!(
            star.to_json(),
            r#"{"ns:*":["publish","subscribe"],"other":["history"]}"#
        );

        let narrow = cap(r#"{"ns:chat":["subscribe","presence"]}"#).intersect(&key);
        assert_eq!(narrow.unwrap().to_json(), r#"{"ns:chat":["subscribe"]}"#);

        let wide_key = cap(r#"{"*":["*"]}"#);
        let asked = cap(r#"{"a":["subscribe","publish"]}"#);
        let got = asked.intersect(&wide_key).unwrap();
        assert_eq!(got.to_json(), r#"{"a":["subscribe","publish"]}"#);
    }

    #[test]
    fn an_empty_intersection_is_none() {
        let key = cap(r#"{"ns:*":["publish"]}"#);
        assert_eq!(cap(r#"{"elsewhere":["*"]}"#).intersect(&key), None);
        assert_eq!(cap(r#"{"ns:a":["subscribe"]}"#).intersect(&key), None);
        assert_eq!(
            cap(r#"{"*":["publish"]}"#)
                .intersect(&key)
                .unwrap()
                .to_json(),
            r#"{"ns:*":["publish"]}"#
        );
    }

    #[test]
    fn json_text_round_trips() {
        let text = r#"{"a:*":["publish"],"[meta]*":["subscribe"]}"#;
        assert_eq!(Capability::parse(&cap(text).to_json()).unwrap(), cap(text));
    }

    #[test]
    fn malformed_capabilities_are_refused() {
        assert!(Capability::parse("[]").is_err());
        assert!(Capability::parse("{}").is_err());
        assert!(Capability::parse(r#"{"*":"publish"}"#).is_err());
        assert!(Capability::parse(r#"{"*":["fly"]}"#).is_err());
    }
}
