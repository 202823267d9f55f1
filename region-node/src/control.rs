//! The node's link to the control plane (the global master): it writes there what the
//! admin API changes, and keeps a local copy of the catalog that it follows change by
//! change, from which the app registry is rebuilt.
//!
//! Two backends: an external group reached over gRPC with the cluster certificate
//! (`[global] members`), or a one-member group embedded in this process (the default),
//! so a single node stores its apps exactly as a federation does.
//!
//! Invariant: a write returns only once this node's copy has reached the version the
//! write created, so an app created through a node authenticates on that node at once.
//! (The lease heartbeat alone does not wait for the copy: only its commit matters.)
//!
//! Writes to an external group go through one client per [`Lane`], each carrying one
//! write at a time: the lease heartbeat never queues behind a batch of channel homes
//! (see `homes`) or an admin write, so it is at most one raft entry behind them.

mod homes;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use starling_global::api::WatchItem;
use starling_global::client::Client;
use starling_global::embedded::Embedded;
use starling_global::state::{Catalog, Change, ChangesSince, Command, Outcome, Update};
use starling_global::store::StateReader;
use starling_proto::tls::TlsFiles;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::apps::{new_app_id, new_app_record, AppRegistry, NewApp, DEFAULT_APP_ID};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::error::AblyError;
use crate::node::{now_ms, Connections};
use crate::region::HomeView;

/// A change to the channel homes of the node's catalog copy, for the region task.
#[derive(Debug)]
pub enum HomeEvent {
    /// One channel's home is now this (`None`: it has none).
    Set(String, Option<HomeView>),
    /// The copy was replaced: these are all the homes there are.
    Replace(Vec<(String, HomeView)>),
}

/// How often the lease clock looks whether the lease ran out.
const LEASE_CHECK: Duration = Duration::from_millis(100);

/// Pause before following another member after a watch stream failed.
const WATCH_RETRY: Duration = Duration::from_millis(500);

enum Backend {
    Embedded(Embedded),
    Remote {
        clients: Box<Lanes>,
        members: Vec<String>,
        tls: TlsFiles,
    },
}

/// What a write is for, which decides the client it takes to an external group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Region registration and heartbeats: the sequencing lease hangs on them.
    Lease,
    /// Batches of channel homes, from the one home writer.
    Homes,
    /// Apps and token revocations.
    Admin,
}

/// One client per lane. Each carries one write at a time and remembers the leader;
/// separate clients (separate connections) keep lanes from waiting on each other.
struct Lanes {
    lease: tokio::sync::Mutex<Client>,
    homes: tokio::sync::Mutex<Client>,
    admin: tokio::sync::Mutex<Client>,
}

impl Lanes {
    fn new(members: &[String], tls: &TlsFiles) -> anyhow::Result<Self> {
        let client = || -> anyhow::Result<_> {
            Ok(tokio::sync::Mutex::new(Client::new(members.to_vec(), tls)?))
        };
        Ok(Self {
            lease: client()?,
            homes: client()?,
            admin: client()?,
        })
    }

    fn get(&self, lane: Lane) -> &tokio::sync::Mutex<Client> {
        match lane {
            Lane::Lease => &self.lease,
            Lane::Homes => &self.homes,
            Lane::Admin => &self.admin,
        }
    }
}

pub struct ControlPlane {
    backend: Backend,
    apps: Arc<AppRegistry>,
    /// Told when an app disappears, wherever it was deleted.
    connections: Arc<Connections>,
    /// This node's copy of the catalog.
    catalog: Mutex<Catalog>,
    /// The version of that copy, for writers waiting to see their own write.
    seen: watch::Sender<u64>,
    /// Becomes true once the copy was first loaded (an empty catalog has version 0).
    loaded: watch::Sender<bool>,
    /// Whether the region may sequence: the global master committed one of its
    /// heartbeats less than `lease_period` ago (design.md "Never two sequencers").
    lease: watch::Sender<bool>,
    lease_until: Mutex<Option<tokio::time::Instant>>,
    lease_period: Duration,
    /// Whether this node follows the global master now: always for the embedded
    /// member; for an external group, while a watch stream is open.
    following: std::sync::atomic::AtomicBool,
    /// Where home changes go, once the region task follows them.
    homes: Mutex<Option<mpsc::UnboundedSender<HomeEvent>>>,
    /// Home requests waiting for the home writer (see `homes`).
    home_queue: homes::HomeQueue,
    /// This node's region: where channels first used here are homed.
    region: String,
    /// The region's bridge addresses as this node knows them (its own and its live
    /// peers'), registered whenever they differ from what the catalog holds.
    bridges: Mutex<Vec<String>>,
    /// Wakes the heartbeat when the bridge addresses change, so other regions can
    /// reach a new node (or a region that just started) at once rather than after
    /// up to a heartbeat period.
    bridges_changed: tokio::sync::Notify,
    timeout: Duration,
}

