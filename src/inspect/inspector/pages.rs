//! The inspector's HTML pages (askama templates in `templates/inspector_*.html`) and what they
//! are built from. Every value is escaped by the templates.

use std::time::{Duration, SystemTime};

use askama::Template;
use http::HeaderMap;

use super::super::body_view::BODY_CAP;
use super::super::capture::{Exchange, RING};
use super::super::i18n::Tr;
use super::super::page::{BodyPart, Chrome, ago, lang_links, size};
use crate::agent::AgentStatus;

fn chrome(t: Tr, title: String, refresh: Option<u32>) -> Chrome {
    Chrome {
        title,
        site: t.s("inspector.site"),
        home: "/",
        css: "/style.css",
        refresh,
        langs: lang_links(t.lang()),
    }
}

/// The tunnel's state, above every page.
pub struct StatusBar {
    /// `connected`, `connecting`, `retrying` or `stopping` (a CSS class).
    pub state: &'static str,
    /// The state in words.
    pub label: String,
    /// Where the public reaches the tunnel.
    pub public_url: Option<String>,
    /// The tunnel's name.
    pub tunnel: Option<String>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// `public → upstream` for each ingress rule.
    pub upstreams: Vec<String>,
}

impl StatusBar {
    /// The bar for `status`.
    pub fn new(t: Tr, status: &AgentStatus, upstreams: Vec<String>) -> Self {
        let mut bar = StatusBar {
            state: "connecting",
            label: t.s("state.connecting").to_string(),
            public_url: None,
            tunnel: None,
            error: None,
            upstreams,
        };
        match status {
            AgentStatus::Starting => {}
            AgentStatus::Connected {
                public_url,
                tunnel,
                sessions,
                wanted,
                ..
            } => {
                bar.state = "connected";
                bar.label = if *wanted > 1 {
                    t.f2("state.connected_sessions", sessions.len(), wanted)
                } else {
                    t.s("state.connected").to_string()
                };
                bar.public_url = Some(public_url.clone());
                bar.tunnel = Some(tunnel.clone());
            }
            AgentStatus::Retrying { delay, error } => {
                bar.state = "retrying";
                bar.label = t.f1("state.retrying", short_duration(*delay));
                bar.error = Some(error.clone());
            }
            AgentStatus::Stopping => {
                bar.state = "stopping";
                bar.label = t.s("state.stopping").to_string();
            }
        }
        bar
    }
}

/// `/`: the recent requests.
#[derive(Template)]
#[template(path = "inspector_list.html")]
pub struct ListPage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// Status bar.
    pub s: StatusBar,
    /// One row per exchange, newest first.
    pub rows: Vec<Row>,
    /// Exchanges kept.
    pub ring: usize,
    /// Body bytes kept, in KiB.
    pub cap_kib: usize,
}

/// One line of the list.
pub struct Row {
    /// Exchange id.
    pub id: u64,
    /// `5 s ago`.
    pub ago: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Status or `…`.
    pub status: String,
    /// A CSS class by status class.
    pub class: &'static str,
    /// Duration or `…`.
    pub duration: String,
    /// Response size.
    pub size: String,
    /// The exchange this one replays.
    pub replay_of: Option<u64>,
}

impl ListPage {
    /// The list of `exchanges` (newest first).
    pub fn new(t: Tr, s: StatusBar, exchanges: &[std::sync::Arc<Exchange>]) -> Self {
        let now = SystemTime::now();
        let rows = exchanges
            .iter()
            .map(|x| {
                let state = x.state();
                let status = state.response.as_ref().map(|r| r.status);
                Row {
                    id: x.id,
                    ago: ago(t, now, x.at),
                    method: x.method.clone(),
                    path: x.path.clone(),
                    status: status.map_or_else(|| "…".to_string(), |s| s.to_string()),
                    class: status_class(status),
                    duration: state.duration.map_or_else(|| "…".to_string(), short_duration),
                    size: size(state.response_body.total),
                    replay_of: x.replay_of,
                }
            })
            .collect();
        ListPage {
            c: chrome(t, t.s("inspector.recent").to_string(), Some(3)),
            t,
            s,
            rows,
            ring: RING,
            cap_kib: BODY_CAP / 1024,
        }
    }
}

/// The response part of the detail page.
pub struct ResponsePart {
    /// Headers as (name, value) text.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: BodyPart,
}

