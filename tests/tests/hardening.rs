//! Regressions found by a hostile review: app isolation, the admin API against web
//! pages, publishes of many empty messages, serials across restarts.

use anyhow::{ensure, Context, Result};
use reqwest::header::{AUTHORIZATION, ORIGIN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use starling_tests::client::is_action;
use starling_tests::rest::{self, basic, bearer};
use starling_tests::{action, Client, Format, Node, WAIT};

async fn create_app(node: &Node) -> Result<String> {
    let response = rest::http()
        .post(node.url("/apps"))
        .header(AUTHORIZATION, bearer(node.admin_token()))
        .json(&json!({"keys": [{}]}))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "POST /apps: {}",
        response.status()
    );
    let body: Value = response.json().await?;
    Ok(body["keys"][0]["keyStr"]
        .as_str()
        .context("keyStr")?
        .to_owned())
}

async fn publish_rest(node: &Node, key: &str, channel: &str, data: &str) -> Result<Value> {
    let response = rest::http()
        .post(node.url(&format!("/channels/{channel}/messages")))
        .header(AUTHORIZATION, basic(key))
        .json(&json!({"name": "m", "data": data}))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "publish: {}",
        response.status()
    );
    Ok(response.json().await?)
}

async fn history(node: &Node, key: &str, channel: &str) -> Result<Vec<Value>> {
    let response = rest::http()
        .get(node.url(&format!("/channels/{channel}/messages")))
        .header(AUTHORIZATION, basic(key))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "history: {}",
        response.status()
    );
    Ok(response.json().await?)
}

#[tokio::test]
async fn apps_never_see_each_others_channels() -> Result<()> {
    let node = Node::start().await?;
    let key_a = create_app(&node).await?;
    let key_b = create_app(&node).await?;

    // b subscribes to a channel a publishes on, under the same name.
    let mut subscriber_b = Client::connect_with_key(node.addr(), &key_b, "", Format::Json).await?;
    subscriber_b.attach("payroll").await?;
    publish_rest(&node, &key_a, "payroll", "secret of a").await?;
    publish_rest(&node, &key_b, "payroll", "b's own").await?;

    // b's first message on the channel is its own: a's never arrived before it.
    let first = subscriber_b.next_message("payroll").await?;
    ensure!(
        first["messages"][0]["data"] == "b's own",
        "b received {first}"
    );
    let seen_by_b = history(&node, &key_b, "payroll").await?;
    ensure!(
        seen_by_b.len() == 1 && seen_by_b[0]["data"] == "b's own",
        "b's history: {seen_by_b:?}"
    );
    let seen_by_a = history(&node, &key_a, "payroll").await?;
    ensure!(
        seen_by_a.len() == 1 && seen_by_a[0]["data"] == "secret of a",
        "a's history: {seen_by_a:?}"
    );
    Ok(())
}

#[tokio::test]
async fn web_pages_cannot_use_the_admin_api_even_from_loopback() -> Result<()> {
    let node = Node::start().await?;

    let from_page = rest::http()
        .post(node.url("/apps"))
        .header(ORIGIN, "http://evil.example")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await?;
    ensure!(
        from_page.status() == StatusCode::UNAUTHORIZED,
        "a page got {}",
        from_page.status()
    );
    ensure!(
        from_page
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "the admin API must not answer CORS"
    );

    let wrong_token = rest::http()
        .post(node.url("/apps"))
        .header(AUTHORIZATION, bearer("not-the-token"))
        .json(&json!({}))
        .send()
        .await?;
    ensure!(
        wrong_token.status() == StatusCode::UNAUTHORIZED,
        "wrong token got {}",
        wrong_token.status()
    );
    Ok(())
}

