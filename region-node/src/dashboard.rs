//! The operator's dashboard: `GET /dashboard` (a static page embedded in the binary)
//! and the JSON it polls, `GET /dashboard/state`, which shows the federation as this
//! node sees it: every region of the catalog, this region's nodes (each asked for its
//! own figures at `GET /dashboard/node`), bridge links, the global master's members
//! and leader, which node masters how many channels, the busiest channels, and
//! running totals the page turns into rates.
//!
//! All three need the admin token (as a bearer token, or as the password of HTTP
//! basic auth, which a browser asks for), except from loopback when
//! `admin.loopback_without_token` allows it, as for the admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::node::{now_ms, Node};
use crate::observe::{self, Totals};
use crate::region::RegionStats;
use crate::rest::auth::Peer;

const PAGE: &str = include_str!("dashboard.html");

/// How long the state waits for a peer's figures or a global master member.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Channels in the federation-wide ranking.
const BUSIEST: usize = 10;

pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/state", get(state))
        .route("/dashboard/node", get(node_figures))
}

async fn page(State(node): State<Arc<Node>>, peer: Peer, headers: HeaderMap) -> Response {
    if !authorized(&node, &headers, peer) {
        return refused();
    }
    Html(PAGE).into_response()
}

async fn node_figures(State(node): State<Arc<Node>>, peer: Peer, headers: HeaderMap) -> Response {
    if !authorized(&node, &headers, peer) {
        return refused();
    }
    Json(NodeFigures::of(&node).await).into_response()
}

async fn state(State(node): State<Arc<Node>>, peer: Peer, headers: HeaderMap) -> Response {
    if !authorized(&node, &headers, peer) {
        return refused();
    }
    Json(federation(&node).await).into_response()
}

/// The admin token as a bearer token or a basic-auth password (any user name), or a
/// loopback peer when the configuration trusts loopback. A page from another origin
/// is never trusted for being on loopback.
fn authorized(node: &Node, headers: &HeaderMap, peer: Peer) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token);
    let loopback = peer.0.is_some_and(|addr| addr.ip().is_loopback());
    let same_origin = same_origin(headers);
    let trusted = loopback && same_origin && node.config.admin.loopback_without_token;
    let good = presented.as_ref().is_some_and(|token| {
        constant_time_eq::constant_time_eq(token.as_bytes(), node.admin_token.as_bytes())
    });
    good || (presented.is_none() && trusted)
}

/// 401 with the challenge that makes a browser ask for the token.
fn refused() -> Response {
    let mut refused = (
        StatusCode::UNAUTHORIZED,
        "the dashboard needs the admin token\n",
    )
        .into_response();
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"starling dashboard\""),
    );
    refused
}

fn presented_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_owned());
    }
    None
}

/// No `Origin`, or one naming the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    host.is_some_and(|host| {
        origin == format!("http://{host}") || origin == format!("https://{host}")
    })
}

/// One node's own figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFigures {
    pub id: String,
    pub region: String,
    pub client: String,
    pub connections: usize,
    pub stats: RegionStats,
    pub totals: Totals,
    /// Bridge links other regions' nodes opened to this node: (region, node).
    pub accepted: Vec<(String, String)>,
}

impl NodeFigures {
    async fn of(node: &Node) -> Self {
        let client = node
            .mesh
            .as_ref()
            .and_then(|m| {
                m.watch()
                    .borrow()
                    .live
                    .get(&node.config.node.id)
                    .map(|i| i.client)
            })
            .map_or_else(|| node.config.listen.client.to_string(), |a| a.to_string());
        Self {
            id: node.config.node.id.clone(),
            region: node.config.node.region.clone(),
            client,
            connections: node.connections.len(),
            stats: node.region.stats_with_busiest().await,
            totals: observe::totals(),
            accepted: observe::accepted_links(),
        }
    }
}

/// The whole picture `/dashboard/state` answers with.
async fn federation(node: &Arc<Node>) -> Value {
    let own = NodeFigures::of(node).await;
    let peers = ask_peers(node).await;
    let mut nodes = vec![json!({"reachable": true, "figures": own})];
    let mut figures = vec![own.clone()];
    for (id, client, answer) in peers {
        match answer {
            Ok(f) => {
                figures.push(f.clone());
                nodes.push(json!({"reachable": true, "figures": f}));
            }
            Err(error) => nodes.push(json!({
                "reachable": false, "error": error,
                "figures": {"id": id, "client": client, "region": own.region},
            })),
        }
    }
    nodes.sort_by_key(|n| n["figures"]["id"].as_str().unwrap_or_default().to_owned());

    json!({
        "node": own.id,
        "region": own.region,
        "generated_ms": now_ms(),
        "regions": regions(node, &own.region, &nodes),
        "links": links(&figures),
        "global_master": global_master(node).await,
        "ring": ring(&own.region, &figures, node),
        "busiest": busiest(&figures),
        "totals": totals(&figures),
    })
}

