//! The origin interface: what answers a request on the agent's side. The HTTP upstream
//! ([`super::upstream`]) and the local-command runner (`hooks`) both implement it, and the
//! ingress table and the stream code call it without knowing which one they hold.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::protocol::PONTE_ERROR;

/// Something that answers requests on the agent's side: an HTTP upstream, or a local command
/// runner. The stream code never knows which one it calls.
pub trait Origin: Send + Sync + 'static {
    /// Answer one request. Failures are answered, not returned. The body is the relay's
    /// stream, boxed so that a wrapper (the inspector's capture) or a replay can stand in for it.
    fn serve(self: Arc<Self>, req: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
    /// For logs.
    fn describe(&self) -> String;
}

/// Wraps every origin of the ingress table, once, when the table is built: the agent
/// inspector's capture is one. Without a layer the origins are called directly.
pub trait OriginLayer: Send + Sync {
    /// The origin to call in place of `inner`.
    fn wrap(&self, inner: Arc<dyn Origin>) -> Arc<dyn Origin>;
}

/// A response the agent generates itself, marked with `Ponte-Error`.
pub fn reply(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("ponte agent: {message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(PONTE_ERROR.clone(), HeaderValue::from_static(code));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
