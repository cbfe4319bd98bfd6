//! Answer one HTTP request the way adnanh/webhook 2.8's `hookHandler` does: same routing, same
//! status codes, same texts, same order of checks. Transport-neutral: it takes any
//! `http::Request` with a streaming body and the sender's address.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::HookSet;
use super::definition::Hook;
use super::exec::{self, ExecError, Invocation, Limits, Slots};
use super::request::{self, HookRequest, describe};
use super::rules::{self, RuleError};
use crate::BoxError;
use crate::body::{self, Body};

/// adnanh's texts, word for word: callers and their scripts compare them.
pub const NOT_FOUND: &str = "Hook not found.";
/// Trigger rules not satisfied.
pub const RULES_NOT_SATISFIED: &str = "Hook rules were not satisfied.";
/// A rule could not be evaluated (bad signature, empty secret, …).
pub const RULES_ERROR: &str = "Error occurred while evaluating hook rules.";
/// The command failed or could not run.
pub const COMMAND_ERROR: &str =
    "Error occurred while executing the hook's command. Please check your logs for more details.";
/// A multipart body could not be parsed.
pub const MULTIPART_ERROR: &str = "Error occurred while parsing multipart form.";
/// The body is over the limit.
pub const TOO_LARGE: &str = "Request body too large.";
/// Every command slot is taken (Ponte's own answer; adnanh has no limit).
pub const BUSY: &str = "Too many hook commands are running; try again in a moment.";

/// Default request body limit, as adnanh 2.8.3's `-max-body-size`.
pub const DEFAULT_MAX_BODY: usize = 10 << 20;

/// How the service behaves (mostly `ponte webhook`'s flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// URL prefix without slashes (`hooks`); empty serves `/<id>`.
    pub prefix: String,
    /// Answer `GET /` with `OK` (the stand-alone server does; behind an ingress rule the
    /// path belongs to the rule).
    pub serve_root: bool,
    /// `-http-methods`: allowed methods for hooks that list none (upper case).
    pub http_methods: Vec<String>,
    /// `-header name=value`: added to every hook response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Request body limit in bytes.
    pub max_body: usize,
    /// Command limits.
    pub limits: Limits,
    /// `-x-request-id`: take the request id from that header.
    pub use_x_request_id: bool,
    /// `-x-request-id-limit`: truncate it (0: no limit).
    pub x_request_id_limit: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prefix: "hooks".into(),
            serve_root: false,
            http_methods: Vec::new(),
            response_headers: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            limits: Limits::default(),
            use_x_request_id: false,
            x_request_id_limit: 0,
        }
    }
}

/// The hooks of one file set, served over HTTP. The set can be replaced while requests run
/// (hot reload): each request uses the set it started with.
pub struct HookService {
    settings: Settings,
    hooks: RwLock<Arc<HookSet>>,
    slots: Slots,
}

impl HookService {
    /// Serve `hooks` with `settings`.
    pub fn new(settings: Settings, hooks: HookSet) -> Self {
        let slots = Slots::new(settings.limits.max_concurrent);
        HookService {
            settings,
            hooks: RwLock::new(Arc::new(hooks)),
            slots,
        }
    }

