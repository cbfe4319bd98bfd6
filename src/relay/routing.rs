//! Which tunnel a public request is for: by host `<name>.<domain>`, or by path `/t/<name>/…` with
//! the prefix stripped. `/_ponte/` on any other host is the relay's own.

use http::uri::PathAndQuery;

use crate::config::relay::TunnelName;
use crate::protocol::RESERVED_PREFIX;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The relay's own endpoints (`/_ponte/…`).
    Internal,
    /// A tunnel, with the path the agent should see.
    Tunnel {
        /// The tunnel.
        name: TunnelName,
        /// Path and query forwarded (prefix already stripped for path routing).
        path: PathAndQuery,
        /// True when routed by `/t/<name>/` (so redirects from the upstream may need the prefix).
        by_path: bool,
    },
    /// No tunnel matches.
    NotFound,
}

/// Route on the canonical host (lowercase, no port) and the request's path and query.
pub fn route(host: &str, path: &PathAndQuery, domain: Option<&str>) -> Route {
    if let Some(domain) = domain
        && let Some(label) = host.strip_suffix(domain).and_then(|h| h.strip_suffix('.'))
    {
        return match TunnelName::parse(label) {
            Ok(name) => Route::Tunnel {
                name,
                path: path.clone(),
                by_path: false,
            },
            Err(_) => Route::NotFound,
        };
    }
    let p = path.path();
    if p.starts_with(RESERVED_PREFIX) {
        return Route::Internal;
    }
    let Some(rest) = p.strip_prefix("/t/") else {
        return Route::NotFound;
    };
    let (label, remainder) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(name) = TunnelName::parse(label) else {
        return Route::NotFound;
    };
    let forwarded = match path.query() {
        Some(q) => format!("{remainder}?{q}"),
        None => remainder.to_string(),
    };
    match forwarded.parse() {
        Ok(path) => Route::Tunnel {
            name,
            path,
            by_path: true,
        },
        Err(_) => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, path: &str, domain: Option<&str>) -> Route {
        route(host, &path.parse().unwrap(), domain)
    }

    fn tunnel(name: &str, path: &str, by_path: bool) -> Route {
        Route::Tunnel {
            name: TunnelName::parse(name).unwrap(),
            path: path.parse().unwrap(),
            by_path,
        }
    }

    #[test]
    fn table() {
        let d = Some("relay.example.com");
        let cases = [
            (
                r("clinica-42.relay.example.com", "/hooks/x?a=1", d),
                tunnel("clinica-42", "/hooks/x?a=1", false),
            ),
            (
                r("clinica-42.relay.example.com", "/_ponte/health", d),
                tunnel("clinica-42", "/_ponte/health", false),
            ),
            (r("a.b.relay.example.com", "/", d), Route::NotFound),
            (r("relay.example.com", "/_ponte/health", d), Route::Internal),
            (
                r("relay.example.com", "/t/demo/hooks/x?a=1", d),
                tunnel("demo", "/hooks/x?a=1", true),
            ),
            (r("127.0.0.1", "/t/demo", None), tunnel("demo", "/", true)),
            (r("127.0.0.1", "/t/demo?x=1", None), tunnel("demo", "/?x=1", true)),
            (r("127.0.0.1", "/t/Demo/", None), Route::NotFound),
            (r("127.0.0.1", "/t/", None), Route::NotFound),
            (r("127.0.0.1", "/other", None), Route::NotFound),
            (r("evilrelay.example.com", "/x", d), Route::NotFound),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
    }
}
