//! Corporate proxies: `HTTPS_PROXY` / `https_proxy` (and `NO_PROXY`) as every HTTP tool reads
//! them, then an HTTP `CONNECT` through the proxy before TLS to the relay.

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy to tunnel through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// `host:port` of the proxy.
    pub authority: String,
    /// `Proxy-Authorization` value, when the URL had credentials.
    pub authorization: Option<String>,
    /// `NO_PROXY` entries.
    pub no_proxy: Vec<String>,
}

/// Largest CONNECT response header we read from a proxy.
const MAX_PROXY_RESPONSE: usize = 8 * 1024;

impl ProxySettings {
    /// Read the proxy from the environment lookup given (tests pass a map).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>, tls: bool) -> Result<Option<Self>, String> {
        let names: &[&str] = if tls {
            &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        } else {
            &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        };
        let Some((name, value)) = names
            .iter()
            .find_map(|n| lookup(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
        else {
            return Ok(None);
        };
        let no_proxy = lookup("NO_PROXY")
            .or_else(|| lookup("no_proxy"))
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Self::parse(&value, no_proxy)
            .map(Some)
            .map_err(|e| format!("{name}: {e}"))
    }

    /// Parse `http://[user:pass@]host:port`.
    pub fn parse(text: &str, no_proxy: Vec<String>) -> Result<Self, String> {
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| format!("`{text}` is not a proxy URL ({e})"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "proxy scheme `{}` is not supported; use an http:// proxy (CONNECT)",
                url.scheme()
            ));
        }
        let host = url.host_str().ok_or_else(|| format!("`{text}` has no host"))?;
        let port = url.port().unwrap_or(3128);
        let authorization = if url.username().is_empty() {
            None
        } else {
            let decode = |s: &str| {
                url::form_urlencoded::parse(s.as_bytes())
                    .next()
                    .map(|(k, _)| k.into_owned())
                    .unwrap_or_default()
            };
            let user = decode(url.username());
            let pass = url.password().map(decode).unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            Some(format!("Basic {encoded}"))
        };
        Ok(ProxySettings {
            authority: format!("{host}:{port}"),
            authorization,
            no_proxy,
        })
    }

    /// Whether `host` should bypass the proxy (`NO_PROXY` exact names, `.suffix`/`suffix`, `*`).
    pub fn bypass(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.no_proxy.iter().any(|entry| {
            let entry = entry.split(':').next().unwrap_or(entry);
            entry == "*"
                || host == entry.trim_start_matches('.')
                || host.ends_with(&format!(".{}", entry.trim_start_matches('.')))
        })
    }

    /// Open a TCP stream to the proxy and ask it to `CONNECT` to `target` (`host:port`).
    pub async fn connect(&self, target: &str) -> Result<TcpStream, String> {
        let mut stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot reach proxy {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("proxy {}: {e}", self.authority))?;
        // Read byte by byte up to the end of the header block: a proxy sends nothing after its
        // response until we speak, so we never swallow TLS bytes.
        let mut buf = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if buf.len() >= MAX_PROXY_RESPONSE {
                return Err(format!("proxy {} sent an oversized response", self.authority));
            }
            let n = stream
                .read(&mut byte)
                .await
                .map_err(|e| format!("proxy {}: {e}", self.authority))?;
            if n == 0 {
                return Err(format!(
                    "proxy {} closed the connection during CONNECT",
                    self.authority
                ));
            }
            buf.push(byte[0]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&buf)
            .map_err(|e| format!("proxy {} sent a malformed response: {e}", self.authority))?;
        match resp.code {
            Some(code) if (200..300).contains(&code) => Ok(stream),
            Some(407) => Err(format!(
                "proxy {} requires authentication (407); put the credentials in HTTPS_PROXY as http://user:password@host:port",
                self.authority
            )),
            Some(code) => Err(format!(
                "proxy {} refused CONNECT to {target}: {code} {}",
                self.authority,
                resp.reason.unwrap_or("")
            )),
            None => Err(format!("proxy {} sent an incomplete response", self.authority)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_no_proxy() {
        let env = |n: &str| match n {
            "https_proxy" => Some("http://u%40x:p@proxy.corp:8080".to_string()),
            "NO_PROXY" => Some("localhost, .internal.corp,10.0.0.1".to_string()),
            _ => None,
        };
        let p = ProxySettings::from_env(env, true).unwrap().unwrap();
        assert_eq!(p.authority, "proxy.corp:8080");
        let expected = base64::engine::general_purpose::STANDARD.encode("u@x:p");
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!("Basic {expected}").as_str())
        );
        assert!(p.bypass("localhost"));
        assert!(p.bypass("relay.internal.corp"));
        assert!(p.bypass("internal.corp"));
        assert!(!p.bypass("relay.example.com"));
        assert!(ProxySettings::from_env(|_| None, true).unwrap().is_none());
        assert!(ProxySettings::parse("socks5://x:1", vec![]).is_err());
    }
}
