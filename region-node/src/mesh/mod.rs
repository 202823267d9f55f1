//! The region mesh: one mutually authenticated QUIC connection between every two nodes
//! of a region.
//!
//! Membership starts from seed addresses and spreads by gossip; a node keeps dialing
//! seeds and known members it has no link to, so it may start before its seeds. A peer
//! is live while its link is: quinn's keep-alives and idle timeout detect a dead or
//! unreachable peer, and every change of the live set is published as a new
//! [`MeshView`] version, which interested components watch.

pub mod membership;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, debug_span, info, warn, Instrument};

use membership::Membership;
pub use membership::MeshView;
pub use wire::{MemberInfo, MeshMsg};

use crate::auth::nonce_claims::NonceMsg;
use crate::node::now_ms;
use crate::region::msg::ChannelMsg;
use crate::tls::{self, TlsFiles};

/// How long a handshake (QUIC, TLS and hello) may take before the attempt is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub listen: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    /// Keep-alive period on every link.
    pub keepalive: Duration,
    /// A link silent for this long is dead, and so is its peer.
    pub failure_timeout: Duration,
    /// How often unlinked seeds and members are dialed, and gossip is sent.
    pub dial_interval: Duration,
    pub tls: TlsFiles,
}

/// A handle on the mesh; cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    settings: MeshSettings,
    state: Mutex<State>,
    view_tx: watch::Sender<MeshView>,
    next_link: AtomicU64,
    /// Set once the node leaves: it dials nobody and takes no new links after that.
    leaving: AtomicBool,
    /// Channel traffic from peers, for the region task.
    inbound: mpsc::UnboundedSender<(String, ChannelMsg)>,
    /// Nonce claims from peers, for the node's `RegionNonces`.
    nonces: mpsc::UnboundedSender<(String, NonceMsg)>,
}

/// What peers send this node, by who handles it.
pub struct MeshInbound {
    pub channels: mpsc::UnboundedReceiver<(String, ChannelMsg)>,
    pub nonces: mpsc::UnboundedReceiver<(String, NonceMsg)>,
}

struct State {
    membership: Membership,
    links: HashMap<String, Link>,
    dialing: HashSet<SocketAddr>,
}

/// One live connection to a peer.
struct Link {
    id: u64,
    connection: quinn::Connection,
    /// Who opened the connection; decides which of two simultaneous links survives.
    dialer: String,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Mesh {
    /// Binds the mesh endpoint and starts accepting, dialing and gossiping. `me.mesh`
    /// is replaced by the address actually bound.
    pub async fn start(
        settings: MeshSettings,
        mut me: MemberInfo,
    ) -> anyhow::Result<(Mesh, MeshInbound)> {
        let mut server = tls::mesh_server_config(&settings.tls)?;
        server.transport_config(transport(&settings));
        let mut client = tls::mesh_client_config(&settings.tls)?;
        client.transport_config(transport(&settings));

        let mut endpoint = quinn::Endpoint::server(server, settings.listen)
            .with_context(|| format!("binding mesh endpoint {}", settings.listen))?;
        endpoint.set_default_client_config(client);
        me.mesh = endpoint.local_addr()?;

        let membership = Membership::new(me);
        let (view_tx, _) = watch::channel(membership.view());
        let (inbound, channels) = mpsc::unbounded_channel();
        let (nonces, nonces_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            endpoint,
            settings,
            state: Mutex::new(State {
                membership,
                links: HashMap::new(),
                dialing: HashSet::new(),
            }),
            view_tx,
            next_link: AtomicU64::new(1),
            leaving: AtomicBool::new(false),
            inbound,
            nonces,
        });

        tokio::spawn(accept_loop(inner.clone()));
        tokio::spawn(dial_loop(inner.clone()));
        let inbound = MeshInbound {
            channels,
            nonces: nonces_rx,
        };
        Ok((Mesh { inner }, inbound))
    }

    /// Sends channel traffic to a peer over its link. Returns false when there is no
    /// link: the region task learns of the loss from the view and acts on that.
    pub fn send(&self, peer: &str, msg: ChannelMsg) -> bool {
        self.send_msg(peer, &MeshMsg::Channel(msg))
    }

