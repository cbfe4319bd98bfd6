//! DNS-rebinding and cross-site protection for the inspector. A page on any web site can make
//! the browser send requests to `127.0.0.1:4040`, and with DNS rebinding even read the answers
//! (its own name, re-pointed at 127.0.0.1). So every request must name the inspector by a
//! loopback `Host` (a rebinding name never is one), and a state change (a replay) must come
//! from the inspector's own pages: its `Origin` (or `Referer`), when sent, is the inspector's.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header;

/// Is `host` (a `Host` header: name or address, with an optional port) one the inspector
/// listening on `bound` answers to? Loopback names and addresses, with no port or the
/// inspector's own; when the user bound a non-loopback address on purpose, also IP literals
/// (a rebinding attack needs a name, never an address).
pub fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let host = host.trim();
    let (name, port) = split_host_port(host);
    if port.is_some_and(|p| p != bound.port()) {
        return false;
    }
    let name = name.to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    if name == "localhost" {
        return true;
    }
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => true,
        Ok(_) => !bound.ip().is_loopback(),
        Err(_) => false,
    }
}

/// Is a state-changing request from the inspector's own pages? An `Origin` (or, without one, a
/// `Referer`) that names a site must name an allowed host over plain http. A request naming
/// none passes this check: curl and scripts send neither, and the pages' own forms send
/// `Origin: null`, because they are served with `Referrer-Policy: no-referrer`. Those are
/// then held to the CSRF token (forms) or a JSON body (the API).
pub fn same_origin(headers: &HeaderMap, bound: SocketAddr) -> bool {
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
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port_or_known_default().unwrap_or(80);
    port == bound.port() && host_allowed(host, bound)
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:4040
        return match rest.split_once(']') {
            Some((addr, tail)) => (
                &host[..addr.len() + 2],
                tail.strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .or(if tail.is_empty() { None } else { Some(0) }),
            ),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        // Port 0 never matches: an unparsable port is refused.
        Some((name, port)) => (name, Some(port.parse().unwrap_or(0))),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_hosts_only() {
        let bound = at("127.0.0.1:4040");
        for (host, ok) in [
            ("localhost:4040", true),
            ("LOCALHOST:4040", true),
            ("localhost", true),
            ("127.0.0.1:4040", true),
            ("127.0.0.2:4040", true),
            ("[::1]:4040", true),
            ("localhost:4041", false),
            ("localhost:x", false),
            ("attacker.example:4040", false),
            ("localhost.attacker.example:4040", false),
            ("192.168.0.10:4040", false),
            ("", false),
        ] {
            assert_eq!(host_allowed(host, bound), ok, "{host}");
        }
        // Bound to the LAN on purpose: its address works, a name still does not.
        let lan = at("0.0.0.0:4040");
        assert!(host_allowed("192.168.0.10:4040", lan));
        assert!(!host_allowed("evil.example:4040", lan));
    }

    #[test]
    fn origins_of_state_changes() {
        let bound = at("127.0.0.1:4040");
        let check = |name: http::HeaderName, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            same_origin(&h, bound)
        };
        assert!(same_origin(&HeaderMap::new(), bound));
        assert!(check(header::ORIGIN, "http://127.0.0.1:4040"));
        assert!(check(header::ORIGIN, "http://localhost:4040"));
        assert!(!check(header::ORIGIN, "http://attacker.example:4040"));
        assert!(!check(header::ORIGIN, "http://127.0.0.1:4041"));
        assert!(!check(header::ORIGIN, "https://127.0.0.1:4040"));
        // What the pages' own forms send under `Referrer-Policy: no-referrer`.
        assert!(check(header::ORIGIN, "null"));
        assert!(!check(header::ORIGIN, "file:///tmp/x.html"));
        assert!(check(header::REFERER, "http://127.0.0.1:4040/requests/3"));
        assert!(!check(header::REFERER, "http://attacker.example/x"));
    }
}
