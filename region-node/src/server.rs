//! Assembles a node from its configuration, binds its listeners and serves until
//! shutdown.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::serve::{Listener as _, ListenerExt};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::apps::AppRegistry;
use crate::auth::nonce_claims::RegionNonces;
use crate::bridge::{DialSettings, Dialer};
use crate::config::Config;
use crate::connection_key::KeySigner;
use crate::control::ControlPlane;
use crate::data_dir::DataDir;
use crate::error::AblyError;
use crate::mesh::{MemberInfo, Mesh, MeshInbound, MeshSettings};
use crate::node::{now_ms, Connections, Node};
use crate::observe;
use crate::region::{BridgeLink, MeshLink, Region, RegionSettings};
use crate::{client_tls, dashboard, describe, health, rest, ws};
use starling_proto::tls::TlsFiles;

/// How long draining waits for clients to be told to go.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// How often region statistics are exported as metrics.
const STATS_PERIOD: Duration = Duration::from_secs(1);

/// Builds the node's state from configuration and its data directory, joining the
/// region mesh when one is configured.
pub async fn build_node(
    config: Config,
    client_addr: SocketAddr,
    bridge_addr: Option<SocketAddr>,
) -> anyhow::Result<Arc<Node>> {
    let data = DataDir::open(&config.node.data_dir)
        .with_context(|| format!("opening data directory {}", config.node.data_dir.display()))?;
    let secrets = data.secrets().context("reading node secrets")?;
    let apps = Arc::new(AppRegistry::open(&config.apps).context("loading apps")?);
    let connections = Arc::new(Connections::default());
    let control = ControlPlane::start(&config, &data, apps.clone(), connections.clone())
        .await
        .context("starting the control plane")?;

    let (mesh, link, nonces) = match start_mesh(&config, client_addr, bridge_addr).await? {
        Some((mesh, inbound)) => {
            let nonces = RegionNonces::start(mesh.clone(), inbound.nonces);
            let link = MeshLink {
                mesh: mesh.clone(),
                inbound: inbound.channels,
            };
            (Some(mesh), Some(link), nonces)
        }
        None => (None, None, RegionNonces::alone()),
    };
    let settings = RegionSettings {
        node_id: config.node.id.clone(),
        // The lease and a margin for the clocks of the two regions' timers.
        handoff_wait_ms: i64::try_from(config.global.lease_ms + 2_000).unwrap_or(i64::MAX),
        region: config.node.region.clone(),
        replication: config.mesh.replication_factor,
        limits: config.history.clone(),
        home_touch_ms: i64::try_from(config.global.home_touch_ms).unwrap_or(i64::MAX),
        max_presence_members: config.limits.max_presence_members,
        failure_timeout_ms: i64::try_from(config.mesh.failure_timeout_ms).unwrap_or(i64::MAX),
    };
    let bridges = bridge_link(&config, &control, bridge_addr)?;
    let region = Region::start(settings, control.clone(), link, bridges);

    let cluster_secret = config
        .node
        .cluster_secret
        .clone()
        .unwrap_or(secrets.cluster_secret);
    let admin_token = config.admin.token.clone().unwrap_or(secrets.admin_token);
    Ok(Arc::new(Node {
        region,
        mesh,
        apps,
        control,
        connections,
        keys: KeySigner::new(&cluster_secret),
        admin_token,
        nonces,
        config,
    }))
}

/// The dialing side of this node's bridges, when it has a bridge listener.
fn bridge_link(
    config: &Config,
    control: &Arc<ControlPlane>,
    bridge_addr: Option<SocketAddr>,
) -> anyhow::Result<Option<BridgeLink>> {
    if bridge_addr.is_none() {
        return Ok(None);
    }
    let tls = config
        .tls
        .files()
        .context("bridge.listen needs [tls] files")?;
    let settings = DialSettings {
        node_id: config.node.id.clone(),
        region: config.node.region.clone(),
        tls: TlsFiles {
            ca_cert: tls.ca_cert,
            cert: tls.cert,
            key: tls.key,
        },
        retry: Duration::from_millis(config.bridge.retry_ms),
    };
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    Ok(Some(BridgeLink {
        dialer: Dialer::new(settings, control.clone(), events_tx),
        events,
        max_held: config.bridge.max_held,
        hold_ms: i64::try_from(config.bridge.hold_ms).unwrap_or(i64::MAX),
    }))
}

