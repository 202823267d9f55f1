//! The admin API: `POST /apps` and `DELETE /apps/{id}` (design.md, "Interfaces other
//! parts depend on").

use anyhow::{ensure, Context, Result};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use starling_tests::client::{encode_component, is_action};
use starling_tests::rest::{self, bearer};
use starling_tests::{action, Client, Format, Node, NodeOptions, WAIT};

/// Creates an app with one default key, with or without the admin token, and returns
/// the response's status and body.
async fn create_app(node: &Node, token: Option<&str>) -> Result<(StatusCode, Value)> {
    let mut request = rest::http()
        .post(node.url("/apps"))
        .json(&json!({"keys": [{}]}));
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, bearer(token));
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Creates an app with the admin token and returns its id and first full key.
async fn created_app(node: &Node) -> Result<(String, String)> {
    let (status, body) = create_app(node, Some(node.admin_token())).await?;
    ensure!(status == StatusCode::CREATED, "POST /apps: {status} {body}");
    let id = body["appId"]
        .as_str()
        .with_context(|| format!("appId: {body}"))?;
    let key = body["keys"][0]["keyStr"]
        .as_str()
        .with_context(|| format!("keys[0].keyStr: {body}"))?;
    Ok((id.to_owned(), key.to_owned()))
}

#[tokio::test]
async fn created_app_key_works_at_once_on_websocket() -> Result<()> {
    let node = Node::start().await?;
    let (status, body) = create_app(&node, Some(node.admin_token())).await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");
    let key = &body["keys"][0];
    for field in ["keyName", "keySecret", "keyStr", "capability"] {
        ensure!(key[field].is_string(), "keys[0].{field} missing: {body}");
    }
    ensure!(body["appId"].is_string(), "{body}");
    let key_str = key["keyStr"].as_str().unwrap_or_default();

    for format in [Format::Json, Format::Msgpack] {
        let mut client = Client::connect_with_key(node.addr(), key_str, "", format).await?;
        client
            .publish_acked("new-app", json!([{"name": "hi"}]))
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn admin_without_token_is_allowed_from_loopback_in_the_default() -> Result<()> {
    let node = Node::start().await?;
    let (status, body) = create_app(&node, None).await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");
    Ok(())
}

#[tokio::test]
async fn admin_without_token_is_refused_when_a_config_file_is_given() -> Result<()> {
    let options = NodeOptions::default().config("[node]\nid = \"configured\"\n");
    let node = Node::start_with(options).await?;

    let (status, body) = create_app(&node, None).await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "{status} {body}");
    let code = body["error"]["code"].as_i64().unwrap_or_default();
    ensure!(
        (40100..40200).contains(&code),
        "expected a 401xx code: {body}"
    );
    let (status, body) = create_app(&node, Some("not-the-token")).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "wrong token: {status} {body}"
    );

    let (status, body) = create_app(&node, Some(node.admin_token())).await?;
    ensure!(
        status == StatusCode::CREATED,
        "with the token: {status} {body}"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_an_app_fails_its_connections_with_40101() -> Result<()> {
    let node = Node::start().await?;
    let (app_id, key) = created_app(&node).await?;
    let mut doomed = Client::connect_with_key(node.addr(), &key, "", Format::Json).await?;
    doomed.attach("room").await?;
    let mut survivor = Client::connect(&node, "", Format::Msgpack).await?;
    survivor.attach("room").await?;

    let response = rest::http()
        .delete(node.url(&format!("/apps/{app_id}")))
        .header(AUTHORIZATION, bearer(node.admin_token()))
        .send()
        .await?;
    let status = response.status();
    ensure!(
        status.is_success(),
        "DELETE: {status} {}",
        response.text().await?
    );

    let frame = doomed
        .recv_until(|f| is_action(f, action::ERROR), WAIT)
        .await?;
    ensure!(frame.get("channel").is_none(), "{frame}");
    ensure!(frame["error"]["code"] == 40101, "{frame}");
    doomed.expect_closed(WAIT).await?;

    let query = format!("key={}", encode_component(&key));
    let mut refused = Client::open(node.addr(), &query, Format::Json).await?;
    let frame = refused.recv().await?;
    ensure!(
        is_action(&frame, action::ERROR) && frame["error"]["code"] == 40101,
        "the deleted key must be refused: {frame}"
    );

    // The default app's connection is untouched.
    survivor
        .publish_acked("room", json!([{"name": "still"}]))
        .await?;
    Ok(())
}

#[tokio::test]
async fn created_app_survives_a_restart() -> Result<()> {
    let mut node = Node::start().await?;
    let (_, key) = created_app(&node).await?;

    node.restart().await?;
    let mut client = Client::connect_with_key(node.addr(), &key, "", Format::Json).await?;
    client
        .publish_acked("after-restart", json!([{"name": "x"}]))
        .await?;
    Ok(())
}
