//! Configuration of a global master member: TOML sections, `STARLING_<SECTION>__<KEY>`
//! environment overrides, and defaults.
//!
//! The conventions are region-node's: unknown keys in a file are errors (every section
//! denies them); unknown `STARLING_*` variables are warnings, because a typo in an
//! environment must not stop a fleet. (The loader is duplicated rather than shared so
//! the global master does not depend on the region node.)
//!
//! ```toml
//! [member]
//! id = 1
//! data_dir = "/var/lib/starling/gm-1"
//!
//! [listen]
//! raft = "0.0.0.0:7100"   # raft RPCs and the Control API (gRPC, mutual TLS)
//! http = "0.0.0.0:7101"   # /health, /health/live, /metrics
//!
//! [cluster]
//! members = [
//!   { id = 1, raft_addr = "gm-1:7100", http_addr = "gm-1:7101", region = "eu" },
//!   { id = 2, raft_addr = "gm-2:7100", http_addr = "gm-2:7101", region = "us" },
//!   { id = 3, raft_addr = "gm-3:7100", http_addr = "gm-3:7101", region = "ap" },
//! ]
//!
//! [homes]
//! idle_expiry_ms = 86400000     # forget homes of channels idle this long (0: never)
//! expiry_interval_ms = 60000    # how often the leader looks for them
//!
//! [regions]
//! lost_after_ms = 0             # declare a silent region lost after this long (0: never)
//! check_interval_ms = 1000      # how often the leader looks for silent regions
//!
//! [tls]
//! ca_cert = "ca.pem"
//! cert = "gm-1.pem"
//! key = "gm-1.key"
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use starling_proto::tls::TlsFiles;

use crate::store::NodeId;

const ENV_PREFIX: &str = "STARLING_";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub member: MemberConfig,
    pub listen: ListenConfig,
    pub cluster: ClusterConfig,
    pub homes: HomesConfig,
    pub regions: RegionsConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemberConfig {
    /// This member's raft id: unique in the group, at least 1, never reused for another
    /// data directory.
    pub id: NodeId,
    /// Where the raft log, the state machine and snapshots live (`global-master.redb`).
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Raft RPCs and the Control API (gRPC over mutual TLS). Port 0 picks a free port
    /// (the describe file reports it), which only makes sense for a group of one.
    pub raft: SocketAddr,
    /// `/health`, `/health/live` and `/metrics` (plain HTTP). Port 0 picks a free port.
    pub http: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The initial voters, this member among them. Empty: a group of one, this member
    /// alone at the addresses it bound. The member with the lowest id initializes the
    /// group when its log is empty; the others wait to be contacted.
    pub members: Vec<MemberAddr>,
    /// How often the leader sends heartbeats.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range stands for
    /// election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log behind it) every this many log entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot, so a member that fell a little behind
    /// catches up from the log rather than by receiving the whole snapshot.
    pub snapshot_keep_logs: u64,
    /// How long a write or a linearizable read may wait for the group before it fails
    /// with a retriable `UNAVAILABLE` (no quorum, an election under way).
    pub request_timeout_ms: u64,
}

/// One member of the group and where the others reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberAddr {
    pub id: NodeId,
    /// `host:port` of the member's `listen.raft`, as the other members dial it.
    pub raft_addr: String,
    /// `host:port` of the member's `listen.http`, reported by Status.
    #[serde(default)]
    pub http_addr: String,
    /// The region the member runs in, if it runs beside one. Only read to warn about
    /// layouts that one region's loss would stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// The leader's timer over channel homes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomesConfig {
    /// The leader forgets the home of a channel not used for this long (its next use
    /// assigns a new one, under a higher epoch). 0: homes never expire.
    pub idle_expiry_ms: u64,
    /// How often the leader commits the expiry.
    pub expiry_interval_ms: u64,
}

/// The leader's timer over regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionsConfig {
    /// The leader declares a region lost (re-homing its channels) once none of its nodes
    /// sent a heartbeat for this long, and only after leading for this long itself. 0
    /// (the default): only an operator declares a region lost, because a region cut off
    /// from the global master may still be serving its clients.
    pub lost_after_ms: u64,
    /// How often the leader looks for silent regions.
    pub check_interval_ms: u64,
}