    /// The hooks in use.
    pub fn hooks(&self) -> Arc<HookSet> {
        self.hooks.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swap in a new set (requests already running keep the old one).
    pub fn replace(&self, hooks: HookSet) {
        *self.hooks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(hooks);
    }

    /// Answer one request from `remote` (`ip:port`).
    pub async fn serve<B>(&self, req: Request<B>, remote: String) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let rid = self.request_id(req.headers());
        let path = req.uri().path().to_string();
        // `/` is answered before the hook route, as adnanh registers it first.
        if self.settings.serve_root && path == "/" {
            let mut headers = HeaderMap::new();
            self.add_global_headers(&mut headers);
            return respond(StatusCode::OK, headers, Bytes::from_static(b"OK"));
        }
        let Some(id) = self.hook_id(&path) else {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
            return respond(
                StatusCode::NOT_FOUND,
                headers,
                Bytes::from_static(b"404 page not found\n"),
            );
        };
        tracing::info!("[{rid}] incoming HTTP {} request from {remote}", req.method());
        // `-debug`: the request head, as adnanh's request dumper shows it.
        tracing::debug!(
            "[{rid}] {} {} {:?} {:?}",
            req.method(),
            req.uri(),
            req.version(),
            req.headers()
        );
        let hooks = self.hooks();
        let Some(hook) = hooks.find(&id) else {
            return respond(
                StatusCode::NOT_FOUND,
                HeaderMap::new(),
                Bytes::from_static(NOT_FOUND.as_bytes()),
            );
        };
        let method = req.method().as_str().to_string();
        // Compared case-sensitively, as Go does: a request method `post` is not `POST`.
        let allowed = if !hook.http_methods.is_empty() {
            hook.http_methods.contains(&method)
        } else if !self.settings.http_methods.is_empty() {
            self.settings.http_methods.contains(&method)
        } else {
            true
        };
        if !allowed {
            tracing::info!("[{rid}] HTTP {method} method not allowed for hook {id:?}");
            return respond(StatusCode::METHOD_NOT_ALLOWED, HeaderMap::new(), Bytes::new());
        }
        tracing::info!("[{rid}] {id} got matched");
        let mut headers = HeaderMap::new();
        self.add_global_headers(&mut headers);
        let (status, body) = self.handle(hook, req, rid, remote, &mut headers).await;
        respond(status, headers, body)
    }

