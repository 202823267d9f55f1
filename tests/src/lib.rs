//! Test harness for Starling's integration tests: real `region-node` processes on
//! loopback, a raw WebSocket client that speaks both wire formats, and REST helpers.
//!
//! Every wait has a deadline and fails with context; nothing sleeps to synchronise.
//! A [`Node`] kills its process with SIGKILL when dropped, so a failing test never
//! leaves a server behind.
//!
//! - [`Node`]: start, restart and locate a node (`Node::start`, `Node::start_with`).
//! - [`Client`]: a WebSocket connection sending and receiving ProtocolMessages as
//!   `serde_json::Value`, whatever the wire format.
//! - [`Witness`]: a bystander subscriber that proves a node still serves others after
//!   some client misbehaved.
//! - [`federation`]: `region-node dev` started, described and cleaned up.
//! - [`dev`]: a region of several nodes started by `region-node dev`; SIGKILL one.
//! - [`global`]: a global master group of real processes, for nodes that use one.
//! - [`metrics`]: a process's `/metrics` scraped and summed by series and labels.
//! - [`rest`]: Basic auth, `Link` header parsing and MessagePack bodies for REST tests.
//! - [`tls`]: a test CA, certificates for the client TLS listener, and wss/https
//!   clients that trust that CA and report the certificate they were shown.
//! - [`token`]: signed TokenRequests, `requestToken` and `revokeTokens`.

pub mod client;
pub mod dev;
pub mod federation;
pub mod global;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod rest;
pub mod tls;
pub mod token;
pub mod wire;
pub mod witness;

use std::time::Duration;

pub use client::{Client, Frame};
pub use node::{run_to_exit, Node, NodeOptions};
pub use wire::{action, flags, Format};
pub use witness::Witness;

/// How long any single expected event may take. Generous, because a busy 2-core
/// machine running several nodes at once is slow; a correct server answers in
/// milliseconds, so only a failing test ever waits this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a node may take from spawn to writing its describe file.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Runs each listed `async fn name(format: Format) -> anyhow::Result<()>` once per
/// wire format, as the tests `json::name` and `msgpack::name`.
#[macro_export]
macro_rules! both_formats {
    ($($name:ident),* $(,)?) => {
        mod json {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Format::Json).await
                }
            )*
        }
        mod msgpack {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Format::Msgpack).await
                }
            )*
        }
    };
}
