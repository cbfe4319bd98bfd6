//! The public edge against raw, hostile or slow clients: ambiguous hosts, CONNECT, slowloris, a
//! stalled TLS handshake and a stalled body. Requests are written byte for byte over real TLS.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Open TLS to the relay and write `raw`; return everything read until the server closes or
/// `limit` elapses.
async fn raw_exchange(relay: &RelayHandle, certs: &Certs, raw: &[u8], limit: Duration) -> String {
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(certs.client_tls(&[b"http/1.1"])));
    let mut s = tls.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(reply: &str) -> &str {
    reply.lines().next().unwrap_or("")
}

#[tokio::test]
async fn ambiguous_or_forbidden_requests_are_refused() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!("ingress:\n  - upstream: {}\n", up.url()),
    ));
    agent.connected().await;
    let second = Duration::from_secs(2);
    let cases: [(&str, &str); 5] = [
        (
            "GET /t/demo/ HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            "400",
        ),
        ("GET /t/demo/ HTTP/1.1\r\nConnection: close\r\n\r\n", "400"),
        (
            "GET http://169.254.169.254/t/demo/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
            "405",
        ),
        (
            "GET /t/demo/ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "200",
        ),
    ];
    for (raw, want) in cases {
        let reply = raw_exchange(&relay, &certs, raw.as_bytes(), second).await;
        assert!(status_line(&reply).contains(want), "{raw:?} → {reply:?}");
    }
    // Only the last, well-formed request reached the upstream.
    assert_eq!(up.hits(), 1);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_at_their_limits() {
    use http_body_util::BodyExt;
    let certs = Certs::new();
    // A typical webhook receiver: reads the whole body, then answers.
    let complete = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = complete.clone();
    let up = start_upstream(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            match req.into_body().collect().await {
                Ok(_) => {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    text(http::StatusCode::OK, "got it")
                }
                Err(_) => text(http::StatusCode::BAD_REQUEST, "broken body"),
            }
        }
    })
    .await;
    let relay = start_relay(&relay_yaml(
        Some(&certs),
        "limits:\n  tls_handshake_timeout: 500ms\n  header_read_timeout: 500ms\n  body_idle_timeout: 500ms",
        "",
    ))
    .await;
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!("ingress:\n  - upstream: {}\n", up.url()),
    ));
    agent.connected().await;

    // A TCP connection that never starts TLS is closed after the handshake timeout.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("handshake timeout", tcp.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Slowloris: headers that never end.
    let started = Instant::now();
    let reply = raw_exchange(
        &relay,
        &certs,
        b"GET /t/demo/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: a",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "slowloris held {:?}",
        started.elapsed()
    );
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{reply:?}");

    // A body that stops half way: 408, and the upstream never sees a complete request.
    let started = Instant::now();
    let reply = raw_exchange(
        &relay,
        &certs,
        b"POST /t/demo/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly part",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stalled body held {:?}",
        started.elapsed()
    );
    assert!(status_line(&reply).contains("408"), "{reply:?}");
    assert_eq!(
        complete.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a cut body must not arrive complete"
    );
    agent.stop().await;
    relay.stop().await;
}

#[test]
fn design_md_examples_parse_as_written() {
    let relay = r#"
listen: 0.0.0.0:443
tls:                                  # absent = plain HTTP (behind nginx/Caddy)
  cert: /etc/ponte/tls/fullchain.pem
  key: /etc/ponte/tls/privkey.pem
domain: relay.example.com             # tunnels at <name>.relay.example.com and /t/<name>/
admin_token: ${PONTE_ADMIN_TOKEN}
store: sqlite:///var/lib/ponte/relay.db
tunnels:
  clinica-42:
    token: ${CLINICA_42_TOKEN}        # or token_sha256: <hex of SHA-256 of the token>
    delivery: fallback                # direct | queue | fallback
"#;
    let env = |n: &str| match n {
        "PONTE_ADMIN_TOKEN" => Some("admin-secret-value".to_string()),
        "CLINICA_42_TOKEN" => Some("clinica-42-token-0123456789".to_string()),
        "PONTE_TOKEN" => Some("clinica-42-token-0123456789".to_string()),
        _ => None,
    };
    let cfg = ponte::config::relay::RelayConfig::from_str_with_env(relay, "relay.yaml", &env).unwrap();
    assert_eq!(cfg.domain.as_deref(), Some("relay.example.com"));
    let agent = r#"
relay: https://relay.example.com
token: ${PONTE_TOKEN}
ca_file: /etc/ponte/relay-ca.pem      # optional extra trust anchor
ingress:                              # first match wins
  - path: /hooks/
    upstream: http://localhost:9000
  - upstream: http://localhost:8000   # catch-all
"#;
    let cfg: ponte::config::agent::AgentConfig =
        ponte::config::parse_with_env(agent, "agent.yaml", &env).unwrap();
    let cfg = cfg.merge(Default::default(), "agent.yaml").unwrap();
    assert_eq!(cfg.ingress.len(), 2);
    // The secret never shows in debug output.
    assert!(!format!("{cfg:?}").contains("clinica-42-token"));
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_senders_error() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let head = "POST /t/demo/hook HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let bodies = [
        (
            "a chunk size that is not hex",
            "zz\r\nhello\r\n0\r\n\r\n".to_string(),
        ),
        (
            "a 2^64 chunk size",
            "10000000000000000\r\nhello\r\n0\r\n\r\n".to_string(),
        ),
        (
            "a 200 KB chunk extension",
            format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(200_000)),
        ),
    ];
    for (what, body) in bodies {
        let reply = raw_exchange(&relay, &certs, format!("{head}{body}").as_bytes(), WAIT).await;
        assert!(status_line(&reply).contains("400"), "{what}: {reply:?}");
        assert!(
            reply.to_ascii_lowercase().contains("ponte-error: bad-request"),
            "{what}: {reply:?}"
        );
    }
    agent.stop().await;
    relay.stop().await;
}
