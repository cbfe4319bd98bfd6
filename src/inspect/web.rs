//! What every page of the inspector and the console shares: the security headers, HTML and
//! JSON answers, redirects, cookies, the language choice, forms, and constant-time checks.

use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;

use crate::body::{self, Body};
use crate::locale::Lang;

/// The pages load only their own stylesheet: no script at all, no frames, no plugins, and
/// forms post only to the page's own origin.
pub const CSP: &str = "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

/// The stylesheet both sites serve (at their own `style.css`).
pub const STYLE: &str = include_str!("style.css");

/// The cookie that keeps a language chosen on the page.
pub const LANG_COOKIE: &str = "ponte_lang";

/// Headers on every answer: no framing, no referrer, no sniffing, no caching.
pub fn secure(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An answer with a body of the given type, secured.
pub fn answer(status: StatusCode, content_type: &'static str, text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(text.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(&mut resp);
    resp
}

/// An HTML page.
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    answer(status, "text/html; charset=utf-8", page)
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(text) => answer(status, "application/json", text),
        Err(e) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("cannot encode the answer: {e}\n"),
        ),
    }
}

/// A JSON error `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// The stylesheet.
pub fn style() -> Response<Body> {
    answer(StatusCode::OK, "text/css; charset=utf-8", STYLE)
}

/// `303 See Other` to `location` (after a form post, so a reload does not post again).
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = answer(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Add a `Set-Cookie`.
pub fn set_cookie(resp: &mut Response<Body>, cookie: &Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A cookie as every page sets them: `HttpOnly`, `SameSite=Strict`, scoped to `path`,
/// `Secure` when the site is served over TLS. `max_age` `None` is a session cookie.
pub fn cookie(
    name: &'static str,
    value: String,
    path: &'static str,
    tls: bool,
    max_age: Option<std::time::Duration>,
) -> Cookie<'static> {
    let mut c = Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .secure(tls)
        .same_site(SameSite::Strict)
        .build();
    if let Some(age) = max_age {
        c.set_max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
    }
    c
}

/// The value of a request cookie.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v.to_string()))
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A query parameter.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The page's language: `?lang=` (remembered in a cookie, returned to set), else the cookie,
/// else `Accept-Language`.
pub fn choose_lang<B>(
    req: &Request<B>,
    cookie_path: &'static str,
    tls: bool,
) -> (Lang, Option<Cookie<'static>>) {
    if let Some(lang) = query_param(req.uri(), "lang").and_then(|l| Lang::parse(&l)) {
        let year = std::time::Duration::from_secs(365 * 24 * 3600);
        return (
            lang,
            Some(cookie(
                LANG_COOKIE,
                lang.tag().to_string(),
                cookie_path,
                tls,
                Some(year),
            )),
        );
    }
    if let Some(lang) = cookie_value(req.headers(), LANG_COOKIE).and_then(|l| Lang::parse(&l)) {
        return (lang, None);
    }
    let accept = req
        .headers()
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    (Lang::from_accept_language(accept), None)
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Over the limit.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed.
    #[error("the request body could not be read: {0}")]
    Broken(String),
}

/// Read a whole (small) request body, refusing more than `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge(limit)),
        Err(e) => Err(ReadError::Broken(e.to_string())),
    }
}

/// The fields of an `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first field named `name`.
pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Compare secrets in constant time (whatever their lengths: both are hashed first).
pub fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(a.as_bytes())
        .ct_eq(&Sha256::digest(b.as_bytes()))
        .into()
}

/// A fresh random token (session ids, CSRF tokens): 256 bits, URL-safe text.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The media type of a request, without parameters, lowercase.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_carries_the_security_headers() {
        let resp = html(StatusCode::OK, "<p>hi</p>".into());
        let h = resp.headers();
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'none'"), "{csp}");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[test]
    fn cookie_attributes() {
        let c = cookie("s", "v".into(), "/_ponte/console", true, None).to_string();
        for part in [
            "s=v",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/_ponte/console",
        ] {
            assert!(c.contains(part), "{part} missing in {c}");
        }
        let plain = cookie(
            "s",
            "v".into(),
            "/",
            false,
            Some(std::time::Duration::from_secs(60)),
        )
        .to_string();
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(plain.contains("Max-Age=60"), "{plain}");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ponte_lang=pt-BR; b=2"),
        );
        assert_eq!(cookie_value(&headers, LANG_COOKIE).as_deref(), Some("pt-BR"));
        assert_eq!(cookie_value(&headers, "c"), None);
    }

    #[test]
    fn language_from_query_then_cookie_then_header() {
        let req = |uri: &str, cookie: Option<&str>, accept: &str| {
            let mut b = Request::get(uri).header(header::ACCEPT_LANGUAGE, accept);
            if let Some(c) = cookie {
                b = b.header(header::COOKIE, c);
            }
            b.body(()).unwrap()
        };
        let (l, set) = choose_lang(&req("/?lang=pt-BR", Some("ponte_lang=en"), "en"), "/", false);
        assert_eq!(l, Lang::PtBr);
        assert!(set.unwrap().to_string().starts_with("ponte_lang=pt-BR"));
        let (l, set) = choose_lang(&req("/", Some("ponte_lang=en"), "pt-BR"), "/", false);
        assert_eq!((l, set.is_none()), (Lang::En, true));
        let (l, _) = choose_lang(&req("/", None, "pt-BR,pt;q=0.9"), "/", false);
        assert_eq!(l, Lang::PtBr);
        let (l, _) = choose_lang(&req("/?lang=xx", None, "fr"), "/", false);
        assert_eq!(l, Lang::En);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert_eq!(random_token().len(), 64);
        assert_ne!(random_token(), random_token());
    }
}
