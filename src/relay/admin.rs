//! The admin API under `/_ponte/admin/` on the relay's own host (see [`crate::protocol::admin`]):
//! the relay's status, and list, show, replay and purge deliveries. Off (404) without an
//! `admin_token`; every call needs
//! that token as a bearer token, compared in constant time, and failed tries count against the
//! same per-address budget as agent logins.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::bearer::{self, Refused};
use super::error::ProxyError;
use super::request::PublicBody;
use super::state::{ConnInfo, RelayState};
use crate::body::{self, Body};
use crate::protocol::admin::{self as wire, ADMIN_PREFIX, ListResponse, PurgeResponse, ReplayResponse};
use crate::store::{self, ListFilter, MAX_LIST, PurgeFilter, Status};

/// Page size when the caller gives none.
const DEFAULT_PAGE: usize = 100;

/// Answer one admin request.
pub async fn handle(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    req: Request<PublicBody>,
) -> Result<Response<Body>, ProxyError> {
    let Some(expected) = &state.config.admin_token else {
        return Err(ProxyError::AdminDisabled(
            "set `admin_token:` in relay.yaml to use it",
        ));
    };
    authorize(state, conn, &req, expected.expose())?;
    if req.uri().path().strip_prefix(ADMIN_PREFIX) == Some("status") {
        if req.method() != Method::GET {
            return Err(ProxyError::MethodNotAllowed);
        }
        Query::parse(req.uri().query())?.only(&[])?;
        return json(&super::status::collect(state).await?);
    }
    let Some(queues) = &state.queues else {
        return Err(ProxyError::AdminDisabled(
            "this relay has no `store:`, so there are no deliveries to administer",
        ));
    };
    let store = &queues.store;
    let path = req.uri().path().strip_prefix(ADMIN_PREFIX).unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = Query::parse(req.uri().query())?;
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["deliveries"]) => {
            query.only(&["tunnel", "status", "limit", "before"])?;
            let limit = query
                .number("limit")?
                .map_or(DEFAULT_PAGE, |n| n as usize)
                .clamp(1, MAX_LIST);
            let filter = ListFilter {
                tunnel: query.get("tunnel").map(String::from),
                status: query.status()?,
                before_seq: query.number("before")?.map(|n| n as i64),
                limit,
            };
            let deliveries = store.list(filter).await?;
            let next_before = (deliveries.len() >= limit)
                .then(|| deliveries.last().map(|d| d.seq))
                .flatten();
            json(&ListResponse {
                deliveries: deliveries.into_iter().map(Into::into).collect(),
                next_before,
            })
        }
        (&Method::GET, ["deliveries", id]) => {
            query.only(&[])?;
            json(&wire::DeliveryDetail::from(store.show(id.to_string()).await?))
        }
        (&Method::POST, ["deliveries", id, "replay"]) => {
            query.only(&[])?;
            let summary = store.replay(id.to_string()).await?;
            wake(state, &summary.tunnel);
            tracing::info!(id = %summary.id, peer = %conn.peer, "delivery replayed by an operator");
            json(&wire::DeliverySummary::from(summary))
        }
        (&Method::POST, ["replay"]) => {
            query.only(&["status", "tunnel"])?;
            if query.status()? != Some(Status::Failed) {
                return Err(ProxyError::BadRequest(
                    "bulk replay needs status=failed (replay one delivery by its id otherwise)".into(),
                ));
            }
            let tunnel = query.get("tunnel").map(String::from);
            let replayed = store.replay_failed(tunnel).await?;
            for t in state.registry.tunnels() {
                wake(state, t.name.as_str());
            }
            tracing::info!(replayed, peer = %conn.peer, "failed deliveries replayed by an operator");
            json(&ReplayResponse { replayed })
        }
        (&Method::POST, ["purge"]) => {
            query.only(&["status", "tunnel", "older_than"])?;
            let status = query.status()?.ok_or_else(|| {
                ProxyError::BadRequest("purge needs status=delivered, failed or pending".into())
            })?;
            let older_than = query
                .get("older_than")
                .map(|t| crate::config::duration::parse(t).map_err(ProxyError::BadRequest))
                .transpose()?;
            let filter = PurgeFilter {
                status,
                tunnel: query.get("tunnel").map(String::from),
                older_than,
            };
            let purged = store.purge(filter).await?;
            tracing::info!(purged, %status, peer = %conn.peer, "deliveries purged by an operator");
            json(&PurgeResponse { purged })
        }
        (_, ["deliveries"] | ["deliveries", _] | ["deliveries", _, "replay"] | ["replay"] | ["purge"]) => {
            Err(ProxyError::MethodNotAllowed)
        }
        _ => Err(ProxyError::NotFound(format!(
            "no admin endpoint at {}",
            req.uri().path()
        ))),
    }
}

fn authorize<B>(
    state: &RelayState,
    conn: ConnInfo,
    req: &Request<B>,
    expected: &str,
) -> Result<(), ProxyError> {
    bearer::check(state, conn, req, expected, "admin").map_err(|refused| match refused {
        Refused::Throttled => ProxyError::Throttled,
        Refused::Missing => ProxyError::AdminTokenMissing,
        Refused::Rejected => ProxyError::AdminTokenRejected,
    })
}

/// Wake a tunnel's worker after a replay, so the delivery goes out now.
fn wake(state: &RelayState, tunnel: &str) {
    if let Some(queues) = &state.queues
        && let Ok(name) = crate::config::relay::TunnelName::parse(tunnel)
        && let Some(q) = queues.tunnel(&name)
    {
        q.wake.notify_one();
    }
}

