//! The `[limits]` a client can run into: the publish rate (NACK 42911), a flood of
//! frames (DISCONNECTED 42910), channels per connection (channel ERROR 90010) and
//! connections per node (DISCONNECTED 80003/503 inside the accepted socket). Each is
//! answered to the offending client only: a witness connected all along keeps
//! receiving, and the node keeps running (protocol.md §6; design.md, promise 5).
//!
//! Every test starts its node with small limits through `STARLING_LIMITS__*`.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use starling_tests::client::is_action;
use starling_tests::rest::{self, basic};
use starling_tests::{action, Client, Format, Node, NodeOptions, Witness, WAIT};
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn node_with_limits(limits: &[(&str, &str)]) -> Result<Node> {
    let options = limits
        .iter()
        .fold(NodeOptions::default(), |options, (key, value)| {
            options.env(format!("STARLING_LIMITS__{}", key.to_uppercase()), *value)
        });
    Node::start_with(options).await
}

/// Checks an ErrorInfo's code and status, and the message ably-js requires.
fn ensure_error(frame: &Value, code: i64, status: i64) -> Result<()> {
    let error = &frame["error"];
    ensure!(
        error["code"] == code && error["statusCode"] == status && error["message"].is_string(),
        "expected {code}/{status}: {frame}"
    );
    Ok(())
}

/// Reads the ACK or NACK of each serial in `serials`, in order.
async fn replies_to(client: &mut Client, serials: &[i64]) -> Result<Vec<Value>> {
    let mut replies = Vec::with_capacity(serials.len());
    for serial in serials {
        replies.push(client.ack_for(*serial).await?);
    }
    Ok(replies)
}

#[tokio::test]
async fn publishes_over_the_rate_are_nacked_with_42911_and_the_connection_carries_on() -> Result<()>
{
    let node = node_with_limits(&[("max_inbound_rate", "5"), ("max_inbound_burst", "5")]).await?;
    let mut witness = Witness::new(&node).await?;
    let mut client = Client::connect(&node, "", Format::Json).await?;
    let details = &client.connected()["connectionDetails"];
    ensure!(
        details["maxInboundRate"] == 5,
        "CONNECTED announces the rate: {details}"
    );

    eprintln!("phase: twelve publishes at once against a burst of five");
    let mut serials = Vec::new();
    for i in 0..12 {
        serials.push(
            client
                .publish("rated", json!([{"name": format!("m{i}")}]))
                .await?,
        );
    }
    let replies = replies_to(&mut client, &serials).await?;
    let acked = replies.iter().filter(|r| is_action(r, action::ACK)).count();
    let nacked: Vec<_> = replies
        .iter()
        .filter(|r| is_action(r, action::NACK))
        .collect();
    ensure!(
        (5..12).contains(&acked),
        "the burst is granted, not much more: {acked} ACKs"
    );
    ensure!(
        replies[..5].iter().all(|r| is_action(r, action::ACK)),
        "the first five are within the burst: {replies:?}"
    );
    for nack in &nacked {
        ensure_error(nack, 42911, 429)?;
    }

    eprintln!("phase: after a pause the same connection publishes again");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    client
        .publish_acked("rated", json!([{"name": "after the pause"}]))
        .await
        .context("the connection is still usable")?;
    witness.assert_still_receiving(&node).await
}

/// Reads past the flooder's ACKs and NACKs to the DISCONNECTED that ends it.
async fn expect_sent_away_for_flooding(flooder: &mut Client) -> Result<()> {
    let frame = flooder
        .recv_until(
            |f| is_action(f, action::DISCONNECTED) || is_action(f, action::ERROR),
            WAIT,
        )
        .await
        .context("waiting for the flooder to be sent away")?;
    ensure!(
        is_action(&frame, action::DISCONNECTED),
        "retriable DISCONNECTED: {frame}"
    );
    ensure!(frame.get("channel").is_none(), "{frame}");
    ensure_error(&frame, 42910, 429)?;
    flooder.expect_closed(WAIT).await
}

