//! A real global master group: `global-master` processes on loopback with mutual TLS,
//! short raft timers, elections, redirects, a leader killed mid-stream, restarts, and
//! strangers refused.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, Group, DEADLINE};
use parking_lot::Mutex;
use starling_global::api::{self, WatchItem};
use starling_global::network::endpoint;
use starling_global::state::{App, AppKey, Command, Namespace, Outcome};
use starling_proto::global::control_client::ControlClient;
use starling_proto::global::CommandBytes;
use starling_proto::tls::{client_tls, TlsFiles, SERVER_NAME};
use tokio::time::Instant;

fn register(region: &str) -> Command {
    Command::RegisterRegion {
        name: region.into(),
        bridges: vec![format!("{region}.example:7000")],
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

fn create_app(id: &str) -> Command {
    Command::CreateApp {
        app: App {
            id: id.into(),
            keys: vec![AppKey {
                name: format!("{id}.k1"),
                secret: "s3cret".into(),
                capability: r#"{"*":["*"]}"#.into(),
            }],
            namespaces: vec![Namespace {
                id: "chat".into(),
                persisted: false,
            }],
        },
    }
}

/// Every member's Status reports the same commit index, all of it applied, at least
/// `at_least`; returns it.
async fn commit_agreed(group: &Group, at_least: u64) -> u64 {
    let running = group.running();
    wait_for("members agreeing on the commit index", DEADLINE, || async {
        let mut seen = Vec::new();
        for &id in &running {
            let status = group.status(id).await?;
            seen.push((status.commit_index, status.applied_index));
        }
        let (commit, _) = seen[0];
        if commit >= at_least && seen.iter().all(|&(c, a)| c == commit && a == commit) {
            Ok(commit)
        } else {
            Err(format!("(commit, applied) per member: {seen:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_a_leader_and_followers_redirect_writes() {
    let mut group = Group::new(3, "");
    group.start_all().await;
    let leader = group.leader().await;
    let follower = group
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .unwrap();

    // Every member is ready once it knows the leader.
    let http = reqwest::Client::new();
    for id in group.running() {
        let url = group.http_get(id, "/health");
        let body: serde_json::Value = wait_for("a ready member", DEADLINE, || async {
            let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if response.status() != 200 {
                return Err(format!("status {}", response.status()));
            }
            response.json().await.map_err(|e| e.to_string())
        })
        .await;
        assert_eq!(body["leader_id"], leader);
        assert_eq!(body["status"], "ready");
        let live = http.get(group.http_get(id, "/health/live")).send().await;
        assert_eq!(live.unwrap().status(), 200);
    }

    // A follower answers a write with the leader's address and commits nothing.
    let tls = client_tls(&group.operator, SERVER_NAME).unwrap();
    let channel = endpoint(&group.addr(follower), tls)
        .unwrap()
        .connect()
        .await;
    let mut raw = ControlClient::new(channel.unwrap());
    let payload = api::encode("command", &register("eu")).unwrap();
    let reply = raw
        .write(CommandBytes { payload })
        .await
        .expect("a follower answers")
        .into_inner();
    assert!(reply.payload.is_empty(), "a follower committed a write");
    assert_eq!(reply.leader_hint, group.addr(leader));

    // A client that only knows the follower follows the hint and gets answers.
    let mut client =
        starling_global::client::Client::new(vec![group.addr(follower)], &group.operator).unwrap();
    let registered = client.write(&register("eu"), DEADLINE).await.unwrap();
    assert_eq!(registered.outcome, Ok(Outcome::Done));
    let created = client.write(&create_app("app1"), DEADLINE).await.unwrap();
    assert_eq!(created.outcome, Ok(Outcome::Done));
    let homed = client.write(&assign("app1/chat"), DEADLINE).await.unwrap();
    let Ok(Outcome::Home {
        home,
        assigned: true,
    }) = homed.outcome
    else {
        panic!("expected a new home, got {homed:?}");
    };
    assert_eq!(home.region, "eu");
    let again = client.write(&create_app("app1"), DEADLINE).await.unwrap();
    assert!(again.outcome.is_err(), "an app was created twice");

    // Every member committed and applied the same log.
    let leader_status = group.status(leader).await.unwrap();
    let commit = commit_agreed(&group, leader_status.commit_index).await;
    assert!(commit >= 4, "blank + membership + 3 commands, got {commit}");

    // The linearizable catalog holds it all; a follower's watch stream catches up to it.
    let catalog = group.catalog().await;
    assert_eq!(catalog.home("app1/chat"), Some(&home));
    assert!(catalog.app("app1").is_some());
    let mut stream = client.watch(&group.addr(follower), 0).await.unwrap();
    let first = stream.message().await.unwrap().expect("a first event");
    let WatchItem::Snapshot(mut copy) = WatchItem::decode(&first).unwrap() else {
        panic!("a watch from version 0 starts with a snapshot");
    };
    while copy.version() < catalog.version() {
        let event = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("the watch stream stalled")
            .unwrap()
            .expect("the stream ended");
        match WatchItem::decode(&event).unwrap() {
            WatchItem::Change(change) => assert!(copy.apply_change(&change).unwrap()),
            WatchItem::Snapshot(catalog) => copy = catalog,
        }
    }
    assert_eq!(copy, catalog);

    // The leader's gauges are on /metrics.
    let metrics = http
        .get(group.http_get(leader, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("starling_raft_role{role=\"leader\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("starling_raft_commit_index"), "{metrics}");
    assert!(metrics.contains("starling_raft_term"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_stream_loses_no_acknowledged_write() {
    // Snapshots every 20 entries with nothing kept behind them: the killed member comes
    // back behind the purge point and must be sent a snapshot.
    let mut group = Group::new(3, "snapshot_logs = 20\nsnapshot_keep_logs = 0\n");
    group.start_all().await;
    let leader = group.leader().await;
    let mut client = group.client();
    client.write(&register("eu"), DEADLINE).await.unwrap();

    // A writer that records every channel whose assignment was acknowledged.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let acked = acked.clone();
        let mut client = group.client();
        tokio::spawn(async move {
            let mut gaps = Vec::new();
            let mut last = Instant::now();
            for n in 0.. {
                if *stopped.borrow_and_update() {
                    break;
                }
                let channel = format!("app/ch-{n}");
                match client.write(&assign(&channel), DEADLINE).await {
                    Ok(response) => {
                        assert!(response.outcome.is_ok(), "{response:?}");
                        acked.lock().push(channel);
                        gaps.push(last.elapsed());
                        last = Instant::now();
                    }
                    Err(error) => panic!("a write failed for good: {error}"),
                }
            }
            gaps.into_iter().max().unwrap_or_default()
        })
    };

    wait_for("writes before the kill", DEADLINE, || async {
        let n = acked.lock().len();
        if n >= 30 {
            Ok(())
        } else {
            Err(format!("{n} acknowledged"))
        }
    })
    .await;
    let killed = group.kill(leader);
    let killed_at = Instant::now();
    let before_kill = acked.lock().len();

    // A new leader among the survivors, within a few seconds.
    let new_leader = group.leader().await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );

    wait_for("writes after the failover", DEADLINE, || async {
        let n = acked.lock().len();
        if n >= before_kill + 30 {
            Ok(())
        } else {
            Err(format!("{n} acknowledged"))
        }
    })
    .await;
    stop.send(true).unwrap();
    let longest_gap = writer.await.expect("the writer panicked");
    let acked: BTreeSet<String> = acked.lock().iter().cloned().collect();
    eprintln!(
        "failover: new leader seen after {failover:?}; longest pause between acknowledged \
         writes {longest_gap:?}; {} writes acknowledged",
        acked.len()
    );

    // Every acknowledged write is on every survivor.
    let missing_on = |catalog: &starling_global::state::Catalog| -> Vec<String> {
        (acked.iter())
            .filter(|c| catalog.home(c).is_none())
            .cloned()
            .collect()
    };
    for id in group.running() {
        wait_for(
            "every acknowledged write on a survivor",
            DEADLINE,
            || async {
                let catalog = group.local_catalog(id).await?;
                let missing = missing_on(&catalog);
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("member {id} lacks {missing:?}"))
                }
            },
        )
        .await;
    }

    // The killed member comes back with the same command line and catches up.
    group.spawn(leader, killed.argv.clone()).await;
    let caught_up = wait_for("the restarted member to catch up", DEADLINE, || async {
        let catalog = group.local_catalog(leader).await?;
        let missing = missing_on(&catalog);
        if missing.is_empty() {
            Ok(catalog)
        } else {
            Err(format!("lacks {} writes", missing.len()))
        }
    })
    .await;
    let leader_status = group.status(new_leader).await.unwrap();
    commit_agreed(&group, leader_status.commit_index).await;
    assert_eq!(caught_up.region("eu").map(|r| r.lost), Some(false));
    let restarted = group.status(leader).await.unwrap();
    assert_eq!(restarted.role, "follower");
    assert_eq!(restarted.leader_id, new_leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_restarted_whole_keeps_its_state() {
    let mut group = Group::new(3, "snapshot_logs = 10\n");
    group.start_all().await;
    group.leader().await;
    let mut client = group.client();
    client.write(&register("eu"), DEADLINE).await.unwrap();
    client.write(&register("us"), DEADLINE).await.unwrap();
    client.write(&create_app("app1"), DEADLINE).await.unwrap();
    let mut homes = Vec::new();
    for n in 0..15 {
        let response = client
            .write(&assign(&format!("app1/ch-{n}")), DEADLINE)
            .await
            .unwrap();
        let Ok(Outcome::Home { home, .. }) = response.outcome else {
            panic!("{response:?}");
        };
        homes.push(home);
    }
    let before = group.catalog().await;
    let commit = commit_agreed(&group, 0).await;

    // SIGTERM stops every member cleanly.
    for id in group.running() {
        let status = group.proc(id).terminate(DEADLINE).await;
        assert!(status.success(), "member {id} exited with {status}");
        group.procs[id as usize - 1] = None;
    }

    group.start_all().await;
    group.leader().await;
    let after = group.catalog().await;
    assert_eq!(after, before, "the catalog changed across the restart");
    commit_agreed(&group, commit).await;

    // Homes keep their epochs, and the group takes new writes.
    let again = client.write(&assign("app1/ch-3"), DEADLINE).await.unwrap();
    let Ok(Outcome::Home {
        home,
        assigned: false,
    }) = again.outcome
    else {
        panic!("expected the existing home, got {again:?}");
    };
    assert_eq!(home.epoch, homes[3].epoch);
    client.write(&create_app("app2"), DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certified_by_another_ca_is_refused() {
    // A group of one, its raft port chosen by the system and read off the describe file.
    let mut group = Group::new(1, "");
    let config = std::fs::read_to_string(&group.spec(1).config).unwrap();
    let config = config.replace(&group.spec(1).raft.to_string(), "127.0.0.1:0");
    let config = config.replace(
        &format!(
            "members = [\n  {{ id = 1, raft_addr = \"127.0.0.1:0\", http_addr = \"{}\" }},\n]",
            group.spec(1).http
        ),
        "members = []",
    );
    assert!(config.contains("members = []"), "{config}");
    std::fs::write(&group.spec(1).config, config).unwrap();
    group.start(1).await;
    let described: common::Describe =
        serde_json::from_slice(&std::fs::read(&group.spec(1).describe).unwrap()).unwrap();
    let addr = described.global_masters[0].raft.clone();
    assert_ne!(addr, "127.0.0.1:0");

    // The operator's certificate gets through, and the lone member leads.
    let status = wait_for("the lone member to lead", DEADLINE, || async {
        let mut client =
            starling_global::client::Client::new(vec![addr.clone()], &group.operator).unwrap();
        let status = client.status(&addr).await.map_err(|e| e.to_string())?;
        if status.leader_id == 1 {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    assert_eq!(status.role, "leader");
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].raft_addr, addr);

    // A certificate from another CA (one that trusts the real CA, so it would accept
    // the server) is refused, for Status and for raft RPCs alike.
    let other = tempfile::tempdir().unwrap();
    let forged = common::certificates(other.path(), &["intruder"])
        .pop()
        .unwrap();
    let intruder = TlsFiles {
        ca_cert: group.operator.ca_cert.clone(),
        ..forged
    };
    let mut client = starling_global::client::Client::new(vec![addr.clone()], &intruder)
        .unwrap()
        .with_attempt_timeout(Duration::from_secs(5));
    let refused = client.status(&addr).await;
    assert!(
        refused.is_err(),
        "a foreign certificate was accepted: {refused:?}"
    );

    let tls = client_tls(&intruder, SERVER_NAME).unwrap();
    let vote = async {
        let channel = endpoint(&addr, tls).unwrap().connect().await?;
        let payload = vec![0x80];
        starling_proto::global::raft_client::RaftClient::new(channel)
            .vote(starling_proto::global::RaftBytes { payload })
            .await
            .map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    assert!(vote.await.is_err(), "a foreign certificate reached raft");

    // The refusals cost the member nothing.
    let mut client =
        starling_global::client::Client::new(vec![addr.clone()], &group.operator).unwrap();
    client.status(&addr).await.unwrap();
    let written = client.write(&register("eu"), DEADLINE).await.unwrap();
    assert_eq!(written.outcome, Ok(Outcome::Done));
}
