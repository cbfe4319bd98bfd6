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
use support::process::{Owned, Process};
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

/// Run `ponte ARGS…` to completion off the runtime (PONTE_TOKEN and proxy variables cleared
/// unless `env` sets them): exit code, stdout, stderr.
async fn run_ponte(args: Vec<String>, env: Vec<(&'static str, String)>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(PONTE);
        cmd.args(&args);
        for var in [
            "PONTE_TOKEN",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "GLIBC_TUNABLES",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The seed guides' first step: test the credentials before the application exists. Exit codes:
/// 0 accepted, 3 refused, 5 accepted but an upstream is down.
#[tokio::test]
async fn check_tests_credentials_without_an_upstream_and_says_each_outcome_by_exit_code() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let up = echo_upstream().await;
    let url = format!("https://localhost:{}", relay.addr.port());
    let ca = certs.ca.display().to_string();
    let check = |extra: &[&str]| {
        let mut a = args(&["check", "--relay", &url, "--ca-file", &ca]);
        a.extend(args(extra));
        a
    };

    let (code, stdout, stderr) = run_ponte(check(&[]), vec![("PONTE_TOKEN", TOKEN.into())]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("accepted the token") && stdout.contains("tunnel: demo"),
        "{stdout}"
    );
    assert!(stdout.contains("upstreams: none configured"), "{stdout}");

    let (code, stdout, stderr) = run_ponte(
        check(&["--upstream", &up.url()]),
        vec![("PONTE_TOKEN", TOKEN.into())],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("upstream {}: reachable", up.url())),
        "{stdout}"
    );

    let (code, stdout, stderr) = run_ponte(
        check(&["--upstream", "http://127.0.0.1:9"]),
        vec![("PONTE_TOKEN", TOKEN.into())],
    )
    .await;
    assert_eq!(code, Some(5), "{stdout}{stderr}");
    assert!(
        stdout.contains("accepted the token") && stdout.contains("NOT reachable"),
        "{stdout}"
    );
    assert!(stderr.contains("did not answer"), "{stderr}");

    let (code, _, stderr) = run_ponte(
        check(&[]),
        vec![("PONTE_TOKEN", "wrong-token-wrong-token".into())],
    )
    .await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("does not accept this token"), "{stderr}");
    relay.stop().await;
}

/// Exit 4 when the relay cannot be reached or trusted; a certificate error names the setting in
/// the words the user typed: `--ca-file` with flags, `ca_file:` with a file.
#[tokio::test]
async fn check_exits_4_for_an_unreachable_or_untrusted_relay_naming_the_setting() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let url = format!("https://localhost:{}", relay.addr.port());
    let token = vec![("PONTE_TOKEN", TOKEN.to_string())];

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("https://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let (code, _, stderr) = run_ponte(args(&["check", "--relay", &closed_url]), token.clone()).await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("cannot reach 127.0.0.1:"), "{stderr}");

    let (code, _, stderr) = run_ponte(args(&["check", "--relay", &url]), token.clone()).await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("not signed by a trusted CA; if the relay uses a private CA, pass --ca-file"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "agent.yaml",
        &format!("relay: {url}\ntoken: {TOKEN}\n"),
    );
    let (code, _, stderr) =
        run_ponte(args(&["check", "--config", &file.display().to_string()]), vec![]).await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "if the relay uses a private CA, add `ca_file: /path/to/relay-ca.pem` to {}",
            file.display()
        )),
        "{stderr}"
    );
    relay.stop().await;
}

/// `ponte client` speaks of the relay as its `--url wss://…`, and an untrusted certificate is
/// retried every minute, not with fast backoff.
#[tokio::test]
async fn client_names_its_url_and_retries_an_untrusted_relay_slowly() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let wss = format!("wss://localhost:{}", relay.addr.port());
    let mut agent = Process::spawn(&[
        "client",
        &format!("--url={wss}"),
        "--upstream=http://127.0.0.1:9",
        &format!("--token={TOKEN}"),
    ]);
    let line = agent.log_line("reconnecting").await.expect("a reconnecting line");
    assert!(
        line["delay"].as_str().unwrap_or_default().starts_with("1m"),
        "{line}"
    );
    let out = agent.output();
    assert!(
        out.contains(&format!(
            "if the relay in --url {wss} uses a private CA, pass --ca-file"
        )),
        "{out}"
    );
    agent.kill();
    relay.stop().await;
}

