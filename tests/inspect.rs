//! The agent inspector over plain HTTP: a request through the tunnel shows up with its headers
//! and body, replays (as it was and edited) reach the upstream and are recorded as replays,
//! metrics count exactly what was sent, and requests naming another host or coming from
//! another site's page are refused (DNS rebinding, CSRF).

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::Value;
use support::pages::{raw_http, start_inspected_agent};
use support::prometheus::sample;
use support::*;

struct Setup {
    relay: RelayHandle,
    agent: AgentHandle,
    inspector: SocketAddr,
    upstream: Upstream,
    log: Log,
    certs: Certs,
}

/// A relay, a recording upstream answering 200 (404 for `/missing`), and an agent with its
/// inspector on a fresh port.
async fn setup() -> Setup {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let (upstream, log) = recording_upstream(|r, _| {
        if r.path.starts_with("/missing") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        }
    })
    .await;
    let (mut agent, inspector) = start_inspected_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!(
            "inspect: 127.0.0.1:0\ningress:\n  - upstream: {}\n",
            upstream.url()
        ),
    ))
    .await;
    agent.connected().await;
    Setup {
        relay,
        agent,
        inspector,
        upstream,
        log,
        certs,
    }
}

async fn api(addr: SocketAddr, path: &str) -> Value {
    let (status, _, body) = raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}", addr.port()),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