impl ControlPlane {
    /// Connects to (or starts) the control plane, loads the catalog, starts following
    /// it, and creates the default app when the node would otherwise have none.
    pub async fn start(
        config: &Config,
        data: &DataDir,
        apps: Arc<AppRegistry>,
        connections: Arc<Connections>,
    ) -> anyhow::Result<Arc<Self>> {
        let backend = if config.global.members.is_empty() {
            let embedded = Embedded::start(&data.path("global-master")).await?;
            // The member lives in this process: its raft gauges are on this /metrics.
            embedded.export_metrics();
            Backend::Embedded(embedded)
        } else {
            let tls = tls_files(config)?;
            Backend::Remote {
                clients: Box::new(Lanes::new(&config.global.members, &tls)?),
                members: config.global.members.clone(),
                tls,
            }
        };
        let control = Arc::new(Self {
            backend,
            apps,
            connections,
            catalog: Mutex::new(Catalog::default()),
            seen: watch::channel(0).0,
            loaded: watch::channel(false).0,
            homes: Mutex::new(None),
            home_queue: homes::HomeQueue::default(),
            following: std::sync::atomic::AtomicBool::new(config.global.members.is_empty()),
            lease: watch::channel(false).0,
            lease_until: Mutex::new(None),
            lease_period: Duration::from_millis(config.global.lease_ms),
            region: config.node.region.clone(),
            bridges: Mutex::new(Vec::new()),
            bridges_changed: tokio::sync::Notify::new(),
            timeout: Duration::from_millis(config.global.request_timeout_ms),
        });

        control.clone().spawn_follower();
        control.wait_for_first_copy().await;
        if control.apps.is_empty() {
            control.create_default_app().await?;
        }
        control.first_heartbeat().await;
        control.clone().spawn_lease_clock();
        control.clone().spawn_home_writer();
        control.clone().spawn_heartbeat(
            config.node.region.clone(),
            Duration::from_millis(config.global.heartbeat_ms),
        );
        Ok(control)
    }

