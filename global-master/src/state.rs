//! The control plane's replicated state: regions, channel homes, placement rules, apps
//! and token revocations, held as one plain value that raft replicates.
//!
//! [`ControlState::apply`] is pure and deterministic: every replica that applies the
//! same commands in the same order ends with the same state, the same versions and the
//! same responses. That is why it never reads a clock (times travel inside commands),
//! iterates only ordered maps, and never draws random numbers (whoever proposes
//! `CreateApp` generates the key secrets).
//!
//! Every change to the [`Catalog`] is one [`Update`] with its own version, one higher
//! than the previous. A command that changes several records (a region loss re-homes
//! many channels) takes several versions; a rejected or idle command takes none. The
//! last updates are kept in a bounded change log, so a watcher that holds version `V`
//! asks for [`ControlState::changes_since`] `V` and either gets every update after it or
//! learns that it fell too far behind and must start over from a full catalog.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many updates the change log keeps by default. A watcher that falls further
/// behind than this reloads the whole catalog.
pub const DEFAULT_CHANGE_LOG_CAPACITY: usize = 10_000;

/// Placement rules whose app id is this match every app.
pub const ANY_APP: &str = "*";

/// The most channels one batched home command may name. A batch of new channels takes
/// one catalog version each, so this stays well inside the default change log: a
/// watcher that keeps up never has to reload the whole catalog because of one entry.
/// Never lower it: a replica replaying old log entries must answer them as before.
pub const MAX_HOMES_PER_COMMAND: usize = 5_000;

/// A region of the federation, as the global master knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Where other regions' bridges reach this one (`host:port`), as it last registered.
    pub bridges: Vec<String>,
    /// The latest report from a node of the region, on the proposer's clock.
    pub last_heartbeat_ms: u64,
    /// Declared lost by an operator. A lost region homes no channel until it registers
    /// again.
    pub lost: bool,
}

/// Where a channel is sequenced, and under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Home {
    pub region: String,
    /// Grows every time the channel's home is assigned or moves, and never repeats for a
    /// channel, not even after the home expired and was assigned again. It is at least
    /// the proposer's clock in milliseconds at assignment, like the epochs of positions.
    pub epoch: u64,
    pub last_used_ms: u64,
    /// The region that homed the channel before a move or a region loss, which the new
    /// home asks to hand over (its last position and history) before sequencing.
    /// `None` for a first assignment.
    #[serde(default)]
    pub previous_region: Option<String>,
}

/// Pins the channels of a namespace to a region, instead of the region of first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRule {
    /// The app the rule applies to, or [`ANY_APP`].
    pub app_id: String,
    /// A channel name prefix, normally a namespace with its colon (`eu-only:`). An empty
    /// prefix matches every channel of the app.
    pub prefix: String,
    pub region: String,
}

impl PlacementRule {
    fn matches(&self, app_id: &str, channel_name: &str) -> bool {
        (self.app_id == ANY_APP || self.app_id == app_id) && channel_name.starts_with(&self.prefix)
    }
}

/// An app created through the admin API (apps declared in a node's configuration file
/// never reach the control plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub keys: Vec<AppKey>,
    pub namespaces: Vec<Namespace>,
}

/// An API key. `name` is `<app id>.<key id>`; the full key string is `name:secret`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppKey {
    pub name: String,
    pub secret: String,
    /// The capability as the JSON text it was given in.
    pub capability: String,
}

/// Commands are logged with `Debug`, and logs must never contain a key secret.
impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppKey")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("capability", &self.capability)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub id: String,
    #[serde(default)]
    pub persisted: bool,
}

/// Tokens of `key_name` matching `target` and issued before `issued_before_ms` are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub key_name: String,
    /// What the revoked tokens carry, `kind:value` (`clientId:alice`).
    pub target: String,
    pub issued_before_ms: u64,
}

