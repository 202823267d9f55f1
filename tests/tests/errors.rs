//! Bad input over WebSocket gets the documented Ably error code, to that client alone;
//! the node stays up and a subscriber connected all along keeps receiving (design.md,
//! promise 5; protocol.md §1.5, §6). Each test runs once per wire format.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use starling_tests::client::{encode_component, is_action};
use starling_tests::{action, Client, Format, Node, Witness, WAIT};
use tokio_tungstenite::tungstenite::Message as WsMessage;

starling_tests::both_formats! {
    unknown_key_gets_error_40101_inside_an_accepted_socket_then_close,
    missing_credentials_get_error_40101_then_close,
    bad_channel_name_on_attach_gets_channel_error_40010_and_connection_stays_usable,
    oversized_message_is_nacked_with_40009_and_others_keep_receiving,
    malformed_frame_gets_error_40000_then_close_and_others_keep_receiving,
    garbage_resume_key_gets_a_new_connection_with_error_80018,
}

/// Checks an ErrorInfo: the exact code and status, and the mandatory string message
/// without which ably-js drops the whole frame.
fn assert_error_info(frame: &Value, code: i64, status: i64) -> Result<()> {
    let error = &frame["error"];
    ensure!(error["code"] == code, "expected code {code}: {frame}");
    ensure!(
        error["statusCode"] == status,
        "expected status {status}: {frame}"
    );
    ensure!(
        error["message"].is_string(),
        "error without message: {frame}"
    );
    Ok(())
}

/// Reads the connection-level ERROR a refused socket gets, then its close.
async fn expect_fatal_error(client: &mut Client, code: i64, status: i64) -> Result<()> {
    let frame = client
        .recv_until(|f| !is_action(f, action::HEARTBEAT), WAIT)
        .await
        .context("waiting for ERROR")?;
    ensure!(is_action(&frame, action::ERROR), "expected ERROR: {frame}");
    ensure!(
        frame.get("channel").is_none(),
        "a connection-level ERROR must have no channel: {frame}"
    );
    assert_error_info(&frame, code, status)?;
    client.expect_closed(WAIT).await
}

async fn unknown_key_gets_error_40101_inside_an_accepted_socket_then_close(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let mut witness = Witness::new(&node).await?;

    let (name, _) = node.key().split_once(':').context("key has a secret")?;
    let wrong_secret = format!("{name}:not-the-secret");
    for key in ["nosuchapp.nosuchkey:secret", wrong_secret.as_str()] {
        let query = format!("key={}", encode_component(key));
        // `open` fails unless the upgrade itself succeeded (101).
        let mut client = Client::open(node.addr(), &query, format)
            .await
            .context("the upgrade must be accepted; refusal happens inside the socket")?;
        expect_fatal_error(&mut client, 40101, 401)
            .await
            .with_context(|| format!("key {key}"))?;
    }
    witness.assert_still_receiving(&node).await
}

async fn missing_credentials_get_error_40101_then_close(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut witness = Witness::new(&node).await?;

    let mut client = Client::open(node.addr(), "", format).await?;
    expect_fatal_error(&mut client, 40101, 401).await?;
    witness.assert_still_receiving(&node).await
}

async fn bad_channel_name_on_attach_gets_channel_error_40010_and_connection_stays_usable(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let mut witness = Witness::new(&node).await?;
    let mut client = Client::connect(&node, "", format).await?;

    let reply = client.attach_with(":bad", json!({})).await?;
    ensure!(is_action(&reply, action::ERROR), "{reply}");
    ensure!(
        reply["channel"] == ":bad",
        "the ERROR must name the channel: {reply}"
    );
    assert_error_info(&reply, 40010, 400)?;

    client
        .attach("good")
        .await
        .context("attach after the error")?;
    client
        .publish_acked("good", json!([{"name": "after"}]))
        .await
        .context("publish after the error")?;
    witness.assert_still_receiving(&node).await
}

async fn oversized_message_is_nacked_with_40009_and_others_keep_receiving(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let mut witness = Witness::new(&node).await?;
    let mut client = Client::connect(&node, "", format).await?;
    client.attach("big").await?;

    let big = "x".repeat(65_537 + 4_000);
    let msg_serial = client.publish("big", json!([{"data": big}])).await?;
    let reply = client.ack_for(msg_serial).await?;
    ensure!(is_action(&reply, action::NACK), "expected NACK: {reply}");
    ensure!(reply["msgSerial"] == msg_serial, "{reply}");
    assert_error_info(&reply, 40009, 413)?;

    client
        .publish_acked("big", json!([{"data": "small"}]))
        .await
        .context("a small publish after the NACK")?;
    witness.assert_still_receiving(&node).await
}

async fn malformed_frame_gets_error_40000_then_close_and_others_keep_receiving(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let mut witness = Witness::new(&node).await?;
    let mut bystander = Client::connect(&node, "", format).await?;
    bystander.attach("shared").await?;
    let mut client = Client::connect(&node, "", format).await?;
    client.attach("shared").await?;

    let garbage = match format {
        Format::Json => WsMessage::text("{not json"),
        // 0xc1 is the one byte msgpack never uses.
        Format::Msgpack => WsMessage::binary(vec![0xc1, 0x00, 0xff]),
    };
    client.send_raw(garbage).await?;
    expect_fatal_error(&mut client, 40000, 400).await?;

    let mut publisher = Client::connect(&node, "", format.other()).await?;
    publisher
        .publish_acked("shared", json!([{"name": "after-garbage"}]))
        .await?;
    let frame = bystander.next_message("shared").await?;
    ensure!(frame["messages"][0]["name"] == "after-garbage", "{frame}");
    witness.assert_still_receiving(&node).await
}

async fn garbage_resume_key_gets_a_new_connection_with_error_80018(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut witness = Witness::new(&node).await?;

    let mut client = Client::connect(&node, "resume=garbage", format).await?;
    let connected = client.connected().clone();
    let id = connected["connectionId"].as_str().unwrap_or_default();
    ensure!(
        !id.is_empty(),
        "CONNECTED without connectionId: {connected}"
    );
    assert_error_info(&connected, 80018, 400)?;

    // The new connection is fully usable.
    client.attach("after-resume").await?;
    client
        .publish_acked("after-resume", json!([{"name": "x"}]))
        .await?;
    witness.assert_still_receiving(&node).await
}
