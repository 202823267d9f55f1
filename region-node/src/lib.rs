//! Starling's region node: an Ably-protocol realtime and REST edge.
//!
//! Start with `docs/architecture.md` at the repository root for the code map.

pub mod apps;
pub mod auth;
pub mod bridge;
pub mod capability;
pub mod channel_client;
pub mod channel_master;
pub mod channels;
pub mod client_tls;
pub mod config;
pub mod connection;
pub mod connection_key;
pub mod control;
pub mod dashboard;
pub mod data_dir;
pub mod describe;
pub mod error;
pub mod health;
#[cfg(test)]
mod hostile_input;
pub mod inbound_rate;
pub mod launcher;
pub mod logging;
pub mod mesh;
pub mod node;
pub mod observe;
pub mod outbox;
pub mod position;
pub mod presence;
pub mod protocol;
pub mod redact;
pub mod region;
pub mod rest;
pub mod rewind;
pub mod ring;
pub mod server;
pub mod tls;
pub mod ws;