    /// Sends a nonce claim or answer to a peer; false when there is no link.
    pub fn send_nonce(&self, peer: &str, msg: NonceMsg) -> bool {
        self.send_msg(peer, &MeshMsg::Nonce(msg))
    }

    fn send_msg(&self, peer: &str, msg: &MeshMsg) -> bool {
        let state = self.inner.state.lock();
        let Some(link) = state.links.get(peer) else {
            return false;
        };
        link.tx.send(wire::encode(msg)).is_ok()
    }

    pub fn me(&self) -> MemberInfo {
        self.inner.state.lock().membership.me().clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.me().mesh
    }

    /// Watches the live set: the value changes whenever a peer joins or is lost.
    pub fn watch(&self) -> watch::Receiver<MeshView> {
        self.inner.view_tx.subscribe()
    }

    pub fn view(&self) -> MeshView {
        self.inner.view_tx.borrow().clone()
    }

    /// Whether this node has joined its region: it is linked to at least one peer, or
    /// it has no seeds other than itself to join.
    pub fn joined(&self) -> bool {
        let me = self.local_addr();
        let lonely = self.inner.settings.seeds.iter().all(|s| *s == me);
        lonely || self.view().live.len() > 1
    }

    /// Leaves the region on purpose: peers are told not to dial this node again, then
    /// every link is closed.
    pub async fn leave(&self) {
        self.inner.leaving.store(true, Ordering::SeqCst);
        let me = self.me();
        let bye = wire::encode(&MeshMsg::Leave {
            id: me.id.clone(),
            incarnation: me.incarnation,
        });
        let links: Vec<_> = {
            let state = self.inner.state.lock();
            state
                .links
                .values()
                .map(|l| (l.tx.clone(), l.connection.clone()))
                .collect()
        };
        for (tx, _) in &links {
            let _ = tx.send(bye.clone());
        }

        // Give the writers a moment to put the goodbye on the wire before closing.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (_, connection) in links {
            connection.close(0u32.into(), b"leaving");
        }
        self.inner.endpoint.close(0u32.into(), b"leaving");
        info!("left the region mesh");
    }
}

fn transport(settings: &MeshSettings) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(settings.keepalive));
    // The idle timeout is the failure detector: a peer that sends nothing, not even a
    // keep-alive, for this long is gone.
    let idle = quinn::IdleTimeout::try_from(settings.failure_timeout).expect("timeout in range");
    transport.max_idle_timeout(Some(idle));
    Arc::new(transport)
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_one(&inner, incoming)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => warn!(peer.addr = %remote, "mesh link refused: {error:#}"),
                Err(_) => warn!(peer.addr = %remote, "mesh handshake timed out"),
            }
        });
    }
}

async fn accept_one(inner: &Arc<Inner>, incoming: quinn::Incoming) -> anyhow::Result<()> {
    let connection = incoming.await.context("handshake")?;
    let (send, recv) = connection.accept_bi().await.context("control stream")?;
    let mut reader = FramedRead::new(recv, wire::codec());
    let mut writer = FramedWrite::new(send, wire::codec());

    let (peer, members) = read_hello(&mut reader).await?;
    writer.send(hello(inner)).await?;
    let dialer = peer.id.clone();
    register(inner, peer, members, dialer, connection, reader, writer);
    Ok(())
}

async fn dial_loop(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.settings.dial_interval);
    loop {
        ticker.tick().await;
        if inner.leaving.load(Ordering::SeqCst) {
            return;
        }
        for addr in dial_targets(&inner) {
            let inner = inner.clone();
            tokio::spawn(async move {
                let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial_one(&inner, addr)).await;
                inner.state.lock().dialing.remove(&addr);
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => debug!(peer.addr = %addr, "mesh dial failed: {error:#}"),
                    Err(_) => debug!(peer.addr = %addr, "mesh dial timed out"),
                }
            });
        }
        gossip(&inner);
        // `settled` can turn true by time alone (a member that never answered).
        publish_view(&inner, &mut inner.state.lock());
    }
}