/// What can be proposed to the global master. Times are the proposer's clock in
/// milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a region or replaces its bridge addresses; also counts as a heartbeat and
    /// clears `lost`, which is how a region declared lost rejoins.
    RegisterRegion {
        name: String,
        bridges: Vec<String>,
        now_ms: u64,
    },
    /// A sign of life from a registered region. It does not clear `lost`: a region cut
    /// off and declared lost must register again once an operator lets it back.
    RegionHeartbeat {
        name: String,
        now_ms: u64,
    },
    /// Marks a region lost and moves every channel it homes to a surviving region (by
    /// placement rule, else spread over the survivors), each under a new epoch.
    DeclareRegionLost {
        region: String,
        now_ms: u64,
    },
    /// Answers the home of `channel` (`appId/name`); on first use, assigns one: the
    /// region a placement rule pins, else `preferred_region`, else a live region.
    GetOrAssignHome {
        channel: String,
        preferred_region: String,
        now_ms: u64,
    },
    /// Records that a channel is still in use, so its home does not expire.
    TouchHome {
        channel: String,
        now_ms: u64,
    },
    /// `GetOrAssignHome` for each channel in turn, as one log entry: what a region node
    /// sends for a burst of first uses, so a thousand new channels cost one raft write,
    /// not a thousand. A channel refused (say, a bad name) fails alone. At most
    /// [`MAX_HOMES_PER_COMMAND`] channels.
    GetOrAssignHomes {
        channels: Vec<String>,
        preferred_region: String,
        now_ms: u64,
    },
    /// `TouchHome` for each channel in turn, as one log entry. At most
    /// [`MAX_HOMES_PER_COMMAND`] channels.
    TouchHomes {
        channels: Vec<String>,
        now_ms: u64,
    },
    /// An operator's explicit move, under a new epoch. Placement rules do not apply.
    MoveHome {
        channel: String,
        to_region: String,
        now_ms: u64,
    },
    /// Forgets the homes not used for `idle_ms`; their channels get a new home (and a
    /// higher epoch) on their next use.
    ExpireIdleHomes {
        now_ms: u64,
        idle_ms: u64,
    },
    /// Replaces the placement rules. The first rule that matches a channel and names a
    /// live region wins, so later rules can act as fallbacks.
    SetPlacementRules {
        rules: Vec<PlacementRule>,
    },
    CreateApp {
        app: App,
    },
    /// Removes the app, the homes of its channels and the revocations of its keys.
    DeleteApp {
        app_id: String,
    },
    /// Refuses tokens of `key_name` for `target` issued before `issued_before_ms`. A
    /// later revocation of the same target only ever moves that time forward.
    RevokeTokens {
        key_name: String,
        target: String,
        issued_before_ms: u64,
    },
    /// Forgets revocations older than `before_ms`: once every token issued before a
    /// revocation has expired, it protects nothing.
    PruneRevocations {
        before_ms: u64,
    },
}

impl Command {
    /// The command's name as metrics label it (`get_or_assign_homes`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterRegion { .. } => "register_region",
            Command::RegionHeartbeat { .. } => "region_heartbeat",
            Command::DeclareRegionLost { .. } => "declare_region_lost",
            Command::GetOrAssignHome { .. } => "get_or_assign_home",
            Command::TouchHome { .. } => "touch_home",
            Command::GetOrAssignHomes { .. } => "get_or_assign_homes",
            Command::TouchHomes { .. } => "touch_homes",
            Command::MoveHome { .. } => "move_home",
            Command::ExpireIdleHomes { .. } => "expire_idle_homes",
            Command::SetPlacementRules { .. } => "set_placement_rules",
            Command::CreateApp { .. } => "create_app",
            Command::DeleteApp { .. } => "delete_app",
            Command::RevokeTokens { .. } => "revoke_tokens",
            Command::PruneRevocations { .. } => "prune_revocations",
        }
    }
}

/// The answer to a command, with the version at which its effects are visible, so a
/// proposer can wait until its own view of the catalog has caught up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub version: u64,
    pub outcome: Result<Outcome, CommandError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or already true: registering a region twice changes nothing).
    Done,
    /// A channel's home; `assigned` says whether this command set it.
    Home { home: Home, assigned: bool },
    /// A region loss moved this many channels.
    Rehomed { channels: u64 },
    /// Expiry or pruning removed this many records.
    Removed { count: u64 },
    /// The answers of a batch of home commands, one per channel in the order asked.
    Homes { answers: Vec<HomeAnswer> },
}

/// One channel's answer in a batch of home commands: what the single command for that
/// channel would have answered at that point of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeAnswer {
    pub channel: String,
    /// The channel's home, or why it has none.
    pub home: Result<Home, CommandError>,
    /// Whether this command assigned the home (false when it was known, or refused).
    pub assigned: bool,
}

