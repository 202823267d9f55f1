//! Token authentication end to end against real nodes: TokenRequests signed with a
//! key, tokens on WebSocket (`access_token`) and REST (Bearer), expiry, in-band
//! renewal, and revocation through a shared global master reaching another region
//! (protocol.md §5.7, §7.3; issue 8 items 1–2).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::{json, Value};
use starling_tests::client::{encode_component, is_action};
use starling_tests::global::GlobalGroup;
use starling_tests::rest::{self, basic, bearer, msgpack_body, JSON, MSGPACK};
use starling_tests::token::{self, now_ms, signed_request, Ask};
use starling_tests::{action, Client, Format, Node, NodeOptions, WAIT};

/// How long a revocation may take to reach another region's node.
const PROPAGATION: Duration = Duration::from_secs(5);

starling_tests::both_formats! {
    a_token_connects_over_websocket_as_its_client_id_and_publishes,
    an_expired_token_is_disconnected_with_40142_and_refused_afterwards,
    in_band_auth_keeps_the_connection_and_fails_channels_the_new_token_forbids,
}

fn key_name(key: &str) -> &str {
    key.split_once(':').expect("key is name:secret").0
}

fn ask(ttl: Option<i64>, capability: Option<&str>, client_id: Option<&str>) -> Ask {
    Ask {
        ttl,
        capability: capability.map(str::to_owned),
        client_id: client_id.map(str::to_owned),
    }
}

fn token_of(details: &Value) -> Result<&str> {
    details["token"]
        .as_str()
        .with_context(|| format!("TokenDetails without token: {details}"))
}

/// Checks an Ably error body or ErrorInfo holder: code and status.
fn ensure_error(value: &Value, code: i64, status: i64) -> Result<()> {
    let error = &value["error"];
    ensure!(
        error["code"] == code && error["statusCode"] == status && error["message"].is_string(),
        "expected {code}/{status}: {value}"
    );
    Ok(())
}

/// Opens a socket with `token` and expects a connection-level ERROR with `code`.
async fn refused_with(node_addr: std::net::SocketAddr, token: &str, code: i64) -> Result<()> {
    let query = format!("access_token={}", encode_component(token));
    let mut client = Client::open(node_addr, &query, Format::Json).await?;
    let frame = client.recv().await.context("waiting for ERROR")?;
    ensure!(is_action(&frame, action::ERROR), "expected ERROR: {frame}");
    ensure!(
        frame.get("channel").is_none(),
        "ERROR must not name a channel: {frame}"
    );
    ensure_error(&frame, code, 401)?;
    client.expect_closed(WAIT).await
}

