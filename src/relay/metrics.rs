//! The relay's Prometheus metrics (served by [`super::monitor`]). They exist only when something
//! can read them (`metrics_token` or `metrics_listen`); otherwise the request path skips them.
//!
//! Label cardinality is bounded by construction: every per-tunnel series is created at start for
//! the tunnels in the configuration, and requests that reach no configured tunnel count under
//! `tunnel=""` (Prometheus reads an empty label as no label). Nothing a sender writes becomes a
//! label value.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::registry::Registry as Tunnels;
use crate::config::relay::{RelayConfig, TunnelName};
use crate::store::{QueueStats, StoreMetrics};

/// Status classes, indexed by the first digit minus one.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A limit a peer ran into, named by the configuration key that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// 413: a body over `max_body_bytes` (global, per tunnel, or the queue's).
    MaxBodyBytes,
    /// 431: request headers over `max_header_bytes` (on HTTP/2, blocks over 4× the limit are refused
    /// by the HTTP/2 layer before the relay sees them, and not counted).
    MaxHeaderBytes,
    /// 408: a sender paused longer than `body_idle_timeout` inside its body.
    BodyIdleTimeout,
    /// 429: too many failed logins (agent or admin) from one address.
    MaxFailedLogins,
    /// 429: a tunnel already holds `max_agents_per_tunnel` agent connections.
    MaxAgentsPerTunnel,
    /// A connection refused at `max_connections`.
    MaxConnections,
}

impl Limit {
    const ALL: [Limit; 6] = [
        Limit::MaxBodyBytes,
        Limit::MaxHeaderBytes,
        Limit::BodyIdleTimeout,
        Limit::MaxFailedLogins,
        Limit::MaxAgentsPerTunnel,
        Limit::MaxConnections,
    ];

    fn key(self) -> &'static str {
        match self {
            Limit::MaxBodyBytes => "max_body_bytes",
            Limit::MaxHeaderBytes => "max_header_bytes",
            Limit::BodyIdleTimeout => "body_idle_timeout",
            Limit::MaxFailedLogins => "max_failed_logins_per_minute",
            Limit::MaxAgentsPerTunnel => "max_agents_per_tunnel",
            Limit::MaxConnections => "max_connections",
        }
    }
}

/// Why an agent login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// No bearer token.
    TokenMissing,
    /// A token no tunnel has.
    TokenRejected,
    /// The tunnel is at `max_agents_per_tunnel`.
    TooManyAgents,
    /// The address is over its failed-login budget.
    Throttled,
}

impl LoginRefusal {
    const ALL: [LoginRefusal; 4] = [
        LoginRefusal::TokenMissing,
        LoginRefusal::TokenRejected,
        LoginRefusal::TooManyAgents,
        LoginRefusal::Throttled,
    ];

    fn reason(self) -> &'static str {
        match self {
            LoginRefusal::TokenMissing => "token_missing",
            LoginRefusal::TokenRejected => "token_rejected",
            LoginRefusal::TooManyAgents => "too_many_agents",
            LoginRefusal::Throttled => "throttled",
        }
    }
}

/// How one delivery attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered,
    /// Will be retried (the upstream answered badly or too slowly).
    Retry,
    /// Cut by the tunnel; will be retried.
    Interrupted,
    /// Given up.
    Failed,
}

impl AttemptOutcome {
    const ALL: [AttemptOutcome; 4] = [
        AttemptOutcome::Delivered,
        AttemptOutcome::Retry,
        AttemptOutcome::Interrupted,
        AttemptOutcome::Failed,
    ];

    /// The label value (also the access log's `outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabel {
    tunnel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tunnel: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    tunnel: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    tunnel: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s: a local upstream answering at once to one at the response timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The series of one tunnel (or of requests no tunnel took), resolved once at start so the
/// request path never hashes a label set.
pub struct TunnelMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    round_trip: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    attempts: [Counter; 4],
    forwarded: Counter,
}

impl TunnelMetrics {
    /// Count one finished public request.
    pub fn request(&self, status: u16, elapsed: Duration, bytes_in: u64, bytes_out: u64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
    }

    /// Count one public request passed to another relay node.
    pub fn forwarded(&self) {
        self.forwarded.inc();
    }

    /// Time from opening a stream on an agent session to the response headers.
    pub fn round_trip(&self, since: Instant) {
        self.round_trip.observe(since.elapsed().as_secs_f64());
    }

    /// Count one delivery attempt.
    pub fn attempt(&self, outcome: AttemptOutcome) {
        let i = AttemptOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.attempts[i].inc();
    }
}

