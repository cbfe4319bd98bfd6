//! The console's HTML pages (askama templates in `templates/console_*.html`). Delivery paths,
//! headers and bodies come from anyone on the internet: the templates escape every value.

use std::time::{Duration, SystemTime};

use askama::Template;

use super::backend::{Backend, ListQuery};
use crate::inspect::body_view::{BODY_CAP, BodyEnd, Captured};
use crate::inspect::i18n::Tr;
use crate::inspect::page::{BodyPart, Chrome, ago, lang_links, span};
use crate::protocol::admin::{
    AttemptOutcome, ClusterStatus, DeliveryDetail, DeliverySummary, Status, TunnelStatus,
};

/// Deliveries on the overview.
const PAGE: usize = 100;
/// Seconds between reloads of the overview.
const REFRESH: u32 = 5;

fn chrome(t: Tr, title: String, refresh: Option<u32>) -> Chrome {
    Chrome {
        title,
        site: t.s("console.site"),
        home: "/_ponte/console/",
        css: "/_ponte/console/style.css",
        refresh,
        langs: lang_links(t.lang()),
    }
}

/// The login form.
#[derive(Template)]
#[template(path = "console_login.html")]
pub struct LoginPage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// Why the last try failed.
    pub error: Option<String>,
}

impl LoginPage {
    /// The form, with an error if there is one.
    pub fn new(t: Tr, error: Option<String>) -> Self {
        LoginPage {
            c: chrome(t, t.s("console.login_title").to_string(), None),
            t,
            error,
        }
    }
}

/// A message.
#[derive(Template)]
#[template(path = "console_message.html")]
pub struct MessagePage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// Heading.
    pub heading: String,
    /// Text.
    pub message: String,
}

impl MessagePage {
    /// A page saying `message`.
    pub fn new(t: Tr, heading: String, message: String) -> Self {
        MessagePage {
            c: chrome(t, heading.clone(), None),
            t,
            heading,
            message,
        }
    }
}

/// A tunnel row.
pub struct TunnelRow {
    /// Name.
    pub name: String,
    /// Delivery mode in words.
    pub mode: String,
    /// Agents online.
    pub agents: Vec<AgentRow>,
    /// When one was last seen, in words (shown while none is online).
    pub last_seen: Option<String>,
    /// Requests in the last minute.
    pub rate: u64,
    /// Its queue, when the relay has a store and could read it.
    pub queue: Option<QueueCell>,
    /// Pending deliveries and no agent.
    pub waiting: bool,
}

/// An agent in a tunnel row.
pub struct AgentRow {
    /// `ip:port` as the relay sees it.
    pub address: String,
    /// The version it announced.
    pub version: Option<String>,
    /// Since when, in words (`connected 5 min ago`).
    pub since: String,
    /// Since when, as the relay's RFC 3339 time (the tooltip).
    pub since_exact: String,
    /// Requests in flight on its connection.
    pub in_flight: u32,
}

/// A tunnel's queue depth, in words.
pub struct QueueCell {
    /// `3 pending`.
    pub pending: String,
    /// `1 sending now`.
    pub in_flight: String,
    /// `2 failed`.
    pub failed: String,
    /// `oldest waiting 12 min`, while something is pending.
    pub oldest: Option<String>,
}

/// `then` as `5 min ago` by the relay's clock `now`; the text as it is if either is not a time.
fn ago_text(t: Tr, now: Option<SystemTime>, then: &str) -> String {
    match (now, humantime::parse_rfc3339_weak(then).ok()) {
        (Some(now), Some(then)) => ago(t, now, then),
        _ => then.to_string(),
    }
}

impl TunnelRow {
    fn new(t: Tr, now: Option<SystemTime>, v: &TunnelStatus) -> Self {
        let mode = match v.delivery.as_str() {
            "direct" => t.s("mode.direct").to_string(),
            "queue" => t.s("mode.queue").to_string(),
            "fallback" => t.s("mode.fallback").to_string(),
            other => other.to_string(),
        };
        let queue = v.queue.as_ref().map(|q| QueueCell {
            pending: t.f1("console.pending_n", q.pending),
            in_flight: t.f1("console.in_flight_n", q.in_flight),
            failed: t.f1("console.failed_n", q.failed),
            oldest: q
                .oldest_pending_age_secs
                .filter(|_| q.pending > 0)
                .map(|age| t.f1("console.oldest", span(Duration::from_secs(age)))),
        });
        let last_seen = match (&v.last_seen, v.agents.is_empty()) {
            (_, false) => None,
            (Some(seen), true) => Some(t.f1("console.last_seen", ago_text(t, now, seen))),
            (None, true) => Some(t.s("console.never_seen").to_string()),
        };
        TunnelRow {
            name: v.name.clone(),
            mode,
            agents: v
                .agents
                .iter()
                .map(|a| AgentRow {
                    address: a.address.clone(),
                    version: a.version.clone(),
                    since: t.f1("console.since", ago_text(t, now, &a.connected_since)),
                    since_exact: a.connected_since.clone(),
                    in_flight: a.streams_in_use,
                })
                .collect(),
            last_seen,
            rate: v.requests_per_minute,
            queue,
            waiting: v.waiting_for_agent(),
        }
    }
}