#[tokio::test]
async fn a_publish_of_too_many_empty_messages_is_refused_and_others_keep_receiving() -> Result<()> {
    for format in [Format::Json, Format::Msgpack] {
        let node = Node::start().await?;
        let mut subscriber = Client::connect(&node, "", Format::Msgpack).await?;
        subscriber.attach("flood").await?;
        let mut attacker = Client::connect(&node, "", format).await?;

        let empties: Vec<Value> = (0..5000).map(|_| json!({})).collect();
        let serial = attacker.publish("flood", Value::Array(empties)).await?;
        let reply = attacker
            .recv_until(
                |f| is_action(f, action::NACK) || is_action(f, action::ACK),
                WAIT,
            )
            .await?;
        ensure!(
            is_action(&reply, action::NACK),
            "expected a NACK, got {reply}"
        );
        ensure!(
            reply["msgSerial"] == serial && reply["error"]["code"] == 40009,
            "{reply}"
        );

        let mut publisher = Client::connect(&node, "", Format::Json).await?;
        publisher
            .publish_acked("flood", json!([{"name": "honest"}]))
            .await?;
        let received = subscriber.next_message("flood").await?;
        ensure!(
            received["messages"][0]["name"] == "honest",
            "subscriber got {received}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn serials_keep_growing_across_a_restart() -> Result<()> {
    let mut node = Node::start().await?;
    let before = publish_rest(&node, node.key(), "restart-chan", "one").await?;
    node.restart().await?;
    let after = publish_rest(&node, node.key(), "restart-chan", "two").await?;

    let serial = |v: &Value| {
        v["serials"][0]
            .as_str()
            .map(str::to_owned)
            .context("serial")
    };
    let (before, after) = (serial(&before)?, serial(&after)?);
    ensure!(
        after > before,
        "serial after restart {after} must sort after {before}"
    );
    Ok(())
}

#[tokio::test]
async fn params_in_a_channel_name_are_refused_rather_than_silently_split() -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", Format::Json).await?;
    client
        .send(&json!({"action": action::ATTACH, "channel": "[?rewind=1]foo"}))
        .await?;
    let reply = client
        .recv_until(|f| is_action(f, action::ERROR), WAIT)
        .await?;
    ensure!(
        reply["channel"] == "[?rewind=1]foo" && reply["error"]["code"] == 40010,
        "{reply}"
    );
    Ok(())
}

#[tokio::test]
async fn a_draining_node_sends_its_clients_away_with_disconnected() -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", Format::Msgpack).await?;
    client.attach("drain").await?;

    let pid = node.describe().regions[0].nodes[0].pid;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");

    // DISCONNECTED (not ERROR) is what makes ably-js reconnect, to another node.
    let frame = client
        .recv_until(
            |f| is_action(f, action::DISCONNECTED) || is_action(f, action::ERROR),
            WAIT,
        )
        .await?;
    ensure!(
        is_action(&frame, action::DISCONNECTED),
        "expected DISCONNECTED, got {frame}"
    );
    ensure!(frame["error"]["code"] == 50003, "{frame}");
    client.expect_closed(WAIT).await?;
    Ok(())
}

/// A hostile timestamp once overflowed the retention arithmetic and killed the node's
/// region task (found by review): every later publish failed.
#[tokio::test]
async fn extreme_message_timestamps_do_not_break_the_channel_or_the_node() -> Result<()> {
    let node = Node::start().await?;
    let mut watcher = Client::connect(&node, "", Format::Json).await?;
    watcher.attach("evil").await?;

    for timestamp in [i64::MIN, i64::MAX] {
        let response = rest::http()
            .post(node.url("/channels/evil/messages"))
            .header(AUTHORIZATION, basic(node.key()))
            .json(&json!({"name": "ts", "data": "x", "timestamp": timestamp}))
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::CREATED,
            "REST publish with timestamp {timestamp}: {}",
            response.status()
        );
    }
    let mut client = Client::connect(&node, "", Format::Msgpack).await?;
    let frame = json!([{"name": "ts", "data": "y", "timestamp": i64::MIN, "action": 2}]);
    client.publish_acked("evil", frame).await?;

    // The channel, and others, keep working; a client may not choose the action.
    publish_rest(&node, node.key(), "evil", "after").await?;
    publish_rest(&node, node.key(), "other", "fine").await?;
    let seen = watcher.collect_messages("evil", 4).await?;
    ensure!(seen[3]["data"] == "after", "the channel stopped: {seen:?}");
    ensure!(
        seen[2].get("action").is_none_or(|a| a != 2),
        "a client-chosen action went through: {}",
        seen[2]
    );
    ensure!(history(&node, node.key(), "evil").await?.len() == 4);
    node.assert_running()
}
