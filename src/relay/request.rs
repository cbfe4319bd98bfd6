//! Request hygiene at the public edge: exactly one authority per request, canonicalised, and the
//! `X-Forwarded-*` headers the upstream uses to see the real sender.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};

use super::access::Counted;
use super::error::ProxyError;
use crate::body::DrainOnDrop;

/// The body of a public request: an HTTP/2 body not read to its end is drained in the background
/// after an early answer, so that senders see the status rather than a reset stream (see
/// [`DrainOnDrop`]); its bytes are counted for the access log when `seen` is given.
pub type PublicBody = DrainOnDrop<Counted<hyper::body::Incoming>>;

/// Wrap the body of a request as it arrives from the public side.
pub fn public(req: Request<hyper::body::Incoming>, seen: Option<Arc<AtomicU64>>) -> Request<PublicBody> {
    let h2 = req.version() == Version::HTTP_2;
    req.map(|body| DrainOnDrop::new(Counted::new(body, seen), h2))
}

/// Bytes the HTTP/2 layer accepts in one header block, as a multiple of `max_header_bytes`. The
/// relay checks the configured limit itself ([`check_header_size`]) so that its 431 is logged and
/// counted; the HTTP/2 layer refuses only blocks far past it (its 431 is never seen by the relay),
/// which keeps the memory a header block can take bounded.
pub const H2_HEADER_BACKSTOP: u64 = 4;

