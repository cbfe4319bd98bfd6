//! Replay: send a recorded request again through the agent's own ingress table (so only the
//! upstreams the config names can be reached), as it was or edited, recorded as a new exchange
//! marked as a replay. The response is read to its end in the background so the capture sees
//! it whole, as a real sender's would be.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::api::{HeaderView, ReplayAnswer, ReplayEdit};
use super::pages::MessagePage;
use super::{Inspector, MAX_FORM};
use crate::body::{self, Body, GuardedBody};
use crate::inspect::capture::{CapturedAs, Exchange, ReplayOf};
use crate::inspect::i18n::Tr;
use crate::inspect::page::render;
use crate::inspect::web;

/// Response bytes a replay reads before it lets go (the capture keeps 64 KiB of them anyway).
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Why a replay was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The request is no longer in the ring.
    #[error("no such request (the inspector keeps the last 100)")]
    Gone,
    /// Its body was over the capture cap (or still streaming, or cut).
    #[error(
        "the request body was not kept whole (over 64 KiB, or cut), so it cannot be sent again as it was; send a body of your own"
    )]
    NotWhole,
    /// A websocket cannot be replayed.
    #[error("a websocket connection cannot be replayed")]
    Websocket,
    /// The edited method is not a method.
    #[error("`{0}` is not an HTTP method")]
    BadMethod(String),
    /// The edited path is not a path.
    #[error("`{0}` is not a path; it must start with /")]
    BadPath(String),
    /// An edited header is not a header.
    #[error("`{0}` is not a valid header line; write `Name: value`")]
    BadHeader(String),
    /// `body_base64` is not base64.
    #[error("body_base64 is not base64")]
    BadBase64,
    /// No ingress rule matches the (edited) request: nothing was sent.
    #[error("no ingress rule of the agent matches {0}; nothing was sent")]
    NoRoute(String),
}

impl ReplayError {
    fn status(&self) -> StatusCode {
        match self {
            ReplayError::Gone => StatusCode::NOT_FOUND,
            ReplayError::NotWhole | ReplayError::Websocket => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The message on the pages.
    fn say(&self, t: Tr) -> String {
        match self {
            ReplayError::Gone => t.f1("inspector.gone", crate::inspect::capture::RING),
            ReplayError::NotWhole => t.s("inspector.not_replayable").to_string(),
            ReplayError::Websocket => t.s("replay.websocket").to_string(),
            ReplayError::BadMethod(m) => t.f1("replay.bad_method", m),
            ReplayError::BadPath(p) => t.f1("replay.bad_path", p),
            ReplayError::BadHeader(h) => t.f1("replay.bad_header", h),
            ReplayError::BadBase64 => self.to_string(),
            ReplayError::NoRoute(r) => t.f1("replay.no_route", r),
        }
    }
}

/// `POST /requests/{id}/replay` from the pages: a form with the CSRF token, and the edited
/// fields when it came from the edit form.
pub(super) async fn from_form(
    inspector: &Inspector,
    t: Tr,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let refuse = |status: StatusCode, message: String| {
        let page = MessagePage::new(
            t,
            inspector.status_bar(t),
            t.s("replay.failed").to_string(),
            message,
        );
        let mut resp = render(page);
        *resp.status_mut() = status;
        resp
    };
    if web::media_type(req.headers()) != "application/x-www-form-urlencoded" {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            t.s("error.form_expected").to_string(),
        );
    }
    let fields = match web::read_body(req.into_body(), MAX_FORM).await {
        Ok(b) => web::form(&b),
        Err(e) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
    };
    let token = web::field(&fields, "csrf").unwrap_or_default();
    if !web::same_secret(token, &inspector.csrf) {
        return refuse(StatusCode::FORBIDDEN, t.s("error.csrf").to_string());
    }
    let edit = if web::field(&fields, "edit") == Some("1") {
        match form_edit(&fields) {
            Ok(e) => e,
            Err(e) => return refuse(e.status(), e.say(t)),
        }
    } else {
        ReplayEdit::default()
    };
    match replay(inspector, id, edit).await {
        Ok(answer) => web::redirect(&format!("/requests/{}", answer.id)),
        Err(e) => refuse(e.status(), e.say(t)),
    }
}

/// `POST /api/requests/{id}/replay`: a JSON body (a cross-site page cannot send one without
/// the browser asking first, and the inspector answers no such question).
pub(super) async fn from_json(inspector: &Inspector, id: &str, req: Request<Incoming>) -> Response<Body> {
    if web::media_type(req.headers()) != "application/json" {
        return web::json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send a JSON body with Content-Type: application/json (`{}` replays the request as it was)",
        );
    }
    let bytes = match web::read_body(req.into_body(), MAX_FORM).await {
        Ok(b) => b,
        Err(e) => return web::json_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
    };
    let edit: ReplayEdit = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReplayEdit::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                return web::json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the JSON body is not a replay edit: {e}"),
                );
            }
        }
    };
    match replay(inspector, id, edit).await {
        Ok(answer) => web::json(StatusCode::OK, &answer),
        Err(e) => web::json_error(e.status(), &e.to_string()),
    }
}

