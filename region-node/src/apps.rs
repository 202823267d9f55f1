//! Apps and their API keys: declared in the configuration, or created through the
//! admin API and kept in the data directory until the global master holds them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::capability::Capability;
use crate::config::{default_capability, AppConfig, KeyConfig};
use crate::data_dir::{atomic_write, random_string};
use crate::error::AblyError;

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

/// What the admin API and the data directory store for an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredApp {
    pub id: String,
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
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
    /// App ids in the order they were declared or created: the first is the node's
    /// default app, the one its banner and describe file show first.
    order: Vec<String>,
    keys: HashMap<String, (Arc<App>, Arc<Key>)>,
}

pub struct AppRegistry {
    tables: RwLock<Tables>,
    store: PathBuf,
}

impl AppRegistry {
    /// Loads config apps and stored apps. When there are none at all, creates (and
    /// stores) a default app whose key allows everything, so a bare node is usable.
    pub fn open(configured: &[AppConfig], store: PathBuf) -> anyhow::Result<Self> {
        let registry = Self {
            tables: RwLock::new(Tables::default()),
            store,
        };

        for app in configured {
            registry.insert(build_app(&app.id, &app.keys, Vec::new(), true)?);
        }
        for app in registry.read_store()? {
            registry.insert(build_app(&app.id, &app.keys, app.namespaces, false)?);
        }
        if registry.tables.read().apps.is_empty() {
            registry.create(NewApp::default())?;
        }
        Ok(registry)
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

    /// Creates an app with fresh ids and secrets and stores it before returning.
    pub fn create(&self, spec: NewApp) -> Result<Arc<App>, AblyError> {
        let id = random_string(8);
        let specs = if spec.keys.is_empty() {
            vec![NewKey::default()]
        } else {
            spec.keys
        };
        let keys: Vec<KeyConfig> = specs
            .into_iter()
            .map(|k| KeyConfig {
                id: random_string(8),
                secret: random_string(40),
                capability: k.capability.unwrap_or_else(default_capability),
            })
            .collect();

        let app = build_app(&id, &keys, spec.namespaces, false)
            .map_err(|e| AblyError::InvalidBody(e.to_string()))?;
        let app = self.insert(app);
        self.write_store()
            .map_err(|e| AblyError::Internal(format!("storing apps: {e}")))?;
        Ok(app)
    }

    /// Removes an app created through the API. Apps from the configuration stay.
    pub fn delete(&self, id: &str) -> Result<Arc<App>, AblyError> {
        let removed = {
            let mut tables = self.tables.write();
            match tables.apps.get(id) {
                None => return Err(AblyError::NotFound(format!("app {id}"))),
                Some(app) if app.from_config => {
                    return Err(AblyError::Forbidden(format!(
                        "app {id} is declared in the configuration file"
                    )));
                }
                Some(_) => {}
            }
            tables.keys.retain(|_, (app, _)| app.id != id);
            tables.order.retain(|known| known != id);
            tables.apps.remove(id).expect("checked above")
        };
        self.write_store()
            .map_err(|e| AblyError::Internal(format!("storing apps: {e}")))?;
        Ok(removed)
    }

    fn insert(&self, app: App) -> Arc<App> {
        let app = Arc::new(app);
        let mut tables = self.tables.write();
        for key in &app.keys {
            tables
                .keys
                .insert(key.name.clone(), (app.clone(), key.clone()));
        }
        if tables.apps.insert(app.id.clone(), app.clone()).is_none() {
            tables.order.push(app.id.clone());
        }
        app
    }

    fn read_store(&self) -> anyhow::Result<Vec<StoredApp>> {
        if !self.store.exists() {
            return Ok(Vec::new());
        }
        Ok(serde_json::from_slice(&std::fs::read(&self.store)?)?)
    }

    fn write_store(&self) -> anyhow::Result<()> {
        let stored: Vec<StoredApp> = self
            .list()
            .into_iter()
            .filter(|app| !app.from_config)
            .map(|app| StoredApp {
                id: app.id.clone(),
                keys: app.keys.iter().map(|k| to_key_config(&app.id, k)).collect(),
                namespaces: app.namespaces.clone(),
            })
            .collect();
        atomic_write(&self.store, &serde_json::to_vec_pretty(&stored)?)?;
        Ok(())
    }
}

fn to_key_config(app_id: &str, key: &Key) -> KeyConfig {
    let id = key
        .name
        .strip_prefix(app_id)
        .and_then(|s| s.strip_prefix('.'))
        .unwrap_or(&key.name);
    KeyConfig {
        id: id.to_owned(),
        secret: key.secret.clone(),
        capability: key.capability_text.clone(),
    }
}

fn build_app(
    id: &str,
    keys: &[KeyConfig],
    namespaces: Vec<Namespace>,
    from_config: bool,
) -> anyhow::Result<App> {
    let keys = keys
        .iter()
        .map(|k| {
            Ok(Arc::new(Key {
                name: format!("{id}.{}", k.id),
                secret: k.secret.clone(),
                capability_text: k.capability.clone(),
                capability: Capability::parse(&k.capability)?,
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

    #[test]
    fn created_apps_survive_a_reopen_and_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("apps.json");
        let registry = AppRegistry::open(&[], store.clone()).unwrap();
        let default = registry.list()[0].clone();

        let spec = NewApp {
            keys: vec![NewKey {
                capability: Some(r#"{"a":["publish"]}"#.into()),
            }],
            ..NewApp::default()
        };
        let app = registry.create(spec).unwrap();
        let key_str = app.keys[0].key_str();

        let reopened = AppRegistry::open(&[], store).unwrap();
        assert_eq!(reopened.list().len(), 2, "default app plus the created one");
        assert_eq!(
            reopened.list()[0].id,
            default.id,
            "the default app stays first"
        );
        let (found, key) = reopened.authenticate(&key_str).unwrap();
        assert_eq!(found.id, app.id);
        assert!(key.capability.allows("a", "publish"));
        assert!(reopened.get(&default.id).is_some());
    }

    #[test]
    fn wrong_or_unknown_keys_are_refused_with_40101() {
        let dir = tempfile::tempdir().unwrap();
        let registry = AppRegistry::open(&[], dir.path().join("apps.json")).unwrap();
        let key = registry.list()[0].keys[0].clone();

        let wrong = format!("{}:nope", key.name);
        assert_eq!(registry.authenticate(&wrong).unwrap_err().code(), 40101);
        assert_eq!(registry.authenticate("x.y:z").unwrap_err().code(), 40101);
        assert_eq!(registry.authenticate("garbage").unwrap_err().code(), 40101);
    }

    #[test]
    fn deleted_apps_stop_authenticating() {
        let dir = tempfile::tempdir().unwrap();
        let registry = AppRegistry::open(&[], dir.path().join("apps.json")).unwrap();
        let app = registry.create(NewApp::default()).unwrap();
        let key_str = app.keys[0].key_str();

        registry.delete(&app.id).unwrap();
        assert!(registry.authenticate(&key_str).is_err());
        assert_eq!(registry.delete(&app.id).unwrap_err().code(), 40400);
    }
}
