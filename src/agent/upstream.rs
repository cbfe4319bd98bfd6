//! The HTTP origin: proxy a request to the configured upstream URL, streaming both bodies, and
//! answer 502 (refused/unreachable) or 504 (too slow) itself. Websockets arrive as extended
//! CONNECT and leave as an HTTP/1.1 upgrade.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::origin::{Origin, reply};
use crate::body::{self, Body};
use crate::config::agent::{AgentConfig, IngressRule, UpstreamUrl};
use crate::protocol::PONTE_UPSTREAM_STATUS;
use crate::protocol::headers::remove_hop_by_hop;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Host header policy for one rule.
#[derive(Debug, Clone)]
enum HostHeader {
    /// Keep the public host (default: what ngrok and cloudflared do).
    Public,
    /// Use this value.
    Fixed(HeaderValue),
}

/// At most one "upstream failed" warning per origin in this interval; a dead application under
/// load must not flood the log (the sender still gets its 502 every time).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Proxies to one upstream URL.
pub struct HttpOrigin {
    upstream: UpstreamUrl,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    host_header: HostHeader,
    timeout: Duration,
    last_warning: std::sync::Mutex<Option<std::time::Instant>>,
}

impl HttpOrigin {
    /// Build the pooled client for one ingress rule.
    pub fn new(rule: &IngressRule, config: &AgentConfig) -> anyhow::Result<Self> {
        let upstream = rule
            .upstream
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the ingress rule has no upstream"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = if rule.danger_accept_invalid_certs {
            crate::tls::insecure_client_config(&[])?
        } else {
            crate::tls::client_config(None, &[])?
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        let host_header = match rule.host_header.as_ref().map(|h| h.as_str()) {
            None => HostHeader::Public,
            Some("upstream") => HostHeader::Fixed(HeaderValue::from_str(upstream.authority.as_str())?),
            Some(v) => HostHeader::Fixed(HeaderValue::from_str(v)?),
        };
        Ok(HttpOrigin {
            upstream,
            client,
            host_header,
            timeout: config.upstream_timeout,
            last_warning: std::sync::Mutex::new(None),
        })
    }

    fn upstream_uri(&self, original: &Uri) -> Result<Uri, http::Error> {
        let pq = original.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Uri::builder()
            .scheme(if self.upstream.https { "https" } else { "http" })
            .authority(self.upstream.authority.clone())
            .path_and_query(format!("{}{pq}", self.upstream.base_path))
            .build()
    }

    /// Rewrite the relay's request into the upstream request (without the body).
    fn upstream_parts(&self, parts: &mut http::request::Parts) -> Result<(), http::Error> {
        let public_host = parts.uri.authority().map(|a| a.as_str().to_string());
        parts.uri = self.upstream_uri(&parts.uri)?;
        parts.version = Version::HTTP_11;
        remove_hop_by_hop(&mut parts.headers);
        let host = match &self.host_header {
            HostHeader::Fixed(v) => Some(v.clone()),
            HostHeader::Public => public_host.and_then(|h| HeaderValue::from_str(&h).ok()),
        };
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
        // `TE: trailers` is kept only when the sender asked for trailers (remove_hop_by_hop
        // keeps that one value): an HTTP/1.1 upstream then may send them.
        Ok(())
    }

    async fn proxy(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            if req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str() == "websocket")
            {
                return self.websocket(req).await;
            }
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect-refused",
                "CONNECT is not served by the agent",
            );
        }
        let (mut parts, incoming) = req.into_parts();
        if self.upstream_parts(&mut parts).is_err() {
            return reply(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "the request target cannot be forwarded",
            );
        }
        let out = Request::from_parts(parts, incoming);
        match tokio::time::timeout(self.timeout, self.client.request(out)).await {
            Err(_) => self.too_slow(),
            Ok(Err(e)) => self.unreachable(&e),
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body::boxed(body))
            }
        }
    }

    /// 502 for an upstream that could not be reached or broke off. The sender is told what
    /// failed, never where the upstream is (an internal address); the agent log has both.
    fn unreachable(&self, e: &hyper_util::client::legacy::Error) -> Response<Body> {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let hint = if e.is_connect() {
            "the agent could not reach its upstream application; is it running?"
        } else {
            "the upstream application broke off its answer to the agent"
        };
        if self.should_warn() {
            tracing::warn!(upstream = %self.upstream, error = %cause, "upstream request failed (repeats are logged at debug level for 10 s)");
        } else {
            tracing::debug!(upstream = %self.upstream, error = %cause, "upstream request failed");
        }
        reply(StatusCode::BAD_GATEWAY, "upstream-unreachable", hint)
    }

    /// 504 for an upstream that did not answer within `upstream_timeout`; as for 502, the
    /// address stays in the agent log.
    fn too_slow(&self) -> Response<Body> {
        if self.should_warn() {
            tracing::warn!(upstream = %self.upstream, timeout = ?self.timeout, "upstream did not answer in time (repeats are logged at debug level for 10 s)");
        } else {
            tracing::debug!(upstream = %self.upstream, timeout = ?self.timeout, "upstream did not answer in time");
        }
        reply(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            &format!(
                "the upstream application did not answer within {:?}",
                self.timeout
            ),
        )
    }

    fn should_warn(&self) -> bool {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < WARN_EVERY => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Extended CONNECT from the relay → `GET` + `Upgrade: websocket` to the upstream; on 101,
    /// answer 200 and splice the two upgraded streams. Any other answer goes back whole, its
    /// status in `Ponte-Upstream-Status` (see there why).
    async fn websocket(self: Arc<Self>, mut req: Request<Body>) -> Response<Body> {
        let relay_side = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        parts.method = Method::GET;
        parts.extensions = http::Extensions::new();
        if self.upstream_parts(&mut parts).is_err() {
            return reply(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "the request target cannot be forwarded",
            );
        }
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let out = Request::from_parts(parts, body::empty());
        let mut resp = match tokio::time::timeout(self.timeout, self.client.request(out)).await {
            Err(_) => return self.too_slow(),
            Ok(Err(e)) => return self.unreachable(&e),
            Ok(Ok(resp)) => resp,
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = resp.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            // A 2xx on the CONNECT would open the tunnel (and drop the body): carry the real
            // status in a header instead, for the relay to restore.
            parts.headers.insert(
                PONTE_UPSTREAM_STATUS.clone(),
                HeaderValue::from(parts.status.as_u16()),
            );
            if parts.status.is_success() {
                parts.status = StatusCode::BAD_GATEWAY;
            }
            return Response::from_parts(parts, body::boxed(body));
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(relay_side, upstream_side) {
                Ok((relay, upstream)) => {
                    let mut relay = TokioIo::new(relay);
                    let mut upstream = TokioIo::new(upstream);
                    let _ = tokio::io::copy_bidirectional(&mut relay, &mut upstream).await;
                }
                Err(e) => tracing::debug!(error = %e, "websocket splice failed"),
            }
        });
        let mut headers = resp.headers().clone();
        remove_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        let mut out = Response::new(body::empty());
        *out.headers_mut() = headers;
        out
    }
}

impl Origin for HttpOrigin {
    fn serve(self: Arc<Self>, req: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(self.proxy(req))
    }
    fn describe(&self) -> String {
        self.upstream.to_string()
    }
}
