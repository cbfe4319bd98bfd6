//! Header hygiene both proxies apply: hop-by-hop headers are for one connection only and must not
//! cross the tunnel (RFC 9110 §7.6.1).

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, never forwarded.
/// (`Trailer` is not among them: it declares end-to-end trailer fields, and HTTP/1.1 servers only
/// send the trailers it names.)
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers, including any the `Connection` header names. `TE: trailers` is kept
/// because it is the one value HTTP/2 allows and gRPC-style upstreams need it.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    });
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
    if te_trailers {
        headers.insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
}

/// Does any `name` header carry `token` in its comma-separated list (case-insensitive)? Used
/// for `Connection: upgrade` and `Upgrade: …` checks.
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Is this an HTTP/1.1 `GET` asking to upgrade to `protocol`?
pub fn is_upgrade_to<B>(req: &http::Request<B>, protocol: &str) -> bool {
    req.version() == http::Version::HTTP_11
        && req.method() == http::Method::GET
        && has_token(req.headers(), header::CONNECTION, "upgrade")
        && has_token(req.headers(), header::UPGRADE, protocol)
}

/// Is `req` an HTTP/2 extended CONNECT (RFC 8441) for `protocol`?
pub fn is_extended_connect<B>(req: &http::Request<B>, protocol: &str) -> bool {
    req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_listed_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h[header::TE], "trailers");
    }
}