    async fn handle<B>(
        &self,
        hook: &Hook,
        req: Request<B>,
        rid: String,
        remote: String,
        headers: &mut HeaderMap,
    ) -> (StatusCode, Bytes)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, incoming) = req.into_parts();
        let content_type = if hook.incoming_content_type.is_empty() {
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        } else {
            hook.incoming_content_type.clone()
        };
        let raw = match read_body(incoming, self.settings.max_body).await {
            Ok(bytes) => bytes,
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                tracing::warn!(
                    "[{rid}] request body over the {}-byte limit",
                    self.settings.max_body
                );
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Bytes::from_static(TOO_LARGE.as_bytes()),
                );
            }
            Err(e) => {
                tracing::warn!("[{rid}] error reading the request body: {e}");
                return (
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"Error reading the request body."),
                );
            }
        };
        let is_multipart = content_type.starts_with("multipart/form-data;");
        let mut hr = HookRequest {
            id: rid.clone(),
            method: parts.method.as_str().to_string(),
            remote_addr: remote,
            content_type: content_type.clone(),
            body: if is_multipart { Bytes::new() } else { raw.clone() },
            headers: request::headers_map(&parts.headers),
            query: request::query_map(parts.uri.query().unwrap_or("")),
            payload: None,
            allow_signature_errors: hook.signature_soft_failures,
        };
        if content_type.contains("json") {
            match request::parse_json_payload(&raw) {
                Ok(p) => hr.payload = p,
                Err(e) => tracing::info!("[{rid}] {e}"),
            }
        } else if content_type.contains("x-www-form-urlencoded") {
            hr.payload = Some(request::parse_form_payload(&raw));
        } else if content_type.contains("xml") {
            match request::parse_xml_payload(&raw) {
                Ok(p) => hr.payload = Some(p),
                Err(e) => tracing::info!("[{rid}] {e}"),
            }
        } else if is_multipart {
            match request::parse_multipart_payload(&content_type, raw, hook).await {
                Ok(p) => hr.payload = Some(p),
                Err(e) => {
                    tracing::warn!("[{rid}] {e}");
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Bytes::from_static(MULTIPART_ERROR.as_bytes()),
                    );
                }
            }
        } else {
            tracing::info!(
                "[{rid}] error parsing body payload due to unsupported content type header: {content_type}"
            );
        }
        for e in hr.parse_json_parameters(hook) {
            tracing::info!("[{rid}] error parsing JSON parameters: {e}");
        }
        let triggered = match &hook.trigger_rule {
            None => true,
            Some(rule) => match rules::evaluate(rule, &hr) {
                (_, Some(e @ (RuleError::Signature(_) | RuleError::Other(_)))) => {
                    tracing::warn!("[{rid}] error evaluating hook: {e}");
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Bytes::from_static(RULES_ERROR.as_bytes()),
                    );
                }
                (ok, Some(e)) => {
                    tracing::info!("[{rid}] {e}");
                    ok
                }
                (ok, None) => ok,
            },
        };
        if !triggered {
            tracing::info!(
                "[{rid}] {} got matched, but didn't get triggered because the trigger rules were not satisfied",
                hook.id
            );
            let status = configured_status(hook.mismatch_status, &rid, &hook.id);
            return (status, Bytes::from_static(RULES_NOT_SATISFIED.as_bytes()));
        }
        tracing::info!("[{rid}] {} hook triggered successfully", hook.id);
        for (name, value) in &hook.response_headers {
            // Checked at load time; a header that still fails is skipped.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        let plain_error = |headers: &mut HeaderMap| {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(COMMAND_ERROR.as_bytes()),
            )
        };
        let invocation = match self.invocation(hook, &hr) {
            Ok(inv) => inv,
            Err(e) => {
                tracing::error!(
                    "[{rid}] hook {}: cannot run {:?}: {e}{}",
                    hook.id,
                    hook.execute_command,
                    hint(&hook.execute_command)
                );
                return plain_error(headers);
            }
        };
        let Some(permit) = self.slots.try_take() else {
            tracing::warn!(
                "[{rid}] hook {}: {} commands already running; answering 503",
                hook.id,
                self.settings.limits.max_concurrent
            );
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(BUSY.as_bytes()),
            );
        };
        let success = configured_status(hook.success_status, &rid, &hook.id);
        // The command runs in a task of its own holding the slot, so a sender that hangs up
        // stops neither the command nor the count of running ones.
        let hook_id = hook.id.clone();
        let running = tokio::spawn(async move {
            let outcome = run_logged(invocation, &hook_id).await;
            drop(permit);
            outcome
        });
        if !hook.capture_output {
            return (success, Bytes::from(hook.response_message.clone()));
        }
        match running.await {
            Ok(outcome) => match outcome.result {
                Ok(()) => (success, Bytes::from(outcome.output)),
                Err(_) if hook.capture_output_on_error && !outcome.output.is_empty() => {
                    (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(outcome.output))
                }
                Err(_) => plain_error(headers),
            },
            Err(e) => {
                tracing::error!("[{rid}] hook {}: the command task failed: {e}", hook.id);
                plain_error(headers)
            }
        }
    }

    /// Build the command line, environment and files for this request.
    fn invocation(&self, hook: &Hook, hr: &HookRequest) -> Result<Invocation, String> {
        let program = exec::resolve(&hook.execute_command, &hook.working_directory)?;
        let rid = &hr.id;
        let args = hook
            .pass_arguments
            .iter()
            .map(|a| {
                hr.get(a).unwrap_or_else(|e| {
                    tracing::info!(
                        "[{rid}] error extracting command arguments: couldn't retrieve argument for {} ({e})",
                        describe(a)
                    );
                    String::new()
                })
            })
            .collect();
        let mut env = Vec::new();
        for a in &hook.pass_environment {
            match hr.get(a) {
                Ok(v) => {
                    let name = if a.envname.is_empty() {
                        format!("HOOK_{}", a.name)
                    } else {
                        a.envname.clone()
                    };
                    env.push((name, v));
                }
                Err(e) => tracing::info!(
                    "[{rid}] error extracting command arguments for environment: couldn't retrieve argument for {} ({e})",
                    describe(a)
                ),
            }
        }
        let mut files = Vec::new();
        for a in &hook.pass_file {
            match hr.get(a) {
                Ok(v) => {
                    let name = if a.envname.is_empty() {
                        format!("HOOK_{}", a.name.to_uppercase())
                    } else {
                        a.envname.clone()
                    };
                    let data = if a.base64decode {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(v.as_bytes())
                            .unwrap_or_else(|e| {
                                tracing::info!("[{rid}] error decoding string [{e}]");
                                Vec::new()
                            })
                    } else {
                        v.into_bytes()
                    };
                    files.push((name, data));
                }
                Err(e) => tracing::info!(
                    "[{rid}] error extracting command arguments for file: couldn't retrieve argument for {} ({e})",
                    describe(a)
                ),
            }
        }
        Ok(Invocation {
            request_id: rid.clone(),
            program,
            argv0: hook.execute_command.clone(),
            args,
            env,
            files,
            cwd: (!hook.working_directory.is_empty()).then(|| hook.working_directory.clone().into()),
            timeout: hook.command_timeout.unwrap_or(self.settings.limits.timeout),
            output_cap: self.settings.limits.output_cap,
        })
    }

    fn add_global_headers(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.settings.response_headers {
            headers.insert(n.clone(), v.clone());
        }
    }

    fn request_id(&self, headers: &HeaderMap) -> String {
        if self.settings.use_x_request_id
            && let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        {
            let limit = self.settings.x_request_id_limit;
            return if limit > 0 {
                v.chars().take(limit).collect()
            } else {
                v.to_string()
            };
        }
        uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
    }

    /// `/<prefix>/<id>` → the id (percent-decoded, may contain `/`).
    fn hook_id(&self, path: &str) -> Option<String> {
        let rest = if self.settings.prefix.is_empty() {
            path.strip_prefix('/')?
        } else {
            path.strip_prefix('/')?
                .strip_prefix(self.settings.prefix.as_str())?
                .strip_prefix('/')?
        };
        Some(
            percent_encoding::percent_decode_str(rest)
                .decode_utf8_lossy()
                .into_owned(),
        )
    }
}