async fn replay(addr: SocketAddr, id: u64, edit: &str) -> (u16, Value) {
    let (status, _, body) = raw_http(
        addr,
        &format!(
            "POST /api/requests/{id}/replay HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/json",
            addr.port()
        ),
        edit.as_bytes(),
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_request_shows_up_with_its_headers_and_body_and_replays() {
    let s = setup().await;
    let c = client(Some(&s.certs), false);
    let r = send(
        &c,
        http::Request::post(format!("{}/t/demo/hooks/pay?order=7", s.relay.url(true)))
            .header("content-type", "application/json")
            .header("x-signature", "sig-123")
            .body(ponte::body::full(r#"{"event":"paid","amount":10}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);

    // Listed newest first, complete once the response body has gone back.
    let list = eventually("the exchange to complete", || async {
        let list = api(s.inspector, "/api/requests").await;
        list["requests"][0]["duration_ms"].is_u64().then_some(list)
    })
    .await;
    let first = &list["requests"][0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/hooks/pay?order=7");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], s.upstream.url());
    let id = first["id"].as_u64().unwrap();
    let detail = api(s.inspector, &format!("/api/requests/{id}")).await;
    let headers = detail["request"]["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h["name"] == "x-signature" && h["value"] == "sig-123"),
        "{headers:?}"
    );
    assert_eq!(detail["request"]["body"]["whole"], true);
    assert_eq!(detail["request"]["body"]["view"]["kind"], "json");
    assert_eq!(
        detail["request"]["body"]["view"]["text"],
        "{\n  \"event\": \"paid\",\n  \"amount\": 10\n}"
    );
    assert_eq!(detail["response"]["status"], 200);
    assert_eq!(detail["response"]["body"]["view"]["text"], "status 200");

    // Replay as it was: the upstream gets the same request again, recorded as a replay.
    let (status, answer) = replay(s.inspector, id, "{}").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);
    let replay_id = answer["id"].as_u64().unwrap();
    assert_ne!(replay_id, id);
    {
        let log = s.log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].path, "/hooks/pay?order=7");
        assert_eq!(log[1].body, log[0].body);
        assert_eq!(log[1].header("x-signature"), "sig-123");
    }
    let replayed = api(s.inspector, &format!("/api/requests/{replay_id}")).await;
    assert_eq!(replayed["replay_of"], id);

    // Edited: another path, body and headers; the content length follows the new body.
    let (status, answer) = replay(
        s.inspector,
        id,
        r#"{"path": "/missing?x=1", "body": "changed", "headers": [{"name": "content-type", "value": "text/plain"}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 404);
    {
        let log = s.log.lock().unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[2].path, "/missing?x=1");
        assert_eq!(&log[2].body[..], b"changed");
        assert_eq!(log[2].header("content-type"), "text/plain");
        assert_eq!(log[2].header("content-length"), "7");
        assert_eq!(log[2].header("x-signature"), "");
    }
    // A replay the upstream cannot be given: a bad header line.
    let (status, answer) = replay(
        s.inspector,
        id,
        r#"{"headers": [{"name": "bad header", "value": "x"}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(s.log.lock().unwrap().len(), 3);
    let (status, _) = replay(s.inspector, 999, "{}").await;
    assert_eq!(status, 404);

    // The status API names the tunnel and its public URL.
    let st = api(s.inspector, "/api/status").await;
    assert_eq!(st["state"], "connected");
    assert_eq!(st["tunnel"], "demo");
    assert_eq!(st["public_url"], format!("{}/t/demo/", s.relay.url(true)));
    s.agent.stop().await;
    s.relay.stop().await;
}

#[tokio::test]
async fn big_and_binary_bodies_are_shown_by_size_and_not_replayed_as_they_were() {
    let s = setup().await;
    let c = client(Some(&s.certs), false);
    let big = vec![0xffu8; 100 * 1024];
    let r = send(
        &c,
        request(
            "PUT",
            &format!("{}/t/demo/upload", s.relay.url(true)),
            big.clone(),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.log.lock().unwrap()[0].body.len(),
        big.len(),
        "the upstream got it whole"
    );
    let list = eventually("the exchange to complete", || async {
        let list = api(s.inspector, "/api/requests").await;
        list["requests"][0]["duration_ms"].is_u64().then_some(list)
    })
    .await;
    let id = list["requests"][0]["id"].as_u64().unwrap();
    let detail = api(s.inspector, &format!("/api/requests/{id}")).await;
    let body = &detail["request"]["body"];
    assert_eq!(body["size"], 100 * 1024);
    assert_eq!(body["whole"], false);
    assert_eq!(body["view"]["kind"], "binary");
    assert!(
        body["view"]["text"]
            .as_str()
            .unwrap()
            .starts_with("00000000  ff ff"),
        "{body}"
    );
    let (status, answer) = replay(s.inspector, id, "{}").await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("not kept whole"),
        "{answer}"
    );
    // With a body of its own it goes.
    let (status, _) = replay(s.inspector, id, r#"{"body_base64": "AAEC"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(&s.log.lock().unwrap()[1].body[..], &[0, 1, 2]);
    s.agent.stop().await;
    s.relay.stop().await;
}

/// DNS rebinding: a page of attacker.example, its name re-pointed at 127.0.0.1, reaches the
/// inspector with `Host: attacker.example:PORT`. Cross-site posts carry a foreign `Origin`.
#[tokio::test]
async fn requests_naming_another_host_or_from_another_site_are_refused() {
    let s = setup().await;
    let c = client(Some(&s.certs), false);
    send(
        &c,
        request("POST", &format!("{}/t/demo/x", s.relay.url(true)), "a"),
    )
    .await;
    let port = s.inspector.port();
    for host in [
        format!("attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        String::new(),
    ] {
        for path in ["/", "/api/requests", "/api/requests/1", "/metrics"] {
            let (status, _, body) =
                raw_http(s.inspector, &format!("GET {path} HTTP/1.1\r\nHost: {host}"), b"").await;
            assert_eq!(status, 403, "Host {host} {path}: {body}");
            assert!(body.contains("DNS rebinding"), "{body}");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, _, _) = raw_http(
            s.inspector,
            &format!("GET /api/requests HTTP/1.1\r\nHost: {host}"),
            b"",
        )
        .await;
        assert_eq!(status, 200, "{host}");
    }
    let ok_host = format!("Host: 127.0.0.1:{port}");
    // A replay posted from another site's page.
    let (status, _, body) = raw_http(
        s.inspector,
        &format!("POST /api/requests/1/replay HTTP/1.1\r\n{ok_host}\r\nContent-Type: application/json\r\nOrigin: http://attacker.example"),
        b"{}",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = raw_http(
        s.inspector,
        &format!("POST /requests/1/replay HTTP/1.1\r\n{ok_host}\r\nContent-Type: application/x-www-form-urlencoded\r\nReferer: http://attacker.example/page"),
        b"csrf=x",
    )
    .await;
    assert_eq!(status, 403);
    // A form without the page's token, and a "simple" (no-preflight) content type for the API.
    let (status, _, body) = raw_http(
        s.inspector,
        &format!("POST /requests/1/replay HTTP/1.1\r\n{ok_host}\r\nContent-Type: application/x-www-form-urlencoded\r\nOrigin: http://127.0.0.1:{port}"),
        b"csrf=guess",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = raw_http(
        s.inspector,
        &format!("POST /api/requests/1/replay HTTP/1.1\r\n{ok_host}\r\nContent-Type: text/plain"),
        b"{}",
    )
    .await;
    assert_eq!(status, 415);
    let (status, _, _) = raw_http(
        s.inspector,
        &format!("GET /api/requests/1/replay HTTP/1.1\r\n{ok_host}"),
        b"",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(s.log.lock().unwrap().len(), 1, "nothing was replayed");

    // The page's own form, with its token, does replay.
    let (_, _, page) = raw_http(
        s.inspector,
        &format!("GET /requests/1 HTTP/1.1\r\n{ok_host}"),
        b"",
    )
    .await;
    let token = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf token in the page");
    let (status, headers, _) = raw_http(
        s.inspector,
        &format!("POST /requests/1/replay HTTP/1.1\r\n{ok_host}\r\nContent-Type: application/x-www-form-urlencoded\r\nOrigin: http://127.0.0.1:{port}"),
        format!("csrf={token}").as_bytes(),
    )
    .await;
    assert_eq!(status, 303, "{headers}");
    assert!(
        headers.to_ascii_lowercase().contains("location: /requests/2"),
        "{headers}"
    );
    assert_eq!(s.log.lock().unwrap().len(), 2);
    // And every page has the strict headers.
    let lower = headers.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'self'"),
        "{headers}"
    );
    assert!(lower.contains("x-frame-options: deny"), "{headers}");
    assert!(lower.contains("referrer-policy: no-referrer"), "{headers}");
    s.agent.stop().await;
    s.relay.stop().await;
}

#[tokio::test]
async fn metrics_count_exactly_the_requests_sent() {
    let s = setup().await;
    let c = client(Some(&s.certs), false);
    for path in ["/a", "/b", "/missing"] {
        send(
            &c,
            request("POST", &format!("{}/t/demo{path}", s.relay.url(true)), "12345"),
        )
        .await;
    }
    let scrape = eventually("three finished exchanges", || async {
        let (status, headers, body) = raw_http(
            s.inspector,
            &format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{}", s.inspector.port()),
            b"",
        )
        .await;
        assert_eq!(status, 200);
        assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .expect("prometheus text");
        let count = scrape
            .samples
            .iter()
            .find(|x| x.metric == "ponte_agent_request_duration_seconds_count")
            .map(|x| match x.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            })
            .unwrap_or(0.0);
        (count == 3.0).then_some(scrape)
    })
    .await;
    assert_eq!(
        sample(&scrape, "ponte_agent_requests_total", &[("class", "2xx")]),
        2.0
    );
    assert_eq!(
        sample(&scrape, "ponte_agent_requests_total", &[("class", "4xx")]),
        1.0
    );
    assert_eq!(sample(&scrape, "ponte_agent_request_bytes_total", &[]), 15.0);
    assert_eq!(sample(&scrape, "ponte_agent_tunnel_connected", &[]), 1.0);
    assert_eq!(sample(&scrape, "ponte_agent_reconnects_total", &[]), 0.0);
    s.agent.stop().await;
    s.relay.stop().await;
}

/// A second agent (or ngrok) on the port: the inspector takes the next one, and when none is
/// free the agent runs without it.
#[tokio::test]
async fn a_taken_port_moves_the_inspector_to_the_next() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let next = ponte::inspect::inspector::bind(taken.local_addr().unwrap())
        .await
        .expect("a next port");
    let got = next.local_addr().unwrap().port();
    assert!(
        got > port && got < port + ponte::inspect::inspector::PORT_TRIES,
        "{port} → {got}"
    );
}
