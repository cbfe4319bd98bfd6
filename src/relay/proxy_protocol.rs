//! The PROXY protocol header (HAProxy `send-proxy` / `send-proxy-v2`) that a TCP load balancer
//! puts before the client's bytes, so the relay sees each client's own address behind it: the
//! per-address login and reset budgets, the access log and edge rules then apply to the client,
//! not to the balancer. Read only from the addresses in `proxy_protocol:`, and from them only when
//! present (other nodes of a cluster on the same hosts connect without one). Parsing is the `ppp`
//! crate's; this module only frames the header on the socket, by peeking, so that not one byte of
//! the TLS or HTTP stream behind it is consumed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::HeaderResult;
use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The version 2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The version 1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Largest header read: a version 1 line is at most 107 bytes; version 2 with the TLVs HAProxy
/// sends stays far below this.
const MAX_HEADER: usize = 4096;
/// Pause between two looks at a header that arrived in pieces.
const PIECES_PAUSE: Duration = Duration::from_millis(5);

/// Why a connection from a load balancer was closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Not a valid header, or one over [`MAX_HEADER`].
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// The header did not arrive in time.
    #[error("the PROXY protocol header did not arrive within {0:?}")]
    Timeout(Duration),
    /// The socket failed.
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Is `ip` one of the `proxy_protocol:` addresses?
pub fn trusted(ip: IpAddr, from: &[ipnet::IpNet]) -> bool {
    from.iter().any(|net| net.contains(&ip))
}

/// Read the header at the start of `stream`, if there is one: `Ok(Some(client))` for a proxied
/// TCP connection, `Ok(None)` without a header or for the balancer's own connections (health
/// checks: `LOCAL`, `UNKNOWN`), the bytes behind the header left unread.
pub async fn read(stream: &mut TcpStream, within: Duration) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(within, read_now(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(within))?
}

async fn read_now(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf).await?;
        let seen = &buf[..n];
        if n == 0 {
            return Ok(None);
        }
        match starts_with_header(seen) {
            Some(false) => return Ok(None),
            None => {
                tokio::time::sleep(PIECES_PAUSE).await;
                continue;
            }
            Some(true) => {}
        }
        let parsed = HeaderResult::parse(seen);
        if parsed.is_incomplete() {
            if n == MAX_HEADER {
                return Err(ProxyHeaderError::Malformed(format!(
                    "longer than {MAX_HEADER} bytes"
                )));
            }
            tokio::time::sleep(PIECES_PAUSE).await;
            continue;
        }
        let (len, client) = client_of(parsed)?;
        // Consume exactly the header: what follows is the client's TLS or HTTP.
        let mut header = vec![0u8; len];
        stream.read_exact(&mut header).await?;
        return Ok(client);
    }
}

/// Does `seen` start with a header (`None`: too few bytes to tell yet)? A TLS record starts with
/// 0x16 and an HTTP request with a method, so one byte mostly decides.
fn starts_with_header(seen: &[u8]) -> Option<bool> {
    for prefix in [V2_SIGNATURE, V1_PREFIX] {
        let n = seen.len().min(prefix.len());
        if seen[..n] == prefix[..n] {
            return (n == prefix.len()).then_some(true);
        }
    }
    Some(false)
}

/// The header's length and the client's address in it.
fn client_of(parsed: HeaderResult<'_>) -> Result<(usize, Option<SocketAddr>), ProxyHeaderError> {
    match parsed {
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
            };
            Ok((header.len(), client))
        }
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok((header.header.len(), client))
        }
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair on loopback; `first` is written by the client before the test reads.
    async fn pair(first: &[u8]) -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(first).await.unwrap();
        (server, client)
    }

    async fn rest(server: &mut TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn version_1_gives_the_client_and_leaves_the_request() {
        let (mut server, _c) = pair(b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 443\r\nGET / HTTP/1.1\r\n").await;
        let client = read(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(client, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(rest(&mut server).await, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn version_2_gives_the_client_and_leaves_the_tls_bytes() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
        let (mut server, _c) = pair(&bytes).await;
        let client = read(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(client, Some("[2001:db8::7]:40000".parse().unwrap()));
        assert_eq!(rest(&mut server).await, [0x16, 0x03, 0x01]);
    }

    #[tokio::test]
    async fn no_header_leaves_everything_and_a_local_header_names_no_client() {
        let (mut server, _c) = pair(b"POST /t/demo HTTP/1.1\r\n").await;
        assert_eq!(read(&mut server, Duration::from_secs(1)).await.unwrap(), None);
        assert_eq!(rest(&mut server).await, b"POST /t/demo HTTP/1.1\r\n");

        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        let (mut server, _c) = pair(&local).await;
        assert_eq!(read(&mut server, Duration::from_secs(1)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_malformed_or_missing_header_is_an_error() {
        let (mut server, _c) = pair(b"PROXY TCP4 not-an-address 10.0.0.5 1 2\r\n").await;
        let err = read(&mut server, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Malformed(_)), "{err}");

        // A line that never ends: the timeout, not a hang.
        let (mut server, _c) = pair(b"PROXY TCP4 203.0.113.7").await;
        let err = read(&mut server, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Timeout(_)), "{err}");
    }
}