/// The hint adnanh logs when arguments were written into `execute-command`.
fn hint(command: &str) -> String {
    match command.split_whitespace().next() {
        Some(first) if command.contains(' ') => {
            format!("; use 'pass-arguments-to-command' to specify args for '{first}'")
        }
        _ => String::new(),
    }
}

async fn run_logged(inv: Invocation, hook_id: &str) -> exec::Outcome {
    let rid = inv.request_id.clone();
    let env_names: Vec<&str> = inv.env.iter().map(|(k, _)| k.as_str()).collect();
    tracing::info!(
        "[{rid}] executing {} ({}) with arguments {:?} and environment {env_names:?} using {} as cwd",
        inv.argv0,
        inv.program.display(),
        std::iter::once(&inv.argv0)
            .chain(inv.args.iter())
            .collect::<Vec<_>>(),
        inv.cwd
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    let outcome = exec::run(inv).await;
    let shown = String::from_utf8_lossy(&outcome.output[..outcome.output.len().min(4096)]).into_owned();
    tracing::info!("[{rid}] command output: {shown}");
    if outcome.truncated {
        tracing::warn!(
            "[{rid}] hook {hook_id}: the command wrote more than the output cap; the rest was dropped"
        );
    }
    match &outcome.result {
        Ok(()) => {}
        Err(e @ ExecError::TimedOut(_)) => tracing::warn!("[{rid}] hook {hook_id}: {e}"),
        Err(e @ ExecError::Spawn(_)) => tracing::error!("[{rid}] hook {hook_id}: {e}"),
        Err(e) => tracing::info!("[{rid}] error occurred: {e}"),
    }
    tracing::info!("[{rid}] finished handling {hook_id}");
    outcome
}

/// A configured status code, if Go knows it; otherwise 200 and a log line, as adnanh does.
fn configured_status(code: i64, rid: &str, hook_id: &str) -> StatusCode {
    if code == 0 {
        return StatusCode::OK;
    }
    match u16::try_from(code).ok().filter(|c| GO_KNOWN_STATUS.contains(c)) {
        Some(c) => StatusCode::from_u16(c).unwrap_or(StatusCode::OK),
        None => {
            tracing::warn!(
                "[{rid}] {hook_id} got matched, but the configured return code {code} is unknown - defaulting to 200"
            );
            StatusCode::OK
        }
    }
}

/// Status codes Go's `http.StatusText` knows.
const GO_KNOWN_STATUS: &[u16] = &[
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307,
    308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 421,
    422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// A response; like Go's `ResponseWriter`, a non-empty body without a `Content-Type` gets one
/// sniffed from its first bytes.
fn respond(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Response<Body> {
    if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(sniff(&body)));
    }
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// The common cases of Go's `http.DetectContentType` (the WHATWG sniffing algorithm).
pub fn sniff(data: &[u8]) -> &'static str {
    let data = &data[..data.len().min(512)];
    let start = data
        .iter()
        .position(|b| !matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' '))
        .unwrap_or(data.len());
    let text = &data[start..];
    const HTML_TAGS: [&[u8]; 17] = [
        b"<!DOCTYPE HTML",
        b"<HTML",
        b"<HEAD",
        b"<SCRIPT",
        b"<IFRAME",
        b"<H1",
        b"<DIV",
        b"<FONT",
        b"<TABLE",
        b"<A",
        b"<STYLE",
        b"<TITLE",
        b"<B",
        b"<BODY",
        b"<BR",
        b"<P",
        b"<!--",
    ];
    for tag in HTML_TAGS {
        if text.len() > tag.len()
            && text[..tag.len()].eq_ignore_ascii_case(tag)
            && matches!(text[tag.len()], b' ' | b'>')
        {
            return "text/html; charset=utf-8";
        }
    }
    if text.starts_with(b"<?xml") {
        return "text/xml; charset=utf-8";
    }
    const MAGIC: [(&[u8], &str); 8] = [
        (b"%PDF-", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x1f\x8b\x08", "application/x-gzip"),
        (b"\xef\xbb\xbf", "text/plain; charset=utf-8"),
    ];
    for (magic, mime) in MAGIC {
        if data.starts_with(magic) {
            return mime;
        }
    }
    if data.starts_with(b"\xfe\xff") || data.starts_with(b"\xff\xfe") {
        return "text/plain; charset=utf-16";
    }
    let binary = data
        .iter()
        .any(|b| matches!(b, 0x00..=0x08 | 0x0b | 0x0e..=0x1a | 0x1c..=0x1f));
    if binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// The whole request body, up to `max` bytes. Boxed as a `Send` future here, where the body type
/// is generic: awaited in place, a boxed error type in the body trips a limitation of the
/// compiler's `Send` check for the caller's future.
fn read_body<B>(
    body: B,
    max: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, BoxError>> + Send>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(async move {
        Ok(http_body_util::Limited::new(body, max)
            .collect()
            .await?
            .to_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_like_go() {
        assert_eq!(sniff(b"{\"status\": \"OK\"}"), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"  <html><body>"), "text/html; charset=utf-8");
        assert_eq!(sniff(b"<?xml version"), "text/xml; charset=utf-8");
        assert_eq!(sniff(b"\x00\x01"), "application/octet-stream");
        assert_eq!(sniff(b"%PDF-1.4"), "application/pdf");
    }

    #[test]
    fn ids_under_the_prefix() {
        let s = HookService::new(Settings::default(), HookSet::default());
        assert_eq!(s.hook_id("/hooks/a/b"), Some("a/b".into()));
        assert_eq!(s.hook_id("/hooks/my%20hook"), Some("my hook".into()));
        assert_eq!(s.hook_id("/hooks/"), Some(String::new()));
        assert_eq!(s.hook_id("/hooksx/a"), None);
        assert_eq!(s.hook_id("/other"), None);
        let bare = HookService::new(
            Settings {
                prefix: String::new(),
                ..Settings::default()
            },
            HookSet::default(),
        );
        assert_eq!(bare.hook_id("/a"), Some("a".into()));
    }

    #[test]
    fn configured_codes() {
        assert_eq!(configured_status(0, "r", "h"), StatusCode::OK);
        assert_eq!(configured_status(202, "r", "h"), StatusCode::ACCEPTED);
        assert_eq!(configured_status(299, "r", "h"), StatusCode::OK);
        assert_eq!(configured_status(-1, "r", "h"), StatusCode::OK);
    }
}
