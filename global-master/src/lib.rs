//! Starling's global master: the raft-replicated control plane that holds the regions
//! and their bridge addresses, every channel's home region, placement rules, apps and
//! their keys, and token revocations.
//!
//! - [`state`]: the replicated state machine as a plain, deterministic value (no I/O).
//! - [`store`]: openraft's log store and state machine over it, persisted with redb.
//! - [`network`]: openraft's RPCs to the other members over gRPC with mutual TLS.
//! - [`service`]: the gRPC `Raft` and `Control` services a member serves.
//! - [`api`]: what travels in the Control API's byte fields, and its encoding.
//! - [`client`]: a Control API client that follows the leader.
//! - [`member`], [`http`], [`server`], [`config`]: a running member, its HTTP endpoints
//!   (health, metrics), its startup and shutdown, and its configuration.
//! - [`membership`]: raft members added (learner, then voter) and removed by operators.
//! - [`timers`]: what only the leader does on a clock (home expiry, silent regions).
//! - [`operator`]: what the operator subcommands show and send.
//! - [`embedded`]: a one-member group inside a region node (the no-argument default).
//! - [`ca`], [`files`]: the cluster CA and certificates; atomic private files.
//!
//! The `global-master` binary (`src/main.rs`) runs a member and holds the operator
//! subcommands.

pub mod api;
pub mod ca;
pub mod client;
pub mod config;
pub mod embedded;
pub mod files;
pub mod http;
pub mod member;
pub mod membership;
pub mod network;
pub mod operator;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod timers;
