//! `/channels/{name}`: publish, history and channel status over REST.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::debug;

use super::auth::authenticate;
use super::request::{Params, RestBody};
use super::response::{Negotiation, Reply};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::auth::Identity;
use crate::channel_master::{HistoryPage, HistoryQuery, Publish};
use crate::channels::{channel_key, validate_name};
use crate::connection::prepare_messages;
use crate::data_dir::random_string;
use crate::error::AblyError;
use crate::node::Node;
use crate::position::Position;
use crate::protocol::codec::render_for_json;
use crate::protocol::{Format, Message};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Length of the random id base given to a REST publish whose messages have no ids.
const ID_BASE_LEN: usize = 12;

/// One channel request's inputs that every endpoint checks the same way.
pub(super) struct ChannelRequest<'a> {
    pub(super) node: &'a Node,
    name: Result<Path<String>, PathRejection>,
    headers: &'a HeaderMap,
    params: Params,
}

/// The answer to a publish; ably-js keeps only `serials`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Published {
    channel: String,
    message_id: String,
    serials: Vec<Option<String>>,
}

/// A history request's parameters, kept as given so links can repeat them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryParams {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub limit: usize,
    pub forwards: bool,
    /// `untilAttach`: only messages at or before the serial the channel attached at.
    pub from_serial: Option<Position>,
    /// Continues a previous page (exclusive).
    pub cursor: Option<Position>,
}

