//! The describe file: where a running Starling listens and which credentials it
//! accepts, for tests and tools (design.md, "The describe file").

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::apps::App;
use crate::data_dir::atomic_write;
use crate::node::Node;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Describe {
    pub admin_token: String,
    pub apps: Vec<DescribedApp>,
    pub global_masters: Vec<DescribedGlobalMaster>,
    pub regions: Vec<DescribedRegion>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedApp {
    pub id: String,
    pub keys: Vec<DescribedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedKey {
    pub key: String,
    pub capability: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedGlobalMaster {
    pub id: String,
    pub pid: u32,
    pub raft: Option<String>,
    pub http: Option<String>,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedRegion {
    pub name: String,
    pub entry: String,
    pub nodes: Vec<DescribedNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedNode {
    pub id: String,
    pub pid: u32,
    pub client: String,
    /// The client TLS listener (wss and https), when configured.
    #[serde(default)]
    pub client_tls: Option<String>,
    pub mesh: Option<String>,
    pub bridge: Option<String>,
    pub argv: Vec<String>,
}

impl DescribedApp {
    pub fn from_app(app: &App) -> Self {
        Self {
            id: app.id.clone(),
            keys: app
                .keys
                .iter()
                .map(|k| DescribedKey {
                    key: k.key_str(),
                    capability: k.capability_text.clone(),
                })
                .collect(),
        }
    }
}

/// What a single node reports: its region with itself as the only node it describes
/// (and the region's entry). There is no global master process yet, so
/// `global_masters` is empty.
pub fn single_node(node: &Node, client: SocketAddr, mesh: Option<SocketAddr>) -> Describe {
    let config = &node.config;
    let described = DescribedNode {
        id: config.node.id.clone(),
        pid: std::process::id(),
        client: client.to_string(),
        client_tls: None,
        mesh: mesh.map(|m| m.to_string()),
        bridge: None,
        argv: std::env::args().collect(),
    };
    Describe {
        admin_token: node.admin_token.clone(),
        apps: node
            .apps
            .list()
            .iter()
            .map(|a| DescribedApp::from_app(a))
            .collect(),
        global_masters: Vec::new(),
        regions: vec![DescribedRegion {
            name: config.node.region.clone(),
            entry: client.to_string(),
            nodes: vec![described],
        }],
    }
}

pub fn write(path: &Path, describe: &Describe) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(describe).map_err(std::io::Error::other)?;
    atomic_write(path, &json)
}
