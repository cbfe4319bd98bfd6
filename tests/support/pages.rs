//! For the tests of the pages: an agent with its inspector on a fresh port, plain HTTP/1.1
//! requests with any `Host`, and a headless Chromium driven through chromedriver (WebDriver),
//! with screenshots kept under `target/test-artifacts/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ponte::agent::AgentStatus;
use ponte::config::agent::AgentConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AgentHandle, WAIT, within};

/// Start an agent from YAML (which should say `inspect: 127.0.0.1:0`) with its inspector, as
/// `ponte agent` does; returns the agent and the inspector's address.
pub async fn start_inspected_agent(yaml: &str) -> (AgentHandle, SocketAddr) {
    let cfg: AgentConfig =
        ponte::config::parse_with_env(yaml, "agent.yaml", &|_| None).expect("agent config");
    let cfg = cfg
        .merge(Default::default(), "agent.yaml")
        .expect("agent config complete");
    let (tx, rx) = watch::channel(AgentStatus::Starting);
    let shutdown = CancellationToken::new();
    let started = ponte::inspect::inspector::start(&cfg, rx.clone(), &shutdown)
        .await
        .expect("inspector")
        .expect("inspector listening");
    let join = tokio::spawn(ponte::agent::run_with_ingress(
        cfg,
        started.ingress,
        shutdown.clone(),
        tx,
        None,
    ));
    (
        AgentHandle {
            status: rx,
            shutdown,
            join,
        },
        started.address,
    )
}

/// A raw HTTP/1.1 exchange with `addr`: `head` is the request line and headers (without the
/// blank line), `body` follows with its Content-Length. Returns (status, headers text, body).
pub async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.expect("write");
    let mut out = Vec::new();
    within("response", s.read_to_end(&mut out)).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, headers.to_string(), body.to_string())
}

/// Where test artifacts go (CI keeps this folder).
pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// A headless Chromium session through a chromedriver this test started.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// Start chromedriver and a headless Chromium. `None` (with the reason printed) when either is
/// missing and this is not CI; under `CI=true` a missing tool fails the test.
pub async fn browser(test: &str) -> Option<Browser> {
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find(&["chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let why = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {why}");
        }
        eprintln!("{test}: SKIPPED: {why}");
        return None;
    };
    // A free port for chromedriver: bind, read it, release (chromedriver cannot report its own).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = artifacts().join(format!("{test}.chromedriver.log"));
    let mut child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().expect("profile dir");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    // The relay's certificate is signed by the test's own CA.
    caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
    let url = format!("http://127.0.0.1:{port}");
    let mut last_error = String::new();
    for _ in 0..150 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match fantoccini::ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => {
                return Some(Browser {
                    client,
                    driver: child,
                    _profile: profile,
                });
            }
            Err(e) => last_error = e.to_string(),
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("chromedriver exited ({status}); see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!(
        "chromedriver did not start a browser: {last_error}; see {}",
        log.display()
    );
}

impl Browser {
    /// Save a screenshot as `target/test-artifacts/{name}.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(artifacts().join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// The first element matching `css`, waiting for it up to the test deadline: after a click
    /// that submits a form, the next page may still be loading on a busy machine.
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.expect("text")
    }

    /// Click the first element matching `css` and wait for the page it leads to: every link and
    /// button on these pages navigates (they have no scripts), and the driver does not always wait
    /// for a form post's page before the next command, so wait until the clicked element is gone.
    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        element.clone().click().await.expect("click");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match element.tag_name().await {
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
                {
                    return;
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    panic!("clicking {css} did not lead to another page")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// End the browser session (chromedriver stops when this is dropped).
    pub async fn close(&self) {
        let _ = self.client.clone().close().await;
    }

    /// The whole page source.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("source")
    }
}
