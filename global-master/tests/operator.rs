//! The operator's side of a real global master group: the `global-master` subcommands
//! run as processes against members on loopback (moving homes, declaring regions lost,
//! showing state, changing raft membership), the health and metrics endpoints, and the
//! timers only the leader runs.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{wait_for, Group, DEADLINE};
use nix::sys::signal::Signal;
use starling_global::state::{App, AppKey, Catalog, Command, Home, Outcome};

const SECRET: &str = "never-print-this-secret";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn register(region: &str) -> Command {
    Command::RegisterRegion {
        name: region.into(),
        bridges: vec![format!("{region}.example:7000")],
        now_ms: now_ms(),
    }
}

fn assign(channel: &str, preferred: &str, now_ms: u64) -> Command {
    Command::GetOrAssignHome {
        channel: channel.into(),
        preferred_region: preferred.into(),
        now_ms,
    }
}

fn create_app(id: &str) -> Command {
    Command::CreateApp {
        app: App {
            id: id.into(),
            keys: vec![AppKey {
                name: format!("{id}.k1"),
                secret: SECRET.into(),
                capability: r#"{"*":["*"]}"#.into(),
            }],
            namespaces: vec![],
        },
    }
}

/// Commits `command` and returns the home it answers.
async fn home_of(group: &Group, command: Command) -> Home {
    let response = group.client().write(&command, DEADLINE).await.unwrap();
    match response.outcome {
        Ok(Outcome::Home { home, .. }) => home,
        other => panic!("expected a home, got {other:?}"),
    }
}

async fn write_ok(group: &Group, command: Command) {
    let response = group.client().write(&command, DEADLINE).await.unwrap();
    assert!(response.outcome.is_ok(), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_move_homes_declare_regions_lost_and_hide_secrets() {
    let mut group = Group::new(3, "");
    group.start_all().await;
    let leader = group.leader().await;
    for region in ["eu", "us", "ap"] {
        write_ok(&group, register(region)).await;
    }
    write_ok(&group, create_app("app1")).await;
    let mut before = Vec::new();
    for n in 0..6 {
        let channel = format!("app1/c{n}");
        before.push(home_of(&group, assign(&channel, "eu", now_ms())).await);
    }
    assert!(before.iter().all(|home| home.region == "eu"));

    eprintln!("phase: move-home moves one channel under a higher epoch");
    let moved = group
        .operator(&["move-home", "--channel", "app1/c0", "--to", "us"])
        .await
        .json();
    assert_eq!(moved["region"], "us");
    assert_eq!(moved["changed"], true);
    assert!(
        moved["epoch"].as_u64().unwrap() > before[0].epoch,
        "{moved}"
    );
    assert_eq!(group.catalog().await.home("app1/c0").unwrap().region, "us");

    let refused = group
        .operator(&["move-home", "--channel", "app1/c1", "--to", "mars"])
        .await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("unknown region mars"),
        "{refused:?}"
    );

    eprintln!("phase: declare-lost re-homes the region's channels to survivors");
    let lost = group
        .operator(&["declare-lost", "--region", "eu"])
        .await
        .json();
    assert_eq!(lost["channels_rehomed"], 5, "{lost}");
    let catalog = group.catalog().await;
    assert!(catalog.region("eu").unwrap().lost);
    for (n, old) in before.iter().enumerate().skip(1) {
        let home = catalog.home(&format!("app1/c{n}")).unwrap();
        assert_ne!(home.region, "eu", "app1/c{n} stayed in the lost region");
        assert!(home.epoch > old.epoch, "app1/c{n}: {home:?} after {old:?}");
    }

    eprintln!("phase: placement rules from a file decide new homes");
    let rules = group.dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"[{"app_id": "*", "prefix": "pinned:", "region": "ap"}]"#,
    )
    .unwrap();
    group
        .operator(&["rules", "set", "--file", rules.to_str().unwrap()])
        .await
        .json();
    let pinned = home_of(&group, assign("app1/pinned:x", "us", now_ms())).await;
    assert_eq!(pinned.region, "ap");

    eprintln!("phase: state shows the catalog, and no key secret");
    let state = group.operator(&["state"]).await;
    assert!(!state.stdout.contains(SECRET), "{}", state.stdout);
    let state = state.json();
    let eu = &state["regions"].as_array().unwrap()[1];
    assert_eq!((&eu["name"], &eu["lost"]), (&"eu".into(), &true.into()));
    assert_eq!(state["homes"].as_array().unwrap().len(), 7);
    assert_eq!(state["homes"][0]["channel"], "app1/c0");
    assert_eq!(state["homes"][0]["epoch"], moved["epoch"]);
    assert_eq!(state["apps"][0]["keys"][0]["name"], "app1.k1");
    assert_eq!(state["rules"][0]["region"], "ap");

    eprintln!("phase: without a quorum, commands fail as retriable (exit 75)");
    let followers: Vec<u64> = (group.running().into_iter())
        .filter(|&id| id != leader)
        .collect();
    for &id in &followers {
        group.proc(id).signal(Signal::SIGSTOP);
    }
    let state = group.operator(&["state", "--timeout-ms", "1500"]).await;
    assert_eq!(state.code, Some(75), "{state:?}");
    assert!(state.stderr.contains("retriable"), "{state:?}");
    let args = ["move-home", "--channel", "app1/c2", "--to", "ap"];
    let move_home = group
        .operator(&[&args[..], &["--timeout-ms", "1500"]].concat())
        .await;
    assert_eq!(move_home.code, Some(75), "{move_home:?}");
    // One member's own state needs no quorum.
    let local = group
        .operator_at(&[group.addr(leader)], &["state", "--local"])
        .await
        .json();
    assert_eq!(local["homes"].as_array().unwrap().len(), 7);
    for &id in &followers {
        group.proc(id).signal(Signal::SIGCONT);
    }

    // The refused move never happened, or happened once: the group agrees either way.
    let after = group.catalog().await;
    let home = after.home("app1/c2").unwrap();
    assert!(home.region == "ap" || home == catalog.home("app1/c2").unwrap());
}

