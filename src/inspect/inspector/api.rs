//! The inspector's JSON: what `/api/` answers. Instants are RFC 3339 (UTC, milliseconds);
//! bodies carry what was kept, base64, and a readable view.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::Inspector;
use super::pages::header_pairs;
use crate::agent::AgentStatus;
use crate::inspect::body_view::{self, BodyView};
use crate::inspect::body_view::{BodyEnd, Captured};
use crate::inspect::capture::Exchange;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// `connecting`, `connected`, `retrying` or `stopping`.
    pub state: &'static str,
    /// The relay, once connected.
    pub relay: Option<String>,
    /// The tunnel, once connected.
    pub tunnel: Option<String>,
    /// Where the public reaches the tunnel.
    pub public_url: Option<String>,
    /// When the current session came up.
    pub connected_since: Option<String>,
    /// Sessions opened after the first.
    pub reconnects: u64,
    /// Every live session (one per relay node with `ha_connections` above 1).
    pub sessions: Vec<crate::agent::SessionView>,
    /// Sessions the agent tries to keep (`ha_connections`).
    pub ha_connections: usize,
    /// Why the last attempt failed, while retrying.
    pub error: Option<String>,
    /// Seconds until the next attempt, while retrying.
    pub retry_in_secs: Option<f64>,
    /// `origin` of every ingress rule (`http://localhost:8000`), in order.
    pub upstreams: Vec<String>,
    /// The agent's version.
    pub version: &'static str,
}

/// The state of `inspector`'s agent.
pub fn status(inspector: &Inspector) -> StatusView {
    let status = inspector.status.borrow().clone();
    let mut view = StatusView {
        state: "connecting",
        relay: None,
        tunnel: None,
        public_url: None,
        connected_since: None,
        reconnects: 0,
        sessions: Vec::new(),
        ha_connections: 0,
        error: None,
        retry_in_secs: None,
        upstreams: inspector.ingress.describe(),
        version: crate::VERSION,
    };
    match status {
        AgentStatus::Starting => {}
        AgentStatus::Connected {
            relay,
            tunnel,
            public_url,
            connects,
            since,
            sessions,
            wanted,
        } => {
            view.sessions = sessions;
            view.ha_connections = wanted;
            view.state = "connected";
            view.relay = Some(relay);
            view.tunnel = Some(tunnel);
            view.public_url = Some(public_url);
            view.connected_since = Some(rfc3339(since));
            view.reconnects = connects.saturating_sub(1);
        }
        AgentStatus::Retrying { delay, error } => {
            view.state = "retrying";
            view.error = Some(error);
            view.retry_in_secs = Some(delay.as_secs_f64());
        }
        AgentStatus::Stopping => view.state = "stopping",
    }
    view
}

/// One exchange in `GET /api/requests`.
#[derive(Debug, Serialize)]
pub struct ExchangeSummary {
    /// Its id.
    pub id: u64,
    /// The exchange it replays.
    pub replay_of: Option<u64>,
    /// When the request arrived.
    pub at: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Public host.
    pub host: String,
    /// The origin that answered.
    pub upstream: String,
    /// Response status, once known.
    pub status: Option<u16>,
    /// Milliseconds to the response head.
    pub headers_ms: Option<u64>,
    /// Milliseconds to the end of the response body.
    pub duration_ms: Option<u64>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// The summary of `x`.
pub fn summary(x: &Exchange) -> ExchangeSummary {
    let state = x.state();
    ExchangeSummary {
        id: x.id,
        replay_of: x.replay_of,
        at: rfc3339(x.at),
        method: x.method.clone(),
        path: x.path.clone(),
        host: x.host.clone(),
        upstream: x.origin.clone(),
        status: state.response.as_ref().map(|r| r.status),
        headers_ms: state.response.as_ref().map(|r| r.after.as_millis() as u64),
        duration_ms: state.duration.map(|d| d.as_millis() as u64),
        request_bytes: state.request_body.total,
        response_bytes: state.response_body.total,
    }
}

/// A header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeaderView {
    /// Name.
    pub name: String,
    /// Value (lossily as text).
    pub value: String,
}

/// A body in the API.
#[derive(Debug, Serialize)]
pub struct BodyInfo {
    /// Every byte that went past.
    pub size: u64,
    /// The bytes kept are all of it.
    pub whole: bool,
    /// `complete`, `cut`, or absent while it streams.
    pub end: Option<&'static str>,
    /// The bytes kept (up to 64 KiB), base64.
    pub base64: String,
    /// How the pages show it.
    pub view: BodyView,
}

fn body_info(c: &Captured, headers: &http::HeaderMap) -> BodyInfo {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    BodyInfo {
        size: c.total,
        whole: c.whole(),
        end: c.end.map(|e| match e {
            BodyEnd::Complete => "complete",
            BodyEnd::Cut => "cut",
        }),
        base64: STANDARD.encode(&c.bytes),
        view: body_view::view(&c.bytes, ct, c.whole()),
    }
}

fn headers(h: &http::HeaderMap) -> Vec<HeaderView> {
    header_pairs(h)
        .into_iter()
        .map(|(name, value)| HeaderView { name, value })
        .collect()
}

/// A request or response.
#[derive(Debug, Serialize)]
pub struct Message {
    /// The status (responses only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Headers.
    pub headers: Vec<HeaderView>,
    /// Body.
    pub body: BodyInfo,
}

/// `GET /api/requests/{id}`.
#[derive(Debug, Serialize)]
pub struct ExchangeDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: ExchangeSummary,
    /// The request URI the agent received.
    pub uri: String,
    /// The request.
    pub request: Message,
    /// The response, once there is one.
    pub response: Option<Message>,
}

/// Everything about `x`.
pub fn detail(x: &Exchange) -> ExchangeDetail {
    let state = x.state();
    ExchangeDetail {
        summary: summary(x),
        uri: x.uri.clone(),
        request: Message {
            status: None,
            headers: headers(&x.request_headers),
            body: body_info(&state.request_body, &x.request_headers),
        },
        response: state.response.as_ref().map(|r| Message {
            status: Some(r.status),
            headers: headers(&r.headers),
            body: body_info(&state.response_body, &r.headers),
        }),
    }
}

/// `POST /api/requests/{id}/replay`: what to change before sending again; `{}` sends the
/// request as it was.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayEdit {
    /// Another method.
    pub method: Option<String>,
    /// Another path and query.
    pub path: Option<String>,
    /// Other headers (all of them: the list replaces the original).
    pub headers: Option<Vec<HeaderView>>,
    /// Another body, as text.
    pub body: Option<String>,
    /// Another body, base64.
    pub body_base64: Option<String>,
}

/// The answer to a replay.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplayAnswer {
    /// The new exchange (its page is `/requests/{id}`).
    pub id: u64,
    /// The status the upstream answered.
    pub status: u16,
}