/// The cluster panel: every relay node of the cluster (shown only with `cluster:`).
pub struct NodesPanel {
    /// The nodes, by id.
    pub nodes: Vec<NodeRow>,
    /// Why they could not be read.
    pub error: Option<String>,
}

/// A relay node row.
pub struct NodeRow {
    /// `cluster.node_id`.
    pub id: String,
    /// `cluster.advertise`.
    pub advertise: String,
    /// It is the node serving this page.
    pub this: bool,
    /// Its last heartbeat, in words (`5 s ago`, by the database's clock).
    pub heartbeat: String,
    /// Its last heartbeat, RFC 3339 (the tooltip).
    pub heartbeat_exact: String,
    /// Silent for longer than its entries live: no node forwards to it.
    pub silent: bool,
    /// The tunnels it holds agents of, comma-separated (or `none`).
    pub tunnels: String,
}

impl NodesPanel {
    fn new(t: Tr, c: &ClusterStatus) -> Self {
        let nodes = c
            .nodes
            .iter()
            .map(|n| NodeRow {
                id: n.id.clone(),
                advertise: n.advertise.clone(),
                this: n.id == c.node_id,
                heartbeat: t.f1("time.ago", span(Duration::from_secs(n.heartbeat_age_secs))),
                heartbeat_exact: n.last_heartbeat.clone(),
                silent: Duration::from_secs(n.heartbeat_age_secs) > crate::cluster::ENTRY_TTL,
                tunnels: if n.tunnels.is_empty() {
                    t.s("console.no_node_tunnels").to_string()
                } else {
                    n.tunnels.join(", ")
                },
            })
            .collect();
        NodesPanel {
            nodes,
            error: c.error.clone(),
        }
    }
}

/// A delivery row.
pub struct DeliveryRow {
    /// Id.
    pub id: String,
    /// Received at.
    pub received: String,
    /// Tunnel.
    pub tunnel: String,
    /// Method.
    pub method: String,
    /// Path and query (the sender's text, escaped by the template).
    pub path: String,
    /// `pending`, `delivered`, `failed` (a CSS class).
    pub status: String,
    /// The state in words.
    pub state: String,
    /// Attempts.
    pub attempts: u32,
    /// The last status and error.
    pub last: String,
}

fn state_words(t: Tr, d: &DeliverySummary) -> String {
    let base = match d.status {
        Status::Pending => t.s("status.pending"),
        Status::Delivered => t.s("status.delivered"),
        Status::Failed => t.s("status.failed"),
    };
    if d.in_flight {
        format!("{base} ({})", t.s("console.in_flight"))
    } else {
        base.to_string()
    }
}

fn last_result(d: &DeliverySummary) -> String {
    match (d.last_status, &d.last_error) {
        (Some(s), Some(e)) => format!("{s} · {e}"),
        (Some(s), None) => s.to_string(),
        (None, Some(e)) => e.clone(),
        (None, None) => "–".to_string(),
    }
}

impl DeliveryRow {
    fn new(t: Tr, d: &DeliverySummary) -> Self {
        DeliveryRow {
            id: d.id.clone(),
            received: d.received_at.clone(),
            tunnel: d.tunnel.clone(),
            method: d.method.clone(),
            path: d.path.clone(),
            status: d.status.as_str().to_string(),
            state: state_words(t, d),
            attempts: d.attempts,
            last: last_result(d),
        }
    }
}

/// The console's main page: tunnels, then deliveries.
#[derive(Template)]
#[template(path = "console_overview.html")]
pub struct OverviewPage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// The form token.
    pub csrf: String,
    /// What the last action did.
    pub notice: Option<String>,
    /// Tunnels.
    pub tunnels: Vec<TunnelRow>,
    /// The relay nodes, when this relay is one of a cluster.
    pub nodes: Option<NodesPanel>,
    /// The relay is shutting down.
    pub draining: bool,
    /// Why the queue counts could not be read.
    pub queue_error: Option<String>,
    /// Tunnel names for the filter.
    pub tunnel_names: Vec<String>,
    /// The relay has a store.
    pub has_store: bool,
    /// (value, label) of the state filter.
    pub states: Vec<(String, String)>,
    /// The tunnel filtered on (empty: all).
    pub filter_tunnel: String,
    /// The state filtered on (empty: all).
    pub filter_status: String,
    /// Deliveries.
    pub rows: Vec<DeliveryRow>,
    /// Why the list could not be read.
    pub list_error: Option<String>,
}