impl HomeAnswer {
    fn new(channel: String, answer: Result<(Home, bool), CommandError>) -> Self {
        let (home, assigned) = match answer {
            Ok((home, assigned)) => (Ok(home), assigned),
            Err(error) => (Err(error), false),
        };
        Self {
            channel,
            home,
            assigned,
        }
    }
}

/// A single home command's answer as its [`Outcome`].
fn home_outcome(answer: Result<(Home, bool), CommandError>) -> Result<Outcome, CommandError> {
    answer.map(|(home, assigned)| Outcome::Home { home, assigned })
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    #[error("invalid channel {0:?}: expected appId/name")]
    InvalidChannel(String),
    #[error("unknown region {0}")]
    UnknownRegion(String),
    #[error("region {0} is declared lost")]
    RegionLost(String),
    #[error("no live region to home channels in")]
    NoRegionAvailable,
    #[error("channel {0} has no home")]
    NoSuchHome(String),
    #[error("app {0} already exists")]
    AppExists(String),
    #[error("no such app {0}")]
    NoSuchApp(String),
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl CommandError {
    fn invalid(what: &str, reason: &str) -> Self {
        Self::Invalid {
            what: what.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// One record of the catalog set to its new value (`None` removes it). Updates carry
/// whole records, so applying one twice does no harm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    Region {
        name: String,
        region: Region,
    },
    Home {
        channel: String,
        home: Option<Home>,
    },
    Rules {
        rules: Vec<PlacementRule>,
    },
    App {
        app_id: String,
        app: Option<App>,
    },
    Revocation {
        key_name: String,
        target: String,
        issued_before_ms: Option<u64>,
    },
}

impl Update {
    /// A key naming the record this update sets, unique across all kinds of record.
    /// The store persists the catalog as one row per record under this key.
    pub fn record_key(&self) -> String {
        match self {
            Update::Region { name, .. } => format!("region/{name}"),
            Update::Home { channel, .. } => format!("home/{channel}"),
            Update::Rules { .. } => "rules".to_owned(),
            Update::App { app_id, .. } => format!("app/{app_id}"),
            // The length keeps `a.b` + `c/d` apart from `a.b/c` + `d`.
            Update::Revocation {
                key_name, target, ..
            } => format!("revocation/{}:{key_name}/{target}", key_name.len()),
        }
    }

    /// Whether the update removes its record rather than setting it.
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Update::Home { home: None, .. }
                | Update::App { app: None, .. }
                | Update::Revocation {
                    issued_before_ms: None,
                    ..
                }
        )
    }
}

/// An update and the version it created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub version: u64,
    pub update: Update,
}

/// The answer to "what changed since version V".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesSince {
    /// Every change after V, in version order; empty when V is current (or ahead, which
    /// means this replica has not caught up with the caller yet).
    Changes(Vec<Change>),
    /// The change log no longer reaches back to V: take a full catalog instead.
    TooOld,
}

/// A watcher applied a change that does not follow the version it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change {got} does not follow version {have}")]
pub struct VersionGap {
    pub have: u64,
    pub got: u64,
}

