use std::collections::BTreeSet;
use std::path::PathBuf;

use openraft::storage::RaftLogStorageExt;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Membership};
use redb::ReadableTableMetadata;
use tempfile::TempDir;

use super::*;
use crate::state::Home;

/// Fresh stores in their own temporary directory, which lives as long as the test.
struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStores {
    async fn build(&self) -> StorageResult<(TempDir, LogStore, StateMachine)> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let (log, sm) = open(dir.path().join("raft.redb"))
            .map_err(fail(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() -> Result<(), Box<StorageError<NodeId>>> {
    Suite::test_all(TempStores).map_err(Box::new)
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command_entry(term: u64, index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(command),
    }
}

fn membership_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let voters = BTreeSet::from([1, 2, 3]);
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

fn register(name: &str) -> Command {
    Command::RegisterRegion {
        name: name.into(),
        bridges: vec![format!("{name}:7000")],
        now_ms: 1_000,
    }
}

fn assign(channel: &str) -> Command {
    Command::GetOrAssignHome {
        channel: channel.into(),
        preferred_region: "eu".into(),
        now_ms: 2_000,
    }
}

/// A history: membership, two regions, then one assignment per channel.
fn history(channels: usize) -> Vec<Entry<TypeConfig>> {
    let mut entries = vec![
        membership_entry(1, 1),
        command_entry(1, 2, register("eu")),
        command_entry(1, 3, register("us")),
    ];
    for i in 0..channels {
        let index = 4 + i as u64;
        entries.push(command_entry(1, index, assign(&format!("app/ch{i}"))));
    }
    entries
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("raft.redb")
}

fn catalog_of(sm: &StateMachine) -> ControlState {
    sm.reader().read(|state| state.clone())
}

#[tokio::test]
async fn log_vote_commit_and_state_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let entries = history(5);
    let last = entries.last().unwrap().log_id;
    let vote = Vote::new_committed(1, 1);

    tracing::info!("phase 1: write the log, its pointers, and apply it");
    let (before, purged) = {
        let (mut log, mut sm) = open(db_path(&dir))?;
        log.blocking_append(entries.clone()).await?;
        log.save_vote(&vote).await?;
        log.save_committed(Some(last)).await?;
        let responses = sm.apply(entries.clone()).await?;
        assert_eq!(responses.len(), entries.len());
        log.purge(log_id(1, 2)).await?;
        (catalog_of(&sm), log_id(1, 2))
    };
    assert_eq!(before.catalog().homes().count(), 5);

    tracing::info!("phase 2: reopen the same file and read everything back");
    let (mut log, mut sm) = open(db_path(&dir))?;
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(last));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(purged));
    assert_eq!(state.last_log_id, Some(last));
    let read: Vec<LogId<NodeId>> = (log.try_get_log_entries(0..100).await?)
        .iter()
        .map(|e| e.log_id)
        .collect();
    let expected: Vec<LogId<NodeId>> = entries[2..].iter().map(|e| e.log_id).collect();
    assert_eq!(read, expected);

    let (applied, membership) = sm.applied_state().await?;
    assert_eq!(applied, Some(last));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(catalog_of(&sm), before);
    assert_eq!(
        sm.reader().subscribe().borrow().to_owned(),
        before.version()
    );
    Ok(())
}

#[tokio::test]
async fn changes_applied_after_a_restart_are_persisted_too() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let (_, mut sm) = open(db_path(&dir))?;
        sm.apply(history(3)).await?;
    }

    let expected = {
        let (_, mut sm) = open(db_path(&dir))?;
        let more = vec![
            command_entry(
                2,
                7,
                Command::ExpireIdleHomes {
                    now_ms: 10_000,
                    idle_ms: 1,
                },
            ),
            command_entry(2, 8, assign("app/ch1")),
            command_entry(
                2,
                9,
                Command::DeclareRegionLost {
                    region: "eu".into(),
                    now_ms: 11_000,
                },
            ),
        ];
        sm.apply(more).await?;
        catalog_of(&sm)
    };

    let (_, sm) = open(db_path(&dir))?;
    let restored = catalog_of(&sm);
    assert_eq!(restored, expected);
    let home = restored.catalog().home("app/ch1").cloned();
    assert!(matches!(home, Some(Home { ref region, .. }) if region == "us"));
    Ok(())
}

