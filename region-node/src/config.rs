//! Configuration: TOML sections, `STARLING_<SECTION>__<KEY>` environment overrides,
//! and the defaults of the no-argument one-node region.
//!
//! Unknown keys in a file are errors (every section denies them); unknown `STARLING_*`
//! variables are warnings, because a typo in an environment must not stop a fleet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

const ENV_PREFIX: &str = "STARLING_";

/// `STARLING_*` variables that steer the process rather than name a configuration key:
/// `STARLING_EXIT_WITH_PARENT` (set by `region-node dev`) stops a node once its
/// launcher is gone.
const PROCESS_VARIABLES: &[&str] = &["STARLING_EXIT_WITH_PARENT"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub listen: ListenConfig,
    pub mesh: MeshConfig,
    pub tls: TlsConfig,
    pub client_tls: ClientTlsConfig,
    pub admin: AdminConfig,
    pub connection: ConnectionConfig,
    pub limits: LimitsConfig,
    pub history: HistoryConfig,
    pub log: LogConfig,
    pub global: GlobalConfig,
    pub bridge: BridgeConfig,
    pub apps: Vec<AppConfig>,
}

/// Links to other regions (see `bridge`): where this node accepts them, and how long
/// publishes for a remote home are held while its link is down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// gRPC address other regions' nodes dial (mutual TLS with `[tls]`). Unset: the
    /// node neither accepts nor dials bridges, and channels homed in other regions
    /// are refused (50001).
    pub listen: Option<SocketAddr>,
    /// The address other regions are told to dial (`host:port`), when it is not the
    /// listen address: a load balancer or proxy in front of the node.
    pub advertise: Option<String>,
    /// Publishes held per channel while its home region is unreachable; more are
    /// refused at once.
    pub max_held: usize,
    /// How long a held publish waits for the link before it is refused.
    pub hold_ms: u64,
    /// Pause between attempts to reach a region whose link failed.
    pub retry_ms: u64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            listen: None,
            advertise: None,
            max_held: 1_000,
            hold_ms: 10_000,
            retry_ms: 500,
        }
    }
}

/// Where the node's control plane (apps, and later channel homes) lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalConfig {
    /// `listen.raft` addresses (`host:port`) of an external global master group,
    /// reached with the `[tls]` certificate. Empty: the node runs a one-member global
    /// master of its own, stored in `<data_dir>/global-master`.
    pub members: Vec<String>,
    /// How long creating or deleting an app may wait for the global master.
    pub request_timeout_ms: u64,
    /// How often the node reports its region alive to the global master.
    pub heartbeat_ms: u64,
    /// How often a channel master reports its channel in use, so the global master
    /// does not expire its home (keep it well below the global master's
    /// `homes.idle_expiry_ms`).
    pub home_touch_ms: u64,
    /// How long a committed heartbeat lets the region sequence. A region the global
    /// master has not confirmed for this long stops (NACKs 50003 and sends clients
    /// away), so a region cut off from the global master cannot sequence beside a new
    /// home; a new home waits this long (plus a margin) for a previous home that does
    /// not answer its handoff.
    pub lease_ms: u64,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            members: Vec::new(),
            request_timeout_ms: 10_000,
            heartbeat_ms: 5_000,
            home_touch_ms: 3_600_000,
            lease_ms: 15_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id within its region; shows up in logs and `serverId`.
    pub id: String,
    /// The region this node belongs to.
    pub region: String,
    /// Where the node keeps what must survive a restart (apps made through the admin
    /// API, the generated admin token and cluster secret).
    pub data_dir: PathBuf,
    /// Secret that authenticates connection keys. Generated into the data directory
    /// when absent; every node of a cluster must share it for resumes across nodes.
    pub cluster_secret: Option<String>,
    /// Threads of the node's async runtime; 0: one per core (or
    /// `TOKIO_WORKER_THREADS`).
    pub worker_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// WebSocket and REST address. Port 0 picks a free port (see the describe file).
    pub client: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// UDP address of this node's mesh endpoint. Unset: the node is a region of one.
    pub listen: Option<SocketAddr>,
    /// Mesh addresses of nodes to join through; any one live seed is enough.
    pub seeds: Vec<SocketAddr>,
    /// Keep-alive period on every mesh link.
    pub keepalive_ms: u64,
    /// A peer silent this long is dead (the failure detector).
    pub failure_timeout_ms: u64,
    /// How often unlinked seeds and members are dialed and membership is gossiped.
    pub dial_interval_ms: u64,
    /// Copies of every message in the region before it is acknowledged, master
    /// included.
    pub replication_factor: usize,
}