#[tokio::test]
async fn token_from_a_file_for_agent_and_check() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let url = format!("https://localhost:{}", relay.addr.port());
    let ca = certs.ca.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "token", &format!("{TOKEN}\n"));
    let empty = write(dir.path(), "empty", "\n");
    let check = |file: &std::path::Path| {
        args(&[
            "check",
            "--relay",
            &url,
            "--ca-file",
            &ca,
            "--token-from",
            &file.display().to_string(),
        ])
    };
    // The file wins over a wrong PONTE_TOKEN.
    let (code, stdout, stderr) = run_ponte(check(&good), vec![("PONTE_TOKEN", "wrong".into())]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, _, stderr) = run_ponte(check(&empty), vec![]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the file is empty"), "{stderr}");
    let (code, _, stderr) = run_ponte(check(&dir.path().join("missing")), vec![]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--token-from") && stderr.contains("cannot read it"),
        "{stderr}"
    );

    let up = echo_upstream().await;
    let mut agent = Process::spawn(&[
        "agent",
        "--relay",
        &url,
        "--ca-file",
        &ca,
        "--token-from",
        &good.display().to_string(),
        "--upstream",
        &up.url(),
    ]);
    assert!(
        agent.log_line("tunnel connected").await.is_some(),
        "{}",
        agent.output()
    );
    agent.kill();
    relay.stop().await;
}

/// The first-hour mistakes: a tab, the example as shipped, and several settings missing at once.
#[tokio::test]
async fn first_hour_configuration_mistakes_say_what_to_edit() {
    let dir = tempfile::tempdir().unwrap();
    let tabbed = write(
        dir.path(),
        "agent.yaml",
        "relay: https://r.example\ntoken: t\ningress:\n\t- upstream: http://localhost:8000\n",
    );
    let tabbed = tabbed.display().to_string();
    let (code, _, stderr) = run_ponte(args(&["agent", "--config", &tabbed]), vec![]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{tabbed}:4: column 1 is a tab: YAML does not allow tabs for indentation; use spaces"
        )),
        "{stderr}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/examples/agent.yaml");
    for command in ["agent", "check"] {
        let (code, _, stderr) = run_ponte(args(&[command, "--config", example]), vec![]).await;
        assert_eq!(code, Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("this is still the example configuration")
                && stderr.contains("set `relay:` in")
                && stderr.contains("`token:` in"),
            "{command}: {stderr}"
        );
    }
    let (code, _, stderr) = run_ponte(
        args(&[
            "client",
            "--url=wss://relay.example.com",
            "--upstream=http://localhost:8000",
            "--token=PASTE-YOUR-TOKEN-HERE",
        ]),
        vec![],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("set --url and --token"), "{stderr}");

    let (code, _, stderr) = run_ponte(args(&["check"]), vec![]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no relay given") && stderr.contains("no token given"),
        "{stderr}"
    );
}