    /// Registers the node's region once (unless an operator declared it lost: then it
    /// stays out until registered on purpose) and reports it alive every `period`, so
    /// the global master knows which regions can home channels.
    fn spawn_heartbeat(self: Arc<Self>, region: String, period: Duration) {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = self.bridges_changed.notified() => {}
                }
                let Some(command) = self.heartbeat_command(&region) else {
                    continue;
                };
                let sent = tokio::time::Instant::now();
                match self.commit(Lane::Lease, command).await {
                    Ok(_) => self.renew_lease(sent),
                    Err(error) => {
                        debug!(region = %region, "region heartbeat not recorded: {error}")
                    }
                }
            }
        });
    }

    /// What tells the global master the region is alive: a registration when it is
    /// unknown or its bridge addresses changed, else a heartbeat; nothing for a region
    /// declared lost (it stays out until registered on purpose, and its lease lapses).
    fn heartbeat_command(&self, region: &str) -> Option<Command> {
        let known = self.catalog.lock().region(region).cloned();
        let bridges = self.bridges.lock().clone();
        let register = |bridges| Command::RegisterRegion {
            name: region.to_owned(),
            bridges,
            now_ms: now_ms() as u64,
        };
        match known.map(|r| (r.lost, r.bridges)) {
            None => Some(register(bridges)),
            Some((false, registered)) if registered != bridges && !bridges.is_empty() => {
                Some(register(bridges))
            }
            Some((false, _)) => Some(Command::RegionHeartbeat {
                name: region.to_owned(),
                now_ms: now_ms() as u64,
            }),
            Some((true, _)) => {
                warn!(region = %region, "this region is declared lost; not reporting it alive");
                None
            }
        }
    }

    /// A heartbeat sent at `sent` was committed: the region may sequence until
    /// `sent + lease_ms`. Counting from the send, not the answer, keeps the lease
    /// inside the time the global master last heard of the region.
    fn renew_lease(&self, sent: tokio::time::Instant) {
        *self.lease_until.lock() = Some(sent + self.lease_period);
        self.lease
            .send_if_modified(|held| !std::mem::replace(held, true));
    }

    /// Other regions the global master has not heard from for longer than a lease,
    /// measured against this region's own latest heartbeat in the same catalog copy
    /// (so a copy that lags makes no region look silent), with when each was last
    /// heard. Such a region cannot hold its lease: it has sent its clients away.
    pub fn silent_regions(&self) -> Vec<(String, i64)> {
        let catalog = self.catalog.lock();
        let Some(own) = catalog.region(&self.region) else {
            return Vec::new();
        };
        let lease = u64::try_from(self.lease_period.as_millis()).unwrap_or(u64::MAX);
        (catalog.regions())
            .filter(|(name, r)| **name != self.region && !r.lost)
            .filter(|(_, r)| own.last_heartbeat_ms.saturating_sub(r.last_heartbeat_ms) > lease)
            .map(|(name, r)| {
                (
                    name.clone(),
                    i64::try_from(r.last_heartbeat_ms).unwrap_or(0),
                )
            })
            .collect()
    }

    /// Whether this region holds its sequencing lease, as it changes.
    pub fn lease(&self) -> watch::Receiver<bool> {
        self.lease.subscribe()
    }

    /// Drops the lease once it ran out (checked often, so it lapses on time).
    fn spawn_lease_clock(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(LEASE_CHECK);
            loop {
                ticker.tick().await;
                let until = *self.lease_until.lock();
                let held = until.is_some_and(|u| tokio::time::Instant::now() < u);
                let lapsed = self
                    .lease
                    .send_if_modified(|h| std::mem::replace(h, held) != held);
                if lapsed && !held {
                    crate::observe::lease_lapsed();
                    warn!(region.id = %self.region, "sequencing lease lapsed: the global master has not confirmed this region in time");
                }
            }
        });
    }

    /// Registers the region (or reports it alive) before the node serves, so the first
    /// channel used here is homed here (an unregistered region is not live, and homes go
    /// to live regions), and so the node starts with its sequencing lease.
    async fn first_heartbeat(&self) {
        let Some(command) = self.heartbeat_command(&self.region) else {
            return;
        };
        let sent = tokio::time::Instant::now();
        match self.write(Lane::Lease, command).await {
            Ok(_) => {
                self.renew_lease(sent);
                info!(region.id = %self.region, "region registered with the global master");
            }
            Err(error) => warn!(region.id = %self.region, "region not registered yet: {error}"),
        }
    }

    /// The bridge addresses this node's region should be reached at; a change wakes
    /// the heartbeat, which registers them if the catalog holds others.
    pub fn set_bridges(&self, addrs: Vec<String>) {
        let changed = std::mem::replace(&mut *self.bridges.lock(), addrs.clone()) != addrs;
        if changed {
            self.bridges_changed.notify_one();
        }
    }

    /// Whether the node follows the global master's changes now (for `/health`).
    pub fn following(&self) -> bool {
        self.following.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The channel's home as this node's catalog copy shows it.
    pub fn known_home(&self, channel: &str) -> Option<HomeView> {
        self.catalog.lock().home(channel).map(home_view)
    }

    /// Where the nodes of `region` accept bridges, as it last registered.
    pub fn bridges_of(&self, region: &str) -> Vec<String> {
        let catalog = self.catalog.lock();
        catalog
            .region(region)
            .map(|r| r.bridges.clone())
            .unwrap_or_default()
    }

    /// The catalog copy's regions: what the dashboard shows of regions this node
    /// cannot see directly.
    pub fn regions(&self) -> Vec<(String, starling_global::state::Region)> {
        let catalog = self.catalog.lock();
        catalog
            .regions()
            .map(|(name, region)| (name.clone(), region.clone()))
            .collect()
    }

    /// How many channels each region homes, by the catalog copy.
    pub fn homes_per_region(&self) -> std::collections::BTreeMap<String, usize> {
        let catalog = self.catalog.lock();
        let mut counts = std::collections::BTreeMap::new();
        for (_, home) in catalog.homes() {
            *counts.entry(home.region.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Each global master member's own view of the group (one attempt each, bounded
    /// by `wait`), or why it did not answer. The embedded member answers for itself.
    pub async fn members_status(
        &self,
        wait: Duration,
    ) -> Vec<(String, Result<starling_proto::global::StatusReply, String>)> {
        let (members, tls) = match &self.backend {
            Backend::Embedded(embedded) => {
                return vec![("embedded".into(), Ok(embedded.status().await))];
            }
            Backend::Remote { members, tls, .. } => (members, tls),
        };
        let asks = members.iter().map(|addr| async move {
            let answer = async {
                let mut client = Client::new(vec![addr.clone()], tls)
                    .map_err(|e| e.to_string())?
                    .with_attempt_timeout(wait);
                client.status(addr).await.map_err(|e| e.to_string())
            };
            (addr.clone(), answer.await)
        });
        futures_util::future::join_all(asks).await
    }

    /// Every home of the catalog copy now, and from then on each change to them, with
    /// nothing missed in between (both are taken under the copy's lock).
    pub fn follow_homes(&self) -> (Vec<(String, HomeView)>, mpsc::UnboundedReceiver<HomeEvent>) {
        let catalog = self.catalog.lock();
        let (tx, rx) = mpsc::unbounded_channel();
        *self.homes.lock() = Some(tx);
        (all_homes(&catalog), rx)
    }

    fn tell_homes(&self, event: HomeEvent) {
        if let Some(tx) = self.homes.lock().as_ref() {
            let _ = tx.send(event);
        }
    }

    /// Creates an app from an admin request; returns once this node can use it.
    pub async fn create_app(&self, spec: NewApp) -> Result<Arc<crate::apps::App>, AblyError> {
        let record = new_app_record(&new_app_id(), spec)?;
        let id = record.id.clone();
        self.write(Lane::Admin, Command::CreateApp { app: record })
            .await?;
        self.apps
            .get(&id)
            .ok_or_else(|| AblyError::Internal(format!("app {id} was created but is not usable")))
    }

    /// Deletes an app created through the admin API; returns once this node refuses it.
    pub async fn delete_app(&self, id: &str) -> Result<(), AblyError> {
        self.apps.check_deletable(id)?;
        let command = Command::DeleteApp {
            app_id: id.to_owned(),
        };
        self.write(Lane::Admin, command).await?;
        Ok(())
    }

    /// Refuses tokens of `key_name` for `target` (`clientId:alice`) issued before
    /// `issued_before_ms`, in every region; returns once this node refuses them.
    pub async fn revoke_tokens(
        &self,
        key_name: &str,
        target: &str,
        issued_before_ms: u64,
    ) -> Result<(), AblyError> {
        let command = Command::RevokeTokens {
            key_name: key_name.to_owned(),
            target: target.to_owned(),
            issued_before_ms,
        };
        self.write(Lane::Admin, command).await.map(|_| ())
    }

    /// Tokens of `key_name` for `target` issued before this time are revoked.
    pub fn revoked_before(&self, key_name: &str, target: &str) -> Option<u64> {
        self.catalog.lock().revoked_before(key_name, target)
    }

    /// Disconnects this node's connections whose token a revocation now covers,
    /// wherever it was written. They hear it as a token error, so clients that can
    /// obtain a fresh token do and come back.
    fn revoke_live(&self, update: &Update) {
        let Update::Revocation {
            key_name,
            target,
            issued_before_ms: Some(before),
        } = update
        else {
            return;
        };
        let info = AblyError::TokenRevoked.to_info();
        let closed = self.connections.revoke(key_name, target, *before, &info);
        if closed > 0 {
            info!(key.name = %key_name, connections.closed = closed, "tokens revoked");
        }
    }

    /// Commits `command` and waits until this node's copy includes it.
    async fn write(&self, lane: Lane, command: Command) -> Result<Outcome, AblyError> {
        let (outcome, version) = self.commit(lane, command).await?;

        let mut seen = self.seen.subscribe();
        let caught_up = seen.wait_for(|seen| *seen >= version);
        let waited = tokio::time::timeout(self.timeout, caught_up).await;
        match waited {
            Ok(Ok(_)) => Ok(outcome),
            _ => Err(AblyError::Timeout(
                "the change was committed but this node has not seen it yet".into(),
            )),
        }
    }

    /// Commits `command` through `lane`; its outcome and the catalog version it is
    /// visible at. The embedded member takes writes concurrently (raft orders them);
    /// an external group's writes take turns per lane.
    async fn commit(&self, lane: Lane, command: Command) -> Result<(Outcome, u64), AblyError> {
        let response = match &self.backend {
            Backend::Embedded(embedded) => embedded
                .write(command)
                .await
                .map_err(|e| AblyError::Timeout(e.to_string()))?,
            Backend::Remote { clients, .. } => {
                // The deadline covers the wait for the lane's turn too, so no caller
                // waits past it behind others.
                let attempt = async {
                    let mut client = clients.get(lane).lock().await;
                    client.write(&command, self.timeout).await
                };
                tokio::time::timeout(self.timeout, attempt)
                    .await
                    .map_err(|_| AblyError::Timeout("global master: no answer in time".into()))?
                    .map_err(|e| AblyError::Timeout(format!("global master: {e}")))?
            }
        };
        let outcome = response.outcome.map_err(command_error)?;
        Ok((outcome, response.version))
    }

    async fn create_default_app(&self) -> anyhow::Result<()> {
        let record = new_app_record(DEFAULT_APP_ID, NewApp::default())?;
        match self
            .write(Lane::Admin, Command::CreateApp { app: record })
            .await
        {
            Ok(_) => info!(app.id = DEFAULT_APP_ID, "created the default app"),
            // Another node sharing the global master created it first: use theirs.
            Err(AblyError::InvalidBody(message)) if message.contains("already exists") => {}
            Err(error) => warn!("could not create the default app: {error}"),
        }
        Ok(())
    }

    /// Waits (boundedly) for the first copy of the catalog, so a node that starts
    /// while the global master is reachable serves its apps from the first request.
    async fn wait_for_first_copy(&self) {
        let mut loaded = self.loaded.subscribe();
        let first = loaded.wait_for(|loaded| *loaded);
        if tokio::time::timeout(self.timeout, first).await.is_err() {
            warn!("no catalog from the global master yet; serving configured apps only until it answers");
        }
    }

    fn spawn_follower(self: Arc<Self>) {
        match &self.backend {
            Backend::Embedded(embedded) => {
                let reader = embedded.reader().clone();
                tokio::spawn(async move { self.follow_embedded(reader).await });
            }
            Backend::Remote { members, tls, .. } => {
                let (members, tls) = (members.clone(), tls.clone());
                tokio::spawn(async move { self.follow_remote(members, tls).await });
            }
        }
    }

    /// Follows the embedded member's applied state.
    async fn follow_embedded(&self, reader: StateReader) {
        let mut changed = reader.subscribe();
        loop {
            let have = self.seen.borrow().to_owned();
            match reader.read(|state| state.changes_since(have)) {
                ChangesSince::Changes(changes) => {
                    self.apply(&changes);
                }
                ChangesSince::TooOld => self.replace(reader.read(|state| state.catalog().clone())),
            }
            self.loaded.send_replace(true);
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Follows an external group's watch stream, member after member when one fails.
    async fn follow_remote(&self, members: Vec<String>, tls: TlsFiles) {
        let mut client = match Client::new(members.clone(), &tls) {
            Ok(client) => client,
            Err(error) => return warn!("cannot follow the global master: {error}"),
        };
        for addr in members.iter().cycle() {
            let from = self.seen.borrow().to_owned();
            match client.watch(addr, from).await {
                Ok(mut stream) => loop {
                    self.following
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    match stream.message().await {
                        Ok(Some(event)) => match WatchItem::decode(&event) {
                            Ok(WatchItem::Snapshot(catalog)) => self.replace(catalog),
                            Ok(WatchItem::Change(change)) => {
                                if !self.apply(std::slice::from_ref(&change)) {
                                    break;
                                }
                            }
                            Err(error) => {
                                warn!(member = %addr, "undecodable watch event: {error}");
                                break;
                            }
                        },
                        Ok(None) => break,
                        Err(status) => {
                            debug!(member = %addr, "watch stream ended: {}", status.message());
                            break;
                        }
                    }
                },
                Err(error) => debug!(member = %addr, "cannot watch: {error}"),
            }
            self.following
                .store(false, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    /// Applies changes in order; false when one does not follow the copy's version,
    /// and the follower must ask again from the version it holds.
    fn apply(&self, changes: &[Change]) -> bool {
        let mut catalog = self.catalog.lock();
        let mut apps_changed = false;
        let mut in_step = true;
        for change in changes {
            match catalog.apply_change(change) {
                Ok(applied) => {
                    apps_changed |= applied && matches!(change.update, Update::App { .. });
                    if applied {
                        self.revoke_live(&change.update);
                        if let Update::Home { channel, home } = &change.update {
                            let view = home.as_ref().map(home_view);
                            self.tell_homes(HomeEvent::Set(channel.clone(), view));
                        }
                    }
                }
                Err(gap) => {
                    warn!("catalog copy out of step ({gap}); asking again");
                    in_step = false;
                    break;
                }
            }
        }
        if apps_changed {
            self.sync_apps(&catalog);
        }
        self.seen.send_replace(catalog.version());
        in_step
    }

    /// Rebuilds the registry; connections of apps that are gone lose their
    /// credentials and hear it with the code a connect with a deleted key gets.
    fn sync_apps(&self, catalog: &Catalog) {
        for app_id in self.apps.sync(catalog.apps()) {
            let info = AblyError::InvalidCredentials("app deleted".into()).to_info();
            let closed = self.connections.fail_app(&app_id, &info);
            info!(app.id = %app_id, connections.closed = closed, "app deleted");
        }
    }

    fn replace(&self, new: Catalog) {
        let mut catalog = self.catalog.lock();
        *catalog = new;
        self.sync_apps(&catalog);
        self.tell_homes(HomeEvent::Replace(all_homes(&catalog)));
        for revocation in catalog.revocations() {
            self.revoke_live(&Update::Revocation {
                key_name: revocation.key_name,
                target: revocation.target,
                issued_before_ms: Some(revocation.issued_before_ms),
            });
        }
        self.seen.send_replace(catalog.version());
        self.loaded.send_replace(true);
    }
}

fn home_view(home: &starling_global::state::Home) -> HomeView {
    HomeView {
        region: home.region.clone(),
        epoch: home.epoch,
        previous: home.previous_region.clone(),
    }
}

fn all_homes(catalog: &Catalog) -> Vec<(String, HomeView)> {
    (catalog.homes())
        .map(|(channel, home)| (channel.clone(), home_view(home)))
        .collect()
}

/// The node's `[tls]` files, which the global master's CA also signs.
fn tls_files(config: &Config) -> anyhow::Result<TlsFiles> {
    let files = config
        .tls
        .files()
        .ok_or_else(|| anyhow::anyhow!("global.members needs [tls] ca_cert, cert and key"))?;
    Ok(TlsFiles {
        ca_cert: files.ca_cert,
        cert: files.cert,
        key: files.key,
    })
}

/// A refusal from the state machine, in Ably's terms.
fn command_error(error: starling_global::state::CommandError) -> AblyError {
    use starling_global::state::CommandError::*;
    match error {
        NoSuchApp(id) => AblyError::NotFound(format!("app {id}")),
        other => AblyError::InvalidBody(other.to_string()),
    }
}
