//! `ponte deliveries …` against a real relay: list, show, replay --failed, purge, and a clear
//! refusal for a wrong admin token.

mod support;

use std::process::Command;

use http::StatusCode;
use support::*;

/// Run `ponte deliveries ARGS…` against `base`; returns (success, stdout, stderr).
async fn deliveries(base: &str, certs: &Certs, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ponte"));
    cmd.arg("deliveries")
        .args(args)
        .args(["--relay", base, "--ca-file"])
        .arg(&certs.ca)
        .env("PONTE_ADMIN_TOKEN", token);
    let out = within(
        "ponte deliveries",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operate_the_queue_from_the_command_line() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (up, log) = recording_upstream(|_, n| if n < 2 { StatusCode::GONE } else { StatusCode::OK }).await;
    let relay = start_relay(&queue_yaml(&certs, &dir.path().join("relay.db"), "queue", "", "")).await;
    let base = relay.url(true);
    let c = client(Some(&certs), false);
    let mut agent = start_agent_to(&base, &certs, &up.url());
    agent.connected().await;
    let mut ids = Vec::new();
    for n in 0..2 {
        let r = send(
            &c,
            request("POST", &format!("{base}/t/demo/order/{n}"), "{\"total\":1}"),
        )
        .await;
        ids.push(r.header("ponte-delivery-id").to_string());
    }
    eventually("both to fail with 410", || async {
        let page = admin_json(&c, &base, "GET", "deliveries?status=failed").await;
        (page["deliveries"].as_array().unwrap().len() == 2).then_some(())
    })
    .await;

    let (ok, out, err) = deliveries(&base, &certs, ADMIN_TOKEN, &["list", "--status", "failed"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&ids[0]) && out.contains("POST /order/0") && out.contains("HTTP 410"),
        "{out}"
    );

    let (ok, out, err) = deliveries(&base, &certs, ADMIN_TOKEN, &["show", &ids[1]]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("status:    failed") && out.contains("{\"total\":1}") && out.contains("#1"),
        "{out}"
    );

    let (ok, out, err) = deliveries(
        &base,
        &certs,
        ADMIN_TOKEN,
        &["replay", "--failed", "--tunnel", "demo"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("2 failed deliveries are pending again"), "{out}");
    eventually("both delivered after the replay", || async {
        (log.lock().unwrap().len() == 4).then_some(())
    })
    .await;

    let (ok, out, err) = deliveries(&base, &certs, ADMIN_TOKEN, &["list", "--json"]).await;
    assert!(ok, "{err}");
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["deliveries"].as_array().unwrap().len(), 2);

    let (ok, out, err) = deliveries(&base, &certs, ADMIN_TOKEN, &["purge", "--status", "delivered"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("2 delivered deliveries deleted"), "{out}");

    let (ok, _, err) = deliveries(&base, &certs, "wrong-token", &["list"]).await;
    assert!(!ok);
    assert!(
        err.contains("403") && err.contains("admin token was not accepted"),
        "{err}"
    );
    let (ok, _, err) = deliveries(&base, &certs, ADMIN_TOKEN, &["show", "no-such-id"]).await;
    assert!(!ok);
    assert!(err.contains("404") && err.contains("no-such-id"), "{err}");
    agent.stop().await;
    relay.stop().await;
}