/// Seeds and known members without a link (and not already being dialed).
fn dial_targets(inner: &Inner) -> Vec<SocketAddr> {
    let mut state = inner.state.lock();
    let me = state.membership.me().mesh;
    let linked: HashSet<SocketAddr> = state
        .links
        .values()
        .map(|l| l.connection.remote_address())
        .collect();
    let live_addrs: HashSet<SocketAddr> = state
        .membership
        .view()
        .live
        .values()
        .map(|m| m.mesh)
        .collect();

    let mut targets: Vec<SocketAddr> = state
        .membership
        .to_dial()
        .into_iter()
        .map(|m| m.mesh)
        .collect();
    targets.extend(inner.settings.seeds.iter().copied());
    targets.sort();
    targets.dedup();
    targets.retain(|a| *a != me && !linked.contains(a) && !live_addrs.contains(a));
    targets.retain(|a| !state.dialing.contains(a));
    state.dialing.extend(targets.iter().copied());
    targets
}

async fn dial_one(inner: &Arc<Inner>, addr: SocketAddr) -> anyhow::Result<()> {
    let connection = inner
        .endpoint
        .connect(addr, tls::MESH_SERVER_NAME)?
        .await
        .context("handshake")?;
    let (send, recv) = connection.open_bi().await.context("control stream")?;
    let mut reader = FramedRead::new(recv, wire::codec());
    let mut writer = FramedWrite::new(send, wire::codec());

    writer.send(hello(inner)).await?;
    let (peer, members) = read_hello(&mut reader).await?;
    let me = inner.state.lock().membership.me().id.clone();
    if peer.id == me {
        connection.close(0u32.into(), b"self");
        return Ok(());
    }
    register(inner, peer, members, me, connection, reader, writer);
    Ok(())
}

fn hello(inner: &Inner) -> Bytes {
    let state = inner.state.lock();
    let me = state.membership.me().clone();
    wire::encode(&MeshMsg::Hello {
        me,
        members: state.membership.gossip(),
    })
}

type Reader = FramedRead<quinn::RecvStream, tokio_util::codec::LengthDelimitedCodec>;
type Writer = FramedWrite<quinn::SendStream, tokio_util::codec::LengthDelimitedCodec>;

/// Reads a peer's hello: who it is, and whom it knows (so a joining node learns the
/// whole region from its first seed at once).
async fn read_hello(reader: &mut Reader) -> anyhow::Result<(MemberInfo, Vec<MemberInfo>)> {
    let frame = reader.next().await.context("peer closed before hello")??;
    match wire::decode(&frame)? {
        MeshMsg::Hello { me, members } => Ok((me, members)),
        other => anyhow::bail!("expected hello, got {other:?}"),
    }
}

/// Makes a handshaken connection the link to `peer`, unless a link already exists:
/// then the one opened by the lower node id survives, which both ends decide alike.
#[allow(clippy::too_many_arguments)]
fn register(
    inner: &Arc<Inner>,
    peer: MemberInfo,
    members: Vec<MemberInfo>,
    dialer: String,
    connection: quinn::Connection,
    reader: Reader,
    writer: Writer,
) {
    let id = inner.next_link.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut state = inner.state.lock();
        if inner.leaving.load(Ordering::SeqCst) {
            connection.close(0u32.into(), b"leaving");
            return;
        }
        let me = state.membership.me().id.clone();
        if let Some(existing) = state.links.get(&peer.id) {
            let preferred = std::cmp::min(&me, &peer.id);
            if &existing.dialer == preferred {
                connection.close(0u32.into(), b"duplicate");
                return;
            }
            existing.connection.close(0u32.into(), b"duplicate");
        }
        let link = Link {
            id,
            connection: connection.clone(),
            dialer,
            tx,
        };
        state.links.insert(peer.id.clone(), link);
        let now = now_ms() as u64;
        for member in members {
            state.membership.learn(member, now);
        }
        if state.membership.link_up(peer.clone(), now) {
            info!(peer.id = %peer.id, peer.addr = %peer.mesh, "mesh peer joined");
        }
        publish_view(inner, &mut state);
    }

    let span = debug_span!("mesh_link", peer.id = %peer.id);
    tokio::spawn(write_loop(writer, rx).instrument(span.clone()));
    tokio::spawn(read_loop(inner.clone(), peer.id.clone(), reader).instrument(span.clone()));
    tokio::spawn(watch_link(inner.clone(), peer.id, id, connection).instrument(span));
}

