//! Presence as the wire sees it, for what ably-js checks on its own side before the
//! server could answer: no clientId (91000), no attachment (91001), a member limit
//! (91003), actions a client may not send, an absurd `remainPresentFor`, the SYNC that
//! follows ATTACHED with HAS_PRESENCE, and a client's SYNC request. The ably-js suites (`tests/js/test/presence.test.mjs`,
//! `cluster-presence.test.mjs`) cover the rest with the real client.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use starling_tests::client::is_action;
use starling_tests::{action, Client, Format, Node, NodeOptions, WAIT};

const HAS_PRESENCE: i64 = 1;

/// Sends one PRESENCE frame and returns its ACK or NACK.
async fn presence(client: &mut Client, channel: &str, events: Value) -> Result<Value> {
    let msg_serial = client.take_msg_serial();
    let pm = json!({
        "action": action::PRESENCE,
        "channel": channel,
        "msgSerial": msg_serial,
        "presence": events,
    });
    client.send(&pm).await?;
    client.ack_for(msg_serial).await
}

fn ensure_nack(frame: &Value, code: i64) -> Result<()> {
    ensure!(
        is_action(frame, action::NACK) && frame["error"]["code"] == code,
        "expected NACK {code}: {frame}"
    );
    Ok(())
}

#[tokio::test]
async fn presence_needs_a_client_id_and_a_known_action() -> Result<()> {
    let node = Node::start().await?;
    let mut anonymous = Client::connect(&node, "", Format::Json).await?;
    anonymous.attach("room").await?;
    let answer = presence(&mut anonymous, "room", json!([{"action": 2}])).await?;
    ensure_nack(&answer, 91000)?;

    let mut alice = Client::connect(&node, "clientId=alice", Format::Msgpack).await?;
    alice.attach("room").await?;
    let answer = presence(&mut alice, "room", json!([{"action": 1}])).await?;
    ensure_nack(&answer, 40013)?;
    let answer = presence(
        &mut alice,
        "room",
        json!([{"action": 2, "clientId": "mallory"}]),
    )
    .await?;
    ensure_nack(&answer, 40012)?;

    let answer = presence(&mut alice, "unattached", json!([{"action": 2}])).await?;
    ensure_nack(&answer, 91001)?;

    let answer = presence(&mut alice, "room", json!([{"action": 2, "data": "hi"}])).await?;
    ensure!(is_action(&answer, action::ACK), "{answer}");
    anonymous
        .publish_acked("room", json!([{"name": "after the refusal"}]))
        .await
        .context("the refused connection carries on")?;
    Ok(())
}

#[tokio::test]
async fn a_channel_holds_at_most_its_configured_members() -> Result<()> {
    let options = NodeOptions::default().env("STARLING_LIMITS__MAX_PRESENCE_MEMBERS", "2");
    let node = Node::start_with(options).await?;
    let mut clients = Vec::new();
    for id in ["a", "b", "c"] {
        let mut client = Client::connect(&node, &format!("clientId={id}"), Format::Json).await?;
        client.attach("full").await?;
        clients.push(client);
    }
    for client in &mut clients[..2] {
        let answer = presence(client, "full", json!([{"action": 2}])).await?;
        ensure!(is_action(&answer, action::ACK), "{answer}");
    }
    let answer = presence(&mut clients[2], "full", json!([{"action": 2}])).await?;
    ensure_nack(&answer, 91003)?;

    // An update of a member already present is not a new member.
    let answer = presence(&mut clients[0], "full", json!([{"action": 4, "data": "x"}])).await?;
    ensure!(is_action(&answer, action::ACK), "{answer}");

    let answer = presence(&mut clients[1], "full", json!([{"action": 3}])).await?;
    ensure!(is_action(&answer, action::ACK), "{answer}");
    let answer = presence(&mut clients[2], "full", json!([{"action": 2}])).await?;
    ensure!(
        is_action(&answer, action::ACK),
        "room again after a leave: {answer}"
    );
    Ok(())
}

