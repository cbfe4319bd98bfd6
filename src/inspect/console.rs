//! The relay console at `/_ponte/console/` on the relay's own host: log in with the
//! `admin_token`, see the tunnels and their agents, the queue, the deliveries with their
//! attempts, and replay one or every failed one. Server-rendered HTML with no script; it
//! reloads itself every few seconds.
//!
//! Safety: 404 without an `admin_token`; logins count against the relay's per-address
//! failed-login budget (as the admin API's do); the session cookie is `HttpOnly`,
//! `SameSite=Strict`, `Path=/_ponte/console` and `Secure` under TLS; every post carries the
//! session's CSRF token and, when the browser names one, an `Origin` equal to the relay's own.
//! The relay reaches it through [`Backend`], so this module knows nothing of the relay.

pub mod backend;
pub mod pages;
pub mod sessions;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};

use super::i18n::Tr;
use super::page::render;
use super::web;
use crate::body::Body;
pub use backend::{Backend, BackendError, Overview};
use pages::{DetailPage, LoginPage, MessagePage, OverviewPage};
use sessions::Sessions;

/// The console's path prefix.
pub const CONSOLE_PREFIX: &str = "/_ponte/console/";
/// The cookie path (the console only).
const COOKIE_PATH: &str = "/_ponte/console";
/// The session cookie.
const SESSION_COOKIE: &str = "ponte_console";
/// Largest form accepted (a token, a tunnel name).
const MAX_FORM: usize = 8 * 1024;

/// The console's own state: its sessions.
#[derive(Default)]
pub struct Console {
    sessions: Sessions,
}

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The peer address (for the login throttle).
    pub peer: SocketAddr,
    /// The relay serves this connection over TLS (cookies get `Secure`).
    pub tls: bool,
}

impl Console {
    /// Answer one request under `/_ponte/console`.
    pub async fn handle<B>(&self, backend: &dyn Backend, caller: Caller, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<crate::BoxError>,
    {
        if backend.admin_token().is_none() {
            return web::answer(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "ponte: no relay endpoint here (the console is off: set `admin_token:` in relay.yaml)\n",
            );
        }
        let (lang, set_lang) = web::choose_lang(&req, COOKIE_PATH, caller.tls);
        let t = Tr::new(lang);
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix(COOKIE_PATH).unwrap_or_default();
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = req.method().clone();
        // HTTP/2 names the host in the URI, HTTP/1.1 in `Host`.
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            })
            .unwrap_or_default();
        if method == Method::POST && !same_origin(req.headers(), &host) {
            return message(t, StatusCode::FORBIDDEN, t.s("replay.failed"), t.s("error.csrf"));
        }
        let session_id = web::cookie_value(req.headers(), SESSION_COOKIE);
        let session = session_id.as_deref().and_then(|id| self.sessions.get(id));
        let mut resp = match (&method, segments.as_slice(), session) {
            (&Method::GET, [], _) if rest.is_empty() => web::redirect(CONSOLE_PREFIX),
            (&Method::GET, ["style.css"], _) => web::style(),
            (&Method::POST, ["login"], _) => self.login(backend, caller, t, req).await,
            (&Method::GET, [], None) => render(LoginPage::new(t, None)),
            (_, _, None) => {
                // Not logged in (or the session ended): back to the login form.
                let mut resp = render(LoginPage::new(t, Some(t.s("console.expired").to_string())));
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                resp
            }
            (&Method::GET, [], Some(s)) => {
                let q = |k: &str| web::query_param(req.uri(), k).unwrap_or_default();
                let notice = notice(t, &q("done"), &q("n"));
                render(OverviewPage::build(t, backend, &q("tunnel"), &q("status"), s.csrf, notice).await)
            }
            (&Method::GET, ["deliveries", id], Some(s)) => {
                let notice = web::query_param(req.uri(), "done")
                    .filter(|d| d == "one")
                    .map(|_| t.f1("console.replayed_one", id));
                match backend.show(id.to_string()).await {
                    Ok(d) => render(DetailPage::new(t, d, s.csrf, notice)),
                    Err(e) => failure(t, &e),
                }
            }
            (&Method::POST, action, Some(s)) => {
                let fields = match web::read_body(req.into_body(), MAX_FORM).await {
                    Ok(b) => web::form(&b),
                    Err(e) => {
                        return message(
                            t,
                            StatusCode::PAYLOAD_TOO_LARGE,
                            t.s("replay.failed"),
                            &e.to_string(),
                        );
                    }
                };
                if !web::same_secret(web::field(&fields, "csrf").unwrap_or_default(), &s.csrf) {
                    return message(t, StatusCode::FORBIDDEN, t.s("replay.failed"), t.s("error.csrf"));
                }
                match action {
                    ["logout"] => {
                        if let Some(id) = &session_id {
                            self.sessions.close(id);
                        }
                        let mut resp = web::redirect(CONSOLE_PREFIX);
                        let mut gone =
                            web::cookie(SESSION_COOKIE, String::new(), COOKIE_PATH, caller.tls, None);
                        gone.make_removal();
                        web::set_cookie(&mut resp, &gone);
                        resp
                    }
                    ["deliveries", id, "replay"] => match backend.replay(id.to_string()).await {
                        Ok(()) => {
                            tracing::info!(id = %id, peer = %caller.peer, "delivery replayed from the console");
                            web::redirect(&format!("{CONSOLE_PREFIX}deliveries/{id}?done=one"))
                        }
                        Err(e) => failure(t, &e),
                    },
                    ["replay-failed"] => {
                        let tunnel = web::field(&fields, "tunnel")
                            .filter(|t| !t.is_empty())
                            .map(String::from);
                        match backend.replay_failed(tunnel.clone()).await {
                            Ok(n) => {
                                tracing::info!(replayed = n, peer = %caller.peer, "failed deliveries replayed from the console");
                                let filter = tunnel
                                    .map(|t| format!("&tunnel={}", encode(&t)))
                                    .unwrap_or_default();
                                web::redirect(&format!("{CONSOLE_PREFIX}?done=many&n={n}{filter}"))
                            }
                            Err(e) => failure(t, &e),
                        }
                    }
                    _ => message(
                        t,
                        StatusCode::NOT_FOUND,
                        t.s("error.not_found"),
                        t.s("error.no_such_page"),
                    ),
                }
            }
            _ => message(
                t,
                StatusCode::NOT_FOUND,
                t.s("error.not_found"),
                t.s("error.no_such_page"),
            ),
        };
        if let Some(c) = set_lang {
            web::set_cookie(&mut resp, &c);
        }
        resp
    }

    async fn login<B>(&self, backend: &dyn Backend, caller: Caller, t: Tr, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<crate::BoxError>,
    {
        let refuse = |status: StatusCode, text: &str| {
            let mut resp = render(LoginPage::new(t, Some(text.to_string())));
            *resp.status_mut() = status;
            if status == StatusCode::TOO_MANY_REQUESTS {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, http::HeaderValue::from_static("60"));
            }
            resp
        };
        let ip = caller.peer.ip();
        if backend.login_throttled(ip) {
            return refuse(StatusCode::TOO_MANY_REQUESTS, t.s("console.throttled"));
        }
        let Ok(body) = web::read_body(req.into_body(), MAX_FORM).await else {
            return refuse(StatusCode::BAD_REQUEST, t.s("console.wrong_token"));
        };
        let fields = web::form(&body);
        let presented = web::field(&fields, "token").unwrap_or_default().trim();
        let expected = backend.admin_token().unwrap_or_default();
        if presented.is_empty() || !web::same_secret(presented, expected) {
            backend.record_failed_login(ip);
            tracing::warn!(peer = %caller.peer, "console login with a wrong token refused");
            return refuse(StatusCode::FORBIDDEN, t.s("console.wrong_token"));
        }
        let id = self.sessions.open();
        tracing::info!(peer = %caller.peer, "console login");
        let mut resp = web::redirect(CONSOLE_PREFIX);
        web::set_cookie(
            &mut resp,
            &web::cookie(SESSION_COOKIE, id, COOKIE_PATH, caller.tls, None),
        );
        resp
    }
}