/// The cluster CA and this member's certificate. Required: raft and the Control API
/// accept only clients the cluster CA certified.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `starling_global=debug`. `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for MemberConfig {
    fn default() -> Self {
        Self {
            id: 1,
            data_dir: PathBuf::from("global-master-data"),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            raft: SocketAddr::from(([127, 0, 0, 1], 7100)),
            http: SocketAddr::from(([127, 0, 0, 1], 7101)),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            members: Vec::new(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_logs: 5_000,
            snapshot_keep_logs: 1_000,
            request_timeout_ms: 5_000,
        }
    }
}

impl Default for HomesConfig {
    fn default() -> Self {
        Self {
            idle_expiry_ms: 24 * 60 * 60 * 1000,
            expiry_interval_ms: 60_000,
        }
    }
}

impl Default for RegionsConfig {
    fn default() -> Self {
        Self {
            lost_after_ms: 0,
            check_interval_ms: 1_000,
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

impl TlsConfig {
    /// The three files, when all are configured.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            ca_cert: self.ca_cert.clone()?,
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        })
    }
}

impl ClusterConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The configured member with this id.
    pub fn member(&self, id: NodeId) -> Option<&MemberAddr> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Whether `id` is the one member that initializes a new group.
    pub fn is_bootstrapper(&self, id: NodeId) -> bool {
        self.members
            .iter()
            .map(|m| m.id)
            .min()
            .is_none_or(|min| min == id)
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

/// Loads defaults, then the file (if any), then `STARLING_*` overrides. Call
/// [`validate`] once command-line overrides are applied too.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_with_env(file, &env)
}

pub fn load_with_env(file: Option<&Path>, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let defaults = Config::default();
    let mut figment = Figment::from(Serialized::defaults(&defaults));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.to_owned(),
            });
        }
        figment = figment.merge(Toml::file(path));
    }

    let (overrides, mut warnings) = split_env(env, &defaults);
    for (path, value, textual) in overrides {
        // Text keys take the value as written (an all-digit path is still text);
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
    warnings.extend(layout_warnings(&config.cluster));
    Ok(Loaded { config, warnings })
}

