//! The pages in a real browser: headless Chromium driven through chromedriver (WebDriver).
//! The console: a wrong token refused, the tunnels (agent address and version, request rate,
//! queue depth) and deliveries shown (attacker text inert),
//! a failed delivery replayed from the page reaching the upstream, the Portuguese page, and
//! the login throttle. The inspector: a request sent through the tunnel shown, and replayed.
//! Screenshots go to `target/test-artifacts/`. Without chromium and chromedriver these tests
//! print why and pass, except under `CI=true`, where that is a failure.

mod support;

use fantoccini::Locator;
use http::{Request, StatusCode};
use support::pages::{browser, start_inspected_agent};
use support::*;

#[tokio::test]
async fn the_console_in_a_browser() {
    let Some(b) = browser("console").await else {
        return;
    };
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&queue_yaml(
        &certs,
        &dir.path().join("q.db"),
        "queue",
        "limits:\n  max_failed_logins_per_minute: 4",
        "",
    ))
    .await;
    let (up, log) = recording_upstream(|_, n| if n == 0 { StatusCode::GONE } else { StatusCode::OK }).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let r = send(
        &c,
        Request::post(format!(
            "{}/t/demo/hooks/x\"onmouseover=\"alert(1)",
            relay.url(true)
        ))
        .header("x-evil", "<img src=x onerror=alert(2)>")
        .body(ponte::body::full("{\"paid\":true}"))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.header("ponte-delivery-id").to_string();
    eventually("the delivery to fail", || async {
        let list = admin_json(&c, &relay.url(true), "GET", "deliveries?status=failed").await;
        (list["deliveries"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;

    let console = format!("https://localhost:{}/_ponte/console/", relay.addr.port());
    b.client.goto(&format!("{console}?lang=en")).await.unwrap();
    // A wrong token: refused, on the login page.
    b.element("#token").await.send_keys("wrong").await.unwrap();
    b.click("#login").await;
    assert_eq!(b.text("#login-error").await, "That token is not the admin token.");
    b.screenshot("console-wrong-token").await;
    // The right one: the tunnels and the deliveries.
    b.element("#token").await.send_keys(ADMIN_TOKEN).await.unwrap();
    b.click("#login").await;
    let tunnels = b.text("#tunnels").await;
    assert!(tunnels.contains("demo") && tunnels.contains("queue"), "{tunnels}");
    // The agent (address, version, since when), the request rate and the queue's depth: the
    // same figures as `ponte status`.
    let demo = "tr.tunnel[data-tunnel='demo']";
    let agent_text = b.text(&format!("{demo} .agent")).await;
    assert!(
        agent_text.starts_with("127.0.0.1:")
            && agent_text.contains(&format!("v{}", ponte::VERSION))
            && agent_text.contains("connected "),
        "{agent_text}"
    );
    assert_eq!(b.text(&format!("{demo} td.rate")).await, "1");
    assert_eq!(
        b.text(&format!("{demo} td.queue")).await,
        "0 pending, 0 sending now, 1 failed"
    );
    b.screenshot("console-tunnels").await;
    let row = b.text(&format!("tr.delivery[data-id='{id}']")).await;
    assert!(
        row.contains("/hooks/x\"onmouseover=\"alert(1)"),
        "the path shown as text: {row}"
    );
    assert!(row.contains("Failed") && row.contains("410"), "{row}");
    b.screenshot("console-deliveries").await;
    // The delivery's page: the header shown as text, no element made from it.
    b.click(&format!("tr.delivery[data-id='{id}'] a")).await;
    let headers = b.text("table.headers").await;
    assert!(headers.contains("<img src=x onerror=alert(2)>"), "{headers}");
    assert!(
        b.client
            .find_all(Locator::Css("main img"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(b.text("#attempts").await.contains("Gave up"));
    // Replay it from the page: the upstream gets it again.
    b.click("#replay").await;
    assert!(b.text("#notice").await.contains(&id));
    eventually("the replay at the upstream", || async {
        (log.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    eventually("the page to show it delivered", || async {
        b.client.refresh().await.unwrap();
        (b.text("#state").await == "Delivered").then_some(())
    })
    .await;
    b.screenshot("console-replayed").await;

    // In Portuguese.
    b.client.goto(&format!("{console}?lang=pt-BR")).await.unwrap();
    let headings: Vec<String> = {
        let mut v = Vec::new();
        for h in b.client.find_all(Locator::Css("main h1")).await.unwrap() {
            v.push(h.text().await.unwrap());
        }
        v
    };
    assert_eq!(headings, ["Túneis", "Entregas"]);
    assert_eq!(b.text("#replay-failed").await, "Reenviar todas as que falharam");
    assert!(
        b.text("tr.tunnel[data-tunnel='demo'] .agent")
            .await
            .contains("conectado "),
    );
    assert!(
        b.text(&format!("tr.delivery[data-id='{id}']"))
            .await
            .contains("Entregue")
    );
    b.screenshot("console-pt-BR").await;
    // The choice sticks (a cookie), and the page refreshes itself.
    b.client.goto(&console).await.unwrap();
    assert_eq!(b.text("main h1").await, "Túneis");
    let refresh = b
        .client
        .find(Locator::Css("meta[http-equiv='refresh']"))
        .await
        .unwrap()
        .attr("content")
        .await
        .unwrap();
    assert_eq!(refresh.as_deref(), Some("5"));

    // Log out, then wrong tokens until the address is throttled.
    b.click("#logout").await;
    for _ in 0..4 {
        b.element("#token").await.send_keys("wrong").await.unwrap();
        b.click("#login").await;
    }
    b.element("#token").await.send_keys(ADMIN_TOKEN).await.unwrap();
    b.click("#login").await;
    assert_eq!(
        b.text("#login-error").await,
        "Tokens errados demais a partir do seu endereço; espere um minuto e tente de novo."
    );
    b.screenshot("console-throttled").await;
    b.close().await;
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn the_inspector_in_a_browser() {
    let Some(b) = browser("inspector").await else {
        return;
    };
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let (mut agent, inspector) = start_inspected_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!("inspect: 127.0.0.1:0\ningress:\n  - upstream: {}\n", up.url()),
    ))
    .await;
    agent.connected().await;
    let c = client(Some(&certs), false);
    let r = send(
        &c,
        Request::post(format!("{}/t/demo/webhooks/pix?x=1", relay.url(true)))
            .header("content-type", "application/json")
            .body(ponte::body::full(r#"{"txid":"abc","valor":"10.00"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);

    let home = format!("http://127.0.0.1:{}/", inspector.port());
    b.client.goto(&format!("{home}?lang=en")).await.unwrap();
    assert!(b.text(".status").await.contains("Connected"));
    let row = eventually("the request in the list", || async {
        b.client.refresh().await.unwrap();
        let rows = b
            .client
            .find_all(Locator::Css("#requests tbody tr"))
            .await
            .unwrap();
        match rows.first() {
            Some(r) => {
                let text = r.text().await.unwrap();
                text.contains("200").then_some(text)
            }
            None => None,
        }
    })
    .await;
    assert!(row.contains("POST") && row.contains("/webhooks/pix?x=1"), "{row}");
    b.screenshot("inspector-list").await;
    b.click("#requests tbody tr td.path a").await;
    let body = b.text("pre.body-json").await;
    assert_eq!(body, "{\n  \"txid\": \"abc\",\n  \"valor\": \"10.00\"\n}");
    b.screenshot("inspector-detail").await;
    b.click("#replay").await;
    assert!(b.text("p.tag").await.contains("replay of #1"));
    {
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].body, log[0].body);
    }
    // Edited: another body.
    b.client.goto(&format!("{home}requests/1/edit")).await.unwrap();
    let field = b
        .client
        .find(Locator::Css("textarea[name='body']"))
        .await
        .unwrap();
    field.clear().await.unwrap();
    field.send_keys("{\"txid\":\"edited\"}").await.unwrap();
    b.click("#send").await;
    assert!(b.text("p.tag").await.contains("replay of #1"));
    assert_eq!(&log.lock().unwrap()[2].body[..], b"{\"txid\":\"edited\"}");
    // In Portuguese.
    b.client.goto(&format!("{home}?lang=pt-BR")).await.unwrap();
    assert_eq!(b.text("main h1").await, "Requisições recentes");
    assert!(b.text(".status").await.contains("Conectado"));
    assert!(b.text("#requests").await.contains("reenvio de #1"));
    b.screenshot("inspector-pt-BR").await;
    b.close().await;
    agent.stop().await;
    relay.stop().await;
}
