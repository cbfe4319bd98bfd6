//! A public request as a stream on the tunnel and back: the stream's URI and headers, a stream
//! request from stored parts (queued deliveries), and the agent's response as the sender gets it.
//! The live path, the queue and the delivery workers all build their streams here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::error::ProxyError;
use super::request::{self, Authority};
use super::state::{ConnInfo, RelayState};
use crate::BoxError;
use crate::body::{self, Body};
use crate::protocol::headers::remove_hop_by_hop;
use crate::protocol::{PONTE_ATTEMPT, PONTE_DELIVERY_ID};

/// Where a public request goes on the tunnel: the connection it came on, the authority it named,
/// and its path once routing and edge auth are done with it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The sender's connection.
    pub conn: ConnInfo,
    /// The host the sender asked for.
    pub authority: Authority,
    /// The path and query to forward (tunnel prefix stripped, edge-auth parameter removed).
    pub path: PathAndQuery,
}

impl Target {
    /// The URI of the stream on the tunnel: the public scheme and host, the forwarded path.
    pub fn uri(&self) -> Result<Uri, ProxyError> {
        let host = if self.authority.raw.is_empty() {
            "unknown"
        } else {
            self.authority.raw.as_str()
        };
        Uri::builder()
            .scheme(if self.conn.tls { "https" } else { "http" })
            .authority(host)
            .path_and_query(self.path.clone())
            .build()
            .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded".into()))
    }

    /// The headers of the stream: the sender's end-to-end headers plus `X-Forwarded-*`.
    pub fn headers(&self, state: &RelayState, mut headers: http::HeaderMap) -> http::HeaderMap {
        remove_hop_by_hop(&mut headers);
        // HTTP/2 carries the host in :authority.
        headers.remove(header::HOST);
        // Only the relay sets these: a forged delivery id could make a receiver drop a real webhook.
        headers.remove(&PONTE_DELIVERY_ID);
        headers.remove(&PONTE_ATTEMPT);
        request::add_forwarded(
            &mut headers,
            self.conn.peer,
            self.conn.tls,
            &self.authority.raw,
            state.config.trust_forwarded_headers,
        );
        headers
    }
}

/// An HTTP/2 request on the tunnel from its stored parts.
pub fn stream_request(
    method: &str,
    uri: &str,
    headers: http::HeaderMap,
    body: Bytes,
) -> Result<Request<Body>, ProxyError> {
    let bad = || ProxyError::BadRequest("the request target cannot be forwarded".into());
    let mut req = Request::new(body::full(body));
    *req.method_mut() = http::Method::from_bytes(method.as_bytes()).map_err(|_| bad())?;
    *req.uri_mut() = uri.parse().map_err(|_| bad())?;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The agent's response as the sender gets it: hop-by-hop headers removed, HTTP/1.1 framing,
/// and the stream permit held until the body is finished.
pub fn relay_response(resp: Response<Incoming>, permit: OwnedSemaphorePermit) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        body::boxed(HoldPermit {
            inner: body,
            _permit: permit,
        }),
    )
}

pin_project_lite::pin_project! {
    /// A response body that keeps the session's stream permit until it is dropped.
    struct HoldPermit<B> {
        #[pin]
        inner: B,
        _permit: OwnedSemaphorePermit,
    }
}

impl<B> HttpBody for HoldPermit<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map_err(Into::into)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
