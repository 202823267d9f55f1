//! Durable raft storage for the global master: openraft's log store and state machine,
//! both kept in one redb file.
//!
//! The file holds the raft log and its pointers (vote, committed, last purged), the
//! state machine as one row per catalog record plus the retained change log, and the
//! latest snapshot. Every write is one redb transaction, committed durably (fsync)
//! before openraft hears it is done, so a process restarted on the same file resumes
//! exactly where it stopped.
//!
//! The state machine lives in memory as a [`ControlState`] and is written through
//! incrementally: after a batch of entries is applied, only the records that the
//! batch's changes touched are rewritten. A batch with more changes than the change log
//! keeps (or an installed snapshot) rewrites every record instead.
//!
//! redb calls block, so each runs on tokio's blocking pool: the raft core's task never
//! stalls on an fsync.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::state::{
    Change, ChangesSince, Command, ControlState, Outcome, Response, StateHeader, Update,
};

openraft::declare_raft_types!(
    /// Openraft's type configuration for the global master: [`Command`]s in,
    /// [`Response`]s out, members named by `u64` ids with their raft address.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// Raft log entries by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `committed`, `last_purged`.
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// `format`, `applied`, `membership`, `header` (see [`StateHeader`]).
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// The catalog, one [`Update`] per record under [`Update::record_key`].
const SM_RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_records");
/// The retained change log, by version.
const SM_CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("sm_changes");
/// `meta` and `data` of the latest snapshot.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// Bumped when the file's layout or encoding changes incompatibly.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: rmp_serde::encode::Error,
    },
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        source: rmp_serde::decode::Error,
    },
    #[error("the database has format {found}, this build reads format {FORMAT}")]
    Format { found: u32 },
    #[error("storage task failed: {0}")]
    Task(String),
}

/// redb has one error type per operation; they all fold into `redb::Error`.
macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Db(error.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Opens (or creates) the store at `path` and loads the state machine. The two halves
/// share the file; hand both to `Raft::new`.
pub fn open(path: impl AsRef<Path>) -> Result<(LogStore, StateMachine), StoreError> {
    let db = Arc::new(Database::create(path)?);
    prepare(&db)?;
    let applied = load_state_machine(&db)?;
    tracing::info!(
        raft.last_applied = ?applied.last_applied,
        catalog.version = applied.state.version(),
        "global master store opened"
    );
    let (version, _) = watch::channel(applied.state.version());
    let shared = Arc::new(Shared {
        applied: RwLock::new(applied),
        version,
        snapshots_built: AtomicU64::new(0),
    });
    let log = LogStore { db: db.clone() };
    Ok((log, StateMachine { db, shared }))
}

/// Creates every table (reads fail on a missing table) and checks the format.
fn prepare(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(RAFT_META)?;
    txn.open_table(SM_RECORDS)?;
    txn.open_table(SM_CHANGES)?;
    txn.open_table(SNAPSHOT)?;
    {
        let mut meta = txn.open_table(SM_META)?;
        match read_value::<u32>(&meta, "format")? {
            Some(found) if found != FORMAT => return Err(StoreError::Format { found }),
            Some(_) => {}
            None => {
                meta.insert("format", encode("format", &FORMAT)?.as_slice())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

// ----- encoding and table helpers

/// MessagePack with field names, so records written by an older build still decode
/// after fields are added.
fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|source| StoreError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|source| StoreError::Decode { what, source })
}

fn read_value<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(bytes) => Ok(Some(decode(key, bytes.value())?)),
        None => Ok(None),
    }
}

fn read_key<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read()?;
    read_value(&txn.open_table(table)?, key)
}