pub async fn publish(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: RestBody,
) -> Response {
    let request = ChannelRequest::new(&node, name, &headers, query);
    negotiation.respond(try_publish(request, &body).await)
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

pub async fn status(
    State(node): State<Arc<Node>>,
    negotiation: Negotiation,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let request = ChannelRequest::new(&node, name, &headers, query);
    negotiation.respond(try_status(request).await)
}

impl<'a> ChannelRequest<'a> {
    pub(super) fn new(
        node: &'a Node,
        name: Result<Path<String>, PathRejection>,
        headers: &'a HeaderMap,
        query: Option<String>,
    ) -> Self {
        Self {
            node,
            name,
            headers,
            params: Params::parse(query.as_deref()),
        }
    }

    /// Authenticates the caller and checks the channel name, in that order, so that
    /// an anonymous caller learns nothing about names.
    pub(super) fn open(self) -> Result<Opened, AblyError> {
        let identity = authenticate(self.node, self.headers, &self.params)?;
        let Path(name) = self
            .name
            .map_err(|e| AblyError::InvalidChannelName(e.body_text()))?;
        validate_name(&name)?;
        let channel = channel_key(&identity.app.id, &name);
        Ok(Opened {
            name,
            channel,
            identity,
            params: self.params,
        })
    }
}

/// An authenticated request on a valid channel name.
pub(super) struct Opened {
    pub name: String,
    /// The region-wide key of the app's channel.
    pub channel: String,
    pub identity: Identity,
    pub params: Params,
}

pub(super) fn require(
    identity: &Identity,
    channel: &str,
    op: &'static str,
) -> Result<(), AblyError> {
    if identity.capability.allows(channel, op) {
        return Ok(());
    }
    Err(AblyError::CapabilityDenied {
        op,
        channel: channel.to_owned(),
    })
}

async fn try_publish(
    request: ChannelRequest<'_>,
    body: &RestBody,
) -> Result<Reply<Published>, AblyError> {
    let node = request.node;
    let declared = request_client_id(request.headers)?;
    let Opened {
        name,
        channel,
        identity,
        ..
    } = request.open()?;
    require(&identity, &name, "publish")?;

    // Basic auth may publish under any clientId; a client that declares one
    // (`X-Ably-ClientId`) has it stamped on messages that carry none. An identified
    // token's clientId wins over any declaration, and messages must carry it.
    let client_id = identity.client_id.clone().or(declared);
    let limits = &node.config.limits;
    let messages = prepare_messages(decode_messages(body)?, client_id.as_deref(), limits)?;
    crate::observe::messages_in("rest", messages.len());

    let id_base = random_string(ID_BASE_LEN);
    let message_id = messages
        .first()
        .and_then(|m| m.id.as_deref())
        .map_or(id_base.as_str(), id_base_of)
        .to_owned();
    let count = messages.len();

    // An empty publish has nothing to sequence and must not create the channel.
    let serials = if messages.is_empty() {
        Vec::new()
    } else {
        let publish = Publish::messages(messages, id_base, None);
        let outcome = node.region.publish(&channel, publish).await;
        let outcome = outcome.map_err(|_| AblyError::Internal("region task ended".into()))?;
        outcome.map_err(AblyError::Remote)?
    };
    debug!(channel.name = %name, messages = count, "rest publish");

    Ok(Reply::created(Published {
        channel: name,
        message_id,
        serials,
    }))
}

/// A read through the channel's master (history, presence) for a caller allowed
/// `op`: `plan` turns the request's parameters into the query, and into whatever the
/// answer's links need.
pub(super) async fn read_channel<P>(
    request: ChannelRequest<'_>,
    op: &'static str,
    plan: impl FnOnce(&Params) -> Result<(HistoryQuery, P), AblyError>,
) -> Result<(HistoryPage, P), AblyError> {
    let node = request.node;
    let Opened {
        name,
        channel,
        identity,
        params,
    } = request.open()?;
    require(&identity, &name, op)?;
    let (query, planned) = plan(&params)?;

    let page = node
        .region
        .history(&channel, query)
        .await
        .map_err(AblyError::Remote)?;
    Ok((page, planned))
}

async fn try_history(
    request: ChannelRequest<'_>,
    format: Format,
) -> Result<Reply<Vec<Message>>, AblyError> {
    let (page, history) = read_channel(request, "history", |params| {
        let history = HistoryParams::parse(params)?;
        Ok((history.query(), history))
    })
    .await?;
    let mut messages = page.messages;
    // The master keeps binary payloads as bytes; a JSON body needs them as base64.
    if format == Format::Json {
        messages.iter_mut().for_each(render_for_json);
    }
    Ok(Reply::ok(messages).with_link(Some(history.link(page.next))))
}

/// Any operation on the channel admits its status, `channel-metadata` included: a key
/// that may do something with a channel may also see whether it is in use.
async fn try_status(request: ChannelRequest<'_>) -> Result<Reply<Value>, AblyError> {
    let node = request.node;
    let Opened {
        name,
        channel,
        identity,
        ..
    } = request.open()?;
    if !identity.capability.allows_any(&name) {
        return Err(AblyError::CapabilityDenied {
            op: "channel-metadata",
            channel: name,
        });
    }

    // Occupancy reads never create a channel.
    let metrics = node.region.occupancy(&channel).await;
    Ok(Reply::ok(json!({
        "channelId": name,
        "status": {
            "isActive": metrics.connections > 0,
            "occupancy": {"metrics": metrics},
        },
    })))
}

/// The clientId ably-js declares in `X-Ably-ClientId` (base64 of its UTF-8).
fn request_client_id(headers: &HeaderMap) -> Result<Option<String>, AblyError> {
    let Some(value) = headers.get("x-ably-clientid") else {
        return Ok(None);
    };
    let bad = || AblyError::InvalidClientId("X-Ably-ClientId is not base64 UTF-8".into());
    let bytes = BASE64.decode(value.as_bytes()).map_err(|_| bad())?;
    let client_id = String::from_utf8(bytes).map_err(|_| bad())?;
    Ok(Some(client_id).filter(|c| !c.is_empty() && c != "*"))
}

/// A publish body is one message or an array of them.
fn decode_messages(body: &RestBody) -> Result<Vec<Message>, AblyError> {
    if body.is_empty() {
        return Err(AblyError::InvalidBody("no messages to publish".into()));
    }
    if body.is_array() {
        body.decode()
    } else {
        Ok(vec![body.decode()?])
    }
}

/// `base:index` ids share their base with the rest of the publish; that base is the
/// publish's `messageId`. Any other id is its own base.
fn id_base_of(id: &str) -> &str {
    match id.rsplit_once(':') {
        Some((base, index)) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            base
        }
        _ => id,
    }
}

impl HistoryParams {
    pub fn parse(params: &Params) -> Result<Self, AblyError> {
        let history = Self {
            start: parse_opt(params, "start")?,
            end: parse_opt(params, "end")?,
            limit: parse_limit(params)?,
            forwards: parse_direction(params)?,
            from_serial: parse_opt(params, "from_serial")?,
            cursor: parse_opt(params, "cursor")?,
        };

        if let (Some(start), Some(end)) = (history.start, history.end) {
            if start > end {
                return Err(invalid("end", "must not be before start".into()));
            }
        }
        Ok(history)
    }

    pub fn query(&self) -> HistoryQuery {
        HistoryQuery {
            start: self.start,
            end: self.end,
            limit: self.limit,
            forwards: self.forwards,
            cursor: self.cursor,
            until: self.from_serial,
            kind: Default::default(),
        }
    }

    /// The `Link` header for a page: always `first`, and `next` when there is more.
    /// ably-js reuses the original path with a link's query, so each link carries
    /// every parameter the next request needs.
    pub fn link(&self, next: Option<Position>) -> String {
        self.link_to("messages", next)
    }