/// A post from the console's own pages: its `Origin` (or `Referer`), when it names a site,
/// names the host the request was sent to. The pages' own forms send `Origin: null` (they are
/// served with `Referrer-Policy: no-referrer`), so that names none; the session's CSRF token
/// and the `SameSite=Strict` cookie are checked in every case.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null");
    let referer = headers.get(header::REFERER).and_then(|v| v.to_str().ok());
    let Some(claimed) = origin.or(referer) else {
        return true;
    };
    let Ok(url) = url::Url::parse(claimed) else {
        return false;
    };
    let Some(name) = url.host_str() else {
        return false;
    };
    let authority = match url.port() {
        Some(p) => format!("{name}:{p}"),
        None => name.to_string(),
    };
    // A default port may or may not be in Host.
    let host_default = host
        .strip_suffix(":443")
        .or_else(|| host.strip_suffix(":80"))
        .unwrap_or(&host);
    !host.is_empty() && (authority == host || authority == host_default)
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn notice(t: Tr, done: &str, n: &str) -> Option<String> {
    match done {
        "many" => Some(t.f1("console.replayed_many", n.parse::<u64>().unwrap_or(0))),
        _ => None,
    }
}

fn message(t: Tr, status: StatusCode, heading: &str, text: &str) -> Response<Body> {
    let mut resp = render(MessagePage::new(t, heading.to_string(), text.to_string()));
    *resp.status_mut() = status;
    resp
}

fn failure(t: Tr, e: &BackendError) -> Response<Body> {
    let status = match e {
        BackendError::NotFound(_) => StatusCode::NOT_FOUND,
        BackendError::Refused(_) => StatusCode::CONFLICT,
        BackendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    message(t, status, t.s("replay.failed"), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_must_come_from_the_relays_own_pages() {
        let check = |host: &str, name: http::HeaderName, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            same_origin(&h, host)
        };
        assert!(check(
            "relay.example.com",
            header::ORIGIN,
            "https://relay.example.com"
        ));
        assert!(check(
            "relay.example.com:443",
            header::ORIGIN,
            "https://relay.example.com"
        ));
        assert!(check("127.0.0.1:8443", header::ORIGIN, "https://127.0.0.1:8443"));
        assert!(!check(
            "relay.example.com",
            header::ORIGIN,
            "https://evil.example"
        ));
        assert!(check("relay.example.com", header::ORIGIN, "null"));
        assert!(!check("127.0.0.1:8443", header::ORIGIN, "https://127.0.0.1:9999"));
        assert!(check(
            "relay.example.com",
            header::REFERER,
            "https://relay.example.com/_ponte/console/"
        ));
        assert!(!check(
            "relay.example.com",
            header::REFERER,
            "https://evil.example/x"
        ));
        assert!(same_origin(&HeaderMap::new(), "relay.example.com"));
    }
}