/// What the detail page shows of one exchange.
pub struct ExchangePart {
    /// Id.
    pub id: u64,
    /// Replay of.
    pub replay_of: Option<u64>,
    /// RFC 3339.
    pub at: String,
    /// `5 s ago`.
    pub ago: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Public host.
    pub host: String,
    /// The origin.
    pub origin: String,
    /// Status or `…`.
    pub status: String,
    /// Time to the response head.
    pub to_headers: String,
    /// Whole duration.
    pub duration: String,
    /// The request headers.
    pub request_headers: Vec<(String, String)>,
    /// The request body.
    pub request_body: BodyPart,
    /// The response, once there is one.
    pub response: Option<ResponsePart>,
    /// The request body was kept whole, so the exchange can be sent again.
    pub replayable: bool,
}

/// `/requests/{id}`.
#[derive(Template)]
#[template(path = "inspector_detail.html")]
pub struct DetailPage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// Status bar.
    pub s: StatusBar,
    /// The exchange.
    pub x: ExchangePart,
    /// The form token.
    pub csrf: String,
}

impl DetailPage {
    /// The page of `x`.
    pub fn new(t: Tr, s: StatusBar, x: &Exchange, csrf: String) -> Self {
        let state = x.state();
        let status = state.response.as_ref().map(|r| r.status);
        let finished = state.duration.is_some() && state.request_body.end.is_some();
        let part = ExchangePart {
            id: x.id,
            replay_of: x.replay_of,
            at: humantime::format_rfc3339_millis(x.at).to_string(),
            ago: ago(t, SystemTime::now(), x.at),
            method: x.method.clone(),
            path: x.path.clone(),
            host: x.host.clone(),
            origin: x.origin.clone(),
            status: status.map_or_else(|| "…".to_string(), |s| s.to_string()),
            to_headers: state
                .response
                .as_ref()
                .map_or_else(|| "…".to_string(), |r| short_duration(r.after)),
            duration: state.duration.map_or_else(|| "…".to_string(), short_duration),
            request_headers: header_pairs(&x.request_headers),
            request_body: BodyPart::new(t, &state.request_body, &x.request_headers),
            response: state.response.as_ref().map(|r| ResponsePart {
                headers: header_pairs(&r.headers),
                body: BodyPart::new(t, &state.response_body, &r.headers),
            }),
            replayable: state.request_body.whole() && x.method != "CONNECT",
        };
        DetailPage {
            c: chrome(t, t.f1("inspector.request_n", x.id), (!finished).then_some(2)),
            t,
            s,
            x: part,
            csrf,
        }
    }
}

/// `/requests/{id}/edit`: the request in a form, to change before sending it again.
#[derive(Template)]
#[template(path = "inspector_edit.html")]
pub struct EditPage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// Status bar.
    pub s: StatusBar,
    /// The exchange edited.
    pub id: u64,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `Name: value` lines.
    pub headers: String,
    /// The body as text, when it is text (a binary body is sent as it was).
    pub body: Option<String>,
    /// The form token.
    pub csrf: String,
}

impl EditPage {
    /// The form for `x`.
    pub fn new(t: Tr, s: StatusBar, x: &Exchange, csrf: String) -> Self {
        let state = x.state();
        let headers = header_pairs(&x.request_headers)
            .into_iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect();
        EditPage {
            c: chrome(t, t.s("inspector.edit_replay").to_string(), None),
            t,
            s,
            id: x.id,
            method: x.method.clone(),
            path: x.path.clone(),
            headers,
            body: String::from_utf8(state.request_body.bytes).ok(),
            csrf,
        }
    }
}

/// A message page (not found, refused replay).
#[derive(Template)]
#[template(path = "inspector_message.html")]
pub struct MessagePage {
    /// Words.
    pub t: Tr,
    /// Frame.
    pub c: Chrome,
    /// Status bar.
    pub s: StatusBar,
    /// The heading.
    pub heading: String,
    /// The message.
    pub message: String,
}

impl MessagePage {
    /// A page that says `message` under `heading`.
    pub fn new(t: Tr, s: StatusBar, heading: String, message: String) -> Self {
        MessagePage {
            c: chrome(t, heading.clone(), None),
            t,
            s,
            heading,
            message,
        }
    }
}

/// Headers as (name, value) text, values lossily decoded.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// `ok`, `redirect`, `client-error`, `server-error` or `pending`.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        None => "pending",
        Some(s) if s < 300 => "ok",
        Some(s) if s < 400 => "redirect",
        Some(s) if s < 500 => "client-error",
        Some(_) => "server-error",
    }
}

/// `12 ms`, `1.5 s`, `3 min`.
pub fn short_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min", d.as_secs() / 60)
    }
}
