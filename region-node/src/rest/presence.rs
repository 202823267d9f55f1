//! REST presence: a channel's current members (`presence.get`), its presence history,
//! and the members of several channels at once (`batchPresence`). Members are read
//! from the channel's master (or, in another region, its home), like history.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::auth::authenticate;
use super::channels::{read_channel, require, ChannelRequest, HistoryParams};
use super::request::Params;
use super::response::{Negotiation, Reply};
use crate::channel_master::{HistoryQuery, ReadKind};
use crate::channels::{channel_key, validate_name};
use crate::error::AblyError;
use crate::node::Node;
use crate::protocol::codec::render_presence_for_json;
use crate::protocol::{Format, PresenceMessage};

/// Most channels one batch request may name.
const MAX_BATCH_CHANNELS: usize = 100;

pub async fn members(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let request = ChannelRequest::new(&node, name, &headers, query);
    negotiation.respond(try_members(request, negotiation.body_format()).await)
}

pub async fn history(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let request = ChannelRequest::new(&node, name, &headers, query);
    negotiation.respond(try_history(request, negotiation.body_format()).await)
}

pub async fn batch(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = Params::parse(query.as_deref());
    negotiation.respond(try_batch(&node, &headers, &params, negotiation.body_format()).await)
}

async fn try_members(
    request: ChannelRequest<'_>,
    format: Format,
) -> Result<Reply<Vec<PresenceMessage>>, AblyError> {
    // Reading the set is subscribing's privilege, as in realtime (presence_subscribe
    // is granted by `subscribe`); `presence` is for entering.
    let (read, page) = read_channel(request, "subscribe", |params| {
        let page = MemberPage::parse(params)?;
        Ok((page.query(), page))
    })
    .await?;
    let link = page.link(read.next_member.as_ref());
    Ok(Reply::ok(for_format(read.presence, format)).with_link(Some(link)))
}

async fn try_history(
    request: ChannelRequest<'_>,
    format: Format,
) -> Result<Reply<Vec<PresenceMessage>>, AblyError> {
    let (read, history) = read_channel(request, "history", |params| {
        let history = HistoryParams::parse(params)?;
        let query = HistoryQuery {
            kind: ReadKind::PresenceHistory,
            ..history.query()
        };
        Ok((query, history))
    })
    .await?;
    let link = history.link_to("history", read.next);
    Ok(Reply::ok(for_format(read.presence, format)).with_link(Some(link)))
}

/// Each channel answers on its own: a refused or failed one is an error in its
/// result, not a failure of the whole request.
async fn try_batch(
    node: &Node,
    headers: &HeaderMap,
    params: &Params,
    format: Format,
) -> Result<Reply<Value>, AblyError> {
    let identity = authenticate(node, headers, params)?;
    let names: Vec<&str> = (params.get("channels").unwrap_or_default().split(','))
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() || names.len() > MAX_BATCH_CHANNELS {
        return Err(AblyError::InvalidParameter {
            name: "channels",
            reason: format!("name between 1 and {MAX_BATCH_CHANNELS} channels"),
        });
    }

    let mut results = Vec::with_capacity(names.len());
    let mut failures = 0;
    for name in names {
        let outcome = batch_one(node, &identity, name, format).await;
        match outcome {
            Ok(presence) => results.push(json!({"channel": name, "presence": presence})),
            Err(error) => {
                failures += 1;
                results.push(json!({"channel": name, "error": error.to_info()}));
            }
        }
    }
    Ok(Reply::ok(json!({
        "successCount": results.len() - failures,
        "failureCount": failures,
        "results": results,
    })))
}

async fn batch_one(
    node: &Node,
    identity: &crate::auth::Identity,
    name: &str,
    format: Format,
) -> Result<Vec<PresenceMessage>, AblyError> {
    validate_name(name)?;
    require(identity, name, "subscribe")?;
    let query = HistoryQuery {
        limit: usize::MAX,
        kind: ReadKind::Members {
            client_id: None,
            connection_id: None,
            after: None,
        },
        ..HistoryQuery::default()
    };
    let channel = channel_key(&identity.app.id, name);
    let read = node
        .region
        .history(&channel, query)
        .await
        .map_err(AblyError::Remote)?;
    Ok(for_format(read.presence, format))
}

/// Binary payloads are kept as bytes; a JSON body needs them as base64.
fn for_format(mut presence: Vec<PresenceMessage>, format: Format) -> Vec<PresenceMessage> {
    if format == Format::Json {
        presence.iter_mut().for_each(render_presence_for_json);
    }
    presence
}

/// A members request's parameters, kept as given so links can repeat them.
struct MemberPage {
    limit: usize,
    client_id: Option<String>,
    connection_id: Option<String>,
    /// The key `(connectionId, clientId)` of the last member of the previous page.
    after: Option<(String, String)>,
}

impl MemberPage {
    fn parse(params: &Params) -> Result<Self, AblyError> {
        // The same bounds as history (1..=1000, 100 by default).
        let limit = HistoryParams::parse(params)?.limit;
        let after = match (params.get("afterConnectionId"), params.get("afterClientId")) {
            (Some(connection), Some(client)) => Some((connection.to_owned(), client.to_owned())),
            (None, None) => None,
            _ => {
                return Err(AblyError::InvalidParameter {
                    name: "afterConnectionId",
                    reason: "afterConnectionId and afterClientId go together".into(),
                })
            }
        };
        Ok(Self {
            limit,
            client_id: params.get("clientId").map(str::to_owned),
            connection_id: params.get("connectionId").map(str::to_owned),
            after,
        })
    }

    fn query(&self) -> HistoryQuery {
        HistoryQuery {
            limit: self.limit,
            kind: ReadKind::Members {
                client_id: self.client_id.clone(),
                connection_id: self.connection_id.clone(),
                after: self.after.clone(),
            },
            ..HistoryQuery::default()
        }
    }

    fn link(&self, next: Option<&(String, String)>) -> String {
        let first = format!("<./presence?{}>; rel=\"first\"", self.link_query(None));
        match next {
            Some(after) => format!(
                "{first}, <./presence?{}>; rel=\"next\"",
                self.link_query(Some(after))
            ),
            None => first,
        }
    }

    fn link_query(&self, after: Option<&(String, String)>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", &self.limit.to_string());
        if let Some(client_id) = &self.client_id {
            query.append_pair("clientId", client_id);
        }
        if let Some(connection_id) = &self.connection_id {
            query.append_pair("connectionId", connection_id);
        }
        if let Some((connection, client)) = after {
            query.append_pair("afterConnectionId", connection);
            query.append_pair("afterClientId", client);
        }
        query.finish()
    }
}