impl OverviewPage {
    /// Read what the page shows from `backend`.
    pub async fn build(
        t: Tr,
        backend: &dyn Backend,
        tunnel: &str,
        status: &str,
        csrf: String,
        notice: Option<String>,
    ) -> Self {
        let overview = backend.status().await;
        let now = humantime::parse_rfc3339_weak(&overview.status.now).ok();
        let tunnel_names: Vec<String> = overview.status.tunnels.iter().map(|v| v.name.clone()).collect();
        // Only names the relay knows are used as filters; anything else is "all".
        let filter_tunnel = if tunnel_names.iter().any(|n| n == tunnel) {
            tunnel.to_string()
        } else {
            String::new()
        };
        let status = Status::parse(status);
        let (rows, list_error) = if backend.has_store() {
            let query = ListQuery {
                tunnel: (!filter_tunnel.is_empty()).then(|| filter_tunnel.clone()),
                status,
                limit: PAGE,
            };
            match backend.list(query).await {
                Ok(list) => (
                    list.deliveries.iter().map(|d| DeliveryRow::new(t, d)).collect(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(e.to_string())),
            }
        } else {
            (Vec::new(), None)
        };
        let states = [
            ("", t.s("filter.all")),
            ("pending", t.s("status.pending")),
            ("delivered", t.s("status.delivered")),
            ("failed", t.s("status.failed")),
        ]
        .iter()
        .map(|(v, l)| (v.to_string(), l.to_string()))
        .collect();
        OverviewPage {
            c: chrome(t, t.s("console.site").to_string(), Some(REFRESH)),
            t,
            csrf,
            notice,
            tunnels: overview
                .status
                .tunnels
                .iter()
                .map(|v| TunnelRow::new(t, now, v))
                .collect(),
            nodes: overview.status.cluster.as_ref().map(|c| NodesPanel::new(t, c)),
            draining: overview.status.draining,
            queue_error: overview.queue_error,
            tunnel_names,
            has_store: backend.has_store(),
            states,
            filter_tunnel,
            filter_status: status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            rows,
            list_error,
        }
    }
}

/// What the detail page shows of a delivery.
pub struct DeliveryPart {
    /// Id.
    pub id: String,
    /// Tunnel.
    pub tunnel: String,
    /// CSS class.
    pub status: String,
    /// State in words.
    pub state: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Received.
    pub received: String,
    /// Next attempt, or `–`.
    pub next: String,
    /// Attempts made.
    pub attempts: u32,
}

/// One attempt row.
pub struct AttemptRow {
    /// Number.
    pub number: u32,
    /// Started.
    pub started: String,
    /// Outcome in words.
    pub outcome: String,
    /// Upstream status or `–`.
    pub status: String,
    /// Error or `–`.
    pub error: String,
}

/// `/_ponte/console/deliveries/{id}`.
#[derive(Template)]
#[template(path = "console_detail.html")]
pub struct DetailPage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// The form token.
    pub csrf: String,
    /// What the last action did.
    pub notice: Option<String>,
    /// The delivery.
    pub d: DeliveryPart,
    /// Its attempts.
    pub attempts: Vec<AttemptRow>,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: BodyPart,
}

impl DetailPage {
    /// The page of `detail`.
    pub fn new(t: Tr, detail: DeliveryDetail, csrf: String, notice: Option<String>) -> Self {
        let s = &detail.summary;
        let d = DeliveryPart {
            id: s.id.clone(),
            tunnel: s.tunnel.clone(),
            status: s.status.as_str().to_string(),
            state: state_words(t, s),
            method: s.method.clone(),
            path: s.path.clone(),
            received: s.received_at.clone(),
            next: s.next_attempt_at.clone().unwrap_or_else(|| "–".to_string()),
            attempts: s.attempts,
        };
        let attempts = detail
            .attempts_log
            .iter()
            .map(|a| AttemptRow {
                number: a.number,
                started: a.started_at.clone(),
                outcome: match a.outcome {
                    AttemptOutcome::Delivered => t.s("outcome.delivered"),
                    AttemptOutcome::Retry => t.s("outcome.retry"),
                    AttemptOutcome::Interrupted => t.s("outcome.interrupted"),
                    AttemptOutcome::Failed => t.s("outcome.failed"),
                }
                .to_string(),
                status: a.status.map_or_else(|| "–".to_string(), |s| s.to_string()),
                error: a.error.clone().unwrap_or_else(|| "–".to_string()),
            })
            .collect();
        let mut header_map = http::HeaderMap::new();
        let headers: Vec<(String, String)> = detail
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        for h in &detail.headers {
            if h.name.eq_ignore_ascii_case("content-type")
                && let Ok(v) = http::HeaderValue::from_str(&h.value)
            {
                header_map.insert(http::header::CONTENT_TYPE, v);
            }
        }
        // A stored body may be megabytes: show its first bytes, as the inspector does.
        let captured = Captured {
            total: detail.body.len() as u64,
            bytes: detail.body[..detail.body.len().min(BODY_CAP)].to_vec(),
            end: Some(BodyEnd::Complete),
        };
        let pending = s.status == Status::Pending;
        DetailPage {
            c: chrome(
                t,
                format!("{} {}", t.s("console.delivery"), s.id),
                pending.then_some(REFRESH),
            ),
            body: BodyPart::new(t, &captured, &header_map),
            t,
            csrf,
            notice,
            d,
            attempts,
            headers,
        }
    }
}
