//! The `ponte` binary as users run it: configuration errors, `check`, the inlets-style `client`
//! command, the demo, and bounded memory while 50 MB stream each way through real processes.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use support::process::Owned;
use support::*;

const PONTE: &str = env!("CARGO_BIN_EXE_ponte");

/// Run `ponte relay` as a process with JSON logs and return it once it logged its address.
fn spawn_relay(config: &std::path::Path) -> (Owned, SocketAddr) {
    let mut child = Command::new(PONTE)
        .args(["--log-format", "json", "relay", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn relay");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "relay listening"
                && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok())
            {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("relay reported its address");
    (Owned(child), addr)
}

fn spawn_agent(args: &[&str]) -> Owned {
    Owned(
        Command::new(PONTE)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    )
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn config_mistakes_are_one_clear_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "tunnels:\n  demo:\n    token: 0123456789abcdefXX\n    delivry: queue\n",
            ":4: tunnels.demo: unknown field `delivry`",
        ),
        ("listen: nowhere\n", ":1: listen: `nowhere` is not an address"),
        (
            "tunnels:\n  demo:\n    token: ${PONTE_TEST_SURELY_UNSET}\n",
            "PONTE_TEST_SURELY_UNSET is not set",
        ),
        (
            "tunnels:\n  Demo_1:\n    token: 0123456789abcdefXX\n",
            "`Demo_1` is not a valid tunnel name",
        ),
        (
            "limits:\n  max_body_bytes: lots\n",
            ":2: limits.max_body_bytes: `lots` is not a size",
        ),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("relay{i}.yaml"), yaml);
        let out = Command::new(PONTE)
            .args(["relay", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "case {i}: one line: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "case {i}: names the file: {stderr}"
        );
        assert!(stderr.contains(expected), "case {i}: {stderr}");
    }
    let out = Command::new(PONTE)
        .args(["relay", "--config", "/nonexistent/relay.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/relay.yaml: cannot read"));
    let out = Command::new(PONTE)
        .args(["agent", "--relay", "https://r.example"])
        .env_remove("PONTE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token given"));
}

#[tokio::test]
async fn check_exits_zero_only_when_the_token_is_accepted() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let url = format!("https://localhost:{}", relay.addr.port());
    let ca = certs.ca.display().to_string();
    let run = |token: &'static str| {
        let (url, ca) = (url.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(PONTE)
                .args([
                    "check",
                    "--relay",
                    &url,
                    "--ca-file",
                    &ca,
                    "--upstream",
                    "http://127.0.0.1:9",
                ])
                .env("PONTE_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    let ok = run(TOKEN).await.unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("accepted the token") && stdout.contains("tunnel: demo"),
        "{stdout}"
    );
    assert!(stdout.contains("NOT reachable"), "{stdout}");
    let bad = run("wrong-token-wrong-token").await.unwrap();
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not accept this token"));
    relay.stop().await;
}

#[tokio::test]
async fn inlets_client_command_line_works_as_is() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let agent = spawn_agent(&[
        "client",
        &format!("--url=wss://localhost:{}", relay.addr.port()),
        &format!("--upstream={}", up.url()),
        &format!("--token={TOKEN}"),
        "--ca-file",
        &certs.ca.display().to_string(),
    ]);
    let client = client(Some(&certs), false);
    let url = format!("{}/t/demo/hooks/rute-webhook", relay.url(true));
    let reply = within("agent process to serve", async {
        loop {
            let r = send(&client, request("POST", &url, r#"{"key1":"value1"}"#)).await;
            if r.status == 200 {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(reply.text(), r#"{"key1":"value1"}"#);
    let status = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    relay.stop().await;
}

#[tokio::test]
async fn demo_prints_a_working_curl_line() {
    let mut child = Command::new(PONTE)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Owned(child);
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let lines = within("demo output", lines).await.unwrap();
    let text = lines.join("\n");
    assert!(text.contains("\"status\": \"OK\""), "{text}");
    assert!(text.contains("\"key1\": \"value1\""), "{text}");
    let curl = lines
        .iter()
        .find(|l| l.trim_start().starts_with("curl "))
        .expect("curl line");
    let url = curl.split_whitespace().last().unwrap().to_string();
    // The printed URL works for another sender too.
    let r = send(&client(None, false), request("POST", &url, r#"{"again":true}"#)).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"again\": true"));
    let status = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    assert!(status.success());
}

/// 50 MB up and 50 MB back through real relay and agent processes: both keep a bounded peak RSS.
#[tokio::test]
async fn fifty_megabytes_each_way_with_bounded_memory() {
    const TOTAL: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let up = echo_upstream().await;
    let cfg = write(
        dir.path(),
        "relay.yaml",
        &relay_yaml(Some(&certs), "limits:\n  max_body_bytes: 64MiB", ""),
    );
    let (relay, addr) = tokio::task::spawn_blocking(move || spawn_relay(&cfg))
        .await
        .unwrap();
    let agent = spawn_agent(&[
        "agent",
        "--relay",
        &format!("https://localhost:{}", addr.port()),
        "--token",
        TOKEN,
        "--ca-file",
        &certs.ca.display().to_string(),
        "--upstream",
        &up.url(),
    ]);
    let client = client(Some(&certs), false);
    let base = format!("https://localhost:{}/t/demo", addr.port());
    within("agent process to connect", async {
        while send(&client, request("GET", &format!("{base}/ping"), ""))
            .await
            .status
            != 200
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let idle = (rss_kib(relay.pid()), rss_kib(agent.pid()));

    // The request body is generated as it is sent; the response is counted as it arrives.
    let chunks = (0..TOTAL / CHUNK).map(|i| {
        Ok::<_, ponte::BoxError>(hyper::body::Frame::data(Bytes::from(vec![
            (i % 251) as u8;
            CHUNK
        ])))
    });
    let req = Request::post(format!("{base}/big"))
        .body(ponte::body::boxed(StreamBody::new(futures_util::stream::iter(
            chunks,
        ))))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = within("50 MB response headers", client.request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut received, mut checksum_ok) = (0usize, true);
    while let Some(frame) = within("50 MB body", body.frame()).await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            for (j, b) in data.iter().enumerate() {
                checksum_ok &= *b == (((received + j) / CHUNK) % 251) as u8;
            }
            received += data.len();
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(received, TOTAL);
    assert!(checksum_ok, "bytes changed on the way");
    let peak = (peak_rss_kib(relay.pid()), peak_rss_kib(agent.pid()));
    eprintln!(
        "50 MiB each way in {elapsed:?}; idle RSS relay {} KiB agent {} KiB; peak RSS relay {} KiB agent {} KiB",
        idle.0, idle.1, peak.0, peak.1
    );
    // Bounded by windows and buffers, not by the body: far below 50 MB.
    assert!(peak.0 < 40 * 1024, "relay peak RSS {} KiB", peak.0);
    assert!(peak.1 < 40 * 1024, "agent peak RSS {} KiB", peak.1);
    drop(agent);
    drop(relay);
}