/// What watchers see: the registry of regions, homes, rules, apps and revocations at a
/// version. A region node keeps its own copy and follows it with
/// [`Catalog::apply_change`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    version: u64,
    regions: BTreeMap<String, Region>,
    /// Keyed by `appId/name`.
    homes: BTreeMap<String, Home>,
    rules: Vec<PlacementRule>,
    apps: BTreeMap<String, App>,
    /// key name → target → issued before.
    revocations: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Catalog {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.get(name)
    }

    pub fn regions(&self) -> impl Iterator<Item = (&String, &Region)> {
        self.regions.iter()
    }

    pub fn home(&self, channel: &str) -> Option<&Home> {
        self.homes.get(channel)
    }

    pub fn homes(&self) -> impl Iterator<Item = (&String, &Home)> {
        self.homes.iter()
    }

    pub fn rules(&self) -> &[PlacementRule] {
        &self.rules
    }

    pub fn app(&self, id: &str) -> Option<&App> {
        self.apps.get(id)
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    /// Finds a key by its name (`appId.keyId`).
    pub fn key(&self, key_name: &str) -> Option<(&App, &AppKey)> {
        let (app_id, _) = key_name.split_once('.')?;
        let app = self.apps.get(app_id)?;
        let key = app.keys.iter().find(|k| k.name == key_name)?;
        Some((app, key))
    }

    /// Tokens of `key_name` for `target` issued before this time are revoked.
    pub fn revoked_before(&self, key_name: &str, target: &str) -> Option<u64> {
        self.revocations.get(key_name)?.get(target).copied()
    }

    pub fn revocations(&self) -> impl Iterator<Item = Revocation> + '_ {
        self.revocations.iter().flat_map(|(key_name, targets)| {
            targets.iter().map(move |(target, &ms)| Revocation {
                key_name: key_name.clone(),
                target: target.clone(),
                issued_before_ms: ms,
            })
        })
    }

    /// Applies a change from the global master's change stream. A change already
    /// applied is skipped (`Ok(false)`); one that skips a version is refused, because
    /// the copy would silently miss an update.
    pub fn apply_change(&mut self, change: &Change) -> Result<bool, VersionGap> {
        if change.version <= self.version {
            return Ok(false);
        }
        if change.version != self.version + 1 {
            return Err(VersionGap {
                have: self.version,
                got: change.version,
            });
        }
        self.set(change.update.clone());
        self.version = change.version;
        Ok(true)
    }

    /// Every record as the update that would set it: the catalog without its version.
    pub fn records(&self) -> impl Iterator<Item = Update> + '_ {
        let regions = self.regions.iter().map(|(name, region)| Update::Region {
            name: name.clone(),
            region: region.clone(),
        });
        let homes = self.homes.iter().map(|(channel, home)| Update::Home {
            channel: channel.clone(),
            home: Some(home.clone()),
        });
        let rules = std::iter::once(Update::Rules {
            rules: self.rules.clone(),
        });
        let apps = self.apps.iter().map(|(id, app)| Update::App {
            app_id: id.clone(),
            app: Some(app.clone()),
        });
        let revocations = self.revocations().map(|r| Update::Revocation {
            key_name: r.key_name,
            target: r.target,
            issued_before_ms: Some(r.issued_before_ms),
        });
        regions
            .chain(homes)
            .chain(rules)
            .chain(apps)
            .chain(revocations)
    }

    /// Sets one record, leaving the version alone.
    pub(crate) fn set(&mut self, update: Update) {
        match update {
            Update::Region { name, region } => {
                self.regions.insert(name, region);
            }
            Update::Home { channel, home } => match home {
                Some(home) => {
                    self.homes.insert(channel, home);
                }
                None => {
                    self.homes.remove(&channel);
                }
            },
            Update::Rules { rules } => self.rules = rules,
            Update::App { app_id, app } => match app {
                Some(app) => {
                    self.apps.insert(app_id, app);
                }
                None => {
                    self.apps.remove(&app_id);
                }
            },
            Update::Revocation {
                key_name,
                target,
                issued_before_ms,
            } => self.set_revocation(key_name, target, issued_before_ms),
        }
    }

    fn set_revocation(&mut self, key_name: String, target: String, ms: Option<u64>) {
        match ms {
            Some(ms) => {
                self.revocations
                    .entry(key_name)
                    .or_default()
                    .insert(target, ms);
            }
            None => {
                if let Some(targets) = self.revocations.get_mut(&key_name) {
                    targets.remove(&target);
                    if targets.is_empty() {
                        self.revocations.remove(&key_name);
                    }
                }
            }
        }
    }

    pub(crate) fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    fn is_live(&self, region: &str) -> bool {
        self.regions.get(region).is_some_and(|r| !r.lost)
    }

    fn live_regions(&self) -> Vec<&String> {
        self.regions
            .iter()
            .filter(|(_, r)| !r.lost)
            .map(|(name, _)| name)
            .collect()
    }

    /// Where a channel without a home goes: the first rule that matches and names a
    /// live region, else the preferred region if live, else a live region picked by a
    /// stable hash of the channel, so a lost region's channels spread over survivors.
    fn choose_region(&self, channel: &str, preferred: Option<&str>) -> Option<String> {
        let (app_id, name) = channel.split_once('/')?;
        let by_rule = self
            .rules
            .iter()
            .find(|rule| rule.matches(app_id, name) && self.is_live(&rule.region));
        if let Some(rule) = by_rule {
            return Some(rule.region.clone());
        }
        if let Some(preferred) = preferred.filter(|p| self.is_live(p)) {
            return Some(preferred.to_owned());
        }

        let live = self.live_regions();
        if live.is_empty() {
            return None;
        }
        let pick = stable_hash(channel) % live.len() as u64;
        Some(live[pick as usize].clone())
    }
}