/// Keeps the region's registered bridge addresses current: this node's and those of
/// the live peers the mesh reports.
fn spawn_bridge_registry(node: Arc<Node>, own: SocketAddr) {
    let own = (node.config.bridge.advertise.clone()).unwrap_or_else(|| own.to_string());
    tokio::spawn(async move {
        let mut views = node.mesh.as_ref().map(|mesh| mesh.watch());
        loop {
            let mut addrs: Vec<String> = vec![own.clone()];
            if let Some(views) = &mut views {
                let view = views.borrow_and_update().clone();
                addrs.extend(
                    view.live
                        .values()
                        .filter_map(|m| m.bridge)
                        .map(|a| a.to_string()),
                );
            }
            addrs.sort();
            addrs.dedup();
            node.control.set_bridges(addrs);
            match &mut views {
                Some(views) => {
                    if views.changed().await.is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
    });
}

async fn start_mesh(
    config: &Config,
    client: SocketAddr,
    bridge: Option<SocketAddr>,
) -> anyhow::Result<Option<(Mesh, MeshInbound)>> {
    let Some(listen) = config.mesh.listen else {
        return Ok(None);
    };
    let tls = config.tls.files().context("mesh.listen needs tls files")?;
    let settings = MeshSettings {
        listen,
        seeds: config.mesh.seeds.clone(),
        keepalive: Duration::from_millis(config.mesh.keepalive_ms),
        failure_timeout: Duration::from_millis(config.mesh.failure_timeout_ms),
        dial_interval: Duration::from_millis(config.mesh.dial_interval_ms),
        tls,
    };
    let me = MemberInfo {
        id: config.node.id.clone(),
        region: config.node.region.clone(),
        mesh: listen,
        client,
        bridge,
        // A new process is a new incarnation; wall-clock ms grow across restarts.
        incarnation: now_ms() as u64,
    };
    Ok(Some(Mesh::start(settings, me).await?))
}

pub fn router(node: Arc<Node>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/", get(ws::upgrade))
        .route("/health", get(health::ready))
        .route("/health/live", get(health::live))
        .route("/health/placement/{channel}", get(health::placement))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .merge(dashboard::router())
        .merge(rest::router())
        .method_not_allowed_fallback(rest::method_not_allowed)
        .with_state(node)
}

/// Binds the client listener, joins the mesh, writes the describe file, and serves
/// until `shutdown` resolves; then leaves the mesh on purpose.
pub async fn serve(
    config: Config,
    describe_path: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = observe::install().context("installing metrics")?;
    let listener = TcpListener::bind(config.listen.client)
        .await
        .with_context(|| format!("binding {}", config.listen.client))?;
    let client_addr = listener.local_addr()?;
    let bridge_listener = match config.bridge.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding bridge listener {addr}"))?,
        ),
        None => None,
    };
    let bridge_addr = bridge_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let tls_listener = match config.client_tls.listen {
        Some(addr) => Some(client_tls::bind(&config.client_tls, addr).await?),
        None => None,
    };
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let node = build_node(config, client_addr, bridge_addr).await?;
    if let (Some(listener), Some(addr)) = (bridge_listener, bridge_addr) {
        let tls = node
            .config
            .tls
            .files()
            .context("bridge.listen needs [tls] files")?;
        let files = TlsFiles {
            ca_cert: tls.ca_cert,
            cert: tls.cert,
            key: tls.key,
        };
        crate::bridge::serve(node.clone(), listener, &files)?;
        spawn_bridge_registry(node.clone(), addr);
    }

    spawn_stats(node.clone());
    spawn_quorum_guard(node.clone());
    if let Some(path) = &describe_path {
        let mesh_addr = node.mesh.as_ref().map(|m| m.local_addr());
        let mut described = describe::single_node(&node, client_addr, mesh_addr);
        for region in &mut described.regions {
            for described_node in &mut region.nodes {
                described_node.bridge = bridge_addr.map(|a| a.to_string());
                described_node.client_tls = tls_addr.map(|a| a.to_string());
            }
        }
        describe::write(path, &described).with_context(|| format!("writing {}", path.display()))?;
    }

    print_banner(&node, client_addr);
    info!(
        node.id = %node.config.node.id,
        region.id = %node.config.node.region,
        listen.client = %client_addr,
        listen.client_tls = ?tls_addr,
        listen.mesh = ?node.mesh.as_ref().map(|m| m.local_addr()),
        listen.bridge = ?bridge_addr,
        "region node ready"
    );

    // Draining: clients are sent away first so they reconnect to other nodes while
    // this one still answers; then the listener stops and the node leaves the mesh.
    let draining = {
        let node = node.clone();
        async move {
            shutdown.await;
            let sent = node
                .connections
                .disconnect_all(&AblyError::Draining.to_info());
            info!(connections = sent, "draining: clients sent away");
            wait_for_connections_to_close(&node).await;
        }
    };
    let stopping = CancellationToken::new();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            draining.await;
            stopping.cancel();
        }
    });
    let app = router(node.clone(), metrics);
    let plain = axum::serve(
        listener.tap_io(no_delay),
        app.clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopping.clone().cancelled_owned());
    match tls_listener {
        Some(tls) => {
            let secure = axum::serve(
                tls.tap_io(|tls| no_delay(tls.get_mut().0)),
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopping.cancelled_owned());
            tokio::try_join!(plain.into_future(), secure.into_future())?;
        }
        None => plain.await?,
    }
    if let Some(mesh) = &node.mesh {
        mesh.leave().await;
    }
    info!("region node stopped");
    Ok(())
}