/// The cluster CA and this node's certificate, for the mesh's mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// An optional TLS listener for clients (wss and https) beside the plain one, serving
/// the same routes. Its certificate is public-facing (any CA the clients trust), not
/// the cluster CA of `[tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// TCP address of the TLS listener. Unset: no TLS listener.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key: Option<PathBuf>,
    /// How often the two files are read again; changed contents that load become the
    /// certificate of every later handshake, without a restart.
    pub reload_check_ms: u64,
}

impl Default for ClientTlsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            cert: None,
            key: None,
            reload_check_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for the admin API. Generated into the data directory when absent.
    pub token: Option<String>,
    /// Accept admin requests from loopback without a token. On in the no-argument
    /// default, off when a configuration file is given.
    pub loopback_without_token: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Longest silence the server allows itself towards a client (`maxIdleInterval`).
    pub max_idle_interval_ms: u64,
    /// How long a dropped connection's state is kept for a resume (`connectionStateTtl`).
    pub state_ttl_ms: u64,
    /// How long a connection lost without CLOSE keeps its presence members, counted
    /// from its last frame; a client may ask for another with `remainPresentFor`.
    pub presence_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message (name, clientId, data and extras), and the sum over one publish.
    pub max_message_size: usize,
    /// Most messages one publish may hold: each costs an id, a serial and an ACK entry
    /// whatever its size.
    pub max_messages_per_publish: usize,
    /// Largest WebSocket frame or REST body accepted.
    pub max_frame_size: usize,
    /// Bytes queued towards one connection before it is cut off as a slow consumer.
    pub max_connection_queue_bytes: usize,
    /// Publishes (MESSAGE, PRESENCE, ANNOTATION, OBJECT frames) one connection may
    /// send per second on average; announced to clients as `maxInboundRate`.
    pub max_inbound_rate: u32,
    /// Publishes a connection may send at once above that rate, such as the queue a
    /// client flushes after reconnecting.
    pub max_inbound_burst: u32,
    /// Channels one connection may be attached to at once.
    pub max_channels_per_connection: usize,
    /// WebSocket connections this node serves at once; REST is not counted.
    pub max_connections: usize,
    /// Presence members one channel may hold (91003 beyond).
    pub max_presence_members: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages younger than this are kept.
    pub max_age_ms: u64,
    /// At least this many of a channel's latest messages are kept, whatever their age.
    pub min_messages: usize,
    /// Hard bound on messages kept per channel.
    pub max_messages: usize,
    /// Hard bound on payload bytes kept per channel.
    pub max_bytes: usize,
    /// How long a message id is remembered to drop a republished duplicate.
    pub dedup_window_ms: u64,
    /// Hard bound on message ids remembered per channel.
    pub dedup_max_ids: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `starling_node=debug`. `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// An app declared in the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id; the full key name is `<app id>.<key id>`.
    pub id: String,
    pub secret: String,
    /// Capability JSON, for example `{"*":["*"]}`.
    #[serde(default = "default_capability")]
    pub capability: String,
}

pub fn default_capability() -> String {
    r#"{"*":["*"]}"#.to_owned()
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: "node-1".into(),
            region: "local".into(),
            data_dir: PathBuf::from("starling-data"),
            cluster_secret: None,
            worker_threads: 0,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: None,
            seeds: Vec::new(),
            keepalive_ms: 500,
            failure_timeout_ms: 3_000,
            dial_interval_ms: 500,
            replication_factor: 2,
        }
    }
}

impl TlsConfig {
    /// The three files, when all are configured.
    pub fn files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            ca_cert: self.ca_cert.clone()?,
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        })
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_idle_interval_ms: 15_000,
            state_ttl_ms: 120_000,
            presence_grace_ms: 15_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_messages_per_publish: 1_000,
            max_frame_size: 512 * 1024,
            max_connection_queue_bytes: 8 * 1024 * 1024,
            max_inbound_rate: 50,
            max_inbound_burst: 50,
            max_channels_per_connection: 200,
            max_connections: 10_000,
            max_presence_members: 20_000,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_age_ms: 120_000,
            min_messages: 100,
            max_messages: 10_000,
            max_bytes: 16 * 1024 * 1024,
            dedup_window_ms: 120_000,
            dedup_max_ids: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl ConnectionConfig {
    pub fn max_idle_interval(&self) -> Duration {
        Duration::from_millis(self.max_idle_interval_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} not found")]
    Missing { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: {0}")]
    Semantic(String),
}

/// A loaded configuration plus what the operator should hear about it.
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Loads defaults, then the file (if any), then `STARLING_*` overrides.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_with_env(file, &env)
}

pub fn load_with_env(file: Option<&Path>, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let mut defaults = Config::default();
    // The no-argument default is a developer's loopback node: let the admin API be
    // used from this machine without a token.
    defaults.admin.loopback_without_token = file.is_none();

    let mut figment = Figment::from(Serialized::defaults(&defaults));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.to_owned(),
            });
        }
        figment = figment.merge(Toml::file(path));
    }

    let (overrides, warnings) = split_env(env, &defaults);
    for (path, value, textual) in overrides {
        // Text keys take the value as written (an all-digit token is still text);
        // others are read the way figment reads environment variables, so numbers,
        // booleans and lists keep their types.
        let value: figment::value::Value = if textual {
            value.into()
        } else {
            value.parse().expect("parsing a value is infallible")
        };
        figment = figment.merge(Serialized::default(&path, value));
    }

    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Invalid(explain(e)))?;
    validate(&config)?;
    Ok(Loaded { config, warnings })
}

/// Figment's errors as an operator reads them: the key (without figment's profile
/// name), what is wrong with it, and where the value came from; one line per error.
fn explain(errors: figment::Error) -> String {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            let mut what = error.kind.to_string();
            if what.contains("socket address") {
                what.push_str(" (expected an IP address and port, such as \"127.0.0.1:8080\")");
            }
            let source = match error.metadata.as_ref() {
                // Environment overrides are merged as serialized values, whose source
                // figment names by the line of code that merged them.
                Some(m)
                    if matches!(m.source, Some(figment::Source::Code(_))) && !key.is_empty() =>
                {
                    let variable = error.path.join("__").to_uppercase();
                    format!(" (from the environment variable STARLING_{variable})")
                }
                Some(m) => (m.source.as_ref())
                    .map(|s| format!(" (from {s})"))
                    .unwrap_or_default(),
                None => String::new(),
            };
            match key.is_empty() {
                true => format!("{what}{source}"),
                false => format!("{key}: {what}{source}"),
            }
        })
        .collect();
    lines.join("; ")
}

/// Separates `STARLING_*` variables that name a configuration key from those that
/// don't: the known ones as (`section.key`, value, whether the key holds text), and a
/// warning per unknown one.
fn split_env(
    env: &[(String, String)],
    defaults: &Config,
) -> (Vec<(String, String, bool)>, Vec<String>) {
    let keys = known_keys(defaults);
    let mut known = Vec::new();
    let mut warnings = Vec::new();

    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if PROCESS_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let path = rest.to_ascii_lowercase().replace("__", ".");
        match keys.iter().find(|(key, _)| *key == path) {
            Some((_, textual)) => known.push((path, value.clone(), *textual)),
            None => warnings.push(format!("ignoring unknown environment variable {name}")),
        }
    }
    (known, warnings)
}

/// Every `section.key` path and whether it holds text (a string, or an optional value
/// that is unset by default: paths, addresses, secrets), read off the serialised
/// defaults so the list can't drift from the structs.
fn known_keys(defaults: &Config) -> Vec<(String, bool)> {
    let value = serde_json::to_value(defaults).expect("config serialises");
    let mut keys = Vec::new();
    if let serde_json::Value::Object(sections) = value {
        for (section, body) in sections {
            if let serde_json::Value::Object(fields) = body {
                keys.extend(
                    fields
                        .into_iter()
                        .map(|(k, v)| (format!("{section}.{k}"), v.is_string() || v.is_null())),
                );
            }
        }
    }
    keys
}

fn validate(config: &Config) -> Result<(), ConfigError> {
    // A filter that does not parse would silence the node's logs altogether.
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(ConfigError::Semantic(format!("log.level: {error}")));
    }
    let bad = |msg: String| Err(ConfigError::Semantic(msg));
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !plain(&config.node.id) || !plain(&config.node.region) {
        return bad("node.id and node.region must be non-empty letters, digits, '-' or '_'".into());
    }
    if !config.global.members.is_empty() && config.tls.files().is_none() {
        return bad(
            "global.members needs [tls] ca_cert, cert and key to reach the global master".into(),
        );
    }
    validate_limits(&config.limits)?;
    if config.limits.max_message_size > config.limits.max_frame_size {
        return bad("limits.max_message_size must not exceed limits.max_frame_size".into());
    }
    if config.mesh.listen.is_some() && config.tls.files().is_none() {
        return bad(
            "mesh.listen needs tls.ca_cert, tls.cert and tls.key (see `region-node ca`)".into(),
        );
    }
    if config.history.max_bytes > crate::mesh::wire::MAX_STATE_BYTES {
        return bad(format!(
            "history.max_bytes must be at most {} (a channel's state travels in one mesh frame)",
            crate::mesh::wire::MAX_STATE_BYTES
        ));
    }
    if config.mesh.replication_factor == 0 {
        return bad("mesh.replication_factor must be at least 1".into());
    }
    if config.global.lease_ms <= 2 * config.global.heartbeat_ms {
        return bad(
            "global.lease_ms must exceed two global.heartbeat_ms, or it lapses between heartbeats"
                .into(),
        );
    }
    let client_tls = &config.client_tls;
    if client_tls.listen.is_some() && (client_tls.cert.is_none() || client_tls.key.is_none()) {
        return bad("client_tls.listen needs client_tls.cert and client_tls.key".into());
    }
    if client_tls.reload_check_ms == 0 {
        return bad("client_tls.reload_check_ms must be at least 1".into());
    }
    if config.bridge.listen.is_some() && config.tls.files().is_none() {
        return bad("bridge.listen needs [tls] ca_cert, cert and key".into());
    }
    if config.mesh.keepalive_ms == 0 || config.mesh.failure_timeout_ms <= config.mesh.keepalive_ms {
        return bad("mesh.failure_timeout_ms must exceed mesh.keepalive_ms (> 0)".into());
    }
    if config.connection.max_idle_interval_ms < 100 {
        return bad("connection.max_idle_interval_ms must be at least 100".into());
    }
    for app in &config.apps {
        if app.id.is_empty() || app.id.contains(['.', ':']) {
            return bad(format!(
                "app id {:?} must be non-empty without '.' or ':'",
                app.id
            ));
        }
        for key in &app.keys {
            if key.id.is_empty() || key.id.contains(['.', ':']) || key.secret.is_empty() {
                return bad(format!("key {:?} of app {} is malformed", key.id, app.id));
            }
            if crate::capability::Capability::parse(&key.capability).is_err() {
                return bad(format!(
                    "key {} of app {} has invalid capability",
                    key.id, app.id
                ));
            }
        }
    }
    Ok(())
}

/// Checks that every file the configuration names exists and can be read, so a node
/// with a mistyped certificate path stops at once and says which key is wrong. Apart
/// from [`load`] because it looks at the filesystem.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    let (tls, client_tls) = (&config.tls, &config.client_tls);
    let files = [
        ("tls.ca_cert", "CA certificate", &tls.ca_cert),
        ("tls.cert", "certificate", &tls.cert),
        ("tls.key", "private key", &tls.key),
        ("client_tls.cert", "certificate", &client_tls.cert),
        ("client_tls.key", "private key", &client_tls.key),
    ];
    for (key, what, path) in files {
        if let Some(path) = path {
            readable_file(key, what, path)?;
        }
    }

    // Readable is not enough: the files must load as the node will load them.
    let unusable =
        |keys: &str, error: anyhow::Error| ConfigError::Semantic(format!("{keys}: {error:#}"));
    if let Some(files) = tls.files() {
        crate::tls::check(&files).map_err(|e| unusable("tls.ca_cert, tls.cert, tls.key", e))?;
    }
    if let (Some(cert), Some(key)) = (&client_tls.cert, &client_tls.key) {
        crate::client_tls::check(cert, key)
            .map_err(|e| unusable("client_tls.cert, client_tls.key", e))?;
    }
    Ok(())
}

/// `path` is a file this process can open, or an error naming `key`.
pub fn readable_file(key: &str, what: &str, path: &Path) -> Result<(), ConfigError> {
    let problem = match std::fs::File::open(path) {
        Ok(file) => match file.metadata() {
            Ok(meta) if meta.is_file() => return Ok(()),
            Ok(_) => "is not a file".to_owned(),
            Err(error) => error.to_string(),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "not found".to_owned(),
        Err(error) => error.to_string(),
    };
    Err(ConfigError::Semantic(format!(
        "{key}: {what} file {} {problem}",
        path.display()
    )))
}

/// A limit of zero would refuse every client, which is never what an operator meant.
fn validate_limits(limits: &LimitsConfig) -> Result<(), ConfigError> {
    let zero = [
        ("max_message_size", limits.max_message_size),
        ("max_messages_per_publish", limits.max_messages_per_publish),
        ("max_frame_size", limits.max_frame_size),
        (
            "max_connection_queue_bytes",
            limits.max_connection_queue_bytes,
        ),
        ("max_inbound_rate", limits.max_inbound_rate as usize),
        ("max_inbound_burst", limits.max_inbound_burst as usize),
        (
            "max_channels_per_connection",
            limits.max_channels_per_connection,
        ),
        ("max_connections", limits.max_connections),
        ("max_presence_members", limits.max_presence_members),
    ]
    .into_iter()
    .find(|(_, value)| *value == 0);
    match zero {
        Some((key, _)) => Err(ConfigError::Semantic(format!(
            "limits.{key} must be at least 1"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn file_and_env_layer_over_defaults() {
        let f = file("[node]\nid = \"n7\"\n[listen]\nclient = \"127.0.0.1:0\"\n");
        let env = vec![("STARLING_LIMITS__MAX_MESSAGE_SIZE".into(), "1000".into())];
        let loaded = load_with_env(Some(f.path()), &env).unwrap();

        assert_eq!(loaded.config.node.id, "n7");
        assert_eq!(loaded.config.listen.client.port(), 0);
        assert_eq!(loaded.config.limits.max_message_size, 1000);
        assert!(!loaded.config.admin.loopback_without_token);
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn text_keys_take_digit_only_values_as_text() {
        let env = vec![
            ("STARLING_NODE__ID".into(), "123".into()),
            ("STARLING_ADMIN__TOKEN".into(), "123456".into()),
            ("STARLING_MESH__SEEDS".into(), "[\"127.0.0.1:9\"]".into()),
        ];
        let config = load_with_env(None, &env).unwrap().config;
        assert_eq!(config.node.id, "123");
        assert_eq!(config.admin.token.as_deref(), Some("123456"));
        assert_eq!(config.mesh.seeds.len(), 1);
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let f = file("[node]\nidd = \"n7\"\n");
        let err = load_with_env(Some(f.path()), &[]).err().unwrap();
        assert!(err.to_string().contains("idd"), "{err}");
    }

    #[test]
    fn unknown_env_var_is_a_warning() {
        let env = vec![("STARLING_NODE__IDD".into(), "x".into())];
        let loaded = load_with_env(None, &env).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.config.admin.loopback_without_token);
    }

    #[test]
    fn limits_are_read_from_the_environment_and_zero_is_refused() {
        let env = vec![
            ("STARLING_LIMITS__MAX_INBOUND_RATE".into(), "5".into()),
            ("STARLING_LIMITS__MAX_CONNECTIONS".into(), "3".into()),
        ];
        let limits = load_with_env(None, &env).unwrap().config.limits;
        assert_eq!((limits.max_inbound_rate, limits.max_connections), (5, 3));
        assert_eq!(limits.max_channels_per_connection, 200);

        let env = vec![(
            "STARLING_LIMITS__MAX_CHANNELS_PER_CONNECTION".into(),
            "0".into(),
        )];
        let err = load_with_env(None, &env).err().unwrap();
        assert!(
            err.to_string().contains("max_channels_per_connection"),
            "{err}"
        );
    }

    #[test]
    fn a_client_tls_listener_needs_a_certificate_and_key() {
        let f = file("[client_tls]\nlisten = \"127.0.0.1:0\"\ncert = \"c.pem\"\n");
        let err = load_with_env(Some(f.path()), &[]).err().unwrap();
        assert!(err.to_string().contains("client_tls.key"), "{err}");

        let env = vec![
            ("STARLING_CLIENT_TLS__LISTEN".into(), "127.0.0.1:0".into()),
            ("STARLING_CLIENT_TLS__CERT".into(), "c.pem".into()),
            ("STARLING_CLIENT_TLS__KEY".into(), "k.pem".into()),
        ];
        let tls = load_with_env(None, &env).unwrap().config.client_tls;
        assert_eq!(tls.key.as_deref(), Some(Path::new("k.pem")));
        assert_eq!(tls.reload_check_ms, 10_000);
    }

    #[test]
    fn worker_threads_default_to_one_per_core_and_are_read_from_the_environment() {
        assert_eq!(
            load_with_env(None, &[]).unwrap().config.node.worker_threads,
            0
        );
        let env = vec![("STARLING_NODE__WORKER_THREADS".into(), "1".into())];
        let loaded = load_with_env(None, &env).unwrap();
        assert_eq!(loaded.config.node.worker_threads, 1);
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn apps_are_read_from_the_file() {
        let f = file("[[apps]]\nid = \"app1\"\n[[apps.keys]]\nid = \"k1\"\nsecret = \"s\"\n");
        let loaded = load_with_env(Some(f.path()), &[]).unwrap();
        assert_eq!(loaded.config.apps[0].keys[0].capability, r#"{"*":["*"]}"#);
    }
}