/// The bounded list of the latest changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChangeLog {
    capacity: usize,
    entries: VecDeque<Change>,
}

impl ChangeLog {
    fn push(&mut self, change: Change) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(change);
    }

    fn since(&self, version: u64, current: u64) -> ChangesSince {
        if version >= current {
            return ChangesSince::Changes(Vec::new());
        }
        let Some(first) = self.entries.front().map(|c| c.version) else {
            return ChangesSince::TooOld;
        };
        if version + 1 < first {
            return ChangesSince::TooOld;
        }
        // Versions in the log are consecutive, so the position is arithmetic.
        let skip = (version + 1 - first) as usize;
        ChangesSince::Changes(self.entries.iter().skip(skip).cloned().collect())
    }
}

/// What the store keeps beside the records to rebuild a [`ControlState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateHeader {
    pub version: u64,
    pub retired_epoch_floor: u64,
    pub change_log_capacity: usize,
}

/// The global master's state machine: the catalog, the change log, and what it must
/// remember to keep epochs from repeating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    catalog: Catalog,
    /// The highest epoch of any home that was removed (expired, or its app deleted). A
    /// channel homed again gets an epoch above it, so epochs never repeat for a channel
    /// even though its old home is forgotten and clocks may disagree.
    retired_epoch_floor: u64,
    changes: ChangeLog,
}

impl Default for ControlState {
    fn default() -> Self {
        Self::new(DEFAULT_CHANGE_LOG_CAPACITY)
    }
}

