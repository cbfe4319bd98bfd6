//! Credentials the public sender must present before a request enters a tunnel: basic auth, an
//! exact header value, or an exact query parameter (for senders like Chatwoot that cannot add
//! headers). No credentials → 401; wrong credentials → 403. Comparisons are constant-time.

use base64::Engine;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use super::error::ProxyError;
use crate::config::relay::EdgeAuth;

/// Check a request. On success returns the query string to forward (the auth parameter removed),
/// or `None` when the query is unchanged.
pub fn check(
    auth: &EdgeAuth,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, ProxyError> {
    let mut presented = false;
    let mut accepted = false;

    if let Some(basic) = &auth.basic
        && let Some((user, pass)) = basic_credentials(headers)
    {
        presented = true;
        let expected_user = basic.user.as_str().as_bytes();
        let expected_pass = basic.password.expose().as_bytes();
        accepted |= bool::from(user.as_bytes().ct_eq(expected_user) & pass.as_bytes().ct_eq(expected_pass));
    }
    if let Some(h) = &auth.header {
        for value in headers.get_all(h.name.as_str()) {
            presented = true;
            accepted |= bool::from(value.as_bytes().ct_eq(h.value.expose().as_bytes()));
        }
    }
    let mut new_query = None;
    if let Some(q) = &auth.query
        && let Some(query) = query
    {
        let mut kept = Vec::new();
        let mut found = false;
        for segment in query.split('&') {
            let mut pair = url::form_urlencoded::parse(segment.as_bytes());
            match pair.next() {
                Some((name, value)) if name == q.name.as_str() => {
                    presented = true;
                    found = true;
                    accepted |= bool::from(value.as_bytes().ct_eq(q.value.expose().as_bytes()));
                }
                _ => kept.push(segment),
            }
        }
        if found {
            new_query = Some(kept.join("&"));
        }
    }

    match (presented, accepted) {
        (_, true) => Ok(new_query),
        (false, false) => Err(ProxyError::Unauthorized {
            basic: auth.basic.is_some(),
        }),
        (true, false) => Err(ProxyError::Forbidden),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(yaml: &str) -> EdgeAuth {
        crate::config::parse_with_env(yaml, "t", &|_| None).unwrap()
    }

    #[test]
    fn basic() {
        let a = auth("basic: {user: ons, password: s3cret}");
        let mut h = HeaderMap::new();
        assert!(matches!(
            check(&a, &h, None),
            Err(ProxyError::Unauthorized { basic: true })
        ));
        let good = base64::engine::general_purpose::STANDARD.encode("ons:s3cret");
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {good}")).unwrap(),
        );
        assert!(check(&a, &h, None).is_ok());
        let bad = base64::engine::general_purpose::STANDARD.encode("ons:nope");
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {bad}")).unwrap(),
        );
        assert!(matches!(check(&a, &h, None), Err(ProxyError::Forbidden)));
    }

    #[test]
    fn query_parameter_is_checked_and_removed() {
        let a = auth("query: {name: token, value: abc}");
        let h = HeaderMap::new();
        assert_eq!(
            check(&a, &h, Some("x=1&token=abc&y=2")).unwrap().as_deref(),
            Some("x=1&y=2")
        );
        assert!(matches!(
            check(&a, &h, Some("token=abd")),
            Err(ProxyError::Forbidden)
        ));
        assert!(matches!(
            check(&a, &h, Some("x=1")),
            Err(ProxyError::Unauthorized { basic: false })
        ));
    }

    #[test]
    fn header_value() {
        let a = auth("header: {name: Authorization, value: Bearer xyz}");
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert!(check(&a, &h, None).is_ok());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer xyzz"));
        assert!(matches!(check(&a, &h, None), Err(ProxyError::Forbidden)));
    }
}
