//! The public edge: the configuration examples of DESIGN.md, and a malformed chunked body answered
//! as the sender's error. Hostile and slow clients (ambiguous hosts, CONNECT, slowloris, stalled
//! handshakes and bodies) are in tests/attacks.rs, which runs them against the real relay binary
//! and checks its memory and descriptors afterwards.

mod support;

use support::*;

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