/// Writes (or with `None`, removes) one key in its own durable transaction.
fn write_key<T: Serialize>(
    db: &Database,
    table: TableDefinition<&'static str, &'static [u8]>,
    key: &'static str,
    value: Option<&T>,
) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(table)?;
        match value {
            Some(value) => {
                table.insert(key, encode(key, value)?.as_slice())?;
            }
            None => {
                table.remove(key)?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Runs blocking redb work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Maps a store failure to openraft's error, which shuts the raft node down: a store
/// that failed to write cannot be trusted to have kept anything.
fn fail(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(StoreError) -> StorageError<NodeId> {
    move |error| StorageIOError::new(subject, verb, &error).into()
}

// ----- the log

/// The raft log, vote and commit pointer. Cheap to clone: clones share the file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let db = self.db.clone();
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || read_entries(&db, bounds))
            .await
            .map_err(fail(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

fn read_entries(
    db: &Database,
    bounds: (Bound<u64>, Bound<u64>),
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let mut entries = Vec::new();
    for row in log.range(bounds)? {
        let (_, bytes) = row?;
        entries.push(decode("log entry", bytes.value())?);
    }
    Ok(entries)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let db = self.db.clone();
        blocking(move || log_state(&db))
            .await
            .map_err(fail(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let (db, vote) = (self.db.clone(), *vote);
        blocking(move || write_key(&db, RAFT_META, "vote", Some(&vote)))
            .await
            .map_err(fail(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let db = self.db.clone();
        blocking(move || read_key(&db, RAFT_META, "vote"))
            .await
            .map_err(fail(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Kept so a restarted member knows how far the cluster had committed; the state
    /// machine persists what it applied by itself.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || write_key(&db, RAFT_META, "committed", committed.as_ref()))
            .await
            .map_err(fail(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let db = self.db.clone();
        blocking(move || read_key(&db, RAFT_META, "committed"))
            .await
            .map_err(fail(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let db = self.db.clone();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        blocking(move || append_entries(&db, &entries))
            .await
            .map_err(fail(ErrorSubject::Logs, ErrorVerb::Write))?;
        // The transaction committed durably, so the entries are on disk already.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || remove_entries(&db, log_id.index.., None))
            .await
            .map_err(fail(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || remove_entries(&db, ..=log_id.index, Some(log_id)))
            .await
            .map_err(fail(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

fn log_state(db: &Database) -> Result<LogState<TypeConfig>, StoreError> {
    let txn = db.begin_read()?;
    let last_purged: Option<LogId<NodeId>> =
        read_value(&txn.open_table(RAFT_META)?, "last_purged")?;
    let last_entry = match txn.open_table(LOG)?.last()? {
        Some((_, bytes)) => Some(decode::<Entry<TypeConfig>>("log entry", bytes.value())?.log_id),
        None => None,
    };
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id: last_entry.or(last_purged),
    })
}

fn append_entries(db: &Database, entries: &[Entry<TypeConfig>]) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        for entry in entries {
            log.insert(entry.log_id.index, encode("log entry", entry)?.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Removes the entries in `range`. A purge also records the last purged id, in the
/// same transaction, so the log never looks emptier than it was.
fn remove_entries(
    db: &Database,
    range: impl RangeBounds<u64>,
    purged: Option<LogId<NodeId>>,
) -> Result<(), StoreError> {
    let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
    let txn = db.begin_write()?;
    txn.open_table(LOG)?.retain_in(bounds, |_, _| false)?;
    if let Some(purged) = purged {
        let mut meta = txn.open_table(RAFT_META)?;
        meta.insert("last_purged", encode("last_purged", &purged)?.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

// ----- the state machine

/// What has been applied, in memory. Guarded by one lock so the state, the last applied
/// id and the membership are always seen together (a snapshot must match its meta).
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: ControlState,
}

struct Shared {
    applied: RwLock<Applied>,
    /// The catalog version durably applied; watchers wait on it.
    version: watch::Sender<u64>,
    /// Makes snapshot ids unique within a process.
    snapshots_built: AtomicU64,
}

/// What must be written after applying, so the file matches memory.
struct SmWrite {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    header: StateHeader,
    delta: Delta,
}

enum Delta {
    /// The changes since the last write; each one's update also sets its record.
    Changes(Vec<Change>),
    /// Every record and every retained change, replacing what the file holds.
    Full {
        records: Vec<Update>,
        changes: Vec<Change>,
    },
}

impl Applied {
    fn write_since(&self, version: u64) -> SmWrite {
        let delta = match self.state.changes_since(version) {
            ChangesSince::Changes(changes) => Delta::Changes(changes),
            // More changes than the log keeps: the file can only catch up whole.
            ChangesSince::TooOld => {
                tracing::debug!(
                    catalog.version = self.state.version(),
                    "batch outgrew the change log, rewriting every record"
                );
                self.full_delta()
            }
        };
        self.write(delta)
    }

    fn full_delta(&self) -> Delta {
        Delta::Full {
            records: self.state.catalog().records().collect(),
            changes: self.state.retained_changes().cloned().collect(),
        }
    }

    fn write(&self, delta: Delta) -> SmWrite {
        SmWrite {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            header: self.state.header(),
            delta,
        }
    }
}

/// The state machine half of the store.
pub struct StateMachine {
    db: Arc<Database>,
    shared: Arc<Shared>,
}

/// Read access to the applied state for the rest of the global master (reads, watch
/// streams). Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    shared: Arc<Shared>,
}

impl StateReader {
    /// Runs `f` on the current state. Keep `f` short: applying waits for it.
    pub fn read<T>(&self, f: impl FnOnce(&ControlState) -> T) -> T {
        f(&self.shared.applied.read().state)
    }

    /// The id of the last log entry applied.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.shared.applied.read().last_applied
    }

    /// Follows the catalog version, updated once each applied batch is durable. The
    /// state read afterwards may already be newer than the value seen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }
}

impl StateMachine {
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: self.shared.clone(),
        }
    }

    /// Applies in memory and says what to persist. Sync, so the lock is never held
    /// across an await.
    fn apply_in_memory(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> (Vec<Response>, SmWrite) {
        let mut applied = self.shared.applied.write();
        let before = applied.state.version();
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Normal(command) => {
                    metrics::counter!("starling_global_commands_total", "command" => command.name())
                        .increment(1);
                    applied.state.apply(command)
                }
                EntryPayload::Blank => nothing_to_say(&applied.state),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    nothing_to_say(&applied.state)
                }
            };
            responses.push(response);
        }
        (responses, applied.write_since(before))
    }

    async fn persist(
        &self,
        write: SmWrite,
        snapshot: Option<(Meta, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        let version = write.header.version;
        blocking(move || write_state_machine(&db, &write, snapshot.as_ref())).await?;
        self.shared.version.send_replace(version);
        Ok(())
    }
}

/// The response to entries that carry no command (blank, membership).
fn nothing_to_say(state: &ControlState) -> Response {
    Response {
        version: state.version(),
        outcome: Ok(Outcome::Done),
    }
}

fn load_state_machine(db: &Database) -> Result<Applied, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(SM_META)?;
    let last_applied = read_value(&meta, "applied")?;
    let membership = read_value(&meta, "membership")?.unwrap_or_default();
    let Some(header) = read_value::<StateHeader>(&meta, "header")? else {
        return Ok(Applied {
            last_applied,
            membership,
            state: ControlState::default(),
        });
    };

    let mut records = Vec::new();
    for row in txn.open_table(SM_RECORDS)?.iter()? {
        records.push(decode::<Update>("record", row?.1.value())?);
    }
    let mut changes = Vec::new();
    for row in txn.open_table(SM_CHANGES)?.iter()? {
        changes.push(decode::<Change>("change", row?.1.value())?);
    }
    Ok(Applied {
        last_applied,
        membership,
        state: ControlState::restore(header, records, changes),
    })
}

fn write_state_machine(
    db: &Database,
    write: &SmWrite,
    snapshot: Option<&(Meta, Vec<u8>)>,
) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    match &write.delta {
        Delta::Changes(changes) => write_changes(&txn, changes, &write.header)?,
        Delta::Full { records, changes } => write_everything(&txn, records, changes)?,
    }
    {
        let mut meta = txn.open_table(SM_META)?;
        meta.insert(
            "applied",
            encode("applied", &write.last_applied)?.as_slice(),
        )?;
        meta.insert(
            "membership",
            encode("membership", &write.membership)?.as_slice(),
        )?;
        meta.insert("header", encode("header", &write.header)?.as_slice())?;
    }
    if let Some((meta, data)) = snapshot {
        put_snapshot(&txn, meta, data)?;
    }
    txn.commit()?;
    Ok(())
}

fn write_changes(
    txn: &WriteTransaction,
    changes: &[Change],
    header: &StateHeader,
) -> Result<(), StoreError> {
    let mut records = txn.open_table(SM_RECORDS)?;
    let mut log = txn.open_table(SM_CHANGES)?;
    for change in changes {
        set_record(&mut records, &change.update)?;
        log.insert(change.version, encode("change", change)?.as_slice())?;
    }
    // Keep what the in-memory log keeps: the last `capacity` versions.
    let kept_from = (header.version + 1).saturating_sub(header.change_log_capacity as u64);
    log.retain_in(..kept_from, |_, _| false)?;
    Ok(())
}

fn write_everything(
    txn: &WriteTransaction,
    records: &[Update],
    changes: &[Change],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(SM_RECORDS)?;
    table.retain(|_, _| false)?;
    for record in records {
        set_record(&mut table, record)?;
    }
    let mut log = txn.open_table(SM_CHANGES)?;
    log.retain(|_, _| false)?;
    for change in changes {
        log.insert(change.version, encode("change", change)?.as_slice())?;
    }
    Ok(())
}

fn set_record(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    update: &Update,
) -> Result<(), StoreError> {
    let key = update.record_key();
    if update.is_removal() {
        table.remove(key.as_str())?;
    } else {
        table.insert(key.as_str(), encode("record", update)?.as_slice())?;
    }
    Ok(())
}

// ----- snapshots

/// Stores a snapshot unless a newer one is already there: a snapshot built from an
/// older state can finish after a newer one was installed.
fn put_snapshot(txn: &WriteTransaction, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
    let mut table = txn.open_table(SNAPSHOT)?;
    if let Some(stored) = read_value::<Meta>(&table, "meta")? {
        if stored.last_log_id > meta.last_log_id {
            return Ok(());
        }
    }
    table.insert("meta", encode("snapshot meta", meta)?.as_slice())?;
    table.insert("data", data)?;
    Ok(())
}

fn save_snapshot(db: &Database, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    put_snapshot(&txn, meta, data)?;
    txn.commit()?;
    Ok(())
}

fn load_snapshot(db: &Database) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let Some(meta) = read_value::<Meta>(&table, "meta")? else {
        return Ok(None);
    };
    let data = table
        .get("data")?
        .map(|d| d.value().to_vec())
        .unwrap_or_default();
    Ok(Some((meta, data)))
}

/// Builds snapshots from a shared view of the state machine.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    shared: Arc<Shared>,
}

impl SnapshotBuilder {
    /// Serialises the state with the meta it matches, under one read lock. Applying
    /// waits meanwhile; encoding a control plane's catalog takes milliseconds, and a
    /// copy-then-encode would double its memory instead.
    fn capture(&self) -> Result<(Meta, Vec<u8>), StoreError> {
        let applied = self.shared.applied.read();
        let data = encode("snapshot", &applied.state)?;
        let seq = self.shared.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("0-0-{seq}"),
        };
        let meta = Meta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        Ok((meta, data))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, data) = self
            .capture()
            .map_err(fail(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        let db = self.db.clone();
        let (stored_meta, stored_data) = (meta.clone(), data.clone());
        blocking(move || save_snapshot(&db, &stored_meta, &stored_data))
            .await
            .map_err(fail(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            ))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let applied = self.shared.applied.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let (responses, write) = self.apply_in_memory(entries);
        self.persist(write, None)
            .await
            .map_err(fail(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let signature = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let state: ControlState =
            decode("snapshot", &data).map_err(fail(signature(), ErrorVerb::Read))?;

        tracing::info!(snapshot = %meta, "installing snapshot");
        let write = {
            let mut applied = self.shared.applied.write();
            *applied = Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                state,
            };
            applied.write(applied.full_delta())
        };
        self.persist(write, Some((meta.clone(), data)))
            .await
            .map_err(fail(signature(), ErrorVerb::Write))
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let stored = blocking(move || load_snapshot(&db))
            .await
            .map_err(fail(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests;
