//! The relay console over HTTPS, without a browser: off without an admin token, logins refused
//! and throttled like the admin API's, the session cookie's attributes, CSRF and Origin checks
//! on every post, attacker-controlled delivery text shown escaped, and a replay of a failed
//! delivery reaching the upstream.

mod support;

use http::{Request, StatusCode};
use support::*;

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ponte::body::Body,
>;

fn console(relay: &RelayHandle) -> String {
    format!("{}/_ponte/console/", relay.url(true))
}

async fn get(c: &HttpsClient, url: &str, cookie: Option<&str>) -> Reply {
    let mut b = Request::get(url);
    if let Some(k) = cookie {
        b = b.header("cookie", k);
    }
    send(c, b.body(ponte::body::empty()).unwrap()).await
}

async fn post(c: &HttpsClient, url: &str, cookie: Option<&str>, origin: Option<&str>, form: &str) -> Reply {
    let mut b = Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    if let Some(k) = cookie {
        b = b.header("cookie", k);
    }
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    send(c, b.body(ponte::body::full(form.to_string())).unwrap()).await
}

/// Log in; returns the `name=value` of the session cookie and the page's CSRF token.
async fn login(c: &HttpsClient, relay: &RelayHandle) -> (String, String) {
    let r = post(
        c,
        &format!("{}login", console(relay)),
        None,
        Some(&relay.url(true)),
        &format!("token={ADMIN_TOKEN}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let set = r.header("set-cookie").to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = get(c, &console(relay), Some(&cookie)).await;
    assert_eq!(page.status, 200);
    let csrf = page
        .text()
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf token")
        .to_string();
    (cookie, csrf)
}

#[tokio::test]
async fn the_console_is_off_without_an_admin_token() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let c = client(Some(&certs), false);
    for path in ["", "login", "style.css"] {
        let r = get(&c, &format!("{}{path}", console(&relay)), None).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    relay.stop().await;
}

#[tokio::test]
async fn wrong_tokens_are_refused_then_the_address_is_throttled() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(
        Some(&certs),
        &format!("admin_token: {ADMIN_TOKEN}\nlimits:\n  max_failed_logins_per_minute: 3"),
        "",
    ))
    .await;
    let c = client(Some(&certs), false);
    let page = get(&c, &console(&relay), None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("name=\"token\""), "the login form");
    let url = format!("{}login", console(&relay));
    for _ in 0..3 {
        let r = post(&c, &url, None, None, "token=wrong").await;
        assert_eq!(r.status, 403);
        assert!(
            r.text().contains("That token is not the admin token."),
            "{}",
            r.text()
        );
        assert_eq!(r.header("set-cookie"), "");
    }
    // Over the budget: even the right token waits, as the admin API does.
    let r = post(&c, &url, None, None, &format!("token={ADMIN_TOKEN}")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), "60");
    assert_eq!(r.header("set-cookie"), "");
    let api = admin(&c, &relay.url(true), "GET", "deliveries", Some(ADMIN_TOKEN)).await;
    assert_eq!(api.status, 429, "the admin API shares the budget");
    // In Portuguese.
    let r = post(&c, &format!("{url}?lang=pt-BR"), None, None, "token=wrong").await;
    assert!(
        r.text()
            .contains("Tokens errados demais a partir do seu endereço"),
        "{}",
        r.text()
    );
    relay.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_strict_and_posts_need_the_token_and_origin() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&queue_yaml(&certs, &dir.path().join("q.db"), "queue", "", "")).await;
    let c = client(Some(&certs), false);
    let r = post(
        &c,
        &format!("{}login", console(&relay)),
        None,
        None,
        &format!("token={ADMIN_TOKEN}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), "/_ponte/console/");
    let set = r.header("set-cookie");
    for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/_ponte/console"] {
        assert!(set.contains(part), "{part} missing: {set}");
    }
    let (cookie, csrf) = login(&c, &relay).await;
    let page = get(&c, &console(&relay), Some(&cookie)).await;
    let html = page.text();
    assert!(
        html.contains("<td><a href=\"/_ponte/console/?tunnel=demo\">demo</a></td>"),
        "{html}"
    );
    assert!(
        page.header("content-security-policy")
            .starts_with("default-src 'self'")
    );
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("referrer-policy"), "no-referrer");

    let replay_all = format!("{}replay-failed", console(&relay));
    let own = relay.url(true);
    // No token, a wrong token, another site's Origin, no session: refused.
    assert_eq!(
        post(&c, &replay_all, Some(&cookie), Some(&own), "").await.status,
        403
    );
    assert_eq!(
        post(&c, &replay_all, Some(&cookie), Some(&own), "csrf=guess")
            .await
            .status,
        403
    );
    let foreign = post(
        &c,
        &replay_all,
        Some(&cookie),
        Some("https://evil.example"),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(foreign.status, 403);
    assert_eq!(
        post(&c, &replay_all, None, Some(&own), &format!("csrf={csrf}"))
            .await
            .status,
        401
    );
    // With both: done.
    let ok = post(
        &c,
        &replay_all,
        Some(&cookie),
        Some(&own),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.text());

    // Logging out ends the session on the relay, not only in the browser.
    let out = post(
        &c,
        &format!("{}logout", console(&relay)),
        Some(&cookie),
        Some(&own),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.header("set-cookie").contains("Max-Age=0"),
        "{}",
        out.header("set-cookie")
    );
    let after = get(&c, &console(&relay), Some(&cookie)).await;
    assert!(after.text().contains("name=\"token\""), "back to the login form");
    relay.stop().await;
}