/// Waits until `url` answers `status`; returns the body.
async fn http_status(url: &str, status: u16) -> String {
    let http = reqwest::Client::new();
    wait_for(&format!("{url} to answer {status}"), DEADLINE, || async {
        let response = http.get(url).send().await.map_err(|e| e.to_string())?;
        let got = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if got == status {
            Ok(body)
        } else {
            Err(format!("{got}: {body}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_added_as_voter_then_removed_and_health_follows() {
    let mut group = Group::with_spares(3, 1, "");
    group.start_all().await;
    let leader = group.leader().await;
    write_ok(&group, register("eu")).await;

    eprintln!("phase: a started but unadded member is live and not ready");
    group.start(4).await;
    let not_ready = http_status(&group.http_get(4, "/health"), 503).await;
    assert!(not_ready.contains("missing"), "{not_ready}");
    http_status(&group.http_get(4, "/health/live"), 200).await;
    // Its configuration lists four voters: the layout is warned about.
    let log = std::fs::read_to_string(&group.spec(4).log).unwrap();
    assert!(log.contains("LAYOUT"), "{log}");

    eprintln!("phase: members add makes it a voter, and it becomes ready");
    let spare = group.spec(4);
    let (raft_addr, http_addr) = (spare.raft.to_string(), spare.http.to_string());
    let add = [
        "members",
        "add",
        "--id",
        "4",
        "--raft-addr",
        &raft_addr,
        "--http-addr",
        &http_addr,
    ];
    let added = group.operator(&add).await.json();
    assert_eq!(added["voters"].as_array().unwrap().len(), 4, "{added}");
    assert_eq!(added["voters"][3]["raft_addr"], raft_addr.as_str());
    http_status(&group.http_get(4, "/health"), 200).await;
    let status = group
        .operator_at(&[group.addr(leader)], &["status"])
        .await
        .json();
    let members = status["members"].as_array().unwrap();
    assert!(
        members.iter().any(|m| m["id"] == 4 && m["voter"] == true),
        "{status}"
    );

    // The newcomer holds the catalog and reports its raft gauges.
    let caught_up = group.local_catalog(4).await.unwrap();
    assert!(caught_up.region("eu").is_some());
    let metrics = wait_for("the newcomer's raft gauges", DEADLINE, || async {
        let url = group.http_get(4, "/metrics");
        let text = reqwest::get(url).await.map_err(|e| e.to_string())?;
        let text = text.text().await.map_err(|e| e.to_string())?;
        if text.contains("starling_raft_role{role=\"follower\"} 1") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    for gauge in [
        "starling_raft_term",
        "starling_raft_commit_index",
        "starling_raft_applied_index",
    ] {
        assert!(metrics.contains(gauge), "{gauge} missing: {metrics}");
    }

    // Adding it again changes nothing.
    let again = group.operator(&add).await.json();
    assert_eq!(again["voters"], added["voters"]);

    eprintln!("phase: members remove takes it out; the group goes on");
    let removed = group
        .operator(&["members", "remove", "--id", "4"])
        .await
        .json();
    assert_eq!(removed["voters"].as_array().unwrap().len(), 3, "{removed}");
    group.kill(4);
    let status = group.status(leader).await.unwrap();
    assert!(status.members.iter().all(|m| m.id != 4), "{status:?}");
    write_ok(&group, register("us")).await;

    let unknown = group.operator(&["members", "remove", "--id", "9"]).await;
    assert_eq!(unknown.code, Some(1), "{unknown:?}");
    assert!(unknown.stderr.contains("not in the group"), "{unknown:?}");
}

fn has_home(catalog: &Catalog, channel: &str) -> bool {
    catalog.home(channel).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_expires_idle_homes_and_declares_silent_regions_lost() {
    let timers = "\n[homes]\nidle_expiry_ms = 1500\nexpiry_interval_ms = 200\n\n\
                  [regions]\nlost_after_ms = 1500\ncheck_interval_ms = 200\n";
    let mut group = Group::new(1, timers);
    group.start_all().await;
    group.leader().await;
    write_ok(&group, register("eu")).await;
    write_ok(&group, register("us")).await;

    // One home used now, others used an hour ahead: only the first can go idle.
    let later = now_ms() + 3_600_000;
    let idle = home_of(&group, assign("app/idle", "us", now_ms())).await;
    let busy = home_of(&group, assign("app/busy", "us", later)).await;
    let in_eu = home_of(&group, assign("app/in-eu", "eu", later)).await;
    assert_eq!(in_eu.region, "eu");

    // us keeps sending heartbeats; eu falls silent.
    let catalog = wait_for("the leader's timers to act", DEADLINE, || {
        let heartbeat = Command::RegionHeartbeat {
            name: "us".into(),
            now_ms: now_ms(),
        };
        let group = &group;
        async move {
            let mut client = group.client();
            client
                .write(&heartbeat, DEADLINE)
                .await
                .map_err(|e| e.to_string())?;
            let catalog = group.catalog().await;
            let eu_lost = catalog.region("eu").is_some_and(|r| r.lost);
            if !has_home(&catalog, "app/idle") && eu_lost {
                Ok(catalog)
            } else {
                Err(format!(
                    "eu lost: {eu_lost}; homes: {:?}",
                    catalog.homes().count()
                ))
            }
        }
    })
    .await;

    assert!(!catalog.region("us").unwrap().lost);
    assert_eq!(catalog.home("app/busy"), Some(&busy));
    let moved = catalog.home("app/in-eu").unwrap();
    assert_eq!(moved.region, "us");
    assert!(moved.epoch > in_eu.epoch);

    // The idle channel's next use homes it again, under a higher epoch.
    let again = home_of(&group, assign("app/idle", "us", now_ms())).await;
    assert!(again.epoch > idle.epoch, "{again:?} after {idle:?}");
}