/// This region's live peers and what each says of itself.
async fn ask_peers(node: &Node) -> Vec<(String, String, Result<NodeFigures, String>)> {
    let Some(mesh) = &node.mesh else {
        return Vec::new();
    };
    let view = mesh.watch().borrow().clone();
    let http = reqwest::Client::builder()
        .timeout(ASK_TIMEOUT)
        .build()
        .expect("a plain HTTP client builds");
    let asks = view
        .live
        .values()
        .filter(|m| m.id != node.config.node.id)
        .map(|member| {
            let http = http.clone();
            // A node listening on every interface is reached at its mesh address's IP.
            let client = match member.client.ip().is_unspecified() {
                true => std::net::SocketAddr::new(member.mesh.ip(), member.client.port()),
                false => member.client,
            };
            let url = format!("http://{client}/dashboard/node");
            let token = node.admin_token.clone();
            let (id, client) = (member.id.clone(), client.to_string());
            async move {
                let answer = http.get(url).bearer_auth(token).send().await;
                let figures = match answer {
                    Ok(r) if r.status().is_success() => r.json().await.map_err(|e| e.to_string()),
                    Ok(r) => Err(format!("answered {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                (id, client, figures)
            }
        });
    futures_util::future::join_all(asks).await
}

/// Every region of the catalog (and this one, even before it registered), with this
/// region's nodes in full and the others' counted by their registered bridges.
fn regions(node: &Node, own: &str, nodes: &[Value]) -> Vec<Value> {
    let homes = node.control.homes_per_region();
    let mut regions: BTreeMap<String, Value> = BTreeMap::new();
    for (name, region) in node.control.regions() {
        regions.insert(
            name.clone(),
            json!({
                "name": name,
                "local": name == own,
                "lost": region.lost,
                "last_heartbeat_ms": region.last_heartbeat_ms,
                "bridges": region.bridges,
                "node_count": region.bridges.len(),
                "homes": homes.get(&name).copied().unwrap_or(0),
                "nodes": [],
            }),
        );
    }
    let entry = regions.entry(own.to_owned()).or_insert_with(|| {
        json!({"name": own, "local": true, "lost": false, "bridges": [],
               "homes": homes.get(own).copied().unwrap_or(0)})
    });
    entry["nodes"] = json!(nodes);
    entry["node_count"] = json!(nodes.len());
    regions.into_values().collect()
}

/// Bridge links this region's nodes dialled to other regions, and those other
/// regions' nodes dialled to them. Each is a link from a relaying node to a node of
/// the channel's home region.
fn links(figures: &[NodeFigures]) -> Vec<Value> {
    let mut links = Vec::new();
    for f in figures {
        for to in &f.stats.links_up {
            links.push(json!({"from_region": f.region, "from_node": f.id,
                              "to_region": to, "to_node": null, "up": true}));
        }
        for (region, node) in &f.accepted {
            links.push(json!({"from_region": region, "from_node": node,
                              "to_region": f.region, "to_node": f.id, "up": true}));
        }
    }
    links
}

/// The global master's members as each sees the group, and the leader they agree on.
async fn global_master(node: &Node) -> Value {
    let answers = node.control.members_status(ASK_TIMEOUT).await;
    let mut members = Vec::new();
    let mut leader = None;
    let mut term = 0;
    let mut commit_index = 0;
    for (addr, answer) in answers {
        match answer {
            Ok(status) => {
                if status.leader_id != 0 && status.term >= term {
                    leader = Some(status.leader_id);
                    term = status.term;
                }
                commit_index = commit_index.max(status.commit_index);
                members.push(json!({
                    "addr": addr, "id": status.id, "role": status.role, "term": status.term,
                    "commit_index": status.commit_index, "leader_id": status.leader_id,
                    "reachable": true,
                }));
            }
            Err(error) => members.push(json!({"addr": addr, "reachable": false, "error": error})),
        }
    }
    json!({"members": members, "leader_id": leader, "term": term, "commit_index": commit_index})
}

/// Which node of this region masters how many channels, and how many channels each
/// region homes.
fn ring(region: &str, figures: &[NodeFigures], node: &Node) -> Value {
    let masters: BTreeMap<&str, usize> = figures
        .iter()
        .map(|f| (f.id.as_str(), f.stats.masters))
        .collect();
    let relays: BTreeMap<&str, usize> = figures
        .iter()
        .map(|f| (f.id.as_str(), f.stats.relays))
        .collect();
    json!({
        "region": region,
        "members": masters.keys().collect::<Vec<_>>(),
        "masters": masters,
        "relays": relays,
        "homes": node.control.homes_per_region(),
    })
}

/// The region's channels with the most messages delivered, summed over its nodes.
fn busiest(figures: &[NodeFigures]) -> Vec<Value> {
    let mut merged: BTreeMap<(String, String), (usize, u64, Option<String>)> = BTreeMap::new();
    for f in figures {
        for a in &f.stats.busiest {
            let entry = merged
                .entry((a.app.clone(), a.channel.clone()))
                .or_default();
            entry.0 += a.attachments;
            entry.1 += a.delivered;
            if a.master {
                entry.2 = Some(f.id.clone());
            }
        }
    }
    let mut ranked: Vec<_> = merged.into_iter().collect();
    ranked.sort_by_key(|(_, (attachments, delivered, _))| {
        std::cmp::Reverse((*delivered, *attachments))
    });
    ranked
        .into_iter()
        .take(BUSIEST)
        .map(|((app, channel), (attachments, delivered, master))| {
            json!({"app": app, "channel": channel, "attachments": attachments,
                   "delivered": delivered, "master": master})
        })
        .collect()
}

fn totals(figures: &[NodeFigures]) -> Totals {
    figures.iter().fold(Totals::default(), |sum, f| Totals {
        messages_in: sum.messages_in + f.totals.messages_in,
        messages_out: sum.messages_out + f.totals.messages_out,
        deliveries: sum.deliveries + f.totals.deliveries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_bearer_or_basic() {
        assert_eq!(presented_token("Bearer abc").as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
        assert_eq!(
            presented_token(&format!("Basic {basic}")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(presented_token("Digest x"), None);
    }

    #[test]
    fn another_origin_is_not_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers));
    }
}
