//! The agent's Prometheus metrics, served at `/metrics` on the inspector's address: requests by
//! status class, latency, bytes each way, whether the tunnel is up, and reconnects. Counted by
//! the inspector's capture, so they exist exactly when the inspector does.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::agent::AgentStatus;

/// Content type of [`AgentMetrics::encode`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A status class label: `1xx` … `5xx`, five values at most.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

/// Every metric of one agent.
pub struct AgentMetrics {
    registry: Registry,
    requests: Family<ClassLabel, Counter>,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    connected: Gauge,
    reconnects: Counter,
    /// Sessions already counted into `reconnects` (from [`AgentStatus::Connected`]'s count).
    counted_connects: Mutex<u64>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ponte_agent");
        let requests = Family::<ClassLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by the status class of the answer",
            requests.clone(),
        );
        // 5 ms … ~82 s: a local webhook handler is fast; a slow one should still show its tail.
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response body",
            duration.clone(),
        );
        let request_bytes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "request_bytes",
            "Request body bytes passed to the upstream",
            request_bytes.clone(),
        );
        let response_bytes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "response_bytes",
            "Response body bytes passed back to the relay",
            response_bytes.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "tunnel_connected",
            "1 while a session with the relay is up",
            connected.clone(),
        );
        let reconnects = Counter::<u64, AtomicU64>::default();
        registry.register(
            "reconnects",
            "Sessions opened after the first (the tunnel was lost and came back)",
            reconnects.clone(),
        );
        AgentMetrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            connected,
            reconnects,
            counted_connects: Mutex::new(0),
        }
    }

    /// An answer with `status` went back.
    pub fn response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&ClassLabel { class }).inc();
    }

    /// An exchange ended after `took`.
    pub fn finished(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// Body bytes went past, towards the upstream (`request`) or back.
    pub fn bytes(&self, request: bool, n: usize) {
        let c = if request {
            &self.request_bytes
        } else {
            &self.response_bytes
        };
        c.inc_by(n as u64);
    }

    /// Bring the tunnel gauges up to date with the agent's state (at each scrape).
    pub fn observe_status(&self, status: &AgentStatus) {
        match status {
            AgentStatus::Connected { connects, .. } => {
                self.connected.set(1);
                let mut counted = self.counted_connects.lock().unwrap_or_else(|p| p.into_inner());
                // The first session is a connect, not a reconnect.
                let reconnects = connects.saturating_sub(1);
                if reconnects > *counted {
                    self.reconnects.inc_by(reconnects - *counted);
                    *counted = reconnects;
                }
            }
            _ => {
                self.connected.set(0);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        text
    }
}
