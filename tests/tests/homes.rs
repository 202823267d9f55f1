//! Channel homes: region nodes of two regions share a 3-member global master group,
//! which homes each channel in the region that used it first. Only the home region
//! sequences the channel; an operator's move hands it over under a higher epoch, and
//! the old home stops as soon as its catalog copy shows the move.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use starling_tests::client::is_action;
use starling_tests::global::GlobalGroup;
use starling_tests::rest;
use starling_tests::{action, Client, Format, Node, NodeOptions};

/// The code a publish gets when its channel is homed in a region it cannot reach.
const HOMED_ELSEWHERE: i64 = 50001;

/// How long a home change may take to reach the nodes of both regions.
const PROPAGATION: Duration = Duration::from_secs(10);

async fn region_node(group: &GlobalGroup, region: &str) -> Result<Node> {
    let config = format!(
        "[node]\nid = \"{region}-1\"\nregion = \"{region}\"\n\n{}",
        group.node_config(region)?
    );
    Node::start_with(NodeOptions::default().config(config)).await
}

fn refused_as_homed_elsewhere(reply: &Value) -> bool {
    is_action(reply, action::NACK) && reply["error"]["code"] == HOMED_ELSEWHERE
}

/// The serial an ACK gave its (single) message.
fn acked_serial(reply: &Value) -> Result<String> {
    ensure!(is_action(reply, action::ACK), "not acknowledged: {reply}");
    let serial = reply["res"][0]["serials"][0].as_str();
    Ok(serial.context("an ACK with a serial")?.to_owned())
}

/// Publishes until the region acknowledges (it may not have seen a home change yet).
async fn until_acked(client: &mut Client, channel: &str, name: &str) -> Result<String> {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let reply = client.publish_answered(channel, name).await?;
        if is_action(&reply, action::ACK) {
            return acked_serial(&reply);
        }
        if Instant::now() > deadline {
            bail!("{channel} never acknowledged here: {reply}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The home the group records for `channel` of `node`'s default app.
async fn home_of(group: &GlobalGroup, node: &Node, channel: &str) -> Result<Option<(String, u64)>> {
    let catalog = group.catalog().await?;
    let key = format!("{}/{channel}", node.app_id());
    Ok(catalog.home(&key).map(|h| (h.region.clone(), h.epoch)))
}

#[tokio::test]
async fn a_channel_is_sequenced_only_in_its_home_region_and_an_operator_move_hands_it_over(
) -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let eu = region_node(&group, "eu").await?;
    let us = region_node(&group, "us").await?;
    let mut on_eu = Client::connect(&eu, "", Format::Msgpack).await?;
    let mut on_us = Client::connect(&us, "", Format::Json).await?;

    eprintln!("phase: first use in eu homes the channel there");
    let first = on_eu.publish_answered("orders", "eu-1").await?;
    let eu_serial = acked_serial(&first)?;
    let (region, epoch) = home_of(&group, &eu, "orders").await?.context("a home")?;
    ensure!(region == "eu", "homed in {region}, not in eu");

    eprintln!("phase: us refuses to sequence it, retriably, and says where it lives");
    let refused = on_us.publish_answered("orders", "us-1").await?;
    ensure!(
        refused_as_homed_elsewhere(&refused),
        "us sequenced a channel homed in eu: {refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("eu"),
        "the error names the home: {message}"
    );

    eprintln!("phase: reading history in us assigns no home to an unused channel");
    let history: Value = rest::http()
        .get(us.url("/channels/never-used/messages"))
        .header(AUTHORIZATION, rest::basic(us.key()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        history == json!([]),
        "history of an unused channel: {history}"
    );
    ensure!(
        home_of(&group, &us, "never-used").await?.is_none(),
        "reading history assigned a home"
    );

    eprintln!("phase: the operator moves the home to us");
    let channel_key = format!("{}/orders", eu.app_id());
    group
        .operator(&["move-home", "--channel", &channel_key, "--to", "us"])
        .await?;
    let (region, moved_epoch) = home_of(&group, &eu, "orders").await?.context("a home")?;
    ensure!(
        region == "us" && moved_epoch > epoch,
        "after the move: {region} epoch {moved_epoch}"
    );

    // us refuses until its catalog copy shows the move, then takes the channel over.
    let us_serial = until_acked(&mut on_us, "orders", "us-2").await?;

    eprintln!("phase: us sequences above everything eu gave; eu refuses once it has seen it");
    ensure!(
        us_serial > eu_serial,
        "serial {us_serial} from the new home does not sort after {eu_serial}"
    );
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let reply = on_eu.publish_answered("orders", "eu-after").await?;
        if refused_as_homed_elsewhere(&reply) {
            break;
        }
        let serial = acked_serial(&reply)?;
        ensure!(
            Instant::now() < deadline,
            "eu still sequences long after the move (serial {serial})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn attaching_in_a_region_that_is_not_the_home_fails_the_channel_retriably() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let eu = region_node(&group, "eu").await?;
    let us = region_node(&group, "us").await?;
    let mut on_eu = Client::connect(&eu, "", Format::Json).await?;
    acked_serial(&on_eu.publish_answered("news", "first").await?)?;

    let mut on_us = Client::connect(&us, "", Format::Msgpack).await?;
    on_us
        .send(&json!({"action": action::ATTACH, "channel": "news"}))
        .await?;
    let reply = on_us
        .recv_until(
            |f| {
                f["channel"] == "news"
                    && (is_action(f, action::ATTACHED) || is_action(f, action::ERROR))
            },
            Duration::from_secs(20),
        )
        .await?;
    ensure!(
        is_action(&reply, action::ERROR) && reply["error"]["code"] == HOMED_ELSEWHERE,
        "attach in a region that is not the home: {reply}"
    );
    ensure!(
        reply["error"]["statusCode"] == 503,
        "the error is retriable: {reply}"
    );

    // The connection itself is fine: another channel works.
    let other = on_us.publish_answered("us-news", "local").await?;
    acked_serial(&other)?;
    Ok(())
}
