//! Reaching the relay through a corporate HTTP proxy: a TCP connection to the proxy, then an
//! HTTP `CONNECT` to the relay before TLS. Which proxy (if any) is `config::proxy`'s decision.

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::proxy::ProxyRoute;

/// Largest CONNECT response header we read from a proxy.
const MAX_PROXY_RESPONSE: usize = 8 * 1024;

/// Why the proxy did not give us a tunnel to the relay.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// TCP to the proxy failed.
    #[error("cannot reach proxy {proxy}: {source}")]
    Unreachable {
        /// The proxy, `host:port`.
        proxy: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection to the proxy failed during CONNECT.
    #[error("proxy {proxy}: {source}")]
    Io {
        /// The proxy.
        proxy: String,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy closed the connection before answering.
    #[error("proxy {proxy} closed the connection during CONNECT")]
    Closed {
        /// The proxy.
        proxy: String,
    },
    /// The answer's header block is larger than we read.
    #[error("proxy {proxy} sent an oversized response")]
    Oversized {
        /// The proxy.
        proxy: String,
    },
    /// The answer is not HTTP.
    #[error("proxy {proxy} sent a malformed response: {source}")]
    Malformed {
        /// The proxy.
        proxy: String,
        /// The parser's complaint.
        source: httparse::Error,
    },
    /// 407: the proxy wants credentials (or other ones).
    #[error(
        "proxy {proxy} requires authentication (407); put the credentials in HTTPS_PROXY as http://user:password@host:port"
    )]
    AuthRequired {
        /// The proxy.
        proxy: String,
    },
    /// Any other refusal.
    #[error("proxy {proxy} refused CONNECT to {target}: {status} {reason}")]
    Refused {
        /// The proxy.
        proxy: String,
        /// Where we asked to go.
        target: String,
        /// Its status code.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
}

/// Open a TCP stream to the proxy and ask it to `CONNECT` to `target` (`host:port`).
pub async fn connect(route: &ProxyRoute, target: &str) -> Result<TcpStream, ProxyError> {
    let proxy = || route.authority.clone();
    let mut stream =
        TcpStream::connect(&route.authority)
            .await
            .map_err(|source| ProxyError::Unreachable {
                proxy: proxy(),
                source,
            })?;
    let _ = stream.set_nodelay(true);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = &route.authorization {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(auth.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let io = |source| ProxyError::Io {
        proxy: proxy(),
        source,
    };
    stream.write_all(&request).await.map_err(io)?;
    // Read byte by byte up to the end of the header block: a proxy sends nothing after its
    // response until we speak, so we never swallow TLS bytes.
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() >= MAX_PROXY_RESPONSE {
            return Err(ProxyError::Oversized { proxy: proxy() });
        }
        if stream.read(&mut byte).await.map_err(io)? == 0 {
            return Err(ProxyError::Closed { proxy: proxy() });
        }
        buf.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf).map_err(|source| ProxyError::Malformed {
        proxy: proxy(),
        source,
    })?;
    // The header block is complete, so the status line parsed whole.
    let code = resp.code.unwrap_or_default();
    match StatusCode::from_u16(code) {
        Ok(s) if s.is_success() => Ok(stream),
        Ok(StatusCode::PROXY_AUTHENTICATION_REQUIRED) => Err(ProxyError::AuthRequired { proxy: proxy() }),
        Ok(status) => Err(ProxyError::Refused {
            proxy: proxy(),
            target: target.to_string(),
            status: status.as_u16(),
            reason: resp.reason.unwrap_or("").to_string(),
        }),
        Err(_) => Err(ProxyError::Malformed {
            proxy: proxy(),
            source: httparse::Error::Status,
        }),
    }
}