/// Every metric of one relay and the registry that encodes them.
pub struct RelayMetrics {
    registry: Registry,
    tunnels: HashMap<TunnelName, TunnelMetrics>,
    unrouted: TunnelMetrics,
    agents: Family<TunnelLabel, Gauge>,
    queue: Family<QueueLabels, Gauge>,
    oldest_pending: Family<TunnelLabel, FloatGauge>,
    logins_refused: Family<ReasonLabel, Counter>,
    limits: Family<LimitLabel, Counter>,
    connections_open: Gauge,
    connections_refused: Counter,
    /// The store's own histograms, handed to it when it opens.
    pub store: StoreMetrics,
}

impl RelayMetrics {
    /// Register every metric, with one series per configured tunnel.
    pub fn new(config: &RelayConfig) -> Self {
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::<TunnelLabel>::new_with_constructor(latency_histogram);
        let round_trip = HistogramFamily::<TunnelLabel>::new_with_constructor(latency_histogram);
        let bytes_in = Family::<TunnelLabel, Counter>::default();
        let bytes_out = Family::<TunnelLabel, Counter>::default();
        let attempts = Family::<AttemptLabels, Counter>::default();
        let forwarded = Family::<TunnelLabel, Counter>::default();
        let agents = Family::<TunnelLabel, Gauge>::default();
        let queue = Family::<QueueLabels, Gauge>::default();
        let oldest_pending = Family::<TunnelLabel, FloatGauge>::default();
        let logins_refused = Family::<ReasonLabel, Counter>::default();
        let limits = Family::<LimitLabel, Counter>::default();
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        let info = Family::<VersionLabel, Gauge>::default();

        r.register(
            "ponte_requests",
            "Public requests answered, by tunnel (empty: no configured tunnel) and status class",
            requests.clone(),
        );
        r.register_with_unit(
            "ponte_request_duration",
            "Time from a public request's arrival to the end of its response body",
            Unit::Seconds,
            duration.clone(),
        );
        r.register_with_unit(
            "ponte_agent_round_trip",
            "Time from opening a stream on an agent connection to the response headers (live requests and delivery attempts)",
            Unit::Seconds,
            round_trip.clone(),
        );
        r.register_with_unit(
            "ponte_request_body",
            "Request body bytes received from public senders",
            Unit::Bytes,
            bytes_in.clone(),
        );
        r.register_with_unit(
            "ponte_response_body",
            "Response body bytes sent to public senders",
            Unit::Bytes,
            bytes_out.clone(),
        );
        r.register(
            "ponte_forwarded_requests",
            "Public requests passed to another relay node that holds the tunnel's agent sessions",
            forwarded.clone(),
        );
        r.register(
            "ponte_agents_connected",
            "Agent connections registered per tunnel",
            agents.clone(),
        );
        r.register(
            "ponte_agent_logins_refused",
            "Agent logins refused, by reason",
            logins_refused.clone(),
        );
        r.register(
            "ponte_queue_deliveries",
            "Deliveries in the durable queue by tunnel and state (pending includes in_flight)",
            queue.clone(),
        );
        r.register_with_unit(
            "ponte_queue_oldest_pending_age",
            "How long the oldest pending delivery of a tunnel has waited (0: none pending)",
            Unit::Seconds,
            oldest_pending.clone(),
        );
        r.register(
            "ponte_delivery_attempts",
            "Delivery attempts of queued requests, by tunnel and outcome",
            attempts.clone(),
        );
        r.register(
            "ponte_connections_open",
            "Client connections open (public senders and agents)",
            connections_open.clone(),
        );
        r.register(
            "ponte_connections_refused",
            "Connections refused because max_connections were open",
            connections_refused.clone(),
        );
        r.register(
            "ponte_limits_hit",
            "Requests or connections stopped by a limit, named by its configuration key",
            limits.clone(),
        );
        r.register("ponte_relay", "This relay's version (always 1)", info.clone());
        info.get_or_create(&VersionLabel {
            version: crate::VERSION,
        })
        .set(1);
        let store = StoreMetrics::register(&mut r);

        let resolve = |tunnel: &str| TunnelMetrics {
            requests: CLASSES.map(|class| {
                requests
                    .get_or_create(&RequestLabels {
                        tunnel: tunnel.to_string(),
                        class,
                    })
                    .clone()
            }),
            duration: duration.get_or_create(&label(tunnel)).clone(),
            round_trip: round_trip.get_or_create(&label(tunnel)).clone(),
            bytes_in: bytes_in.get_or_create(&label(tunnel)).clone(),
            bytes_out: bytes_out.get_or_create(&label(tunnel)).clone(),
            attempts: AttemptOutcome::ALL.map(|o| {
                attempts
                    .get_or_create(&AttemptLabels {
                        tunnel: tunnel.to_string(),
                        outcome: o.as_str(),
                    })
                    .clone()
            }),
            forwarded: forwarded.get_or_create(&label(tunnel)).clone(),
        };
        let tunnels = config
            .tunnels
            .keys()
            .map(|name| (name.clone(), resolve(name.as_str())))
            .collect();
        let unrouted = resolve("");
        for name in config.tunnels.keys() {
            let _ = agents.get_or_create_owned(&label(name.as_str()));
            if config.store.is_some() {
                for state in ["pending", "in_flight", "failed"] {
                    let _ = queue.get_or_create_owned(&QueueLabels {
                        tunnel: name.to_string(),
                        state,
                    });
                }
                let _ = oldest_pending.get_or_create_owned(&label(name.as_str()));
            }
        }
        for reason in LoginRefusal::ALL {
            let _ = logins_refused.get_or_create_owned(&ReasonLabel {
                reason: reason.reason(),
            });
        }
        for limit in Limit::ALL {
            let _ = limits.get_or_create_owned(&LimitLabel { limit: limit.key() });
        }
        RelayMetrics {
            registry: r,
            tunnels,
            unrouted,
            agents,
            queue,
            oldest_pending,
            logins_refused,
            limits,
            connections_open,
            connections_refused,
            store,
        }
    }

