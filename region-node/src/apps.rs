//! Apps and their API keys, as this node knows them: those declared in its
//! configuration file, and those the global master holds (created through the admin
//! API of any node), mirrored by [`crate::control`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use starling_global::state;

use crate::capability::Capability;
use crate::config::{default_capability, AppConfig};
use crate::data_dir::random_string;
use crate::error::AblyError;

/// The id of the app a node creates when it finds no app at all, so a bare node is
/// usable. One fixed id: nodes sharing a global master share that app.
pub const DEFAULT_APP_ID: &str = "default";

/// An API key. `name` is `<app id>.<key id>`; the full key string is `name:secret`.
#[derive(Debug)]
pub struct Key {
    pub name: String,
    pub secret: String,
    pub capability_text: String,
    pub capability: Capability,
}

impl Key {
    pub fn key_str(&self) -> String {
        format!("{}:{}", self.name, self.secret)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub id: String,
    #[serde(default)]
    pub persisted: bool,
}

#[derive(Debug)]
pub struct App {
    pub id: String,
    pub keys: Vec<Arc<Key>>,
    pub namespaces: Vec<Namespace>,
    /// Declared in the configuration file (and so not deletable through the API).
    pub from_config: bool,
}

/// A request to create an app: the sandbox provisioning body's useful parts.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewApp {
    #[serde(default)]
    pub keys: Vec<NewKey>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewKey {
    #[serde(default)]
    pub capability: Option<String>,
}

#[derive(Default)]
struct Tables {
    apps: HashMap<String, Arc<App>>,
    /// App ids in listing order: configured apps as declared, then the default app,
    /// then the others by id. The first is the one the banner and describe file show.
    order: Vec<String>,
    keys: HashMap<String, (Arc<App>, Arc<Key>)>,
}

pub struct AppRegistry {
    configured: Vec<Arc<App>>,
    tables: RwLock<Tables>,
}

impl AppRegistry {
    /// Starts with the configured apps; the control plane's arrive with [`Self::sync`].
    pub fn open(configured: &[AppConfig]) -> anyhow::Result<Self> {
        let configured = configured
            .iter()
            .map(|app| {
                let keys = app
                    .keys
                    .iter()
                    .map(|k| (k.id.clone(), k.secret.clone(), k.capability.clone()));
                build_app(&app.id, keys, Vec::new(), true).map(Arc::new)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let registry = Self {
            configured,
            tables: RwLock::new(Tables::default()),
        };
        registry.sync(std::iter::empty());
        Ok(registry)
    }

    /// Replaces the apps that come from the control plane with `apps`, and returns the
    /// ids of those that are gone. A control-plane app with the id of a configured one
    /// is ignored: the file wins on this node.
    pub fn sync<'a>(&self, apps: impl Iterator<Item = &'a state::App>) -> Vec<String> {
        let mut from_control: Vec<Arc<App>> = apps
            .filter(|app| !self.configured.iter().any(|c| c.id == app.id))
            .filter_map(|app| match from_state(app) {
                Ok(app) => Some(Arc::new(app)),
                Err(error) => {
                    tracing::warn!(app.id = %app.id, "ignoring an app the node cannot use: {error:#}");
                    None
                }
            })
            .collect();
        from_control.sort_by_key(|app| (app.id != DEFAULT_APP_ID, app.id.clone()));

        let mut tables = Tables::default();
        for app in self.configured.iter().chain(&from_control) {
            for key in &app.keys {
                tables
                    .keys
                    .insert(key.name.clone(), (app.clone(), key.clone()));
            }
            tables.apps.insert(app.id.clone(), app.clone());
            tables.order.push(app.id.clone());
        }

        let mut current = self.tables.write();
        let gone = (current.apps.keys())
            .filter(|id| !tables.apps.contains_key(*id))
            .cloned()
            .collect();
        *current = tables;
        gone
    }

    /// Whether the node knows no app at all (then it creates the default one).
    pub fn is_empty(&self) -> bool {
        self.tables.read().apps.is_empty()
    }

    /// Checks a full key string `appId.keyId:secret`.
    pub fn authenticate(&self, key_str: &str) -> Result<(Arc<App>, Arc<Key>), AblyError> {
        let (name, secret) = key_str.split_once(':').ok_or_else(|| {
            AblyError::InvalidCredentials("key is not of the form name:secret".into())
        })?;
        let tables = self.tables.read();
        let (app, key) = tables
            .keys
            .get(name)
            .ok_or_else(|| AblyError::InvalidCredentials(format!("no such key {name}")))?;

        if !constant_time_eq::constant_time_eq(key.secret.as_bytes(), secret.as_bytes()) {
            return Err(AblyError::InvalidCredentials(format!(
                "wrong secret for key {name}"
            )));
        }
        Ok((app.clone(), key.clone()))
    }

    pub fn get(&self, id: &str) -> Option<Arc<App>> {
        self.tables.read().apps.get(id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<App>> {
        let tables = self.tables.read();
        tables
            .order
            .iter()
            .filter_map(|id| tables.apps.get(id).cloned())
            .collect()
    }

    /// Refuses to delete an unknown app or one the configuration file declares.
    pub fn check_deletable(&self, id: &str) -> Result<(), AblyError> {
        match self.get(id) {
            None => Err(AblyError::NotFound(format!("app {id}"))),
            Some(app) if app.from_config => Err(AblyError::Forbidden(format!(
                "app {id} is declared in the configuration file"
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// The control-plane record of a new app with fresh key ids and secrets; its
/// capabilities are checked here so a bad one is refused before anything is written.
pub fn new_app_record(id: &str, spec: NewApp) -> Result<state::App, AblyError> {
    let specs = if spec.keys.is_empty() {
        vec![NewKey::default()]
    } else {
        spec.keys
    };
    let keys = specs
        .into_iter()
        .map(|k| {
            let capability = k.capability.unwrap_or_else(default_capability);
            Capability::parse(&capability).map_err(|e| AblyError::InvalidBody(e.to_string()))?;
            Ok(state::AppKey {
                name: format!("{id}.{}", random_string(8)),
                secret: random_string(40),
                capability,
            })
        })
        .collect::<Result<Vec<_>, AblyError>>()?;
    let namespaces = spec
        .namespaces
        .into_iter()
        .map(|n| state::Namespace {
            id: n.id,
            persisted: n.persisted,
        })
        .collect();
    Ok(state::App {
        id: id.to_owned(),
        keys,
        namespaces,
    })
}

/// A fresh random app id.
pub fn new_app_id() -> String {
    random_string(8)
}

fn from_state(app: &state::App) -> anyhow::Result<App> {
    let prefix = format!("{}.", app.id);
    let keys = app.keys.iter().map(|k| {
        let id = k.name.strip_prefix(&prefix).unwrap_or(&k.name).to_owned();
        (id, k.secret.clone(), k.capability.clone())
    });
    let namespaces = app
        .namespaces
        .iter()
        .map(|n| Namespace {
            id: n.id.clone(),
            persisted: n.persisted,
        })
        .collect();
    build_app(&app.id, keys, namespaces, false)
}

/// Builds an app from `(key id, secret, capability JSON)` triples.
fn build_app(
    id: &str,
    keys: impl Iterator<Item = (String, String, String)>,
    namespaces: Vec<Namespace>,
    from_config: bool,
) -> anyhow::Result<App> {
    let keys = keys
        .map(|(key_id, secret, capability_text)| {
            Ok(Arc::new(Key {
                name: format!("{id}.{key_id}"),
                secret,
                capability: Capability::parse(&capability_text)?,
                capability_text,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(App {
        id: id.to_owned(),
        keys,
        namespaces,
        from_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;

    fn configured() -> Vec<AppConfig> {
        vec![AppConfig {
            id: "cfg".into(),
            keys: vec![KeyConfig {
                id: "k".into(),
                secret: "s".into(),
                capability: default_capability(),
            }],
        }]
    }

    fn record(id: &str, capability: &str) -> state::App {
        let spec = NewApp {
            keys: vec![NewKey {
                capability: Some(capability.into()),
            }],
            ..NewApp::default()
        };
        new_app_record(id, spec).unwrap()
    }

    #[test]
    fn synced_apps_authenticate_after_the_configured_ones() {
        let registry = AppRegistry::open(&configured()).unwrap();
        let created = record("zz", r#"{"a":["publish"]}"#);
        let default = record(DEFAULT_APP_ID, r#"{"*":["*"]}"#);
        registry.sync([&created, &default].into_iter());

        let ids: Vec<String> = registry.list().iter().map(|a| a.id.clone()).collect();
        assert_eq!(ids, ["cfg", DEFAULT_APP_ID, "zz"]);
        let key_str = format!("{}:{}", created.keys[0].name, created.keys[0].secret);
        let (found, key) = registry.authenticate(&key_str).unwrap();
        assert_eq!(found.id, "zz");
        assert!(key.capability.allows("a", "publish"));
        assert!(registry.authenticate("cfg.k:s").is_ok());
    }

    #[test]
    fn apps_gone_from_the_control_plane_stop_authenticating() {
        let registry = AppRegistry::open(&[]).unwrap();
        let created = record("gone", r#"{"*":["*"]}"#);
        registry.sync(std::iter::once(&created));
        let key_str = format!("{}:{}", created.keys[0].name, created.keys[0].secret);
        assert!(registry.authenticate(&key_str).is_ok());

        assert_eq!(registry.sync(std::iter::empty()), ["gone"]);
        assert_eq!(registry.authenticate(&key_str).unwrap_err().code(), 40101);
        assert!(registry.is_empty());
    }

    #[test]
    fn wrong_or_unknown_keys_are_refused_with_40101() {
        let registry = AppRegistry::open(&configured()).unwrap();

        assert_eq!(
            registry.authenticate("cfg.k:nope").unwrap_err().code(),
            40101
        );
        assert_eq!(registry.authenticate("x.y:z").unwrap_err().code(), 40101);
        assert_eq!(registry.authenticate("garbage").unwrap_err().code(), 40101);
    }

    #[test]
    fn configured_apps_cannot_be_deleted_and_unknown_ones_are_not_found() {
        let registry = AppRegistry::open(&configured()).unwrap();
        assert_eq!(registry.check_deletable("cfg").unwrap_err().code(), 40300);
        assert_eq!(registry.check_deletable("nope").unwrap_err().code(), 40400);
    }

    #[test]
    fn a_bad_capability_is_refused_before_anything_is_written() {
        let spec = NewApp {
            keys: vec![NewKey {
                capability: Some("not json".into()),
            }],
            ..NewApp::default()
        };
        assert_eq!(new_app_record("x", spec).unwrap_err().code(), 40001);
    }
}