/// The edit form's fields as a [`ReplayEdit`].
fn form_edit(fields: &[(String, String)]) -> Result<ReplayEdit, ReplayError> {
    let headers = match web::field(fields, "headers") {
        None => None,
        Some(text) => Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| match l.split_once(':') {
                    Some((n, v)) => Ok(HeaderView {
                        name: n.trim().to_string(),
                        value: v.trim().to_string(),
                    }),
                    None => Err(ReplayError::BadHeader(l.to_string())),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(ReplayEdit {
        method: web::field(fields, "method").map(String::from),
        path: web::field(fields, "path").map(String::from),
        headers,
        // Browsers send textarea line ends as CRLF; the body the user sees has the original's.
        body: web::field(fields, "body").map(String::from),
        body_base64: None,
    })
}

/// Send exchange `id` again with `edit` applied.
pub async fn replay(inspector: &Inspector, id: &str, edit: ReplayEdit) -> Result<ReplayAnswer, ReplayError> {
    let x = id
        .parse()
        .ok()
        .and_then(|id| inspector.recorder.get(id))
        .ok_or(ReplayError::Gone)?;
    let req = build(&x, edit)?;
    let target = format!("{}{}", x.host, req.uri().path());
    let resp = inspector.ingress.serve(req).await;
    let Some(CapturedAs(new_id)) = resp.extensions().get::<CapturedAs>().copied() else {
        return Err(ReplayError::NoRoute(target));
    };
    let status = resp.status().as_u16();
    let mut body = Box::pin(GuardedBody::idle_only(resp.into_body(), inspector.body_idle));
    tokio::spawn(async move {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    });
    tracing::info!(
        of = x.id,
        id = new_id,
        status,
        "request replayed from the inspector"
    );
    Ok(ReplayAnswer { id: new_id, status })
}

/// The request to send: the recorded one, with `edit` applied.
fn build(x: &Exchange, edit: ReplayEdit) -> Result<Request<Body>, ReplayError> {
    if x.method == "CONNECT" {
        return Err(ReplayError::Websocket);
    }
    let state = x.state();
    let body: Bytes = match (edit.body, edit.body_base64) {
        (_, Some(b64)) => STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| ReplayError::BadBase64)?
            .into(),
        (Some(text), None) => text.replace("\r\n", "\n").into(),
        (None, None) if state.request_body.whole() => state.request_body.bytes.into(),
        (None, None) => return Err(ReplayError::NotWhole),
    };
    let method_text = edit
        .method
        .map(|m| m.trim().to_ascii_uppercase())
        .unwrap_or_else(|| x.method.clone());
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|_| ReplayError::BadMethod(method_text.clone()))?;
    if method == Method::CONNECT {
        return Err(ReplayError::Websocket);
    }
    let original: Uri = x.uri.parse().map_err(|_| ReplayError::BadPath(x.uri.clone()))?;
    let uri = match edit.path {
        None => original,
        Some(path) => {
            let path = path.trim().to_string();
            if !path.starts_with('/') {
                return Err(ReplayError::BadPath(path));
            }
            let mut parts = original.into_parts();
            parts.path_and_query = Some(path.parse().map_err(|_| ReplayError::BadPath(path.clone()))?);
            Uri::from_parts(parts).map_err(|_| ReplayError::BadPath(path))?
        }
    };
    let mut headers = match edit.headers {
        None => x.request_headers.clone(),
        Some(list) => {
            let mut h = HeaderMap::new();
            for HeaderView { name, value } in list {
                let line = format!("{name}: {value}");
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ReplayError::BadHeader(line.clone()))?;
                let v = HeaderValue::from_str(&value).map_err(|_| ReplayError::BadHeader(line))?;
                h.append(n, v);
            }
            h
        }
    };
    // The length is the body's own; the upstream client writes it.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let mut req = Request::new(body::full(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req.extensions_mut().insert(ReplayOf(x.id));
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_form_fields() {
        let f = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = form_edit(&f(&[
            ("method", "put"),
            ("path", "/x?y=1"),
            ("headers", "Content-Type: text/plain\r\nX-A:  b \r\n\r\n"),
            ("body", "line1\r\nline2"),
        ]))
        .unwrap();
        assert_eq!(e.method.as_deref(), Some("put"));
        assert_eq!(
            e.headers.unwrap(),
            [
                HeaderView {
                    name: "Content-Type".into(),
                    value: "text/plain".into()
                },
                HeaderView {
                    name: "X-A".into(),
                    value: "b".into()
                }
            ]
        );
        assert!(matches!(
            form_edit(&f(&[("headers", "no colon here")])),
            Err(ReplayError::BadHeader(_))
        ));
    }
}
