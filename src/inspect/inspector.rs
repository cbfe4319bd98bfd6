//! The agent inspector: a small local web site (`127.0.0.1:4040` by default) showing the
//! tunnel's state and its recent requests, replaying one against the upstream, with a JSON API
//! under `/api/` and Prometheus metrics at `/metrics`.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | recent requests (HTML) |
//! | `GET /requests/{id}`, `GET /requests/{id}/edit` | one request; the edit-and-replay form |
//! | `POST /requests/{id}/replay` | replay (form with the CSRF token), then its page |
//! | `GET /api/status` | [`api::StatusView`] |
//! | `GET /api/requests`, `GET /api/requests/{id}` | [`api::ExchangeSummary`] list, [`api::ExchangeDetail`] |
//! | `POST /api/requests/{id}/replay` | JSON [`api::ReplayEdit`] (`{}` for as-is) → [`api::ReplayAnswer`] |
//! | `GET /metrics` | Prometheus text |

pub mod api;
pub mod guard;
pub mod pages;
mod replay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::capture::Recorder;
use super::i18n::Tr;
use super::metrics::{self, AgentMetrics};
use super::page::render;
use super::web;
use crate::agent::{AgentStatus, Ingress};
use crate::body::Body;
use crate::config::agent::AgentConfig;
use crate::config::inspect::Inspect;
use crate::locale::Lang;
use pages::{DetailPage, EditPage, ListPage, MessagePage, StatusBar};

/// Ports tried after the configured one when it is taken (4041, 4042, … as ngrok does).
pub const PORT_TRIES: u16 = 5;
/// Connections served at once: the inspector is for one person's browser and scripts.
const MAX_CONNECTIONS: usize = 32;
/// Largest form or JSON body accepted (an edited replay carries a body of up to the capture cap).
const MAX_FORM: usize = 4 * super::body_view::BODY_CAP;
/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the inspector's listener at `addr`, or the next few ports when it is taken. `None`
/// (after a warning that says why) when no port could be had: the agent runs without it.
pub async fn bind(addr: SocketAddr) -> Option<TcpListener> {
    let tries = if addr.port() == 0 { 1 } else { PORT_TRIES };
    let mut first_error = None;
    for i in 0..tries {
        let Some(port) = addr.port().checked_add(i) else {
            break;
        };
        let at = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(at).await {
            Ok(l) => {
                if i > 0 {
                    tracing::warn!(
                        "the inspector's address {addr} is taken (another agent, or ngrok?); it listens on {at} instead"
                    );
                }
                return Some(l);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error = Some(e);
                break;
            }
        }
    }
    let why = first_error.map(|e| e.to_string()).unwrap_or_default();
    tracing::warn!(
        "the inspector cannot listen on {addr} or the next ports ({why}); the agent runs without it (set `inspect:` in agent.yaml or --inspect to another address, or off)"
    );
    None
}

/// A running inspector.
pub struct Started {
    /// The ingress table to run the agent with ([`crate::agent::run_with_ingress`]).
    pub ingress: Arc<Ingress>,
    /// Where the inspector listens.
    pub address: SocketAddr,
}

/// Start the inspector the configuration asks for (`inspect:` / `--inspect`), serving until
/// `shutdown`. `None` when the inspector is off or could not listen (the agent then runs
/// without it).
pub async fn start(
    config: &AgentConfig,
    status: watch::Receiver<AgentStatus>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Started>> {
    let Inspect::Listen(addr) = config.inspect else {
        return Ok(None);
    };
    let Some(listener) = bind(addr).await else {
        return Ok(None);
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let (inspector, ingress) = Inspector::new(config, status, bound)?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            address = %bound,
            "the inspector listens beyond this machine: anyone who reaches {bound} sees the requests and can replay them"
        );
    }
    let shown = match bound.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bound.port()),
        _ => bound,
    };
    match config.lang {
        Lang::PtBr => tracing::info!("Inspetor: http://{shown}/"),
        Lang::En => tracing::info!("Inspector: http://{shown}/"),
    }
    tokio::spawn(serve(listener, inspector, shutdown.clone()));
    Ok(Some(Started {
        ingress,
        address: bound,
    }))
}

/// What the inspector's pages read: the recent exchanges, the agent's state, the ingress table
/// (to replay through), and its metrics.
pub struct Inspector {
    recorder: Arc<Recorder>,
    ingress: Arc<Ingress>,
    status: watch::Receiver<AgentStatus>,
    metrics: Arc<AgentMetrics>,
    /// The address it listens on (for the Host and Origin checks).
    bound: SocketAddr,
    /// Put in every form and checked on every form post; a page of another site cannot read it.
    csrf: String,
    body_idle: Duration,
}