async fn write_loop(mut writer: Writer, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(frame) = rx.recv().await {
        // A frame the codec refuses must not end the loop while the connection stays
        // up: every later message to the peer would vanish. Configuration bounds what
        // a channel can hold, so this means a broken invariant, loudly.
        if frame.len() > wire::MAX_FRAME {
            tracing::error!(
                frame.bytes = frame.len(),
                "mesh frame over the limit dropped"
            );
            continue;
        }
        if writer.send(frame).await.is_err() {
            return;
        }
    }
}

async fn read_loop(inner: Arc<Inner>, peer: String, mut reader: Reader) {
    while let Some(frame) = reader.next().await {
        // A read error is the link ending, which `watch_link` reports; a frame that
        // does not decode is a misbehaving peer.
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                debug!("mesh link ended: {error}");
                return;
            }
        };
        match wire::decode(&frame) {
            Ok(msg) => on_message(&inner, &peer, msg),
            Err(error) => {
                warn!("undecodable frame from mesh peer: {error}");
                return;
            }
        }
    }
}

fn on_message(inner: &Inner, peer: &str, msg: MeshMsg) {
    let msg = match msg {
        MeshMsg::Channel(msg) => {
            let _ = inner.inbound.send((peer.to_owned(), msg));
            return;
        }
        MeshMsg::Nonce(msg) => {
            let _ = inner.nonces.send((peer.to_owned(), msg));
            return;
        }
        other => other,
    };
    let mut state = inner.state.lock();
    match msg {
        MeshMsg::Channel(_) | MeshMsg::Nonce(_) => unreachable!("handled above"),
        MeshMsg::Hello { members, .. } | MeshMsg::Gossip { members } => {
            let now = now_ms() as u64;
            members
                .into_iter()
                .for_each(|m| state.membership.learn(m, now));
            publish_view(inner, &mut state);
        }
        MeshMsg::Leave { id, incarnation } => {
            if state.membership.left(&id, incarnation) {
                info!(peer.id = %id, "mesh peer left");
                publish_view(inner, &mut state);
            }
            if let Some(link) = state.links.remove(&id) {
                link.connection.close(0u32.into(), b"left");
            }
        }
    }
}

/// The process-monitor role: when the connection ends, for whatever reason, the peer
/// is no longer live and every watcher of the view learns it.
async fn watch_link(inner: Arc<Inner>, peer: String, link_id: u64, connection: quinn::Connection) {
    let reason = connection.closed().await;
    let mut state = inner.state.lock();
    if state.links.get(&peer).is_some_and(|l| l.id == link_id) {
        state.links.remove(&peer);
        if state.membership.link_down(&peer) {
            info!(peer.id = %peer, %reason, "mesh peer lost");
            publish_view(&inner, &mut state);
        }
    }
}

/// Publishes the membership view to its watchers, with `settled` brought up to date.
fn publish_view(inner: &Inner, state: &mut State) {
    let me = state.membership.me().mesh;
    let lonely = inner.settings.seeds.iter().all(|s| *s == me);
    let joined = lonely || !state.links.is_empty();
    let grace = inner.settings.failure_timeout.as_millis() as u64;
    state
        .membership
        .refresh_settled(joined, now_ms() as u64, grace);
    let fresh = state.membership.view();
    inner.view_tx.send_if_modified(|view| {
        let changed = *view != fresh;
        *view = fresh;
        changed
    });
}

