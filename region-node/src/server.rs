//! Assembles a node from its configuration, binds its listener and serves until
//! shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing::info;

use crate::apps::AppRegistry;
use crate::channels::Channels;
use crate::config::Config;
use crate::connection_key::KeySigner;
use crate::data_dir::DataDir;
use crate::node::{now_ms, Connections, Node};
use crate::{describe, health, rest, ws};

/// How often idle channels and expired history are swept.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);

pub struct Running {
    pub node: Arc<Node>,
    pub client_addr: SocketAddr,
}

/// Builds the node's state from configuration and its data directory.
pub fn build_node(config: Config) -> anyhow::Result<Arc<Node>> {
    let data = DataDir::open(&config.node.data_dir)
        .with_context(|| format!("opening data directory {}", config.node.data_dir.display()))?;
    let secrets = data.secrets().context("reading node secrets")?;
    let apps = AppRegistry::open(&config.apps, data.path("apps.json")).context("loading apps")?;

    let cluster_secret = config
        .node
        .cluster_secret
        .clone()
        .unwrap_or(secrets.cluster_secret);
    let admin_token = config.admin.token.clone().unwrap_or(secrets.admin_token);
    Ok(Arc::new(Node {
        channels: Channels::new(config.history.clone()),
        apps,
        connections: Connections::default(),
        keys: KeySigner::new(&cluster_secret),
        admin_token,
        config,
    }))
}

pub fn router(node: Arc<Node>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/", get(ws::upgrade))
        .route("/health", get(health::ready))
        .route("/health/live", get(health::live))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .merge(rest::router())
        .with_state(node)
}

/// Binds the client listener, writes the describe file, and serves until `shutdown`
/// resolves.
pub async fn serve(
    config: Config,
    describe_path: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing metrics")?;
    let node = build_node(config)?;
    let listener = TcpListener::bind(node.config.listen.client)
        .await
        .with_context(|| format!("binding {}", node.config.listen.client))?;
    let client_addr = listener.local_addr()?;

    spawn_sweeper(node.clone());
    if let Some(path) = &describe_path {
        let described = describe::single_node(
            &node.admin_token,
            &node.apps.list(),
            &node.config.node.region,
            &node.config.node.id,
            client_addr,
        );
        describe::write(path, &described).with_context(|| format!("writing {}", path.display()))?;
    }

    print_banner(&node, client_addr);
    info!(
        node.id = %node.config.node.id,
        region.id = %node.config.node.region,
        listen.client = %client_addr,
        "region node ready"
    );

    let app = router(node, metrics).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    info!("region node stopped");
    Ok(())
}

fn spawn_sweeper(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SWEEP_PERIOD);
        loop {
            ticker.tick().await;
            node.channels.sweep(now_ms());
            metrics::gauge!("starling_channels").set(node.channels.len() as f64);
        }
    });
}

/// Tells a person at a terminal how to use this node. Standard output, not the log:
/// the key is meant to be copied, and logs never carry secrets.
fn print_banner(node: &Node, addr: SocketAddr) {
    let Some(key) = node
        .apps
        .list()
        .first()
        .and_then(|app| app.keys.first().cloned())
    else {
        return;
    };
    let host = addr.ip();
    let port = addr.port();
    println!(
        "Starling region node {} (region {}) on {addr}",
        node.config.node.id, node.config.node.region
    );
    println!("API key: {}", key.key_str());
    println!(
        "ably-js: new Ably.Realtime({{ key: '{}', endpoint: '{host}', port: {port}, tls: false, disableConnectivityCheck: true }})",
        key.key_str()
    );
}