/// Layouts that work but fail worse than the operator likely expects.
fn layout_warnings(cluster: &ClusterConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    let voters = cluster.members.len();
    if voters > 0 && voters.is_multiple_of(2) {
        warnings.push(format!(
            "LAYOUT: cluster.members has {voters} voters, an even number: a group of {voters} \
             tolerates no more failures than a group of {fewer}, and a split in half stops \
             it. Use 3 or 5 members.",
            fewer = voters - 1,
        ));
    }

    // Only a layout where every member names its region can be judged.
    let regions: Option<BTreeSet<&str>> = (cluster.members.iter())
        .map(|m| m.region.as_deref())
        .collect();
    if let Some(regions) = regions.filter(|r| r.len() == 2) {
        let names: Vec<&str> = regions.into_iter().collect();
        warnings.push(format!(
            "LAYOUT: the {voters} voters of cluster.members run in only two regions ({}): \
             losing the region that holds the majority stops the global master. Put a \
             member in a third region.",
            names.join(", "),
        ));
    }
    warnings
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
            let source = (error.metadata.as_ref())
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (from {s})"))
                .unwrap_or_default();
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
        // Read by the process itself, not configuration (see `main.rs`).
        if name == "STARLING_EXIT_WITH_PARENT" {
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
/// that is unset by default), read off the serialised defaults so the list can't drift
/// from the structs.
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

/// Checks that the certificate files exist and can be read, naming the key that is
/// wrong. Apart from [`validate`] because it looks at the filesystem.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    let tls = &config.tls;
    let files = [
        ("tls.ca_cert", "CA certificate", &tls.ca_cert),
        ("tls.cert", "certificate", &tls.cert),
        ("tls.key", "private key", &tls.key),
    ];
    for (key, what, path) in files {
        let Some(path) = path else { continue };
        let problem = match std::fs::File::open(path) {
            Ok(file) => match file.metadata() {
                Ok(meta) if meta.is_file() => continue,
                Ok(_) => "is not a file".to_owned(),
                Err(error) => error.to_string(),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => "not found".to_owned(),
            Err(error) => error.to_string(),
        };
        return Err(ConfigError::Semantic(format!(
            "{key}: {what} file {} {problem}",
            path.display()
        )));
    }
    Ok(())
}

/// Checks what the types cannot.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let bad = |msg: String| Err(ConfigError::Semantic(msg));
    let cluster = &config.cluster;
    if config.member.id == 0 {
        return bad("member.id must be at least 1 (0 means \"no leader\" in Status)".into());
    }
    if config.tls.files().is_none() {
        return bad(
            "tls.ca_cert, tls.cert and tls.key are required: raft and the Control API only \
             speak mutual TLS (see `global-master ca`)"
                .into(),
        );
    }
    let mut ids = BTreeSet::new();
    for member in &cluster.members {
        if member.id == 0 {
            return bad("cluster.members: ids start at 1".into());
        }
        if !ids.insert(member.id) {
            return bad(format!("cluster.members: id {} appears twice", member.id));
        }
        if member.raft_addr.is_empty() {
            return bad(format!(
                "cluster.members: member {} has no raft_addr",
                member.id
            ));
        }
    }
    if !cluster.members.is_empty() && cluster.member(config.member.id).is_none() {
        return bad(format!(
            "member.id {} is not among cluster.members",
            config.member.id
        ));
    }
    if cluster.members.len() > 1 && config.listen.raft.port() == 0 {
        return bad("listen.raft needs a fixed port in a group of several members".into());
    }
    if cluster.heartbeat_ms == 0 {
        return bad("cluster.heartbeat_ms must be at least 1".into());
    }
    if cluster.election_timeout_min_ms <= cluster.heartbeat_ms
        || cluster.election_timeout_max_ms <= cluster.election_timeout_min_ms
    {
        return bad(
            "cluster timers must satisfy heartbeat_ms < election_timeout_min_ms < \
             election_timeout_max_ms"
                .into(),
        );
    }
    if cluster.snapshot_logs == 0 {
        return bad("cluster.snapshot_logs must be at least 1".into());
    }
    if cluster.request_timeout_ms == 0 {
        return bad("cluster.request_timeout_ms must be at least 1".into());
    }
    if config.homes.idle_expiry_ms > 0 && config.homes.expiry_interval_ms == 0 {
        return bad("homes.expiry_interval_ms must be at least 1 when homes expire".into());
    }
    if config.regions.lost_after_ms > 0 && config.regions.check_interval_ms == 0 {
        return bad("regions.check_interval_ms must be at least 1 when regions expire".into());
    }
    Ok(())
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

    const TLS: &str = "[tls]\nca_cert = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";

    #[test]
    fn file_and_env_layer_over_defaults() {
        let f = file(&format!(
            "[member]\nid = 2\n[listen]\nraft = \"127.0.0.1:7200\"\n[cluster]\nmembers = [\
             {{ id = 1, raft_addr = \"127.0.0.1:7100\" }},\
             {{ id = 2, raft_addr = \"127.0.0.1:7200\", http_addr = \"127.0.0.1:7201\" }},\
             {{ id = 3, raft_addr = \"127.0.0.1:7300\" }}]\n{TLS}"
        ));
        let env = vec![
            ("STARLING_CLUSTER__HEARTBEAT_MS".into(), "50".into()),
            ("STARLING_MEMBER__DATA_DIR".into(), "1234".into()),
        ];
        let loaded = load_with_env(Some(f.path()), &env).unwrap();
        let config = loaded.config;
        validate(&config).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

        assert_eq!(config.member.id, 2);
        assert_eq!(config.member.data_dir, PathBuf::from("1234"));
        assert_eq!(config.cluster.heartbeat_ms, 50);
        assert_eq!(config.cluster.election_timeout_min_ms, 300);
        assert_eq!(config.cluster.members.len(), 3);
        assert_eq!(config.cluster.members[1].http_addr, "127.0.0.1:7201");
        assert!(config.cluster.is_bootstrapper(1));
        assert!(!config.cluster.is_bootstrapper(2));
    }

    #[test]
    fn unknown_file_key_is_an_error_and_unknown_env_a_warning() {
        let f = file("[member]\nidd = 1\n");
        let err = load_with_env(Some(f.path()), &[]).err().unwrap();
        assert!(err.to_string().contains("idd"), "{err}");

        let env = vec![("STARLING_MEMBER__IDD".into(), "1".into())];
        let loaded = load_with_env(None, &env).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn an_even_number_of_voters_is_warned_about() {
        let f = file(
            "[cluster]\nmembers = [{ id = 1, raft_addr = \"a:1\" }, { id = 2, raft_addr = \"b:1\" }]\n",
        );
        let loaded = load_with_env(Some(f.path()), &[]).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("even"), "{:?}", loaded.warnings);
    }

    #[test]
    fn voters_in_only_two_regions_are_warned_about() {
        let members = |regions: [&str; 3]| {
            let list: Vec<String> = (regions.iter().enumerate())
                .map(|(i, r)| format!("{{ id = {}, raft_addr = \"m{i}:1\"{r} }}", i + 1))
                .collect();
            let f = file(&format!("[cluster]\nmembers = [{}]\n", list.join(", ")));
            load_with_env(Some(f.path()), &[]).unwrap().warnings
        };

        let two = members([
            ", region = \"eu\"",
            ", region = \"us\"",
            ", region = \"eu\"",
        ]);
        assert_eq!(two.len(), 1, "{two:?}");
        assert!(two[0].contains("only two regions (eu, us)"), "{two:?}");

        let three = members([
            ", region = \"eu\"",
            ", region = \"us\"",
            ", region = \"ap\"",
        ]);
        assert!(three.is_empty(), "{three:?}");
        // A member without a region leaves the layout unknown: no guess, no warning.
        let unknown = members([", region = \"eu\"", ", region = \"us\"", ""]);
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn an_even_number_of_voters_in_two_regions_gets_both_warnings() {
        let f = file(
            "[cluster]\nmembers = [{ id = 1, raft_addr = \"a:1\", region = \"eu\" }, \
             { id = 2, raft_addr = \"b:1\", region = \"us\" }]\n",
        );
        let warnings = load_with_env(Some(f.path()), &[]).unwrap().warnings;
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().all(|w| w.starts_with("LAYOUT")));
    }

    #[test]
    fn timers_have_defaults_and_env_overrides() {
        let defaults = load_with_env(None, &[]).unwrap().config;
        assert_eq!(defaults.homes.idle_expiry_ms, 86_400_000);
        assert_eq!(defaults.regions.lost_after_ms, 0);

        let env = vec![
            ("STARLING_HOMES__IDLE_EXPIRY_MS".into(), "1500".into()),
            ("STARLING_REGIONS__LOST_AFTER_MS".into(), "2000".into()),
        ];
        let loaded = load_with_env(None, &env).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.homes.idle_expiry_ms, 1500);
        assert_eq!(loaded.config.regions.lost_after_ms, 2000);
    }

    #[test]
    fn nonsense_is_refused() {
        let refuse = |text: &str| {
            let f = file(&format!("{text}\n{TLS}"));
            let config = load_with_env(Some(f.path()), &[]).unwrap().config;
            validate(&config).unwrap_err().to_string()
        };
        assert!(refuse("[member]\nid = 0").contains("member.id"));
        assert!(
            refuse("[member]\nid = 4\n[cluster]\nmembers = [{ id = 1, raft_addr = \"a:1\" }]")
                .contains("not among")
        );
        assert!(refuse("[cluster]\nheartbeat_ms = 500").contains("heartbeat_ms <"));
        assert!(refuse("[homes]\nexpiry_interval_ms = 0").contains("homes.expiry_interval_ms"));
        assert!(refuse("[regions]\nlost_after_ms = 5\ncheck_interval_ms = 0").contains("regions."));

        let no_tls = load_with_env(None, &[]).unwrap().config;
        assert!(validate(&no_tls).unwrap_err().to_string().contains("tls"));
    }
}