#[tokio::test]
async fn a_batch_larger_than_the_change_log_is_persisted_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let channels = crate::state::DEFAULT_CHANGE_LOG_CAPACITY + 10;

    let expected = {
        let (_, mut sm) = open(db_path(&dir))?;
        sm.apply(history(channels)).await?;
        let state = catalog_of(&sm);
        assert_eq!(state.changes_since(0), ChangesSince::TooOld);
        state
    };

    let (_, sm) = open(db_path(&dir))?;
    assert_eq!(catalog_of(&sm), expected);
    assert_eq!(expected.catalog().homes().count(), channels);
    Ok(())
}

#[tokio::test]
async fn an_installed_snapshot_replaces_the_state_and_survives_a_restart() -> anyhow::Result<()> {
    let leader_dir = tempfile::tempdir()?;
    let follower_dir = tempfile::tempdir()?;
    let (_, mut leader) = open(db_path(&leader_dir))?;
    leader.apply(history(4)).await?;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await?;

    {
        let (_, mut follower) = open(db_path(&follower_dir))?;
        follower
            .apply(vec![command_entry(1, 1, register("ap"))])
            .await?;
        let mut incoming = follower.begin_receiving_snapshot().await?;
        *incoming = *snapshot.snapshot.clone();
        follower.install_snapshot(&snapshot.meta, incoming).await?;
        assert_eq!(catalog_of(&follower), catalog_of(&leader));
    }

    let (_, mut follower) = open(db_path(&follower_dir))?;
    assert_eq!(catalog_of(&follower), catalog_of(&leader));
    assert!(follower
        .reader()
        .read(|s| s.catalog().region("ap").is_none()));
    let current = follower.get_current_snapshot().await?.expect("a snapshot");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(follower.applied_state().await?.0, snapshot.meta.last_log_id);
    Ok(())
}

#[tokio::test]
async fn the_reader_sees_applied_commands_and_wakes_watchers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, mut sm) = open(db_path(&dir))?;
    let reader = sm.reader();
    let mut versions = reader.subscribe();

    let responses = sm
        .apply(vec![
            command_entry(1, 1, register("eu")),
            command_entry(1, 2, assign("app/chat")),
        ])
        .await?;

    assert!(versions.has_changed()?);
    assert_eq!(*versions.borrow_and_update(), 2);
    assert_eq!(responses[1].version, 2);
    assert!(matches!(
        &responses[1].outcome,
        Ok(Outcome::Home { assigned: true, .. })
    ));
    assert_eq!(reader.last_applied(), Some(log_id(1, 2)));
    let region = reader.read(|s| s.catalog().home("app/chat").map(|h| h.region.clone()));
    assert_eq!(region.as_deref(), Some("eu"));
    Ok(())
}

#[tokio::test]
async fn the_change_log_on_disk_keeps_only_the_retained_window() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, mut sm) = open(db_path(&dir))?;
    let capacity = crate::state::DEFAULT_CHANGE_LOG_CAPACITY;
    // Many small batches, so every write takes the incremental path and trims.
    let entries = history(capacity + 50);
    for chunk in entries.chunks(500) {
        sm.apply(chunk.to_vec()).await?;
    }
    drop(sm);

    let db = Database::open(db_path(&dir))?;
    let txn = db.begin_read()?;
    let changes = txn.open_table(SM_CHANGES)?;
    assert_eq!(changes.len()?, capacity as u64);
    let (first, _) = changes.first()?.expect("changes are kept");
    // Two registrations and `capacity + 50` assignments made versions 1..=total.
    let total = capacity as u64 + 52;
    assert_eq!(first.value(), total - capacity as u64 + 1);
    Ok(())
}