/// Once connected the agent prints where the public reaches it, once: a reconnect to the same
/// URL does not repeat it. A second agent on the same tunnel is warned on both sides.
#[tokio::test]
async fn the_agent_prints_its_public_url_once_and_shared_tunnels_are_announced() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "relay.yaml", &relay_yaml(Some(&certs), "", ""));
    let (mut relay, port) = support::process::start_relay_process(&config, 0).await;
    let up = echo_upstream().await;
    let url = format!("https://localhost:{port}");
    let ca = certs.ca.display().to_string();
    let agent_args = [
        "agent",
        "--relay",
        &url,
        "--ca-file",
        &ca,
        "--token",
        TOKEN,
        "--upstream",
        &up.url(),
    ];
    let mut agent = Process::spawn(&agent_args);
    let forwarding = |p: &Process| -> Vec<String> {
        p.output()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["message"].as_str().map(String::from))
            .filter(|m| m.starts_with("Forwarding "))
            .collect()
    };
    let connected = |p: &Process| p.output().matches("\"tunnel connected\"").count();
    eventually("the banner", || async {
        (!forwarding(&agent).is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        forwarding(&agent),
        [format!("Forwarding {url}/t/demo/ → {}", up.url())]
    );

    // The relay restarts on the same port: the agent reconnects without a second banner.
    relay.kill();
    let (mut relay, _) = support::process::start_relay_process(&config, port).await;
    eventually("the reconnect", || async {
        (connected(&agent) >= 2).then_some(())
    })
    .await;
    assert_eq!(forwarding(&agent).len(), 1, "{}", agent.output());

    // A second agent with the same token: it is told, and the relay says so.
    let mut second = Process::spawn(&agent_args);
    let shared = eventually("the shared-tunnel warning", || async {
        second
            .output()
            .lines()
            .find(|l| l.contains("2 agents share this tunnel: requests are split between them"))
            .map(String::from)
    })
    .await;
    assert!(shared.contains("\"level\":\"WARN\""), "{shared}");
    eventually("the relay's warning", || async {
        relay
            .output()
            .contains("another agent joined this tunnel")
            .then_some(())
    })
    .await;
    // `check` counts the agents too.
    let (code, stdout, stderr) = run_ponte(
        args(&["check", "--relay", &url, "--ca-file", &ca]),
        vec![("PONTE_TOKEN", TOKEN.into())],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("3 agents share this tunnel, counting this check"),
        "{stdout}"
    );
    second.kill();
    agent.kill();
    relay.kill();
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
    // The agent's inspector, printed with its address, shows the demo's request.
    let inspector = lines
        .iter()
        .find_map(|l| l.split("in the inspector: ").nth(1))
        .unwrap_or_else(|| panic!("no inspector line: {text}"))
        .to_string();
    assert!(inspector.starts_with("http://127.0.0.1:"), "{inspector}");
    let page = send(&client(None, false), request("GET", &inspector, "")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("/hooks/rute-webhook"), "{}", page.text());
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

/// `ponte bench` end to end, briefly: its own upstream, relays and agents as processes, every phase,
/// and JSON with each figure of Ponte's rows (peers skipped: the given folder is empty). The figures
/// themselves are for a quiet machine; one mechanism is checked here because it does not depend on
/// speed: with glibc told to keep freed buffers (`main`), the relay takes well under one fresh page
/// per KiB of a 1 MiB response (glibc's defaults cost it 115-150 page faults per response).
#[tokio::test]
async fn bench_runs_every_phase_and_reports_each_figure() {
    let peers = tempfile::tempdir().expect("tempdir");
    let peers_dir = peers.path().display().to_string();
    let (code, stdout, stderr) = run_ponte(
        args(&[
            "bench",
            "--duration",
            "1s",
            "--connections",
            "4",
            "--idle-agents",
            "5",
            "--no-hooks",
            "--json",
            "--peers",
            &peers_dir,
        ]),
        vec![],
    )
    .await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("bench prints JSON");
    for side in ["ponte", "ponte_tls"] {
        let f = &report[side];
        for key in [
            "rps",
            "mib_s",
            "server_cpu_us",
            "client_cpu_us",
            "server_big_cpu_us",
            "client_big_cpu_us",
        ] {
            let v = f[key].as_f64().unwrap_or(-1.0);
            assert!(v > 0.0, "{side}.{key} = {}", f[key]);
        }
        for key in ["server_idle_rss_kib", "client_idle_rss_kib"] {
            assert!(f[key].as_u64().unwrap_or(0) > 1024, "{side}.{key} = {}", f[key]);
        }
        let faults = f["server_big_faults"]
            .as_f64()
            .expect("relay page faults per 1 MiB");
        assert!(
            faults < 40.0,
            "{side}: the relay took {faults} page faults per 1 MiB response"
        );
        assert!(
            f["client_big_faults"].as_f64().is_some(),
            "{side}: agent page faults"
        );
    }
    assert!(
        report["direct"]["server_big_faults"].is_null(),
        "no relay on the direct path"
    );
    let peers = report["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{peers:?}");
    for p in peers {
        assert!(p["figures"].is_null() && p["error"].is_string(), "{p}");
    }
}
