//! A small echo upstream: answers every request with JSON describing it, in the seed's
//! `{"status":"OK","dados_recebidos_pelo_webhook":…}` style. Used by the demo and the benchmark.

use std::collections::BTreeMap;

use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};

/// Largest body the echo reads (it is a demo, not a sink).
const MAX_ECHO_BODY: usize = 1024 * 1024;

/// Serve until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            res = listener.accept() => match res { Ok(p) => p, Err(_) => continue },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|req| async { Ok::<_, std::convert::Infallible>(answer(req).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let bytes = match http_body_util::Limited::new(incoming, MAX_ECHO_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            let mut r = Response::new(body::full(
                "{\"status\":\"ERROR\",\"erro\":\"corpo grande demais\"}",
            ));
            *r.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
            return r;
        }
    };
    let received = serde_json::from_slice::<serde_json::Value>(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let reply = serde_json::json!({
        "status": "OK",
        "dados_recebidos_pelo_webhook": received,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
    });
    let text = serde_json::to_string_pretty(&reply).unwrap_or_default();
    let mut resp = Response::new(body::full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