impl ControlState {
    /// An empty state keeping the last `change_log_capacity` changes. Every replica must
    /// use the same capacity; it travels in snapshots.
    pub fn new(change_log_capacity: usize) -> Self {
        Self {
            catalog: Catalog::default(),
            retired_epoch_floor: 0,
            changes: ChangeLog {
                capacity: change_log_capacity,
                entries: VecDeque::new(),
            },
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn version(&self) -> u64 {
        self.catalog.version
    }

    /// Every change after `version`, or [`ChangesSince::TooOld`].
    pub fn changes_since(&self, version: u64) -> ChangesSince {
        self.changes.since(version, self.catalog.version)
    }

    pub fn header(&self) -> StateHeader {
        StateHeader {
            version: self.catalog.version,
            retired_epoch_floor: self.retired_epoch_floor,
            change_log_capacity: self.changes.capacity,
        }
    }

    /// Every change the log still holds, oldest first.
    pub fn retained_changes(&self) -> impl Iterator<Item = &Change> {
        self.changes.entries.iter()
    }

    /// Rebuilds a state from what the store persisted: the header, every record, and
    /// the retained changes in version order.
    pub fn restore(
        header: StateHeader,
        records: impl IntoIterator<Item = Update>,
        changes: impl IntoIterator<Item = Change>,
    ) -> Self {
        let mut state = Self::new(header.change_log_capacity);
        for record in records {
            state.catalog.set(record);
        }
        state.catalog.set_version(header.version);
        state.retired_epoch_floor = header.retired_epoch_floor;
        for change in changes {
            state.changes.push(change);
        }
        state
    }

    /// Applies one command. Pure: the same state and command give the same result on
    /// every replica.
    pub fn apply(&mut self, command: Command) -> Response {
        let outcome = self.execute(command);
        Response {
            version: self.catalog.version,
            outcome,
        }
    }

    fn execute(&mut self, command: Command) -> Result<Outcome, CommandError> {
        match command {
            Command::RegisterRegion {
                name,
                bridges,
                now_ms,
            } => self.register_region(name, bridges, now_ms),
            Command::RegionHeartbeat { name, now_ms } => self.heartbeat(&name, now_ms),
            Command::DeclareRegionLost { region, now_ms } => self.declare_lost(&region, now_ms),
            Command::GetOrAssignHome {
                channel,
                preferred_region,
                now_ms,
            } => home_outcome(self.get_or_assign(channel, &preferred_region, now_ms)),
            Command::TouchHome { channel, now_ms } => home_outcome(self.touch(channel, now_ms)),
            Command::GetOrAssignHomes {
                channels,
                preferred_region,
                now_ms,
            } => self.for_each_home(channels, |state, channel| {
                state.get_or_assign(channel, &preferred_region, now_ms)
            }),
            Command::TouchHomes { channels, now_ms } => {
                self.for_each_home(channels, |state, channel| state.touch(channel, now_ms))
            }
            Command::MoveHome {
                channel,
                to_region,
                now_ms,
            } => self.move_home(channel, to_region, now_ms),
            Command::ExpireIdleHomes { now_ms, idle_ms } => Ok(self.expire(now_ms, idle_ms)),
            Command::SetPlacementRules { rules } => self.set_rules(rules),
            Command::CreateApp { app } => self.create_app(app),
            Command::DeleteApp { app_id } => self.delete_app(&app_id),
            Command::RevokeTokens {
                key_name,
                target,
                issued_before_ms,
            } => self.revoke(key_name, target, issued_before_ms),
            Command::PruneRevocations { before_ms } => Ok(self.prune_revocations(before_ms)),
        }
    }

    /// Sets a record and logs it under the next version.
    fn record(&mut self, update: Update) {
        self.catalog.set(update.clone());
        self.catalog.version += 1;
        self.changes.push(Change {
            version: self.catalog.version,
            update,
        });
    }

    // ----- regions

    fn register_region(
        &mut self,
        name: String,
        bridges: Vec<String>,
        now_ms: u64,
    ) -> Result<Outcome, CommandError> {
        if name.is_empty() {
            return Err(CommandError::invalid("region name", "empty"));
        }
        let previous = self.catalog.regions.get(&name);
        let region = Region {
            bridges,
            last_heartbeat_ms: previous.map_or(now_ms, |r| r.last_heartbeat_ms.max(now_ms)),
            lost: false,
        };
        if previous != Some(&region) {
            self.record(Update::Region { name, region });
        }
        Ok(Outcome::Done)
    }

    fn heartbeat(&mut self, name: &str, now_ms: u64) -> Result<Outcome, CommandError> {
        let region = self
            .catalog
            .regions
            .get(name)
            .ok_or_else(|| CommandError::UnknownRegion(name.to_owned()))?;
        // A late heartbeat from a skewed clock must not move the time back.
        if now_ms > region.last_heartbeat_ms {
            let mut region = region.clone();
            region.last_heartbeat_ms = now_ms;
            self.record(Update::Region {
                name: name.to_owned(),
                region,
            });
        }
        Ok(Outcome::Done)
    }

    fn declare_lost(&mut self, name: &str, now_ms: u64) -> Result<Outcome, CommandError> {
        let region = self
            .catalog
            .regions
            .get(name)
            .ok_or_else(|| CommandError::UnknownRegion(name.to_owned()))?;
        if region.lost {
            return Ok(Outcome::Rehomed { channels: 0 });
        }
        // Refuse before changing anything: half a region loss (marked lost, channels
        // still homed there) would leave channels with no sequencer anywhere.
        if !self.catalog.live_regions().iter().any(|r| *r != name) {
            return Err(CommandError::NoRegionAvailable);
        }

        let mut region = region.clone();
        region.lost = true;
        self.record(Update::Region {
            name: name.to_owned(),
            region,
        });

        let orphans: Vec<String> = (self.catalog.homes.iter())
            .filter(|(_, home)| home.region == name)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &orphans {
            self.rehome(channel, now_ms);
        }
        Ok(Outcome::Rehomed {
            channels: orphans.len() as u64,
        })
    }

    /// Moves a channel of a lost region to a live one. The caller checked that a live
    /// region exists.
    fn rehome(&mut self, channel: &str, now_ms: u64) {
        let Some(region) = self.catalog.choose_region(channel, None) else {
            return;
        };
        let previous = self.catalog.homes.get(channel);
        let home = Home {
            region,
            epoch: self.next_epoch(previous.map(|h| h.epoch), now_ms),
            last_used_ms: now_ms,
            previous_region: previous.map(|h| h.region.clone()),
        };
        self.record(Update::Home {
            channel: channel.to_owned(),
            home: Some(home),
        });
    }

    // ----- channel homes

    /// The epoch for a channel's new home: above its current one, above every retired
    /// one (its own forgotten homes among them), and at least the proposer's clock.
    fn next_epoch(&self, current: Option<u64>, now_ms: u64) -> u64 {
        let floor = current.unwrap_or(0).max(self.retired_epoch_floor) + 1;
        floor.max(now_ms)
    }

    /// The channel's home, and whether this call assigned it.
    fn get_or_assign(
        &mut self,
        channel: String,
        preferred: &str,
        now_ms: u64,
    ) -> Result<(Home, bool), CommandError> {
        check_channel(&channel)?;
        if self.catalog.homes.contains_key(&channel) {
            return Ok((self.touch_existing(channel, now_ms), false));
        }

        let region = (self.catalog)
            .choose_region(&channel, Some(preferred))
            .ok_or(CommandError::NoRegionAvailable)?;
        let home = Home {
            region,
            epoch: self.next_epoch(None, now_ms),
            last_used_ms: now_ms,
            previous_region: None,
        };
        self.record(Update::Home {
            channel,
            home: Some(home.clone()),
        });
        Ok((home, true))
    }

    /// Applies a single-channel home command to each channel of a batch, in order, so
    /// each answer (and the versions its updates take) is what that command alone
    /// would have given at that point. A refused channel leaves the others alone.
    fn for_each_home(
        &mut self,
        channels: Vec<String>,
        mut single: impl FnMut(&mut Self, String) -> Result<(Home, bool), CommandError>,
    ) -> Result<Outcome, CommandError> {
        if channels.len() > MAX_HOMES_PER_COMMAND {
            return Err(CommandError::invalid(
                "home batch",
                &format!("more than {MAX_HOMES_PER_COMMAND} channels"),
            ));
        }
        let answers = (channels.into_iter())
            .map(|channel| {
                let answer = single(self, channel.clone());
                HomeAnswer::new(channel, answer)
            })
            .collect();
        Ok(Outcome::Homes { answers })
    }

    /// The channel's home, its last use moved forward; it must have one.
    fn touch(&mut self, channel: String, now_ms: u64) -> Result<(Home, bool), CommandError> {
        if !self.catalog.homes.contains_key(&channel) {
            return Err(CommandError::NoSuchHome(channel));
        }
        Ok((self.touch_existing(channel, now_ms), false))
    }

    /// Moves `last_used_ms` forward (never back) and returns the home. Callers checked
    /// that the channel has a home, so the index cannot fail.
    fn touch_existing(&mut self, channel: String, now_ms: u64) -> Home {
        let mut home = self.catalog.homes[&channel].clone();
        if now_ms > home.last_used_ms {
            home.last_used_ms = now_ms;
            self.record(Update::Home {
                channel,
                home: Some(home.clone()),
            });
        }
        home
    }

    fn move_home(
        &mut self,
        channel: String,
        to_region: String,
        now_ms: u64,
    ) -> Result<Outcome, CommandError> {
        check_channel(&channel)?;
        match self.catalog.regions.get(&to_region) {
            None => return Err(CommandError::UnknownRegion(to_region)),
            Some(r) if r.lost => return Err(CommandError::RegionLost(to_region)),
            Some(_) => {}
        }

        let current = self.catalog.homes.get(&channel);
        if let Some(home) = current.filter(|h| h.region == to_region) {
            return Ok(Outcome::Home {
                home: home.clone(),
                assigned: false,
            });
        }
        let home = Home {
            region: to_region,
            epoch: self.next_epoch(current.map(|h| h.epoch), now_ms),
            last_used_ms: now_ms,
            previous_region: current.map(|h| h.region.clone()),
        };
        self.record(Update::Home {
            channel,
            home: Some(home.clone()),
        });
        Ok(Outcome::Home {
            home,
            assigned: true,
        })
    }

    fn expire(&mut self, now_ms: u64, idle_ms: u64) -> Outcome {
        let idle: Vec<String> = (self.catalog.homes.iter())
            .filter(|(_, home)| home.last_used_ms.saturating_add(idle_ms) <= now_ms)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &idle {
            self.remove_home(channel);
        }
        Outcome::Removed {
            count: idle.len() as u64,
        }
    }

    fn remove_home(&mut self, channel: &str) {
        if let Some(home) = self.catalog.homes.get(channel) {
            self.retired_epoch_floor = self.retired_epoch_floor.max(home.epoch);
            self.record(Update::Home {
                channel: channel.to_owned(),
                home: None,
            });
        }
    }

    fn set_rules(&mut self, rules: Vec<PlacementRule>) -> Result<Outcome, CommandError> {
        for rule in &rules {
            if rule.app_id.is_empty() || rule.region.is_empty() {
                return Err(CommandError::invalid(
                    "placement rule",
                    "app id and region must not be empty",
                ));
            }
        }
        if rules != self.catalog.rules {
            self.record(Update::Rules { rules });
        }
        Ok(Outcome::Done)
    }

    // ----- apps and revocations

    fn create_app(&mut self, app: App) -> Result<Outcome, CommandError> {
        check_app(&app)?;
        if self.catalog.apps.contains_key(&app.id) {
            return Err(CommandError::AppExists(app.id));
        }
        self.record(Update::App {
            app_id: app.id.clone(),
            app: Some(app),
        });
        Ok(Outcome::Done)
    }

    fn delete_app(&mut self, app_id: &str) -> Result<Outcome, CommandError> {
        if !self.catalog.apps.contains_key(app_id) {
            return Err(CommandError::NoSuchApp(app_id.to_owned()));
        }

        let channel_prefix = format!("{app_id}/");
        let channels: Vec<String> = (self.catalog.homes.range(channel_prefix.clone()..))
            .take_while(|(channel, _)| channel.starts_with(&channel_prefix))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &channels {
            self.remove_home(channel);
        }

        let key_prefix = format!("{app_id}.");
        let revoked: Vec<Revocation> = (self.catalog.revocations())
            .filter(|r| r.key_name.starts_with(&key_prefix))
            .collect();
        for r in revoked {
            self.record(Update::Revocation {
                key_name: r.key_name,
                target: r.target,
                issued_before_ms: None,
            });
        }

        self.record(Update::App {
            app_id: app_id.to_owned(),
            app: None,
        });
        Ok(Outcome::Done)
    }

    fn revoke(
        &mut self,
        key_name: String,
        target: String,
        issued_before_ms: u64,
    ) -> Result<Outcome, CommandError> {
        if key_name.is_empty() {
            return Err(CommandError::invalid("key name", "empty"));
        }
        let has_kind = target
            .split_once(':')
            .is_some_and(|(kind, _)| !kind.is_empty());
        if !has_kind {
            return Err(CommandError::invalid(
                "revocation target",
                "expected kind:value",
            ));
        }
        let current = self.catalog.revoked_before(&key_name, &target);
        if current.is_none_or(|ms| ms < issued_before_ms) {
            self.record(Update::Revocation {
                key_name,
                target,
                issued_before_ms: Some(issued_before_ms),
            });
        }
        Ok(Outcome::Done)
    }

    fn prune_revocations(&mut self, before_ms: u64) -> Outcome {
        let old: Vec<Revocation> = (self.catalog.revocations())
            .filter(|r| r.issued_before_ms < before_ms)
            .collect();
        let count = old.len() as u64;
        for r in old {
            self.record(Update::Revocation {
                key_name: r.key_name,
                target: r.target,
                issued_before_ms: None,
            });
        }
        Outcome::Removed { count }
    }
}

fn check_channel(channel: &str) -> Result<(), CommandError> {
    match channel.split_once('/') {
        Some((app, name)) if !app.is_empty() && !name.is_empty() => Ok(()),
        _ => Err(CommandError::InvalidChannel(channel.to_owned())),
    }
}

/// App ids prefix channel keys (`appId/…`) and key names (`appId.…`), so they can hold
/// neither separator, and a key must belong to its app by name.
fn check_app(app: &App) -> Result<(), CommandError> {
    if app.id.is_empty() || app.id.contains(['/', '.', ':']) {
        return Err(CommandError::invalid(
            "app id",
            "must be non-empty without '/', '.' or ':'",
        ));
    }
    let prefix = format!("{}.", app.id);
    for (i, key) in app.keys.iter().enumerate() {
        let key_id = key.name.strip_prefix(&prefix).unwrap_or_default();
        if key_id.is_empty() || key_id.contains(':') {
            return Err(CommandError::invalid("key name", "expected appId.keyId"));
        }
        if app.keys[..i].iter().any(|k| k.name == key.name) {
            return Err(CommandError::invalid("key name", "duplicate key"));
        }
    }
    Ok(())
}

/// FNV-1a: the same on every machine and build, unlike std's randomly keyed hasher.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
