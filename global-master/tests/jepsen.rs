//! Jepsen-style faults on a real 3-member group: members frozen (SIGSTOP) and thawed,
//! one killed and restarted, while a client keeps assigning channel homes and creating
//! apps. Every write the group acknowledged must survive, every member must end with
//! the same catalog, and while no quorum exists requests must fail retriably rather
//! than be answered.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, Group, DEADLINE};
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use starling_global::api::{Consistency, Query, ReadRequest};
use starling_global::client::{Client, ClientError};
use starling_global::state::{App, AppKey, Catalog, Command, CommandError, Outcome};
use tokio::time::Instant;

/// What the writer had acknowledged: channels it homed, apps it created.
#[derive(Default)]
struct Acked {
    homes: BTreeSet<String>,
    apps: BTreeSet<String>,
    /// Acknowledgements per phase the write was sent in, to wait for progress.
    per_phase: [usize; 5],
    /// When each acknowledgement arrived.
    at: Vec<Instant>,
}

fn register(region: &str) -> Command {
    Command::RegisterRegion {
        name: region.into(),
        bridges: vec![],
        now_ms: 1_000,
    }
}

fn create_app(id: &str) -> Command {
    Command::CreateApp {
        app: App {
            id: id.into(),
            keys: vec![AppKey {
                name: format!("{id}.k"),
                secret: "s".into(),
                capability: r#"{"*":["*"]}"#.into(),
            }],
            namespaces: vec![],
        },
    }
}

/// A client that gives each request a couple of seconds: long enough to ride out an
/// election, short enough to move on while there is no quorum.
fn impatient(group: &Group) -> Client {
    group
        .client()
        .with_attempt_timeout(Duration::from_millis(700))
}

/// Keeps writing until `stop`: three home assignments, then an app, over and over,
/// named after the phase they were sent in. Records what was acknowledged; a write
/// that fails may or may not have been applied, so it is only counted when it was.
async fn writer(
    mut client: Client,
    phase: Arc<AtomicU64>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicU64>,
) {
    for n in 0.. {
        if stop.load(Ordering::Relaxed) == 1 {
            return;
        }
        let p = phase.load(Ordering::Relaxed);
        let (command, name, is_app) = if n % 4 == 3 {
            let id = format!("app-p{p}-{n}");
            (create_app(&id), id, true)
        } else {
            let channel = format!("app/p{p}-{n}");
            let command = Command::GetOrAssignHome {
                channel: channel.clone(),
                preferred_region: "eu".into(),
                now_ms: 2_000,
            };
            (command, channel, false)
        };
        let Ok(response) = client.write(&command, Duration::from_secs(2)).await else {
            continue;
        };
        let mut acked = acked.lock();
        match (is_app, response.outcome) {
            (false, Ok(Outcome::Home { .. })) => acked.homes.insert(name),
            // A resend of a create that was applied the first time.
            (true, Ok(Outcome::Done) | Err(CommandError::AppExists(_))) => acked.apps.insert(name),
            (_, other) => panic!("unexpected answer to {command:?}: {other:?}"),
        };
        acked.per_phase[p as usize] += 1;
        acked.at.push(Instant::now());
    }
}

async fn progress_in(acked: &Mutex<Acked>, phase: usize, at_least: usize) {
    wait_for(
        &format!("{at_least} writes acknowledged in phase {phase}"),
        DEADLINE,
        || async {
            let n = acked.lock().per_phase[phase];
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n} acknowledged"))
            }
        },
    )
    .await;
}

/// Without a quorum, a write sent to the one member still running and a linearizable
/// read sent to any member both fail, as retriable.
async fn no_quorum_fails_retriably(group: &Group, alone: u64) {
    let mut writer = Client::new(vec![group.addr(alone)], &group.operator)
        .unwrap()
        .with_attempt_timeout(Duration::from_millis(700));
    let mut reader = impatient(group);
    let again = Command::GetOrAssignHome {
        channel: "app/p0-0".into(),
        preferred_region: "us".into(),
        now_ms: 3_000,
    };
    let read = ReadRequest {
        query: Query::Catalog,
        consistency: Consistency::Linearizable,
    };
    let deadline = Duration::from_millis(1200);
    let (written, answered) =
        tokio::join!(writer.write(&again, deadline), reader.read(&read, deadline));
    assert!(
        matches!(written, Err(ClientError::GaveUp(_))),
        "a write was answered without a quorum: {written:?}"
    );
    assert!(
        matches!(answered, Err(ClientError::GaveUp(_))),
        "a linearizable read was answered without a quorum: {answered:?}"
    );
}