fn json<T: Serialize>(value: &T) -> Result<Response<Body>, ProxyError> {
    let text = serde_json::to_string(value)
        .map_err(|e| ProxyError::Unavailable(format!("cannot encode the answer: {e}")))?;
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// Query parameters, each at most once.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Self, ProxyError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(other, _)| other == k) {
                return Err(ProxyError::BadRequest(format!("`{k}` is given more than once")));
            }
        }
        Ok(Query(pairs))
    }

    /// Refuse unknown parameters: a typo must not widen a purge.
    fn only(&self, allowed: &[&str]) -> Result<(), ProxyError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ProxyError::BadRequest(format!(
                "unknown parameter `{k}` (allowed here: {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ))),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ProxyError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ProxyError::BadRequest(format!("`{key}` must be a whole number, not `{v}`")))
            })
            .transpose()
    }

    fn status(&self) -> Result<Option<Status>, ProxyError> {
        self.get("status")
            .map(|v| {
                Status::parse(v).ok_or_else(|| {
                    ProxyError::BadRequest(format!("status `{v}` is not one of pending, delivered, failed"))
                })
            })
            .transpose()
    }
}

// === conversion to the wire types ===

impl From<Status> for wire::Status {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => wire::Status::Pending,
            Status::Delivered => wire::Status::Delivered,
            Status::Failed => wire::Status::Failed,
        }
    }
}

impl From<store::AttemptOutcome> for wire::AttemptOutcome {
    fn from(o: store::AttemptOutcome) -> Self {
        match o {
            store::AttemptOutcome::Delivered => wire::AttemptOutcome::Delivered,
            store::AttemptOutcome::Retry => wire::AttemptOutcome::Retry,
            store::AttemptOutcome::Interrupted => wire::AttemptOutcome::Interrupted,
            store::AttemptOutcome::Failed => wire::AttemptOutcome::Failed,
        }
    }
}

impl From<store::DeliverySummary> for wire::DeliverySummary {
    fn from(s: store::DeliverySummary) -> Self {
        wire::DeliverySummary {
            id: s.id,
            seq: s.seq,
            tunnel: s.tunnel,
            method: s.method,
            path: s.path,
            status: s.status.into(),
            in_flight: s.in_flight,
            attempts: s.attempts,
            body_bytes: s.body_bytes,
            received_at: s.received_at.to_string(),
            next_attempt_at: s.next_attempt_at.map(|t| t.to_string()),
            finished_at: s.finished_at.map(|t| t.to_string()),
            last_status: s.last_status,
            last_error: s.last_error,
        }
    }
}

impl From<store::DeliveryDetail> for wire::DeliveryDetail {
    fn from(d: store::DeliveryDetail) -> Self {
        wire::DeliveryDetail {
            summary: d.summary.into(),
            uri: d.uri,
            headers: d
                .headers
                .into_iter()
                .map(|h| wire::HeaderEntry {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            body: d.body,
            attempts_log: d
                .attempts_log
                .into_iter()
                .map(|a| wire::AttemptRecord {
                    number: a.number,
                    started_at: a.started_at.to_string(),
                    finished_at: a.finished_at.to_string(),
                    outcome: a.outcome.into(),
                    status: a.status,
                    error: a.error,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Timestamp;

    /// The JSON operators' scripts read: field names, RFC 3339 instants, lowercase states and a
    /// base64 body, flattened summary fields.
    #[test]
    fn a_stored_delivery_becomes_the_documented_json() {
        let summary = store::DeliverySummary {
            id: "d1".into(),
            seq: 7,
            tunnel: "demo".into(),
            method: "POST".into(),
            path: "/hook?a=1".into(),
            status: Status::Failed,
            in_flight: false,
            attempts: 1,
            body_bytes: 2,
            received_at: Timestamp(1_700_000_000_123),
            next_attempt_at: None,
            finished_at: Some(Timestamp(1_700_000_001_000)),
            last_status: Some(410),
            last_error: Some("HTTP 410".into()),
        };
        let detail = store::DeliveryDetail {
            summary,
            uri: "https://demo.example/hook?a=1".into(),
            headers: vec![store::HeaderEntry {
                name: "content-type".into(),
                value: "text/plain".into(),
            }],
            body: bytes::Bytes::from_static(b"hi"),
            attempts_log: vec![store::AttemptRecord {
                number: 1,
                started_at: Timestamp(1_700_000_000_500),
                finished_at: Timestamp(1_700_000_001_000),
                outcome: store::AttemptOutcome::Failed,
                status: Some(410),
                error: Some("HTTP 410".into()),
            }],
        };
        let json = serde_json::to_value(wire::DeliveryDetail::from(detail)).unwrap();
        assert_eq!(json["id"], "d1");
        assert_eq!(json["status"], "failed");
        assert_eq!(json["received_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["next_attempt_at"], serde_json::Value::Null);
        assert_eq!(json["body"], "aGk=");
        assert_eq!(json["headers"][0]["name"], "content-type");
        assert_eq!(json["attempts_log"][0]["outcome"], "failed");
        let back: wire::DeliveryDetail = serde_json::from_value(json).unwrap();
        assert_eq!(&back.body[..], b"hi");
        assert_eq!(back.summary.status, wire::Status::Failed);
    }
}
