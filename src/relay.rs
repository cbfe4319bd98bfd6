//! The public side: one listener for internet requests and agent connections, a registry of live
//! agent sessions per tunnel, and the proxy that turns each public request into a stream on one of
//! them.
//!
//! Flow: [`server`] accepts and terminates TLS → [`service`] validates and routes each request →
//! [`connect`] upgrades agent logins into [`session`]s held in the [`registry`], or [`proxy`]
//! forwards public requests over a session. Every error becomes an HTTP answer in [`error`].

mod connect;
mod edge_auth;
mod error;
mod proxy;
mod registry;
mod request;
mod routing;
mod server;
mod service;
mod session;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::relay::RelayConfig;

pub use error::ProxyError;
pub use routing::Route;

/// Run the relay on an already-bound listener until `shutdown` is cancelled, then drain in-flight
/// requests for at most the configured grace period.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = match &config.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(&files.cert, &files.key)
                .context("loading the relay's TLS certificate")?,
        )),
        None => None,
    };
    let state = Arc::new(service::RelayState::new(config));
    server::run(listener, tls, state, shutdown).await
}
