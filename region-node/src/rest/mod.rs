//! The REST API on the client port (protocol.md §7).

use std::sync::Arc;

use axum::Router;

use crate::node::Node;

pub fn router() -> Router<Arc<Node>> {
    Router::new()
}