impl Inspector {
    /// Build the agent's ingress table with the capture layer, and the inspector that shows
    /// what goes through it. Run the agent with the returned table
    /// ([`crate::agent::run_with_ingress`]) and serve the inspector with [`serve`].
    pub fn new(
        config: &AgentConfig,
        status: watch::Receiver<AgentStatus>,
        bound: SocketAddr,
    ) -> anyhow::Result<(Arc<Inspector>, Arc<Ingress>)> {
        let metrics = Arc::new(AgentMetrics::new());
        let recorder = Recorder::new(metrics.clone());
        let ingress = Arc::new(Ingress::with_layer(config, Some(&recorder.layer()))?);
        let inspector = Arc::new(Inspector {
            recorder,
            ingress: ingress.clone(),
            status,
            metrics,
            bound,
            csrf: web::random_token(),
            body_idle: config.upstream_body_idle_timeout,
        });
        Ok((inspector, ingress))
    }

    fn status_bar(&self, t: Tr) -> StatusBar {
        let status = self.status.borrow().clone();
        let public = match &status {
            AgentStatus::Connected { public_url, .. } => public_url.clone(),
            _ => String::new(),
        };
        StatusBar::new(t, &status, self.ingress.forwarding(&public, t.lang()))
    }
}

/// Serve the inspector on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, inspector: Arc<Inspector>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "inspector accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let inspector = inspector.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let inspector = inspector.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&inspector, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            drop(permit);
        });
    }
}

/// Answer one request.
pub async fn handle(inspector: &Inspector, req: Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !guard::host_allowed(host, inspector.bound) {
        return web::answer(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            format!(
                "ponte inspector: refused: the Host `{host}` is not this machine's loopback address (protection against DNS rebinding); open http://127.0.0.1:{}/\n",
                inspector.bound.port()
            ),
        );
    }
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && !guard::same_origin(req.headers(), inspector.bound)
    {
        return web::answer(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "ponte inspector: refused: the request comes from another site's page\n",
        );
    }
    let (lang, set_lang) = web::choose_lang(&req, "/", false);
    let t = Tr::new(lang);
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let mut resp = match (&method, segments.as_slice()) {
        (&Method::GET, []) => {
            let page = ListPage::new(t, inspector.status_bar(t), &inspector.recorder.list());
            render(page)
        }
        (&Method::GET, ["style.css"]) => web::style(),
        (&Method::GET, ["requests", id]) => match find(inspector, id) {
            Some(x) => render(DetailPage::new(
                t,
                inspector.status_bar(t),
                &x,
                inspector.csrf.clone(),
            )),
            None => gone(inspector, t),
        },
        (&Method::GET, ["requests", id, "edit"]) => match find(inspector, id) {
            Some(x) => render(EditPage::new(
                t,
                inspector.status_bar(t),
                &x,
                inspector.csrf.clone(),
            )),
            None => gone(inspector, t),
        },
        (&Method::POST, ["requests", id, "replay"]) => replay::from_form(inspector, t, id, req).await,
        (&Method::GET, ["api", "status"]) => web::json(StatusCode::OK, &api::status(inspector)),
        (&Method::GET, ["api", "requests"]) => {
            let list: Vec<_> = inspector
                .recorder
                .list()
                .iter()
                .map(|x| api::summary(x))
                .collect();
            web::json(StatusCode::OK, &serde_json::json!({ "requests": list }))
        }
        (&Method::GET, ["api", "requests", id]) => match find(inspector, id) {
            Some(x) => web::json(StatusCode::OK, &api::detail(&x)),
            None => web::json_error(
                StatusCode::NOT_FOUND,
                "no such request (the inspector keeps the last 100)",
            ),
        },
        (&Method::POST, ["api", "requests", id, "replay"]) => replay::from_json(inspector, id, req).await,
        (&Method::GET, ["metrics"]) => {
            inspector.metrics.observe_status(&inspector.status.borrow());
            web::answer(StatusCode::OK, metrics::CONTENT_TYPE, inspector.metrics.encode())
        }
        (_, [] | ["style.css"] | ["requests", ..] | ["api", ..] | ["metrics"]) => web::answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "ponte inspector: method not allowed here\n",
        ),
        _ => {
            let page = MessagePage::new(
                t,
                inspector.status_bar(t),
                t.s("error.not_found").to_string(),
                t.s("error.no_such_page").to_string(),
            );
            let mut resp = render(page);
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    };
    if let Some(c) = set_lang {
        web::set_cookie(&mut resp, &c);
    }
    resp
}

fn find(inspector: &Inspector, id: &str) -> Option<Arc<super::capture::Exchange>> {
    id.parse().ok().and_then(|id| inspector.recorder.get(id))
}

fn gone(inspector: &Inspector, t: Tr) -> Response<Body> {
    let page = MessagePage::new(
        t,
        inspector.status_bar(t),
        t.s("error.not_found").to_string(),
        t.f1("inspector.gone", super::capture::RING),
    );
    let mut resp = render(page);
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}
