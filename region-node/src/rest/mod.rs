//! The REST API on the client port (protocol.md §7).
//!
//! - `response`: format negotiation, the Ably error shape and the browser envelope.
//! - `request`: query parameters and size-limited bodies.
//! - `auth`: API keys and tokens for channel endpoints, the admin token for the admin API.
//! - `channels`: publish, history and status of one channel.
//! - `tokens`: issuing tokens (`requestToken`) and revoking them (`revokeTokens`).
//! - `admin`: creating and deleting apps.
//!
//! Every answer, including unknown paths and wrong methods, uses Ably's error shape, so
//! ably-js always sees an error code.

mod admin;
pub(crate) mod auth;
mod channels;
mod presence;
mod request;
mod response;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::LINK;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

pub use response::error_response;
use response::Negotiation;

use crate::error::AblyError;
use crate::node::{now_ms, Node};
use crate::protocol::Format;

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

pub fn router() -> Router<Arc<Node>> {
    // The admin API gets no CORS headers: no web page may drive it from a browser.
    let admin = Router::new()
        .route("/apps", post(admin::create))
        .route("/apps/{app_id}", delete(admin::delete))
        .method_not_allowed_fallback(method_not_allowed);
    let client = Router::new()
        .route("/time", get(time))
        .route("/keys/{key_name}/requestToken", post(tokens::request_token))
        .route("/keys/{key_name}/revokeTokens", post(tokens::revoke_tokens))
        .route("/channels/{name}", get(channels::status))
        .route(
            "/channels/{name}/messages",
            get(channels::history).post(channels::publish),
        )
        .route("/channels/{name}/presence", get(presence::members))
        .route("/channels/{name}/presence/history", get(presence::history))
        .route("/presence", get(presence::batch))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors());
    client.merge(admin).fallback(not_found)
}

/// The server's clock, for clients that sign token requests (`queryTime`). Always
/// JSON, whatever the client accepts, as Ably does.
async fn time() -> Response {
    response::encoded(StatusCode::OK, Format::Json, &[now_ms()])
}

async fn not_found(negotiation: Negotiation, method: Method, uri: Uri) -> Response {
    // The path only: a query may hold a key.
    let error = AblyError::NotFound(format!("no endpoint {method} {}", uri.path()));
    error_response(negotiation.format, &error)
}

pub async fn method_not_allowed(negotiation: Negotiation) -> Response {
    error_response(negotiation.format, &AblyError::MethodNotAllowed)
}

/// ably-js in a browser sends credentials (`withCredentials`) whenever it sets an
/// `Authorization` header, and browsers refuse wildcards for such requests, so the
/// origin and headers are mirrored rather than answered with `*`.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([LINK, response::ERROR_CODE, response::ERROR_MESSAGE])
        .max_age(PREFLIGHT_MAX_AGE)
}

#[cfg(test)]
mod tests;