#[tokio::test]
async fn a_signed_token_request_yields_token_details_in_json_and_msgpack() -> Result<()> {
    let node = Node::start().await?;
    let base = node.url("");
    let name = key_name(node.key());

    let wanted = ask(
        Some(90_000),
        Some(r#"{"chat:*":["subscribe","publish"]}"#),
        Some("alice"),
    );
    let before = now_ms();
    let details = token::token(&base, node.key(), &wanted).await?;
    ensure!(details["keyName"] == name, "keyName: {details}");
    ensure!(details["clientId"] == "alice", "clientId: {details}");
    ensure!(
        details["capability"] == r#"{"chat:*":["subscribe","publish"]}"#,
        "capability is the request within the key's: {details}"
    );
    let issued = details["issued"].as_i64().context("issued")?;
    let expires = details["expires"].as_i64().context("expires")?;
    ensure!(
        issued >= before,
        "issued {issued} before the request at {before}"
    );
    ensure!(
        expires - issued == 90_000,
        "expires - issued must equal ttl: {details}"
    );
    token_of(&details)?;

    // The same exchange answered in MessagePack when the client accepts it.
    let request = signed_request(node.key(), &Ask::default(), now_ms(), &token::nonce());
    let response = rest::http()
        .post(node.url(&format!("/keys/{name}/requestToken")))
        .header(ACCEPT, MSGPACK)
        .json(&request)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "status {}",
        response.status()
    );
    let details = msgpack_body(&response.bytes().await?)?;
    let ttl = details["expires"].as_i64().unwrap_or(0) - details["issued"].as_i64().unwrap_or(0);
    ensure!(ttl == 3_600_000, "the default ttl is an hour: {details}");
    ensure!(
        details["capability"] == r#"{"*":["*"]}"#,
        "key's capability: {details}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unsigned_request_with_basic_auth_yields_a_token() -> Result<()> {
    let node = Node::start().await?;
    let name = key_name(node.key());
    let body = json!({"ttl": 30_000, "clientId": "bob", "capability": r#"{"x":["subscribe"]}"#});

    let (status, details) =
        token::post_request(&node.url(""), name, &body, Some(&basic(node.key()))).await?;
    ensure!(status == StatusCode::OK, "{status} {details}");
    ensure!(details["clientId"] == "bob" && details["capability"] == r#"{"x":["subscribe"]}"#);
    let ttl = details["expires"].as_i64().unwrap_or(0) - details["issued"].as_i64().unwrap_or(0);
    ensure!(ttl == 30_000, "{details}");

    // Without credentials an unsigned request is refused.
    let (status, error) = token::post_request(&node.url(""), name, &body, None).await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "{status} {error}");
    ensure_error(&error, 40101, 401)
}

#[tokio::test]
async fn bad_mac_stale_timestamp_and_replayed_nonce_are_refused() -> Result<()> {
    let node = Node::start().await?;
    let base = node.url("");
    let name = key_name(node.key());

    let wrong_key = format!("{name}:not-the-secret");
    let forged = signed_request(&wrong_key, &Ask::default(), now_ms(), &token::nonce());
    let (status, error) = token::post_request(&base, name, &forged, None).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "bad mac: {status} {error}"
    );
    ensure_error(&error, 40101, 401)?;

    let stale = signed_request(
        node.key(),
        &Ask::default(),
        now_ms() - 5 * 60_000,
        &token::nonce(),
    );
    let (status, error) = token::post_request(&base, name, &stale, None).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "stale: {status} {error}"
    );
    ensure_error(&error, 40104, 401)?;

    let once = signed_request(node.key(), &Ask::default(), now_ms(), &token::nonce());
    let (status, first) = token::post_request(&base, name, &once, None).await?;
    ensure!(status == StatusCode::OK, "first use: {status} {first}");
    let (status, error) = token::post_request(&base, name, &once, None).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "replay: {status} {error}"
    );
    ensure_error(&error, 40105, 401)?;

    let outside = ask(None, Some(r#"{"[meta]*":["subscribe"]}"#), None);
    let narrow_key_request = signed_request(node.key(), &outside, now_ms(), &token::nonce());
    let (status, error) = token::post_request(&base, name, &narrow_key_request, None).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "beyond the key: {status} {error}"
    );
    ensure_error(&error, 40160, 401)
}

async fn a_token_connects_over_websocket_as_its_client_id_and_publishes(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let details = token::token(&node.url(""), node.key(), &ask(None, None, Some("alice"))).await?;
    let token = token_of(&details)?;

    let mut client = Client::connect_with_token(node.addr(), token, "", format).await?;
    let connected = client.connected().clone();
    ensure!(
        connected["connectionDetails"]["clientId"] == "alice",
        "CONNECTED names the token's clientId: {connected}"
    );
    client.attach("room").await?;
    client
        .publish_acked("room", json!([{"name": "hi", "data": "x"}]))
        .await?;
    let received = client.collect_messages("room", 1).await?;
    ensure!(
        received[0]["clientId"] == "alice",
        "message clientId: {}",
        received[0]
    );

    // A clientId other than the token's is incompatible.
    let query = format!("access_token={}&clientId=mallory", encode_component(token));
    let mut other = Client::open(node.addr(), &query, format).await?;
    let frame = other.recv().await?;
    ensure!(is_action(&frame, action::ERROR), "{frame}");
    ensure_error(&frame, 40102, 401)
}

#[tokio::test]
async fn a_bearer_token_publishes_over_rest_within_its_capability() -> Result<()> {
    let node = Node::start().await?;
    let wanted = ask(
        None,
        Some(r#"{"news":["publish","history"]}"#),
        Some("carol"),
    );
    let details = token::token(&node.url(""), node.key(), &wanted).await?;
    // ably-js sends the token base64-encoded in the header.
    let header = bearer(&BASE64.encode(token_of(&details)?));

    let response = rest::http()
        .post(node.url("/channels/news/messages"))
        .header(AUTHORIZATION, &header)
        .header(ACCEPT, JSON)
        .json(&json!({"name": "n", "data": "d"}))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "publish: {}",
        response.status()
    );

    let history: Value = rest::http()
        .get(node.url("/channels/news/messages"))
        .header(AUTHORIZATION, basic(node.key()))
        .header(ACCEPT, JSON)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        history[0]["clientId"] == "carol",
        "stamped with the token's clientId: {history}"
    );

    let denied = rest::http()
        .post(node.url("/channels/sports/messages"))
        .header(AUTHORIZATION, &header)
        .header(ACCEPT, JSON)
        .json(&json!({"name": "n"}))
        .send()
        .await?;
    ensure!(denied.status() == StatusCode::UNAUTHORIZED);
    ensure_error(&denied.json().await?, 40160, 401)?;

    let garbage = rest::http()
        .get(node.url("/channels/news/messages"))
        .header(AUTHORIZATION, bearer("bm90IGEgdG9rZW4="))
        .send()
        .await?;
    ensure!(garbage.status() == StatusCode::UNAUTHORIZED);
    ensure_error(&garbage.json().await?, 40143, 401)
}

