//! The two URLs of agent.yaml, validated while deserialising so an error keeps its line: where
//! the relay is (`relay:`, `--relay`, `--url`) and where a rule's requests go (`upstream:`).

use serde::{Deserialize, Deserializer};

use super::parse_scalar;

/// Where the relay is, validated: scheme, host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// TLS (https/wss) or plain (http/ws, loopback only).
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix when the relay sits under a sub-path of a proxy; `""` normally.
    pub base_path: String,
}

impl RelayUrl {
    /// Parse `https://…`, `wss://…`, or (loopback only) `http://…`/`ws://…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim()).map_err(|e| {
            format!("`{text}` is not a relay URL ({e}); write it like https://relay.example.com")
        })?;
        let tls = match url.scheme() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            other => {
                return Err(format!(
                    "relay URL scheme `{other}` is not supported; use https:// (or wss://)"
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("`{text}` has no host")),
        };
        if !tls && !is_loopback(&host) {
            return Err(format!(
                "refusing plain `{}://` to {host}: the token and all traffic would cross the network unencrypted; use https://{host}",
                url.scheme()
            ));
        }
        let port = url.port().unwrap_or(if tls { 443 } else { 80 });
        // inlets users pass `wss://host/tunnel` or `wss://host`; treat a trailing `/tunnel`-less
        // path as a proxy sub-path and keep it.
        let base_path = url.path().trim_end_matches('/').to_string();
        Ok(RelayUrl {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// `host:port` for dialing and for `CONNECT` through a proxy (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL back as text, for logs.
    pub fn display(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.authority(),
            self.base_path
        )
    }
}

/// Loopback names and addresses: the only places plain HTTP is allowed to.
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `relay:` as one URL, or a list of URLs (one per relay node of a cluster).
pub(super) fn relay_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RelayUrl>, D::Error> {
    struct OneOrMany;

    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<RelayUrl>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a relay URL or a list of relay URLs")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            use serde::de::IntoDeserializer;
            Ok(vec![RelayUrl::deserialize(v.into_deserializer())?])
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut urls = Vec::new();
            while let Some(url) = seq.next_element::<RelayUrl>()? {
                urls.push(url);
            }
            Ok(urls)
        }
    }

    d.deserialize_any(OneOrMany)
}

impl<'de> Deserialize<'de> for RelayUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, RelayUrl::parse)
    }
}

/// A validated upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub https: bool,
    /// `host:port` to dial.
    pub authority: http::uri::Authority,
    /// Path prefix prepended to every request path (no trailing slash), `""` normally.
    pub base_path: String,
}

impl UpstreamUrl {
    /// Parse `http://host[:port][/base]` or `https://…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        // ngrok habits: `8000` means http://localhost:8000, `host:port` means http://host:port.
        let expanded;
        let t = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
            expanded = format!("http://localhost:{t}");
            expanded.as_str()
        } else if !t.contains("://") && t.contains(':') {
            expanded = format!("http://{t}");
            expanded.as_str()
        } else {
            t
        };
        let uri: http::Uri = t.parse().map_err(|e| {
            format!("`{text}` is not an upstream URL ({e}); write it like http://localhost:8000")
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "upstream `{text}` must start with http:// or https:// (e.g. http://localhost:8000)"
                ));
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            return Err(format!("upstream `{text}` has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "upstream `{text}`: credentials in the URL are not supported"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("upstream `{text}`: a query string is not supported here"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            https,
            authority,
            base_path,
        })
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.base_path
        )
    }
}

/// An optional `upstream:` (a rule may name a hooks file instead).
pub(super) fn opt_upstream_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UpstreamUrl>, D::Error> {
    struct Wrapped(UpstreamUrl);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse_scalar(d, UpstreamUrl::parse).map(Wrapped)
        }
    }
    Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let u = RelayUrl::parse("wss://relay.example.com").unwrap();
        assert!(u.tls);
        assert_eq!(u.authority(), "relay.example.com:443");
        assert!(RelayUrl::parse("http://127.0.0.1:8080").is_ok());
        assert!(RelayUrl::parse("ws://localhost:8080").is_ok());
        assert!(RelayUrl::parse("http://[::1]:8080").is_ok());
        let e = RelayUrl::parse("http://relay.example.com").unwrap_err();
        assert!(e.contains("unencrypted"), "{e}");
        assert!(RelayUrl::parse("ftp://x").is_err());
        assert_eq!(RelayUrl::parse("https://h/ponte/").unwrap().base_path, "/ponte");
    }

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("http://localhost:8000").unwrap();
        assert_eq!(u.authority.as_str(), "localhost:8000");
        assert_eq!(u.base_path, "");
        assert_eq!(UpstreamUrl::parse("https://h/api/").unwrap().base_path, "/api");
        assert_eq!(
            UpstreamUrl::parse("8000").unwrap().to_string(),
            "http://localhost:8000"
        );
        assert_eq!(
            UpstreamUrl::parse("127.0.0.1:9000").unwrap().to_string(),
            "http://127.0.0.1:9000"
        );
        assert!(UpstreamUrl::parse("localhost").is_err());
        assert!(UpstreamUrl::parse("tcp://x").is_err());
    }
}