fn gossip(inner: &Inner) {
    let state = inner.state.lock();
    let frame = wire::encode(&MeshMsg::Gossip {
        members: state.membership.gossip(),
    });
    for link in state.links.values() {
        let _ = link.tx.send(frame.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tokio::time::{timeout, Instant};

    fn settings(ca: &Path, name: &str, seeds: Vec<SocketAddr>) -> MeshSettings {
        MeshSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            seeds,
            keepalive: Duration::from_millis(100),
            failure_timeout: Duration::from_millis(600),
            dial_interval: Duration::from_millis(100),
            tls: tls::issue(ca, name, ca).unwrap(),
        }
    }

    fn me(name: &str) -> MemberInfo {
        MemberInfo {
            id: name.into(),
            region: "r".into(),
            mesh: "127.0.0.1:0".parse().unwrap(),
            client: "127.0.0.1:1".parse().unwrap(),
            bridge: None,
            incarnation: 1,
        }
    }

    async fn wait_for(mesh: &Mesh, what: &str, check: impl Fn(&MeshView) -> bool) {
        let mut watch = mesh.watch();
        let result = timeout(Duration::from_secs(10), async {
            loop {
                if check(&watch.borrow_and_update()) {
                    return;
                }
                watch.changed().await.unwrap();
            }
        })
        .await;
        assert!(
            result.is_ok(),
            "{} never saw {what}: {:?}",
            mesh.me().id,
            mesh.view()
        );
    }

    #[tokio::test]
    async fn nodes_find_each_other_through_one_seed_and_notice_a_death() {
        let ca = tempfile::tempdir().unwrap();
        tls::create_ca(ca.path()).unwrap();

        let a = Mesh::start(settings(ca.path(), "a", vec![]), me("a"))
            .await
            .unwrap()
            .0;
        let seed = vec![a.local_addr()];
        let b = Mesh::start(settings(ca.path(), "b", seed.clone()), me("b"))
            .await
            .unwrap()
            .0;
        let c = Mesh::start(settings(ca.path(), "c", seed), me("c"))
            .await
            .unwrap()
            .0;

        // c and b only know a, yet each links to the other through gossip.
        for mesh in [&a, &b, &c] {
            wait_for(mesh, "three live members", |v| v.live.len() == 3).await;
            assert!(mesh.joined());
        }

        // Closing c's endpoint abruptly stands in for a crash: no goodbye is sent.
        let died = Instant::now();
        c.inner.endpoint.close(0u32.into(), b"crash");
        wait_for(&a, "c gone", |v| !v.live.contains_key("c")).await;
        wait_for(&b, "c gone", |v| !v.live.contains_key("c")).await;
        assert!(died.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_node_from_another_ca_cannot_join() {
        let ca = tempfile::tempdir().unwrap();
        let rogue_ca = tempfile::tempdir().unwrap();
        tls::create_ca(ca.path()).unwrap();
        tls::create_ca(rogue_ca.path()).unwrap();

        let a = Mesh::start(settings(ca.path(), "a", vec![]), me("a"))
            .await
            .unwrap()
            .0;
        let rogue = Mesh::start(
            settings(rogue_ca.path(), "rogue", vec![a.local_addr()]),
            me("rogue"),
        )
        .await
        .unwrap()
        .0;
        let friend = Mesh::start(settings(ca.path(), "b", vec![a.local_addr()]), me("b"))
            .await
            .unwrap()
            .0;

        // Once a legitimate node has joined, the rogue has had many dial attempts.
        wait_for(&a, "b joined", |v| v.live.contains_key("b")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!a.view().live.contains_key("rogue"));
        assert_eq!(rogue.view().live.len(), 1, "the rogue is alone");
        assert!(friend.joined());
    }

    #[tokio::test]
    async fn a_node_that_leaves_is_dropped_at_once_and_not_redialed() {
        let ca = tempfile::tempdir().unwrap();
        tls::create_ca(ca.path()).unwrap();
        let a = Mesh::start(settings(ca.path(), "a", vec![]), me("a"))
            .await
            .unwrap()
            .0;
        let b = Mesh::start(settings(ca.path(), "b", vec![a.local_addr()]), me("b"))
            .await
            .unwrap()
            .0;
        wait_for(&a, "b joined", |v| v.live.contains_key("b")).await;
        wait_for(&b, "a joined", |v| v.live.contains_key("a")).await;

        b.leave().await;
        wait_for(&a, "b gone", |v| !v.live.contains_key("b")).await;
        assert!(a.inner.state.lock().membership.to_dial().is_empty());
    }
}
