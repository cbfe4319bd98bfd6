//! Ponte: a tunnel for webhooks.
//!
//! An agent on a private machine dials out to a public relay over TLS, upgrades that connection to
//! reversed HTTP/2 (the agent is the HTTP/2 server, the relay the client), and serves every public
//! request as one stream to a local upstream. `main.rs` only parses the command line; everything
//! else lives here so the tests in `tests/` can start relays and agents in process.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod body;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod exit;
pub mod hooks;
pub mod inspect;
pub mod locale;
pub mod logging;
pub mod protocol;
pub mod relay;
pub mod shutdown;
pub mod store;
pub mod tls;

/// The error type carried by streamed bodies: any cause, sendable across tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The version this build announces to its peer in the connect handshake.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
