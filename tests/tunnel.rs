//! End to end through a real relay and agent over TLS: what goes in comes out, routing by host
//! and path, concurrency, and every status code a sender can see.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use support::*;

/// Relay with TLS + one agent whose catch-all upstream is `upstream`.
async fn tunnel_to(
    certs: &Certs,
    upstream: &str,
    relay_extra: &str,
    tunnel_extra: &str,
) -> (RelayHandle, AgentHandle) {
    let relay = start_relay(&relay_yaml(Some(certs), relay_extra, tunnel_extra)).await;
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(certs),
        &format!("ingress:\n  - upstream: {upstream}\n"),
    ));
    agent.connected().await;
    (relay, agent)
}

#[tokio::test]
async fn round_trip_keeps_method_path_query_headers_and_binary_body() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let (relay, agent) = tunnel_to(&certs, &up.url(), "", "").await;
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for h2 in [false, true] {
        let client = client(Some(&certs), h2);
        let req = Request::builder()
            .method("PATCH")
            .uri(format!("{}/t/demo/a/b%20c?x=1&y=%2F&y=2", relay.url(true)))
            .header("x-custom", "Valor com acentuação")
            .header("content-type", "application/octet-stream")
            .header("x-multi", "one")
            .body(ponte::body::boxed(Full::new(Bytes::from(body.clone()))))
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, StatusCode::OK, "h2={h2}: {}", reply.text());
        assert_eq!(reply.header("x-echo-method"), "PATCH");
        assert_eq!(reply.header("x-echo-path"), "/a/b%20c?x=1&y=%2F&y=2");
        assert_eq!(
            reply.headers["x-echo-h-x-custom"].as_bytes(),
            "Valor com acentuação".as_bytes()
        );
        assert_eq!(reply.header("x-echo-h-x-forwarded-for"), "127.0.0.1");
        assert_eq!(reply.header("x-echo-h-x-forwarded-proto"), "https");
        assert_eq!(
            reply.header("x-echo-h-host"),
            format!("127.0.0.1:{}", relay.addr.port())
        );
        assert!(reply.headers.get("x-echo-h-authorization").is_none());
        assert_eq!(reply.body.as_ref(), body.as_slice(), "h2={h2}: body differs");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let (relay, agent) = tunnel_to(&certs, &up.url(), "", "").await;
    let client = client(Some(&certs), false);
    let req = Request::builder()
        .uri(format!("{}/t/demo/", relay.url(true)))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic abc")
        .body(ponte::body::empty())
        .unwrap();
    let reply = send(&client, req).await;
    assert_eq!(reply.status, 200);
    for h in [
        "x-echo-h-x-private",
        "x-echo-h-keep-alive",
        "x-echo-h-proxy-authorization",
    ] {
        assert!(reply.headers.get(h).is_none(), "{h} crossed the tunnel");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn trailers_are_kept() {
    let certs = Certs::new();
    // An upstream answering with trailers.
    let up = start_upstream(|_req| async {
        let frames = vec![
            Ok::<_, ponte::BoxError>(hyper::body::Frame::data(Bytes::from_static(b"hello"))),
            Ok(hyper::body::Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("x-checksum", "abc123".parse().unwrap());
                t
            })),
        ];
        http::Response::builder()
            .header("trailer", "x-checksum")
            .body(ponte::body::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap()
    })
    .await;
    let (relay, agent) = tunnel_to(&certs, &up.url(), "", "").await;
    let client = client(Some(&certs), true);
    // An HTTP/1.1 upstream sends trailers only to a client that asks for them.
    let asks = Request::get(format!("{}/t/demo/", relay.url(true)))
        .header("te", "trailers")
        .body(ponte::body::empty())
        .unwrap();
    let resp = within("response", client.request(asks)).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes().as_ref(), b"hello");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn routes_by_host_and_by_path() {
    let certs = Certs::new();
    let hooks = start_upstream(|_| async { text(StatusCode::OK, "hooks") }).await;
    let app = start_upstream(|_| async { text(StatusCode::OK, "app") }).await;
    let relay = start_relay(&relay_yaml(Some(&certs), "domain: relay.test", "")).await;
    let ingress = format!(
        "ingress:\n  - path: /hooks/\n    upstream: {}\n  - upstream: {}\n",
        hooks.url(),
        app.url()
    );
    let mut agent = start_agent(&agent_yaml(&relay.url(true), Some(&certs), &ingress));
    let public = agent.connected().await;
    assert_eq!(public, format!("https://demo.relay.test:{}/", relay.addr.port()));
    let client = client(Some(&certs), false);
    let by_host = |path: &str, host: &str| {
        Request::builder()
            .uri(format!("{}{path}", relay.url(true)))
            .header("host", host)
            .body(ponte::body::empty())
            .unwrap()
    };
    let r = send(&client, by_host("/hooks/x", "Demo.Relay.Test")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hooks"));
    let r = send(&client, by_host("/other", "demo.relay.test.")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "app"));
    let r = send(&client, by_host("/", "nope.relay.test")).await;
    assert_eq!(r.status, 404);
    let r = send(
        &client,
        request("GET", &format!("{}/t/demo/hooks/y", relay.url(true)), ""),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hooks"));
    let r = send(
        &client,
        request("GET", &format!("{}/t/unknown/x", relay.url(true)), ""),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("ponte-error"), "no-such-tunnel");
    let r = send(&client, request("GET", &format!("{}/", relay.url(true)), "")).await;
    assert_eq!(r.status, 404);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_streams() {
    let certs = Certs::new();
    let up = start_upstream(|req: Request<hyper::body::Incoming>| async move {
        // Hold each request a little so they really overlap.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let path = req.uri().path().to_string();
        let mut r = http::Response::new(ponte::body::full(path));
        *r.status_mut() = StatusCode::OK;
        r
    })
    .await;
    let (relay, agent) = tunnel_to(&certs, &up.url(), "", "").await;
    let client = client(Some(&certs), true);
    let base = relay.url(true);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/t/demo/req/{i}");
            tokio::spawn(async move { send(&client, request("GET", &url, "")).await })
        })
        .collect();
    let started = std::time::Instant::now();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("/req/{i}"));
    }
    // 200 requests of 200 ms each, 100 streams at a time on the tunnel: about 2 rounds, far from
    // the 40 s a serial tunnel would need.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.hits(), 200);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn status_codes_the_sender_sees() {
    let certs = Certs::new();
    let slow = start_upstream(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text(StatusCode::OK, "late")
    })
    .await;
    let relay = start_relay(&relay_yaml(
        Some(&certs),
        "limits:\n  max_body_bytes: 1000\n  max_header_bytes: 4KiB",
        "    auth:\n      basic: {user: ons, password: s3cret-pass}\n",
    ))
    .await;
    let client = client(Some(&certs), false);
    let base = relay.url(true);
    let auth = format!("Basic {}", base64_encode("ons:s3cret-pass"));
    let authed = |method: &str, path: &str, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("authorization", auth.as_str())
            .body(ponte::body::full(body))
            .unwrap()
    };

    // 401 without credentials, 403 with wrong ones.
    let r = send(&client, request("POST", &format!("{base}/t/demo/x"), "{}")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").starts_with("Basic"));
    let wrong = Request::builder()
        .method("POST")
        .uri(format!("{base}/t/demo/x"))
        .header("authorization", format!("Basic {}", base64_encode("ons:nope")))
        .body(ponte::body::empty())
        .unwrap();
    assert_eq!(send(&client, wrong).await.status, 403);

    // 503 + Retry-After while no agent is connected.
    let r = send(&client, authed("POST", "/t/demo/x", "{}")).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").parse::<u64>().unwrap() > 0);
    assert_eq!(r.header("ponte-error"), "agent-offline");

    // Now an agent whose upstreams are: a closed port (502) and a slow one (504).
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ingress = format!(
        "upstream_timeout: 500ms\ningress:\n  - path: /slow/\n    upstream: {}\n  - upstream: http://127.0.0.1:{closed_port}\n",
        slow.url()
    );
    let mut agent = start_agent(&agent_yaml(&base, Some(&certs), &ingress));
    agent.connected().await;
    let r = send(&client, authed("GET", "/t/demo/x", "")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "upstream-unreachable");
    assert!(
        r.text().contains("upstream application; is it running?"),
        "{}",
        r.text()
    );
    let r = send(&client, authed("GET", "/t/demo/slow/x", "")).await;
    assert_eq!(r.status, 504, "{}", r.text());

    // 413 by Content-Length and by a chunked body that grows past the limit.
    let r = send(
        &client,
        authed(
            "POST",
            "/t/demo/slow/x",
            Box::leak("x".repeat(1001).into_boxed_str()),
        ),
    )
    .await;
    assert_eq!(r.status, 413);
    let chunks =
        (0..20).map(|_| Ok::<_, ponte::BoxError>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 100]))));
    let chunked = Request::builder()
        .method("POST")
        .uri(format!("{base}/t/demo/slow/x"))
        .header("authorization", auth.as_str())
        .body(ponte::body::boxed(StreamBody::new(futures_util::stream::iter(
            chunks,
        ))))
        .unwrap();
    assert_eq!(send(&client, chunked).await.status, 413);

    // 431 for oversized headers.
    let big = Request::builder()
        .uri(format!("{base}/t/demo/x"))
        .header("x-big", "z".repeat(8000))
        .body(ponte::body::empty())
        .unwrap();
    assert_eq!(send(&client, big).await.status, 431);

    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn relay_waits_for_the_agent_no_longer_than_its_response_timeout() {
    let certs = Certs::new();
    let slow = start_upstream(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text(StatusCode::OK, "late")
    })
    .await;
    let (relay, agent) = tunnel_to(&certs, &slow.url(), "limits:\n  response_timeout: 300ms", "").await;
    let r = send(
        &client(Some(&certs), false),
        request("GET", &format!("{}/t/demo/", relay.url(true)), ""),
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("ponte-error"), "timeout");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn health_endpoint_counts_agents_without_naming_tunnels() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let (relay, agent) = tunnel_to(&certs, &up.url(), "", "").await;
    let r = send(
        &client(Some(&certs), false),
        request("GET", &format!("{}/_ponte/health", relay.url(true)), ""),
    )
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["agents"], 1);
    assert!(!r.text().contains("demo"));
    agent.stop().await;
    relay.stop().await;
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn several_agents_of_one_tunnel_share_its_requests() {
    let certs = Certs::new();
    let a = start_upstream(|_| async { text(StatusCode::OK, "a") }).await;
    let b = start_upstream(|_| async { text(StatusCode::OK, "b") }).await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let mut agents = Vec::new();
    for up in [&a, &b] {
        let mut agent = start_agent(&agent_yaml(
            &relay.url(true),
            Some(&certs),
            &format!("ingress:\n  - upstream: {}\n", up.url()),
        ));
        agent.connected().await;
        agents.push(agent);
    }
    let client = client(Some(&certs), false);
    for _ in 0..20 {
        let r = send(
            &client,
            request("GET", &format!("{}/t/demo/", relay.url(true)), ""),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.hits() + b.hits(), 20);
    assert!(a.hits() >= 5 && b.hits() >= 5, "a={} b={}", a.hits(), b.hits());
    for agent in agents {
        agent.stop().await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let certs = Certs::new();
    let up = start_upstream(|req: Request<hyper::body::Incoming>| async move {
        let collected = req.into_body().collect().await.unwrap();
        let trailer = collected
            .trailers()
            .and_then(|t| t.get("x-digest"))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "none".into());
        let mut r = http::Response::new(ponte::body::full(format!(
            "{}|{trailer}",
            collected.to_bytes().len()
        )));
        *r.status_mut() = StatusCode::OK;
        r
    })
    .await;
    let (relay, agent) = tunnel_to(&certs, &up.url(), "", "").await;
    let frames = vec![
        Ok::<_, ponte::BoxError>(hyper::body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(hyper::body::Frame::trailers({
            let mut t = http::HeaderMap::new();
            t.insert("x-digest", "sha-256=abc".parse().unwrap());
            t
        })),
    ];
    let req = Request::post(format!("{}/t/demo/", relay.url(true)))
        .header("trailer", "x-digest")
        .body(ponte::body::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .unwrap();
    let r = send(&client(Some(&certs), true), req).await;
    assert_eq!(r.text(), "5|sha-256=abc");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn te_trailers_reaches_the_upstream_only_when_the_sender_sent_it() {
    let certs = Certs::new();
    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let (relay, agent) = tunnel_to(&certs, &up.url(), "", "").await;
    let url = format!("{}/t/demo/hook", relay.url(true));
    for h2 in [false, true] {
        let client = client(Some(&certs), h2);
        send(&client, request("POST", &url, "{}")).await;
        let mut asks = Request::post(&url).header("te", "trailers");
        if !h2 {
            // HTTP/1.1 names TE as a connection option (RFC 9110 §10.1.4).
            asks = asks.header("connection", "te");
        }
        send(&client, asks.body(ponte::body::full("{}")).unwrap()).await;
    }
    let seen: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.header("te").to_string())
        .collect();
    assert_eq!(seen, ["", "trailers", "", "trailers"]);
    agent.stop().await;
    relay.stop().await;
}