/// Delivery paths, headers and bodies are whatever a sender on the internet wrote: the console
/// shows them as text. Then the failed delivery is replayed from the console and reaches the
/// upstream.
#[tokio::test]
async fn attacker_text_is_shown_inert_and_a_failed_delivery_replays() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&queue_yaml(&certs, &dir.path().join("q.db"), "queue", "", "")).await;
    // Gone (a permanent failure) the first time, accepted the second.
    let (up, log) = recording_upstream(|_, n| if n == 0 { StatusCode::GONE } else { StatusCode::OK }).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let r = send(
        &c,
        Request::post(format!("{}/t/demo/q\"onmouseover=\"alert(1)'", relay.url(true)))
            .header("x-evil", "<script>alert(2)</script><img src=x onerror=alert(3)>")
            .header("content-type", "text/html")
            .body(ponte::body::full("<script>alert(4)</script>"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.header("ponte-delivery-id").to_string();
    eventually("the delivery to fail", || async {
        let list = admin_json(&c, &relay.url(true), "GET", "deliveries?status=failed").await;
        (list["deliveries"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;

    let (cookie, csrf) = login(&c, &relay).await;
    let overview = get(&c, &format!("{}?status=failed", console(&relay)), Some(&cookie))
        .await
        .text();
    assert!(overview.contains(&id), "{overview}");
    assert!(
        overview.contains("/q&#34;onmouseover=&#34;alert(1)&#39;"),
        "{overview}"
    );
    assert!(!overview.contains("\"onmouseover"), "{overview}");
    let detail = get(&c, &format!("{}deliveries/{id}", console(&relay)), Some(&cookie))
        .await
        .text();
    assert!(
        detail.contains("&#60;script&#62;alert(2)&#60;/script&#62;&#60;img src=x onerror=alert(3)&#62;"),
        "{detail}"
    );
    assert!(
        detail.contains("&#60;script&#62;alert(4)&#60;/script&#62;"),
        "{detail}"
    );
    assert!(
        !detail.contains("<script>") && !detail.contains("<img"),
        "{detail}"
    );
    assert!(detail.contains("410"), "the attempt's status: {detail}");

    let r = post(
        &c,
        &format!("{}deliveries/{id}/replay", console(&relay)),
        Some(&cookie),
        Some(&relay.url(true)),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    eventually("the replay to reach the upstream", || async {
        (log.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        log.lock().unwrap()[1].header("x-evil"),
        "<script>alert(2)</script><img src=x onerror=alert(3)>"
    );
    let detail = eventually("the delivery to be delivered", || async {
        let d = get(
            &c,
            &format!("{}deliveries/{id}?lang=pt-BR", console(&relay)),
            Some(&cookie),
        )
        .await
        .text();
        d.contains("Entregue").then_some(d)
    })
    .await;
    assert!(detail.contains("<html lang=\"pt-BR\">"), "{detail}");
    agent.stop().await;
    relay.stop().await;
}

/// The tunnels panel shows what `ponte status` shows: with no agent, the queue waiting for one;
/// with one, its address and version, the tunnel's requests in the last minute, and the queue's
/// depth once the delivery has gone (and failed).
#[tokio::test]
async fn the_tunnels_panel_shows_agents_rate_and_queue_depth() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&queue_yaml(&certs, &dir.path().join("q.db"), "queue", "", "")).await;
    let c = client(Some(&certs), false);
    let (cookie, _) = login(&c, &relay).await;
    let row = |html: &str| -> String {
        html.split("<tr class=\"tunnel\" data-tunnel=\"demo\">")
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .unwrap_or_else(|| panic!("no row for demo: {html}"))
            .to_string()
    };
    let empty = row(&get(&c, &console(&relay), Some(&cookie)).await.text());
    assert!(empty.contains("No agent online"), "{empty}");
    assert!(empty.contains("not seen since the relay started"), "{empty}");
    assert!(empty.contains("<td class=\"rate\">0</td>"), "{empty}");
    assert!(
        empty.contains("<span class=\"pending\">0 pending</span>"),
        "{empty}"
    );

    // No agent yet: the webhook waits in the queue.
    for _ in 0..2 {
        let r = send(
            &c,
            Request::post(format!("{}/t/demo/hook", relay.url(true)))
                .body(ponte::body::full("{}"))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let waiting = row(&get(&c, &console(&relay), Some(&cookie)).await.text());
    assert!(waiting.contains("<td class=\"rate\">2</td>"), "{waiting}");
    assert!(
        waiting.contains("<span class=\"pending\">2 pending</span>"),
        "{waiting}"
    );
    assert!(waiting.contains("oldest waiting "), "{waiting}");
    assert!(waiting.contains("Waiting for the agent"), "{waiting}");

    // The agent comes; the upstream refuses both for good, so they end failed.
    let (up, log) = recording_upstream(|_, _| StatusCode::GONE).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    eventually("both deliveries to fail", || async {
        (log.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    let online = eventually("the panel to show them failed", || async {
        let r = row(&get(&c, &console(&relay), Some(&cookie)).await.text());
        r.contains("<span class=\"failed\">2 failed</span>").then_some(r)
    })
    .await;
    assert!(
        online.contains("<code class=\"address\">127.0.0.1:"),
        "the agent's address: {online}"
    );
    assert!(
        online.contains(&format!("<span class=\"version\">v{}</span>", ponte::VERSION)),
        "{online}"
    );
    assert!(online.contains("connected "), "{online}");
    assert!(
        online.contains("<span class=\"pending\">0 pending</span>"),
        "{online}"
    );
    assert!(
        online.contains("<span class=\"in-flight\">0 sending now</span>"),
        "{online}"
    );
    assert!(online.contains("<td class=\"rate\">2</td>"), "{online}");
    assert!(
        !online.contains("Waiting for the agent") && !online.contains("oldest"),
        "{online}"
    );

    // In Portuguese.
    let pt = row(
        &get(&c, &format!("{}?lang=pt-BR", console(&relay)), Some(&cookie))
            .await
            .text(),
    );
    assert!(
        pt.contains("<span class=\"failed\">2 com falha</span>") && pt.contains("conectado "),
        "{pt}"
    );
    agent.stop().await;
    relay.stop().await;
}
