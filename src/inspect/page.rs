//! What the inspector's and the console's pages share: the frame around each page, the
//! language switch, how a kept body is summed up, and short spans of time and sizes.

use std::time::{Duration, SystemTime};

use askama::Template;
use http::{HeaderMap, Response, StatusCode};

use super::body_view::{self, BodyEnd, Captured};
use super::i18n::Tr;
use super::web;
use crate::body::Body;
use crate::locale::Lang;

/// The page frame: title, stylesheet, language switch, refresh.
pub struct Chrome {
    /// The page title.
    pub title: String,
    /// The site's name (`Inspector`).
    pub site: &'static str,
    /// The home page.
    pub home: &'static str,
    /// The stylesheet.
    pub css: &'static str,
    /// Seconds between reloads, for pages that follow live data.
    pub refresh: Option<u32>,
    /// The language switch.
    pub langs: Vec<LangLink>,
}

/// One entry of the language switch.
pub struct LangLink {
    /// `pt-BR`.
    pub tag: &'static str,
    /// `Português`.
    pub name: &'static str,
    /// The page is in this language.
    pub current: bool,
}

/// The language switch for a page in `lang`.
pub fn lang_links(lang: Lang) -> Vec<LangLink> {
    Lang::ALL
        .iter()
        .map(|&l| LangLink {
            tag: l.tag(),
            name: l.own_name(),
            current: l == lang,
        })
        .collect()
}

/// A body as the pages show it.
#[derive(Clone)]
pub struct BodyPart {
    /// `123 bytes, JSON` and what was kept.
    pub summary: String,
    /// `json`, `text`, `binary` or `empty`.
    pub kind: &'static str,
    /// The text shown.
    pub shown: String,
}

impl BodyPart {
    /// Show a captured body whose `Content-Type` is in `headers`.
    pub fn new(t: Tr, captured: &Captured, headers: &HeaderMap) -> Self {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let view = body_view::view(&captured.bytes, ct, captured.whole());
        let mut summary = match view.kind() {
            "empty" => t.s("body.empty").to_string(),
            "json" => t.f1("body.json", size(captured.total)),
            "text" => t.f1("body.text", size(captured.total)),
            _ => t.f1("body.binary", size(captured.total)),
        };
        if captured.total as usize > captured.bytes.len() {
            summary = format!(
                "{summary} {}",
                t.f1("body.cut_at", size(captured.bytes.len() as u64))
            );
        }
        match captured.end {
            None => summary = format!("{summary} {}", t.s("body.streaming")),
            Some(BodyEnd::Cut) => summary = format!("{summary} {}", t.s("body.broken")),
            Some(BodyEnd::Complete) => {}
        }
        BodyPart {
            summary,
            kind: view.kind(),
            shown: view.text().to_string(),
        }
    }
}

/// `5 s ago` / `há 5 s`.
pub fn ago(t: Tr, now: SystemTime, then: SystemTime) -> String {
    t.f1("time.ago", span(now.duration_since(then).unwrap_or_default()))
}

/// A length of time in its largest whole unit: `5 s`, `12 min`, `3 h`, `2 d` (the same in both
/// languages).
pub fn span(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

/// `0 B`, `1.2 KiB`, `3.4 MiB`.
pub fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// Render a page; a template error (a bug) is a plain 500.
pub(crate) fn render<T: Template>(page: T) -> Response<Body> {
    match page.render() {
        Ok(html) => web::html(StatusCode::OK, html),
        Err(e) => web::answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("ponte: the page could not be rendered: {e}\n"),
        ),
    }
}
