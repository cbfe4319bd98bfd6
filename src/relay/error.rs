//! The one place where relay failures become HTTP answers the sender sees (DESIGN.md status codes).

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::protocol::PONTE_ERROR;

/// How long a sender is told to wait before retrying when the agent is offline.
pub const RETRY_AFTER_OFFLINE: Duration = Duration::from_secs(10);
/// How long a sender is told to wait when the queue store is full: freeing room takes an
/// operator or the retention sweep, not seconds.
pub const RETRY_AFTER_FULL: Duration = Duration::from_secs(60);

/// Every way the relay can refuse or fail a public request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Malformed or ambiguous request (Host problems, absolute-form mismatch).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// CONNECT and other methods a reverse proxy must not honour.
    #[error("method not allowed here")]
    MethodNotAllowed,
    /// No tunnel by that name, or no route at all.
    #[error("no tunnel here: {0}")]
    NotFound(String),
    /// Edge auth is configured and the sender gave no credentials.
    #[error("this tunnel requires credentials")]
    Unauthorized {
        /// Ask for basic auth in `WWW-Authenticate`.
        basic: bool,
    },
    /// Edge auth credentials were wrong.
    #[error("the credentials were not accepted")]
    Forbidden,
    /// Request body over the limit.
    #[error("request body is larger than the {limit}-byte limit of this tunnel")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Headers over the limit.
    #[error("request headers are too large")]
    HeadersTooLarge,
    /// The sender stopped sending its body.
    #[error("the request body stalled")]
    BodyStalled,
    /// No agent connected and the tunnel does not queue.
    #[error("the tunnel's agent is offline; try again later")]
    AgentOffline,
    /// Node to node: a forwarded request reached a node that holds no session of the tunnel (any
    /// more). The sending node tries another holder, or itself; a public sender never sees it.
    #[error("this relay node holds no session of the tunnel")]
    NotHeldHere,
    /// The agent connection failed while carrying the request.
    #[error("the tunnel's agent did not answer ({0})")]
    AgentFailed(String),
    /// No response headers within the response timeout.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// Too many failed logins from this address.
    #[error("too many failed logins; wait a minute")]
    Throttled,
    /// Something inside the relay failed (store error, ...). The sender may retry.
    #[error("the relay could not take the request ({0}); try again later")]
    Unavailable(String),
    /// The queue store has no room: the request was not accepted.
    #[error("the relay's queue is full and did not accept the request; try again later")]
    QueueFull,
    /// Admin API: no delivery with that id.
    #[error("no delivery with id `{0}`")]
    NoSuchDelivery(String),
    /// Admin API: no `admin_token` configured (or no store to administer).
    #[error("the admin API is off: {0}")]
    AdminDisabled(&'static str),
    /// Admin API: no token presented.
    #[error("send the admin token as `Authorization: Bearer <admin_token>` (ponte deliveries --admin-token)")]
    AdminTokenMissing,
    /// Admin API: wrong token.
    #[error("the admin token was not accepted")]
    AdminTokenRejected,
    /// A forwarded request without the cluster secret.
    #[error("this endpoint is for the relay nodes of a cluster: send `Ponte-Cluster-Secret`")]
    ClusterSecretMissing,
    /// A forwarded request with a wrong cluster secret.
    #[error("the cluster secret was not accepted; every node needs the same `cluster.secret`")]
    ClusterSecretRejected,
    /// `/_ponte/metrics` without a `metrics_token` configured.
    #[error(
        "metrics are not served on this port: set `metrics_token:` in relay.yaml, or `metrics_listen:` for a private address"
    )]
    MetricsDisabled,
    /// Metrics: no token presented.
    #[error("send the metrics token as `Authorization: Bearer <metrics_token>`")]
    MetricsTokenMissing,
    /// Metrics: wrong token.
    #[error("the metrics token was not accepted")]
    MetricsTokenRejected,
}

impl From<crate::store::StoreError> for ProxyError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Full(_) => ProxyError::QueueFull,
            StoreError::NotFound(id) => ProxyError::NoSuchDelivery(id),
            other => ProxyError::Unavailable(other.to_string()),
        }
    }
}

impl ProxyError {
    /// Status code of this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            ProxyError::AgentOffline
            | ProxyError::NotHeldHere
            | ProxyError::Unavailable(_)
            | ProxyError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoSuchDelivery(_) | ProxyError::AdminDisabled(_) | ProxyError::MetricsDisabled => {
                StatusCode::NOT_FOUND
            }
            ProxyError::AdminTokenMissing
            | ProxyError::MetricsTokenMissing
            | ProxyError::ClusterSecretMissing => StatusCode::UNAUTHORIZED,
            ProxyError::AdminTokenRejected
            | ProxyError::MetricsTokenRejected
            | ProxyError::ClusterSecretRejected => StatusCode::FORBIDDEN,
            ProxyError::AgentFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Throttled => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Short machine-readable cause, sent in `Ponte-Error`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::MethodNotAllowed => "method-not-allowed",
            ProxyError::NotFound(_) => "no-such-tunnel",
            ProxyError::Unauthorized { .. } => "auth-required",
            ProxyError::Forbidden => "auth-failed",
            ProxyError::TooLarge { .. } => "body-too-large",
            ProxyError::HeadersTooLarge => "headers-too-large",
            ProxyError::BodyStalled => "body-stalled",
            ProxyError::AgentOffline => "agent-offline",
            ProxyError::NotHeldHere => "not-held-here",
            ProxyError::AgentFailed(_) => "agent-failed",
            ProxyError::Timeout => "timeout",
            ProxyError::Throttled => "throttled",
            ProxyError::Unavailable(_) => "unavailable",
            ProxyError::QueueFull => "queue-full",
            ProxyError::NoSuchDelivery(_) => "no-such-delivery",
            ProxyError::AdminDisabled(_) => "admin-disabled",
            ProxyError::AdminTokenMissing => "admin-token-missing",
            ProxyError::AdminTokenRejected => "admin-token-rejected",
            ProxyError::MetricsDisabled => "metrics-disabled",
            ProxyError::ClusterSecretMissing => "cluster-secret-missing",
            ProxyError::ClusterSecretRejected => "cluster-secret-rejected",
            ProxyError::MetricsTokenMissing => "metrics-token-missing",
            ProxyError::MetricsTokenRejected => "metrics-token-rejected",
        }
    }

    /// The response the sender gets: the status, `Ponte-Error`, and one plain line of text.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(body::full(format!("ponte: {self}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(PONTE_ERROR.clone(), HeaderValue::from_static(self.code()));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match &self {
            ProxyError::AgentOffline | ProxyError::Unavailable(_) => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER_OFFLINE.as_secs()),
                );
            }
            ProxyError::QueueFull => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_FULL.as_secs()));
            }
            ProxyError::Throttled => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            ProxyError::AdminTokenMissing => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ponte-admin\""),
                );
            }
            ProxyError::MetricsTokenMissing => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ponte-metrics\""),
                );
            }
            ProxyError::Unauthorized { basic: true } => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"ponte\", charset=\"UTF-8\""),
                );
            }
            _ => {}
        }
        resp
    }
}