async fn an_expired_token_is_disconnected_with_40142_and_refused_afterwards(
    format: Format,
) -> Result<()> {
    const TTL_MS: i64 = 1_500;
    let node = Node::start().await?;
    let details = token::token(&node.url(""), node.key(), &ask(Some(TTL_MS), None, None)).await?;
    let token = token_of(&details)?;
    let expires = details["expires"].as_i64().context("expires")?;

    let mut client = Client::connect_with_token(node.addr(), token, "", format).await?;
    let deadline = Duration::from_millis(TTL_MS as u64) + WAIT;
    let frame = client
        .recv_until(
            |f| is_action(f, action::DISCONNECTED) || is_action(f, action::ERROR),
            deadline,
        )
        .await
        .context("waiting for the expiry")?;
    ensure!(
        is_action(&frame, action::DISCONNECTED),
        "expiry is DISCONNECTED, retriable: {frame}"
    );
    ensure_error(&frame, 40142, 401)?;
    ensure!(now_ms() >= expires, "disconnected before the token expired");
    client.expect_closed(WAIT).await?;

    refused_with(node.addr(), token, 40142).await
}

async fn in_band_auth_keeps_the_connection_and_fails_channels_the_new_token_forbids(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let base = node.url("");
    let wide = token::token(
        &base,
        node.key(),
        &ask(None, Some(r#"{"*":["*"]}"#), Some("alice")),
    )
    .await?;
    let narrow = ask(None, Some(r#"{"kept":["*"]}"#), Some("alice"));
    let narrow = token::token(&base, node.key(), &narrow).await?;

    let mut client = Client::connect_with_token(node.addr(), token_of(&wide)?, "", format).await?;
    let connection_id = client.connection_id().to_owned();
    client.attach("kept").await?;
    client.attach("dropped").await?;

    let auth = json!({"action": action::AUTH, "auth": {"accessToken": token_of(&narrow)?}});
    client.send(&auth).await?;
    let connected = client
        .recv_until(
            |f| {
                is_action(f, action::CONNECTED)
                    || (is_action(f, action::ERROR) && f.get("channel").is_none())
            },
            WAIT,
        )
        .await?;
    ensure!(
        is_action(&connected, action::CONNECTED),
        "AUTH answered with {connected}"
    );
    ensure!(
        connected["connectionId"] == connection_id.as_str(),
        "same connection: {connected}"
    );
    ensure!(
        connected["connectionDetails"]["clientId"] == "alice",
        "{connected}"
    );

    let failed = client
        .recv_until(
            |f| is_action(f, action::ERROR) && f["channel"] == "dropped",
            WAIT,
        )
        .await
        .context("the channel the new token forbids fails")?;
    ensure_error(&failed, 40160, 401)?;
    client
        .publish_acked("kept", json!([{"name": "still"}]))
        .await?;
    let refused = client.publish("dropped", json!([{"name": "no"}])).await?;
    let nack = client.ack_for(refused).await?;
    ensure!(
        is_action(&nack, action::NACK),
        "publish beyond the new token: {nack}"
    );

    // A token for another clientId cannot take over the connection.
    let bob = token::token(&base, node.key(), &ask(None, None, Some("bob"))).await?;
    client
        .send(&json!({"action": action::AUTH, "auth": {"accessToken": token_of(&bob)?}}))
        .await?;
    let error = client
        .recv_until(
            |f| is_action(f, action::ERROR) && f.get("channel").is_none(),
            WAIT,
        )
        .await?;
    ensure_error(&error, 40102, 401)?;
    client.expect_closed(WAIT).await
}

#[tokio::test]
async fn a_jwt_signed_with_the_key_is_accepted_as_a_token() -> Result<()> {
    let node = Node::start().await?;
    let (name, secret) = node.key().split_once(':').context("key")?;
    let good = jwt(name, secret, 60)?;
    let mut client = Client::connect_with_token(node.addr(), &good, "", Format::Msgpack).await?;
    ensure!(client.connected()["connectionDetails"]["clientId"] == "jwt-user");
    client.attach("j").await?;

    refused_with(node.addr(), &jwt(name, "wrong-secret", 60)?, 40144).await?;
    refused_with(node.addr(), &jwt(name, secret, -10)?, 40142).await
}

/// An Ably JWT made by hand (header, claims, HS256 mac), as an app server would.
fn jwt(kid: &str, secret: &str, lifetime_s: i64) -> Result<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use hmac::{Hmac, Mac};
    let now = now_ms() / 1000;
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let claims = json!({
        "iat": now,
        "exp": now + lifetime_s,
        "x-ably-capability": r#"{"*":["*"]}"#,
        "x-ably-clientId": "jwt-user",
    });
    let signed = format!(
        "{}.{}",
        B64URL.encode(serde_json::to_vec(&header)?),
        B64URL.encode(serde_json::to_vec(&claims)?)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(signed.as_bytes());
    Ok(format!(
        "{signed}.{}",
        B64URL.encode(mac.finalize().into_bytes())
    ))
}

async fn region_node(group: &GlobalGroup, region: &str) -> Result<Node> {
    let config = format!(
        "[node]\nid = \"{region}-1\"\nregion = \"{region}\"\n\n{}",
        group.node_config(region)?
    );
    Node::start_with(NodeOptions::default().config(config)).await
}

#[tokio::test]
async fn revocation_through_one_region_disconnects_and_refuses_the_token_in_another() -> Result<()>
{
    eprintln!("phase: a global master group and a node in each of eu and us");
    let group = GlobalGroup::start(1).await?;
    let eu = region_node(&group, "eu").await?;
    let us = region_node(&group, "us").await?;
    ensure!(eu.key() == us.key(), "both regions share the default app");
    let key = eu.key();

    eprintln!("phase: tokens from eu, live connections on us");
    let alice = token::token(&eu.url(""), key, &ask(None, None, Some("alice"))).await?;
    let bob = token::token(&eu.url(""), key, &ask(None, None, Some("bob"))).await?;
    let alice = token_of(&alice)?;
    let mut alice_on_us = Client::connect_with_token(us.addr(), alice, "", Format::Json).await?;
    let mut bob_on_us =
        Client::connect_with_token(us.addr(), token_of(&bob)?, "", Format::Json).await?;
    alice_on_us.attach("r").await?;

    eprintln!("phase: revoke alice's tokens through eu");
    let (status, results) = token::revoke(&eu.url(""), key, &["clientId:alice"]).await?;
    ensure!(status == StatusCode::OK, "revokeTokens: {status} {results}");
    ensure!(
        results["successCount"] == 1 && results["failureCount"] == 0,
        "{results}"
    );
    ensure!(
        results["results"][0]["target"] == "clientId:alice",
        "{results}"
    );

    eprintln!("phase: alice's live connection on us is disconnected with 40141");
    let frame = alice_on_us
        .recv_until(
            |f| is_action(f, action::DISCONNECTED) || is_action(f, action::ERROR),
            PROPAGATION,
        )
        .await
        .context("alice's connection on us was not told of the revocation")?;
    ensure!(is_action(&frame, action::DISCONNECTED), "{frame}");
    ensure_error(&frame, 40141, 401)?;

    eprintln!("phase: the revoked token is refused on us; bob is untouched");
    refused_with(us.addr(), alice, 40141).await?;
    bob_on_us.attach("r").await?;
    bob_on_us
        .publish_acked("r", json!([{"name": "still here"}]))
        .await?;

    eprintln!("phase: a token issued after the revocation works");
    let fresh = token::token(&us.url(""), key, &ask(None, None, Some("alice"))).await?;
    Client::connect_with_token(us.addr(), token_of(&fresh)?, "", Format::Json).await?;
    Ok(())
}

#[tokio::test]
async fn revoke_tokens_needs_basic_auth_of_that_key_and_clientid_targets() -> Result<()> {
    let node = Node::start().await?;
    let key = node.key();
    let (status, results) = token::revoke(&node.url(""), key, &["channel:x", "clientId:a"]).await?;
    ensure!(status == StatusCode::OK, "{status} {results}");
    ensure!(
        results["successCount"] == 1 && results["failureCount"] == 1,
        "{results}"
    );
    ensure_error(&results["results"][0], 40003, 400)?;

    let details = token::token(&node.url(""), key, &Ask::default()).await?;
    let response = rest::http()
        .post(node.url(&format!("/keys/{}/revokeTokens", key_name(key))))
        .header(AUTHORIZATION, bearer(&BASE64.encode(token_of(&details)?)))
        .json(&json!({"targets": ["clientId:a"]}))
        .send()
        .await?;
    if response.status() != StatusCode::FORBIDDEN {
        bail!("token auth may not revoke: {}", response.status());
    }
    Ok(())
}
