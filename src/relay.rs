//! The public side: one listener for internet requests and agent connections, a registry of live
//! agent sessions per tunnel, and the paths that turn each public request into a stream on one of
//! them or a delivery in the durable queue.
//!
//! One public request: [`server`] accepts and terminates TLS → [`service`] finds the authority and
//! routes → [`tunnel_request`] checks edge auth and the declared size, then decides once how the
//! request is delivered: live over a session by [`proxy`], committed by [`queue`] (`202`), or live
//! with the queue as the fallback, or passed by [`forward`] to another relay node of the cluster
//! that holds the tunnel's agent. Streams are built and answers relayed in [`stream`]; every
//! error becomes an HTTP answer in [`error`].
//!
//! Agents: [`connect`] upgrades agent logins into [`session`]s held in the [`registry`]. Queued
//! deliveries: a [`delivery`] worker per tunnel sends them through the agent under the [`retry`]
//! policy, and [`admin`] lets an operator list, replay and purge them, as does the [`console`]'s
//! web page. What all of these share
//! (configuration, registry, queues) is in [`state`].
//!
//! Watching it: every public request gets one line in the [`access`] log and is counted in the
//! [`metrics`]; [`monitor`] serves `/_ponte/ready` and the metrics, and [`status`] is the
//! operator's overview behind `ponte status` and the console's tunnels panel, with each
//! tunnel's requests per minute from its [`rate`] counter.

mod access;
mod admin;
mod bearer;
mod connect;
mod console;
mod delivery;
mod edge_auth;
mod error;
mod forward;
mod lease;
pub mod metrics;
mod monitor;
mod proxy;
mod proxy_protocol;
mod queue;
mod rate;
mod registry;
mod request;
pub mod retry;
mod routing;
mod server;
mod service;
mod session;
mod slots;
mod state;
mod status;
mod store_watch;
mod stream;
mod tunnel_request;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::relay::RelayConfig;

pub use error::ProxyError;
pub use routing::Route;

pub use access::TARGET as ACCESS_LOG_TARGET;

/// Run the relay on an already-bound listener until `shutdown` is cancelled, then drain in-flight
/// requests for at most the configured grace period. `metrics_listen`, when configured, is bound
/// here.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_metrics(listener, None, config, shutdown).await
}

/// [`serve`], with the `metrics_listen` listener already bound by the caller (tests bind port 0
/// and read the address back).
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics_listener = match (metrics_listener, config.metrics_listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on metrics_listen {addr} (is another program using the port?)")
        })?),
        (None, None) => None,
    };
    let metrics = (config.metrics_enabled() || metrics_listener.is_some())
        .then(|| Arc::new(metrics::RelayMetrics::new(&config)));
    let tls = match &config.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(&files.cert, &files.key)
                .context("loading the relay's TLS certificate")?,
        )),
        None => None,
    };
    let queues = match &config.store {
        Some(url) => {
            let options = crate::store::OpenOptions {
                max_bytes: Some(config.store_max_size.0),
                metrics: metrics.as_ref().map(|m| m.store.clone()),
                ..Default::default()
            };
            let store = crate::store::open(url, options)
                .await
                .context("opening the queue store (`store:` in relay.yaml)")?;
            Some(Arc::new(state::Queues::new(store, &config)))
        }
        None => None,
    };
    let cluster = match (&config.cluster, &config.store) {
        (Some(c), Some(crate::config::relay::StoreUrl::Postgres(url))) => Some(Arc::new(
            crate::cluster::Cluster::new(c, url)
                .context("setting up the cluster (`cluster:` in relay.yaml)")?,
        )),
        _ => None,
    };
    let state = Arc::new(
        state::RelayState::new(config, queues, metrics, shutdown.child_token()).with_cluster(cluster),
    );
    // The node's rows go as soon as it starts draining: its listener closes, so other nodes
    // could not forward to it any more.
    let cluster_stop = shutdown.child_token();
    let membership = state.cluster.clone().map(|c| {
        tracing::info!(node = %c.node_id, advertise = %c.advertise, "joining the relay cluster");
        let tunnels = state
            .registry
            .tunnels()
            .map(|t| (t.name.to_string(), t.watch_connected()))
            .collect();
        tokio::spawn(crate::cluster::membership::run(c, tunnels, cluster_stop.clone()))
    });
    // The metrics address outlives the drain, so probes see `/ready` turn 503.
    let monitor_stop = CancellationToken::new();
    let monitor =
        metrics_listener.map(|l| tokio::spawn(monitor::serve(l, state.clone(), monitor_stop.clone())));
    let watch = state
        .queues
        .clone()
        .map(|q| tokio::spawn(store_watch::run(q, monitor_stop.clone())));
    let workers = delivery::start(&state, shutdown.clone());
    let result = server::run(listener, tls, state, shutdown).await;
    cluster_stop.cancel();
    if let Some(task) = membership {
        let _ = task.await;
    }
    // Sessions are closed by now, so in-flight attempts end quickly; bound the wait anyway.
    if tokio::time::timeout(WORKER_STOP, workers.wait()).await.is_err() {
        tracing::warn!(
            "delivery workers did not stop in time; their leases are taken back at the next start"
        );
    }
    monitor_stop.cancel();
    for task in [monitor, watch].into_iter().flatten() {
        let _ = task.await;
    }
    result
}

/// Longest wait for delivery workers to record their last attempts at shutdown.
const WORKER_STOP: std::time::Duration = std::time::Duration::from_secs(5);
