//! Every sender gets a true answer: libcurl over HTTP/2 sees the status of an early answer instead
//! of a transport error, a declined websocket upgrade gets the upstream's own answer, and no answer
//! names the upstream's internal address.

mod support;

use support::*;

/// One POST with real curl over HTTP/2; returns curl's exit code, the status it printed and its
/// error text.
async fn curl_post(certs: &Certs, url: &str, body: &std::path::Path) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "--http2",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(&certs.ca)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(url)
        .output();
    let out = within("curl", out)
        .await
        .expect("curl must be installed to run this test (apt-get install curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// POST `count` bodies of a few KB to `url` with curl over HTTP/2; returns one line for every
/// POST that did not print `want`.
async fn curl_posts_missing(certs: &Certs, url: &str, count: usize, want: &str) -> Vec<String> {
    let body = certs.dir.path().join("body.json");
    std::fs::write(&body, format!("{{\"data\":\"{}\"}}", "x".repeat(4000))).unwrap();
    let mut failures = Vec::new();
    for _ in 0..count {
        let (code, status, err) = curl_post(certs, url, &body).await;
        if code != 0 || status != want {
            failures.push(format!("want {want}, got exit {code}, status {status:?}: {err}"));
        }
    }
    failures
}

#[tokio::test]
async fn curl_over_http2_sees_the_status_of_early_answers() {
    let certs = Certs::new();
    // A second tunnel behind edge auth, beside `demo`.
    let guarded = "  guarded:\n    token: guarded-token-0123456789abcdef\n    auth:\n      basic: {user: ons, password: s3cret-pass}\n";
    let relay = start_relay(&relay_yaml(Some(&certs), "", guarded)).await;
    let url = |path: &str| format!("https://localhost:{}{path}", relay.addr.port());
    // No agent: 503.
    let mut failures = curl_posts_missing(&certs, &url("/t/demo/hook"), 20, "503").await;
    // Unknown tunnel: 404.
    failures.extend(curl_posts_missing(&certs, &url("/t/nobody/hook"), 10, "404").await);
    // No credentials for a tunnel behind edge auth: 401.
    failures.extend(curl_posts_missing(&certs, &url("/t/guarded/hook"), 10, "401").await);
    // An agent whose upstream is down answers 502 without reading the body.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut agent = start_agent_to(
        &relay.url(true),
        &certs,
        &format!("http://127.0.0.1:{closed_port}"),
    );
    agent.connected().await;
    failures.extend(curl_posts_missing(&certs, &url("/t/demo/hook"), 30, "502").await);
    agent.stop().await;
    relay.stop().await;
    assert!(
        failures.is_empty(),
        "{} of 70 POSTs did not see their status:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_websocket_upgrade_the_upstream_declines_gets_the_upstreams_answer() {
    let certs = Certs::new();
    // An upstream that never upgrades: 200 with a body on one path, 401 on another.
    let up = start_upstream(|req: http::Request<hyper::body::Incoming>| async move {
        let (status, text) = match req.uri().path() {
            "/ok" => (http::StatusCode::OK, "hello"),
            _ => (http::StatusCode::UNAUTHORIZED, "who are you?"),
        };
        let mut resp = http::Response::new(ponte::body::full(text));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("yes"));
        resp
    })
    .await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let client = client(Some(&certs), false);
    for (path, status, text) in [("/ok", 200, "hello"), ("/auth", 401, "who are you?")] {
        let req = http::Request::get(format!("{}/t/demo{path}", relay.url(true)))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(ponte::body::empty())
            .unwrap();
        let r = send(&client, req).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.text(), text, "{path}");
        assert_eq!(r.header("x-upstream"), "yes", "{path}");
        assert!(r.headers.get("ponte-error").is_none(), "{path}: {:?}", r.headers);
        assert!(
            r.headers.get("ponte-upstream-status").is_none(),
            "{path}: {:?}",
            r.headers
        );
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn answers_for_a_down_or_slow_upstream_do_not_name_its_address() {
    let certs = Certs::new();
    let slow = start_upstream(|_| async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        text(http::StatusCode::OK, "late")
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let ingress = format!(
        "upstream_timeout: 300ms\ningress:\n  - path: /slow/\n    upstream: {}\n  - upstream: http://{closed}\n",
        slow.url()
    );
    let mut agent = start_agent(&agent_yaml(&relay.url(true), Some(&certs), &ingress));
    agent.connected().await;
    let client = client(Some(&certs), false);
    let base = relay.url(true);
    for (path, status, private) in [("/x", 502, closed), ("/slow/x", 504, slow.addr)] {
        let r = send(&client, request("POST", &format!("{base}/t/demo{path}"), "{}")).await;
        assert_eq!(r.status, status, "{}", r.text());
        let body = r.text();
        for leak in [private.to_string(), format!(":{}", private.port())] {
            assert!(!body.contains(&leak), "{path}: the answer names {leak}: {body}");
        }
        assert!(body.contains("upstream application"), "{path}: {body}");
    }
    agent.stop().await;
    relay.stop().await;
}