#[tokio::test]
async fn a_connection_that_keeps_flooding_is_disconnected_with_42910() -> Result<()> {
    // Flood budget: 3 channels + a burst of 5 + 3 s at three times 5/s = 53 frames.
    let node = node_with_limits(&[
        ("max_inbound_rate", "5"),
        ("max_inbound_burst", "5"),
        ("max_channels_per_connection", "3"),
    ])
    .await?;
    let mut witness = Witness::new(&node).await?;

    eprintln!("phase: 300 publishes as fast as the socket takes them");
    let mut flooder = Client::connect(&node, "", Format::Msgpack).await?;
    for i in 0..300 {
        if flooder
            .publish("flood", json!([{"name": format!("f{i}")}]))
            .await
            .is_err()
        {
            break; // The node may close the socket before the loop ends.
        }
    }
    expect_sent_away_for_flooding(&mut flooder).await?;

    eprintln!("phase: 300 WebSocket pings, which the protocol layer never sees");
    let mut pinger = Client::connect(&node, "", Format::Json).await?;
    for _ in 0..300 {
        if pinger
            .send_raw(WsMessage::Ping(Vec::new().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    expect_sent_away_for_flooding(&mut pinger).await?;

    eprintln!("phase: a new connection of the same key is served normally");
    let mut again = Client::connect(&node, "", Format::Msgpack).await?;
    again
        .publish_acked("flood", json!([{"name": "calm"}]))
        .await?;
    witness.assert_still_receiving(&node).await
}

#[tokio::test]
async fn attach_beyond_the_channel_limit_gets_channel_error_90010_and_the_connection_stays_usable(
) -> Result<()> {
    let node = node_with_limits(&[("max_channels_per_connection", "3")]).await?;
    let mut witness = Witness::new(&node).await?;
    let mut client = Client::connect(&node, "", Format::Json).await?;
    for name in ["one", "two", "three"] {
        client.attach(name).await?;
    }

    let refused = client.attach_with("four", json!({})).await?;
    ensure!(is_action(&refused, action::ERROR), "{refused}");
    ensure!(refused["channel"] == "four", "a channel ERROR: {refused}");
    ensure_error(&refused, 90010, 400)?;

    eprintln!("phase: attaching a held channel again takes no new slot");
    client
        .attach("one")
        .await
        .context("re-attach within the limit")?;

    eprintln!("phase: a detach frees a slot");
    client
        .send(&json!({"action": action::DETACH, "channel": "three"}))
        .await?;
    client
        .recv_until(
            |f| is_action(f, action::DETACHED) && f["channel"] == "three",
            WAIT,
        )
        .await?;
    client
        .attach("four")
        .await
        .context("attach after a detach")?;
    client
        .publish_acked("four", json!([{"name": "fits"}]))
        .await?;
    client.next_message("four").await?;
    witness.assert_still_receiving(&node).await
}

/// Connects, retrying while the node still counts a socket that was just closed.
async fn connect_when_a_slot_is_free(node: &Node) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::connect(node, "", Format::Json).await {
            Ok(client) => return Ok(client),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(error.context("no slot was freed"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn a_websocket_beyond_the_node_limit_gets_disconnected_80003_503_and_rest_still_works(
) -> Result<()> {
    // The witness holds two of the three connections.
    let node = node_with_limits(&[("max_connections", "3")]).await?;
    let mut witness = Witness::new(&node).await?;
    let third = Client::connect(&node, "", Format::Json).await?;

    for format in [Format::Json, Format::Msgpack] {
        let mut refused = Client::open(node.addr(), "", format)
            .await
            .context("the upgrade is accepted; the refusal is inside the socket")?;
        let frame = refused.recv().await.context("waiting for DISCONNECTED")?;
        ensure!(
            is_action(&frame, action::DISCONNECTED),
            "retriable DISCONNECTED, before any credentials are read: {frame}"
        );
        ensure_error(&frame, 80003, 503)?;
        refused.expect_closed(WAIT).await?;
    }

    eprintln!("phase: REST is not counted");
    let response = rest::http()
        .post(node.url("/channels/rest-while-full/messages"))
        .header(AUTHORIZATION, basic(node.key()))
        .json(&json!({"name": "rest", "data": "fine"}))
        .send()
        .await?;
    if response.status() != StatusCode::CREATED {
        bail!("REST publish on a full node: {}", response.status());
    }

    eprintln!("phase: a closed connection frees its slot");
    drop(third);
    let mut fresh = connect_when_a_slot_is_free(&node).await?;
    fresh.attach("after").await?;
    witness.assert_still_receiving(&node).await
}

#[tokio::test]
async fn a_frame_over_the_frame_limit_gets_error_40009_then_close() -> Result<()> {
    let node =
        node_with_limits(&[("max_frame_size", "2048"), ("max_message_size", "1024")]).await?;
    let mut witness = Witness::new(&node).await?;
    let mut client = Client::connect(&node, "", Format::Json).await?;
    let details = &client.connected()["connectionDetails"];
    ensure!(details["maxFrameSize"] == 2048, "{details}");

    let big = json!({"action": action::MESSAGE, "channel": "big", "msgSerial": 0,
        "messages": [{"data": "x".repeat(4096)}]});
    client.send(&big).await?;
    let frame = client
        .recv_until(|f| is_action(f, action::ERROR), WAIT)
        .await
        .context("waiting for ERROR")?;
    ensure!(
        frame.get("channel").is_none(),
        "a connection ERROR: {frame}"
    );
    ensure_error(&frame, 40009, 413)?;
    client.expect_closed(WAIT).await?;
    witness.assert_still_receiving(&node).await
}