    /// The series of a configured tunnel; requests that reached none use [`Self::unrouted`].
    pub fn tunnel(&self, name: &TunnelName) -> &TunnelMetrics {
        self.tunnels.get(name).unwrap_or(&self.unrouted)
    }

    /// The series of requests that reached no configured tunnel.
    pub fn unrouted(&self) -> &TunnelMetrics {
        &self.unrouted
    }

    /// Count a limit hit.
    pub fn limit_hit(&self, limit: Limit) {
        self.limits
            .get_or_create(&LimitLabel { limit: limit.key() })
            .inc();
    }

    /// Count a refused agent login.
    pub fn login_refused(&self, why: LoginRefusal) {
        self.logins_refused
            .get_or_create(&ReasonLabel { reason: why.reason() })
            .inc();
        if why == LoginRefusal::TooManyAgents {
            self.limit_hit(Limit::MaxAgentsPerTunnel);
        }
    }

    /// Count an accepted connection; the returned guard counts it closed when dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    /// Count a connection refused at the cap.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
        self.limit_hit(Limit::MaxConnections);
    }

    /// Set the gauges that are read from the relay's state rather than counted as things happen:
    /// agents per tunnel, and (with a store) the queue's depth and oldest pending age.
    pub fn refresh(&self, tunnels: &Tunnels, queue: Option<&QueueStats>) {
        for t in tunnels.tunnels() {
            self.agents
                .get_or_create(&label(t.name.as_str()))
                .set(t.connected_count() as i64);
            let Some(stats) = queue else { continue };
            let counts = stats.tunnels.get(t.name.as_str()).cloned().unwrap_or_default();
            for (state, n) in [
                ("pending", counts.pending),
                ("in_flight", counts.in_flight),
                ("failed", counts.failed),
            ] {
                let labels = QueueLabels {
                    tunnel: t.name.to_string(),
                    state,
                };
                self.queue.get_or_create(&labels).set(n as i64);
            }
            let age = counts.oldest_pending_age.unwrap_or_default();
            self.oldest_pending
                .get_or_create(&label(t.name.as_str()))
                .set(age.as_secs_f64());
        }
    }

    /// Every metric in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        text
    }
}

/// Content type of [`RelayMetrics::encode`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn label(tunnel: &str) -> TunnelLabel {
    TunnelLabel {
        tunnel: tunnel.to_string(),
    }
}

/// An open connection as counted by `ponte_connections_open`; dropping it counts it closed.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RelayConfig {
        RelayConfig::from_str_with_env(
            "metrics_listen: 127.0.0.1:0\ntunnels:\n  a:\n    token: 0123456789abcdef0123\n",
            "relay.yaml",
            &|_| None,
        )
        .unwrap()
    }

    #[test]
    fn every_series_exists_at_start_and_unknown_tunnels_share_one() {
        let m = RelayMetrics::new(&config());
        let before = m.encode();
        // Requests for tunnels the config does not name all count under the empty label.
        let unknown = TunnelName::parse("nope").unwrap();
        m.tunnel(&unknown).request(404, Duration::from_millis(1), 0, 10);
        m.tunnel(&TunnelName::parse("a").unwrap())
            .request(202, Duration::from_millis(1), 5, 10);
        let after = m.encode();
        assert_eq!(before.lines().count(), after.lines().count(), "{after}");
        assert!(
            after.contains("ponte_requests_total{tunnel=\"\",class=\"4xx\"} 1"),
            "{after}"
        );
        assert!(
            after.contains("ponte_requests_total{tunnel=\"a\",class=\"2xx\"} 1"),
            "{after}"
        );
        assert!(
            after.contains("ponte_limits_hit_total{limit=\"max_connections\"} 0"),
            "{after}"
        );
    }
}