/// Frames are small and latency matters more than packet count: no Nagle delay.
fn no_delay(tcp: &mut TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        debug!("could not set TCP_NODELAY: {error}");
    }
}

/// Gives connection tasks a moment to put their DISCONNECTED on the wire; the
/// runtime ends with the server, and would cut them off mid-write.
async fn wait_for_connections_to_close(node: &Node) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while !node.connections.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node that cannot see a majority of its region must not serve its clients from
/// a possibly stale view: it sends them DISCONNECTED so they reconnect elsewhere.
fn spawn_quorum_guard(node: Arc<Node>) {
    let mut quorum = node.region.quorum();
    tokio::spawn(async move {
        while quorum.changed().await.is_ok() {
            if !*quorum.borrow_and_update() {
                let sent = node
                    .connections
                    .disconnect_all(&AblyError::NoQuorum.to_info());
                warn!(
                    connections = sent,
                    "lost the region's quorum; clients sent away"
                );
            }
        }
    });
}

/// Exports what the region task knows as gauges; counters are kept where things
/// happen.
fn spawn_stats(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(STATS_PERIOD);
        loop {
            ticker.tick().await;
            let stats = node.region.stats().await;
            let flag = |on: bool| if on { 1.0 } else { 0.0 };
            metrics::gauge!(observe::CHANNELS).set(stats.channels as f64);
            metrics::gauge!(observe::CHANNEL_MASTERS).set(stats.masters as f64);
            metrics::gauge!(observe::CHANNEL_RELAYS).set(stats.relays as f64);
            metrics::gauge!(observe::ATTACHMENTS).set(stats.attachments as f64);
            metrics::gauge!(observe::MESH_LIVE_NODES).set(stats.live_nodes as f64);
            metrics::gauge!(observe::MESH_KNOWN_NODES).set(stats.known_nodes as f64);
            metrics::gauge!(observe::BRIDGE_BACKLOG).set(stats.bridge_backlog as f64);
            metrics::gauge!(observe::LEASE_HELD).set(flag(stats.lease));
            metrics::gauge!(observe::QUORUM).set(flag(stats.quorum));
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
