//! The REST router driven in-process, one request at a time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::ConnectInfo;
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LINK};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

use crate::apps::{NewApp, NewKey};
use crate::config::Config;
use crate::node::Node;
use crate::protocol::{Data, Message};
use crate::server::build_node;

const MSGPACK: &str = "application/x-msgpack";

struct Fixture {
    _dir: TempDir,
    node: Arc<Node>,
    app: Router,
    /// `Basic ...` for the default app's key, which may do anything.
    basic: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().expect("a text header"))
    }

    fn assert_error(&self, code: i64, status: u16) {
        assert_eq!(self.status.as_u16(), status, "{:?}", self.body);
        assert_eq!(self.header("content-type"), "application/json");
        assert_eq!(self.header("x-ably-errorcode"), code.to_string());
        assert!(!self.header("x-ably-errormessage").is_empty());
        let error = &self.json()["error"];
        assert_eq!(error["code"], code);
        assert_eq!(error["statusCode"], status);
        assert!(error["message"].is_string());
        assert_eq!(error["href"], format!("https://help.ably.io/error/{code}"));
    }
}

async fn fixture_with(tune: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.node.data_dir = dir.path().to_owned();
    tune(&mut config);

    let node = build_node(config, "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let key = node.apps.list()[0].keys[0].key_str();
    Fixture {
        _dir: dir,
        app: super::router().with_state(node.clone()),
        node,
        basic: format!("Basic {}", BASE64.encode(key)),
    }
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

impl Fixture {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        let request = Request::get(uri)
            .header(AUTHORIZATION, &self.basic)
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    async fn post_json(&self, uri: &str, body: Value) -> Answer {
        let request = Request::post(uri)
            .header(AUTHORIZATION, &self.basic)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    /// A key on a new app with the given capability.
    async fn key_with(&self, capability: &str) -> String {
        let spec = NewApp {
            keys: vec![NewKey {
                capability: Some(capability.into()),
            }],
            ..NewApp::default()
        };
        let app = self.node.control.create_app(spec).await.unwrap();
        format!("Basic {}", BASE64.encode(app.keys[0].key_str()))
    }
}

/// The query of the `rel` link in a Link header.
fn link_query<'a>(link: &'a str, rel: &str) -> Option<&'a str> {
    link.split(", ")
        .find(|part| part.ends_with(&format!("rel=\"{rel}\"")))
        .and_then(|part| part.strip_prefix("<./messages?"))
        .and_then(|part| part.split('>').next())
}

#[tokio::test]
async fn time_is_a_json_array_of_one_timestamp() {
    let f = fixture().await;
    let answer = f
        .send(Request::get("/time").body(Body::empty()).unwrap())
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/json");
    assert!(answer.json()[0].as_i64().unwrap() > 1_600_000_000_000);
}

#[tokio::test]
async fn publish_answers_serials_and_history_returns_newest_first() {
    let f = fixture().await;
    let body = json!([{"name": "a", "data": "one"}, {"name": "b", "data": {"x": 1}}]);
    let answer = f.post_json("/channels/room/messages", body).await;

    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.header("content-type"), "application/json");
    let published = answer.json();
    assert_eq!(published["channel"], "room");
    assert_eq!(published["serials"].as_array().unwrap().len(), 2);
    let message_id = published["messageId"].as_str().unwrap().to_owned();

    let history = f.get("/channels/room/messages").await;
    assert_eq!(history.status, StatusCode::OK);
    let messages = history.json();
    assert_eq!(messages[0]["name"], "b");
    assert_eq!(messages[0]["data"], r#"{"x":1}"#);
    assert_eq!(messages[0]["encoding"], "json");
    assert_eq!(messages[1]["id"], format!("{message_id}:0"));
    assert_eq!(messages[1]["serial"], published["serials"][0]);
}

#[tokio::test]
async fn a_single_message_and_client_ids_are_kept() {
    let f = fixture().await;
    let body = json!({"id": "mine:3", "name": "n", "data": "d"});
    let first = f
        .post_json("/channels/c/messages", body.clone())
        .await
        .json();
    assert_eq!(first["messageId"], "mine");

    // The same id again is a duplicate: the first serial comes back, nothing is stored.
    let again = f.post_json("/channels/c/messages", body).await.json();
    assert_eq!(again["serials"], first["serials"]);
    assert_eq!(
        f.get("/channels/c/messages")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn history_pages_follow_the_link_header() {
    let f = fixture().await;
    for i in 0..3 {
        f.post_json("/channels/p/messages", json!({"name": format!("m{i}")}))
            .await;
    }

    let first = f
        .get("/channels/p/messages?limit=2&direction=forwards")
        .await;
    let names: Vec<_> = first
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(names, [json!("m0"), json!("m1")]);
    let link = first.header("link").to_owned();
    assert_eq!(
        link_query(&link, "first"),
        Some("limit=2&direction=forwards")
    );

    let next = link_query(&link, "next").expect("a next link");
    let second = f.get(&format!("/channels/p/messages?{next}")).await;
    assert_eq!(second.json()[0]["name"], "m2");
    assert_eq!(second.json().as_array().unwrap().len(), 1);
    assert!(link_query(second.header("link"), "next").is_none());
}

#[tokio::test]
async fn an_empty_history_is_an_empty_array() {
    let f = fixture().await;
    let answer = f.get("/channels/never/messages").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!([]));
    assert_eq!(
        f.node.region.stats().await.channels,
        0,
        "reading history creates nothing"
    );
}

#[tokio::test]
async fn binary_data_is_base64_in_json_and_bin_in_msgpack() {
    let f = fixture().await;
    let message = Message {
        name: Some("bin".into()),
        data: Some(Data::Binary(Bytes::from_static(&[0, 255, 7]))),
        ..Message::default()
    };
    let request = Request::post("/channels/b/messages")
        .header(AUTHORIZATION, &f.basic)
        .header(CONTENT_TYPE, MSGPACK)
        .header(ACCEPT, MSGPACK)
        .body(Body::from(rmp_serde::to_vec_named(&[message]).unwrap()))
        .unwrap();
    let answer = f.send(request).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.header("content-type"), MSGPACK);

    let json = f.get("/channels/b/messages").await.json();
    assert_eq!(json[0]["data"], "AP8H");
    assert_eq!(json[0]["encoding"], "base64");

    let request = Request::get("/channels/b/messages")
        .header(AUTHORIZATION, &f.basic)
        .header(ACCEPT, MSGPACK)
        .body(Body::empty())
        .unwrap();
    let answer = f.send(request).await;
    let messages: Vec<Message> = rmp_serde::from_slice(&answer.body).unwrap();
    assert_eq!(
        messages[0].data,
        Some(Data::Binary(Bytes::from_static(&[0, 255, 7])))
    );
    assert_eq!(messages[0].encoding, None);
}

#[tokio::test]
async fn refusals_use_the_ably_error_shape() {
    let f = fixture().await;

    let anonymous = Request::get("/channels/x/messages")
        .body(Body::empty())
        .unwrap();
    f.send(anonymous).await.assert_error(40101, 401);

    let token = Request::get("/channels/x/messages")
        .header(AUTHORIZATION, "Bearer abc")
        .body(Body::empty())
        .unwrap();
    f.send(token).await.assert_error(40143, 401);

    f.get("/channels/x/messages?limit=5000")
        .await
        .assert_error(40003, 400);
    f.get("/channels/x/messages?direction=up")
        .await
        .assert_error(40003, 400);
    f.get("/channels/x/messages?cursor=zz")
        .await
        .assert_error(40003, 400);
    f.get("/channels/%3Abad/messages")
        .await
        .assert_error(40010, 400);

    let broken = Request::post("/channels/x/messages")
        .header(AUTHORIZATION, &f.basic)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    f.send(broken).await.assert_error(40001, 400);

    let huge = json!({"data": "x".repeat(70_000)});
    f.post_json("/channels/x/messages", huge)
        .await
        .assert_error(40009, 413);
}

#[tokio::test]
async fn the_key_param_authenticates_and_capabilities_are_enforced() {
    let f = fixture().await;
    let key = f.node.apps.list()[0].keys[0].key_str();
    let by_param = Request::get(format!("/channels/x/messages?key={key}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.send(by_param).await.status, StatusCode::OK);

    let subscriber = f.key_with(r#"{"*":["subscribe"]}"#).await;
    for request in [
        Request::get("/channels/x/messages"),
        Request::post("/channels/x/messages"),
    ] {
        let request = request
            .header(AUTHORIZATION, &subscriber)
            .body(Body::from("{}"))
            .unwrap();
        f.send(request).await.assert_error(40160, 401);
    }

    // Status needs any operation on the channel.
    let status = Request::get("/channels/x")
        .header(AUTHORIZATION, &subscriber)
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.send(status).await.status, StatusCode::OK);
    let other = Request::get("/channels/[meta]x")
        .header(AUTHORIZATION, &subscriber)
        .body(Body::empty())
        .unwrap();
    f.send(other).await.assert_error(40160, 401);
}

#[tokio::test]
async fn oversize_bodies_are_refused_before_parsing() {
    let f = fixture_with(|c| c.limits.max_frame_size = 100).await;
    let body = json!({"data": "x".repeat(200)});
    f.post_json("/channels/x/messages", body)
        .await
        .assert_error(40009, 413);
}

#[tokio::test]
async fn channel_status_reports_occupancy_without_creating_the_channel() {
    let f = fixture().await;
    let answer = f.get("/channels/quiet").await;
    assert_eq!(answer.status, StatusCode::OK);
    let details = answer.json();
    assert_eq!(details["channelId"], "quiet");
    assert_eq!(details["status"]["isActive"], false);
    assert_eq!(details["status"]["occupancy"]["metrics"]["connections"], 0);
    assert_eq!(
        details["status"]["occupancy"]["metrics"]["presenceMembers"],
        0
    );
    assert_eq!(f.node.region.stats().await.channels, 0);
}

#[tokio::test]
async fn envelopes_carry_status_and_link_in_the_body() {
    let f = fixture().await;
    let status = f.get("/channels/e?envelope=json").await;
    assert_eq!(status.status, StatusCode::OK);
    let wrapped = status.json();
    assert_eq!(wrapped["statusCode"], 200);
    assert_eq!(wrapped["response"]["channelId"], "e");
    assert_eq!(wrapped["headers"], json!({}));

    f.post_json(
        "/channels/e/messages",
        json!([{"name": "1"}, {"name": "2"}]),
    )
    .await;
    let page = f.get("/channels/e/messages?envelope=json&limit=1").await;
    let wrapped = page.json();
    assert_eq!(wrapped["response"][0]["name"], "2");
    let link = wrapped["headers"]["link"].as_str().unwrap();
    assert!(link_query(link, "next").is_some());
    assert!(page.headers.get(LINK).is_none());
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_in_the_ably_shape() {
    let f = fixture().await;
    f.get("/nowhere?key=secret").await.assert_error(40400, 404);
    let wrong = Request::delete("/channels/x/messages")
        .body(Body::empty())
        .unwrap();
    f.send(wrong).await.assert_error(40500, 405);
}

#[tokio::test]
async fn cors_preflight_mirrors_the_origin_and_exposes_ably_headers() {
    let f = fixture().await;
    let preflight = Request::options("/channels/x/messages")
        .header("origin", "http://example.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .body(Body::empty())
        .unwrap();
    let answer = f.send(preflight).await;
    assert!(answer.status.is_success());
    assert_eq!(
        answer.header("access-control-allow-origin"),
        "http://example.test"
    );
    assert_eq!(answer.header("access-control-allow-credentials"), "true");
    assert!(answer
        .header("access-control-allow-headers")
        .contains("authorization"));

    let request = Request::get("/channels/x/messages")
        .header("origin", "http://example.test")
        .header(AUTHORIZATION, &f.basic)
        .body(Body::empty())
        .unwrap();
    let exposed = f.send(request).await;
    let exposed = exposed
        .header("access-control-expose-headers")
        .to_lowercase();
    assert!(exposed.contains("link") && exposed.contains("x-ably-errorcode"));
}

#[tokio::test]
async fn admin_needs_the_token_unless_loopback_is_trusted() {
    let f = fixture().await;
    let anonymous = Request::post("/apps").body(Body::empty()).unwrap();
    f.send(anonymous).await.assert_error(40100, 401);
    let wrong = Request::post("/apps")
        .header(AUTHORIZATION, "Bearer wrong")
        .body(Body::empty())
        .unwrap();
    f.send(wrong).await.assert_error(40100, 401);

    let trusted = fixture_with(|c| c.admin.loopback_without_token = true).await;
    let mut local = Request::post("/apps").body(Body::empty()).unwrap();
    let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    local.extensions_mut().insert(ConnectInfo(loopback));
    assert_eq!(trusted.send(local).await.status, StatusCode::CREATED);

    let mut remote = Request::post("/apps").body(Body::empty()).unwrap();
    let far: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    remote.extensions_mut().insert(ConnectInfo(far));
    trusted.send(remote).await.assert_error(40100, 401);
}

#[tokio::test]
async fn apps_are_created_used_and_deleted() {
    let f = fixture().await;
    let bearer = format!("Bearer {}", f.node.admin_token);
    let spec = json!({
        "keys": [{"capability": "{\"ns:*\":[\"publish\",\"history\"]}"}],
        "namespaces": [{"id": "ns", "persisted": true}],
    });
    let create = Request::post("/apps")
        .header(AUTHORIZATION, &bearer)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(spec.to_string()))
        .unwrap();
    let created = f.send(create).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let created = created.json();
    let app_id = created["appId"].as_str().unwrap().to_owned();
    let key = &created["keys"][0];
    assert_eq!(created["accountId"], "starling");
    assert_eq!(key["capability"], r#"{"ns:*":["publish","history"]}"#);
    assert_eq!(
        key["keyStr"],
        format!(
            "{}:{}",
            key["keyName"].as_str().unwrap(),
            key["keySecret"].as_str().unwrap()
        )
    );
    assert_eq!(
        created["namespaces"],
        json!([{"id": "ns", "persisted": true}])
    );

    let basic = format!("Basic {}", BASE64.encode(key["keyStr"].as_str().unwrap()));
    let use_key = |path: &str| {
        Request::get(path)
            .header(AUTHORIZATION, &basic)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        f.send(use_key("/channels/ns:a/messages")).await.status,
        StatusCode::OK
    );

    let delete = |id: &str| {
        Request::delete(format!("/apps/{id}"))
            .header(AUTHORIZATION, &bearer)
            .body(Body::empty())
            .unwrap()
    };
    let deleted = f.send(delete(&app_id)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    f.send(use_key("/channels/ns:a/messages"))
        .await
        .assert_error(40101, 401);
    f.send(delete(&app_id)).await.assert_error(40400, 404);

    let bad = Request::post("/apps")
        .header(AUTHORIZATION, &bearer)
        .body(Body::from(
            r#"{"keys":[{"capability":"{\"*\":[\"fly\"]}"}]}"#,
        ))
        .unwrap();
    f.send(bad).await.assert_error(40001, 400);
}
