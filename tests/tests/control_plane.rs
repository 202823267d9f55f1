//! Region nodes keeping their apps in an external global master group: an app created
//! through a node of one region works on a node of another within seconds, survives
//! the loss of a member, and its deletion reaches every node.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use starling_tests::client::{encode_component, is_action};
use starling_tests::global::GlobalGroup;
use starling_tests::rest::{self, bearer};
use starling_tests::{action, Client, Format, Node, NodeOptions, WAIT};

/// How long an app change may take to reach another region's node.
const PROPAGATION: Duration = Duration::from_secs(5);

async fn region_node(group: &GlobalGroup, region: &str) -> Result<Node> {
    let config = format!(
        "[node]\nid = \"{region}-1\"\nregion = \"{region}\"\n\n{}",
        group.node_config(region)?
    );
    Node::start_with(NodeOptions::default().config(config)).await
}

/// Creates an app through `node`'s admin API and returns its id and first key.
async fn create_app(node: &Node) -> Result<(String, String)> {
    let response = rest::http()
        .post(node.url("/apps"))
        .header(AUTHORIZATION, bearer(node.admin_token()))
        .json(&json!({"keys": [{}]}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status == StatusCode::CREATED, "POST /apps: {status} {body}");
    let id = body["appId"].as_str().context("appId")?.to_owned();
    let key = body["keys"][0]["keyStr"]
        .as_str()
        .context("keyStr")?
        .to_owned();
    Ok((id, key))
}

async fn delete_app(node: &Node, app_id: &str) -> Result<()> {
    let response = rest::http()
        .delete(node.url(&format!("/apps/{app_id}")))
        .header(AUTHORIZATION, bearer(node.admin_token()))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "DELETE: {}",
        response.status()
    );
    Ok(())
}

/// Connects with `key` until the node accepts it, within [`PROPAGATION`].
async fn connect_when_known(node: &Node, key: &str) -> Result<Client> {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        match Client::connect_with_key(node.addr(), key, "", Format::Json).await {
            Ok(client) => return Ok(client),
            Err(error) if Instant::now() >= deadline => {
                bail!("key still refused after {PROPAGATION:?}: {error:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether a fresh connection with `key` is refused with 40101.
async fn refused(node: &Node, key: &str) -> Result<bool> {
    let query = format!("key={}", encode_component(key));
    let mut client = Client::open(node.addr(), &query, Format::Msgpack).await?;
    let frame = client.recv().await?;
    Ok(is_action(&frame, action::ERROR) && frame["error"]["code"] == 40101)
}

/// Waits until every region in `names` is registered, not lost, with a heartbeat
/// later than `after_ms`; returns the oldest of those heartbeats.
async fn regions_alive(group: &GlobalGroup, names: &[&str], after_ms: u64) -> Result<u64> {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let catalog = group.catalog().await?;
        let beats: Option<Vec<u64>> = names
            .iter()
            .map(|name| {
                catalog
                    .region(name)
                    .filter(|r| !r.lost)
                    .map(|r| r.last_heartbeat_ms)
            })
            .collect();
        match beats {
            Some(beats) if beats.iter().all(|b| *b > after_ms) => {
                return Ok(beats.into_iter().min().unwrap_or_default())
            }
            _ if Instant::now() >= deadline => {
                bail!("regions {names:?} not alive after {after_ms}: {catalog:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn apps_are_shared_across_regions_and_survive_a_member_loss() -> Result<()> {
    let mut group = GlobalGroup::start(3).await?;
    let eu = region_node(&group, "eu").await?;
    let us = region_node(&group, "us").await?;
    ensure!(
        eu.key() == us.key(),
        "nodes sharing a global master share the default app: {} vs {}",
        eu.key(),
        us.key()
    );

    // Both regions registered themselves and keep reporting alive.
    let first = regions_alive(&group, &["eu", "us"], 0).await?;
    regions_alive(&group, &["eu", "us"], first).await?;

    let (app_id, key) = create_app(&eu).await?;
    let mut on_us = connect_when_known(&us, &key).await?;
    on_us
        .publish_acked("shared", json!([{"name": "hello"}]))
        .await?;

    // One member of three gone: the group still commits, and nodes follow another.
    group.kill(1);
    let (_, second_key) = create_app(&us).await?;
    connect_when_known(&eu, &second_key).await?;

    // Deleted through eu: us fails the live connection and refuses new ones.
    delete_app(&eu, &app_id).await?;
    let frame = on_us
        .recv_until(|f| is_action(f, action::ERROR), PROPAGATION)
        .await
        .context("the live connection on us must be failed")?;
    ensure!(frame["error"]["code"] == 40101, "{frame}");
    ensure!(
        refused(&us, &key).await?,
        "the deleted key must be refused on us"
    );
    ensure!(
        refused(&eu, &key).await?,
        "the deleted key must be refused on eu"
    );
    Ok(())
}

#[tokio::test]
async fn admin_writes_fail_retriably_without_a_quorum_while_known_apps_keep_working() -> Result<()>
{
    let mut group = GlobalGroup::start(3).await?;
    let config = format!(
        "[node]\nid = \"eu-1\"\nregion = \"eu\"\n\n{}",
        group.node_config("eu")?
    );
    // A short lease, so the test sees it lapse.
    let options = NodeOptions::default()
        .config(config)
        .env("STARLING_GLOBAL__LEASE_MS", "4000");
    let node = Node::start_with(options).await?;
    let mut client = Client::connect(&node, "", Format::Msgpack).await?;
    client
        .publish_acked("still", json!([{"name": "homed"}]))
        .await?;
    group.kill(1);
    group.kill(2);

    // Within the lease, channels whose home the node knows keep working.
    client
        .publish_acked("still", json!([{"name": "up"}]))
        .await?;

    let response = rest::http()
        .post(node.url("/apps"))
        .header(AUTHORIZATION, bearer(node.admin_token()))
        .json(&json!({"keys": [{}]}))
        .timeout(WAIT * 3)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(
        status == StatusCode::SERVICE_UNAVAILABLE && body["error"]["code"] == 50003,
        "without a quorum an app cannot be created: {status} {body}"
    );

    // A channel never used needs a home, which only a quorum can assign, and once the
    // lease lapses the region sequences nothing: either way the client is refused
    // retriably (a NACK, or DISCONNECTED so it goes elsewhere), never answered on a
    // guess.
    let msg_serial = client.publish("unhomed", json!([{"name": "x"}])).await?;
    let reply = client
        .recv_until(
            |f| {
                ((is_action(f, action::ACK) || is_action(f, action::NACK))
                    && f["msgSerial"] == msg_serial)
                    || is_action(f, action::DISCONNECTED)
            },
            Duration::from_secs(30),
        )
        .await?;
    ensure!(
        !is_action(&reply, action::ACK) && reply["error"]["code"] == 50003,
        "a publish needing a home without a quorum: {reply}"
    );

    // With the lease gone the node says so and is not ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = rest::http().get(node.url("/health")).send().await?;
        let status = health.status();
        let body: Value = health.json().await?;
        let lapsed = body["missing"].to_string().contains("lease");
        if status == StatusCode::SERVICE_UNAVAILABLE && lapsed {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the lease never lapsed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
