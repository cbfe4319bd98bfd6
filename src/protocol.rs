//! The wire contract (v1) both sides share.
//!
//! Roles are reversed on the tunnel, as in cloudflared's HTTP/2 transport: the **agent dials** the
//! relay (TCP, optional proxy CONNECT, TLS), sends an HTTP/1.1 `GET /_ponte/v1/connect` with
//! `Upgrade: ponte-h2`, and after the relay's `101` it becomes the **HTTP/2 server** on that
//! connection. The **relay is the HTTP/2 client**: every public request is one stream it opens
//! towards the agent. Keeping these constants and settings in one place is what keeps the two ends
//! compatible.

pub mod admin;
pub mod cluster;
pub mod handshake;
pub mod headers;
pub mod tunnel;

pub use handshake::*;
