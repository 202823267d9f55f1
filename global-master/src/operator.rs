//! What the operator subcommands print: the catalog as an operator reads it (never a
//! key secret), and the answers of the commands they send, as JSON.

use serde_json::{json, Value};

use crate::api::MembershipReply;
use crate::state::{Catalog, Home, Outcome};

/// The catalog for `global-master state`: regions with their liveness on the caller's
/// clock (`now_ms`), homes with their epochs, rules, apps with their key names and
/// capabilities (secrets left out), and revocations.
pub fn state_view(catalog: &Catalog, now_ms: u64) -> Value {
    let regions: Vec<Value> = (catalog.regions())
        .map(|(name, region)| {
            json!({
                "name": name,
                "bridges": region.bridges,
                "lost": region.lost,
                "last_heartbeat_ms": region.last_heartbeat_ms,
                "silent_for_ms": now_ms.saturating_sub(region.last_heartbeat_ms),
            })
        })
        .collect();
    let homes: Vec<Value> = (catalog.homes())
        .map(|(channel, home)| home_view(channel, home))
        .collect();
    let apps: Vec<Value> = catalog.apps().map(app_view).collect();
    let revocations: Vec<Value> = (catalog.revocations())
        .map(|r| {
            json!({
                "key_name": r.key_name,
                "target": r.target,
                "issued_before_ms": r.issued_before_ms,
            })
        })
        .collect();
    json!({
        "version": catalog.version(),
        "regions": regions,
        "homes": homes,
        "rules": catalog.rules(),
        "apps": apps,
        "revocations": revocations,
    })
}

/// An app without its key secrets: whoever reads the state may not use the keys.
fn app_view(app: &crate::state::App) -> Value {
    let keys: Vec<Value> = (app.keys.iter())
        .map(|key| json!({"name": key.name, "capability": key.capability}))
        .collect();
    json!({"id": app.id, "keys": keys, "namespaces": app.namespaces})
}

pub fn home_view(channel: &str, home: &Home) -> Value {
    json!({
        "channel": channel,
        "region": home.region,
        "epoch": home.epoch,
        "last_used_ms": home.last_used_ms,
    })
}

/// The answer to a committed command, as the subcommands print it.
pub fn outcome_view(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Done => json!({"done": true}),
        Outcome::Home { home, assigned } => json!({
            "region": home.region,
            "epoch": home.epoch,
            "last_used_ms": home.last_used_ms,
            "changed": assigned,
        }),
        Outcome::Rehomed { channels } => json!({"channels_rehomed": channels}),
        Outcome::Removed { count } => json!({"removed": count}),
        Outcome::Homes { answers } => json!({
            "homes": (answers.iter())
                .map(|answer| match &answer.home {
                    Ok(home) => json!({
                        "channel": answer.channel,
                        "region": home.region,
                        "epoch": home.epoch,
                        "last_used_ms": home.last_used_ms,
                        "changed": answer.assigned,
                    }),
                    Err(error) => json!({"channel": answer.channel, "error": error.to_string()}),
                })
                .collect::<Vec<_>>(),
        }),
    }
}

pub fn membership_view(reply: &MembershipReply) -> Value {
    let list = |members: &std::collections::BTreeMap<u64, String>| -> Vec<Value> {
        (members.iter())
            .map(|(id, addr)| json!({"id": id, "raft_addr": addr}))
            .collect()
    };
    json!({"voters": list(&reply.voters), "learners": list(&reply.learners)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{App, AppKey, Command, ControlState};

    #[test]
    fn the_state_view_shows_liveness_and_epochs_but_no_key_secret() {
        let mut state = ControlState::default();
        let commands = [
            Command::RegisterRegion {
                name: "eu".into(),
                bridges: vec!["eu:7000".into()],
                now_ms: 1_000,
            },
            Command::CreateApp {
                app: App {
                    id: "app".into(),
                    keys: vec![AppKey {
                        name: "app.k".into(),
                        secret: "very-secret-value".into(),
                        capability: r#"{"*":["*"]}"#.into(),
                    }],
                    namespaces: vec![],
                },
            },
            Command::GetOrAssignHome {
                channel: "app/chat".into(),
                preferred_region: "eu".into(),
                now_ms: 2_000,
            },
        ];
        for command in commands {
            assert!(state.apply(command).outcome.is_ok());
        }

        let view = state_view(state.catalog(), 5_000);
        let text = view.to_string();
        assert!(!text.contains("very-secret-value"), "{text}");
        assert_eq!(view["regions"][0]["silent_for_ms"], 4_000);
        assert_eq!(view["regions"][0]["lost"], false);
        assert_eq!(view["homes"][0]["channel"], "app/chat");
        assert_eq!(view["homes"][0]["epoch"], 2_000);
        assert_eq!(view["apps"][0]["keys"][0]["name"], "app.k");
        assert_eq!(view["version"], state.version());
    }
}