/// Refuse an HTTP/2 request whose header block is over `limit` (HTTP/1.1's limit is checked by the
/// parser, which answers 431 before a request exists). Sizes follow RFC 9113 §6.5.2, as a peer's
/// `SETTINGS_MAX_HEADER_LIST_SIZE` would: name + value + 32 per field, pseudo-headers included.
pub fn check_header_size<B>(req: &Request<B>, limit: u64) -> Result<(), ProxyError> {
    if req.version() != Version::HTTP_2 {
        return Ok(());
    }
    let uri = req.uri();
    let pseudo = [
        (":method", req.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (":authority", uri.authority().map_or(0, |a| a.as_str().len())),
        (":path", uri.path_and_query().map_or(1, |p| p.as_str().len())),
    ];
    let size: u64 = pseudo.iter().map(|(n, v)| (n.len() + v + 32) as u64).sum::<u64>()
        + req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64)
            .sum::<u64>();
    if size > limit {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// The authority a request is for, as sent and in canonical form.
#[derive(Debug, Clone)]
pub struct Authority {
    /// As the sender wrote it (may include a port), for `X-Forwarded-Host` and `:authority`.
    pub raw: String,
    /// Lowercase, no port, no trailing dot, IDNA (punycode): what routing compares.
    pub canonical: String,
}

/// Find the one authority of a request. HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2); an
/// absolute-form target must agree with it; an HTTP/2 `:authority` must agree with any `host`.
pub fn authority<B>(req: &Request<B>) -> Result<Authority, ProxyError> {
    // CONNECT would make the relay a proxy to anywhere. The one exception is another relay
    // node's websocket for a tunnel held here (an extended CONNECT to the forwarding endpoint,
    // which checks the cluster secret before anything else).
    let forwarded_websocket = req.uri().path() == crate::protocol::cluster::FORWARD_PATH
        && crate::protocol::headers::is_extended_connect(req, "websocket");
    if req.method() == Method::CONNECT && !forwarded_websocket {
        return Err(ProxyError::MethodNotAllowed);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    let host = host
        .map(|h| {
            h.to_str()
                .map_err(|_| ProxyError::BadRequest("Host header is not valid text".into()))
        })
        .transpose()?;
    let uri_authority = req.uri().authority().map(|a| a.as_str());
    let raw = match (req.version(), host, uri_authority) {
        (Version::HTTP_2 | Version::HTTP_3, h, Some(a)) => {
            if let Some(h) = h
                && canonical(h)? != canonical(a)?
            {
                return Err(ProxyError::BadRequest(":authority and Host disagree".into()));
            }
            a.to_string()
        }
        (_, Some(h), Some(a)) => {
            if canonical(h)? != canonical(a)? {
                return Err(ProxyError::BadRequest(
                    "the request target names a different host than the Host header".into(),
                ));
            }
            h.to_string()
        }
        (_, Some(h), None) => h.to_string(),
        (Version::HTTP_10 | Version::HTTP_09, None, None) => String::new(),
        (_, None, _) => return Err(ProxyError::BadRequest("missing Host header".into())),
    };
    let canonical = if raw.is_empty() {
        String::new()
    } else {
        canonical(&raw)?
    };
    Ok(Authority { raw, canonical })
}

/// Canonical host: lowercase, port and trailing dot removed, international names in punycode.
pub fn canonical(authority: &str) -> Result<String, ProxyError> {
    let bad = || ProxyError::BadRequest(format!("`{authority}` is not a valid host"));
    let a: http::uri::Authority = authority.parse().map_err(|_| bad())?;
    if authority.contains('@') {
        return Err(bad());
    }
    let host = a.host();
    if host.starts_with('[') {
        return Ok(host.to_ascii_lowercase());
    }
    let host = host.trim_end_matches('.');
    match url::Host::parse(host) {
        Ok(url::Host::Domain(d)) => Ok(d.to_ascii_lowercase()),
        Ok(url::Host::Ipv4(ip)) => Ok(ip.to_string()),
        Ok(url::Host::Ipv6(ip)) => Ok(format!("[{ip}]")),
        Err(_) => Err(bad()),
    }
}

/// Add `X-Forwarded-For`, `-Proto` and `-Host`. Unless the relay trusts its peer (a proxy it runs
/// in front), incoming values are replaced, so a sender cannot forge its address.
pub fn add_forwarded(headers: &mut HeaderMap, peer: SocketAddr, tls: bool, host: &str, trust_incoming: bool) {
    let peer_ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if trust_incoming => format!("{prev}, {peer_ip}"),
        _ => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let keep_proto = trust_incoming && headers.contains_key("x-forwarded-proto");
    if !keep_proto {
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
    let keep_host = trust_incoming && headers.contains_key("x-forwarded-host");
    if !keep_host && let Ok(v) = HeaderValue::from_str(host) {
        headers.insert("x-forwarded-host", v);
    }
}

/// True for an HTTP/1.1 websocket upgrade request.
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    crate::protocol::headers::is_upgrade_to(req, "websocket")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        let ok = authority(&req(Version::HTTP_11, "/x", &["Demo.Relay.Example.com.:8443"])).unwrap();
        assert_eq!(ok.canonical, "demo.relay.example.com");
        assert_eq!(ok.raw, "Demo.Relay.Example.com.:8443");
        assert!(authority(&req(Version::HTTP_11, "/x", &[])).is_err());
        assert!(authority(&req(Version::HTTP_11, "/x", &["a", "b"])).is_err());
        assert!(
            authority(&req(
                Version::HTTP_11,
                "http://other.example/x",
                &["relay.example"]
            ))
            .is_err()
        );
        assert!(
            authority(&req(
                Version::HTTP_11,
                "http://relay.example/x",
                &["relay.example"]
            ))
            .is_ok()
        );
        assert!(authority(&req(Version::HTTP_2, "https://a.example/x", &["b.example"])).is_err());
        assert!(authority(&req(Version::HTTP_2, "https://a.example/x", &[])).is_ok());
        // Hosts arrive in ASCII (punycode); raw UTF-8 is not a valid authority.
        assert_eq!(
            canonical("XN--BCHER-KVA.Example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert!(canonical("bücher.example").is_err());
        assert!(canonical("user@host").is_err());
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("host:22")
            .header("host", "host:22")
            .body(())
            .unwrap();
        assert!(matches!(authority(&connect), Err(ProxyError::MethodNotAllowed)));
    }

    #[test]
    fn forwarded_headers_are_not_forgeable_by_default() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        add_forwarded(&mut h, "1.2.3.4:5".parse().unwrap(), true, "a.example", false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.example");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("9.9.9.9"));
        add_forwarded(&mut h, "1.2.3.4:5".parse().unwrap(), false, "a.example", true);
        assert_eq!(h["x-forwarded-for"], "9.9.9.9, 1.2.3.4");
    }
}