    /// The `Link` header for a page of `path` (relative to the request's folder).
    pub fn link_to(&self, path: &str, next: Option<Position>) -> String {
        let first = format!("<./{path}?{}>; rel=\"first\"", self.link_query(None));
        match next {
            Some(cursor) => format!(
                "{first}, <./{path}?{}>; rel=\"next\"",
                self.link_query(Some(cursor))
            ),
            None => first,
        }
    }

    fn link_query(&self, cursor: Option<Position>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(start) = self.start {
            query.append_pair("start", &start.to_string());
        }
        if let Some(end) = self.end {
            query.append_pair("end", &end.to_string());
        }
        if let Some(serial) = self.from_serial {
            query.append_pair("from_serial", &serial.to_string());
        }
        query.append_pair("limit", &self.limit.to_string());
        let direction = if self.forwards {
            "forwards"
        } else {
            "backwards"
        };
        query.append_pair("direction", direction);
        if let Some(cursor) = cursor {
            query.append_pair("cursor", &cursor.to_string());
        }
        query.finish()
    }
}

fn invalid(name: &'static str, reason: String) -> AblyError {
    AblyError::InvalidParameter { name, reason }
}

fn parse_opt<T: std::str::FromStr>(
    params: &Params,
    name: &'static str,
) -> Result<Option<T>, AblyError> {
    params
        .get(name)
        .map(|value| {
            value
                .parse()
                .map_err(|_| invalid(name, format!("{value:?} is not valid")))
        })
        .transpose()
}

fn parse_limit(params: &Params) -> Result<usize, AblyError> {
    let limit = parse_opt(params, "limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("{limit} is not between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(limit)
}

fn parse_direction(params: &Params) -> Result<bool, AblyError> {
    match params.get("direction") {
        None | Some("backwards") => Ok(false),
        Some("forwards") => Ok(true),
        Some(other) => Err(invalid(
            "direction",
            format!("{other:?} is neither backwards nor forwards"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<HistoryParams, AblyError> {
        HistoryParams::parse(&Params::parse(Some(query)))
    }

    #[test]
    fn history_defaults_are_backwards_by_one_hundred() {
        let p = parse("").unwrap();
        assert_eq!((p.limit, p.forwards), (100, false));
        assert_eq!((p.start, p.end, p.cursor), (None, None, None));
    }

    #[test]
    fn bad_history_params_are_40003() {
        for bad in [
            "limit=1001",
            "limit=0",
            "limit=ten",
            "direction=sideways",
            "start=yesterday",
            "end=1.5",
            "cursor=nope",
            "start=10&end=5",
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), 40003, "{bad}");
        }
        assert_eq!(parse("limit=1000").unwrap().limit, 1000);
    }

    #[test]
    fn links_repeat_the_query_and_add_the_cursor() {
        let p = parse("start=5&end=9&limit=2&direction=forwards").unwrap();
        let next = Position::new(1, 7);
        assert_eq!(
            p.link(Some(next)),
            "<./messages?start=5&end=9&limit=2&direction=forwards>; rel=\"first\", \
             <./messages?start=5&end=9&limit=2&direction=forwards\
             &cursor=000000000001-0000000000000007>; rel=\"next\""
        );
        assert_eq!(
            parse("").unwrap().link(None),
            "<./messages?limit=100&direction=backwards>; rel=\"first\""
        );
    }

    #[test]
    fn a_cursor_from_a_link_parses_back() {
        let p = parse("limit=2").unwrap();
        let link = p.link(Some(Position::new(1, 3)));
        let next_query = link
            .split("<./messages?")
            .nth(2)
            .and_then(|rest| rest.split('>').next())
            .unwrap();
        let again = parse(next_query).unwrap();
        assert_eq!(again.cursor, Some(Position::new(1, 3)));
        assert_eq!(again.query().cursor, Some(Position::new(1, 3)));
    }

    #[test]
    fn until_attach_includes_the_attach_serial() {
        let p = parse("from_serial=000000000001-0000000000000004&direction=forwards").unwrap();
        assert_eq!(p.query().until, Some(Position::new(1, 4)));
    }

    #[test]
    fn message_ids_give_their_base() {
        assert_eq!(id_base_of("abc:0"), "abc");
        assert_eq!(id_base_of("conn:5:12"), "conn:5");
        assert_eq!(id_base_of("plain"), "plain");
        assert_eq!(id_base_of("a:b"), "a:b");
        assert_eq!(id_base_of("a:"), "a:");
    }
}