#[tokio::test]
async fn attaching_lists_the_members_and_a_sync_request_lists_them_again() -> Result<()> {
    let node = Node::start().await?;
    let mut member = Client::connect(&node, "clientId=alice", Format::Json).await?;
    member.attach("listed").await?;
    let answer = presence(
        &mut member,
        "listed",
        json!([{"action": 2, "data": "here"}]),
    )
    .await?;
    ensure!(is_action(&answer, action::ACK), "{answer}");

    let mut reader = Client::connect(&node, "", Format::Msgpack).await?;
    let attached = reader.attach("listed").await?;
    ensure!(
        attached["flags"].as_i64().unwrap_or(0) & HAS_PRESENCE != 0,
        "ATTACHED says a SYNC follows: {attached}"
    );
    let sync = reader
        .recv_until(|f| is_action(f, action::SYNC), WAIT)
        .await?;
    check_sync(&sync)?;

    reader
        .send(&json!({"action": action::SYNC, "channel": "listed"}))
        .await?;
    let again = reader
        .recv_until(|f| is_action(f, action::SYNC), WAIT)
        .await?;
    check_sync(&again)
}

/// One complete page listing alice as PRESENT, with her connection and the id of
/// her ENTER (`connectionId:msgSerial:index`).
fn check_sync(sync: &Value) -> Result<()> {
    let serial = sync["channelSerial"].as_str().unwrap_or_default();
    ensure!(
        serial.ends_with(':'),
        "a one-page sync has an empty cursor: {sync}"
    );
    let members = sync["presence"].as_array().context("presence list")?;
    ensure!(members.len() == 1, "{sync}");
    let alice = &members[0];
    ensure!(
        alice["action"] == 1 && alice["clientId"] == "alice",
        "{sync}"
    );
    ensure!(alice["data"] == "here", "{sync}");
    let connection = alice["connectionId"].as_str().unwrap_or_default();
    let id = alice["id"].as_str().unwrap_or_default();
    ensure!(
        !connection.is_empty() && id.starts_with(&format!("{connection}:")),
        "{sync}"
    );
    Ok(())
}

#[tokio::test]
async fn an_absurd_remain_present_for_hurts_no_one() -> Result<()> {
    let node = Node::start().await?;
    let query = "clientId=forever&remainPresentFor=9223372036854775807";
    let mut member = Client::connect(&node, query, Format::Json).await?;
    member.attach("lasting").await?;
    let answer = presence(&mut member, "lasting", json!([{"action": 2}])).await?;
    ensure!(is_action(&answer, action::ACK), "{answer}");
    drop(member);

    // The grace is capped at the connection state TTL: the member stays for now, and
    // the node keeps serving through the ticks that handle its lost connection.
    let mut other = Client::connect(&node, "", Format::Msgpack).await?;
    for round in 0..12 {
        other
            .publish_acked("lasting", json!([{"name": format!("still {round}")}]))
            .await
            .with_context(|| format!("round {round}: the node still serves"))?;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let attached = other.attach("lasting").await?;
    ensure!(
        attached["flags"].as_i64().unwrap_or(0) & HAS_PRESENCE != 0,
        "{attached}"
    );
    let sync = other
        .recv_until(|f| is_action(f, action::SYNC), WAIT)
        .await?;
    ensure!(sync["presence"][0]["clientId"] == "forever", "{sync}");
    Ok(())
}

#[tokio::test]
async fn members_of_a_connection_failed_with_a_fatal_error_leave_at_once() -> Result<()> {
    let node = Node::start().await?;
    let mut watcher = Client::connect(&node, "", Format::Json).await?;
    watcher.attach("failing").await?;
    let mut member = Client::connect(&node, "clientId=doomed", Format::Json).await?;
    member.attach("failing").await?;
    let answer = presence(&mut member, "failing", json!([{"action": 2}])).await?;
    ensure!(is_action(&answer, action::ACK), "{answer}");

    // A malformed frame is fatal (ERROR 40000): this connection cannot resume.
    member
        .send_raw(tokio_tungstenite::tungstenite::Message::text("{not json"))
        .await?;
    let leave = watcher
        .recv_until(
            |f| is_action(f, action::PRESENCE) && f["presence"][0]["action"] == 3,
            std::time::Duration::from_secs(5),
        )
        .await
        .context("the LEAVE comes at once, not after the grace")?;
    ensure!(leave["presence"][0]["clientId"] == "doomed", "{leave}");
    Ok(())
}