fn missing(catalog: &Catalog, acked: &Acked) -> Vec<String> {
    let homes = acked.homes.iter().filter(|c| catalog.home(c).is_none());
    let apps = acked.apps.iter().filter(|a| catalog.app(a).is_none());
    homes.chain(apps).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_pauses_and_restarts_and_no_quorum_never_answers() {
    // Snapshots every 30 entries, so the restarted member may need one.
    let mut group = Group::new(3, "snapshot_logs = 30\nsnapshot_keep_logs = 5\n");
    group.start_all().await;
    let started = Instant::now();
    let leader = group.leader().await;
    let mut client = group.client();
    client.write(&register("eu"), DEADLINE).await.unwrap();
    client.write(&register("us"), DEADLINE).await.unwrap();

    // `a` and `b` are frozen first (the leader among them), `c` is left alone.
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (a, b, c) = (leader, others[0], others[1]);

    let phase = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(writer(
        impatient(&group),
        phase.clone(),
        acked.clone(),
        stop.clone(),
    ));
    progress_in(&acked, 0, 12).await;

    eprintln!(
        "{:?} phase 1: SIGSTOP {a} and {b}; {c} alone has no quorum",
        started.elapsed()
    );
    phase.store(1, Ordering::Relaxed);
    group.proc(a).signal(Signal::SIGSTOP);
    group.proc(b).signal(Signal::SIGSTOP);
    // A reply already on its way when the leader froze may still arrive just after.
    let quorum_gone = Instant::now() + Duration::from_millis(500);
    no_quorum_fails_retriably(&group, c).await;

    eprintln!(
        "{:?} phase 2: SIGKILL {c} and restart it; still no quorum",
        started.elapsed()
    );
    phase.store(2, Ordering::Relaxed);
    let killed = group.kill(c);
    group.spawn(c, killed.argv.clone()).await;
    no_quorum_fails_retriably(&group, c).await;

    eprintln!(
        "{:?} phase 3: SIGCONT {a} and {b}, SIGSTOP {c}; {a} and {b} are a quorum",
        started.elapsed()
    );
    phase.store(3, Ordering::Relaxed);
    let quorum_back = Instant::now();
    group.proc(a).signal(Signal::SIGCONT);
    group.proc(b).signal(Signal::SIGCONT);
    group.proc(c).signal(Signal::SIGSTOP);
    group.leader_among(&[a, b]).await;
    progress_in(&acked, 3, 12).await;

    eprintln!(
        "{:?} phase 4: SIGCONT {c}; everyone catches up and agrees",
        started.elapsed()
    );
    phase.store(4, Ordering::Relaxed);
    group.proc(c).signal(Signal::SIGCONT);
    progress_in(&acked, 4, 8).await;
    stop.store(1, Ordering::Relaxed);
    writing.await.expect("the writer panicked");
    let acked = std::mem::take(&mut *acked.lock());
    let without_quorum = (acked.at.iter())
        .filter(|&&at| at > quorum_gone && at < quorum_back)
        .count();
    assert_eq!(without_quorum, 0, "writes acknowledged without a quorum");

    let agreed = wait_for(
        "every member holding the same catalog",
        DEADLINE,
        || async {
            let mut catalogs = Vec::new();
            for id in [a, b, c] {
                catalogs.push(group.local_catalog(id).await?);
            }
            if catalogs.iter().all(|catalog| *catalog == catalogs[0]) {
                Ok(catalogs.swap_remove(0))
            } else {
                let versions: Vec<u64> = catalogs.iter().map(Catalog::version).collect();
                Err(format!("versions per member: {versions:?}"))
            }
        },
    )
    .await;
    let lost = missing(&agreed, &acked);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(
        group.catalog().await,
        agreed,
        "the leader confirms another catalog"
    );
    eprintln!(
        "acknowledged {} homes and {} apps; catalog version {}",
        acked.homes.len(),
        acked.apps.len(),
        agreed.version()
    );
}
